//! The host memory a run of a spec on a problem holds, counted from the shape before anything
//! is allocated — what the CLI's size budget (`--max-bytes`) is checked against.
//!
//! Counted, in bytes, with exact integer arithmetic (u128, checked):
//! - **inputs**: every tensor of `kernels::io::expected_inputs` as f32 (the host copy every
//!   device starts from);
//! - **outputs**: `o` and every branch's `o_<b>` (f32) and every select branch's `idx_<b>`
//!   (int32), which every device returns;
//! - **scratch**: the compressed K̃/Ṽ of every compress branch and a packed copy of every K/V the
//!   branches read (f32), plus per worker thread G score rows as long as the widest of the
//!   longest segment's compressed tokens, a selection block and 256 keys, once per compress
//!   branch and once more.
//!
//! The f64 reference widens inputs and outputs to f64 and keeps each sequence's rows before
//! writing them: [`Footprint::reference`] counts that (3× inputs, 4× outputs). It is an
//! estimate of the large buffers, not of every small one.

use nsac_dsl::problem::Shape;
use nsac_dsl::spec::{BranchKind, KvSource, Spec};
use nsac_kernels::io::expected_inputs;

use super::{CostError, add, keys, prod};

/// Bytes a run holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footprint {
    pub inputs: u128,
    pub outputs: u128,
    pub scratch: u128,
}

impl Footprint {
    /// Everything an f32 device (CPU, or the GPU's host side) holds.
    pub fn total(&self) -> u128 {
        self.inputs + self.outputs + self.scratch
    }

    /// What the f64 reference holds: f32 inputs and their f64 copy, f64 outputs and the rows
    /// of one sequence before they are written.
    pub fn reference(&self) -> u128 {
        3 * self.inputs + 4 * self.outputs + self.scratch
    }
}

/// The footprint of `spec` on `shape` with `threads` worker threads.
pub fn footprint(spec: &Spec, shape: &Shape, threads: usize) -> Result<Footprint, CostError> {
    let f32b = 4u128;
    let (b, t) = (shape.batch as u128, shape.seq_len as u128);
    let (hq, h) = (u128::from(shape.heads.q), u128::from(shape.heads.kv));
    let (dqk, dv) = (u128::from(shape.head_dim.qk), u128::from(shape.head_dim.v));
    let mut inputs = 0u128;
    for input in expected_inputs(spec, shape) {
        let dims: Vec<u128> = input.shape.iter().map(|&d| d as u128).collect();
        inputs = add(inputs, prod(&dims)?)?;
    }
    let inputs = prod(&[inputs, f32b])?;

    let o = prod(&[b, t, hq, dv, f32b])?;
    let mut outputs = prod(&[o, spec.branches.len() as u128 + 1])?;
    let longest = shape
        .segments
        .iter()
        .map(|(s, e)| e.saturating_sub(*s) as u64)
        .max()
        .unwrap_or(0);
    let group = hq.checked_div(h).unwrap_or(0);
    let mut scratch = 0u128;
    let mut row = 256u128;
    let mut compress_branches = 0u128;
    let mut own = 0u128;
    for br in &spec.branches {
        own += u128::from(br.kv == KvSource::Own);
        match &br.kind {
            BranchKind::Select(s) => {
                outputs = add(outputs, prod(&[b, t, h, u128::from(s.top), 4])?)?;
                row = row.max(u128::from(s.block) + 4);
            }
            BranchKind::Compress(c) => {
                compress_branches += 1;
                let mut tokens = 0u128;
                for &(s, e) in &shape.segments {
                    let len = e.saturating_sub(s) as u64;
                    tokens = add(tokens, u128::from(keys::compressed_tokens(c, len)))?;
                }
                scratch = add(scratch, prod(&[b, tokens, h, dqk + dv, f32b])?)?;
                row = row.max(u128::from(keys::compressed_tokens(c, longest)) + 4);
            }
            BranchKind::Window(_) | BranchKind::Index(_) => {}
        }
    }
    // A packed copy of the shared K/V and of every branch's own K/V.
    let kv = prod(&[b, t, h, dqk + dv, f32b])?;
    scratch = add(scratch, prod(&[kv, own + 1])?)?;
    let per_thread = prod(&[group, row, compress_branches + 1, f32b])?;
    scratch = add(scratch, prod(&[per_thread, threads.max(1) as u128])?)?;
    Ok(Footprint {
        inputs,
        outputs,
        scratch,
    })
}
