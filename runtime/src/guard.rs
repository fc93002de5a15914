//! The magnitude guard: before a device that computes in f32 (the CPU) or reads 16-bit inputs
//! (the GPU) runs, check that the inputs' magnitudes stay inside what its arithmetic can
//! represent, so that a finite input never comes back as a silent 0, Inf or NaN.
//!
//! The oracle computes in f64 and rejects only non-finite inputs; an f32 kernel on the same
//! finite inputs overflows where the oracle does not (scores of `scale = 3e38`, q = k = 1e20,
//! sums of v = 1e37). The rule, per branch and from each tensor's max |x| (never from the
//! data's luck), with `LIMIT` = f32::MAX / 2¹⁰ (headroom for the softmax's rescaling and its
//! base-2 exponent):
//!
//! - pooling: the block sums (mean: l·max|k|; weighted: l·max|w|·max|k|; linear:
//!   l·D·max|wk|·max|k|, and the same for v) ≤ LIMIT; they bound the compressed K̃, Ṽ;
//! - scores: max(scale, 1)·Dqk·max|q|·max|K| ≤ LIMIT (K the keys the branch attends: k, its own
//!   `k_<b>`, or K̃), so every product, partial sum and scaled score is finite;
//! - values: the longest segment × max|V| ≤ LIMIT (the unnormalised accumulator Σ p·v);
//! - combine: Σ_b max|g_b|·max|V_b| ≤ LIMIT (a branch output is a convex mix of its values);
//! - 16-bit inputs (GPU): every input and K̃, Ṽ within the dtype's largest finite value;
//! - conditioning: scale·max‖q‖·max‖K‖ ≤ `SCORE_LIMIT` = 4096 (row norms over the head dim;
//!   by Cauchy–Schwarz the largest |score| possible; ‖K̃‖ bounded through the pool). An f32
//!   score s carries an error of a few ulps of |s|, and softmax turns a score error δ into a
//!   relative output error of about δ: no f32 kernel answers scores of size κ better than
//!   about κ·2⁻²⁴. [`Checked::bar`] is that accuracy, max(1e-5, κ·2⁻²⁴), the CPU's 1e-5 bar
//!   for any κ ≤ 168 (standard normal activations give about √Dqk + 6, ≈ 17 at Dqk = 128; the
//!   library specs up to ~400 with the pool bounds) and at most 2.4e-4 at the limit, past which
//!   the guard refuses rather than answer less accurately;
//! - underflow: a branch's values (max|V|, and max|g_b|·max|V_b| when gated) are 0 or at least
//!   `TINY` = 2⁻⁹⁰, so that the products of the value path (v·w in pooling, g·o) stay normal
//!   f32 numbers and subnormal rounding stays far below the bar; tiny queries and keys are
//!   harmless (a score's error is absolute).
//!
//! These are sufficient conditions for the arithmetic to stay finite; inside them an f32
//! backend matches the oracle within its bar, outside them the caller gets a [`GuardError`]
//! naming the tensor and the bound (boxed: it is large next to the callers' other errors).

use nsac_compiler::ir::{Op, Plan, PoolKind, Sizes, TensorId};
use nsac_dsl::problem::DType;
use nsac_kernels::io::InputRefs;

/// Headroom below f32::MAX that every bounded intermediate keeps.
pub const LIMIT: f64 = f32::MAX as f64 / 1024.0;

/// The largest scale·max‖q‖·max‖K‖ (see the module doc).
pub const SCORE_LIMIT: f64 = 4096.0;

/// max |x| and the largest Euclidean norm of the rows of `dim` consecutive values of `data`,
/// in one pass, in parallel over blocks of rows (the guard runs on every call, so it must cost
/// a small fraction of the kernel's time).
fn magnitudes(data: &[f32], dim: usize) -> (f64, f64) {
    use rayon::prelude::*;
    let dim = dim.max(1);
    let (m, sq) = data
        .par_chunks(dim * 1024)
        .map(|block| {
            block.chunks(dim).fold((0.0f64, 0.0f64), |(m, n), row| {
                let (rm, sq) = row.iter().fold((0.0f32, 0.0f64), |(rm, sq), &x| {
                    (rm.max(x.abs()), sq + f64::from(x) * f64::from(x))
                });
                (m.max(f64::from(rm)), n.max(sq))
            })
        })
        .reduce(|| (0.0, 0.0), |a, b| (a.0.max(b.0), a.1.max(b.1)));
    (m, sq.sqrt())
}

/// The smallest non-zero magnitude of a branch's values (see the module doc).
pub const TINY: f64 = 1.0 / (1u128 << 90) as f64;

