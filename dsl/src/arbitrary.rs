//! A proptest [`Strategy`] for random VALID specs with small sizes (feature `arbitrary`).
//!
//! Every generated spec obeys every validation rule (stride ≤ block, stride | block, stride |
//! select block, keep_first + keep_last ≤ top, q a multiple of kv, every branch combined exactly
//! once), so backends can sweep it against the oracle. Shapes: an optional compress branch `cmp`
//! with up to two select branches `slc0`, `slc1` scored by it, and up to two windows `win0`,
//! `win1` (at least one branch in all), combined in a random order. Sizes: compress stride 1..=4
//! and block ≤ 8, select block ≤ 8, top 1..=4, window 1..=12, kv heads 1..=4 × group 1..=3,
//! head dims 1..=8, scale mostly default. These are NSA's own forms, which every backend
//! computes.
//!
//! [`selection_spec`] adds the selection forms beyond NSA's blocks (issue 12) that the oracle
//! defines and the backends refuse for now: an index branch `idx`, token-level selection
//! `tok` (block 1, scored by `idx` or `cmp` at any stride), a coarse select `crs` scored by
//! `cmp` or given, and a select `fin` within it (sometimes with `crs` left out of `combine`).

use proptest::prelude::*;

use crate::spec::{
    Branch, BranchKind, Combine, CombineMode, Compress, HeadDim, Heads, Index, KvSource, Pool,
    Scale, Scorer, Select, Spec, Window,
};

fn kv_source() -> impl Strategy<Value = KvSource> {
    prop_oneof![3 => Just(KvSource::Shared), 1 => Just(KvSource::Own)]
}

fn pool() -> impl Strategy<Value = Pool> {
    prop_oneof![3 => Just(Pool::Mean), 1 => Just(Pool::Weighted), 1 => Just(Pool::Linear)]
}

/// A compress branch: stride d in 1..=4, block l = d·m ≤ 8.
fn compress() -> impl Strategy<Value = Compress> {
    (1u32..=4)
        .prop_flat_map(|d| (Just(d), 1u32..=(8 / d), pool()))
        .prop_map(|(d, m, pool)| Compress {
            block: d * m,
            stride: d,
            pool,
        })
}

/// A select branch scored by `cmp` whose block the stride divides, with keep counts that fit.
fn select(stride: u32) -> impl Strategy<Value = Select> {
    (1u32..=(8 / stride).max(1), 1u32..=4)
        .prop_flat_map(move |(m, top)| (Just(stride * m), Just(top), 0..=top))
        .prop_flat_map(|(block, top, first)| {
            (Just(block), Just(top), Just(first), 0..=(top - first))
        })
        .prop_map(|(block, top, keep_first, keep_last)| Select {
            block,
            top,
            scored_by: Scorer::Branch("cmp".to_string()),
            keep_first,
            keep_last,
            within: None,
        })
}

fn branches() -> impl Strategy<Value = Vec<Branch>> {
    let compressed = prop::option::of((compress(), kv_source())).prop_flat_map(|c| {
        let selects = match c {
            Some((cmp, _)) => {
                prop::collection::vec((select(cmp.stride), kv_source()), 0..=2).boxed()
            }
            None => Just(Vec::new()).boxed(),
        };
        (Just(c), selects)
    });
    let windows = prop::collection::vec((1u32..=12, kv_source()), 0..=2);
    (compressed, windows)
        .prop_filter("at least one branch", |((c, _), w)| {
            c.is_some() || !w.is_empty()
        })
        .prop_map(|((c, selects), windows)| {
            let mut out = Vec::new();
            if let Some((cmp, kv)) = c {
                out.push(Branch {
                    name: "cmp".to_string(),
                    kv,
                    kind: BranchKind::Compress(cmp),
                });
            }
            for (i, (s, kv)) in selects.into_iter().enumerate() {
                out.push(Branch {
                    name: format!("slc{i}"),
                    kv,
                    kind: BranchKind::Select(s),
                });
            }
            for (i, (size, kv)) in windows.into_iter().enumerate() {
                out.push(Branch {
                    name: format!("win{i}"),
                    kv,
                    kind: BranchKind::Window(Window { size }),
                });
            }
            out
        })
}

/// One random valid spec.
pub fn valid_spec() -> impl Strategy<Value = Spec> {
    let heads = (1u32..=4, 1u32..=3).prop_map(|(kv, g)| Heads { q: kv * g, kv });
    let head_dim = (1u32..=8, 1u32..=8).prop_map(|(qk, v)| HeadDim { qk, v });
    let scale = prop_oneof![
        3 => Just(None),
        1 => (1u32..=200).prop_map(|n| Some(Scale::new(f64::from(n) / 64.0))),
    ];
    let mode = prop_oneof![Just(CombineMode::Gate), Just(CombineMode::Sum)];
    let with_order = branches().prop_flat_map(|bs| {
        let names: Vec<String> = bs.iter().map(|b| b.name.clone()).collect();
        (Just(bs), Just(names).prop_shuffle())
    });
    (heads, head_dim, any::<bool>(), scale, mode, with_order).prop_map(
        |(heads, head_dim, causal, scale, mode, (branches, order))| Spec {
            name: "random_spec".to_string(),
            heads,
            head_dim,
            causal,
            scale,
            branches,
            combine: Combine {
                mode,
                branches: order,
            },
        },
    )
}

