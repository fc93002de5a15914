//! One `.safetensors` file ⇄ a [`TensorSet`], through the `safetensors` crate.

use std::path::Path;

use nsac_kernels::io::Tensor;
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use super::host::{ElemType, Element, HostTensor, TensorSet, decode_le, encode_le, with_tensor};
use super::{TensorIoError, atomic};
use crate::fs_policy;

/// Reads every tensor of a safetensors file.
pub fn read(path: &Path) -> Result<TensorSet, TensorIoError> {
    let bytes = fs_policy::read_bounded(path, fs_policy::tensor_file_cap(), "a tensor file")?;
    let file = SafeTensors::deserialize(&bytes).map_err(|e| TensorIoError::NotSafetensors {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let mut set = TensorSet::new();
    for (name, view) in file.iter() {
        let shape = view.shape().to_vec();
        let data = view.data();
        let t = match view.dtype() {
            Dtype::F32 => typed::<f32>(shape, data),
            Dtype::F64 => typed::<f64>(shape, data),
            Dtype::F16 => typed::<half::f16>(shape, data),
            Dtype::BF16 => typed::<half::bf16>(shape, data),
            Dtype::I32 => typed::<i32>(shape, data),
            Dtype::I64 => typed::<i64>(shape, data),
            other => {
                return Err(TensorIoError::UnsupportedDtype {
                    path: path.to_path_buf(),
                    name: name.to_string(),
                    dtype: format!("{other:?}"),
                    expected: "f32, f64, f16, bf16, i32 or i64",
                });
            }
        };
        set.insert(name.to_string(), t);
    }
    Ok(set)
}

fn typed<T: Element>(shape: Vec<usize>, data: &[u8]) -> HostTensor
where
    HostTensor: From<Tensor<T>>,
{
    HostTensor::from(Tensor {
        shape,
        data: decode_le::<T>(data),
    })
}

fn dtype_of(e: ElemType) -> Dtype {
    match e {
        ElemType::F32 => Dtype::F32,
        ElemType::F64 => Dtype::F64,
        ElemType::F16 => Dtype::F16,
        ElemType::Bf16 => Dtype::BF16,
        ElemType::I32 => Dtype::I32,
        ElemType::I64 => Dtype::I64,
    }
}

/// Writes every tensor into one safetensors file, atomically.
pub fn write(path: &Path, tensors: &TensorSet) -> Result<(), TensorIoError> {
    let encoded: Vec<(&String, Vec<u8>, &HostTensor)> = tensors
        .iter()
        .map(|(name, t)| (name, with_tensor!(t, x => encode_le(&x.data)), t))
        .collect();
    let not_valid = |e: safetensors::SafeTensorError| TensorIoError::NotSafetensors {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let mut views = Vec::with_capacity(encoded.len());
    for (name, bytes, t) in &encoded {
        let view = TensorView::new(dtype_of(t.elem_type()), t.shape().to_vec(), bytes)
            .map_err(not_valid)?;
        views.push((name.as_str(), view));
    }
    let bytes = safetensors::serialize(views, None).map_err(not_valid)?;
    atomic::write_file(path, &bytes)
}
