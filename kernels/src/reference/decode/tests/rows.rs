//! Decode == forward rows for every library spec (at small heads and dims) and for random
//! valid specs of the DSL made causal, on random inputs, several seeds and schedules.

use nsac_dsl::problem::{Problem, Shape};
use nsac_dsl::spec::{HeadDim, Heads, Spec};
use proptest::prelude::*;

use super::harness::{Schedule, check_decode, check_ragged};
use crate::reference::tests::library::nsa_library_specs as library_specs;
use crate::reference::tests::support::random;

/// `spec` on `sequences` with 4/2 heads (GQA, group 2) and head dims 8/4.
fn small(spec: &Spec, sequences: Problem) -> Shape {
    Problem {
        heads: Some(Heads { q: 4, kv: 2 }),
        head_dim: Some(HeadDim { qk: 8, v: 4 }),
        ..sequences
    }
    .resolve(spec)
    .unwrap()
}

#[test]
fn every_library_spec_decodes_to_the_forward_rows() {
    let specs = library_specs();
    assert!(!specs.is_empty());
    for (path, spec) in specs {
        let name = path.display();
        // Two sequences of 29 and 48 tokens: shorter than most blocks, then a few of each.
        let shape = small(&spec, Problem::varlen(vec![0, 29, 77]));
        for seed in 0..2 {
            let inputs = random(&spec, &shape, seed);
            // From an empty cache step by step; from a context with chunks; one chunk.
            let schedules = [
                Schedule::steps_after(0),
                Schedule {
                    context: 13,
                    chunks: vec![1, 7, 20],
                },
                Schedule {
                    context: 0,
                    chunks: vec![77],
                },
            ];
            for schedule in &schedules {
                let n = check_decode(&spec, &shape, &inputs, |_| schedule.clone());
                assert!(n > 0, "{name}: nothing compared");
            }
            let n = check_ragged(&spec, &shape, &inputs, &[3, 40]);
            assert_eq!(n, 26 + 8, "{name}");
        }
    }
}

/// 1100 tokens hold 18 selection blocks of 64: more than the 16 the paper's and fla's specs
/// choose, so their top-k really chooses; the last 100 queries are decoded.
#[test]
fn library_selection_specs_choose_the_forward_blocks_at_long_contexts() {
    for (path, spec) in library_specs() {
        let chooses = spec.branches.iter().any(|b| {
            b.as_select()
                .is_some_and(|s| 1100usize.div_ceil(s.block as usize) > s.top as usize)
        });
        if !chooses {
            continue;
        }
        let shape = small(&spec, Problem::batched(1, 1100));
        let inputs = random(&spec, &shape, 3);
        let schedule = Schedule {
            context: 1000,
            chunks: vec![37],
        };
        let n = check_decode(&spec, &shape, &inputs, |_| schedule.clone());
        assert_eq!(n, 100, "{}", path.display());
    }
}

prop_compose! {
    /// A random valid spec made causal, a batched shape, and per sequence a schedule.
    fn any_case()(
        spec in nsac_dsl::arbitrary::valid_spec(),
        batch in 1usize..3,
        len in 1usize..40,
        seed in any::<u64>(),
        contexts in proptest::collection::vec(0usize..45, 2),
        chunks in proptest::collection::vec(0usize..9, 0..4),
    ) -> (Spec, usize, usize, u64, Vec<usize>, Vec<usize>) {
        let mut spec = spec;
        spec.causal = true;
        (spec, batch, len, seed, contexts, chunks)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn random_specs_decode_to_the_forward_rows(case in any_case()) {
        let (spec, batch, len, seed, contexts, chunks) = case;
        let shape = Problem::batched(batch, len).resolve(&spec).unwrap();
        let inputs = random(&spec, &shape, seed);
        let n = check_decode(&spec, &shape, &inputs, |i| Schedule {
            context: contexts[i % 2],
            chunks: chunks.clone(),
        });
        let answered: usize = (0..batch).map(|i| len - contexts[i % 2].min(len)).sum();
        prop_assert_eq!(n, answered);
    }

    #[test]
    fn random_specs_decode_ragged_batches(
        case in any_case(),
        lengths in proptest::collection::vec(1usize..25, 1..4),
    ) {
        let (spec, _, _, seed, contexts, _) = case;
        let mut cu = vec![0];
        for l in &lengths {
            cu.push(cu[cu.len() - 1] + l);
        }
        let shape = Problem::varlen(cu).resolve(&spec).unwrap();
        let inputs = random(&spec, &shape, seed);
        let ctx: Vec<usize> = lengths.iter().enumerate().map(|(i, &l)| contexts[i % 2].min(l)).collect();
        let n = check_ragged(&spec, &shape, &inputs, &ctx);
        prop_assert_eq!(n, lengths.iter().zip(&ctx).map(|(l, c)| l - c).sum::<usize>());
    }
}
