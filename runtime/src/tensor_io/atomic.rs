//! Whole-or-nothing tensor file writes, by the file policy ([`crate::fs_policy`]): bytes go to
//! a temporary file beside the target (symlinks followed, mode kept, never over a non-regular
//! file), renamed over it only once fully written and flushed. Several files are all staged
//! before the first is renamed, so a failure leaves every old file as it was.

use std::path::{Path, PathBuf};

use super::TensorIoError;
use crate::fs_policy;

/// Writes `bytes` to `path` atomically (on one filesystem, rename replaces the file at once).
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<(), TensorIoError> {
    Ok(fs_policy::write_atomic(path, bytes)?)
}

/// Writes every `(path, bytes)`: all are written under temporary names first, then renamed.
pub fn write_files(files: Vec<(PathBuf, Vec<u8>)>) -> Result<(), TensorIoError> {
    let mut staged = Vec::with_capacity(files.len());
    for (path, bytes) in files {
        staged.push(fs_policy::stage(&path, &bytes)?);
    }
    Ok(fs_policy::commit_all(staged)?)
}
