//! The oracle's intermediates, for backend authors to cross-check stage by stage: pooled K̃/Ṽ,
//! compressed probabilities p_c and raw block scores p_s. Each function returns one tensor per
//! sequence, in the order of [`super::sequences`].

use nsac_dsl::problem::Shape;
use nsac_dsl::spec::{Compress, Spec};

use crate::io::{Inputs, Tensor};

use super::call::{Call, Plan};
use super::pool::{self, Pooled, PooledTokens};
use super::tokens::{SeqData, sequences};
use super::{ReferenceError, compress, score};

/// The compressed keys and values of compress branch `branch`: per sequence, K̃ \[N,H,Dqk\] and
/// Ṽ \[N,H,Dv\] with N = [`pool::token_count`].
pub fn pooled(
    spec: &Spec,
    shape: &Shape,
    inputs: &Inputs,
    branch: &str,
) -> Result<Vec<Pooled>, ReferenceError> {
    per_compress_sequence(spec, shape, inputs, branch, |_, _, _, pooled| {
        pooled.clone().into_public()
    })
}

/// The probabilities p_c of compress branch `branch`: per sequence \[T_seg, HQ, N\], 0 where a
/// query does not see a token; each row sums to 1, or is all 0 when the query sees no token.
pub fn compressed_probabilities(
    spec: &Spec,
    shape: &Shape,
    inputs: &Inputs,
    branch: &str,
) -> Result<Vec<Tensor<f64>>, ReferenceError> {
    per_compress_sequence(spec, shape, inputs, branch, |call, params, data, pooled| {
        let len = data.q.len();
        let n = pooled.k.len();
        let mut data_out = Vec::with_capacity(len * call.dims.hq * n);
        for t in 0..len {
            for row in compress::probabilities(params, &call.dims, &data.q, pooled, t) {
                data_out.extend(row);
            }
        }
        Tensor {
            shape: vec![len, call.dims.hq, n],
            data: data_out,
        }
    })
}

/// The raw block scores p_s of select branch `branch` (before forcing and top-k): per
/// sequence \[T_seg, H, NB\] with NB = [`score::block_count`].
pub fn block_scores(
    spec: &Spec,
    shape: &Shape,
    inputs: &Inputs,
    branch: &str,
) -> Result<Vec<Tensor<f64>>, ReferenceError> {
    let call = Call::new(spec, shape, inputs)?;
    let index = find(&call, branch)?;
    let Plan::Select {
        params,
        scorer,
        scorer_params,
    } = &call.plans[index]
    else {
        return Err(ReferenceError::WrongKind {
            branch: branch.to_string(),
            expected: "select",
        });
    };
    let scorer_branch = &spec.branches[*scorer];
    let mut out = Vec::new();
    for seq in sequences(shape) {
        let data = SeqData::load(spec, inputs, seq)?;
        let Plan::Compress { weights, .. } = &call.plans[*scorer] else {
            return Err(ReferenceError::NotCompress {
                select: branch.to_string(),
                scored_by: scorer_branch.name.clone(),
            });
        };
        let (k, v) = data.kv(scorer_branch);
        let d = &call.dims;
        let pooled = pool::pool(scorer_params, *weights, k, v, d.h, d.dqk, d.dv);
        let len = seq.len();
        let nb = score::block_count(len, params);
        let mut values = Vec::with_capacity(len * d.h * nb);
        for t in 0..len {
            let probs = compress::probabilities(scorer_params, d, &data.q, &pooled, t);
            for row in score::scores(&probs, scorer_params, params, d, len) {
                values.extend(row);
            }
        }
        out.push(Tensor {
            shape: vec![len, d.h, nb],
            data: values,
        });
    }
    Ok(out)
}

fn find(call: &Call<'_>, branch: &str) -> Result<usize, ReferenceError> {
    call.spec
        .branches
        .iter()
        .position(|b| b.name == branch)
        .ok_or_else(|| ReferenceError::UnknownBranch {
            name: branch.to_string(),
            used_by: "the caller".to_string(),
        })
}

/// Runs `f` on every sequence with the pooled tokens of compress branch `branch`.
fn per_compress_sequence<R>(
    spec: &Spec,
    shape: &Shape,
    inputs: &Inputs,
    branch: &str,
    f: impl Fn(&Call<'_>, &Compress, &SeqData, &PooledTokens) -> R,
) -> Result<Vec<R>, ReferenceError> {
    let call = Call::new(spec, shape, inputs)?;
    let index = find(&call, branch)?;
    let Plan::Compress { params, weights } = &call.plans[index] else {
        return Err(ReferenceError::WrongKind {
            branch: branch.to_string(),
            expected: "compress",
        });
    };
    let b = &spec.branches[index];
    let d = &call.dims;
    let mut out = Vec::new();
    for seq in sequences(shape) {
        let data = SeqData::load(spec, inputs, seq)?;
        let (k, v) = data.kv(b);
        let pooled = pool::pool(params, *weights, k, v, d.h, d.dqk, d.dv);
        out.push(f(&call, params, &data, &pooled));
    }
    Ok(out)
}
