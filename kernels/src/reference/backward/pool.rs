//! Pushing a compress branch's compressed-token gradients dK̃, dṼ back through its pool into
//! the keys/values it pooled and into the pool's weights (the adjoint of
//! [`super::super::pool`], token j covering rows j·d .. j·d+l):
//!
//! - `mean`:     dK\[j·d+i, h\] += dK̃_j\[h\] / l
//! - `weighted`: dK\[j·d+i, h\] += w\[h,i\]·dK̃_j\[h\];  dw\[h,i\] += K\[j·d+i, h\]·dK̃_j\[h\]
//!   (and the same from V into the SAME dw, as one `w_<c>` pools both)
//! - `linear`:   dK\[j·d+i, h, f\] += Σ_e wk\[h, i·Dqk+f, e\]·dK̃_j\[h, e\];
//!   dwk\[h, i·Dqk+f, e\] += K\[j·d+i, h, f\]·dK̃_j\[h, e\]; V with `wv_<c>` likewise.
//!
//! One call handles one of K or V; the order (tokens, heads, rows) is fixed.

use nsac_dsl::spec::Compress;

use crate::io::Tensor;

use super::super::tokens::Tokens;

/// How the pooled tensor was mapped, with the gradient of its weights.
pub(super) enum Map<'a> {
    Mean,
    /// `w` \[H, l\] and its gradient.
    Weighted {
        w: &'a Tensor<f32>,
        dw: &'a mut Tensor<f64>,
    },
    /// `w` \[H, l·dim, dim\] and its gradient.
    Linear {
        w: &'a Tensor<f32>,
        dw: &'a mut Tensor<f64>,
    },
}

/// Adds the gradient of the pooled tokens `d_pooled` \[N, heads, dim\] into `dx` (the gradient
/// of the pooled rows `x` \[T_seg, heads, dim\]) and into the map's weights.
pub(super) fn backward(
    c: &Compress,
    mut map: Map<'_>,
    x: &Tokens,
    d_pooled: &Tokens,
    dx: &mut Tokens,
    (heads, dim): (usize, usize),
) {
    let (l, d) = (c.block as usize, c.stride as usize);
    for j in 0..d_pooled.len() {
        for head in 0..heads {
            let dout = d_pooled.at(j, head);
            for i in 0..l {
                let row = j * d + i;
                match &mut map {
                    Map::Mean => {
                        for (g, &dy) in dx.at_mut(row, head).iter_mut().zip(dout) {
                            *g += dy / l as f64;
                        }
                    }
                    Map::Weighted { w, dw } => {
                        let wi = f64::from(w.data[head * l + i]);
                        for (g, &dy) in dx.at_mut(row, head).iter_mut().zip(dout) {
                            *g += wi * dy;
                        }
                        let xs = x.at(row, head);
                        dw.data[head * l + i] +=
                            xs.iter().zip(dout).map(|(a, b)| a * b).sum::<f64>();
                    }
                    Map::Linear { w, dw } => {
                        let xs = x.at(row, head);
                        let g = dx.at_mut(row, head);
                        for f in 0..dim {
                            // Row (i·dim + f) of head `head`: input feature f of block row i.
                            let base = (head * l * dim + i * dim + f) * dim;
                            let weights = &w.data[base..base + dim];
                            g[f] += weights
                                .iter()
                                .zip(dout)
                                .map(|(&we, &dy)| f64::from(we) * dy)
                                .sum::<f64>();
                            for (dwe, &dy) in dw.data[base..base + dim].iter_mut().zip(dout) {
                                *dwe += xs[f] * dy;
                            }
                        }
                    }
                }
            }
        }
    }
}
