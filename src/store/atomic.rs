//! Private files written whole or not at all: the one place imcrypt writes a file that holds
//! state or a secret (the sealed state and counters, the node key, the admin token, the
//! viewer's key ring and key exports).
//!
//! A write goes to a temporary file in the same directory, created new with mode 0600, is
//! written and fsynced, then moved into place, and the directory is fsynced. Replacing, the
//! temporary file is `NAME.tmp` and is renamed over `NAME`; keeping an existing file, it is
//! `NAME.tmp.PID` and is hard-linked to `NAME`, which fails if `NAME` exists.
//!
//! A write that fails removes its temporary file before it returns the error, so a full or
//! failing disk leaves no `NAME.tmp` behind; one that could not be removed then (the file
//! system went read-only) or that a crash left is removed by [`remove_leftover`] at the next
//! start, and in any case before the next write.
//!
//! Invariants: after a crash at any point `NAME` holds the old content or the new, never a mix
//! or a part; the file is never, not even for a moment, readable by group or others; with
//! [`Existing::Keep`] a file that is there, or appears meanwhile, is never replaced; the
//! temporary file is created new, so a link planted at its name is never followed.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// What a write does when the file already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Existing {
    /// Replace it (the state files, `--force`).
    Replace,
    /// Keep it and fail: see [`WriteError::is_taken`].
    Keep,
}

/// One step of a write, in order. Exposed so tests can stop a write after any step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum WriteStep {
    CreateTemp,
    WriteHalf,
    WriteAll,
    SyncTemp,
    /// Renamed (or, keeping an existing file, linked) into place.
    Rename,
    SyncDir,
}

impl WriteStep {
    #[cfg(test)]
    pub(crate) const ALL: [WriteStep; 6] = [
        WriteStep::CreateTemp,
        WriteStep::WriteHalf,
        WriteStep::WriteAll,
        WriteStep::SyncTemp,
        WriteStep::Rename,
        WriteStep::SyncDir,
    ];
}

/// A write that failed: the step, what it was doing in words, and the file it was doing it to
/// (the temporary file up to the fsync, then the file itself).
#[derive(Debug, thiserror::Error)]
#[error("cannot {action} {}: {source}", path.display())]
pub(crate) struct WriteError {
    step: WriteStep,
    pub(crate) action: &'static str,
    pub(crate) path: PathBuf,
    pub(crate) source: std::io::Error,
}

impl WriteError {
    /// Keeping an existing file, the file was there: nothing was written.
    pub(crate) fn is_taken(&self) -> bool {
        self.step == WriteStep::Rename && self.source.kind() == std::io::ErrorKind::AlreadyExists
    }
}

/// Writes `bytes` to `path` whole or not at all, mode 0600, and makes it durable.
pub(crate) fn write_private(
    path: &Path,
    bytes: &[u8],
    existing: Existing,
) -> Result<(), WriteError> {
    write_private_until(path, bytes, existing, WriteStep::SyncDir)
}

/// Runs the write only up to and including `last`, as if the process died right after it.
#[doc(hidden)]
pub(crate) fn write_private_until(
    path: &Path,
    bytes: &[u8],
    existing: Existing,
    last: WriteStep,
) -> Result<(), WriteError> {
    let tmp = temp_path(path, existing);
    let result = match write_temp(&tmp, bytes, last) {
        Ok(false) => return Ok(()),
        Ok(true) => place(&tmp, path, existing, last),
        Err(e) => Err(e),
    };
    // Whatever stands at the temporary name when it could not be created is not ours.
    let ours = !matches!(&result, Err(e) if e.step == WriteStep::CreateTemp);
    if ours
        && (existing == Existing::Keep || result.is_err())
        && let Err(e) = std::fs::remove_file(&tmp)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(
            path = %tmp.display(),
            error = %e,
            "cannot remove the temporary file of a failed write; it is removed at the next start"
        );
    }
    result
}

/// The temporary file of a write to `path`.
fn temp_path(path: &Path, existing: Existing) -> PathBuf {
    let mut tmp = path.as_os_str().to_owned();
    match existing {
        Existing::Replace => tmp.push(".tmp"),
        // Two processes may create the same file at once: each needs its own temporary file.
        Existing::Keep => tmp.push(format!(".tmp.{}", std::process::id())),
    }
    PathBuf::from(tmp)
}

