//! The reference implementation: plain, obviously-correct f64 loops that *define* what every
//! generated kernel computes (docs/ARCHITECTURE.md §3). Every backend and Variant is tested against
//! it.
//!
//! # Semantics, exactly
//!
//! Inputs are the f32 tensors of [`crate::io`] (row-major: `q` \[B,T,HQ,Dqk\], `k` \[B,T,H,Dqk\],
//! `v` \[B,T,H,Dv\], gates `g_<b>` \[B,T,HQ\], …), widened exactly to f64. Every rule below works
//! inside one *sequence* ([`Sequence`]): a batch row `[0, T)` for batched problems, or one
//! `cu_seqlens` segment for varlen problems (B = 1). Positions t, keys and block indices are
//! relative to the sequence start, T_seg is its length, and nothing crosses a sequence
//! boundary. Query head qh reads kv head ⌊qh/G⌋, G = HQ/H; the scale is
//! `spec.scale_for(Dqk)` (1/√Dqk unless the spec gives one).
//!
//! - **compress c** (block l, stride d; [`pool`], [`compress`]): token j covers keys
//!   [j·d, j·d+l) and exists iff j·d+l ≤ T_seg. `mean` pools by the mean; `weighted` by
//!   Σ_i w\[h,i\]·K\[j·d+i,h\] with ONE weight tensor `w_<c>` \[H,l\] for both K and V; `linear` by
//!   K̃_j\[h,e\] = Σ_{i,f} K\[j·d+i,h,f\]·wk\[h,i·Dqk+f,e\] (`wk_<c>` \[H,l·Dqk,Dqk\]) and Ṽ likewise
//!   with `wv_<c>` \[H,l·Dv,Dv\]. Causal: query t sees j iff j·d+l−1 ≤ t; non-causal: every
//!   token. o_c = softmax(s·q·K̃ᵀ)·Ṽ over the visible tokens; none visible → 0 (and all its
//!   probabilities are 0).
//! - **select s** (block l′, top n, scored_by c, keep_first a, keep_last b; [`score`],
//!   [`select`]): block i covers keys [i·l′, (i+1)·l′) ∩ [0, T_seg). Candidates: i·l′ ≤ t
//!   (causal) or i·l′ < T_seg (non-causal). Score per kv head h:
//!   p_s(t,h,i) = Σ_{qh∈group(h)} Σ_j p_c(t,qh,j)·|[j·d, j·d+l) ∩ [i·l′,(i+1)·l′)| / d,
//!   with c's probabilities (computed from c's own K̃ when c has `kv = own`). Forced
//!   (+∞): blocks 0..a−1 and ⌊t/l′⌋−b+1 ..= ⌊t/l′⌋, when they are candidates. The chosen
//!   blocks are the first min(n, #candidates) candidates ordered by (score desc, index asc) —
//!   exact ties go to the lower index. `idx_<s>` \[B,T,H,n\] lists them in ascending order,
//!   padded with −1. o_s = softmax attention over the keys of the chosen blocks with k ≤ t
//!   (causal) / all their keys (non-causal), read from s's K/V (its own with `kv = own`).
//! - **window w** ([`window`]): causal keys max(0, t−w+1) ..= t; non-causal the symmetric
//!   window |k − t| ≤ w−1, i.e. the keys [t−w+1, t+w) ∩ [0, T_seg) — a window is local by
//!   definition, so `causal = false` does not make it see every key. (A window of 0 attends
//!   nothing.)
//! - **combine**: `gate(b1, …)`: o = Σ g_b·o_b with `g_<b>` used as given;
//!   `sum(…)`: all gates 1.
//! - Softmax subtracts the row maximum; an empty row gives output 0, never NaN.
//!
//! # Gradients
//!
//! [`backward`] takes the upstream gradient dO \[B,T,HQ,Dv\] (`do`, f32 like every input) and
//! returns the exact gradient of L = Σ dO ∘ o with respect to every input of the call
//! ([`Gradients`]): the key is the input's name prefixed with `d` ([`gradient_name`]) and the
//! shape is the input's — `dq`, `dk`, `dv`; `dg_<b>` for each gate of a gated combine;
//! `dw_<c>` (weighted pool), `dwk_<c>`/`dwv_<c>` (linear pool); `dk_<b>`/`dv_<b>` for
//! branches with `kv = own`. An input without influence gets an all-zero gradient.
//!
//! - **combine**: dg_b(t,qh) = dO(t,qh)·o_b(t,qh); branch b's upstream is g_b·dO (`sum`: dO).
//! - **attention rows** (every branch): with p = softmax(s·q·kᵢ) over the row's keys,
//!   dvᵢ += pᵢ·dO_b, dsᵢ = pᵢ·(dO_b·vᵢ − dO_b·o_b), dq += s·Σᵢ dsᵢ·kᵢ, dkᵢ += s·dsᵢ·q — summed
//!   over the query heads of each kv head's group and over all queries.
//! - **selection passes no gradient** (as in the paper): which blocks a query attends is
//!   piecewise constant, so the block scores are constants; o_s is differentiated with the
//!   chosen blocks held fixed, and the scoring branch's probabilities get no gradient from it.
//! - **compressed keys and values** get gradient only through the compressed branch's own
//!   attention (when that branch is combined), and flow back through the pool: mean gives
//!   dK += dK̃/l to each covered key, `weighted` dK += w·dK̃ and dw\[h,i\] += K·dK̃ + V·dṼ
//!   (one weight for both), `linear` dK = dK̃·wkᵀ per block row and dwk += K ⊗ dK̃ (V likewise).
//! - **empty rows** (a query that sees no compressed token, a window of 0, no block chosen)
//!   have output 0 and give exactly zero gradient, never NaN.
//!
//! [`backward_with_blocks`] is [`forward_with_blocks`]' twin: the selected attention
//! differentiated with given blocks. The oracle recomputes the forward; the only state a
//! forward/backward pair must keep is the chosen blocks — `forward`, then
//! `backward_with_blocks` with its `selected`, equals `backward`. Queries run in parallel and
//! every sum has a fixed order: the gradients are bit-identical for any number of threads. They
//! are checked against central finite differences of every input element (relative error
//! ≤ 1e-6; the tests' `backward` and `grad_check`).
//!
//! # Decode
//!
//! Cached inference ([`decode`]), defined for causal specs only (without causality a later key
//! would change earlier outputs; `causal = false` is refused with a typed error). A cache holds,
//! per sequence, the keys and values seen so far (shared `k`/`v` and every `kv = own` branch's
//! `k_<b>`/`v_<b>`) and, per compress branch, the compressed tokens completed so far: token j
//! exists once keys [j·d, j·d+l) are all in the cache (with d < l one completes at every
//! stride), pooled once, when the key completing it arrives. A new query t is answered against
//! the cache as it was right after its own key arrived: keys [0, t], the compressed tokens
//! completed among them, the selection blocks 0 ..= ⌊t/l′⌋.
//!
//! - **The rule**: decoding query t against the cache gives exactly row t of [`forward`] over
//!   the whole sequence — the same scale, the same forced blocks, the same tie rule; the
//!   selection's candidates are the blocks with i·l′ ≤ t. So prefilling T tokens and stepping
//!   N gives rows T..T+N of the forward over T+N tokens, for every T ≥ 0.
//! - **Chunked prefill** (a block of Tq new queries against a cache of Tk ≥ Tq keys, the
//!   chunk's own keys included) is the same rule for each query: query t sees keys ≤ t.
//! - **Ragged batches**: one cache per sequence, each with its own length
//!   ([`decode::step_batch`]).
//! - The decode oracle is written from this rule, not by running the forward on a prefix,
//!   and sums in the forward's order: its rows are bit-identical to the forward's (`o`, every
//!   `o_<b>`, every `idx_<b>`), which its tests check exactly on random inputs.
//!
//! # Output and API
//!
//! - [`forward`] returns `o`, every branch's ungated `o_<b>` and every select branch's
//!   `idx_<b>` ([`Output`]).
//! - [`backward`] / [`backward_with_blocks`] return the gradients above ([`Gradients`]).
//! - [`decode`]: a [`decode::Model`] (a causal spec with its sizes and pool weights), a
//!   [`decode::Cache`] per sequence, [`decode::prefill`], [`decode::Cache::step`],
//!   [`decode::Cache::chunk`] and [`decode::step_batch`], returning [`decode::Decoded`] rows.
//! - [`pooled`], [`compressed_probabilities`] and [`block_scores`] expose the intermediates
//!   per sequence (in the order of [`sequences`]) so a backend can be checked stage by stage.
//! - Near-ties: a backend scoring blocks in f32 may order two blocks whose f64 scores differ by
//!   less than its rounding the other way. [`score::is_valid_choice`] accepts such a choice
//!   (within a tolerance), and [`forward_with_blocks`] recomputes every output with the
//!   backend's blocks, so its selected attention can still be checked exactly.
//! - [`relative_error`] is docs/ARCHITECTURE.md §4's measure, max |out − ref| / max |ref|, for
//!   comparing a backend's f32 tensors with the oracle's.
//! - The rules themselves are public as small functions ([`compress::visible`],
//!   [`score::is_candidate`], [`score::is_forced`], [`score::choose`], [`select::keys`],
//!   [`window::keys`], [`pool::token_count`], [`score::block_count`]).
//!
//! Speed: query positions run in parallel (rayon); T = 4096, HQ = 16, H = 1, D = 64 with
//! paper-like branches takes about 8 CPU-seconds in release (see the ignored `large` test).
//! The backward recomputes the forward and takes several times as long: `nsa-paper.nsa` at
//! T = 1000, heads 16/4, head dims 64/32 took 0.9 s forward and 6.4 s backward on a busy
//! 2-core machine (the ignored `large_paper_backward_is_finite`).
//!
//! # Checks
//!
//! The oracle first checks the shape, the spec's references and sizes, and the inputs
//! (`crate::io::check_inputs`), and returns a [`ReferenceError`] instead of panicking.

