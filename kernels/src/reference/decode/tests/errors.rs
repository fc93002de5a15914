//! The decode oracle refuses bad models, tokens and batches with typed errors, never a panic,
//! and a refused chunk or step leaves the cache unchanged.

use std::sync::Arc;

use nsac_dsl::spec::{CombineMode, HeadDim, Heads, Pool};
use proptest::prelude::*;

use crate::io::{InputError, Inputs, Tensor};
use crate::reference::decode::{Cache, DecodeError, Model, cut_tokens, step_batch};
use crate::reference::sequences;
use crate::reference::tests::support::*;

fn weighted() -> nsac_dsl::spec::Spec {
    spec(
        true,
        (2, 1),
        (4, 3),
        vec![
            compress("cmp", 4, 2, Pool::Weighted),
            select("slc", 4, 1, "cmp", 0, 1),
        ],
        CombineMode::Gate,
    )
}

/// A model of `weighted()` and the tokens of a batched call of `len`.
fn setup(len: usize) -> (Arc<Model>, Inputs) {
    let spec = weighted();
    let shape = batched(&spec, 1, len);
    let inputs = random(&spec, &shape, 1);
    let model = Arc::new(Model::from_inputs(&spec, &shape, &inputs).unwrap());
    let tokens = cut_tokens(&spec, &shape, &inputs, sequences(&shape)[0], 0..len).unwrap();
    (model, tokens)
}

#[test]
fn non_causal_specs_are_refused() {
    let mut spec = weighted();
    spec.causal = false;
    let shape = batched(&spec, 1, 5);
    let inputs = random(&spec, &shape, 1);
    let err = Model::from_inputs(&spec, &shape, &inputs).unwrap_err();
    assert_eq!(err, DecodeError::NotCausal("test".into()));
    let weights: Inputs = [("w_cmp".to_string(), inputs["w_cmp"].clone())].into();
    let err = Model::new(&spec, spec.heads, spec.head_dim, &weights).unwrap_err();
    assert_eq!(err, DecodeError::NotCausal("test".into()));
    assert!(err.to_string().contains("causal = false"));
}

#[test]
fn bad_weights_and_sizes_are_refused() {
    let spec = weighted();
    let (heads, dims) = (spec.heads, spec.head_dim);
    let w = Tensor {
        shape: vec![1, 4],
        data: vec![0.5, -1.0, 0.25, 2.0],
    };
    let with = |list: &[(&str, Tensor<f32>)]| -> Inputs {
        list.iter()
            .map(|(n, t)| (n.to_string(), t.clone()))
            .collect()
    };
    assert!(Model::new(&spec, heads, dims, &with(&[("w_cmp", w.clone())])).is_ok());
    let err = Model::new(&spec, heads, dims, &Inputs::new()).unwrap_err();
    assert_eq!(err, DecodeError::Input(InputError::Missing("w_cmp".into())));
    let short = Tensor {
        shape: vec![1, 3],
        data: vec![0.0; 3],
    };
    let err = Model::new(&spec, heads, dims, &with(&[("w_cmp", short)])).unwrap_err();
    assert!(
        matches!(err, DecodeError::Input(InputError::BadShape { .. })),
        "{err}"
    );
    let mut nan = w.clone();
    nan.data[2] = f32::NAN;
    let err = Model::new(&spec, heads, dims, &with(&[("w_cmp", nan)])).unwrap_err();
    assert_eq!(
        err,
        DecodeError::Input(InputError::NonFinite("w_cmp".into()))
    );
    let extra = with(&[("w_cmp", w.clone()), ("q", w.clone())]);
    let err = Model::new(&spec, heads, dims, &extra).unwrap_err();
    assert!(
        matches!(err, DecodeError::Input(InputError::Unexpected(..))),
        "{err}"
    );
    // Heads that do not divide, zero dims: the problem's typed errors.
    let bad = Heads { q: 3, kv: 2 };
    let err = Model::new(&spec, bad, dims, &with(&[("w_cmp", w.clone())])).unwrap_err();
    assert!(matches!(err, DecodeError::Problem(_)), "{err}");
    let zero = HeadDim { qk: 0, v: 3 };
    let err = Model::new(&spec, heads, zero, &with(&[("w_cmp", w)])).unwrap_err();
    assert!(matches!(err, DecodeError::Problem(_)), "{err}");
}

