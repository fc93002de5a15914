//! Small cases computed by hand: every expected number below is written out from
//! docs/ARCHITECTURE.md §3, not produced by the oracle's own code.

use nsac_dsl::spec::{CombineMode, Pool};

use super::support::*;
use crate::reference::{block_scores, compressed_probabilities, forward, pooled};

const TOL: f64 = 1e-12;

fn e(x: f64) -> f64 {
    x.exp()
}

/// Softmax-weighted average of `values` with `logits`, written out.
fn avg(logits: &[f64], values: &[f64]) -> f64 {
    let num: f64 = logits.iter().zip(values).map(|(l, v)| e(*l) * v).sum();
    let den: f64 = logits.iter().map(|l| e(*l)).sum();
    num / den
}

/// T = 5, one head, Dqk = Dv = 1 (scale 1), compress block 2 stride 2 (mean), select blocks of
/// 2 (top 1), window 2, gated.
///
/// q = [1, .5, −1, 2, −1], k = [1, 3, −2, 0, 5], v = [2, 4, 6, 8, 10]
/// → K̃ = [2, −1], Ṽ = [3, 7]; token 0 is seen from t = 1, token 1 from t = 3.
fn t5_case(top: u32, keep_last: u32) -> (nsac_dsl::spec::Spec, crate::io::Inputs) {
    let spec = spec(
        true,
        (1, 1),
        (1, 1),
        vec![
            compress("cmp", 2, 2, Pool::Mean),
            select("slc", 2, top, "cmp", 0, keep_last),
            window("win", 2),
        ],
        CombineMode::Gate,
    );
    let inputs = inputs(&[
        ("q", &[1, 5, 1, 1], &[1.0, 0.5, -1.0, 2.0, -1.0]),
        ("k", &[1, 5, 1, 1], &[1.0, 3.0, -2.0, 0.0, 5.0]),
        ("v", &[1, 5, 1, 1], &[2.0, 4.0, 6.0, 8.0, 10.0]),
        ("g_cmp", &[1, 5, 1], &[0.1, 0.2, 0.3, 0.4, 0.5]),
        ("g_slc", &[1, 5, 1], &[0.9, 0.8, 0.7, 0.6, 0.5]),
        ("g_win", &[1, 5, 1], &[0.25, 0.5, 0.75, 1.0, 0.125]),
    ]);
    (spec, inputs)
}

#[test]
fn t5_pooled_tokens_and_probabilities() {
    let (spec, inputs) = t5_case(1, 0);
    let shape = batched(&spec, 1, 5);
    let p = pooled(&spec, &shape, &inputs, "cmp").unwrap();
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].k.shape, vec![2, 1, 1]);
    assert_eq!(p[0].k.data, vec![2.0, -1.0]);
    assert_eq!(p[0].v.data, vec![3.0, 7.0]);

    let probs = compressed_probabilities(&spec, &shape, &inputs, "cmp").unwrap();
    assert_eq!(probs[0].shape, vec![5, 1, 2]);
    let expected = [
        [0.0, 0.0],
        [1.0, 0.0],
        [1.0, 0.0],
        [e(4.0) / (e(4.0) + e(-2.0)), e(-2.0) / (e(4.0) + e(-2.0))],
        [e(-2.0) / (e(-2.0) + e(1.0)), e(1.0) / (e(-2.0) + e(1.0))],
    ];
    for (t, row) in expected.iter().enumerate() {
        for (j, &want) in row.iter().enumerate() {
            assert_close(at(&probs[0], &[t, 0, j]), want, TOL);
        }
    }

    // With l = l′ = d the block score is the token's probability; block 2 has no token.
    let scores = block_scores(&spec, &shape, &inputs, "slc").unwrap();
    assert_eq!(scores[0].shape, vec![5, 1, 3]);
    for (t, row) in expected.iter().enumerate() {
        assert_close(at(&scores[0], &[t, 0, 0]), row[0], TOL);
        assert_close(at(&scores[0], &[t, 0, 1]), row[1], TOL);
        assert_eq!(at(&scores[0], &[t, 0, 2]), 0.0);
    }
}