/// A select branch's keep counts for `top`, derived from two raw draws.
fn keeps(top: u32, a: u32, b: u32) -> (u32, u32) {
    let first = a % (top + 1);
    (first, b % (top - first + 1))
}

/// One random valid spec using the selection forms beyond NSA's blocks (see the module
/// documentation), at the same small sizes as [`valid_spec`].
pub fn selection_spec() -> impl Strategy<Value = Spec> {
    let heads = (1u32..=4, 1u32..=3).prop_map(|(kv, g)| Heads { q: kv * g, kv });
    let head_dim = (1u32..=8, 1u32..=8).prop_map(|(qk, v)| HeadDim { qk, v });
    let mode = prop_oneof![Just(CombineMode::Gate), Just(CombineMode::Sum)];
    // Raw draws, turned into valid parameters below (each rule is met by construction).
    let draws = prop::collection::vec(0u32..1000, 16);
    let flags = prop::collection::vec(any::<bool>(), 8);
    (
        heads,
        head_dim,
        any::<bool>(),
        mode,
        compress(),
        draws,
        flags,
    )
        .prop_flat_map(|(heads, head_dim, causal, mode, cmp, r, f)| {
            let branches = selection_branches(cmp, &r, &f);
            let combined: Vec<String> = branches
                .iter()
                .filter(|(_, combined)| *combined)
                .map(|(b, _)| b.name.clone())
                .collect();
            let branches: Vec<Branch> = branches.into_iter().map(|(b, _)| b).collect();
            (
                Just((heads, head_dim, causal, mode, branches)),
                Just(combined).prop_shuffle(),
            )
        })
        .prop_map(|((heads, head_dim, causal, mode, branches), order)| Spec {
            name: "selection_spec".to_string(),
            heads,
            head_dim,
            causal,
            scale: None,
            branches,
            combine: Combine {
                mode,
                branches: order,
            },
        })
}

/// The branches of a [`selection_spec`], each with whether `combine` names it.
fn selection_branches(cmp: Compress, r: &[u32], f: &[bool]) -> Vec<(Branch, bool)> {
    let shared = |name: &str, kind| Branch {
        name: name.to_string(),
        kv: KvSource::Shared,
        kind,
    };
    let mut out = Vec::new();
    let mut uses_idx = false;
    let mut uses_cmp = false;
    // Token-level selection, scored by the indexer or the compress branch (any stride).
    if f[0] {
        let top = 1 + r[0] % 6;
        let (keep_first, keep_last) = keeps(top, r[1], r[2]);
        let by_idx = f[1];
        uses_idx |= by_idx;
        uses_cmp |= !by_idx;
        let select = Select {
            block: 1,
            top,
            scored_by: Scorer::Branch(if by_idx { "idx" } else { "cmp" }.to_string()),
            keep_first,
            keep_last,
            within: None,
        };
        let mut b = shared("tok", BranchKind::Select(select));
        if f[7] {
            b.kv = KvSource::Own;
        }
        out.push((b, true));
    }
    // A coarse select (scored by cmp, or given) and a fine one within it.
    if f[2] || !f[0] {
        let coarse_block = cmp.stride * (1 + r[3] % 4);
        let coarse_top = 1 + r[4] % 3;
        let given = f[3];
        let (keep_first, keep_last) = if given {
            (0, 0)
        } else {
            keeps(coarse_top, r[5], r[6])
        };
        uses_cmp |= !given;
        let coarse = Select {
            block: coarse_block,
            top: coarse_top,
            scored_by: if given {
                Scorer::Given
            } else {
                Scorer::Branch("cmp".to_string())
            },
            keep_first,
            keep_last,
            within: None,
        };
        let nested = f[4];
        // A coarse branch that only chooses for `fin` may be left out of `combine`.
        out.push((shared("crs", BranchKind::Select(coarse)), !nested || f[5]));
        if nested {
            // Fine blocks: a divisor of the coarse block that cmp's stride divides, or 1.
            let sizes: Vec<u32> = (1..=coarse_block)
                .filter(|&l| {
                    coarse_block.is_multiple_of(l) && (l == 1 || l.is_multiple_of(cmp.stride))
                })
                .collect();
            let block = sizes[r[7] as usize % sizes.len()];
            let candidates = coarse_top * (coarse_block / block);
            let top = 1 + r[8] % candidates.min(4);
            let (keep_first, keep_last) = keeps(top, r[9], r[10]);
            let by_idx = block == 1 && f[6];
            uses_idx |= by_idx;
            uses_cmp |= !by_idx;
            let fine = Select {
                block,
                top,
                scored_by: Scorer::Branch(if by_idx { "idx" } else { "cmp" }.to_string()),
                keep_first,
                keep_last,
                within: Some("crs".to_string()),
            };
            out.push((shared("fin", BranchKind::Select(fine)), true));
        }
    }
    if uses_idx {
        let idx = Index {
            heads: 1 + r[11] % 3,
            dim: 1 + r[12] % 4,
        };
        out.insert(0, (shared("idx", BranchKind::Index(idx)), false));
    }
    // The compress branch, combined or not (it must be combined: every attending branch is,
    // except a select that another is within).
    if uses_cmp || r[13].is_multiple_of(2) {
        out.insert(0, (shared("cmp", BranchKind::Compress(cmp)), true));
    }
    if r[14].is_multiple_of(2) {
        out.push((
            shared(
                "win",
                BranchKind::Window(Window {
                    size: 1 + r[15] % 12,
                }),
            ),
            true,
        ));
    }
    out
}
