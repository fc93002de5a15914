//! The IR's own tests: library specs lower to verified plans, the verifier rejects hand-broken
//! plans, sizes bind the symbolic extents, and plans do not depend on the call's sizes.

use nsac_dsl::problem::{DType, Problem};
use nsac_dsl::spec::{HeadDim, Heads};

use super::*;

fn library(name: &str) -> nsac_dsl::Spec {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../kernels")
        .join(name);
    nsac_dsl::load(&path).expect("library spec loads")
}

const LIBRARY: [&str; 5] = [
    "nsa-paper.nsa",
    "nsa-paper.yaml",
    "nsa-fla.nsa",
    "sliding-window.nsa",
    "compress-only.nsa",
];

fn sig(spec: &nsac_dsl::Spec) -> Signature {
    Signature {
        heads: spec.heads,
        head_dim: spec.head_dim,
        dtype: DType::F32,
    }
}

fn paper() -> Plan {
    let spec = library("nsa-paper.nsa");
    Plan::forward(&spec, &sig(&spec)).expect("lowers")
}

#[test]
fn library_specs_lower_to_verified_plans() {
    for name in LIBRARY {
        let spec = library(name);
        for dtype in [DType::F32, DType::Bf16] {
            let s = Signature {
                dtype,
                ..sig(&spec)
            };
            let plan = Plan::forward(&spec, &s).expect("lowers");
            plan.verify().expect("verified");
            assert!(plan.text().starts_with(&format!("plan {} {{", spec.name)));
        }
    }
}

#[test]
fn the_plan_depends_on_the_signature_not_on_sizes() {
    let spec = library("nsa-fla.nsa");
    let shape = |p: Problem| p.resolve(&spec).expect("valid");
    let a = Plan::for_shape(&spec, &shape(Problem::batched(1, 1000))).expect("lowers");
    let b = Plan::for_shape(&spec, &shape(Problem::batched(3, 4099))).expect("lowers");
    let c = Plan::for_shape(&spec, &shape(Problem::varlen(vec![0, 500, 1000]))).expect("lowers");
    assert_eq!(a, b);
    assert_eq!(a, c);
    let mut p = Problem::batched(1, 1000);
    p.heads = Some(Heads { q: 8, kv: 2 });
    p.head_dim = Some(HeadDim { qk: 32, v: 48 });
    let d = Plan::for_shape(&spec, &shape(p)).expect("lowers");
    assert_ne!(a, d);
    assert_eq!((d.consts.group, d.consts.dqk, d.consts.dv), (4, 32, 48));
}

#[test]
fn sizes_bind_every_extent() {
    let plan = paper();
    let spec = library("nsa-paper.nsa");
    let shape = Problem::varlen(vec![0, 40, 141])
        .resolve(&spec)
        .expect("valid");
    let sizes = Sizes::of(&shape);
    let id = |n: &str| plan.tensor_named(n).expect("declared");
    // compression 32/16: 40 keys give 1 token, 101 keys give 5
    assert_eq!(sizes.compressed_offsets(32, 16), (vec![0, 1], 6));
    assert_eq!(
        sizes.shape(&plan, id("kc_cmp")).expect("binds"),
        vec![1, 6, 4, 192]
    );
    assert_eq!(
        sizes.shape(&plan, id("idx_slc")).expect("binds"),
        vec![1, 141, 4, 16]
    );
    assert_eq!(
        sizes.shape(&plan, id("scores_slc")).expect("binds"),
        vec![1, 141, 4, 3]
    );
    assert_eq!(
        sizes.shape(&plan, id("o")).expect("binds"),
        vec![1, 141, 64, 128]
    );
    let huge = Sizes {
        batch: usize::MAX / 2,
        queries: 1 << 40,
        keys: 1 << 40,
        segments: vec![(0, 1 << 40)],
    };
    assert!(matches!(
        huge.shape(&plan, id("q")),
        Err(SizesError::Overflow(..))
    ));
}

