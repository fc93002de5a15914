//! Cross-process exclusion and atomic replacement for the tuning-DB file.
//!
//! Writers lock a sidecar `<file>.lock` (an OS file lock, released when the guard drops or the
//! process dies), re-read the file, merge, and replace it through a temporary file in the same
//! directory renamed over it, so a reader never sees half a file and no update is lost. A lock
//! that cannot be made (a read-only directory) is an error the DB turns into a warning.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use crate::fs_policy::{self, FsError};

/// Holds the exclusive lock on a file's sidecar until dropped.
#[derive(Debug)]
pub struct LockGuard {
    _file: File,
}

/// The sidecar lock path of `path`: the same name with `.lock` appended.
pub fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Blocks until this process holds the exclusive lock for `path` (creating its directory).
pub fn lock_exclusive(path: &Path) -> io::Result<LockGuard> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lock_path(path))?;
    file.lock()?;
    Ok(LockGuard { _file: file })
}

/// Replaces `path` with `contents` atomically, by the file policy ([`crate::fs_policy`]):
/// temporary file beside the target + rename, symlinks followed, mode kept, never over a
/// non-regular file. The directory is created if missing (the DB's default cache directory).
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), FsError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && std::fs::metadata(dir).is_err()
    {
        fs_policy::create_output_dir(dir)?;
    }
    fs_policy::write_atomic(path, contents)
}
