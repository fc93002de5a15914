//! Caller-given blocks (`forward_with_blocks`) and the tolerant choice check
//! (`score::is_valid_choice`) that backend tests use when f32 scores break near-ties.

use std::collections::BTreeMap;

use nsac_dsl::spec::{CombineMode, Select};

use super::support::*;
use crate::reference::score::is_valid_choice;
use crate::reference::{ReferenceError, forward, forward_with_blocks};

const TOL: f64 = 1e-12;

#[test]
fn given_oracle_blocks_reproduce_forward() {
    let spec = nsa(true, (4, 2), (3, 2), CombineMode::Gate);
    let shape = varlen(&spec, &[0, 9, 23]);
    let inputs = random(&spec, &shape, 41);
    let out = forward(&spec, &shape, &inputs).unwrap();
    let again = forward_with_blocks(&spec, &shape, &inputs, &out.selected).unwrap();
    assert_eq!(out, again);
}

#[test]
fn given_blocks_are_attended_instead_of_the_chosen_ones() {
    // Give every query the highest-index candidates instead (usually not the top-scoring).
    let spec = nsa(true, (2, 1), (3, 2), CombineMode::Sum);
    let (len, block, top) = (17usize, 3usize, 2usize);
    let shape = batched(&spec, 1, len);
    let inputs = random(&spec, &shape, 43);
    let mut idx = crate::io::Tensor::full(vec![1, len, 1, top], -1i32);
    for t in 0..len {
        let own = t / block;
        let picked: Vec<usize> = (own.saturating_sub(top - 1)..=own).collect();
        for (n, &i) in picked.iter().enumerate() {
            idx.data[t * top + n] = i as i32;
        }
    }
    let blocks = BTreeMap::from([("slc".to_string(), idx.clone())]);
    let out = forward_with_blocks(&spec, &shape, &inputs, &blocks).unwrap();
    assert_eq!(out.selected["slc"], idx);
    let dense = dense_attention(&inputs, ("k", "v"), spec.scale_for(3), |_, t, _, k| {
        k <= t && t / block - k / block < top
    });
    assert_tensors_close(&out.branches["slc"], &dense, TOL);
    let plain = forward(&spec, &shape, &inputs).unwrap();
    assert_eq!(out.branches["cmp"], plain.branches["cmp"]);
    assert_ne!(out.branches["slc"], plain.branches["slc"]);
}

#[test]
fn invalid_given_blocks_are_typed_errors() {
    let spec = nsa(true, (2, 1), (3, 2), CombineMode::Sum);
    let shape = batched(&spec, 1, 10);
    let inputs = random(&spec, &shape, 47);
    let good = forward(&spec, &shape, &inputs).unwrap().selected["slc"].clone();
    let with = |idx: crate::io::Tensor<i32>, name: &str| {
        let blocks = BTreeMap::from([(name.to_string(), idx)]);
        forward_with_blocks(&spec, &shape, &inputs, &blocks)
    };
    let mut descending = good.clone();
    descending.data[9 * 2..9 * 2 + 2].copy_from_slice(&[3, 1]);
    assert!(matches!(
        with(descending, "slc"),
        Err(ReferenceError::BadBlocks { .. })
    ));
    let mut gap = good.clone();
    gap.data[9 * 2..9 * 2 + 2].copy_from_slice(&[-1, 1]);
    assert!(matches!(
        with(gap, "slc"),
        Err(ReferenceError::BadBlocks { .. })
    ));
    let mut out_of_range = good.clone();
    out_of_range.data[9 * 2 + 1] = 4; // 10 tokens in blocks of 3: blocks 0..=3
    assert!(matches!(
        with(out_of_range, "slc"),
        Err(ReferenceError::BadBlocks { .. })
    ));
    let mut short = good.clone();
    short.data.pop();
    assert!(matches!(
        with(short, "slc"),
        Err(ReferenceError::BadBlocks { .. })
    ));
    assert!(matches!(
        with(good.clone(), "win"),
        Err(ReferenceError::WrongKind { .. })
    ));
    assert!(matches!(
        with(good, "nope"),
        Err(ReferenceError::UnknownBranch { .. })
    ));
}

fn sel(top: u32, keep_first: u32, keep_last: u32) -> Select {
    Select {
        block: 4,
        top,
        scored_by: nsac_dsl::spec::Scorer::Branch("cmp".into()),
        keep_first,
        keep_last,
        within: None,
    }
}

#[test]
fn valid_choice_allows_only_near_ties_either_way() {
    // Query t = 15: own block 3, all four blocks are candidates.
    let scores = [0.5, 0.3, 0.3 + 1e-9, 0.1];
    let s = sel(2, 0, 0);
    let ok = |chosen: &[usize], tol: f64| is_valid_choice(&scores, chosen, &s, true, 15, 16, tol);
    assert!(ok(&[0, 2], 0.0));
    assert!(!ok(&[0, 1], 0.0));
    assert!(ok(&[0, 1], 1e-6));
    assert!(!ok(&[1, 2], 1e-6));
    assert!(!ok(&[0], 1e-6));
    assert!(!ok(&[2, 0], 1e-6));
    assert!(!ok(&[0, 2, 3], 1e-6));
    // Exact ties go to the lower index when tol = 0.
    let tied = [0.5, 0.2, 0.2, 0.1];
    assert!(is_valid_choice(&tied, &[0, 1], &s, true, 15, 16, 0.0));
    assert!(!is_valid_choice(&tied, &[0, 2], &s, true, 15, 16, 0.0));
    // keep_last = 1 forces the own block 3 whatever its score, even with a tolerance.
    let forced = sel(2, 0, 1);
    assert!(is_valid_choice(
        &scores,
        &[0, 3],
        &forced,
        true,
        15,
        16,
        0.0
    ));
    assert!(!is_valid_choice(
        &scores,
        &[0, 2],
        &forced,
        true,
        15,
        16,
        1.0
    ));
    // Early query t = 5: only blocks 0 and 1 are candidates.
    assert!(is_valid_choice(&scores, &[0, 1], &s, true, 5, 16, 0.0));
    assert!(!is_valid_choice(&scores, &[0, 2], &s, true, 5, 16, 1.0));
}
