//! The oracle's gradients: central finite differences (see [`super::grad_check`]) of every
//! element of every input, on tiny random problems — every branch kind alone and together,
//! every pool, `kv = own`, GQA groups 1, 2, 3 and 16, Dqk ≠ Dv, varlen and batched, causal and
//! not, odd lengths, several seeds, a given scale, random valid specs — plus exact zeros for
//! rows that see nothing, a hand-derived window of one, the given-blocks twin, bit-identical
//! results for 1 and 2 threads, and typed errors for a bad dO.

use std::collections::BTreeMap;

use nsac_dsl::problem::Problem;
use nsac_dsl::spec::{CombineMode, HeadDim, Heads, Pool, Spec};
use proptest::prelude::*;

use super::grad_check::{BAR, check, check_with, on_grid, upstream};
use super::library::nsa_library_specs as library_specs;
use super::support::*;
use crate::io::{InputError, Tensor};
use crate::reference::{ReferenceError, backward, backward_with_blocks, forward};

/// `spec` with only the branches `names` combined (the others still run, e.g. a scorer).
fn combining(mut spec: Spec, names: &[&str]) -> Spec {
    spec.combine.branches = names.iter().map(|n| n.to_string()).collect();
    spec
}

fn modes() -> [CombineMode; 2] {
    [CombineMode::Gate, CombineMode::Sum]
}

#[test]
fn compress_alone() {
    for (seed, causal, mode) in [
        (1, true, CombineMode::Gate),
        (2, false, CombineMode::Sum),
        (3, true, CombineMode::Sum),
    ] {
        let spec = spec(
            causal,
            (2, 1),
            (3, 2),
            vec![compress("cmp", 4, 2, Pool::Mean)],
            mode,
        );
        check(&spec, &batched(&spec, 1, 13), seed);
    }
}

#[test]
fn select_alone_gets_no_gradient_through_its_scorer() {
    for (seed, causal) in [(4, true), (5, false)] {
        for mode in modes() {
            let full = spec(
                causal,
                (2, 1),
                (3, 2),
                vec![
                    compress("cmp", 4, 2, Pool::Mean),
                    select("slc", 3, 2, "cmp", 1, 1),
                ],
                mode,
            );
            let spec = combining(full, &["slc"]);
            let shape = batched(&spec, 1, 11);
            check(&spec, &shape, seed);
            // The scorer is not combined, so all of it comes through the selected attention
            // (the check above holds the blocks fixed): make sure that is not nothing.
            let inputs = on_grid(random(&spec, &shape, seed));
            let g = backward(&spec, &shape, &inputs, &upstream(&shape, seed)).unwrap();
            assert!(g["dq"].data.iter().any(|&x| x != 0.0));
        }
    }
}

#[test]
fn window_alone() {
    for (seed, causal, size, len) in [(6, true, 4, 9), (7, false, 3, 10), (8, true, 1, 5)] {
        for mode in modes() {
            let spec = spec(causal, (2, 1), (2, 3), vec![window("win", size)], mode);
            check(&spec, &batched(&spec, 1, len), seed);
        }
    }
}

#[test]
fn all_branches_together_causal_and_not() {
    for (seed, causal) in [(10, true), (11, false), (12, true)] {
        for mode in modes() {
            let spec = nsa(causal, (2, 1), (3, 2), mode);
            check(&spec, &batched(&spec, 1, 15), seed);
        }
    }
}

#[test]
fn every_pool_kind() {
    for pool in [Pool::Mean, Pool::Weighted, Pool::Linear] {
        for (seed, causal) in [(20, true), (21, false)] {
            let spec = spec(
                causal,
                (2, 1),
                (2, 3),
                vec![
                    compress("cmp", 3, 1, pool),
                    select("slc", 3, 2, "cmp", 0, 1),
                    window("win", 3),
                ],
                CombineMode::Gate,
            );
            check(&spec, &batched(&spec, 1, 10), seed);
        }
    }
}