#[test]
fn roles_and_elements_follow_the_tensor_contract() {
    let spec = library("nsa-paper.nsa");
    let plan = Plan::forward(
        &spec,
        &Signature {
            dtype: DType::Bf16,
            ..sig(&spec)
        },
    )
    .expect("lowers");
    let role = |n: &str| plan.tensor(plan.tensor_named(n).expect("declared")).role;
    let elem = |n: &str| plan.tensor(plan.tensor_named(n).expect("declared")).elem;
    for n in ["q", "k", "v", "g_cmp", "g_slc", "g_win"] {
        assert_eq!((role(n), elem(n)), (Role::In, Elem::Bf16), "{n}");
    }
    for n in ["o", "o_cmp", "o_slc", "o_win"] {
        assert_eq!((role(n), elem(n)), (Role::Out, Elem::F32), "{n}");
    }
    assert_eq!((role("idx_slc"), elem("idx_slc")), (Role::Out, Elem::I32));
    for n in ["kc_cmp", "vc_cmp", "lse_cmp", "scores_slc"] {
        assert_eq!(role(n), Role::Scratch, "{n}");
    }
    let names: Vec<&str> = plan.ops.iter().map(|o| o.name()).collect();
    assert_eq!(
        names,
        [
            "pool", "attend", "score", "topk", "attend", "attend", "combine"
        ]
    );
}

/// Applies `edit` to the paper plan and returns the verifier's verdict.
fn broken(edit: impl FnOnce(&mut Plan)) -> VerifyError {
    let mut plan = paper();
    edit(&mut plan);
    plan.verify().expect_err("the edit breaks the contract")
}

fn id(plan: &Plan, name: &str) -> TensorId {
    plan.tensor_named(name).expect("declared")
}

#[test]
fn the_verifier_rejects_hand_broken_plans() {
    // an op writing an input
    let e = broken(|p| {
        let q = id(p, "q");
        if let Op::Combine(c) = p.ops.last_mut().expect("ops") {
            c.out = q;
        }
    });
    assert!(
        matches!(e, VerifyError::WritesProvided { ref name, .. } if name == "q"),
        "{e}"
    );
    // two producers
    let e = broken(|p| {
        let o_slc = id(p, "o_slc");
        if let Op::Attend(a) = &mut p.ops[5] {
            a.out = o_slc;
        }
    });
    assert!(
        matches!(e, VerifyError::TwoProducers { first: 4, second: 5, ref name } if name == "o_slc"),
        "{e}"
    );
    // a read before its producer: the combine moved to the front
    let e = broken(|p| {
        let c = p.ops.pop().expect("ops");
        p.ops.insert(0, c);
    });
    assert!(
        matches!(e, VerifyError::ReadBeforeWrite { op: 0, .. }),
        "{e}"
    );
    // an output nobody writes
    let e = broken(|p| {
        p.ops.pop();
    });
    assert!(
        matches!(e, VerifyError::NeverProduced { ref name, .. } if name == "o"),
        "{e}"
    );
    // an undeclared tensor
    let e = broken(|p| {
        if let Op::Attend(a) = &mut p.ops[1] {
            a.q = TensorId(999);
        }
    });
    assert!(matches!(e, VerifyError::UnknownTensor { op: 1, .. }), "{e}");
    // a shape that disagrees: the select branch reads the compressed keys as raw keys
    let e = broken(|p| {
        let kc = id(p, "kc_cmp");
        if let Op::Attend(a) = &mut p.ops[4] {
            a.k = kc;
        }
    });
    assert!(
        matches!(
            e,
            VerifyError::Shape { op: 4, .. } | VerifyError::Elem { op: 4, .. }
        ),
        "{e}"
    );
    // an element type that disagrees
    let e = broken(|p| {
        let i = id(p, "idx_slc");
        p.tensors[i.0].elem = Elem::F32;
    });
    assert!(matches!(e, VerifyError::Elem { .. }), "{e}");
    // a compressed key set whose block is not its pool's
    let e = broken(|p| {
        if let Op::Attend(a) = &mut p.ops[1] {
            a.keys = KeySet::Compressed {
                block: 64,
                stride: 16,
            };
        }
    });
    assert!(matches!(e, VerifyError::PoolMismatch { op: 1, .. }), "{e}");
    // a scratch tensor nobody reads
    let e = broken(|p| {
        p.tensors.push(Tensor {
            name: "dead".into(),
            role: Role::Scratch,
            elem: Elem::F32,
            shape: vec![Extent::Batch],
            layout: Layout::RowMajor,
        });
        let dead = TensorId(p.tensors.len() - 1);
        if let Op::Attend(a) = &mut p.ops[5] {
            a.lse = Some(dead);
        }
    });
    assert!(
        matches!(e, VerifyError::Shape { .. } | VerifyError::UnusedScratch(_)),
        "{e}"
    );
    // a duplicate name
    let e = broken(|p| {
        let t = p.tensors[0].clone();
        p.tensors.push(t);
    });
    assert!(
        matches!(e, VerifyError::DuplicateName(ref n) if n == "q"),
        "{e}"
    );
    // a zero parameter
    let e = broken(|p| {
        if let Op::TopK(t) = &mut p.ops[3] {
            t.k = 0;
        }
    });
    assert!(matches!(e, VerifyError::ZeroParameter { op: 3, .. }), "{e}");
}

