//! The training pair: a forward plan turned into forward + backward. The forward's attentions
//! all keep their log-sum-exp as a `Saved` tensor `lse_<b>` (the scoring compress branch's
//! already existed as scratch; it becomes saved); the chosen indices `idx_<s>` and the branch
//! outputs `o_<b>` are outputs already. The backward reads them with the upstream gradient `do`:
//!
//! 1. `combine_grad`: `dg_b`, and per branch its upstream `do_b` and row term `delta_b`;
//! 2. one `attend_grad` per attention (in forward order), over the same key set: its part of
//!    `dq` (`pdq_<b>`) and the gradient of its keys and values — `pdk_<b>`/`pdv_<b>` for raw
//!    keys, `dkc_<c>`/`dvc_<c>` for compressed tokens;
//! 3. one `pool_grad` per compress branch: `dkc`/`dvc` back into its raw keys
//!    (`pdk_<c>`/`pdv_<c>`) and its weights' gradients (`dw_<c>`, `dwk_<c>`/`dwv_<c>`);
//! 4. one `grad_sum` per remaining gradient — `dq` and every key/value input's — over the
//!    parts of the branches that read it, in branch order (none: a zero gradient, for an
//!    input nothing reads).
//!
//! Every input gets a `Grad` tensor `d<name>` of its shape (f32), declared first in input
//! order. The selection (score, top-k) passes no gradient.

use super::LowerError;
use crate::ir::op::{AttendGrad, CombineGrad, GradSum, Op, PoolGrad, TermGrad};
use crate::ir::tensor::{Elem, Extent, Layout, Role, Tensor, TensorId};
use crate::ir::{KeySet, Plan};

/// The name of the gradient of input `input` (the oracle's `gradient_name`).
pub fn gradient_name(input: &str) -> String {
    format!("d{input}")
}

fn declare(plan: &mut Plan, name: String, role: Role, shape: Vec<Extent>) -> TensorId {
    if let Some(id) = plan.tensor_named(&name) {
        return id;
    }
    plan.tensors.push(Tensor {
        name,
        role,
        elem: Elem::F32,
        shape,
        layout: Layout::RowMajor,
    });
    TensorId(plan.tensors.len() - 1)
}

