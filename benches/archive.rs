//! What users run, against what the database can take, from one run: the `imcrypt archive`
//! binary fed 50,000 inbound events of 256-byte bodies (one row each) through stdin and
//! through `--listen`, every acknowledgement read, with encryption on (a cluster whose hot
//! path seals) and off (a cluster whose hot path answers OFF); and binary `COPY` of the same
//! rows, as the archiver stored them, into an identical table with the same indexes (the
//! database's own bulk-load limit). Prints rows/s for each and the ratios the targets are
//! set in: on/COPY (≥ 0.8) and on/off (≥ 0.95). PostgreSQL runs with fsync on; each run
//! starts from an empty table. Needs PostgreSQL's server binaries (tests/support/pg.rs);
//! `cargo bench --bench archive`.
//!
//! `cargo bench --bench archive -- scale`: the archive at scale instead. One `imcrypt archive`
//! process is fed 1,000,000 events (`IMCRYPT_SCALE_ROWS` for another count) through stdin
//! into an empty table, encryption on, and the bench prints the write rate of the last tenth
//! against the first tenth (target ≥ 0.8); then `imcrypt view -o json` of every row with its
//! peak RSS (VmHWM of the child, read from /proc while it runs; target under 64 MiB) and its
//! time against a raw `COPY (SELECT …) TO STDOUT` of the same rows (target ≥ 0.9x); then a
//! participant lookup (`imcrypt view --from`, about 1% of the rows) against that full read.
//! Beside the archiver's decay it prints the database's own: the same rows copied again by
//! binary `COPY` into an empty table like the archive, one commit per 10,000 rows (the
//! archiver's batch), first tenth against last tenth.

#[path = "../tests/support/pg.rs"]
mod pg;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use imcrypt::cluster::Command;
use imcrypt::crypto::password::Password;
use imcrypt::demo::Lab;
use imcrypt::hotpath::{Client, ClientConfig, KeyStatus};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};

const EVENTS: usize = 50_000;
const BODY: usize = 256;
const COLS: &str = "message_id, recipient_key, ts_ms, direction, encrypted, from_idx, to_idx, \
                    room_idx, from_addr, to_addr, room, key_version, payload";

fn line(prefix: &str, i: usize, body: &str) -> String {
    serde_json::json!({"message_id": format!("{prefix}-{i}"), "from": format!("user{}@example.com", i % 97),
        "to": format!("user{}@example.com", i % 89), "timestamp": i as i64, "direction": "inbound", "body": body})
    .to_string()
        + "\n"
}

/// Sends a warm-up event and waits for its acknowledgement (the archiver is ready), then
/// times `EVENTS` events from the first byte written to the last acknowledgement read.
async fn drive(
    mut input: impl AsyncWrite + Unpin + Send + 'static,
    output: impl AsyncRead + Unpin,
    prefix: &str,
) -> f64 {
    let body = "x".repeat(BODY);
    let mut acks = BufReader::new(output).lines();
    input.write_all(line(&format!("{prefix}-warm"), 0, &body).as_bytes()).await.unwrap();
    input.flush().await.unwrap();
    let warm = acks.next_line().await.unwrap().expect("warm-up acknowledged");
    assert!(warm.contains("\"archived\""), "{warm}");
    let data: Vec<u8> = (0..EVENTS).flat_map(|i| line(prefix, i, &body).into_bytes()).collect();
    let start = Instant::now();
    let writer = tokio::spawn(async move {
        input.write_all(&data).await.unwrap();
        input.flush().await.unwrap();
        input // kept open until every acknowledgement is read
    });
    for n in 0..EVENTS {
        let ack = acks.next_line().await.unwrap().unwrap_or_else(|| panic!("ack {n} missing"));
        assert!(ack.contains("\"archived\""), "{ack}");
    }
    let rate = EVENTS as f64 / start.elapsed().as_secs_f64();
    drop(writer.await.unwrap());
    rate
}

fn archiver(db: &str, hotpath: &Path, listen: Option<&Path>) -> tokio::process::Child {
    let mut cmd = tokio::process::Command::new(bench_bin());
    cmd.args(["archive", "--db", db, "--hotpath"]).arg(hotpath);
    if let Some(l) = listen {
        cmd.arg("--listen").arg(l);
    }
    cmd.env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    cmd.spawn().unwrap()
}

