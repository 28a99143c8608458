//! Crash-safe persistence of sealed state.
//!
//! ```text
//! offset  size   field
//! 0       8      magic "IMCSTATE"
//! 8       2      schema version, unsigned big-endian (this build writes and reads 1)
//! 10      12     nonce, random
//! 22      n+16   AES-256-GCM ciphertext and tag of the n-byte JSON document;
//!                key = the node key's sealing key for the purpose, AAD = bytes 0..10
//! ```
//!
//! A write goes to `NAME.tmp` in the same directory, is fsynced, renamed over `NAME`, and the
//! directory is fsynced (module `atomic`, the one place that writes private files; the node
//! key file is `node_key`). Invariants: after a crash at any point the file holds the old or
//! the new state, never a mix; a file that exists but cannot be authenticated or parsed is an
//! error that stops the start, never silently replaced by a fresh state.

use std::path::PathBuf;

use serde::Serialize;
use serde::de::DeserializeOwned;
use zeroize::Zeroizing;

use crate::crypto::aead::{AeadKey, NONCE_LEN};
use crate::crypto::random;
use crate::crypto::seal::{NodeKey, Purpose};

mod atomic;
mod node_key;
pub(crate) mod secret;

pub(crate) use atomic::{Existing, WriteStep, sync_dir, write_private};
pub(crate) use node_key::{NODE_KEY_FILE, NodeKeyError, existing_node_key};

const MAGIC: &[u8; 8] = b"IMCSTATE";
const SCHEMA_VERSION: u16 = 1;
const HEADER_LEN: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot {action} state file {path}: {source}")]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
    #[error(
        "{path} is not an imcrypt state file (bad magic); move it away or point the config elsewhere"
    )]
    NotAStateFile { path: PathBuf },
    #[error(
        "state file {path} has schema version {found}; this imcrypt reads version {SCHEMA_VERSION} \
         (was it written by a newer release?)"
    )]
    UnsupportedSchema { path: PathBuf, found: u16 },
    #[error(
        "state file {path} cannot be authenticated: it was altered or truncated, or the node key \
         is not the one that wrote it. Restore the state file and node key from the same backup; \
         imcrypt will not replace them with a fresh state, which would lose the keys"
    )]
    Authentication { path: PathBuf },
    #[error("state file {path} authenticated but does not parse: {reason}")]
    Parse { path: PathBuf, reason: String },
}

/// A sealed JSON file on disk.
pub struct SealedFile {
    path: PathBuf,
    key: AeadKey,
}

impl std::fmt::Debug for SealedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealedFile({})", self.path.display())
    }
}

impl SealedFile {
    pub fn new(path: impl Into<PathBuf>, node_key: &NodeKey, purpose: Purpose) -> Self {
        Self { path: path.into(), key: node_key.sealing_key(purpose) }
    }

