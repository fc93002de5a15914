//! The closed forms of [`super::keys`] against brute-force counting over keys and blocks, for
//! random specs and short odd lengths, and the report's sums against brute-force sums.

use nsac_dsl::problem::Problem;
use nsac_dsl::spec::{
    Branch, BranchKind, Combine, CombineMode, Compress, HeadDim, Heads, KvSource, Pool, Select,
    Spec, Window,
};
use nsac_kernels::reference::{compress, pool, score, select, window};
use proptest::prelude::*;

use super::{estimate, keys};

// The brute force is the oracle's own rules (kernels::reference), applied key by key and
// block by block, so the cost model counts exactly what the contract computes.

/// Compressed tokens visible to t, by listing them.
fn brute_compress(c: &Compress, t: u64, len: u64, causal: bool) -> u64 {
    let len = len as usize;
    (0..pool::token_count(len, c))
        .filter(|&j| compress::visible(c, causal, j, t as usize))
        .count() as u64
}

/// Keys of the blocks the oracle chooses when every block scores its own size: forced blocks
/// first, then bigger blocks, then lower index — the model's documented upper bound.
fn brute_select(s: &Select, t: u64, len: u64, causal: bool) -> u64 {
    let (t, len, lb) = (t as usize, len as usize, s.block as usize);
    let scores: Vec<f64> = (0..score::block_count(len, s))
        .map(|i| {
            let keys = (i * lb..((i + 1) * lb).min(len)).filter(|&k| !causal || k <= t);
            keys.count() as f64
        })
        .collect();
    let chosen = score::choose(&scores, s, causal, t, len);
    select::keys(s, causal, &chosen, t, len).len() as u64
}

fn brute_window(w: &Window, t: u64, len: u64, causal: bool) -> u64 {
    window::keys(w, causal, t as usize, len as usize).len() as u64
}

proptest! {
    #[test]
    fn compress_matches_brute_force(
        l in 1u32..12, d in 1u32..12, len in 1u64..70, causal: bool,
    ) {
        let c = Compress { block: l, stride: d, pool: Pool::Mean };
        for t in 0..len {
            prop_assert_eq!(keys::compress_keys(&c, t, len, causal), brute_compress(&c, t, len, causal));
        }
    }

    #[test]
    fn select_matches_brute_force(
        lb in 1u32..9, top in 0u32..8, first in 0u32..4, last in 0u32..4,
        len in 1u64..70, causal: bool,
    ) {
        let s = Select { block: lb, top, scored_by: nsac_dsl::spec::Scorer::Branch("c".into()), keep_first: first, keep_last: last, within: None };
        for t in 0..len {
            prop_assert_eq!(
                keys::select_keys(&s, t, len, causal),
                brute_select(&s, t, len, causal),
                "t={}", t
            );
        }
    }

    #[test]
    fn window_matches_brute_force(w in 0u32..20, len in 1u64..70, causal: bool) {
        let win = Window { size: w };
        for t in 0..len {
            prop_assert_eq!(keys::window_keys(&win, t, len, causal), brute_window(&win, t, len, causal));
        }
    }

    #[test]
    fn overlaps_match_brute_force(l in 1u32..12, d in 1u32..12, lb in 1u32..12, j in 0u64..20) {
        let c = Compress { block: l, stride: d, pool: Pool::Mean };
        let start = j * u64::from(d);
        let (lo, hi) = (start, start + u64::from(l));
        let brute = (0..hi.div_ceil(u64::from(lb)) + 1)
            .filter(|i| {
                let (blo, bhi) = (i * u64::from(lb), (i + 1) * u64::from(lb));
                blo < hi && lo < bhi
            })
            .count() as u64;
        prop_assert_eq!(keys::overlapped_blocks(&c, lb, j), brute);
    }
}

fn brute_keys(kind: &BranchKind, t: u64, len: u64, causal: bool) -> u64 {
    match kind {
        BranchKind::Compress(c) => brute_compress(c, t, len, causal),
        BranchKind::Select(s) => brute_select(s, t, len, causal),
        BranchKind::Window(w) => brute_window(w, t, len, causal),
        BranchKind::Index(_) => 0,
    }
}

fn random_spec(l: u32, d: u32, lb: u32, top: u32, w: u32, causal: bool) -> Spec {
    let branch = |name: &str, kind| Branch {
        name: name.into(),
        kv: KvSource::Shared,
        kind,
    };
    let branches = vec![
        branch(
            "c",
            BranchKind::Compress(Compress {
                block: l,
                stride: d,
                pool: Pool::Weighted,
            }),
        ),
        branch(
            "s",
            BranchKind::Select(Select {
                block: lb,
                top,
                scored_by: nsac_dsl::spec::Scorer::Branch("c".into()),
                keep_first: 1,
                keep_last: 1,
                within: None,
            }),
        ),
        branch("w", BranchKind::Window(Window { size: w })),
    ];
    Spec {
        name: "r".into(),
        heads: Heads { q: 6, kv: 2 },
        head_dim: HeadDim { qk: 5, v: 3 },
        causal,
        scale: None,
        combine: Combine {
            mode: CombineMode::Sum,
            branches: vec!["c".into(), "s".into(), "w".into()],
        },
        branches,
    }
}

