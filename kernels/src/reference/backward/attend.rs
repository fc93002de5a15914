//! The gradient of one softmax attention row, the building block of every branch's backward.
//!
//! For o = Σᵢ pᵢ·vᵢ with p = softmax(s·q·kᵢ) and an upstream gradient dO (the FlashAttention-2
//! recipe, written out in f64):
//!
//!   dvᵢ += pᵢ·dO,  dpᵢ = dO·vᵢ,  D = Σᵢ pᵢ·dpᵢ (= dO·o),  dsᵢ = pᵢ·(dpᵢ − D),
//!   dq += s·Σᵢ dsᵢ·kᵢ,  dkᵢ += s·dsᵢ·q.
//!
//! An empty key list has no probabilities and adds nothing: zero gradient, never NaN.

use super::super::softmax::{dot, softmax};

/// One query head's row: its query, the keys and values it attends, the scale and dO.
pub(super) struct Row<'a> {
    pub(super) q: &'a [f64],
    pub(super) keys: &'a [&'a [f64]],
    pub(super) values: &'a [&'a [f64]],
    pub(super) scale: f64,
    pub(super) d_o: &'a [f64],
}

/// Adds the row's gradients into `dq` \[Dqk\], `dk` \[keys × Dqk\] and `dv` \[keys × Dv\]
/// (flat, key `i` at `i·dim`).
pub(super) fn backward(row: &Row<'_>, dq: &mut [f64], dk: &mut [f64], dv: &mut [f64]) {
    if row.keys.is_empty() {
        return;
    }
    let (dqk, dim_v) = (row.q.len(), row.d_o.len());
    let logits: Vec<f64> = row.keys.iter().map(|k| row.scale * dot(row.q, k)).collect();
    let p = softmax(&logits);
    let dp: Vec<f64> = row.values.iter().map(|v| dot(row.d_o, v)).collect();
    let big_d: f64 = p.iter().zip(&dp).map(|(p, dp)| p * dp).sum();
    for (i, (&pi, &dpi)) in p.iter().zip(&dp).enumerate() {
        let ds = pi * (dpi - big_d);
        for (x, &g) in dv[i * dim_v..(i + 1) * dim_v].iter_mut().zip(row.d_o) {
            *x += pi * g;
        }
        for (x, &k) in dq.iter_mut().zip(row.keys[i]) {
            *x += row.scale * ds * k;
        }
        for (x, &q) in dk[i * dqk..(i + 1) * dqk].iter_mut().zip(row.q) {
            *x += row.scale * ds * q;
        }
    }
}
