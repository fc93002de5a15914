//! The CPU backward pass (Cranelift drivers of `Plan::backward`) against the f64 oracle's
//! gradients: for every gradient, max|d − ref| / max|ref| ≤ 1e-4, the oracle differentiating
//! with the CPU's own chosen blocks (`backward_with_blocks`) so that an f32 near-tie in the
//! block scores cannot matter. Random normal inputs and upstream gradients, odd lengths, every
//! branch kind and pool, own K/V, GQA, Dqk ≠ Dv, varlen, causal and not, rows that see nothing;
//! gradients bit-identical with 1 and 2 threads. A fast subset runs in the normal suite; the
//! ignored `random_specs_sweep` runs 240 random specs × shapes.

mod cpu_common;

use cpu_common::{compress, library_labeled, rel_err, select, shape, spec, window, with_heads};
use nsac_compiler::cpu::CpuVariant;
use nsac_dsl::Spec;
use nsac_dsl::problem::{Problem, Shape};
use nsac_dsl::spec::{CombineMode, KvSource, Pool};
use nsac_kernels::io::{random_inputs, random_upstream};
use nsac_kernels::reference;
use nsac_runtime::cpu::{CpuKernel, Gradients};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The bar of the brief: max|d − ref| / max|ref| per gradient.
const BAR: f64 = 1e-4;

/// Forward with saved state, backward, and the oracle on the same blocks; returns the CPU's
/// gradients after checking every one of them (and that the names are the oracle's).
fn check(spec: &Spec, shape: &Shape, seed: u64, variant: &CpuVariant, threads: usize) -> Gradients {
    let ctx = format!(
        "spec {} shape {shape:?} seed {seed} variant {variant}",
        spec.name
    );
    let inputs = random_inputs(spec, shape, seed);
    let d_o = random_upstream(shape, seed);
    let kernel =
        CpuKernel::compile_train(spec, shape, variant).unwrap_or_else(|e| panic!("{e}; {ctx}"));
    let sizes = nsac_compiler::ir::Sizes::of(shape);
    let (out, saved) = kernel
        .forward_train(&sizes, &inputs, threads)
        .unwrap_or_else(|e| panic!("{e}; {ctx}"));
    let grads = kernel
        .backward(&sizes, &inputs, &saved, &d_o, threads)
        .unwrap_or_else(|e| panic!("{e}; {ctx}"));
    let want = reference::backward_with_blocks(spec, shape, &inputs, &out.selected, &d_o)
        .unwrap_or_else(|e| panic!("{e}; {ctx}"));
    let names: Vec<&String> = grads.keys().collect();
    let want_names: Vec<&String> = want.keys().collect();
    assert_eq!(names, want_names, "{ctx}");
    for (name, w) in &want {
        let g = &grads[name];
        assert!(
            g.data.iter().all(|x| x.is_finite()),
            "{name} not finite; {ctx}"
        );
        let e = rel_err(g, w);
        assert!(e <= BAR, "{name}: rel err {e:e}; {ctx}");
    }
    // The forward of the training plan is the forward.
    let fwd = reference::forward_with_blocks(spec, shape, &inputs, &out.selected)
        .unwrap_or_else(|e| panic!("{e}; {ctx}"));
    let e = rel_err(&out.o, &fwd.o);
    assert!(e <= 1e-5, "o: rel err {e:e}; {ctx}");
    grads
}

fn small(spec: &Spec, p: Problem) -> Shape {
    shape(spec, with_heads(p, 4, 2, 12, 8))
}

#[test]
fn library_specs_at_odd_lengths() {
    let v = CpuVariant::default();
    for (label, spec) in library_labeled() {
        let s = if label.starts_with("nsa_")
            || label.starts_with("sliding")
            || label.starts_with("compress")
        {
            small(&spec, Problem::batched(1, 157))
        } else {
            shape(&spec, Problem::batched(1, 83))
        };
        check(&spec, &s, 3, &v, 2);
    }
}

#[test]
fn paper_spec_gqa_dims_varlen_and_empty_rows() {
    let paper = cpu_common::nsa_paper();
    let v = CpuVariant::default();
    // GQA group 4, Dqk ≠ Dv not multiples of 4; varlen with a segment shorter than every
    // compression block (its rows see no compressed token: zero gradient, never NaN).
    check(
        &paper,
        &shape(
            &paper,
            with_heads(Problem::varlen(vec![0, 9, 130, 211]), 8, 2, 14, 9),
        ),
        5,
        &v,
        2,
    );
    check(
        &paper,
        &shape(&paper, with_heads(Problem::batched(2, 71), 4, 4, 16, 20)),
        6,
        &v,
        1,
    );
}

