//! Writing the audit trail: `state_dir/audit.log`, its rotated files `audit.log.N` (N grows:
//! `audit.log.1` is the oldest), and the sealed chain head `state_dir/audit.head`.
//!
//! Invariants:
//! - [`AuditLog::append`] returns `Ok` only once every record of the batch is in `audit.log`,
//!   fdatasynced, and the head naming the last of them is sealed and written crash-safely
//!   (`store::SealedFile`); on any error the file is cut back to where it was, the in-memory
//!   chain is unchanged, and the caller refuses the act;
//! - the file is opened for every batch (never held open), so a log that was moved, removed or
//!   made unwritable behind the daemon's back is noticed at the next record, not written into
//!   a file nobody reads;
//! - rotation moves `audit.log` to the next `audit.log.N` before a batch that would take it
//!   past `rotate_bytes`; the chain goes on across files (the first record of the new file
//!   links to the last of the old one);
//! - at open, the chain's tail must match the sealed head: records past the head (a crash
//!   between a record's fsync and the head's) are adopted with a warning; anything else (a
//!   head without its records, records without a head, another record under the head's
//!   number) stops the start, rather than extending a chain that is already broken.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::chain::{ChainError, Verifier, files_in, rotated_number};
use super::{Entry, GENESIS, Hash, Record, hash_line};
use crate::crypto::seal::{NodeKey, Purpose};
use crate::store::{SealedFile, StoreError, sync_dir};

/// The current audit file's name in the state directory.
pub(crate) const FILE: &str = "audit.log";
/// The sealed chain head's name in the state directory.
pub(crate) const HEAD_FILE: &str = "audit.head";

/// `[audit]`: the audit trail (docs/operations.md).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuditSection {
    /// Write the audit trail. Off only for measuring its cost (the daemon warns at start).
    #[serde(default = "yes")]
    pub(crate) enabled: bool,
    /// Rotate `audit.log` before it grows past this many bytes.
    #[serde(default = "default_rotate_bytes", deserialize_with = "rotate_bytes")]
    pub(crate) rotate_bytes: u64,
}

impl Default for AuditSection {
    fn default() -> Self {
        Self { enabled: true, rotate_bytes: default_rotate_bytes() }
    }
}

fn yes() -> bool {
    true
}

pub(crate) fn default_rotate_bytes() -> u64 {
    64 * 1024 * 1024
}

/// The smallest `rotate_bytes`: a file must hold at least a few records.
pub(crate) const MIN_ROTATE_BYTES: u64 = 65536;

fn rotate_bytes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let n = u64::deserialize(d)?;
    if n < MIN_ROTATE_BYTES {
        return Err(serde::de::Error::custom(format!(
            "audit.rotate_bytes: {n} is too small; at least {MIN_ROTATE_BYTES}"
        )));
    }
    Ok(n)
}

/// Why the audit trail cannot be written or opened.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot {action} audit file {path}: {source}")]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
    #[error("audit chain head: {0}")]
    Head(#[from] StoreError),
    #[error(
        "audit file {path} is {found} bytes, shorter than the {expected} the daemon wrote: it \
         was truncated or replaced behind the daemon's back; run `imcrypt audit verify --config …`"
    )]
    Shrunk { path: PathBuf, found: u64, expected: u64 },
    #[error(
        "{path} line {line} is not a pending audit record ({reason}): the token change made with \
         `imcrypt admin token --local` that it may stand for is not used until this is settled; \
         look at the line, then fix or remove it"
    )]
    Pending { path: PathBuf, line: usize, reason: String },
    #[error(
        "the audit trail in {dir} does not match its sealed head ({reason}); run `imcrypt audit \
         verify --config …` to see which record, keep the files as evidence, then move \
         audit.log* and audit.head aside to start a new chain"
    )]
    Broken { dir: PathBuf, reason: String },
}

/// The sealed chain head: the last record's number and hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Head {
    pub(crate) seq: u64,
    #[serde(with = "hex::serde")]
    pub(crate) hash: Hash,
}

/// The head file of `dir`, sealed with the node key.
pub(crate) fn head_file(dir: &Path, node_key: &NodeKey) -> SealedFile {
    SealedFile::new(dir.join(HEAD_FILE), node_key, Purpose::AuditHead)
}

/// The writer of one daemon's audit trail.
pub(crate) struct AuditLog {
    dir: PathBuf,
    cluster: String,
    rotate_bytes: u64,
    head_file: SealedFile,
    /// The last record written: its number and hash (`0`, [`GENESIS`] before the first).
    seq: u64,
    hash: Hash,
    /// The length of `audit.log` after the last batch.
    len: u64,
}

