//! Checking a hash chain of audit records offline (`imcrypt audit verify`), and against the
//! sealed chain head.
//!
//! Invariant: [`Verifier`] accepts a sequence of lines only if every line is an audit record,
//! the sequence numbers follow one another, and each record's `prev` is the hash of the line
//! before it (or 64 zeros for seq 1); the first error names the record (sequence number, file
//! and line) and why, and nothing after it is trusted.

use std::path::{Path, PathBuf};

use super::{Entry, GENESIS, Hash, hash_line};

/// Where a record is: the file and its line number (from 1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Place {
    pub file: PathBuf,
    pub line: usize,
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} line {}", self.file.display(), self.line)
    }
}

/// The first thing wrong with a chain.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{at}: not an audit record (after record seq {after}): {why}")]
    NotARecord { at: Place, after: u64, why: String },
    #[error("{at}: the last line has no line feed: a write cut short, or the file was truncated")]
    CutShort { at: Place },
    #[error(
        "record seq {found} ({at}) comes where seq {expected} should: {}",
        if found > expected { "a record before it was deleted" } else { "records were reordered or repeated" }
    )]
    Sequence { at: Place, expected: u64, found: u64 },
    #[error(
        "record seq {seq} ({at}): its prev hash is not the hash of record seq {}: that record was \
         altered, or records between them were removed or reordered",
        seq - 1
    )]
    Link { at: Place, seq: u64 },
    #[error("record seq 1 ({at}) has a prev hash that is not 64 zeros")]
    Genesis { at: Place },
    #[error("no audit record in the files given")]
    Empty,
    #[error(
        "the chain ends at record seq {last} but the sealed head is at seq {head}: records \
         {}..={head} were deleted (the log was truncated)",
        last + 1
    )]
    Truncated { last: u64, head: u64 },
    #[error(
        "record seq {seq} ({at}) is not the record the daemon wrote with that number (its hash \
         differs from the sealed head's): the record was altered or the file replaced"
    )]
    NotTheHead { at: Place, seq: u64 },
    #[error(
        "the sealed head is at seq {head}, before the first record given (seq {first}): \
         the files were replaced"
    )]
    HeadBeforeFiles { head: u64, first: u64 },
    #[error(
        "records seq {}..={last} come after the sealed head (seq {head}): appended outside the \
         daemon, or written just before a crash (the daemon adopts them at its next start, with \
         a warning)",
        head + 1
    )]
    PastHead { head: u64, last: u64 },
}

/// What a chain that checked out holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    pub first: u64,
    pub last: u64,
    /// The hash of the last record.
    pub last_hash: Hash,
    pub records: u64,
    /// The hash of the record with the sealed head's number, when it was checked.
    head_checked: bool,
}

impl Summary {
    pub fn head_checked(&self) -> bool {
        self.head_checked
    }
}

/// Parses one line (without its line feed) as an audit record. The `audit_record` fuzz
/// target's entry point.
pub fn parse_line(line: &[u8]) -> Result<Entry, String> {
    let e: Entry = serde_json::from_slice(line).map_err(|e| e.to_string())?;
    if e.prev.len() != 64 || hex::decode(&e.prev).is_err() {
        return Err("prev is not 64 hex digits".into());
    }
    if e.seq == 0 {
        return Err("seq 0: records are numbered from 1".into());
    }
    Ok(e)
}

/// Walks records in order and checks the links between them.
#[derive(Default)]
pub struct Verifier {
    /// The last record seen: its seq and hash.
    last: Option<(u64, Hash)>,
    first: Option<u64>,
    records: u64,
    /// The sealed head to check against, and whether the record with its number was seen.
    head: Option<(u64, Hash, bool)>,
}

impl Verifier {
    pub fn new() -> Self {
        Self::default()
    }

    /// Also check that the record numbered `seq` hashes to `hash` (the sealed head), and that
    /// the chain ends there.
    pub fn with_head(seq: u64, hash: Hash) -> Self {
        Self { head: Some((seq, hash, false)), ..Self::default() }
    }

