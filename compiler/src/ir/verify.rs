//! `Plan::verify`: the contract every lowering must meet and every backend may rely on.
//!
//! Checked: names are unique and ids in range; every tensor the caller does not provide has
//! exactly one producing op, and provided ones (`In`, `State`) none; every op reads only
//! provided tensors or tensors an earlier op produced; every `Out`/`Saved`/`Grad` tensor is
//! produced and every `Scratch` tensor is read; each op's operands have the extents and element
//! types it needs (q `[B,Tq,HQ,DQK]`, keys `[B,Tk|NC,H,DQK]`, …); op parameters are positive.
//!
//! With a backward pass, also: no forward op follows a backward op; backward ops write only
//! `Grad` and `Scratch` tensors and forward ops no `Grad`; every `Saved` tensor is read; an
//! `attend_grad` reads a `Saved` log-sum-exp; every `Grad` tensor is `d<input>` with its
//! input's shape, and every input but the upstream `do` has one.

use super::Plan;
use super::op::{CombineMode, KeySet, Op, ScoreSource};
use super::tensor::{Elem, Extent, Role, TensorId};

/// A broken contract: which op or tensor, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("op {op} names tensor {id}, but the plan declares {count} tensors")]
    UnknownTensor {
        op: usize,
        id: TensorId,
        count: usize,
    },
    #[error("tensor `{0}` is declared twice")]
    DuplicateName(String),
    #[error("tensor `{name}` ({role}) is written by op {op}, but the caller provides it")]
    WritesProvided {
        name: String,
        role: &'static str,
        op: usize,
    },
    #[error("tensor `{name}` is written by ops {first} and {second}")]
    TwoProducers {
        name: String,
        first: usize,
        second: usize,
    },
    #[error("op {op} reads `{name}` before any op produces it")]
    ReadBeforeWrite { name: String, op: usize },
    #[error("tensor `{name}` ({role}) is never produced")]
    NeverProduced { name: String, role: &'static str },
    #[error("scratch tensor `{0}` is produced but never read")]
    UnusedScratch(String),
    #[error("op {op} ({what}): `{name}` has shape [{got}], expected [{want}]")]
    Shape {
        op: usize,
        what: &'static str,
        name: String,
        got: String,
        want: String,
    },
    #[error("op {op} ({what}): `{name}` is {got}, expected {want}")]
    Elem {
        op: usize,
        what: &'static str,
        name: String,
        got: &'static str,
        want: &'static str,
    },
    #[error("op {op}: parameter `{param}` must be positive")]
    ZeroParameter { op: usize, param: &'static str },
    #[error("op {op}: the within block {outer} is not a multiple of the block {block}")]
    WithinBlock {
        op: usize,
        outer: usize,
        block: usize,
    },
    #[error("saved tensor `{0}` is produced but never read")]
    UnusedSaved(String),
    #[error("op {op} is a forward op after the backward pass began")]
    ForwardAfterBackward { op: usize },
    #[error("op {op} ({what}) writes `{name}`, a {role} tensor it may not write")]
    RoleMismatch {
        op: usize,
        what: &'static str,
        name: String,
        role: &'static str,
    },
    #[error("gradient `{0}` names no input of the same shape")]
    GradWithoutInput(String),
    #[error("input `{0}` has no gradient in a plan with a backward pass")]
    MissingGrad(String),
    #[error("op {op} ({what}): {why}")]
    Malformed {
        op: usize,
        what: &'static str,
        why: String,
    },
    #[error("op {op}: a compressed key set ({want}) does not match its pool ({got})")]
    PoolMismatch {
        op: usize,
        want: String,
        got: String,
    },
}

fn list(shape: &[Extent]) -> String {
    shape
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

struct Checker<'a> {
    plan: &'a Plan,
    op: usize,
    what: &'static str,
}

impl Checker<'_> {
    fn shape(&self, id: TensorId, want: &[Extent]) -> Result<(), VerifyError> {
        let t = self.plan.tensor(id);
        if t.shape != want {
            return Err(VerifyError::Shape {
                op: self.op,
                what: self.what,
                name: t.name.clone(),
                got: list(&t.shape),
                want: list(want),
            });
        }
        Ok(())
    }

    fn elem(&self, id: TensorId, want: Elem) -> Result<(), VerifyError> {
        let t = self.plan.tensor(id);
        if t.elem != want {
            return Err(VerifyError::Elem {
                op: self.op,
                what: self.what,
                name: t.name.clone(),
                got: t.elem.name(),
                want: want.name(),
            });
        }
        Ok(())
    }

    fn positive(&self, v: usize, param: &'static str) -> Result<(), VerifyError> {
        if v == 0 {
            return Err(VerifyError::ZeroParameter { op: self.op, param });
        }
        Ok(())
    }

    /// A gathered key set's index tensor: `[B, Tq, H, top]` of i32 with `top` and the
    /// granularity positive.
    fn gather_index(&self, idx: TensorId, granularity: usize) -> Result<(), VerifyError> {
        use Extent::{Batch as B, HeadsKv as H, Queries as TQ};
        self.positive(granularity, "granularity")?;
        let top = match self.plan.tensor(idx).shape.get(3) {
            Some(Extent::Const(n)) => *n,
            _ => 0,
        };
        self.positive(top, "index width")?;
        self.shape(idx, &[B, TQ, H, Extent::Const(top)])?;
        self.elem(idx, Elem::I32)
    }
}

