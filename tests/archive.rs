//! The compliance database for real: an archiver writes IM events through a daemon's hot path
//! into PostgreSQL (a throwaway server, tests/support/pg.rs) and SQLite (a file in a temp dir),
//! the viewer reads them back, a DBA's SELECT shows no body or participant, a ciphertext moved
//! to another row does not open, a database stopped mid-stream with blocking on loses nothing
//! and refuses new events, and an archiver killed with SIGKILL loses no acknowledged row.
//! PostgreSQL over TLS (a server with `ssl = on` and a certificate from `imcrypt pki`, taking
//! TLS only): libpq's `sslmode`s connect or refuse as libpq does, and the round trip runs.
//! The same body runs against SQL Server when `IMCRYPT_TEST_MSSQL` names one
//! (`sqlserver://user:password@host:port/db`), also over TLS. Without one, SQL Server's TLS is
//! checked against a stand-in that speaks TDS up to the login (tests/support/tds.rs): which
//! certificates tiberius accepts for each `sslmode`, and whether the login leaves in clear.

#[path = "support/pg.rs"]
mod pg;
mod support;
#[path = "support/tds.rs"]
mod tds;

use std::sync::Arc;
use std::time::Duration;

use imcrypt::archive::{
    Archiver, ArchiverConfig, Db, DbUrl, Outcome, ProbeResult, ViewFilter, db::StoredRow, view,
};
use imcrypt::cluster::ComplianceDb;
use imcrypt::crypto::keyring::KeyRing;
use imcrypt::hotpath::{Client, ClientConfig, KeyStatus};
use support::*;

fn event(
    id: &str,
    from: &str,
    to: &[&str],
    ts: i64,
    dir: &str,
    body: &str,
    room: Option<&str>,
) -> String {
    let mut v = serde_json::json!({
        "message_id": id, "from": from, "to": to, "timestamp": ts, "direction": dir, "body": body,
    });
    if let Some(r) = room {
        v["room"] = r.into();
    }
    v.to_string()
}

/// A master with a hot path, encryption on; returns the lab and the domain's key ring.
async fn encrypting_cluster() -> (tempfile::TempDir, Lab, KeyRing) {
    let (d, mut lab) = mesh(&["a"]);
    lab.spec_mut("a").hotpath = true;
    lab.start("a").await.unwrap();
    lab.daemon("a").unwrap().command(enable(false)).await.unwrap();
    let client = Client::new(ClientConfig::new(lab.hotpath_socket("a")));
    wait_for("a's hot path to encrypt", WAIT, async || {
        matches!(client.status().await, Ok(KeyStatus::On { .. })).then_some(())
    })
    .await;
    let ring = lab.daemon("a").unwrap().key_ring().borrow().clone().expect("encryption is on");
    (d, lab, (*ring).clone())
}

/// Polls the status of `daemon` (started without a lab, on a config the test changed) until
/// `ok` holds.
async fn wait_status(
    daemon: &imcrypt::daemon::DaemonHandle,
    what: &str,
    ok: impl Fn(&Status) -> bool,
) -> Status {
    let control = daemon.control();
    wait_for(what, WAIT, async || {
        let s = control.status().await.unwrap();
        ok(&s).then_some(s)
    })
    .await
}

async fn all_rows(url: &DbUrl) -> Vec<StoredRow> {
    let mut db = Db::connect(url).await.unwrap();
    db.select(&Default::default()).await.unwrap()
}

/// What a DBA sees with the database's own client: every row of the table as text (SQL
/// Server: not available here, `None`).
async fn dba_dump(url: &DbUrl) -> Option<String> {
    if let Some(path) = url.sqlite_path() {
        let c = rusqlite::Connection::open(path).unwrap();
        let mut st = c.prepare("SELECT * FROM imcrypt_archive").unwrap();
        let n = st.column_count();
        let mut rows = st.query([]).unwrap();
        let mut out = String::new();
        while let Some(r) = rows.next().unwrap() {
            for i in 0..n {
                use rusqlite::types::ValueRef as V;
                match r.get_ref(i).unwrap() {
                    V::Text(t) | V::Blob(t) => out.push_str(&String::from_utf8_lossy(t)),
                    V::Integer(x) => out.push_str(&x.to_string()),
                    other => out.push_str(&format!("{other:?}")),
                }
                out.push('|');
            }
            out.push('\n');
        }
        return Some(out.to_lowercase());
    }
    if url.kind != ComplianceDb::PostgreSql {
        return None;
    }
    let text: Vec<String> = pg_client(url)
        .await
        .query("SELECT t::text FROM imcrypt_archive t", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0).to_lowercase())
        .collect();
    Some(text.join("\n"))
}

/// Runs `sql` as a DBA would, outside imcrypt.
async fn dba_execute(url: &DbUrl, sql: &str) {
    match url.sqlite_path() {
        Some(path) => {
            rusqlite::Connection::open(path).unwrap().execute_batch(sql).unwrap();
        }
        None => pg_client(url).await.batch_execute(sql).await.unwrap(),
    }
}

/// A PostgreSQL session of our own, with the URL's TLS settings (a server may take TLS only).
async fn pg_client(url: &DbUrl) -> tokio_postgres::Client {
    match Db::connect(url).await.unwrap() {
        Db::Postgres(c) => c,
        other => panic!("not PostgreSQL: {other:?}"),
    }
}

