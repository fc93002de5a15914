//! Why a decode call was refused: the typed errors of the decode oracle.

use nsac_dsl::problem::ProblemError;

use crate::io::InputError;

use super::super::ReferenceError;

/// Why the decode oracle refused a model, a cache operation or a batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Decode is defined for causal attention only: without it a later key would change the
    /// outputs of earlier queries, so nothing could be answered before the whole sequence is in.
    #[error(
        "decode needs causal attention, but spec `{0}` has causal = false (a later key would \
         change earlier outputs)"
    )]
    NotCausal(String),
    #[error(transparent)]
    Problem(#[from] ProblemError),
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("a decode step takes exactly one new token, got {0}")]
    NotOneToken(usize),
    #[error("a batched step got {caches} caches but {tokens} sets of tokens")]
    BatchMismatch { caches: usize, tokens: usize },
    #[error("tokens {start}..{end} are not inside a sequence of {len} tokens")]
    BadRange {
        start: usize,
        end: usize,
        len: usize,
    },
    #[error("sequence {batch}:{start}..{end} is not one of the call's sequences")]
    BadSequence {
        batch: usize,
        start: usize,
        end: usize,
    },
    #[error("the cache would hold {0} tokens, too many to index the chosen blocks (int32)")]
    TooLong(usize),
}
