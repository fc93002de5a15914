//! Given selection blocks (`select … { given = true }`): the caller's `idx_<s>` `[B,T,H,top]`
//! (block indices held as f32 integers, −1 for an unused slot, in any order) checked and put
//! into the form the `sel_<s>` driver reads — per (token, kv head) the blocks ascending, then
//! −1 — which is also what the call reports as `idx_<s>` (the oracle's
//! `kernels::reference::choose`).
//!
//! Checked before anything is computed: every entry an integer in [−1, NB_seg) with NB_seg the
//! blocks of its own sequence, no block twice in a row. A causal query attends only keys ≤ t of
//! its blocks, so a block starting after t adds nothing: the driver gets the ascending prefix
//! of blocks starting at or before t ([`attended`]).

use crate::ir::Sizes;

use super::super::CpuError;

/// Checks `data` (`[B,T,H,top]`, row-major) for select branch `branch` with blocks of `block`
/// keys and returns it normalized: per row ascending block indices, then −1.
pub(super) fn normalize(
    branch: &str,
    data: &[f32],
    sizes: &Sizes,
    heads: usize,
    top: usize,
    block: usize,
) -> Result<Vec<i32>, CpuError> {
    let mut out = vec![-1i32; data.len()];
    let mut row_blocks: Vec<i32> = Vec::with_capacity(top);
    for b in 0..sizes.batch {
        for &(start, end) in &sizes.segments {
            let nb = (end - start).div_ceil(block);
            for pos in start..end {
                for h in 0..heads {
                    let at = ((b * sizes.queries + pos) * heads + h) * top;
                    let (Some(row), Some(dst)) =
                        (data.get(at..at + top), out.get_mut(at..at + top))
                    else {
                        return Err(CpuError::Output(format!(
                            "idx_{branch} is shorter than its shape"
                        )));
                    };
                    row_blocks.clear();
                    for &x in row {
                        let ok = x.fract() == 0.0 && x >= -1.0 && x < nb as f32;
                        if !ok {
                            return Err(bad(branch, b, pos - start, h, row, nb));
                        }
                        if x >= 0.0 {
                            row_blocks.push(x as i32);
                        }
                    }
                    row_blocks.sort_unstable();
                    if row_blocks.windows(2).any(|w| w[0] == w[1]) {
                        return Err(bad(branch, b, pos - start, h, row, nb));
                    }
                    dst[..row_blocks.len()].copy_from_slice(&row_blocks);
                }
            }
        }
    }
    Ok(out)
}

fn bad(branch: &str, batch: usize, pos: usize, head: usize, row: &[f32], nb: usize) -> CpuError {
    CpuError::BadIndices {
        branch: branch.to_string(),
        reason: format!(
            "row {row:?} at batch {batch}, position {pos}, kv head {head} is not distinct block \
             indices below {nb} (or -1)"
        ),
    }
}

/// How many of a normalized row's blocks query `t` (relative to its sequence) attends: those
/// starting at or before `t` when causal (an ascending prefix), every listed block otherwise.
pub(super) fn attended(row: &[i32], block: usize, t: usize, causal: bool) -> usize {
    row.iter()
        .take_while(|&&i| i >= 0 && (!causal || i as usize * block <= t))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes(segments: Vec<(usize, usize)>, t: usize) -> Sizes {
        Sizes {
            batch: 1,
            queries: t,
            keys: t,
            segments,
        }
    }

    #[test]
    fn rows_are_sorted_and_padded() {
        let s = sizes(vec![(0, 9)], 9);
        // 9 tokens, blocks of 4: 3 blocks; top 3, one kv head.
        let mut data = vec![-1.0f32; 9 * 3];
        data[8 * 3..9 * 3].copy_from_slice(&[2.0, -1.0, 0.0]);
        let out = normalize("s", &data, &s, 1, 3, 4).expect("valid");
        assert_eq!(&out[8 * 3..], &[0, 2, -1]);
        assert_eq!(&out[..3], &[-1, -1, -1]);
        assert_eq!(attended(&out[8 * 3..], 4, 3, true), 1);
        assert_eq!(attended(&out[8 * 3..], 4, 8, true), 2);
        assert_eq!(attended(&out[8 * 3..], 4, 3, false), 2);
    }

    #[test]
    fn bad_rows_are_typed_errors() {
        // Segments of 5 and 4 tokens, blocks of 2: 3 and 2 blocks.
        let s = sizes(vec![(0, 5), (5, 9)], 9);
        let ok = vec![-1.0f32; 9 * 2];
        assert!(normalize("s", &ok, &s, 1, 2, 2).is_ok());
        for (at, row) in [
            (0, [1.0, 1.0]),  // twice
            (0, [0.5, -1.0]), // not an integer
            (0, [-2.0, 0.0]), // below −1
            (0, [3.0, 0.0]),  // past the first segment's 3 blocks
            (6, [2.0, 0.0]),  // past the second segment's 2 blocks
        ] {
            let mut data = ok.clone();
            data[at * 2..at * 2 + 2].copy_from_slice(&row);
            let err = normalize("s", &data, &s, 1, 2, 2).expect_err("invalid");
            assert!(matches!(err, CpuError::BadIndices { .. }), "{row:?}: {err}");
        }
        let mut data = ok.clone();
        data[6 * 2] = 1.0;
        assert!(normalize("s", &data, &s, 1, 2, 2).is_ok());
    }
}
