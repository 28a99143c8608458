//! The admin and viewer subcommands: each turns its arguments into one admin API call (or one
//! viewer operation) and prints the answer as a table or as JSON.
//!
//! Invariants: passwords come only from a no-echo prompt, a file or stdin; a key download
//! checks the public key before asking for the password and writes its output file whole or
//! not at all.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use hyper::Method;
use serde_json::Value;
use zeroize::Zeroizing;

use super::CliError;
use super::viewer;
use crate::admin::api;
use crate::admin::client::{Client, ConnectArgs};
use crate::alarm::Alarm;
use crate::crypto::export::{KeyExport, parse_public_key};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Output {
    Table,
    Json,
}

/// Connection flags and the output format, shared by every admin subcommand.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Common {
    #[command(flatten)]
    pub(super) conn: ConnectArgs,
    /// How to print the answer.
    #[arg(long, short, value_enum, default_value_t = Output::Table, env = "IMCRYPT_OUTPUT")]
    pub(super) output: Output,
}

/// Where a password comes from (never argv).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct PasswordSource {
    /// Read the password from the first line of this file.
    #[arg(long)]
    password_file: Option<PathBuf>,
    /// Read the password from the first line of standard input.
    #[arg(long, conflicts_with = "password_file")]
    password_stdin: bool,
}