/// Removes the temporary file a replacing write to `path` left when it was cut short (a crash,
/// `kill -9`, a file system that went read-only mid-write). Such a file never holds anything
/// acknowledged: the write it belonged to never reached its rename. Returns whether there was
/// one.
pub(crate) fn remove_leftover(path: &Path) -> std::io::Result<bool> {
    match std::fs::remove_file(temp_path(path, Existing::Replace)) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

fn fail(
    step: WriteStep,
    action: &'static str,
    path: &Path,
) -> impl FnOnce(std::io::Error) -> WriteError {
    let path = path.to_owned();
    move |source| WriteError { step, action, path, source }
}

/// Creates, writes and fsyncs `tmp`; `Ok(false)` when `last` stopped it before the end.
fn write_temp(tmp: &Path, bytes: &[u8], last: WriteStep) -> Result<bool, WriteError> {
    // A leftover of a crashed write, or a link someone planted: gone, or `create_new` fails.
    let _ = std::fs::remove_file(tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)
        .map_err(fail(WriteStep::CreateTemp, "create", tmp))?;
    if last == WriteStep::CreateTemp {
        return Ok(false);
    }
    let half = bytes.len() / 2;
    f.write_all(&bytes[..half]).map_err(fail(WriteStep::WriteHalf, "write", tmp))?;
    if last == WriteStep::WriteHalf {
        return Ok(false);
    }
    f.write_all(&bytes[half..]).map_err(fail(WriteStep::WriteAll, "write", tmp))?;
    if last == WriteStep::WriteAll {
        return Ok(false);
    }
    f.sync_all().map_err(fail(WriteStep::SyncTemp, "fsync", tmp))?;
    Ok(last > WriteStep::SyncTemp)
}

/// Moves the written `tmp` to `path` and fsyncs the directory.
fn place(tmp: &Path, path: &Path, existing: Existing, last: WriteStep) -> Result<(), WriteError> {
    match existing {
        Existing::Replace => {
            std::fs::rename(tmp, path).map_err(fail(WriteStep::Rename, "rename", path))?
        }
        Existing::Keep => {
            std::fs::hard_link(tmp, path).map_err(fail(WriteStep::Rename, "link", path))?
        }
    }
    if last == WriteStep::Rename {
        return Ok(());
    }
    sync_dir(parent_dir(path)).map_err(fail(WriteStep::SyncDir, "fsync the directory of", path))
}

fn parent_dir(p: &Path) -> &Path {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// fsyncs a directory so that a rename or a new file in it survives power loss.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn replacing_writes_0600_and_an_interrupted_write_leaves_old_or_new() {
        for step in WriteStep::ALL {
            let d = tempfile::tempdir().unwrap();
            let p = d.path().join("f");
            write_private(&p, b"old", Existing::Replace).unwrap();
            assert_eq!(mode(&p), 0o600);
            write_private_until(&p, b"new", Existing::Replace, step).unwrap();
            let want: &[u8] = if step >= WriteStep::Rename { b"new" } else { b"old" };
            assert_eq!(std::fs::read(&p).unwrap(), want, "after {step:?}");
            write_private(&p, b"newer", Existing::Replace).unwrap();
            assert_eq!(std::fs::read(&p).unwrap(), b"newer");
        }
    }

    #[test]
    fn keeping_never_replaces_and_leaves_no_temporary_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        write_private(&p, b"one", Existing::Keep).unwrap();
        assert_eq!(mode(&p), 0o600);
        let e = write_private(&p, b"two", Existing::Keep).unwrap_err();
        assert!(e.is_taken(), "{e}");
        assert_eq!(std::fs::read(&p).unwrap(), b"one");
        let names: Vec<_> =
            std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["f"]);
    }

    #[test]
    fn a_planted_link_at_the_temporary_name_is_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, b"untouched").unwrap();
        let p = d.path().join("f");
        std::os::unix::fs::symlink(&victim, d.path().join("f.tmp")).unwrap();
        write_private(&p, b"data", Existing::Replace).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"untouched");
        assert_eq!(std::fs::read(&p).unwrap(), b"data");
    }
}