mod backward;
mod call;
pub mod choose;
mod combine;
mod compare;
pub mod compress;
pub mod decode;
mod given;
pub mod index;
mod inspect;
pub mod pool;
mod run;
pub mod score;
pub mod select;
mod softmax;
mod tokens;
pub mod verify;
pub mod window;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use nsac_dsl::problem::Shape;
use nsac_dsl::spec::Spec;

use crate::io::{InputError, Inputs, Tensor};

use call::Call;

pub use backward::{Gradients, backward, backward_with_blocks, gradient_name};
pub use compare::relative_error;
pub use inspect::{block_scores, compressed_probabilities, pooled};
pub use pool::Pooled;
pub use softmax::softmax;
pub use tokens::{Sequence, sequences};

/// Everything the oracle computes for one call.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    /// The combined output `o` \[B,T,HQ,Dv\].
    pub o: Tensor<f64>,
    /// Each branch's own (ungated) output `o_<b>` \[B,T,HQ,Dv\], by branch name.
    pub branches: BTreeMap<String, Tensor<f64>>,
    /// Each select branch's chosen blocks `idx_<b>` \[B,T,H,top\]: block indices in ascending
    /// order, padded with −1 where fewer than `top` blocks are candidates.
    pub selected: BTreeMap<String, Tensor<i32>>,
}

