//! The IR's positional rules (`nsac_compiler::ir::rules`, the one copy every lowering, cost
//! model and executor uses) against the oracle's independent implementation
//! (`nsac_kernels::reference`), on random block sizes, strides, lengths and queries.

use nsac_compiler::ir::rules;
use nsac_dsl::spec::{Compress, Pool, Select, Window};
use nsac_kernels::reference::{compress, pool, score, select, window};
use proptest::prelude::*;

fn compress_of(block: usize, stride: usize) -> Compress {
    Compress {
        block: block as u32,
        stride: stride as u32,
        pool: Pool::Mean,
    }
}

fn select_of(block: usize, top: usize, first: usize, last: usize) -> Select {
    Select {
        block: block as u32,
        top: top as u32,
        scored_by: nsac_dsl::spec::Scorer::Branch("cmp".into()),
        keep_first: first as u32,
        keep_last: last as u32,
        within: None,
    }
}

/// (len, t < len)
fn position() -> impl Strategy<Value = (usize, usize)> {
    (1usize..300).prop_flat_map(|len| (Just(len), 0..len))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn compressed_tokens_and_visibility(
        (len, t) in position(),
        block in 1usize..40,
        stride_frac in 1usize..40,
        causal: bool,
    ) {
        let stride = stride_frac.min(block);
        let c = compress_of(block, stride);
        let n = rules::compressed_tokens(len, block, stride);
        prop_assert_eq!(n, pool::token_count(len, &c));
        let seen: Vec<bool> = (0..n).map(|j| compress::visible(&c, causal, j, t)).collect();
        let count = rules::visible_compressed(t, len, block, stride, causal);
        // the visible tokens are exactly the first `count`
        prop_assert!(seen.iter().take(count).all(|&v| v));
        prop_assert!(seen.iter().skip(count).all(|&v| !v));
    }

    #[test]
    fn candidates_forced_blocks_and_their_keys(
        (len, t) in position(),
        block in 1usize..40,
        first in 0usize..4,
        last in 0usize..4,
        causal: bool,
    ) {
        let s = select_of(block, 4, first, last);
        let nb = rules::block_count(len, block);
        prop_assert_eq!(nb, score::block_count(len, &s));
        let cand = rules::candidate_blocks(t, len, block, causal);
        for i in 0..nb {
            prop_assert_eq!(i < cand, score::is_candidate(&s, causal, i, t, len), "block {}", i);
            prop_assert_eq!(
                rules::is_forced(i, t, block, first, last),
                score::is_forced(&s, i, t),
                "block {}", i
            );
            let keys: Vec<usize> = rules::block_keys(i, block, t, len, causal).collect();
            prop_assert_eq!(keys, select::keys(&s, causal, &[i], t, len), "block {}", i);
        }
        let [a, b] = rules::forced_blocks(t, block, first, last, cand);
        for i in 0..cand {
            let listed = a.contains(&i) || b.contains(&i);
            prop_assert_eq!(listed, score::is_forced(&s, i, t), "block {}", i);
        }
    }

    #[test]
    fn window_keys(
        (len, t) in position(),
        size in 0usize..50,
        causal: bool,
    ) {
        let w = Window { size: size as u32 };
        let ours = rules::window_keys(t, len, size, causal);
        let theirs = window::keys(&w, causal, t, len);
        // an empty window may be written as any empty range
        if theirs.is_empty() {
            prop_assert!(ours.is_empty());
        } else {
            prop_assert_eq!(ours, theirs);
        }
        prop_assert_eq!(rules::causal_keys(t, len, causal).end, if causal { t + 1 } else { len });
    }

    #[test]
    fn overlaps_are_the_shared_keys(
        j in 0usize..50,
        block in 1usize..40,
        stride_frac in 1usize..40,
        select_block in 1usize..70,
    ) {
        let stride = stride_frac.min(block);
        let keys = j * stride..j * stride + block;
        let blocks = rules::overlapped_blocks(j, block, stride, select_block);
        for i in 0..(keys.end / select_block + 2) {
            let shared = keys.clone().filter(|k| k / select_block == i).count();
            prop_assert_eq!(rules::overlap(j, i, block, stride, select_block), shared);
            prop_assert_eq!(blocks.contains(&i), shared > 0, "block {}", i);
        }
    }

    #[test]
    fn the_tie_rule_picks_what_the_oracle_picks(
        (len, t) in position(),
        block in 1usize..16,
        top in 1usize..8,
        first in 0usize..3,
        last in 0usize..3,
        causal: bool,
        raw in prop::collection::vec(0u8..4, 300),
    ) {
        let s = select_of(block, top, first, last);
        let nb = rules::block_count(len, block);
        // few distinct values: many exact ties
        let scores: Vec<f64> = raw[..nb].iter().map(|&x| f64::from(x) * 0.25).collect();
        let cand = rules::candidate_blocks(t, len, block, causal);
        let mut ranked: Vec<(f64, usize)> = (0..cand)
            .map(|i| {
                let forced = rules::is_forced(i, t, block, first, last);
                (if forced { f64::INFINITY } else { scores[i] }, i)
            })
            .collect();
        // insertion sort by `ranks_before` alone
        for a in 1..ranked.len() {
            let mut b = a;
            while b > 0 && rules::ranks_before(ranked[b].0, ranked[b].1, ranked[b - 1].0, ranked[b - 1].1) {
                ranked.swap(b, b - 1);
                b -= 1;
            }
        }
        let mut ours: Vec<usize> = ranked.into_iter().take(top).map(|(_, i)| i).collect();
        ours.sort_unstable();
        prop_assert_eq!(ours, score::choose(&scores, &s, causal, t, len));
    }
}
