//! The file policy of nsac: the one place that decides how every file is read and written.
//!
//! It lives in the lowest crate that touches files (this one reads spec files); the runtime
//! (tensor files, the tuning DB) and the CLI (`fmt --write`, `compile -o`) use it too, so the
//! rules below hold for every path nsac is given (README, "Files nsac reads and writes"):
//!
//! - **Inputs** must be regular files (symlinks followed) below a size cap. The metadata is
//!   checked before anything is opened, so a device, FIFO or socket is refused without a read
//!   (and a FIFO cannot block: the file is opened with `O_NONBLOCK` and checked again). Reads
//!   take at most cap + 1 bytes, whatever the file claims.
//! - **Outputs** are written to a temporary file in the target's directory, flushed, then
//!   renamed over the target. A symlink is followed to its final target (the target is
//!   replaced, the link stays a link); a target that exists and is not a regular file is an
//!   error, never replaced; an existing file keeps its permission mode (and, where allowed,
//!   its owner), a new file gets what `File::create` would give (0o666 less the umask).
//!   [`check_writable`] finds an unwritable destination before any work is done, and every
//!   error names the user's path, never the temporary file.
//! - Several files that belong together (an npy directory, PTX and its manifest) are
//!   [`stage`]d first — every one written and flushed under its temporary name — and only then
//!   renamed into place ([`commit_all`]), so a failure leaves the old files as they were.

use std::fs::{self, File, Metadata};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// The largest spec file nsac reads (far above any real spec).
pub const SPEC_MAX_BYTES: u64 = 16 << 20;
/// The largest tuning-DB file (or `tune --import` file) nsac reads.
pub const DB_MAX_BYTES: u64 = 256 << 20;
/// The default largest tensor file (`--inputs`); `NSAC_MAX_INPUT_BYTES` overrides it.
pub const TENSOR_FILE_MAX_BYTES: u64 = 16 << 30;
/// The environment variable that overrides [`TENSOR_FILE_MAX_BYTES`] (a byte count).
pub const TENSOR_CAP_ENV: &str = "NSAC_MAX_INPUT_BYTES";

/// The tensor-file cap in force: `NSAC_MAX_INPUT_BYTES` if it holds a byte count, else
/// [`TENSOR_FILE_MAX_BYTES`].
pub fn tensor_file_cap() -> u64 {
    std::env::var(TENSOR_CAP_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(TENSOR_FILE_MAX_BYTES)
}

/// Why a file could not be read or written under the policy. Each variant names the path the
/// user gave.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("{}: no such file or directory", path.display())]
    Missing { path: PathBuf },
    #[error("{}: is a {kind}, not a regular file; nsac reads only regular files", path.display())]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("{}: is a {kind}, not a directory", path.display())]
    NotDirectory { path: PathBuf, kind: &'static str },
    #[error("{}: {size} bytes is more than the {cap}-byte limit for {what}", path.display())]
    TooLarge {
        path: PathBuf,
        size: u64,
        cap: u64,
        what: &'static str,
    },
    #[error("cannot write {}: it is a {kind}; nsac only replaces regular files", path.display())]
    OutputNotRegular { path: PathBuf, kind: &'static str },
    #[error("cannot write {}: {reason}", path.display())]
    NotWritable { path: PathBuf, reason: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl FsError {
    /// The path the error is about (the user's path).
    pub fn path(&self) -> &Path {
        match self {
            FsError::Missing { path }
            | FsError::NotRegular { path, .. }
            | FsError::NotDirectory { path, .. }
            | FsError::TooLarge { path, .. }
            | FsError::OutputNotRegular { path, .. }
            | FsError::NotWritable { path, .. }
            | FsError::Io { path, .. } => path,
        }
    }

    fn io(path: &Path, source: io::Error) -> Self {
        FsError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// A file type in words: "regular file", "directory", "character device", "FIFO", …
pub fn kind_of(meta: &Metadata) -> &'static str {
    let ft = meta.file_type();
    if ft.is_file() {
        return "regular file";
    }
    if ft.is_dir() {
        return "directory";
    }
    if ft.is_symlink() {
        return "symbolic link";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_char_device() {
            return "character device";
        }
        if ft.is_block_device() {
            return "block device";
        }
        if ft.is_fifo() {
            return "FIFO (named pipe)";
        }
        if ft.is_socket() {
            return "socket";
        }
    }
    "special file"
}

/// The metadata of an input path (symlinks followed), which must be a regular file of at most
/// `cap` bytes. Opens nothing.
pub fn check_input_file(path: &Path, cap: u64, what: &'static str) -> Result<Metadata, FsError> {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(FsError::Missing {
                path: path.to_path_buf(),
            });
        }
        Err(e) => return Err(FsError::io(path, e)),
    };
    check_regular_meta(path, &meta, cap, what)?;
    Ok(meta)
}

fn check_regular_meta(
    path: &Path,
    meta: &Metadata,
    cap: u64,
    what: &'static str,
) -> Result<(), FsError> {
    if !meta.is_file() {
        return Err(FsError::NotRegular {
            path: path.to_path_buf(),
            kind: kind_of(meta),
        });
    }
    if meta.len() > cap {
        return Err(FsError::TooLarge {
            path: path.to_path_buf(),
            size: meta.len(),
            cap,
            what,
        });
    }
    Ok(())
}

/// An input path that must be a directory (symlinks followed).
pub fn check_input_dir(path: &Path) -> Result<(), FsError> {
    match fs::metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(m) => Err(FsError::NotDirectory {
            path: path.to_path_buf(),
            kind: kind_of(&m),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(FsError::Missing {
            path: path.to_path_buf(),
        }),
        Err(e) => Err(FsError::io(path, e)),
    }
}

/// Opens a regular file for reading without ever blocking on it (`O_NONBLOCK`: a FIFO swapped
/// in after the metadata check opens at once and is refused by the second check).
fn open_nonblocking(path: &Path) -> io::Result<File> {
    let mut options = fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY);
    }
    options.open(path)
}