/// An input outside what the device's arithmetic represents.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "`{tensor}` is too {direction} for {arithmetic} arithmetic: {what} = {value:.3e} {relation} {bound:.3e}; rescale the inputs (or run on --device reference, which computes in f64)"
)]
pub struct GuardError {
    /// The input tensor to blame (the largest factor of the bound), or `scale`.
    pub tensor: String,
    /// `large` (an overflow bound) or `small` (an underflow bound).
    pub direction: &'static str,
    /// `exceeds` or `is below`.
    pub relation: &'static str,
    /// `f32`, `f16` or `bf16`.
    pub arithmetic: &'static str,
    /// The quantity bounded, as a formula over max |x| of the tensors.
    pub what: String,
    pub value: f64,
    pub bound: f64,
}

/// The arithmetic of the device that is about to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arithmetic {
    /// f32 inputs and f32 arithmetic (the CPU).
    F32,
    /// Inputs converted to `dtype` (f16, bf16 or f32), f32 accumulation (the GPU).
    Inputs(DType),
}

fn dtype_max(d: DType) -> f64 {
    match d {
        DType::F32 => f64::from(f32::MAX),
        DType::F16 => 65504.0,
        // bf16: 8 exponent bits like f32, 7 mantissa bits: (2 − 2⁻⁷)·2¹²⁷.
        DType::Bf16 => (2.0 - 2f64.powi(-7)) * 2f64.powi(127),
    }
}

/// What a passed check found: the conditioning of the run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Checked {
    /// The largest scale·max‖q‖·max‖K‖ over the plan's attentions (0 without any).
    pub score_bound: f64,
}

impl Checked {
    /// The accuracy an f32 backend owes on these inputs, as max |out−ref| / max|ref|:
    /// max(1e-5, κ·2⁻²⁴) with κ = [`Checked::score_bound`] (see the module doc).
    pub fn bar(&self) -> f64 {
        1e-5f64.max(self.score_bound * f64::from(f32::EPSILON) / 2.0)
    }
}