#[test]
fn an_unused_scratch_tensor_is_reported() {
    let mut plan = paper();
    plan.tensors.push(Tensor {
        name: "dead".into(),
        role: Role::Scratch,
        elem: Elem::F32,
        shape: vec![Extent::Batch, Extent::Queries, Extent::HeadsQ],
        layout: Layout::RowMajor,
    });
    let dead = TensorId(plan.tensors.len() - 1);
    if let Op::Attend(a) = &mut plan.ops[5] {
        a.lse = Some(dead);
    }
    assert_eq!(
        plan.verify(),
        Err(VerifyError::UnusedScratch("dead".into()))
    );
}

fn paper_backward() -> Plan {
    let spec = library("nsa-paper.nsa");
    Plan::backward(&spec, &sig(&spec)).expect("lowers")
}

#[test]
fn backward_plans_save_every_lse_and_name_the_oracles_gradients() {
    for name in LIBRARY {
        let spec = library(name);
        let plan = Plan::backward(&spec, &sig(&spec)).expect("lowers");
        plan.verify().expect("verified");
        let start = plan.backward_start();
        assert!(start < plan.ops.len() && plan.has_backward());
        assert!(plan.ops[..start].iter().all(|o| !o.is_backward()));
        // The forward part is the forward plan's ops, every attention saving its lse.
        let forward = Plan::forward(&spec, &sig(&spec)).expect("lowers");
        assert_eq!(forward.ops.len(), start);
        for op in &plan.ops[..start] {
            if let Op::Attend(a) = op {
                let lse = a.lse.expect("saved");
                assert_eq!(plan.tensor(lse).role, Role::Saved);
            }
        }
        // One gradient per input, `d<name>`, of the input's shape.
        let inputs: Vec<String> = forward
            .tensors_with(Role::In)
            .map(|t| format!("d{}", forward.tensor(t).name))
            .collect();
        let grads: Vec<String> = plan
            .tensors_with(Role::Grad)
            .map(|t| plan.tensor(t).name.clone())
            .collect();
        assert_eq!(grads, inputs, "{name}");
        assert!(
            !plan
                .tensors_with(Role::In)
                .any(|t| plan.tensor(t).name.starts_with('d') && plan.tensor(t).name != "do")
        );
    }
}

