//! Establishing a peering with a token: the I/O around the state machine's decisions
//! (`cluster::peering`). docs/formats.md, "Peering exchange", has it byte by byte.
//!
//! Cluster B, holding a token of cluster A, dials A's peer listener with a TLS client whose
//! only trust is the CA whose SHA-256 the token pins (found in the chain A serves) and which
//! must name A ([`PeerTls::pinned_client`]); it presents no certificate. Over that connection
//! it sends `POST /v1/peer/establish` with its cluster id, the token's secret, its own peer
//! address and its CA certificate. A's state machine checks the secret (against the SHA-256 it
//! kept), uses the token up and records B with B's CA as B's only anchor; A answers with its
//! CA certificate, which B checks against the pin again and records as A's only anchor. From
//! then on both links are the usual mutual TLS.
//!
//! Invariants:
//! - nothing of the token leaves B before the pinned handshake has succeeded: a server with a
//!   certificate from another CA (a man in the middle) ends the attempt with no byte of HTTP
//!   sent;
//! - the secret goes only to the pinned issuer, inside TLS 1.3, and the issuer stores only its
//!   SHA-256 (a copy of A's state file or backup cannot be replayed as a token); neither the
//!   token nor the secret is ever logged or put in an error;
//! - B records A only after A accepted; an error before that changes nothing on B.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::StatusCode;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use zeroize::Zeroizing;

use super::tls::{PeerTls, TlsError, server_name};
use super::token::{Token, TokenError};
use crate::cluster::PeeringSecret;
use crate::ids::ClusterId;
use crate::pem_files;

/// The one route a connection without a client certificate is served.
pub(crate) const ESTABLISH_PATH: &str = "/v1/peer/establish";
/// One attempt at one address: connect, handshake, request and answer.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer read (a CA certificate is 1 to 2 KiB).
const MAX_ANSWER: usize = 64 * 1024;

/// The body of `POST /v1/peer/establish`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EstablishRequest {
    /// The cluster presenting the token (the token must name it).
    pub(crate) cluster: ClusterId,
    /// The token's secret, base64url without padding.
    pub(crate) secret: Zeroizing<String>,
    /// `host:port` of the presenting cluster's peer listener.
    pub(crate) address: String,
    /// The presenting cluster's CA certificate (PEM): its only trust anchor at the issuer.
    pub(crate) ca_pem: String,
}

impl EstablishRequest {
    /// The secret as bytes; `None` if it is not 32 bytes of base64url.
    pub(crate) fn secret(&self) -> Option<PeeringSecret> {
        use base64::Engine;
        let bytes = Zeroizing::new(
            base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(self.secret.as_bytes()).ok()?,
        );
        let bytes: [u8; 32] = bytes[..].try_into().ok()?;
        Some(PeeringSecret::from_bytes(bytes))
    }
}

/// The issuer's answer when it accepted (`200 OK`).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EstablishAnswer {
    pub(crate) cluster: ClusterId,
    /// The issuer's CA certificate (PEM); its SHA-256 is the token's pin.
    pub(crate) ca_pem: String,
}

/// Establish requests the issuer takes to its state machine per [`ATTEMPT_WINDOW`], from all
/// sources together. A cluster with a valid token needs one; each attempt taken is a record
/// in the audit trail (an fsync, and bytes never deleted), and the route needs no
/// certificate, so without a budget anyone who reaches the peer port could fill the disk.
/// Sources play no part: anyone can rotate addresses.
pub(crate) const ATTEMPTS_PER_WINDOW: usize = 10;
/// The window of [`ATTEMPTS_PER_WINDOW`].
pub(crate) const ATTEMPT_WINDOW: Duration = Duration::from_secs(60);

/// The establish attempts taken lately (pure: the caller passes the time).
///
/// Invariant: at most [`ATTEMPTS_PER_WINDOW`] attempts are taken in any window of
/// [`ATTEMPT_WINDOW`]; a refusal counts nothing and says when the next attempt is taken.
#[derive(Debug, Default)]
pub(crate) struct AttemptBudget {
    taken: std::collections::VecDeque<std::time::Instant>,
    /// Requests not taken since the last warning, and when that warning was logged: one line
    /// per window at most, so a flood cannot flood the log instead.
    not_taken: u64,
    warned_at: Option<std::time::Instant>,
}

