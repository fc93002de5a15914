//! Central finite differences of L = Σ dO ∘ o, for checking the oracle's gradients element by
//! element.
//!
//! The blocks of every select branch are held at the forward's choice while perturbing
//! (`forward_with_blocks`): that is the "no gradient through selection" semantics itself, and
//! no ±h can flip a choice. Inputs are first rounded to multiples of 2⁻¹² inside (−8, 8), and
//! the step is h = 2⁻¹⁷ ≈ 7.6e-6, so x ± h is a multiple of 2⁻¹⁷ below 8 in magnitude — at most
//! 20 significant bits, exact in f32: the perturbation is exactly ±h (no f32 rounding of the
//! inputs). Then the central difference errs by about h²/6·|L'''| (≈ 1e-11·|L'''|) plus
//! rounding ≈ 1e-16·|L|/h (≈ 1e-11·|L|), far below the 1e-6 bar for the tiny problems used.

use std::collections::BTreeMap;

use nsac_dsl::problem::Shape;
use nsac_dsl::spec::Spec;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::io::{Inputs, Tensor};
use crate::reference::{Gradients, backward_with_blocks, forward, forward_with_blocks};

/// The finite-difference step h = 2⁻¹⁷.
pub const H: f64 = 1.0 / 131_072.0;

/// The bar: max |analytic − fd| / max |fd| per gradient tensor.
pub const BAR: f64 = 1e-6;

/// Rounds every value to a multiple of 2⁻¹² inside [−7, 7] (see the module doc).
pub fn on_grid(mut inputs: Inputs) -> Inputs {
    for t in inputs.values_mut() {
        for x in &mut t.data {
            *x = ((*x * 4096.0).round() / 4096.0).clamp(-7.0, 7.0);
        }
    }
    inputs
}

/// A random standard-normal upstream gradient dO \[B,T,HQ,Dv\].
pub fn upstream(shape: &Shape, seed: u64) -> Tensor<f32> {
    let dims = shape.output_dims();
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x00d0_d0d0);
    let n = dims.iter().product();
    Tensor {
        shape: dims.to_vec(),
        data: (0..n).map(|_| StandardNormal.sample(&mut rng)).collect(),
    }
}

/// L = Σ dO ∘ o with the given blocks.
pub fn loss(
    spec: &Spec,
    shape: &Shape,
    inputs: &Inputs,
    blocks: &BTreeMap<String, Tensor<i32>>,
    d_o: &Tensor<f32>,
) -> f64 {
    let o = forward_with_blocks(spec, shape, inputs, blocks).unwrap().o;
    o.data
        .iter()
        .zip(&d_o.data)
        .map(|(o, &g)| o * f64::from(g))
        .sum()
}

/// The central difference of L with respect to every element of every input.
pub fn finite_differences(
    spec: &Spec,
    shape: &Shape,
    inputs: &Inputs,
    blocks: &BTreeMap<String, Tensor<i32>>,
    d_o: &Tensor<f32>,
) -> Gradients {
    let mut work = inputs.clone();
    let mut out = Gradients::new();
    for (name, tensor) in inputs {
        let mut fd = Tensor::full(tensor.shape.clone(), 0.0);
        for (e, &x) in tensor.data.iter().enumerate() {
            let (plus, minus) = ((f64::from(x) + H) as f32, (f64::from(x) - H) as f32);
            assert_eq!(
                f64::from(plus) - f64::from(minus),
                2.0 * H,
                "{name}[{e}] = {x}"
            );
            work.get_mut(name).unwrap().data[e] = plus;
            let up = loss(spec, shape, &work, blocks, d_o);
            work.get_mut(name).unwrap().data[e] = minus;
            let down = loss(spec, shape, &work, blocks, d_o);
            work.get_mut(name).unwrap().data[e] = x;
            fd.data[e] = (up - down) / (2.0 * H);
        }
        out.insert(format!("d{name}"), fd);
    }
    out
}

/// max |a − fd| / max |fd|; when fd is all zero (an input without influence), max |a|.
pub fn relative(analytic: &Tensor<f64>, fd: &Tensor<f64>) -> f64 {
    assert_eq!(analytic.shape, fd.shape);
    let worst = (analytic.data.iter().zip(&fd.data))
        .map(|(a, f)| (a - f).abs())
        .fold(0.0f64, f64::max);
    let scale = fd.data.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    if scale > 0.0 { worst / scale } else { worst }
}

/// Checks the gradients of `spec` on `shape` (inputs from `seed`, put on the grid) against
/// finite differences, with the forward's blocks or the `blocks` given; returns the worst
/// relative error per gradient. Asserts the names, shapes and finiteness of the gradients.
pub fn check_with(
    spec: &Spec,
    shape: &Shape,
    seed: u64,
    blocks: Option<BTreeMap<String, Tensor<i32>>>,
) -> BTreeMap<String, f64> {
    let inputs = on_grid(crate::io::random_inputs(spec, shape, seed));
    let d_o = upstream(shape, seed);
    let blocks = blocks.unwrap_or_else(|| forward(spec, shape, &inputs).unwrap().selected);
    let grads = backward_with_blocks(spec, shape, &inputs, &blocks, &d_o).unwrap();
    let names: Vec<String> = inputs.keys().map(|n| format!("d{n}")).collect();
    assert_eq!(grads.keys().cloned().collect::<Vec<_>>(), names);
    for (name, input) in &inputs {
        let g = &grads[&format!("d{name}")];
        assert_eq!(g.shape, input.shape, "d{name}");
        assert!(g.data.iter().all(|x| x.is_finite()), "d{name} not finite");
    }
    let fd = finite_differences(spec, shape, &inputs, &blocks, &d_o);
    names
        .iter()
        .map(|n| (n.clone(), relative(&grads[n], &fd[n])))
        .collect()
}

/// [`check_with`] on the forward's own blocks, asserting every error is within [`BAR`].
#[track_caller]
pub fn check(spec: &Spec, shape: &Shape, seed: u64) {
    let errors = check_with(spec, shape, seed, None);
    assert!(
        errors.values().all(|&e| e <= BAR),
        "seed {seed}, shape {shape:?}: {errors:?}"
    );
}