#[test]
fn t5_branch_outputs_indices_and_gated_combine() {
    let (spec, inputs) = t5_case(1, 0);
    let out = forward(&spec, &batched(&spec, 1, 5), &inputs).unwrap();

    let cmp = [
        0.0, // t = 0 sees no compressed token
        3.0,
        3.0,
        avg(&[4.0, -2.0], &[3.0, 7.0]),
        avg(&[-2.0, 1.0], &[3.0, 7.0]),
    ];
    // Chosen blocks: block 0 until t = 4, where token 1 (block 1) wins.
    let idx = [0, 0, 0, 0, 1];
    let slc = [
        2.0,
        avg(&[0.5, 1.5], &[2.0, 4.0]),
        avg(&[-1.0, -3.0], &[2.0, 4.0]),
        avg(&[2.0, 6.0], &[2.0, 4.0]),
        avg(&[2.0, 0.0], &[6.0, 8.0]),
    ];
    let win = [
        2.0,
        avg(&[0.5, 1.5], &[2.0, 4.0]),
        avg(&[-3.0, 2.0], &[4.0, 6.0]),
        avg(&[-4.0, 0.0], &[6.0, 8.0]),
        avg(&[0.0, -5.0], &[8.0, 10.0]),
    ];
    let g_cmp = [0.1, 0.2, 0.3, 0.4, 0.5];
    let g_slc = [0.9, 0.8, 0.7, 0.6, 0.5];
    let g_win = [0.25, 0.5, 0.75, 1.0, 0.125];
    for t in 0..5 {
        assert_close(at(&out.branches["cmp"], &[0, t, 0, 0]), cmp[t], TOL);
        assert_close(at(&out.branches["slc"], &[0, t, 0, 0]), slc[t], TOL);
        assert_close(at(&out.branches["win"], &[0, t, 0, 0]), win[t], TOL);
        assert_eq!(at(&out.selected["slc"], &[0, t, 0, 0]), idx[t]);
        // The gates are f32 inputs: widen them the same way.
        let g = |x: f64| f64::from(x as f32);
        let o = g(g_cmp[t]) * cmp[t] + g(g_slc[t]) * slc[t] + g(g_win[t]) * win[t];
        assert_close(at(&out.o, &[0, t, 0, 0]), o, TOL);
    }
    assert_eq!(out.selected["slc"].shape, vec![1, 5, 1, 1]);
    assert_eq!(out.branches.len(), 3);
}

#[test]
fn t5_forced_own_block_and_padding() {
    // top 2, keep_last 1: the query's own block is always chosen.
    let (spec, inputs) = t5_case(2, 1);
    let out = forward(&spec, &batched(&spec, 1, 5), &inputs).unwrap();
    let idx = &out.selected["slc"];
    let rows: Vec<[i32; 2]> = (0..5)
        .map(|t| [at(idx, &[0, t, 0, 0]), at(idx, &[0, t, 0, 1])])
        .collect();
    // t = 0, 1: only block 0 is a candidate → padded with −1.
    // t = 2, 3: own block 1 forced, block 0 fills the second slot.
    // t = 4: own block 2 forced, block 1 (score e/(e^−2+e)) beats block 0.
    assert_eq!(rows, vec![[0, -1], [0, -1], [0, 1], [0, 1], [1, 2]]);
    let slc = &out.branches["slc"];
    assert_close(
        at(slc, &[0, 2, 0, 0]),
        avg(&[-1.0, -3.0, 2.0], &[2.0, 4.0, 6.0]),
        TOL,
    );
    assert_close(
        at(slc, &[0, 4, 0, 0]),
        avg(&[2.0, 0.0, -5.0], &[6.0, 8.0, 10.0]),
        TOL,
    );
}

