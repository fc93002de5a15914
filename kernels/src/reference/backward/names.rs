//! The gradient tensors of a call: one per input, named `d` + the input's name (`q` → `dq`,
//! `g_sel` → `dg_sel`, `w_cmp` → `dw_cmp`, `k_sel` → `dk_sel`, …) with the input's shape, all
//! zero until the backward pass adds into them.

use nsac_dsl::problem::Shape;
use nsac_dsl::spec::{Branch, KvSource, Spec};

use crate::io::{Tensor, expected_inputs};

use super::Gradients;

/// The name of the gradient of input `input`.
pub fn gradient_name(input: &str) -> String {
    format!("d{input}")
}

/// A zero gradient for every input `spec` reads on `shape`.
pub(super) fn zeros(spec: &Spec, shape: &Shape) -> Gradients {
    expected_inputs(spec, shape)
        .into_iter()
        .map(|e| (gradient_name(&e.name), Tensor::full(e.shape, 0.0)))
        .collect()
}

/// The names of the key and value inputs `branch` reads: its own with `kv = own`, else the
/// shared `k`, `v`.
pub(super) fn kv_inputs(branch: &Branch) -> (String, String) {
    match branch.kv {
        KvSource::Own => (format!("k_{}", branch.name), format!("v_{}", branch.name)),
        KvSource::Shared => ("k".into(), "v".into()),
    }
}
