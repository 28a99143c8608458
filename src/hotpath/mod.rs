//! The hot path: the local encryption service the router/archiver calls for every archived
//! message, and the client library the router links.
//!
//! - `frame`: the wire format (length-prefixed binary frames), pure encode/decode.
//! - `session`: one connection's protocol logic, sans I/O.
//! - `keys`: the key source the state machine's `Effect::KeyRingChanged` updates, and the
//!   invocation-counter reservations persisted ahead of use.
//! - `server`: the listeners (`bind_unix`, `serve`, `serve_all`).
//! - `connection`: one connection: a thread that reads, answers and writes with blocking I/O,
//!   and a task that keeps its deadlines and the listener's shutdown.
//! - `tls`: TCP with mutual TLS for routers on other nodes: `[hotpath.tcp]`, the server's
//!   verifier (a node certificate of this cluster), the client's endpoint URL.
//! - `client`: the router's async, pipelined, reconnecting client with a bounded queue.
//!
//! Invariants (detailed in each module and in docs/hotpath.md): every request gets exactly
//! one answer — ciphertexts, "encryption is off", or an explicit error; a key ring change
//! reaches new batches atomically without pausing sealing; nothing is sealed beyond a
//! persisted counter reservation; an unreachable daemon never looks like "encryption off".
//! Decryption is not offered on this socket. Over TCP, only a client whose certificate chains
//! to the cluster's CA and names one of its nodes gets past the TLS handshake.

mod client;
mod connection;
pub mod frame;
mod keys;
mod server;
pub mod session;
mod tls;

pub use client::{
    BlindIndexes, Client, ClientConfig, ClientError, Encrypted, Pending, QueuePolicy, Rewrapped,
    RewrappedRecord, SealedBatch,
};
pub use connection::CONNECTION_THREAD;
pub use keys::{KeyError, KeySource, KeyStatus, MemoryReservations, ReservationStore};
pub(crate) use server::REWRAP_MAX_CONNECTIONS;
pub use server::{
    RewrapSocketConfig, ServerConfig, ServerError, TcpTls, UnixSocketConfig, bind_unix, serve,
    serve_all, serve_with,
};
pub use tls::{Endpoint, EndpointError, TcpConfig, TlsEndpoint, server_config};
