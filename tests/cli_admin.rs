//! The admin flow end to end through the `imcrypt` binary against real daemons (tasks of this
//! process, reached over HTTPS with the token): enable with remote, password change (the old
//! password stops working everywhere, slaves included), rotate, download with an OpenSSL key,
//! unwrap, decrypt (also with `openssl pkeyutl` and a Python reader written from the docs),
//! and disable with and without acknowledgement.

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use imcrypt::crypto::aead::AeadImpl;
use imcrypt::crypto::keyring::{DomainKey, KeyRing};
use imcrypt::crypto::random::NonceSource;
use imcrypt::crypto::record::RecordSealer;
use imcrypt::ids::{ClusterId, KeyVersion};
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_imcrypt");
const NEW_PASSWORD: &str = "Another-Battery-7-staple";

fn run(cmd: &mut std::process::Command) -> Vec<u8> {
    let out = cmd.stderr(Stdio::piped()).output().unwrap_or_else(|e| {
        panic!("cannot run {:?} ({e}); scripts/test.sh installs it", cmd.get_program())
    });
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn ring_of(lab: &Lab, id: &str) -> Arc<KeyRing> {
    lab.daemon(id).unwrap().key_ring().borrow().clone().expect("a key ring")
}

fn seal(ring: &KeyRing, cluster: &str, meta: &str, text: &str) -> Vec<u8> {
    let sealer = RecordSealer::new(ring, &ClusterId::new(cluster).unwrap(), AeadImpl::default(), 0);
    sealer.counter().commit_reservation(1 << 20);
    sealer.seal(&mut NonceSource::from_os(), meta.as_bytes(), text.as_bytes()).unwrap()
}

fn line(row: &str, meta: &str, rec: &[u8]) -> String {
    serde_json::json!({
        "row": row,
        "metadata_b64": B64.encode(meta),
        "record_b64": B64.encode(rec),
        "sender": "bob@example.com",
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_flow_end_to_end_through_the_cli() {
    bounded(async {
        let (d, mut lab) = mesh(&["a", "b", "c"]);
        for id in ["a", "b", "c"] {
            lab.start(id).await.unwrap();
        }
        let dir = d.path();
        let cfg = |id: &str| -> String { s(&dir.join(format!("{id}.toml"))).to_owned() };
        let (ca, cb) = (cfg("a"), cfg("b"));
        let pwfile = dir.join("pw.txt");
        std::fs::write(&pwfile, format!("{PASSWORD}\n")).unwrap();

        let o = imcrypt(&["status", "--config", &ca], "").await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        assert!(o.stdout.contains("role          off"), "{}", o.stdout);

        // Enable with remote, the password from a file.
        let o = imcrypt(
            &["encryption", "enable", "--remote", "--password-file", s(&pwfile), "-c", &ca],
            "",
        )
        .await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        assert!(o.stdout.contains("encryption enabled: cluster a is master"), "{}", o.stdout);
        for id in ["b", "c"] {
            lab.wait_until(id, "slave of a", WAIT, is_slave_of("a")).await.unwrap();
        }

        // Change the password (both from stdin); the slaves receive it.
        let o = imcrypt(
            &["password", "change", "--password-stdin", "-c", &ca],
            &format!("{PASSWORD}\n{NEW_PASSWORD}\n"),
        )
        .await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        let epoch = lab.status("a").await.unwrap().epoch;
        for id in ["b", "c"] {
            lab.wait_until(id, "new password synced", WAIT, |s| s.epoch == epoch).await.unwrap();
        }

        // The old password no longer works, on the master nor on a slave.
        let (priv_pem, pub_pem) = (dir.join("admin.pem"), dir.join("admin.pub.pem"));
        run(std::process::Command::new("openssl")
            .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:3072", "-out"])
            .arg(&priv_pem));
        run(std::process::Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&priv_pem)
            .arg("-out")
            .arg(&pub_pem));
        let export = dir.join("export.json");
        let o = imcrypt(
            &[
                "key",
                "download",
                "--public-key",
                s(&pub_pem),
                "--out",
                s(&export),
                "--password-stdin",
                "-c",
                &ca,
            ],
            &format!("{PASSWORD}\n"),
        )
        .await;
        assert_eq!(o.code, 4, "{} {}", o.stdout, o.stderr);
        assert!(o.stderr.contains("password is wrong"), "{}", o.stderr);
        assert!(!export.exists(), "no partial output file");
        let o = imcrypt(
            &["encryption", "disable", "--password-stdin", "-c", &cb],
            &format!("{PASSWORD}\n"),
        )
        .await;
        assert_eq!(o.code, 4, "{}", o.stderr);
        assert!(
            o.stderr.contains("master's password is wrong") && o.stderr.contains("cluster a"),
            "{}",
            o.stderr
        );
        assert_eq!(lab.status("b").await.unwrap().role, Role::Slave);

        // Records under version 1 (sealed by b) and, after a rotation, version 2 (by a).
        let ring1 = ring_of(&lab, "a");
        let rec1 = seal(&ring1, "b", "msg-1|bob", "Hello from b, v1.");
        let o = imcrypt(&["key", "rotate", "-c", &ca], "").await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        assert!(o.stdout.contains("new key version 2 is primary"), "{}", o.stdout);
        let ring2 = ring_of(&lab, "a");
        assert_eq!(ring2.primary_version().get(), 2);
        let rec2 = seal(&ring2, "a", "msg-2|alice", "Grüße from a, v2.");
        let mut tampered = rec2.clone();
        *tampered.last_mut().unwrap() ^= 1;
        let v3 = KeyVersion::new(3).unwrap();
        let foreign = KeyRing::from_keys(
            ring2.domain(),
            v3,
            [DomainKey::new(v3, 1, zeroize::Zeroizing::new([7; 32]))],
        )
        .unwrap();
        let rec3 = seal(&foreign, "a", "msg-3", "never readable");

        // Download on the slave names the master; on the master it works.
        let o = imcrypt(
            &[
                "key",
                "download",
                "--public-key",
                s(&pub_pem),
                "--out",
                s(&export),
                "--password-stdin",
                "-c",
                &cb,
            ],
            &format!("{NEW_PASSWORD}\n"),
        )
        .await;
        assert_eq!(o.code, 4, "{}", o.stderr);
        assert!(
            o.stderr.contains("only possible on the master")
                && o.stderr.contains("slave of cluster a"),
            "{}",
            o.stderr
        );
        assert!(!export.exists());
        let o = imcrypt(
            &[
                "key",
                "download",
                "--public-key",
                s(&pub_pem),
                "--out",
                s(&export),
                "--password-stdin",
                "-c",
                &ca,
            ],
            &format!("{NEW_PASSWORD}\n"),
        )
        .await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&export).unwrap()).unwrap();
        assert_eq!(doc["keys"].as_array().unwrap().len(), 2);
        assert_eq!(doc["primary_version"], 2);

        // Unwrap into a 0600 ring file; never over an existing one.
        let ring_file = dir.join("ring.json");
        let unwrap_args = [
            "key",
            "unwrap",
            "--export",
            s(&export),
            "--private-key",
            s(&priv_pem),
            "--out",
            s(&ring_file),
        ];
        let o = imcrypt(&unwrap_args, "").await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        assert!(o.stdout.contains("key versions 1, 2"), "{}", o.stdout);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&ring_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let o = imcrypt(&unwrap_args, "").await;
        assert_eq!(o.code, 3, "{}", o.stderr);
        assert!(o.stderr.contains("already exists"), "{}", o.stderr);

        // Decrypt: good rows print, bad rows are reported with line and row, exit 7.
        let lines = [
            line("r1", "msg-1|bob", &rec1),
            line("r2", "msg-2|alice", &rec2),
            line("r3", "msg-2|alice", &tampered),
            line("r4", "msg-9|mallory", &rec1),
            line("r5", "msg-3", &rec3),
            "{not json".to_owned(),
        ];
        let records = dir.join("records.jsonl");
        std::fs::write(&records, lines.join("\n") + "\n").unwrap();
        let o = imcrypt(&["decrypt", "--keys", s(&ring_file), "--input", s(&records)], "").await;
        assert_eq!(o.code, 7, "{}", o.stderr);
        assert!(
            o.stdout.contains("Hello from b, v1.") && o.stdout.contains("Grüße from a, v2."),
            "{}",
            o.stdout
        );
        for (n, row) in [(3, "r3"), (4, "r4"), (5, "r5")] {
            assert!(o.stderr.contains(&format!("line {n} (row {row})")), "{}", o.stderr);
        }
        assert!(o.stderr.contains("line 6 (row -)"), "{}", o.stderr);
        assert!(o.stderr.contains("key version 3"), "{}", o.stderr);
        assert!(o.stderr.contains("4 of 6 records"), "{}", o.stderr);
        let o = imcrypt(
            &["decrypt", "--keys", s(&ring_file), "--output", "json"],
            &lines[..2].join("\n"),
        )
        .await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        let rows: Vec<serde_json::Value> =
            o.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(rows[0]["row"], "r1");
        assert_eq!(rows[0]["cluster"], "b");
        assert_eq!(rows[0]["key_version"], 1);
        assert_eq!(rows[0]["sender"], "bob@example.com");
        assert_eq!(rows[1]["plaintext"], "Grüße from a, v2.");

        // Interop: openssl pkeyutl unwraps the export; a Python reader decrypts the lines.
        let keys = dir.join("keys");
        std::fs::create_dir(&keys).unwrap();
        for k in doc["keys"].as_array().unwrap() {
            let v = k["version"].as_u64().unwrap();
            let wrapped = keys.join(format!("v{v}.bin"));
            std::fs::write(&wrapped, B64.decode(k["wrapped_key"].as_str().unwrap()).unwrap())
                .unwrap();
            run(std::process::Command::new("openssl")
                .args(["pkeyutl", "-decrypt", "-inkey", s(&priv_pem), "-in", s(&wrapped)])
                .args(["-out", s(&keys.join(format!("v{v}.key")))])
                .args(["-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", "rsa_oaep_md:sha256"])
                .args(["-pkeyopt", "rsa_mgf1_md:sha256"]));
        }
        let script: PathBuf =
            [env!("CARGO_MANIFEST_DIR"), "tests/interop/decrypt_lines.py"].iter().collect();
        let py = String::from_utf8(run(std::process::Command::new("python3").arg(&script).args([
            s(&export),
            s(&keys),
            s(&records),
        ])))
        .unwrap();
        let py: Vec<&str> = py.lines().collect();
        assert_eq!(py[0], "r1\tHello from b, v1.");
        assert_eq!(py[1], "r2\tGrüße from a, v2.");
        assert!(py[2..].iter().all(|l| l.contains("\tERROR")), "{py:?}");
        assert_eq!(py.len(), 6);

        // The slave opts out with the new password.
        let o = imcrypt(
            &["encryption", "disable", "--password-stdin", "-c", &cb],
            &format!("{NEW_PASSWORD}\n"),
        )
        .await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        assert_eq!(lab.status("b").await.unwrap().role, Role::Off);

        // After another rotation the download is stale: disable is refused unless acknowledged.
        assert_eq!(imcrypt(&["key", "rotate", "-c", &ca], "").await.code, 0);
        let o = imcrypt(
            &["encryption", "disable", "--password-stdin", "-c", &ca],
            &format!("{NEW_PASSWORD}\n"),
        )
        .await;
        assert_eq!(o.code, 4, "{}", o.stderr);
        assert!(
            o.stderr.contains("--i-understand-data-loss") && o.stderr.contains("unreadable"),
            "{}",
            o.stderr
        );
        assert_eq!(lab.status("a").await.unwrap().role, Role::Master);
        let o = imcrypt(
            &[
                "encryption",
                "disable",
                "--i-understand-data-loss",
                "--password-stdin",
                "-c",
                &ca,
                "-o",
                "json",
            ],
            &format!("{NEW_PASSWORD}\n"),
        )
        .await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        let done: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
        assert!(done["message"].as_str().unwrap().contains("whole domain"), "{done}");
        lab.wait_until("c", "off", WAIT, |s| s.role == Role::Off).await.unwrap();

        // Peers and alarms answer in both formats.
        let o = imcrypt(&["peers", "-c", &ca], "").await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        assert!(o.stdout.contains("PEER") && o.stdout.contains("connected"), "{}", o.stdout);
        let o = imcrypt(&["alarms", "-c", &ca, "-o", "json"], "").await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
        assert!(v["active"].is_array() && v["history"].is_array(), "{v}");
        lab.stop_all().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_connection_settings_and_their_errors() {
    bounded(async {
        let (d, mut lab) = mesh(&["a"]);
        lab.start("a").await.unwrap();
        let dir = d.path();
        let addr = lab.daemon("a").unwrap().admin_addr().to_string();
        let ca = dir.join("pki/ca.pem");
        let token_file = dir.join("state/a/admin.token");
        let token = std::fs::read_to_string(&token_file).unwrap();
        let explicit = ["status", "--addr", &addr, "--ca", s(&ca), "--server-name", "a"];

        // Flags, token file, token on the command line; JSON output.
        let o =
            imcrypt(&[&explicit[..], &["--token-file", s(&token_file), "-o", "json"]].concat(), "")
                .await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        assert_eq!(serde_json::from_str::<serde_json::Value>(&o.stdout).unwrap()["cluster"], "a");
        let o = imcrypt(&[&explicit[..], &["--token", token.trim()]].concat(), "").await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        // The environment works as a fallback too.
        let o = tokio::process::Command::new(BIN)
            .args(["status", "--addr", &format!("https://{addr}"), "--server-name", "a"])
            .env("IMCRYPT_CACERT", &ca)
            .env("IMCRYPT_TOKEN", token.trim())
            .output()
            .await
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

        // Missing token, wrong token: exit 5.
        let o = imcrypt(&explicit, "").await;
        assert_eq!(o.code, 5, "{}", o.stderr);
        assert!(o.stderr.contains("no admin token"), "{}", o.stderr);
        let o = imcrypt(&[&explicit[..], &["--token", &"f".repeat(64)]].concat(), "").await;
        assert_eq!(o.code, 5, "{}", o.stderr);
        assert!(o.stderr.contains("not valid"), "{}", o.stderr);
        // The certificate names the cluster, not the address: a clear hint.
        let o = imcrypt(&["status", "--addr", &addr, "--ca", s(&ca), "--token", token.trim()], "")
            .await;
        assert_eq!(o.code, 1, "{}", o.stderr);
        assert!(o.stderr.contains("--server-name"), "{}", o.stderr);
        // Passwords never come from argv, and a missing terminal is explained.
        let o =
            imcrypt(&["encryption", "enable", "--password", "x", "-c", s(&dir.join("a.toml"))], "")
                .await;
        assert_eq!(o.code, 2, "{}", o.stderr);
        let o = imcrypt(&["encryption", "enable", "-c", s(&dir.join("a.toml"))], "").await;
        assert_eq!(o.code, 2, "{}", o.stderr);
        assert!(
            o.stderr.contains("no terminal") && o.stderr.contains("--password-file"),
            "{}",
            o.stderr
        );
        // A weak key is refused before any password is asked for or anything is sent.
        run(std::process::Command::new("openssl")
            .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024", "-out"])
            .arg(dir.join("weak.pem")));
        run(std::process::Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(dir.join("weak.pem"))
            .arg("-out")
            .arg(dir.join("weak.pub")));
        let o = imcrypt(
            &[
                "key",
                "download",
                "--public-key",
                s(&dir.join("weak.pub")),
                "-c",
                s(&dir.join("a.toml")),
            ],
            "",
        )
        .await;
        assert_eq!(o.code, 3, "{}", o.stderr);
        assert!(o.stderr.contains("1024 bits"), "{}", o.stderr);
        // The rate limit: 5 wrong passwords, then locked out (exit 6).
        std::fs::write(dir.join("pw"), PASSWORD).unwrap();
        let o = imcrypt(
            &[
                "encryption",
                "enable",
                "--password-file",
                s(&dir.join("pw")),
                "-c",
                s(&dir.join("a.toml")),
            ],
            "",
        )
        .await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        for _ in 0..5 {
            let o = imcrypt(
                &["encryption", "disable", "--password-stdin", "-c", s(&dir.join("a.toml"))],
                "Wrong-Passw0rd!\n",
            )
            .await;
            assert_eq!(o.code, 4, "{}", o.stderr);
        }
        let o = imcrypt(
            &[
                "encryption",
                "disable",
                "--i-understand-data-loss",
                "--password-stdin",
                "-c",
                s(&dir.join("a.toml")),
            ],
            &format!("{PASSWORD}\n"),
        )
        .await;
        assert_eq!(o.code, 6, "{}", o.stderr);
        assert!(o.stderr.contains("locked out"), "{}", o.stderr);
        assert_eq!(lab.status("a").await.unwrap().role, Role::Master);
        // No daemon there: exit 1.
        lab.stop_all().await;
        let o = imcrypt(&[&explicit[..], &["--token", token.trim()]].concat(), "").await;
        assert_eq!(o.code, 1, "{}", o.stderr);
        assert!(o.stderr.contains("cannot connect"), "{}", o.stderr);
    })
    .await;
}
