//! Computing a checked call: per sequence, pool every compress branch once, then compute every
//! branch for each query position (in parallel with rayon — each position is independent),
//! combine, and write the rows into the output tensors.

use std::collections::BTreeMap;

use nsac_dsl::problem::Shape;
use rayon::prelude::*;

use crate::io::{Inputs, Tensor};

use super::call::{Call, Plan, Source};
use super::pool::{self, PooledTokens};
use super::tokens::{SeqData, sequences};
use super::{
    Output, ReferenceError, choose, combine, compress, given, index, score, select, window,
};

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
        if branch.attends() {
            out.branches
                .insert(branch.name.clone(), Tensor::full(out_shape.clone(), 0.0));
        }
        if let Plan::Select { params, .. } | Plan::Choose { params, .. } = plan {
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
                query(call, &data, &pooled, pos, token, |branch| {
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
    token: usize,
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
    // Choose every select branch's blocks first, each after the branch it is within.
    let mut chosen: Vec<Option<Vec<Vec<usize>>>> = vec![None; call.plans.len()];
    for &i in &call.choice_order {
        let blocks = given(i).unwrap_or_else(|| match &call.plans[i] {
            Plan::Select {
                params,
                scorer,
                scorer_params,
            } => {
                let p = probs[*scorer].as_deref().unwrap_or_default();
                let scores = score::scores(p, scorer_params, params, dims, len);
                scores
                    .iter()
                    .map(|s| score::choose(s, params, dims.causal, t, len))
                    .collect()
            }
            Plan::Choose {
                params,
                source,
                within,
            } => {
                let outer = within.and_then(|w| match (&call.plans[w], &chosen[w]) {
                    (Plan::Select { params, .. } | Plan::Choose { params, .. }, Some(c)) => {
                        Some((*params, c))
                    }
                    _ => None,
                });
                choose_blocks(call, data, &probs, params, source, outer, t, token)
            }
            _ => Vec::new(),
        });
        chosen[i] = Some(blocks);
    }
    let mut branches = Vec::with_capacity(call.plans.len());
    for (i, (branch, plan)) in call.spec.branches.iter().zip(&call.plans).enumerate() {
        let (k, v) = data.kv(branch);
        let o = match plan {
            Plan::Compress { .. } => match (&probs[i], &pooled[i]) {
                (Some(p), Some(pooled)) => compress::output(p, dims, pooled),
                _ => vec![vec![0.0; dims.dv]; dims.hq],
            },
            Plan::Select { params, .. } | Plan::Choose { params, .. } => {
                let blocks = chosen[i].as_deref().unwrap_or_default();
                select::output(params, dims, (&data.q, k, v), blocks, t)
            }
            Plan::Window(w) => window::output(w, dims, (&data.q, k, v), t),
            // No output of its own (never combined, no `o_<i>`).
            Plan::Index(_) => Vec::new(),
        };
        branches.push(o);
    }
    QueryOutput { branches, chosen }
}

/// The blocks of a [`Plan::Choose`] select branch `s` for query `t` (absolute row `token`)
/// per kv head \[H\]\[..\]; `outer` is the branch it is within and that branch's choice.
#[allow(clippy::too_many_arguments)]
fn choose_blocks(
    call: &Call<'_>,
    data: &SeqData,
    probs: &[Option<Vec<Vec<f64>>>],
    s: &nsac_dsl::spec::Select,
    source: &Source<'_>,
    outer: Option<(&nsac_dsl::spec::Select, &Vec<Vec<usize>>)>,
    t: usize,
    token: usize,
) -> Vec<Vec<usize>> {
    let dims = &call.dims;
    let len = data.q.len();
    let candidate = |kvh: usize, i: usize| {
        score::is_candidate(s, dims.causal, i, t, len)
            && outer.is_none_or(|(c, chosen)| choose::is_within(s, c, &chosen[kvh], i))
    };
    let per_head: Vec<Vec<f64>> = match source {
        Source::Given(idx) => return choose::read_given(idx, token),
        Source::Compress { branch, params } => {
            let p = probs[*branch].as_deref().unwrap_or_default();
            score::scores(p, params, s, dims, len)
        }
        Source::Index { branch } => {
            let name = &call.spec.branches[*branch].name;
            let heads = match &call.plans[*branch] {
                Plan::Index(i) => i.heads as usize,
                _ => 0,
            };
            let scores = data
                .index(name)
                .map(|x| index::scores(x, heads, t, len))
                .unwrap_or_default();
            vec![scores; dims.h]
        }
    };
    per_head
        .iter()
        .enumerate()
        .map(|(kvh, sc)| score::choose_among(sc, s, t, |i| candidate(kvh, i)))
        .collect()
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
