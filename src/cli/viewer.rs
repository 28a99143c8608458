//! The data viewer: `imcrypt key unwrap` turns a key export and the administrator's RSA private
//! key into a key ring file; `imcrypt decrypt` reads archived records as JSON lines and prints
//! their plaintext. docs/viewer.md defines both file formats; the key ring file's is
//! `crypto::ringfile`.
//!
//! Invariants: output files are written whole or not at all (`store::write_private`), with
//! mode 0600, and an existing file is never replaced unless asked; a record that does not
//! decrypt is reported with its line and row and the others still decrypt; nothing here
//! prints key bytes.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::crypto::aead::AeadImpl;
use crate::crypto::export::{ExportError, KeyExport, Unwrapper};
use crate::crypto::keyring::KeyRing;
use crate::crypto::record::{RecordHeader, RecordOpener};
use crate::crypto::ringfile;
use crate::store::{self, Existing};

#[derive(Debug, thiserror::Error)]
pub(crate) enum ViewerError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{path} already exists; choose another --out or pass --force to replace it")]
    Exists { path: PathBuf },
    #[error("{path} is not a key export: {reason}")]
    NotExport { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Unwrap { path: PathBuf, source: ExportError },
    #[error("{path} is not a key ring file: {reason}")]
    NotRing { path: PathBuf, reason: String },
}

fn read_text(path: &Path) -> Result<zeroize::Zeroizing<String>, ViewerError> {
    std::fs::read_to_string(path)
        .map(zeroize::Zeroizing::new)
        .map_err(|source| ViewerError::Read { path: path.to_owned(), source })
}

/// Writes `bytes` to `path` whole or not at all, mode 0600 (`store::write_private`).
pub(crate) fn write_private(path: &Path, bytes: &[u8], force: bool) -> Result<(), ViewerError> {
    if !force && path.exists() {
        return Err(ViewerError::Exists { path: path.to_owned() });
    }
    let existing = if force { Existing::Replace } else { Existing::Keep };
    store::write_private(path, bytes, existing).map_err(|e| {
        if e.is_taken() {
            ViewerError::Exists { path: path.to_owned() }
        } else {
            ViewerError::Write { path: path.to_owned(), source: e.source }
        }
    })
}

/// `imcrypt key unwrap`: returns the ring it wrote.
pub(crate) fn unwrap(
    export: &Path,
    private_key: &Path,
    out: &Path,
    force: bool,
) -> Result<KeyRing, ViewerError> {
    let doc: KeyExport = serde_json::from_str(&read_text(export)?)
        .map_err(|e| ViewerError::NotExport { path: export.to_owned(), reason: e.to_string() })?;
    let un = Unwrapper::from_pem(&read_text(private_key)?)
        .map_err(|source| ViewerError::Unwrap { path: private_key.to_owned(), source })?;
    let ring = un
        .unwrap_export(&doc)
        .map_err(|source| ViewerError::Unwrap { path: export.to_owned(), source })?;
    let bytes = ringfile::encode(&ring);
    write_private(out, &bytes, force)?;
    Ok(ring)
}

/// Reads the key ring file at `path` (`crypto::ringfile`).
pub(crate) fn load_ring(path: &Path) -> Result<KeyRing, ViewerError> {
    ringfile::decode(&read_text(path)?)
        .map_err(|e| ViewerError::NotRing { path: path.to_owned(), reason: e.to_string() })
}

/// One archived record as a JSON line (docs/viewer.md).
#[derive(Deserialize)]
struct RecordLine {
    #[serde(default)]
    row: Option<Value>,
    record_b64: String,
    #[serde(default)]
    metadata_b64: Option<String>,
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

/// One decrypted row.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Plain {
    pub(crate) row: Value,
    pub(crate) cluster: String,
    pub(crate) key_version: u32,
    /// The plaintext, when it is UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) plaintext: Option<String>,
    /// The plaintext in base64, when it is not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) plaintext_b64: Option<String>,
    /// The line's other fields, unchanged.
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

/// A line that could not be decrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    /// 1-based line number.
    pub(crate) line: usize,
    /// The row id, or `-` when the line has none (or cannot be parsed).
    pub(crate) row: String,
    pub(crate) reason: String,
}

