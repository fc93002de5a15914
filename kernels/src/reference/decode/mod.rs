//! Decode: cached inference in the oracle, written independently of the forward's per-query
//! driver — by the cache rule, never by running [`forward`](super::forward) on a prefix.
//!
//! A served model runs attention once over the prompt and then one token at a time against
//! what it has seen. Here a [`Model`] is a causal spec checked once (sizes, pool weights); a
//! [`Cache`] holds what one sequence has seen; [`prefill`] fills one from the first T tokens,
//! [`Cache::step`] answers one new token, [`Cache::chunk`] a block of new tokens (chunked
//! prefill, Tq ≤ Tk), [`step_batch`] steps a ragged batch (one cache per sequence, each with
//! its own length) in parallel. New tokens come as named f32 tensors shaped like the forward's
//! without the batch dimension ([`Model::token_inputs`]; [`cut_tokens`] cuts them out of a
//! forward call's inputs).
//!
//! # The cache rule
//!
//! - A cache holds, per sequence, the keys and values seen so far — the shared `k`/`v` and
//!   every `kv = own` branch's `k_<b>`/`v_<b>` — and, per compress branch (block l, stride d),
//!   the compressed tokens completed so far: token j exists once keys [j·d, j·d+l) are all in
//!   the cache, pooled by the branch's pool and weights. Appending pools only the tokens just
//!   completed (with d < l one completes at every stride once the first block is in), each
//!   exactly once ([`Cache::pooled_count`]).
//! - A new query t (its own key already appended) is answered against the cache as it was
//!   right after key t arrived — its *view*: keys [0, t], the compressed tokens completed among
//!   them, the selection blocks 0 ..= ⌊t/l′⌋ (the last one possibly short). It sees all of
//!   its view: compress attends every compressed token of the view (none → 0), select scores
//!   the view's blocks, forces the first `keep_first` and the `keep_last` ending at ⌊t/l′⌋ and
//!   keeps the top n by (score desc, index asc), window attends the view's last w keys.
//! - **Decoding query t against the cache gives exactly row t of the forward over the whole
//!   sequence**: the same scale, the same forced blocks, the same tie rule; the selection's
//!   candidates are the blocks with i·l′ ≤ t. A chunk of new tokens is the same rule for each
//!   of its queries, so a chunk on an empty cache is the forward over the chunk, and prefill T
//!   tokens then step N equals rows T..T+N of the forward over T+N tokens.
//! - Only causal specs decode: without causality a later key would change the outputs of
//!   earlier queries. [`Model::new`] refuses `causal = false` with [`DecodeError::NotCausal`].
//!
//! The decode sums in the forward's order (the same pooling, softmax, mixing and block-score
//! helpers over the same keys in the same order, adding the branches in the combine's order),
//! so its outputs, branch outputs and chosen blocks are bit-identical to the forward's rows,
//! and the tests compare them exactly.

mod cache;
mod chunk;
mod error;
mod model;
mod query;
mod tokens;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use crate::io::Inputs;

pub use cache::Cache;
pub use chunk::{Decoded, step_batch};
pub use error::DecodeError;
pub use model::Model;
pub use tokens::cut_tokens;

/// A new cache of one sequence filled with its first T tokens (T = 0 allowed: an empty chunk):
/// `tokens` holds their keys and values ([`Model::token_inputs`]; queries and gates may be
/// present and are ignored).
pub fn prefill(model: &Arc<Model>, tokens: &Inputs) -> Result<Cache, DecodeError> {
    let mut cache = Cache::new(Arc::clone(model));
    cache.append(tokens)?;
    Ok(cache)
}
