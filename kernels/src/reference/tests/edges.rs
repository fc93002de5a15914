//! Edge cases of lengths and selection: sequences shorter than every block, queries that see
//! nothing, padding, exact ties, forced blocks, and non-causal visibility.

use nsac_dsl::spec::{CombineMode, Pool};

use super::support::*;
use crate::reference::{compressed_probabilities, forward, pooled};

const TOL: f64 = 1e-12;

fn causal_mask(_: usize, t: usize, _: usize, k: usize) -> bool {
    k <= t
}

#[test]
fn sequence_shorter_than_every_block() {
    let spec = spec(
        true,
        (4, 2),
        (3, 2),
        vec![
            compress("cmp", 8, 4, Pool::Mean),
            select("slc", 16, 4, "cmp", 1, 2),
            window("win", 32),
        ],
        CombineMode::Gate,
    );
    for seed in 0..3 {
        let shape = batched(&spec, 2, 5);
        let inputs = random(&spec, &shape, seed);
        let out = forward(&spec, &shape, &inputs).unwrap();
        // No compressed token exists: o_cmp is exactly 0, never NaN.
        assert!(out.branches["cmp"].data.iter().all(|&x| x == 0.0));
        assert_eq!(
            pooled(&spec, &shape, &inputs, "cmp").unwrap()[0].k.shape,
            vec![0, 2, 3]
        );
        // One (short) selection block: chosen everywhere, rest padded.
        let idx = &out.selected["slc"];
        assert_eq!(idx.shape, vec![2, 5, 2, 4]);
        for row in idx.data.chunks(4) {
            assert_eq!(row, &[0, -1, -1, -1]);
        }
        let dense = dense_attention(&inputs, ("k", "v"), spec.scale_for(3), causal_mask);
        assert_tensors_close(&out.branches["slc"], &dense, TOL);
        assert_tensors_close(&out.branches["win"], &dense, TOL);
        assert!(out.o.data.iter().all(|x| x.is_finite()));
    }
}

#[test]
fn queries_before_the_first_token_see_nothing() {
    let spec = nsa(true, (2, 1), (4, 3), CombineMode::Sum);
    let shape = batched(&spec, 1, 13);
    let inputs = random(&spec, &shape, 7);
    let probs = &compressed_probabilities(&spec, &shape, &inputs, "cmp").unwrap()[0];
    // block 4, stride 2: N = (13 − 4)/2 + 1 = 5; token j is seen from t = 2j + 3.
    assert_eq!(probs.shape, vec![13, 2, 5]);
    let out = forward(&spec, &shape, &inputs).unwrap();
    for t in 0..13 {
        for qh in 0..2 {
            let row: Vec<f64> = (0..5).map(|j| at(probs, &[t, qh, j])).collect();
            for (j, &p) in row.iter().enumerate() {
                assert_eq!(p > 0.0, 2 * j + 3 <= t, "t {t} token {j}");
            }
            let total: f64 = row.iter().sum();
            let o: Vec<f64> = (0..3)
                .map(|e| at(&out.branches["cmp"], &[0, t, qh, e]))
                .collect();
            if t < 3 {
                assert_eq!(total, 0.0);
                assert_eq!(o, vec![0.0; 3]);
            } else {
                assert_close(total, 1.0, TOL);
            }
        }
    }
}

#[test]
fn top_larger_than_block_count_pads_and_equals_full_attention() {
    let spec = spec(
        true,
        (3, 1),
        (5, 2),
        vec![
            compress("cmp", 2, 1, Pool::Mean),
            select("slc", 3, 10, "cmp", 0, 0),
        ],
        CombineMode::Sum,
    );
    for (seed, len) in [(1, 11), (2, 17)] {
        let shape = batched(&spec, 1, len);
        let inputs = random(&spec, &shape, seed);
        let out = forward(&spec, &shape, &inputs).unwrap();
        let idx = &out.selected["slc"];
        for t in 0..len {
            let row: Vec<i32> = (0..10).map(|n| at(idx, &[0, t, 0, n])).collect();
            let candidates = t / 3 + 1;
            let mut want: Vec<i32> = (0..candidates as i32).collect();
            want.resize(10, -1);
            assert_eq!(row, want, "t {t}");
        }
        let dense = dense_attention(&inputs, ("k", "v"), spec.scale_for(5), causal_mask);
        assert_tensors_close(&out.branches["slc"], &dense, TOL);
    }
}

