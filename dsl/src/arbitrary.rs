//! A proptest [`Strategy`] for random VALID specs with small sizes (feature `arbitrary`).
//!
//! Every generated spec obeys every validation rule (stride | block, stride | select block,
//! keep_first + keep_last ≤ top, q a multiple of kv, every branch combined exactly once), so
//! backends can sweep it against the oracle. Sizes: blocks 1..=8, top 1..=4, window 1..=12,
//! heads up to 4 × group 1..=3, head dims 1..=8.

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

/// A select block that the stride divides, plus top and keep counts that fit.
fn select_params(stride: u32) -> impl Strategy<Value = (u32, u32, u32, u32)> {
    (1u32..=(8 / stride).max(1), 1u32..=4)
        .prop_flat_map(move |(m, top)| (Just(stride * m), Just(top), 0..=top))
        .prop_flat_map(|(block, top, first)| {
            (Just(block), Just(top), Just(first), 0..=(top - first))
        })
}

/// One random valid spec.
pub fn valid_spec() -> impl Strategy<Value = Spec> {
    let heads = (1u32..=4, 1u32..=3).prop_map(|(kv, g)| Heads { q: kv * g, kv });
    let head_dim = (1u32..=8, 1u32..=8).prop_map(|(qk, v)| HeadDim { qk, v });
    let scale = prop_oneof![3 => Just(None), 1 => (1u32..=200).prop_map(|n| Some(Scale::new(f64::from(n) / 64.0)))];
    // Layout: an optional compress (with an optional select scored by it) and an optional
    // window; at least one branch.
    let layout = (any::<bool>(), any::<bool>(), any::<bool>())
        .prop_filter("at least one branch", |(c, _, w)| *c || *w);
    (
        heads,
        head_dim,
        any::<bool>(),
        scale,
        layout,
        compress(),
        kv_source(),
        kv_source(),
        kv_source(),
        1u32..=12,
        any::<bool>(),
        any::<u64>(),
    )
        .prop_flat_map(
            |(
                heads,
                head_dim,
                causal,
                scale,
                (has_c, has_s, has_w),
                c,
                kc,
                ks,
                kw,
                size,
                gate,
                order,
            )| {
                let sel = select_params(c.stride);
                (
                    Just((
                        heads,
                        head_dim,
                        causal,
                        scale,
                        has_c,
                        has_s && has_c,
                        has_w,
                        c,
                    )),
                    Just((kc, ks, kw, size, gate, order)),
                    sel,
                )
            },
        )
        .prop_map(
            |(
                (heads, head_dim, causal, scale, has_c, has_s, has_w, c),
                (kc, ks, kw, size, gate, order),
                (sb, top, first, last),
            )| {
                let mut branches = Vec::new();
                if has_c {
                    branches.push(Branch {
                        name: "cmp".to_string(),
                        kv: kc,
                        kind: BranchKind::Compress(c),
                    });
                }
                if has_s {
                    branches.push(Branch {
                        name: "slc".to_string(),
                        kv: ks,
                        kind: BranchKind::Select(Select {
                            block: sb,
                            top,
                            scored_by: "cmp".to_string(),
                            keep_first: first,
                            keep_last: last,
                        }),
                    });
                }
                if has_w {
                    branches.push(Branch {
                        name: "win".to_string(),
                        kv: kw,
                        kind: BranchKind::Window(Window { size }),
                    });
                }
                let mut names: Vec<String> = branches.iter().map(|b| b.name.clone()).collect();
                if !names.is_empty() {
                    let n = names.len();
                    names.rotate_left((order % n as u64) as usize);
                }
                Spec {
                    name: "random_spec".to_string(),
                    heads,
                    head_dim,
                    causal,
                    scale,
                    branches,
                    combine: Combine {
                        mode: if gate {
                            CombineMode::Gate
                        } else {
                            CombineMode::Sum
                        },
                        branches: names,
                    },
                }
            },
        )
}
