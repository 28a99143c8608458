//! The hot-path listeners: a Unix domain socket, and optionally TCP with mutual TLS for
//! routers on other nodes (`super::tls`); each connection gets a thread that drives its
//! `Session` and a task that watches it (`super::connection`). The daemon binds with
//! `bind_unix` (and a `TcpListener`) and runs `serve_all` until shutdown.
//!
//! - Both listeners speak the same frames with the same `ServerConfig`: each caps its own
//!   connections at `max_connections`, they share one `max_buffered` budget, and a TLS
//!   handshake must finish within `handshake_timeout` as HELLO must.
//!
//! Invariants:
//! - The socket appears at its configured path already with its mode (and group): it is bound
//!   under a temporary name, chmod/chowned, then renamed into place.
//! - A live socket at the path is never taken over; a stale one (nobody accepting) is replaced.
//! - Shutdown is one mechanism: the `shutdown` future. Then the listener stops accepting, every
//!   connection answers the frames it has already read, closes, and `serve` returns once all
//!   connections are closed (or `drain_timeout` passes: the rest are cut) and every
//!   connection's thread has ended (waited for at most `reservation_wait` more, with a warning
//!   if one has not).
//! - One connection's bad frames or death never affects another connection.
//! - Caps (docs/hotpath.md, "Limits"): at most `max_connections` connections (through the
//!   shared [`Gate`]; one that has not sent HELLO is evicted first when the listener is full); a
//!   connection without HELLO within `handshake_timeout`, or without a complete frame for
//!   `idle_timeout` after it, is closed; a connection buffers at most [`FREE_BUFFER`] bytes of
//!   its own, and a frame larger than that is read only once its length is granted from the
//!   `max_buffered` byte budget all connections share, so incomplete frames cannot take the
//!   daemon's memory (connections waiting for the budget read nothing and time out as idle).

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use super::connection::{self, Shared, Socket};
use super::frame;
use super::keys::KeySource;
use crate::caps::{Caps, Gate, Ticket};
use crate::metrics::HotpathMetrics;

/// Why the hot-path listener cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(
        "hot-path socket {0} is in use by a running process (another imcrypt daemon?); stop it \
         or configure another path"
    )]
    InUse(PathBuf),
    #[error("hot-path socket path {0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    #[error("hot-path socket group {0:?} does not exist")]
    UnknownGroup(String),
    #[error("cannot {action} hot-path socket {path}: {source}")]
    Io { action: &'static str, path: PathBuf, source: io::Error },
    #[error("invalid hot-path configuration: {0}")]
    Config(&'static str),
}

/// Where and how the Unix socket is made.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnixSocketConfig {
    pub path: PathBuf,
    /// Permission bits of the socket file (default 0o660: owner and group).
    #[serde(default = "default_mode")]
    pub mode: u32,
    /// Group owning the socket (name from /etc/group, or a numeric gid): the router's group.
    #[serde(default)]
    pub group: Option<String>,
}

fn default_mode() -> u32 {
    0o660
}

impl UnixSocketConfig {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into(), mode: default_mode(), group: None }
    }
}

/// Where and how the rewrap socket is made (`[hotpath.rewrap_socket]`): the same frames as the
/// hot-path socket, and REWRAP too (`imcrypt archive rewrap`). Owner only by default, since a
/// rewrap needs more trust than sealing new records: give it to the archive's administrators,
/// not to the router's group.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewrapSocketConfig {
    pub path: PathBuf,
    /// Permission bits of the socket file (default 0o600: the daemon's user only).
    #[serde(default = "owner_only")]
    pub mode: u32,
    /// Group owning the socket (name from /etc/group, or a numeric gid).
    #[serde(default)]
    pub group: Option<String>,
}

fn owner_only() -> u32 {
    0o600
}

impl RewrapSocketConfig {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into(), mode: owner_only(), group: None }
    }

    /// The socket as `bind_unix` makes it.
    pub fn socket(&self) -> UnixSocketConfig {
        UnixSocketConfig { path: self.path.clone(), mode: self.mode, group: self.group.clone() }
    }
}

/// Protocol limits and timeouts of the service.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Largest frame accepted, in bytes (length prefix excluded).
    pub max_frame: u32,
    /// Most records in one ENCRYPT.
    pub max_batch: u32,
    /// A connection that sends no HELLO within this is closed.
    #[serde(with = "crate::duration")]
    pub handshake_timeout: Duration,
    /// How long a batch waits for a counter reservation before an explicit error answer.
    #[serde(with = "crate::duration")]
    pub reservation_wait: Duration,
    /// How long shutdown waits for connections to answer what they received.
    #[serde(with = "crate::duration")]
    pub drain_timeout: Duration,
    /// Connections at once; a connection that has not sent HELLO yet makes room for a new one.
    pub max_connections: u32,
    /// After HELLO, a connection that completes no frame for this long is closed.
    #[serde(with = "crate::duration")]
    pub idle_timeout: Duration,
    /// Bytes of frames larger than 64 KiB all connections may buffer together; a frame waits
    /// for its share before its body is read. At least `max_frame`.
    pub max_buffered: u32,
}

