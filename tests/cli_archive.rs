//! The compliance archive as an operator runs it, every step through the `imcrypt` binary:
//! `imcrypt archive` writes IM events through a daemon's hot path into a real PostgreSQL, or
//! into the default SQLite file when no database is named, `imcrypt key download` fetches the
//! key for an OpenSSL-made RSA key, and `imcrypt view` reads the archive back with filters,
//! including across a key rotation, after which an event sent again is still stored once.
//! Every option of both commands has a help line.

#[path = "support/pg.rs"]
mod pg;
mod support;

use std::path::Path;

use support::*;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The administrator makes an OpenSSL key pair in `dir` and downloads the keys for it from the
/// master configured in `cfg`; returns the private key and the export.
async fn download_keys(dir: &Path, cfg: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let (KeyPair { private, .. }, export) = support::download_keys(dir, cfg, "admin").await;
    (private, export)
}

fn json_lines(s: &str) -> Vec<serde_json::Value> {
    s.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_download_and_view_through_the_cli() {
    bounded(async {
        let pg = pg::Pg::start();
        let db = pg.url();
        let (d, mut lab) = mesh(&["a"]);
        let sock = encrypting(&mut lab).await;
        let dir = d.path();
        let cfg = s(&dir.join("a.toml")).to_owned();
        let client = imcrypt::hotpath::Client::new(imcrypt::hotpath::ClientConfig::new(&sock));

        // A 1:1 message, a group chat to two, and an outbound one (skipped by default).
        let events = [
            r#"{"message_id":"m1","from":"alice@example.com","to":["bob@example.com"],"timestamp":1764000000000,"direction":"inbound","body":"quarterly numbers attached"}"#,
            r#"{"message_id":"m2","from":"carol@example.com","to":["alice@example.com","bob@example.com"],"timestamp":1764000001000,"direction":"inbound","body":"standup moved to 10","room":"ops"}"#,
            r#"{"message_id":"m3","from":"bob@example.com","to":["eve@partner.example"],"timestamp":1764000002000,"direction":"outbound","body":"not archived"}"#,
        ];
        let o = imcrypt(&["archive", "--db", &db, "--hotpath", &sock], &(events.join("\n") + "\n")).await;
        assert_eq!(o.code, 0, "{}\n{}", o.stdout, o.stderr);
        let acks = json_lines(&o.stdout);
        // One acknowledgement per event, in completion order, each naming its message.
        let mut results: Vec<_> = acks
            .iter()
            .map(|a| {
                let id = a["message_id"].as_str().unwrap().to_owned();
                (id, a["result"].as_str().unwrap().to_owned(), a["rows"].as_u64().unwrap())
            })
            .collect();
        results.sort();
        let expect = [("m1", "archived", 1), ("m2", "archived", 2), ("m3", "skipped", 0)]
            .map(|(i, r, n)| (i.to_owned(), r.to_owned(), n));
        assert_eq!(results, expect);

        // The key rotates; a message archived afterwards uses version 2.
        lab.daemon("a").unwrap().command(Command::RotateKey).await.unwrap();
        wait_for("a's hot path to encrypt with key version 2", WAIT, async || {
            matches!(client.status().await, Ok(imcrypt::hotpath::KeyStatus::On { key_version, .. }) if key_version.get() == 2).then_some(())
        })
        .await;
        let late = r#"{"message_id":"m4","from":"alice@example.com","to":["carol@example.com"],"timestamp":1764000003000,"direction":"inbound","body":"after the rotation"}"#;
        let o = imcrypt(&["archive", "--db", &db, "--hotpath", &sock], &format!("{late}\n")).await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        // The router sends the first events again after the rotation: they are recognised as
        // stored (a row's identity does not depend on the key version), nothing is doubled.
        let o = imcrypt(&["archive", "--db", &db, "--hotpath", &sock], &(events[..2].join("\n") + "\n")).await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        for a in json_lines(&o.stdout) {
            assert_eq!((a["result"].as_str(), a["rows"].as_u64()), (Some("archived"), Some(0)), "{a}");
            assert_eq!(a["note"], "already stored: nothing was written", "{a}");
        }

        // Which key versions the archive uses: m1 and m2's three rows under 1, m4 under 2.
        let o = imcrypt(&["archive", "versions", "--db", &db, "-o", "json"], "").await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        let per_version: Vec<_> =
            json_lines(&o.stdout).iter().map(|l| (l["key_version"].as_u64(), l["rows"].as_u64(), l["oldest_ms"].as_i64(), l["newest_ms"].as_i64())).collect();
        assert_eq!(
            per_version,
            [(Some(1), Some(3), Some(1764000000000), Some(1764000001000)), (Some(2), Some(1), Some(1764000003000), Some(1764000003000))]
        );
        let o = imcrypt(&["archive", "versions", "--db", &db], "").await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        let table: Vec<Vec<&str>> = o.stdout.lines().map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(table[0], ["key", "version", "rows", "oldest", "newest"]);
        assert_eq!(table[1], ["1", "3", "2025-11-24T16:00:00.000Z", "2025-11-24T16:00:01.000Z"]);
        assert_eq!(table.len(), 3, "{}", o.stdout);

        // The administrator downloads the keys for an OpenSSL key pair, then views.
        let (sk, export) = download_keys(dir, &cfg).await;

        let view = |extra: &'static [&'static str]| {
            let (db, export, sk) = (db.clone(), s(&export).to_owned(), s(&sk).to_owned());
            async move {
                let mut args = vec!["view", "--db", &db, "--export", &export, "--private-key", &sk, "-o", "json"];
                args.extend_from_slice(extra);
                let o = imcrypt(&args, "").await;
                assert_eq!(o.code, 0, "{}", o.stderr);
                json_lines(&o.stdout)
            }
        };
        let all = view(&[]).await;
        let bodies: Vec<_> = all.iter().map(|r| r["body"].as_str().unwrap().to_owned()).collect();
        assert_eq!(all.len(), 4, "{all:?}");
        for b in ["quarterly numbers attached", "standup moved to 10", "after the rotation"] {
            assert!(bodies.iter().any(|x| x == b), "{b} missing: {bodies:?}");
        }
        assert!(!bodies.iter().any(|x| x == "not archived"));
        let from_alice = view(&["--from", "alice@example.com"]).await;
        assert_eq!(from_alice.len(), 2, "{from_alice:?}");
        let room = view(&["--room", "ops"]).await;
        assert_eq!(room.len(), 2);
        assert!(room.iter().all(|r| r["body"] == "standup moved to 10"));
        let to_bob_early = view(&["--to", "bob@example.com", "--until", "1764000000500"]).await;
        assert_eq!(to_bob_early.len(), 1);
        assert_eq!(to_bob_early[0]["message_id"], "m1");

        // A row's identity, as docs/archive.md defines it, computed by Python from the unwrapped
        // key ring, is what the database holds as its recipient_key.
        let ring = dir.join("ring.json");
        let o = imcrypt(&["key", "unwrap", "--export", s(&export), "--private-key", s(&sk), "--out", s(&ring)], "").await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        let py = std::process::Command::new("python3")
            .args([concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/row_identity.py"), s(&ring), "m2", " Bob@Example.com "])
            .output()
            .unwrap();
        assert!(py.status.success(), "{}", String::from_utf8_lossy(&py.stderr));
        let (pg_client, conn) = tokio_postgres::connect(&db, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        let keys: Vec<String> = pg_client
            .query("SELECT encode(recipient_key, 'hex') FROM imcrypt_archive WHERE message_id = 'm2'", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let python = String::from_utf8(py.stdout).unwrap().trim().to_owned();
        assert_eq!(keys.len(), 2, "m2 went to alice and bob");
        assert!(keys.contains(&python), "python's {python} is not among {keys:?}");

        // Without the keys the viewer shows nothing readable and says why.
        let o = imcrypt(&["view", "--db", &db, "-o", "json"], "").await;
        assert!(!o.stdout.contains("quarterly") && !o.stdout.contains("alice@"), "{}", o.stdout);

        drop(client);
        lab.stop_all().await;
    })
    .await;
}

/// A one-cluster lab with a hot path and encryption on; returns the hot-path socket.
async fn encrypting(lab: &mut imcrypt::demo::Lab) -> String {
    lab.spec_mut("a").hotpath = true;
    lab.start("a").await.unwrap();
    lab.daemon("a").unwrap().command(enable(false)).await.unwrap();
    let sock = s(&lab.hotpath_socket("a")).to_owned();
    let client = imcrypt::hotpath::Client::new(imcrypt::hotpath::ClientConfig::new(&sock));
    wait_for("a's hot path to encrypt", WAIT, async || {
        matches!(client.status().await, Ok(imcrypt::hotpath::KeyStatus::On { .. })).then_some(())
    })
    .await;
    sock
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_database_named_archive_and_view_use_an_sqlite_file_in_the_current_directory() {
    bounded(async {
        let (d, mut lab) = mesh(&["a"]);
        let sock = encrypting(&mut lab).await;
        let dir = d.path();
        let cfg = s(&dir.join("a.toml")).to_owned();
        let work = dir.join("work");
        std::fs::create_dir(&work).unwrap();
        let here = Run { dir: Some(&work), env: &[] };
        let events = [
            r#"{"message_id":"m1","from":"alice@example.com","to":"bob@example.com","timestamp":1764000000000,"direction":"inbound","body":"quarterly numbers attached"}"#,
            r#"{"message_id":"m2","from":"carol@example.com","to":["alice@example.com","bob@example.com"],"timestamp":1764000001000,"direction":"inbound","body":"standup moved to 10","room":"ops"}"#,
        ];
        let input = events.join("\n") + "\n";
        let o = imcrypt_with(here, &["archive", "--hotpath", &sock], &input).await;
        assert_eq!(o.code, 0, "{}\n{}", o.stdout, o.stderr);
        let mut acks = json_lines(&o.stdout);
        acks.sort_by_key(|a| a["message_id"].as_str().unwrap().to_owned());
        assert_eq!((acks[0]["rows"].as_u64(), acks[1]["rows"].as_u64()), (Some(1), Some(2)));
        assert!(acks.iter().all(|a| a["result"] == "archived" && a.get("note").is_none()));
        let file = work.join("imcrypt-archive.db");
        assert!(file.exists(), "the default archive is imcrypt-archive.db here");

        // The key rotates, then the router sends both again: archived, nothing written, and
        // the ack says so.
        lab.daemon("a").unwrap().command(Command::RotateKey).await.unwrap();
        let client = imcrypt::hotpath::Client::new(imcrypt::hotpath::ClientConfig::new(&sock));
        wait_for("a's hot path to encrypt with key version 2", WAIT, async || {
            matches!(client.status().await, Ok(imcrypt::hotpath::KeyStatus::On { key_version, .. }) if key_version.get() == 2).then_some(())
        })
        .await;
        let here = Run { dir: Some(&work), env: &[] };
        let o = imcrypt_with(here, &["archive", "--hotpath", &sock], &input).await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        for a in json_lines(&o.stdout) {
            assert_eq!((a["result"].as_str(), a["rows"].as_u64()), (Some("archived"), Some(0)));
            assert_eq!(a["note"], "already stored: nothing was written", "{a}");
            assert!(a["already_stored"].as_u64().unwrap() >= 1, "{a}");
        }

        let (sk, export) = download_keys(dir, &cfg).await;
        let keys = ["--export", s(&export), "--private-key", s(&sk), "-o", "json"];

        // The viewer in the same directory reads the same file.
        let here = Run { dir: Some(&work), env: &[] };
        let o = imcrypt_with(here, &[&["view"][..], &keys].concat(), "").await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        let rows = json_lines(&o.stdout);
        assert_eq!(rows.len(), 3, "{rows:?}");
        assert!(rows.iter().any(|r| r["body"] == "quarterly numbers attached"));
        // From elsewhere, named by IMCRYPT_ARCHIVE_DB (sqlite:///absolute/path), filtered.
        let url = format!("sqlite://{}", file.display());
        let elsewhere = Run { dir: Some(dir), env: &[("IMCRYPT_ARCHIVE_DB", &url)] };
        let o = imcrypt_with(elsewhere, &[&["view", "--room", "ops"][..], &keys].concat(), "").await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        let rows = json_lines(&o.stdout);
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert!(rows.iter().all(|r| r["body"] == "standup moved to 10"));

        // A directory without an archive: the viewer says so, and creates nothing.
        let empty = dir.join("empty");
        std::fs::create_dir(&empty).unwrap();
        let there = Run { dir: Some(&empty), env: &[] };
        let o = imcrypt_with(there, &[&["view"][..], &keys].concat(), "").await;
        assert_eq!(o.code, 1, "{}", o.stderr);
        assert!(o.stderr.contains("imcrypt-archive.db") && o.stderr.contains("does not exist"), "{}", o.stderr);
        assert!(!empty.join("imcrypt-archive.db").exists());
        lab.stop_all().await;
    })
    .await;
}

#[test]
fn every_option_of_archive_and_view_has_a_help_line_and_the_default_database_is_named() {
    use clap::CommandFactory;
    let cli = imcrypt::cli::Cli::command();
    for sub in ["archive", "view"] {
        let cmd = cli.find_subcommand(sub).unwrap();
        for arg in cmd.get_arguments() {
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            assert!(!help.trim().is_empty(), "imcrypt {sub} --{} has no help line", arg.get_id());
        }
        let db = cmd.get_arguments().find(|a| a.get_id() == "db").unwrap();
        assert_eq!(db.get_default_values(), ["sqlite:imcrypt-archive.db"]);
        assert!(db.get_help().unwrap().to_string().contains("imcrypt-archive.db"));
        // --help never prints the password IMCRYPT_ARCHIVE_DB carries.
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_imcrypt"))
            .args([sub, "--help"])
            .env("IMCRYPT_ARCHIVE_DB", "postgres://u:topsecret@db/im")
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.contains("IMCRYPT_ARCHIVE_DB") && !help.contains("topsecret"), "{help}");
    }
    let archive = cli.find_subcommand("archive").unwrap();
    for sub in archive.get_subcommands() {
        for arg in sub.get_arguments() {
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            let name = sub.get_name();
            assert!(
                !help.trim().is_empty(),
                "imcrypt archive {name} --{} has no help line",
                arg.get_id()
            );
        }
    }
}

/// The per-version row counts `imcrypt archive versions -o json` prints, lowest first.
async fn versions(db: &str) -> Vec<(Option<u64>, u64)> {
    let o = imcrypt(&["archive", "versions", "--db", db, "-o", "json"], "").await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    json_lines(&o.stdout)
        .iter()
        .map(|l| (l["key_version"].as_u64(), l["rows"].as_u64().unwrap()))
        .collect()
}

/// What `imcrypt view` shows of every row, without the key version it was read under.
async fn messages(db: &str, export: &Path, sk: &Path, extra: &[&str]) -> Vec<String> {
    let mut args =
        vec!["view", "--db", db, "--export", s(export), "--private-key", s(sk), "-o", "json"];
    args.extend_from_slice(extra);
    let o = imcrypt(&args, "").await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let mut rows: Vec<String> = json_lines(&o.stdout)
        .into_iter()
        .map(|mut r| {
            r.as_object_mut().unwrap().remove("key_version");
            r.to_string()
        })
        .collect();
    rows.sort();
    rows
}

/// Archives under version 1, rotates twice, rewraps with a job killed with `kill -9` midway
/// and started again: every row ends under version 3, none lost or doubled, and the viewer
/// shows the same messages, found by participant through indexes made under version 3.
async fn rewrap_story(db: &str) {
    const N: usize = 3000;
    let (d, mut lab) = mesh(&["a"]);
    let sock = encrypting(&mut lab).await;
    let rewrap_sock = s(&lab.rewrap_socket("a")).to_owned();
    let dir = d.path();
    let cfg = s(&dir.join("a.toml")).to_owned();
    let events: String = (0..N)
        .map(|i| {
            let room = if i % 3 == 0 { r#","room":"ops""# } else { "" };
            format!(
                r#"{{"message_id":"m{i}","from":"user{}@example.com","to":["user{}@example.com"],"timestamp":{},"direction":"inbound","body":"body {i}"{room}}}"#,
                i % 7,
                (i + 1) % 7,
                1_764_000_000_000u64 + i as u64
            ) + "\n"
        })
        .collect();
    let o = imcrypt(&["archive", "--db", db, "--hotpath", &sock], &events).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(versions(db).await, [(Some(1), N as u64)]);

    // Rewrap before any rotation: nothing to do, and it says so.
    let o = imcrypt(&["archive", "rewrap", "--db", db, "--hotpath", &rewrap_sock], "").await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(o.stdout.trim(), "rewrapped 0 rows to key version 1; 0 failed");

    let client = imcrypt::hotpath::Client::new(imcrypt::hotpath::ClientConfig::new(&sock));
    for v in [2, 3] {
        lab.daemon("a").unwrap().command(Command::RotateKey).await.unwrap();
        wait_for("a's hot path to take the new version", WAIT, async || {
            matches!(client.status().await, Ok(imcrypt::hotpath::KeyStatus::On { key_version, .. }) if key_version.get() == v).then_some(())
        })
        .await;
    }
    let (sk, export) = download_keys(dir, &cfg).await;
    let before = messages(db, &export, &sk, &[]).await;
    assert_eq!(before.len(), N);
    let from_user3 = messages(db, &export, &sk, &["--from", "user3@example.com"]).await;

    // The router's socket may not rewrap: the daemon answers with the reason.
    let o = imcrypt(&["archive", "rewrap", "--db", db, "--hotpath", &sock], "").await;
    assert_eq!(o.code, 1, "{}", o.stdout);
    assert!(o.stderr.contains("rewrap socket"), "{}", o.stderr);
    assert_eq!(versions(db).await, [(Some(1), N as u64)], "a refused rewrap changes nothing");

    // A rate-limited job, killed with kill -9 once it committed its first rows.
    let mut job = tokio::process::Command::new(env!("CARGO_BIN_EXE_imcrypt"))
        .args(["archive", "rewrap", "--db", db, "--hotpath", &rewrap_sock, "--rate", "1000"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let partial = wait_for("the job's first committed rows", WAIT, async || {
        let v = versions(db).await;
        (v.len() == 2).then_some(v)
    })
    .await;
    job.start_kill().unwrap();
    job.wait().await.unwrap();
    let left = partial[0].1;
    assert_eq!((partial[0].0, partial[1].0), (Some(1), Some(3)));
    assert!(left > 0 && left < N as u64 && left + partial[1].1 == N as u64, "{partial:?}");
    let now = versions(db).await;
    assert_eq!(now.iter().map(|v| v.1).sum::<u64>(), N as u64, "no row lost or doubled: {now:?}");

    // Started again, it does what is left, and no more.
    let left = now[0].1;
    let o = imcrypt(&["archive", "rewrap", "--db", db, "--hotpath", &rewrap_sock], "").await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(
        o.stdout.trim(),
        format!("rewrapped {left} rows to key version 3: {left} from key version 1; 0 failed")
    );
    assert_eq!(versions(db).await, [(Some(3), N as u64)]);

    // The same messages, and participant filters find them through the new indexes.
    assert_eq!(messages(db, &export, &sk, &[]).await, before);
    assert_eq!(messages(db, &export, &sk, &["--from", "user3@example.com"]).await, from_user3);
    assert_eq!(from_user3.len(), (0..N).filter(|i| i % 7 == 3).count());
    let ops = messages(db, &export, &sk, &["--room", "ops"]).await;
    assert_eq!(ops.len(), N.div_ceil(3));

    // No row needs versions 1 and 2 any more: retire them (the keys were downloaded after the
    // last rotation), and the archive still reads whole with an export of version 3 alone.
    let args = ["key", "retire", "--below", "3", "--password-stdin", "-c", &cfg];
    let o = imcrypt(&args, &format!("{PASSWORD}\n")).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let st =
        lab.wait_until("a", "version 3 only", WAIT, |st| st.key_versions.len() == 1).await.unwrap();
    assert_eq!(st.primary_version.map(|v| v.get()), Some(3));
    let after = dir.join("after-retire");
    std::fs::create_dir(&after).unwrap();
    let (sk3, export3) = download_keys(&after, &cfg).await;
    let only_v3: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&export3).unwrap()).unwrap();
    assert_eq!(only_v3["keys"].as_array().unwrap().len(), 1, "{only_v3}");
    assert_eq!(messages(db, &export3, &sk3, &[]).await, before);
    // A re-sent event is still recognised after the rewrap (its row identity stayed).
    let first = events.lines().next().unwrap().to_owned() + "\n";
    let o = imcrypt(&["archive", "--db", db, "--hotpath", &sock], &first).await;
    assert_eq!(json_lines(&o.stdout)[0]["rows"], 0, "{}", o.stdout);
    drop(client);
    lab.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrap_of_a_postgresql_archive_survives_kill_9_and_lets_old_versions_retire() {
    bounded(async {
        let pg = pg::Pg::start();
        rewrap_story(&pg.url()).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrap_of_an_sqlite_archive_survives_kill_9_and_lets_old_versions_retire() {
    bounded(async {
        let d = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", d.path().join("archive.db").display());
        rewrap_story(&url).await;
    })
    .await;
}
