//! The `imcrypt` binary as a user runs it.

use std::process::Command;

fn imcrypt(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_imcrypt")).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn openssl(args: &[&str]) {
    let st =
        Command::new("openssl").args(args).status().expect("openssl (scripts/test.sh installs it)");
    assert!(st.success(), "openssl {args:?}");
}

#[test]
fn check_key_accepts_a_3072_bit_key_and_refuses_weak_or_wrong_ones() {
    let d = tempfile::tempdir().unwrap();
    let p = |n: &str| d.path().join(n).to_str().unwrap().to_owned();
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:3072",
        "-out",
        &p("k.pem"),
    ]);
    openssl(&["pkey", "-in", &p("k.pem"), "-pubout", "-out", &p("pub.pem")]);
    let (code, out, _) = imcrypt(&["check-key", &p("pub.pem")]);
    assert_eq!(code, 0);
    assert!(out.contains("RSA 3072 bits") && out.contains("acceptable"), "{out}");

    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:1024",
        "-out",
        &p("s.pem"),
    ]);
    openssl(&["pkey", "-in", &p("s.pem"), "-pubout", "-out", &p("spub.pem")]);
    let (code, _, err) = imcrypt(&["check-key", &p("spub.pem")]);
    assert_eq!(code, 3);
    assert!(err.contains("1024 bits; at least 2048"), "{err}");

    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        &p("ec.pem"),
    ]);
    openssl(&["pkey", "-in", &p("ec.pem"), "-pubout", "-out", &p("ecpub.pem")]);
    let (code, _, err) = imcrypt(&["check-key", &p("ecpub.pem")]);
    assert_eq!(code, 3);
    assert!(err.contains("not RSA"), "{err}");

    let (code, _, err) = imcrypt(&["check-key", &p("k.pem")]);
    assert_eq!(code, 3);
    assert!(err.contains("private key"), "{err}");

    let (code, _, err) = imcrypt(&["check-key", &p("missing.pem")]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot read"), "{err}");
}

#[test]
fn the_demo_runs_its_whole_story_and_cleans_up() {
    let (code, out, err) = imcrypt(&["demo"]);
    assert_eq!(code, 0, "{out}\n{err}");
    for line in [
        "b: slave of a in domain",
        "c: slave of a in domain",
        "c: holds versions [1, 2] with primary 2",
        "c: ALARM MAencryptionMultiMaster (critical) about d",
        "d: ALARM MAencryptionMultiMaster (critical) about c",
        "d: MAencryptionMultiMaster about c cleared",
        "8. stopped a, b, c and d",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
    let dir = out.lines().find_map(|l| l.strip_prefix("cleaning up ")).unwrap();
    assert!(!std::path::Path::new(dir.trim()).exists(), "{dir} left behind");
}
