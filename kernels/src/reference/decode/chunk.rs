//! Answering new queries against a cache: a chunk of n new tokens (chunked prefill, Tq ≤ Tk)
//! appends their keys, then answers each query t against the cache as it was right after key t
//! arrived; a step is a chunk of one token; a batched step steps several caches (a ragged
//! batch: each sequence has its own length) in parallel.

use std::collections::BTreeMap;

use rayon::prelude::*;

use crate::io::{Inputs, Tensor};

use super::super::score::block_count;
use super::model::Rule;
use super::query::{Answer, answer};
use super::tokens::{check, row};
use super::{Cache, DecodeError};

/// What n new queries of one sequence give: row for row what [`forward`](super::super::forward)
/// gives at their positions, shaped \[n, …\] (the forward's \[B,T,…\] without B).
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// The combined output `o` \[n,HQ,Dv\].
    pub o: Tensor<f64>,
    /// Each branch's own (ungated) output `o_<b>` \[n,HQ,Dv\], by branch name.
    pub branches: BTreeMap<String, Tensor<f64>>,
    /// Each select branch's chosen blocks `idx_<b>` \[n,H,top\]: ascending, padded with −1.
    pub selected: BTreeMap<String, Tensor<i32>>,
}

impl Cache {
    /// Chunked prefill: appends n new tokens (a chunk of [`Model::token_inputs`](super::Model::token_inputs),
    /// queries and gates included) and answers each of their queries; query t sees the keys
    /// ≤ t — the earlier tokens of the cache and of the chunk, and its own. On an empty cache
    /// this is the forward over the chunk. Nothing is appended if the chunk is refused.
    pub fn chunk(&mut self, tokens: &Inputs) -> Result<Decoded, DecodeError> {
        let n = check(&self.model, tokens, true)?;
        self.answer_chunk(tokens, n)
    }

    /// One decode step: appends one new token and answers its query against the whole cache.
    pub fn step(&mut self, token: &Inputs) -> Result<Decoded, DecodeError> {
        let n = check_step(self, token)?;
        self.answer_chunk(token, n)
    }

    /// Appends `n` checked tokens and answers their queries.
    fn answer_chunk(&mut self, tokens: &Inputs, n: usize) -> Result<Decoded, DecodeError> {
        let first = self.len();
        let total = first + n;
        // Block indices are written as int32: refuse before changing anything.
        for rule in &self.model.rules {
            if let Rule::Select { s, .. } = rule
                && i32::try_from(block_count(total, s)).is_err()
            {
                return Err(DecodeError::TooLong(total));
            }
        }
        self.push(tokens, n);
        let cache = &*self;
        let answers: Vec<Answer> = (0..n)
            .into_par_iter()
            .map(|i| answer(cache, &queries(cache, tokens, i), first + i + 1))
            .collect();
        Ok(write(cache, tokens, &answers))
    }
}

/// Steps every cache of a (ragged) batch by its own next token, in parallel: `tokens[i]` is
/// one token for `caches[i]`. Every token is checked before any cache changes.
pub fn step_batch(caches: &mut [Cache], tokens: &[Inputs]) -> Result<Vec<Decoded>, DecodeError> {
    if caches.len() != tokens.len() {
        return Err(DecodeError::BatchMismatch {
            caches: caches.len(),
            tokens: tokens.len(),
        });
    }
    for (cache, token) in caches.iter().zip(tokens) {
        check_step(cache, token)?;
    }
    caches
        .par_iter_mut()
        .zip(tokens.par_iter())
        .map(|(cache, token)| cache.step(token))
        .collect()
}

/// Checks one step's token: every tensor, and exactly one token.
fn check_step(cache: &Cache, token: &Inputs) -> Result<usize, DecodeError> {
    match check(&cache.model, token, true)? {
        1 => Ok(1),
        n => Err(DecodeError::NotOneToken(n)),
    }
}

/// Query i of the chunk \[HQ\]\[Dqk\] in f64.
fn queries(cache: &Cache, tokens: &Inputs, i: usize) -> Vec<Vec<f64>> {
    let d = &cache.model.dims;
    let q: Vec<f64> = tokens
        .get("q")
        .map(|t| row(t, i).collect())
        .unwrap_or_default();
    q.chunks(d.dqk.max(1)).map(<[f64]>::to_vec).collect()
}

/// Combines every answer and lays the rows out as \[n, …\] tensors.
fn write(cache: &Cache, tokens: &Inputs, answers: &[Answer]) -> Decoded {
    let model = &cache.model;
    let d = &model.dims;
    let n = answers.len();
    let heads = |rows: &mut Vec<f64>, o: &[Vec<f64>]| o.iter().for_each(|r| rows.extend(r));
    let mut o = Vec::with_capacity(n * d.hq * d.dv);
    let mut branches = vec![Vec::with_capacity(n * d.hq * d.dv); model.rules.len()];
    let mut selected: Vec<Vec<i32>> = vec![Vec::new(); model.rules.len()];
    for (i, a) in answers.iter().enumerate() {
        heads(&mut o, &combine(cache, tokens, a, i));
        for (b, rule) in model.rules.iter().enumerate() {
            heads(&mut branches[b], &a.branches[b]);
            if let (Rule::Select { s, .. }, Some(chosen)) = (rule, &a.chosen[b]) {
                for blocks in chosen {
                    let top = s.top as usize;
                    // Checked to fit in `answer_chunk`.
                    let ids = blocks.iter().map(|&i| i32::try_from(i).unwrap_or(i32::MAX));
                    selected[b].extend(ids.chain(std::iter::repeat(-1)).take(top));
                }
            }
        }
    }
    let mut out = Decoded {
        o: Tensor {
            shape: vec![n, d.hq, d.dv],
            data: o,
        },
        branches: BTreeMap::new(),
        selected: BTreeMap::new(),
    };
    for ((branch, rule), (data, idx)) in (model.spec.branches.iter())
        .zip(&model.rules)
        .zip(branches.into_iter().zip(selected))
    {
        let shape = vec![n, d.hq, d.dv];
        out.branches
            .insert(branch.name.clone(), Tensor { shape, data });
        if let Rule::Select { s, .. } = rule {
            let shape = vec![n, d.h, s.top as usize];
            out.selected
                .insert(branch.name.clone(), Tensor { shape, data: idx });
        }
    }
    out
}

/// o = Σ_b g_b·o_b over the combined branches, in the combine's order (gates of token i).
fn combine(cache: &Cache, tokens: &Inputs, a: &Answer, i: usize) -> Vec<Vec<f64>> {
    let d = &cache.model.dims;
    let mut o = vec![vec![0.0; d.dv]; d.hq];
    for (b, gate) in &cache.model.combine {
        let gate = gate.as_ref().and_then(|g| tokens.get(g));
        for (qh, row) in o.iter_mut().enumerate() {
            let g = gate.map_or(1.0, |g| f64::from(g.data[i * d.hq + qh]));
            for (x, &y) in row.iter_mut().zip(&a.branches[*b][qh]) {
                *x += g * y;
            }
        }
    }
    o
}
