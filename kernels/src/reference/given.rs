//! Selection blocks given by the caller instead of chosen by the oracle
//! ([`super::forward_with_blocks`]).
//!
//! A backend that scores blocks in f32 may break a near-tie differently from the f64 oracle;
//! its choice is still right when it is a valid top-k of the oracle's scores
//! ([`super::score::is_valid_choice`]). To then check its selected attention and output, the
//! oracle recomputes everything with the backend's blocks. The given `idx_<b>` must follow the
//! output contract: \[B,T,H,top\], per row the block indices strictly ascending, then −1 only.

use std::collections::BTreeMap;

use nsac_dsl::problem::Shape;

use crate::io::Tensor;

use super::ReferenceError;
use super::call::{Call, Plan};
use super::score::block_count;
use super::tokens::sequences;

/// For each branch of the call, the blocks given for it (select branches only).
pub(crate) fn resolve<'a>(
    call: &Call<'_>,
    shape: &Shape,
    blocks: &'a BTreeMap<String, Tensor<i32>>,
) -> Result<Vec<Option<&'a Tensor<i32>>>, ReferenceError> {
    let mut given = vec![None; call.plans.len()];
    for (name, tensor) in blocks {
        let bad = |reason: String| ReferenceError::BadBlocks {
            branch: name.clone(),
            reason,
        };
        let index = call
            .spec
            .branches
            .iter()
            .position(|b| &b.name == name)
            .ok_or_else(|| ReferenceError::UnknownBranch {
                name: name.clone(),
                used_by: "the given blocks".into(),
            })?;
        let (Plan::Select { params, .. } | Plan::Choose { params, .. }) = &call.plans[index] else {
            return Err(ReferenceError::WrongKind {
                branch: name.clone(),
                expected: "select",
            });
        };
        let top = params.top as usize;
        let expected = vec![shape.batch, shape.seq_len, call.dims.h, top];
        if tensor.shape != expected || tensor.data.len() != tensor.numel() {
            return Err(bad(format!(
                "shape {:?} with {} values, expected {expected:?}",
                tensor.shape,
                tensor.data.len()
            )));
        }
        for seq in sequences(shape) {
            let nb = block_count(seq.len(), params);
            for pos in 0..seq.len() {
                let token = seq.batch * shape.seq_len + seq.start + pos;
                for kvh in 0..call.dims.h {
                    let row_start = (token * call.dims.h + kvh) * top;
                    let row = &tensor.data[row_start..row_start + top];
                    let used = row.iter().take_while(|&&i| i >= 0).count();
                    let ascending = row[..used].windows(2).all(|w| w[0] < w[1]);
                    let padded = row[used..].iter().all(|&i| i == -1);
                    let in_range = row[..used].iter().all(|&i| (i as usize) < nb);
                    if !(ascending && padded && in_range) {
                        return Err(bad(format!(
                            "row {row:?} at batch {}, position {pos}, kv head {kvh} is not \
                             ascending block indices below {nb} padded with -1",
                            seq.batch
                        )));
                    }
                }
            }
        }
        given[index] = Some(tensor);
    }
    Ok(given)
}

/// The given blocks of one token (absolute row `token` of \[B·T\]) per kv head: \[H\]\[..\].
pub(crate) fn read(tensor: &Tensor<i32>, token: usize) -> Vec<Vec<usize>> {
    let (h, top) = (tensor.shape[2], tensor.shape[3]);
    (0..h)
        .map(|kvh| {
            let row_start = (token * h + kvh) * top;
            tensor.data[row_start..row_start + top]
                .iter()
                .filter_map(|&i| usize::try_from(i).ok())
                .collect()
        })
        .collect()
}
