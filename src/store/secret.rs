//! Small secret files (the node key, the admin token): created once with mode 0600 and fresh
//! content, read back only while group and others cannot read them.
//!
//! Invariants: a secret file is never created readable by anyone but its owner, and a crash
//! never leaves an empty or partial one (`atomic` writes it, keeping an existing file); an
//! existing one that group or others can read is refused, not used; the content is zeroized
//! when dropped.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use zeroize::Zeroizing;

use super::{Existing, write_private};

/// Why a secret file cannot be used. The caller names the file in its own terms.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SecretFileError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Group or others can read it; `mode` is the permission bits found.
    #[error("readable by group or others (mode {mode:o})")]
    TooOpen { mode: u32 },
}

/// Reads the secret at `path` (at most `max_len` bytes), or creates it with `make()` when it
/// does not exist. Returns the content and whether it was created now.
pub(crate) fn load_or_create(
    path: &Path,
    max_len: usize,
    make: impl FnOnce() -> Zeroizing<Vec<u8>>,
) -> Result<(Zeroizing<Vec<u8>>, bool), SecretFileError> {
    if !path.exists() {
        // Linked into place (`Existing::Keep`): if another process created the file meanwhile,
        // that file is read below.
        let content = make();
        match write_private(path, &content, Existing::Keep) {
            Ok(()) => return Ok((content, true)),
            Err(e) if e.is_taken() => {}
            Err(e) => return Err(e.source.into()),
        }
    }
    let mut f = std::fs::File::open(path)?;
    let mode = f.metadata()?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(SecretFileError::TooOpen { mode: mode & 0o777 });
    }
    let mut buf = Zeroizing::new(Vec::with_capacity(max_len));
    Read::by_ref(&mut f).take(max_len as u64).read_to_end(&mut buf)?;
    Ok((buf, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_0600_once_and_refused_when_opened_up() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("secret");
        let (a, created) = load_or_create(&p, 16, || Zeroizing::new(b"abc".to_vec())).unwrap();
        assert!(created && &a[..] == b"abc");
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        let (b, created) = load_or_create(&p, 16, || unreachable!()).unwrap();
        assert!(!created && &b[..] == b"abc");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(
            load_or_create(&p, 16, || unreachable!()),
            Err(SecretFileError::TooOpen { mode: 0o640 })
        ));
    }
}
