//! Cross-process exclusion and atomic replacement for the tuning-DB file.
//!
//! Writers lock a sidecar `<file>.lock` (an OS file lock, released when the guard drops or the
//! process dies), re-read the file, merge, and replace it through a temporary file in the same
//! directory renamed over it, so a reader never sees half a file and no update is lost.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

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

/// Replaces `path` with `contents` atomically (temporary file in the same directory + rename).
pub fn write_atomic(path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => dir,
        None => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let mut temp = tempfile::NamedTempFile::new_in(dir)?;
    temp.write_all(contents)?;
    temp.as_file().sync_all()?;
    temp.persist(path).map_err(|e| e.error)?;
    Ok(())
}