#[test]
fn every_pool_own_kv_sum_and_non_causal() {
    let v = CpuVariant {
        bwd_key_tile: 8,
        bwd_query_chunk: 3,
        key_tile: 12,
        ..CpuVariant::default()
    };
    for causal in [true, false] {
        for pool in [Pool::Mean, Pool::Weighted, Pool::Linear] {
            let mut s = spec(
                "grads",
                (6, 3),
                (10, 7),
                causal,
                vec![
                    compress("c", 6, 3, pool),
                    select("s", 5, 3, "c", 1, 1),
                    window("w", 7),
                ],
                if pool == Pool::Weighted {
                    CombineMode::Sum
                } else {
                    CombineMode::Gate
                },
            );
            s.branches[2].kv = KvSource::Own;
            if pool == Pool::Linear {
                s.branches[0].kv = KvSource::Own;
            }
            let sh = shape(&s, Problem::varlen(vec![0, 4, 37, 60]));
            check(&s, &sh, 11, &v, 2);
        }
    }
}

#[test]
fn gradients_are_bit_identical_across_thread_counts_and_runs() {
    let paper = cpu_common::nsa_paper();
    let s = small(&paper, Problem::varlen(vec![0, 100, 233]));
    let v = CpuVariant {
        bwd_query_chunk: 5,
        ..CpuVariant::default()
    };
    let one = check(&paper, &s, 9, &v, 1);
    let two = check(&paper, &s, 9, &v, 2);
    let again = check(&paper, &s, 9, &v, 2);
    for (name, t) in &one {
        let bits = |g: &Gradients| g[name].data.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&one), bits(&two), "{name}: 1 vs 2 threads");
        assert_eq!(bits(&two), bits(&again), "{name}: two runs");
        assert!(t.data.iter().any(|&x| x != 0.0), "{name} is all zero");
    }
}

#[test]
fn a_forward_only_kernel_refuses_backward_and_bad_upstream_is_an_error() {
    let paper = cpu_common::nsa_paper();
    let s = small(&paper, Problem::batched(1, 40));
    let inputs = random_inputs(&paper, &s, 1);
    let sizes = nsac_compiler::ir::Sizes::of(&s);
    let fwd = CpuKernel::compile(&paper, &s, &CpuVariant::default()).unwrap();
    let (_, saved) = fwd.forward_train(&sizes, &inputs, 1).unwrap();
    let d_o = random_upstream(&s, 1);
    assert!(fwd.backward(&sizes, &inputs, &saved, &d_o, 1).is_err());
    let train = CpuKernel::compile_train(&paper, &s, &CpuVariant::default()).unwrap();
    let (_, saved) = train.forward_train(&sizes, &inputs, 1).unwrap();
    let mut short = d_o.clone();
    short.data.pop();
    assert!(train.backward(&sizes, &inputs, &saved, &short, 1).is_err());
    let mut nan = d_o.clone();
    nan.data[3] = f32::NAN;
    assert!(train.backward(&sizes, &inputs, &saved, &nan, 1).is_err());
    let mut missing = saved.clone();
    missing.f32.remove("lse_win");
    assert!(train.backward(&sizes, &inputs, &missing, &d_o, 1).is_err());
    assert!(train.backward(&sizes, &inputs, &saved, &d_o, 1).is_ok());
}

/// A random spec: one to three branches of random kinds and parameters, random heads/dims.
fn random_spec(rng: &mut ChaCha8Rng, i: usize) -> Spec {
    let g = [1u32, 2, 3, 4, 8, 16][rng.random_range(0..6)];
    let h = rng.random_range(1..=2u32);
    let dqk = rng.random_range(1..=24u32);
    let dv = rng.random_range(1..=24u32);
    let causal = rng.random_bool(0.75);
    let pool = [Pool::Mean, Pool::Weighted, Pool::Linear][rng.random_range(0..3)];
    let cb = rng.random_range(1..=9u32);
    let cs = rng.random_range(1..=cb);
    let mut branches = Vec::new();
    let kinds = rng.random_range(0..4);
    if kinds != 3 {
        branches.push(compress("c", cb, cs, pool));
        if kinds != 1 {
            let top = rng.random_range(1..=5u32);
            branches.push(select(
                "s",
                rng.random_range(1..=10u32),
                top,
                "c",
                rng.random_range(0..=2u32),
                rng.random_range(0..=2u32),
            ));
        }
    }
    if kinds != 1 || rng.random_bool(0.5) {
        branches.push(window("w", rng.random_range(1..=20u32)));
    }
    let mode = if rng.random_bool(0.5) {
        CombineMode::Gate
    } else {
        CombineMode::Sum
    };
    let mut s = spec(
        &format!("rand{i}"),
        (g * h, h),
        (dqk, dv),
        causal,
        branches,
        mode,
    );
    for b in &mut s.branches {
        if rng.random_bool(0.25) {
            b.kv = KvSource::Own;
        }
    }
    s
}

