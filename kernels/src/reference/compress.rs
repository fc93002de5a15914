//! Compressed attention (docs/ARCHITECTURE.md §3, compress): which compressed tokens a query sees,
//! the softmax probabilities p_c over them, and the output o_c.
//!
//! Causal: query t sees token j iff its last key j·d + l − 1 ≤ t. Non-causal: every existing
//! token. A query that sees no token has all probabilities 0 and o_c = 0.

use nsac_dsl::spec::Compress;

use super::call::Dims;
use super::pool::PooledTokens;
use super::softmax::{dot, mix, softmax};
use super::tokens::Tokens;

/// Whether query `t` sees compressed token `j`.
pub fn visible(c: &Compress, causal: bool, j: usize, t: usize) -> bool {
    let (l, d) = (c.block as usize, c.stride as usize);
    !causal || j * d + l - 1 <= t
}

/// p_c(t, qh, j) for every query head qh and token j: \[HQ\]\[N\], 0 for tokens `t` does not see.
pub(crate) fn probabilities(
    c: &Compress,
    dims: &Dims,
    q: &Tokens,
    pooled: &PooledTokens,
    t: usize,
) -> Vec<Vec<f64>> {
    let n = pooled.k.len();
    let seen: Vec<usize> = (0..n).filter(|&j| visible(c, dims.causal, j, t)).collect();
    (0..dims.hq)
        .map(|qh| {
            let kvh = qh / dims.group;
            let logits: Vec<f64> = seen
                .iter()
                .map(|&j| dims.scale * dot(q.at(t, qh), pooled.k.at(j, kvh)))
                .collect();
            let mut p = vec![0.0; n];
            for (&j, pj) in seen.iter().zip(softmax(&logits)) {
                p[j] = pj;
            }
            p
        })
        .collect()
}

/// o_c(t, qh) = Σ_j p_c(t, qh, j)·Ṽ_j for every query head: \[HQ\]\[Dv\].
pub(crate) fn output(probs: &[Vec<f64>], dims: &Dims, pooled: &PooledTokens) -> Vec<Vec<f64>> {
    probs
        .iter()
        .enumerate()
        .map(|(qh, p)| {
            let kvh = qh / dims.group;
            let values = (0..p.len()).map(|j| pooled.v.at(j, kvh));
            mix(p.iter().copied(), values, dims.dv)
        })
        .collect()
}