/// Overlapping compressed tokens (l = 4, d = 2) scored onto blocks of 2, with a group of two
/// query heads (G = 2) summed per kv head. T = 7.
///
/// k = [1, 2, 3, 4, 0, −1, 5] → K̃_0 = mean(1,2,3,4) = 2.5, K̃_1 = mean(3,4,0,−1) = 1.5.
/// Token 0 covers keys 0..4 (blocks 0, 1), token 1 covers keys 2..6 (blocks 1, 2).
#[test]
fn overlap_scores_with_a_group_of_two() {
    let spec = spec(
        true,
        (2, 1),
        (1, 1),
        vec![
            compress("cmp", 4, 2, Pool::Mean),
            select("slc", 2, 2, "cmp", 0, 0),
        ],
        CombineMode::Sum,
    );
    let q = [
        0.3, -0.2, // t = 0
        0.7, 0.1, // t = 1
        -0.4, 0.9, // t = 2
        0.5, -1.5, // t = 3: token 0 visible
        1.2, 0.6, // t = 4
        -0.8, 0.2, // t = 5: both tokens visible
        1.0, -2.0, // t = 6
    ];
    let inputs = inputs(&[
        ("q", &[1, 7, 2, 1], &q),
        ("k", &[1, 7, 1, 1], &[1.0, 2.0, 3.0, 4.0, 0.0, -1.0, 5.0]),
        ("v", &[1, 7, 1, 1], &[0.5, -1.0, 2.0, 1.5, -0.5, 3.0, 1.0]),
    ]);
    let shape = batched(&spec, 1, 7);
    let p = pooled(&spec, &shape, &inputs, "cmp").unwrap();
    assert_eq!(p[0].k.data, vec![2.5, 1.5]);

    let scores = &block_scores(&spec, &shape, &inputs, "slc").unwrap()[0];
    assert_eq!(scores.shape, vec![7, 1, 4]);
    let row = |t: usize| -> Vec<f64> { (0..4).map(|i| at(scores, &[t, 0, i])).collect() };
    for t in 0..3 {
        assert_eq!(row(t), vec![0.0; 4], "t = {t} sees no token");
    }
    // t = 3, 4: only token 0, probability 1 in both heads; overlap 2 with blocks 0 and 1.
    assert_eq!(row(3), vec![2.0, 2.0, 0.0, 0.0]);
    assert_eq!(row(4), vec![2.0, 2.0, 0.0, 0.0]);
    // t = 6: head 0 logits 2.5, 1.5; head 1 logits −5, −3.
    let p0 = 1.0 / (1.0 + e(-1.0)); // head 0, token 0
    let p0b = 1.0 / (1.0 + e(2.0)); // head 1, token 0
    let want = [p0 + p0b, 2.0, (1.0 - p0) + (1.0 - p0b), 0.0];
    for (got, want) in row(6).iter().zip(want) {
        assert_close(*got, want, TOL);
    }

    let out = forward(&spec, &shape, &inputs).unwrap();
    let idx = &out.selected["slc"];
    let chosen = |t: usize| [at(idx, &[0, t, 0, 0]), at(idx, &[0, t, 0, 1])];
    // t = 4: blocks 0 and 1 tie at 2.0 ahead of block 2 (0.0).
    assert_eq!(chosen(4), [0, 1]);
    // t = 6: block 1 (2.0) and block 2 (≈1.15) beat block 0 (≈0.85) and block 3 (0).
    assert_eq!(chosen(6), [1, 2]);
    // Head 1 at t = 6 attends keys 2..6 (blocks 1, 2): logits −2·k.
    let v = [2.0, 1.5, -0.5, 3.0];
    let logits = [-6.0, -8.0, 0.0, 2.0];
    assert_close(
        at(&out.branches["slc"], &[0, 6, 1, 0]),
        avg(&logits, &v),
        TOL,
    );
}

/// The T = 5 inputs without causality: every token, block and window key on both sides.
#[test]
fn t5_non_causal() {
    let (mut spec, mut inputs) = t5_case(1, 0);
    spec.causal = false;
    spec.combine.mode = CombineMode::Sum;
    inputs.retain(|name, _| !name.starts_with("g_"));
    let out = forward(&spec, &batched(&spec, 1, 5), &inputs).unwrap();
    let at0 = |name: &str, t: usize| at(&out.branches[name], &[0, t, 0, 0]);
    // Both compressed tokens are seen from t = 0 (q = 1: logits 2, −1).
    assert_close(at0("cmp", 0), avg(&[2.0, -1.0], &[3.0, 7.0]), TOL);
    // t = 2 (q = −1): token 1 wins (logits −2, 1), and all of block 1 is attended, including
    // key 3 after the query.
    assert_eq!(at(&out.selected["slc"], &[0, 2, 0, 0]), 1);
    assert_close(at0("slc", 2), avg(&[2.0, 0.0], &[6.0, 8.0]), TOL);
    // t = 0 (q = 1): block 0, keys 0 and 1.
    assert_eq!(at(&out.selected["slc"], &[0, 0, 0, 0]), 0);
    assert_close(at0("slc", 0), avg(&[1.0, 3.0], &[2.0, 4.0]), TOL);
    // Window 2 is symmetric: |k − t| ≤ 1.
    assert_close(at0("win", 0), avg(&[1.0, 3.0], &[2.0, 4.0]), TOL);
    assert_close(at0("win", 2), avg(&[-3.0, 2.0, 0.0], &[4.0, 6.0, 8.0]), TOL);
    assert_close(at0("win", 4), avg(&[0.0, -5.0], &[8.0, 10.0]), TOL);
}

/// Weighted pooling of the T = 5 inputs with w = [0.5, −1] (one weight tensor for K and V).
#[test]
fn t5_weighted_pool() {
    let (mut spec, mut inputs) = t5_case(1, 0);
    spec.branches[0] = compress("cmp", 2, 2, Pool::Weighted);
    inputs.insert("w_cmp".into(), tensor(&[1, 2], &[0.5, -1.0]));
    let shape = batched(&spec, 1, 5);
    let p = &pooled(&spec, &shape, &inputs, "cmp").unwrap()[0];
    // K̃ = [0.5·1 − 3, 0.5·(−2) − 0], Ṽ = [0.5·2 − 4, 0.5·6 − 8].
    assert_eq!(p.k.data, vec![-2.5, -1.0]);
    assert_eq!(p.v.data, vec![-3.0, -5.0]);
    let out = forward(&spec, &shape, &inputs).unwrap();
    // t = 3 (q = 2): logits −5, −2.
    assert_close(
        at(&out.branches["cmp"], &[0, 3, 0, 0]),
        avg(&[-5.0, -2.0], &[-3.0, -5.0]),
        TOL,
    );
}
