//! The admin token file of earlier releases: 32 random bytes, written as 64 hex digits to a
//! file of mode 0600 the first time the daemon starts. It is still made on a fresh install, and
//! read once: `tokens` turns it into the first named administrator, `admin` (the CLI's
//! `--config` still reads it as the default token).
//!
//! Invariants: the token file is never created readable by group or others, and an existing
//! one that is is refused (as the node key is); the token is never logged.

use std::path::{Path, PathBuf};

use zeroize::{Zeroize, Zeroizing};

use crate::crypto::locked::Locked;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read or create the admin token file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "admin token file {path} is readable by group or others (mode {mode:o}); run \
         `chmod 600 {path}`"
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error(
        "admin token file {path} does not hold a token of 64 hex digits; delete it to get a new one at the next start"
    )]
    Malformed { path: PathBuf },
}

/// The token the daemon expects: its 64 hex digits, out of core dumps and swap.
pub(crate) struct Token(Locked<[u8; 64]>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// Loads the token at `path`, or creates it (0600, OS randomness). Returns whether it was
    /// created.
    pub(crate) fn load_or_create(path: &Path) -> Result<(Self, bool), TokenError> {
        use crate::store::secret::{self, SecretFileError};
        let (bytes, created) = secret::load_or_create(path, 128, || {
            let mut t = hex::encode(crate::crypto::random::os_bytes::<32>()).into_bytes();
            t.push(b'\n');
            Zeroizing::new(t)
        })
        .map_err(|e| match e {
            SecretFileError::Io(source) => TokenError::Io { path: path.to_owned(), source },
            SecretFileError::TooOpen { mode } => {
                TokenError::TooOpen { path: path.to_owned(), mode }
            }
        })?;
        let t = std::str::from_utf8(&bytes).map(str::trim).unwrap_or_default();
        if t.len() != 64 || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(TokenError::Malformed { path: path.to_owned() });
        }
        let mut digits = [0u8; 64];
        digits.copy_from_slice(t.as_bytes());
        let token = Self(Locked::new(digits));
        digits.zeroize();
        Ok((token, created))
    }

    /// The token's 64 hex digits, as an administrator sends them.
    pub(crate) fn digits(&self) -> &str {
        std::str::from_utf8(&self.0[..]).expect("checked to be hex digits at load")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn created_0600_then_loaded_and_checked() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("admin.token");
        let (t, created) = Token::load_or_create(&p).unwrap();
        assert!(created);
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = std::fs::read_to_string(&p).unwrap();
        let (again, created) = Token::load_or_create(&p).unwrap();
        assert!(!created);
        assert_eq!((t.digits(), again.digits()), (text.trim(), text.trim()));
        assert!(!format!("{t:?}").contains(text.trim()));

        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Token::load_or_create(&p).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&p, "short").unwrap();
        assert!(matches!(Token::load_or_create(&p), Err(TokenError::Malformed { .. })));
    }
}
