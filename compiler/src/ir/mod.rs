//! The `Plan`: the one IR between the DSL and every backend (docs/ARCHITECTURE.md §1).
//!
//! A [`Plan`] is a graph of [`Op`]s over declared [`Tensor`]s. Every tensor is declared once,
//! with its name (the tensor contract's: `q`, `k`, `v`, `g_<b>`, `o`, `o_<b>`, `idx_<b>`, …), a
//! [`Role`], an element type and a shape in symbolic [`Extent`]s (`B`, `Tq`, `Tk`, `NC_<c>`,
//! `HQ`, `H`, `DQK`, `DV`, constants). The ops come from a small vocabulary — [`Pool`],
//! [`Score`], [`TopK`], [`Attend`] (over all visible keys, compressed tokens, a window, or the
//! blocks of an index tensor) and [`Combine`] — that every branch kind lowers onto; they are
//! listed in dependency order. [`Plan::verify`] checks the contract: one producer per tensor,
//! every read declared and produced before, extents and element types as each op needs, roles
//! respected.
//!
//! A plan depends on the spec and on what is compiled in — head counts, head dims, the scale,
//! causality and the dtype ([`Signature`]) — never on batch, lengths or `cu_seqlens`: those
//! come with each call as [`Sizes`]. Backends read only the plan (never the spec), and fix
//! everything that does not vary per call in their code; the same code serves every length.
//!
//! All positional rules (causality, compressed tokens, candidate and forced blocks, windows)
//! live in [`rules`] and are relative to the start of a segment. [`Plan::text`] is the stable
//! text form (`nsac compile --emit plan`).
//!
//! [`Plan::backward`] is the training pair: the forward with every attention's log-sum-exp
//! kept as a `Saved` tensor, then the backward ops (`combine_grad`, `attend_grad`,
//! `pool_grad`, `grad_sum`) that read it with the upstream gradient `do` and write one `Grad`
//! tensor per input, named as the oracle's gradients (`dq`, `dk`, `dv`, `dg_<b>`, …).
//! [`Plan::backward_start`] splits the ops into the two passes.

pub mod contract;
pub mod lower;
mod op;
pub mod rules;
mod sizes;
mod tensor;
mod text;
mod verify;

#[cfg(test)]
mod tests;

use nsac_dsl::problem::{DType, Shape};
use nsac_dsl::spec::{HeadDim, Heads};

pub use lower::LowerError;
pub use op::{
    Attend, AttendGrad, Combine, CombineGrad, CombineMode, Forced, GradSum, KeySet, Op, Pool,
    PoolGrad, PoolKind, Score, ScoreSource, Term, TermGrad, Tie, TopK, Within,
};
pub use sizes::{Sizes, SizesError};
pub use tensor::{Elem, Extent, Layout, Role, Tensor, TensorId};
pub use verify::VerifyError;

/// What a plan compiles in besides the spec: heads, head dims and dtype of the problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signature {
    pub heads: Heads,
    pub head_dim: HeadDim,
    pub dtype: DType,
}

impl Signature {
    /// The compiled-in part of a resolved problem.
    pub fn of(shape: &Shape) -> Signature {
        Signature {
            heads: shape.heads,
            head_dim: shape.head_dim,
            dtype: shape.dtype,
        }
    }
}

/// The compiled-in sizes and constants every op shares.
#[derive(Debug, Clone, PartialEq)]
pub struct Consts {
    pub heads_q: usize,
    pub heads_kv: usize,
    /// G = heads_q / heads_kv: the query heads that share a kv head.
    pub group: usize,
    pub dqk: usize,
    pub dv: usize,
    /// The softmax scale applied to q·k (the spec's, or 1/√Dqk).
    pub scale: f64,
    pub causal: bool,
    /// The element type of the activation tensors (`q`, `k`, `v`, gates, pool weights).
    pub dtype: DType,
}

/// A spec lowered for one [`Signature`]: tensors and ops in dependency order.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The spec's name (symbol names of generated code derive from it).
    pub name: String,
    pub consts: Consts,
    /// Every tensor any op touches; a [`TensorId`] indexes this list.
    pub tensors: Vec<Tensor>,
    pub ops: Vec<Op>,
}

impl Plan {
    /// The forward pass of `spec` for `signature`, verified.
    ///
    /// ```
    /// use nsac_compiler::ir::{Plan, Role, Signature};
    /// let spec = nsac_dsl::load(std::path::Path::new("../kernels/nsa-fla.nsa")).unwrap();
    /// let sig = Signature { heads: spec.heads, head_dim: spec.head_dim, dtype: Default::default() };
    /// let plan = Plan::forward(&spec, &sig).unwrap();
    /// let outputs: Vec<&str> =
    ///     plan.tensors_with(Role::Out).map(|t| plan.tensor(t).name.as_str()).collect();
    /// assert_eq!(outputs, ["o_cmp", "idx_slc", "o_slc", "o"]);
    /// ```
    pub fn forward(spec: &nsac_dsl::Spec, signature: &Signature) -> Result<Plan, LowerError> {
        let plan = lower::forward(spec, signature)?;
        plan.verify()?;
        Ok(plan)
    }

