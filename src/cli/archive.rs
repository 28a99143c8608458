//! `imcrypt archive` and `imcrypt view`: argument parsing and the glue to the library. The key
//! ring comes from a key export and the administrator's private key (unwrapped in memory, as
//! `imcrypt key unwrap` does), or from the ring file `key unwrap` wrote.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::commands::Output;
use crate::archive::{ArchiveError, Archiver, ArchiverConfig, DEFAULT_DB_URL, DbUrl, ViewFilter};
use crate::crypto::export::{KeyExport, Unwrapper};
use crate::crypto::keyring::KeyRing;

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ArchiveArgs {
    /// The compliance database: sqlite:PATH (a file, created if missing),
    /// postgres://user:password@host:port/db or sqlserver://user:password@host:port/db. Without
    /// it: the SQLite file imcrypt-archive.db in the current directory. Put passwords in
    /// IMCRYPT_ARCHIVE_DB rather than on the command line.
    #[arg(long, env = "IMCRYPT_ARCHIVE_DB", hide_env_values = true, default_value = DEFAULT_DB_URL)]
    db: String,
    /// The daemon's hot path: its socket ([hotpath.socket] path in its config), or, from
    /// another node, tcp+tls://HOST:PORT?cert=FILE&key=FILE&ca=FILE[&server_name=NAME] (this
    /// node's certificate; docs/hotpath.md).
    #[arg(long, required = true)]
    hotpath: Option<crate::hotpath::Endpoint>,
    /// Read events from connections on this Unix socket instead of standard input.
    #[arg(long)]
    listen: Option<PathBuf>,
    /// Archive outbound messages too (default: inbound only).
    #[arg(long)]
    outbound: bool,
    /// Max Queue Size: rows accepted and not yet written, at most.
    #[arg(long, default_value_t = 100_000)]
    max_queue: usize,
    /// Block delivery if unable to record: refuse new events while the database is down.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    block_delivery: bool,
    /// Rows per database transaction, at most (sealed through the hot path 1,000 at a time).
    #[arg(long, default_value_t = crate::archive::DEFAULT_BATCH_ROWS)]
    batch: usize,
    #[command(subcommand)]
    command: Option<ArchiveCommand>,
}

/// Work on an archive that is there already (docs/archive.md, "Key versions in the archive").
#[derive(Debug, Clone, clap::Subcommand)]
pub(crate) enum ArchiveCommand {
    /// How many rows each key version holds, with the oldest and newest message of each: when
    /// a version holds none, retiring it loses nothing.
    Versions {
        /// The compliance database, as for `imcrypt archive` (never created here).
        #[arg(long, env = "IMCRYPT_ARCHIVE_DB", hide_env_values = true, default_value = DEFAULT_DB_URL)]
        db: String,
        /// How to print: an aligned table, or JSON lines (one object per key version).
        #[arg(long, short, value_enum, default_value_t = Output::Table, env = "IMCRYPT_OUTPUT")]
        output: Output,
    },
    /// Seal every row under an older key version again under the primary version (payload
    /// and blind indexes), through the daemon's rewrap socket; resumable, rate-limited.
    Rewrap {
        /// The compliance database, as for `imcrypt archive` (never created here).
        #[arg(long, env = "IMCRYPT_ARCHIVE_DB", hide_env_values = true, default_value = DEFAULT_DB_URL)]
        db: String,
        /// The daemon's rewrap socket: [hotpath.rewrap_socket] path in its config.
        #[arg(long)]
        hotpath: crate::hotpath::Endpoint,
        /// Only rows under key versions below N (default: every version older than the
        /// primary).
        #[arg(long, value_name = "N")]
        below_version: Option<u32>,
        /// Rows per second, at most (default: as fast as the database takes them).
        #[arg(long, value_name = "ROWS_PER_S", value_parser = clap::value_parser!(u32).range(1..))]
        rate: Option<u32>,
    },
}

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ViewArgs {
    /// The compliance database: sqlite:PATH, postgres://user:password@host:port/db or
    /// sqlserver://…. Without it: the SQLite file imcrypt-archive.db in the current directory
    /// (never created by the viewer). Put passwords in IMCRYPT_ARCHIVE_DB rather than on the
    /// command line.
    #[arg(long, env = "IMCRYPT_ARCHIVE_DB", hide_env_values = true, default_value = DEFAULT_DB_URL)]
    db: String,
    /// The key export downloaded from the master (with --private-key).
    #[arg(long, requires = "private_key", conflicts_with = "keys")]
    export: Option<PathBuf>,
    /// The administrator's RSA private key (PEM) the export is wrapped for.
    #[arg(long, requires = "export")]
    private_key: Option<PathBuf>,
    /// Or: the key ring file written by `imcrypt key unwrap`.
    #[arg(long)]
    keys: Option<PathBuf>,
    /// Only messages from this participant (case-insensitive).
    #[arg(long)]
    from: Option<String>,
    /// Only messages to this participant.
    #[arg(long)]
    to: Option<String>,
    /// Only messages of this group chat room.
    #[arg(long)]
    room: Option<String>,
    /// From this time on: RFC 3339 (2026-01-02T03:04:05Z) or Unix milliseconds.
    #[arg(long, value_parser = parse_time)]
    since: Option<i64>,
    /// Up to this time, inclusive: RFC 3339 or Unix milliseconds.
    #[arg(long, value_parser = parse_time)]
    until: Option<i64>,
    /// How to print the rows: an aligned table, or JSON lines (one object per row).
    #[arg(long, short, value_enum, default_value_t = Output::Table, env = "IMCRYPT_OUTPUT")]
    output: Output,
}