/// The flags of a command that deletes key material everywhere (disable on the master, key
/// retire): the guard's acknowledgement, the password, the connection.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Guarded {
    /// Go ahead even though the current keys were not downloaded since the last change:
    /// archived messages encrypted with the keys deleted become unreadable.
    #[arg(long)]
    i_understand_data_loss: bool,
    #[command(flatten)]
    password: PasswordSource,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum PeersCommand {
    /// Add a peer to the running daemon (until restart; see docs/admin.md).
    Add {
        /// The peer's cluster id (the DNS name in its certificate).
        id: String,
        /// host:port of the peer's intercluster listener.
        #[arg(long)]
        address: String,
        #[command(flatten)]
        common: Common,
    },
    /// Remove a peer from the running daemon (until restart).
    Remove {
        /// The peer's cluster id.
        id: String,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum AlarmsCommand {
    /// Send a test alarm (MAimcryptTest, severity warning, about this cluster) from this
    /// process through the sinks in the daemon's config file (--config), whatever their
    /// min_severity, and print for each `delivered` or the error.
    Test {
        /// Only the sink of this name (`[[alarms.sinks]] name`).
        #[arg(long)]
        sink: Option<String>,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum NodesCommand {
    /// Add a node (refused while encryption is on, as the manual requires).
    Add {
        /// The node id, as in `[[nodes]] id`.
        id: String,
        /// postgresql, sql_server, none, or another product's name.
        #[arg(long)]
        archiver: String,
        #[command(flatten)]
        common: Common,
    },
    /// Remove a node.
    Remove {
        /// The node id.
        id: String,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum EncryptionCommand {
    /// Turn encryption on here: this cluster becomes the master of a new domain.
    Enable {
        /// Also enroll every eligible peer as a slave ("enable on remote clusters").
        #[arg(long)]
        remote: bool,
        #[command(flatten)]
        password: PasswordSource,
        #[command(flatten)]
        common: Common,
    },
    /// Turn encryption off: on the master for the whole domain (deletes every key), on a
    /// slave for this cluster only (needs the master's password).
    Disable {
        #[command(flatten)]
        guarded: Guarded,
    },
    /// Planned failover, on the master: make slave CLUSTER master of the domain under a new
    /// term, with every key version; this cluster becomes its slave.
    Handover {
        /// The slave that becomes master (connected, eligible and in sync).
        #[arg(long, value_name = "CLUSTER")]
        to: String,
        #[command(flatten)]
        password: PasswordSource,
        #[command(flatten)]
        common: Common,
    },
    /// Unplanned failover, on a slave whose master is lost: make this cluster master of the
    /// domain under a new term. Refused while the master was heard from within
    /// peer.master_unreachable_after, unless --force.
    Promote {
        /// Promote even though the master was heard from recently: two masters may act until
        /// the old one hears the new term (it then steps down and hands back its key versions).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        password: PasswordSource,
        #[command(flatten)]
        common: Common,
    },
    /// Switch "enable on remote clusters" on or off (on the master).
    Remote {
        /// `on` or `off`.
        #[arg(value_enum)]
        state: OnOff,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum OnOff {
    On,
    Off,
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum PasswordCommand {
    /// Change the encryption password: needs the current one.
    Change {
        /// Read the current password from the first line of this file.
        #[arg(long)]
        old_password_file: Option<PathBuf>,
        /// Read the new password from the first line of this file.
        #[arg(long)]
        new_password_file: Option<PathBuf>,
        /// Read both from standard input: the current password on the first line, the new
        /// one on the second.
        #[arg(long, conflicts_with_all = ["old_password_file", "new_password_file"])]
        password_stdin: bool,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum KeyCommand {
    /// Add a key version on the master and make it primary.
    Rotate {
        #[command(flatten)]
        common: Common,
    },
    /// On the master: remove every key version below N from every cluster's key set. The
    /// master keeps them for encryption.destruction_grace (imcrypt key restore), then
    /// destroys them; records under them open only with a key export made before.
    Retire {
        /// Retire the versions below this one (at most the primary version, which stays).
        #[arg(long, value_name = "N")]
        below: u32,
        #[command(flatten)]
        guarded: Guarded,
    },
    /// Take back what a retirement (on the master) or a disable (of this master's domain)
    /// removed, while its grace period lasts.
    Restore {
        #[command(flatten)]
        password: PasswordSource,
        #[command(flatten)]
        common: Common,
    },
    /// Download every key version, wrapped with your RSA public key (docs/formats.md §2).
    Download {
        /// Your RSA public key, PEM (SPKI or PKCS#1), 2048 bits or more (3072+ recommended).
        #[arg(long)]
        public_key: PathBuf,
        /// Write the export here (whole or not at all); absent: standard output.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Replace --out if it exists.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        password: PasswordSource,
        #[command(flatten)]
        common: Common,
    },
    /// Unwrap a key export with your RSA private key into a key ring file (mode 0600).
    Unwrap {
        /// The export written by `imcrypt key download`.
        #[arg(long)]
        export: PathBuf,
        /// Your RSA private key, PEM (PKCS#8 or PKCS#1, not passphrase-protected).
        #[arg(long)]
        private_key: PathBuf,
        /// The key ring file to write.
        #[arg(long)]
        out: PathBuf,
        /// Replace --out if it exists.
        #[arg(long)]
        force: bool,
        /// How to print the summary: table or JSON.
        #[arg(long, short, value_enum, default_value_t = Output::Table, env = "IMCRYPT_OUTPUT")]
        output: Output,
    },
}

// ----- plumbing ---------------------------------------------------------------------------

/// One admin API request: `body` is the route's request type, `T` its response type (both
/// from `admin::api`, the contract the daemon answers with).
pub(super) fn call<T: serde::de::DeserializeOwned>(
    common: &Common,
    method: Method,
    path: &str,
    body: Option<&impl serde::Serialize>,
) -> Result<T, CliError> {
    let target = common.conn.target()?;
    let proof_file = common.conn.proof_file(&target);
    let client = Client::new(target)?;
    if let Some(text) = proof_file.as_ref().and_then(|p| std::fs::read_to_string(p).ok()) {
        client.set_proof(&text);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    let r = rt.block_on(client.call::<T>(method, path, body));
    if let (Some(path), Some(proof)) = (&proof_file, client.take_new_proof()) {
        keep_proof(path, &proof);
    }
    Ok(r?)
}

/// Keeps the daemon's client proof for the next runs (mode 0600, in a directory of mode
/// 0700). Failing to is not an error of the command, only said.
fn keep_proof(path: &std::path::Path, proof: &str) {
    use std::os::unix::fs::DirBuilderExt;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let made =
        dir.map_or(Ok(()), |d| std::fs::DirBuilder::new().recursive(true).mode(0o700).create(d));
    let r = made.map_err(|e| e.to_string()).and_then(|()| {
        crate::store::write_private(path, proof.as_bytes(), crate::store::Existing::Replace)
            .map_err(|e| e.to_string())
    });
    if let Err(e) = r {
        eprintln!(
            "note: cannot keep the daemon's client proof in {} ({e}); a lockout caused by \
             someone else's wrong passwords would also stop you (see --proof-file)",
            path.display()
        );
    }
}

/// A command's request without a body.
pub(super) const NO_BODY: Option<&()> = None;

pub(super) fn print_json(v: &impl serde::Serialize) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v).map_err(|e| CliError::Output(e.into()))?;
    writeln!(out).map_err(CliError::Output)
}

pub(super) fn print_done(common: &Common, v: &api::Done) -> Result<(), CliError> {
    if common.output == Output::Json {
        return print_json(v);
    }
    println!("{}", v.message);
    for n in &v.notes {
        println!("note: {n}");
    }
    Ok(())
}

fn line(s: &str) -> Zeroizing<String> {
    Zeroizing::new(s.trim_end_matches(['\n', '\r']).to_owned())
}

fn first_line_of(path: &Path) -> Result<Zeroizing<String>, CliError> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|source| CliError::Read { path: path.to_owned(), source })?,
    );
    Ok(line(text.lines().next().unwrap_or_default()))
}

fn stdin_lines(n: usize) -> Result<Vec<Zeroizing<String>>, CliError> {
    let mut stdin = std::io::stdin().lock();
    (0..n)
        .map(|i| {
            let mut buf = Zeroizing::new(String::new());
            let got = stdin
                .read_line(&mut buf)
                .map_err(|e| CliError::Password(format!("cannot read standard input: {e}")))?;
            if got == 0 {
                return Err(CliError::Password(format!(
                    "standard input ended before password {} of {n}",
                    i + 1
                )));
            }
            Ok(line(&buf))
        })
        .collect()
}

/// The flags that give a password without a prompt, for the message when there is no terminal.
const PASSWORD_FLAGS: &str = "--password-file FILE or --password-stdin";
const PASSWORD_CHANGE_FLAGS: &str =
    "--old-password-file FILE and --new-password-file FILE, or --password-stdin";

/// Asks on the controlling terminal without echo. Without one (a script, cron, a service) the
/// prompt is impossible, and the message says which flags give the password instead.
fn prompt(text: &str, flags: &'static str) -> Result<Zeroizing<String>, CliError> {
    if std::fs::File::options().read(true).write(true).open("/dev/tty").is_err() {
        return Err(CliError::NoTerminal { flags });
    }
    rpassword::prompt_password(text).map(Zeroizing::new).map_err(|e| {
        CliError::Password(format!("cannot prompt for the password ({e}); use {flags}"))
    })
}

fn nonempty(p: Zeroizing<String>) -> Result<Zeroizing<String>, CliError> {
    if p.is_empty() {
        return Err(CliError::Password("the password is empty".into()));
    }
    Ok(p)
}

fn read_password(src: &PasswordSource, what: &str) -> Result<Zeroizing<String>, CliError> {
    nonempty(match (&src.password_file, src.password_stdin) {
        (Some(p), _) => first_line_of(p)?,
        (None, true) => stdin_lines(1)?.remove(0),
        (None, false) => prompt(&format!("{what}: "), PASSWORD_FLAGS)?,
    })
}

// ----- admin commands ---------------------------------------------------------------------

/// A cell of the status table: `-` for nothing.
fn or_dash(v: Option<impl std::fmt::Display>) -> String {
    v.map(|v| v.to_string()).filter(|s| !s.is_empty()).unwrap_or_else(|| "-".into())
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn print_alarms(alarms: &[Alarm]) {
    if alarms.is_empty() {
        println!("no active alarms");
        return;
    }
    for a in alarms {
        println!(
            "{} ({}) about {}: {} Remedy: {}",
            a.key.name.as_str(),
            a.severity,
            a.key.about,
            a.cause,
            a.remedy
        );
    }
}

fn print_peers(peers: &[api::PeerStatus]) {
    if peers.is_empty() {
        println!("no peers");
        return;
    }
    println!("{:<24} {:<10} RELATION", "PEER", "LINK");
    for p in peers {
        let link = if p.link.connected { "connected" } else { "down" };
        println!("{:<24} {:<10} {}", p.id, link, p.relation);
        if let Some(e) = &p.link.last_error {
            println!("{:<24} {:<10} last error: {e}", "", "");
        }
    }
}

pub(crate) fn status(common: &Common) -> Result<(), CliError> {
    let s: api::Status = call(common, Method::GET, "/v1/status", NO_BODY)?;
    if common.output == Output::Json {
        return print_json(&s);
    }
    let versions: Vec<String> = s.key_versions.iter().map(|v| v.to_string()).collect();
    let rows = [
        ("cluster", s.cluster.to_string()),
        ("role", s.role.to_string()),
        ("off reason", or_dash(s.off_reason.as_ref())),
        ("domain", or_dash(s.domain.as_ref())),
        ("master", or_dash(s.master.as_ref())),
        ("epoch", or_dash(s.epoch.as_ref())),
        ("term", or_dash(s.term.as_ref())),
        (
            "key versions",
            if versions.is_empty() {
                "-".into()
            } else {
                format!("{} (primary {})", versions.join(", "), or_dash(s.primary_version.as_ref()))
            },
        ),
        ("remote", or_dash(s.remote.map(yes_no))),
        ("eligible", yes_no(s.eligible).into()),
    ];
    for (k, v) in rows {
        println!("{k:<13} {v}");
    }
    println!();
    print_peers(&s.peers);
    println!();
    print_alarms(&s.alarms);
    if !s.pending_destruction.is_empty() {
        println!();
        println!("{:<9} {:<34} {:<14} DESTROYED AT", "PENDING", "DOMAIN", "KEY VERSIONS");
        for p in &s.pending_destruction {
            let versions: Vec<String> = p.versions.iter().map(|v| v.to_string()).collect();
            let at = crate::cluster::Time::from_unix_millis(p.destroy_unix_ms).system_time();
            println!(
                "{:<9} {:<34} {:<14} {}",
                p.kind.to_string(),
                p.domain.to_string(),
                versions.join(", "),
                humantime::format_rfc3339_seconds(at)
            );
        }
    }
    if !s.sinks.is_empty() {
        println!();
        println!(
            "{:<24} {:<13} {:>9} {:>8} {:>11} LAST ERROR",
            "ALARM SINK", "KIND", "DELIVERED", "FAILED", "UNDELIVERED"
        );
        for k in &s.sinks {
            let c = &k.counters;
            println!(
                "{:<24} {:<13} {:>9} {:>8} {:>11} {}",
                k.name,
                k.kind,
                c.delivered,
                c.failed_attempts,
                c.undelivered,
                or_dash(c.last_error.as_ref())
            );
        }
    }
    Ok(())
}

pub(crate) fn peers(cmd: Option<PeersCommand>, common: &Common) -> Result<(), CliError> {
    match cmd {
        None => {
            let p: Vec<api::PeerStatus> = call(common, Method::GET, "/v1/peers", NO_BODY)?;
            if common.output == Output::Json {
                return print_json(&p);
            }
            print_peers(&p);
            Ok(())
        }
        Some(PeersCommand::Add { id, address, common }) => {
            let body = api::AddPeerRequest { id, address };
            let v = call(&common, Method::POST, "/v1/peers", Some(&body))?;
            print_done(&common, &v)
        }
        Some(PeersCommand::Remove { id, common }) => {
            let path = format!("/v1/peers/{}", path_segment(&id)?);
            let v = call(&common, Method::DELETE, &path, NO_BODY)?;
            print_done(&common, &v)
        }
    }
}

pub(super) fn path_segment(s: &str) -> Result<&str, CliError> {
    if s.is_empty() || s.chars().any(|c| !(c.is_ascii_alphanumeric() || "-._".contains(c))) {
        return Err(CliError::Password(format!(
            "{s:?} is not a valid id (letters, digits, '-', '.', '_')"
        )));
    }
    Ok(s)
}

pub(crate) fn nodes(cmd: NodesCommand) -> Result<(), CliError> {
    match cmd {
        NodesCommand::Add { id, archiver, common } => {
            let body = api::AddNodeRequest { id, archiver };
            let v = call(&common, Method::POST, "/v1/nodes", Some(&body))?;
            print_done(&common, &v)
        }
        NodesCommand::Remove { id, common } => {
            let path = format!("/v1/nodes/{}", path_segment(&id)?);
            let v = call(&common, Method::DELETE, &path, NO_BODY)?;
            print_done(&common, &v)
        }
    }
}

pub(crate) fn alarms(cmd: Option<AlarmsCommand>, common: &Common) -> Result<(), CliError> {
    if let Some(AlarmsCommand::Test { sink, common }) = cmd {
        return test_sinks(sink.as_deref(), &common);
    }
    let v: api::AlarmsReport = call(common, Method::GET, "/v1/alarms", NO_BODY)?;
    if common.output == Output::Json {
        return print_json(&v);
    }
    print_alarms(&v.active);
    if !v.history.is_empty() {
        println!();
        println!("{:<25} {:<8} {:<30} ABOUT", "AT", "EVENT", "ALARM");
        for e in &v.history {
            println!("{:<25} {:<8} {:<30} {}", e.at, e.event, e.name.as_str(), e.about);
        }
    }
    Ok(())
}

/// One line of `imcrypt alarms test --output json`.
#[derive(serde::Serialize)]
struct SinkTest<'a> {
    sink: &'a str,
    kind: &'a str,
    delivered: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// `imcrypt alarms test`: the test alarm through each selected sink, once, without retry.
fn test_sinks(only: Option<&str>, common: &Common) -> Result<(), CliError> {
    use crate::alarm::sink;
    let Some(path) = &common.conn.config else {
        return Err(CliError::NoSink(
            "alarms test reads the sinks from the daemon's config file: give --config FILE".into(),
        ));
    };
    let config = crate::config::Config::load(path)?;
    let sinks: Vec<&sink::SinkConfig> =
        config.alarms.sinks.iter().filter(|s| only.is_none_or(|n| s.name == n)).collect();
    if sinks.is_empty() {
        return Err(CliError::NoSink(match only {
            Some(n) => format!("{} has no alarm sink named {n:?}", path.display()),
            None => format!("{} configures no alarm sinks ([[alarms.sinks]])", path.display()),
        }));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    let results: Vec<Result<(), String>> = rt.block_on(async {
        let mut out = Vec::new();
        for s in &sinks {
            out.push(sink::send_once(s, sink::test_event(&config.cluster_id)).await);
        }
        out
    });
    let lines: Vec<SinkTest<'_>> = sinks
        .iter()
        .zip(&results)
        .map(|(s, r)| SinkTest {
            sink: &s.name,
            kind: s.kind.name(),
            delivered: r.is_ok(),
            error: r.clone().err(),
        })
        .collect();
    if common.output == Output::Json {
        print_json(&lines)?;
    } else {
        for l in &lines {
            match &l.error {
                None => println!("{:<24} {:<13} delivered", l.sink, l.kind),
                Some(e) => println!("{:<24} {:<13} failed: {e}", l.sink, l.kind),
            }
        }
    }
    let failed = lines.iter().filter(|l| !l.delivered).count();
    if failed > 0 {
        return Err(CliError::SinksFailed { failed, total: lines.len() });
    }
    Ok(())
}

/// What `imcrypt encryption promote --force` says before it asks for the password.
const FORCE_WARNING: &str = "warning: --force promotes this cluster although its master may \
     still be alive. Until the old master hears the new term, two masters may act for one \
     domain (each may rotate keys or change settings). When it hears the new term, the old \
     master steps down, becomes a slave of this cluster and hands back the key versions it \
     made; its password and settings changes are superseded by the new term. Use --force only \
     if the master is lost for good or cut off; prefer `imcrypt encryption handover` on a \
     master that still runs.";

pub(crate) fn encryption(cmd: EncryptionCommand) -> Result<(), CliError> {
    match cmd {
        EncryptionCommand::Enable { remote, password, common } => {
            let pw = match (&password.password_file, password.password_stdin) {
                (None, false) => {
                    let a = nonempty(prompt("New encryption password: ", PASSWORD_FLAGS)?)?;
                    let b = prompt("Repeat the password: ", PASSWORD_FLAGS)?;
                    if *a != *b {
                        return Err(CliError::Password("the two passwords differ".into()));
                    }
                    a
                }
                _ => read_password(&password, "Encryption password")?,
            };
            let body = api::EnableRequest { password: pw, remote };
            let v = call(&common, Method::POST, "/v1/encryption/enable", Some(&body))?;
            print_done(&common, &v)
        }
        EncryptionCommand::Disable {
            guarded: Guarded { i_understand_data_loss, password, common },
        } => {
            let pw = read_password(&password, "Encryption password (the master's)")?;
            let body = api::DisableRequest { password: pw, i_understand_data_loss };
            let v = call(&common, Method::POST, "/v1/encryption/disable", Some(&body))?;
            print_done(&common, &v)
        }
        EncryptionCommand::Handover { to, password, common } => {
            let pw = read_password(&password, "Encryption password")?;
            let body = api::HandoverRequest { to, password: pw };
            let v: api::HandedOver =
                call(&common, Method::POST, "/v1/encryption/handover", Some(&body))?;
            if common.output == Output::Json {
                return print_json(&v);
            }
            println!(
                "handing over: cluster {} becomes master of the domain under term {}; this \
                 cluster stays master, refusing changes, until it has taken over, then is its \
                 slave",
                v.to, v.term
            );
            Ok(())
        }
        EncryptionCommand::Promote { force, password, common } => {
            if force {
                eprintln!("{FORCE_WARNING}");
            }
            let pw = read_password(&password, "Encryption password")?;
            let body = api::PromoteRequest { password: pw, force };
            let v: api::Promoted =
                call(&common, Method::POST, "/v1/encryption/promote", Some(&body))?;
            if common.output == Output::Json {
                return print_json(&v);
            }
            println!(
                "promoted: this cluster is master of domain {} under term {}",
                v.domain, v.term
            );
            if v.forced {
                println!(
                    "note: the old master had been heard from recently; until it hears term {} \
                     it may still act as master. It then steps down and hands back any key \
                     versions it made meanwhile (alarm MAencryptionKeysRecovered: download the \
                     keys again)",
                    v.term
                );
            }
            Ok(())
        }
        EncryptionCommand::Remote { state, common } => {
            let body = api::RemoteRequest { enabled: state == OnOff::On };
            let v = call(&common, Method::PUT, "/v1/encryption/remote", Some(&body))?;
            print_done(&common, &v)
        }
    }
}

pub(crate) fn password(cmd: PasswordCommand) -> Result<(), CliError> {
    let PasswordCommand::Change { old_password_file, new_password_file, password_stdin, common } =
        cmd;
    let (old, new) = if password_stdin {
        let mut l = stdin_lines(2)?;
        let new = l.remove(1);
        (l.remove(0), new)
    } else {
        let old = match &old_password_file {
            Some(p) => first_line_of(p)?,
            None => prompt("Current encryption password: ", PASSWORD_CHANGE_FLAGS)?,
        };
        let new = match &new_password_file {
            Some(p) => first_line_of(p)?,
            None => {
                let a = prompt("New encryption password: ", PASSWORD_CHANGE_FLAGS)?;
                let b = prompt("Repeat the new password: ", PASSWORD_CHANGE_FLAGS)?;
                if *a != *b {
                    return Err(CliError::Password("the two new passwords differ".into()));
                }
                a
            }
        };
        (old, new)
    };
    let body =
        api::PasswordChangeRequest { old_password: nonempty(old)?, new_password: nonempty(new)? };
    let v = call(&common, Method::POST, "/v1/password", Some(&body))?;
    print_done(&common, &v)
}

pub(crate) fn key(cmd: KeyCommand) -> Result<(), CliError> {
    match cmd {
        KeyCommand::Rotate { common } => {
            let v = call(&common, Method::POST, "/v1/keys/rotate", NO_BODY)?;
            print_done(&common, &v)
        }
        KeyCommand::Retire {
            below,
            guarded: Guarded { i_understand_data_loss, password, common },
        } => {
            let below = crate::ids::KeyVersion::new(below).map_err(|_| {
                CliError::Usage(
                    "--below 0: key versions start at 1; give a version from 2 up".into(),
                )
            })?;
            let pw = read_password(&password, "Encryption password")?;
            let body = api::RetireRequest { password: pw, below, i_understand_data_loss };
            let v = call(&common, Method::POST, "/v1/keys/retire", Some(&body))?;
            print_done(&common, &v)
        }
        KeyCommand::Restore { password, common } => {
            let pw = read_password(&password, "Encryption password")?;
            let body = api::RestoreRequest { password: pw };
            let v = call(&common, Method::POST, "/v1/keys/restore", Some(&body))?;
            print_done(&common, &v)
        }
        KeyCommand::Download { public_key, out, force, password, common } => {
            // The key is checked before the password is asked for.
            let pem = std::fs::read_to_string(&public_key)
                .map_err(|source| CliError::Read { path: public_key.clone(), source })?;
            let to = parse_public_key(&pem)
                .map_err(|source| CliError::PublicKey { path: public_key.clone(), source })?;
            if let Some(o) = &out
                && !force
                && o.exists()
            {
                return Err(viewer::ViewerError::Exists { path: o.clone() }.into());
            }
            let pw = read_password(&password, "Encryption password")?;
            let body = api::DownloadRequest { password: pw, public_key_pem: pem };
            let doc: KeyExport = call(&common, Method::POST, "/v1/keys/download", Some(&body))?;
            if doc.recipient_sha256 != to.fingerprint_hex() {
                return Err(crate::admin::client::ClientError::Decode(
                    "the export is wrapped for another public key".into(),
                )
                .into());
            }
            let mut bytes = serde_json::to_vec_pretty(&doc).expect("serializes");
            bytes.push(b'\n');
            let versions: Vec<String> = doc.keys.iter().map(|k| k.version.to_string()).collect();
            match &out {
                Some(path) => {
                    viewer::write_private(path, &bytes, force)?;
                    eprintln!(
                        "wrote the keys of domain {} (versions {}, primary {}) wrapped for RSA key \
                         {} to {}",
                        doc.domain,
                        versions.join(", "),
                        doc.primary_version,
                        doc.recipient_sha256,
                        path.display()
                    );
                    Ok(())
                }
                None => std::io::stdout().write_all(&bytes).map_err(CliError::Output),
            }
        }
        KeyCommand::Unwrap { export, private_key, out, force, output } => {
            let ring = viewer::unwrap(&export, &private_key, &out, force)?;
            let versions: Vec<u32> = ring.versions().map(|v| v.get()).collect();
            if output == Output::Json {
                return print_json(&serde_json::json!({
                    "domain": ring.domain(),
                    "versions": versions,
                    "primary_version": ring.primary_version(),
                    "file": out,
                }));
            }
            println!(
                "unwrapped key versions {} of domain {} (primary {}) into {} (mode 0600)",
                versions.iter().map(u32::to_string).collect::<Vec<_>>().join(", "),
                ring.domain(),
                ring.primary_version(),
                out.display()
            );
            Ok(())
        }
    }
}

// ----- viewer -----------------------------------------------------------------------------

pub(crate) fn decrypt(keys: &Path, input: Option<PathBuf>, output: Output) -> Result<(), CliError> {
    let ring = viewer::load_ring(keys)?;
    let reader: Box<dyn BufRead> = match input {
        Some(p) if p.as_os_str() != "-" => Box::new(std::io::BufReader::new(
            std::fs::File::open(&p).map_err(|source| CliError::Read { path: p.clone(), source })?,
        )),
        _ => Box::new(std::io::stdin().lock()),
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if output == Output::Table {
        writeln!(out, "{:<12} {:<16} {:<4} PLAINTEXT", "ROW", "CLUSTER", "KEY")
            .map_err(CliError::Output)?;
    }
    let (seen, failed) = viewer::decrypt_all(
        &ring,
        reader,
        |p| match output {
            Output::Json => {
                serde_json::to_writer(&mut out, &p)?;
                writeln!(out)
            }
            Output::Table => {
                let text = match (&p.plaintext, &p.plaintext_b64) {
                    (Some(t), _) => crate::archive::view::cell(t),
                    (None, Some(b)) => format!("base64:{b}"),
                    _ => String::new(),
                };
                let row = match &p.row {
                    Value::String(s) => crate::archive::view::cell(s),
                    other => other.to_string(),
                };
                writeln!(out, "{row:<12} {:<16} {:<4} {text}", p.cluster, p.key_version)
            }
        },
        |f| eprintln!("imcrypt: line {} (row {}): {}", f.line, f.row, f.reason),
    )
    .map_err(CliError::Output)?;
    out.flush().map_err(CliError::Output)?;
    if failed > 0 {
        return Err(CliError::Undecryptable { failed, seen });
    }
    Ok(())
}
