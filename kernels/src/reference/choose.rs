//! Choosing the blocks of a select branch in a form beyond NSA's blocks (issue 12): scored by
//! an index branch, nested `within` another select branch, or given by the caller.
//!
//! - **Scores**: a compress scorer gives the overlap-weighted probabilities of
//!   [`super::score`] (at `block = 1` each token gets Σ_j p_c(t,qh,j)/d over the compressed
//!   tokens j covering it); an index scorer gives I(t, s) ([`super::index`]), one score per
//!   token shared by every kv head.
//! - **Candidates**: the blocks of [`super::score::is_candidate`]; with `within = c`, only
//!   those inside a block that c chose for the same query and kv head ([`is_within`]; c's
//!   block is a multiple of this one's, so a block lies in exactly one of c's).
//! - **Choice**: the forced blocks (keep_first / keep_last, counted in this branch's blocks —
//!   tokens at `block = 1`) that are candidates, then by score; the first min(n, #candidates)
//!   by (score descending, index ascending) — [`super::score::choose_among`].
//! - **Given** (`given = true`): the non-negative entries of `idx_<s>` \[B,T,H,top\] (f32
//!   holding integers; −1 marks an unused slot, anywhere in the row), each a block index of the
//!   sequence, no block twice. Causal attention still reads only keys ≤ t of them, so a block
//!   wholly after t adds nothing. Reported in `idx_<s>` (output) ascending, −1 padded.

use nsac_dsl::problem::Shape;
use nsac_dsl::spec::Select;

use crate::io::Tensor;

use super::ReferenceError;
use super::score::block_count;
use super::tokens::sequences;

/// Whether block `i` of `fine` lies inside one of the blocks `coarse_chosen` of `coarse`.
pub fn is_within(fine: &Select, coarse: &Select, coarse_chosen: &[usize], i: usize) -> bool {
    let first_key = i * fine.block as usize;
    coarse_chosen.contains(&(first_key / coarse.block as usize))
}

/// Checks a given `idx_<s>` against select `s` on `shape` with `h` kv heads: its shape, and
/// per row integers in [−1, NB_seg), no block twice.
pub(crate) fn check_given(
    name: &str,
    s: &Select,
    idx: &Tensor<f32>,
    shape: &Shape,
    h: usize,
) -> Result<(), ReferenceError> {
    let bad = |reason: String| ReferenceError::BadBlocks {
        branch: name.to_string(),
        reason,
    };
    if s.within.is_some() || s.keep_first != 0 || s.keep_last != 0 {
        return Err(bad(
            "given blocks take no `within` and no forced blocks".into()
        ));
    }
    let top = s.top as usize;
    let expected = vec![shape.batch, shape.seq_len, h, top];
    if idx.shape != expected || idx.data.len() != idx.numel() {
        return Err(bad(format!("shape {:?}, expected {expected:?}", idx.shape)));
    }
    for seq in sequences(shape) {
        let nb = block_count(seq.len(), s);
        for pos in 0..seq.len() {
            let token = seq.batch * shape.seq_len + seq.start + pos;
            for kvh in 0..h {
                let row_start = (token * h + kvh) * top;
                let row = &idx.data[row_start..row_start + top];
                let mut seen = Vec::new();
                for &x in row {
                    let ok = x.fract() == 0.0 && x >= -1.0 && x < nb as f32;
                    if !ok || (x >= 0.0 && seen.contains(&(x as usize))) {
                        return Err(bad(format!(
                            "row {row:?} at batch {}, position {pos}, kv head {kvh} is not \
                             distinct block indices below {nb} (or -1)",
                            seq.batch
                        )));
                    }
                    if x >= 0.0 {
                        seen.push(x as usize);
                    }
                }
            }
        }
    }
    Ok(())
}

/// The given blocks of one token (absolute row `token` of \[B·T\]) per kv head, ascending:
/// \[H\]\[..\]. `idx` was checked by [`check_given`].
pub(crate) fn read_given(idx: &Tensor<f32>, token: usize) -> Vec<Vec<usize>> {
    let (h, top) = (idx.shape[2], idx.shape[3]);
    (0..h)
        .map(|kvh| {
            let row_start = (token * h + kvh) * top;
            let mut blocks: Vec<usize> = idx.data[row_start..row_start + top]
                .iter()
                .filter(|&&x| x >= 0.0)
                .map(|&x| x as usize)
                .collect();
            blocks.sort_unstable();
            blocks
        })
        .collect()
}
