//! A proptest [`Strategy`] for random VALID specs with small sizes (feature `arbitrary`).
//!
//! Every generated spec obeys every validation rule (stride ≤ block, stride | block, stride |
//! select block, keep_first + keep_last ≤ top, q a multiple of kv, every branch combined exactly
//! once), so backends can sweep it against the oracle. Shapes: an optional compress branch `cmp`
//! with up to two select branches `slc0`, `slc1` scored by it, and up to two windows `win0`,
//! `win1` (at least one branch in all), combined in a random order. Sizes: compress stride 1..=4
//! and block ≤ 8, select block ≤ 8, top 1..=4, window 1..=12, kv heads 1..=4 × group 1..=3,
//! head dims 1..=8, scale mostly default.

use proptest::prelude::*;

use crate::spec::{
    Branch, BranchKind, Combine, CombineMode, Compress, HeadDim, Heads, KvSource, Pool, Scale,
    Select, Spec, Window,
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
            scored_by: "cmp".to_string(),
            keep_first,
            keep_last,
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
