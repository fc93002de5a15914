//! Branch and combine variants: gated vs summed, own K/V, weighted and linear pools, a window
//! of one.

use nsac_dsl::spec::{CombineMode, Pool};

use super::support::*;
use crate::io::Tensor;
use crate::reference::{forward, pooled};

const TOL: f64 = 1e-12;

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