/// Reads a whole regular file of at most `cap` bytes (`what` names it in the error): checks
/// the metadata first, then reads at most `cap + 1` bytes, so neither a device, a FIFO nor a
/// file that grows while read can make it hang or exhaust memory.
pub fn read_bounded(path: &Path, cap: u64, what: &'static str) -> Result<Vec<u8>, FsError> {
    check_input_file(path, cap, what)?;
    let file = open_nonblocking(path).map_err(|e| FsError::io(path, e))?;
    let meta = file.metadata().map_err(|e| FsError::io(path, e))?;
    check_regular_meta(path, &meta, cap, what)?;
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(cap.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| FsError::io(path, e))?;
    if bytes.len() as u64 > cap {
        return Err(FsError::TooLarge {
            path: path.to_path_buf(),
            size: bytes.len() as u64,
            cap,
            what,
        });
    }
    Ok(bytes)
}

/// Where an output path leads: the final target of its symlinks, and that target's metadata if
/// it exists.
#[derive(Debug)]
pub struct OutputTarget {
    /// The file that will be replaced or created (the path itself when it is no link).
    pub target: PathBuf,
    /// The target's metadata, if it exists (then it is a regular file).
    pub existing: Option<Metadata>,
}

/// Follows `path`'s symlinks to the file an output replaces; an existing target that is not a
/// regular file (a directory, device, FIFO, socket) is an error.
pub fn resolve_output(path: &Path) -> Result<OutputTarget, FsError> {
    let mut target = path.to_path_buf();
    for _ in 0..40 {
        match fs::symlink_metadata(&target) {
            Ok(m) if m.file_type().is_symlink() => {
                let link = fs::read_link(&target).map_err(|e| FsError::io(path, e))?;
                target = match target.parent() {
                    Some(dir) if link.is_relative() => dir.join(link),
                    _ => link,
                };
            }
            Ok(m) if m.is_file() => {
                return Ok(OutputTarget {
                    target,
                    existing: Some(m),
                });
            }
            Ok(m) => {
                return Err(FsError::OutputNotRegular {
                    path: path.to_path_buf(),
                    kind: kind_of(&m),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(OutputTarget {
                    target,
                    existing: None,
                });
            }
            Err(e) => return Err(FsError::io(path, e)),
        }
    }
    Err(FsError::NotWritable {
        path: path.to_path_buf(),
        reason: "too many levels of symbolic links".into(),
    })
}

/// The directory a file path lives in (`.` for a bare name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Whether a file can be created in `dir`, found by creating (and removing) one.
fn probe_dir(user: &Path, dir: &Path) -> Result<(), FsError> {
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(m) => {
            return Err(FsError::NotWritable {
                path: user.to_path_buf(),
                reason: format!("{} is a {}, not a directory", dir.display(), kind_of(&m)),
            });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(FsError::NotWritable {
                path: user.to_path_buf(),
                reason: format!("the directory {} does not exist", dir.display()),
            });
        }
        Err(e) => return Err(FsError::io(user, e)),
    }
    tempfile::Builder::new()
        .prefix(".nsac-probe")
        .tempfile_in(dir)
        .map(drop)
        .map_err(|e| FsError::NotWritable {
            path: user.to_path_buf(),
            reason: format!("cannot create files in {}: {e}", dir.display()),
        })
}

/// Checks, before any work, that [`write_atomic`] to `path` can succeed: the target is not a
/// non-regular file and its directory exists and takes new files.
pub fn check_writable(path: &Path) -> Result<(), FsError> {
    let out = resolve_output(path)?;
    probe_dir(path, parent_dir(&out.target))
}

/// Checks that `dir` can be used as an output directory (see [`create_output_dir`]): an
/// existing directory that takes new files, or a new one whose nearest existing ancestor does.
pub fn check_writable_dir(dir: &Path) -> Result<(), FsError> {
    let mut probe = dir;
    loop {
        match fs::metadata(probe) {
            Ok(m) if m.is_dir() => return probe_dir(dir, probe),
            Ok(m) => {
                return Err(FsError::NotWritable {
                    path: dir.to_path_buf(),
                    reason: format!("{} is a {}, not a directory", probe.display(), kind_of(&m)),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                probe = parent_dir(probe);
                if probe == Path::new(".") && fs::metadata(probe).is_err() {
                    return Err(FsError::io(dir, e));
                }
            }
            Err(e) => return Err(FsError::io(dir, e)),
        }
    }
}

/// Creates the output directory `dir` (and its parents); an existing non-directory is an error.
pub fn create_output_dir(dir: &Path) -> Result<(), FsError> {
    if let Ok(m) = fs::metadata(dir)
        && !m.is_dir()
    {
        return Err(FsError::NotWritable {
            path: dir.to_path_buf(),
            reason: format!("it is a {}, not a directory", kind_of(&m)),
        });
    }
    fs::create_dir_all(dir).map_err(|e| FsError::io(dir, e))
}

/// One output written under a temporary name beside its target, not yet renamed into place.
#[derive(Debug)]
pub struct Staged {
    user: PathBuf,
    target: PathBuf,
    temp: tempfile::NamedTempFile,
}

impl Staged {
    /// Renames the staged file over its target.
    pub fn commit(self) -> Result<(), FsError> {
        let Staged { user, target, temp } = self;
        temp.persist(&target)
            .map_err(|e| FsError::io(&user, e.error))?;
        Ok(())
    }

    /// The path the user gave.
    pub fn path(&self) -> &Path {
        &self.user
    }
}

/// Writes `bytes` to a temporary file beside `path`'s target (symlinks followed), with the
/// target's mode, flushed to disk; [`Staged::commit`] then renames it into place. Dropping the
/// result removes the temporary file and leaves the target as it was.
pub fn stage(path: &Path, bytes: &[u8]) -> Result<Staged, FsError> {
    let out = resolve_output(path)?;
    let dir = parent_dir(&out.target);
    let io = |e| FsError::io(path, e);
    let mut builder = tempfile::Builder::new();
    builder.prefix(".nsac-tmp");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // Created with 0o666 less the umask, as `File::create` would.
        builder.permissions(fs::Permissions::from_mode(0o666));
    }
    let mut temp = builder.tempfile_in(dir).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => FsError::NotWritable {
            path: path.to_path_buf(),
            reason: format!("the directory {} does not exist", dir.display()),
        },
        _ => FsError::NotWritable {
            path: path.to_path_buf(),
            reason: format!("cannot create files in {}: {e}", dir.display()),
        },
    })?;
    if let Some(meta) = &out.existing {
        keep_mode_and_owner(temp.as_file(), meta).map_err(io)?;
    }
    temp.write_all(bytes).map_err(io)?;
    temp.as_file().sync_all().map_err(io)?;
    Ok(Staged {
        user: path.to_path_buf(),
        target: out.target,
        temp,
    })
}