    /// Checks the next line (without its line feed) found at `at`; the record it holds.
    pub fn push(&mut self, line: &[u8], at: Place) -> Result<Entry, ChainError> {
        let after = self.last.map_or(0, |(s, _)| s);
        let e = parse_line(line).map_err(|why| ChainError::NotARecord {
            at: at.clone(),
            after,
            why,
        })?;
        let prev = hex::decode(&e.prev).expect("checked by parse_line");
        match self.last {
            Some((s, h)) => {
                if e.seq != s + 1 {
                    return Err(ChainError::Sequence { at, expected: s + 1, found: e.seq });
                }
                if prev != h {
                    return Err(ChainError::Link { at, seq: e.seq });
                }
            }
            None => {
                if let Some((head, _, _)) = self.head
                    && head < e.seq - 1
                {
                    return Err(ChainError::HeadBeforeFiles { head, first: e.seq });
                }
                if e.seq == 1 && prev != GENESIS {
                    return Err(ChainError::Genesis { at });
                }
                self.first = Some(e.seq);
            }
        }
        let h = hash_line(line);
        if let Some((head, head_hash, seen)) = &mut self.head {
            if *head == e.seq {
                if h != *head_hash {
                    return Err(ChainError::NotTheHead { at, seq: e.seq });
                }
                *seen = true;
            } else if *head == e.seq - 1 && self.last.is_none() && prev != *head_hash {
                // The files start right after the head: the link to it is all there is.
                return Err(ChainError::NotTheHead { at, seq: e.seq - 1 });
            } else if *head == e.seq - 1 && self.last.is_none() {
                *seen = true;
            }
        }
        self.last = Some((e.seq, h));
        self.records += 1;
        Ok(e)
    }

    /// Checks every line of `file`.
    pub fn push_file(&mut self, file: &Path) -> Result<(), ChainError> {
        let bytes = std::fs::read(file)
            .map_err(|source| ChainError::Read { path: file.to_owned(), source })?;
        self.push_bytes(&bytes, file)
    }

    /// Checks every line of `bytes`, read from `file`.
    pub fn push_bytes(&mut self, bytes: &[u8], file: &Path) -> Result<(), ChainError> {
        let mut rest = bytes;
        let mut n = 0;
        while !rest.is_empty() {
            n += 1;
            let at = Place { file: file.to_owned(), line: n };
            let Some(end) = rest.iter().position(|&b| b == b'\n') else {
                return Err(ChainError::CutShort { at });
            };
            self.push(&rest[..end], at)?;
            rest = &rest[end + 1..];
        }
        Ok(())
    }

    /// The verdict once every file is pushed.
    pub fn finish(self) -> Result<Summary, ChainError> {
        let (Some((last, last_hash)), Some(first)) = (self.last, self.first) else {
            return match self.head {
                Some((head, _, _)) if head > 0 => Err(ChainError::Truncated { last: 0, head }),
                _ => Err(ChainError::Empty),
            };
        };
        let mut head_checked = false;
        if let Some((head, _, seen)) = self.head {
            if last < head {
                return Err(ChainError::Truncated { last, head });
            }
            if last > head {
                return Err(ChainError::PastHead { head, last });
            }
            head_checked = seen;
        }
        Ok(Summary { first, last, last_hash, records: self.records, head_checked })
    }
}

/// The audit files of `dir`, oldest first: `audit.log.N` by N, then `audit.log`.
pub fn files_in(dir: &Path) -> Result<Vec<PathBuf>, ChainError> {
    let rd = std::fs::read_dir(dir)
        .map_err(|source| ChainError::Read { path: dir.to_owned(), source })?;
    let mut rotated: Vec<(u64, PathBuf)> = Vec::new();
    let mut current = None;
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if name == super::log::FILE {
            current = Some(e.path());
        } else if let Some(n) = rotated_number(name) {
            rotated.push((n, e.path()));
        }
    }
    rotated.sort();
    let mut files: Vec<PathBuf> = rotated.into_iter().map(|(_, p)| p).collect();
    files.extend(current);
    Ok(files)
}

