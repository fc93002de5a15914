//! The oracle's backward pass: exact f64 gradients, for an upstream gradient dO \[B,T,HQ,Dv\],
//! of L = Σ dO ∘ o with respect to every input of the call (the contract is documented in
//! [`crate::reference`], "Gradients").
//!
//! Plain loops, like the forward: [`attend`] is the gradient of one softmax-attention row,
//! [`query`] one query position's backward through the combine and every branch, [`pool`] the
//! adjoint of the compress pools, [`run`] the per-sequence driver (deterministic for any
//! number of threads), [`names`] the gradient tensors and their names, [`upstream`] the check
//! of dO.
//!
//! The backward recomputes the forward (it is an oracle: no saved state to trust); the only
//! forward state that matters is the chosen blocks, which [`super::forward`] returns in
//! `Output::selected` and [`backward_with_blocks`] takes back — `backward` equals
//! `backward_with_blocks` with the forward's own blocks.

mod attend;
mod names;
mod pool;
mod query;
mod run;
mod upstream;

use std::collections::BTreeMap;

use nsac_dsl::problem::Shape;
use nsac_dsl::spec::Spec;

use crate::io::{Inputs, Tensor};

use super::call::Call;
use super::{ReferenceError, given};

pub use names::gradient_name;

/// The gradient of every input, keyed by the input's name prefixed with `d` (`dq`, `dk`, `dv`,
/// `dg_<b>`, `dw_<c>`, `dwk_<c>`, `dwv_<c>`, `dk_<b>`, `dv_<b>`; see [`gradient_name`]), each
/// with its input's shape.
pub type Gradients = BTreeMap<String, Tensor<f64>>;

/// The gradients of L = Σ dO ∘ o for `spec` on `shape` with `inputs`, where o is
/// [`super::forward`]'s output and `d_o` is dO \[B,T,HQ,Dv\].
///
/// `d_o` is f32 like every other input of the contract: a backend and the oracle then get the
/// very same upstream values (widened exactly to f64 here), and a tensor file holds it as it
/// holds `q`.
pub fn backward(
    spec: &Spec,
    shape: &Shape,
    inputs: &Inputs,
    d_o: &Tensor<f32>,
) -> Result<Gradients, ReferenceError> {
    super::call::forward_only(spec, "backward")?;
    let call = Call::new(spec, shape, inputs)?;
    upstream::check(d_o, shape, &call.dims)?;
    run::run(&call, shape, inputs, &[], d_o)
}

/// Like [`backward`], but every select branch named in `blocks` attends the given blocks
/// (`idx_<b>` in the output contract's form, checked as [`super::forward_with_blocks`] checks
/// them) — the twin of `forward_with_blocks`, for checking a backend whose f32 scores broke a
/// near-tie differently, and the second half of a forward/backward pair: `forward`, then
/// `backward_with_blocks` with its `selected`.
pub fn backward_with_blocks(
    spec: &Spec,
    shape: &Shape,
    inputs: &Inputs,
    blocks: &BTreeMap<String, Tensor<i32>>,
    d_o: &Tensor<f32>,
) -> Result<Gradients, ReferenceError> {
    super::call::forward_only(spec, "backward")?;
    let call = Call::new(spec, shape, inputs)?;
    let given = given::resolve(&call, shape, blocks)?;
    upstream::check(d_o, shape, &call.dims)?;
    run::run(&call, shape, inputs, &given, d_o)
}