/// Checks `inputs` (already shape-checked against `plan` on `sizes`) against the bounds of
/// `arith`, branch by branch: every attention of the plan with the pool that made its keys.
pub fn check(
    plan: &Plan,
    sizes: &Sizes,
    inputs: &InputRefs<'_>,
    arith: Arithmetic,
) -> Result<Checked, Box<GuardError>> {
    let (name, storage_max) = match arith {
        Arithmetic::F32 => ("f32", dtype_max(DType::F32)),
        Arithmetic::Inputs(d) => (d.name(), dtype_max(d)),
    };
    // max |x| and the largest row norm (rows of Dqk) of every input, each scanned once.
    let dqk_rows = plan.consts.dqk;
    let stats: std::collections::BTreeMap<&str, (f64, f64)> = inputs
        .iter()
        .map(|(name, t)| (*name, magnitudes(t.data, dqk_rows)))
        .collect();
    let max = |t: &str| -> f64 { stats.get(t).map_or(0.0, |s| s.0) };
    let fail = |tensor: &str, what: String, value: f64, bound: f64| GuardError {
        tensor: tensor.to_string(),
        direction: "large",
        relation: "exceeds",
        arithmetic: name,
        what,
        value,
        bound,
    };
    let within = |tensor: &str, what: &dyn Fn() -> String, value: f64, bound: f64| {
        // `!(value <= bound)` also rejects a NaN product (0·∞ cannot occur: inputs are finite).
        if value <= bound {
            Ok(())
        } else {
            Err(Box::new(fail(tensor, what(), value, bound)))
        }
    };
    if storage_max < f64::from(f32::MAX) {
        for t in inputs.keys() {
            within(t, &|| format!("max|{t}|"), max(t), storage_max)?;
        }
    }
    let d = &plan.consts;
    let (dqk, dv) = (d.dqk as f64, d.dv as f64);
    let scale = d.scale;
    let longest = sizes.max_segment() as f64;
    let q = max("q");
    let norm = |t: &str| stats.get(t).map_or(0.0, |s| s.1);
    let qn = norm("q");
    let tname = |id: TensorId| plan.tensor(id).name.clone();
    let combine = plan.ops.iter().find_map(|op| match op {
        Op::Combine(c) => Some(c),
        _ => None,
    });
    let mut combined = 0.0f64;
    let mut score_bound = 0.0f64;
    for op in &plan.ops {
        let Op::Attend(a) = op else {
            continue;
        };
        let br = &a.branch;
        // The raw keys and values the branch reads (through its pool, when compressed).
        let pool = plan.producer(a.k).and_then(|(_, op)| match op {
            Op::Pool(p) => Some(p),
            _ => None,
        });
        let (kn, vn) = match pool {
            Some(p) => (tname(p.k), tname(p.v)),
            None => (tname(a.k), tname(a.v)),
        };
        let gate_tensor = combine
            .and_then(|c| c.terms.iter().find(|t| t.out == a.out))
            .and_then(|t| t.gate)
            .map(tname);
        let (mut kmax, mut vmax) = (max(&kn), max(&vn));
        let mut kn_norm = norm(&kn);
        if let Some(c) = pool {
            let l = c.block as f64;
            let (kp, vp, kw, vw) = match c.kind {
                PoolKind::Mean => (l * kmax, l * vmax, None, None),
                PoolKind::Weighted => {
                    let w = tname(c.weights[0]);
                    let wm = max(&w);
                    (l * wm * kmax, l * wm * vmax, Some(w.clone()), Some(w))
                }
                PoolKind::Linear => {
                    let (wk, wv) = (tname(c.weights[0]), tname(c.weights[1]));
                    let (wkm, wvm) = (max(&wk), max(&wv));
                    (
                        l * dqk * wkm * kmax,
                        l * dv * wvm * vmax,
                        Some(wk),
                        Some(wv),
                    )
                }
            };
            let blame = |w: &Option<String>, x: &str, xm: f64, wm: f64| {
                if w.is_some() && wm > xm {
                    w.clone().unwrap_or_default()
                } else {
                    x.to_string()
                }
            };
            let wkm = kw.as_deref().map_or(0.0, max);
            let wvm = vw.as_deref().map_or(0.0, max);
            let pooled = |x: &str| format!("the block sum of `{br}` pooling {x}");
            within(&blame(&kw, &kn, kmax, wkm), &|| pooled(&kn), kp, LIMIT)?;
            within(&blame(&vw, &vn, vmax, wvm), &|| pooled(&vn), vp, LIMIT)?;
            if c.kind != PoolKind::Mean {
                (kmax, vmax) = (kp, vp);
            }
            // ‖K̃‖: a mean stays within the largest row; a weighted sum within l·max|w| rows;
            // the linear map within ‖W‖_F·‖block‖ ≤ √(l·D·D)·max|wk| · √l·max‖k‖.
            kn_norm *= match c.kind {
                PoolKind::Mean => 1.0,
                PoolKind::Weighted => l * wkm,
                PoolKind::Linear => (l * dqk * dqk).sqrt() * wkm * l.sqrt(),
            };
            let tilde = |x: &str| format!("max|{x}| pooled by `{br}`");
            within(&kn, &|| tilde(&kn), kmax, storage_max)?;
            within(&vn, &|| tilde(&vn), vmax, storage_max)?;
        }
        let scores = scale.max(1.0) * dqk * q * kmax;
        let blame = if scale >= q.max(kmax) {
            "scale"
        } else if q >= kmax {
            "q"
        } else {
            kn.as_str()
        };
        within(
            blame,
            &|| format!("max(scale, 1)·Dqk·max|q|·max|{kn}| in branch `{br}`"),
            scores,
            LIMIT,
        )?;
        let conditioned = scale * qn * kn_norm;
        score_bound = score_bound.max(conditioned);
        within(
            if qn >= kn_norm { "q" } else { kn.as_str() },
            &|| {
                format!(
                    "the largest score scale·max‖q‖·max‖{kn}‖ of branch `{br}` (softmax over scores this large loses more than 2.4e-4 to f32 rounding)"
                )
            },
            conditioned,
            SCORE_LIMIT,
        )?;
        within(
            &vn,
            &|| format!("T·max|{vn}| (the sum over the keys of `{br}`)"),
            longest * vmax,
            LIMIT,
        )?;
        let gate = gate_tensor.as_deref().map_or(1.0, max);
        combined += gate * vmax;
        let tiny = |tensor: &str, what: String, value: f64| {
            if value == 0.0 || value >= TINY {
                Ok(())
            } else {
                Err(Box::new(GuardError {
                    tensor: tensor.to_string(),
                    direction: "small",
                    relation: "is below",
                    arithmetic: name,
                    what,
                    value,
                    bound: TINY,
                }))
            }
        };
        tiny(&vn, format!("max|{vn}| as `{br}` reads it"), vmax)?;
        if let Some(g) = &gate_tensor {
            let blame = if gate < vmax { g.as_str() } else { vn.as_str() };
            tiny(blame, format!("max|{g}|·max|{vn}|"), gate * vmax)?;
        }
        let gn = gate_tensor.clone().unwrap_or_else(|| vn.clone());
        within(
            &gn,
            &|| "Σ_b max|g_b|·max|v_b| (the combined output)".to_string(),
            combined,
            LIMIT,
        )?;
    }
    Ok(Checked { score_bound })
}