impl AuditLog {
    /// Opens the trail in `dir` and checks its tail against the sealed head.
    pub(crate) fn open(
        dir: &Path,
        cluster: &str,
        node_key: &NodeKey,
        rotate_bytes: u64,
    ) -> Result<Self, AuditError> {
        let head_file = head_file(dir, node_key);
        let head: Option<Head> = head_file.load()?;
        let broken = |reason: String| AuditError::Broken { dir: dir.to_owned(), reason };
        let files = files_in(dir).map_err(|e| broken(e.to_string()))?;
        let current = dir.join(FILE);
        let len = match std::fs::metadata(&current) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(source) => return Err(AuditError::Io { action: "read", path: current, source }),
        };
        let mut log = Self {
            dir: dir.to_owned(),
            cluster: cluster.to_owned(),
            rotate_bytes,
            head_file,
            seq: 0,
            hash: GENESIS,
            len,
        };
        // Only the newest file with records is read: older ones are checked by `audit verify`.
        let Some(newest) =
            files.iter().rev().find(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 0))
        else {
            return match head {
                None => Ok(log),
                Some(h) => Err(broken(format!(
                    "the head is at record seq {} but there is no audit file with records",
                    h.seq
                ))),
            };
        };
        let Some(h) = head else {
            return Err(broken(format!(
                "{} holds records but there is no {HEAD_FILE}",
                newest.display()
            )));
        };
        let mut bytes = std::fs::read(newest).map_err(|source| AuditError::Io {
            action: "read",
            path: newest.clone(),
            source,
        })?;
        // A last line without its line feed is a record whose write a crash (a power cut) tore:
        // its act never took effect (records are fsynced before it) and nobody was answered.
        // It is dropped; every whole record must still match the head below.
        if *newest == current && !bytes.ends_with(b"\n") {
            let keep = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            tracing::warn!(
                file = %current.display(),
                bytes = bytes.len() - keep,
                "a partly written audit record at the end of the trail (a crash during its \
                 write) is dropped"
            );
            let f = std::fs::OpenOptions::new().write(true).open(&current);
            f.and_then(|f| f.set_len(keep as u64).and_then(|()| f.sync_data())).map_err(
                |source| AuditError::Io { action: "truncate", path: current.clone(), source },
            )?;
            bytes.truncate(keep);
            log.len = keep as u64;
        }
        let mut v = Verifier::new();
        v.push_bytes(&bytes, newest).map_err(|e| broken(e.to_string()))?;
        let s = v.finish().map_err(|e| broken(e.to_string()))?;
        // The head must be one of these records, or the one right before the first of them.
        let mut v = Verifier::with_head(h.seq, h.hash);
        v.push_bytes(&bytes, newest).map_err(|e| broken(e.to_string()))?;
        match v.finish() {
            Ok(_) => {}
            Err(ChainError::PastHead { head, last }) => tracing::warn!(
                head,
                last,
                "audit records past the sealed head (written just before a crash?) adopted"
            ),
            Err(e) => return Err(broken(e.to_string())),
        }
        (log.seq, log.hash) = (s.last, s.last_hash);
        if s.last != h.seq {
            log.write_head()?;
        }
        Ok(log)
    }

    /// The last record's number.
    #[cfg(test)]
    pub(crate) fn seq(&self) -> u64 {
        self.seq
    }

    fn path(&self) -> PathBuf {
        self.dir.join(FILE)
    }

    fn write_head(&self) -> Result<(), AuditError> {
        Ok(self.head_file.save(&Head { seq: self.seq, hash: self.hash })?)
    }

    /// Appends `records` at `time_ms` (Unix milliseconds) durably, or changes nothing. Returns
    /// the entries written.
    pub(crate) fn append(
        &mut self,
        records: Vec<Record>,
        time_ms: u64,
    ) -> Result<Vec<Entry>, AuditError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let (mut seq, mut hash) = (self.seq, self.hash);
        let mut bytes = Vec::new();
        let mut entries = Vec::with_capacity(records.len());
        for r in records {
            seq += 1;
            let e = Entry::new(seq, &hash, time_ms, &self.cluster, r);
            let line = e.line();
            hash = hash_line(line.as_bytes());
            bytes.extend_from_slice(line.as_bytes());
            bytes.push(b'\n');
            entries.push(e);
        }
        if self.len > 0 && self.len + bytes.len() as u64 > self.rotate_bytes {
            self.rotate()?;
        }
        let path = self.path();
        let io = |action, source| AuditError::Io { action, path: path.clone(), source };
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| io("open", e))?;
        let found = f.metadata().map_err(|e| io("read", e))?.len();
        if found < self.len {
            return Err(AuditError::Shrunk { path, found, expected: self.len });
        }
        if found > self.len {
            // What a failed batch left behind: never acknowledged, so not part of the chain.
            f.set_len(self.len).map_err(|e| io("truncate", e))?;
        }
        let written =
            f.write_all(&bytes).and_then(|()| f.sync_data()).map_err(|e| io("write", e)).and_then(
                |()| {
                    if self.len == 0 {
                        sync_dir(&self.dir).map_err(|e| io("sync the directory of", e))?;
                    }
                    self.head_file.save(&Head { seq, hash })?;
                    Ok(())
                },
            );
        if let Err(e) = written {
            // Best effort: the next batch cuts the file back too.
            let _ = f.set_len(self.len).and_then(|()| f.sync_data());
            return Err(e);
        }
        (self.seq, self.hash) = (seq, hash);
        self.len += bytes.len() as u64;
        Ok(entries)
    }

    /// Moves `audit.log` to `audit.log.N`, N one more than the highest there is.
    fn rotate(&mut self) -> Result<(), AuditError> {
        let io = |action, source| AuditError::Io { action, path: self.path(), source };
        let next = std::fs::read_dir(&self.dir)
            .map_err(|e| io("list the directory of", e))?
            .flatten()
            .filter_map(|e| rotated_number(e.file_name().to_str()?))
            .max()
            .unwrap_or(0)
            + 1;
        let to = self.dir.join(format!("{FILE}.{next}"));
        std::fs::rename(self.path(), &to).map_err(|e| io("rotate", e))?;
        sync_dir(&self.dir).map_err(|e| io("sync the directory of", e))?;
        tracing::info!(to = %to.display(), seq = self.seq, "audit log rotated");
        self.len = 0;
        Ok(())
    }
}

