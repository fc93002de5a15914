//! Selected attention (docs/ARCHITECTURE.md §3, select): softmax attention of q_t over the keys of
//! the chosen blocks, read from the select branch's own K/V (shared unless `kv = own`).
//!
//! Causal: only keys k ≤ t of those blocks; non-causal: every key of those blocks inside the
//! sequence. All query heads of a group attend the blocks chosen for their kv head.

use nsac_dsl::spec::Select;

use super::call::Dims;
use super::softmax::attend_heads;
use super::tokens::Tokens;

/// The key positions of the chosen blocks that query `t` attends.
pub fn keys(s: &Select, causal: bool, chosen: &[usize], t: usize, len: usize) -> Vec<usize> {
    let block = s.block as usize;
    chosen
        .iter()
        .flat_map(|&i| i * block..((i + 1) * block).min(len))
        .filter(|&key| !causal || key <= t)
        .collect()
}

/// o_s(t, qh) for every query head: \[HQ\]\[Dv\]; `chosen` \[H\] lists each kv head's blocks.
pub(crate) fn output(
    s: &Select,
    dims: &Dims,
    (q, k, v): (&Tokens, &Tokens, &Tokens),
    chosen: &[Vec<usize>],
    t: usize,
) -> Vec<Vec<f64>> {
    let len = k.len();
    attend_heads(dims, q, k, v, t, |kvh| {
        keys(s, dims.causal, &chosen[kvh], t, len)
    })
}
