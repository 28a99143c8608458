//! Why the daemon cannot start, or cannot carry out a request.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use crate::cluster::StateError;
use crate::peer::tls::TlsError;
use crate::store::NodeKeyError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot create state directory {path}: {source}")]
    StateDir { path: PathBuf, source: std::io::Error },
    #[error(
        "{state} exists but its node key {key} is missing; restore the node key from the backup \
         that holds this state"
    )]
    NodeKeyMissing { state: PathBuf, key: PathBuf },
    #[error(transparent)]
    NodeKey(#[from] NodeKeyError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the state file does not fit this configuration: {0}")]
    State(#[from] StateError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Listen { what: &'static str, addr: SocketAddr, source: std::io::Error },
    /// The daemon stopped on its own (its state could not be written; the log says why).
    #[error("the daemon has stopped")]
    Stopped,
    /// The state reconciled with the configuration could not be written at start.
    #[error("the state could not be saved at start ({0})")]
    NotSaved(#[source] Arc<StoreError>),
    /// The audit trail cannot be opened (it does not match its sealed head, or cannot be
    /// read) or written at start.
    #[error("audit trail: {0}")]
    Audit(#[source] Arc<crate::audit::AuditError>),
    #[error(transparent)]
    Hotpath(#[from] crate::hotpath::ServerError),
    #[error("hot path: {0}")]
    HotpathKeys(#[from] crate::hotpath::KeyError),
    #[error(transparent)]
    Admin(#[from] crate::admin::AdminError),
    /// The listeners' caps do not fit in the descriptor limit (names the keys).
    #[error(transparent)]
    Descriptors(#[from] crate::caps::DescriptorError),
}