/// The shared body: archive → view round trip, filters, what a DBA sees, moved ciphertexts.
async fn round_trip(url: &str) {
    let (_d, mut lab, ring) = encrypting_cluster().await;
    let url: DbUrl = url.parse().unwrap();
    let cfg = ArchiverConfig::new(url.clone(), lab.hotpath_socket("a"));
    let archiver = Arc::new(Archiver::start(cfg).await.unwrap());
    let lines = [
        event(
            "m1",
            "Alice@Example.com",
            &["bob@example.com"],
            1_000,
            "inbound",
            "quarterly numbers attached",
            None,
        ),
        event(
            "m2",
            "bob@example.com",
            &["alice@example.com", "carol@example.com"],
            2_000,
            "inbound",
            "group hello",
            Some("ops-room"),
        ),
        event(
            "m3",
            "alice@example.com",
            &["dave@example.com"],
            3_000,
            "outbound",
            "outbound secret",
            None,
        ),
    ];
    let acks: Vec<_> = futures_join(archiver.clone(), &lines).await;
    assert_eq!((acks[0].result, acks[0].rows), (Outcome::Archived, 1));
    assert_eq!((acks[1].result, acks[1].rows), (Outcome::Archived, 2), "one row per recipient");
    assert_eq!(acks[2].result, Outcome::Skipped, "inbound only by default");
    assert_eq!(archiver.ingest("{not json").await.result, Outcome::Invalid);
    // The same event again (a router retrying after a lost ack) stores nothing twice, and
    // the acknowledgement says so: archived (a router checking only that is satisfied), but
    // no row written now.
    let again = archiver.ingest(&lines[0]).await;
    assert_eq!((again.result, again.rows, again.already_stored), (Outcome::Archived, 0, 1));
    assert_eq!(again.note.as_deref(), Some("already stored: nothing was written"));
    let json = serde_json::to_value(&again).unwrap();
    assert_eq!((json["result"].as_str(), json["rows"].as_u64()), (Some("archived"), Some(0)));

    let (rows, bad) = view(&url, Some(&ring), &ViewFilter::default()).await.unwrap();
    assert!(bad.is_empty(), "{bad:?}");
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0].body, "quarterly numbers attached");
    assert!(rows.iter().all(|r| r.encrypted && r.cluster.as_deref() == Some("a")));
    let f = |from: Option<&str>, to: Option<&str>, room: Option<&str>| ViewFilter {
        from: from.map(Into::into),
        to: to.map(Into::into),
        room: room.map(Into::into),
        ..Default::default()
    };
    let ids = |v: Vec<imcrypt::archive::ViewedRow>| {
        v.into_iter().map(|r| format!("{}>{}", r.message_id, r.to)).collect::<Vec<_>>()
    };
    let got = view(&url, Some(&ring), &f(Some("alice@example.com"), None, None)).await.unwrap().0;
    assert_eq!(ids(got), ["m1>bob@example.com"], "participants match case-insensitively");
    let got = view(&url, Some(&ring), &f(None, Some("CAROL@example.com"), None)).await.unwrap().0;
    assert_eq!(ids(got), ["m2>carol@example.com"]);
    let got = view(&url, Some(&ring), &f(None, None, Some("ops-room"))).await.unwrap().0;
    assert_eq!(got.len(), 2);
    let since = ViewFilter { since_ms: Some(1_500), until_ms: Some(2_500), ..Default::default() };
    assert_eq!(view(&url, Some(&ring), &since).await.unwrap().0.len(), 2);

    // What a DBA sees: every column of every row, as text.
    let dump = format!("{:?}", all_rows(&url).await).to_lowercase();
    for secret in ["alice", "bob@", "carol", "ops-room", "quarterly", "group hello"] {
        assert!(!dump.contains(secret), "{secret} visible to the DBA");
        let hex = hex::encode(secret.as_bytes());
        assert!(!dump.contains(&hex), "{secret} visible to the DBA in hex");
    }
    if let Some(text) = dba_dump(&url).await {
        assert!(text.contains("m1") && text.contains("inbound"), "the dump shows rows: {text}");
        for secret in ["alice", "bob@", "carol", "ops-room", "quarterly", "group hello"] {
            assert!(!text.contains(secret), "{secret} visible to the DBA: {text}");
        }
        // Moving a ciphertext to another row makes that row unreadable, and says so.
        dba_execute(
            &url,
            "UPDATE imcrypt_archive SET payload = (SELECT payload FROM imcrypt_archive \
             WHERE message_id = 'm1') WHERE message_id = 'm2' AND id = (SELECT min(id) FROM \
             imcrypt_archive WHERE message_id = 'm2')",
        )
        .await;
        let (rows, bad) = view(&url, Some(&ring), &ViewFilter::default()).await.unwrap();
        assert_eq!((rows.len(), bad.len()), (2, 1));
        assert!(bad[0].reason.contains("authentication"), "{}", bad[0].reason);
    }
    match Arc::try_unwrap(archiver) {
        Ok(a) => a.close().await,
        Err(_) => panic!("archiver still shared"),
    }
    lab.stop_all().await;
}

