//! Records of acts done beside the daemon, waiting for the daemon to chain them.
//!
//! `imcrypt admin token create|revoke --local` changes the token store on the daemon's host,
//! but only the daemon writes the chain (it alone holds the head in memory; two writers would
//! fork it). So the CLI appends the act's record to `state_dir/audit.pending` (JSON lines,
//! fsynced) before it saves the change, under the token store's lock; the daemon moves the
//! pending records into the chain, under the same lock, before it uses a token store that
//! changed (at its next request, or at start), and then removes the file.
//!
//! Invariants: a `--local` token change is never used by the daemon before its record is in
//! the chain (no record, no act); a pending record is chained once (removed right after it is
//! written; a crash in between chains it again at the next drain, with the same `id`, which is
//! how an auditor tells the two copies apart from two acts); a record holds what a chained one
//! may hold, never a token.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Actor, AuditError, Details, Outcome, Record};
use crate::store::sync_dir;

/// The pending records' file in the state directory.
pub(crate) const FILE: &str = "audit.pending";

/// What `details.via` says of a chained pending record.
pub(crate) const VIA_LOCAL_CLI: &str = "imcrypt admin token --local";

/// One act done beside the daemon, as the CLI writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Pending {
    /// Random, 16 hex digits: the same act chained twice (a crash) shows the same id.
    id: String,
    /// When the act was done (the chained record's `time` is when the daemon chained it).
    at_unix_ms: u64,
    /// The Unix user id that ran the CLI.
    uid: u32,
    action: String,
    target: String,
    details: Details,
}

fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> AuditError + use<> {
    let path = path.to_owned();
    move |source| AuditError::Io { action, path, source }
}

/// Appends the record of an act about to be done on the host (actor `local`) to the pending
/// file of `dir`, durably. An error means the act must not be done.
pub(crate) fn append(
    dir: &Path,
    action: &str,
    target: &str,
    details: Details,
    at_unix_ms: u64,
) -> Result<(), AuditError> {
    let p = Pending {
        id: hex::encode(crate::crypto::random::os_bytes::<8>()),
        at_unix_ms,
        uid: rustix::process::getuid().as_raw(),
        action: action.into(),
        target: target.into(),
        details,
    };
    let file = path(dir);
    let existed = file.exists();
    // After a line a crashed CLI tore, start on a line of our own.
    let torn = std::fs::read(&file).is_ok_and(|b| b.last().is_some_and(|c| *c != b'\n'));
    let mut line = if torn { vec![b'\n'] } else { Vec::new() };
    serde_json::to_writer(&mut line, &p).expect("a pending record serializes");
    line.push(b'\n');
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(&file)
        .map_err(io("open", &file))?;
    f.write_all(&line).map_err(io("write", &file))?;
    f.sync_data().map_err(io("sync", &file))?;
    if !existed {
        sync_dir(dir).map_err(io("sync the directory of", &file))?;
    }
    Ok(())
}

/// The pending records of `dir`, as records to chain (actor `local`, with `details.via`,
/// `details.id`, `details.uid` and `details.at`), oldest first. A line the CLI tore (it died
/// while writing it, so its act was not done) is left out with a warning.
fn read(dir: &Path) -> Result<Vec<Record>, AuditError> {
    let file = path(dir);
    let bytes = match std::fs::read(&file) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io("read", &file)(e)),
    };
    let mut out = Vec::new();
    let whole = bytes.iter().rposition(|b| *b == b'\n').map_or(&[][..], |end| &bytes[..end]);
    for (n, line) in whole.split(|b| *b == b'\n').enumerate().filter(|(_, l)| !l.is_empty()) {
        let p: Pending = match serde_json::from_slice(line) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(file = %file.display(), line = n + 1, error = %e,
                    "a pending audit record that is not whole (torn by a crash of the CLI, whose act was then not done) is left out");
                continue;
            }
        };
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(p.at_unix_ms);
        let mut r = Record::new(Actor::Local, p.action, Outcome::Ok)
            .target(p.target)
            .detail("via", VIA_LOCAL_CLI)
            .detail("id", p.id)
            .detail("uid", p.uid)
            .detail("at", humantime::format_rfc3339_millis(at).to_string());
        r.details.extend(p.details);
        out.push(r);
    }
    Ok(out)
}

/// Moves the pending records of `dir` into the chain with `write`, then removes the file.
/// Returns how many were chained. The caller holds the token store's lock, so no record is
/// appended in between; on an error nothing is removed and the next call tries again.
pub(crate) fn drain(
    dir: &Path,
    write: impl FnOnce(Vec<Record>) -> Result<(), AuditError>,
) -> Result<usize, AuditError> {
    let records = read(dir)?;
    let file = path(dir);
    if records.is_empty() {
        return match std::fs::remove_file(&file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("remove", &file)(e)),
            _ => Ok(0),
        };
    }
    let n = records.len();
    write(records)?;
    std::fs::remove_file(&file).map_err(io("remove", &file))?;
    sync_dir(dir).map_err(io("sync the directory of", &file))?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn details(role: &str) -> Details {
        let mut d = Details::new();
        d.insert("role".into(), role.into());
        d
    }

    #[test]
    fn appended_records_are_chained_once_in_order_with_who_and_when() {
        let d = tempfile::tempdir().unwrap();
        append(d.path(), "token.create", "alice", details("viewer"), 1_796_000_000_000).unwrap();
        append(d.path(), "token.revoke", "bob", details("admin"), 1_796_000_001_000).unwrap();
        let mut chained = Vec::new();
        let n = drain(d.path(), |r| {
            chained.extend(r);
            Ok(())
        })
        .unwrap();
        assert_eq!(n, 2);
        assert_eq!(chained[0].action, "token.create");
        assert_eq!(chained[0].target, "alice");
        assert_eq!(chained[0].actor, Actor::Local);
        assert_eq!(chained[0].details["via"], VIA_LOCAL_CLI);
        assert_eq!(chained[0].details["role"], "viewer");
        assert_eq!(chained[0].details["at"], "2026-11-30T00:53:20.000Z");
        assert_eq!(chained[0].details["uid"], rustix::process::getuid().as_raw());
        assert_eq!(chained[1].target, "bob");
        assert!(!d.path().join(FILE).exists(), "removed once chained");
        assert_eq!(drain(d.path(), |_| panic!("nothing is pending")).unwrap(), 0);
    }

    #[test]
    fn a_failed_chain_write_keeps_them_for_the_next_try_and_a_torn_line_is_left_out() {
        let d = tempfile::tempdir().unwrap();
        append(d.path(), "token.create", "alice", details("viewer"), 1).unwrap();
        let mut f = std::fs::OpenOptions::new().append(true).open(d.path().join(FILE)).unwrap();
        f.write_all(br#"{"id":"00","at_unix_ms":2,"#).unwrap();
        append(d.path(), "token.revoke", "alice", details("viewer"), 3).unwrap();
        let failed = drain(d.path(), |_| {
            Err(AuditError::Io {
                action: "write",
                path: "audit.log".into(),
                source: std::io::Error::other("disk full"),
            })
        });
        assert!(failed.is_err());
        assert!(d.path().join(FILE).exists(), "kept for the next try");
        let mut chained = Vec::new();
        drain(d.path(), |r| {
            chained.extend(r);
            Ok(())
        })
        .unwrap();
        let acts: Vec<&str> = chained.iter().map(|r| r.action.as_str()).collect();
        assert_eq!(acts, ["token.create", "token.revoke"], "the torn line is not an act");
    }
}
