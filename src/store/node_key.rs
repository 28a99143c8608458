//! The node key file (`node.key` in the state directory): the 32 random bytes of
//! [`NodeKey`], created on first start with fresh OS randomness and mode 0600 (`secret`), read
//! back on every later start. The key itself and what it seals are `crypto::seal`'s.
//!
//! Invariants: the file is never readable by group or others (the daemon refuses to start
//! otherwise); a file of another length is refused, never replaced; the key is zeroized on
//! drop and never logged.

use std::path::Path;

use zeroize::Zeroizing;

use super::secret::{self, SecretFileError};
use crate::crypto::random;
use crate::crypto::seal::NodeKey;

/// Why the node key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum NodeKeyError {
    #[error("cannot read node key file {path}: {source}")]
    Io { path: std::path::PathBuf, source: std::io::Error },
    #[error(
        "node key file {path} is readable by group or others (mode {mode:o}); \
         run `chmod 600 {path}` and make sure only the imcrypt user owns it"
    )]
    TooOpen { path: std::path::PathBuf, mode: u32 },
    #[error("node key file {path} holds {len} bytes, not 32; restore it from backup")]
    WrongLength { path: std::path::PathBuf, len: usize },
}

/// The node key's file name in the state directory.
pub(crate) const NODE_KEY_FILE: &str = "node.key";

/// The node key of the state directory `dir`, for a command run beside the daemon on its host
/// (`imcrypt admin token --local`, `imcrypt audit verify --config`); `None` when there is none.
/// Never creates one: a key made here would seal what the daemon cannot read.
pub(crate) fn existing_node_key(dir: &Path) -> Result<Option<NodeKey>, NodeKeyError> {
    let path = dir.join(NODE_KEY_FILE);
    if !path.exists() {
        return Ok(None);
    }
    NodeKey::load_or_create(&path).map(|(key, _)| Some(key))
}

impl NodeKey {
    /// Loads the key at `path`, or creates it (mode 0600, fresh OS randomness) when the file
    /// does not exist. Returns whether it was created.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool), NodeKeyError> {
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
        Ok((Self::from_secret(Zeroizing::new(key)), created))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::seal::Purpose;
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
        // The same key: what one seals, the other opens.
        let mut sealed = b"state".to_vec();
        a.sealing_key(Purpose::State).seal_in_place(&[0; 12], b"", &mut sealed, 0);
        let opened = b.sealing_key(Purpose::State).open(&[0; 12], b"", &sealed).unwrap();
        assert_eq!(&opened[..], b"state");
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
