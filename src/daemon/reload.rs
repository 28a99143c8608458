//! Reload (SIGHUP): a new configuration file applied to the running daemon, section by section.
//!
//! What changes at runtime: the log level (`[log] level`), the alarm sinks
//! (`[[alarms.sinks]]`), the metrics listener (`[metrics] listen`), and the nodes and peers
//! (`[[nodes]]` `id`/`archiver`, `[[peers]]`), which go through the state machine's
//! `Cluster::reconcile` exactly as at start, so its rules decide (a node added while encryption
//! is on is refused and logged, the rest applies). Everything else is read once at start; a
//! changed key of that kind is logged, one line per key, with "needs a restart", and the daemon
//! runs on with the value it started with.
//!
//! Invariants:
//! - the caller hands over a `Config` that loaded: a file that does not load is refused before
//!   it gets here, and the daemon runs on unchanged;
//! - "what changed" compares typed config sections, never text;
//! - the keys that need a restart are compared with the configuration the daemon *started*
//!   with, so they are reported at every reload until the restart; the runtime sections are
//!   compared with the last applied file, so an unchanged `[[peers]]` list is not reconciled
//!   again (a peer added with `imcrypt peers add` stays until the file's peers change or the
//!   daemon restarts).
//!
//! Extension point: a new runtime section is one call in [`Reloader::reload`], after the peers: compare `self.current.SECTION` with
//! `new.SECTION`, hand the new section to the running part (e.g. through the `DaemonHandle`),
//! and push the outcome into the [`Report`] (`applied` on success, `failed` with the key and
//! the reason otherwise). A section that cannot change at runtime is one more line in
//! [`restart_needed`].

use crate::cluster::Refusal;
use crate::config::{Config, LogLevel};

use super::DaemonHandle;
use super::start::wanted;

/// Sets the log level of the running process (the CLI owns the subscriber; the daemon does
/// not). `None` in [`Reloader::new`] when `RUST_LOG` decides the level.
pub(crate) type LogLevelSetter = Box<dyn Fn(LogLevel) -> Result<(), String> + Send + Sync>;

/// What one reload did, for the log, the service manager's status line and tests.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Report {
    /// What was applied, in the operator's terms ("log.level: info -> debug").
    pub(crate) applied: Vec<String>,
    /// Changes the state machine refused, with the reason (the rest applied).
    pub(crate) refused: Vec<String>,
    /// A section that could not be applied: its key and why.
    pub(crate) failed: Vec<(&'static str, String)>,
    /// Keys that changed but are read only at start.
    pub(crate) restart_needed: Vec<&'static str>,
}

/// The configuration a running daemon started with and the one last applied; applies new
/// files to the daemon.
pub(crate) struct Reloader {
    started: Config,
    current: Config,
    log: Option<LogLevelSetter>,
}

impl Reloader {
    /// `config` is what the daemon was started with; `log` sets the level (`None`: `RUST_LOG`
    /// rules and `[log] level` is not applied).
    pub(crate) fn new(config: Config, log: Option<LogLevelSetter>) -> Self {
        Self { started: config.clone(), current: config, log }
    }

    /// Applies `new` to `daemon`, logging each change, refusal and restart-only key (see the
    /// module documentation), and returns what it did.
    pub(crate) async fn reload(&mut self, daemon: &DaemonHandle, new: Config) -> Report {
        let mut report = Report::default();

        // The log level first, so that the lines below follow the new level.
        let (old_level, new_level) = (self.current.log.level, new.log.level);
        if old_level != new_level {
            match &self.log {
                Some(set) => match set(new_level) {
                    Ok(()) => {
                        tracing::info!(from = %old_level, to = %new_level, "log level changed");
                        report.applied.push(format!("log.level: {old_level} -> {new_level}"));
                    }
                    Err(e) => report.failed.push(("log.level", e)),
                },
                None => report.failed.push((
                    "log.level",
                    "RUST_LOG is set and decides the level until the daemon is restarted \
                     without it"
                        .into(),
                )),
            }
        }

        // The peers' CAs first, so that a peer added with its CA is verified against it.
        if self.current.peer_cas() != new.peer_cas() {
            match daemon.peer_tls.set_peer_cas(&new.peer_cas()) {
                Ok(()) => report.applied.push("peers' CAs (from their next connection)".into()),
                Err(e) => report.failed.push(("peers.ca", e.to_string())),
            }
        }

        // Nodes and peers: the state machine decides, as at start.
        let wanted_new = wanted(&new);
        if wanted(&self.current) != wanted_new {
            match daemon.control.reconcile(wanted_new).await {
                Ok(refusals) => {
                    for Refusal { change, reason } in refusals {
                        tracing::error!(%change, %reason, "configuration change refused");
                        report.refused.push(format!("{change}: {reason}"));
                    }
                    report.applied.push("peers and nodes reconciled with the file".into());
                }
                Err(e) => report.failed.push(("peers, nodes", e.to_string())),
            }
        }

        // Alarm sinks: those whose settings are unchanged keep running, with their queue and
        // counters (`Sinks::reconfigure`).
        if self.current.alarms != new.alarms {
            daemon.sinks().reconfigure(&new.alarms.sinks);
            let names: Vec<&str> = new.alarms.sinks.iter().map(|s| s.name.as_str()).collect();
            tracing::info!(sinks = ?names, "alarm sinks reconfigured");
            report.applied.push(format!("alarms.sinks: {}", names.join(", ")));
        }

        // The metrics listener: started, moved or stopped; the counters carry on.
        match daemon.metrics_listener().apply(new.metrics.as_ref().map(|m| m.listen)).await {
            Ok(Some(applied)) => report.applied.push(applied),
            Ok(None) => {}
            Err(why) => report.failed.push(("metrics.listen", why)),
        }

        report.restart_needed = restart_needed(&self.started, &new);
        for key in &report.restart_needed {
            tracing::warn!(key, "changed in the configuration file; needs a restart to apply");
        }
        for (key, reason) in &report.failed {
            tracing::error!(key, %reason, "not applied from the configuration file");
        }
        tracing::info!(
            applied = report.applied.len(),
            refused = report.refused.len(),
            failed = report.failed.len(),
            restart_needed = report.restart_needed.len(),
            "configuration reloaded"
        );
        tracing::debug!("configuration reload finished");
        self.current = new;
        report
    }
}

