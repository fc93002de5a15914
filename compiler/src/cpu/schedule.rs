//! The CPU backend's reading of a [`Plan`]: the ops grouped into the steps it generates one
//! driver for, in plan order — a pool, a compressed attention (which keeps its probabilities
//! when a score op reads its log-sum-exp), a score with its top-k (one `topk` driver: the
//! scores never leave the work item), a gathered or windowed attention, the combine. Both the
//! code generator and the executor walk this one list, so they cannot disagree on it.
//!
//! A plan with a backward pass adds its steps after the forward's: the combine's backward,
//! two drivers per `attend_grad` (`GradQ`: one query's dq, parallel over queries; `GradKv`: one
//! key tile's dK/dV over the queries that see it, in query order), a pool's backward and the
//! gradient sums.

use crate::ir::{
    Attend, AttendGrad, Combine, CombineGrad, GradSum, KeySet, Op, Plan, Pool, PoolGrad, Role,
    Score, ScoreSource, TensorId, TopK,
};

use super::CpuError;

/// The constants a `topk` driver is specialized on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopKParams {
    /// l′: keys per selection block.
    pub block: usize,
    pub top: usize,
    pub keep_first: usize,
    pub keep_last: usize,
    /// l and d of the scoring compress branch.
    pub cmp_block: usize,
    pub cmp_stride: usize,
    /// Keys per block of the outer top-k this one is `within`: the driver then only scores
    /// (forced blocks +∞) and returns the block count; the executor picks among the blocks
    /// inside the outer choice (`cpu::topk`).
    pub within_block: Option<usize>,
}

/// One generated driver.
#[derive(Debug, Clone, Copy)]
pub enum Step<'p> {
    Pool(&'p Pool),
    /// Attention over compressed tokens; `scored` when a top-k reads its probabilities.
    Compressed {
        attend: &'p Attend,
        pool: &'p Pool,
        scored: bool,
    },
    /// Block scores from the compress branch `by` and the top-k choice, written to `idx`.
    TopK {
        score: &'p Score,
        topk: &'p TopK,
        by: &'p str,
        params: TopKParams,
    },
    /// Attention over the keys of the blocks in `idx`.
    Selected {
        attend: &'p Attend,
        idx: TensorId,
        block: usize,
        top: usize,
    },
    Window {
        attend: &'p Attend,
        size: usize,
    },
    Combine(&'p Combine),
    /// The combine's backward: dg, the branches' upstream gradients and row terms.
    CombineGrad(&'p CombineGrad),
    /// dq of one query position (all G heads of a kv head) for an `attend_grad`.
    GradQ(&'p AttendGrad),
    /// dK/dV of one key tile for an `attend_grad`.
    GradKv(&'p AttendGrad),
    /// A pool's backward for one (b, segment, kv head).
    PoolGrad(&'p PoolGrad),
    /// `out = Σ parts` over a range of elements.
    GradSum(&'p GradSum),
}

impl Step<'_> {
    /// Whether the step belongs to the backward pass.
    pub fn is_backward(&self) -> bool {
        matches!(
            self,
            Step::CombineGrad(_)
                | Step::GradQ(_)
                | Step::GradKv(_)
                | Step::PoolGrad(_)
                | Step::GradSum(_)
        )
    }

    /// Whether a forward attention step writes its log-sum-exp (a `Saved` tensor of a
    /// training plan).
    pub fn saves_lse(&self, plan: &Plan) -> bool {
        match self {
            Step::Compressed { attend, .. }
            | Step::Selected { attend, .. }
            | Step::Window { attend, .. } => attend
                .lse
                .is_some_and(|l| plan.tensor(l).role == Role::Saved),
            _ => false,
        }
    }

    /// The branch the step belongs to (`None` for the combine).
    pub fn branch(&self) -> Option<&str> {
        match self {
            Step::Pool(p) => Some(&p.branch),
            Step::Compressed { attend, .. }
            | Step::Selected { attend, .. }
            | Step::Window { attend, .. } => Some(&attend.branch),
            Step::TopK { topk, .. } => Some(&topk.branch),
            Step::GradQ(a) | Step::GradKv(a) => Some(&a.branch),
            Step::PoolGrad(p) => Some(&p.branch),
            Step::Combine(_) | Step::CombineGrad(_) | Step::GradSum(_) => None,
        }
    }
}

fn unsupported(what: String) -> CpuError {
    CpuError::Codegen(format!("the CPU backend cannot run {what}"))
}

/// The steps of `plan`, in order.
pub fn steps(plan: &Plan) -> Result<Vec<Step<'_>>, CpuError> {
    let mut out = Vec::new();
    let mut ops = plan.ops.iter().peekable();
    while let Some(op) = ops.next() {
        let step = match op {
            Op::Pool(p) => Step::Pool(p),
            Op::Attend(a) => match &a.keys {
                KeySet::Compressed { .. } => {
                    let pool = plan
                        .producer(a.k)
                        .and_then(|(_, op)| match op {
                            Op::Pool(p) => Some(p),
                            _ => None,
                        })
                        .ok_or_else(|| unsupported(format!("`{}` without its pool", a.branch)))?;
                    let scored = a.lse.is_some_and(|l| plan.consumers(l).next().is_some());
                    Step::Compressed {
                        attend: a,
                        pool,
                        scored,
                    }
                }
                KeySet::Gather { idx, granularity } => {
                    let top = plan.tensor(*idx).shape.get(3).and_then(|e| match e {
                        crate::ir::Extent::Const(n) => Some(*n),
                        _ => None,
                    });
                    Step::Selected {
                        attend: a,
                        idx: *idx,
                        block: *granularity,
                        top: top.ok_or_else(|| unsupported("an unsized index tensor".into()))?,
                    }
                }
                KeySet::Window { size } => Step::Window {
                    attend: a,
                    size: *size,
                },
                KeySet::Causal => return Err(unsupported("dense causal attention".into())),
            },
            Op::Score(score) => {
                let Some(Op::TopK(topk)) = ops.next() else {
                    return Err(unsupported(format!(
                        "a score op of `{}` not followed by its top-k",
                        score.branch
                    )));
                };
                if topk.scores != score.out {
                    return Err(unsupported(format!(
                        "top-k `{}` reading another op's scores",
                        topk.branch
                    )));
                }
                let ScoreSource::Compressed {
                    branch,
                    block,
                    stride,
                    ..
                } = &score.source;
                Step::TopK {
                    score,
                    topk,
                    by: branch,
                    params: TopKParams {
                        block: topk.block,
                        top: topk.k,
                        keep_first: topk.forced.first,
                        keep_last: topk.forced.last,
                        cmp_block: *block,
                        cmp_stride: *stride,
                        within_block: topk.within.map(|w| w.block),
                    },
                }
            }
            Op::TopK(t) => return Err(unsupported(format!("top-k `{}` without scores", t.branch))),
            Op::Combine(c) => Step::Combine(c),
            Op::CombineGrad(c) => Step::CombineGrad(c),
            Op::AttendGrad(a) => {
                if let KeySet::Causal = a.keys {
                    return Err(unsupported("the backward of dense causal attention".into()));
                }
                out.push(Step::GradQ(a));
                Step::GradKv(a)
            }
            Op::PoolGrad(p) => Step::PoolGrad(p),
            Op::GradSum(g) => Step::GradSum(g),
        };
        out.push(step);
    }
    Ok(out)
}

/// Whether `id` is a tensor the caller receives.
pub fn is_output(plan: &Plan, id: TensorId) -> bool {
    plan.tensor(id).role == Role::Out
}
