//! Refused calls are typed errors, never panics; and the accuracy measure.

use nsac_dsl::spec::{CombineMode, Pool};

use super::support::*;
use crate::io::{InputError, Tensor};
use crate::reference::{ReferenceError, block_scores, compressed_probabilities, forward, pooled};

#[test]
fn bad_calls_are_typed_errors() {
    let spec0 = nsa(true, (2, 1), (3, 2), CombineMode::Gate);
    let shape = batched(&spec0, 1, 9);
    let inputs = random(&spec0, &shape, 31);

    let mut missing = inputs.clone();
    missing.remove("g_win");
    assert_eq!(
        forward(&spec0, &shape, &missing),
        Err(ReferenceError::Input(InputError::Missing("g_win".into())))
    );
    let mut nan = inputs.clone();
    nan.get_mut("q").unwrap().data[3] = f32::NAN;
    assert!(matches!(
        forward(&spec0, &shape, &nan),
        Err(ReferenceError::Input(InputError::NonFinite(_)))
    ));

    let mut s = spec0.clone();
    if let nsac_dsl::spec::BranchKind::Select(sel) = &mut s.branches[1].kind {
        sel.scored_by = nsac_dsl::spec::Scorer::Branch("win".into());
    }
    assert!(matches!(
        forward(&s, &shape, &inputs),
        Err(ReferenceError::NotCompress { .. })
    ));
    if let nsac_dsl::spec::BranchKind::Select(sel) = &mut s.branches[1].kind {
        sel.scored_by = nsac_dsl::spec::Scorer::Branch("nope".into());
    }
    assert!(matches!(
        forward(&s, &shape, &inputs),
        Err(ReferenceError::UnknownBranch { .. })
    ));

    let mut s = spec0.clone();
    s.branches[0] = compress("cmp", 4, 0, Pool::Mean);
    assert!(matches!(
        forward(&s, &shape, &inputs),
        Err(ReferenceError::ZeroSize {
            field: "stride",
            ..
        })
    ));

    let mut s = spec0.clone();
    s.branches[2].name = "cmp".into();
    assert!(matches!(
        forward(&s, &shape, &inputs),
        Err(ReferenceError::DuplicateBranch(_))
    ));

    let s = with_scale(spec0.clone(), f64::NAN);
    assert!(matches!(
        forward(&s, &shape, &inputs),
        Err(ReferenceError::BadScale(_))
    ));

    let mut bad_shape = shape.clone();
    bad_shape.segments = vec![(0, 5), (4, 9)];
    assert!(matches!(
        forward(&spec0, &bad_shape, &inputs),
        Err(ReferenceError::BadShape(_))
    ));
    let mut bad_heads = shape.clone();
    bad_heads.heads.kv = 0;
    assert!(matches!(
        forward(&spec0, &bad_heads, &inputs),
        Err(ReferenceError::BadShape(_))
    ));

    assert!(matches!(
        block_scores(&spec0, &shape, &inputs, "cmp"),
        Err(ReferenceError::WrongKind { .. })
    ));
    assert!(matches!(
        pooled(&spec0, &shape, &inputs, "slc"),
        Err(ReferenceError::WrongKind { .. })
    ));
    assert!(matches!(
        compressed_probabilities(&spec0, &shape, &inputs, "zzz"),
        Err(ReferenceError::UnknownBranch { .. })
    ));
}

#[test]
fn relative_error_is_max_difference_over_max_reference() {
    use crate::reference::relative_error;
    let want = Tensor {
        shape: vec![2, 2],
        data: vec![1.0, -4.0, 2.0, 0.5],
    };
    let got = Tensor {
        shape: vec![2, 2],
        data: vec![1.0f32, -3.5, 2.25, 0.5],
    };
    assert_eq!(relative_error(&got, &want), Some(0.5 / 4.0));
    let zeros = Tensor::full(vec![2, 2], 0.0f64);
    assert_eq!(relative_error(&got, &zeros), Some(3.5));
    let mut nan = got.clone();
    nan.data[3] = f32::NAN;
    assert!(relative_error(&nan, &want).unwrap().is_nan());
    let other = Tensor::full(vec![4], 0.0f32);
    assert_eq!(relative_error(&other, &want), None);
}
