//! `CpuProgram::run_into`: borrowed inputs and lent output buffers give exactly what `run`
//! gives (and the oracle's answer), on buffers that held garbage before; lent buffers of the
//! wrong name, element type or length are refused before anything runs.

use std::collections::BTreeMap;

use nsac_compiler::cpu::{self, CpuError, CpuVariant, OutputRef, OutputRefs};
use nsac_compiler::ir::{Plan, Sizes};
use nsac_dsl::problem::Problem;
use nsac_kernels::io::{input_refs, random_inputs};
use nsac_kernels::reference;

fn spec(name: &str) -> nsac_dsl::Spec {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../kernels")
        .join(name);
    nsac_dsl::load(&path).expect("library spec loads")
}

#[test]
fn lent_outputs_match_run_and_the_oracle() {
    for (name, batch, len, seed) in [("nsa-paper.nsa", 2, 77, 1), ("nsa-fla.nsa", 1, 163, 2)] {
        let spec = spec(name);
        let shape = Problem::batched(batch, len).resolve(&spec).expect("shape");
        let plan = Plan::for_shape(&spec, &shape).expect("plan");
        let program = cpu::compile(&plan, &CpuVariant::default()).expect("compiles");
        let sizes = Sizes::of(&shape);
        let inputs = random_inputs(&spec, &shape, seed);
        let owned = program.run(&sizes, &inputs).expect("runs");

        // Lend `o` and one selection's indices, pre-filled with garbage; the rest is scratch.
        let mut o = vec![f32::NAN; owned.o.data.len()];
        let (sel, idx_ref) = owned.selected.iter().next().expect("a select branch");
        let mut idx = vec![12345i32; idx_ref.data.len()];
        let idx_name = format!("idx_{sel}");
        let mut lent: OutputRefs = BTreeMap::new();
        lent.insert("o", OutputRef::F32(&mut o));
        lent.insert(&idx_name, OutputRef::I32(&mut idx));
        program
            .run_into(&sizes, &input_refs(&inputs), &mut lent)
            .expect("runs in place");
        assert_eq!(o, owned.o.data, "{name}: lent o differs from run's");
        assert_eq!(idx, idx_ref.data, "{name}: lent indices differ from run's");

        let want = reference::forward(&spec, &shape, &inputs).expect("oracle");
        let got = nsac_kernels::io::Tensor {
            shape: owned.o.shape.clone(),
            data: o,
        };
        let err = reference::relative_error(&got, &want.o).expect("comparable");
        assert!(err <= 1e-5, "{name}: relative error {err:e}");
    }
}

#[test]
fn bad_lent_buffers_are_refused() {
    let spec = spec("nsa-fla.nsa");
    let shape = Problem::batched(1, 40).resolve(&spec).expect("shape");
    let plan = Plan::for_shape(&spec, &shape).expect("plan");
    let program = cpu::compile(&plan, &CpuVariant::default()).expect("compiles");
    let sizes = Sizes::of(&shape);
    let inputs = random_inputs(&spec, &shape, 3);
    let refs = input_refs(&inputs);
    let numel = sizes
        .numel(&plan, plan.tensor_named("o").expect("o"))
        .expect("numel");

    let mut short = vec![0.0f32; numel - 1];
    let mut lent: OutputRefs = BTreeMap::from([("o", OutputRef::F32(&mut short))]);
    let err = program.run_into(&sizes, &refs, &mut lent).unwrap_err();
    assert!(
        matches!(&err, CpuError::Output(m) if m.contains("holds")),
        "{err}"
    );

    let mut ints = vec![0i32; numel];
    let mut lent: OutputRefs = BTreeMap::from([("o", OutputRef::I32(&mut ints))]);
    let err = program.run_into(&sizes, &refs, &mut lent).unwrap_err();
    assert!(
        matches!(&err, CpuError::Output(m) if m.contains("i32")),
        "{err}"
    );

    let mut any = vec![0.0f32; numel];
    let mut lent: OutputRefs = BTreeMap::from([("q", OutputRef::F32(&mut any))]);
    let err = program.run_into(&sizes, &refs, &mut lent).unwrap_err();
    assert!(
        matches!(&err, CpuError::Output(m) if m.contains("not an output")),
        "{err}"
    );
    // Nothing was written into a refused buffer.
    assert!(any.iter().all(|&x| x == 0.0));
}
