//! Edge cases: short and odd lengths, padding, empty rows, ties, forced blocks, causality,
//! varlen and batch independence, gates, own K/V, pool kinds, tiny windows, and errors.

use nsac_dsl::spec::{CombineMode, Pool};

use super::support::*;
use crate::io::{InputError, Tensor};
use crate::reference::{
    ReferenceError, block_scores, compressed_probabilities, forward, pooled, sequences,
};

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

#[test]
fn varlen_equals_each_segment_run_separately() {
    let spec = nsa(true, (4, 2), (5, 3), CombineMode::Gate);
    let cu = [0, 7, 20, 21, 34];
    let shape = varlen(&spec, &cu);
    assert_eq!(sequences(&shape).len(), 4);
    for seed in 0..2 {
        let inputs = random(&spec, &shape, seed);
        let out = forward(&spec, &shape, &inputs).unwrap();
        for w in cu.windows(2) {
            let (start, end) = (w[0], w[1]);
            let part = slice_rows(&inputs, 0, start, end);
            let alone = forward(&spec, &batched(&spec, 1, end - start), &part).unwrap();
            assert_eq!(slice_out(&out.o, 0, start, end), alone.o);
            assert_eq!(
                slice_out(&out.branches["cmp"], 0, start, end),
                alone.branches["cmp"]
            );
            assert_eq!(
                slice_out(&out.branches["slc"], 0, start, end),
                alone.branches["slc"]
            );
            assert_eq!(
                slice_out(&out.branches["win"], 0, start, end),
                alone.branches["win"]
            );
            assert_eq!(
                slice_out(&out.selected["slc"], 0, start, end),
                alone.selected["slc"]
            );
        }
    }
}

#[test]
fn batch_rows_are_independent() {
    let spec = nsa(true, (2, 2), (3, 4), CombineMode::Gate);
    let shape = batched(&spec, 3, 11);
    let inputs = random(&spec, &shape, 5);
    let out = forward(&spec, &shape, &inputs).unwrap();
    for row in 0..3 {
        let part = slice_rows(&inputs, row, 0, 11);
        let alone = forward(&spec, &batched(&spec, 1, 11), &part).unwrap();
        assert_eq!(slice_out(&out.o, row, 0, 11), alone.o);
        assert_eq!(
            slice_out(&out.selected["slc"], row, 0, 11),
            alone.selected["slc"]
        );
    }
}

#[test]
fn gate_weights_branches_and_sum_adds_them() {
    let gated = nsa(true, (2, 1), (3, 2), CombineMode::Gate);
    let summed = nsa(true, (2, 1), (3, 2), CombineMode::Sum);
    let shape = batched(&gated, 2, 15);
    let inputs = random(&gated, &shape, 9);
    let gated_out = forward(&gated, &shape, &inputs).unwrap();
    let mut plain = inputs.clone();
    plain.retain(|name, _| !name.starts_with("g_"));
    let summed_out = forward(&summed, &shape, &plain).unwrap();
    assert_eq!(gated_out.branches, summed_out.branches);
    let names = ["cmp", "slc", "win"];
    for (i, (o_gate, o_sum)) in gated_out.o.data.iter().zip(&summed_out.o.data).enumerate() {
        let token_head = i / 2; // Dv = 2
        let sum: f64 = names.iter().map(|b| gated_out.branches[*b].data[i]).sum();
        let gate: f64 = names
            .iter()
            .map(|b| {
                f64::from(inputs[&format!("g_{b}")].data[token_head])
                    * gated_out.branches[*b].data[i]
            })
            .sum();
        assert_close(*o_sum, sum, TOL);
        assert_close(*o_gate, gate, TOL);
    }
}

#[test]
fn own_kv_branches_read_their_own_tensors() {
    // cmp pools its own K/V; slc attends its own K/V; win reads the shared ones.
    let spec = spec(
        true,
        (2, 1),
        (3, 2),
        vec![
            own(compress("cmp", 3, 2, Pool::Mean)),
            own(select("slc", 4, 2, "cmp", 0, 1)),
            window("win", 4),
        ],
        CombineMode::Sum,
    );
    let shape = batched(&spec, 1, 17);
    let inputs = random(&spec, &shape, 13);
    let out = forward(&spec, &shape, &inputs).unwrap();
    let scale = spec.scale_for(3);

    // The same spec with shared K/V fed cmp's tensors as the shared ones.
    let shared = nsa_like_shared(&spec);
    let mut swapped = inputs.clone();
    swapped.insert("k".into(), inputs["k_cmp"].clone());
    swapped.insert("v".into(), inputs["v_cmp"].clone());
    swapped.retain(|name, _| !name.contains('_'));
    let reference = forward(&shared, &shape, &swapped).unwrap();
    assert_eq!(out.branches["cmp"], reference.branches["cmp"]);
    // Scores come from cmp's own K̃, so the choice matches.
    assert_eq!(out.selected["slc"], reference.selected["slc"]);

    let idx = &out.selected["slc"];
    let slc = dense_attention(&inputs, ("k_slc", "v_slc"), scale, |_, t, h, k| {
        k <= t && (0..2).any(|n| at(idx, &[0, t, h, n]) == (k / 4) as i32)
    });
    assert_tensors_close(&out.branches["slc"], &slc, TOL);
    let win = dense_attention(&inputs, ("k", "v"), scale, |_, t, _, k| k <= t && t - k < 4);
    assert_tensors_close(&out.branches["win"], &win, TOL);
}

/// `spec` with every branch reading the shared K/V.
fn nsa_like_shared(spec: &nsac_dsl::spec::Spec) -> nsac_dsl::spec::Spec {
    let mut shared = spec.clone();
    for b in &mut shared.branches {
        b.kv = nsac_dsl::spec::KvSource::Shared;
    }
    shared
}