/// One run of the binary, through stdin or through a `--listen` socket.
async fn run_archiver(db: &str, hotpath: &Path, listen: Option<&Path>, prefix: &str) -> f64 {
    let mut child = archiver(db, hotpath, listen);
    match listen {
        None => {
            let (i, o) = (child.stdin.take().unwrap(), child.stdout.take().unwrap());
            let r = drive(i, o, prefix).await;
            let status = child.wait().await.unwrap();
            assert!(status.success(), "imcrypt archive: {status}");
            r
        }
        Some(sock) => {
            let s = loop {
                match tokio::net::UnixStream::connect(sock).await {
                    Ok(s) => break s,
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            };
            let (r, w) = s.into_split();
            let rate = drive(w, r, prefix).await;
            child.kill().await.unwrap();
            rate
        }
    }
}

/// A column value as the server sent it in binary, passed back as is (any type, or NULL).
#[derive(Debug)]
struct Raw(Option<Vec<u8>>);

impl<'a> FromSql<'a> for Raw {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(Some(raw.to_vec())))
    }
    fn from_sql_null(_: &Type) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(None))
    }
    fn accepts(_: &Type) -> bool {
        true
    }
}

impl ToSql for Raw {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match &self.0 {
            Some(v) => {
                out.extend_from_slice(v);
                Ok(IsNull::No)
            }
            None => Ok(IsNull::Yes),
        }
    }
    fn accepts(_: &Type) -> bool {
        true
    }
    to_sql_checked!();
}

/// Times binary COPY of the rows now in the archive table into `copy_target`, a table
/// created like it (columns, identity, unique key, indexes), empty.
async fn copy_rate(c: &tokio_postgres::Client) -> f64 {
    c.batch_execute(
        "DROP TABLE IF EXISTS copy_target; \
         CREATE TABLE copy_target (LIKE imcrypt_archive INCLUDING ALL);",
    )
    .await
    .unwrap();
    let select =
        c.prepare(&format!("SELECT {COLS} FROM imcrypt_archive ORDER BY id")).await.unwrap();
    let types: Vec<Type> = select.columns().iter().map(|c| c.type_().clone()).collect();
    let rows: Vec<Vec<Raw>> = c
        .query(&select, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (0..types.len()).map(|k| r.get::<_, Raw>(k)).collect())
        .collect();
    assert_eq!(rows.len(), EVENTS + 1);
    let start = Instant::now();
    let sink =
        c.copy_in(&format!("COPY copy_target ({COLS}) FROM STDIN (FORMAT binary)")).await.unwrap();
    let w = BinaryCopyInWriter::new(sink, &types);
    tokio::pin!(w);
    for r in &rows {
        let v: Vec<&(dyn ToSql + Sync)> = r.iter().map(|x| x as &(dyn ToSql + Sync)).collect();
        w.as_mut().write(&v).await.unwrap();
    }
    let n = w.finish().await.unwrap();
    assert_eq!(n as usize, rows.len());
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let pg = pg::Pg::start_durable();
    if std::env::args().any(|a| a == "scale") {
        rt.block_on(scale(&pg));
        return;
    }
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let mut lab = Lab::new(dir.path(), &["on", "off"]).unwrap();
        for id in ["on", "off"] {
            lab.spec_mut(id).hotpath = true;
            lab.start(id).await.unwrap();
        }
        encrypt_on(&lab).await;
        let url = pg.url();
        let db: imcrypt::archive::DbUrl = url.parse().unwrap();
        imcrypt::archive::Db::connect(&db).await.unwrap().ensure_schema().await.unwrap();
        let (sql, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        let sock = dir.path().join("events.sock");
        println!("{EVENTS} events of {BODY} B, one row each, PostgreSQL with fsync on; best of 2");
        let mut results = Vec::new();
        for path in ["stdin", "--listen"] {
            let (mut on, mut off, mut copy) = (0f64, 0f64, 0f64);
            for round in 0..2 {
                for id in ["on", "off"] {
                    sql.batch_execute("TRUNCATE imcrypt_archive").await.unwrap();
                    let listen = (path == "--listen").then_some(sock.as_path());
                    let prefix = format!("{id}{round}");
                    let r = run_archiver(&url, &lab.hotpath_socket(id), listen, &prefix).await;
                    println!("  {path:<8} encryption {id:<3}: {r:>9.0} rows/s");
                    if id == "on" {
                        on = on.max(r);
                        // The database's limit for exactly these (encrypted) rows.
                        let k = copy_rate(&sql).await;
                        println!("  {path:<8} binary COPY    : {k:>9.0} rows/s");
                        copy = copy.max(k);
                    } else {
                        off = off.max(r);
                    }
                }
            }
            results.push((path, on, off, copy));
        }
        println!();
        println!("| path | encryption on | encryption off | binary COPY | on/COPY | on/off |");
        println!("|---|---|---|---|---|---|");
        for (path, on, off, copy) in results {
            println!(
                "| {path} | {on:.0} | {off:.0} | {copy:.0} | {:.2} | {:.2} |",
                on / copy,
                on / off
            );
        }
        println!("targets: on/COPY >= 0.80, on/off >= 0.95");
        rewrap_rate(&lab, &url, &sql).await;
        lab.stop_all().await;
    });
}

