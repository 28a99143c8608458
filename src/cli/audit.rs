//! `imcrypt audit verify|show`: the audit trail read offline, on the daemon's host (the files
//! are the daemon's, mode 0600: run as its user); neither talks to the daemon. `imcrypt audit
//! list` asks the daemon instead (`GET /v1/audit`), from anywhere its admin API is reached.
//!
//! Invariant: `verify` succeeds only if every record of the files links to the one before it,
//! and, with `--config`, the chain ends exactly at the sealed head the daemon wrote last; it
//! never creates or changes a file (a missing node key is an error, not a new key).

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::audit::Hash;
use crate::audit::chain::{self, ChainError, Filter, Verifier};

use super::CliError;
use super::commands::{Common, NO_BODY, Output, call};
use crate::admin::api;
use crate::audit::Entry;
use hyper::Method;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum AuditCommand {
    /// Check the hash chain of audit files; exits 8 naming the first bad record and why.
    Verify {
        #[command(flatten)]
        files: Files,
    },
    /// Ask the daemon for its newest audit records (any host, a reading role's token) and
    /// whether its chain verifies.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// At most this many of the newest matching records (at most 1000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[command(flatten)]
        common: Common,
    },
    /// Print audit records, oldest first, filtered.
    Show {
        #[command(flatten)]
        files: Files,
        #[command(flatten)]
        filter: FilterArgs,
        /// How to print: a table, or the records' JSON lines as stored.
        #[arg(long, short, value_enum, default_value_t = Output::Table, env = "IMCRYPT_OUTPUT")]
        output: Output,
    },
}

/// Which records `show` and `list` print.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct FilterArgs {
    /// Only records at or after this time: RFC 3339 (`2026-12-01T10:00:00Z`) or a duration
    /// ago (`90m`, `2d`).
    #[arg(long)]
    since: Option<String>,
    /// Only records of this actor: an administrator's name, a peer's cluster id, `anonymous`
    /// or `local`.
    #[arg(long)]
    actor: Option<String>,
    /// Only this action (`key.download`), or a family of them (`key.`).
    #[arg(long)]
    action: Option<String>,
}

/// Which audit files to read.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Files {
    /// Audit files (`audit.log`, `audit.log.N`), in any order; default: all of the state
    /// directory that `--config` names.
    files: Vec<PathBuf>,
    /// The daemon's config file: its state directory holds the files and the sealed chain
    /// head, which `verify` checks the chain's end against.
    #[arg(long, short)]
    config: Option<PathBuf>,
}

impl Files {
    /// The files in chain order, and the config's state directory if one was given.
    fn resolve(&self) -> Result<(Vec<PathBuf>, Option<PathBuf>), CliError> {
        let dir = match &self.config {
            Some(c) => Some(crate::config::Config::load(c)?.state_dir),
            None => None,
        };
        let files = match (&dir, self.files.is_empty()) {
            (_, false) => self.files.clone(),
            (Some(d), true) => chain::files_in(d)?,
            (None, true) => return Err(CliError::Usage("give audit files, or --config".into())),
        };
        Ok((chain::in_chain_order(files), dir))
    }
}

pub(super) fn audit(command: AuditCommand) -> Result<(), CliError> {
    match command {
        AuditCommand::Verify { files } => verify(&files),
        AuditCommand::List { filter: FilterArgs { since, actor, action }, limit, common } => {
            list(&api::AuditQuery { since, actor, action, limit: Some(limit) }, &common)
        }
        AuditCommand::Show { files, filter: FilterArgs { since, actor, action }, output } => {
            let since = since.map(|s| parse_since(&s)).transpose()?;
            show(&files, Filter { since, actor, action }, output)
        }
    }
}

/// The sealed head of the state directory `dir`, read with its node key (never created).
fn sealed_head(dir: &Path) -> Result<Option<(u64, Hash)>, CliError> {
    let key = crate::store::existing_node_key(dir)
        .map_err(|e| CliError::Usage(format!("node key: {e}")))?
        .ok_or_else(|| CliError::Read {
            path: dir.join(crate::store::NODE_KEY_FILE),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no node key"),
        })?;
    let head: Option<crate::audit::log::Head> = crate::audit::log::head_file(dir, &key).load()?;
    Ok(head.map(|h| (h.seq, h.hash)))
}