pub(super) fn verify(plan: &Plan) -> Result<(), VerifyError> {
    let n = plan.tensors.len();
    for (i, t) in plan.tensors.iter().enumerate() {
        if plan.tensors[..i].iter().any(|o| o.name == t.name) {
            return Err(VerifyError::DuplicateName(t.name.clone()));
        }
    }
    let mut producer: Vec<Option<usize>> = vec![None; n];
    for (i, op) in plan.ops.iter().enumerate() {
        for id in op.reads().into_iter().chain(op.writes()) {
            if id.0 >= n {
                return Err(VerifyError::UnknownTensor {
                    op: i,
                    id,
                    count: n,
                });
            }
        }
        for id in op.reads() {
            let t = plan.tensor(id);
            if !t.role.is_provided() && producer[id.0].is_none() {
                return Err(VerifyError::ReadBeforeWrite {
                    name: t.name.clone(),
                    op: i,
                });
            }
        }
        for id in op.writes() {
            let t = plan.tensor(id);
            if t.role.is_provided() {
                return Err(VerifyError::WritesProvided {
                    name: t.name.clone(),
                    role: t.role.name(),
                    op: i,
                });
            }
            if let Some(first) = producer[id.0] {
                return Err(VerifyError::TwoProducers {
                    name: t.name.clone(),
                    first,
                    second: i,
                });
            }
            producer[id.0] = Some(i);
        }
        check_roles(plan, i, op)?;
        check_op(plan, i, op)?;
    }
    for (i, t) in plan.tensors.iter().enumerate() {
        if !t.role.is_provided() && producer[i].is_none() {
            return Err(VerifyError::NeverProduced {
                name: t.name.clone(),
                role: t.role.name(),
            });
        }
        if t.role == Role::Scratch && plan.consumers(TensorId(i)).next().is_none() {
            return Err(VerifyError::UnusedScratch(t.name.clone()));
        }
        if t.role == Role::Saved && plan.consumers(TensorId(i)).next().is_none() {
            return Err(VerifyError::UnusedSaved(t.name.clone()));
        }
    }
    check_gradients(plan)
}

/// The upstream gradient's name: an input of the backward pass with no gradient of its own.
pub(super) const UPSTREAM: &str = "do";

/// Which roles an op may write, and that no forward op follows a backward one.
fn check_roles(plan: &Plan, i: usize, op: &Op) -> Result<(), VerifyError> {
    if !op.is_backward() && plan.ops[..i].iter().any(Op::is_backward) {
        return Err(VerifyError::ForwardAfterBackward { op: i });
    }
    for id in op.writes() {
        let t = plan.tensor(id);
        let ok = if op.is_backward() {
            matches!(t.role, Role::Grad | Role::Scratch)
        } else {
            t.role != Role::Grad
        };
        if !ok {
            return Err(VerifyError::RoleMismatch {
                op: i,
                what: op.name(),
                name: t.name.clone(),
                role: t.role.name(),
            });
        }
    }
    Ok(())
}

