//! Pooling a compress branch's keys and values into compressed tokens (docs/ARCHITECTURE.md §3,
//! compress).
//!
//! Token j covers keys [j·d, j·d + l) of its sequence and exists iff j·d + l ≤ T_seg.
//! - `mean`:     K̃_j\[h\] = (1/l) Σ_i K\[j·d+i, h\]
//! - `weighted`: K̃_j\[h\] = Σ_i w\[h,i\]·K\[j·d+i, h\] with ONE weight tensor `w_<c>` \[H, l\] for K and V
//! - `linear`:   K̃_j\[h,e\] = Σ_{i,f} K\[j·d+i, h, f\]·wk\[h, i·Dqk+f, e\]; Ṽ likewise with `wv_<c>`.

use nsac_dsl::spec::Compress;

use crate::io::Tensor;

use super::call::PoolWeights;
use super::tokens::Tokens;

/// The compressed keys and values of one compress branch on one sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct Pooled {
    /// K̃ \[N, H, Dqk\].
    pub k: Tensor<f64>,
    /// Ṽ \[N, H, Dv\].
    pub v: Tensor<f64>,
}

/// The number N of compressed tokens of a sequence of `len` tokens: j·d + l ≤ len.
pub fn token_count(len: usize, c: &Compress) -> usize {
    let (l, d) = (c.block as usize, c.stride as usize);
    if len < l { 0 } else { (len - l) / d + 1 }
}

/// K̃ and Ṽ as per-token vectors (internal form of [`Pooled`]).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PooledTokens {
    pub(crate) k: Tokens,
    pub(crate) v: Tokens,
}

impl PooledTokens {
    pub(crate) fn into_public(self) -> Pooled {
        Pooled {
            k: self.k.into_tensor(),
            v: self.v.into_tensor(),
        }
    }
}

/// How one tensor (K or V) is pooled.
#[derive(Debug, Clone, Copy)]
enum Map<'a> {
    Mean,
    /// \[H, l\]
    Weighted(&'a Tensor<f32>),
    /// \[H, l·dim, dim\]
    Linear(&'a Tensor<f32>),
}

/// Pools the keys `k` and values `v` of one sequence (kv heads `h`).
pub(crate) fn pool(
    c: &Compress,
    weights: PoolWeights<'_>,
    k: &Tokens,
    v: &Tokens,
    h: usize,
    dqk: usize,
    dv: usize,
) -> PooledTokens {
    let n = token_count(k.len(), c);
    let (l, d) = (c.block as usize, c.stride as usize);
    let (k_map, v_map) = maps(weights);
    PooledTokens {
        k: Tokens::from_fn(n, h, dqk, |j, head| pool_one(k_map, k, j * d, l, head, dqk)),
        v: Tokens::from_fn(n, h, dv, |j, head| pool_one(v_map, v, j * d, l, head, dv)),
    }
}

/// Pools compressed token `j` alone from keys `k` and values `v` that hold at least its block
/// [j·d, j·d + l): K̃_j \[H·Dqk\] and Ṽ_j \[H·Dv\], head by head — the rows [`pool`] gives
/// token j, computed the same way (a decode cache pools each token once, when it completes).
pub(crate) fn pool_token(
    c: &Compress,
    weights: PoolWeights<'_>,
    (k, v): (&Tokens, &Tokens),
    j: usize,
    (h, dqk, dv): (usize, usize, usize),
) -> (Vec<f64>, Vec<f64>) {
    let (l, d) = (c.block as usize, c.stride as usize);
    let (k_map, v_map) = maps(weights);
    let k_row = (0..h).flat_map(|head| pool_one(k_map, k, j * d, l, head, dqk));
    let v_row = (0..h).flat_map(|head| pool_one(v_map, v, j * d, l, head, dv));
    (k_row.collect(), v_row.collect())
}

/// How K and V are pooled for `weights`.
fn maps(weights: PoolWeights<'_>) -> (Map<'_>, Map<'_>) {
    match weights {
        PoolWeights::Mean => (Map::Mean, Map::Mean),
        PoolWeights::Weighted(w) => (Map::Weighted(w), Map::Weighted(w)),
        PoolWeights::Linear { wk, wv } => (Map::Linear(wk), Map::Linear(wv)),
    }
}

/// Pools rows `first .. first + l` of head `head` of `x` into one vector of length `dim`.
fn pool_one(map: Map<'_>, x: &Tokens, first: usize, l: usize, head: usize, dim: usize) -> Vec<f64> {
    let mut out = vec![0.0; dim];
    match map {
        Map::Mean => {
            for i in 0..l {
                for (o, &xv) in out.iter_mut().zip(x.at(first + i, head)) {
                    *o += xv;
                }
            }
            for o in &mut out {
                *o /= l as f64;
            }
        }
        Map::Weighted(w) => {
            for i in 0..l {
                let wi = f64::from(w.data[head * l + i]);
                for (o, &xv) in out.iter_mut().zip(x.at(first + i, head)) {
                    *o += wi * xv;
                }
            }
        }
        Map::Linear(w) => {
            // Row (i·dim + f) of head `head` maps input feature f of block row i onto all
            // `dim` outputs.
            for i in 0..l {
                for (f, &xv) in x.at(first + i, head).iter().enumerate() {
                    let row = (head * l * dim + i * dim + f) * dim;
                    for (e, o) in out.iter_mut().enumerate() {
                        *o += xv * f64::from(w.data[row + e]);
                    }
                }
            }
        }
    }
    out
}
