//! Computing a checked backward call. Per sequence: pool every compress branch (as the
//! forward does), then for each chunk of query positions compute every position's forward row
//! and gradient contributions in parallel ([`query::backward`]), add them **in position
//! order** into per-sequence buffers, push the compressed tokens' gradients back through the
//! pools ([`pool::backward`]), and write the buffers into the gradient tensors.
//!
//! Each position is computed by one thread and every sum runs in a fixed order (positions,
//! then branches, kv heads, query heads, keys), so the result is bit-identical for any number
//! of threads. Chunks bound the memory the per-position contributions take.

use std::collections::BTreeMap;

use nsac_dsl::problem::Shape;
use rayon::prelude::*;

use crate::io::{InputError, Inputs, Tensor};

use super::super::call::{Call, Plan, PoolWeights};
use super::super::pool::PooledTokens;
use super::super::run::{pool_all, query as forward_row};
use super::super::tokens::{SeqData, Sequence, Tokens, sequences};
use super::super::{ReferenceError, given};
use super::Gradients;
use super::names::{self, gradient_name, kv_inputs};
use super::pool::{self, Map};
use super::query::{self, QueryGrad};

/// Query positions computed in parallel before their contributions are added.
const CHUNK: usize = 32;

/// The backward of a checked call; `given[b]` holds the caller's blocks for select branch b
/// (an empty slice: none given). `d_o` has been checked.
pub(super) fn run(
    call: &Call<'_>,
    shape: &Shape,
    inputs: &Inputs,
    given: &[Option<&Tensor<i32>>],
    d_o: &Tensor<f32>,
) -> Result<Gradients, ReferenceError> {
    let mut grads = names::zeros(call.spec, shape);
    let row = call.dims.hq * call.dims.dv;
    for seq in sequences(shape) {
        let data = SeqData::load(call.spec, inputs, seq)?;
        let pooled = pool_all(call, &data);
        let mut buffers = Buffers::new(call, seq.len(), &pooled);
        let token_of = |pos: usize| seq.batch * shape.seq_len + seq.start + pos;
        for start in (0..seq.len()).step_by(CHUNK) {
            let end = (start + CHUNK).min(seq.len());
            let rows: Vec<QueryGrad> = (start..end)
                .into_par_iter()
                .map(|pos| {
                    let token = token_of(pos);
                    let forward = forward_row(call, &data, &pooled, pos, token, |branch| {
                        given
                            .get(branch)
                            .copied()
                            .flatten()
                            .map(|g| given::read(g, token))
                    });
                    let d_o_row = &d_o.data[token * row..(token + 1) * row];
                    query::backward(call, &data, &pooled, (pos, token), &forward, d_o_row)
                })
                .collect();
            for (pos, contribution) in (start..end).zip(rows) {
                buffers.add(call, pos, token_of(pos), contribution, &mut grads)?;
            }
        }
        buffers.finish(call, &data, seq, &mut grads)?;
    }
    Ok(grads)
}

/// The gradients of one sequence's activations while its positions are added.
struct Buffers {
    /// dq \[T_seg, HQ, Dqk\].
    dq: Tokens,
    /// By (key input, value input) name — (`k`, `v`) or (`k_<b>`, `v_<b>`): dK, dV
    /// \[T_seg, H, D\].
    kv: BTreeMap<(String, String), (Tokens, Tokens)>,
    /// Per branch, for compress branches: dK̃, dṼ \[N, H, D\].
    pooled: Vec<Option<(Tokens, Tokens)>>,
}

impl Buffers {
    fn new(call: &Call<'_>, len: usize, pooled: &[Option<PooledTokens>]) -> Self {
        let d = &call.dims;
        let zeros = |n: usize| (Tokens::zeros(n, d.h, d.dqk), Tokens::zeros(n, d.h, d.dv));
        let mut kv = BTreeMap::new();
        kv.insert(("k".to_string(), "v".to_string()), zeros(len));
        for branch in &call.spec.branches {
            kv.entry(kv_inputs(branch)).or_insert_with(|| zeros(len));
        }
        let pooled = pooled
            .iter()
            .map(|p| p.as_ref().map(|p| zeros(p.k.len())))
            .collect();
        Buffers {
            dq: Tokens::zeros(len, d.hq, d.dqk),
            kv,
            pooled,
        }
    }

