//! The `Plan`: the one IR between the DSL and every backend (docs/ARCHITECTURE.md §1).
//!
//! A [`Plan`] is a validated [`Spec`] applied to a concrete [`Shape`], lowered into an ordered
//! list of [`Stage`]s that read and write named [`Buffer`]s with explicit shapes. Backends
//! (`compiler::cpu`, `compiler::ptx`) never look at the spec's syntax; they walk the stages.
//! A Plan says WHAT each stage computes and through which buffers; HOW (tiles, fusion,
//! threads) is a backend's Variant.
//!
//! # Index spaces
//!
//! * `b` — batch row, `0..batch` (1 for varlen problems).
//! * segment — a `(start, end)` range of token positions within a row ([`Dims::segments`]);
//!   batched problems have one segment `(0, T)`, varlen problems one per `cu_seqlens` pair.
//!   All positional rules (causality, blocks, windows) are relative to the segment start: a
//!   query at absolute position `p` in segment `(s, e)` has local position `t = p − s` and the
//!   segment length is `L = e − s`. Nothing crosses a segment boundary.
//! * `h` — kv head, `0..heads_kv`; query head `hq` belongs to kv head `hq / group`.
//!
//! # The work item of every attention stage
//!
//! Every attention stage is defined per *(b, segment, kv head h, local query position t)*: the
//! `group` query heads `h·G .. (h+1)·G` of that position attend to exactly the same set of keys
//! (compressed tokens, selected blocks or window). A backend can therefore make the G query
//! heads the rows of one matrix tile (`Q` tile `[G, Dqk]` × `Kᵀ` tile `[Dqk, keys]`), which is
//! what the CPU backend does and what a GPU backend should do (tile rows = G heads, possibly
//! times several positions).
//!
//! # Buffers
//!
//! Shapes are row-major. Inputs follow `kernels::io` (`q` `[B,T,HQ,Dqk]`, `k` `[B,T,H,Dqk]`,
//! `v` `[B,T,H,Dv]`, `g_<b>` `[B,T,HQ]`, `k_<b>`/`v_<b>` for `kv = own`, pool weights); outputs
//! are `o` and `o_<b>` `[B,T,HQ,Dv]` and `idx_<b>` `[B,T,H,top]` (i32). Intermediates:
//!
//! * `kc_<c>` `[B, NC, H, Dqk]`, `vc_<c>` `[B, NC, H, Dv]` — compressed tokens of compress
//!   branch `c`, segment after segment; segment `s` owns tokens
//!   `cmp_offsets[s] .. cmp_offsets[s] + n_c(L_s)` with `n_c(L) = (L − l)/d + 1` if `L ≥ l`,
//!   else 0 ([`PoolStage::tokens_in`]).
//! * `lse_<c>` `[B, T, HQ]` — the log-sum-exp of the scaled scores of compress branch `c`
//!   per query head (−∞ when the query sees no compressed token). With it, any consumer can
//!   recompute the probabilities `p_c(t,h,j) = exp(s·q·K̃_j − lse)`.
//!
//! # Invariants (checked by [`Plan::new`])
//!
//! * Stages are in dependency order: `Pool(c)` before `CompressedAttention(c)` before every
//!   `SelectBlocks` scored by `c`; `SelectBlocks(s)` before `SelectedAttention(s)`; every
//!   branch stage before `Combine`. The order is deterministic (spec declaration order).
//! * Each buffer is written by exactly one stage; a stage only reads buffers that are inputs or
//!   written by an earlier stage.
//! * Every stage writes disjoint rows per work item, so work items run in any order/in parallel.
//!
//! A backend may fuse adjacent stages when the buffer between them is consumed only inside the
//! fused group (the CPU backend fuses `CompressedAttention` + `SelectBlocks` by keeping the
//! probabilities of one work item in scratch instead of writing `lse_<c>`); the result must equal
//! the unfused semantics.

mod build;
mod stage;

pub use build::PlanError;
pub use stage::{
    Buffer, BufferId, BufferRole, CombineStage, CombineTerm, CompressedAttentionStage, Elem,
    PoolStage, SelectBlocksStage, SelectedAttentionStage, Stage, WindowAttentionStage,
};

use nsac_dsl::problem::{DType, Shape};
use nsac_dsl::spec::Spec;

/// The spec's pooling and combine kinds, which stages carry; re-exported so that backends name
/// them through the Plan.
pub use nsac_dsl::spec::{CombineMode, Pool};

/// Every concrete size a stage needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Dims {
    pub batch: usize,
    /// Tokens per row (`T`).
    pub seq_len: usize,
    /// `(start, end)` token ranges within each row; see the module docs.
    pub segments: Vec<(usize, usize)>,
    pub heads_q: usize,
    pub heads_kv: usize,
    /// G = heads_q / heads_kv.
    pub group: usize,
    pub dqk: usize,
    pub dv: usize,
    /// The softmax scale applied to q·k (the spec's, or 1/√Dqk).
    pub scale: f64,
    pub causal: bool,
    pub dtype: DType,
}

/// A spec lowered onto a shape: buffers and stages in execution order.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The spec's name (used for symbol names of generated code).
    pub name: String,
    pub dims: Dims,
    /// Every buffer any stage touches; a [`BufferId`] indexes this list.
    pub buffers: Vec<Buffer>,
    pub stages: Vec<Stage>,
}

impl Plan {
    /// Lowers `spec` on `shape`; fails on specs that are not internally consistent.
    pub fn new(spec: &Spec, shape: &Shape) -> Result<Plan, PlanError> {
        build::lower(spec, shape)
    }

    /// The buffer behind an id.
    pub fn buffer(&self, id: BufferId) -> &Buffer {
        &self.buffers[id.0]
    }

    /// The buffer with this name.
    pub fn buffer_named(&self, name: &str) -> Option<BufferId> {
        self.buffers
            .iter()
            .position(|b| b.name == name)
            .map(BufferId)
    }

    /// The pool stage of compress branch `name`.
    pub fn pool_of(&self, name: &str) -> Option<&PoolStage> {
        self.stages.iter().find_map(|s| match s {
            Stage::Pool(p) if p.branch == name => Some(p),
            _ => None,
        })
    }

    /// Number of select stages scored by compress branch `name`.
    pub fn selects_scored_by(&self, name: &str) -> usize {
        self.stages
            .iter()
            .filter(|s| matches!(s, Stage::SelectBlocks(sb) if sb.scored_by == name))
            .count()
    }
}