/// Key lifecycle: the rate of `imcrypt archive rewrap` next to the archive's write rate, for
/// the same rows in the same run: archive `EVENTS` rows through stdin, rotate, rewrap them all.
async fn rewrap_rate(lab: &Lab, url: &str, sql: &tokio_postgres::Client) {
    sql.batch_execute("TRUNCATE imcrypt_archive").await.unwrap();
    let write = run_archiver(url, &lab.hotpath_socket("on"), None, "rw").await;
    lab.daemon("on").unwrap().command(Command::RotateKey).await.unwrap();
    let c = Client::new(ClientConfig::new(lab.hotpath_socket("on")));
    while !matches!(c.status().await, Ok(KeyStatus::On { key_version, .. }) if key_version.get() == 2)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let start = Instant::now();
    let out = tokio::process::Command::new(bench_bin())
        .args(["archive", "rewrap", "--db", url, "--hotpath"])
        .arg(lab.rewrap_socket("on"))
        .stderr(Stdio::inherit())
        .output()
        .await
        .unwrap();
    let secs = start.elapsed().as_secs_f64();
    assert!(out.status.success(), "imcrypt archive rewrap: {}", out.status);
    let said = String::from_utf8_lossy(&out.stdout);
    let rows = EVENTS + 1; // and the warm-up event
    assert!(said.starts_with(&format!("rewrapped {rows} rows to key version 2")), "{said}");
    let rewrap = rows as f64 / secs;
    println!();
    println!("key lifecycle: {rows} rows archived under version 1, rotated, rewrapped to 2");
    println!("| imcrypt archive (stdin, encryption on) | imcrypt archive rewrap | rewrap/write |");
    println!("|---|---|---|");
    println!("| {write:.0} rows/s | {rewrap:.0} rows/s | {:.2} |", rewrap / write);
}

/// Turns encryption on at the lab's cluster `on` and waits until its hot path seals.
async fn encrypt_on(lab: &Lab) {
    let enable =
        Command::Enable { password: Password::new("Correct-Horse-9-battery"), remote: false };
    lab.daemon("on").unwrap().command(enable).await.unwrap();
    let c = Client::new(ClientConfig::new(lab.hotpath_socket("on")));
    while !matches!(c.status().await, Ok(KeyStatus::On { .. })) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The `imcrypt` binary measured (IMCRYPT_BENCH_BIN: another build, e.g. an older one).
fn bench_bin() -> std::ffi::OsString {
    std::env::var_os("IMCRYPT_BENCH_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_imcrypt").into())
}

/// Feeds `rows` events to one `imcrypt archive` through stdin, and returns when each tenth of
/// them was acknowledged (seconds from the first byte written).
async fn archive_at_scale(db: &str, hotpath: &Path, rows: usize) -> Vec<f64> {
    let mut child = archiver(db, hotpath, None);
    let (mut input, output) = (child.stdin.take().unwrap(), child.stdout.take().unwrap());
    let mut acks = BufReader::new(output).lines();
    let start = Instant::now();
    // At most 50,000 events unacknowledged, as a router that waits for its acknowledgements
    // sends them (the archiver refuses events beyond its queue of 100,000 rows).
    let window = std::sync::Arc::new(tokio::sync::Semaphore::new(50_000));
    let permits = window.clone();
    // Generated as it goes: a million lines held at once would weigh 400 MB.
    let writer = tokio::spawn(async move {
        let body = "x".repeat(BODY);
        let mut buf = Vec::with_capacity(1 << 20);
        for i in 0..rows {
            permits.acquire().await.unwrap().forget();
            buf.extend_from_slice(line("s", i, &body).as_bytes());
            if buf.len() >= 1 << 20 {
                input.write_all(&buf).await.unwrap();
                buf.clear();
            }
        }
        input.write_all(&buf).await.unwrap();
        input.flush().await.unwrap();
        input
    });
    let tenth = rows / 10;
    let mut marks = Vec::new();
    for n in 1..=rows {
        let ack = acks.next_line().await.unwrap().unwrap_or_else(|| panic!("ack {n} missing"));
        assert!(ack.contains("\"archived\""), "{ack}");
        window.add_permits(1);
        if n % tenth == 0 {
            marks.push(start.elapsed().as_secs_f64());
        }
    }
    drop(writer.await.unwrap());
    assert!(child.wait().await.unwrap().success());
    marks
}

