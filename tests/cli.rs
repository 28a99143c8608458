//! The `imcrypt` binary as a user runs it.

mod support;

use std::process::Command;

use support::{KeyKind, openssl_key_pair};

fn imcrypt(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_imcrypt")).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_key_accepts_a_3072_bit_key_and_refuses_weak_or_wrong_ones() {
    let d = tempfile::tempdir().unwrap();
    let p = |n: &str| d.path().join(n).to_str().unwrap().to_owned();
    let s = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    let good = openssl_key_pair(d.path(), "good", KeyKind::Rsa(3072));
    let (code, out, _) = imcrypt(&["check-key", &s(&good.public)]);
    assert_eq!(code, 0);
    assert!(out.contains("RSA 3072 bits") && out.contains("acceptable"), "{out}");

    let weak = openssl_key_pair(d.path(), "weak", KeyKind::Rsa(1024));
    let (code, _, err) = imcrypt(&["check-key", &s(&weak.public)]);
    assert_eq!(code, 3);
    assert!(err.contains("1024 bits; at least 2048"), "{err}");

    let ec = openssl_key_pair(d.path(), "ec", KeyKind::EcP256);
    let (code, _, err) = imcrypt(&["check-key", &s(&ec.public)]);
    assert_eq!(code, 3);
    assert!(err.contains("not RSA"), "{err}");

    let (code, _, err) = imcrypt(&["check-key", &s(&good.private)]);
    assert_eq!(code, 3);
    assert!(err.contains("private key"), "{err}");

    let (code, _, err) = imcrypt(&["check-key", &p("missing.pem")]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot read"), "{err}");
}

#[test]
fn the_demo_runs_its_whole_story_and_cleans_up() {
    let t = std::time::Instant::now();
    let (code, out, err) = imcrypt(&["demo"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let took = t.elapsed();
    for line in [
        "b: slave of a in domain",
        "c: slave of a in domain",
        // Routers archive through the hot paths of b and c, before and after the rotation.
        "b: 5 messages archived as 5 rows, sealed through b's hot path",
        "c: 4 messages archived as 10 rows, sealed through c's hot path",
        "c: holds versions [1, 2] with primary 2",
        "b: 5 more messages archived as 5 rows after the rotation",
        "c: 6 more messages archived as 14 rows after the rotation",
        // What a DBA sees: sealed rows, blind indexes, nothing in clear.
        "what a database administrator sees: 34 rows, 34 of them encrypted",
        "encrypted      true",
        "from_addr      NULL",
        "to_addr        NULL",
        "room           NULL",
        "of the 20 message bodies, 0 and of the names, 0 appear anywhere in the database file",
        // The administrator downloads the key and reads the archive with a filter.
        "export.json holds key versions [1, 2]",
        "messages from alice@example.com in room acme-deal, 9 rows under key versions [1, 2]",
        "I will draft the term sheet.",
        "Acme signed. Well done, all.",
        // Then the multi-master story, with d's certificate from `pki add`.
        "c: ALARM MAencryptionMultiMaster (critical) about d",
        "d: ALARM MAencryptionMultiMaster (critical) about c",
        "d: MAencryptionMultiMaster about c cleared",
        "stopped every cluster",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
    // The filter holds: dave's messages in the room and alice's 1:1 chats are not shown.
    let table = &out[out.find("8. with admin.pem").unwrap()..out.find("9. cluster d").unwrap()];
    assert!(!table.contains("Kick-off") && !table.contains("Q3 figures"), "{table}");
    let payload = out.lines().find(|l| l.trim_start().starts_with("payload")).unwrap();
    assert!(payload.contains("bytes)"), "the DBA sees ciphertext, shortened: {payload}");
    let dir =
        out.lines().find_map(|l| l.strip_prefix("stopped every cluster; cleaning up ")).unwrap();
    assert!(!std::path::Path::new(dir.trim()).exists(), "{dir} left behind");
    println!("the demo took {took:?} (the issue asks for under 15 s after the build)");
}

/// `imcrypt demo --keep`: the network stays up for the commands it prints, and the archive it
/// made reads back through the CLI alone; Ctrl-C stops it and removes everything.
#[test]
fn the_demo_keeps_running_for_the_commands_it_prints_until_ctrl_c() {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_imcrypt"))
        .args(["demo", "--keep"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let guard = scopeguard(child.id());
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.starts_with("Press Ctrl-C") {
            break;
        }
    }
    assert!(seen.contains("The network is still running"), "{seen}");
    let dir = seen
        .lines()
        .find_map(|l| l.strip_prefix("Press Ctrl-C to stop the clusters and remove "))
        .map(|d| d.trim_end_matches('.').to_owned())
        .unwrap_or_else(|| panic!("{seen}"));
    // The printed commands work as printed.
    let status = seen.lines().find(|l| l.starts_with("  imcrypt status --config")).unwrap();
    let args: Vec<&str> = status.split_whitespace().skip(1).chain(["-o", "json"]).collect();
    let (code, out, err) = imcrypt(&args);
    assert_eq!(code, 0, "{err}");
    let s: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((s["role"].as_str(), s["master"].as_str()), (Some("slave"), Some("a")), "{out}");
    let view = seen.lines().find(|l| l.starts_with("  imcrypt view --db")).unwrap();
    let args: Vec<&str> = view.split_whitespace().skip(1).chain(["-o", "json"]).collect();
    let (code, out, err) = imcrypt(&args);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<serde_json::Value> =
        out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 34);
    assert!(rows.iter().all(|r| r["encrypted"] == true));
    assert!(rows.iter().any(|r| r["body"] == "Acme signed. Well done, all."));
    // Ctrl-C: everything stops and the work dir is gone.
    let st = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(st.success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let code = child.wait().unwrap();
    drop(guard);
    assert!(code.success(), "{rest:?}");
    assert!(rest.iter().any(|l| l.starts_with("stopped every cluster")), "{rest:?}");
    assert!(!std::path::Path::new(&dir).exists(), "{dir} left behind");
}

/// Kills the demo if the test fails half way, so that no daemon outlives it.
fn scopeguard(pid: u32) -> impl Drop {
    struct Kill(u32);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = Command::new("kill").args(["-9", &self.0.to_string()]).status();
        }
    }
    Kill(pid)
}

#[test]
fn a_password_prompt_without_a_terminal_names_the_flags_to_use() {
    // setsid: no controlling terminal, as under cron or a service manager.
    let out = Command::new("setsid")
        .args(["-w", env!("CARGO_BIN_EXE_imcrypt"), "encryption", "enable"])
        .args(["--addr", "127.0.0.1:9", "--token", "t", "--ca", "/nonexistent"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("setsid (util-linux)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("no terminal") && err.contains("--password-file"), "{err}");
    let out = Command::new("setsid")
        .args(["-w", env!("CARGO_BIN_EXE_imcrypt"), "password", "change"])
        .args(["--addr", "127.0.0.1:9", "--token", "t", "--ca", "/nonexistent"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--old-password-file"), "{err}");
}

#[test]
fn pki_add_gives_a_later_cluster_a_certificate_from_the_same_ca() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().to_str().unwrap();
    assert_eq!(imcrypt(&["pki", "init", "--out", dir, "--clusters", "a,b"]).0, 0);
    let (code, out, err) = imcrypt(&["pki", "add", "--dir", dir, "--clusters", "d"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("d.pem, d.key"), "{out}");
    // OpenSSL agrees that d's certificate chains to the CA, for one year.
    let v = Command::new("openssl")
        .args(["verify", "-CAfile", &format!("{dir}/ca.pem"), &format!("{dir}/d.pem")])
        .output()
        .unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
    let (code, _, err) = imcrypt(&["pki", "add", "--dir", dir, "--clusters", "d"]);
    assert_eq!(code, 1);
    assert!(err.contains("already exists"), "{err}");
    let empty = tempfile::tempdir().unwrap();
    let (code, _, err) =
        imcrypt(&["pki", "add", "--dir", empty.path().to_str().unwrap(), "--clusters", "d"]);
    assert_eq!(code, 1);
    assert!(err.contains("imcrypt pki init"), "{err}");
}

#[test]
fn completions_and_man_pages_come_from_the_command_definitions() {
    let (code, out, _) = imcrypt(&["completions", "bash"]);
    assert_eq!(code, 0);
    assert!(out.contains("_imcrypt()") && out.contains("encryption"), "{}", &out[..200]);
    let (code, out, _) = imcrypt(&["completions", "zsh"]);
    assert_eq!(code, 0);
    assert!(out.contains("#compdef imcrypt"));
    let (code, out, _) = imcrypt(&["man"]);
    assert_eq!(code, 0);
    assert!(out.contains(".TH imcrypt 1") && out.contains("demo"), "{}", &out[..200]);
    let d = tempfile::tempdir().unwrap();
    let (code, _, err) = imcrypt(&["man", "--out", d.path().to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    for page in ["imcrypt.1", "imcrypt-view.1", "imcrypt-key-download.1", "imcrypt-pki-add.1"] {
        assert!(d.path().join(page).exists(), "{page}");
    }
    let view = std::fs::read_to_string(d.path().join("imcrypt-view.1")).unwrap();
    assert!(view.contains("private\\-key") && view.contains("IMCRYPT_ARCHIVE_DB"), "{view}");
}
