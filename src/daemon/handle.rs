//! [`DaemonHandle`]: a running daemon, and its one shutdown mechanism.
//!
//! Every task of the daemon (core, peer and admin listeners, database probe, hot path) runs in
//! one `JoinSet` and watches one `CancellationToken` (the style of mini-redis's shutdown):
//! - `shutdown` cancels the token: the core finishes the input it is handling (its state write
//!   completes), the hot path stops accepting and answers what it received, the listeners
//!   stop; then every task is awaited, and what has not ended after [`SHUTDOWN_GRACE`] is
//!   aborted;
//! - `kill` aborts every task at once, as `kill -9` would; so does dropping the handle;
//! - the core cancels the token itself when its state cannot be written, so the daemon never
//!   runs on half-stopped.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::admin::api;
use crate::cluster::{Command, Outcome};
use crate::crypto::keyring::KeyRing;
use crate::ids::ClusterId;

use super::Control;
use crate::admin::RequestError;

/// How long a clean shutdown waits for the tasks (the hot path's drain is shorter).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);

/// A running daemon. Stop it with `shutdown` (clean) or `kill` (as `kill -9`); dropping the
/// handle aborts its tasks like `kill` but does not wait for them.
pub struct DaemonHandle {
    pub(super) id: ClusterId,
    pub(super) shutdown: CancellationToken,
    pub(super) tasks: JoinSet<()>,
    pub(super) control: Control,
    pub(super) peer_addr: SocketAddr,
    pub(super) admin_addr: SocketAddr,
    /// The metrics listener (off without `[metrics]`); a reload may move it.
    pub(super) metrics: super::metrics_listener::MetricsListener,
    pub(super) ring: watch::Receiver<Option<Arc<KeyRing>>>,
    /// The alarm sinks, for a reload (`Sinks::reconfigure`).
    pub(super) sinks: crate::alarm::sink::Sinks,
    /// The peer link's TLS, for a reload that changes a peer's CA.
    pub(super) peer_tls: crate::peer::tls::PeerTls,
}

/// Runs `task` until it ends or `shutdown` is cancelled: how every task that has nothing to
/// finish (listeners, the probe loop) watches the daemon's one shutdown signal.
pub(super) async fn until_shutdown(shutdown: CancellationToken, task: impl Future<Output = ()>) {
    shutdown.run_until_cancelled_owned(task).await;
}

impl DaemonHandle {
    /// The daemon's alarm sinks: `reconfigure` them on a reload.
    pub(crate) fn sinks(&self) -> &crate::alarm::sink::Sinks {
        &self.sinks
    }

    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Where `GET /metrics` and `GET /v1/health` are served over plain HTTP now (`None`:
    /// metrics are not configured).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.addr()
    }

    /// The metrics listener, for a reload.
    pub(super) fn metrics_listener(&self) -> &super::metrics_listener::MetricsListener {
        &self.metrics
    }

    /// The key ring the hot path must use (`None`: encryption is off here).
    pub fn key_ring(&self) -> watch::Receiver<Option<Arc<KeyRing>>> {
        self.ring.clone()
    }

    pub fn control(&self) -> Control {
        self.control.clone()
    }

    pub async fn command(&self, cmd: Command) -> Result<Outcome, RequestError> {
        self.control.command(cmd).await
    }

    pub(crate) async fn status(&self) -> Result<api::Status, RequestError> {
        self.control.status().await
    }

    /// Stops cleanly (see the module documentation).
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        let all = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(SHUTDOWN_GRACE, all).await.is_err() {
            tracing::warn!(cluster = %self.id, "tasks still running after the grace period; aborted");
        }
        self.tasks.shutdown().await;
    }

    /// Stops at once, as `kill -9` would: whatever was not yet written is lost, and nothing
    /// that was written is.
    pub(crate) async fn kill(mut self) {
        self.tasks.shutdown().await;
    }

    /// Waits until a task ends on its own (the core stopped, e.g. after a failed write).
    pub(crate) async fn wait(&mut self) {
        self.tasks.join_next().await;
    }
}