proptest! {
    #[test]
    fn report_totals_match_brute_force_over_positions(
        l in 1u32..10, d in 1u32..10, lb in 1u32..10, top in 0u32..6, w in 0u32..20,
        causal: bool, lens in proptest::collection::vec(1usize..40, 1..4),
    ) {
        let spec = random_spec(l, d, lb, top, w, causal);
        let mut cu = vec![0];
        for len in &lens {
            cu.push(cu.last().copied().unwrap_or(0) + len);
        }
        let shape = Problem::varlen(cu).resolve(&spec).unwrap();
        let report = estimate(&spec, &shape).unwrap();
        let total: usize = lens.iter().sum();
        let longest = lens.iter().copied().max().unwrap_or(0) as u64;
        for (br, cost) in spec.branches.iter().zip(&report.branches) {
            let sum: u64 = lens
                .iter()
                .map(|&len| (0..len as u64).map(|t| brute_keys(&br.kind, t, len as u64, causal)).sum::<u64>())
                .sum();
            prop_assert!((cost.keys_mean - sum as f64 / total as f64).abs() < 1e-9);
            prop_assert_eq!(cost.keys_last, brute_keys(&br.kind, longest - 1, longest, causal));
            prop_assert_eq!(cost.flops.attention, 2.0 * 8.0 * sum as f64 * 6.0);
        }
    }
}

// The closed-form segment sums of `sums` against the per-position sums they replace (the
// model's numbers before sums existed), on random small shapes — strides that do not divide
// the blocks, `keep_*` over `top`, windows longer than the segment included.

/// The per-position sum of the keys a branch attends, as the model counted it.
fn per_position_keys(kind: &BranchKind, len: u64, causal: bool) -> u128 {
    (0..len)
        .map(|t| u128::from(keys::branch_keys(kind, t, len, causal)))
        .sum()
}

/// The per-position sum of scored (token, block) pairs, as the model counted it.
fn per_position_score_units(c: &Compress, lb: u32, len: u64, causal: bool) -> u128 {
    let n = keys::compressed_tokens(c, len);
    let mut prefix = vec![0u128];
    for j in 0..n {
        let last = prefix[prefix.len() - 1];
        prefix.push(last + u128::from(keys::overlapped_blocks(c, lb, j)));
    }
    (0..len)
        .map(|t| prefix[keys::compress_keys(c, t, len, causal) as usize])
        .sum()
}

proptest! {
    #[test]
    fn segment_sums_equal_per_position_sums(
        l in 1u32..14, d in 1u32..14, lb in 1u32..14, top in 0u32..9, first in 0u32..5,
        last in 0u32..5, w in 0u32..90, len in 1u64..160, causal: bool,
    ) {
        let c = Compress { block: l, stride: d, pool: Pool::Mean };
        let s = Select { block: lb, top, scored_by: nsac_dsl::spec::Scorer::Branch("c".into()), keep_first: first, keep_last: last, within: None };
        for kind in [
            BranchKind::Compress(c),
            BranchKind::Select(s),
            BranchKind::Window(Window { size: w }),
        ] {
            prop_assert_eq!(
                super::segment_keys(&kind, len, causal).unwrap(),
                per_position_keys(&kind, len, causal),
                "{:?}", kind
            );
        }
        prop_assert_eq!(
            super::segment_score_units(&c, lb, len, causal).unwrap(),
            per_position_score_units(&c, lb, len, causal)
        );
    }

    #[test]
    fn floor_sums_equal_brute_force(a in 0u128..40, b in 0u128..40, c in 1u128..40, n in 0u128..60) {
        let got = super::sums::floor_sums(a, b, c, n).unwrap();
        let terms = (0..=n).map(|i| (i, (a * i + b) / c));
        prop_assert_eq!(got.f, terms.clone().map(|(_, q)| q).sum::<u128>());
        prop_assert_eq!(got.g, terms.clone().map(|(i, q)| i * q).sum::<u128>());
        prop_assert_eq!(got.h, terms.map(|(_, q)| q * q).sum::<u128>());
    }
}

#[test]
fn cost_of_a_trillion_tokens_is_immediate_and_exact_in_its_structure() {
    // nsa-paper-like: every sum at T = 10^12 comes from the closed forms (a per-position loop
    // would not finish); the window's keys follow min(w, t + 1) exactly.
    let spec = random_spec(32, 16, 64, 16, 512, true);
    let len = 1_000_000_000_000usize;
    let shape = Problem::batched(1, len).resolve(&spec).unwrap();
    let report = estimate(&spec, &shape).unwrap();
    let n = len as f64;
    let window_keys = 512.0 * 513.0 / 2.0 + (n - 512.0) * 512.0;
    assert!((report.branches[2].keys_mean - window_keys / n).abs() < 1e-9);
    assert_eq!(report.branches[2].keys_last, 512);
    // 16 blocks of 64, the own (forced, on average half-filled) one included: 15·64 + 32.5.
    assert!((report.branches[1].keys_mean - 992.5).abs() < 1e-6);
    // Non-causal at the same length: the symmetric window sees 2w − 1 keys away from the ends.
    let spec = random_spec(32, 16, 64, 16, 512, false);
    let report = estimate(&spec, &shape).unwrap();
    assert!((report.branches[2].keys_mean - 1023.0).abs() < 1e-3);
}
