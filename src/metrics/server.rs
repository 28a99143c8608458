//! The metrics listener: plain HTTP/1.1 (hyper) on `[metrics] listen`, answering
//! `GET /metrics` (the Prometheus exposition) and `GET /v1/health` (the same answer as the
//! admin listener's, see `admin::health`), without a token; anything else is 404 or 405.
//!
//! Invariants: at most `metrics.max_connections` connections at once, through the shared
//! [`crate::caps::Gate`] (no client authenticates here, so the oldest is evicted for a new one);
//! a client gets [`HEADER_TIMEOUT`] to send its request head and [`CONNECTION_TIMEOUT`] in
//! all, so slow clients cannot pin the listener; no request body is ever read; a scrape asks
//! the core for its status once, and never holds it up.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use super::Metrics;
use crate::admin::Daemon;
use crate::caps::{Caps, Gate};
use crate::hotpath::KeySource;
use crate::ids::ClusterId;

const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

/// What the metrics listener serves from.
#[derive(Clone)]
pub(crate) struct MetricsServer<D> {
    pub(crate) cluster: ClusterId,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) control: D,
    /// The hot path's key source, for the seals per key version (`None`: no hot path).
    pub(crate) keys: Option<Arc<KeySource>>,
    /// `metrics.max_connections`.
    pub(crate) max_connections: usize,
}

impl<D: Daemon> MetricsServer<D> {
    /// Serves `listener` until the task is dropped or aborted (the daemon's `until_shutdown`).
    pub(crate) async fn serve(self, listener: TcpListener) {
        let gate = Gate::new("metrics listener", Caps::new(self.max_connections));
        let this = Arc::new(self);
        loop {
            let (tcp, ticket) = gate.accept(&listener).await;
            let Ok(addr) = tcp.peer_addr() else { continue };
            let this = this.clone();
            tokio::spawn(tracing::Instrument::in_current_span(async move {
                let service = hyper::service::service_fn(move |req| {
                    let this = this.clone();
                    async move { Ok::<_, Infallible>(this.handle(req).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(tcp), service);
                match ticket.guard(tokio::time::timeout(CONNECTION_TIMEOUT, conn)).await {
                    Some(Ok(Ok(()))) => {}
                    Some(Ok(Err(e))) => {
                        tracing::debug!(%addr, error = %e, "metrics connection ended")
                    }
                    Some(Err(_)) => tracing::debug!(%addr, "metrics connection timed out"),
                    None => tracing::debug!(%addr, "metrics connection evicted for a newer one"),
                }
            }));
        }
    }

    async fn handle<B>(&self, req: Request<B>) -> Response<Full<Bytes>> {
        let path = req.uri().path();
        let allowed = matches!(path, "/metrics" | "/v1/health");
        if !allowed {
            return text(
                StatusCode::NOT_FOUND,
                "not found: this listener serves /metrics and /v1/health\n",
            );
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
            r.headers_mut().insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return r;
        }
        if path == "/v1/health" {
            return crate::admin::health(&self.cluster, req.uri().query(), &self.control).await;
        }
        let status = self.control.status().await.ok();
        let seals = match &self.keys {
            Some(k) => {
                let k = k.clone();
                tokio::task::spawn_blocking(move || k.seal_counts()).await.unwrap_or_default()
            }
            None => Vec::new(),
        };
        let body = self.metrics.encode(status, seals, crate::clock::now().unix_millis()).await;
        let mut r = Response::new(Full::new(Bytes::from(body)));
        r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(super::CONTENT_TYPE));
        r
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}