#[test]
fn own_kv_on_every_branch_and_every_pool() {
    for (seed, pool) in [(30, Pool::Weighted), (31, Pool::Linear), (32, Pool::Mean)] {
        let spec = spec(
            true,
            (2, 1),
            (2, 2),
            vec![
                own(compress("cmp", 4, 2, pool)),
                own(select("slc", 4, 2, "cmp", 0, 1)),
                own(window("win", 3)),
            ],
            CombineMode::Gate,
        );
        let shape = batched(&spec, 1, 11);
        check(&spec, &shape, seed);
        // Nothing reads the shared K/V: their gradients are exactly zero.
        let inputs = on_grid(random(&spec, &shape, seed));
        let g = backward(&spec, &shape, &inputs, &upstream(&shape, seed)).unwrap();
        assert!(g["dk"].data.iter().chain(&g["dv"].data).all(|&x| x == 0.0));
        assert!(g["dk_cmp"].data.iter().any(|&x| x != 0.0));
    }
}

#[test]
fn gqa_groups_1_2_3_and_16() {
    for (seed, (q, kv), len) in [
        (40, (1, 1), 12),
        (41, (2, 1), 11),
        (42, (6, 2), 9),
        (43, (3, 1), 10),
        (44, (16, 1), 7),
    ] {
        let spec = nsa(true, (q, kv), (2, 1), CombineMode::Gate);
        check(&spec, &batched(&spec, 1, len), seed);
    }
}

#[test]
fn head_dims_differ_both_ways() {
    for (seed, dims) in [(50, (4, 1)), (51, (1, 3)), (52, (3, 4))] {
        let spec = nsa(true, (2, 1), dims, CombineMode::Sum);
        check(&spec, &batched(&spec, 1, 9), seed);
    }
}

#[test]
fn varlen_and_batched_shapes() {
    let spec = nsa(true, (2, 1), (2, 2), CombineMode::Gate);
    check(&spec, &varlen(&spec, &[0, 5, 12, 21]), 60);
    check(&spec, &batched(&spec, 2, 9), 61);
    let spec = nsa(false, (2, 1), (2, 2), CombineMode::Sum);
    check(&spec, &varlen(&spec, &[0, 9, 10, 17]), 62);
}

#[test]
fn a_given_scale() {
    let spec = with_scale(nsa(true, (2, 1), (3, 2), CombineMode::Gate), 1.7);
    check(&spec, &batched(&spec, 1, 13), 70);
}

#[test]
fn several_seeds_and_odd_lengths() {
    let spec = nsa(true, (2, 1), (2, 2), CombineMode::Gate);
    for (seed, len) in [(80, 1), (81, 3), (82, 7), (83, 17), (84, 23)] {
        check(&spec, &batched(&spec, 1, len), seed);
    }
}

#[test]
fn given_blocks_are_held_fixed_and_the_oracles_reproduce_backward() {
    let spec = nsa(true, (2, 1), (3, 2), CombineMode::Gate);
    let (len, top) = (13usize, 2usize);
    let shape = batched(&spec, 1, len);
    let inputs = on_grid(random(&spec, &shape, 90));
    let d_o = upstream(&shape, 90);
    let out = forward(&spec, &shape, &inputs).unwrap();
    assert_eq!(
        backward(&spec, &shape, &inputs, &d_o).unwrap(),
        backward_with_blocks(&spec, &shape, &inputs, &out.selected, &d_o).unwrap()
    );
    // Other blocks than the oracle's (the query's own block and the one before).
    let mut idx = Tensor::full(vec![1, len, 1, top], -1i32);
    for t in 0..len {
        let own = t / 3;
        for (n, i) in (own.saturating_sub(1)..=own).enumerate() {
            idx.data[t * top + n] = i as i32;
        }
    }
    let blocks = BTreeMap::from([("slc".to_string(), idx)]);
    let errors = check_with(&spec, &shape, 90, Some(blocks));
    assert!(errors.values().all(|&e| e <= BAR), "{errors:?}");
}

