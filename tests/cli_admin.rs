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

/// Three clusters a, b and c, peered and running, as the tests below start from; `ca` and `cb`
/// are the config files of a and b, which the CLI is pointed at.
struct Network {
    dir: tempfile::TempDir,
    lab: Lab,
    ca: String,
    cb: String,
}

/// Records sealed under key version 1 (by b) and, after a rotation, version 2 (by a), one
/// tampered with and one under a version the domain never had, as the lines of
/// `DIR/records.jsonl`, the last of which is no JSON at all.
struct Records {
    lines: Vec<String>,
    file: PathBuf,
}

impl Network {
    /// Encryption still off.
    async fn off() -> Network {
        let (dir, mut lab) = mesh(&["a", "b", "c"]);
        for id in ["a", "b", "c"] {
            lab.start(id).await.unwrap();
        }
        let cfg = |id: &str| -> String { s(&dir.path().join(format!("{id}.toml"))).to_owned() };
        let (ca, cb) = (cfg("a"), cfg("b"));
        Network { dir, lab, ca, cb }
    }

    /// Encryption enabled on a with remote, through the CLI; b and c are its slaves.
    async fn enabled() -> Network {
        let n = Network::off().await;
        let o = n.enable().await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        n.wait_slaves().await;
        n
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `imcrypt encryption enable --remote` on a, the password from a file.
    async fn enable(&self) -> Out {
        let pwfile = self.dir().join("pw.txt");
        std::fs::write(&pwfile, format!("{PASSWORD}\n")).unwrap();
        imcrypt(
            &["encryption", "enable", "--remote", "--password-file", s(&pwfile), "-c", &self.ca],
            "",
        )
        .await
    }

    async fn wait_slaves(&self) {
        for id in ["b", "c"] {
            self.lab.wait_until(id, "slave of a", WAIT, is_slave_of("a")).await.unwrap();
        }
    }

    /// The administrator's RSA key pair, made with `openssl` as the manual says.
    fn admin_key(&self) -> KeyPair {
        openssl_key_pair(self.dir(), "admin", KeyKind::Rsa(3072))
    }

    /// `imcrypt key download` for `key` into `export` from the cluster configured in `cfg`.
    async fn download(&self, key: &KeyPair, export: &Path, cfg: &str, password: &str) -> Out {
        imcrypt(
            &[
                "key",
                "download",
                "--public-key",
                s(&key.public),
                "--out",
                s(export),
                "--password-stdin",
                "-c",
                cfg,
            ],
            &format!("{password}\n"),
        )
        .await
    }

    /// Downloads the keys from the master into `DIR/export.json` for a new admin key pair.
    async fn downloaded(&self) -> (KeyPair, PathBuf) {
        let key = self.admin_key();
        let export = self.dir().join("export.json");
        let o = self.download(&key, &export, &self.ca, PASSWORD).await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        (key, export)
    }

    /// Seals a record under version 1, rotates through the CLI, seals more under version 2.
    async fn records_across_a_rotation(&self) -> Records {
        let ring1 = ring_of(&self.lab, "a");
        let rec1 = seal(&ring1, "b", "msg-1|bob", "Hello from b, v1.");
        let o = imcrypt(&["key", "rotate", "-c", &self.ca], "").await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        assert!(o.stdout.contains("new key version 2 is primary"), "{}", o.stdout);
        let ring2 = ring_of(&self.lab, "a");
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
        let lines = vec![
            line("r1", "msg-1|bob", &rec1),
            line("r2", "msg-2|alice", &rec2),
            line("r3", "msg-2|alice", &tampered),
            line("r4", "msg-9|mallory", &rec1),
            line("r5", "msg-3", &rec3),
            "{not json".to_owned(),
        ];
        let file = self.dir().join("records.jsonl");
        std::fs::write(&file, lines.join("\n") + "\n").unwrap();
        Records { lines, file }
    }

    /// `imcrypt encryption disable` on the cluster configured in `cfg`, the password from
    /// stdin, with `more` options.
    async fn disable(&self, cfg: &str, password: &str, more: &[&str]) -> Out {
        let args = [&["encryption", "disable", "--password-stdin", "-c", cfg], more].concat();
        imcrypt(&args, &format!("{password}\n")).await
    }

    /// `imcrypt key unwrap` of `export` with `key` into `ring_file`.
    async fn unwrap_keys(&self, export: &Path, key: &KeyPair, ring_file: &Path) -> Out {
        unwrap_keys(export, key, ring_file).await
    }

    async fn stop(mut self) {
        self.lab.stop_all().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enable_with_remote_makes_the_cluster_master_and_its_peers_slaves() {
    bounded(async {
        let n = Network::off().await;
        let o = imcrypt(&["status", "--config", &n.ca], "").await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        assert!(o.stdout.contains("role          off"), "{}", o.stdout);

        let o = n.enable().await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        assert!(o.stdout.contains("encryption enabled: cluster a is master"), "{}", o.stdout);
        n.wait_slaves().await;
        n.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_password_reaches_the_slaves_and_the_old_one_works_nowhere() {
    bounded(async {
        let n = Network::enabled().await;
        // Both passwords from stdin.
        let o = imcrypt(
            &["password", "change", "--password-stdin", "-c", &n.ca],
            &format!("{PASSWORD}\n{NEW_PASSWORD}\n"),
        )
        .await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        let epoch = n.lab.status("a").await.unwrap().epoch;
        for id in ["b", "c"] {
            n.lab.wait_until(id, "new password synced", WAIT, |s| s.epoch == epoch).await.unwrap();
        }

        // The old password no longer works, on the master nor on a slave.
        let key = n.admin_key();
        let export = n.dir().join("export.json");
        let o = n.download(&key, &export, &n.ca, PASSWORD).await;
        assert_eq!(o.code, 4, "{} {}", o.stdout, o.stderr);
        assert!(o.stderr.contains("password is wrong"), "{}", o.stderr);
        assert!(!export.exists(), "no partial output file");
        let o = n.disable(&n.cb, PASSWORD, &[]).await;
        assert_eq!(o.code, 4, "{}", o.stderr);
        assert!(
            o.stderr.contains("master's password is wrong") && o.stderr.contains("cluster a"),
            "{}",
            o.stderr
        );
        assert_eq!(n.lab.status("b").await.unwrap().role, Role::Slave);
        n.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_download_names_the_master_on_a_slave_and_exports_every_version_on_the_master() {
    bounded(async {
        let n = Network::enabled().await;
        n.records_across_a_rotation().await;
        let key = n.admin_key();
        let export = n.dir().join("export.json");
        let o = n.download(&key, &export, &n.cb, PASSWORD).await;
        assert_eq!(o.code, 4, "{}", o.stderr);
        assert!(
            o.stderr.contains("only possible on the master")
                && o.stderr.contains("slave of cluster a"),
            "{}",
            o.stderr
        );
        assert!(!export.exists());
        let o = n.download(&key, &export, &n.ca, PASSWORD).await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&export).unwrap()).unwrap();
        assert_eq!(doc["keys"].as_array().unwrap().len(), 2);
        assert_eq!(doc["primary_version"], 2);
        n.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unwrap_writes_a_ring_file_only_its_owner_reads_and_never_over_an_existing_one() {
    bounded(async {
        let n = Network::enabled().await;
        n.records_across_a_rotation().await;
        let (key, export) = n.downloaded().await;
        let ring_file = n.dir().join("ring.json");
        let o = n.unwrap_keys(&export, &key, &ring_file).await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        assert!(o.stdout.contains("key versions 1, 2"), "{}", o.stdout);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&ring_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let o = n.unwrap_keys(&export, &key, &ring_file).await;
        assert_eq!(o.code, 3, "{}", o.stderr);
        assert!(o.stderr.contains("already exists"), "{}", o.stderr);
        n.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decrypt_prints_good_rows_and_reports_bad_ones_by_line_and_row_with_exit_7() {
    bounded(async {
        let n = Network::enabled().await;
        let records = n.records_across_a_rotation().await;
        let (key, export) = n.downloaded().await;
        let ring_file = n.dir().join("ring.json");
        assert_eq!(n.unwrap_keys(&export, &key, &ring_file).await.code, 0);

        let o =
            imcrypt(&["decrypt", "--keys", s(&ring_file), "--input", s(&records.file)], "").await;
        assert_eq!(o.code, 7, "{}", o.stderr);
        assert!(
            o.stdout.contains("Hello from b, v1.") && o.stdout.contains("Grüße from a, v2."),
            "{}",
            o.stdout
        );
        for (at, row) in [(3, "r3"), (4, "r4"), (5, "r5")] {
            assert!(o.stderr.contains(&format!("line {at} (row {row})")), "{}", o.stderr);
        }
        assert!(o.stderr.contains("line 6 (row -)"), "{}", o.stderr);
        assert!(o.stderr.contains("key version 3"), "{}", o.stderr);
        assert!(o.stderr.contains("4 of 6 records"), "{}", o.stderr);
        let o = imcrypt(
            &["decrypt", "--keys", s(&ring_file), "--output", "json"],
            &records.lines[..2].join("\n"),
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
        n.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_unwraps_the_export_and_a_python_reader_written_from_the_docs_decrypts() {
    bounded(async {
        let n = Network::enabled().await;
        let records = n.records_across_a_rotation().await;
        let (key, export) = n.downloaded().await;
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&export).unwrap()).unwrap();
        let keys = n.dir().join("keys");
        std::fs::create_dir(&keys).unwrap();
        for k in doc["keys"].as_array().unwrap() {
            let v = k["version"].as_u64().unwrap();
            let wrapped = keys.join(format!("v{v}.bin"));
            std::fs::write(&wrapped, B64.decode(k["wrapped_key"].as_str().unwrap()).unwrap())
                .unwrap();
            run(std::process::Command::new("openssl")
                .args(["pkeyutl", "-decrypt", "-inkey", s(&key.private), "-in", s(&wrapped)])
                .args(["-out", s(&keys.join(format!("v{v}.key")))])
                .args(["-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", "rsa_oaep_md:sha256"])
                .args(["-pkeyopt", "rsa_mgf1_md:sha256"]));
        }
        let script: PathBuf =
            [env!("CARGO_MANIFEST_DIR"), "tests/interop/decrypt_lines.py"].iter().collect();
        let py = String::from_utf8(run(std::process::Command::new("python3").arg(&script).args([
            s(&export),
            s(&keys),
            s(&records.file),
        ])))
        .unwrap();
        let py: Vec<&str> = py.lines().collect();
        assert_eq!(py[0], "r1\tHello from b, v1.");
        assert_eq!(py[1], "r2\tGrüße from a, v2.");
        assert!(py[2..].iter().all(|l| l.contains("\tERROR")), "{py:?}");
        assert_eq!(py.len(), 6);
        n.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slave_opts_out_with_the_password() {
    bounded(async {
        let n = Network::enabled().await;
        let o = n.disable(&n.cb, PASSWORD, &[]).await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        assert_eq!(n.lab.status("b").await.unwrap().role, Role::Off);
        n.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_rotation_the_download_is_stale_and_disable_needs_the_acknowledgement() {
    bounded(async {
        let n = Network::enabled().await;
        n.records_across_a_rotation().await;
        n.downloaded().await;
        assert_eq!(imcrypt(&["key", "rotate", "-c", &n.ca], "").await.code, 0);
        let o = n.disable(&n.ca, PASSWORD, &[]).await;
        assert_eq!(o.code, 4, "{}", o.stderr);
        assert!(
            o.stderr.contains("--i-understand-data-loss") && o.stderr.contains("unreadable"),
            "{}",
            o.stderr
        );
        assert_eq!(n.lab.status("a").await.unwrap().role, Role::Master);
        let o = n.disable(&n.ca, PASSWORD, &["--i-understand-data-loss", "-o", "json"]).await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        let done: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
        assert!(done["message"].as_str().unwrap().contains("whole domain"), "{done}");
        n.lab.wait_until("c", "off", WAIT, |s| s.role == Role::Off).await.unwrap();
        n.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_and_alarms_answer_as_a_table_and_as_json() {
    bounded(async {
        let n = Network::enabled().await;
        let o = imcrypt(&["peers", "-c", &n.ca], "").await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        assert!(o.stdout.contains("PEER") && o.stdout.contains("connected"), "{}", o.stdout);
        let o = imcrypt(&["alarms", "-c", &n.ca, "-o", "json"], "").await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
        assert!(v["active"].is_array() && v["history"].is_array(), "{v}");
        n.stop().await;
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
        let weak = openssl_key_pair(dir, "weak", KeyKind::Rsa(1024));
        let o = imcrypt(
            &["key", "download", "--public-key", s(&weak.public), "-c", s(&dir.join("a.toml"))],
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