fn verify(files: &Files) -> Result<(), CliError> {
    let (paths, dir) = files.resolve()?;
    let head = match &dir {
        Some(d) => sealed_head(d)?,
        None => None,
    };
    let mut v = match head {
        Some((seq, hash)) => Verifier::with_head(seq, hash),
        None => Verifier::new(),
    };
    for p in &paths {
        v.push_file(p)?;
    }
    let s = v.finish()?;
    let mut out = std::io::stdout().lock();
    let w =
        |out: &mut std::io::StdoutLock, t: String| writeln!(out, "{t}").map_err(CliError::Output);
    w(
        &mut out,
        format!(
            "audit chain intact: records {}..={} ({} records in {} files)",
            s.first,
            s.last,
            s.records,
            paths.len()
        ),
    )?;
    if s.first > 1 {
        w(&mut out, format!("records before seq {} are not in the files given", s.first))?;
    }
    match (dir, head) {
        (Some(_), Some((seq, _))) => {
            w(&mut out, format!("the chain ends at the sealed head (seq {seq})"))?
        }
        (Some(d), None) => w(
            &mut out,
            format!("warning: {} has no sealed head: the chain's end is not checked", d.display()),
        )?,
        (None, _) => w(
            &mut out,
            "without --config the chain's end is not checked (a cut tail or a replaced last \
             record goes unseen)"
                .into(),
        )?,
    }
    Ok(())
}

fn parse_since(s: &str) -> Result<std::time::SystemTime, CliError> {
    chain::parse_since(s, std::time::SystemTime::now())
        .map_err(|why| CliError::Usage(format!("--since {why}")))
}

const HEADER: [&str; 6] = ["TIME", "SEQ", "ACTOR", "ACTION", "TARGET", "RESULT"];

fn header(out: &mut impl Write) -> std::io::Result<()> {
    let [t, s, a, c, g, r] = HEADER;
    writeln!(out, "{t:<24} {s:>6} {a:<12} {c:<20} {g:<14} {r:<8} DETAILS")
}

/// One record as a row of the table of `show` and `list`.
fn row(out: &mut impl Write, e: &Entry) -> std::io::Result<()> {
    let mut details: Vec<String> = e.details.iter().map(|(k, v)| format!("{k}={v}")).collect();
    if let Some(r) = &e.reason {
        details.insert(0, format!("reason={r:?}"));
    }
    if let Some(s) = &e.source {
        details.insert(0, format!("from={s}"));
    }
    writeln!(
        out,
        "{:<24} {:>6} {:<12} {:<20} {:<14} {:<8} {}",
        e.time,
        e.seq,
        e.actor.label(),
        e.action,
        e.target,
        e.result,
        details.join(" ")
    )
}

fn show(files: &Files, filter: Filter, output: Output) -> Result<(), CliError> {
    let (paths, _) = files.resolve()?;
    let mut out = std::io::stdout().lock();
    if output == Output::Table {
        header(&mut out).map_err(CliError::Output)?;
    }
    for p in &paths {
        let bytes =
            std::fs::read(p).map_err(|source| CliError::Read { path: p.clone(), source })?;
        for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            let e = chain::parse_line(line).map_err(|why| {
                CliError::Audit(ChainError::NotARecord {
                    at: chain::Place { file: p.clone(), line: i + 1 },
                    after: 0,
                    why,
                })
            })?;
            if !filter.keeps(&e) {
                continue;
            }
            match output {
                Output::Json => out.write_all(line).and_then(|()| out.write_all(b"\n")),
                Output::Table => row(&mut out, &e),
            }
            .map_err(CliError::Output)?;
        }
    }
    Ok(())
}

/// `imcrypt audit list`: the daemon's own reading of its trail (`GET /v1/audit`), from any
/// host with a token of a role that reads: the records that match and whether the chain
/// verifies. Exits 8 when it does not, as `verify` does.
fn list(q: &api::AuditQuery, common: &Common) -> Result<(), CliError> {
    let query = serde_urlencoded::to_string(q).map_err(|e| CliError::Usage(e.to_string()))?;
    let path = if query.is_empty() { "/v1/audit".to_owned() } else { format!("/v1/audit?{query}") };
    let r: api::AuditReport = call(common, Method::GET, &path, NO_BODY)?;
    let mut out = std::io::stdout().lock();
    let w = |out: &mut std::io::StdoutLock| -> std::io::Result<()> {
        if common.output == Output::Json {
            for e in &r.records {
                writeln!(out, "{}", e.line())?;
            }
            return Ok(());
        }
        header(out)?;
        for e in &r.records {
            row(out, e)?;
        }
        Ok(())
    };
    w(&mut out).map_err(CliError::Output)?;
    let summary = if !r.enabled {
        "the daemon's audit trail is off ([audit] enabled = false)".to_owned()
    } else if r.chain.intact {
        format!(
            "{} of {} matching records; audit chain intact: {} records, ending at the last one \
             the daemon wrote",
            r.records.len(),
            r.matched,
            r.chain.records
        )
    } else {
        return Err(CliError::AuditRemote(r.chain.problem.unwrap_or_default()));
    };
    eprintln!("{summary}");
    Ok(())
}