/// Bytes a connection may buffer of its own, without a share of `max_buffered`: room for a
/// pipelined batch of small records, so the router's usual frames never wait for the budget.
pub(crate) const FREE_BUFFER: usize = 64 << 10;

/// How long past `reservation_wait` the listener waits at shutdown for connection threads
/// whose sockets are cut: time to answer what they hold and see the cut.
const THREAD_END_SLACK: Duration = Duration::from_secs(1);

/// Connections to the rewrap socket at once. Its client is `imcrypt archive rewrap`, one
/// connection per running rewrap; a cap of its own keeps the descriptors it may hold small
/// (`Config::listener_caps`).
pub(crate) const REWRAP_MAX_CONNECTIONS: u32 = 16;

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_frame: 4 << 20,
            max_batch: 4096,
            handshake_timeout: Duration::from_secs(5),
            reservation_wait: Duration::from_secs(2),
            drain_timeout: Duration::from_secs(5),
            max_connections: 256,
            idle_timeout: Duration::from_secs(300),
            max_buffered: 64 << 20,
        }
    }
}

impl ServerConfig {
    pub(crate) fn validate(&self) -> Result<(), ServerError> {
        if self.max_frame < 64 {
            return Err(ServerError::Config("max_frame must be at least 64 bytes"));
        }
        if self.max_frame > 1 << 30 {
            return Err(ServerError::Config("max_frame must be at most 1 GiB"));
        }
        if self.max_batch == 0 {
            return Err(ServerError::Config("max_batch must be at least 1"));
        }
        if self.max_connections == 0 {
            return Err(ServerError::Config("max_connections must be at least 1"));
        }
        if self.idle_timeout.is_zero() || self.handshake_timeout.is_zero() {
            return Err(ServerError::Config(
                "idle_timeout and handshake_timeout must be longer than 0s",
            ));
        }
        if (self.max_buffered as usize) < self.max_frame as usize + frame::LEN_PREFIX {
            return Err(ServerError::Config(
                "max_buffered must be at least max_frame + 4 bytes (one whole frame)",
            ));
        }
        Ok(())
    }
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ServerError + use<> {
    let path = path.to_owned();
    move |source| ServerError::Io { action, path, source }
}

/// Resolves a group name (or numeric gid) through /etc/group.
fn resolve_group(group: &str) -> Result<u32, ServerError> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    let text = std::fs::read_to_string("/etc/group").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            let gid = f.nth(1)?.parse::<u32>().ok()?;
            (name == group).then_some(gid)
        })
        .next()
        .ok_or_else(|| ServerError::UnknownGroup(group.to_owned()))
}

/// Binds the hot-path socket with its mode and group. Must run inside a Tokio runtime.
pub fn bind_unix(cfg: &UnixSocketConfig) -> Result<UnixListener, ServerError> {
    let path = &cfg.path;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ServerError::InUse(path.clone()));
            }
            tracing::info!(path = %path.display(), "replacing stale hot-path socket");
            std::fs::remove_file(path).map_err(io_err("remove stale", path))?;
        }
        Ok(_) => return Err(ServerError::NotASocket(path.clone())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("inspect", path)(e)),
    }
    let gid = cfg.group.as_deref().map(resolve_group).transpose()?;
    let mut tmp = path.clone().into_os_string();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let std_listener =
        std::os::unix::net::UnixListener::bind(&tmp).map_err(io_err("bind", &tmp))?;
    let finish = || -> Result<(), ServerError> {
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(cfg.mode))
            .map_err(io_err("chmod", &tmp))?;
        if let Some(gid) = gid {
            std::os::unix::fs::chown(&tmp, None, Some(gid)).map_err(io_err("chown", &tmp))?;
        }
        std::fs::rename(&tmp, path).map_err(io_err("rename into place", path))
    };
    if let Err(e) = finish() {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std_listener.set_nonblocking(true).map_err(io_err("configure", path))?;
    let l = UnixListener::from_std(std_listener).map_err(io_err("register", path))?;
    tracing::info!(path = %path.display(), mode = format!("{:o}", cfg.mode), "hot path listening");
    Ok(l)
}

/// Serves hot-path connections on `listener` until `shutdown` resolves, then drains.
/// Also keeps the key source's counter reservations ahead of use. No metrics.
pub async fn serve(
    listener: UnixListener,
    keys: Arc<KeySource>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    serve_with(listener, keys, config, None, shutdown).await
}

/// As [`serve`], counting requests, records, errors and latency in `metrics` when given
/// (`None`: nothing is counted and no clock is read for it).
pub async fn serve_with(
    listener: UnixListener,
    keys: Arc<KeySource>,
    config: ServerConfig,
    metrics: Option<Arc<HotpathMetrics>>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    serve_all(listener, None, None, keys, config, metrics, shutdown).await
}

/// The TCP listener of the hot path and its TLS configuration (`super::tls::server_config`).
pub struct TcpTls {
    pub listener: TcpListener,
    pub tls: Arc<rustls::ServerConfig>,
}