/// The daemon's audit trail, shared by the core and the admin API (records of both go into
/// one chain, in the order they are written). Cloning shares it.
#[derive(Clone)]
pub(crate) struct Audit {
    log: Option<Arc<Mutex<AuditLog>>>,
    /// Where a copy of each record goes once it is on disk (the syslog sinks).
    copies: Option<crate::alarm::sink::Sinks>,
}

impl Audit {
    /// The trail of `dir`, or no trail at all when `section.enabled` is false (every write
    /// succeeds without writing; the daemon warns at start).
    pub(crate) fn open(
        dir: &Path,
        cluster: &str,
        node_key: &NodeKey,
        section: &AuditSection,
    ) -> Result<Self, AuditError> {
        if !section.enabled {
            return Ok(Self { log: None, copies: None });
        }
        let log = AuditLog::open(dir, cluster, node_key, section.rotate_bytes)?;
        Ok(Self { log: Some(Arc::new(Mutex::new(log))), copies: None })
    }

    /// Whether records are written (`[audit] enabled`).
    pub(crate) fn is_enabled(&self) -> bool {
        self.log.is_some()
    }

    /// No trail: every write succeeds without writing (tests of what is not the trail).
    #[cfg(test)]
    pub(crate) fn disabled() -> Self {
        Self { log: None, copies: None }
    }

    /// Also hands a copy of every record written from now on to `sinks` (the syslog sinks
    /// that take them; see `alarm::sink`), after it is on disk.
    pub(crate) fn copy_to(self, sinks: crate::alarm::sink::Sinks) -> Self {
        Self { copies: Some(sinks), ..self }
    }

    /// Writes `records` durably (blocking: fsyncs), or nothing; see [`AuditLog::append`]. Once
    /// they are on disk, their copies go to the sinks, in the chain's order (never waiting on
    /// them).
    pub(crate) fn write(&self, records: Vec<Record>) -> Result<(), AuditError> {
        let Some(log) = &self.log else { return Ok(()) };
        let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
        let entries = log.append(records, crate::clock::now().unix_millis())?;
        // Still under the log's lock: the copies are queued in the order of the chain.
        if let Some(sinks) = &self.copies {
            sinks.audit(&entries);
        }
        Ok(())
    }

