//! The sending side of the intercluster link: one task per peer with a persistent mutually
//! authenticated HTTPS connection, retry with exponential backoff, and a small outbox.
//! A link waiting out its backoff tries again at once when [`PeerLink::retry_now`] says the
//! peer is reachable (the state machine heard from it after a silence), so a peer that comes
//! back hears from this cluster within a round trip, not after up to [`BACKOFF_MAX`].
//!
//! The state machine tolerates lost, duplicated and reordered messages (hellos repeat, states
//! carry epochs), so the outbox keeps only the newest message of each kind while a peer is
//! unreachable: nothing piles up, and the peer gets the current state when it is back.
//! Invariant: the server is accepted only if its certificate names the peer dialled and
//! chains to that peer's CA; the CA is read at each new connection, so a changed one (a
//! reload) holds from the next connection on.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::StatusCode;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_rustls::TlsConnector;

use super::backoff::Backoff;
use super::tls::{PeerTls, TlsError, server_name};
use crate::cluster::PeerMessage;
use crate::ids::ClusterId;

/// Path of the one peer endpoint.
pub(crate) const MESSAGE_PATH: &str = "/v1/peer/message";
const TIMEOUT: Duration = Duration::from_secs(5);
/// How long a stopped link still tries to deliver the `Unpeer` of a deleted peering.
const UNPEER_GRACE: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// What the admin status shows about one link.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LinkStatus {
    pub(crate) connected: bool,
    /// Unix milliseconds of the last message this cluster delivered to the peer.
    last_delivery_unix_ms: Option<u64>,
    pub last_error: Option<String>,
}

#[derive(Default)]
struct Outbox {
    queue: Mutex<VecDeque<PeerMessage>>,
    notify: Notify,
    /// Wakes the task from its backoff (only while it waits one: no permit is kept).
    retry: Notify,
}

/// The handle the daemon uses to send to one peer. Dropping the last clone does not stop the
/// sender task: `stop` does (the peer was removed).
#[derive(Clone)]
pub(crate) struct PeerLink {
    outbox: Arc<Outbox>,
    status: Arc<Mutex<LinkStatus>>,
    address: Arc<str>,
    task: tokio::task::AbortHandle,
}

fn kind(m: &PeerMessage) -> u8 {
    match m {
        PeerMessage::Hello(_) => 0,
        PeerMessage::State(_) => 1,
        PeerMessage::Leave(_) => 2,
        PeerMessage::Reject(_) => 3,
        PeerMessage::Unpeer => 4,
        PeerMessage::Handover(_) => 5,
        PeerMessage::Handback(_) => 6,
    }
}

impl PeerLink {
    /// Queues `msg`, replacing an undelivered older message of the same kind.
    pub(crate) fn send(&self, msg: PeerMessage) {
        let mut q = self.outbox.queue.lock().expect("outbox lock");
        q.retain(|m| kind(m) != kind(&msg));
        q.push_back(msg);
        drop(q);
        self.outbox.notify.notify_one();
    }

    /// The peer is reachable: if the task waits out a backoff, it stops waiting and tries
    /// again at once, from the minimum backoff. Nothing happens while it does not wait.
    pub(crate) fn retry_now(&self) {
        self.outbox.retry.notify_waiters();
    }

    pub(crate) fn status(&self) -> LinkStatus {
        self.status.lock().expect("status lock").clone()
    }

    pub(crate) fn address(&self) -> &str {
        &self.address
    }

    /// Stops the sender task; undelivered messages are dropped, except a queued
    /// [`PeerMessage::Unpeer`] (a deleted peering), which is given up to [`UNPEER_GRACE`] to
    /// be delivered first, so that the peer learns of the delete.
    pub(crate) fn stop(&self) {
        let unpeer = (self.outbox.queue.lock().expect("outbox lock").iter())
            .any(|m| matches!(m, PeerMessage::Unpeer));
        if !unpeer {
            self.task.abort();
            return;
        }
        let (outbox, task) = (self.outbox.clone(), self.task.clone());
        tokio::spawn(async move {
            let flushed = async {
                while !outbox.queue.lock().expect("outbox lock").is_empty() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            };
            let _ = tokio::time::timeout(UNPEER_GRACE, flushed).await;
            task.abort();
        });
    }
}