/// Every `Grad` tensor is the gradient of an input of its shape; with a backward pass, every
/// input (but `do`) has one.
fn check_gradients(plan: &Plan) -> Result<(), VerifyError> {
    for id in plan.tensors_with(Role::Grad) {
        let g = plan.tensor(id);
        let input = g
            .name
            .strip_prefix('d')
            .and_then(|n| plan.tensor_named(n))
            .map(|i| plan.tensor(i));
        match input {
            Some(t) if t.role == Role::In && t.shape == g.shape && g.elem == Elem::F32 => {}
            _ => return Err(VerifyError::GradWithoutInput(g.name.clone())),
        }
    }
    if plan.has_backward() {
        for id in plan.tensors_with(Role::In) {
            let name = &plan.tensor(id).name;
            if name == UPSTREAM {
                continue;
            }
            let grad = plan.tensor_named(&format!("d{name}"));
            if grad.is_none_or(|g| plan.tensor(g).role != Role::Grad) {
                return Err(VerifyError::MissingGrad(name.clone()));
            }
        }
    }
    Ok(())
}

/// The key extent a key set attends over (`Tk`, or `NC_<c>` of the pool that made the keys),
/// checking a compressed key set against its pool and a gathered one's index tensor.
fn key_extent(c: &Checker<'_>, keys: &KeySet, k: TensorId) -> Result<Extent, VerifyError> {
    use Extent::Keys as TK;
    let plan = c.plan;
    Ok(match keys {
        KeySet::Compressed { block, stride } => {
            c.positive(*block, "block")?;
            c.positive(*stride, "stride")?;
            let pool = plan.producer(k).and_then(|(_, op)| match op {
                Op::Pool(p) => Some(p),
                _ => None,
            });
            match pool {
                Some(p) if (p.block, p.stride) == (*block, *stride) => {}
                other => {
                    return Err(VerifyError::PoolMismatch {
                        op: c.op,
                        want: format!("block {block}, stride {stride}"),
                        got: other.map_or("no pool op".into(), |p| {
                            format!("block {}, stride {}", p.block, p.stride)
                        }),
                    });
                }
            }
            plan.tensor(k).shape[1].clone()
        }
        KeySet::Gather { idx, granularity } => {
            c.gather_index(*idx, *granularity)?;
            TK
        }
        KeySet::Causal | KeySet::Window { .. } => TK,
    })
}

