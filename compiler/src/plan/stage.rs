//! The stage and buffer types of the `Plan` IR: what each stage reads, writes and computes.
//!
//! Each stage struct documents its exact semantics in terms of the segment-local index spaces of
//! the parent module; together they restate docs/ARCHITECTURE.md §3 operationally.

use nsac_dsl::spec::{CombineMode, Pool};

/// Index into [`super::Plan::buffers`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BufferId(pub usize);

/// Element type of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Elem {
    F32,
    I32,
}

/// Who provides or consumes a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BufferRole {
    /// Read from the caller's `Inputs` under [`Buffer::name`].
    Input,
    /// Returned to the caller under [`Buffer::name`].
    Output,
    /// Produced and consumed inside the call.
    Intermediate,
}

/// A named, dense, row-major tensor.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Buffer {
    pub name: String,
    pub role: BufferRole,
    pub elem: Elem,
    pub dims: Vec<usize>,
}

/// One step of the plan.
#[derive(Debug, Clone, PartialEq)]
pub enum Stage {
    Pool(PoolStage),
    CompressedAttention(CompressedAttentionStage),
    SelectBlocks(SelectBlocksStage),
    SelectedAttention(SelectedAttentionStage),
    WindowAttention(WindowAttentionStage),
    Combine(CombineStage),
}

/// Pools key/value blocks into compressed tokens, per (b, segment, kv head).
///
/// For token `j` of a segment (covering local keys `[j·stride, j·stride + block)`):
/// `Mean`: `K̃_j = (1/l)·Σ_i K[j·d+i]`; `Weighted`: `K̃_j = Σ_i w[h,i]·K[j·d+i]` (same for V);
/// `Linear`: `K̃_j[e] = Σ_{i,x} K[j·d+i, x]·wk[h, i·Dqk + x, e]`, `Ṽ` with `wv` and Dv.
/// Reads `k`, `v` (and `weights`); writes `kc`, `vc`.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolStage {
    pub branch: String,
    pub pool: Pool,
    /// l: keys per compressed token.
    pub block: usize,
    /// d: distance between the first keys of consecutive tokens.
    pub stride: usize,
    pub k: BufferId,
    pub v: BufferId,
    /// `[w]` for weighted, `[wk, wv]` for linear, empty for mean.
    pub weights: Vec<BufferId>,
    pub kc: BufferId,
    pub vc: BufferId,
    /// First token of each segment within `kc`/`vc` (one entry per segment).
    pub cmp_offsets: Vec<usize>,
}

impl PoolStage {
    /// Number of compressed tokens of a segment of `len` keys.
    pub fn tokens_in(&self, len: usize) -> usize {
        if len >= self.block {
            (len - self.block) / self.stride + 1
        } else {
            0
        }
    }

    /// Number of tokens visible to local query `t` of a segment of `len` keys:
    /// causal: tokens `j` with `j·d + l − 1 ≤ t`; otherwise all of them.
    pub fn visible_to(&self, t: usize, len: usize, causal: bool) -> usize {
        let all = self.tokens_in(len);
        if !causal {
            return all;
        }
        if t + 1 < self.block {
            0
        } else {
            ((t + 1 - self.block) / self.stride + 1).min(all)
        }
    }
}

/// Softmax attention of every query head over the compressed tokens it sees.
///
/// Per work item (b, segment, h, t) and each of the G query heads `hq`:
/// `o_c(t,hq) = Σ_j p_j·Ṽ_j`, `p_j = softmax_j(scale·q_t·K̃_j)` over the visible tokens
/// ([`PoolStage::visible_to`]); 0 when none is visible. Reads `q`, `kc`, `vc`; writes `out`
/// (`o_<c>`) and `lse` (`lse_<c>`, −∞ when nothing is visible).
#[derive(Debug, Clone, PartialEq)]
pub struct CompressedAttentionStage {
    pub branch: String,
    pub q: BufferId,
    pub kc: BufferId,
    pub vc: BufferId,
    pub out: BufferId,
    pub lse: BufferId,
}