/// Starts the sender task for `peer` at `address`. It runs until aborted.
pub(crate) fn spawn_link(
    peer: ClusterId,
    address: String,
    tls: PeerTls,
    tasks: &mut tokio::task::JoinSet<()>,
) -> PeerLink {
    let outbox: Arc<Outbox> = Arc::default();
    let status: Arc<Mutex<LinkStatus>> = Arc::default();
    let addr: Arc<str> = address.as_str().into();
    let l = (outbox.clone(), status.clone());
    let task = tasks.spawn(tracing::Instrument::in_current_span(async move {
        let l = Sender { outbox: l.0, status: l.1 };
        let mut conn: Option<SendRequest<Full<Bytes>>> = None;
        let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
        loop {
            let next = l.outbox.queue.lock().expect("outbox lock").front().cloned();
            let Some(msg) = next else {
                l.outbox.notify.notified().await;
                continue;
            };
            let body = Bytes::from(serde_json::to_vec(&msg).expect("peer messages serialize"));
            let result = tokio::time::timeout(TIMEOUT, deliver(&mut conn, &peer, &address, &tls, body))
                .await
                .unwrap_or(Err(LinkError::TimedOut));
            match result {
                Ok(()) => {
                    backoff.reset();
                    {
                        let mut st = l.status.lock().expect("status lock");
                        st.connected = true;
                        st.last_error = None;
                        st.last_delivery_unix_ms = Some(crate::clock::now().unix_millis());
                    }
                    let mut q = l.outbox.queue.lock().expect("outbox lock");
                    // Remove what was delivered, unless a newer message of its kind replaced it.
                    if q.front().is_some_and(|m| *m == msg) {
                        q.pop_front();
                    }
                }
                Err(e) if e.is_permanent() => {
                    // Dropped, so that the messages behind it still go; later changes send
                    // fresh ones. Logged as an error: it means a bug or a version mismatch.
                    tracing::error!(peer = %peer, %address, error = %e, "peer message dropped");
                    l.status.lock().expect("status lock").last_error = Some(e.to_string());
                    let mut q = l.outbox.queue.lock().expect("outbox lock");
                    if q.front().is_some_and(|m| *m == msg) {
                        q.pop_front();
                    }
                }
                Err(e) => {
                    conn = None;
                    let e = e.to_string();
                    {
                        let mut st = l.status.lock().expect("status lock");
                        if st.last_error.as_deref() != Some(&e) {
                            tracing::warn!(peer = %peer, %address, error = %e, "peer unreachable; retrying with backoff");
                        }
                        st.connected = false;
                        st.last_error = Some(e);
                    }
                    tokio::select! {
                        () = tokio::time::sleep(backoff.next_wait()) => {}
                        () = l.outbox.retry.notified() => {
                            tracing::debug!(peer = %peer, "peer heard from; retrying its link now");
                            backoff.reset();
                        }
                    }
                }
            }
        }
    }));
    PeerLink { outbox, status, address: addr, task }
}

/// What the sender task holds of its link.
struct Sender {
    outbox: Arc<Outbox>,
    status: Arc<Mutex<LinkStatus>>,
}

async fn connect(
    peer: &ClusterId,
    address: &str,
    tls: &PeerTls,
) -> Result<SendRequest<Full<Bytes>>, LinkError> {
    let client = tls.client_for(peer).map_err(|e| LinkError::Setup(Arc::new(e)))?;
    let tcp = TcpStream::connect(address).await.map_err(LinkError::Connect)?;
    tcp.set_nodelay(true).ok();
    let stream =
        TlsConnector::from(client).connect(server_name(peer), tcp).await.map_err(LinkError::Tls)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(LinkError::Http)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

async fn deliver(
    conn: &mut Option<SendRequest<Full<Bytes>>>,
    peer: &ClusterId,
    address: &str,
    tls: &PeerTls,
    body: Bytes,
) -> Result<(), LinkError> {
    if conn.as_ref().is_none_or(|c| c.is_closed()) {
        *conn = Some(connect(peer, address, tls).await?);
    }
    let sender = conn.as_mut().expect("connected above");
    sender.ready().await.map_err(LinkError::Http)?;
    let req = hyper::Request::post(MESSAGE_PATH)
        .header(hyper::header::HOST, peer.as_str())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))
        .expect("a valid request");
    let resp = sender.send_request(req).await.map_err(LinkError::Http)?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let body = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    Err(LinkError::answered(status, String::from_utf8_lossy(&body).trim().to_owned()))
}

/// Why one message was not delivered to a peer.
///
/// Whether to retry is decided here, from the HTTP status alone: the peer server's answers carry
/// no marker of their own (its refusals are plain text, see `server::handle`), so the wire is
/// unchanged. `LinkStatus::last_error` shows the text of this error.
#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("timed out")]
    TimedOut,
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("TLS: {0}")]
    Tls(std::io::Error),
    /// This side's TLS for the peer cannot be built (its CA could not be used).
    #[error("TLS setup: {0}")]
    Setup(Arc<TlsError>),
    #[error("HTTP: {0}")]
    Http(hyper::Error),
    /// The peer will never take this message, however often it is sent (a 400, 404 or 413:
    /// not a peer message to it, no such endpoint, too large). A bug or a version mismatch.
    #[error("refused for good: peer answered {status}: {body}")]
    Rejected { status: StatusCode, body: String },
    /// The peer did not take the message now (it is stopping, cannot save, does not know this
    /// cluster yet, …); it may later.
    #[error("peer answered {status}: {body}")]
    NotTaken { status: StatusCode, body: String },
}

impl LinkError {
    /// The error for an answer with the non-success `status` and the text `body`.
    fn answered(status: StatusCode, body: String) -> Self {
        match status {
            StatusCode::BAD_REQUEST | StatusCode::NOT_FOUND | StatusCode::PAYLOAD_TOO_LARGE => {
                LinkError::Rejected { status, body }
            }
            _ => LinkError::NotTaken { status, body },
        }
    }

    /// True when sending the same message again cannot succeed: it is dropped, not retried.
    fn is_permanent(&self) -> bool {
        match self {
            LinkError::Rejected { .. } => true,
            LinkError::TimedOut
            | LinkError::Connect(_)
            | LinkError::Tls(_)
            | LinkError::Setup(_)
            | LinkError::Http(_)
            | LinkError::NotTaken { .. } => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_answers_that_can_never_change_drop_the_message() {
        for status in
            [StatusCode::BAD_REQUEST, StatusCode::NOT_FOUND, StatusCode::PAYLOAD_TOO_LARGE]
        {
            let e = LinkError::answered(status, "not a peer message: eof".into());
            assert!(e.is_permanent(), "{e}");
            assert!(e.to_string().starts_with("refused for good: peer answered "), "{e}");
        }
        let e = LinkError::answered(StatusCode::CONFLICT, "the daemon is stopping".into());
        assert!(!e.is_permanent());
        assert_eq!(e.to_string(), "peer answered 409 Conflict: the daemon is stopping");
        assert!(!LinkError::TimedOut.is_permanent());
    }
}
