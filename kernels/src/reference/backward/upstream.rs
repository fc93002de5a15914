//! Checking the upstream gradient `do` before anything is computed: it must have the output's
//! shape \[B, T, HQ, Dv\], as many values as that shape needs, and only finite values — a typed
//! [`InputError`] naming `do` otherwise, never a panic.

use nsac_dsl::problem::Shape;

use crate::io::{InputError, Tensor};

use super::super::call::Dims;

/// The name the upstream gradient goes by in errors (and in tensor files).
pub(crate) const NAME: &str = "do";

/// Checks `d_o` against the output shape of a checked call.
pub(super) fn check(d_o: &Tensor<f32>, shape: &Shape, dims: &Dims) -> Result<(), InputError> {
    let expected = vec![shape.batch, shape.seq_len, dims.hq, dims.dv];
    if d_o.shape != expected {
        return Err(InputError::BadShape {
            name: NAME.into(),
            got: d_o.shape.clone(),
            expected,
        });
    }
    if d_o.data.len() != d_o.numel() {
        return Err(InputError::BadLength {
            name: NAME.into(),
            shape: d_o.shape.clone(),
            got: d_o.data.len(),
            expected: d_o.numel(),
        });
    }
    if d_o.data.iter().any(|x| !x.is_finite()) {
        return Err(InputError::NonFinite(NAME.into()));
    }
    Ok(())
}
