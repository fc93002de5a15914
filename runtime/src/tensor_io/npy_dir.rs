//! A directory of `.npy` files ⇄ a [`TensorSet`]: one tensor per file, named by the file stem,
//! through the `npyz` crate. Other files and subdirectories are ignored when reading; a `.npy`
//! entry that is not a regular file (a FIFO, a device) is an error, never read.

use std::path::Path;

use npyz::{DType, NpyFile, NpyHeader, Order, TypeChar};
use nsac_kernels::io::Tensor;

use super::host::{ElemType, HostTensor, TensorSet};
use super::{TensorIoError, atomic};
use crate::fs_policy;

/// Reads every `*.npy` file of a directory.
pub fn read(dir: &Path) -> Result<TensorSet, TensorIoError> {
    let entries = std::fs::read_dir(dir).map_err(|e| TensorIoError::io(dir, e))?;
    let mut set = TensorSet::new();
    for entry in entries {
        let path = entry.map_err(|e| TensorIoError::io(dir, e))?.path();
        if path.is_dir() || path.extension().is_none_or(|e| e != "npy") {
            continue;
        }
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .ok_or_else(|| TensorIoError::BadName {
                path: path.clone(),
                name: path.display().to_string(),
            })?
            .to_string();
        let bytes = fs_policy::read_bounded(&path, fs_policy::tensor_file_cap(), "a tensor file")?;
        set.insert(name.clone(), read_one(&path, &name, &bytes)?);
    }
    Ok(set)
}

/// Decodes one `.npy` file's bytes.
fn read_one(path: &Path, name: &str, bytes: &[u8]) -> Result<HostTensor, TensorIoError> {
    let not_npy = |reason: String| TensorIoError::NotNpy {
        path: path.to_path_buf(),
        reason,
    };
    header_is_plain(bytes).map_err(not_npy)?;
    let mut rest: &[u8] = bytes;
    let header = NpyHeader::from_reader(&mut rest).map_err(|e| not_npy(e.to_string()))?;
    if header.order() == Order::Fortran {
        return Err(not_npy(
            "Fortran (column-major) order is not supported".into(),
        ));
    }
    let DType::Plain(ts) = header.dtype() else {
        return Err(unsupported(path, name, "a structured dtype".into()));
    };
    let elem = match (ts.type_char(), ts.size_field()) {
        (TypeChar::Float, 2) => ElemType::F16,
        (TypeChar::Float, 4) => ElemType::F32,
        (TypeChar::Float, 8) => ElemType::F64,
        (TypeChar::Int, 4) => ElemType::I32,
        (TypeChar::Int, 8) => ElemType::I64,
        _ => return Err(unsupported(path, name, ts.to_string())),
    };
    let shape: Option<Vec<usize>> = header
        .shape()
        .iter()
        .map(|&d| usize::try_from(d).ok())
        .collect();
    let numel = shape
        .as_ref()
        .and_then(|s| s.iter().try_fold(1usize, |a, &d| a.checked_mul(d)));
    let (Some(shape), Some(numel)) = (shape, numel) else {
        return Err(not_npy(format!("shape {:?} is too large", header.shape())));
    };
    // Check the length before decoding, so a lying header cannot ask for a huge allocation,
    // and so that bytes after the array (another array appended, a corrupt copy) are refused.
    match numel.checked_mul(elem.size()) {
        Some(n) if n == rest.len() => {}
        Some(n) if n < rest.len() => {
            return Err(not_npy(format!(
                "{} trailing bytes after the array (shape {shape:?} of {elem} is {n} bytes)",
                rest.len() - n
            )));
        }
        _ => {
            return Err(not_npy(format!(
                "truncated: shape {shape:?} of {elem} needs {numel} values, the file holds {} bytes of data",
                rest.len()
            )));
        }
    }
    let file = NpyFile::with_header(header, rest);
    let decoded = match elem {
        ElemType::F16 => file
            .into_vec()
            .map(|d| HostTensor::F16(Tensor { shape, data: d })),
        ElemType::F32 => file
            .into_vec()
            .map(|d| HostTensor::F32(Tensor { shape, data: d })),
        ElemType::F64 => file
            .into_vec()
            .map(|d| HostTensor::F64(Tensor { shape, data: d })),
        ElemType::I32 => file
            .into_vec()
            .map(|d| HostTensor::I32(Tensor { shape, data: d })),
        ElemType::I64 => file
            .into_vec()
            .map(|d| HostTensor::I64(Tensor { shape, data: d })),
        ElemType::Bf16 => return Err(unsupported(path, name, "bf16".into())),
    };
    decoded.map_err(|e| not_npy(e.to_string()))
}

