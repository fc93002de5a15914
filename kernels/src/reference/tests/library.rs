//! Every ready spec of the library (`kernels/*.nsa`, `*.yaml`) and every random valid spec of
//! the DSL runs in the oracle: no error, finite outputs, `o` = Σ g_b·o_b.

use std::path::PathBuf;

use nsac_dsl::problem::{Problem, Shape};
use nsac_dsl::spec::{CombineMode, HeadDim, Heads, Spec};
use proptest::prelude::*;

use super::support::*;
use crate::io::Inputs;
use crate::reference::{Output, forward};

/// Checks finiteness and the combine rule of one forward result.
fn check_output(spec: &Spec, inputs: &Inputs, out: &Output) {
    assert!(out.o.data.iter().all(|x| x.is_finite()));
    let dv = out.o.shape[3];
    for (i, &o) in out.o.data.iter().enumerate() {
        let sum: f64 = spec
            .combine
            .branches
            .iter()
            .map(|b| {
                let g = match spec.combine.mode {
                    CombineMode::Gate => f64::from(inputs[&format!("g_{b}")].data[i / dv]),
                    CombineMode::Sum => 1.0,
                };
                g * out.branches[b].data[i]
            })
            .sum();
        assert_close(o, sum, 1e-12);
    }
}

/// Every spec file of the library, parsed, in path order.
pub(in crate::reference) fn library_specs() -> Vec<(PathBuf, Spec)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut specs = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if ["nsa", "yaml", "yml"].contains(&ext) {
            let spec =
                nsac_dsl::load(&path).unwrap_or_else(|e| panic!("{}: {e:?}", path.display()));
            specs.push((path, spec));
        }
    }
    specs.sort_by(|a, b| a.0.cmp(&b.0));
    specs
}

/// [`library_specs`] in NSA's own forms: those the backward and decode oracles define (the
/// selection forms beyond NSA's blocks are forward-only so far).
pub(in crate::reference) fn nsa_library_specs() -> Vec<(PathBuf, Spec)> {
    let mut specs = library_specs();
    specs.retain(|(_, s)| s.beyond_blocks().is_none());
    specs
}

#[test]
fn every_library_spec_runs_on_small_problems() {
    let specs = library_specs();
    assert!(!specs.is_empty(), "no specs found next to Cargo.toml");
    for (path, spec) in specs {
        // Keep the spec's group size G but shrink heads and dims so the test stays fast; 77
        // tokens still hold several blocks of every library spec.
        let group = spec.heads.group();
        let small = |sequences: Problem| -> Shape {
            Problem {
                heads: Some(Heads { q: group, kv: 1 }),
                head_dim: Some(HeadDim { qk: 8, v: 4 }),
                ..sequences
            }
            .resolve(&spec)
            .unwrap()
        };
        for (seed, shape) in [
            (1, small(Problem::batched(1, 77))),
            (2, small(Problem::varlen(vec![0, 29, 77]))),
        ] {
            let inputs = random(&spec, &shape, seed);
            let out = forward(&spec, &shape, &inputs)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            check_output(&spec, &inputs, &out);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn every_valid_spec_runs(
        spec in nsac_dsl::arbitrary::valid_spec(),
        batch in 1usize..3,
        len in 1usize..30,
        seed in any::<u64>(),
    ) {
        let shape = batched(&spec, batch, len);
        let inputs = random(&spec, &shape, seed);
        let out = forward(&spec, &shape, &inputs);
        prop_assert!(out.is_ok(), "{:?}", out.err());
        if let Ok(out) = out {
            check_output(&spec, &inputs, &out);
        }
    }
}