/// Gives the new file the mode of the one it replaces, and its owner when this process may.
fn keep_mode_and_owner(file: &File, meta: &Metadata) -> io::Result<()> {
    file.set_permissions(meta.permissions())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let mine = file.metadata()?;
        if mine.uid() != meta.uid() || mine.gid() != meta.gid() {
            // Only root may give a file away; for others keeping the mode is all we can do.
            let _ = std::os::unix::fs::fchown(file, Some(meta.uid()), Some(meta.gid()));
            // chown may clear set-id bits: put the mode back.
            file.set_permissions(meta.permissions())?;
        }
    }
    Ok(())
}

/// Renames every staged file into place, in order.
pub fn commit_all(staged: Vec<Staged>) -> Result<(), FsError> {
    for s in staged {
        s.commit()?;
    }
    Ok(())
}

/// Replaces (or creates) `path` with `bytes` under the policy: [`stage`] then commit.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FsError> {
    stage(path, bytes)?.commit()
}

/// A path made absolute with its symlinks resolved; for a path that does not exist yet, its
/// nearest existing ancestor is resolved and the rest appended.
pub fn canonical_location(path: &Path) -> PathBuf {
    if let Ok(p) = fs::canonicalize(path) {
        return p;
    }
    let mut tail = Vec::new();
    let mut head = path;
    loop {
        match (head.parent(), head.file_name()) {
            (Some(parent), Some(name)) => {
                tail.push(name.to_os_string());
                head = parent;
                let base = if head.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    head
                };
                if let Ok(mut p) = fs::canonicalize(base) {
                    for t in tail.iter().rev() {
                        p.push(t);
                    }
                    return p;
                }
            }
            _ => return path.to_path_buf(),
        }
    }
}