/// Scores selection blocks with a compress branch's probabilities and picks the top-n.
///
/// Per work item (b, segment, h, t): candidates are blocks `i` with `i·block ≤ t` (causal) or
/// `i·block < L`. Score `p_s(i) = Σ_{hq in group} Σ_j p_c(t,hq,j)·|[j·d, j·d+l) ∩ [i·l′,(i+1)·l′)|/d`.
/// Blocks `0..keep_first` and `⌊t/l′⌋−keep_last+1 ..= ⌊t/l′⌋` (when candidates) score +∞. The
/// first `min(top, #candidates)` candidates by (score desc, index asc) are written to `idx`
/// `[B,T,H,top]` in ascending index order, padded with −1.
/// Reads `q`, the scoring branch's `kc` and `lse`; writes `idx`.
#[derive(Debug, Clone, PartialEq)]
pub struct SelectBlocksStage {
    pub branch: String,
    /// The compress branch whose probabilities score the blocks.
    pub scored_by: String,
    /// l′: keys per selection block.
    pub block: usize,
    pub top: usize,
    pub keep_first: usize,
    pub keep_last: usize,
    /// l and d of the scoring compress branch.
    pub cmp_block: usize,
    pub cmp_stride: usize,
    pub q: BufferId,
    pub kc: BufferId,
    pub lse: BufferId,
    pub idx: BufferId,
}

impl SelectBlocksStage {
    /// Number of candidate blocks for local query `t` in a segment of `len` keys.
    pub fn candidates(&self, t: usize, len: usize, causal: bool) -> usize {
        if causal {
            t / self.block + 1
        } else {
            len.div_ceil(self.block)
        }
    }
}

/// Softmax attention over the keys of the chosen blocks.
///
/// Per work item (b, segment, h, t): keys `k` in `[i·block, (i+1)·block)` for each `i` in
/// `idx[t, h]` (−1 entries skipped), restricted to `k ≤ t` (causal) or `k < L`. Reads `q`, `k`,
/// `v`, `idx`; writes `out` (`o_<s>`).
#[derive(Debug, Clone, PartialEq)]
pub struct SelectedAttentionStage {
    pub branch: String,
    pub block: usize,
    pub top: usize,
    pub q: BufferId,
    pub k: BufferId,
    pub v: BufferId,
    pub idx: BufferId,
    pub out: BufferId,
}

/// Softmax attention over a sliding window of keys.
///
/// Per work item (b, segment, h, t): keys `max(0, t−size+1) ..= t` (causal), or
/// `max(0, t−size+1) .. min(L, t+size)` (non-causal). Reads `q`, `k`, `v`; writes `out`.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowAttentionStage {
    pub branch: String,
    pub size: usize,
    pub q: BufferId,
    pub k: BufferId,
    pub v: BufferId,
    pub out: BufferId,
}

impl WindowAttentionStage {
    /// The local key range `[lo, hi)` of query `t` in a segment of `len` keys.
    pub fn keys(&self, t: usize, len: usize, causal: bool) -> (usize, usize) {
        let lo = (t + 1).saturating_sub(self.size);
        let hi = if causal {
            t + 1
        } else {
            (t + self.size).min(len)
        };
        (lo, hi)
    }
}

/// One branch's contribution to the combined output.
#[derive(Debug, Clone, PartialEq)]
pub struct CombineTerm {
    pub branch: String,
    /// `o_<b>`.
    pub out: BufferId,
    /// `g_<b>` `[B,T,HQ]`; `None` for `sum` (gate 1).
    pub gate: Option<BufferId>,
}

/// `o(t,hq) = Σ_b g_b(t,hq)·o_b(t,hq)` (gates 1 for `sum`). Reads every term; writes `out`.
#[derive(Debug, Clone, PartialEq)]
pub struct CombineStage {
    pub mode: CombineMode,
    pub terms: Vec<CombineTerm>,
    pub out: BufferId,
}
