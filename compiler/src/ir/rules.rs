//! The positional rules of the semantics, once: which compressed tokens exist and which a query
//! sees, which selection blocks are candidates and which are forced, which keys a window or a
//! chosen block gives, and how a compressed token's probability spreads over blocks. Every
//! position is local to its segment (`t` in `0..len`). The lowering, the cost model and the
//! executors call these; the code generators emit the same arithmetic; the tests check them
//! against the oracle's independent implementation (`kernels::reference`).

use std::ops::Range;

/// Compressed tokens of a segment of `len` keys: token `j` covers keys `[j·d, j·d + l)` and
/// exists iff `j·d + l ≤ len`.
pub fn compressed_tokens(len: usize, block: usize, stride: usize) -> usize {
    if len >= block {
        (len - block) / stride + 1
    } else {
        0
    }
}

/// How many compressed tokens query `t` sees (they are always the first ones): causal, tokens
/// `j` with `j·d + l − 1 ≤ t`; otherwise every token of the segment.
///
/// ```
/// use nsac_compiler::ir::rules::visible_compressed;
/// // blocks of 32 keys every 16: query 47 has seen keys 0..=47, so tokens 0 (keys 0..32) and
/// // 1 (keys 16..48), not token 2 (keys 32..64)
/// assert_eq!(visible_compressed(47, 1000, 32, 16, true), 2);
/// assert_eq!(visible_compressed(30, 1000, 32, 16, true), 0);
/// ```
pub fn visible_compressed(
    t: usize,
    len: usize,
    block: usize,
    stride: usize,
    causal: bool,
) -> usize {
    let all = compressed_tokens(len, block, stride);
    if !causal {
        return all;
    }
    if t + 1 < block {
        0
    } else {
        ((t + 1 - block) / stride + 1).min(all)
    }
}

/// The raw keys query `t` may see: `0 ..= t` (causal) or the whole segment.
pub fn causal_keys(t: usize, len: usize, causal: bool) -> Range<usize> {
    if causal { 0..t + 1 } else { 0..len }
}

/// Selection blocks of `block` keys in a segment of `len` keys (the last may be short).
pub fn block_count(len: usize, block: usize) -> usize {
    len.div_ceil(block)
}

/// How many blocks are candidates for query `t` (always the first ones): blocks `i` with
/// `i·l′ ≤ t` (causal) or every block of the segment.
pub fn candidate_blocks(t: usize, len: usize, block: usize, causal: bool) -> usize {
    if causal {
        t / block + 1
    } else {
        block_count(len, block)
    }
}

/// Whether block `i` is forced for query `t`: one of the first `first` blocks, or one of the
/// `last` blocks ending at `t`'s own block `⌊t/l′⌋`. (Only candidates can be chosen.)
pub fn is_forced(i: usize, t: usize, block: usize, first: usize, last: usize) -> bool {
    let own = t / block;
    i < first || (i <= own && i + last > own)
}

/// The forced blocks of query `t` among its `candidates`, as two ranges (first, last), each
/// clipped to the candidates; they may overlap.
pub fn forced_blocks(
    t: usize,
    block: usize,
    first: usize,
    last: usize,
    candidates: usize,
) -> [Range<usize>; 2] {
    let own = t / block;
    let lo = (own + 1).saturating_sub(last);
    [
        0..first.min(candidates),
        lo.min(candidates)..(own + 1).min(candidates),
    ]
}

/// The keys of block `i` (of `block` keys) that query `t` may see.
pub fn block_keys(i: usize, block: usize, t: usize, len: usize, causal: bool) -> Range<usize> {
    let limit = causal_keys(t, len, causal).end;
    let lo = (i * block).min(limit);
    lo..((i + 1) * block).min(limit)
}

/// The keys of a window of `size` for query `t`: `max(0, t−w+1) ..= t` (causal) or the
/// symmetric `|k − t| ≤ w − 1` within the segment (non-causal).
pub fn window_keys(t: usize, len: usize, size: usize, causal: bool) -> Range<usize> {
    let lo = (t + 1).saturating_sub(size);
    let hi = if causal { t + 1 } else { (t + size).min(len) };
    lo.min(hi)..hi
}

/// `|[j·d, j·d + l) ∩ [i·l′, (i+1)·l′)|`: how many keys compressed token `j` shares with
/// selection block `i`; a token's probability counts for the block with this weight over `d`.
pub fn overlap(j: usize, i: usize, block: usize, stride: usize, select_block: usize) -> usize {
    let (a0, a1) = (j * stride, j * stride + block);
    let (b0, b1) = (i * select_block, (i + 1) * select_block);
    a1.min(b1).saturating_sub(a0.max(b0))
}

/// The blocks compressed token `j` overlaps: `⌊j·d/l′⌋ ..= ⌊(j·d + l − 1)/l′⌋`.
pub fn overlapped_blocks(
    j: usize,
    block: usize,
    stride: usize,
    select_block: usize,
) -> Range<usize> {
    let first = j * stride;
    first / select_block..(first + block - 1) / select_block + 1
}

/// Whether block `a` with score `sa` goes before block `b` with score `sb` in a top-k: higher
/// score first, then the lower index.
pub fn ranks_before(sa: f64, a: usize, sb: f64, b: usize) -> bool {
    sa > sb || (sa == sb && a < b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_cases() {
        // block 4, stride 2 over 9 keys: tokens at 0, 2, 4 (covering ..8): 3 tokens
        assert_eq!(compressed_tokens(9, 4, 2), 3);
        assert_eq!(compressed_tokens(3, 4, 2), 0);
        // query 4 sees tokens ending at 3 and 5? token 0 ends at 3 ≤ 4, token 1 ends at 5 > 4
        assert_eq!(visible_compressed(4, 9, 4, 2, true), 1);
        assert_eq!(visible_compressed(5, 9, 4, 2, true), 2);
        assert_eq!(visible_compressed(0, 9, 4, 2, false), 3);
        assert_eq!(candidate_blocks(9, 20, 4, true), 3);
        assert_eq!(candidate_blocks(9, 20, 4, false), 5);
        // query 9 is in block 2; keep_last 2 forces blocks 1 and 2, keep_first 1 block 0
        assert!(is_forced(0, 9, 4, 1, 2));
        assert!(is_forced(1, 9, 4, 1, 2));
        assert!(is_forced(2, 9, 4, 1, 2));
        assert!(!is_forced(1, 9, 4, 1, 1));
        assert_eq!(forced_blocks(9, 4, 1, 2, 3), [0..1, 1..3]);
        assert_eq!(block_keys(2, 4, 9, 20, true), 8..10);
        assert_eq!(block_keys(3, 4, 9, 20, true), 10..10);
        assert_eq!(window_keys(2, 10, 5, true), 0..3);
        assert_eq!(window_keys(6, 10, 5, false), 2..10);
        // token 1 (keys 2..6) and block 1 of 4 (keys 4..8): 2 keys
        assert_eq!(overlap(1, 1, 4, 2, 4), 2);
        assert_eq!(overlapped_blocks(1, 4, 2, 4), 0..2);
        assert!(ranks_before(1.0, 5, 1.0, 6));
        assert!(!ranks_before(1.0, 6, 1.0, 5));
    }
}
