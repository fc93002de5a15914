//! Combining branch outputs (docs/ARCHITECTURE.md §3, combine):
//! o(t, qh) = Σ_b g_b(t, qh)·o_b(t, qh), with the gates `g_<b>` \[B,T,HQ\] used exactly as given
//! for `gate(...)`, and all gates 1 for `sum(...)`.

use super::call::Call;
use super::tokens::Sequence;

/// The combined output of query `t` of `seq`: \[HQ\]\[Dv\]. `outs[b]` is branch b's \[HQ\]\[Dv\].
pub(crate) fn combine(
    call: &Call<'_>,
    outs: &[Vec<Vec<f64>>],
    seq: Sequence,
    seq_len: usize,
    t: usize,
) -> Vec<Vec<f64>> {
    let dims = &call.dims;
    let mut o = vec![vec![0.0; dims.dv]; dims.hq];
    for &(branch, gate) in &call.combine {
        for (qh, row) in o.iter_mut().enumerate() {
            let g = match gate {
                Some(g) => f64::from(g.data[(seq.batch * seq_len + seq.start + t) * dims.hq + qh]),
                None => 1.0,
            };
            for (x, &y) in row.iter_mut().zip(&outs[branch][qh]) {
                *x += g * y;
            }
        }
    }
    o
}
