//! The accuracy measure of docs/ARCHITECTURE.md §4 for comparing a backend's f32 output with the
//! oracle: max |out − ref| / max |ref|.

use crate::io::Tensor;

/// max |got − want| / max |want| over all elements; `None` when the shapes or lengths differ.
///
/// When `want` is all zeros the denominator is taken as 1 (the error is then absolute), so the
/// result is always finite for finite inputs. A NaN in `got` gives NaN, which fails every bar.
pub fn relative_error(got: &Tensor<f32>, want: &Tensor<f64>) -> Option<f64> {
    if got.shape != want.shape || got.data.len() != want.data.len() {
        return None;
    }
    let mut worst = 0.0f64;
    for (&g, &w) in got.data.iter().zip(&want.data) {
        let diff = (f64::from(g) - w).abs();
        // `f64::max` would drop a NaN; keep it so a broken backend cannot pass.
        worst = if diff.is_nan() {
            f64::NAN
        } else {
            worst.max(diff)
        };
        if worst.is_nan() {
            return Some(f64::NAN);
        }
    }
    let scale = want.data.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    Some(worst / if scale > 0.0 { scale } else { 1.0 })
}
