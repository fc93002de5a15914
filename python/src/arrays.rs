//! Numpy arrays in and out of the kernels without copies: input dicts borrowed as the
//! facade's [`InputRefs`] (read in place; an array must be float32 and C-contiguous, else a
//! `TypeError`/`ValueError` naming it), and the kernels' owned results handed to numpy as they
//! are (a `Vec` becomes the array's buffer, no copy).

use std::collections::BTreeMap;

use nsac::kernels::io::{InputRefs, Tensor, TensorRef};
use nsac::runtime::tensor_io::HostTensor;
use numpy::{
    Element, PyArray1, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// The float32 arrays of a dict, borrowed read-only for the duration of a call.
pub struct Borrowed<'py> {
    arrays: Vec<(String, PyReadonlyArrayDyn<'py, f32>)>,
}

impl<'py> Borrowed<'py> {
    /// Borrows every value of `dict` (name → float32 C-contiguous array).
    pub fn of(dict: &Bound<'py, PyDict>) -> PyResult<Borrowed<'py>> {
        let mut arrays = Vec::with_capacity(dict.len());
        for (key, value) in dict.iter() {
            let name: String = key.extract()?;
            let array = borrow_f32(&name, &value)?;
            arrays.push((name, array));
        }
        Ok(Borrowed { arrays })
    }

    /// The arrays as the kernels' borrowed inputs.
    pub fn refs(&self) -> PyResult<InputRefs<'_>> {
        let mut refs = InputRefs::new();
        for (name, array) in &self.arrays {
            refs.insert(name.as_str(), tensor_ref(name, array)?);
        }
        Ok(refs)
    }

    /// Copies of the arrays (for the f64 oracle, which takes owned inputs).
    pub fn owned(&self) -> PyResult<BTreeMap<String, Tensor<f32>>> {
        let mut out = BTreeMap::new();
        for (name, array) in &self.arrays {
            let r = tensor_ref(name, array)?;
            out.insert(
                name.clone(),
                Tensor {
                    shape: r.shape.to_vec(),
                    data: r.data.to_vec(),
                },
            );
        }
        Ok(out)
    }

    /// The shape of array `name`, if present.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.arrays
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| a.shape())
    }
}

/// `value` as a read-only float32 array, or an error naming `name`.
pub fn borrow_f32<'py>(
    name: &str,
    value: &Bound<'py, PyAny>,
) -> PyResult<PyReadonlyArrayDyn<'py, f32>> {
    let array = value.cast::<PyArrayDyn<f32>>().map_err(|_| {
        PyTypeError::new_err(format!(
            "tensor `{name}`: expected a float32 array, got {}",
            describe(value)
        ))
    })?;
    Ok(array.readonly())
}

fn describe(value: &Bound<'_, PyAny>) -> String {
    match value.getattr("dtype") {
        Ok(dtype) => format!("dtype {dtype}"),
        Err(_) => value
            .get_type()
            .name()
            .map_or_else(|_| "an object".into(), |n| n.to_string()),
    }
}

/// The borrowed contents of a C-contiguous array.
pub fn tensor_ref<'a, T: Element>(
    name: &str,
    array: &'a PyReadonlyArrayDyn<'_, T>,
) -> PyResult<TensorRef<'a, T>> {
    let data = array.as_slice().map_err(|_| {
        PyValueError::new_err(format!(
            "tensor `{name}` is not C-contiguous (make it contiguous first)"
        ))
    })?;
    Ok(TensorRef {
        shape: array.shape(),
        data,
    })
}

/// An owned tensor as a numpy array of its shape; the `Vec` becomes the array's buffer.
pub fn to_numpy<'py, T: Element>(py: Python<'py>, t: Tensor<T>) -> PyResult<Bound<'py, PyAny>> {
    let flat = PyArray1::from_vec(py, t.data);
    Ok(flat.reshape(t.shape)?.into_any())
}

/// A host tensor of any element type as a numpy array (f16/bf16 widened to f32).
pub fn host_to_numpy<'py>(py: Python<'py>, t: HostTensor) -> PyResult<Bound<'py, PyAny>> {
    match t {
        HostTensor::F32(t) => to_numpy(py, t),
        HostTensor::F64(t) => to_numpy(py, t),
        HostTensor::I32(t) => to_numpy(py, t),
        HostTensor::I64(t) => to_numpy(py, t),
        other => {
            let t = other
                .to_f32()
                .ok_or_else(|| PyTypeError::new_err("an output of an unsupported type"))?;
            to_numpy(py, t)
        }
    }
}
