//! The daemon's configuration: one TOML file, validated once at load, then passed by
//! reference. Relative paths are relative to the file's directory.
//!
//! Invariant: a `Config` that exists is valid. A wrong, missing or unknown key is an error that
//! names the key and, where the TOML parser knows it, its line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::cluster::{ComplianceDb, NodeId};
use crate::crypto::password::Iterations;
use crate::ids::ClusterId;
use crate::peer::tls::TlsFiles;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This cluster's id: the DNS name in its certificate.
    pub(crate) cluster_id: ClusterId,
    /// Where the node key, the sealed state and the admin token live.
    pub(crate) state_dir: PathBuf,
    pub(crate) peer: PeerSection,
    pub(crate) admin: AdminSection,
    #[serde(default)]
    pub(crate) password: PasswordSection,
    #[serde(default)]
    pub(crate) encryption: EncryptionSection,
    /// The intercluster peers this cluster is configured with.
    #[serde(default)]
    pub(crate) peers: Vec<PeerEntry>,
    /// The nodes of this cluster and their message archiver database.
    #[serde(default)]
    pub nodes: Vec<NodeEntry>,
    /// The router's encryption service; absent: no hot path on this daemon.
    #[serde(default)]
    pub(crate) hotpath: Option<HotpathSection>,
    #[serde(default)]
    pub db_probe: DbProbeSection,
    /// `[log]`: what the daemon logs.
    #[serde(default)]
    pub(crate) log: LogSection,
    /// The Prometheus metrics and health listener; absent: no metrics at all.
    #[serde(default)]
    pub(crate) metrics: Option<MetricsSection>,
    /// `[[alarms.sinks]]`: where alarms are delivered (docs/operations.md, "Alarm delivery").
    #[serde(default)]
    pub(crate) alarms: crate::alarm::sink::AlarmsSection,
    /// `[audit]`: the audit trail (docs/operations.md, "Audit trail").
    #[serde(default)]
    pub(crate) audit: crate::audit::AuditSection,
    #[serde(default)]
    pub(crate) testing: TestingSection,
}

/// `[log]`: the log level of `imcrypt serve` (`RUST_LOG`, when set, takes precedence: it
/// allows per-module directives).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogSection {
    /// `off`, `error`, `warn`, `info`, `debug` or `trace`.
    #[serde(default)]
    pub(crate) level: LogLevel,
    /// Append the log to this file instead of stderr (absent: stderr, the journal under
    /// systemd). `imcrypt support bundle` includes its last lines.
    #[serde(default)]
    pub(crate) file: Option<PathBuf>,
}

/// A log level, validated at load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LogLevel(pub(crate) tracing::level_filters::LevelFilter);

impl Default for LogLevel {
    fn default() -> Self {
        Self(tracing::level_filters::LevelFilter::INFO)
    }
}

impl std::fmt::Display for LogLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // LevelFilter prints in capitals; the file and the docs say `info`.
        f.write_str(&self.0.to_string().to_ascii_lowercase())
    }
}

impl<'de> Deserialize<'de> for LogLevel {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
        if !LEVELS.contains(&s.as_str()) {
            return Err(serde::de::Error::custom(format!(
                "log.level: {s:?} is not a level (one of {})",
                LEVELS.join(", ")
            )));
        }
        s.parse().map(Self).map_err(serde::de::Error::custom)
    }
}

/// `[hotpath.socket]` (path, mode, group), `[hotpath.limits]` and `[hotpath.tcp]` (routers
/// on other nodes, mutual TLS) (docs/hotpath.md).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct HotpathSection {
    pub(crate) socket: crate::hotpath::UnixSocketConfig,
    #[serde(default)]
    pub(crate) limits: crate::hotpath::ServerConfig,
    #[serde(default)]
    pub(crate) tcp: Option<crate::hotpath::TcpConfig>,
    /// `[hotpath.rewrap_socket]`: where `imcrypt archive rewrap` reaches the daemon; none
    /// without it.
    #[serde(default)]
    pub(crate) rewrap_socket: Option<crate::hotpath::RewrapSocketConfig>,
}

/// Knobs for tests and demos of mixed-version networks; never set them in production.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct TestingSection {
    /// Announce software that predates encryption (no encryption capability), as a cluster
    /// not yet upgraded would.
    #[serde(default)]
    pub(crate) legacy_software: bool,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct PeerSection {
    /// Address of the intercluster listener (mutual TLS).
    pub(crate) listen: SocketAddr,
    cert: PathBuf,
    key: PathBuf,
    pub(crate) ca: PathBuf,
    #[serde(default = "default_hello", deserialize_with = "crate::duration::nonzero")]
    pub(crate) hello_interval: Duration,
    #[serde(default = "default_unreachable", deserialize_with = "crate::duration::nonzero")]
    pub(crate) master_unreachable_after: Duration,
    /// Connections to the peer listener at once (docs/operations.md, "Limits").
    #[serde(default = "default_peer_connections", deserialize_with = "positive")]
    pub(crate) max_connections: u32,
    /// The `host:port` addresses other clusters dial this listener at, written into the
    /// peering tokens this cluster issues. Default: `listen`, unless it is a wildcard address.
    #[serde(default)]
    advertise: Vec<String>,
}

