//! One query against a view of its cache: the first `len` keys (the query's own key last) and
//! the compressed tokens completed among them — the cache exactly as it was right after the
//! query's key arrived. Nothing outside the view exists for the query, so no visibility rule is
//! applied: every compressed token of the view is seen, every selection block of the view is a
//! candidate (blocks 0 ..= ⌊t/l′⌋, t = len − 1, the last one possibly short), and a window
//! attends the view's last w keys.

use std::ops::Range;

use nsac_dsl::spec::{Compress, Select, Window};

use super::super::call::Dims;
use super::super::pool::{PooledTokens, token_count};
use super::super::score;
use super::super::softmax::{attend, dot, mix, softmax};
use super::super::tokens::Tokens;
use super::Cache;
use super::model::Rule;

/// Everything one query gives, per branch of the spec.
pub(super) struct Answer {
    /// Per branch: o_b \[HQ\]\[Dv\].
    pub(super) branches: Vec<Vec<Vec<f64>>>,
    /// Per select branch: the chosen blocks per kv head \[H\]\[..\], ascending.
    pub(super) chosen: Vec<Option<Vec<Vec<usize>>>>,
}

/// Answers query `q` \[HQ\]\[Dqk\] against the first `len` ≥ 1 tokens of `cache`.
pub(super) fn answer(cache: &Cache, q: &[Vec<f64>], len: usize) -> Answer {
    let model = &cache.model;
    let dims = &model.dims;
    // Every compress branch first: select branches score by their probabilities.
    let compressed: Vec<Option<Compressed>> = (model.rules.iter())
        .enumerate()
        .map(|(b, rule)| match (rule, cache.compressed_tokens(b)) {
            (Rule::Compress { c, .. }, Some(tokens)) => Some(compressed(c, dims, q, tokens, len)),
            _ => None,
        })
        .collect();
    let mut branches = Vec::with_capacity(model.rules.len());
    let mut chosen = Vec::with_capacity(model.rules.len());
    for (b, rule) in model.rules.iter().enumerate() {
        let (k, v) = cache.keys(b);
        match rule {
            Rule::Compress { .. } => {
                let o = compressed[b].as_ref().map(|c| c.o.clone());
                branches.push(o.unwrap_or_else(|| vec![vec![0.0; dims.dv]; dims.hq]));
                chosen.push(None);
            }
            Rule::Select { s, scorer, c } => {
                let probs = compressed[*scorer].as_ref().map(|c| c.probs.as_slice());
                let blocks = choose(s, c, dims, probs.unwrap_or_default(), len);
                let o = attend_heads(dims, q, (k, v), |h| {
                    blocks[h]
                        .iter()
                        .flat_map(|&i| block_keys(s, i, len))
                        .collect()
                });
                branches.push(o);
                chosen.push(Some(blocks));
            }
            Rule::Window(w) => {
                let keys = window_keys(w, len);
                branches.push(attend_heads(dims, q, (k, v), |_| keys.clone().collect()));
                chosen.push(None);
            }
        }
    }
    Answer { branches, chosen }
}

/// A compress branch's answer: p_c \[HQ\]\[N_view\] (what select branches score by) and o_c
/// \[HQ\]\[Dv\].
struct Compressed {
    probs: Vec<Vec<f64>>,
    o: Vec<Vec<f64>>,
}

/// A compress branch over the view: the probabilities p_c \[HQ\]\[N_view\] over every
/// compressed token of the view, and o_c \[HQ\]\[Dv\] (0 when the view holds no token).
fn compressed(
    c: &Compress,
    dims: &Dims,
    q: &[Vec<f64>],
    tokens: &PooledTokens,
    len: usize,
) -> Compressed {
    // The cache completes tokens in index order, so the view's are a prefix.
    let n = token_count(len, c).min(tokens.k.len());
    let (probs, o) = (0..dims.hq)
        .map(|qh| {
            let h = qh / dims.group;
            let logits: Vec<f64> = (0..n)
                .map(|j| dims.scale * dot(&q[qh], tokens.k.at(j, h)))
                .collect();
            let p = softmax(&logits);
            let o = mix(
                p.iter().copied(),
                (0..n).map(|j| tokens.v.at(j, h)),
                dims.dv,
            );
            (p, o)
        })
        .unzip();
    Compressed { probs, o }
}

/// The blocks each kv head attends: the top-k of the view's blocks by the overlap-weighted
/// scores of the scorer's probabilities, forced blocks first, ties to the lower index.
fn choose(
    s: &Select,
    c: &Compress,
    dims: &Dims,
    probs: &[Vec<f64>],
    len: usize,
) -> Vec<Vec<usize>> {
    let t = len - 1;
    score::scores(probs, c, s, dims, len)
        .iter()
        .map(|scores| score::choose(scores, s, true, t, len))
        .collect()
}

/// The keys of selection block `i` inside the view: [i·l′, min((i+1)·l′, len)).
fn block_keys(s: &Select, i: usize, len: usize) -> Range<usize> {
    let l = s.block as usize;
    i * l..((i + 1) * l).min(len)
}

/// The window's keys: the view's last w (none for w = 0).
fn window_keys(w: &Window, len: usize) -> Range<usize> {
    len.saturating_sub(w.size as usize)..len
}

/// Softmax attention of every query head over the keys `keys(h)` of its kv head h.
fn attend_heads(
    dims: &Dims,
    q: &[Vec<f64>],
    (k, v): (&Tokens, &Tokens),
    keys: impl Fn(usize) -> Vec<usize>,
) -> Vec<Vec<f64>> {
    let per_head: Vec<Vec<usize>> = (0..dims.h).map(keys).collect();
    (0..dims.hq)
        .map(|qh| {
            let h = qh / dims.group;
            let pairs = per_head[h].iter().map(|&key| (k.at(key, h), v.at(key, h)));
            attend(&q[qh], pairs, dims.scale, dims.dv)
        })
        .collect()
}