fn parse_time(s: &str) -> Result<i64, String> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    humantime::parse_rfc3339_weak(s)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as i64)
        .ok_or_else(|| format!("{s:?} is neither RFC 3339 nor Unix milliseconds"))
}

fn runtime() -> Result<tokio::runtime::Runtime, ArchiveError> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

/// `imcrypt archive`, and its subcommands.
pub(crate) fn archive(a: ArchiveArgs) -> Result<(), ArchiveError> {
    match a.command {
        Some(ArchiveCommand::Versions { db, output }) => return versions(&db, output),
        Some(ArchiveCommand::Rewrap { db, hotpath, below_version, rate }) => {
            let cfg = crate::archive::rewrap::RewrapConfig {
                db: db.parse()?,
                hotpath,
                below: below_version,
                rate,
            };
            return rewrap(&cfg);
        }
        None => {}
    }
    let url: DbUrl = a.db.parse()?;
    let hotpath = a.hotpath.expect("clap requires --hotpath without a subcommand");
    let mut cfg = ArchiverConfig::new(url, hotpath);
    cfg.outbound = a.outbound;
    cfg.max_queue = a.max_queue.max(1);
    cfg.block_delivery = a.block_delivery;
    cfg.batch_rows = a.batch.max(1);
    cfg.retry_max = Duration::from_secs(2);
    runtime()?.block_on(async move {
        let archiver = Arc::new(Archiver::start(cfg).await?);
        if let Some(path) = a.listen {
            return crate::archive::serve_socket(archiver, &path).await;
        }
        let stdin = tokio::io::BufReader::new(tokio::io::stdin());
        let counts =
            crate::archive::serve_lines(archiver.clone(), stdin, tokio::io::stdout()).await?;
        tracing::info!(?counts, "input ended");
        let outages = archiver.hotpath_outages();
        eprintln!(
            "imcrypt archive: {} archived, {} skipped, {} refused, {} invalid, {} failed; \
             hot path unreachable {} times ({:.1} s in all)",
            counts.archived,
            counts.skipped,
            counts.refused,
            counts.invalid,
            counts.failed,
            outages.count,
            outages.total.as_secs_f64()
        );
        match counts.refused + counts.failed + counts.invalid {
            0 => Ok(()),
            n => Err(ArchiveError::NotArchived(n)),
        }
    })
}

/// `imcrypt archive rewrap`: a progress bar on a terminal, then what was done.
fn rewrap(cfg: &crate::archive::rewrap::RewrapConfig) -> Result<(), ArchiveError> {
    use std::io::IsTerminal;
    let bar = std::io::stderr().is_terminal().then(|| {
        let style = indicatif::ProgressStyle::with_template(
            "rewrap {bar:40} {pos}/{len} rows  {per_sec}  eta {eta}",
        )
        .expect("a valid template");
        indicatif::ProgressBar::new(0).with_style(style)
    });
    let report = runtime()?.block_on(crate::archive::rewrap::run(cfg, |p| {
        if let Some(b) = &bar {
            b.set_length(p.total);
            b.set_position(p.done);
        }
    }));
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let report = report?;
    // The first failures by row, then how many more: a version the daemon cannot open at all
    // would otherwise print one line per row of it.
    const SHOWN: usize = 20;
    for (id, why) in report.failed.iter().take(SHOWN) {
        eprintln!("imcrypt: row {id}: {why}");
    }
    if report.failed.len() > SHOWN {
        eprintln!("imcrypt: … and {} more rows not rewrapped", report.failed.len() - SHOWN);
    }
    let moved: Vec<String> =
        report.rewrapped.iter().map(|(v, n)| format!("{n} from key version {v}")).collect();
    let n: u64 = report.rewrapped.values().sum();
    println!(
        "rewrapped {n} rows to key version {}{}{}; {} failed",
        report.to_version,
        if moved.is_empty() { String::new() } else { format!(": {}", moved.join(", ")) },
        if report.already > 0 {
            format!(" ({} were rewrapped by another job meanwhile)", report.already)
        } else {
            String::new()
        },
        report.failed.len()
    );
    if !report.failed.is_empty() {
        return Err(ArchiveError::NotRewrapped(report.failed.len()));
    }
    Ok(())
}