/// N of `audit.log.N`.
pub(crate) fn rotated_number(name: &str) -> Option<u64> {
    let n = name.strip_prefix(super::log::FILE)?.strip_prefix('.')?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

/// Orders `files` by the sequence number of their first record, so `audit.log.*` in the
/// shell's order (`.10` before `.2`) still verifies. Files without a readable first record
/// keep their place at the front, where the verifier reports them.
pub fn in_chain_order(files: Vec<PathBuf>) -> Vec<PathBuf> {
    let mut keyed: Vec<(u64, usize, PathBuf)> = files
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            let first = std::fs::read(&p)
                .ok()
                .and_then(|b| {
                    let end = b.iter().position(|&c| c == b'\n')?;
                    parse_line(&b[..end]).ok()
                })
                .map_or(0, |e| e.seq);
            (first, i, p)
        })
        .collect();
    keyed.sort();
    keyed.into_iter().map(|(_, _, p)| p).collect()
}

/// Which records to show: at or after a time, of one actor, of one action or family of
/// actions (`key.` matches every `key.*`). `imcrypt audit show` and `GET /v1/audit` filter
/// alike.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub since: Option<std::time::SystemTime>,
    pub actor: Option<String>,
    pub action: Option<String>,
}

impl Filter {
    pub fn keeps(&self, e: &Entry) -> bool {
        self.since.is_none_or(|s| humantime::parse_rfc3339(&e.time).is_ok_and(|t| t >= s))
            && self.actor.as_deref().is_none_or(|a| e.actor.label() == a)
            && self
                .action
                .as_deref()
                .is_none_or(|a| e.action == a || (a.ends_with('.') && e.action.starts_with(a)))
    }
}

/// A time given as RFC 3339 (`2026-12-01T10:00:00Z`) or as a duration ago (`90m`, `2d`).
pub fn parse_since(s: &str, now: std::time::SystemTime) -> Result<std::time::SystemTime, String> {
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(t);
    }
    let ago = humantime::parse_duration(s)
        .map_err(|_| format!("{s:?} is neither an RFC 3339 time nor a duration like 2h"))?;
    now.checked_sub(ago).ok_or_else(|| format!("{s:?} is before the start of time"))
}

/// What [`scan`] found: the newest records the filter keeps, and the chain's verdict.
#[derive(Debug)]
pub struct Scan {
    /// The last `limit` records kept by the filter, oldest first.
    pub records: Vec<Entry>,
    /// How many records the filter kept in all.
    pub matched: u64,
    /// Whether every record links to the one before and the chain ends at the head given.
    /// Records after the first broken one are not read.
    pub verdict: Result<Summary, ChainError>,
}

/// Verifies the audit files `files` (opened in chain order, with their paths) up to the
/// record `head` names, and keeps the last `limit` records that `filter` keeps, in one pass
/// that holds one line in memory at a time. Records after the head (written since it was
/// taken) are not read, so a trail that grows meanwhile still verifies.
pub fn scan(
    files: Vec<(PathBuf, std::fs::File)>,
    head: Option<(u64, Hash)>,
    filter: &Filter,
    limit: usize,
) -> Scan {
    use std::io::BufRead;
    let mut v = match head {
        Some((seq, hash)) => Verifier::with_head(seq, hash),
        None => Verifier::new(),
    };
    let end = head.map_or(0, |(seq, _)| seq);
    let mut kept = std::collections::VecDeque::with_capacity(limit.min(1024));
    let mut matched = 0u64;
    let walk = || -> Result<(), ChainError> {
        for (path, file) in files {
            let mut reader = std::io::BufReader::new(file);
            let mut line = Vec::new();
            for n in 1.. {
                if v.last.is_some_and(|(seq, _)| seq >= end) {
                    return Ok(());
                }
                line.clear();
                reader
                    .read_until(b'\n', &mut line)
                    .map_err(|source| ChainError::Read { path: path.clone(), source })?;
                if line.is_empty() {
                    break;
                }
                let at = Place { file: path.clone(), line: n };
                let Some(record) = line.strip_suffix(b"\n") else {
                    return Err(ChainError::CutShort { at });
                };
                let e = v.push(record, at)?;
                if filter.keeps(&e) {
                    matched += 1;
                    if limit > 0 {
                        if kept.len() == limit {
                            kept.pop_front();
                        }
                        kept.push_back(e);
                    }
                }
            }
        }
        Ok(())
    };
    let walked = walk();
    let verdict = walked.and_then(|()| v.finish());
    Scan { records: kept.into(), matched, verdict }
}

