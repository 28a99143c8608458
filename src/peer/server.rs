//! The receiving side of the intercluster link: a TLS 1.3 listener that requires a client
//! certificate from a known CA, identifies the peer by the DNS name in it and the CA it chains
//! to (`PeerTls::identify`), and hands each message to the daemon's core.
//!
//! Invariants: a connection whose certificate names no configured peer, or names one but does
//! not chain to that peer's CA, is refused before any message is read; bodies are limited to `MAX_BODY`; bad JSON gets a 400 that says what was
//! wrong and changes nothing.
//!
//! A connection **without** a client certificate (a cluster presenting a peering token,
//! `super::establish`) is served one request, and only `POST /v1/peer/establish`: every other
//! path is answered 403 and reaches nothing; its body is limited to [`MAX_ESTABLISH_BODY`];
//! it never holds a protected slot (a flood of them is evicted like any unauthenticated
//! connection), and it is answered only after the state machine decided (each attempt is
//! audited on this cluster, refused ones included).
//!
//! Against floods (docs/operations.md, "Limits"): at most `peer.max_connections` connections
//! ([`crate::caps::Gate`]); those still in their TLS handshake share half of them, at most a
//! quarter of that half per source address, and the oldest is evicted when a new one comes;
//! the handshake must finish within [`HANDSHAKE_TIMEOUT`]; a connection authenticated as a
//! configured peer holds a slot no flood can take. Refusals are counted into one log line per
//! interval, never one line per connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::client::MESSAGE_PATH;
use super::establish::{ESTABLISH_PATH, EstablishAnswer, EstablishRequest};
use super::tls::PeerTls;
use crate::caps::{Caps, Gate, Ticket};
use crate::cluster::{PeerError, PeerMessage};
use crate::ids::ClusterId;
use crate::store::StoreError;

/// Largest peer message accepted (a state with thousands of key versions fits easily).
const MAX_BODY: usize = 1 << 20;
/// Largest establish request (a CA certificate is 1 to 2 KiB).
const MAX_ESTABLISH_BODY: usize = 16 * 1024;
/// A real peer handshakes in milliseconds on a LAN and well under a second across the world;
/// a connection that has not finished by then makes room.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);

/// Where an accepted message goes; answers why when the message was not taken.
pub(crate) trait Inbox: Clone + Send + Sync + 'static {
    fn deliver(
        &self,
        from: ClusterId,
        msg: PeerMessage,
    ) -> impl std::future::Future<Output = Result<(), DeliverError>> + Send;

    /// A cluster at `source`, with no certificate yet, presents a peering token.
    fn establish(
        &self,
        req: EstablishRequest,
        source: SocketAddr,
    ) -> impl std::future::Future<Output = Result<EstablishAnswer, EstablishError>> + Send;
}

/// Why an establish request was not accepted; the text goes back to the presenting cluster.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EstablishError {
    /// The state machine refused it (the token's rules), or this cluster takes no peering.
    #[error("{0}")]
    Refused(String),
    /// The request itself is malformed.
    #[error("{0}")]
    Bad(String),
    /// Not decided now (stopping, the audit cannot be written): the same token may be tried
    /// again.
    #[error("{0}")]
    Unavailable(String),
    /// More establish requests than the budget allows came lately (`establish::AttemptBudget`);
    /// not taken, not recorded: the same token may be tried again after `retry_after`.
    #[error(
        "this cluster takes few peering requests per minute and had more lately; nothing was \
         checked or recorded; try again in {} s",
        retry_after.as_secs().max(1)
    )]
    Busy { retry_after: Duration },
}