fn row_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Decrypts one JSON line (line number `n`, 1-based).
fn decrypt_line(opener: &mut RecordOpener<'_>, n: usize, line: &str) -> Result<Plain, Failure> {
    let fail = |row: String, reason: String| Failure { line: n, row, reason };
    let rec: RecordLine = serde_json::from_str(line)
        .map_err(|e| fail("-".into(), format!("not a record line: {e}")))?;
    let row = rec.row.clone().unwrap_or_else(|| Value::from(n));
    let rt = row_text(&row);
    let bytes = B64
        .decode(rec.record_b64.trim())
        .map_err(|e| fail(rt.clone(), format!("record_b64 is not base64: {e}")))?;
    let meta = match &rec.metadata_b64 {
        Some(m) => B64
            .decode(m.trim())
            .map_err(|e| fail(rt.clone(), format!("metadata_b64 is not base64: {e}")))?,
        None => Vec::new(),
    };
    let h = RecordHeader::parse(&bytes).map_err(|e| fail(rt.clone(), e.to_string()))?;
    let (cluster, key_version) = (h.cluster.to_owned(), h.key_version.get());
    let pt = opener.open(&bytes, &meta).map_err(|e| fail(rt.clone(), e.to_string()))?;
    let (plaintext, plaintext_b64) = match std::str::from_utf8(&pt) {
        Ok(s) => (Some(s.to_owned()), None),
        Err(_) => (None, Some(B64.encode(&pt[..]))),
    };
    Ok(Plain { row, cluster, key_version, plaintext, plaintext_b64, other: rec.other })
}

/// Decrypts every line of `input`; calls `good` for each row that opened and `bad` for each
/// that did not, in input order. Returns (rows seen, failures).
pub(crate) fn decrypt_all(
    ring: &KeyRing,
    input: impl BufRead,
    mut good: impl FnMut(Plain) -> std::io::Result<()>,
    mut bad: impl FnMut(&Failure),
) -> std::io::Result<(usize, usize)> {
    let mut opener = RecordOpener::new(ring, AeadImpl::default());
    let (mut seen, mut failed) = (0, 0);
    for (i, line) in input.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        seen += 1;
        match decrypt_line(&mut opener, i + 1, &line) {
            Ok(p) => good(p)?,
            Err(f) => {
                failed += 1;
                bad(&f);
            }
        }
    }
    Ok((seen, failed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::random::NonceSource;
    use crate::crypto::record::RecordSealer;
    use crate::ids::{ClusterId, DomainId};

    #[test]
    fn good_rows_decrypt_and_bad_rows_are_reported_with_their_line() {
        let mut ring =
            KeyRing::new(DomainId::from_bytes([1; 16]), 1, zeroize::Zeroizing::new([2; 32]));
        let c = ClusterId::new("east").unwrap();
        let s = RecordSealer::new(&ring, &c, AeadImpl::default(), 0);
        s.counter().commit_reservation(1 << 20);
        let mut n = NonceSource::from_os();
        let r1 = s.seal(&mut n, b"m1", b"hello").unwrap();
        let r2 = s.seal(&mut n, b"m2", b"world").unwrap();
        let mut r2_moved = serde_json::json!({"row": "x", "record_b64": B64.encode(&r2), "metadata_b64": B64.encode(b"m1")}).to_string();
        r2_moved.push('\n');
        ring.rotate(2, zeroize::Zeroizing::new([3; 32])).unwrap();
        let input = format!(
            "{}\n\nnot json\n{r2_moved}{}\n",
            serde_json::json!({"row": 7, "record_b64": B64.encode(&r1), "metadata_b64": B64.encode(b"m1"), "sender": "bob"}),
            serde_json::json!({"record_b64": B64.encode(&r2), "metadata_b64": B64.encode(b"m2")}),
        );
        let (mut ok, mut bad) = (Vec::new(), Vec::new());
        let (seen, failed) = decrypt_all(
            &ring,
            input.as_bytes(),
            |p| {
                ok.push(p);
                Ok(())
            },
            |f| bad.push(f.clone()),
        )
        .unwrap();
        assert_eq!((seen, failed), (4, 2));
        assert_eq!(ok[0].plaintext.as_deref(), Some("hello"));
        assert_eq!(ok[0].other["sender"], "bob");
        assert_eq!(ok[1].row, Value::from(5));
        assert_eq!(bad[0].line, 3);
        assert_eq!((bad[1].line, bad[1].row.as_str()), (4, "x"));
        assert!(bad[1].reason.contains("authentication"), "{}", bad[1].reason);
        let json = serde_json::to_string(&ok[0]).unwrap();
        assert!(
            json.contains("\"sender\":\"bob\"") && json.contains("\"key_version\":1"),
            "{json}"
        );
    }

    #[test]
    fn files_are_written_0600_and_never_clobbered() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("ring.json");
        write_private(&p, b"one", false).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(matches!(write_private(&p, b"two", false), Err(ViewerError::Exists { .. })));
        assert_eq!(std::fs::read(&p).unwrap(), b"one");
        write_private(&p, b"two", true).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
    }
}