#[test]
fn weighted_pool_is_the_weighted_sum_of_its_block() {
    let (l, d, h, dqk, dv) = (4usize, 3usize, 2usize, 3usize, 2usize);
    let spec = spec(
        true,
        (4, 2),
        (3, 2),
        vec![compress("cmp", 4, 3, Pool::Weighted)],
        CombineMode::Sum,
    );
    let shape = batched(&spec, 1, 14);
    let inputs = random(&spec, &shape, 17);
    let p = &pooled(&spec, &shape, &inputs, "cmp").unwrap()[0];
    let n = (14 - l) / d + 1;
    assert_eq!(p.k.shape, vec![n, h, dqk]);
    let w = &inputs["w_cmp"];
    for j in 0..n {
        for head in 0..h {
            for (x, dim, pooled_t) in [("k", dqk, &p.k), ("v", dv, &p.v)] {
                for e in 0..dim {
                    let direct: f64 = (0..l)
                        .map(|i| {
                            f64::from(at(w, &[head, i]))
                                * f64::from(at(&inputs[x], &[0, j * d + i, head, e]))
                        })
                        .sum();
                    assert_close(at(pooled_t, &[j, head, e]), direct, TOL);
                }
            }
        }
    }
    // Weights 1/l give the mean pool.
    let mut uniform = inputs.clone();
    uniform.insert("w_cmp".into(), Tensor::full(vec![h, l], 0.25));
    let mean_spec = {
        let mut s = spec.clone();
        s.branches[0] = compress("cmp", 4, 3, Pool::Mean);
        s
    };
    let mut mean_inputs = inputs.clone();
    mean_inputs.remove("w_cmp");
    let a = forward(&spec, &shape, &uniform).unwrap();
    let b = forward(&mean_spec, &shape, &mean_inputs).unwrap();
    assert_tensors_close(&a.o, &b.o, TOL);
}

#[test]
fn linear_pool_is_the_learned_map_of_its_flattened_block() {
    let (l, d, h, dqk, dv) = (3usize, 2usize, 1usize, 2usize, 3usize);
    let spec = spec(
        true,
        (2, 1),
        (2, 3),
        vec![compress("cmp", 3, 2, Pool::Linear)],
        CombineMode::Sum,
    );
    let shape = batched(&spec, 1, 10);
    let inputs = random(&spec, &shape, 19);
    let p = &pooled(&spec, &shape, &inputs, "cmp").unwrap()[0];
    let n = (10 - l) / d + 1;
    assert_eq!(p.k.shape, vec![n, h, dqk]);
    assert_eq!(p.v.shape, vec![n, h, dv]);
    for j in 0..n {
        for (x, map, dim, pooled_t) in [("k", "wk_cmp", dqk, &p.k), ("v", "wv_cmp", dv, &p.v)] {
            for e in 0..dim {
                let mut direct = 0.0;
                for i in 0..l {
                    for f in 0..dim {
                        direct += f64::from(at(&inputs[x], &[0, j * d + i, 0, f]))
                            * f64::from(at(&inputs[map], &[0, i * dim + f, e]));
                    }
                }
                assert_close(at(pooled_t, &[j, 0, e]), direct, TOL);
            }
        }
    }
}

#[test]
fn linear_pool_with_averaging_map_equals_mean_pool() {
    let (l, dqk, dv) = (2usize, 3usize, 2usize);
    let linear = spec(
        true,
        (2, 2),
        (3, 2),
        vec![compress("cmp", 2, 1, Pool::Linear)],
        CombineMode::Sum,
    );
    let mean = spec(
        true,
        (2, 2),
        (3, 2),
        vec![compress("cmp", 2, 1, Pool::Mean)],
        CombineMode::Sum,
    );
    let shape = batched(&linear, 1, 9);
    let mut inputs = random(&linear, &shape, 23);
    let averaging = |dim: usize| {
        let mut t = Tensor::full(vec![2, l * dim, dim], 0.0f32);
        for head in 0..2 {
            for i in 0..l {
                for f in 0..dim {
                    t.data[(head * l * dim + i * dim + f) * dim + f] = 0.5;
                }
            }
        }
        t
    };
    inputs.insert("wk_cmp".into(), averaging(dqk));
    inputs.insert("wv_cmp".into(), averaging(dv));
    let a = forward(&linear, &shape, &inputs).unwrap();
    inputs.retain(|name, _| !name.starts_with('w'));
    let b = forward(&mean, &shape, &inputs).unwrap();
    assert_tensors_close(&a.o, &b.o, TOL);
}

#[test]
fn window_of_one_is_the_value_at_t() {
    let spec = spec(
        true,
        (6, 3),
        (4, 5),
        vec![window("win", 1)],
        CombineMode::Sum,
    );
    let shape = batched(&spec, 2, 7);
    let inputs = random(&spec, &shape, 29);
    let out = forward(&spec, &shape, &inputs).unwrap();
    for b in 0..2 {
        for t in 0..7 {
            for qh in 0..6 {
                for e in 0..5 {
                    let want = f64::from(at(&inputs["v"], &[b, t, qh / 2, e]));
                    assert_eq!(at(&out.o, &[b, t, qh, e]), want);
                }
            }
        }
    }
}

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
        sel.scored_by = "win".into();
    }
    assert!(matches!(
        forward(&s, &shape, &inputs),
        Err(ReferenceError::NotCompress { .. })
    ));
    if let nsac_dsl::spec::BranchKind::Select(sel) = &mut s.branches[1].kind {
        sel.scored_by = "nope".into();
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
