//! The oracle check every backend's candidates pass before they may win: a small odd-length
//! problem, random inputs of a few seeds, the f64 oracle's answer computed once per seed, and
//! the comparison of a backend's outputs with it.
//!
//! Selected blocks must be the oracle's, or — where the backend's arithmetic broke a near-tie
//! of block scores differently — a valid choice by `verify::reference_for_choices`, in which
//! case the outputs are compared with the oracle run on the backend's own blocks. Outputs must
//! satisfy max|o−ref|/max|ref| ≤ the backend's tolerance (docs/ARCHITECTURE.md §4) for `o` and
//! every branch.

use std::collections::BTreeMap;

use nsac_dsl::Spec;
use nsac_dsl::problem::{DType, Problem, ProblemError, Shape};
use nsac_dsl::spec::Heads;
use nsac_kernels::io::{Inputs, Tensor, random_inputs};
use nsac_kernels::reference::{self, Output, ReferenceError, verify};

use crate::cuda::round_inputs;

/// Seeds of the check problem's random inputs.
pub const CHECK_SEEDS: [u64; 2] = [0x7e57, 0xc0de];

/// One seed of the check problem, with the oracle's answer.
pub struct CheckCase {
    pub seed: u64,
    pub inputs: Inputs,
    pub want: Output,
}

/// What a backend produced on one case (its outputs by the oracle's names).
pub struct Produced<'a> {
    pub o: &'a Tensor<f32>,
    pub branches: &'a BTreeMap<String, Tensor<f32>>,
    pub selected: &'a BTreeMap<String, Tensor<i32>>,
}

/// How a candidate's outputs disagree with the oracle.
#[derive(Debug, thiserror::Error)]
pub enum Mismatch {
    #[error("the oracle failed: {0}")]
    Oracle(#[from] ReferenceError),
    #[error("the check problem is invalid: {0}")]
    Problem(#[from] ProblemError),
    #[error("seed {seed}: `{tensor}` has max|got−ref|/max|ref| = {error:e} > {tolerance:e}")]
    Inaccurate {
        seed: u64,
        tensor: String,
        error: f64,
        tolerance: f64,
    },
    #[error("seed {seed}: `{tensor}` is missing or has the wrong shape")]
    Shape { seed: u64, tensor: String },
    #[error("seed {seed}: {error}")]
    BadChoice {
        seed: u64,
        error: verify::ChoiceError,
    },
}

/// The check problem for candidates tuned on `tuning`: one row of `seq_len` tokens and one kv
/// head with the tuning problem's GQA group, dims and dtype (what generated code is
/// specialized on; more heads only add independent work).
pub fn check_shape(spec: &Spec, tuning: &Shape, seq_len: usize) -> Result<Shape, ProblemError> {
    let group = (tuning.heads.q / tuning.heads.kv.max(1)).max(1);
    let mut problem = Problem::batched(1, seq_len);
    problem.heads = Some(Heads { q: group, kv: 1 });
    problem.head_dim = Some(tuning.head_dim);
    problem.dtype = tuning.dtype;
    problem.resolve(spec)
}

/// The cases of [`CHECK_SEEDS`] on `shape`. With `round_to`, the inputs are first rounded to
/// that dtype (what a GPU reads), so the oracle sees the same values as the kernel.
pub fn check_cases(
    spec: &Spec,
    shape: &Shape,
    round_to: Option<DType>,
) -> Result<Vec<CheckCase>, ReferenceError> {
    CHECK_SEEDS
        .iter()
        .map(|&seed| {
            let raw = random_inputs(spec, shape, seed);
            let inputs = match round_to {
                Some(dtype) => round_inputs(&raw, dtype),
                None => raw,
            };
            let want = reference::forward(spec, shape, &inputs)?;
            Ok(CheckCase { seed, inputs, want })
        })
        .collect()
}

/// Compares what a backend produced on `case` with the oracle (see the module docs).
pub fn compare(
    spec: &Spec,
    shape: &Shape,
    case: &CheckCase,
    got: Produced<'_>,
    tolerance: f64,
) -> Result<(), Mismatch> {
    let seed = case.seed;
    let want = verify::reference_for_choices(
        spec,
        shape,
        &case.inputs,
        &case.want,
        got.selected,
        verify::SCORE_TIE_TOLERANCE,
    )
    .map_err(|error| Mismatch::BadChoice { seed, error })?;
    let one = |tensor: &str, g: Option<&Tensor<f32>>, w: &Tensor<f64>| {
        let error = g
            .and_then(|g| reference::relative_error(g, w))
            .ok_or_else(|| Mismatch::Shape {
                seed,
                tensor: tensor.to_string(),
            })?;
        // NaN fails too.
        if error.is_nan() || error > tolerance {
            return Err(Mismatch::Inaccurate {
                seed,
                tensor: tensor.to_string(),
                error,
                tolerance,
            });
        }
        Ok(())
    };
    one("o", Some(got.o), &want.o)?;
    for (name, w) in &want.branches {
        one(&format!("o_{name}"), got.branches.get(name), w)?;
    }
    Ok(())
}
