//! Sliding-window attention (docs/ARCHITECTURE.md §3, window).
//!
//! Causal: query t attends keys max(0, t−w+1) ..= t. Non-causal: the symmetric window
//! |k − t| ≤ w − 1 inside the sequence. A window of 0 attends nothing (output 0).

use std::ops::Range;

use nsac_dsl::spec::Window;

use super::call::Dims;
use super::softmax::attend_heads;
use super::tokens::Tokens;

/// The key positions query `t` of a sequence of `len` tokens attends.
pub fn keys(w: &Window, causal: bool, t: usize, len: usize) -> Range<usize> {
    let size = w.size as usize;
    if size == 0 {
        return t..t;
    }
    let first = t.saturating_sub(size - 1);
    let last = if causal {
        t
    } else {
        t.saturating_add(size - 1).min(len - 1)
    };
    first..last + 1
}

/// o_w(t, qh) for every query head: \[HQ\]\[Dv\].
pub(crate) fn output(
    w: &Window,
    dims: &Dims,
    (q, k, v): (&Tokens, &Tokens, &Tokens),
    t: usize,
) -> Vec<Vec<f64>> {
    let len = k.len();
    attend_heads(dims, q, k, v, t, |_| keys(w, dims.causal, t, len).collect())
}
