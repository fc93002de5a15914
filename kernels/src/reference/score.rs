//! Block scoring and top-k choice of a select branch (docs/ARCHITECTURE.md §3, select).
//!
//! Selection block i covers keys [i·l′, (i+1)·l′) of the sequence (the last one may be short).
//! It is a candidate for query t iff i·l′ ≤ t (causal) / i·l′ < T_seg (non-causal). Its score
//! for kv head h is the overlap-weighted sum of the scoring compress branch's probabilities
//! over the query heads of h's group:
//!
//!   p_s(t, h, i) = Σ_{qh ∈ group(h)} Σ_j p_c(t, qh, j)·|[j·d, j·d+l) ∩ [i·l′, (i+1)·l′)| / d.
//!
//! Blocks 0..a−1 and ⌊t/l′⌋−b+1 ..= ⌊t/l′⌋ are forced (score +∞). The chosen blocks are the
//! first min(n, #candidates) candidates ordered by (score descending, index ascending), so ties
//! go to the lower index; they are reported in ascending index order.

use nsac_dsl::spec::{Compress, Select};

use super::call::Dims;

/// The number of selection blocks of a sequence of `len` tokens (the last may be short).
pub fn block_count(len: usize, s: &Select) -> usize {
    len.div_ceil(s.block as usize)
}

/// Whether block `i` is a candidate for query `t` of a sequence of `len` tokens.
pub fn is_candidate(s: &Select, causal: bool, i: usize, t: usize, len: usize) -> bool {
    let start = i * s.block as usize;
    if causal { start <= t } else { start < len }
}

/// Whether block `i` is forced (score +∞) for query `t`: one of the first `keep_first`
/// blocks, or one of the `keep_last` blocks ending at t's own block ⌊t/l′⌋.
pub fn is_forced(s: &Select, i: usize, t: usize) -> bool {
    let own = t / s.block as usize;
    let in_last = i <= own && i + s.keep_last as usize > own;
    i < s.keep_first as usize || in_last
}

/// |[a0, a1) ∩ [b0, b1)|
fn overlap(a0: usize, a1: usize, b0: usize, b1: usize) -> usize {
    a1.min(b1).saturating_sub(a0.max(b0))
}

/// p_s(t, h, i) for every kv head h and block i: \[H\]\[NB\], from the probabilities `probs`
/// \[HQ\]\[N\] of the scoring compress branch `c` at the same query. No forcing is applied.
pub(crate) fn scores(
    probs: &[Vec<f64>],
    c: &Compress,
    s: &Select,
    dims: &Dims,
    len: usize,
) -> Vec<Vec<f64>> {
    let (l, d, block) = (c.block as usize, c.stride as usize, s.block as usize);
    let nb = block_count(len, s);
    let mut out = vec![vec![0.0; nb]; dims.h];
    for (qh, p) in probs.iter().enumerate() {
        let scores = &mut out[qh / dims.group];
        for (j, &pj) in p.iter().enumerate() {
            let (first, end) = (j * d, j * d + l);
            // The blocks token j's keys fall in: ⌊first/l′⌋ ..= ⌊(end−1)/l′⌋.
            for (i, score) in scores
                .iter_mut()
                .enumerate()
                .take((end - 1) / block + 1)
                .skip(first / block)
            {
                let shared = overlap(first, end, i * block, (i + 1) * block);
                *score += pj * shared as f64 / d as f64;
            }
        }
    }
    out
}

/// The blocks query `t` attends for one kv head with raw scores `scores` \[NB\]: at most `top`
/// block indices, ascending.
pub fn choose(scores: &[f64], s: &Select, causal: bool, t: usize, len: usize) -> Vec<usize> {
    choose_among(scores, s, t, |i| is_candidate(s, causal, i, t, len))
}

/// [`choose`] with the candidates given by `candidate` (hierarchical selection narrows them to
/// the blocks inside an outer choice): the forced candidates, then the best by (score
/// descending, index ascending), at most `top`, reported ascending.
pub fn choose_among(
    scores: &[f64],
    s: &Select,
    t: usize,
    candidate: impl Fn(usize) -> bool,
) -> Vec<usize> {
    let mut ranked: Vec<(f64, usize)> = scores
        .iter()
        .enumerate()
        .filter(|&(i, _)| candidate(i))
        .map(|(i, &score)| {
            let forced = is_forced(s, i, t);
            (if forced { f64::INFINITY } else { score }, i)
        })
        .collect();
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut chosen: Vec<usize> = ranked
        .into_iter()
        .take(s.top as usize)
        .map(|(_, i)| i)
        .collect();
    chosen.sort_unstable();
    chosen
}

/// Whether `chosen` is an acceptable choice of select branch `s` for query `t` of a sequence
/// of `len` tokens, given the oracle's raw scores `scores` \[NB\] for one kv head (from
/// [`block_scores`](super::block_scores)).
///
/// Acceptable: min(n, #candidates) distinct candidates in ascending order, such that no
/// skipped candidate ranks above a chosen one by the rule of [`choose`] — except that finite
/// scores within `tol` of each other may be ranked either way (a backend scoring in f32 may
/// break such near-ties differently). With `tol = 0` only the oracle's own choice passes.
pub fn is_valid_choice(
    scores: &[f64],
    chosen: &[usize],
    s: &Select,
    causal: bool,
    t: usize,
    len: usize,
    tol: f64,
) -> bool {
    let candidates: Vec<usize> = (0..scores.len())
        .filter(|&i| is_candidate(s, causal, i, t, len))
        .collect();
    let shape_ok = chosen.len() == candidates.len().min(s.top as usize)
        && chosen.windows(2).all(|w| w[0] < w[1])
        && chosen.iter().all(|i| candidates.contains(i));
    if !shape_ok {
        return false;
    }
    let key = |i: usize| {
        if is_forced(s, i, t) {
            f64::INFINITY
        } else {
            scores[i]
        }
    };
    // Skipped candidate i may not outrank chosen j.
    let may_skip = |i: usize, j: usize| {
        let (ki, kj) = (key(i), key(j));
        let near_tie = tol > 0.0 && ki.is_finite() && kj.is_finite() && ki - kj <= tol;
        ki < kj || (ki == kj && i > j) || near_tie
    };
    candidates
        .iter()
        .filter(|i| !chosen.contains(i))
        .all(|&i| chosen.iter().all(|&j| may_skip(i, j)))
}
