//! The fuzz targets' inputs on the stable toolchain: every seed of `fuzz/corpus/TARGET/` and
//! every input a fuzzer found and that is kept under `fuzz/artifacts/TARGET/` goes through the
//! same entry point the target calls (`imcrypt::fuzzing`), so a seed or a past finding that
//! panics fails CI, without nightly or libFuzzer.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use imcrypt::fuzzing::{TARGETS, target};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut v: Vec<PathBuf> =
        rd.map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect::<Vec<_>>();
    v.sort();
    v
}

/// Runs `f` on every file of `dir`; the names of the files that panicked, and how many inputs
/// were accepted.
fn replay(f: fn(&[u8]) -> bool, dir: &Path) -> (Vec<String>, usize) {
    let mut panicked = Vec::new();
    let mut accepted = 0;
    for p in files(dir) {
        let bytes = std::fs::read(&p).unwrap();
        match catch_unwind(AssertUnwindSafe(|| f(&bytes))) {
            Ok(true) => accepted += 1,
            Ok(false) => {}
            Err(_) => panicked.push(p.display().to_string()),
        }
    }
    (panicked, accepted)
}

#[test]
fn every_seed_runs_without_panic_and_every_target_has_a_seed_it_accepts() {
    for (name, f) in TARGETS {
        let dir = fuzz_dir().join("corpus").join(name);
        let n = files(&dir).len();
        assert!(n > 0, "fuzz target {name} has no seed corpus in {}", dir.display());
        let (panicked, accepted) = replay(*f, &dir);
        assert!(panicked.is_empty(), "seeds of {name} panicked: {panicked:?}");
        assert!(
            accepted > 0,
            "none of the {n} seeds of {name} is accepted any more (a format changed?): \
             regenerate them, see src/fuzzing.rs"
        );
    }
}

#[test]
fn every_kept_fuzzer_finding_runs_without_panic() {
    let Ok(rd) = std::fs::read_dir(fuzz_dir().join("artifacts")) else { return };
    for dir in rd.map(|e| e.unwrap().path()).filter(|p| p.is_dir()) {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let f = target(&name).unwrap_or_else(|| panic!("fuzz/artifacts/{name} is no target"));
        let (panicked, _) = replay(f, &dir);
        assert!(panicked.is_empty(), "findings of {name} panic again: {panicked:?}");
    }
}

#[test]
fn the_fuzz_crate_has_a_binary_and_a_corpus_for_exactly_the_targets() {
    let mut names: Vec<&str> = TARGETS.iter().map(|(n, _)| *n).collect();
    names.sort();
    let stems = |dir: &str| {
        let mut v: Vec<String> = std::fs::read_dir(fuzz_dir().join(dir))
            .unwrap()
            .map(|e| {
                let p = e.unwrap().path();
                p.file_stem().unwrap().to_string_lossy().into_owned()
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(stems("fuzz_targets"), names, "fuzz/fuzz_targets/");
    assert_eq!(stems("corpus"), names, "fuzz/corpus/");
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
    let mut bins: Vec<&str> = manifest
        .lines()
        .filter_map(|l| l.strip_prefix("name = \""))
        .filter_map(|l| l.strip_suffix('"'))
        .filter(|n| *n != "imcrypt-fuzz")
        .collect();
    bins.sort();
    assert_eq!(bins, names, "[[bin]] of fuzz/Cargo.toml");
}

#[test]
fn docs_reliability_describes_every_fuzz_target() {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/reliability.md"))
            .unwrap();
    let fuzzing = doc.split("## Fuzzing").nth(1).expect("docs/reliability.md has ## Fuzzing");
    let fuzzing = fuzzing.split("\n## ").next().unwrap();
    for (name, _) in TARGETS {
        assert!(fuzzing.contains(&format!("| `{name}` |")), "docs/reliability.md lacks {name}");
    }
}