/// Why the core did not take a well-formed peer message. Each is answered `409 Conflict` with
/// this text as the body, which the sending link retries (see `client::LinkError`).
#[derive(Debug, thiserror::Error)]
pub(crate) enum DeliverError {
    #[error("the daemon is stopping")]
    Stopping,
    /// The state machine refused it (a peer it does not know, a message from itself).
    #[error(transparent)]
    Refused(#[from] PeerError),
    /// Taken, but what followed could not be written; the daemon stops.
    #[error("this cluster cannot save its state: {0}")]
    NotSaved(#[source] std::sync::Arc<StoreError>),
    /// Not taken: its audit record could not be written; the sender retries at its next sync.
    #[error("this cluster cannot write its audit trail, so it takes nothing for now: {0}")]
    NotAudited(#[source] std::sync::Arc<crate::audit::AuditError>),
}

/// The peers whose certificates are accepted; the daemon changes it when a peer is added or
/// removed at runtime.
pub(crate) type AllowedPeers = Arc<std::sync::RwLock<Vec<ClusterId>>>;

/// Accepts peer connections until the task is aborted.
pub(crate) async fn serve<I: Inbox>(
    listener: TcpListener,
    tls: PeerTls,
    peers: AllowedPeers,
    inbox: I,
    max_connections: usize,
) {
    let acceptor = TlsAcceptor::from(tls.server.clone());
    let gate = Gate::new("peer listener", Caps::new(max_connections));
    loop {
        let (tcp, ticket) = gate.accept(&listener).await;
        let Ok(addr) = tcp.peer_addr() else { continue };
        tcp.set_nodelay(true).ok();
        let (acceptor, peers, inbox) = (acceptor.clone(), peers.clone(), inbox.clone());
        let trust = tls.clone();
        tokio::spawn(tracing::Instrument::in_current_span(async move {
            let conn = connection(acceptor, &trust, tcp, addr, &peers, inbox, &ticket);
            match ticket.guard(conn).await {
                Some(Ok(())) | None => {}
                Some(Err(why)) => {
                    tracing::debug!(%addr, reason = %why, "refused peer connection");
                    ticket.dropped(format_args!("{addr}: {why}"));
                }
            }
        }));
    }
}

async fn connection<I: Inbox>(
    acceptor: TlsAcceptor,
    trust: &PeerTls,
    tcp: tokio::net::TcpStream,
    addr: SocketAddr,
    peers: &AllowedPeers,
    inbox: I,
    ticket: &Ticket,
) -> Result<(), String> {
    let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
        .await
        .map_err(|_| "TLS handshake timed out".to_string())?
        .map_err(|e| format!("TLS handshake failed: {e}"))?;
    if tls.get_ref().1.peer_certificates().is_none() {
        // Not a peer yet: one establish request, nothing else (module docs).
        let service = hyper::service::service_fn(move |req| {
            let inbox = inbox.clone();
            async move { Ok::<_, std::convert::Infallible>(anonymous(req, addr, inbox).await) }
        });
        return hyper::server::conn::http1::Builder::new()
            .keep_alive(false)
            .serve_connection(TokioIo::new(tls), service)
            .await
            .map_err(|e| format!("HTTP (no client certificate): {e}"));
    }
    let allowed = peers.read().expect("peer list lock").clone();
    let from = trust.identify(tls.get_ref().1.peer_certificates(), &allowed).ok_or_else(|| {
        "its certificate names no configured peer cluster whose CA it chains to".to_string()
    })?;
    tracing::debug!(%addr, peer = %from, "peer connected");
    ticket.establish();
    let service = hyper::service::service_fn(move |req| {
        let (from, inbox) = (from.clone(), inbox.clone());
        async move { Ok::<_, std::convert::Infallible>(handle(req, from, inbox).await) }
    });
    hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(tls), service)
        .await
        .map_err(|e| format!("HTTP: {e}"))
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.into())));
    *r.status_mut() = status;
    r
}

/// The body of `req` as `what` (at most `limit` bytes), or the answer that refuses it: 413
/// when too large, 400 naming what did not parse.
async fn json_body<T: serde::de::DeserializeOwned>(
    req: Request<Incoming>,
    limit: usize,
    what: &str,
) -> Result<T, Response<Full<Bytes>>> {
    let body = Limited::new(req.into_body(), limit).collect().await.map_err(|e| {
        text(StatusCode::PAYLOAD_TOO_LARGE, format!("body refused: {e} (limit {limit} bytes)"))
    })?;
    serde_json::from_slice(&body.to_bytes())
        .map_err(|e| text(StatusCode::BAD_REQUEST, format!("not {what}: {e}")))
}

/// The one request of a connection without a client certificate.
async fn anonymous<I: Inbox>(
    req: Request<Incoming>,
    source: SocketAddr,
    inbox: I,
) -> Response<Full<Bytes>> {
    if req.uri().path() != ESTABLISH_PATH || req.method() != hyper::Method::POST {
        return text(
            StatusCode::FORBIDDEN,
            format!(
                "this connection presented no client certificate: only POST {ESTABLISH_PATH} \
                 is served on it"
            ),
        );
    }
    let req: EstablishRequest =
        match json_body(req, MAX_ESTABLISH_BODY, "an establish request").await {
            Ok(r) => r,
            Err(refused) => return refused,
        };
    match inbox.establish(req, source).await {
        Ok(answer) => {
            let mut r = text(StatusCode::OK, serde_json::to_string(&answer).expect("serializes"));
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(e @ EstablishError::Refused(_)) => text(StatusCode::FORBIDDEN, e.to_string()),
        Err(e @ EstablishError::Bad(_)) => text(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e @ EstablishError::Unavailable(_)) => {
            text(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
        Err(e @ EstablishError::Busy { retry_after }) => {
            let mut r = text(StatusCode::TOO_MANY_REQUESTS, e.to_string());
            r.headers_mut().insert(
                hyper::header::RETRY_AFTER,
                hyper::header::HeaderValue::from(retry_after.as_secs().max(1)),
            );
            r
        }
    }
}

async fn handle<I: Inbox>(
    req: Request<Incoming>,
    from: ClusterId,
    inbox: I,
) -> Response<Full<Bytes>> {
    if req.uri().path() != MESSAGE_PATH {
        return text(StatusCode::NOT_FOUND, format!("no such endpoint {}", req.uri().path()));
    }
    if req.method() != hyper::Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "use POST");
    }
    let msg: PeerMessage = match json_body(req, MAX_BODY, "a peer message").await {
        Ok(m) => m,
        Err(refused) => return refused,
    };
    match inbox.deliver(from, msg).await {
        Ok(()) => text(StatusCode::NO_CONTENT, ""),
        Err(why) => text(StatusCode::CONFLICT, why.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_reads_on_the_wire_as_the_state_machine_said_it() {
        let e = DeliverError::Refused(PeerError::FromSelf);
        assert_eq!(e.to_string(), PeerError::FromSelf.to_string());
        assert_eq!(DeliverError::Stopping.to_string(), "the daemon is stopping");
    }
}
