//! Reading input tensors and writing output tensors for `nsac run --inputs FILE --output FILE`.
//!
//! Two formats, told apart by the path: a `.safetensors` file, or a directory of `.npy` files
//! (one tensor per file, named by the file stem). Reading yields a [`TensorSet`] of typed host
//! tensors (f32, f64, f16, bf16, i32, i64), which [`into_kernel_inputs`] turns into the f32
//! [`Inputs`] the kernels take plus `cu_seqlens`. Every file is read and written by the file
//! policy ([`crate::fs_policy`]): inputs must be regular files below a size cap
//! ([`fs_policy::tensor_file_cap`](crate::fs_policy::tensor_file_cap)); outputs go through a
//! temporary file renamed over the target, all files of an npy directory staged before the
//! first is renamed, so a failed run never leaves half a file or half a directory.
//! [`check_output`] finds an unwritable output before any work is done. Corrupt, truncated or
//! over-long files are typed errors, never panics.

mod atomic;
mod error;
mod host;
mod npy_dir;
mod safetensors_file;

use std::path::Path;

use nsac_kernels::io::Inputs;
use nsac_kernels::reference::Output;

pub use error::TensorIoError;
pub use host::{ElemType, Element, HostTensor, TensorSet};

/// The name of the varlen segment-offsets tensor.
pub const CU_SEQLENS: &str = "cu_seqlens";

/// The on-disk format of a tensor path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One `.safetensors` file.
    Safetensors,
    /// A directory of `.npy` files, one tensor each, named by file stem.
    NpyDir,
}

impl Format {
    /// The format of an existing path to read: a directory is an npy directory, a file must
    /// end in `.safetensors`.
    pub fn for_reading(path: &Path) -> Result<Format, TensorIoError> {
        match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(TensorIoError::Missing(path.to_path_buf()))
            }
            Err(e) => Err(TensorIoError::io(path, e)),
            Ok(m) if m.is_dir() => Ok(Format::NpyDir),
            Ok(m) if !m.is_file() => Err(crate::fs_policy::FsError::NotRegular {
                path: path.to_path_buf(),
                kind: crate::fs_policy::kind_of(&m),
            }
            .into()),
            Ok(_) if has_safetensors_ext(path) => Ok(Format::Safetensors),
            Ok(_) => Err(TensorIoError::UnknownFormat(path.to_path_buf())),
        }
    }

    /// The format of a path to write: `*.safetensors` (which must not be a directory), an
    /// existing directory, or a new path without an extension (created as an npy directory).
    pub fn for_writing(path: &Path) -> Result<Format, TensorIoError> {
        if has_safetensors_ext(path) {
            if path.is_dir() {
                return Err(TensorIoError::IsDirectory(path.to_path_buf()));
            }
            Ok(Format::Safetensors)
        } else if path.is_dir() || (!path.exists() && path.extension().is_none()) {
            Ok(Format::NpyDir)
        } else {
            Err(TensorIoError::UnknownFormat(path.to_path_buf()))
        }
    }
}

fn has_safetensors_ext(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "safetensors")
}

/// Reads every tensor at `path` (a `.safetensors` file or a directory of `.npy` files).
pub fn read_inputs(path: &Path) -> Result<TensorSet, TensorIoError> {
    match Format::for_reading(path)? {
        Format::Safetensors => safetensors_file::read(path),
        Format::NpyDir => npy_dir::read(path),
    }
}

/// Checks, before any work, that [`write_outputs`] to `path` can succeed as far as the file
/// system goes: a known format, a target that is not a non-regular file, a directory that
/// exists (or, for an npy directory, can be created) and takes new files.
pub fn check_output(path: &Path) -> Result<(), TensorIoError> {
    match Format::for_writing(path)? {
        Format::Safetensors => crate::fs_policy::check_writable(path)?,
        Format::NpyDir => crate::fs_policy::check_writable_dir(path)?,
    }
    Ok(())
}

/// Writes `tensors` to `path` (format by [`Format::for_writing`]), each file atomically.
/// Every tensor is checked (shape agrees with length, name usable) before anything is written.
pub fn write_outputs(path: &Path, tensors: &TensorSet) -> Result<(), TensorIoError> {
    let format = Format::for_writing(path)?;
    for (name, t) in tensors {
        let expected = t.shape().iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if expected != Some(t.len()) {
            return Err(TensorIoError::ShapeMismatch {
                path: path.to_path_buf(),
                name: name.clone(),
                shape: t.shape().to_vec(),
                len: t.len(),
            });
        }
    }
    match format {
        Format::Safetensors => safetensors_file::write(path, tensors),
        Format::NpyDir => npy_dir::write(path, tensors),
    }
}

/// What the kernels take from an input file.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelInputs {
    /// Every tensor but `cu_seqlens`, converted to f32.
    pub inputs: Inputs,
    /// The varlen segment offsets, if the file had `cu_seqlens` (int32 or int64, [N+1]).
    /// Whether they ascend is `Problem::resolve`'s check.
    pub cu_seqlens: Option<Vec<usize>>,
}

/// Splits off `cu_seqlens` and converts every other tensor to f32. `path` is only used to
/// name the source in errors. Non-finite values are passed through (the kernels' input check
/// reports them).
pub fn into_kernel_inputs(set: TensorSet, path: &Path) -> Result<KernelInputs, TensorIoError> {
    let mut inputs = Inputs::new();
    let mut cu_seqlens = None;
    for (name, t) in set {
        if name == CU_SEQLENS {
            cu_seqlens = Some(cu_seqlens_of(&t, path)?);
            continue;
        }
        let converted = t.to_f32().ok_or_else(|| TensorIoError::UnsupportedDtype {
            path: path.to_path_buf(),
            name: name.clone(),
            dtype: t.elem_type().to_string(),
            expected: "a floating-point type (f32, f64, f16, bf16)",
        })?;
        inputs.insert(name, converted);
    }
    Ok(KernelInputs { inputs, cu_seqlens })
}

/// [`read_inputs`] then [`into_kernel_inputs`].
pub fn read_kernel_inputs(path: &Path) -> Result<KernelInputs, TensorIoError> {
    into_kernel_inputs(read_inputs(path)?, path)
}

fn cu_seqlens_of(t: &HostTensor, path: &Path) -> Result<Vec<usize>, TensorIoError> {
    let bad = |reason: String| TensorIoError::BadCuSeqlens {
        path: path.to_path_buf(),
        reason,
    };
    let values = t.to_i64().ok_or_else(|| TensorIoError::UnsupportedDtype {
        path: path.to_path_buf(),
        name: CU_SEQLENS.into(),
        dtype: t.elem_type().to_string(),
        expected: "int32 or int64",
    })?;
    if t.shape().len() != 1 {
        return Err(bad(format!("shape {:?} is not one-dimensional", t.shape())));
    }
    values
        .iter()
        .map(|&v| usize::try_from(v).map_err(|_| bad(format!("negative offset {v}"))))
        .collect()
}

/// The oracle's outputs as a tensor set: `o`, `o_<b>` (f64) and `idx_<b>` (i32).
pub fn reference_outputs(output: &Output) -> TensorSet {
    let mut set = TensorSet::new();
    set.insert("o".into(), HostTensor::F64(output.o.clone()));
    for (b, t) in &output.branches {
        set.insert(format!("o_{b}"), HostTensor::F64(t.clone()));
    }
    for (b, t) in &output.selected {
        set.insert(format!("idx_{b}"), HostTensor::I32(t.clone()));
    }
    set
}
