//! The new tokens handed to a cache: checking them against the model, reading one token's row,
//! and cutting them out of a forward call's inputs ([`cut_tokens`]).
//!
//! A chunk of n new tokens of one sequence is a map of named f32 tensors, named as in the
//! forward's contract and shaped like its \[B,T,…\] tensors without B
//! ([`Model::token_inputs`](super::Model::token_inputs)).

use std::ops::Range;

use nsac_dsl::problem::Shape;
use nsac_dsl::spec::Spec;

use crate::io::{InputError, Inputs, Tensor, expected_inputs};

use super::super::call::Call;
use super::super::tokens::{Sequence, sequences};
use super::model::is_per_token;
use super::{DecodeError, Model};

/// `tensor` is present, has shape `shape` with as many values, all finite.
pub(super) fn check_tensor(
    name: &str,
    shape: &[usize],
    tensor: Option<&Tensor<f32>>,
) -> Result<(), InputError> {
    let t = tensor.ok_or_else(|| InputError::Missing(name.to_string()))?;
    if t.shape != shape {
        return Err(InputError::BadShape {
            name: name.to_string(),
            got: t.shape.clone(),
            expected: shape.to_vec(),
        });
    }
    if t.data.len() != t.numel() {
        return Err(InputError::BadLength {
            name: name.to_string(),
            shape: t.shape.clone(),
            got: t.data.len(),
            expected: t.numel(),
        });
    }
    if t.data.iter().any(|x| !x.is_finite()) {
        return Err(InputError::NonFinite(name.to_string()));
    }
    Ok(())
}

/// Checks a chunk of new tokens and returns its length n (the first dimension of `k`). Every
/// key/value tensor is required; the queries `q` and gates `g_<b>` too when `queries`, and
/// otherwise checked if present (and unused). No other name is accepted.
pub(super) fn check(model: &Model, tokens: &Inputs, queries: bool) -> Result<usize, DecodeError> {
    let k = tokens
        .get("k")
        .ok_or_else(|| InputError::Missing("k".into()))?;
    let n = *k.shape.first().ok_or_else(|| InputError::BadShape {
        name: "k".into(),
        got: k.shape.clone(),
        expected: model
            .token_inputs(1)
            .into_iter()
            .find(|s| s.name == "k")
            .map(|s| s.shape)
            .unwrap_or_default(),
    })?;
    for spec in model.token_inputs(n) {
        let needed = queries || model.per_token.iter().any(|t| t.kv && t.name == spec.name);
        let tensor = tokens.get(&spec.name);
        if needed || tensor.is_some() {
            check_tensor(&spec.name, &spec.shape, tensor)?;
        }
    }
    if let Some(name) = tokens
        .keys()
        .find(|n| !model.per_token.iter().any(|t| &t.name == *n))
    {
        let names: Vec<&str> = model.per_token.iter().map(|t| t.name.as_str()).collect();
        return Err(InputError::Unexpected(name.clone(), names.join(", ")).into());
    }
    Ok(n)
}

/// Row `i` (token i of the chunk) of a checked \[n, …\] tensor, widened exactly to f64.
pub(super) fn row<'a>(tensor: &'a Tensor<f32>, i: usize) -> impl Iterator<Item = f64> + 'a {
    let width: usize = tensor.shape[1..].iter().product();
    tensor.data[i * width..(i + 1) * width]
        .iter()
        .map(|&x| f64::from(x))
}

/// The per-token tensors (activations and gates) of tokens `range` of sequence `seq` of a
/// forward call, as a chunk for [`Cache::chunk`](super::Cache::chunk) /
/// [`Cache::append`](super::Cache::append): shaped \[range.len(), …\]. The call is checked
/// first; `seq` must be one of [`sequences`]`(shape)` and `range` lie inside it (positions
/// relative to its start).
pub fn cut_tokens(
    spec: &Spec,
    shape: &Shape,
    inputs: &Inputs,
    seq: Sequence,
    range: Range<usize>,
) -> Result<Inputs, DecodeError> {
    Call::new(spec, shape, inputs)?;
    if !sequences(shape).contains(&seq) {
        return Err(DecodeError::BadSequence {
            batch: seq.batch,
            start: seq.start,
            end: seq.end,
        });
    }
    if range.start > range.end || range.end > seq.len() {
        return Err(DecodeError::BadRange {
            start: range.start,
            end: range.end,
            len: seq.len(),
        });
    }
    let mut out = Inputs::new();
    for e in expected_inputs(spec, shape)
        .iter()
        .filter(|e| is_per_token(e))
    {
        let t = inputs
            .get(&e.name)
            .ok_or_else(|| InputError::Missing(e.name.clone()))?;
        let inner: usize = t.shape[2..].iter().product();
        let first = (seq.batch * t.shape[1] + seq.start + range.start) * inner;
        let last = first + range.len() * inner;
        let shape = std::iter::once(range.len())
            .chain(t.shape[2..].iter().copied())
            .collect();
        let data = t.data[first..last].to_vec();
        out.insert(e.name.clone(), Tensor { shape, data });
    }
    Ok(out)
}
