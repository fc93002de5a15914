//! The typed errors of tensor file I/O; each names the path and, where there is one, the tensor.

use std::path::PathBuf;

/// Why tensors could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum TensorIoError {
    #[error("{0}: no such file or directory")]
    Missing(PathBuf),
    #[error(
        "{0}: not a tensor path nsac knows (a `.safetensors` file or a directory of `.npy` files)"
    )]
    UnknownFormat(PathBuf),
    #[error("{0}: is a directory, cannot write a safetensors file there")]
    IsDirectory(PathBuf),
    #[error("{path}: not a valid safetensors file: {reason}")]
    NotSafetensors { path: PathBuf, reason: String },
    #[error("{path}: not a valid .npy file: {reason}")]
    NotNpy { path: PathBuf, reason: String },
    #[error("{path}: tensor `{name}` has dtype {dtype}; expected {expected}")]
    UnsupportedDtype {
        path: PathBuf,
        name: String,
        dtype: String,
        expected: &'static str,
    },
    #[error("{path}: tensor `{name}` has shape {shape:?} but holds {len} values")]
    ShapeMismatch {
        path: PathBuf,
        name: String,
        shape: Vec<usize>,
        len: usize,
    },
    #[error("{path}: `cu_seqlens` {reason}")]
    BadCuSeqlens { path: PathBuf, reason: String },
    #[error("{path}: tensor name `{name}` cannot be used as a file name")]
    BadName { path: PathBuf, name: String },
    #[error(transparent)]
    File(#[from] crate::fs_policy::FsError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl TensorIoError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        TensorIoError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
