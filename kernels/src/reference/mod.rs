//! The reference implementation: plain, obviously-correct f64 loops that *define* what every
//! generated kernel computes (DESIGN §3). Every backend and Variant is tested against it.
//!
//! # Semantics, exactly
//!
//! Inputs are the f32 tensors of [`crate::io`] (row-major: `q` [B,T,HQ,Dqk], `k` [B,T,H,Dqk],
//! `v` [B,T,H,Dv], gates `g_<b>` [B,T,HQ], …), widened exactly to f64. Every rule below works
//! inside one *sequence* ([`Sequence`]): a batch row `[0, T)` for batched problems, or one
//! `cu_seqlens` segment for varlen problems (B = 1). Positions t, keys and block indices are
//! relative to the sequence start, T_seg is its length, and nothing crosses a sequence
//! boundary. Query head qh reads kv head ⌊qh/G⌋, G = HQ/H; the scale is
//! `spec.scale_for(Dqk)` (1/√Dqk unless the spec gives one).
//!
//! - **compress c** (block l, stride d; [`pool`], [`compress`]): token j covers keys
//!   [j·d, j·d+l) and exists iff j·d+l ≤ T_seg. `mean` pools by the mean; `weighted` by
//!   Σ_i w[h,i]·K[j·d+i,h] with ONE weight tensor `w_<c>` [H,l] for both K and V; `linear` by
//!   K̃_j[h,e] = Σ_{i,f} K[j·d+i,h,f]·wk[h,i·Dqk+f,e] (`wk_<c>` [H,l·Dqk,Dqk]) and Ṽ likewise
//!   with `wv_<c>` [H,l·Dv,Dv]. Causal: query t sees j iff j·d+l−1 ≤ t; non-causal: every
//!   token. o_c = softmax(s·q·K̃ᵀ)·Ṽ over the visible tokens; none visible → 0 (and all its
//!   probabilities are 0).
//! - **select s** (block l′, top n, scored_by c, keep_first a, keep_last b; [`score`],
//!   [`select`]): block i covers keys [i·l′, (i+1)·l′) ∩ [0, T_seg). Candidates: i·l′ ≤ t
//!   (causal) or i·l′ < T_seg (non-causal). Score per kv head h:
//!   p_s(t,h,i) = Σ_{qh∈group(h)} Σ_j p_c(t,qh,j)·|[j·d, j·d+l) ∩ [i·l′,(i+1)·l′)| / d,
//!   with c's probabilities (computed from c's own K̃ when c has `kv = own`). Forced
//!   (+∞): blocks 0..a−1 and ⌊t/l′⌋−b+1 ..= ⌊t/l′⌋, when they are candidates. The chosen
//!   blocks are the first min(n, #candidates) candidates ordered by (score desc, index asc) —
//!   exact ties go to the lower index. `idx_<s>` [B,T,H,n] lists them in ascending order,
//!   padded with −1. o_s = softmax attention over the keys of the chosen blocks with k ≤ t
//!   (causal) / all their keys (non-causal), read from s's K/V (its own with `kv = own`).
//! - **window w** ([`window`]): causal keys max(0, t−w+1) ..= t; non-causal the symmetric
//!   window |k − t| ≤ w−1. (A window of 0 attends nothing.)
//! - **combine** ([`combine`]): `gate(b1, …)`: o = Σ g_b·o_b with `g_<b>` used as given;
//!   `sum(…)`: all gates 1.
//! - Softmax subtracts the row maximum; an empty row gives output 0, never NaN.
//!
//! # Output
//!
//! [`forward`] returns `o`, every branch's ungated `o_<b>` and every select branch's `idx_<b>`.
//! For backend authors, [`pooled`], [`compressed_probabilities`] and [`block_scores`] expose
//! the intermediates per sequence (in the order of [`sequences`]).
//!
//! # Checks
//!
//! The oracle first checks the shape, the spec's references and sizes, and the inputs
//! (`crate::io::check_inputs`), and returns a [`ReferenceError`] instead of panicking.

mod call;
mod combine;
pub mod compress;
mod inspect;
pub mod pool;
pub mod score;
pub mod select;
mod softmax;
mod tokens;
pub mod window;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use nsac_dsl::problem::Shape;
use nsac_dsl::spec::Spec;
use rayon::prelude::*;

use crate::io::{InputError, Inputs, Tensor};

use call::{Call, Plan};
use pool::PooledTokens;
use tokens::SeqData;

pub use inspect::{block_scores, compressed_probabilities, pooled};
pub use pool::Pooled;
pub use softmax::softmax;
pub use tokens::{Sequence, sequences};

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
    #[error("bad problem shape: {0}")]
    BadShape(String),
    #[error("the softmax scale must be finite and positive (got {0})")]
    BadScale(String),
    #[error("two branches are named `{0}`")]
    DuplicateBranch(String),
    #[error("`{used_by}` refers to an unknown branch `{name}`")]
    UnknownBranch { name: String, used_by: String },
    #[error("select branch `{select}` is scored by `{scored_by}`, which is not a compress branch")]
    NotCompress { select: String, scored_by: String },
    #[error("branch `{branch}` is not a {expected} branch")]
    WrongKind {
        branch: String,
        expected: &'static str,
    },
    #[error("branch `{branch}` has {field} = 0")]
    ZeroSize { branch: String, field: &'static str },
    #[error("tensor `{0}` would be too large to index")]
    TooLarge(String),
}

