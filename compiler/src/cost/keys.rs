//! Keys attended by one query at one position, per branch kind — docs/ARCHITECTURE.md §3 as closed
//! forms.
//!
//! Each function answers for a query at position `t` (0-based) of a sequence of `len` tokens.
//! A parameter of zero (block, stride) yields zero keys instead of dividing by zero; the
//! report layer rejects such specs with a typed error before it gets here.

use nsac_dsl::spec::{BranchKind, Compress, Select, Window};

/// Compressed tokens of a sequence of `len` tokens: j with j·d + l ≤ len.
pub fn compressed_tokens(c: &Compress, len: u64) -> u64 {
    let (l, d) = (u64::from(c.block), u64::from(c.stride));
    if l == 0 || d == 0 || len < l {
        return 0;
    }
    (len - l) / d + 1
}

/// Compressed tokens visible to query `t`: j·d + l − 1 ≤ t when causal, all otherwise.
pub fn compress_keys(c: &Compress, t: u64, len: u64, causal: bool) -> u64 {
    if causal {
        // t < len, so j·d + l − 1 ≤ t implies j·d + l ≤ len.
        compressed_tokens(c, (t + 1).min(len))
    } else {
        compressed_tokens(c, len)
    }
}

/// Keys a window of size w attends: causal max(0, t−w+1) ..= t, so min(w, t + 1);
/// non-causal the symmetric window |k − t| ≤ w − 1 inside the sequence (as the oracle).
pub fn window_keys(w: &Window, t: u64, len: u64, causal: bool) -> u64 {
    let size = u64::from(w.size);
    if size == 0 {
        return 0;
    }
    let first = t.saturating_sub(size - 1);
    let last = if causal {
        t
    } else {
        t.saturating_add(size - 1).min(len.saturating_sub(1))
    };
    (last + 1).saturating_sub(first)
}

/// Keys in the blocks a select branch takes for query `t`.
///
/// The same count serves every form of selection: token-level (`block = 1`, exact), given
/// blocks (`top` blocks, counted as full), and a level `within` another (its candidates are a
/// subset of these, so the count stays an upper bound).
///
/// The candidates are blocks i with i·l′ ≤ t (causal) or all ⌈len/l′⌉ blocks (non-causal; the
/// `keep_last` blocks still end at the query's own block ⌊t/l′⌋); every candidate
/// but the highest-indexed one holds l′ keys, that one holds the rest (clipped at t when
/// causal). `min(top, #candidates)` blocks are taken: the forced ones (lowest index first),
/// then unforced ones, which depend on the data and are counted as full blocks — so the count
/// is exact whenever the partial block is forced or every candidate is taken, and otherwise
/// an upper bound that is at most l′ − 1 keys high.
pub fn select_keys(s: &Select, t: u64, len: u64, causal: bool) -> u64 {
    let lb = u64::from(s.block);
    if lb == 0 || len == 0 {
        return 0;
    }
    let own = t / lb;
    let (candidates, all_keys) = if causal {
        (own + 1, t + 1)
    } else {
        (len.div_ceil(lb), len)
    };
    let partial = candidates - 1;
    let partial_size = all_keys - partial * lb;
    let taken = u64::from(s.top).min(candidates);
    if taken == candidates {
        return all_keys;
    }
    // Forced: blocks 0..first, and the keep_last blocks ending at the query's own block.
    let first = u64::from(s.keep_first).min(candidates);
    let last_lo = (s.keep_last > 0).then(|| own.saturating_sub(u64::from(s.keep_last) - 1));
    let forced = first
        + last_lo.map_or(0, |lo| {
            let lo = lo.max(first);
            (own + 1).saturating_sub(lo)
        });
    let partial_forced =
        partial < first || last_lo.is_some_and(|lo| lo <= partial && partial <= own);
    // The partial block has the highest index, so among forced blocks it is taken last.
    let short = if partial_forced && forced <= taken {
        lb - partial_size
    } else {
        0
    };
    taken.saturating_mul(lb) - short
}

/// Keys (or compressed tokens) a branch attends for query `t`.
pub fn branch_keys(kind: &BranchKind, t: u64, len: u64, causal: bool) -> u64 {
    match kind {
        BranchKind::Compress(c) => compress_keys(c, t, len, causal),
        BranchKind::Select(s) => select_keys(s, t, len, causal),
        BranchKind::Window(w) => window_keys(w, t, len, causal),
        // An index branch attends nothing: it only scores (its work is scoring FLOPs).
        BranchKind::Index(_) => 0,
    }
}

/// Selection blocks of size `select_block` that compressed token `j` overlaps.
pub fn overlapped_blocks(c: &Compress, select_block: u32, j: u64) -> u64 {
    let (l, d, lb) = (
        u64::from(c.block),
        u64::from(c.stride),
        u64::from(select_block),
    );
    if l == 0 || lb == 0 {
        return 0;
    }
    let start = j * d;
    (start + l - 1) / lb - start / lb + 1
}