#[test]
fn bad_tokens_are_refused_and_change_nothing() {
    let (model, tokens) = setup(6);
    let mut cache = Cache::new(model);
    let first: Inputs = tokens
        .iter()
        .map(|(n, t)| {
            let width: usize = t.shape[1..].iter().product();
            let mut shape = t.shape.clone();
            shape[0] = 2;
            (
                n.clone(),
                Tensor {
                    shape,
                    data: t.data[..2 * width].to_vec(),
                },
            )
        })
        .collect();
    // A step takes one token.
    assert_eq!(cache.step(&first), Err(DecodeError::NotOneToken(2)));
    // A chunk needs its queries and gates; append does not.
    let mut no_q = first.clone();
    no_q.remove("q");
    assert_eq!(
        cache.chunk(&no_q),
        Err(DecodeError::Input(InputError::Missing("q".into())))
    );
    let mut no_gate = first.clone();
    no_gate.remove("g_slc");
    assert!(cache.chunk(&no_gate).is_err());
    assert!(cache.is_empty());
    // Keys and values of different lengths, a NaN, an unknown tensor.
    let mut short_v = first.clone();
    short_v.get_mut("v").unwrap().shape[0] = 1;
    assert!(matches!(
        cache.append(&short_v),
        Err(DecodeError::Input(InputError::BadShape { .. }))
    ));
    let mut nan = first.clone();
    nan.get_mut("k").unwrap().data[0] = f32::INFINITY;
    assert_eq!(
        cache.append(&nan),
        Err(DecodeError::Input(InputError::NonFinite("k".into())))
    );
    let mut extra = first.clone();
    extra.insert("k_win".into(), first["k"].clone());
    assert!(matches!(
        cache.append(&extra),
        Err(DecodeError::Input(InputError::Unexpected(..)))
    ));
    let mut scalar = first.clone();
    scalar.get_mut("k").unwrap().shape = vec![];
    assert!(cache.append(&scalar).is_err());
    assert!(cache.append(&Inputs::new()).is_err());
    assert_eq!((cache.len(), cache.pooled_count()), (0, 0));
    // The good tokens still go in.
    cache.append(&no_q).unwrap();
    assert_eq!(cache.len(), 2);
}

#[test]
fn batches_and_cuts_are_checked() {
    let (model, _) = setup(4);
    let spec = weighted();
    let shape = batched(&spec, 2, 4);
    let inputs = random(&spec, &shape, 3);
    let seqs = sequences(&shape);
    let token = cut_tokens(&spec, &shape, &inputs, seqs[1], 3..4).unwrap();
    let mut caches = vec![Cache::new(Arc::clone(&model)), Cache::new(model)];
    assert_eq!(
        step_batch(&mut caches, std::slice::from_ref(&token)),
        Err(DecodeError::BatchMismatch {
            caches: 2,
            tokens: 1
        })
    );
    let two = cut_tokens(&spec, &shape, &inputs, seqs[0], 0..2).unwrap();
    assert_eq!(
        step_batch(&mut caches, &[token.clone(), two]),
        Err(DecodeError::NotOneToken(2))
    );
    assert!(
        caches.iter().all(Cache::is_empty),
        "a refused batch changed a cache"
    );
    assert_eq!(
        step_batch(&mut caches, &[token.clone(), token])
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        cut_tokens(&spec, &shape, &inputs, seqs[0], 2..5),
        Err(DecodeError::BadRange {
            start: 2,
            end: 5,
            len: 4
        })
    );
    let mut wrong = seqs[0];
    wrong.end = 3;
    assert!(matches!(
        cut_tokens(&spec, &shape, &inputs, wrong, 0..1),
        Err(DecodeError::BadSequence { .. })
    ));
    let mut missing = inputs.clone();
    missing.remove("g_cmp");
    assert!(matches!(
        cut_tokens(&spec, &shape, &missing, seqs[0], 0..1),
        Err(DecodeError::Reference(_))
    ));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Random valid specs: non-causal ones are refused, causal ones accepted, never a panic.
    #[test]
    fn random_specs_are_refused_exactly_when_non_causal(
        spec in nsac_dsl::arbitrary::valid_spec(),
        seed in any::<u64>(),
    ) {
        let shape = batched(&spec, 1, 3);
        let inputs = random(&spec, &shape, seed);
        let model = Model::from_inputs(&spec, &shape, &inputs);
        if spec.causal {
            prop_assert!(model.is_ok(), "{:?}", model.err());
        } else {
            prop_assert_eq!(model.err(), Some(DecodeError::NotCausal(spec.name.clone())));
        }
    }
}
