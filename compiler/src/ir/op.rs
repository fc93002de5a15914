//! The op vocabulary of a [`super::Plan`]: a few general operations (pool, score, top-k, attend,
//! combine) that every branch kind lowers onto, and their backward counterparts (combine-grad,
//! attend-grad, pool-grad, grad-sum), each naming the tensors it reads and writes. What each op
//! computes is stated exactly in its docs, with the positional rules of [`super::rules`];
//! together they restate the semantics of the oracle (`kernels::reference`, forward and
//! backward).

use super::tensor::TensorId;

/// How a pool op reduces a block of keys (or values) to one compressed token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PoolKind {
    /// `K̃_j = (1/l)·Σ_i K[j·d+i]`.
    Mean,
    /// `K̃_j = Σ_i w[h,i]·K[j·d+i]` with one weight tensor `[H, l]` for keys and values.
    Weighted,
    /// `K̃_j[e] = Σ_{i,x} K[j·d+i, x]·wk[h, i·Dqk + x, e]`, `Ṽ` with `wv` and Dv.
    Linear,
}

impl PoolKind {
    pub fn name(self) -> &'static str {
        match self {
            PoolKind::Mean => "mean",
            PoolKind::Weighted => "weighted",
            PoolKind::Linear => "linear",
        }
    }
}

/// Which keys of its key tensor a query position attends to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeySet {
    /// Every key the query may see: raw keys `k ≤ t` ([`super::rules::causal_keys`]).
    Causal,
    /// Every compressed token the query sees: token `j` (covering raw keys `[j·d, j·d+l)`) iff
    /// `j·d + l − 1 ≤ t` ([`super::rules::visible_compressed`]).
    Compressed { block: usize, stride: usize },
    /// The keys of a sliding window ([`super::rules::window_keys`]).
    Window { size: usize },
    /// The keys of the blocks (of `granularity` keys; 1 = single tokens) listed per query and kv
    /// head in an index tensor `[B, Tq, H, n]`, restricted to the keys the query may see
    /// ([`super::rules::block_keys`]). Produced by a top-k, it is ascending and −1 padded; an
    /// `In` tensor (given blocks, `idx_<s>`) holds distinct block indices of the sequence and
    /// −1 in any order, which a backend checks before computing (a block wholly after a causal
    /// query adds no key).
    Gather { idx: TensorId, granularity: usize },
}

/// Softmax attention: for every query position `t` and query head `hq` (kv head `hq / G`),
/// `out[t,hq] = Σ_k p_k·V[k]` with `p = softmax_k(scale·q[t,hq]·K[k])` over the keys of
/// `keys`; 0 when there is none. With `lse`, also writes `log Σ_k exp(scale·q·K[k])` per
/// (t, hq), −∞ for an empty row.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Attend {
    pub branch: String,
    pub keys: KeySet,
    pub q: TensorId,
    pub k: TensorId,
    pub v: TensorId,
    pub out: TensorId,
    pub lse: Option<TensorId>,
}

/// Pools blocks of `block` keys (and values), `stride` apart, into compressed tokens, per
/// segment: token `j` covers keys `[j·d, j·d + l)` and exists iff `j·d + l ≤ L`
/// ([`super::rules::compressed_tokens`]); the segments' tokens follow each other in `kc`/`vc`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pool {
    pub branch: String,
    pub kind: PoolKind,
    pub block: usize,
    pub stride: usize,
    pub k: TensorId,
    pub v: TensorId,
    /// `[w]` for weighted, `[wk, wv]` for linear, empty for mean.
    pub weights: Vec<TensorId>,
    pub kc: TensorId,
    pub vc: TensorId,
}

/// Where a score op takes its scores from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ScoreSource {
    /// A compress branch's attention probabilities `p_c(t,hq,j) = exp(scale·q·K̃_j − lse)`
    /// (0 for invisible tokens), summed over the query heads of a kv head and spread over the
    /// blocks each compressed token overlaps, weighted by the overlap over the stride
    /// ([`super::rules::overlap`]).
    Compressed {
        branch: String,
        block: usize,
        stride: usize,
        q: TensorId,
        kc: TensorId,
        lse: TensorId,
    },
}

/// Scores the blocks of `granularity` keys per (query position, kv head): writes `out`
/// `[B, Tq, H, NB]` (0 for a block no compressed token overlaps).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Score {
    pub branch: String,
    pub source: ScoreSource,
    pub granularity: usize,
    pub out: TensorId,
}

/// The members a top-k always takes (their score counts as +∞).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Forced {
    /// Blocks `0 .. first`.
    pub first: usize,
    /// The `last` blocks ending at the query's own block.
    pub last: usize,
}

/// How a top-k orders equal scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tie {
    /// The lower index wins, identically on every backend.
    LowerIndex,
}

/// Hierarchical selection: a top-k's candidates restricted to the blocks inside the blocks an
/// outer top-k chose for the same query and kv head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Within {
    /// The outer top-k's chosen blocks `[B, Tq, H, k′]` (ascending, −1 padded).
    pub idx: TensorId,
    /// Keys per outer block (a multiple of this top-k's block).
    pub block: usize,
}

