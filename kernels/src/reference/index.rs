//! DSA's lightning indexer (an `index` branch; issue 12): a learned scorer of single tokens.
//!
//! For query t and key s of the same sequence, with the branch's Hi heads and dimension Di,
//!
//!   I(t, s) = Σ_{j < Hi} w(t, j)·ReLU(q(t, j)·k(s)),
//!
//! from its own inputs `q_<i>` \[B,T,Hi,Di\], `k_<i>` \[B,T,Di\] and `w_<i>` \[B,T,Hi\] (w used as
//! given). One score per (query, key), shared by every kv head. The indexer has no output of
//! its own: a select branch at `block = 1` with `scored_by = <i>` takes its top tokens among
//! the keys the query may see (s ≤ t causal; every key of the sequence non-causal).

use super::tokens::IndexTokens;

/// I(t, s) for one query and key: `q` \[Hi·Di\] (head-major), `w` \[Hi\], `k` \[Di\].
pub fn index_score(q: &[f64], w: &[f64], k: &[f64]) -> f64 {
    let dim = k.len();
    w.iter()
        .enumerate()
        .map(|(j, &wj)| {
            let dot: f64 = q[j * dim..(j + 1) * dim]
                .iter()
                .zip(k)
                .map(|(a, b)| a * b)
                .sum();
            wj * dot.max(0.0)
        })
        .sum()
}

/// I(t, s) for every key s of a sequence of `len` tokens: \[len\] (keys the query may not see
/// are scored too; the candidate rule leaves them out).
pub(crate) fn scores(x: &IndexTokens, heads: usize, t: usize, len: usize) -> Vec<f64> {
    let q: Vec<f64> = (0..heads).flat_map(|j| x.q.at(t, j).to_vec()).collect();
    let w: Vec<f64> = (0..heads).map(|j| x.w.at(t, j)[0]).collect();
    (0..len)
        .map(|s| index_score(&q, &w, x.k.at(s, 0)))
        .collect()
}
