//! The `imcrypt` command line: argument parsing, dispatch, and the one place where errors
//! become a message on stderr and an exit code ([`CliError::exit_code`]).
//!
//! Exit codes (docs/admin.md):
//! 0 success; 1 the operation failed (I/O, daemon unreachable, daemon error); 2 usage error
//! (clap, or a password prompt without a terminal); 3 invalid input (a key, a file, a value that does not pass validation, here or at
//! the daemon); 4 refused by the daemon (wrong password, not allowed in this state);
//! 5 authentication (admin token missing or wrong); 6 rate limited or locked out (retry
//! later); 7 `decrypt`: some records could not be decrypted (each is reported on stderr).
//!
//! Invariant: passwords never come from argv, only from a no-echo prompt, a file or stdin.

mod archive;
mod audit;
use crate::admin::client;
mod commands;
mod peering;
mod support;
mod tokens;
mod viewer;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing::Instrument;

use crate::crypto::export::{PublicKeyError, parse_public_key};
use commands::{
    AlarmsCommand, EncryptionCommand, KeyCommand, NodesCommand, PasswordCommand, PeersCommand,
};

#[derive(Debug, Parser)]
#[command(
    name = "imcrypt",
    version,
    about = "Encrypted IM compliance archives across peered clusters"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon of one cluster.
    Serve {
        /// The TOML config file (see config/demo/ for examples).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run a 3-cluster network on 127.0.0.1 and tell the whole story: enrolment, archiving
    /// through the hot paths, what a DBA sees, key download and reading the archive, rotation,
    /// a multi-master conflict; then clean up.
    Demo {
        /// Leave the network running after the story, with the commands to try next, until
        /// Ctrl-C; then clean up.
        #[arg(long)]
        keep: bool,
    },
    /// Administrators: named tokens with roles (create, list, revoke).
    Admin {
        #[command(subcommand)]
        command: tokens::AdminCommand,
    },
    /// Development certificates.
    Pki {
        #[command(subcommand)]
        command: PkiCommand,
    },
    /// Check that an RSA public key is acceptable for key download and print its fingerprint.
    CheckKey {
        /// PEM file: SPKI (BEGIN PUBLIC KEY) or PKCS#1 (BEGIN RSA PUBLIC KEY).
        public_key: PathBuf,
    },
    /// Show a daemon's status: role, domain, key versions, peers, alarms.
    Status {
        #[command(flatten)]
        common: commands::Common,
    },
    /// List the peers (or add or remove one at runtime).
    Peers {
        #[command(subcommand)]
        command: Option<PeersCommand>,
        #[command(flatten)]
        common: commands::Common,
    },
    /// Peer with a cluster that has a CA of its own: a one-time token from one side,
    /// established on the other (docs/operations.md, "Peering").
    Peering {
        #[command(subcommand)]
        command: peering::PeeringCommand,
    },
    /// Add or remove a node at runtime.
    Nodes {
        #[command(subcommand)]
        command: NodesCommand,
    },
    /// Show active alarms and the recent history of raises and clears (or test the sinks).
    Alarms {
        #[command(subcommand)]
        command: Option<AlarmsCommand>,
        #[command(flatten)]
        common: commands::Common,
    },
    /// Turn encryption on or off, here or on the remote clusters.
    Encryption {
        #[command(subcommand)]
        command: EncryptionCommand,
    },
    /// Change the encryption password (on the master).
    Password {
        #[command(subcommand)]
        command: PasswordCommand,
    },
    /// Rotate, download and unwrap keys.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Check or read the audit trail (on the daemon's host; docs/admin.md, "Audit trail").
    Audit {
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
    /// Decrypt archived records (JSON lines, docs/viewer.md) with an unwrapped key ring.
    Decrypt {
        /// The key ring file written by `imcrypt key unwrap`.
        #[arg(long)]
        keys: PathBuf,
        /// JSON-lines file of records; `-` or absent: standard input.
        #[arg(long, short)]
        input: Option<PathBuf>,
        /// How to print the records: table or JSON lines.
        #[arg(long, short, value_enum, default_value_t = commands::Output::Table, env = "IMCRYPT_OUTPUT")]
        output: commands::Output,
    },
    /// The reference archiver: IM events (JSON lines) in, encrypted rows in the compliance
    /// database out (docs/archive.md); `imcrypt archive versions` shows what an archive holds.
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Archive(archive::ArchiveArgs),
    /// Read the compliance database: filter by participant, room and time, decrypt, print.
    View(archive::ViewArgs),
    /// Help for support: `imcrypt support bundle` collects what a support engineer needs.
    Support {
        #[command(subcommand)]
        command: support::SupportCommand,
    },
    /// Print a shell completion script (e.g. `imcrypt completions bash > /etc/bash_completion.d/imcrypt`).
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), or write one page per command into a directory.
    Man {
        /// Write imcrypt.1 and imcrypt-COMMAND.1 for every subcommand into this directory
        /// instead of printing imcrypt.1.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// The development PKI is for trying imcrypt; production uses the organisation's CA
/// (keys/README.md).
#[derive(Debug, Subcommand)]
enum PkiCommand {
    /// Make a development CA (10 years) and one certificate per cluster (1 year, its id as DNS
    /// name). One cluster per CA is the normal case: each site makes its own, and its peers
    /// are given its ca.pem (`[[peers]] ca`).
    Init {
        /// Directory to write into; existing files are never overwritten.
        #[arg(long)]
        out: PathBuf,
        /// Cluster ids, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        clusters: Vec<crate::ids::ClusterId>,
    },
    /// Give clusters added later a certificate from the development CA that `pki init` made.
    Add {
        /// The directory `pki init` wrote (it holds ca.pem and ca.key).
        #[arg(long, visible_alias = "out")]
        dir: PathBuf,
        /// Cluster ids, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        clusters: Vec<crate::ids::ClusterId>,
    },
}

/// Everything a command can fail with, mapped to an exit code in `exit_code`.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Daemon(#[from] crate::daemon::DaemonError),
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiError),
    #[error("demo failed: {0}")]
    Demo(#[from] crate::demo::LabError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    PublicKey { path: PathBuf, source: PublicKeyError },
    #[error(transparent)]
    Client(#[from] client::ClientError),
    #[error(transparent)]
    Viewer(#[from] viewer::ViewerError),
    #[error("{0}")]
    Password(String),
    #[error(
        "no terminal to ask for the password on (imcrypt runs without one: a script, cron, a \
         service); give it with {flags}"
    )]
    NoTerminal { flags: &'static str },
    #[error("cannot write the output: {0}")]
    Output(std::io::Error),
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{failed} of {seen} records could not be decrypted (see above)")]
    Undecryptable { failed: usize, seen: usize },
    #[error(transparent)]
    Archive(#[from] crate::archive::ArchiveError),
    /// `alarms test`: no sink to test (none configured, or none of that name).
    #[error("{0}")]
    NoSink(String),
    #[error("{failed} of {total} alarm sinks did not take the test alarm (see above)")]
    SinksFailed { failed: usize, total: usize },
    #[error(transparent)]
    Tokens(crate::admin::tokens::TokensError),
    #[error("--local works on the daemon's host with its config file: give --config FILE")]
    LocalWithoutConfig,
    #[error("{0}")]
    Usage(String),
    /// `audit verify`: the chain is broken (or a file cannot be read).
    #[error("audit trail: {0}")]
    Audit(#[from] crate::audit::chain::ChainError),
    /// `audit list`: the daemon found its chain broken.
    #[error("the daemon's audit trail does not verify: {0}")]
    AuditRemote(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

impl CliError {
    /// The one place where an error becomes an exit code (see the module documentation).
    fn exit_code(&self) -> u8 {
        use client::ClientError as C;
        use hyper::StatusCode as S;
        match self {
            CliError::Read { .. }
            | CliError::Daemon(_)
            | CliError::Pki(_)
            | CliError::Demo(_)
            | CliError::Runtime(_)
            | CliError::Output(_)
            | CliError::Write { .. } => 1,
            CliError::SinksFailed { .. } | CliError::Store(_) => 1,
            CliError::Usage(_) => 2,
            CliError::Audit(crate::audit::chain::ChainError::Read { .. }) => 1,
            CliError::Audit(_) | CliError::AuditRemote(_) => 8,
            CliError::PublicKey { .. }
            | CliError::Config(_)
            | CliError::Password(_)
            | CliError::NoSink(_) => 3,
            CliError::Viewer(e) => {
                use viewer::ViewerError as V;
                match e {
                    V::Write { .. } => 1,
                    V::Read { .. }
                    | V::Exists { .. }
                    | V::NotExport { .. }
                    | V::Unwrap { .. }
                    | V::NotRing { .. } => 3,
                }
            }
            CliError::Undecryptable { .. } => 7,
            CliError::NoTerminal { .. } | CliError::LocalWithoutConfig => 2,
            CliError::Tokens(e) => {
                use crate::admin::tokens::TokensError as T;
                match e {
                    T::BadName { .. } => 3,
                    T::NameTaken(_) | T::NoSuchName(_) | T::LastAdmin(_) => 4,
                    T::NotRecorded(_) | T::Unaudited(_) => 6,
                    T::Store(_)
                    | T::Lock { .. }
                    | T::Legacy(_)
                    | T::NoNodeKey(_)
                    | T::NodeKey(_)
                    | T::Missing(_) => 1,
                }
            }
            CliError::Archive(e) => {
                use crate::archive::ArchiveError as A;
                match e {
                    A::Keys(_) => 3,
                    A::Unreadable { .. } | A::NotRewrapped(_) => 7,
                    A::Rewrap(_) => 1,
                    A::Db(_) | A::Listen { .. } | A::Io(_) | A::NotArchived(_) => 1,
                }
            }
            CliError::Client(e) => match e {
                C::NoAddress | C::NoCa | C::Read { .. } | C::CaFile(_) | C::Setup(_) => 3,
                C::NoToken => 5,
                C::Connect { .. } | C::Tls { .. } | C::Timeout { .. } | C::Http(_) => 1,
                C::Decode(_) => 1,
                C::Api { status, .. } => match *status {
                    S::UNAUTHORIZED => 5,
                    S::TOO_MANY_REQUESTS | S::SERVICE_UNAVAILABLE => 6,
                    S::BAD_REQUEST
                    | S::PAYLOAD_TOO_LARGE
                    | S::UNSUPPORTED_MEDIA_TYPE
                    | S::UNPROCESSABLE_ENTITY => 3,
                    S::FORBIDDEN | S::CONFLICT | S::NOT_FOUND => 4,
                    _ => 1,
                },
            },
        }
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("imcrypt: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

impl Command {
    /// Commands that hold key material, a private key or the password in memory: they make no
    /// core dumps (`crypto::locked::harden_process`). `serve` hardens itself once its log is
    /// set up, so the outcome reaches the daemon's log.
    fn holds_secrets(&self) -> bool {
        match self {
            Command::Demo { .. }
            | Command::Encryption { .. }
            | Command::Password { .. }
            | Command::Key { .. }
            | Command::Decrypt { .. }
            | Command::Admin { .. }
            | Command::Peering { .. }
            | Command::View(_) => true,
            Command::Serve { .. }
            | Command::Pki { .. }
            | Command::Completions { .. }
            | Command::Man { .. }
            | Command::CheckKey { .. }
            | Command::Status { .. }
            | Command::Peers { .. }
            | Command::Nodes { .. }
            | Command::Alarms { .. }
            | Command::Archive(_)
            | Command::Audit { .. }
            | Command::Support { .. } => false,
        }
    }
}

fn run(cli: Cli) -> Result<(), CliError> {
    if cli.command.holds_secrets() {
        for e in crate::crypto::locked::harden_process().errors {
            eprintln!("warning: cannot keep secrets out of core dumps: {e}");
        }
    }
    match cli.command {
        Command::Serve { config } => serve(&config),
        Command::Admin { command } => tokens::admin(command),
        Command::Peering { command } => peering::peering(command),
        Command::Demo { keep } => {
            init_logging("off");
            runtime()?.block_on(crate::demo::story::run(keep))?;
            Ok(())
        }
        Command::Pki { command: PkiCommand::Init { out, clusters } } => {
            crate::pki::init(&out, &clusters)?;
            println!(
                "wrote ca.pem, ca.key and a certificate and key per cluster to {}",
                out.display()
            );
            Ok(())
        }
        Command::Pki { command: PkiCommand::Add { dir, clusters } } => {
            crate::pki::add(&dir, &clusters)?;
            let names: Vec<String> = clusters.iter().map(|c| format!("{c}.pem, {c}.key")).collect();
            println!("wrote {} to {}, signed by its ca.pem", names.join(", "), dir.display());
            Ok(())
        }
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "imcrypt", &mut std::io::stdout());
            Ok(())
        }
        Command::Man { out } => man(out),
        Command::CheckKey { public_key } => check_key(public_key),
        Command::Status { common } => commands::status(&common),
        Command::Peers { command, common } => commands::peers(command, &common),
        Command::Nodes { command } => commands::nodes(command),
        Command::Alarms { command, common } => commands::alarms(command, &common),
        Command::Encryption { command } => commands::encryption(command),
        Command::Password { command } => commands::password(command),
        Command::Key { command } => commands::key(command),
        Command::Decrypt { keys, input, output } => commands::decrypt(&keys, input, output),
        Command::Archive(a) => {
            init_logging("info");
            Ok(archive::archive(a)?)
        }
        Command::View(a) => {
            // Warnings only: the rows go to stdout, and a warning such as "the server's
            // certificate is not verified" (trust_server_certificate) must reach the reader.
            init_logging("warn");
            Ok(archive::view(a)?)
        }
        Command::Support { command } => support::support(command),
        Command::Audit { command } => audit::audit(command),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(CliError::Runtime)
}

/// How a running process changes its log level (`imcrypt serve`, on a reload).
type LogReload =
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

/// Structured logs on stderr at level `default`, unless `RUST_LOG` is set: it takes precedence
/// (and allows per-module directives). Colour only on a terminal, and never when `NO_COLOR` is
/// set (no-color.org): a log file or a journal must not fill with escape codes. Returns the
/// way to change the level later, or `None` when `RUST_LOG` decides it.
fn init_logging(default: &str) -> Option<LogReload> {
    use std::io::IsTerminal;
    let ansi = colour(std::io::stderr().is_terminal(), std::env::var_os("NO_COLOR"));
    let writer = tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stderr);
    init_logging_to(default, writer, ansi)
}

/// As [`init_logging`], appending to `file` (created 0640 if missing) instead of stderr,
/// without colour.
fn init_logging_file(default: &str, file: &std::path::Path) -> Result<Option<LogReload>, CliError> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(file)
        .map_err(|source| CliError::Write { path: file.to_owned(), source })?;
    let writer = tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::sync::Mutex::new(f));
    Ok(init_logging_to(default, writer, false))
}

fn init_logging_to(
    default: &str,
    writer: tracing_subscriber::fmt::writer::BoxMakeWriter,
    ansi: bool,
) -> Option<LogReload> {
    use tracing_subscriber::prelude::*;
    let (filter, from_env) = match tracing_subscriber::EnvFilter::try_from_default_env() {
        Ok(f) => (f, true),
        Err(_) => (tracing_subscriber::EnvFilter::new(default), false),
    };
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let fmt = tracing_subscriber::fmt::layer().with_ansi(ansi).with_writer(writer);
    let _ = tracing_subscriber::registry().with(filter).with(fmt).try_init();
    (!from_env).then_some(handle)
}

/// Whether log lines may carry ANSI colour: on a terminal, unless `NO_COLOR` is present and
/// not empty.
fn colour(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// How often the service manager's status line is refreshed (role, peers, alarms change
/// without a reload).
const STATUS_REFRESH: std::time::Duration = std::time::Duration::from_secs(10);

/// `imcrypt serve`: the daemon until SIGTERM or SIGINT; SIGHUP reloads the config file
/// (docs/operations.md, "Reloading the configuration"); under systemd, `sd_notify` messages
/// (`crate::systemd`).
fn serve(path: &std::path::Path) -> Result<(), CliError> {
    use tokio::signal::unix::{SignalKind, signal};
    let config = crate::config::Config::load(path)?;
    let level = config.log.level.to_string();
    let log = match &config.log.file {
        Some(file) => init_logging_file(&level, file)?,
        None => init_logging(&level),
    };
    let set_level = log.map(|h| -> crate::daemon::LogLevelSetter {
        Box::new(move |level| {
            h.reload(tracing_subscriber::EnvFilter::new(level.to_string()))
                .map_err(|e| e.to_string())
        })
    });
    let notifier = crate::systemd::Notifier::from_env();
    // As the daemon's own lines: every line names its cluster.
    let span = tracing::error_span!("cluster", id = %config.cluster_id);
    // Before any key is loaded: no core dump will ever hold one.
    span.in_scope(
        || crate::crypto::locked::log_hardening(&crate::crypto::locked::harden_process()),
    );
    runtime()?.block_on(async {
        let signal = |kind| signal(kind).map_err(CliError::Runtime);
        let (mut int, mut term, mut hup) = (
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
            signal(SignalKind::hangup())?,
        );
        // A write past the file-size limit (`ulimit -f`, `LimitFSIZE=`) must fail with EFBIG,
        // which the state store reports and cleans up after, rather than kill the daemon in the
        // middle of it (SIGXFSZ's default action). tokio's handler replaces that action for the
        // life of the process; nothing needs to read the stream.
        let _file_size = signal(SignalKind::from_raw(rustix::process::Signal::XFSZ.as_raw()))?;
        let mut daemon = crate::daemon::start_with(config.clone(), notifier.watchdog()).await?;
        let mut reloader = crate::daemon::Reloader::new(config, set_level);
        let status_line = async |d: &crate::daemon::DaemonHandle| match d.status().await {
            Ok(s) => crate::systemd::status_line(&s),
            Err(e) => e.to_string(),
        };
        // Every listener is bound and the core runs: ready.
        notifier.ready(&status_line(&daemon).await);
        let mut refresh = tokio::time::interval(STATUS_REFRESH);
        loop {
            tokio::select! {
                _ = int.recv() => {
                    tracing::info!("SIGINT received");
                    break;
                }
                _ = term.recv() => {
                    tracing::info!("SIGTERM received");
                    break;
                }
                _ = hup.recv() => {
                    notifier.reloading();
                    reload(path, &daemon, &mut reloader).instrument(span.clone()).await;
                    notifier.ready(&status_line(&daemon).await);
                }
                _ = refresh.tick(), if notifier.enabled() => {
                    notifier.status(&status_line(&daemon).await);
                }
                () = daemon.wait() => {
                    return Err(CliError::Daemon(crate::daemon::DaemonError::Stopped));
                }
            }
        }
        notifier.stopping();
        daemon.shutdown().await;
        Ok(())
    })
}

/// SIGHUP: the config file again, applied if it loads (`daemon::Reloader`); a file that does
/// not load is refused with the loader's message, which names the key, and nothing changes.
async fn reload(
    path: &std::path::Path,
    daemon: &crate::daemon::DaemonHandle,
    reloader: &mut crate::daemon::Reloader,
) {
    tracing::info!(config = %path.display(), "SIGHUP received; reloading the configuration");
    match crate::config::Config::load(path) {
        Ok(new) => {
            reloader.reload(daemon, new).await;
        }
        Err(e) => {
            // One log line: the parser's message spans several (it quotes the offending line).
            let error: Vec<String> = e.to_string().lines().map(|l| l.trim().to_owned()).collect();
            let error = error.into_iter().filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ");
            tracing::error!(%error, "configuration not reloaded; the daemon runs on unchanged")
        }
    }
}

/// `imcrypt man`: the page of `imcrypt` on stdout, or every command's page into `out`.
fn man(out: Option<PathBuf>) -> Result<(), CliError> {
    let cmd = <Cli as clap::CommandFactory>::command();
    let Some(dir) = out else {
        return clap_mangen::Man::new(cmd).render(&mut std::io::stdout()).map_err(CliError::Output);
    };
    std::fs::create_dir_all(&dir)
        .and_then(|()| clap_mangen::generate_to(cmd, &dir))
        .map_err(|source| CliError::Write { path: dir.clone(), source })?;
    println!("wrote the manual pages to {}", dir.display());
    Ok(())
}

fn check_key(path: PathBuf) -> Result<(), CliError> {
    let pem = std::fs::read_to_string(&path)
        .map_err(|source| CliError::Read { path: path.clone(), source })?;
    let r = parse_public_key(&pem).map_err(|source| CliError::PublicKey { path, source })?;
    println!("RSA {} bits, exponent 65537", r.bits());
    println!("sha256 fingerprint (SPKI DER): {}", r.fingerprint_hex());
    if r.bits() < 3072 {
        println!("acceptable for key download; 3072 bits or more are recommended");
    } else {
        println!("acceptable for key download");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{Cli, colour};

    /// `--help` is the first documentation a user reads: every command and every option
    /// (positional arguments included) has a line of it.
    #[test]
    fn every_command_and_option_has_a_line_of_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in cmd.get_arguments() {
                let id = a.get_id().as_str();
                if a.is_hide_set() || id == "help" || id == "version" {
                    continue;
                }
                if a.get_help().is_none() && a.get_long_help().is_none() {
                    missing.push(format!("{path} <{id}>"));
                }
            }
            for s in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
                let p = format!("{path} {}", s.get_name());
                if s.get_about().is_none() {
                    missing.push(p.clone());
                }
                walk(s, &p, missing);
            }
        }
        let cmd = <Cli as clap::CommandFactory>::command();
        cmd.clone().debug_assert();
        let mut missing = Vec::new();
        walk(&cmd, "imcrypt", &mut missing);
        assert!(missing.is_empty(), "without a line of help: {missing:#?}");
    }

    #[test]
    fn logs_are_coloured_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, Some("".into())), "an empty NO_COLOR does not count");
        assert!(!colour(true, Some("1".into())));
        assert!(!colour(false, None), "a file or a pipe gets no escape codes");
    }
}
