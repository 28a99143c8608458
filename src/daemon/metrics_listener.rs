//! The metrics listener of a running daemon, which a reload can start, move or stop.
//!
//! The registry itself lives as long as the daemon and counts from the start, whatever
//! `[metrics]` says: `[metrics] listen` only decides whether and where it is served. So a
//! reload that adds `[metrics]` shows counters since the daemon started, and a move keeps them.
//!
//! Invariants:
//! - at most one listener serves at a time, and its address is the one [`MetricsListener::addr`]
//!   reports;
//! - a move binds the new address before the old listener stops: when the bind fails, the old
//!   listener keeps serving and the reload reports the failure with the key;
//! - the listener's task ends with the daemon: its token is a child of the daemon's shutdown
//!   token, and it is aborted when the handle is dropped or killed.

use std::net::SocketAddr;
use std::sync::Mutex;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::Control;
use crate::metrics::server::MetricsServer;

/// One serving listener: the address configured and the one bound (they differ for port 0),
/// how to stop it, and its task.
struct Serving {
    listen: SocketAddr,
    addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.stop.cancel();
        self.task.abort();
    }
}

/// The daemon's metrics listener, off or serving one address.
pub(crate) struct MetricsListener {
    server: MetricsServer<Control>,
    shutdown: CancellationToken,
    span: tracing::Span,
    serving: Mutex<Option<Serving>>,
}

impl MetricsListener {
    /// Off until [`MetricsListener::serve`]; `shutdown` is the daemon's.
    pub(super) fn new(
        server: MetricsServer<Control>,
        shutdown: CancellationToken,
        span: tracing::Span,
    ) -> Self {
        Self { server, shutdown, span, serving: Mutex::new(None) }
    }

    /// Where `GET /metrics` is served now (`None`: off).
    pub(crate) fn addr(&self) -> Option<SocketAddr> {
        self.serving.lock().expect("metrics listener lock").as_ref().map(|s| s.addr)
    }

    /// Serves on `listener` (bound to `listen`) from now on, in place of the listener serving
    /// until now (if any).
    pub(super) fn serve(&self, listen: SocketAddr, listener: TcpListener) {
        let addr = listener.local_addr().expect("a bound listener has an address");
        let stop = self.shutdown.child_token();
        let serve = stop.clone().run_until_cancelled_owned(self.server.clone().serve(listener));
        let task = tokio::spawn(
            async move {
                serve.await;
            }
            .instrument(self.span.clone()),
        );
        // The old listener (dropped here) stops after the new one is bound.
        *self.serving.lock().expect("metrics listener lock") =
            Some(Serving { listen, addr, stop, task });
    }

    /// Applies `listen` from a reloaded file: binds a new address (the old listener stops
    /// only once it is bound), stops serving for `None`, does nothing when unchanged. Returns
    /// what changed in the operator's terms, or why it could not (the old listener serves on).
    pub(super) async fn apply(&self, listen: Option<SocketAddr>) -> Result<Option<String>, String> {
        let (configured, now) = {
            let serving = self.serving.lock().expect("metrics listener lock");
            (serving.as_ref().map(|s| s.listen), serving.as_ref().map(|s| s.addr))
        };
        let moved = match (configured, listen) {
            (a, b) if a == b => return Ok(None),
            (_, None) => {
                self.serving.lock().expect("metrics listener lock").take();
                tracing::info!(from = ?now, "metrics listener stopped");
                return Ok(Some("metrics: off".into()));
            }
            (_, Some(to)) => to,
        };
        let listener = TcpListener::bind(moved).await.map_err(|e| match now {
            Some(now) => format!("cannot listen on {moved}: {e}; still serving on {now}"),
            None => format!("cannot listen on {moved}: {e}; metrics stay off"),
        })?;
        self.serve(moved, listener);
        let addr = self.addr().expect("serving");
        tracing::info!(from = ?now, to = %addr, "metrics listener moved");
        Ok(Some(format!("metrics.listen: {addr}")))
    }
}