#[test]
fn rows_that_see_nothing_get_exactly_zero_gradient() {
    // Causal compress block 4: queries 0..=2 see no compressed token; a window of 0 sees
    // nothing at all.
    let spec = spec(
        true,
        (2, 1),
        (3, 2),
        vec![compress("cmp", 4, 2, Pool::Linear), window("win", 0)],
        CombineMode::Gate,
    );
    let shape = batched(&spec, 1, 9);
    check(&spec, &shape, 100);
    let inputs = on_grid(random(&spec, &shape, 100));
    let g = backward(&spec, &shape, &inputs, &upstream(&shape, 100)).unwrap();
    assert!(g.values().all(|t| t.data.iter().all(|x| x.is_finite())));
    let (hq, dqk) = (2, 3);
    assert!(g["dq"].data[..3 * hq * dqk].iter().all(|&x| x == 0.0));
    assert!(g["dq"].data[3 * hq * dqk..].iter().any(|&x| x != 0.0));
    assert!(g["dg_cmp"].data[..3 * hq].iter().all(|&x| x == 0.0));
    assert!(g["dg_win"].data.iter().all(|&x| x == 0.0));

    // Shorter than the compress block: no compressed token exists, nothing gets gradient.
    let short = batched(&spec, 2, 3);
    let inputs = on_grid(random(&spec, &short, 101));
    let g = backward(&spec, &short, &inputs, &upstream(&short, 101)).unwrap();
    assert!(g.values().all(|t| t.data.iter().all(|&x| x == 0.0)));
}

#[test]
fn a_window_of_one_by_hand() {
    // o_win(t) = v_t exactly: dv_t = g·dO_t, dg = dO·v_t, and q, k get no gradient (a softmax
    // over one key is constant).
    let spec = spec(
        true,
        (2, 1),
        (2, 3),
        vec![window("win", 1)],
        CombineMode::Gate,
    );
    let shape = batched(&spec, 1, 6);
    let inputs = random(&spec, &shape, 110);
    let d_o = upstream(&shape, 110);
    let g = backward(&spec, &shape, &inputs, &d_o).unwrap();
    assert!(g["dq"].data.iter().chain(&g["dk"].data).all(|&x| x == 0.0));
    for t in 0..6 {
        for e in 0..3 {
            let want: f64 = (0..2)
                .map(|qh| {
                    f64::from(at(&inputs["g_win"], &[0, t, qh]))
                        * f64::from(at(&d_o, &[0, t, qh, e]))
                })
                .sum();
            assert_close(at(&g["dv"], &[0, t, 0, e]), want, 1e-14);
        }
        for qh in 0..2 {
            let want: f64 = (0..3)
                .map(|e| {
                    f64::from(at(&d_o, &[0, t, qh, e])) * f64::from(at(&inputs["v"], &[0, t, 0, e]))
                })
                .sum();
            assert_close(at(&g["dg_win"], &[0, t, qh]), want, 1e-14);
        }
    }
}

#[test]
fn one_and_two_threads_give_identical_bits() {
    // Longer than one chunk of positions, so the parallel split matters.
    let spec = spec(
        true,
        (4, 2),
        (3, 2),
        vec![
            compress("cmp", 4, 2, Pool::Weighted),
            select("slc", 4, 3, "cmp", 1, 1),
            window("win", 9),
        ],
        CombineMode::Gate,
    );
    let shape = varlen(&spec, &[0, 70, 101]);
    let inputs = random(&spec, &shape, 120);
    let d_o = upstream(&shape, 120);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| backward(&spec, &shape, &inputs, &d_o).unwrap())
    };
    let (one, two) = (run(1), run(2));
    for (name, t) in &one {
        let bits = |t: &Tensor<f64>| t.data.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(t), bits(&two[name]), "{name}");
    }
}