/// The keys whose value in `new` differs from the one the daemon started with and that are
/// read only at start (listeners, files, the state machine's settings, the database probe).
pub(crate) fn restart_needed(started: &Config, new: &Config) -> Vec<&'static str> {
    let (a, b) = (started, new);
    // The probe loop is built at start from the nodes that have a `db`.
    let node_dbs =
        |c: &Config| c.nodes.iter().filter_map(|n| Some((n.id.clone(), n.db.clone()?))).collect();
    let dbs: (Vec<_>, Vec<_>) = (node_dbs(a), node_dbs(b));
    [
        (a.cluster_id != b.cluster_id, "cluster_id"),
        (a.state_dir != b.state_dir, "state_dir"),
        (a.peer.listen != b.peer.listen, "peer.listen"),
        (a.tls_files() != b.tls_files(), "peer.cert, peer.key, peer.ca"),
        (a.peer.hello_interval != b.peer.hello_interval, "peer.hello_interval"),
        (
            a.peer.master_unreachable_after != b.peer.master_unreachable_after,
            "peer.master_unreachable_after",
        ),
        (a.admin.listen != b.admin.listen, "admin.listen"),
        (a.admin.allow_non_loopback != b.admin.allow_non_loopback, "admin.allow_non_loopback"),
        (a.admin_cert_files() != b.admin_cert_files(), "admin.cert, admin.key"),
        (a.admin_token_file() != b.admin_token_file(), "admin.token_file"),
        (a.admin.max_failures != b.admin.max_failures, "admin.max_failures"),
        (a.admin.lockout != b.admin.lockout, "admin.lockout"),
        (
            a.admin.password_attempts_per_minute != b.admin.password_attempts_per_minute,
            "admin.password_attempts_per_minute",
        ),
        (
            a.admin.max_concurrent_password_checks != b.admin.max_concurrent_password_checks,
            "admin.max_concurrent_password_checks",
        ),
        (a.password != b.password, "password.pbkdf2_iterations"),
        (a.encryption != b.encryption, "encryption.rotate_after, encryption.destruction_grace"),
        (a.hotpath != b.hotpath, "hotpath"),
        (dbs.0 != dbs.1, "nodes.db"),
        (a.db_probe != b.db_probe, "db_probe.interval"),
        (a.testing != b.testing, "testing.legacy_software"),
        (a.log.file != b.log.file, "log.file"),
        // The descriptor budget was checked at start with the listeners' caps.
        (a.metrics_max_connections() != b.metrics_max_connections(), "metrics.max_connections"),
        (a.admin.max_connections != b.admin.max_connections, "admin.max_connections"),
        (a.peer.max_connections != b.peer.max_connections, "peer.max_connections"),
    ]
    .into_iter()
    .filter_map(|(changed, key)| changed.then_some(key))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
cluster_id = "a"
state_dir = "state"
[peer]
listen = "127.0.0.1:7101"
cert = "a.pem"
key = "a.key"
ca = "ca.pem"
[admin]
listen = "127.0.0.1:7201"
[[nodes]]
id = "n1"
archiver = "postgresql"
"#;

    /// `text` loaded from a file in one fixed directory, so relative paths compare equal.
    fn config(text: &str) -> Config {
        static DIR: std::sync::LazyLock<tempfile::TempDir> =
            std::sync::LazyLock::new(|| tempfile::tempdir().unwrap());
        let file = tempfile::NamedTempFile::new_in(DIR.path()).unwrap();
        std::fs::write(file.path(), text).unwrap();
        Config::load(file.path()).unwrap()
    }

    #[test]
    fn peers_nodes_and_the_log_level_need_no_restart() {
        let a = config(BASE);
        let b = config(&format!(
            "{BASE}\n[[peers]]\nid = \"b\"\naddress = \"127.0.0.1:7102\"\n\
             [[nodes]]\nid = \"n2\"\narchiver = \"sql_server\"\n[log]\nlevel = \"debug\"\n"
        ));
        assert!(restart_needed(&a, &b).is_empty(), "{:?}", restart_needed(&a, &b));
    }

    #[test]
    fn listeners_files_and_the_machines_settings_need_a_restart_each_named() {
        let a = config(BASE);
        let b = config(
            &(BASE
                .replace("127.0.0.1:7101", "127.0.0.1:7111")
                .replace("127.0.0.1:7201", "127.0.0.1:7211")
                .replace("ca.pem", "other-ca.pem")
                .replace(
                    "archiver = \"postgresql\"",
                    "archiver = \"postgresql\"\ndb = \"postgres://u:pw@h/x\"",
                )
                + "[hotpath.socket]\npath = \"hp.sock\"\n"),
        );
        assert_eq!(
            restart_needed(&a, &b),
            ["peer.listen", "peer.cert, peer.key, peer.ca", "admin.listen", "hotpath", "nodes.db"]
        );
    }
}
