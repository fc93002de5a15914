//! Softmax and softmax attention over an explicit list of keys, in f64.
//!
//! Max subtraction keeps `exp` in range; an empty row gives no probabilities and a zero
//! output, never NaN (docs/ARCHITECTURE.md §4).

use super::call::Dims;
use super::tokens::Tokens;

/// The dot product of two equally long vectors. Eight independent partial sums (summed at the
/// end) let the loop vectorise; the oracle's rounding order is not part of the contract.
pub(crate) fn dot(a: &[f64], b: &[f64]) -> f64 {
    const LANES: usize = 8;
    let (chunks_a, chunks_b) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f64 = (chunks_a.remainder().iter())
        .zip(chunks_b.remainder())
        .map(|(x, y)| x * y)
        .sum();
    let mut partial = [0.0; LANES];
    for (xa, xb) in chunks_a.zip(chunks_b) {
        for ((p, x), y) in partial.iter_mut().zip(xa).zip(xb) {
            *p += x * y;
        }
    }
    partial.iter().sum::<f64>() + tail
}

/// softmax(logits) with the maximum subtracted first; an empty row gives an empty result.
pub fn softmax(logits: &[f64]) -> Vec<f64> {
    let Some(max) = logits.iter().copied().reduce(f64::max) else {
        return Vec::new();
    };
    let exps: Vec<f64> = logits.iter().map(|&x| (x - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// Σ_i probs\[i\]·values\[i\], a vector of length `dim` (zeros when there are no values).
pub(crate) fn mix<'a>(
    probs: impl IntoIterator<Item = f64>,
    values: impl IntoIterator<Item = &'a [f64]>,
    dim: usize,
) -> Vec<f64> {
    let mut out = vec![0.0; dim];
    for (p, value) in probs.into_iter().zip(values) {
        for (o, x) in out.iter_mut().zip(value) {
            *o += p * x;
        }
    }
    out
}

/// softmax(scale · q·kᵢ)·vᵢ over the given (key, value) pairs; zeros when there are none.
pub(crate) fn attend<'a>(
    q: &[f64],
    pairs: impl IntoIterator<Item = (&'a [f64], &'a [f64])>,
    scale: f64,
    dv: usize,
) -> Vec<f64> {
    let (keys, values): (Vec<&[f64]>, Vec<&[f64]>) = pairs.into_iter().unzip();
    let logits: Vec<f64> = keys.iter().map(|k| scale * dot(q, k)).collect();
    mix(softmax(&logits), values, dv)
}

/// Softmax attention of every query head of token `t` over its kv head's keys: `keys(kvh)`
/// lists the key positions that kv head `kvh`'s group attends. Returns \[HQ\]\[Dv\].
pub(crate) fn attend_heads(
    dims: &Dims,
    q: &Tokens,
    k: &Tokens,
    v: &Tokens,
    t: usize,
    keys: impl Fn(usize) -> Vec<usize>,
) -> Vec<Vec<f64>> {
    let per_kv_head: Vec<Vec<usize>> = (0..dims.h).map(keys).collect();
    (0..dims.hq)
        .map(|qh| {
            let kvh = qh / dims.group;
            let pairs = per_kv_head[kvh]
                .iter()
                .map(|&key| (k.at(key, kvh), v.at(key, kvh)));
            attend(q.at(t, qh), pairs, dims.scale, dims.dv)
        })
        .collect()
}
