//! The CPU backend on the selection forms beyond NSA's blocks (issue 12), against the f64
//! oracle: per form, random specs × shapes (odd lengths, G ∈ {1,2,3,4,8,16}, causal and not,
//! batched and varlen) at the CPU bar (docs/ARCHITECTURE.md §4) with the oracle's choices
//! (near-ties through `reference::verify`, as `cpu_random` does). 200 cases per form in CI;
//! `NSAC_SELECTION_CASES=n` runs n instead.

mod cpu_common;

use cpu_common::{
    any_problem, any_variant, check_inputs, compress, run_case, select, spec, window,
};
use nsac_compiler::cpu::CpuVariant;
use nsac_dsl::problem::{Problem, Shape};
use nsac_dsl::spec::{Branch, BranchKind, CombineMode, KvSource, Pool, Scorer, Select, Spec};
use nsac_kernels::io::random_inputs;
use nsac_runtime::cpu::CpuKernel;
use proptest::prelude::*;

fn cases() -> u32 {
    std::env::var("NSAC_SELECTION_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200)
}

fn heads() -> impl Strategy<Value = (u32, u32)> {
    (prop::sample::select(vec![1u32, 2, 3, 4, 8, 16]), 1u32..=2).prop_map(|(g, h)| (g * h, h))
}

fn dims() -> impl Strategy<Value = (u32, u32)> {
    (1u32..=16, 1u32..=16).prop_map(|(qk, v)| (qk, if v == qk { v + 1 } else { v }))
}

fn pool() -> impl Strategy<Value = Pool> {
    prop_oneof![Just(Pool::Mean), Just(Pool::Weighted), Just(Pool::Linear)]
}

fn mode(gate: bool) -> CombineMode {
    if gate {
        CombineMode::Gate
    } else {
        CombineMode::Sum
    }
}

fn given(name: &str, block: u32, top: u32) -> Branch {
    Branch {
        name: name.into(),
        kv: KvSource::Shared,
        kind: BranchKind::Select(Select {
            block,
            top,
            scored_by: Scorer::Given,
            keep_first: 0,
            keep_last: 0,
            within: None,
        }),
    }
}

/// A given selection (any block, top), alone or beside a window and an NSA select.
fn given_spec() -> impl Strategy<Value = Spec> {
    (
        heads(),
        dims(),
        (1u32..=12, 1u32..=6, any::<bool>()),
        (0u8..4, 1u32..=20, any::<bool>(), any::<bool>()),
    )
        .prop_map(|(h, d, (block, top, own), (extra, w, causal, gate))| {
            let mut g = given("gvn", block, top);
            if own {
                g.kv = KvSource::Own;
            }
            let mut branches = vec![g];
            if extra & 1 != 0 {
                branches.push(window("win", w));
            }
            if extra & 2 != 0 {
                branches.push(compress("cmp", 4, 2, Pool::Mean));
                branches.push(select("slc", 4, 2, "cmp", 0, 1));
            }
            spec("given", h, d, causal, branches, mode(gate))
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn given_indices_match_the_oracle(
        spec in given_spec(), problem in any_problem(40), variant in any_variant(), seed in 0u64..1000
    ) {
        let shape: Shape = problem.resolve(&spec).expect("valid problem");
        let mut inputs = random_inputs(&spec, &shape, seed);
        // The contract takes a row in any order with −1 anywhere: reverse every other row.
        if let Some(idx) = inputs.get_mut("idx_gvn") {
            let top = idx.shape[3];
            for (i, row) in idx.data.chunks_mut(top).enumerate() {
                if (i + seed as usize).is_multiple_of(2) {
                    row.reverse();
                }
            }
        }
        check_inputs(&spec, &shape, &inputs, seed, &[CpuVariant::default(), variant], 2);
    }
}

/// Given rows in any order with −1 anywhere are taken as the oracle takes them; a bad row (a
/// block twice, past its sequence, not an integer) is a typed error, never a result.
#[test]
fn given_indices_are_checked() {
    let s = spec(
        "given",
        (2, 1),
        (8, 8),
        true,
        vec![given("gvn", 4, 3)],
        CombineMode::Sum,
    );
    // Two segments of 9 and 6 tokens: 3 and 2 blocks.
    let shape = Problem::varlen(vec![0, 9, 15]).resolve(&s).expect("valid");
    let base = random_inputs(&s, &shape, 7);
    let kernel = CpuKernel::compile(&s, &shape, &CpuVariant::default()).expect("compiles");
    let mut shuffled = base.clone();
    let idx = shuffled.get_mut("idx_gvn").expect("given input");
    // Position 8 (first segment): blocks 2, −1, 0 in this order; position 10: 1, −1, −1.
    idx.data[8 * 3..9 * 3].copy_from_slice(&[2.0, -1.0, 0.0]);
    idx.data[10 * 3..11 * 3].copy_from_slice(&[-1.0, 1.0, -1.0]);
    // Position 4 is given block 2, which starts after it: it adds no key (causal).
    idx.data[4 * 3..5 * 3].copy_from_slice(&[2.0, 0.0, -1.0]);
    let want = nsac_kernels::reference::forward(&s, &shape, &shuffled).expect("oracle runs");
    let got = kernel.run(&shuffled, 1).expect("runs");
    assert_eq!(got.selected["gvn"], want.selected["gvn"]);
    assert_eq!(&got.selected["gvn"].data[8 * 3..9 * 3], &[0, 2, -1]);
    assert!(cpu_common::rel_err(&got.o, &want.o) <= 1e-5);
    for (at, row) in [
        (8, [1.0, 1.0, -1.0]),   // a block twice
        (8, [3.0, -1.0, -1.0]),  // the first segment has 3 blocks
        (12, [2.0, -1.0, -1.0]), // the second has 2
        (8, [0.5, -1.0, -1.0]),  // not an integer
        (8, [-2.0, -1.0, -1.0]), // below −1
    ] {
        let mut bad = base.clone();
        bad.get_mut("idx_gvn").expect("given input").data[at * 3..at * 3 + 3].copy_from_slice(&row);
        assert!(
            nsac_kernels::reference::forward(&s, &shape, &bad).is_err(),
            "the oracle accepts {row:?}"
        );
        let err = kernel.run(&bad, 1).expect_err("a bad row is refused");
        assert!(err.to_string().contains("idx_gvn"), "{err}");
    }
}

/// Token-level selection (`block = 1`) scored by a compress branch of any block and stride,
/// and blocks smaller than the stride or not a multiple of it (built in code: the language
/// asks `stride | block` for blocks > 1, E032, but the overlap rule defines every case).
fn token_spec() -> impl Strategy<Value = Spec> {
    (
        heads(),
        dims(),
        (1u32..=12, 1u32..=12, pool()),
        (
            prop::bool::weighted(0.6),
            2u32..=11,
            1u32..=8,
            0u32..=3,
            0u32..=3,
        ),
        (any::<bool>(), 1u32..=20, any::<bool>(), any::<bool>()),
    )
        .prop_map(
            |(h, d, (l, stride, p), (tokens, sl, top, kf, kl), (win, w, causal, gate))| {
                let stride = stride.min(l);
                let block = if tokens { 1 } else { sl };
                let kf = kf.min(top);
                let kl = kl.min(top - kf);
                let mut branches = vec![
                    compress("cmp", l, stride, p),
                    select("tok", block, top, "cmp", kf, kl),
                ];
                if win {
                    branches.push(window("win", w));
                }
                spec("tokens", h, d, causal, branches, mode(gate))
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn token_level_selection_matches_the_oracle(
        spec in token_spec(), problem in any_problem(40), variant in any_variant(), seed in 0u64..1000
    ) {
        run_case(&spec, &problem, variant, seed);
    }
}

/// Hierarchical selection of any depth (1–3 levels): a coarse select scored by the compress
/// branch (or given), a fine one within it, and optionally a finer one within that, each
/// with its own forced blocks; the outer branches in `combine` or only choosing.
fn within_spec() -> impl Strategy<Value = Spec> {
    (
        heads(),
        dims(),
        (1u32..=8, 1u32..=4, pool()),
        (1u32..=4, 1u32..=3, any::<bool>(), 0u32..100, 0u32..100),
        prop::collection::vec((0u32..100, 0u32..100, 0u32..100, 0u32..100), 2),
        (
            any::<bool>(),
            prop::collection::vec(any::<bool>(), 3),
            any::<bool>(),
            any::<bool>(),
        ),
    )
        .prop_map(
            |(
                h,
                d,
                (l, stride, p),
                (m, ctop, given_coarse, a, b),
                levels,
                (deep, shown, causal, gate),
            )| {
                let stride = stride.min(l);
                let keeps = |top: u32, a: u32, b: u32| {
                    let first = a % (top + 1);
                    (first, b % (top - first + 1))
                };
                let coarse_block = stride * m * 2;
                let mut branches = vec![compress("cmp", l, stride, p)];
                let mut coarse = if given_coarse {
                    given("crs", coarse_block, ctop)
                } else {
                    let (kf, kl) = keeps(ctop, a, b);
                    select("crs", coarse_block, ctop, "cmp", kf, kl)
                };
                coarse.kv = KvSource::Shared;
                branches.push(coarse);
                let (mut outer, mut outer_block, mut outer_top) = ("crs", coarse_block, ctop);
                let names = ["fin", "tok"];
                let mut combined = [shown[0], true, true];
                for (level, &(r, t, a, b)) in
                    levels.iter().enumerate().take(if deep { 2 } else { 1 })
                {
                    // A divisor of the outer block that the stride divides (or 1).
                    let sizes: Vec<u32> = (1..=outer_block)
                        .filter(|&s| {
                            outer_block.is_multiple_of(s) && (s == 1 || s.is_multiple_of(stride))
                        })
                        .collect();
                    let block = sizes[r as usize % sizes.len()];
                    let most = outer_top * (outer_block / block);
                    let top = 1 + t % most.min(5);
                    let (kf, kl) = keeps(top, a, b);
                    let mut s = select(names[level], block, top, "cmp", kf, kl);
                    if let BranchKind::Select(sel) = &mut s.kind {
                        sel.within = Some(outer.to_string());
                    }
                    branches.push(s);
                    combined[level + 1] = level + 1 == if deep { 2 } else { 1 } || shown[level + 1];
                    (outer, outer_block, outer_top) = (names[level], block, top);
                }
                let mut sp = spec("within", h, d, causal, branches, mode(gate));
                // The compress branch and the innermost select are always combined; an outer
                // select only when drawn so.
                sp.combine.branches = sp
                    .branches
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i == 0 || combined[*i - 1])
                    .map(|(_, b)| b.name.clone())
                    .collect();
                sp
            },
        )
}

/// The hierarchy's cases come from a fixed seed unless `PROPTEST_RNG_SEED` is set: the
/// near-tie tolerance of `reference::verify` covers NSA's plain select branches only, so an
/// f32 score order that differs from the f64 one inside a `within` branch would fail here
/// rather than be checked as a valid near-tie. Until it covers `within`, CI must not depend on
/// drawing no such case; `PROPTEST_RNG_SEED=n` explores others.
fn within_config() -> ProptestConfig {
    let mut config = ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        config.rng_seed = proptest::test_runner::RngSeed::Fixed(0x5e1e_c7ed);
    }
    config
}

proptest! {
    #![proptest_config(within_config())]
    #[test]
    fn hierarchical_selection_matches_the_oracle(
        spec in within_spec(), problem in any_problem(40), variant in any_variant(), seed in 0u64..1000
    ) {
        run_case(&spec, &problem, variant, seed);
    }
}
