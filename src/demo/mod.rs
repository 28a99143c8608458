//! A laboratory of clusters on 127.0.0.1: a development PKI, one config file per cluster, and
//! their daemons as tasks of this process. `imcrypt demo` tells a story with it; the
//! integration tests and the benchmarks build their networks with it.
//!
//! Invariant: everything listens on 127.0.0.1 only, and everything lives under the lab's
//! directory. A member's ports are reserved for as long as the lab lives ([`ReservedPort`]), so
//! no other lab, test or process can take them between the lab's choice and its daemon's bind,
//! nor between a stop and the next start.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::admin::api::Status;
use crate::config::Config;
use crate::daemon::{DaemonError, DaemonHandle};
use crate::ids::ClusterId;

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiError),
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    #[error(transparent)]
    Request(#[from] crate::admin::RequestError),
    #[error("cannot write {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("config of {id} is invalid: {message}")]
    Config { id: ClusterId, message: String },
    #[error("cluster {0} is not part of this lab")]
    Unknown(ClusterId),
    #[error("cluster {0} is not running")]
    NotRunning(ClusterId),
    #[error("timed out after {after:?} waiting until {what} (last status: {last})")]
    Timeout { what: String, after: Duration, last: String },
    #[error(transparent)]
    Archive(#[from] crate::archive::ArchiveError),
    #[error("admin API: {0}")]
    Admin(#[from] crate::admin::client::ClientError),
    #[error("{step}: {reason}")]
    Step { step: &'static str, reason: String },
    #[error("cannot reserve a port on 127.0.0.1: {0}")]
    Port(std::io::Error),
    #[error(transparent)]
    Peering(#[from] crate::peer::establish::PeeringError),
}

/// How one cluster of the lab is configured.
#[derive(Debug, Clone)]
pub struct Spec {
    peers: BTreeSet<ClusterId>,
    /// (node, archiver) as in the config file: "postgresql", "sql_server", "none", …
    pub nodes: Vec<(String, String)>,
    pub hello_interval: Duration,
    pub master_unreachable_after: Duration,
    /// Pretend the software predates encryption (tests of rolling upgrades).
    pub legacy_software: bool,
    /// Run the router's encryption service at `DIR/state/ID/hotpath.sock`.
    pub hotpath: bool,
    /// `encryption.rotate_after`.
    pub rotate_after: Option<Duration>,
    /// `[[nodes]] db` of every node: the archive database the daemon probes.
    archive_db: Option<String>,
    /// Password rate limits and lockout raised out of reach (for fuzzing the admin API, which
    /// would otherwise be locked out after five wrong guesses, as any client is).
    pub unlimited_password_attempts: bool,
    /// Serve `GET /metrics` and `GET /v1/health` on the member's metrics port (`[metrics]`).
    pub metrics: bool,
    /// TOML appended to the generated config as is (e.g. `[[alarms.sinks]]` tables).
    pub extra_config: String,
    /// Peers dialled at another address than their own listener (a proxy between the two,
    /// e.g. the partition tests' blackhole); see [`Lab::route_peer`].
    peer_routes: BTreeMap<ClusterId, SocketAddr>,
    /// Peers configured without their `ca` in a lab with a CA per cluster (so verified
    /// against this cluster's own CA: a misconfiguration the tests need).
    pub peer_without_ca: BTreeSet<ClusterId>,
}

impl Default for Spec {
    fn default() -> Self {
        Self {
            peers: BTreeSet::new(),
            nodes: vec![("node1".into(), "postgresql".into())],
            hello_interval: Duration::from_millis(500),
            master_unreachable_after: Duration::from_secs(3),
            legacy_software: false,
            hotpath: false,
            rotate_after: None,
            archive_db: None,
            unlimited_password_attempts: false,
            metrics: false,
            extra_config: String::new(),
            peer_routes: BTreeMap::new(),
            peer_without_ca: BTreeSet::new(),
        }
    }
}

struct Member {
    peer_port: ReservedPort,
    admin_port: ReservedPort,
    metrics_port: ReservedPort,
    spec: Spec,
    daemon: Option<DaemonHandle>,
}

/// Several clusters, their files and their daemons.
pub struct Lab {
    dir: PathBuf,
    members: BTreeMap<ClusterId, Member>,
    /// Each cluster has a CA of its own (`pki/ID/`), named as its peers' `ca`; otherwise all
    /// share `pki/ca.pem`.
    own_cas: bool,
}

/// A port of 127.0.0.1 kept for one server until dropped; the server binds it as usual.
///
/// Binding port 0, reading the port and closing the socket is a race: until the server binds
/// the port, the kernel may give it to anyone who asks for port 0 (a test running in parallel,
/// another developer's lab) or to an outgoing connection, and the server fails with "Address
/// already in use". A `ReservedPort` instead keeps a socket bound to the port with
/// `SO_REUSEADDR`, never listening. Linux then gives the port neither to a bind to port 0 nor
/// to an outgoing connection, while a server that binds it by number with `SO_REUSEADDR` gets
/// it (the daemon's tokio listeners and PostgreSQL set it), and gets it again after a restart.
/// Only one listener at a time: a second one is refused as before.
#[derive(Debug)]
pub struct ReservedPort {
    /// Held only to keep the port; never listens nor connects.
    _socket: tokio::net::TcpSocket,
    port: u16,
}

impl ReservedPort {
    /// Reserves a port the kernel picks among those nobody uses.
    pub fn new() -> std::io::Result<Self> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
        let port = socket.local_addr()?.port();
        Ok(Self { _socket: socket, port })
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Member {
    fn new() -> Result<Self, LabError> {
        Ok(Self {
            peer_port: ReservedPort::new().map_err(LabError::Port)?,
            admin_port: ReservedPort::new().map_err(LabError::Port)?,
            metrics_port: ReservedPort::new().map_err(LabError::Port)?,
            spec: Spec::default(),
            daemon: None,
        })
    }
}

pub fn cid(s: &str) -> ClusterId {
    ClusterId::new(s).expect("a valid cluster id")
}

impl Lab {
    /// Creates the PKI for `ids` under `dir` and reserves three ports for each cluster (peer, admin, metrics).
    pub fn new(dir: &Path, ids: &[&str]) -> Result<Self, LabError> {
        let ids: Vec<ClusterId> = ids.iter().map(|s| cid(s)).collect();
        crate::pki::init(&dir.join("pki"), &ids)?;
        let members =
            ids.into_iter().map(|id| Ok((id, Member::new()?))).collect::<Result<_, LabError>>()?;
        Ok(Self { dir: dir.to_owned(), members, own_cas: false })
    }

    /// As [`Lab::new`], but each cluster gets a CA of its own (`imcrypt pki init` for one
    /// cluster, under `pki/ID/`), as clusters of different sites or companies have; a peer
    /// is configured with the other's CA (`[[peers]] ca`).
    pub fn with_own_cas(dir: &Path, ids: &[&str]) -> Result<Self, LabError> {
        let mut lab = Self { dir: dir.to_owned(), members: BTreeMap::new(), own_cas: true };
        for id in ids {
            lab.add_member(id)?;
        }
        Ok(lab)
    }

    /// The PKI directory holding the certificate of `id`, relative to the lab's directory.
    fn pki_of(&self, id: &ClusterId) -> String {
        match self.own_cas {
            true => format!("pki/{id}"),
            false => "pki".into(),
        }
    }

    /// Adds cluster `id` to the lab later, with a certificate from the lab's CA (as
    /// `imcrypt pki add` gives one to a cluster that joins an existing network).
    fn add_member(&mut self, id: &str) -> Result<(), LabError> {
        let id = cid(id);
        let pki = self.dir.join(self.pki_of(&id));
        match self.own_cas {
            true => crate::pki::init(&pki, std::slice::from_ref(&id))?,
            false => crate::pki::add(&pki, std::slice::from_ref(&id))?,
        }
        self.members.insert(id, Member::new()?);
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn member(&self, id: &ClusterId) -> Result<&Member, LabError> {
        self.members.get(id).ok_or_else(|| LabError::Unknown(id.clone()))
    }

    fn member_mut(&mut self, id: &ClusterId) -> Result<&mut Member, LabError> {
        self.members.get_mut(id).ok_or_else(|| LabError::Unknown(id.clone()))
    }

    pub fn spec_mut(&mut self, id: &str) -> &mut Spec {
        &mut self.members.get_mut(&cid(id)).expect("a lab member").spec
    }

    /// Configures `a` and `b` as peers of each other (takes effect at their next start).
    pub fn peer(&mut self, a: &str, b: &str) {
        self.spec_mut(a).peers.insert(cid(b));
        self.spec_mut(b).peers.insert(cid(a));
    }

    /// Peers running clusters `issuer` and `other` with a peering token, as the two commands
    /// `imcrypt peering token --for OTHER` on `issuer` and `imcrypt peering establish` on
    /// `other` do; nothing is written in their config files.
    pub async fn peer_by_token(&self, issuer: &str, other: &str) -> Result<(), LabError> {
        let by = crate::audit::Request::local;
        let hour = Duration::from_secs(3600);
        let control = self.daemon(issuer)?.control();
        let token = control.peering_token(cid(other), hour, by()).await?;
        self.daemon(other)?.control().establish_peering(&token.token, by()).await?;
        Ok(())
    }

    /// Makes `from` dial its peer `to` at `via` instead of `to`'s own listener (takes effect
    /// at `from`'s next start). The peer is still authenticated by its certificate, so a TCP
    /// proxy at `via` that forwards to [`Lab::peer_listen`] of `to` is transparent.
    pub fn route_peer(&mut self, from: &str, to: &str, via: SocketAddr) {
        self.spec_mut(from).peer_routes.insert(cid(to), via);
    }

    /// Where the intercluster listener of `id` listens.
    pub fn peer_listen(&self, id: &str) -> Result<SocketAddr, LabError> {
        let port = self.member(&cid(id))?.peer_port.port();
        Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
    }

    pub fn unpeer(&mut self, a: &str, b: &str) {
        self.spec_mut(a).peers.remove(&cid(b));
        self.spec_mut(b).peers.remove(&cid(a));
    }

    /// The TOML config of `id`, as an operator would write it.
    fn config_text(&self, id: &ClusterId) -> Result<String, LabError> {
        let m = self.member(id)?;
        let pki = self.pki_of(id);
        let mut t = format!(
            "# imcrypt config of cluster {id} (lab)\n\
             cluster_id = \"{id}\"\n\
             state_dir = \"state/{id}\"\n\n\
             [peer]\n\
             listen = \"127.0.0.1:{}\"\n\
             cert = \"{pki}/{id}.pem\"\n\
             key = \"{pki}/{id}.key\"\n\
             ca = \"{pki}/ca.pem\"\n\
             hello_interval = \"{}\"\n\
             master_unreachable_after = \"{}\"\n\n\
             [admin]\n\
             listen = \"127.0.0.1:{}\"\n\n\
             [password]\n\
             pbkdf2_iterations = 100000\n",
            m.peer_port.port(),
            humantime::format_duration(m.spec.hello_interval),
            humantime::format_duration(m.spec.master_unreachable_after),
            m.admin_port.port(),
        );
        if m.spec.unlimited_password_attempts {
            t = t.replace(
                "[admin]\n",
                "[admin]\nmax_failures = 1000000\npassword_attempts_per_minute = 1000000\n",
            );
        }
        if let Some(r) = m.spec.rotate_after {
            t.push_str(&format!(
                "\n[encryption]\nrotate_after = \"{}\"\n",
                humantime::format_duration(r)
            ));
        }
        if m.spec.hotpath {
            t.push_str(&format!(
                "\n[hotpath.socket]\npath = \"state/{id}/hotpath.sock\"\n\
                 [hotpath.rewrap_socket]\npath = \"state/{id}/rewrap.sock\"\n"
            ));
        }
        if m.spec.metrics {
            t.push_str(&format!("\n[metrics]\nlisten = \"127.0.0.1:{}\"\n", m.metrics_port.port()));
        }
        if m.spec.legacy_software {
            t.push_str("\n[testing]\nlegacy_software = true\n");
        }
        if !m.spec.extra_config.is_empty() {
            t.push('\n');
            t.push_str(&m.spec.extra_config);
            t.push('\n');
        }
        for p in &m.spec.peers {
            let address = match m.spec.peer_routes.get(p) {
                Some(via) => *via,
                None => self.peer_listen(p.as_str())?,
            };
            t.push_str(&format!("\n[[peers]]\nid = \"{p}\"\naddress = \"{address}\"\n"));
            if self.own_cas && !m.spec.peer_without_ca.contains(p) {
                t.push_str(&format!("ca = \"{}/ca.pem\"\n", self.pki_of(p)));
            }
        }
        for (n, a) in &m.spec.nodes {
            t.push_str(&format!("\n[[nodes]]\nid = \"{n}\"\narchiver = \"{a}\"\n"));
            if let Some(db) = &m.spec.archive_db {
                t.push_str(&format!("db = {}\n", toml::Value::from(db.as_str())));
            }
        }
        Ok(t)
    }

    /// Writes the config of `id` to `DIR/ID.toml` and returns its path.
    pub fn write_config(&self, id: &ClusterId) -> Result<PathBuf, LabError> {
        let path = self.dir.join(format!("{id}.toml"));
        std::fs::write(&path, self.config_text(id)?)
            .map_err(|source| LabError::Io { path: path.clone(), source })?;
        Ok(path)
    }

    /// Writes the config of `id` and starts its daemon as tasks of this process.
    pub async fn start(&mut self, id: &str) -> Result<(), LabError> {
        let id = cid(id);
        let path = self.write_config(&id)?;
        let config = Config::load(&path)
            .map_err(|e| LabError::Config { id: id.clone(), message: e.to_string() })?;
        let handle = crate::daemon::start(config).await?;
        self.member_mut(&id)?.daemon = Some(handle);
        Ok(())
    }

    /// Stops `id` cleanly (its state is on disk).
    pub async fn stop(&mut self, id: &str) -> Result<(), LabError> {
        let id = cid(id);
        let h = self.member_mut(&id)?.daemon.take().ok_or(LabError::NotRunning(id))?;
        h.shutdown().await;
        Ok(())
    }

    /// Stops `id` cleanly and starts it again from its (possibly changed) spec; its state
    /// survives.
    pub async fn restart(&mut self, id: &str) -> Result<(), LabError> {
        self.stop(id).await?;
        self.start(id).await
    }

    /// Stops `id` at once, as `kill -9` would.
    pub async fn kill(&mut self, id: &str) -> Result<(), LabError> {
        let id = cid(id);
        let h = self.member_mut(&id)?.daemon.take().ok_or(LabError::NotRunning(id))?;
        h.kill().await;
        Ok(())
    }

    /// The hot-path socket of `id` (when its spec has `hotpath`).
    pub fn hotpath_socket(&self, id: &str) -> PathBuf {
        self.dir.join("state").join(id).join("hotpath.sock")
    }

    /// The rewrap socket of `id` (when its spec has `hotpath`).
    pub fn rewrap_socket(&self, id: &str) -> PathBuf {
        self.dir.join("state").join(id).join("rewrap.sock")
    }

    pub fn daemon(&self, id: &str) -> Result<&DaemonHandle, LabError> {
        let id = cid(id);
        self.member(&id)?.daemon.as_ref().ok_or(LabError::NotRunning(id))
    }

    pub async fn status(&self, id: &str) -> Result<Status, LabError> {
        Ok(self.daemon(id)?.status().await?)
    }

    /// Polls the status of `id` until `ok` holds, for at most `timeout`.
    pub async fn wait_until(
        &self,
        id: &str,
        what: &str,
        timeout: Duration,
        ok: impl Fn(&Status) -> bool,
    ) -> Result<Status, LabError> {
        let start = tokio::time::Instant::now();
        loop {
            let s = self.status(id).await?;
            if ok(&s) {
                return Ok(s);
            }
            if start.elapsed() > timeout {
                return Err(LabError::Timeout {
                    what: format!("{id}: {what}"),
                    after: timeout,
                    last: serde_json::to_string(&s).unwrap_or_default(),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops every running daemon cleanly.
    pub async fn stop_all(&mut self) {
        for m in self.members.values_mut() {
            if let Some(h) = m.daemon.take() {
                h.shutdown().await;
            }
        }
    }
}

/// True when `s` has the alarm `name` about `about`.
pub fn has_alarm(s: &Status, name: crate::alarm::AlarmName, about: &str) -> bool {
    s.alarms.iter().any(|a| a.key.name == name && a.key.about.as_str() == about)
}

mod archive;
pub(crate) mod story;