    /// [`Plan::forward`] for the compiled-in part of a resolved problem.
    pub fn for_shape(spec: &nsac_dsl::Spec, shape: &Shape) -> Result<Plan, LowerError> {
        Plan::forward(spec, &Signature::of(shape))
    }

    /// The training pair of `spec` for `signature`, verified: the forward (every attention
    /// saving its log-sum-exp `lse_<b>` as a `Saved` tensor), then the backward for the
    /// upstream gradient `do` (an `In` tensor \[B,Tq,HQ,DV\]) writing the gradient of every
    /// input (`Grad` tensors `d<input>`). See `lower::backward`.
    ///
    /// ```
    /// use nsac_compiler::ir::{Plan, Role, Signature};
    /// let spec = nsac_dsl::load(std::path::Path::new("../kernels/nsa-fla.nsa")).unwrap();
    /// let sig = Signature { heads: spec.heads, head_dim: spec.head_dim, dtype: Default::default() };
    /// let plan = Plan::backward(&spec, &sig).unwrap();
    /// let grads: Vec<&str> =
    ///     plan.tensors_with(Role::Grad).map(|t| plan.tensor(t).name.as_str()).collect();
    /// assert_eq!(grads, ["dq", "dk", "dv", "dg_cmp", "dg_slc"]);
    /// assert!(plan.ops[plan.backward_start()].is_backward());
    /// ```
    pub fn backward(spec: &nsac_dsl::Spec, signature: &Signature) -> Result<Plan, LowerError> {
        if let Some((branch, form)) = spec.beyond_blocks() {
            return Err(LowerError::ForwardOnly {
                branch: branch.to_string(),
                form,
                pass: "backward",
            });
        }
        let forward = lower::forward(spec, signature)?;
        let plan = lower::backward(forward)?;
        plan.verify()?;
        Ok(plan)
    }

    /// The index of the first backward op (`ops.len()` for a forward-only plan): the ops before
    /// it are the forward pass, the rest the backward pass.
    pub fn backward_start(&self) -> usize {
        self.ops
            .iter()
            .position(Op::is_backward)
            .unwrap_or(self.ops.len())
    }

    /// The ops of selection forms beyond NSA's compress-scored blocks, as (branch, form), in op
    /// order: a gathered attention reading an `In` index tensor (given blocks), a top-k
    /// `within` another (hierarchical selection). A backend that
    /// computes only NSA's blocks refuses a plan listing any.
    pub fn selection_forms(&self) -> Vec<(&str, nsac_dsl::spec::SelectionForm)> {
        use nsac_dsl::spec::SelectionForm;
        let mut out = Vec::new();
        for op in &self.ops {
            if let Op::Attend(a) = op
                && let KeySet::Gather { idx, .. } = a.keys
                && self.tensor(idx).role == Role::In
            {
                out.push((a.branch.as_str(), SelectionForm::Given));
            }
            if let Op::TopK(t) = op
                && t.within.is_some()
            {
                out.push((t.branch.as_str(), SelectionForm::Within));
            }
        }
        out
    }

    /// Whether the plan has a backward pass.
    pub fn has_backward(&self) -> bool {
        self.backward_start() < self.ops.len()
    }

    /// The tensor behind an id.
    pub fn tensor(&self, id: TensorId) -> &Tensor {
        &self.tensors[id.0]
    }

    /// The tensor called `name`.
    pub fn tensor_named(&self, name: &str) -> Option<TensorId> {
        self.tensors
            .iter()
            .position(|t| t.name == name)
            .map(TensorId)
    }

    /// The tensors of role `role`, in declaration order.
    pub fn tensors_with(&self, role: Role) -> impl Iterator<Item = TensorId> + '_ {
        self.tensors
            .iter()
            .enumerate()
            .filter(move |(_, t)| t.role == role)
            .map(|(i, _)| TensorId(i))
    }

    /// The pool op of compress branch `branch`.
    pub fn pool_of(&self, branch: &str) -> Option<&Pool> {
        self.ops.iter().find_map(|op| match op {
            Op::Pool(p) if p.branch == branch => Some(p),
            _ => None,
        })
    }

    /// The op that writes `id`, with its index.
    pub fn producer(&self, id: TensorId) -> Option<(usize, &Op)> {
        self.ops
            .iter()
            .enumerate()
            .find(|(_, op)| op.writes().contains(&id))
    }

    /// The ops that read `id`.
    pub fn consumers(&self, id: TensorId) -> impl Iterator<Item = (usize, &Op)> + '_ {
        self.ops
            .iter()
            .enumerate()
            .filter(move |(_, op)| op.reads().contains(&id))
    }

    /// Checks the contract; see [`VerifyError`] for what is checked.
    pub fn verify(&self) -> Result<(), VerifyError> {
        verify::verify(self)
    }

    /// The stable text form (`nsac compile --emit plan`).
    pub fn text(&self) -> String {
        text::render(self)
    }
}