    /// The last `limit` records that `filter` keeps, and whether the whole chain verifies up
    /// to the last record written when the scan began (`GET /v1/audit`). Blocking (it reads
    /// every file), but the trail's lock is held only to take the head and open the files:
    /// records written meanwhile wait for nothing, and are not read. `None`: the trail is off
    /// (`[audit] enabled = false`).
    pub(crate) fn scan(
        &self,
        filter: &super::chain::Filter,
        limit: usize,
    ) -> Option<super::chain::Scan> {
        let log = self.log.as_ref()?;
        let opened = {
            let log = log.lock().unwrap_or_else(|p| p.into_inner());
            let head = (log.seq > 0).then_some((log.seq, log.hash));
            // Open handles survive a rotation that renames a file after the lock is released.
            files_in(&log.dir).and_then(|paths| {
                paths
                    .into_iter()
                    .map(|p| match std::fs::File::open(&p) {
                        Ok(f) => Ok((p, f)),
                        Err(source) => Err(ChainError::Read { path: p, source }),
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map(|files| (files, head))
            })
        };
        Some(match opened {
            Ok((files, head)) => super::chain::scan(files, head, filter, limit),
            Err(e) => super::chain::Scan { records: vec![], matched: 0, verdict: Err(e) },
        })
    }

    /// As [`Audit::write`], off the async workers.
    pub(crate) async fn write_async(&self, records: Vec<Record>) -> Result<(), Arc<AuditError>> {
        if self.log.is_none() || records.is_empty() {
            return Ok(());
        }
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.write(records))
            .await
            .expect("the audit writer does not panic")
            .map_err(Arc::new)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Actor, Outcome};
    use super::*;

    fn rec(n: u32) -> Record {
        Record::new(Actor::Local, "test", Outcome::Ok).detail("n", n)
    }

    fn key() -> NodeKey {
        NodeKey::from_bytes([7; 32])
    }

    fn open(d: &Path) -> AuditLog {
        AuditLog::open(d, "a", &key(), MIN_ROTATE_BYTES).unwrap()
    }

    fn verify_dir(dir: &Path) -> Result<super::super::chain::Summary, ChainError> {
        let head: Head = head_file(dir, &key()).load().unwrap().unwrap();
        let mut v = Verifier::with_head(head.seq, head.hash);
        for f in files_in(dir)? {
            v.push_file(&f)?;
        }
        v.finish()
    }

    #[test]
    fn batches_chain_across_rotation_and_restarts() {
        let d = tempfile::tempdir().unwrap();
        let mut log = open(d.path());
        for i in 0..400 {
            log.append(vec![rec(i), rec(i + 1)], 1_000).unwrap();
        }
        assert!(d.path().join("audit.log.1").exists(), "rotated by size");
        let s = verify_dir(d.path()).unwrap();
        assert_eq!((s.first, s.last), (1, 800));
        drop(log);
        let mut log = open(d.path());
        assert_eq!(log.seq(), 800);
        log.append(vec![rec(0)], 2_000).unwrap();
        assert_eq!(verify_dir(d.path()).unwrap().last, 801);
    }

    #[test]
    fn a_log_made_unwritable_refuses_and_changes_nothing() {
        let d = tempfile::tempdir().unwrap();
        let mut log = open(d.path());
        log.append(vec![rec(1)], 1_000).unwrap();
        let saved = std::fs::read(d.path().join(FILE)).unwrap();
        std::fs::rename(d.path().join(FILE), d.path().join("kept")).unwrap();
        std::fs::create_dir(d.path().join(FILE)).unwrap();
        let e = log.append(vec![rec(2)], 1_000).unwrap_err().to_string();
        assert!(e.contains("audit.log"), "{e}");
        assert_eq!(log.seq(), 1);
        std::fs::remove_dir(d.path().join(FILE)).unwrap();
        std::fs::rename(d.path().join("kept"), d.path().join(FILE)).unwrap();
        assert_eq!(std::fs::read(d.path().join(FILE)).unwrap(), saved);
        log.append(vec![rec(3)], 1_000).unwrap();
        assert_eq!(verify_dir(d.path()).unwrap().last, 2);
    }

    #[test]
    fn a_record_torn_by_a_crash_is_dropped_at_start_and_the_chain_goes_on() {
        let d = tempfile::tempdir().unwrap();
        let mut log = open(d.path());
        log.append(vec![rec(1), rec(2)], 1_000).unwrap();
        drop(log);
        let p = d.path().join(FILE);
        let whole = std::fs::read(&p).unwrap();
        let mut torn = whole.clone();
        torn.extend_from_slice(br#"{"seq":3,"prev":"ab"#);
        std::fs::write(&p, &torn).unwrap();
        let mut log = open(d.path());
        assert_eq!(log.seq(), 2);
        assert_eq!(std::fs::read(&p).unwrap(), whole, "cut back to the last whole record");
        log.append(vec![rec(3)], 1_000).unwrap();
        assert_eq!(verify_dir(d.path()).unwrap().last, 3);
    }

    #[test]
    fn a_tail_cut_behind_the_daemon_stops_the_next_write_and_the_next_start() {
        let d = tempfile::tempdir().unwrap();
        let mut log = open(d.path());
        log.append(vec![rec(1), rec(2)], 1_000).unwrap();
        let p = d.path().join(FILE);
        let text = std::fs::read_to_string(&p).unwrap();
        std::fs::write(&p, text.lines().next().unwrap().to_owned() + "\n").unwrap();
        assert!(matches!(log.append(vec![rec(3)], 1_000), Err(AuditError::Shrunk { .. })));
        let e = AuditLog::open(d.path(), "a", &key(), MIN_ROTATE_BYTES).err().unwrap().to_string();
        assert!(e.contains("does not match its sealed head") && e.contains("seq 2"), "{e}");
    }
}