/// `[admin]`: the HTTPS admin API (docs/admin.md).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct AdminSection {
    /// Address of the admin listener; a loopback address unless `allow_non_loopback`.
    pub(crate) listen: SocketAddr,
    /// Accept a `listen` address that is not loopback (the API then faces the network).
    #[serde(default)]
    pub(crate) allow_non_loopback: bool,
    /// Certificate and key of the admin listener (PEM); both or neither. Default: the
    /// cluster's certificate (`peer.cert`, `peer.key`), whose DNS name is the cluster id.
    #[serde(default)]
    cert: Option<PathBuf>,
    #[serde(default)]
    key: Option<PathBuf>,
    /// Where the admin token lives. Default: `admin.token` in `state_dir`.
    #[serde(default)]
    token_file: Option<PathBuf>,
    /// Consecutive wrong passwords after which a client is locked out.
    #[serde(default = "default_max_failures", deserialize_with = "positive")]
    pub(crate) max_failures: u32,
    /// How long a lockout lasts.
    #[serde(default = "default_lockout", deserialize_with = "crate::duration::nonzero")]
    pub(crate) lockout: Duration,
    /// Password attempts per minute from all clients together.
    #[serde(default = "default_attempts", deserialize_with = "positive")]
    pub(crate) password_attempts_per_minute: u32,
    /// Password checks (PBKDF2) in flight at once; more wait their turn.
    #[serde(default = "default_concurrent", deserialize_with = "positive")]
    pub(crate) max_concurrent_password_checks: u32,
    /// Connections to the admin listener at once (docs/operations.md, "Limits").
    #[serde(default = "default_admin_connections", deserialize_with = "positive")]
    pub(crate) max_connections: u32,
    /// Serve the web console on this listener, under `/ui/` (docs/console.md).
    #[serde(default = "yes")]
    pub(crate) console: bool,
    /// A console session unused this long is logged out.
    #[serde(
        default = "default_console_idle_timeout",
        deserialize_with = "crate::duration::nonzero"
    )]
    pub(crate) console_idle_timeout: Duration,
}

fn yes() -> bool {
    true
}

fn default_console_idle_timeout() -> Duration {
    Duration::from_secs(15 * 60)
}

fn default_admin_connections() -> u32 {
    64
}

fn default_peer_connections() -> u32 {
    256
}

fn default_metrics_connections() -> u32 {
    32
}

fn default_max_failures() -> u32 {
    5
}

fn default_lockout() -> Duration {
    Duration::from_secs(15 * 60)
}

fn default_attempts() -> u32 {
    30
}

fn default_concurrent() -> u32 {
    2
}

fn positive<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    match u32::deserialize(d)? {
        0 => Err(serde::de::Error::custom("must be at least 1")),
        n => Ok(n),
    }
}

/// `[metrics]`: `GET /metrics` and `GET /v1/health` over plain HTTP (docs/operations.md,
/// "Monitoring"). Plain HTTP carries no secret here, but it is still loopback unless asked.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct MetricsSection {
    /// Address of the metrics listener; a loopback address unless `allow_non_loopback`.
    pub(crate) listen: SocketAddr,
    /// Accept a `listen` address that is not loopback (Prometheus on another host).
    #[serde(default)]
    allow_non_loopback: bool,
    /// Connections to the metrics listener at once; Prometheus needs one per server that
    /// scrapes (docs/operations.md, "Limits").
    #[serde(default = "default_metrics_connections", deserialize_with = "positive")]
    pub(crate) max_connections: u32,
}

/// `[encryption]`: what the master does on its own.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct EncryptionSection {
    /// Rotate the key once the primary version is older than this (e.g. "90d"); unset: only
    /// on command, and when a cluster has used it 0.9·2^32 times.
    #[serde(default, deserialize_with = "crate::duration::optional_nonzero")]
    pub(crate) rotate_after: Option<Duration>,
    /// How long the master keeps key versions removed by `key retire` or a disable, for
    /// `key restore`, before destroying them ("0s": at once, as the product manual has it).
    #[serde(default = "default_destruction_grace", deserialize_with = "destruction_grace")]
    pub(crate) destruction_grace: Duration,
}

impl Default for EncryptionSection {
    fn default() -> Self {
        Self { rotate_after: None, destruction_grace: default_destruction_grace() }
    }
}

fn default_destruction_grace() -> Duration {
    crate::cluster::ClusterConfig::DEFAULT_DESTRUCTION_GRACE
}

/// The longest `encryption.destruction_grace`: a year. Removed keys are meant to go; an
/// operator who needs them longer keeps a key export.
const MAX_DESTRUCTION_GRACE: Duration = Duration::from_secs(365 * 24 * 3600);

