//! The daemon of one cluster: wires the state machine to the disk, the peers, the alarms, the
//! admin status and the hot path, and shuts down cleanly.
//!
//! One task (the core) owns the `cluster::Cluster`. Every input, an admin command, a peer
//! message or a timer, goes through it, and the effects that follow are carried out in order:
//! a `Persist` is durable (fsynced) before any later effect, so a peer never learns of a state
//! this cluster could lose in a crash. If the state cannot be written the core stops: running
//! on with a state that is not on disk would be worse.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::alarm::Alarm;
use crate::clock::now;
use crate::cluster::{
    Cluster, ClusterConfig, Command, CommandError, DbProbe, Effect, Entropy, LogLevel, NodeId,
    PeerMessage, PersistedState, Role,
};
use crate::config::Config;
use crate::crypto::keyring::KeyRing;
use crate::crypto::seal::{NodeKey, NodeKeyError, Purpose};
use crate::ids::{ClusterId, DomainId, Epoch, KeyVersion};
use crate::peer::client::{LinkStatus, PeerLink, spawn_link};
use crate::peer::tls::{PeerTls, TlsError};
use crate::store::{SealedFile, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot create state directory {path}: {source}")]
    StateDir { path: std::path::PathBuf, source: std::io::Error },
    #[error(transparent)]
    NodeKey(#[from] NodeKeyError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the state file does not fit this configuration: {0}")]
    State(String),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Listen { what: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error("the daemon has stopped")]
    Stopped,
    /// The change was decided but could not be written to disk; the daemon stops, and after a
    /// restart the change is not there.
    #[error("the change could not be saved ({0}); the daemon stops and the change is lost")]
    NotSaved(String),
    #[error(transparent)]
    Hotpath(#[from] crate::hotpath::ServerError),
    #[error("hot path: {0}")]
    HotpathKeys(#[from] crate::hotpath::KeyError),
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error(transparent)]
    Admin(#[from] crate::admin::AdminError),
}

/// What a successful command produced besides the state change.
#[derive(Debug, Default)]
pub struct CommandOutcome {
    /// For a key download: the ring to wrap for the administrator.
    pub keys_for_download: Option<Box<KeyRing>>,
}

/// The read-only status the admin listener serves at `GET /v1/status`. Never key bytes.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub cluster: ClusterId,
    pub role: &'static str,
    /// Why this cluster does not encrypt (when it does not).
    pub off_reason: Option<String>,
    pub domain: Option<DomainId>,
    pub master: Option<ClusterId>,
    pub epoch: Option<Epoch>,
    pub key_versions: Vec<KeyVersion>,
    pub primary_version: Option<KeyVersion>,
    pub remote: Option<bool>,
    pub eligible: bool,
    pub peers: Vec<PeerStatus>,
    pub alarms: Vec<Alarm>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PeerStatus {
    pub id: ClusterId,
    pub address: Option<String>,
    /// How this cluster sees the peer (slave in sync, conflict and why, not enrolled and why…).
    pub relation: String,
    pub link: LinkStatus,
}

enum Input {
    Command {
        cmd: Command,
        reply: oneshot::Sender<Result<CommandOutcome, DaemonError>>,
    },
    Peer {
        from: ClusterId,
        msg: PeerMessage,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Status {
        reply: oneshot::Sender<Status>,
    },
    DbProbe {
        node: NodeId,
        probe: DbProbe,
    },
    /// A peer added at runtime: dialled and accepted at once (until the next restart, when
    /// the config file decides again).
    AddPeer {
        peer: ClusterId,
        address: String,
        reply: oneshot::Sender<Result<(), DaemonError>>,
    },
    RemovePeer {
        peer: ClusterId,
        reply: oneshot::Sender<Result<(), DaemonError>>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// A running daemon. Stop it with `shutdown` (clean) or `kill` (as `kill -9`); dropping the
/// handle aborts its tasks like `kill` but does not wait for them.
pub struct DaemonHandle {
    id: ClusterId,
    /// Tells the hot path to stop accepting and drain (graceful shutdown only).
    stop: watch::Sender<bool>,
    hotpath: Option<tokio::task::JoinHandle<()>>,
    inbox: mpsc::Sender<Input>,
    tasks: JoinSet<()>,
    peer_addr: SocketAddr,
    admin_addr: SocketAddr,
    ring: watch::Receiver<Option<Arc<KeyRing>>>,
}

#[derive(Clone)]
struct CoreInbox(mpsc::Sender<Input>);

impl crate::peer::server::Inbox for CoreInbox {
    async fn deliver(&self, from: ClusterId, msg: PeerMessage) -> Result<(), String> {
        let (reply, rx) = oneshot::channel();
        self.0
            .send(Input::Peer { from, msg, reply })
            .await
            .map_err(|_| "the daemon is stopping".to_string())?;
        rx.await.map_err(|_| "the daemon is stopping".to_string())?
    }
}

/// Starts the daemon described by `config`: loads (or creates) the node key and the sealed
/// state, binds the peer and admin listeners, and spawns the tasks.
pub async fn start(config: Config) -> Result<DaemonHandle, DaemonError> {
    let id = config.cluster_id.clone();
    // An error-level span is enabled whatever the log level, so every line names its cluster.
    let span = tracing::error_span!("cluster", id = %id);
    let dir = &config.state_dir;
    let state_dir_err = |source| DaemonError::StateDir { path: dir.clone(), source };
    let new_dir = !dir.exists();
    std::fs::create_dir_all(dir)
        .and_then(|()| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        })
        .map_err(state_dir_err)?;
    if new_dir && let Some(parent) = dir.parent() {
        crate::store::sync_dir(parent).map_err(state_dir_err)?;
    }
    // A state without its node key cannot be read: say so instead of making a new key that
    // would only hide the real problem (and have to be deleted before a restore).
    if !dir.join("node.key").exists() && dir.join("state.sealed").exists() {
        return Err(DaemonError::State(format!(
            "{} exists but its node key {} is missing; restore the node key from the backup \
             that holds this state",
            dir.join("state.sealed").display(),
            dir.join("node.key").display()
        )));
    }
    let (node_key, created) = NodeKey::load_or_create(&dir.join("node.key"))?;
    if created {
        span.in_scope(
            || tracing::info!(path = %dir.join("node.key").display(), "created node key"),
        );
    }
    let state_file = SealedFile::new(dir.join("state.sealed"), &node_key, Purpose::State);
    let persisted: Option<PersistedState> = state_file.load()?;
    let tls = PeerTls::load(&config.tls_files(), &id)?;

    let mut cc = ClusterConfig::new(id.clone());
    cc.iterations = config.password.pbkdf2_iterations;
    cc.hello_interval = config.peer.hello_interval;
    cc.master_unreachable_after = config.peer.master_unreachable_after;
    cc.rotate_after = config.encryption.rotate_after;
    if config.testing.legacy_software {
        cc.capabilities = crate::cluster::Capabilities::LEGACY;
    }
    let t = now();
    let mut cluster = match persisted {
        Some(s) => Cluster::new(cc, s, t).map_err(|e| DaemonError::State(e.to_string()))?,
        None => Cluster::fresh(cc, t),
    };
    span.in_scope(|| reconcile(&mut cluster, &config));
    let alarm_history = crate::admin::AlarmHistory::default();
    let admin = span.in_scope(|| crate::admin::Admin::new(&config, alarm_history.clone()))?;

    let bind = |what, addr| async move {
        TcpListener::bind(addr).await.map_err(|source| DaemonError::Listen { what, addr, source })
    };
    let peer_listener = bind("peer listener", config.peer.listen).await?;
    let admin_listener = bind("admin listener", config.admin.listen).await?;
    let peer_addr = peer_listener.local_addr().expect("bound");
    let admin_addr = admin_listener.local_addr().expect("bound");

    let mut tasks = JoinSet::new();
    // The links belong to the core, which adds and removes them; they end with it.
    let mut link_tasks = JoinSet::new();
    let links: BTreeMap<ClusterId, PeerLink> = span.in_scope(|| {
        config
            .peers
            .iter()
            .map(|p| {
                let link = spawn_link(
                    p.id.clone(),
                    p.address.clone(),
                    tls.client.clone(),
                    &mut link_tasks,
                );
                (p.id.clone(), link)
            })
            .collect()
    });
    let (tx, rx) = mpsc::channel(1024);
    // The hot path starts with the ring the state already holds: a restarted cluster that
    // encrypts must never answer "encryption off" while the core gets going.
    let (ring_tx, ring_rx) = watch::channel(cluster.key_ring().cloned().map(Arc::new));
    let peer_ids: crate::peer::server::AllowedPeers =
        Arc::new(std::sync::RwLock::new(config.peers.iter().map(|p| p.id.clone()).collect()));
    tasks.spawn(
        crate::peer::server::serve(
            peer_listener,
            tls.server.clone(),
            peer_ids.clone(),
            CoreInbox(tx.clone()),
        )
        .instrument(span.clone()),
    );
    tasks.spawn(admin.serve(admin_listener, Control(tx.clone())).instrument(span.clone()));
    let (stop, _) = watch::channel(false);
    let mut hotpath = None;
    let mut hot_keys = None;
    if let Some(hp) = &config.hotpath {
        let counters = SealedFile::new(dir.join("counters.sealed"), &node_key, Purpose::Counters);
        let keys = Arc::new(crate::hotpath::KeySource::new(
            id.clone(),
            crate::crypto::aead::AeadImpl::default(),
            counters,
        )?);
        // Before the socket exists: the first reservation of the current key is on disk, or
        // the daemon does not start (rather than serve "off" or fail every request).
        span.in_scope(|| keys.set_ring(cluster.key_ring()))?;
        hot_keys = Some(keys.clone());
        let listener = span.in_scope(|| crate::hotpath::bind_unix(&hp.socket))?;
        // Not in `tasks`: at shutdown it is let finish (it ends when the core drops the ring
        // sender), so no counter write of this instance is still running when it returns.
        let follow = tokio::spawn(
            keys.clone().follow(ring_rx.clone(), Duration::from_secs(1)).instrument(span.clone()),
        );
        let mut stopped = stop.subscribe();
        let shutdown = async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        let limits = hp.limits.clone();
        hotpath = Some(tokio::spawn(
            async move {
                if let Err(e) = crate::hotpath::serve(listener, keys, limits, shutdown).await {
                    tracing::error!(error = %e, "hot path stopped");
                }
                let _ = follow.await;
            }
            .instrument(span.clone()),
        ));
    }
    if config.nodes.iter().any(|n| n.db.is_some()) {
        tasks.spawn(probe_databases(config.clone(), tx.clone()).instrument(span.clone()));
    }
    let core = Core {
        cluster,
        state_file: Arc::new(state_file),
        links,
        link_tasks,
        allowed: peer_ids,
        tls_client: tls.client.clone(),
        ring: ring_tx,
        download: None,
        alarm_history,
        hot_keys,
    };
    tasks.spawn(core.run(rx).instrument(span.clone()));
    span.in_scope(
        || tracing::info!(peer = %peer_addr, admin = %admin_addr, "imcrypt daemon started"),
    );
    Ok(DaemonHandle { id, stop, hotpath, inbox: tx, tasks, peer_addr, admin_addr, ring: ring_rx })
}

/// Probes each node's configured compliance database (kind and reachability) every
/// `db_probe.interval` and hands the results to the core, which decides eligibility and
/// `MAcomplianceDbDown` (cluster::dbprobe).
async fn probe_databases(config: Config, core: mpsc::Sender<Input>) {
    use crate::archive::ProbeResult;
    let nodes: Vec<_> =
        config.nodes.iter().filter_map(|n| Some((n.id.clone(), n.db.clone()?))).collect();
    loop {
        for (node, url) in &nodes {
            let probe = match crate::archive::probe(url).await {
                ProbeResult::Reachable { kind, version } => {
                    tracing::debug!(%node, db = %url, %version, "compliance database reachable");
                    DbProbe::Reachable { kind }
                }
                ProbeResult::Unreachable { reason } => DbProbe::Unreachable { reason },
            };
            if core.send(Input::DbProbe { node: node.clone(), probe }).await.is_err() {
                return;
            }
        }
        tokio::time::sleep(config.db_probe.interval).await;
    }
}

/// Brings the state machine's peers and nodes in line with the configuration file, which is
/// the source of truth for both. A change the state machine refuses (a node added while
/// encryption is on) is logged with its reason and not applied.
fn reconcile(cluster: &mut Cluster, config: &Config) {
    let state = cluster.state().clone();
    let mut cmds = Vec::new();
    // Nodes first: the first hello to a newly added peer then already says whether this
    // cluster is eligible, instead of a transient "no nodes".
    for n in &config.nodes {
        match state.nodes.get(&n.id) {
            None => {
                cmds.push(Command::AddNode { node: n.id.clone(), archiver: n.archiver.clone() })
            }
            Some(a) if *a != n.archiver => {
                cmds.push(Command::SetArchiver { node: n.id.clone(), archiver: n.archiver.clone() })
            }
            Some(_) => {}
        }
    }
    for n in state.nodes.keys() {
        if config.nodes.iter().all(|c| &c.id != n) {
            cmds.push(Command::RemoveNode { node: n.clone() });
        }
    }
    for p in &state.peers {
        if config.peers.iter().all(|c| &c.id != p) {
            cmds.push(Command::RemovePeer { peer: p.clone() });
        }
    }
    for p in &config.peers {
        if !state.peers.contains(&p.id) {
            cmds.push(Command::AddPeer { peer: p.id.clone() });
        }
    }
    for cmd in cmds {
        let what = format!("{cmd:?}");
        if let Err(e) = cluster.handle_command(cmd, now(), Entropy::from_os()) {
            tracing::error!(change = %what, reason = %e, "configuration change refused");
        }
    }
}

struct Core {
    cluster: Cluster,
    state_file: Arc<SealedFile>,
    links: BTreeMap<ClusterId, PeerLink>,
    link_tasks: JoinSet<()>,
    /// Whose certificates the peer listener accepts: the peers, kept equal to `links`.
    allowed: crate::peer::server::AllowedPeers,
    tls_client: Arc<rustls::ClientConfig>,
    ring: watch::Sender<Option<Arc<KeyRing>>>,
    download: Option<Box<KeyRing>>,
    /// Raises and clears, for the admin API's `GET /v1/alarms`.
    alarm_history: crate::admin::AlarmHistory,
    /// The hot path's keys, to learn when the primary version is worn out here.
    hot_keys: Option<Arc<crate::hotpath::KeySource>>,
}

impl Core {
    async fn run(mut self, mut rx: mpsc::Receiver<Input>) {
        if let Err(e) = self.apply_effects().await {
            tracing::error!(error = %e, "cannot write the state; the daemon stops");
            return;
        }
        loop {
            let deadline = self.cluster.poll_timeout().map(|t| {
                let wait = t.since(now());
                tokio::time::Instant::now() + wait
            });
            let input = tokio::select! {
                i = rx.recv() => i,
                () = sleep_until(deadline) => {
                    self.cluster.handle_timeout(now());
                    let done = match self.apply_effects().await {
                        Ok(()) => self.rotate_if_due().await,
                        e => e,
                    };
                    if let Err(e) = done {
                        tracing::error!(error = %e, "cannot write the state; the daemon stops");
                        return;
                    }
                    continue;
                }
            };
            let Some(input) = input else { return };
            match input {
                Input::Command { cmd, reply } => {
                    // Commands may run PBKDF2 (about 0.08 s at 600,000 iterations): tell the
                    // runtime, so that this worker's other tasks move elsewhere meanwhile.
                    let cluster = &mut self.cluster;
                    let r = blocking(|| cluster.handle_command(cmd, now(), Entropy::from_os()));
                    let persisted = self.apply_effects().await;
                    let r = r.map(|()| CommandOutcome { keys_for_download: self.download.take() });
                    // Answered only once the outcome is on disk: never "done" for a change a
                    // restart would not have.
                    if let Err(e) = persisted {
                        let _ = reply.send(Err(DaemonError::NotSaved(e.to_string())));
                        tracing::error!(error = %e, "cannot write the state; the daemon stops");
                        return;
                    }
                    let _ = reply.send(r.map_err(DaemonError::from));
                }
                Input::Peer { from, msg, reply } => {
                    let r = self.cluster.handle_peer_message(&from, msg, now());
                    let persisted = match self.apply_effects().await {
                        Ok(()) => self.rotate_if_due().await,
                        e => e,
                    };
                    if let Err(e) = persisted {
                        let _ = reply.send(Err(format!("this cluster cannot save its state: {e}")));
                        tracing::error!(error = %e, "cannot write the state; the daemon stops");
                        return;
                    }
                    let _ = reply.send(r.map_err(|e| e.to_string()));
                }
                Input::Status { reply } => {
                    let _ = reply.send(self.status());
                }
                Input::AddPeer { peer, address, reply } => {
                    let r = self.cluster.handle_command(
                        Command::AddPeer { peer: peer.clone() },
                        now(),
                        Entropy::from_os(),
                    );
                    if r.is_ok() {
                        // The link must exist before the effects (the first hello) are carried.
                        let link = spawn_link(
                            peer.clone(),
                            address,
                            self.tls_client.clone(),
                            &mut self.link_tasks,
                        );
                        if let Some(old) = self.links.insert(peer.clone(), link) {
                            old.stop();
                        }
                        self.allowed.write().expect("peer list lock").push(peer);
                    }
                    if let Err(e) = self.apply_effects().await {
                        let _ = reply.send(Err(DaemonError::NotSaved(e.to_string())));
                        tracing::error!(error = %e, "cannot write the state; the daemon stops");
                        return;
                    }
                    let _ = reply.send(r.map_err(DaemonError::from));
                }
                Input::RemovePeer { peer, reply } => {
                    let r = self.cluster.handle_command(
                        Command::RemovePeer { peer: peer.clone() },
                        now(),
                        Entropy::from_os(),
                    );
                    let persisted = self.apply_effects().await;
                    if r.is_ok() {
                        if let Some(link) = self.links.remove(&peer) {
                            link.stop();
                        }
                        self.allowed.write().expect("peer list lock").retain(|p| p != &peer);
                    }
                    if let Err(e) = persisted {
                        let _ = reply.send(Err(DaemonError::NotSaved(e.to_string())));
                        tracing::error!(error = %e, "cannot write the state; the daemon stops");
                        return;
                    }
                    let _ = reply.send(r.map_err(DaemonError::from));
                }
                Input::DbProbe { node, probe } => {
                    self.cluster.handle_db_probe(&node, probe, now());
                    if let Err(e) = self.apply_effects().await {
                        tracing::error!(error = %e, "cannot write the state; the daemon stops");
                        return;
                    }
                }
                Input::Shutdown { reply } => {
                    tracing::info!("imcrypt daemon stopping");
                    let _ = reply.send(());
                    return;
                }
            }
        }
    }

    /// Automatic rotation: tells the state machine when this cluster's hot path has worn out
    /// the primary version, and on the master rotates when the state machine says it is due
    /// (worn out here or on a slave, or older than `encryption.rotate_after`).
    async fn rotate_if_due(&mut self) -> Result<(), StoreError> {
        let t = now();
        if let Some(keys) = &self.hot_keys
            && keys.rotation_needed()
            && let Some(sealer) = keys.sealer()
        {
            self.cluster.report_worn_out(sealer.key_version(), t);
            self.apply_effects().await?;
        }
        if let Some(why) = self.cluster.rotation_due(t) {
            tracing::info!(reason = %why, "rotating the key automatically");
            if let Err(e) = self.cluster.handle_command(Command::RotateKey, t, Entropy::from_os()) {
                tracing::error!(error = %e, reason = %why, "automatic key rotation refused");
            }
            self.apply_effects().await?;
        }
        Ok(())
    }

    /// Carries out the pending effects in order; a failed write stops here.
    async fn apply_effects(&mut self) -> Result<(), StoreError> {
        while let Some(effect) = self.cluster.poll_effect() {
            match effect {
                Effect::Persist(state) => {
                    let file = self.state_file.clone();
                    tokio::task::spawn_blocking(move || file.save(&*state))
                        .await
                        .expect("the state writer does not panic")?;
                }
                Effect::Send { to, msg } => match self.links.get(&to) {
                    Some(link) => link.send(msg),
                    None => {
                        tracing::warn!(peer = %to, "no address configured for peer; message not sent")
                    }
                },
                Effect::RaiseAlarm(a) => {
                    self.alarm_history.raised(now().unix_millis(), &a);
                    tracing::warn!(
                        alarm = a.key.name.as_str(),
                        severity = %a.severity,
                        about = %a.key.about,
                        cause = %a.cause,
                        remedy = %a.remedy,
                        "alarm raised"
                    )
                }
                Effect::ClearAlarm(k) => {
                    self.alarm_history.cleared(now().unix_millis(), &k);
                    tracing::info!(alarm = k.name.as_str(), about = %k.about, "alarm cleared")
                }
                Effect::Log(line) => match line.level {
                    LogLevel::Info => tracing::info!("{}", line.text),
                    LogLevel::Warn => tracing::warn!("{}", line.text),
                },
                Effect::KeyRingChanged(ring) => {
                    self.ring.send_replace(ring.map(|r| Arc::new(*r)));
                }
                Effect::KeysForDownload(ring) => self.download = Some(ring),
            }
        }
        Ok(())
    }

    fn status(&self) -> Status {
        let c = &self.cluster;
        let ds = c.domain_state();
        let role = match c.role() {
            Role::Off { .. } => "off",
            Role::Master(_) => "master",
            Role::Slave(_) => "slave",
        };
        let peers = c
            .state()
            .peers
            .iter()
            .map(|p| PeerStatus {
                id: p.clone(),
                address: self.links.get(p).map(|l| l.address().to_owned()),
                relation: c.peer_relation(p).map(|r| r.to_string()).unwrap_or_default(),
                link: self.links.get(p).map(PeerLink::status).unwrap_or_default(),
            })
            .collect();
        Status {
            cluster: c.id().clone(),
            role,
            off_reason: c.off_reason(),
            domain: ds.map(|d| d.domain),
            master: ds.map(|d| d.master.clone()),
            epoch: ds.map(|d| d.epoch),
            key_versions: ds.map(|d| d.ring.versions().collect()).unwrap_or_default(),
            primary_version: ds.map(|d| d.ring.primary_version()),
            remote: ds.map(|d| d.remote),
            eligible: c.eligibility().is_eligible(),
            peers,
            alarms: c.alarms().iter().cloned().collect(),
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Runs CPU-heavy work (PBKDF2) on the current task without stalling the runtime: on a
/// multi-threaded runtime the worker hands its other tasks over first (`block_in_place`); on a
/// current-thread runtime there is no other worker, so it just runs.
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::current().runtime_flavor() {
        tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// A cloneable way into a running daemon: what the admin API (and tests) use to run commands
/// and read the status. Every command goes through the one core task, in order.
#[derive(Clone)]
pub struct Control(mpsc::Sender<Input>);

impl Control {
    pub async fn command(&self, cmd: Command) -> Result<CommandOutcome, DaemonError> {
        let (reply, rx) = oneshot::channel();
        self.0.send(Input::Command { cmd, reply }).await.map_err(|_| DaemonError::Stopped)?;
        rx.await.map_err(|_| DaemonError::Stopped)?
    }

    pub async fn status(&self) -> Result<Status, DaemonError> {
        let (reply, rx) = oneshot::channel();
        self.0.send(Input::Status { reply }).await.map_err(|_| DaemonError::Stopped)?;
        rx.await.map_err(|_| DaemonError::Stopped)
    }

    /// Peers with `peer` at `address` now: the state machine learns of it, a link dials it,
    /// and the peer listener accepts its certificate. Until restart: the config file decides
    /// the peers at every start.
    pub async fn add_peer(&self, peer: ClusterId, address: String) -> Result<(), DaemonError> {
        let (reply, rx) = oneshot::channel();
        self.0
            .send(Input::AddPeer { peer, address, reply })
            .await
            .map_err(|_| DaemonError::Stopped)?;
        rx.await.map_err(|_| DaemonError::Stopped)?
    }

    /// Ends the peering with `peer` now: its link stops, new connections from it are refused
    /// and its messages are answered with an error.
    pub async fn remove_peer(&self, peer: ClusterId) -> Result<(), DaemonError> {
        let (reply, rx) = oneshot::channel();
        self.0.send(Input::RemovePeer { peer, reply }).await.map_err(|_| DaemonError::Stopped)?;
        rx.await.map_err(|_| DaemonError::Stopped)?
    }
}

impl Drop for DaemonHandle {
    fn drop(&mut self) {
        // The other tasks are in `tasks`, which aborts them when dropped.
        if let Some(hp) = self.hotpath.take() {
            hp.abort();
        }
    }
}

impl DaemonHandle {
    pub fn id(&self) -> &ClusterId {
        &self.id
    }

    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The key ring the hot path must use (`None`: encryption is off here).
    pub fn key_ring(&self) -> watch::Receiver<Option<Arc<KeyRing>>> {
        self.ring.clone()
    }

    pub fn control(&self) -> Control {
        Control(self.inbox.clone())
    }

    pub async fn command(&self, cmd: Command) -> Result<CommandOutcome, DaemonError> {
        self.control().command(cmd).await
    }

    pub async fn status(&self) -> Result<Status, DaemonError> {
        self.control().status().await
    }

    /// Stops cleanly: the hot path stops accepting and answers what it received, the core
    /// finishes the input it is handling (its state write completes), then every task ends.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        let (reply, rx) = oneshot::channel();
        if self.inbox.send(Input::Shutdown { reply }).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(10), rx).await;
        }
        if let Some(mut hp) = self.hotpath.take() {
            // It drains within its own drain timeout; past that, it is cut off.
            if tokio::time::timeout(Duration::from_secs(15), &mut hp).await.is_err() {
                hp.abort();
            }
        }
        self.tasks.shutdown().await;
    }

    /// Stops at once, as `kill -9` would: whatever was not yet written is lost, and nothing
    /// that was written is.
    pub async fn kill(mut self) {
        if let Some(hp) = self.hotpath.take() {
            hp.abort();
            let _ = hp.await;
        }
        self.tasks.shutdown().await;
    }

    /// Waits until a task ends on its own (the core stopped, e.g. after a failed write).
    pub async fn wait(&mut self) {
        self.tasks.join_next().await;
    }
}