#[cfg(test)]
mod tests {
    use super::super::{Actor, Outcome, Record};
    use super::*;

    /// `n` records chained from seq 1, as lines with their line feeds.
    fn chain(n: u64) -> Vec<String> {
        let mut prev = GENESIS;
        (1..=n)
            .map(|seq| {
                let r = Record::new(Actor::Local, "test", Outcome::Ok).target(seq.to_string());
                let line = Entry::new(seq, &prev, 1_000 * seq, "a", r).line();
                prev = hash_line(line.as_bytes());
                line + "\n"
            })
            .collect()
    }

    fn check(lines: &[String]) -> Result<Summary, ChainError> {
        let mut v = Verifier::new();
        v.push_bytes(lines.concat().as_bytes(), Path::new("audit.log"))?;
        v.finish()
    }

    #[test]
    fn an_intact_chain_verifies() {
        let s = check(&chain(5)).unwrap();
        assert_eq!((s.first, s.last, s.records), (1, 5, 5));
    }

    #[test]
    fn a_deleted_record_is_named() {
        let mut c = chain(5);
        c.remove(2);
        let e = check(&c).unwrap_err().to_string();
        assert!(
            e.contains("record seq 4") && e.contains("seq 3 should") && e.contains("deleted"),
            "{e}"
        );
    }

    #[test]
    fn two_swapped_records_are_named() {
        let mut c = chain(5);
        c.swap(1, 2);
        let e = check(&c).unwrap_err().to_string();
        assert!(e.contains("record seq 3 (audit.log line 2)") && e.contains("seq 2 should"), "{e}");
    }

    #[test]
    fn an_edited_record_is_named_by_the_link_that_breaks() {
        let mut c = chain(5);
        c[2] = c[2].replace("\"target\":\"3\"", "\"target\":\"X\"");
        let e = check(&c).unwrap_err().to_string();
        assert!(e.contains("record seq 4") && e.contains("hash of record seq 3"), "{e}");
        // A byte that breaks the JSON is named by its line.
        let mut c = chain(5);
        c[2] = c[2].replacen('{', "[", 1);
        let e = check(&c).unwrap_err().to_string();
        assert!(e.contains("audit.log line 3") && e.contains("after record seq 2"), "{e}");
    }

    #[test]
    fn the_sealed_head_catches_truncation_and_replacement() {
        let c = chain(5);
        let head = hash_line(c[4].trim_end().as_bytes());
        let verify = |lines: &[String]| {
            let mut v = Verifier::with_head(5, head);
            v.push_bytes(lines.concat().as_bytes(), Path::new("audit.log"))?;
            v.finish()
        };
        assert!(verify(&c).unwrap().head_checked());
        let e = verify(&c[..3]).unwrap_err().to_string();
        assert!(e.contains("ends at record seq 3") && e.contains("4..=5"), "{e}");
        let mut other = chain(5);
        other[4] = other[4].replace(
            "\"time\":\"1970-01-01T00:00:05.000Z\"",
            "\"time\":\"1970-01-01T00:00:06.000Z\"",
        );
        let e = verify(&other).unwrap_err().to_string();
        assert!(e.contains("record seq 5") && e.contains("sealed head"), "{e}");
        let e = verify(&chain(7)).unwrap_err().to_string();
        assert!(e.contains("6..=7") && e.contains("after the sealed head"), "{e}");
    }

    #[test]
    fn a_cut_line_and_junk_are_errors_not_panics() {
        let c = chain(2).concat();
        let cut = &c[..c.len() - 5];
        let mut v = Verifier::new();
        assert!(matches!(
            v.push_bytes(cut.as_bytes(), Path::new("x")),
            Err(ChainError::CutShort { .. })
        ));
        for junk in ["", "{}", "{\"seq\":0}", "\u{0}\n"] {
            assert!(parse_line(junk.as_bytes()).is_err(), "{junk:?}");
        }
    }

    #[test]
    fn rotated_names_are_numbered() {
        assert_eq!(rotated_number("audit.log.12"), Some(12));
        for n in ["audit.log", "audit.log.", "audit.log.x", "audit.log.1.gz", "audit.head"] {
            assert_eq!(rotated_number(n), None, "{n}");
        }
    }
}
