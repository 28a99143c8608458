//! The audit trail end to end, through the `imcrypt` binary against a real daemon (tasks of
//! this process): a key download recorded with the fingerprint `openssl` computes, no secret
//! in any record, every kind of tampering caught by `imcrypt audit verify` naming the record,
//! and an audit trail that cannot be written refusing download, disable and password change
//! while status still answers.

mod support;

use std::path::{Path, PathBuf};

use imcrypt::audit::{Actor, Entry, GENESIS, Outcome, hash_line};
use sha2::Digest;
use support::*;

const NEW_PASSWORD: &str = "Another-Battery-7-staple";

/// What only these tests ask of the one-cluster fixture.
impl One {
    fn log(&self) -> PathBuf {
        self.state().join("audit.log")
    }

    fn entries(&self) -> Vec<Entry> {
        let text = std::fs::read_to_string(self.log()).unwrap();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    async fn download(&self, key: &KeyPair, password: &str) -> Out {
        let out = self.dir.path().join("export.json");
        let args = [
            "key",
            "download",
            "--public-key",
            s(&key.public),
            "--out",
            s(&out),
            "--force",
            "--password-stdin",
            "-c",
            &self.cfg,
        ];
        imcrypt(&args, &format!("{password}\n")).await
    }

    async fn verify(&self, with_config: bool) -> Out {
        if with_config {
            imcrypt(&["audit", "verify", "--config", &self.cfg], "").await
        } else {
            imcrypt(&["audit", "verify", s(&self.log())], "").await
        }
    }
}

/// SHA-256 of the key's SubjectPublicKeyInfo DER, as `openssl pkey -pubin -outform DER` writes
/// it: what an auditor computes for the key they were given.
fn openssl_fingerprint(public: &Path) -> String {
    let out = std::process::Command::new("openssl")
        .args(["pkey", "-pubin", "-in", s(public), "-outform", "DER"])
        .output()
        .expect("openssl (scripts/test.sh installs it)");
    assert!(out.status.success());
    hex::encode(sha2::Sha256::digest(&out.stdout))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_download_is_audited_with_the_recipient_fingerprint_openssl_computes() {
    bounded(async {
        let one = One::enabled().await;
        let key = openssl_key_pair(one.dir.path(), "auditor", KeyKind::Rsa(3072));
        let o = one.download(&key, "Wrong-Password-1-x").await;
        assert_ne!(o.code, 0, "a wrong password is refused");
        let o = one.download(&key, PASSWORD).await;
        assert_eq!(o.code, 0, "{}", o.stderr);

        let o = imcrypt(
            &["audit", "show", "--config", &one.cfg, "--action", "key.download", "-o", "json"],
            "",
        )
        .await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        let shown: Vec<Entry> =
            o.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(shown.len(), 2, "{}", o.stdout);
        let (wrong, good) = (&shown[0], &shown[1]);
        assert_eq!(wrong.result, Outcome::Refused);
        assert!(wrong.reason.as_deref().unwrap().contains("password is wrong"), "{wrong:?}");
        assert_eq!(good.result, Outcome::Ok);
        assert_eq!(good.actor, Actor::Admin { name: "admin".into(), role: "admin".into() });
        assert!(good.source.as_deref().unwrap().starts_with("127.0.0.1:"), "{good:?}");
        assert_eq!(good.details["recipient_fingerprint"], openssl_fingerprint(&key.public));
        assert_eq!(good.details["versions"], serde_json::json!([1]));
        assert_eq!(good.cluster, "a");

        // The table names the same act.
        let o = imcrypt(&["audit", "show", "--config", &one.cfg, "--actor", "admin"], "").await;
        assert!(
            o.stdout.contains("key.download") && o.stdout.contains("encryption.enable"),
            "{}",
            o.stdout
        );

        // Records of the state machine: the key ring it made at enable, the role change.
        let all = one.entries();
        let actions: Vec<&str> = all.iter().map(|e| e.action.as_str()).collect();
        for a in ["encryption.enable", "role.change", "keyring.change", "key.download"] {
            assert!(actions.contains(&a), "{actions:?}");
        }

        // No secret in any record: the password, the token, the key bytes.
        let text = std::fs::read_to_string(one.log()).unwrap();
        let token = std::fs::read_to_string(one.state().join("admin.token")).unwrap();
        let ring = one.lab.daemon("a").unwrap().key_ring().borrow().clone().unwrap();
        let key_hex = hex::encode(ring.primary().bytes());
        for secret in [PASSWORD, token.trim(), key_hex.as_str(), "Wrong-Password-1-x"] {
            assert!(!text.contains(secret), "a secret is in the audit log");
        }

        let o = one.verify(true).await;
        assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
        assert!(o.stdout.contains("ends at the sealed head"), "{}", o.stdout);
    })
    .await;
}

/// A fresh chain of `n` valid records, as someone who wants to hide what happened would write.
fn forged_chain(n: u64) -> String {
    let mut prev = GENESIS;
    let mut out = String::new();
    for seq in 1..=n {
        let e = Entry {
            seq,
            prev: hex::encode(prev),
            time: "2026-01-01T00:00:00.000Z".into(),
            cluster: "a".into(),
            actor: Actor::Local,
            source: None,
            action: "role.change".into(),
            target: "off".into(),
            result: Outcome::Ok,
            reason: None,
            details: Default::default(),
        };
        let line = e.line();
        prev = hash_line(line.as_bytes());
        out.push_str(&line);
        out.push('\n');
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_tampering_is_caught_by_audit_verify_naming_the_record() {
    bounded(async {
        let mut one = One::enabled().await;
        for _ in 0..3 {
            let o = imcrypt(&["key", "rotate", "-c", &one.cfg], "").await;
            assert_eq!(o.code, 0, "{}", o.stderr);
        }
        one.lab.stop("a").await.unwrap();
        let original = std::fs::read_to_string(one.log()).unwrap();
        let lines: Vec<&str> = original.lines().collect();
        let n = lines.len();
        assert!(n >= 8, "{original}");
        let o = one.verify(true).await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        // The auditor's few lines of Python from docs/formats.md agree.
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/formats.md"))
            .unwrap();
        let audit_section = &doc[doc.find("## 5. Audit trail").unwrap()..];
        let start = audit_section.find("```python\n").unwrap() + "```python\n".len();
        let script = &audit_section[start..start + audit_section[start..].find("```").unwrap()];
        let py = std::process::Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(one.log())
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&py.stdout);
        assert!(py.status.success() && said.contains(&format!("intact up to seq {n}")), "{said}");

        let join = |ls: &[&str]| ls.iter().map(|l| format!("{l}\n")).collect::<String>();
        // (what was done, the file written, whether only the sealed head can tell, what the
        // error must name)
        // One byte: the last digit of record 3's time, the JSON still valid.
        let mut edited = lines.clone();
        let mut third = lines[2].as_bytes().to_vec();
        let z = lines[2].find("Z\",\"cluster\"").unwrap() - 1;
        third[z] = if third[z] == b'0' { b'1' } else { b'0' };
        let third = String::from_utf8(third).unwrap();
        edited[2] = &third;
        let mut swapped = lines.clone();
        swapped.swap(3, 4);
        let mut deleted = lines.clone();
        deleted.remove(4);
        let cases = [
            (
                "one byte edited",
                join(&edited),
                false,
                "record seq 4".to_owned()
                    + " ("
                    + s(&one.log())
                    + " line 4): its prev hash is not the hash of record seq 3",
            ),
            (
                "two records swapped",
                join(&swapped),
                false,
                "record seq 5 (".to_owned() + s(&one.log()) + " line 4) comes where seq 4 should",
            ),
            (
                "a record deleted",
                join(&deleted),
                false,
                "record seq 6 (".to_owned() + s(&one.log()) + " line 5) comes where seq 5 should",
            ),
            ("the tail cut", join(&lines[..n - 2]), true, format!("ends at record seq {}", n - 2)),
            (
                "the file replaced by a fresh valid chain",
                forged_chain(n as u64),
                true,
                format!("record seq {n}"),
            ),
        ];
        for (what, text, needs_head, names) in cases {
            std::fs::write(one.log(), &text).unwrap();
            let o = one.verify(needs_head).await;
            assert_eq!(o.code, 8, "{what} went unnoticed: {}", o.stdout);
            assert!(o.stderr.contains(names.as_str()), "{what}: {}", o.stderr);
            if needs_head {
                assert_eq!(one.verify(false).await.code, 0, "{what}: only the head tells");
            }
            // And the daemon refuses to start on it rather than extend a broken chain.
            if needs_head {
                let e = one.lab.start("a").await.expect_err("refused to start").to_string();
                assert!(e.contains("does not match its sealed head"), "{e}");
            }
        }
        std::fs::write(one.log(), &original).unwrap();
        assert_eq!(one.verify(true).await.code, 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_audit_refuses_download_disable_and_password_change_and_status_answers() {
    bounded(async {
        let one = One::enabled().await;
        let key = openssl_key_pair(one.dir.path(), "admin", KeyKind::Rsa(2048));
        let before = one.lab.status("a").await.unwrap();
        let records = one.entries().len();
        // Tests run as root here, and chmod does not stop root: a directory where the log
        // should be does (the daemon opens the log for every batch).
        let kept = one.state().join("audit.log.kept");
        std::fs::rename(one.log(), &kept).unwrap();
        std::fs::create_dir(one.log()).unwrap();

        let o = one.download(&key, PASSWORD).await;
        assert_eq!(o.code, 6, "{}", o.stderr);
        assert!(
            o.stderr.contains("audit record") && o.stderr.contains("nothing was"),
            "{}",
            o.stderr
        );
        assert!(!one.dir.path().join("export.json").exists(), "no export without its record");
        let o = imcrypt(
            &["password", "change", "--password-stdin", "-c", &one.cfg],
            &format!("{PASSWORD}\n{NEW_PASSWORD}\n"),
        )
        .await;
        assert_eq!(o.code, 6, "{}", o.stderr);
        let disable = ["encryption", "disable", "--password-stdin", "--i-understand-data-loss"];
        let o =
            imcrypt(&[&disable[..], &["-c", one.cfg.as_str()]].concat(), &format!("{PASSWORD}\n"))
                .await;
        assert_eq!(o.code, 6, "{}", o.stderr);
        let o = imcrypt(&["key", "rotate", "-c", &one.cfg], "").await;
        assert_eq!(o.code, 6, "{}", o.stderr);
        let create = ["admin", "token", "create", "--name", "eve", "--role", "admin"];
        let o = imcrypt(&[&create[..], &["-c", one.cfg.as_str()]].concat(), "").await;
        assert_eq!(o.code, 6, "a token change without its record: {}", o.stderr);

        // Status answers, and says why.
        let o = imcrypt(&["status", "-c", &one.cfg], "").await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        assert!(o.stdout.contains("MAencryptionAuditUnavailable"), "{}", o.stdout);
        let during = one.lab.status("a").await.unwrap();
        assert_eq!((during.role, during.primary_version), (before.role, before.primary_version));

        // Back to normal: nothing had changed (the old password still works, still master,
        // same key version), no record of the refused acts, and the chain is whole.
        std::fs::remove_dir(one.log()).unwrap();
        std::fs::rename(&kept, one.log()).unwrap();
        assert_eq!(one.entries().len(), records);
        let o = one.download(&key, PASSWORD).await;
        assert_eq!(o.code, 0, "the password was not changed: {}", o.stderr);
        let after = one.lab.status("a").await.unwrap();
        assert_eq!((after.role, after.primary_version), (before.role, before.primary_version));
        assert!(!has_alarm(&after, AlarmName::AuditUnavailable, "a"), "cleared");
        let o = one.verify(true).await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        let o = imcrypt(&["admin", "token", "list", "-c", &one.cfg], "").await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        assert!(!o.stdout.contains("eve"), "no token was made without its record: {}", o.stdout);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_list_asks_the_daemon_which_filters_and_says_when_its_chain_is_broken() {
    bounded(async {
        let one = One::enabled().await;
        let key = openssl_key_pair(one.dir.path(), "auditor", KeyKind::Rsa(2048));
        assert_eq!(one.download(&key, PASSWORD).await.code, 0);
        let list = |args: &[&str]| {
            let args = [&["audit", "list", "-c", &one.cfg][..], args].concat();
            let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
            async move {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                imcrypt(&args, "").await
            }
        };

        // The records the files hold, filtered by the daemon as `audit show` filters them.
        let o = list(&["--action", "key.", "-o", "json"]).await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        let listed: Vec<Entry> =
            o.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let on_disk: Vec<Entry> =
            one.entries().into_iter().filter(|e| e.action.starts_with("key.")).collect();
        assert_eq!(listed, on_disk);
        assert_eq!(listed.last().unwrap().action, "key.download");
        assert!(o.stderr.contains("audit chain intact"), "{}", o.stderr);
        let o = list(&["--limit", "1"]).await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        assert_eq!(o.stdout.lines().count(), 2, "a header and the newest record: {}", o.stdout);
        let o = list(&["--since", "yesterday-ish"]).await;
        assert_eq!(o.code, 3, "a bad time is a bad value: {}", o.stderr);
        assert!(o.stderr.contains("since"), "{}", o.stderr);

        // A record changed behind the daemon's back: the daemon's own check finds it.
        let text = std::fs::read_to_string(one.log()).unwrap();
        std::fs::write(one.log(), text.replacen("key.download", "key.dowNload", 1)).unwrap();
        let o = list(&[]).await;
        assert_eq!(o.code, 8, "{}{}", o.stdout, o.stderr);
        assert!(o.stderr.contains("does not verify"), "{}", o.stderr);
    })
    .await;
}