/// Adds the backward pass to the forward plan `plan` (not yet verified).
pub fn backward(mut plan: Plan) -> Result<Plan, LowerError> {
    use Extent::{Batch as B, Dqk, Dv, HeadsQ as HQ, Queries as TQ};
    if plan.has_backward() {
        return Ok(plan);
    }
    // Gradients of every input, in input order.
    let inputs: Vec<TensorId> = plan.tensors_with(Role::In).collect();
    let mut grad_of = std::collections::BTreeMap::new();
    for id in inputs {
        let t = plan.tensor(id).clone();
        let g = declare(&mut plan, gradient_name(&t.name), Role::Grad, t.shape);
        grad_of.insert(id, g);
    }
    let d_o = declare(&mut plan, "do".into(), Role::In, vec![B, TQ, HQ, Dv]);

    // Every attention saves its log-sum-exp.
    for i in 0..plan.ops.len() {
        let Op::Attend(a) = &plan.ops[i] else {
            continue;
        };
        let lse = match a.lse {
            Some(l) => l,
            None => {
                let name = format!("lse_{}", a.branch);
                declare(&mut plan, name, Role::Saved, vec![B, TQ, HQ])
            }
        };
        plan.tensors[lse.0].role = Role::Saved;
        if let Op::Attend(a) = &mut plan.ops[i] {
            a.lse = Some(lse);
        }
    }

    // 1. The combine.
    let combine = plan
        .ops
        .iter()
        .find_map(|op| match op {
            Op::Combine(c) => Some(c.clone()),
            _ => None,
        })
        .ok_or_else(|| LowerError::CombineMismatch("(no combine)".into()))?;
    let mut terms = Vec::new();
    for term in &combine.terms {
        let b = &term.branch;
        terms.push(TermGrad {
            branch: b.clone(),
            out: term.out,
            gate: term.gate,
            d_gate: term.gate.and_then(|g| grad_of.get(&g).copied()),
            d_out: declare(
                &mut plan,
                format!("do_{b}"),
                Role::Scratch,
                vec![B, TQ, HQ, Dv],
            ),
            delta: declare(
                &mut plan,
                format!("delta_{b}"),
                Role::Scratch,
                vec![B, TQ, HQ],
            ),
        });
    }
    let mut ops = vec![Op::CombineGrad(CombineGrad {
        mode: combine.mode,
        d_out: d_o,
        terms: terms.clone(),
    })];

    // 2. Every attention; 3. every pool.
    let attends: Vec<_> = plan
        .ops
        .iter()
        .filter_map(|op| match op {
            Op::Attend(a) => Some(a.clone()),
            _ => None,
        })
        .collect();
    let pools: Vec<_> = plan
        .ops
        .iter()
        .filter_map(|op| match op {
            Op::Pool(p) => Some(p.clone()),
            _ => None,
        })
        .collect();
    // Parts per gradient (keyed by the input tensor), in branch order.
    let mut parts: std::collections::BTreeMap<TensorId, Vec<TensorId>> = Default::default();
    let mut pool_grads = Vec::new();
    for a in &attends {
        let b = &a.branch;
        let term = terms
            .iter()
            .find(|t| t.out == a.out)
            .ok_or_else(|| LowerError::CombineMismatch(b.clone()))?;
        let dq = declare(
            &mut plan,
            format!("pdq_{b}"),
            Role::Scratch,
            vec![B, TQ, HQ, Dqk],
        );
        parts.entry(a.q).or_default().push(dq);
        let (dk, dv) = match &a.keys {
            KeySet::Compressed { .. } => {
                let (ks, vs) = (
                    plan.tensor(a.k).shape.clone(),
                    plan.tensor(a.v).shape.clone(),
                );
                (
                    declare(&mut plan, format!("dkc_{b}"), Role::Scratch, ks),
                    declare(&mut plan, format!("dvc_{b}"), Role::Scratch, vs),
                )
            }
            _ => {
                let (ks, vs) = (
                    plan.tensor(a.k).shape.clone(),
                    plan.tensor(a.v).shape.clone(),
                );
                let dk = declare(&mut plan, format!("pdk_{b}"), Role::Scratch, ks);
                let dv = declare(&mut plan, format!("pdv_{b}"), Role::Scratch, vs);
                parts.entry(a.k).or_default().push(dk);
                parts.entry(a.v).or_default().push(dv);
                (dk, dv)
            }
        };
        let lse = a
            .lse
            .ok_or_else(|| LowerError::CombineMismatch(b.clone()))?;
        ops.push(Op::AttendGrad(AttendGrad {
            branch: b.clone(),
            keys: a.keys.clone(),
            q: a.q,
            k: a.k,
            v: a.v,
            lse,
            d_out: term.d_out,
            delta: term.delta,
            dq,
            dk,
            dv,
        }));
        if let KeySet::Compressed { .. } = a.keys
            && let Some(p) = pools.iter().find(|p| p.kc == a.k)
        {
            let (ks, vs) = (
                plan.tensor(p.k).shape.clone(),
                plan.tensor(p.v).shape.clone(),
            );
            let pdk = declare(&mut plan, format!("pdk_{b}"), Role::Scratch, ks);
            let pdv = declare(&mut plan, format!("pdv_{b}"), Role::Scratch, vs);
            parts.entry(p.k).or_default().push(pdk);
            parts.entry(p.v).or_default().push(pdv);
            let d_weights = p
                .weights
                .iter()
                .filter_map(|w| grad_of.get(w).copied())
                .collect();
            pool_grads.push(Op::PoolGrad(PoolGrad {
                branch: p.branch.clone(),
                kind: p.kind,
                block: p.block,
                stride: p.stride,
                k: p.k,
                v: p.v,
                weights: p.weights.clone(),
                d_kc: dk,
                d_vc: dv,
                dk: pdk,
                dv: pdv,
                d_weights,
            }));
        }
    }
    ops.extend(pool_grads);

    // 4. The sums, in input order (`q` first): every gradient not written above, as the sum of
    //    its parts — none for an input nothing reads (e.g. the shared `k` when every branch
    //    has its own): a zero gradient.
    let written: Vec<TensorId> = ops.iter().flat_map(Op::writes).collect();
    let inputs: Vec<TensorId> = plan.tensors_with(Role::In).collect();
    for id in inputs {
        let Some(&out) = grad_of.get(&id) else {
            continue;
        };
        if written.contains(&out) {
            continue;
        }
        ops.push(Op::GradSum(GradSum {
            parts: parts.get(&id).cloned().unwrap_or_default(),
            out,
        }));
    }
    plan.ops.extend(ops);
    Ok(plan)
}
