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

/// A record appended by [`append`], which [`Mark::undo`] takes back if its act then fails.
#[derive(Debug)]
#[must_use = "undo the record if the act it records is not done"]
pub(crate) struct Mark {
    file: PathBuf,
    len_before: u64,
}

impl Mark {
    /// Cuts the file back to where it was before the record (the caller still holds the token
    /// store's lock, so the daemon cannot have chained it): an act that was not done leaves no
    /// record saying it was. Best effort; a failure is logged.
    pub(crate) fn undo(self) {
        if let Err(e) = cut(&self.file, self.len_before) {
            tracing::warn!(file = %self.file.display(), error = %e,
                "could not take back the pending audit record of a change that failed; the daemon \
                 will record it as done");
        }
    }
}

fn cut(file: &Path, len: u64) -> std::io::Result<()> {
    let f = std::fs::OpenOptions::new().write(true).open(file)?;
    f.set_len(len)?;
    f.sync_data()
}

/// Appends the record of an act about to be done on the host (actor `local`) to the pending
/// file of `dir`, durably. An error means the act must not be done, and leaves the file as it
/// was.
pub(crate) fn append(
    dir: &Path,
    action: &str,
    target: &str,
    details: Details,
    at_unix_ms: u64,
) -> Result<Mark, AuditError> {
    let p = Pending {
        id: hex::encode(crate::crypto::random::os_bytes::<8>()),
        at_unix_ms,
        uid: rustix::process::getuid().as_raw(),
        action: action.into(),
        target: target.into(),
        details,
    };
    let file = path(dir);
    let before = std::fs::read(&file).ok();
    let existed = before.is_some();
    let len_before = before.as_ref().map_or(0, |b| b.len() as u64);
    // After a line a crashed CLI tore, start on a line of our own.
    let torn = before.is_some_and(|b| b.last().is_some_and(|c| *c != b'\n'));
    let mut line = if torn { vec![b'\n'] } else { Vec::new() };
    serde_json::to_writer(&mut line, &p).expect("a pending record serializes");
    line.push(b'\n');
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(&file)
        .map_err(io("open", &file))?;
    let written = f.write_all(&line).map_err(io("write", &file)).and_then(|()| {
        f.sync_data().map_err(io("sync", &file))?;
        if !existed {
            sync_dir(dir).map_err(io("sync the directory of", &file))?;
        }
        Ok(())
    });
    let mark = Mark { file, len_before };
    match written {
        Ok(()) => Ok(mark),
        Err(e) => {
            mark.undo();
            Err(e)
        }
    }
}

/// The pending records of `dir`, as records to chain (actor `local`, with `details.via`,
/// `details.id`, `details.uid` and `details.at`), oldest first. A line the CLI tore (it died
/// while writing it, so its act was not done: the JSON ends early) is left out with a warning;
/// any other line that is not a record is an error, since it may stand for an act that was
/// done.
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
            Err(e) if !e.is_eof() => {
                return Err(AuditError::Pending { path: file, line: n + 1, reason: e.to_string() });
            }
            Err(e) => {
                tracing::warn!(file = %file.display(), line = n + 1, error = %e,
                    "a pending audit record that is not whole (torn by a crash of the CLI, whose act was then not done) is left out");
                continue;
            }
        };
        let mut r = Record::new(Actor::Local, p.action, Outcome::Ok)
            .target(p.target)
            .detail("via", VIA_LOCAL_CLI)
            .detail("id", p.id)
            .detail("uid", p.uid)
            .detail("at", super::rfc3339(p.at_unix_ms));
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
    // Chained: from here on a failure must not make the caller chain them again.
    let removed = std::fs::remove_file(&file).and_then(|()| sync_dir(dir));
    if let Err(e) = removed.or_else(|e| cut(&file, 0).map_err(|_| e)) {
        tracing::warn!(file = %file.display(), error = %e,
            "chained the pending audit records but could not remove them; they will be chained \
             again (with the same ids) at the next change; remove the file");
    }
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
        let _ = append(d.path(), "token.create", "alice", details("viewer"), 1_796_000_000_000)
            .unwrap();
        let _ =
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
        let _ = append(d.path(), "token.create", "alice", details("viewer"), 1).unwrap();
        let mut f = std::fs::OpenOptions::new().append(true).open(d.path().join(FILE)).unwrap();
        f.write_all(br#"{"id":"00","at_unix_ms":2,"#).unwrap();
        let _ = append(d.path(), "token.revoke", "alice", details("viewer"), 3).unwrap();
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

    #[test]
    fn an_undone_record_is_gone_and_a_line_that_is_no_record_stops_the_drain() {
        let d = tempfile::tempdir().unwrap();
        let _ = append(d.path(), "token.create", "alice", details("viewer"), 1).unwrap();
        let kept = std::fs::read(d.path().join(FILE)).unwrap();
        append(d.path(), "token.create", "bob", details("viewer"), 2).unwrap().undo();
        assert_eq!(std::fs::read(d.path().join(FILE)).unwrap(), kept, "bob's record taken back");
        // A whole line that is not a record may stand for an act: never skipped.
        let mut f = std::fs::OpenOptions::new().append(true).open(d.path().join(FILE)).unwrap();
        f.write_all(b"{\"id\":\"00\",\"surprise\":1}\n").unwrap();
        let e = drain(d.path(), |_| Ok(())).unwrap_err().to_string();
        assert!(e.contains("audit.pending line 2"), "{e}");
        assert!(d.path().join(FILE).exists(), "nothing chained, nothing removed");
    }
}