/// The extents and element types each op needs of its operands.
fn check_op(plan: &Plan, i: usize, op: &Op) -> Result<(), VerifyError> {
    use Extent::{Batch as B, Dqk, Dv, HeadsKv as H, HeadsQ as HQ, Keys as TK, Queries as TQ};
    let act = Elem::of(plan.consts.dtype);
    let c = Checker {
        plan,
        op: i,
        what: op.name(),
    };
    match op {
        Op::Pool(p) => {
            c.positive(p.block, "block")?;
            c.positive(p.stride, "stride")?;
            c.shape(p.k, &[B, TK, H, Dqk])?;
            c.shape(p.v, &[B, TK, H, Dv])?;
            let nc = Extent::Compressed(p.branch.clone());
            c.shape(p.kc, &[B, nc.clone(), H, Dqk])?;
            c.shape(p.vc, &[B, nc, H, Dv])?;
            for id in [p.k, p.v].into_iter().chain(p.weights.iter().copied()) {
                c.elem(id, act)?;
            }
            c.elem(p.kc, Elem::F32)?;
            c.elem(p.vc, Elem::F32)?;
        }
        Op::Attend(a) => {
            c.shape(a.q, &[B, TQ, HQ, Dqk])?;
            c.shape(a.out, &[B, TQ, HQ, Dv])?;
            c.elem(a.q, act)?;
            c.elem(a.out, Elem::F32)?;
            if let Some(lse) = a.lse {
                c.shape(lse, &[B, TQ, HQ])?;
                c.elem(lse, Elem::F32)?;
            }
            let keys = match &a.keys {
                KeySet::Compressed { block, stride } => {
                    c.positive(*block, "block")?;
                    c.positive(*stride, "stride")?;
                    let pool = plan.producer(a.k).and_then(|(_, op)| match op {
                        Op::Pool(p) => Some(p),
                        _ => None,
                    });
                    match pool {
                        Some(p) if (p.block, p.stride) == (*block, *stride) => {}
                        other => {
                            return Err(VerifyError::PoolMismatch {
                                op: i,
                                want: format!("block {block}, stride {stride}"),
                                got: other.map_or("no pool op".into(), |p| {
                                    format!("block {}, stride {}", p.block, p.stride)
                                }),
                            });
                        }
                    }
                    c.elem(a.k, Elem::F32)?;
                    c.elem(a.v, Elem::F32)?;
                    plan.tensor(a.k).shape[1].clone()
                }
                KeySet::Gather { idx, granularity } => {
                    c.gather_index(*idx, *granularity)?;
                    c.elem(a.k, act)?;
                    c.elem(a.v, act)?;
                    TK
                }
                KeySet::Causal | KeySet::Window { .. } => {
                    c.elem(a.k, act)?;
                    c.elem(a.v, act)?;
                    TK
                }
            };
            c.shape(a.k, &[B, keys.clone(), H, Dqk])?;
            c.shape(a.v, &[B, keys, H, Dv])?;
        }
        Op::Score(s) => {
            c.positive(s.granularity, "granularity")?;
            match &s.source {
                ScoreSource::Compressed {
                    branch,
                    block,
                    stride,
                    q,
                    kc,
                    lse,
                } => {
                    c.positive(*block, "block")?;
                    c.positive(*stride, "stride")?;
                    c.shape(*q, &[B, TQ, HQ, Dqk])?;
                    c.shape(*kc, &[B, Extent::Compressed(branch.clone()), H, Dqk])?;
                    c.shape(*lse, &[B, TQ, HQ])?;
                    c.elem(*kc, Elem::F32)?;
                    c.elem(*lse, Elem::F32)?;
                }
            }
            c.shape(s.out, &[B, TQ, H, Extent::Blocks(s.granularity)])?;
            c.elem(s.out, Elem::F32)?;
        }
        Op::TopK(t) => {
            c.positive(t.k, "k")?;
            c.positive(t.block, "block")?;
            c.shape(t.scores, &[B, TQ, H, Extent::Blocks(t.block)])?;
            c.shape(t.idx, &[B, TQ, H, Extent::Const(t.k)])?;
            c.elem(t.scores, Elem::F32)?;
            c.elem(t.idx, Elem::I32)?;
            if let Some(w) = t.within {
                c.gather_index(w.idx, w.block)?;
                if !w.block.is_multiple_of(t.block) {
                    return Err(VerifyError::WithinBlock {
                        op: i,
                        outer: w.block,
                        block: t.block,
                    });
                }
            }
        }
        Op::CombineGrad(cg) => {
            c.shape(cg.d_out, &[B, TQ, HQ, Dv])?;
            c.elem(cg.d_out, Elem::F32)?;
            for term in &cg.terms {
                for id in [term.out, term.d_out] {
                    c.shape(id, &[B, TQ, HQ, Dv])?;
                    c.elem(id, Elem::F32)?;
                }
                c.shape(term.delta, &[B, TQ, HQ])?;
                c.elem(term.delta, Elem::F32)?;
                let gated = cg.mode == CombineMode::Gate;
                match (term.gate, term.d_gate) {
                    (Some(g), Some(dg)) if gated => {
                        c.shape(g, &[B, TQ, HQ])?;
                        c.elem(g, act)?;
                        c.shape(dg, &[B, TQ, HQ])?;
                        c.elem(dg, Elem::F32)?;
                    }
                    (None, None) if !gated => {}
                    _ => {
                        return Err(VerifyError::Malformed {
                            op: i,
                            what: op.name(),
                            why: format!(
                                "term `{}` needs a gate and its gradient exactly when gated",
                                term.branch
                            ),
                        });
                    }
                }
            }
        }
        Op::AttendGrad(a) => {
            let keys = key_extent(&c, &a.keys, a.k)?;
            let kv_elem = match a.keys {
                KeySet::Compressed { .. } => Elem::F32,
                _ => act,
            };
            c.shape(a.q, &[B, TQ, HQ, Dqk])?;
            c.elem(a.q, act)?;
            c.shape(a.k, &[B, keys.clone(), H, Dqk])?;
            c.shape(a.v, &[B, keys.clone(), H, Dv])?;
            c.elem(a.k, kv_elem)?;
            c.elem(a.v, kv_elem)?;
            c.shape(a.lse, &[B, TQ, HQ])?;
            c.elem(a.lse, Elem::F32)?;
            if plan.tensor(a.lse).role != Role::Saved {
                return Err(VerifyError::Malformed {
                    op: i,
                    what: op.name(),
                    why: format!(
                        "`{}` is {}, not the forward's saved log-sum-exp",
                        plan.tensor(a.lse).name,
                        plan.tensor(a.lse).role.name()
                    ),
                });
            }
            c.shape(a.d_out, &[B, TQ, HQ, Dv])?;
            c.shape(a.delta, &[B, TQ, HQ])?;
            c.shape(a.dq, &[B, TQ, HQ, Dqk])?;
            c.shape(a.dk, &[B, keys.clone(), H, Dqk])?;
            c.shape(a.dv, &[B, keys, H, Dv])?;
            for id in [a.d_out, a.delta, a.dq, a.dk, a.dv] {
                c.elem(id, Elem::F32)?;
            }
        }
        Op::PoolGrad(p) => {
            c.positive(p.block, "block")?;
            c.positive(p.stride, "stride")?;
            let want = match p.kind {
                super::op::PoolKind::Mean => 0,
                super::op::PoolKind::Weighted => 1,
                super::op::PoolKind::Linear => 2,
            };
            if p.weights.len() != want || p.d_weights.len() != want {
                return Err(VerifyError::Malformed {
                    op: i,
                    what: op.name(),
                    why: format!(
                        "a {} pool has {want} weight tensors and as many gradients",
                        p.kind.name()
                    ),
                });
            }
            for (w, dw) in p.weights.iter().zip(&p.d_weights) {
                c.shape(*dw, &plan.tensor(*w).shape)?;
                c.elem(*dw, Elem::F32)?;
            }
            c.shape(p.k, &[B, TK, H, Dqk])?;
            c.shape(p.v, &[B, TK, H, Dv])?;
            c.shape(p.dk, &[B, TK, H, Dqk])?;
            c.shape(p.dv, &[B, TK, H, Dv])?;
            let nc = Extent::Compressed(p.branch.clone());
            c.shape(p.d_kc, &[B, nc.clone(), H, Dqk])?;
            c.shape(p.d_vc, &[B, nc, H, Dv])?;
            for id in [p.d_kc, p.d_vc, p.dk, p.dv] {
                c.elem(id, Elem::F32)?;
            }
        }
        Op::GradSum(g) => {
            let shape = plan.tensor(g.out).shape.clone();
            c.elem(g.out, Elem::F32)?;
            for part in &g.parts {
                c.shape(*part, &shape)?;
                c.elem(*part, Elem::F32)?;
            }
        }
        Op::Combine(cb) => {
            c.shape(cb.out, &[B, TQ, HQ, Dv])?;
            c.elem(cb.out, Elem::F32)?;
            for term in &cb.terms {
                c.shape(term.out, &[B, TQ, HQ, Dv])?;
                c.elem(term.out, Elem::F32)?;
                if let Some(g) = term.gate {
                    c.shape(g, &[B, TQ, HQ])?;
                    c.elem(g, act)?;
                }
            }
        }
    }
    Ok(())
}
