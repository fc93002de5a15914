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

/// The library specs of the selection forms the plan lowers (issue 12): `nsa-hier.nsa`.
#[test]
fn plans_of_selection_specs() {
    for file in ["nsa-hier.nsa"] {
        let spec = cpu_common::library_file(file);
        let sig = Signature {
            heads: spec.heads,
            head_dim: spec.head_dim,
            dtype: DType::Bf16,
        };
        let plan = Plan::forward(&spec, &sig).expect("lowers and verifies");
        insta::assert_snapshot!(
            format!("plan_{}", file.replace(['.', '-'], "_")),
            plan.text()
        );
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

/// Every selection form the backends do not compute yet is refused by the lowering with a
/// typed error naming the branch and the form — never a panic, never a plan that would compute
/// something else. The two new library specs and one small spec per other form.
#[test]
fn selection_forms_beyond_nsa_blocks_are_refused_by_name() {
    use nsac_compiler::ir::LowerError;
    use nsac_dsl::spec::SelectionForm;
    let lib = cpu_common::library_file;
    let text = |body: &str| {
        nsac_dsl::parse_text(&format!(
            "attention t {{ heads = 4 / 2\n head_dim = 16 / 16\n causal = true\n{body}\n}}"
        ))
        .expect("valid spec")
    };
    let cases = [(lib("dsa-indexer.nsa"), SelectionForm::Indexer)];
    // Lowered by now (the CPU backend computes them): given indices.
    let lowered = [
        (
            text("select slc { block = 8, top = 2, given = true }\n combine = gate(slc)"),
            "slc",
            SelectionForm::Given,
        ),
        (lib("nsa-hier.nsa"), "fine", SelectionForm::Within),
    ];
    for (spec, name, want) in &lowered {
        let sig = Signature {
            heads: spec.heads,
            head_dim: spec.head_dim,
            dtype: DType::F32,
        };
        let plan = Plan::forward(spec, &sig).expect("lowers");
        let forms: Vec<_> = plan.selection_forms().into_iter().map(|(_, f)| f).collect();
        assert_eq!(forms, vec![*want], "{}", plan.text());
        // The PTX backend refuses it by branch and form.
        match nsac_compiler::ptx::emit_module(
            &plan,
            &nsac_compiler::ptx::GpuVariant::default(),
            nsac_compiler::ptx::Arch::Sm80,
        ) {
            Err(nsac_compiler::ptx::PtxError::Form { branch, form }) => {
                assert_eq!((branch.as_str(), form), (*name, *want));
            }
            other => panic!("PTX of {want:?}: {:?}", other.map(|_| ())),
        }
        // The training pair is not defined for it (the oracle's forward only).
        match Plan::backward(spec, &sig) {
            Err(LowerError::ForwardOnly { branch, form, pass }) => {
                assert_eq!(pass, "backward");
                assert!(spec.branch(&branch).is_some(), "{branch} {form:?}");
            }
            other => panic!("backward of {want:?}: {other:?}"),
        }
    }
    for (spec, want) in cases {
        let sig = Signature {
            heads: spec.heads,
            head_dim: spec.head_dim,
            dtype: DType::F32,
        };
        match Plan::forward(&spec, &sig) {
            Err(LowerError::Unsupported { form, branch }) => {
                assert_eq!(form, want, "{}: branch {branch}", spec.name);
                assert!(spec.branch(&branch).is_some(), "{branch}");
            }
            other => panic!("{}: {want:?} lowered to {other:?}", spec.name),
        }
    }
}
