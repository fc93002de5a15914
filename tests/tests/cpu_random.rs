//! Property test: randomly generated valid specs × shapes (odd lengths, G ∈ {1,2,3,4,8,16},
//! Dqk ≠ Dv, causal and not, batched and varlen) agree with the f64 oracle on the CPU backend
//! under two variants each (the default and a random one). 200 cases in CI; a larger sweep
//! behind `#[ignore]`.

mod cpu_common;

use cpu_common::{any_problem, any_variant, compress, run_case, select, spec, window};
use nsac_dsl::spec::{Branch, CombineMode, KvSource, Pool, Spec};
use proptest::prelude::*;

fn pool() -> impl Strategy<Value = Pool> {
    prop_oneof![Just(Pool::Mean), Just(Pool::Weighted), Just(Pool::Linear)]
}

fn kv() -> impl Strategy<Value = KvSource> {
    prop_oneof![3 => Just(KvSource::Shared), 1 => Just(KvSource::Own)]
}

/// A random valid spec: 1–3 branches, at least one, a select only with its compress branch.
fn any_spec() -> impl Strategy<Value = Spec> {
    let heads = (prop::sample::select(vec![1u32, 2, 3, 4, 8, 16]), 1u32..=2);
    let dims = (1u32..=24, 1u32..=24);
    let cmp = (1u32..=12, 1u32..=12, pool(), kv());
    let sel = (1u32..=12, 0u32..=5, 0u32..=2, 0u32..=2, kv());
    let win = (0u32..=30, kv());
    let shape_of = (0u8..8, any::<bool>(), any::<bool>());
    (heads, dims, cmp, sel, win, shape_of).prop_map(
        |(
            (g, kvh),
            (dqk, dv),
            (l, d, p, ck),
            (sl, top, kf, kl, sk),
            (w, wk),
            (mask, causal, gate),
        )| {
            let mut branches: Vec<Branch> = Vec::new();
            let with_cmp = mask & 1 != 0 || mask & 2 != 0;
            if with_cmp {
                let mut c = compress("cmp", l, d.min(l), p);
                c.kv = ck;
                branches.push(c);
                if mask & 2 != 0 {
                    let mut s = select("slc", sl, top.max(1), "cmp", kf, kl);
                    s.kv = sk;
                    branches.push(s);
                }
            }
            if mask & 4 != 0 || branches.is_empty() {
                let mut wb = window("win", w.max(1));
                wb.kv = wk;
                branches.push(wb);
            }
            let dv = if dv == dqk { dv + 1 } else { dv };
            spec(
                "random",
                (g * kvh, kvh),
                (dqk, dv),
                causal,
                branches,
                if gate {
                    CombineMode::Gate
                } else {
                    CombineMode::Sum
                },
            )
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn random_specs_match_the_oracle(
        spec in any_spec(), problem in any_problem(45), variant in any_variant(), seed in 0u64..1000
    ) {
        run_case(&spec, &problem, variant, seed);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 100, failure_persistence: None, ..ProptestConfig::default() })]
    /// The DSL's own generator of valid specs (several branches of a kind, shuffled combine
    /// order, explicit scales).
    #[test]
    fn dsl_valid_specs_match_the_oracle(
        spec in nsac_dsl::arbitrary::valid_spec(), problem in any_problem(45), variant in any_variant(), seed in 0u64..1000
    ) {
        run_case(&spec, &problem, variant, seed);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    #[ignore = "long sweep; run with --ignored"]
    fn random_specs_match_the_oracle_long(
        spec in any_spec(), problem in any_problem(45), variant in any_variant(), seed in 0u64..100_000
    ) {
        run_case(&spec, &problem, variant, seed);
    }
}
