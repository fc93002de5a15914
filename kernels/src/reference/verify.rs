//! Checking a backend's selected blocks against the oracle, with the one rule every backend
//! test and the tuner share: a row may differ from the oracle's choice only where f32 scoring
//! broke a near-tie (scores within a tolerance, see [`score::is_valid_choice`]), and then the
//! backend's outputs are compared with the oracle run on the backend's own blocks.

use std::collections::BTreeMap;

use nsac_dsl::problem::Shape;
use nsac_dsl::spec::Spec;

use super::{Output, ReferenceError, block_scores, forward_with_blocks, score, sequences};
use crate::io::{Inputs, Tensor};

/// Absolute tolerance on the oracle's block scores (sums of compressed probabilities over a
/// group, at most G) within which an f32 backend may rank two blocks either way.
pub const SCORE_TIE_TOLERANCE: f64 = 1e-5;

/// A selected row that is not an acceptable choice.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ChoiceError {
    #[error("idx_{branch}: shape {got:?}, expected {want:?}")]
    Shape {
        branch: String,
        got: Vec<usize>,
        want: Vec<usize>,
    },
    #[error("idx_{branch} missing from the backend's outputs")]
    Missing { branch: String },
    #[error(
        "idx_{branch} at batch {batch}, t {t}, kv head {head}: chose {chosen:?}, the oracle {want:?}, and the scores do not tie within {tol:e}"
    )]
    NotATie {
        branch: String,
        batch: usize,
        t: usize,
        head: usize,
        chosen: Vec<i32>,
        want: Vec<i32>,
        tol: f64,
    },
    #[error(transparent)]
    Reference(#[from] ReferenceError),
}

/// The oracle output to compare a backend against: `want` itself when the backend chose the
/// same blocks, otherwise — after checking that every differing row is a near-tie within `tol`
/// of the oracle's scores — the oracle run on the backend's blocks.
pub fn reference_for_choices(
    spec: &Spec,
    shape: &Shape,
    inputs: &Inputs,
    want: &Output,
    got: &BTreeMap<String, Tensor<i32>>,
    tol: f64,
) -> Result<Output, ChoiceError> {
    if &want.selected == got {
        return Ok(want.clone());
    }
    for (name, want_idx) in &want.selected {
        let got_idx = got.get(name).ok_or_else(|| ChoiceError::Missing {
            branch: name.clone(),
        })?;
        let Some(select) = spec.branch(name).and_then(|b| b.as_select()) else {
            return Err(ChoiceError::Missing {
                branch: name.clone(),
            });
        };
        if got_idx.shape != want_idx.shape || want_idx.shape.len() != 4 {
            return Err(ChoiceError::Shape {
                branch: name.clone(),
                got: got_idx.shape.clone(),
                want: want_idx.shape.clone(),
            });
        }
        let (t_all, heads, top) = (want_idx.shape[1], want_idx.shape[2], want_idx.shape[3]);
        let scores = block_scores(spec, shape, inputs, name)?;
        for (seq, seq_scores) in sequences(shape).iter().zip(&scores) {
            let blocks = seq_scores.shape[2];
            for t in 0..seq.len() {
                for head in 0..heads {
                    let at = ((seq.batch * t_all + seq.start + t) * heads + head) * top;
                    let (g, w) = (&got_idx.data[at..at + top], &want_idx.data[at..at + top]);
                    if g == w {
                        continue;
                    }
                    let chosen: Vec<usize> =
                        g.iter().filter_map(|&i| usize::try_from(i).ok()).collect();
                    let row = (t * heads + head) * blocks;
                    let row_scores = &seq_scores.data[row..row + blocks];
                    if !score::is_valid_choice(
                        row_scores,
                        &chosen,
                        select,
                        spec.causal,
                        t,
                        seq.len(),
                        tol,
                    ) {
                        return Err(ChoiceError::NotATie {
                            branch: name.clone(),
                            batch: seq.batch,
                            t: seq.start + t,
                            head,
                            chosen: g.to_vec(),
                            want: w.to_vec(),
                            tol,
                        });
                    }
                }
            }
        }
    }
    Ok(forward_with_blocks(spec, shape, inputs, got)?)
}