    #[cfg(test)]
    fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// The stored value, or `None` when no state was ever written. A temporary file that a
    /// write cut short left beside the file is removed first (it never holds anything
    /// acknowledged; see `atomic::remove_leftover`).
    pub fn load<T: DeserializeOwned>(&self) -> Result<Option<T>, StoreError> {
        match atomic::remove_leftover(&self.path) {
            Ok(false) => {}
            Ok(true) => tracing::info!(
                path = %self.path.display(),
                "removed the temporary file of a state write that was cut short"
            ),
            Err(e) => tracing::warn!(
                path = %self.path.display(),
                error = %e,
                "cannot remove the temporary file of a state write that was cut short"
            ),
        }
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StoreError::Io { action: "read", path: self.path.clone(), source });
            }
        };
        self.decode(&bytes).map(Some)
    }

    /// Authenticates and parses the bytes of a state file (what [`SealedFile::load`] read).
    /// Errors name this file's path. Also the entry point of the `sealed_state` fuzz target.
    pub(crate) fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, StoreError> {
        let path = || self.path.clone();
        if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
            return Err(StoreError::NotAStateFile { path: path() });
        }
        let found = u16::from_be_bytes([bytes[8], bytes[9]]);
        if found != SCHEMA_VERSION {
            return Err(StoreError::UnsupportedSchema { path: path(), found });
        }
        if bytes.len() < HEADER_LEN + NONCE_LEN {
            return Err(StoreError::Authentication { path: path() });
        }
        let nonce: &[u8; NONCE_LEN] =
            bytes[HEADER_LEN..HEADER_LEN + NONCE_LEN].try_into().expect("12 bytes");
        let json = self
            .key
            .open(nonce, &bytes[..HEADER_LEN], &bytes[HEADER_LEN + NONCE_LEN..])
            .map_err(|_| StoreError::Authentication { path: path() })?;
        serde_json::from_slice(&json)
            .map_err(|e| StoreError::Parse { path: path(), reason: e.to_string() })
    }

    /// Replaces the stored value, crash-safely.
    pub fn save<T: Serialize>(&self, value: &T) -> Result<(), StoreError> {
        self.save_until(value, WriteStep::SyncDir)
    }

    /// Runs the write only up to and including `last`, as if the process died right after it.
    #[doc(hidden)]
    fn save_until<T: Serialize>(&self, value: &T, last: WriteStep) -> Result<(), StoreError> {
        let bytes = self.encode(value)?;
        atomic::write_private_until(&self.path, &bytes, Existing::Replace, last)
            .map_err(|e| StoreError::Io { action: e.action, path: e.path, source: e.source })
    }

    fn encode<T: Serialize>(&self, value: &T) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        let json = Zeroizing::new(serde_json::to_vec(value).map_err(|e| StoreError::Parse {
            path: self.path.clone(),
            reason: format!("cannot serialize: {e}"),
        })?);
        Ok(self.seal_json(&json))
    }

    /// The file bytes holding `json` (a serialized document), under a fresh random nonce.
    pub(crate) fn seal_json(&self, json: &[u8]) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(HEADER_LEN + NONCE_LEN + json.len() + 16));
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&SCHEMA_VERSION.to_be_bytes());
        let nonce = random::os_bytes::<NONCE_LEN>();
        out.extend_from_slice(&nonce);
        let start = out.len();
        out.extend_from_slice(json);
        let (header, _) = out.split_at(HEADER_LEN);
        let header = header.to_vec();
        self.key.seal_in_place(&nonce, &header, &mut out, start);
        out
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct S {
        n: u32,
        text: String,
    }

    fn file(dir: &Path) -> SealedFile {
        SealedFile::new(dir.join("state.sealed"), &NodeKey::from_bytes([1; 32]), Purpose::State)
    }

    #[test]
    fn missing_file_is_none_and_round_trip_works() {
        let d = tempfile::tempdir().unwrap();
        let f = file(d.path());
        assert_eq!(f.load::<S>().unwrap(), None);
        let s = S { n: 7, text: "secret words".into() };
        f.save(&s).unwrap();
        assert_eq!(f.load::<S>().unwrap(), Some(s));
        let raw = std::fs::read(f.path()).unwrap();
        assert!(!raw.windows(6).any(|w| w == b"secret"), "state must be encrypted at rest");
    }

    #[test]
    fn a_write_interrupted_after_any_step_leaves_old_or_new() {
        for step in WriteStep::ALL {
            let d = tempfile::tempdir().unwrap();
            let f = file(d.path());
            let old = S { n: 1, text: "old".into() };
            let new = S { n: 2, text: "new".into() };
            f.save(&old).unwrap();
            f.save_until(&new, step).unwrap();
            let got = f.load::<S>().unwrap().unwrap();
            if step >= WriteStep::Rename {
                assert_eq!(got, new, "after {step:?}");
            } else {
                assert_eq!(got, old, "after {step:?}");
            }
            // The next full save recovers from the leftover temp file.
            f.save(&new).unwrap();
            assert_eq!(f.load::<S>().unwrap(), Some(new));
        }
    }

    #[test]
    fn loading_removes_the_temporary_file_of_a_write_cut_short() {
        let d = tempfile::tempdir().unwrap();
        let f = file(d.path());
        f.save(&S { n: 1, text: "old".into() }).unwrap();
        f.save_until(&S { n: 2, text: "new".into() }, WriteStep::CreateTemp).unwrap();
        let tmp = d.path().join("state.sealed.tmp");
        assert_eq!(std::fs::metadata(&tmp).unwrap().len(), 0, "a 0-byte temporary file");
        assert_eq!(f.load::<S>().unwrap().unwrap().n, 1);
        assert!(!tmp.exists());
        let names: Vec<_> =
            std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["state.sealed"]);
    }

    #[test]
    fn damaged_or_foreign_files_are_errors_not_fresh_state() {
        let d = tempfile::tempdir().unwrap();
        let f = file(d.path());
        f.save(&S { n: 1, text: "x".into() }).unwrap();
        let good = std::fs::read(f.path()).unwrap();
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x40;
            std::fs::write(f.path(), &bad).unwrap();
            assert!(f.load::<S>().is_err(), "flipped byte {i} went unnoticed");
        }
        std::fs::write(f.path(), &good[..good.len() - 1]).unwrap();
        assert!(matches!(f.load::<S>(), Err(StoreError::Authentication { .. })));
        let mut newer = good.clone();
        newer[9] = 2;
        std::fs::write(f.path(), &newer).unwrap();
        assert!(matches!(f.load::<S>(), Err(StoreError::UnsupportedSchema { found: 2, .. })));
        std::fs::write(f.path(), b"hello world, not a state").unwrap();
        assert!(matches!(f.load::<S>(), Err(StoreError::NotAStateFile { .. })));
        std::fs::write(f.path(), &good).unwrap();
        let other_key = SealedFile::new(f.path(), &NodeKey::from_bytes([2; 32]), Purpose::State);
        let e = other_key.load::<S>().unwrap_err().to_string();
        assert!(e.contains("cannot be authenticated") && e.contains("backup"), "{e}");
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Other {
            missing: u8,
        }
        assert!(matches!(f.load::<Other>(), Err(StoreError::Parse { .. })));
    }
}