/// The database's own write rate as the table grows, for the archiver's decay to be read
/// against: the archived rows copied again, oldest first, by binary `COPY` into an empty table
/// created like the archive (columns, identity, unique key, indexes), one commit per 10,000
/// rows (the archiver's default batch; no batch crosses a tenth's end). Only the `COPY`s are
/// timed, not the reading of the rows in between. Returns the rates (rows/s) of the first and
/// the last tenth.
async fn copy_growth(c: &tokio_postgres::Client, rows: usize) -> (f64, f64) {
    const BATCH: i64 = 10_000;
    c.batch_execute(
        "DROP TABLE IF EXISTS copy_target; \
         CREATE TABLE copy_target (LIKE imcrypt_archive INCLUDING ALL);",
    )
    .await
    .unwrap();
    let select = c
        .prepare(&format!(
            "SELECT id, {COLS} FROM imcrypt_archive WHERE id > $1 ORDER BY id LIMIT $2"
        ))
        .await
        .unwrap();
    let types: Vec<Type> = select.columns()[1..].iter().map(|c| c.type_().clone()).collect();
    let tenth = rows / 10;
    let (mut after, mut copied, mut spent, mut marks) = (0i64, 0usize, 0f64, Vec::new());
    loop {
        // A batch never crosses a tenth's end, so each tenth is timed over its own rows.
        let limit = BATCH.min((tenth * (copied / tenth + 1) - copied) as i64);
        let fetched = c.query(&select, &[&after, &limit]).await.unwrap();
        let Some(last) = fetched.last() else { break };
        after = last.get(0);
        let batch: Vec<Vec<Raw>> = fetched
            .iter()
            .map(|r| (1..=types.len()).map(|k| r.get::<_, Raw>(k)).collect())
            .collect();
        let start = Instant::now();
        let sink = c
            .copy_in(&format!("COPY copy_target ({COLS}) FROM STDIN (FORMAT binary)"))
            .await
            .unwrap();
        let w = BinaryCopyInWriter::new(sink, &types);
        tokio::pin!(w);
        for r in &batch {
            let v: Vec<&(dyn ToSql + Sync)> = r.iter().map(|x| x as &(dyn ToSql + Sync)).collect();
            w.as_mut().write(&v).await.unwrap();
        }
        w.finish().await.unwrap();
        spent += start.elapsed().as_secs_f64();
        let before = copied;
        copied += batch.len();
        if copied / tenth > before / tenth {
            marks.push(spent);
        }
    }
    assert!(marks.len() >= 10, "{copied} rows copied, {rows} expected");
    c.batch_execute("DROP TABLE copy_target").await.unwrap();
    (tenth as f64 / marks[0], tenth as f64 / (marks[9] - marks[8]))
}

