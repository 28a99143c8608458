//! The intercluster link: HTTPS/JSON over mutually authenticated TLS 1.3. One endpoint,
//! `POST /v1/peer/message`, carries a `cluster::PeerMessage`; the sender's identity is the
//! DNS name in its client certificate, never a field of the message. A connection without a
//! client certificate is served `POST /v1/peer/establish` only: a cluster presenting a
//! peering token (`establish`, `token`).

pub(crate) mod backoff;
pub(crate) mod client;
pub mod establish;
pub(crate) mod server;
pub mod tls;
pub mod token;
