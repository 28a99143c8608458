//! The tamper-evident audit trail: who did what, when, from where, and how it ended.
//!
//! Records are JSON lines in `state_dir/audit.log` (rotated to `audit.log.N` by size, see
//! [`log`]); each carries its sequence number and the SHA-256 of the previous record's line,
//! so the records form a hash chain ([`chain`] verifies it). The chain head (sequence and hash
//! of the last record) is kept sealed with the node key in `state_dir/audit.head`, written
//! and fsynced with every batch of records, so a truncated tail, a deleted or edited last
//! record, and a whole file replaced by a fresh valid chain are detected too. The format is in
//! docs/formats.md, byte for byte, with a worked example.
//!
//! Invariants:
//! - a record is on disk (fsynced, and the head with it) before the act it describes takes
//!   effect or is answered; when it cannot be written the act is refused and nothing changes
//!   (the daemon's core and the admin API hold to this; see docs/behaviour.md, "Audit");
//! - a record never holds a password, a token, key material or plaintext: [`Record`] has no
//!   field that could take one, and its callers put only names, ids, versions and public-key
//!   fingerprints in `details`;
//! - the hash of a record is the SHA-256 of its line's bytes exactly as stored (without the
//!   line feed): no canonical form to get wrong, a few lines of Python check it.

pub(crate) mod acts;
pub mod chain;
pub(crate) mod log;
pub(crate) mod pending;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub(crate) use log::{Audit, AuditError, AuditSection};

/// Who did it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Actor {
    /// An administrator, by the name and role of the token they presented.
    Admin { name: String, role: String },
    /// A request to the admin API without a valid token (none, or a wrong one).
    Anonymous,
    /// A peer cluster, by the id in its TLS certificate.
    Peer { cluster: String },
    /// The daemon itself: start-up, timers (automatic rotation), the configuration file.
    Local,
}

impl Actor {
    /// What `imcrypt audit show --actor` matches and its table prints: the administrator's
    /// name, the peer's cluster id, `anonymous` or `local`.
    pub fn label(&self) -> &str {
        match self {
            Actor::Admin { name, .. } => name,
            Actor::Anonymous => "anonymous",
            Actor::Peer { cluster } => cluster,
            Actor::Local => "local",
        }
    }
}

/// How the act ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Done (or, for a peer's state, accepted).
    Ok,
    /// Refused: bad input, wrong password or token, not allowed in this state, rate limited.
    Refused,
    /// Tried and failed for a reason of this host (a write, an export).
    Failed,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Outcome::Ok => "ok",
            Outcome::Refused => "refused",
            Outcome::Failed => "failed",
        })
    }
}

/// Details of a record: names, ids, versions, fingerprints; never a secret.
pub type Details = serde_json::Map<String, serde_json::Value>;

/// What a caller records; the log adds the sequence number, the previous hash, the time and
/// the cluster ([`Entry`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub actor: Actor,
    /// Where the request came from (`ip:port` of an admin client); `None` for peers (their
    /// id is the actor) and the daemon itself.
    pub source: Option<String>,
    /// What was done, e.g. `key.download` (docs/formats.md lists every action).
    pub action: String,
    /// What it was done to (a peer's id, a node's id, an alarm's name), or empty.
    pub target: String,
    pub result: Outcome,
    /// Why it was refused or failed, in the words the requester was answered with.
    pub reason: Option<String>,
    pub details: Details,
}

impl Record {
    pub fn new(actor: Actor, action: impl Into<String>, result: Outcome) -> Self {
        Self {
            actor,
            source: None,
            action: action.into(),
            target: String::new(),
            result,
            reason: None,
            details: Details::new(),
        }
    }

    pub fn target(mut self, target: impl Into<String>) -> Self {
        self.target = target.into();
        self
    }

    pub fn source(mut self, source: Option<String>) -> Self {
        self.source = source;
        self
    }

    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    pub fn detail(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.details.insert(key.to_owned(), value.into());
        self
    }
}

/// Who asked for a command, and what the asker knows that the record needs (a download's
/// recipient fingerprint): carried with the command to the core, which writes the record.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub actor: Actor,
    pub source: Option<String>,
    pub details: Details,
}

impl Request {
    /// The daemon itself (start-up, a reload, a test driving the daemon in-process).
    pub fn local() -> Self {
        Self { actor: Actor::Local, source: None, details: Details::new() }
    }
}

/// One line of `audit.log`, in the order its fields are written (docs/formats.md).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// 1 for the first record ever written here, then one more for each record.
    pub seq: u64,
    /// Lowercase hex SHA-256 of the previous record's line; 64 zeros for seq 1.
    pub prev: String,
    /// RFC 3339, UTC, milliseconds.
    pub time: String,
    /// The cluster whose daemon wrote it.
    pub cluster: String,
    pub actor: Actor,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    pub action: String,
    pub target: String,
    pub result: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Details::is_empty")]
    pub details: Details,
}

impl Entry {
    pub(crate) fn new(seq: u64, prev: &Hash, time_ms: u64, cluster: &str, r: Record) -> Self {
        Self {
            seq,
            prev: hex::encode(prev),
            time: rfc3339(time_ms),
            cluster: cluster.to_owned(),
            actor: r.actor,
            source: r.source,
            action: r.action,
            target: r.target,
            result: r.result,
            reason: r.reason,
            details: r.details,
        }
    }

    /// The line as written, without its line feed: compact JSON, fields in declaration order.
    pub fn line(&self) -> String {
        serde_json::to_string(self).expect("an audit entry serializes")
    }
}

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// The previous hash of the first record.
pub const GENESIS: Hash = [0; 32];

/// The hash of a record: SHA-256 of its line's bytes (without the line feed).
pub fn hash_line(line: &[u8]) -> Hash {
    Sha256::digest(line).into()
}

/// `ms` since the Unix epoch as RFC 3339, UTC, with milliseconds.
fn rfc3339(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_compact_json_in_the_documented_order_and_reads_back() {
        let r = Record::new(
            Actor::Admin { name: "alice".into(), role: "admin".into() },
            "key.download",
            Outcome::Ok,
        )
        .source(Some("127.0.0.1:40000".into()))
        .detail("versions", vec![1u32, 2]);
        let e = Entry::new(7, &GENESIS, 1_796_000_000_000, "a", r);
        let line = e.line();
        assert!(line.starts_with("{\"seq\":7,\"prev\":\"0000"), "{line}");
        let keys = ["\"time\"", "\"cluster\"", "\"actor\"", "\"source\"", "\"action\""];
        let pos: Vec<usize> = keys.iter().map(|k| line.find(k).unwrap()).collect();
        assert!(pos.windows(2).all(|w| w[0] < w[1]), "{line}");
        assert!(!line.contains("\"reason\""), "absent fields are left out: {line}");
        let back: Entry = serde_json::from_str(&line).unwrap();
        assert_eq!(back, e);
        assert_eq!(back.line(), line, "what is read writes back byte for byte");
    }
}