/// Runs `imcrypt view` with `args` (output thrown away); returns its time and its peak RSS in
/// KiB (VmHWM, read from /proc every 10 ms while it runs: the last reading is the peak).
async fn view_run(db: &str, ring: &Path, args: &[&str]) -> (f64, u64) {
    let mut child = tokio::process::Command::new(bench_bin())
        .args(["view", "--db", db, "--keys"])
        .arg(ring)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = format!("/proc/{}/status", child.id().unwrap());
    let mut peak = 0u64;
    let exit = loop {
        if let Ok(text) = std::fs::read_to_string(&status) {
            let hwm = text.lines().find_map(|l| l.strip_prefix("VmHWM:"));
            if let Some(kib) = hwm.and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            {
                peak = peak.max(kib);
            }
        }
        tokio::select! {
            e = child.wait() => break e.unwrap(),
            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
    };
    let secs = start.elapsed().as_secs_f64();
    assert!(exit.success(), "imcrypt view {args:?}: {exit}");
    (secs, peak)
}

/// The database's own limit for reading the rows out: `COPY (SELECT …) TO STDOUT` of the
/// viewer's columns and order, every byte received and thrown away. Returns (seconds, bytes).
async fn copy_out(c: &tokio_postgres::Client) -> (f64, usize) {
    use futures_util::TryStreamExt as _;
    let start = Instant::now();
    let sql = "COPY (SELECT id, message_id, recipient_key, ts_ms, direction, encrypted, \
               from_idx, to_idx, room_idx, from_addr, to_addr, room, key_version, payload \
               FROM imcrypt_archive ORDER BY ts_ms, id) TO STDOUT";
    let stream = c.copy_out(sql).await.unwrap();
    tokio::pin!(stream);
    let mut bytes = 0;
    while let Some(b) = stream.try_next().await.unwrap() {
        bytes += b.len();
    }
    (start.elapsed().as_secs_f64(), bytes)
}

async fn scale(pg: &pg::Pg) {
    let rows: usize =
        std::env::var("IMCRYPT_SCALE_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    assert!(rows >= 10, "IMCRYPT_SCALE_ROWS: at least 10");
    let dir = tempfile::tempdir().unwrap();
    let mut lab = Lab::new(dir.path(), &["on"]).unwrap();
    lab.spec_mut("on").hotpath = true;
    lab.start("on").await.unwrap();
    encrypt_on(&lab).await;
    // The key ring file the viewer reads (docs/viewer.md), mode 0600, removed with `dir`.
    let ring = lab.daemon("on").unwrap().key_ring().borrow().clone().expect("encryption is on");
    let ring_file = dir.path().join("ring.json");
    let doc = serde_json::json!({"format": "imcrypt-key-ring", "format_version": 1, "ring": *ring});
    std::fs::write(&ring_file, doc.to_string()).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&ring_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let url = pg.url();
    let db: imcrypt::archive::DbUrl = url.parse().unwrap();
    imcrypt::archive::Db::connect(&db).await.unwrap().ensure_schema().await.unwrap();
    let (sql, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    println!(
        "scale: {rows} events of {BODY} B, one row each, encryption on, PostgreSQL with fsync on"
    );

    let marks = archive_at_scale(&url, &lab.hotpath_socket("on"), rows).await;
    let tenth = (rows / 10) as f64;
    let first = tenth / marks[0];
    let last = tenth / (marks[9] - marks[8]);
    println!(
        "  archive: first tenth {first:.0} rows/s, last tenth {last:.0} rows/s, all {:.0} rows/s",
        rows as f64 / marks[9]
    );
    let (copy_first, copy_last) = copy_growth(&sql, rows).await;
    println!(
        "  the database's own binary COPY of the same rows, one commit per 10,000: first \
         tenth {copy_first:.0} rows/s, last tenth {copy_last:.0} rows/s"
    );
    sql.batch_execute("VACUUM ANALYZE imcrypt_archive").await.unwrap();

    // Warm the server's cache the same way for both readers, then best of 2 each.
    copy_out(&sql).await;
    let (mut raw, mut full, mut lookup, mut rss) = (f64::MAX, f64::MAX, f64::MAX, 0u64);
    let mut copied = 0;
    for _ in 0..2 {
        let (t, b) = copy_out(&sql).await;
        raw = raw.min(t);
        copied = b;
        let (t, kib) = view_run(&url, &ring_file, &["-o", "json"]).await;
        full = full.min(t);
        rss = rss.max(kib);
        let (t, kib) =
            view_run(&url, &ring_file, &["-o", "json", "--from", "user7@example.com"]).await;
        lookup = lookup.min(t);
        rss = rss.max(kib);
    }
    println!(
        "  raw COPY (SELECT …) TO STDOUT: {raw:.2} s ({:.0} rows/s, {copied} B)",
        rows as f64 / raw
    );
    println!("  imcrypt view -o json, all rows: {full:.2} s ({:.0} rows/s)", rows as f64 / full);
    println!("  imcrypt view --from (1/97 of the rows): {lookup:.3} s");
    println!("  imcrypt view peak RSS: {:.1} MiB", rss as f64 / 1024.0);
    println!();
    println!("| measure | value | target |");
    println!("|---|---|---|");
    println!("| writes, last tenth / first tenth | {:.2} | >= 0.80 |", last / first);
    println!(
        "| the database's own COPY, last tenth / first tenth | {:.2} | (the limit) |",
        copy_last / copy_first
    );
    println!("| view / raw COPY out (rate) | {:.2} | >= 0.90 |", raw / full);
    println!("| view peak RSS | {:.1} MiB | < 64 MiB |", rss as f64 / 1024.0);
    println!("| participant lookup / full read (time) | {:.3} | |", lookup / full);
    lab.stop_all().await;
}