async fn futures_join(a: Arc<Archiver>, lines: &[String]) -> Vec<imcrypt::archive::Ack> {
    let mut hs = Vec::new();
    for l in lines {
        let (a, l) = (a.clone(), l.clone());
        hs.push(tokio::spawn(async move { a.ingest(&l).await }));
    }
    let mut out = Vec::new();
    for h in hs {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_archive_view_round_trip() {
    let pg = pg::Pg::start();
    bounded(round_trip(&pg.url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_archive_view_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("archive.db").display());
    bounded(round_trip(&url)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_server_archive_view_round_trip() {
    let Ok(url) = std::env::var("IMCRYPT_TEST_MSSQL") else {
        eprintln!("IMCRYPT_TEST_MSSQL is not set: SQL Server test skipped");
        return;
    };
    bounded(round_trip(&url)).await;
}

/// The URL of `IMCRYPT_TEST_MSSQL` with its parameters replaced by `params`.
fn mssql_url_with(url: &str, params: &str) -> String {
    format!("{}?{params}", url.split('?').next().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_server_archive_view_round_trip_over_tls() {
    let Ok(url) = std::env::var("IMCRYPT_TEST_MSSQL") else {
        eprintln!("IMCRYPT_TEST_MSSQL is not set: SQL Server TLS test skipped");
        return;
    };
    // `Required`: the round trip passes only if every statement ran over TLS. Any SQL
    // Server's certificate, even its self-signed fallback one, with trust_server_certificate;
    // a CA of ours does not sign it, so verify-full with that CA is refused.
    bounded(round_trip(&mssql_url_with(&url, "sslmode=require&trust_server_certificate=true")))
        .await;
    let (_d, [other_ca, _, _]) = pki_for("localhost").await;
    let e = connect_error(&mssql_url_with(
        &url,
        &format!("sslmode=verify-full&sslrootcert={}", other_ca.display()),
    ))
    .await;
    assert!(e.contains("TLS: "), "{e}");
}

/// `sqlserver://sa:pw@HOST:PORT/im?PARAMS` for the stand-in server.
fn tds_url(host: &str, tds: &tds::FakeTds, params: &str) -> String {
    format!("sqlserver://sa:pw@{host}:{}/im?{params}", tds.port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_server_tls_checks_the_chain_and_the_name_before_the_login_leaves() {
    use tds::Seen::*;
    let (_d, [ca, cert, key]) = pki_for("localhost").await;
    let (_o, [other_ca, _, _]) = pki_for("localhost").await;
    let tds = tds::FakeTds::start(Some((&cert, &key)));
    bounded(async {
        let root = format!("sslrootcert={}", ca.display());
        // The CA and the name: the login travels inside TLS (the stand-in then hangs up).
        let e = connect_error(&tds_url("localhost", &tds, &format!("sslmode=verify-full&{root}")))
            .await;
        assert_eq!(tds.take(1), [LoginOverTls], "{e}");
        // libpq's require with a root is verify-ca; tiberius checks the name too: it passes.
        connect_error(&tds_url("localhost", &tds, &format!("sslmode=require&{root}"))).await;
        assert_eq!(tds.take(1), [LoginOverTls]);
        // The certificate names localhost, not the address 127.0.0.1.
        let e = connect_error(&tds_url("127.0.0.1", &tds, &format!("sslmode=verify-full&{root}")))
            .await;
        assert!(e.contains("TLS: ") && e.contains("127.0.0.1"), "{e}");
        assert!(!e.contains("Config::"), "the remedy is said in the URL's terms: {e}");
        assert!(matches!(tds.take(1)[..], [HandshakeFailed(_)]));
        // Another PKI's CA, or none (the system's CAs do not know a development CA).
        let other = format!("sslmode=verify-full&sslrootcert={}", other_ca.display());
        for params in [other.as_str(), "sslmode=require", "sslmode=verify-full"] {
            let e = connect_error(&tds_url("localhost", &tds, params)).await;
            assert!(e.contains("TLS: ") && e.contains("sslrootcert=FILE"), "{params}: {e}");
            assert!(matches!(tds.take(1)[..], [HandshakeFailed(_)]), "{params}");
        }
        // Any certificate, only when the URL says so; still TLS, and the operator is told.
        let any = tds_url("127.0.0.1", &tds, "trust_server_certificate=true");
        connect_error(&any).await;
        assert_eq!(tds.take(1), [LoginOverTls]);
        let o = imcrypt(&["view", "--db", &any, "-o", "json"], "").await;
        assert_eq!(tds.take(1), [LoginOverTls]);
        assert!(
            o.stderr.contains("WARN")
                && o.stderr.contains(
                    "SQL Server at 127.0.0.1: trust_server_certificate=true, \
                                      the server's certificate is not verified"
                ),
            "{}",
            o.stderr
        );
        // libpq's prefer: TLS, and plain text when TLS fails.
        connect_error(&tds_url("localhost", &tds, &format!("sslmode=prefer&{root}"))).await;
        assert_eq!(tds.take(1), [LoginOverTls]);
        connect_error(&tds_url("127.0.0.1", &tds, "sslmode=prefer")).await;
        assert!(matches!(tds.take(2)[..], [HandshakeFailed(_), LoginInClear]));
        connect_error(&tds_url("localhost", &tds, "sslmode=disable")).await;
        assert_eq!(tds.take(1), [LoginInClear]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_server_without_tls_is_refused_when_the_url_asks_for_it() {
    use tds::Seen::*;
    let tds = tds::FakeTds::start(None);
    bounded(async {
        for params in ["sslmode=require", "sslmode=verify-full", "trust_server_certificate=true"] {
            let e = connect_error(&tds_url("localhost", &tds, params)).await;
            assert!(e.contains("offers no TLS"), "{params}: {e}");
            assert_eq!(tds.take(1), [LeftAfterPrelogin], "{params}: no login in clear");
        }
        // prefer (the loopback default) asks for TLS, then logs in again without it; disable
        // logs in without it at once.
        for params in ["", "sslmode=prefer"] {
            connect_error(&tds_url("127.0.0.1", &tds, params)).await;
            assert_eq!(tds.take(2), [LeftAfterPrelogin, LoginInClear], "{params}");
        }
        connect_error(&tds_url("127.0.0.1", &tds, "sslmode=disable")).await;
        assert_eq!(tds.take(1), [LoginInClear]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_stopped_mid_stream_loses_nothing_and_blocking_refuses_new_events() {
    let pg = pg::Pg::start();
    bounded(async {
        let (_d, mut lab, ring) = encrypting_cluster().await;
        let url: DbUrl = pg.url().parse().unwrap();
        let mut cfg = ArchiverConfig::new(url.clone(), lab.hotpath_socket("a"));
        cfg.retry_max = Duration::from_millis(200);
        let archiver = Arc::new(Archiver::start(cfg).await.unwrap());
        let mk = |i: usize| {
            event(&format!("m{i}"), "alice@x", &["bob@x"], i as i64, "inbound", "b", None)
        };
        // A stream of events; the database stops in the middle of it.
        let mut accepted = Vec::new();
        for i in 0..200 {
            let a = archiver.clone();
            let l = mk(i);
            accepted.push(tokio::spawn(async move { a.ingest(&l).await }));
            if i == 100 {
                pg.stop_server();
            }
            // Time passes on purpose: a stream paced so that the stop falls in its middle.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // The archiver notices (it tried to write), then refuses new events at once.
        wait_for("the archiver to see the database go down", WAIT, async || {
            (!archiver.db_reachable()).then_some(())
        })
        .await;
        let refused = archiver.ingest(&mk(1000)).await;
        assert_eq!(refused.result, Outcome::Refused, "{refused:?}");
        assert!(refused.reason.as_deref().unwrap().contains("unreachable"));
        assert!(archiver.queued() > 0, "accepted events wait for the database");
        pg.start_server();
        let mut ok = 0;
        let mut refused_ids = Vec::new();
        for (i, h) in accepted.into_iter().enumerate() {
            let ack = h.await.unwrap();
            match ack.result {
                Outcome::Archived => ok += 1,
                Outcome::Refused => refused_ids.push(format!("m{i}")),
                other => panic!("event m{i}: {other:?} {:?}", ack.reason),
            }
        }
        // Nothing accepted was lost: every archived ack has its row, nothing else is there.
        let (rows, bad) = view(&url, Some(&ring), &ViewFilter::default()).await.unwrap();
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(rows.len(), ok, "{} refused", refused_ids.len());
        assert!(ok >= 100, "events before the stop were archived ({ok})");
        assert!(rows.iter().all(|r| !refused_ids.contains(&r.message_id)));
        assert!(archiver.db_reachable());
        assert_eq!(archiver.ingest(&mk(2000)).await.result, Outcome::Archived);
        lab.stop_all().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_probes_the_database_and_raises_and_clears_mac_compliance_db_down() {
    let pg = pg::Pg::start();
    bounded(async {
        let (_d, lab) = mesh(&["a"]);
        let path = lab.write_config(&imcrypt::demo::cid("a")).unwrap();
        let mut config = imcrypt::config::Config::load(&path).unwrap();
        config.nodes[0].db = Some(pg.url().parse().unwrap());
        config.db_probe.interval = Duration::from_millis(200);
        let daemon = imcrypt::daemon::start(config).await.unwrap();
        let down = |s: &Status| has_alarm(s, AlarmName::ComplianceDbDown, "a");
        let s = wait_status(&daemon, "no MAcomplianceDbDown", |s| !down(s)).await;
        assert!(s.eligible, "a reachable PostgreSQL makes the cluster eligible");
        pg.stop_server();
        let s = wait_status(&daemon, "MAcomplianceDbDown", down).await;
        assert!(!s.eligible);
        assert!(s.off_reason.unwrap().contains("unreachable"));
        let a = s.alarms.iter().find(|a| a.key.name == AlarmName::ComplianceDbDown).unwrap();
        assert!(a.cause.contains("node node1") && !a.remedy.is_empty(), "{a:?}");
        pg.start_server();
        let s = wait_status(&daemon, "MAcomplianceDbDown cleared", |s| !down(s)).await;
        assert!(s.eligible);
        daemon.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_postgres_login_says_what_the_server_said_and_its_sqlstate() {
    let pg = pg::Pg::start();
    bounded(async {
        let at = format!("127.0.0.1:{}", pg.port());
        let fail = |url: String| async move {
            let url: DbUrl = url.parse().unwrap();
            let e = Db::connect(&url).await.unwrap_err();
            assert!(e.is_connection(), "{e:?}");
            e.to_string()
        };
        let e = fail(format!("postgres://nosuchuser:pw@{at}/postgres")).await;
        assert!(e.contains("role \"nosuchuser\" does not exist"), "{e}");
        assert!(e.contains("SQLSTATE 28000"), "{e}");
        assert!(!e.contains(":pw@") && !e.ends_with("db error"), "{e}");
        let e = fail(format!("postgres://imcrypt@{at}/nosuchdb")).await;
        assert!(e.contains("database \"nosuchdb\" does not exist"), "{e}");
        assert!(e.contains("SQLSTATE 3D000") && e.contains(&at), "{e}");
        // The probe reports the same words (they reach MAcomplianceDbDown).
        let url: DbUrl = format!("postgres://imcrypt@{at}/nosuchdb").parse().unwrap();
        match imcrypt::archive::probe(&url).await {
            ProbeResult::Unreachable { reason } => assert!(reason.contains("3D000"), "{reason}"),
            other => panic!("{other:?}"),
        }
    })
    .await;
}

/// An `imcrypt archive` command writing to `db`, its acknowledgements on a pipe, its log at
/// the default level (no IMCRYPT_* or RUST_LOG from the test's environment).
fn archive_command(db: &str, hotpath: &std::path::Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_imcrypt"));
    cmd.args(["archive", "--db", db, "--hotpath"])
        .arg(hotpath)
        .args(["--batch", "50"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .env_remove("RUST_LOG")
        .kill_on_drop(true);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("IMCRYPT_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// An `imcrypt archive` child process writing to `db`, its acknowledgements on a pipe.
fn archive_process(db: &str, hotpath: &std::path::Path) -> tokio::process::Child {
    archive_command(db, hotpath).spawn().unwrap()
}

/// Reads `lines` until one contains `needle`; returns it (panics if the stream ends first).
async fn line_with(
    lines: &mut tokio::io::Lines<impl tokio::io::AsyncBufRead + Unpin>,
    needle: &str,
) -> String {
    loop {
        match lines.next_line().await.unwrap() {
            Some(l) if l.contains(needle) => return l,
            Some(_) => {}
            None => panic!("the archiver's log ended without {needle:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_hot_path_is_warned_about_while_it_lasts_and_counted_in_the_summary() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let pg = pg::Pg::start();
    bounded(async {
        let (_d, mut lab, ring) = encrypting_cluster().await;
        lab.stop("a").await.unwrap();
        let mut child = archive_command(&pg.url(), &lab.hotpath_socket("a"))
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let mut acks = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let mut log = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let e = event("m1", "alice@x", &["bob@x"], 1, "inbound", "held", None);
        stdin.write_all(format!("{e}\n").as_bytes()).await.unwrap();
        // Not one line and then silence: a warning after a few seconds, and again later.
        let first = line_with(&mut log, "hot path has not answered for 3 s").await;
        assert!(first.contains("WARN") && first.contains("1 rows wait"), "{first}");
        let again = line_with(&mut log, "hot path has not answered for 6 s").await;
        assert!(again.contains("WARN"), "{again}");
        // The daemon is back: the event is archived, encrypted, and the outage counted.
        lab.start("a").await.unwrap();
        let ack: serde_json::Value =
            serde_json::from_str(&acks.next_line().await.unwrap().unwrap()).unwrap();
        assert_eq!(ack["result"], "archived", "{ack}");
        line_with(&mut log, "hot path answers again").await;
        drop(stdin);
        let summary = line_with(&mut log, "imcrypt archive:").await;
        assert!(
            summary.contains("1 archived") && summary.contains("unreachable 1 times"),
            "{summary}"
        );
        assert!(child.wait().await.unwrap().success());
        let url: DbUrl = pg.url().parse().unwrap();
        let (rows, bad) = view(&url, Some(&ring), &ViewFilter::default()).await.unwrap();
        assert!(bad.is_empty() && rows.len() == 1, "{rows:?} {bad:?}");
        assert!(rows[0].encrypted && rows[0].body == "held", "{rows:?}");
        lab.stop_all().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starting_on_an_existing_schema_logs_no_already_exists_notices() {
    use tokio::io::AsyncBufReadExt;
    let pg = pg::Pg::start();
    bounded(async {
        let url: DbUrl = pg.url().parse().unwrap();
        Db::connect(&url).await.unwrap().ensure_schema().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        // No event to archive: the start (connect, schema check) and the summary only.
        let mut child = archive_command(&pg.url(), &dir.path().join("no-daemon.sock"))
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut log = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let mut lines = Vec::new();
        while let Some(l) = log.next_line().await.unwrap() {
            lines.push(l);
        }
        assert!(child.wait().await.unwrap().success(), "{lines:#?}");
        assert!(lines.iter().any(|l| l.contains("compliance database ready")), "{lines:#?}");
        assert!(!lines.iter().any(|l| l.contains("already exists")), "{lines:#?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_back_is_used_at_once_not_after_the_reconnection_backoff() {
    let pg = pg::Pg::start();
    bounded(async {
        let (_d, mut lab, _ring) = encrypting_cluster().await;
        let url: DbUrl = pg.url().parse().unwrap();
        let mut cfg = ArchiverConfig::new(url.clone(), lab.hotpath_socket("a"));
        // A backoff far longer than the wait below: only noticing the server is back can win.
        cfg.retry_min = Duration::from_secs(600);
        cfg.retry_max = Duration::from_secs(600);
        let archiver = Arc::new(Archiver::start(cfg).await.unwrap());
        let mk = |i: usize| {
            event(&format!("m{i}"), "alice@x", &["bob@x"], i as i64, "inbound", "b", None)
        };
        assert_eq!(archiver.ingest(&mk(0)).await.result, Outcome::Archived);
        pg.stop_server();
        let a = archiver.clone();
        let held = tokio::spawn(async move { a.ingest(&mk(1)).await });
        wait_for("the archiver to see the database go down", WAIT, async || {
            (!archiver.db_reachable()).then_some(())
        })
        .await;
        assert_eq!(archiver.ingest(&mk(2)).await.result, Outcome::Refused);
        pg.start_server();
        wait_for("the archiver to use the database again", WAIT, async || {
            archiver.db_reachable().then_some(())
        })
        .await;
        assert_eq!(held.await.unwrap().result, Outcome::Archived);
        assert_eq!(archiver.ingest(&mk(3)).await.result, Outcome::Archived);
        assert_eq!(all_rows(&url).await.len(), 3, "m0, m1 and m3; m2 was refused");
        lab.stop_all().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_every_acknowledged_row_survives_kill_9_of_the_archiver() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    bounded(async {
        let (d, mut lab, ring) = encrypting_cluster().await;
        let path = d.path().join("archive.db");
        let url = format!("sqlite:{}", path.display());
        let mut child = archive_process(&url, &lab.hotpath_socket("a"));
        let mut stdin = child.stdin.take().unwrap();
        let mut acks = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        const N: usize = 20_000;
        // The router keeps sending; the archiver is killed while events are in flight.
        let sender = tokio::spawn(async move {
            for i in 0..N {
                let e =
                    event(&format!("m{i}"), "alice@x", &["bob@x"], i as i64, "inbound", "b", None);
                if stdin.write_all(format!("{e}\n").as_bytes()).await.is_err() {
                    return i;
                }
                if i % 100 == 99 {
                    // Time passes on purpose: the router sends at a pace, as routers do.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            N
        });
        let mut acked = Vec::new();
        let read_ack = |line: String, acked: &mut Vec<String>| {
            let a: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert_eq!(a["result"], "archived", "{a}");
            acked.push(a["message_id"].as_str().unwrap().to_owned());
        };
        while acked.len() < 500 {
            let line = acks.next_line().await.unwrap().expect("the archiver answers");
            read_ack(line, &mut acked);
        }
        child.start_kill().unwrap(); // SIGKILL
        let status = child.wait().await.unwrap();
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(9));
        // Acknowledgements it printed before dying count too.
        while let Some(line) = acks.next_line().await.unwrap() {
            read_ack(line, &mut acked);
        }
        let sent = sender.await.unwrap();
        assert!(acked.len() < sent, "killed mid-stream: {} acked of {sent} sent", acked.len());

        let c = rusqlite::Connection::open(&path).unwrap();
        let check: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
        assert_eq!(check, "ok");
        let stored: std::collections::HashSet<String> = c
            .prepare("SELECT message_id FROM imcrypt_archive")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        eprintln!("sent {sent}, acknowledged {}, stored {}", acked.len(), stored.len());
        let lost: Vec<_> = acked.iter().filter(|id| !stored.contains(*id)).collect();
        assert!(lost.is_empty(), "{} acknowledged rows lost, e.g. {:?}", lost.len(), lost.first());
        // And what is there opens.
        let url: DbUrl = url.parse().unwrap();
        let (rows, bad) = view(&url, Some(&ring), &ViewFilter::default()).await.unwrap();
        assert!(bad.is_empty() && rows.len() == stored.len(), "{bad:?}");
        lab.stop_all().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_archiving_to_sqlite_makes_the_cluster_eligible_and_a_missing_dir_does_not() {
    bounded(async {
        let (d, mut lab) = mesh(&["a"]);
        lab.spec_mut("a").nodes = vec![("node1".into(), "sqlite".into())];
        let start = |db: std::path::PathBuf| {
            let path = lab.write_config(&imcrypt::demo::cid("a")).unwrap();
            // [[nodes]] is the config's last table: its db goes right after it.
            let mut text = std::fs::read_to_string(&path).unwrap();
            assert!(text.trim_end().ends_with("archiver = \"sqlite\""), "{text}");
            text.push_str(&format!("db = \"sqlite:{}\"\n", db.display()));
            text.push_str("\n[db_probe]\ninterval = \"200ms\"\n");
            std::fs::write(&path, text).unwrap();
            let config = imcrypt::config::Config::load(&path).unwrap();
            assert_eq!(config.nodes[0].archiver, Some(ComplianceDb::Sqlite));
            imcrypt::daemon::start(config)
        };
        // The archive file does not exist yet; its directory does: eligible, no alarm.
        let db = d.path().join("archive.db");
        let daemon = start(db.clone()).await.unwrap();
        let s = wait_status(&daemon, "eligible", |s| s.eligible).await;
        assert!(!has_alarm(&s, AlarmName::ComplianceDbDown, "a"), "{s:?}");
        assert!(!db.exists(), "the probe created nothing");
        daemon.shutdown().await;
        // A directory that does not exist: not eligible, the alarm names the path.
        let bad = d.path().join("no-such-dir/archive.db");
        let daemon = start(bad).await.unwrap();
        let s = wait_status(&daemon, "MAcomplianceDbDown", |s| {
            has_alarm(s, AlarmName::ComplianceDbDown, "a")
        })
        .await;
        assert!(!s.eligible);
        assert!(s.off_reason.as_deref().unwrap().contains("no-such-dir/archive.db"), "{s:?}");
        daemon.shutdown().await;
    })
    .await;
}

/// A plaintext row for `Db::insert`, in `COLUMNS` order: `id` for its message id, the same
/// recipient for all, `payload` (`None` makes the row bad: the column is NOT NULL).
fn plain_row(id: String, payload: Option<Vec<u8>>) -> Vec<imcrypt::archive::db::Param> {
    use imcrypt::archive::db::Param;
    let mut r = vec![Param::Text(Some(id)), Param::Bytes(Some(vec![7; 32]))];
    r.extend([Param::I64(1), Param::Text(Some("inbound".into())), Param::Bool(false)]);
    r.extend([Param::Bytes(None), Param::Bytes(None), Param::Bytes(None)]);
    r.extend([Param::Text(None), Param::Text(None), Param::Text(None), Param::I32(None)]);
    r.push(Param::Bytes(payload));
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_rows_already_stored_writes_only_the_others_once_and_in_order() {
    let pg = pg::Pg::start();
    bounded(async {
        let url: DbUrl = pg.url().parse().unwrap();
        let mut db = Db::connect(&url).await.unwrap();
        db.ensure_schema().await.unwrap();
        let row = |i: usize| plain_row(format!("m{i}"), Some(vec![1]));
        let first: Vec<_> = (0..4).map(row).collect();
        assert_eq!(db.insert(&first).await.unwrap(), [true; 4], "a fresh batch is all written");
        // A retried batch that grew: m2 and m3 are stored, m4 is new, m5 comes twice.
        let retried: Vec<_> = [2, 4, 3, 5, 5, 6].into_iter().map(row).collect();
        assert_eq!(db.insert(&retried).await.unwrap(), [false, true, false, true, false, true]);
        let sql = "SELECT message_id FROM imcrypt_archive ORDER BY id";
        let stored = pg_client(&url).await.query(sql, &[]).await.unwrap();
        let ids: Vec<String> = stored.iter().map(|r| r.get(0)).collect();
        assert_eq!(ids, ["m0", "m1", "m2", "m3", "m4", "m5", "m6"], "each once, in batch order");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_larger_than_one_statement_is_all_or_nothing_on_postgres() {
    let pg = pg::Pg::start();
    bounded(async {
        let url: DbUrl = pg.url().parse().unwrap();
        let mut db = Db::connect(&url).await.unwrap();
        db.ensure_schema().await.unwrap();
        let row = plain_row;
        let n = db.max_rows_per_insert() + 5;
        let mut rows: Vec<_> = (0..n).map(|i| row(format!("m{i}"), Some(vec![1]))).collect();
        rows.push(row("bad".into(), None));
        let e = db.insert(&rows).await.unwrap_err();
        assert!(!e.is_connection() && e.to_string().contains("null value"), "{e}");
        assert!(all_rows(&url).await.is_empty(), "the first statement was rolled back too");
        rows.pop();
        assert!(db.insert(&rows).await.unwrap().iter().all(|w| *w));
        let again = db.insert(&rows[..3]).await.unwrap();
        assert_eq!(again, [false, false, false], "already stored rows are reported as such");
        assert_eq!(all_rows(&url).await.len(), n);
    })
    .await;
}

/// A development PKI (`imcrypt pki init`) in a temp dir with a certificate for `name`; returns
/// the dir and the paths of the CA, the certificate and its key.
async fn pki_for(name: &str) -> (tempfile::TempDir, [std::path::PathBuf; 3]) {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("pki");
    let r = imcrypt(&["pki", "init", "--out", out.to_str().unwrap(), "--clusters", name], "").await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let files =
        [out.join("ca.pem"), out.join(format!("{name}.pem")), out.join(format!("{name}.key"))];
    (d, files)
}

/// `postgres://imcrypt@HOST:PORT/postgres?PARAMS`
fn pg_url(host: &str, pg: &pg::Pg, params: &str) -> String {
    format!("postgres://imcrypt@{host}:{}/postgres?{params}", pg.port())
}

/// Whether the session of `url` runs over TLS, as the server sees it (`pg_stat_ssl`).
async fn session_uses_tls(url: &str) -> bool {
    pg_client(&url.parse().unwrap())
        .await
        .query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

async fn connect_error(url: &str) -> String {
    let e = Db::connect(&url.parse().unwrap()).await.unwrap_err();
    assert!(e.is_connection(), "{e:?}");
    e.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_connects_to_the_name_in_the_servers_certificate_and_refuses_another() {
    let (_d, [ca, cert, key]) = pki_for("localhost").await;
    let pg = pg::Pg::start_tls(&cert, &key);
    bounded(async {
        let root = format!("sslrootcert={}", ca.display());
        let good = pg_url("localhost", &pg, &format!("sslmode=verify-full&{root}"));
        assert!(session_uses_tls(&good).await, "verify-full runs over TLS");
        // The certificate names localhost, not the address 127.0.0.1.
        let e =
            connect_error(&pg_url("127.0.0.1", &pg, &format!("sslmode=verify-full&{root}"))).await;
        assert!(e.contains("certificate") && e.contains("127.0.0.1"), "{e}");
        // verify-ca checks the chain and not the name: the same address connects.
        let ca_only = pg_url("127.0.0.1", &pg, &format!("sslmode=verify-ca&{root}"));
        assert!(session_uses_tls(&ca_only).await);
        // The probe, the archiver and the viewer share the connection: the probe says why.
        let bad: DbUrl =
            pg_url("127.0.0.1", &pg, &format!("sslmode=verify-full&{root}")).parse().unwrap();
        match imcrypt::archive::probe(&bad).await {
            ProbeResult::Unreachable { reason } => {
                assert!(reason.contains("certificate"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        let ok: DbUrl = good.parse().unwrap();
        assert!(matches!(imcrypt::archive::probe(&ok).await, ProbeResult::Reachable { .. }));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_is_refused_by_verify_ca_and_by_require_with_a_root() {
    let (_d, [_, cert, key]) = pki_for("localhost").await;
    let (_o, [other_ca, _, _]) = pki_for("localhost").await;
    let pg = pg::Pg::start_tls(&cert, &key);
    bounded(async {
        let root = format!("sslrootcert={}", other_ca.display());
        for mode in ["verify-full", "verify-ca", "require"] {
            let url = pg_url("localhost", &pg, &format!("sslmode={mode}&{root}"));
            let e = connect_error(&url).await;
            // Both CAs are "imcrypt development CA": the chain is refused on its signature.
            assert!(e.contains("invalid peer certificate"), "{mode}: {e}");
        }
        // require without a root encrypts without authenticating the server (libpq's rule).
        assert!(session_uses_tls(&pg_url("127.0.0.1", &pg, "sslmode=require")).await);
        // On loopback the default is prefer: TLS, since this server offers it.
        assert!(session_uses_tls(&pg_url("127.0.0.1", &pg, "")).await);
        // This server takes TLS only: disable is turned away by its pg_hba.conf.
        let e = connect_error(&pg_url("127.0.0.1", &pg, "sslmode=disable")).await;
        assert!(e.contains("pg_hba.conf"), "{e}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_refuses_a_server_without_tls_and_disable_and_prefer_use_it_in_clear() {
    let pg = pg::Pg::start();
    bounded(async {
        let e = connect_error(&pg_url("127.0.0.1", &pg, "sslmode=require")).await;
        assert!(e.contains("TLS"), "{e}");
        assert!(!session_uses_tls(&pg_url("127.0.0.1", &pg, "sslmode=disable")).await);
        assert!(!session_uses_tls(&pg_url("127.0.0.1", &pg, "sslmode=prefer")).await);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_archive_view_round_trip_over_tls() {
    let (_d, [ca, cert, key]) = pki_for("localhost").await;
    let pg = pg::Pg::start_tls(&cert, &key);
    let url =
        pg_url("localhost", &pg, &format!("sslmode=verify-full&sslrootcert={}", ca.display()));
    bounded(round_trip(&url)).await;
}

/// Fills the archive at `url` (PostgreSQL, schema in place) with `n` rows in one statement, as
/// the archiver stores them: every `clear`th in clear (its sender one of 100 addresses, in
/// mixed case), the others encrypted (blind indexes that match nothing the tests look for, a
/// payload that opens under no key). Then `ANALYZE`, so the planner knows the table's size.
async fn fill_archive(url: &DbUrl, n: u32, clear: u32) {
    let sql = format!(
        "INSERT INTO imcrypt_archive (message_id, recipient_key, ts_ms, direction, encrypted, \
         from_idx, to_idx, room_idx, from_addr, to_addr, room, key_version, payload) \
         SELECT 'm' || i, sha256(('r' || i)::bytea), i, 'inbound', i % {clear} <> 0, \
           CASE WHEN i % {clear} <> 0 THEN sha256(('f' || i)::bytea) END, \
           CASE WHEN i % {clear} <> 0 THEN sha256(('t' || i)::bytea) END, NULL, \
           CASE WHEN i % {clear} = 0 THEN 'User' || (i % 100) || '@Example.com' END, \
           CASE WHEN i % {clear} = 0 THEN 'Bob' || (i % 50) || '@example.com' END, NULL, \
           CASE WHEN i % {clear} <> 0 THEN 1 END, \
           CASE WHEN i % {clear} = 0 THEN convert_to(json_build_object('message_id', 'm' || i, \
             'from', 'User' || (i % 100) || '@Example.com', 'to', 'Bob' || (i % 50) || '@example.com', \
             'timestamp_ms', i, 'direction', 'inbound', 'body', 'hello ' || i)::text, 'UTF8') \
           ELSE sha256(('p' || i)::bytea) END \
         FROM generate_series(1, {n}) AS i; ANALYZE imcrypt_archive;"
    );
    dba_execute(url, &sql).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_filter_is_an_index_scan_at_100000_rows_also_on_an_archive_from_before() {
    let pg = pg::Pg::start();
    bounded(async {
        let url: DbUrl = pg.url().parse().unwrap();
        let mut db = Db::connect(&url).await.unwrap();
        db.ensure_schema().await.unwrap();
        // An archive created before the indexes on the clear columns existed.
        dba_execute(
            &url,
            "DROP INDEX imcrypt_archive_from_clear, imcrypt_archive_to_clear, \
             imcrypt_archive_room_clear",
        )
        .await;
        fill_archive(&url, 100_000, 10).await;
        db.ensure_schema().await.unwrap();
        dba_execute(&url, "ANALYZE imcrypt_archive").await;
        let ring = KeyRing::new(
            imcrypt::ids::DomainId::from_bytes([1; 16]),
            1,
            zeroize::Zeroizing::new([2; 32]),
        );
        let plan = |ring: Option<KeyRing>, filter: ViewFilter| {
            let url = url.clone();
            async move {
                imcrypt::archive::query_plan(&url, ring.as_ref(), &filter).await.unwrap().unwrap()
            }
        };
        // An index is used when the plan says `Index Scan using NAME` or `Bitmap Index Scan on
        // NAME`; the whole table is read when it says `Seq Scan`.
        let uses = |plan: &str, index: &str| {
            !plan.contains("Seq Scan")
                && (plan.contains(&format!("Index Scan on {index} "))
                    || plan.contains(&format!("Index Scan using {index} ")))
        };
        let from = ViewFilter { from: Some("USER70@example.com".into()), ..Default::default() };
        // With a key ring: the blind index of encrypted rows, or the clear column of the others.
        let p = plan(Some(ring.clone()), from.clone()).await;
        assert!(uses(&p, "imcrypt_archive_from") && uses(&p, "imcrypt_archive_from_clear"), "{p}");
        // Without one (an archive kept in clear): the clear column only, case-insensitively.
        let p = plan(None, from.clone()).await;
        assert!(uses(&p, "imcrypt_archive_from_clear"), "{p}");
        let to = ViewFilter { to: Some("BOB3@example.com".into()), ..Default::default() };
        let p = plan(Some(ring.clone()), to).await;
        assert!(uses(&p, "imcrypt_archive_to") && uses(&p, "imcrypt_archive_to_clear"), "{p}");
        let room = ViewFilter { room: Some("ops".into()), ..Default::default() };
        let p = plan(Some(ring), room).await;
        assert!(uses(&p, "imcrypt_archive_room") && uses(&p, "imcrypt_archive_room_clear"), "{p}");
        // And the filter finds what the plan promises, whatever the case: the 1,000 rows in
        // clear from User70@Example.com (every 100th row).
        let (rows, bad) = view(&url, None, &from).await.unwrap();
        assert_eq!((rows.len(), bad.len()), (1000, 0));
        assert!(rows.iter().all(|r| r.body.starts_with("hello ") && !r.encrypted));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_viewer_prints_its_first_rows_while_the_rest_are_still_in_the_database() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let pg = pg::Pg::start();
    bounded(async {
        let url: DbUrl = pg.url().parse().unwrap();
        Db::connect(&url).await.unwrap().ensure_schema().await.unwrap();
        // 50,000 rows in clear: about 10 MB of JSON lines, far more than a pipe holds, so a
        // viewer whose reader pauses must pause too.
        fill_archive(&url, 50_000, 1).await;
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_imcrypt"));
        cmd.args(["view", "--db", &pg.url(), "-o", "json"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first: serde_json::Value =
            serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
        assert_eq!(first["message_id"], "m1", "the oldest row comes first");
        // While we do not read, the viewer waits with its query open in the database, the
        // rows it has not fetched yet still there: a DBA sees its session idle in a
        // transaction, its SELECT started and not finished.
        let dba = pg_client(&url).await;
        let state = wait_for("the viewer's session to wait for its reader", WAIT, async || {
            let rows = dba
                .query(
                    "SELECT state FROM pg_stat_activity \
                     WHERE query LIKE 'SELECT id, message_id%' AND pid <> pg_backend_pid()",
                    &[],
                )
                .await
                .unwrap();
            let s: Option<String> = rows.first().and_then(|r| r.get(0));
            s.filter(|s| s == "idle in transaction")
        })
        .await;
        assert_eq!(state, "idle in transaction");
        // Reading on, every row of the archive arrives, in order.
        let mut n = 1;
        while let Some(l) = lines.next_line().await.unwrap() {
            n += 1;
            if n % 10_000 == 0 {
                assert!(l.contains(&format!("\"message_id\":\"m{n}\"")), "{l}");
            }
        }
        assert_eq!(n, 50_000);
        let out = child.wait_with_output().await.unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    })
    .await;
}