/// Whether two paths name the same file or directory (after following symlinks and `..`).
pub fn same_location(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(x), Ok(y)) = (fs::metadata(a), fs::metadata(b)) {
            return x.dev() == y.dev() && x.ino() == y.ino();
        }
    }
    canonical_location(a) == canonical_location(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_capped_and_special_files_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.txt");
        fs::write(&f, b"hello world").unwrap();
        assert_eq!(read_bounded(&f, 11, "a test").unwrap(), b"hello world");
        assert!(matches!(
            read_bounded(&f, 10, "a test"),
            Err(FsError::TooLarge { size: 11, .. })
        ));
        assert!(matches!(
            read_bounded(Path::new("/dev/zero"), 10, "a test"),
            Err(FsError::NotRegular { .. })
        ));
        assert!(matches!(
            read_bounded(dir.path(), 10, "a test"),
            Err(FsError::NotRegular { .. })
        ));
        assert!(matches!(
            read_bounded(&dir.path().join("none"), 10, "a test"),
            Err(FsError::Missing { .. })
        ));
    }

    #[cfg(unix)]
    #[test]
    fn writes_follow_links_keep_modes_and_refuse_devices() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target.txt");
        fs::write(&target, b"old").unwrap();
        fs::set_permissions(&target, fs::Permissions::from_mode(0o640)).unwrap();
        let link = dir.path().join("link.txt");
        std::os::unix::fs::symlink("target.txt", &link).unwrap();
        write_atomic(&link, b"new").unwrap();
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(fs::read(&target).unwrap(), b"new");
        assert_eq!(
            fs::metadata(&target).unwrap().permissions().mode() & 0o777,
            0o640
        );
        assert!(matches!(
            check_writable(Path::new("/dev/null")),
            Err(FsError::OutputNotRegular { .. })
        ));
        let err = check_writable(&dir.path().join("no/such/dir/x")).unwrap_err();
        assert!(err.to_string().contains("no/such/dir/x"), "{err}");
        // Only the target and the link remain: no temporary or probe file is left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn same_location_sees_through_dots_and_links() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        fs::create_dir(&a).unwrap();
        assert!(same_location(&a, &a.join("..").join("a")));
        assert!(same_location(&a.join("new"), &a.join(".").join("new")));
        assert!(!same_location(&a, &dir.path().join("b")));
    }
}