/// Picks, per (query position, kv head), the first `min(k, #candidates)` candidates ordered by
/// (score descending, tie rule) — candidates are the blocks of `block` keys the query may see
/// ([`super::rules::candidate_blocks`]), forced ones first ([`super::rules::is_forced`]) — and
/// writes them to `idx` `[B, Tq, H, k]` in ascending order, padded with −1. With `within`, a
/// block is a candidate only if its first key lies in one of the outer choice's blocks (and,
/// forced or not, only candidates are taken).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TopK {
    pub branch: String,
    pub k: usize,
    pub block: usize,
    pub forced: Forced,
    pub tie: Tie,
    pub scores: TensorId,
    pub idx: TensorId,
    pub within: Option<Within>,
}

/// How a combine mixes branch outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CombineMode {
    /// `o = Σ_b g_b·o_b` with one gate tensor `[B, Tq, HQ]` per branch, used as given.
    Gate,
    /// `o = Σ_b o_b`.
    Sum,
}

/// One branch output of a combine, with its gate (`None` for `sum`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Term {
    pub branch: String,
    pub out: TensorId,
    pub gate: Option<TensorId>,
}

/// `out[t,hq] = Σ_terms g(t,hq)·o_b(t,hq)` in term order (gates 1 for `sum`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Combine {
    pub mode: CombineMode,
    pub terms: Vec<Term>,
    pub out: TensorId,
}

/// One term of a [`CombineGrad`]: the forward's branch output and gate, and what the backward
/// writes for it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TermGrad {
    pub branch: String,
    /// The forward's `o_<b>` \[B,Tq,HQ,DV\].
    pub out: TensorId,
    /// The gate `g_<b>` (`None` for `sum`).
    pub gate: Option<TensorId>,
    /// `dg_<b>` \[B,Tq,HQ\] (a `Grad`; `None` for `sum`).
    pub d_gate: Option<TensorId>,
    /// `do_<b>` \[B,Tq,HQ,DV\]: the branch's upstream gradient `g_b·dO` (`dO` for `sum`).
    pub d_out: TensorId,
    /// `delta_<b>` \[B,Tq,HQ\]: `D = Σ_x do_b·o_b`, the FlashAttention-2 row term.
    pub delta: TensorId,
}

/// The backward of a [`Combine`] for the upstream gradient `d_out` (`do`): per term,
/// `dg_b = Σ_x dO·o_b` (gate mode), `do_b = g_b·dO` and `delta_b = Σ_x do_b·o_b`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CombineGrad {
    pub mode: CombineMode,
    pub d_out: TensorId,
    pub terms: Vec<TermGrad>,
}

/// The backward of an [`Attend`] over the same key set (the FlashAttention-2 recipe): for every
/// query `t`, query head `hq` and key `k` of its key set, P is recomputed from q, K and the
/// saved `lse` (`p_k = exp(scale·q·K[k] − lse)`), `dp_k = do_b·V[k]`,
/// `ds_k = p_k·(dp_k − delta)`; then `dq[t,hq] = scale·Σ_k ds_k·K[k]`,
/// `dk[k] = scale·Σ_{t,hq} ds_k·q[t,hq]` and `dv[k] = Σ_{t,hq} p_k·do_b[t,hq]`, summed over the
/// query heads of each kv head's group and over every query that sees the key. The chosen
/// blocks of a gathered key set are read, never differentiated. A query whose key set is
/// empty contributes nothing (zero gradient, never NaN).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AttendGrad {
    pub branch: String,
    pub keys: KeySet,
    pub q: TensorId,
    pub k: TensorId,
    pub v: TensorId,
    /// The forward's saved log-sum-exp \[B,Tq,HQ\].
    pub lse: TensorId,
    /// The branch's upstream gradient and row term from the [`CombineGrad`].
    pub d_out: TensorId,
    pub delta: TensorId,
    /// This branch's part of the query gradient \[B,Tq,HQ,DQK\].
    pub dq: TensorId,
    /// The gradient of its keys and values (shaped as `k` and `v`, f32).
    pub dk: TensorId,
    pub dv: TensorId,
}

/// The backward of a [`Pool`]: pushes the compressed tokens' gradients `d_kc`/`d_vc` back into
/// the pooled keys/values (`dk`/`dv`, shaped as `k`/`v`) and into the pool's weights:
/// `mean` `dK[j·d+i] += dK̃_j/l`; `weighted` `dK[j·d+i] += w[h,i]·dK̃_j`,
/// `dw[h,i] = Σ_j K[j·d+i]·dK̃_j + V[j·d+i]·dṼ_j` (one `dw` for both); `linear`
/// `dK[j·d+i, f] += Σ_e wk[h, i·DQK+f, e]·dK̃_j[e]`, `dwk[h, i·DQK+f, e] = Σ_j K[j·d+i, f]·dK̃_j[e]`
/// (V with `wv`, `dwv`). Sums over tokens and segments run in a fixed order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolGrad {
    pub branch: String,
    pub kind: PoolKind,
    pub block: usize,
    pub stride: usize,
    pub k: TensorId,
    pub v: TensorId,
    /// The forward pool's weights (`[w]`, `[wk, wv]` or none).
    pub weights: Vec<TensorId>,
    pub d_kc: TensorId,
    pub d_vc: TensorId,
    pub dk: TensorId,
    pub dv: TensorId,
    /// The weights' gradients, one per weight tensor, in the same order.
    pub d_weights: Vec<TensorId>,
}