impl AttemptBudget {
    /// Takes one attempt at `now`, or says how long until one is free.
    pub(crate) fn take(&mut self, now: std::time::Instant) -> Result<(), Duration> {
        while self.taken.front().is_some_and(|t| now.duration_since(*t) >= ATTEMPT_WINDOW) {
            self.taken.pop_front();
        }
        if self.taken.len() >= ATTEMPTS_PER_WINDOW {
            let oldest = *self.taken.front().expect("full");
            return Err(ATTEMPT_WINDOW - now.duration_since(oldest));
        }
        self.taken.push_back(now);
        Ok(())
    }

    /// Counts one request not taken at `now`; `Some(count)` when a warning is due (the first
    /// one, then at most one per [`ATTEMPT_WINDOW`]), with the requests not taken since the
    /// last warning, this one included.
    pub(crate) fn note_not_taken(&mut self, now: std::time::Instant) -> Option<u64> {
        self.not_taken += 1;
        if self.warned_at.is_some_and(|t| now.duration_since(t) < ATTEMPT_WINDOW) {
            return None;
        }
        self.warned_at = Some(now);
        Some(std::mem::take(&mut self.not_taken))
    }
}

/// What a cluster needs to issue tokens and to establish peerings.
pub(crate) struct Peering {
    pub(crate) me: ClusterId,
    pub(crate) tls: PeerTls,
    /// Where other clusters dial this cluster's peer listener (`Config::peer_advertise`).
    pub(crate) advertise: Vec<String>,
    /// Establish requests taken from clusters presenting a token ([`AttemptBudget`]).
    pub(crate) attempts: std::sync::Mutex<AttemptBudget>,
}

impl Peering {
    /// Takes one establish request from the budget at `now`, or answers why not (and warns,
    /// at most once per window, how many were not taken).
    pub(crate) fn take_attempt(
        &self,
        now: std::time::Instant,
    ) -> Result<(), super::server::EstablishError> {
        let mut budget = self.attempts.lock().expect("attempt budget lock");
        let Err(retry_after) = budget.take(now) else { return Ok(()) };
        if let Some(not_taken) = budget.note_not_taken(now) {
            tracing::warn!(
                not_taken,
                retry_after_s = retry_after.as_secs(),
                "peering establish requests not taken: more than {ATTEMPTS_PER_WINDOW} a minute \
                 came (the count is since the last such line; docs/operations.md, \"Peering\")"
            );
        }
        Err(super::server::EstablishError::Busy { retry_after })
    }
}

/// Why a token could not be made or used.
#[derive(Debug, thiserror::Error)]
pub enum PeeringError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(
        "this cluster cannot take part in peering by token: {0} (docs/operations.md, \"Peering\")"
    )]
    NotReady(&'static str),
    #[error("the peering token was issued by this cluster itself; use it on cluster {0}")]
    OwnToken(ClusterId),
    #[error("cluster {0} is already a peer of this cluster; nothing was sent")]
    AlreadyPeer(ClusterId),
    /// Before the request was sent (connect, handshake): the token did not leave.
    #[error("cannot reach cluster {issuer} at {address}: {reason}; nothing was sent")]
    Unreachable { issuer: ClusterId, address: String, reason: String },
    /// After the request was sent: the issuer may have accepted the token.
    #[error(
        "sent the token to cluster {issuer} at {address} but its answer did not come back \
         ({reason}); cluster {issuer} may have accepted it. Run imcrypt peering establish again \
         with the same token (a repeat is answered as before and changes nothing), or check \
         imcrypt peering list on both sides"
    )]
    NoAnswer { issuer: ClusterId, address: String, reason: String },
    #[error(
        "the server at {address} is not cluster {issuer} as the token pins it ({reason}); \
         nothing of the token was sent. A man in the middle, a wrong address, or cluster \
         {issuer}'s CA changed since the token was made"
    )]
    Pin { issuer: ClusterId, address: String, reason: String },
    #[error("cluster {issuer} refused the peering: {reason}")]
    Refused { issuer: ClusterId, reason: String },
    #[error("cluster {issuer} answered unexpectedly: {reason}")]
    Protocol { issuer: ClusterId, reason: String },
    #[error("TLS setup: {0}")]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Request(#[from] crate::admin::RequestError),
}