fn random_problem(rng: &mut ChaCha8Rng) -> Problem {
    if rng.random_bool(0.3) {
        let mut cu = vec![0usize];
        for _ in 0..rng.random_range(1..=3) {
            let last = *cu.last().unwrap();
            cu.push(last + rng.random_range(1..=60));
        }
        Problem::varlen(cu)
    } else {
        Problem::batched(rng.random_range(1..=2), rng.random_range(1..=90))
    }
}

fn random_variant(rng: &mut ChaCha8Rng) -> CpuVariant {
    CpuVariant {
        rows: rng.random_range(1..=4),
        key_vectors: rng.random_range(1..=2),
        value_vectors: rng.random_range(1..=2),
        key_tile: 4 * rng.random_range(1..=8),
        unroll: [1, 2, 4][rng.random_range(0..3)],
        query_chunk: rng.random_range(1..=9),
        bwd_key_tile: 4 * rng.random_range(1..=8),
        bwd_query_chunk: rng.random_range(1..=9),
    }
}

/// Checks `cases` random specs × shapes × variants; returns how many resolved (all should).
fn sweep(cases: usize, seed: u64) -> usize {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut checked = 0;
    for i in 0..cases {
        let s = random_spec(&mut rng, i);
        let p = random_problem(&mut rng);
        let v = random_variant(&mut rng);
        let Ok(sh) = p.resolve(&s) else { continue };
        check(&s, &sh, i as u64, &v, 2);
        checked += 1;
    }
    checked
}

#[test]
fn random_specs_fast_subset() {
    assert_eq!(sweep(20, 0xbac4), 20);
}

#[test]
#[ignore = "240 random specs × shapes: minutes in debug"]
fn random_specs_sweep() {
    assert!(sweep(240, 0x5eed) >= 200);
}

#[test]
fn the_backward_knobs_parse_validate_and_are_tuner_dimensions() {
    use nsac_runtime::tune::VariantSpace;
    use nsac_runtime::tune::cpu::{CpuCandidate, CpuKnobs, CpuSpace};
    let v = CpuVariant::parse("bwd_key_tile=32,bwd_query_chunk=5").expect("valid");
    assert_eq!((v.bwd_key_tile, v.bwd_query_chunk), (32, 5));
    assert_eq!(CpuVariant::parse(&v.to_string()).expect("round trip"), v);
    for bad in [
        "bwd_key_tile=6",
        "bwd_key_tile=0",
        "bwd_key_tile=2048",
        "bwd_query_chunk=0",
    ] {
        assert!(CpuVariant::parse(bad).is_err(), "{bad}");
    }
    let paper = cpu_common::nsa_paper();
    let s = small(&paper, Problem::batched(1, 100));
    let knobs = CpuKnobs {
        bwd_key_tile: vec![32, 64, 6],
        ..CpuKnobs::default()
    };
    let space = CpuSpace::with_cores(&s, knobs, 2);
    let names: Vec<String> = space.dimensions().iter().map(|d| d.name.clone()).collect();
    assert!(names.iter().any(|n| n == "bwd_key_tile"), "{names:?}");
    assert!(names.iter().any(|n| n == "bwd_query_chunk"), "{names:?}");
    let bad = CpuCandidate {
        variant: CpuVariant {
            rows: 2,
            bwd_key_tile: 6,
            ..CpuVariant::default()
        },
        threads: 1,
    };
    assert!(space.check(&bad).is_err());
    // (rows ≤ the GQA group of 2)
    let ok = CpuCandidate {
        variant: CpuVariant { rows: 2, ..v },
        threads: 1,
    };
    assert!(space.check(&ok).is_ok());
}
