//! The edge cases on hand-built specs, each on random inputs with several seeds:
//! contexts shorter than every block, stride < block, the first token from an empty cache,
//! empty chunks, `kv = own` on every branch with weighted and linear pools, GQA.

use std::sync::Arc;

use nsac_dsl::spec::{CombineMode, Pool, Spec};

use super::harness::{Schedule, assert_rows, check_decode, check_ragged};
use crate::reference::decode::{Cache, Model, cut_tokens};
use crate::reference::forward;
use crate::reference::tests::support::*;

/// Compress 8/4, select blocks of 16 (top 2), window 32: longer than any context below.
fn long_blocks(pool: Pool) -> Spec {
    spec(
        true,
        (4, 2),
        (3, 2),
        vec![
            compress("cmp", 8, 4, pool),
            select("slc", 16, 2, "cmp", 1, 1),
            window("win", 32),
        ],
        CombineMode::Gate,
    )
}

#[test]
fn contexts_shorter_than_every_block() {
    let spec = long_blocks(Pool::Mean);
    for seed in 0..3 {
        let shape = batched(&spec, 2, 45);
        let inputs = random(&spec, &shape, seed);
        // Contexts of 0..7 tokens hold no compressed token and part of one selection block;
        // the steps then cross the first compressed token (t = 7) and block (t = 16).
        for context in [0, 1, 5, 7] {
            let n = check_decode(&spec, &shape, &inputs, |_| Schedule::steps_after(context));
            assert_eq!(n, 2 * (45 - context));
        }
    }
}

#[test]
fn stride_below_block_completes_a_token_every_stride() {
    for pool in [Pool::Mean, Pool::Weighted, Pool::Linear] {
        let spec = spec(
            true,
            (3, 1),
            (4, 3),
            vec![
                compress("cmp", 6, 2, pool),
                select("slc", 4, 3, "cmp", 1, 1),
                window("win", 5),
            ],
            CombineMode::Gate,
        );
        for seed in 0..3 {
            let shape = batched(&spec, 1, 41);
            let inputs = random(&spec, &shape, seed);
            for schedule in [
                Schedule::steps_after(0),
                Schedule::steps_after(9),
                Schedule {
                    context: 3,
                    chunks: vec![2, 5, 11],
                },
            ] {
                check_decode(&spec, &shape, &inputs, |_| schedule.clone());
            }
        }
    }
}

#[test]
fn first_token_from_an_empty_cache() {
    let spec = nsa(true, (2, 1), (4, 3), CombineMode::Gate);
    let shape = batched(&spec, 1, 1);
    for seed in 0..3 {
        let inputs = random(&spec, &shape, seed);
        let model = Arc::new(Model::from_inputs(&spec, &shape, &inputs).unwrap());
        let mut cache = Cache::new(model);
        assert!(cache.is_empty());
        let seq = crate::reference::sequences(&shape)[0];
        let got = cache
            .step(&cut_tokens(&spec, &shape, &inputs, seq, 0..1).unwrap())
            .unwrap();
        let want = forward(&spec, &shape, &inputs).unwrap();
        assert_rows(&want, seq, 0, &got);
        // No compressed token yet: o_cmp is exactly 0; block 0 is chosen; the window and the
        // selection attend the one key, so they return its value.
        assert!(got.branches["cmp"].data.iter().all(|&x| x == 0.0));
        assert_eq!(got.selected["slc"].data, vec![0, -1]);
        let v: Vec<f64> = inputs["v"].data.iter().map(|&x| f64::from(x)).collect();
        for name in ["slc", "win"] {
            let o = &got.branches[name].data;
            assert_eq!(&o[..3], &v[..]);
            assert_eq!(&o[3..], &v[..]);
        }
    }
}

#[test]
fn empty_chunks_answer_nothing_and_change_nothing() {
    let spec = nsa(true, (2, 1), (4, 3), CombineMode::Sum);
    let shape = batched(&spec, 1, 9);
    let inputs = random(&spec, &shape, 5);
    let seq = crate::reference::sequences(&shape)[0];
    let model = Arc::new(Model::from_inputs(&spec, &shape, &inputs).unwrap());
    let mut cache = Cache::new(model);
    cache
        .append(&cut_tokens(&spec, &shape, &inputs, seq, 0..6).unwrap())
        .unwrap();
    let pooled = cache.pooled_count();
    let got = cache
        .chunk(&cut_tokens(&spec, &shape, &inputs, seq, 6..6).unwrap())
        .unwrap();
    assert_eq!(got.o.shape, vec![0, 2, 3]);
    assert_eq!(got.selected["slc"].shape, vec![0, 1, 2]);
    assert_eq!((cache.len(), cache.pooled_count()), (6, pooled));
    // And the cache still decodes the remaining rows of the forward.
    let want = forward(&spec, &shape, &inputs).unwrap();
    let got = cache
        .chunk(&cut_tokens(&spec, &shape, &inputs, seq, 6..9).unwrap())
        .unwrap();
    assert_rows(&want, seq, 6, &got);
}

#[test]
fn own_keys_and_values_on_every_branch_with_gqa() {
    for pool in [Pool::Weighted, Pool::Linear] {
        let spec = spec(
            true,
            (6, 2),
            (5, 3),
            vec![
                own(compress("cmp", 4, 2, pool)),
                own(select("slc", 4, 2, "cmp", 0, 1)),
                own(window("win", 3)),
                window("shared", 2),
            ],
            CombineMode::Gate,
        );
        for seed in 0..3 {
            let shape = varlen(&spec, &[0, 11, 30, 33]);
            let inputs = random(&spec, &shape, seed);
            check_decode(&spec, &shape, &inputs, |i| Schedule {
                context: [0, 6, 2][i],
                chunks: vec![3, 4],
            });
            check_ragged(&spec, &shape, &inputs, &[5, 0, 1]);
        }
    }
}

#[test]
fn an_explicit_scale_is_the_forwards() {
    let spec = with_scale(long_blocks(Pool::Weighted), 0.37);
    let shape = batched(&spec, 1, 40);
    for seed in 0..2 {
        let inputs = random(&spec, &shape, seed);
        check_decode(&spec, &shape, &inputs, |_| Schedule {
            context: 10,
            chunks: vec![9],
        });
    }
}