/// Runs `spec` on `shape` with `inputs` in f64.
pub fn forward(spec: &Spec, shape: &Shape, inputs: &Inputs) -> Result<Output, ReferenceError> {
    let call = Call::new(spec, shape, inputs)?;
    let dims = call.dims;
    let (b, t) = (shape.batch, shape.seq_len);
    let out_shape = vec![b, t, dims.hq, dims.dv];
    let mut out = Output {
        o: Tensor::full(out_shape.clone(), 0.0),
        branches: BTreeMap::new(),
        selected: BTreeMap::new(),
    };
    for (branch, plan) in spec.branches.iter().zip(&call.plans) {
        out.branches
            .insert(branch.name.clone(), Tensor::full(out_shape.clone(), 0.0));
        if let Plan::Select { params, .. } = plan {
            let idx = Tensor::full(vec![b, t, dims.h, params.top as usize], -1);
            out.selected.insert(branch.name.clone(), idx);
        }
    }
    for seq in sequences(shape) {
        let data = SeqData::load(spec, inputs, seq)?;
        let pooled = pool_all(&call, &data);
        let rows: Vec<QueryOutput> = (0..seq.len())
            .into_par_iter()
            .map(|pos| query(&call, &data, &pooled, pos))
            .collect();
        for (pos, row) in rows.into_iter().enumerate() {
            let token = seq.batch * t + seq.start + pos;
            let o = combine::combine(&call, &row.branches, seq, t, pos);
            write_heads(&mut out.o, token, &o);
            for (branch, o_b) in spec.branches.iter().zip(&row.branches) {
                if let Some(tensor) = out.branches.get_mut(&branch.name) {
                    write_heads(tensor, token, o_b);
                }
            }
            for (branch, chosen) in spec.branches.iter().zip(&row.chosen) {
                if let (Some(chosen), Some(tensor)) = (chosen, out.selected.get_mut(&branch.name)) {
                    write_chosen(tensor, token, chosen)?;
                }
            }
        }
    }
    Ok(out)
}

/// What one query position produces.
struct QueryOutput {
    /// Per branch: [HQ][Dv].
    branches: Vec<Vec<Vec<f64>>>,
    /// Per branch: for select branches, the chosen blocks per kv head [H][..].
    chosen: Vec<Option<Vec<Vec<usize>>>>,
}

/// Pools every compress branch of the sequence (`None` for other branches).
fn pool_all(call: &Call<'_>, data: &SeqData) -> Vec<Option<PooledTokens>> {
    let d = &call.dims;
    call.spec
        .branches
        .iter()
        .zip(&call.plans)
        .map(|(branch, plan)| match plan {
            Plan::Compress { params, weights } => {
                let (k, v) = data.kv(branch);
                Some(pool::pool(params, *weights, k, v, d.h, d.dqk, d.dv))
            }
            _ => None,
        })
        .collect()
}

/// Every branch's output for query position `t` of one sequence.
fn query(
    call: &Call<'_>,
    data: &SeqData,
    pooled: &[Option<PooledTokens>],
    t: usize,
) -> QueryOutput {
    let dims = &call.dims;
    let len = data.q.len();
    let probs: Vec<Option<Vec<Vec<f64>>>> = call
        .plans
        .iter()
        .zip(pooled)
        .map(|(plan, pooled)| match (plan, pooled) {
            (Plan::Compress { params, .. }, Some(p)) => {
                Some(compress::probabilities(params, dims, &data.q, p, t))
            }
            _ => None,
        })
        .collect();
    let mut branches = Vec::with_capacity(call.plans.len());
    let mut chosen = Vec::with_capacity(call.plans.len());
    for (i, (branch, plan)) in call.spec.branches.iter().zip(&call.plans).enumerate() {
        let (k, v) = data.kv(branch);
        let (o, c) = match plan {
            Plan::Compress { .. } => match (&probs[i], &pooled[i]) {
                (Some(p), Some(pooled)) => (compress::output(p, dims, pooled), None),
                _ => (vec![vec![0.0; dims.dv]; dims.hq], None),
            },
            Plan::Select {
                params,
                scorer,
                scorer_params,
            } => {
                let p = probs[*scorer].as_deref().unwrap_or_default();
                let scores = score::scores(p, scorer_params, params, dims, len);
                let blocks: Vec<Vec<usize>> = scores
                    .iter()
                    .map(|s| score::choose(s, params, dims.causal, t, len))
                    .collect();
                let o = select::output(params, dims, (&data.q, k, v), &blocks, t);
                (o, Some(blocks))
            }
            Plan::Window(w) => (window::output(w, dims, (&data.q, k, v), t), None),
        };
        branches.push(o);
        chosen.push(c);
    }
    QueryOutput { branches, chosen }
}

/// Writes one token's [HQ][Dv] rows into a [B,T,HQ,Dv] tensor.
fn write_heads(tensor: &mut Tensor<f64>, token: usize, rows: &[Vec<f64>]) {
    let width: usize = tensor.shape[2] * tensor.shape[3];
    let dst = &mut tensor.data[token * width..(token + 1) * width];
    for (chunk, row) in dst.chunks_mut(tensor.shape[3]).zip(rows) {
        chunk.copy_from_slice(row);
    }
}

/// Writes one token's chosen blocks [H][..] into a −1-filled [B,T,H,top] tensor.
fn write_chosen(
    tensor: &mut Tensor<i32>,
    token: usize,
    chosen: &[Vec<usize>],
) -> Result<(), ReferenceError> {
    let top = tensor.shape[3];
    for (kvh, blocks) in chosen.iter().enumerate() {
        let row = (token * tensor.shape[2] + kvh) * top;
        for (slot, &block) in tensor.data[row..row + top].iter_mut().zip(blocks) {
            *slot = i32::try_from(block).map_err(|_| ReferenceError::TooLarge("idx".into()))?;
        }
    }
    Ok(())
}
