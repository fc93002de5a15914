//! Snapshots of the verified Plan (`nsac compile --emit plan`) of every library spec and of the
//! extra specs the CPU tests use (own K/V, weighted and linear pools, non-causal), in bf16 (the
//! dtype names the input elements). The plan is the contract the backends read, so a change
//! here is a change of that contract; the text does not depend on the call's sizes.

mod cpu_common;

use cpu_common::library_labeled;
use nsac_compiler::ir::{Plan, Signature};
use nsac_dsl::problem::{DType, Problem};

#[test]
fn plans_of_library_specs() {
    for (label, spec) in library_labeled() {
        let sig = Signature {
            heads: spec.heads,
            head_dim: spec.head_dim,
            dtype: DType::Bf16,
        };
        let plan = Plan::forward(&spec, &sig).expect("lowers and verifies");
        insta::assert_snapshot!(format!("plan_{label}"), plan.text());
    }
}

#[test]
fn the_plan_text_is_the_same_for_every_length_and_packing() {
    for (label, spec) in library_labeled() {
        let text = |p: Problem| {
            let shape = p.resolve(&spec).expect("valid");
            Plan::for_shape(&spec, &shape).expect("lowers").text()
        };
        let base = text(Problem::batched(1, 1000));
        assert_eq!(base, text(Problem::batched(1, 4099)), "{label}");
        assert_eq!(base, text(Problem::batched(3, 77)), "{label}");
        assert_eq!(base, text(Problem::varlen(vec![0, 500, 1000])), "{label}");
    }
}

#[test]
fn backward_plans_of_library_specs() {
    for (label, spec) in library_labeled() {
        let sig = Signature {
            heads: spec.heads,
            head_dim: spec.head_dim,
            dtype: DType::Bf16,
        };
        let plan = Plan::backward(&spec, &sig).expect("lowers and verifies");
        insta::assert_snapshot!(format!("backward_plan_{label}"), plan.text());
    }
}