    /// Adds the contributions of position `pos` (row `token` of \[B·T\]).
    fn add(
        &mut self,
        call: &Call<'_>,
        pos: usize,
        token: usize,
        g: QueryGrad,
        grads: &mut Gradients,
    ) -> Result<(), ReferenceError> {
        let d = &call.dims;
        for (qh, chunk) in g.dq.chunks(d.dqk).enumerate() {
            add_to(self.dq.at_mut(pos, qh), chunk);
        }
        for (&(branch, _), dg) in call.combine.iter().zip(&g.dg) {
            if dg.is_empty() {
                continue;
            }
            let name = gradient_name(&format!("g_{}", call.spec.branches[branch].name));
            let tensor = slot(grads, &name)?;
            add_to(&mut tensor.data[token * d.hq..(token + 1) * d.hq], dg);
        }
        for (i, heads) in g.kv.iter().enumerate() {
            let branch = &call.spec.branches[i];
            let (dk, dv) = match &mut self.pooled[i] {
                Some(buffers) => buffers,
                None => self
                    .kv
                    .get_mut(&kv_inputs(branch))
                    .ok_or_else(|| missing(&kv_inputs(branch).0))?,
            };
            for (kvh, head) in heads.iter().enumerate() {
                for (n, &key) in head.keys.iter().enumerate() {
                    add_to(dk.at_mut(key, kvh), &head.dk[n * d.dqk..(n + 1) * d.dqk]);
                    add_to(dv.at_mut(key, kvh), &head.dv[n * d.dv..(n + 1) * d.dv]);
                }
            }
        }
        Ok(())
    }

    /// Pushes the compressed tokens' gradients through the pools, then writes the sequence's
    /// activation gradients into `grads`.
    fn finish(
        mut self,
        call: &Call<'_>,
        data: &SeqData,
        seq: Sequence,
        grads: &mut Gradients,
    ) -> Result<(), ReferenceError> {
        let d = &call.dims;
        for (i, (branch, plan)) in call.spec.branches.iter().zip(&call.plans).enumerate() {
            let (Plan::Compress { params, weights }, Some((dkt, dvt))) = (plan, &self.pooled[i])
            else {
                continue;
            };
            let (k, v) = data.kv(branch);
            let sources = kv_inputs(branch);
            let (dk, dv) = self
                .kv
                .get_mut(&sources)
                .ok_or_else(|| missing(&sources.0))?;
            let name = &branch.name;
            let (k_map, v_map) = match *weights {
                PoolWeights::Mean => (None, None),
                PoolWeights::Weighted(w) => (
                    Some((w, format!("dw_{name}"), false)),
                    Some((w, format!("dw_{name}"), false)),
                ),
                PoolWeights::Linear { wk, wv } => (
                    Some((wk, format!("dwk_{name}"), true)),
                    Some((wv, format!("dwv_{name}"), true)),
                ),
            };
            for (map, x, d_pooled, dx, dim) in
                [(k_map, k, dkt, dk, d.dqk), (v_map, v, dvt, dv, d.dv)]
            {
                let map = match map {
                    None => Map::Mean,
                    Some((w, dw_name, linear)) => {
                        let dw = slot(grads, &dw_name)?;
                        if linear {
                            Map::Linear { w, dw }
                        } else {
                            Map::Weighted { w, dw }
                        }
                    }
                };
                pool::backward(params, map, x, d_pooled, dx, (d.h, dim));
            }
        }
        self.dq.paste(slot(grads, "dq")?, seq);
        for ((k_name, v_name), (dk, dv)) in &self.kv {
            dk.paste(slot(grads, &gradient_name(k_name))?, seq);
            dv.paste(slot(grads, &gradient_name(v_name))?, seq);
        }
        Ok(())
    }
}

fn add_to(dst: &mut [f64], src: &[f64]) {
    for (x, &y) in dst.iter_mut().zip(src) {
        *x += y;
    }
}

/// A gradient tensor by name. Every input of a checked call has one, so the error is a
/// safeguard, not an expected outcome.
fn slot<'g>(grads: &'g mut Gradients, name: &str) -> Result<&'g mut Tensor<f64>, ReferenceError> {
    grads.get_mut(name).ok_or_else(|| missing(name))
}

fn missing(name: &str) -> ReferenceError {
    ReferenceError::Input(InputError::Missing(name.to_string()))
}