/// `imcrypt archive versions`.
fn versions(db: &str, output: Output) -> Result<(), ArchiveError> {
    use std::io::Write;
    let url: DbUrl = db.parse()?;
    let counts = runtime()?.block_on(async {
        let mut db = crate::archive::Db::connect(&url).await?;
        db.version_counts().await
    })?;
    let mut out = std::io::stdout().lock();
    match output {
        Output::Table => out.write_all(crate::archive::view::versions_table(&counts).as_bytes())?,
        Output::Json => {
            for c in &counts {
                let line = crate::archive::view::VersionLine::from(c);
                serde_json::to_writer(&mut out, &line).map_err(std::io::Error::other)?;
                writeln!(out)?;
            }
        }
    }
    Ok(out.flush()?)
}

fn load_keys(a: &ViewArgs) -> Result<Option<KeyRing>, ArchiveError> {
    if let Some(k) = &a.keys {
        return super::viewer::load_ring(k)
            .map(Some)
            .map_err(|e| ArchiveError::Keys(e.to_string()));
    }
    let (Some(export), Some(private)) = (&a.export, &a.private_key) else { return Ok(None) };
    let read = |p: &PathBuf| {
        std::fs::read_to_string(p)
            .map(zeroize::Zeroizing::new)
            .map_err(|e| ArchiveError::Keys(format!("cannot read {}: {e}", p.display())))
    };
    let doc: KeyExport = serde_json::from_str(&read(export)?).map_err(|e| {
        ArchiveError::Keys(format!("{} is not a key export: {e}", export.display()))
    })?;
    let un = Unwrapper::from_pem(&read(private)?)
        .map_err(|e| ArchiveError::Keys(format!("{}: {e}", private.display())))?;
    un.unwrap_export(&doc)
        .map(Some)
        .map_err(|e| ArchiveError::Keys(format!("{}: {e}", export.display())))
}

/// `imcrypt view`.
pub(crate) fn view(a: ViewArgs) -> Result<(), ArchiveError> {
    use std::io::Write;
    let url: DbUrl = a.db.parse()?;
    let ring = load_keys(&a)?;
    let filter = ViewFilter {
        from: a.from.clone(),
        to: a.to.clone(),
        room: a.room.clone(),
        since_ms: a.since,
        until_ms: a.until,
    };
    // Each batch is printed, and its failures reported, as soon as it is read: JSON row by
    // row, the table as one block per batch (docs/viewer.md).
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let (mut seen, mut failed, mut blocks) = (0, 0, 0);
    runtime()?.block_on(crate::archive::view_batches(&url, ring.as_ref(), &filter, |batch| {
        seen += batch.len();
        let mut rows = Vec::with_capacity(batch.len());
        let mut bad = Vec::new();
        for r in batch {
            match r {
                Ok(v) => rows.push(v),
                Err(f) => bad.push(f),
            }
        }
        match a.output {
            Output::Table if rows.is_empty() => {}
            Output::Table => {
                if blocks > 0 {
                    writeln!(out)?;
                }
                blocks += 1;
                out.write_all(crate::archive::view::table(&rows).as_bytes())?;
            }
            Output::Json => {
                for r in &rows {
                    serde_json::to_writer(&mut out, r).map_err(std::io::Error::other)?;
                    writeln!(out)?;
                }
            }
        }
        out.flush()?;
        failed += bad.len();
        for f in &bad {
            eprintln!("imcrypt: row {}: {}", f.id, f.reason);
        }
        Ok(())
    }))?;
    if blocks == 0 && matches!(a.output, Output::Table) {
        out.write_all(crate::archive::view::table(&[]).as_bytes())?;
        out.flush()?;
    }
    if failed > 0 {
        return Err(ArchiveError::Unreadable { failed, seen });
    }
    Ok(())
}
