//! Why the daemon cannot start, or cannot carry out a request.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use crate::cluster::{CommandError, StateError};
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
    #[error("the daemon has stopped")]
    Stopped,
    /// The change was decided but could not be written to disk; the daemon stops, and after a
    /// restart the change is not there.
    #[error("the change could not be saved ({0}); the daemon stops and the change is lost")]
    NotSaved(#[source] Arc<StoreError>),
    #[error(transparent)]
    Hotpath(#[from] crate::hotpath::ServerError),
    #[error("hot path: {0}")]
    HotpathKeys(#[from] crate::hotpath::KeyError),
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error(transparent)]
    Admin(#[from] crate::admin::AdminError),
}
