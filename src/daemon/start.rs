//! Start-up: the state directory, the node key and the sealed state, the machine reconciled
//! with the configuration file, the listeners, and the tasks.
//!
//! Invariants: the daemon either starts with its state on disk and every listener bound, or
//! returns an error and leaves nothing running; the hot path starts with the ring the state
//! already holds (a restarted cluster that encrypts never answers "encryption off").

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::alarm::AlarmHistory;
use crate::alarm::sink::Sinks;
use crate::cluster::{Cluster, ClusterConfig, PersistedState, Wanted};
use crate::config::Config;
use crate::crypto::seal::{NodeKey, Purpose};
use crate::peer::tls::PeerTls;
use crate::store::SealedFile;

use super::control::CoreInbox;
use super::core::{Core, Heartbeat};
use super::handle::until_shutdown;
use super::metrics_listener::MetricsListener;
use super::{Control, DaemonError, DaemonHandle, probe};
use crate::clock::now;

/// The state machine's settings, from the configuration file.
fn cluster_config(config: &Config) -> ClusterConfig {
    let mut cc = ClusterConfig::new(config.cluster_id.clone());
    cc.iterations = config.password.pbkdf2_iterations;
    cc.hello_interval = config.peer.hello_interval;
    cc.master_unreachable_after = config.peer.master_unreachable_after;
    cc.rotate_after = config.encryption.rotate_after;
    cc.destruction_grace = config.encryption.destruction_grace;
    if config.testing.legacy_software {
        cc.capabilities = crate::cluster::Capabilities::LEGACY;
    }
    cc
}

/// The nodes and peers the configuration file names, which the machine reconciles with (at
/// start, and on a reload when they changed).
pub(super) fn wanted(config: &Config) -> Wanted {
    Wanted {
        nodes: config.nodes.iter().map(|n| (n.id.clone(), n.archiver.clone())).collect(),
        peers: config.peers.iter().map(|p| (p.id.clone(), p.address.clone())).collect(),
    }
}

/// Creates the state directory (mode 0700) if needed.
fn state_dir(dir: &std::path::Path) -> Result<(), DaemonError> {
    let err = |source| DaemonError::StateDir { path: dir.to_owned(), source };
    let new_dir = !dir.exists();
    std::fs::create_dir_all(dir)
        .and_then(|()| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        })
        .map_err(err)?;
    if new_dir && let Some(parent) = dir.parent() {
        crate::store::sync_dir(parent).map_err(err)?;
    }
    Ok(())
}

/// Starts the daemon described by `config`: loads (or creates) the node key and the sealed
/// state, binds the peer and admin listeners, and spawns the tasks.
pub async fn start(config: Config) -> Result<DaemonHandle, DaemonError> {
    start_with(config, None).await
}

