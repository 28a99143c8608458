//! The compliance database: the reference archiver (`imcrypt archive`), the schema it writes on
//! PostgreSQL, SQL Server and SQLite (the default when no server is named: a file), the viewer
//! that reads it back (`imcrypt view`), and the probe the daemon uses to report eligibility
//! and raise `MAcomplianceDbDown`. docs/archive.md is the
//! normative description (schema, blind indexes, associated data, test setup).
//!
//! Invariants:
//! - A database administrator's `SELECT` on an encrypted row shows no message body and no
//!   participant: bodies and participants are sealed in the record; participants and rooms
//!   appear only as blind indexes (HMAC-SHA256 under a key derived from the domain key).
//! - Each record's associated data binds it to its message id and recipient (the row's
//!   unique key), so a ciphertext copied into another row does not open.
//! - Accepted events are never dropped (see `writer`); refusals are explicit.

pub mod db;
pub(crate) mod event;
mod postgres;
pub mod rewrap;
mod schema;
mod sqlite;
mod sqlserver;
mod tls;
mod url;
pub mod view;
mod writer;

use std::path::PathBuf;

pub use db::{Db, DbError, ProbeResult, probe};
pub(crate) use tls::is_loopback;
pub use url::DbUrl;
pub(crate) use url::{DEFAULT_DB_URL, redact};
pub use view::{RowFailure, ViewFilter, ViewedRow, query_plan, view, view_batches};
pub use writer::{Ack, Archiver, ArchiverConfig, HotpathOutages, Outcome};
pub(crate) use writer::{DEFAULT_BATCH_ROWS, serve_lines, serve_socket};

/// Why the archiver or the viewer stopped.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("cannot listen for IM events on {path}: {source}")]
    Listen { path: PathBuf, source: std::io::Error },
    #[error("reading events or writing acknowledgements failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Keys(String),
    #[error("{failed} of {seen} rows could not be shown (see above)")]
    Unreadable { failed: usize, seen: usize },
    #[error("{0} events were refused or failed (see the acknowledgements)")]
    NotArchived(u64),
    /// The rewrap job could not go on (the daemon's rewrap socket, encryption off).
    #[error("rewrap: {0}")]
    Rewrap(String),
    #[error("{0} rows could not be rewrapped (see above); they stay as they were")]
    NotRewrapped(usize),
}
