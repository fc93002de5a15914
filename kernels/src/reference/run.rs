//! Computing a checked call: per sequence, pool every compress branch once, then compute every
//! branch for each query position (in parallel with rayon — each position is independent),
//! combine, and write the rows into the output tensors.

use std::collections::BTreeMap;

use nsac_dsl::problem::Shape;
use rayon::prelude::*;

use crate::io::{Inputs, Tensor};

use super::call::{Call, Plan};
use super::pool::{self, PooledTokens};
use super::tokens::{SeqData, sequences};
use super::{Output, ReferenceError, combine, compress, given, score, select, window};

/// Computes a checked call; `given[b]` holds the caller's blocks for select branch b (an
/// empty slice: none given).
pub(crate) fn run(
    call: &Call<'_>,
    shape: &Shape,
    inputs: &Inputs,
    given: &[Option<&Tensor<i32>>],
) -> Result<Output, ReferenceError> {
    let spec = call.spec;
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
        let pooled = pool_all(call, &data);
        let rows: Vec<QueryOutput> = (0..seq.len())
            .into_par_iter()
            .map(|pos| {
                let token = seq.batch * t + seq.start + pos;
                query(call, &data, &pooled, pos, |branch| {
                    given
                        .get(branch)
                        .copied()
                        .flatten()
                        .map(|g| given::read(g, token))
                })
            })
            .collect();
        for (pos, row) in rows.into_iter().enumerate() {
            let token = seq.batch * t + seq.start + pos;
            let o = combine::combine(call, &row.branches, seq, t, pos);
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
pub(crate) struct QueryOutput {
    /// Per branch: \[HQ\]\[Dv\].
    pub(crate) branches: Vec<Vec<Vec<f64>>>,
    /// Per branch: for select branches, the chosen blocks per kv head \[H\]\[..\].
    pub(crate) chosen: Vec<Option<Vec<Vec<usize>>>>,
}

/// Pools every compress branch of the sequence (`None` for other branches).
pub(crate) fn pool_all(call: &Call<'_>, data: &SeqData) -> Vec<Option<PooledTokens>> {
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

/// Every branch's output for query position `t` of one sequence; `given(b)` returns the
/// caller's blocks \[H\]\[..\] for select branch b, if any.
pub(crate) fn query(
    call: &Call<'_>,
    data: &SeqData,
    pooled: &[Option<PooledTokens>],
    t: usize,
    given: impl Fn(usize) -> Option<Vec<Vec<usize>>>,
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
                let blocks = given(i).unwrap_or_else(|| {
                    let p = probs[*scorer].as_deref().unwrap_or_default();
                    let scores = score::scores(p, scorer_params, params, dims, len);
                    scores
                        .iter()
                        .map(|s| score::choose(s, params, dims.causal, t, len))
                        .collect()
                });
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

/// Writes one token's \[HQ\]\[Dv\] rows into a \[B,T,HQ,Dv\] tensor.
fn write_heads(tensor: &mut Tensor<f64>, token: usize, rows: &[Vec<f64>]) {
    let width: usize = tensor.shape[2] * tensor.shape[3];
    let dst = &mut tensor.data[token * width..(token + 1) * width];
    for (chunk, row) in dst.chunks_mut(tensor.shape[3]).zip(rows) {
        chunk.copy_from_slice(row);
    }
}

/// Writes one token's chosen blocks \[H\]\[..\] into a −1-filled \[B,T,H,top\] tensor.
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