/// `out = Σ parts` elementwise, in part order (0 without parts): a gradient that several
/// branches contribute to (`dq`, `dk`, `dv`, `dk_<b>`, `dv_<b>`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GradSum {
    pub parts: Vec<TensorId>,
    pub out: TensorId,
}

/// One operation of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Op {
    Pool(Pool),
    Score(Score),
    TopK(TopK),
    Attend(Attend),
    Combine(Combine),
    CombineGrad(CombineGrad),
    AttendGrad(AttendGrad),
    PoolGrad(PoolGrad),
    GradSum(GradSum),
}

impl Op {
    /// The lower-case name of the text form.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Pool(_) => "pool",
            Op::Score(_) => "score",
            Op::TopK(_) => "topk",
            Op::Attend(_) => "attend",
            Op::Combine(_) => "combine",
            Op::CombineGrad(_) => "combine_grad",
            Op::AttendGrad(_) => "attend_grad",
            Op::PoolGrad(_) => "pool_grad",
            Op::GradSum(_) => "grad_sum",
        }
    }

    /// Whether the op belongs to a backward pass.
    pub fn is_backward(&self) -> bool {
        matches!(
            self,
            Op::CombineGrad(_) | Op::AttendGrad(_) | Op::PoolGrad(_) | Op::GradSum(_)
        )
    }

    /// The tensors the op reads, in a fixed order.
    pub fn reads(&self) -> Vec<TensorId> {
        match self {
            Op::Pool(p) => [p.k, p.v]
                .into_iter()
                .chain(p.weights.iter().copied())
                .collect(),
            Op::Score(s) => match &s.source {
                ScoreSource::Compressed { q, kc, lse, .. } => vec![*q, *kc, *lse],
            },
            Op::TopK(t) => std::iter::once(t.scores)
                .chain(t.within.map(|w| w.idx))
                .collect(),
            Op::Attend(a) => {
                let mut r = vec![a.q, a.k, a.v];
                if let KeySet::Gather { idx, .. } = a.keys {
                    r.push(idx);
                }
                r
            }
            Op::Combine(c) => c
                .terms
                .iter()
                .flat_map(|t| std::iter::once(t.out).chain(t.gate))
                .collect(),
            Op::CombineGrad(c) => std::iter::once(c.d_out)
                .chain(
                    c.terms
                        .iter()
                        .flat_map(|t| std::iter::once(t.out).chain(t.gate)),
                )
                .collect(),
            Op::AttendGrad(a) => {
                let mut r = vec![a.q, a.k, a.v, a.lse, a.d_out, a.delta];
                if let KeySet::Gather { idx, .. } = a.keys {
                    r.push(idx);
                }
                r
            }
            Op::PoolGrad(p) => [p.k, p.v]
                .into_iter()
                .chain(p.weights.iter().copied())
                .chain([p.d_kc, p.d_vc])
                .collect(),
            Op::GradSum(g) => g.parts.clone(),
        }
    }

    /// The tensors the op writes, in a fixed order.
    pub fn writes(&self) -> Vec<TensorId> {
        match self {
            Op::Pool(p) => vec![p.kc, p.vc],
            Op::Score(s) => vec![s.out],
            Op::TopK(t) => vec![t.idx],
            Op::Attend(a) => std::iter::once(a.out).chain(a.lse).collect(),
            Op::Combine(c) => vec![c.out],
            Op::CombineGrad(c) => c
                .terms
                .iter()
                .flat_map(|t| t.d_gate.into_iter().chain([t.d_out, t.delta]))
                .collect(),
            Op::AttendGrad(a) => vec![a.dq, a.dk, a.dv],
            Op::PoolGrad(p) => [p.dk, p.dv]
                .into_iter()
                .chain(p.d_weights.iter().copied())
                .collect(),
            Op::GradSum(g) => vec![g.out],
        }
    }

    /// The branch the op belongs to (`None` for the combine, its backward and the sums).
    pub fn branch(&self) -> Option<&str> {
        match self {
            Op::Pool(p) => Some(&p.branch),
            Op::Score(s) => Some(&s.branch),
            Op::TopK(t) => Some(&t.branch),
            Op::Attend(a) => Some(&a.branch),
            Op::AttendGrad(a) => Some(&a.branch),
            Op::PoolGrad(p) => Some(&p.branch),
            Op::Combine(_) | Op::CombineGrad(_) | Op::GradSum(_) => None,
        }
    }
}
