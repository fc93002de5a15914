//! The reference implementation: plain, obviously-correct f64 loops that *define* what every
//! generated kernel computes (DESIGN §3). Every backend and Variant is tested against it.

use std::collections::BTreeMap;

use nsac_dsl::problem::Shape;
use nsac_dsl::spec::Spec;

use crate::io::{InputError, Inputs, Tensor};

/// Everything the oracle computes for one call.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    /// The combined output `o` [B,T,HQ,Dv].
    pub o: Tensor<f64>,
    /// Each branch's own (ungated) output `o_<b>` [B,T,HQ,Dv], by branch name.
    pub branches: BTreeMap<String, Tensor<f64>>,
    /// Each select branch's chosen blocks `idx_<b>` [B,T,H,top]: block indices in ascending
    /// order, padded with −1 where fewer than `top` blocks are candidates.
    pub selected: BTreeMap<String, Tensor<i32>>,
}

/// Why the oracle refused a call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error(transparent)]
    Input(#[from] InputError),
}

/// Runs `spec` on `shape` with `inputs` in f64.
pub fn forward(spec: &Spec, shape: &Shape, inputs: &Inputs) -> Result<Output, ReferenceError> {
    let _ = (spec, shape, inputs);
    unimplemented!("being written")
}
