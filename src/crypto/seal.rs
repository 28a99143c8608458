//! The node key: 32 random bytes in a 0600 file, created on first start, that seal this node's
//! state at rest (AES-256-GCM under keys derived from it with HKDF-SHA256, one per purpose).
//!
//! Invariants: the key file is never readable by group or others (the daemon refuses to start
//! otherwise); the key is zeroized on drop and never logged.

use std::path::{Path, PathBuf};

use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::aead::{AeadImpl, AeadKey};
use super::random;

/// What a derived sealing key is for; each purpose gets its own key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// The state file (store).
    State,
    /// Counter reservations (crypto::counter).
    Counters,
}

impl Purpose {
    fn info(self) -> &'static [u8] {
        match self {
            Purpose::State => b"imcrypt seal state v1",
            Purpose::Counters => b"imcrypt seal counters v1",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NodeKeyError {
    #[error("cannot read node key file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "node key file {path} is readable by group or others (mode {mode:o}); \
         run `chmod 600 {path}` and make sure only the imcrypt user owns it"
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("node key file {path} holds {len} bytes, not 32; restore it from backup")]
    WrongLength { path: PathBuf, len: usize },
}

/// This node's sealing key.
pub struct NodeKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeKey(<redacted>)")
    }
}

impl NodeKey {
    /// Loads the key at `path`, or creates it (mode 0600, fresh OS randomness) when the file
    /// does not exist. Returns whether it was created.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool), NodeKeyError> {
        use crate::store::secret::{self, SecretFileError};
        let (bytes, created) =
            secret::load_or_create(path, 33, || Zeroizing::new(random::new_key().to_vec()))
                .map_err(|e| match e {
                    SecretFileError::Io(source) => {
                        NodeKeyError::Io { path: path.to_owned(), source }
                    }
                    SecretFileError::TooOpen { mode } => {
                        NodeKeyError::TooOpen { path: path.to_owned(), mode }
                    }
                })?;
        let key: [u8; 32] = bytes[..]
            .try_into()
            .map_err(|_| NodeKeyError::WrongLength { path: path.to_owned(), len: bytes.len() })?;
        Ok((Self(Zeroizing::new(key)), created))
    }

    /// A key from bytes, for tests.
    #[doc(hidden)]
    pub fn from_bytes(b: [u8; 32]) -> Self {
        Self(Zeroizing::new(b))
    }

    /// The AES-256-GCM key for one purpose: HKDF-SHA256(ikm = node key, no salt, info).
    pub fn sealing_key(&self, purpose: Purpose) -> AeadKey {
        let hk = Hkdf::<Sha256>::new(None, &self.0[..]);
        let mut k = Zeroizing::new([0u8; 32]);
        hk.expand(purpose.info(), &mut k[..]).expect("32 bytes is a valid HKDF output length");
        AeadKey::new(AeadImpl::default(), &k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn created_0600_then_loaded_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("node.key");
        let (a, created) = NodeKey::load_or_create(&p).unwrap();
        assert!(created);
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        let (b, created) = NodeKey::load_or_create(&p).unwrap();
        assert!(!created);
        assert_eq!(*a.0, *b.0);
    }

    #[test]
    fn refuses_a_key_file_others_can_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("node.key");
        NodeKey::load_or_create(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = NodeKey::load_or_create(&p).unwrap_err().to_string();
        assert!(e.contains("readable by group or others") && e.contains("chmod 600"), "{e}");
    }

    #[test]
    fn refuses_a_truncated_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("node.key");
        std::fs::write(&p, [1u8; 31]).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            NodeKey::load_or_create(&p),
            Err(NodeKeyError::WrongLength { len: 31, .. })
        ));
    }
}