/// Why the oracle refused a call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("bad problem shape: {0}")]
    BadShape(String),
    #[error("the softmax scale must be finite and positive (got {0})")]
    BadScale(String),
    #[error("two branches are named `{0}`")]
    DuplicateBranch(String),
    #[error("`{used_by}` refers to an unknown branch `{name}`")]
    UnknownBranch { name: String, used_by: String },
    #[error("select branch `{select}` is scored by `{scored_by}`, which is not a compress branch")]
    NotCompress { select: String, scored_by: String },
    #[error("branch `{branch}` is not a {expected} branch")]
    WrongKind {
        branch: String,
        expected: &'static str,
    },
    #[error("branch `{branch}` has {field} = 0")]
    ZeroSize { branch: String, field: &'static str },
    #[error("the blocks given for `{branch}` are invalid: {reason}")]
    BadBlocks { branch: String, reason: String },
    #[error("tensor `{0}` would be too large to index")]
    TooLarge(String),
    #[error("select branch `{0}` is within itself through a cycle of `within`")]
    WithinCycle(String),
    #[error("branch `{branch}` uses {}; the oracle defines it for the forward only, not for {pass} yet", form.describe())]
    ForwardOnly {
        branch: String,
        form: nsac_dsl::spec::SelectionForm,
        pass: &'static str,
    },
}

/// Runs `spec` on `shape` with `inputs` in f64.
pub fn forward(spec: &Spec, shape: &Shape, inputs: &Inputs) -> Result<Output, ReferenceError> {
    let call = Call::new(spec, shape, inputs)?;
    run::run(&call, shape, inputs, &[])
}

/// Like [`forward`], but every select branch named in `blocks` attends the given blocks
/// (`idx_<b>` tensors in the output contract's form) instead of choosing its own; the output's
/// `selected` then holds the given blocks. Use it to check a backend's selected attention when
/// its f32 scores broke a near-tie differently (see [`score::is_valid_choice`]).
pub fn forward_with_blocks(
    spec: &Spec,
    shape: &Shape,
    inputs: &Inputs,
    blocks: &BTreeMap<String, Tensor<i32>>,
) -> Result<Output, ReferenceError> {
    let call = Call::new(spec, shape, inputs)?;
    let given = given::resolve(&call, shape, blocks)?;
    run::run(&call, shape, inputs, &given)
}
