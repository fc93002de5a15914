//! Hand-computed cases of the selection forms beyond NSA's blocks (issue 12): the indexer
//! score, the tie rule among narrowed candidates, `within`, and given blocks agreeing with the
//! same blocks forced on an NSA-form select.

use std::collections::BTreeMap;

use nsac_dsl::spec::{Branch, BranchKind, CombineMode, KvSource, Pool, Scorer, Select};

use super::support::{batched, compress, select, spec, window};
use crate::io::{Tensor, random_inputs};
use crate::reference::choose::is_within;
use crate::reference::index::index_score;
use crate::reference::score::choose_among;
use crate::reference::{forward, forward_with_blocks};

#[test]
fn index_score_is_the_weighted_relu_sum() {
    // Hi = 2, Di = 2. Head 0: q·k = 1·3 + 2·1 = 5 → 0.5·5 = 2.5.
    // Head 1: q·k = −1·3 + 0·1 = −3 → ReLU 0 → 2·0 = 0. I = 2.5.
    assert_eq!(
        index_score(&[1.0, 2.0, -1.0, 0.0], &[0.5, 2.0], &[3.0, 1.0]),
        2.5
    );
    // A negative weight on a positive dot: 1·(1·1) + (−1)·(2·1) = −1.
    assert_eq!(index_score(&[1.0, 2.0], &[1.0, -1.0], &[1.0]), -1.0);
}

#[test]
fn ties_go_to_the_lower_index_among_the_candidates_left() {
    let s = Select::scored(1, 2, "idx");
    // Scores 1, 3, 3, 0.5: the two 3s tie, both taken: [1, 2].
    assert_eq!(
        choose_among(&[1.0, 3.0, 3.0, 0.5], &s, 3, |_| true),
        vec![1, 2]
    );
    // Without token 1 the 3 at 2 goes first, then the 1 at 0: [0, 2].
    assert_eq!(
        choose_among(&[1.0, 3.0, 3.0, 0.5], &s, 3, |i| i != 1),
        vec![0, 2]
    );
    // keep_last = 1 at t = 3 forces token 3 (score 0.5) ahead of both 3s; the tie then goes
    // to token 1: [1, 3].
    let forced = Select {
        keep_last: 1,
        ..s.clone()
    };
    assert_eq!(
        choose_among(&[1.0, 3.0, 3.0, 0.5], &forced, 3, |_| true),
        vec![1, 3]
    );
}

#[test]
fn within_keeps_the_fine_blocks_inside_the_coarse_choice() {
    let fine = Select::scored(2, 2, "c");
    let coarse = Select::scored(4, 1, "c");
    // Coarse block 1 covers keys 4..8 = fine blocks 2 and 3.
    let inside: Vec<usize> = (0..6)
        .filter(|&i| is_within(&fine, &coarse, &[1], i))
        .collect();
    assert_eq!(inside, vec![2, 3]);
}

/// A select branch `s` with given blocks computes what an NSA-form select computes when the
/// same blocks are forced on it (`forward_with_blocks`), on random inputs at odd lengths.
#[test]
fn given_blocks_equal_forced_blocks() {
    for (seed, len) in [(1u64, 13usize), (2, 29), (3, 7)] {
        let given_sel = Branch {
            name: "s".into(),
            kv: KvSource::Shared,
            kind: BranchKind::Select(Select {
                block: 3,
                top: 2,
                scored_by: Scorer::Given,
                keep_first: 0,
                keep_last: 0,
                within: None,
            }),
        };
        let given = spec(
            true,
            (4, 2),
            (5, 3),
            vec![given_sel, window("w", 4)],
            CombineMode::Gate,
        );
        let nsa = spec(
            true,
            (4, 2),
            (5, 3),
            vec![
                compress("c", 3, 3, Pool::Mean),
                select("s", 3, 2, "c", 0, 0),
                window("w", 4),
            ],
            CombineMode::Gate,
        );
        let shape = batched(&given, 2, len);
        let inputs = random_inputs(&given, &shape, seed);
        let out = forward(&given, &shape, &inputs).unwrap();
        // The same q, k, v, gates for the NSA spec (plus its compress gate, unused here).
        let mut nsa_inputs = random_inputs(&nsa, &shape, seed + 100);
        for name in ["q", "k", "v", "g_s", "g_w"] {
            nsa_inputs.insert(name.into(), inputs[name].clone());
        }
        let blocks: BTreeMap<String, Tensor<i32>> =
            [("s".to_string(), out.selected["s"].clone())].into();
        let forced = forward_with_blocks(&nsa, &shape, &nsa_inputs, &blocks).unwrap();
        assert_eq!(out.branches["s"], forced.branches["s"], "seed {seed}");
        // The given rows come back ascending, −1 padded, as the input listed them.
        let idx = &inputs["idx_s"];
        let listed: Vec<i32> = idx.data.iter().map(|&x| x as i32).collect();
        assert_eq!(out.selected["s"].data, listed);
        assert!(out.branches["s"].data.iter().any(|&x| x != 0.0));
    }
}