/// Applies `edit` to the paper's backward plan and returns the verifier's verdict.
fn broken_backward(edit: impl FnOnce(&mut Plan)) -> VerifyError {
    let mut plan = paper_backward();
    edit(&mut plan);
    plan.verify().expect_err("the edit breaks the contract")
}

fn attend_grad(p: &mut Plan, branch: &str) -> usize {
    p.ops
        .iter()
        .position(|o| matches!(o, Op::AttendGrad(a) if a.branch == branch))
        .expect("attend_grad")
}

#[test]
fn the_verifier_rejects_hand_broken_backward_plans() {
    // a forward op after the backward began
    let e = broken_backward(|p| {
        let start = p.backward_start();
        let op = p.ops.remove(start - 1);
        p.ops.push(op);
    });
    assert!(
        matches!(
            e,
            VerifyError::ForwardAfterBackward { .. } | VerifyError::ReadBeforeWrite { .. }
        ),
        "{e}"
    );
    // an attend_grad reading a log-sum-exp that is not saved
    let e = broken_backward(|p| {
        let i = attend_grad(p, "win");
        if let Op::AttendGrad(a) = &p.ops[i] {
            let lse = a.lse;
            p.tensors[lse.0].role = Role::Scratch;
        }
    });
    assert!(matches!(e, VerifyError::Malformed { .. }), "{e}");
    // a backward op writing an output
    let e = broken_backward(|p| {
        let o = id(p, "o_win");
        let i = attend_grad(p, "win");
        if let Op::AttendGrad(a) = &mut p.ops[i] {
            a.dq = o;
        }
    });
    assert!(
        matches!(
            e,
            VerifyError::RoleMismatch { .. }
                | VerifyError::Shape { .. }
                | VerifyError::TwoProducers { .. }
        ),
        "{e}"
    );
    // a gradient of the wrong shape
    let e = broken_backward(|p| {
        let dg = id(p, "dg_win");
        p.tensors[dg.0].shape = vec![Extent::Batch, Extent::Queries, Extent::HeadsKv];
    });
    assert!(
        matches!(
            e,
            VerifyError::Shape { .. } | VerifyError::GradWithoutInput(_)
        ),
        "{e}"
    );
    // an input without gradient: the last grad_sum dropped
    let e = broken_backward(|p| {
        p.ops.pop();
    });
    assert!(matches!(e, VerifyError::NeverProduced { .. }), "{e}");
    // a gradient named after no input
    let e = broken_backward(|p| {
        let dq = id(p, "dq");
        p.tensors[dq.0].name = "dqq".into();
    });
    assert!(
        matches!(e, VerifyError::GradWithoutInput(ref n) if n == "dqq")
            || matches!(e, VerifyError::MissingGrad(_)),
        "{e}"
    );
    // a dK/dV tile over the wrong keys: the selected branch's gradient as compressed keys
    let e = broken_backward(|p| {
        let i = attend_grad(p, "slc");
        let kc = id(p, "kc_cmp");
        if let Op::AttendGrad(a) = &mut p.ops[i] {
            a.k = kc;
        }
    });
    assert!(
        matches!(e, VerifyError::Shape { .. } | VerifyError::Elem { .. }),
        "{e}"
    );
    // a gradient sum over parts of another shape
    let e = broken_backward(|p| {
        let pdq = id(p, "pdq_win");
        let n = p.ops.len();
        if let Op::GradSum(g) = &mut p.ops[n - 1] {
            g.parts.push(pdq);
        }
    });
    assert!(matches!(e, VerifyError::Shape { .. }), "{e}");
    // a pool_grad without its weights' gradients
    let spec = library("compress-only.nsa");
    let mut plan = Plan::backward(&spec, &sig(&spec)).expect("lowers");
    let n = plan.ops.len();
    for op in &mut plan.ops[..n] {
        if let Op::PoolGrad(pg) = op {
            pg.weights.push(TensorId(0));
        }
    }
    assert!(plan.verify().is_err());
}