/// As [`start`], with a heartbeat the core loop beats while it runs (`imcrypt serve` under
/// systemd's watchdog).
pub(crate) async fn start_with(
    config: Config,
    heartbeat: Option<Heartbeat>,
) -> Result<DaemonHandle, DaemonError> {
    let id = config.cluster_id.clone();
    // An error-level span is enabled whatever the log level, so every line names its cluster.
    let span = tracing::error_span!("cluster", id = %id);
    // Before anything opens a descriptor: the listeners' caps and the reserve must fit.
    let descriptors = crate::caps::raise_descriptor_limit();
    crate::caps::check_descriptors(
        descriptors,
        &config.listener_caps(),
        config.descriptor_reserve(),
    )?;
    span.in_scope(|| tracing::info!(descriptors, "descriptor limit (soft raised to hard)"));
    let dir = &config.state_dir;
    state_dir(dir)?;
    let (key_path, state_path) = (dir.join(crate::store::NODE_KEY_FILE), dir.join("state.sealed"));
    // A state without its node key cannot be read: say so instead of making a new key that
    // would only hide the real problem (and have to be deleted before a restore).
    if !key_path.exists() && state_path.exists() {
        return Err(DaemonError::NodeKeyMissing { state: state_path, key: key_path });
    }
    let (node_key, created) = NodeKey::load_or_create(&key_path)?;
    if created {
        span.in_scope(|| tracing::info!(path = %key_path.display(), "created node key"));
    }
    let state_file = SealedFile::new(state_path, &node_key, Purpose::State);
    // Before the state: a trail that does not match its sealed head stops the start, and
    // nothing is done unaudited.
    let audit = crate::audit::Audit::open(dir, id.as_str(), &node_key, &config.audit)
        .map_err(|e| DaemonError::Audit(Arc::new(e)))?;
    if !config.audit.enabled {
        span.in_scope(|| {
            tracing::warn!(
                "AUDIT TRAIL DISABLED ([audit] enabled = false): administrative acts, key \
                 downloads and key-ring changes are NOT recorded; use this only to measure the \
                 audit's cost, never in production"
            )
        });
    }
    let persisted: Option<PersistedState> = state_file.load()?;
    let tls = PeerTls::load(&config.tls_files(), &id, &config.peer_cas())?;

    let cc = cluster_config(&config);
    let mut cluster = match persisted {
        Some(s) => Cluster::new(cc, s, now())?,
        None => Cluster::fresh(cc, now()),
    };
    for refusal in cluster.reconcile(&wanted(&config), now()) {
        span.in_scope(|| {
            tracing::error!(change = %refusal.change, reason = %refusal.reason, "configuration change refused")
        });
    }
    let alarm_history = AlarmHistory::default();
    // One task per sink; an unreachable sink is not an error here (it counts failures).
    let sinks = span.in_scope(|| Sinks::new(id.clone(), &config.alarms.sinks));
    let audit = audit.copy_to(sinks.clone());
    // Counted from the start even without `[metrics]`, so that a reload that turns the
    // listener on shows counts since the start (see `metrics_listener`).
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let admin = span.in_scope(|| {
        crate::admin::Admin::new(
            &config,
            alarm_history.clone(),
            metrics.admin(),
            node_key.client_proof_key(),
            crate::admin::tokens::TokenFile::new(dir, &node_key, config.admin_token_file()),
            audit.clone(),
        )
    })?;

    let bind = |what, addr| async move {
        TcpListener::bind(addr).await.map_err(|source| DaemonError::Listen { what, addr, source })
    };
    let peer_listener = bind("peer listener", config.peer.listen).await?;
    let admin_listener = bind("admin listener", config.admin.listen).await?;
    let metrics_listener = match &config.metrics {
        Some(m) => Some(bind("metrics listener", m.listen).await?),
        None => None,
    };
    let peer_addr = peer_listener.local_addr().expect("bound");
    let admin_addr = admin_listener.local_addr().expect("bound");

    let shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let (tx, rx) = mpsc::channel(1024);
    let peering = Arc::new(crate::peer::establish::Peering {
        me: id.clone(),
        tls: tls.clone(),
        advertise: config.peer_advertise(),
        attempts: Default::default(),
    });
    let control = Control(tx.clone(), peering.clone());
    let (ring_tx, ring_rx) = watch::channel(cluster.key_ring().cloned().map(Arc::new));
    let mut worn_out = None;
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
        worn_out = Some(keys.worn_out());
        hot_keys = Some(keys.clone());
        let listener = span.in_scope(|| crate::hotpath::bind_unix(&hp.socket))?;
        let rewrap = match &hp.rewrap_socket {
            Some(r) => Some(span.in_scope(|| crate::hotpath::bind_unix(&r.socket()))?),
            None => None,
        };
        let tcp = match config.hotpath_tcp() {
            Some((addr, files, nodes)) => {
                let tls = crate::hotpath::server_config(&files, nodes)?;
                let listener = bind("hot-path TCP listener", addr).await?;
                span.in_scope(|| tracing::info!(%addr, "hot path listening on TCP (mutual TLS)"));
                Some(crate::hotpath::TcpTls { listener, tls })
            }
            None => None,
        };
        // Ends when the core drops the ring sender, so no counter write of this instance is
        // still running when the hot path's task returns.
        let follow = tokio::spawn(
            keys.clone().follow(ring_rx.clone(), Duration::from_secs(1)).instrument(span.clone()),
        );
        let (limits, stop) = (hp.limits.clone(), shutdown.clone().cancelled_owned());
        let counted = Some(metrics.hotpath());
        tasks.spawn(
            async move {
                if let Err(e) =
                    crate::hotpath::serve_all(listener, tcp, rewrap, keys, limits, counted, stop)
                        .await
                {
                    tracing::error!(error = %e, "hot path stopped");
                }
                let _ = follow.await;
            }
            .instrument(span.clone()),
        );
    }
    let mut core = Core {
        cluster,
        state_file: Arc::new(state_file),
        links: BTreeMap::new(),
        link_tasks: JoinSet::new(),
        allowed: Arc::new(std::sync::RwLock::new(Vec::new())),
        tls: tls.clone(),
        ring: ring_tx,
        alarm_history,
        sinks: sinks.clone(),
        worn_out,
        heartbeat,
        audit,
        audit_alarm: None,
        audit_retry: None,
    };
    // The start-up effects (reconcile's state, the links, the first hellos) before anything
    // listens: the peer listener then already knows whom to accept.
    core.carry_start().instrument(span.clone()).await?;
    let peer_server = crate::peer::server::serve(
        peer_listener,
        tls.clone(),
        core.allowed.clone(),
        CoreInbox(tx.clone(), peering),
        config.peer.max_connections as usize,
    );
    tasks.spawn(until_shutdown(shutdown.clone(), peer_server).instrument(span.clone()));
    let admin_server = admin.serve(admin_listener, control.clone());
    tasks.spawn(until_shutdown(shutdown.clone(), admin_server).instrument(span.clone()));
    let metrics_server = crate::metrics::server::MetricsServer {
        cluster: id.clone(),
        metrics,
        control: control.clone(),
        keys: hot_keys,
        // Read at start only: the descriptor budget was checked with it.
        max_connections: config.metrics_max_connections() as usize,
    };
    let metrics = MetricsListener::new(metrics_server, shutdown.clone(), span.clone());
    if let (Some(listener), Some(m)) = (metrics_listener, &config.metrics) {
        metrics.serve(m.listen, listener);
    }
    if config.nodes.iter().any(|n| n.db.is_some()) {
        let probe = probe::probe_databases(config.clone(), control.clone());
        tasks.spawn(until_shutdown(shutdown.clone(), probe).instrument(span.clone()));
    }
    tasks.spawn(core.run(rx, shutdown.clone()).instrument(span.clone()));
    drop(tx);
    span.in_scope(
        || tracing::info!(peer = %peer_addr, admin = %admin_addr, metrics = ?metrics.addr(), "imcrypt daemon started"),
    );
    Ok(DaemonHandle {
        id,
        shutdown,
        tasks,
        control,
        peer_addr,
        admin_addr,
        metrics,
        ring: ring_rx,
        sinks,
        peer_tls: tls,
    })
}