#[test]
fn a_bad_upstream_gradient_is_a_typed_error() {
    let spec = nsa(true, (2, 1), (3, 2), CombineMode::Gate);
    let shape = batched(&spec, 1, 8);
    let inputs = random(&spec, &shape, 130);
    let good = upstream(&shape, 130);
    let mut wrong_shape = good.clone();
    wrong_shape.shape = vec![1, 8, 2, 3];
    assert!(matches!(
        backward(&spec, &shape, &inputs, &wrong_shape),
        Err(ReferenceError::Input(InputError::BadShape { name, .. })) if name == "do"
    ));
    let mut short = good.clone();
    short.data.pop();
    assert!(matches!(
        backward(&spec, &shape, &inputs, &short),
        Err(ReferenceError::Input(InputError::BadLength { .. }))
    ));
    let mut nan = good.clone();
    nan.data[5] = f32::NAN;
    assert_eq!(
        backward(&spec, &shape, &inputs, &nan),
        Err(ReferenceError::Input(InputError::NonFinite("do".into())))
    );
    // The inputs are checked as the forward checks them.
    let mut missing = inputs.clone();
    missing.remove("g_win");
    assert!(backward(&spec, &shape, &missing, &good).is_err());
}

/// o is linear in every value tensor (`v`, `v_<b>`: each pool is linear in V for fixed
/// weights) and in the gates, so Σ ⟨dv, v⟩ = Σ ⟨dg, g⟩ = L = Σ dO ∘ o (Euler's identity) —
/// exact checks at the library's real block sizes, where finite differences of every element
/// would be too slow.
#[test]
fn library_specs_satisfy_the_linearity_identities() {
    for (path, spec) in library_specs() {
        let group = spec.heads.group();
        for (seed, sequences) in [
            (140, Problem::batched(1, 77)),
            (141, Problem::varlen(vec![0, 29, 77])),
        ] {
            let shape = Problem {
                heads: Some(Heads {
                    q: 2 * group,
                    kv: 2,
                }),
                head_dim: Some(HeadDim { qk: 8, v: 4 }),
                ..sequences
            }
            .resolve(&spec)
            .unwrap();
            let inputs = random(&spec, &shape, seed);
            let d_o = upstream(&shape, seed);
            let o = forward(&spec, &shape, &inputs).unwrap().o;
            let g = backward(&spec, &shape, &inputs, &d_o).unwrap();
            let loss: f64 = o
                .data
                .iter()
                .zip(&d_o.data)
                .map(|(o, &d)| o * f64::from(d))
                .sum();
            let inner = |pick: fn(&str) -> bool| -> f64 {
                (inputs.iter().filter(|(name, _)| pick(name)))
                    .map(|(name, x)| {
                        let dx = &g[&format!("d{name}")].data;
                        x.data
                            .iter()
                            .zip(dx)
                            .map(|(&x, d)| f64::from(x) * d)
                            .sum::<f64>()
                    })
                    .sum()
            };
            let what = path.display();
            assert!(loss.abs() > 1e-3, "{what}: L = {loss} is too small to test");
            assert_close(inner(|n| n == "v" || n.starts_with("v_")), loss, 1e-10);
            if spec.combine.mode == CombineMode::Gate {
                assert_close(inner(|n| n.starts_with("g_")), loss, 1e-10);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn random_valid_specs_agree_with_finite_differences(
        spec in nsac_dsl::arbitrary::valid_spec(),
        kv in 1u32..=2,
        group in 1u32..=2,
        (qk, v) in (1u32..=3, 1u32..=3),
        batch in 1usize..=2,
        len in 1usize..=12,
        seed in any::<u64>(),
    ) {
        // Heads and dims kept tiny: every element is perturbed twice.
        let spec = Spec {
            heads: Heads { q: kv * group, kv },
            head_dim: HeadDim { qk, v },
            ..spec
        };
        let shape = batched(&spec, batch, len);
        let errors = check_with(&spec, &shape, seed, None);
        prop_assert!(errors.values().all(|&e| e <= BAR), "{:?}", errors);
    }
}