#[test]
fn exact_ties_go_to_the_lower_index() {
    // l = d = l′ = 1: each key is its own token and block. A zero query gives every visible
    // token the same probability 1/(t+1) exactly, so all candidates tie.
    let spec = spec(
        true,
        (2, 1),
        (3, 3),
        vec![
            compress("cmp", 1, 1, Pool::Mean),
            select("slc", 1, 3, "cmp", 0, 0),
            select("last", 1, 3, "cmp", 0, 1),
        ],
        CombineMode::Sum,
    );
    let shape = batched(&spec, 1, 9);
    let mut inputs = random(&spec, &shape, 3);
    let q = inputs.get_mut("q").unwrap();
    for x in &mut q.data[8 * 2 * 3..] {
        *x = 0.0; // both heads of the last query
    }
    let out = forward(&spec, &shape, &inputs).unwrap();
    let row = |name: &str| -> Vec<i32> {
        (0..3)
            .map(|n| at(&out.selected[name], &[0, 8, 0, n]))
            .collect()
    };
    assert_eq!(row("slc"), vec![0, 1, 2]);
    // keep_last = 1 forces the own block 8; the tie fills up from the lowest index.
    assert_eq!(row("last"), vec![0, 1, 8]);
}

#[test]
fn forced_blocks_win_regardless_of_scores() {
    let spec = spec(
        true,
        (2, 2),
        (3, 3),
        vec![
            compress("cmp", 4, 4, Pool::Mean),
            select("three", 4, 3, "cmp", 1, 2),
            select("two", 4, 2, "cmp", 1, 2),
        ],
        CombineMode::Sum,
    );
    let shape = batched(&spec, 1, 21);
    for seed in 0..3 {
        let inputs = random(&spec, &shape, seed);
        let out = forward(&spec, &shape, &inputs).unwrap();
        for kvh in 0..2 {
            let row = |name: &str, t: usize, n: usize| -> Vec<i32> {
                (0..n)
                    .map(|i| at(&out.selected[name], &[0, t, kvh, i]))
                    .collect()
            };
            // t = 19, own block 4: forced 0, 3, 4 fill all three slots.
            assert_eq!(row("three", 19, 3), vec![0, 3, 4]);
            // Only two slots: the forced blocks with the lower indices.
            assert_eq!(row("two", 19, 2), vec![0, 3]);
            // t = 2: only block 0 is a candidate.
            assert_eq!(row("three", 2, 3), vec![0, -1, -1]);
            // t = 5, own block 1: forced 0 and 1 (block −1 does not exist), nothing else.
            assert_eq!(row("three", 5, 3), vec![0, 1, -1]);
        }
    }
}

#[test]
fn non_causal_sees_every_token_block_and_symmetric_window() {
    let spec = spec(
        false,
        (2, 1),
        (4, 3),
        vec![
            compress("cmp", 3, 2, Pool::Mean),
            select("all", 4, 4, "cmp", 0, 0),
            select("two", 4, 2, "cmp", 0, 0),
            window("win", 3),
        ],
        CombineMode::Sum,
    );
    let shape = batched(&spec, 1, 13);
    let inputs = random(&spec, &shape, 11);
    let out = forward(&spec, &shape, &inputs).unwrap();
    let scale = spec.scale_for(4);
    // Every existing compressed token is seen, even from t = 0.
    let probs = &compressed_probabilities(&spec, &shape, &inputs, "cmp").unwrap()[0];
    assert!(probs.data.iter().all(|&p| p > 0.0));
    // 4 blocks of 4 over 13 tokens, top 4: everything, in both directions.
    let full = dense_attention(&inputs, ("k", "v"), scale, |_, _, _, _| true);
    assert_tensors_close(&out.branches["all"], &full, TOL);
    // Symmetric window |k − t| ≤ 2.
    let win = dense_attention(&inputs, ("k", "v"), scale, |_, t, _, k| t.abs_diff(k) <= 2);
    assert_tensors_close(&out.branches["win"], &win, TOL);
    // Top 2 of 4: the chosen blocks may lie after the query; o_s attends all their keys.
    let idx = &out.selected["two"];
    let later = (0..13).any(|t| (0..2).any(|n| at(idx, &[0, t, 0, n]) > (t / 4) as i32));
    assert!(later, "no query chose a block after its own");
    let chosen = dense_attention(&inputs, ("k", "v"), scale, |_, t, h, k| {
        (0..2).any(|n| at(idx, &[0, t, h, n]) == (k / 4) as i32)
    });
    assert_tensors_close(&out.branches["two"], &chosen, TOL);
}