/// As [`serve_with`], also on `tcp` when given, and on `rewrap` (the rewrap socket, whose
/// connections may also send REWRAP) when given: the same frames, caps and shutdown.
pub async fn serve_all(
    listener: UnixListener,
    tcp: Option<TcpTls>,
    rewrap: Option<UnixListener>,
    keys: Arc<KeySource>,
    config: ServerConfig,
    metrics: Option<Arc<HotpathMetrics>>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    config.validate()?;
    let config = Arc::new(config);
    let gate = Gate::new("hot-path listener", Caps::new(config.max_connections as usize));
    let tcp = tcp.map(|t| {
        let gate = Gate::new("hot-path TCP listener", Caps::new(config.max_connections as usize));
        (t.listener, t.tls, gate)
    });
    let rewrap = rewrap.map(|l| {
        (l, Gate::new("hot-path rewrap listener", Caps::new(REWRAP_MAX_CONNECTIONS as usize)))
    });
    let budget = Arc::new(Semaphore::new(config.max_buffered as usize));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    let reserver = {
        let mut rx = stop_rx.clone();
        let stop = async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        tokio::spawn(keys.clone().run_reserver(stop, Duration::from_millis(100)))
    };
    let (alive, mut threads_ended) = mpsc::channel::<()>(1);
    let shared = Arc::new(Shared {
        keys,
        config: config.clone(),
        metrics,
        budget,
        stop: stop_rx,
        runtime: tokio::runtime::Handle::current(),
        _alive: alive,
    });
    tokio::pin!(shutdown);
    loop {
        let (socket, ticket, may_rewrap) = tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            (stream, ticket) = gate.accept(&listener) => (Socket::unix(stream), ticket, false),
            (stream, ticket) = accept_rewrap(rewrap.as_ref()) => {
                (Socket::unix(stream), ticket, true)
            }
            (stream, ticket) = accept_tcp(tcp.as_ref()) => {
                let tls = tcp.as_ref().expect("accepted on it").1.clone();
                (Socket::tcp(stream, tls), ticket, false)
            }
        };
        match socket {
            Ok(socket) => {
                if let Some(watcher) = connection::start(socket, ticket, may_rewrap, &shared) {
                    conns.spawn(watcher);
                }
            }
            Err(e) => ticket.dropped(format!("cannot take the socket off the reactor: {e}")),
        }
    }
    drop(listener);
    drop(tcp);
    drop(rewrap);
    let _ = stop_tx.send(true);
    let open = conns.len();
    tracing::info!(open, "hot path shutting down");
    let drained = tokio::time::timeout(config.drain_timeout, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(left = conns.len(), "hot-path connections did not finish in time");
        conns.shutdown().await;
    }
    let _ = reserver.await;
    // Every connection is closed or cut; a thread may still be in a reservation wait, which
    // gives up within `reservation_wait`, then finds its socket cut and ends.
    drop(shared);
    let bound = config.reservation_wait + THREAD_END_SLACK;
    if tokio::time::timeout(bound, threads_ended.recv()).await.is_err() {
        tracing::warn!(waited = ?bound, "hot-path connection threads still running at shutdown");
    }
    Ok(())
}

/// The next TCP connection with its slot; never, without a TCP listener.
async fn accept_tcp(
    tcp: Option<&(TcpListener, Arc<rustls::ServerConfig>, Arc<Gate>)>,
) -> (tokio::net::TcpStream, Ticket) {
    match tcp {
        Some((listener, _, gate)) => gate.accept(listener).await,
        None => std::future::pending().await,
    }
}

/// The next connection of the rewrap socket with its slot; never, without one.
async fn accept_rewrap(rewrap: Option<&(UnixListener, Arc<Gate>)>) -> (UnixStream, Ticket) {
    match rewrap {
        Some((listener, gate)) => gate.accept(listener).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_parses_with_defaults_and_rejects_unknown_fields() {
        let c: ServerConfig =
            serde_json::from_str(r#"{"max_batch": 64, "reservation_wait": "150ms"}"#).unwrap();
        assert_eq!(c.max_batch, 64);
        assert_eq!(c.reservation_wait, Duration::from_millis(150));
        assert_eq!(c.max_frame, ServerConfig::default().max_frame);
        assert!(serde_json::from_str::<ServerConfig>(r#"{"max_batches": 1}"#).is_err());
        let u: UnixSocketConfig =
            serde_json::from_str(r#"{"path": "/run/imcrypt/hot.sock"}"#).unwrap();
        assert_eq!(u.mode, 0o660);
        assert!(ServerConfig { max_batch: 0, ..Default::default() }.validate().is_err());
    }

    #[test]
    fn groups_resolve_by_number_and_name() {
        assert_eq!(resolve_group("1234").unwrap(), 1234);
        assert_eq!(resolve_group("root").unwrap(), 0);
        assert!(matches!(
            resolve_group("no-such-group-imcrypt"),
            Err(ServerError::UnknownGroup(_))
        ));
    }
}