impl Peering {
    /// This cluster's CA and an address for its peer listener, or why it has none.
    pub(crate) fn own(&self) -> Result<(&super::tls::OwnCa, &str), PeeringError> {
        let ca = self.tls.own_ca().ok_or(PeeringError::NotReady(
            "peer.ca holds no CA certificate that issued this cluster's certificate",
        ))?;
        let address = self.advertise.first().ok_or(PeeringError::NotReady(
            "peer.listen is a wildcard address; set peer.advertise to the address peers dial",
        ))?;
        Ok((ca, address))
    }

    /// The text of a new token (the secret from the state machine's outcome).
    pub(crate) fn token_text(
        &self,
        for_cluster: ClusterId,
        expires_unix_ms: u64,
        secret: PeeringSecret,
    ) -> Result<Zeroizing<String>, PeeringError> {
        let (ca, _) = self.own()?;
        let t = Token {
            issuer: self.me.clone(),
            addresses: self.advertise.clone(),
            ca_sha256: ca.sha256,
            for_cluster,
            expires_unix_ms,
            secret,
        };
        Ok(t.encode())
    }

    /// Presents `token` to its issuer. On success, the issuer has recorded this cluster and
    /// the answer is its CA certificate (checked against the pin), with the address that
    /// answered.
    pub(crate) async fn present(
        &self,
        token: &Token,
    ) -> Result<(String, EstablishAnswer), PeeringError> {
        let (ca, address) = self.own()?;
        let body = EstablishRequest {
            cluster: self.me.clone(),
            secret: Zeroizing::new({
                use base64::Engine;
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token.secret.as_bytes())
            }),
            address: address.to_owned(),
            ca_pem: ca.pem.clone(),
        };
        let body = Bytes::from(serde_json::to_vec(&body).expect("a request serializes"));
        let client = self.tls.pinned_client(token.ca_sha256)?;
        let mut last = None;
        for address in &token.addresses {
            let deadline = tokio::time::Instant::now() + ATTEMPT_TIMEOUT;
            match attempt(client.clone(), &token.issuer, address, body.clone(), deadline).await {
                Ok(answer) => {
                    check_answer(token, &answer)?;
                    return Ok((address.clone(), answer));
                }
                // Another address may work; any other error is the issuer's word (or the pin's),
                // or the token was sent and the issuer may have taken it.
                Err(e @ PeeringError::Unreachable { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("a token names at least one address"))
    }
}

/// The issuer's answer names it, and its CA is the pinned one.
fn check_answer(token: &Token, answer: &EstablishAnswer) -> Result<(), PeeringError> {
    let protocol = |reason: String| PeeringError::Protocol { issuer: token.issuer.clone(), reason };
    if answer.cluster != token.issuer {
        return Err(protocol(format!("it calls itself cluster {}", answer.cluster)));
    }
    let (_, certs) = pem_files::ca_roots_from_pem(&answer.ca_pem).map_err(protocol)?;
    if certs.len() != 1 || super::tls::cert_sha256(&certs[0]) != token.ca_sha256 {
        return Err(protocol("its CA certificate is not the one the token pins".into()));
    }
    Ok(())
}

/// One attempt at `address`, ended at `deadline`. Until the request is handed to HTTP, a
/// failure is [`PeeringError::Unreachable`] or [`PeeringError::Pin`] (nothing was sent); from
/// then on a lost answer is [`PeeringError::NoAnswer`] (the issuer may have accepted).
async fn attempt(
    client: Arc<rustls::ClientConfig>,
    issuer: &ClusterId,
    address: &str,
    body: Bytes,
    deadline: tokio::time::Instant,
) -> Result<EstablishAnswer, PeeringError> {
    let unreachable = |reason: String| PeeringError::Unreachable {
        issuer: issuer.clone(),
        address: address.to_owned(),
        reason,
    };
    let no_answer = |reason: String| PeeringError::NoAnswer {
        issuer: issuer.clone(),
        address: address.to_owned(),
        reason,
    };
    let late = || format!("no answer within {}s", ATTEMPT_TIMEOUT.as_secs());
    let protocol = |reason: String| PeeringError::Protocol { issuer: issuer.clone(), reason };
    let connect = async {
        let tcp = TcpStream::connect(address).await.map_err(|e| unreachable(e.to_string()))?;
        tcp.set_nodelay(true).ok();
        // The pin decides here, before any byte of the request exists on the wire.
        TlsConnector::from(client).connect(server_name(issuer), tcp).await.map_err(|e| {
            PeeringError::Pin {
                issuer: issuer.clone(),
                address: address.to_owned(),
                reason: e.to_string(),
            }
        })
    };
    let stream = (tokio::time::timeout_at(deadline, connect).await)
        .unwrap_or_else(|_| Err(unreachable(late())))?;
    let exchange = exchange(stream, issuer, body, &no_answer, &protocol);
    tokio::time::timeout_at(deadline, exchange).await.unwrap_or_else(|_| Err(no_answer(late())))
}

/// The request and its answer on a pinned connection: the token leaves here.
async fn exchange(
    stream: tokio_rustls::client::TlsStream<TcpStream>,
    issuer: &ClusterId,
    body: Bytes,
    no_answer: &(dyn Fn(String) -> PeeringError + Sync),
    protocol: &(dyn Fn(String) -> PeeringError + Sync),
) -> Result<EstablishAnswer, PeeringError> {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| protocol(format!("HTTP: {e}")))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = hyper::Request::post(ESTABLISH_PATH)
        .header(hyper::header::HOST, issuer.as_str())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))
        .expect("a valid request");
    let resp = sender.send_request(req).await.map_err(|e| no_answer(format!("HTTP: {e}")))?;
    let status = resp.status();
    let body = Limited::new(resp.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| no_answer(format!("answer: {e}")))?
        .to_bytes();
    match status {
        StatusCode::OK => serde_json::from_slice(&body)
            .map_err(|e| protocol(format!("not an establish answer: {e}"))),
        StatusCode::FORBIDDEN => Err(PeeringError::Refused {
            issuer: issuer.clone(),
            reason: String::from_utf8_lossy(&body).trim().to_owned(),
        }),
        other => Err(protocol(format!("{other}: {}", String::from_utf8_lossy(&body).trim()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn the_attempt_budget_takes_ten_a_minute_and_frees_one_as_the_oldest_ages_out() {
        let mut b = AttemptBudget::default();
        let t0 = Instant::now();
        for i in 0..ATTEMPTS_PER_WINDOW as u64 {
            assert_eq!(b.take(t0 + Duration::from_secs(i)), Ok(()), "attempt {i}");
        }
        // The eleventh within the minute is refused, and told when the oldest ages out.
        let t = t0 + Duration::from_secs(20);
        assert_eq!(b.take(t), Err(Duration::from_secs(40)));
        // A refusal counts nothing: at 60 s exactly one attempt is free again, not two.
        let t = t0 + ATTEMPT_WINDOW;
        assert_eq!(b.take(t), Ok(()));
        assert!(b.take(t).is_err());
    }

    #[test]
    fn requests_not_taken_are_warned_about_once_a_minute_with_their_count() {
        let mut b = AttemptBudget::default();
        let t0 = Instant::now();
        assert_eq!(b.note_not_taken(t0), Some(1), "the first one is told at once");
        for i in 1..=500 {
            assert_eq!(b.note_not_taken(t0 + Duration::from_millis(i * 100)), None);
        }
        // 50 s of refusals later, nothing; at 60 s, one line counting all of them and this one.
        assert_eq!(b.note_not_taken(t0 + ATTEMPT_WINDOW), Some(501));
        assert_eq!(b.note_not_taken(t0 + ATTEMPT_WINDOW), None);
    }
}