/// Checks the preamble of an `.npy` file before npyz reads it, for two things npyz does not
/// bound: the header length it claims, which npyz allocates before reading (versions 2 and 3
/// store it in 32 bits, so a 100-byte file could claim 4 GiB), and how deep the header's
/// brackets nest, which npyz's Python-literal parser backtracks over exponentially (about 70
/// unclosed `{` take minutes). A plain header is a dict holding one tuple (depth 2); anything
/// past [`MAX_HEADER_DEPTH`] is a structured dtype nsac rejects anyway. Files too short to hold
/// the length, or with a bad magic or version, are left to npyz to report.
fn header_is_plain(bytes: &[u8]) -> Result<(), String> {
    let (claimed, start) = match bytes.get(6) {
        Some(1) => (
            bytes
                .get(8..10)
                .map(|b| usize::from(u16::from_le_bytes([b[0], b[1]]))),
            10,
        ),
        Some(2 | 3) => (
            bytes
                .get(8..12)
                .and_then(|b| usize::try_from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])).ok()),
            12,
        ),
        _ => return Ok(()),
    };
    let Some(claimed) = claimed else {
        return Ok(());
    };
    let held = bytes.len().saturating_sub(start);
    if claimed > held {
        return Err(format!(
            "truncated: the header claims {claimed} bytes, the file holds {held} after the preamble"
        ));
    }
    let mut depth = 0usize;
    for &c in &bytes[start..start + claimed] {
        match c {
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        if depth > MAX_HEADER_DEPTH {
            return Err(format!(
                "the header nests brackets more than {MAX_HEADER_DEPTH} deep; a plain array's nests 2"
            ));
        }
    }
    Ok(())
}

/// The deepest bracket nesting accepted in an `.npy` header (a plain one has 2).
const MAX_HEADER_DEPTH: usize = 8;

fn unsupported(path: &Path, name: &str, dtype: String) -> TensorIoError {
    TensorIoError::UnsupportedDtype {
        path: path.to_path_buf(),
        name: name.to_string(),
        dtype,
        expected: "f16, f32, f64, i32 or i64 (npy has no bf16)",
    }
}

/// Writes each tensor to `<dir>/<name>.npy`, creating the directory. All tensors are encoded
/// and written under temporary names before the first is renamed into place, so a failure
/// (a bad name, a full disk, a target that is not a regular file) leaves the directory as it
/// was.
pub fn write(dir: &Path, tensors: &TensorSet) -> Result<(), TensorIoError> {
    let mut files = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        if !usable_file_stem(name) {
            return Err(TensorIoError::BadName {
                path: dir.to_path_buf(),
                name: name.clone(),
            });
        }
        let file = dir.join(format!("{name}.npy"));
        let bytes = encode(&file, name, t)?;
        files.push((file, bytes));
    }
    fs_policy::create_output_dir(dir)?;
    atomic::write_files(files)
}

fn usable_file_stem(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0'])
}

fn encode(path: &Path, name: &str, t: &HostTensor) -> Result<Vec<u8>, TensorIoError> {
    let shape: Vec<u64> = t.shape().iter().map(|&d| d as u64).collect();
    let io = |e| TensorIoError::io(path, e);
    let mut buf = Vec::new();
    match t {
        HostTensor::F16(x) => encode_typed(&mut buf, &shape, &x.data).map_err(io)?,
        HostTensor::F32(x) => encode_typed(&mut buf, &shape, &x.data).map_err(io)?,
        HostTensor::F64(x) => encode_typed(&mut buf, &shape, &x.data).map_err(io)?,
        HostTensor::I32(x) => encode_typed(&mut buf, &shape, &x.data).map_err(io)?,
        HostTensor::I64(x) => encode_typed(&mut buf, &shape, &x.data).map_err(io)?,
        HostTensor::Bf16(_) => return Err(unsupported(path, name, "bf16".into())),
    }
    Ok(buf)
}

fn encode_typed<T: npyz::AutoSerialize>(
    buf: &mut Vec<u8>,
    shape: &[u64],
    data: &[T],
) -> std::io::Result<()> {
    use npyz::WriterBuilder;
    let mut w = npyz::WriteOptions::new()
        .default_dtype()
        .shape(shape)
        .writer(buf)
        .begin_nd()?;
    for x in data {
        w.push(x)?;
    }
    w.finish()
}
