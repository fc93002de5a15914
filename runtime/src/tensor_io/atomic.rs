//! Whole-or-nothing file writes: the bytes go to a temporary file beside the target, which is
//! renamed over it only once fully written and flushed.

use std::io::Write;
use std::path::Path;

use super::TensorIoError;

/// Writes `bytes` to `path` atomically (on one filesystem, rename replaces the file at once).
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<(), TensorIoError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let io = |e| TensorIoError::io(path, e);
    let mut tmp = builder().tempfile_in(dir).map_err(io)?;
    tmp.write_all(bytes).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

/// Temporary files are private by default; ask for what a plain `File::create` gets
/// (0o666 less the umask) so the renamed output is as readable as any other file.
fn builder() -> tempfile::Builder<'static, 'static> {
    let mut b = tempfile::Builder::new();
    b.prefix(".nsac-tmp");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        b.permissions(std::fs::Permissions::from_mode(0o666));
    }
    b
}