fn destruction_grace<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let v = crate::duration::deserialize(d).map_err(|e| {
        serde::de::Error::custom(format!(
            "encryption.destruction_grace: {e} (e.g. \"7d\", or \"0s\")"
        ))
    })?;
    if v > MAX_DESTRUCTION_GRACE {
        return Err(serde::de::Error::custom(format!(
            "encryption.destruction_grace: {} is longer than the most allowed, 365 days; keep a \
             key export instead of keeping removed keys on the master",
            humantime::format_duration(v)
        )));
    }
    Ok(v)
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct PasswordSection {
    /// PBKDF2-HMAC-SHA256 iterations for new password records (at least 100,000).
    #[serde(default, deserialize_with = "iterations")]
    pub(crate) pbkdf2_iterations: Iterations,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct PeerEntry {
    pub(crate) id: ClusterId,
    /// host:port of the peer's intercluster listener.
    pub(crate) address: String,
    /// The CA the peer's certificate must chain to (its own CA); absent, `peer.ca` (the
    /// cluster's own CA, when the clusters share one).
    #[serde(default)]
    pub(crate) ca: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NodeEntry {
    pub(crate) id: NodeId,
    /// The node's message archiver database: "sql_server", "postgresql", "sqlite", "none", or
    /// the name of another product (which is not supported for encryption).
    #[serde(deserialize_with = "archiver")]
    pub archiver: Option<ComplianceDb>,
    /// Where the node's archiver database is (`postgres://…`, `sqlserver://…`, `sqlite:PATH`):
    /// the daemon probes it (kind and reachability) for eligibility and `MAcomplianceDbDown`.
    /// Absent: not probed; eligibility follows `archiver` alone.
    #[serde(default)]
    pub db: Option<crate::archive::DbUrl>,
}

/// `[db_probe]`: how often each node's `db` is probed.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DbProbeSection {
    #[serde(default = "default_probe_interval", deserialize_with = "crate::duration::nonzero")]
    pub interval: Duration,
}

impl Default for DbProbeSection {
    fn default() -> Self {
        Self { interval: default_probe_interval() }
    }
}

fn default_probe_interval() -> Duration {
    Duration::from_secs(10)
}

fn default_hello() -> Duration {
    crate::cluster::ClusterConfig::DEFAULT_HELLO_INTERVAL
}

fn default_unreachable() -> Duration {
    crate::cluster::ClusterConfig::DEFAULT_MASTER_UNREACHABLE_AFTER
}

fn iterations<'de, D: Deserializer<'de>>(d: D) -> Result<Iterations, D::Error> {
    Iterations::new(u32::deserialize(d)?).map_err(serde::de::Error::custom)
}

fn archiver<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ComplianceDb>, D::Error> {
    ComplianceDb::parse_archiver(&String::deserialize(d)?).map_err(serde::de::Error::custom)
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let invalid = |message| ConfigError::Invalid { path: path.to_owned(), message };
        let mut c = Self::parse(&text, base).map_err(invalid)?;
        for (i, p) in c.peers.iter().enumerate() {
            if let Some(ca) = &p.ca {
                crate::pem_files::ca_roots(ca)
                    .map_err(|e| invalid(format!("peers[{i}].ca: {e}")))?;
            }
        }
        // The files the sinks need (a webhook's secret, a CA): unreadable or too open is an
        // error naming the key; an unreachable address is not (the sink counts failures).
        for (i, s) in c.alarms.sinks.iter_mut().enumerate() {
            s.load_files().map_err(|e| invalid(format!("alarms.sinks[{i}].{e}")))?;
        }
        Ok(c)
    }

    /// Parses and validates `text`; relative paths are resolved against `base`.
    pub(crate) fn parse(text: &str, base: &Path) -> Result<Self, String> {
        let mut c: Config = toml::from_str(text).map_err(|e| {
            // The parser quotes the offending line, passwords and all.
            crate::archive::redact(e.to_string().trim_end())
        })?;
        for (i, p) in c.peers.iter().enumerate() {
            if p.id == c.cluster_id {
                return Err(format!("peers[{i}].id: {} is this cluster itself", p.id));
            }
            if c.peers[..i].iter().any(|q| q.id == p.id) {
                return Err(format!("peers[{i}].id: peer {} is listed twice", p.id));
            }
            if !p.address.contains(':') {
                return Err(format!(
                    "peers[{i}].address: {:?} needs a port (host:port)",
                    p.address
                ));
            }
        }
        for (i, n) in c.nodes.iter().enumerate() {
            if c.nodes[..i].iter().any(|m| m.id == n.id) {
                return Err(format!("nodes[{i}].id: node {} is listed twice", n.id));
            }
        }
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        abs(&mut c.state_dir);
        abs(&mut c.peer.cert);
        abs(&mut c.peer.key);
        abs(&mut c.peer.ca);
        for p in c.peers.iter_mut().filter_map(|p| p.ca.as_mut()) {
            abs(p);
        }
        if !c.admin.listen.ip().is_loopback() && !c.admin.allow_non_loopback {
            return Err(format!(
                "admin.listen: {} is not a loopback address; the admin API belongs on \
                 127.0.0.1 (set admin.allow_non_loopback = true if you really mean it)",
                c.admin.listen
            ));
        }
        if let Some(m) = &c.metrics
            && !m.listen.ip().is_loopback()
            && !m.allow_non_loopback
        {
            return Err(format!(
                "metrics.listen: {} is not a loopback address; the metrics listener speaks \
                 plain HTTP (set metrics.allow_non_loopback = true if Prometheus scrapes from \
                 another host)",
                m.listen
            ));
        }
        if c.admin.cert.is_some() != c.admin.key.is_some() {
            return Err("admin.cert and admin.key: give both or neither".into());
        }
        for p in
            [&mut c.admin.cert, &mut c.admin.key, &mut c.admin.token_file].into_iter().flatten()
        {
            abs(p);
        }
        if let Some(f) = &mut c.log.file {
            abs(f);
        }
        for s in &mut c.alarms.sinks {
            s.resolve_paths(base);
        }
        if let Some(h) = &mut c.hotpath {
            abs(&mut h.socket.path);
            h.limits.validate().map_err(|e| format!("hotpath.limits: {e}"))?;
            if let Some(r) = &mut h.rewrap_socket {
                abs(&mut r.path);
                if r.path == h.socket.path {
                    return Err("hotpath.rewrap_socket.path: it is hotpath.socket.path; the \
                                rewrap socket needs a path of its own"
                        .into());
                }
            }
            if let Some(t) = &mut h.tcp {
                let given = [&t.cert, &t.key, &t.ca].iter().filter(|f| f.is_some()).count();
                if given != 0 && given != 3 {
                    return Err("hotpath.tcp.cert, hotpath.tcp.key and hotpath.tcp.ca: give all \
                                three or none (then [peer]'s serve)"
                        .into());
                }
                if c.nodes.is_empty() {
                    return Err("hotpath.tcp: no [[nodes]] are configured, so no router \
                                certificate could be accepted (it must name a node of this \
                                cluster)"
                        .into());
                }
                for p in [&mut t.cert, &mut t.key, &mut t.ca].into_iter().flatten() {
                    abs(p);
                }
            }
        }
        Ok(c)
    }

    /// Each listener's connection cap with the key that sets it, for the descriptor budget
    /// ([`crate::caps::check_descriptors`]).
    /// The metrics listener's cap, also without `[metrics]` (a reload may start it).
    pub(crate) fn metrics_max_connections(&self) -> u32 {
        self.metrics.as_ref().map_or_else(default_metrics_connections, |m| m.max_connections)
    }

    pub(crate) fn listener_caps(&self) -> Vec<(&'static str, usize)> {
        let mut caps = vec![
            ("admin.max_connections", self.admin.max_connections as usize),
            ("peer.max_connections", self.peer.max_connections as usize),
        ];
        // Counted even without `[metrics]`: a reload may start the listener.
        caps.push(("metrics.max_connections", self.metrics_max_connections() as usize));
        if let Some(h) = &self.hotpath {
            let n = h.limits.max_connections as usize;
            // The rewrap socket has a small cap of its own, and the TCP listener caps its own
            // connections at `max_connections`.
            caps.push(("hotpath.limits.max_connections (Unix socket)", n));
            if h.rewrap_socket.is_some() {
                // The label names the figure: keep the two together.
                const _: () = assert!(crate::hotpath::REWRAP_MAX_CONNECTIONS == 16);
                let rewrap = crate::hotpath::REWRAP_MAX_CONNECTIONS as usize;
                caps.push(("the rewrap socket's 16 connections", rewrap));
            }
            if h.tcp.is_some() {
                caps.push(("hotpath.limits.max_connections (TCP listener)", n));
            }
        }
        caps
    }

    /// What the daemon needs in descriptors beyond its listeners.
    pub(crate) fn descriptor_reserve(&self) -> crate::caps::Reserve {
        crate::caps::Reserve {
            peers: self.peers.len(),
            sinks: self.alarms.sinks.len(),
            probed_databases: self.nodes.iter().filter(|n| n.db.is_some()).count(),
        }
    }

    /// The hot path's TCP listener, its TLS files (`[hotpath.tcp]`'s, or the cluster's) and
    /// the node names a router's certificate may carry; `None` without `[hotpath.tcp]`.
    pub(crate) fn hotpath_tcp(&self) -> Option<(std::net::SocketAddr, TlsFiles, Vec<String>)> {
        let t = self.hotpath.as_ref()?.tcp.as_ref()?;
        let files = match (&t.cert, &t.key, &t.ca) {
            (Some(cert), Some(key), Some(ca)) => {
                TlsFiles { cert: cert.clone(), key: key.clone(), ca: ca.clone() }
            }
            _ => self.tls_files(),
        };
        Some((t.listen, files, self.nodes.iter().map(|n| n.id.to_string()).collect()))
    }

    pub(crate) fn tls_files(&self) -> TlsFiles {
        TlsFiles {
            cert: self.peer.cert.clone(),
            key: self.peer.key.clone(),
            ca: self.peer.ca.clone(),
        }
    }

    /// The addresses a peering token names for this cluster's peer listener (`peer.advertise`,
    /// else `peer.listen` unless it is a wildcard address); empty: none is known.
    pub(crate) fn peer_advertise(&self) -> Vec<String> {
        if !self.peer.advertise.is_empty() {
            return self.peer.advertise.clone();
        }
        match self.peer.listen.ip().is_unspecified() {
            true => Vec::new(),
            false => vec![self.peer.listen.to_string()],
        }
    }

    /// Every configured peer, with its own CA file (`[[peers]] ca`) when it has one.
    pub(crate) fn peer_cas(&self) -> Vec<(ClusterId, Option<PathBuf>)> {
        self.peers.iter().map(|p| (p.id.clone(), p.ca.clone())).collect()
    }

    /// The admin listener's certificate and key: `[admin]`'s, or the cluster's.
    pub(crate) fn admin_cert_files(&self) -> (PathBuf, PathBuf) {
        match (&self.admin.cert, &self.admin.key) {
            (Some(c), Some(k)) => (c.clone(), k.clone()),
            _ => (self.peer.cert.clone(), self.peer.key.clone()),
        }
    }

    /// Where the admin token is kept.
    pub(crate) fn admin_token_file(&self) -> PathBuf {
        self.admin.token_file.clone().unwrap_or_else(|| self.state_dir.join("admin.token"))
    }

    #[cfg(test)]
    fn peer_address(&self, id: &ClusterId) -> Option<&str> {
        self.peers.iter().find(|p| &p.id == id).map(|p| p.address.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
cluster_id = "a"
state_dir = "state/a"

[peer]
listen = "127.0.0.1:7101"
cert = "pki/a.pem"
key = "pki/a.key"
ca = "pki/ca.pem"
hello_interval = "2s"

[admin]
listen = "127.0.0.1:7201"

[[peers]]
id = "b"
address = "127.0.0.1:7102"

[[nodes]]
id = "a1"
archiver = "postgresql"
"#;

    fn err(text: &str) -> String {
        Config::parse(text, Path::new("/etc/imcrypt")).unwrap_err()
    }

    #[test]
    fn good_config_loads_with_defaults_and_absolute_paths() {
        let c = Config::parse(GOOD, Path::new("/etc/imcrypt")).unwrap();
        assert_eq!(c.cluster_id.as_str(), "a");
        assert_eq!(c.state_dir, Path::new("/etc/imcrypt/state/a"));
        assert_eq!(c.peer.hello_interval, Duration::from_secs(2));
        assert_eq!(c.peer.master_unreachable_after, Duration::from_secs(60));
        assert_eq!(c.password.pbkdf2_iterations.get(), 600_000);
        assert_eq!(c.nodes[0].archiver, Some(ComplianceDb::PostgreSql));
        assert_eq!(c.peer_address(&ClusterId::new("b").unwrap()), Some("127.0.0.1:7102"));
        assert!(c.hotpath.is_none());
        assert!(c.metrics.is_none(), "metrics are off unless configured");
        assert_eq!(c.encryption.rotate_after, None);
        let rotating = Config::parse(
            &format!("{GOOD}\n[encryption]\nrotate_after = \"90d\"\n"),
            Path::new("/"),
        )
        .unwrap();
        assert_eq!(rotating.encryption.rotate_after, Some(Duration::from_secs(90 * 86400)));
        assert_eq!(c.encryption.destruction_grace, Duration::from_secs(7 * 86400));
        let grace = |v: &str| {
            Config::parse(
                &format!("{GOOD}\n[encryption]\ndestruction_grace = \"{v}\"\n"),
                Path::new("/"),
            )
            .map(|c| c.encryption.destruction_grace)
            .map_err(|e| e.to_string())
        };
        assert_eq!(grace("0s"), Ok(Duration::ZERO), "zero: the manual's immediate destruction");
        assert_eq!(grace("2s"), Ok(Duration::from_secs(2)));
        for bad in ["soon", "400d"] {
            let e = grace(bad).unwrap_err();
            assert!(e.contains("encryption.destruction_grace: "), "{bad}: {e}");
        }
        assert_eq!(c.admin_token_file(), Path::new("/etc/imcrypt/state/a/admin.token"));
        assert_eq!(c.admin_cert_files().0, Path::new("/etc/imcrypt/pki/a.pem"));
        assert_eq!(c.admin.max_failures, 5);
        assert_eq!(c.admin.lockout, Duration::from_secs(900));
        let h = Config::parse(
            &format!("{GOOD}\n[hotpath.socket]\npath = \"run/hp.sock\"\n"),
            Path::new("/etc/imcrypt"),
        )
        .unwrap()
        .hotpath
        .unwrap();
        assert_eq!(h.socket.path, Path::new("/etc/imcrypt/run/hp.sock"));
        assert_eq!(h.socket.mode, 0o660);
    }

    #[test]
    fn node_db_is_a_validated_url_and_the_probe_interval_has_a_default() {
        let c = Config::parse(GOOD, Path::new("/")).unwrap();
        assert_eq!((c.nodes[0].db.as_ref(), c.db_probe.interval), (None, Duration::from_secs(10)));
        let with = GOOD.replace(
            "archiver = \"postgresql\"",
            "archiver = \"postgresql\"\ndb = \"postgres://arch:pw@127.0.0.1:5432/im\"",
        );
        let c = Config::parse(&format!("{with}\n[db_probe]\ninterval = \"2s\"\n"), Path::new("/"))
            .unwrap();
        assert_eq!(c.nodes[0].db.as_ref().unwrap().kind, ComplianceDb::PostgreSql);
        assert_eq!(c.db_probe.interval, Duration::from_secs(2));
        let e = err(&GOOD.replace(
            "archiver = \"postgresql\"",
            "archiver = \"postgresql\"\ndb = \"mysql://u:topsecret@h/x\"",
        ));
        assert!(e.contains("db") && e.contains("postgres://") && !e.contains("topsecret"), "{e}");
        // A password with a space or a quote in it is hidden as well.
        let e = err(&GOOD.replace(
            "archiver = \"postgresql\"",
            "archiver = \"postgresql\"\ndb = \"postgres://u:top secret\\\"x@h:54x2/im\"",
        ));
        assert!(!e.contains("top") && !e.contains("secret"), "{e}");
    }

    /// The default column of the row of `doc`'s table whose first cell is `` `key` ``.
    fn documented_default<'a>(doc: &'a str, key: &str) -> &'a str {
        let cell = format!("| `{key}` |");
        let line = doc.lines().find(|l| l.starts_with(&cell)).unwrap_or_else(|| {
            panic!("the table has no row for `{key}`");
        });
        line[cell.len()..].split('|').next().unwrap_or("").trim()
    }

    /// The budget that keeps state writes safe counts every hot-path socket's connections
    /// (one descriptor each), the rewrap socket's included; and the defaults still fit in the
    /// 1024 descriptors docs/operations.md promises.
    #[test]
    fn the_descriptor_budget_counts_each_hot_path_socket_connection() {
        let text = GOOD.to_owned()
            + "\n[hotpath.socket]\npath = \"hp.sock\"\n[hotpath.rewrap_socket]\npath = \"rw.sock\"\n";
        let c = Config::parse(&text, Path::new("/")).unwrap();
        let caps = c.listener_caps();
        let hot: usize = caps.iter().filter(|(k, _)| k.contains("hot")).map(|(_, n)| n).sum();
        let rewrap: usize = caps.iter().filter(|(k, _)| k.contains("rewrap")).map(|(_, n)| n).sum();
        assert_eq!((hot, rewrap), (256, 16), "{caps:?}");
        let all: usize = caps.iter().map(|(_, n)| n).sum();
        assert!(all + 64 <= 1024, "{caps:?}");
    }

    /// docs/operations.md (and docs/admin.md for `[admin]`) state each key's default; an
    /// operator tunes from those figures, so they must be the ones the code applies.
    #[test]
    fn the_documented_defaults_are_the_codes() {
        let ops = include_str!("../docs/operations.md");
        let admin_doc = include_str!("../docs/admin.md");
        let text = GOOD.replace("hello_interval = \"2s\"\n", "")
            + "\n[hotpath.socket]\npath = \"hp.sock\"\n[hotpath.rewrap_socket]\npath = \"rw.sock\"\n";
        let c = Config::parse(&text, Path::new("/")).unwrap();
        let d = |v: Duration| format!("`{}`", humantime::format_duration(v));
        let n = |v: u32| format!("`{v}`");
        let h = c.hotpath.as_ref().unwrap();
        let admin = [
            ("allow_non_loopback", format!("`{}`", c.admin.allow_non_loopback)),
            ("max_failures", n(c.admin.max_failures)),
            ("lockout", d(c.admin.lockout)),
            ("password_attempts_per_minute", n(c.admin.password_attempts_per_minute)),
            ("max_concurrent_password_checks", n(c.admin.max_concurrent_password_checks)),
            ("max_connections", n(c.admin.max_connections)),
            ("console", format!("`{}`", c.admin.console)),
            ("console_idle_timeout", d(c.admin.console_idle_timeout)),
        ];
        let mut expected = vec![
            ("peer.hello_interval".to_owned(), d(c.peer.hello_interval)),
            ("peer.master_unreachable_after".into(), d(c.peer.master_unreachable_after)),
            ("password.pbkdf2_iterations".into(), n(c.password.pbkdf2_iterations.get())),
            ("db_probe.interval".into(), d(c.db_probe.interval)),
            ("hotpath.socket.mode".into(), format!("`0o{:o}`", h.socket.mode)),
            (
                "hotpath.rewrap_socket.mode".into(),
                format!("`0o{:o}`", h.rewrap_socket.as_ref().unwrap().mode),
            ),
            ("hotpath.limits.max_frame".into(), n(h.limits.max_frame)),
            ("hotpath.limits.max_batch".into(), n(h.limits.max_batch)),
            ("hotpath.limits.handshake_timeout".into(), d(h.limits.handshake_timeout)),
            ("hotpath.limits.reservation_wait".into(), d(h.limits.reservation_wait)),
            ("hotpath.limits.drain_timeout".into(), d(h.limits.drain_timeout)),
            ("hotpath.limits.max_connections".into(), n(h.limits.max_connections)),
            ("hotpath.limits.idle_timeout".into(), d(h.limits.idle_timeout)),
            ("hotpath.limits.max_buffered".into(), n(h.limits.max_buffered)),
            ("peer.max_connections".into(), n(c.peer.max_connections)),
            ("metrics.max_connections".into(), n(default_metrics_connections())),
            ("testing.legacy_software".into(), format!("`{}`", c.testing.legacy_software)),
            ("log.level".into(), format!("`{}`", c.log.level)),
            ("metrics.allow_non_loopback".into(), "`false`".into()),
            ("audit.enabled".into(), format!("`{}`", c.audit.enabled)),
            ("audit.rotate_bytes".into(), format!("`{}`", c.audit.rotate_bytes)),
        ];
        for (k, v) in &admin {
            expected.push((format!("admin.{k}"), v.clone()));
            let in_admin_doc = documented_default(admin_doc, k).replace(['`'], "");
            assert_eq!(format!("`{in_admin_doc}`"), *v, "docs/admin.md, `{k}`");
        }
        for (key, value) in expected {
            assert_eq!(documented_default(ops, &key), value, "docs/operations.md, `{key}`");
        }
        assert_eq!(c.encryption.rotate_after, None);
        assert_eq!(documented_default(ops, "encryption.rotate_after"), "unset");
        assert_eq!(
            documented_default(ops, "encryption.destruction_grace"),
            d(c.encryption.destruction_grace)
        );
    }

    /// The example of docs/operations.md, "Alarm delivery", is a config that loads, and the
    /// defaults of its table are the code's.
    #[test]
    fn the_alarm_delivery_example_parses() {
        use crate::alarm::Severity;
        use crate::alarm::sink::SinkKind;
        use crate::alarm::sink::config::Transport;
        let ops = include_str!("../docs/operations.md");
        let section = &ops[ops.find("## Alarm delivery").expect("the section")..];
        let start = section.find("```toml\n").expect("a toml block") + "```toml\n".len();
        let block = &section[start..start + section[start..].find("```").unwrap()];
        let c = Config::parse(&format!("{GOOD}\n{block}"), Path::new("/etc/imcrypt")).unwrap();
        let s = &c.alarms.sinks;
        assert_eq!(s.len(), 3);
        let SinkKind::Syslog(sys) = &s[0].kind else { panic!("{s:?}") };
        assert_eq!((sys.transport, sys.facility), (Transport::Tls, 19));
        assert_eq!(sys.ca_file.as_deref(), Some(Path::new("/etc/imcrypt/pki/syslog-ca.pem")));
        assert_eq!(s[1].min_severity, Severity::Major);
        let SinkKind::Webhook(w) = &s[2].kind else { panic!("{s:?}") };
        assert_eq!(w.secret_file, Path::new("/etc/imcrypt/webhook.secret"));

        let d = Config::parse(
            &format!(
                "{GOOD}\n[[alarms.sinks]]\nname = \"s\"\nkind = \"syslog\"\naddress = \"h:1\"\n\
                 [[alarms.sinks]]\nname = \"m\"\nkind = \"alertmanager\"\nurl = \"http://h:1\"\n"
            ),
            Path::new("/"),
        )
        .unwrap();
        let (SinkKind::Syslog(sys), SinkKind::Alertmanager(am)) =
            (&d.alarms.sinks[0].kind, &d.alarms.sinks[1].kind)
        else {
            panic!()
        };
        assert_eq!(sys.facility, 3);
        let expected = [
            ("alarms.sinks.min_severity", format!("`{}`", d.alarms.sinks[0].min_severity)),
            ("alarms.sinks.transport", "`tcp`".to_owned()),
            ("alarms.sinks.facility", "`daemon`".to_owned()),
            ("alarms.sinks.app_name", format!("`{}`", sys.app_name)),
            ("alarms.sinks.sd_id", format!("`{}`", sys.sd_id)),
            (
                "alarms.sinks.resend_interval",
                format!("`{}`", humantime::format_duration(am.resend_interval)),
            ),
        ];
        assert_eq!(sys.transport, Transport::Tcp);
        for (key, value) in expected {
            assert_eq!(documented_default(ops, key), value, "docs/operations.md, `{key}`");
        }
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let e = err(&GOOD.replace("hello_interval", "helo_interval"));
        assert!(e.contains("helo_interval") && e.contains("line 10"), "{e}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = err(&GOOD.replace("\"2s\"", "\"soon\""));
        assert!(e.contains("hello_interval") || e.contains("line 10"), "{e}");
        assert!(e.contains("not a duration"), "{e}");
        let e = err(&GOOD.replace("cluster_id = \"a\"", "cluster_id = \"A_1\""));
        assert!(e.contains("not a DNS name") && e.contains("line 2"), "{e}");
        let e = err(&format!("{GOOD}\n[password]\npbkdf2_iterations = 1000\n"));
        assert!(e.contains("below the minimum of 100000"), "{e}");
        let e = err(&GOOD.replace("id = \"b\"", "id = \"a\""));
        assert!(e.contains("peers[0].id") && e.contains("this cluster itself"), "{e}");
        let e = err(&GOOD.replace("listen = \"127.0.0.1:7201\"", "listen = \"localhost\""));
        assert!(e.contains("listen") || e.contains("line 13"), "{e}");
        let e = err(&format!(
            "{GOOD}\n[hotpath.socket]\npath = \"hp.sock\"\n[hotpath.limits]\nmax_batch = 0\n"
        ));
        assert!(e.contains("hotpath.limits") && e.contains("max_batch"), "{e}");
        let e = err(&format!("{GOOD}\n[hotpath.socket]\npath = \"hp.sock\"\nmod = 432\n"));
        assert!(e.contains("unknown field `mod`"), "{e}");
        let e = err(&GOOD.replace("127.0.0.1:7201", "0.0.0.0:7201"));
        assert!(e.contains("admin.listen") && e.contains("not a loopback"), "{e}");
        let e = err(&format!("{GOOD}\n[metrics]\nlisten = \"0.0.0.0:9464\"\n"));
        assert!(e.contains("metrics.listen") && e.contains("not a loopback"), "{e}");
        let e = err(&format!("{GOOD}\n[metrics]\nlisten = \"127.0.0.1:9464\"\npath = \"/m\"\n"));
        assert!(e.contains("unknown field `path`"), "{e}");
        let open =
            format!("{GOOD}\n[metrics]\nlisten = \"0.0.0.0:9464\"\nallow_non_loopback = true\n");
        assert_eq!(
            Config::parse(&open, Path::new("/")).unwrap().metrics.unwrap().listen.port(),
            9464
        );
        let e = err(&GOOD.replace("[admin]\n", "[admin]\ncert = \"x.pem\"\n"));
        assert!(e.contains("admin.cert and admin.key"), "{e}");
        let e = err(&GOOD.replace("[admin]\n", "[admin]\nmax_failures = 0\n"));
        assert!(e.contains("max_failures") && e.contains("at least 1"), "{e}");
        let e = err(&GOOD.replace("[admin]\n", "[admin]\nlockout = \"forever\"\n"));
        assert!(e.contains("lockout") && e.contains("not a duration"), "{e}");
        let e = err(&format!("{GOOD}\n[audit]\nrotate_bytes = 100\n"));
        assert!(e.contains("audit.rotate_bytes") && e.contains("at least 65536"), "{e}");
        let e = err(&format!("{GOOD}\n[audit]\nenable = false\n"));
        assert!(e.contains("unknown field `enable`"), "{e}");
        let e = err(&format!("{GOOD}\n[log]\nlevel = \"loud\"\n"));
        assert!(e.contains("log.level") && e.contains("\"loud\" is not a level"), "{e}");
        let text = format!("{GOOD}\n[log]\nlevel = \"debug\"\nfile = \"log/a.log\"\n");
        let log = Config::parse(&text, Path::new("/etc/imcrypt")).unwrap().log;
        assert_eq!(log.level.to_string(), "debug");
        assert_eq!(log.file.as_deref(), Some(Path::new("/etc/imcrypt/log/a.log")));
        let e = err(&GOOD.replace("[admin]\nlisten = \"127.0.0.1:7201\"\n", ""));
        assert!(e.contains("missing field `admin`"), "{e}");
    }

    #[test]
    fn a_peer_ca_is_resolved_like_the_other_paths_and_must_be_a_readable_ca() {
        let text = GOOD.replace(
            "address = \"127.0.0.1:7102\"\n",
            "address = \"127.0.0.1:7102\"\nca = \"b/ca.pem\"\n",
        );
        let c = Config::parse(&text, Path::new("/etc/imcrypt")).unwrap();
        let b = ClusterId::new("b").unwrap();
        assert_eq!(c.peer_cas(), [(b.clone(), Some(PathBuf::from("/etc/imcrypt/b/ca.pem")))]);
        assert_eq!(Config::parse(GOOD, Path::new("/")).unwrap().peer_cas(), [(b, None)]);

        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("a.toml");
        std::fs::write(&path, &text).unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        assert!(e.contains("peers[0].ca: ") && e.contains("b/ca.pem"), "{e}");
    }
}
