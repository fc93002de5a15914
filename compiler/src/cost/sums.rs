//! Per-segment sums of the cost model in closed form: Σ over the positions of a segment of the
//! keys a branch attends ([`segment_keys`]) and of the (compressed token, selection block)
//! pairs a select branch scores ([`segment_score_units`]), without visiting every position.
//!
//! `nsac cost --seq 10^12` must answer at once and allocate nothing, so each sum is a formula
//! in the segment length (compress, window), a walk over at most `max(top, keep_first +
//! keep_last) + 2` selection blocks (select: beyond them every block contributes the same), or
//! a floor sum (scoring: the "universal Euclid" recursion, O(log len)). Each equals exactly
//! the per-position sum of [`super::keys`] (tested against it on random small shapes).
//! Arithmetic is checked: a count that does not fit 128 bits is [`CostError::Overflow`].

use nsac_dsl::spec::{BranchKind, Compress, Select, Window};

use super::CostError;
use super::keys;

/// Σ over the positions `t < len` of `keys::branch_keys(kind, t, len, causal)`.
pub fn segment_keys(kind: &BranchKind, len: u64, causal: bool) -> Result<u128, CostError> {
    match kind {
        BranchKind::Compress(c) => compress_sum(c, len, causal),
        BranchKind::Select(s) => select_sum(s, len, causal),
        BranchKind::Window(w) => window_sum(w, len, causal),
        BranchKind::Index(_) => Ok(0),
    }
}

fn mul(a: u128, b: u128) -> Result<u128, CostError> {
    a.checked_mul(b).ok_or(CostError::Overflow)
}

fn add(a: u128, b: u128) -> Result<u128, CostError> {
    a.checked_add(b).ok_or(CostError::Overflow)
}

fn sub(a: u128, b: u128) -> Result<u128, CostError> {
    a.checked_sub(b).ok_or(CostError::Overflow)
}

/// 0 + 1 + … + n.
fn triangle(n: u128) -> Result<u128, CostError> {
    // One of n, n + 1 is even.
    if n.is_multiple_of(2) {
        mul(n / 2, add(n, 1)?)
    } else {
        mul(n, add(n, 1)? / 2)
    }
}

fn compress_sum(c: &Compress, len: u64, causal: bool) -> Result<u128, CostError> {
    let n = u128::from(keys::compressed_tokens(c, len));
    if !causal {
        return mul(n, u128::from(len));
    }
    // Query t sees N(t + 1) tokens, N(m) = (m − l)/d + 1 for m ≥ l: Σ_{x=0}^{len−l} (⌊x/d⌋ + 1).
    let (l, d) = (u64::from(c.block), u64::from(c.stride));
    if l == 0 || d == 0 || len < l {
        return Ok(0);
    }
    let x = u128::from(len - l);
    let (d, q, r) = (u128::from(d), x / u128::from(d), x % u128::from(d));
    // Σ_{x'=0}^{x} ⌊x'/d⌋: q full groups (k·d each, k < q) and r + 1 terms of q.
    let floors = add(mul(d, triangle(q.saturating_sub(1))?)?, mul(q, r + 1)?)?;
    add(floors, x + 1)
}

fn window_sum(w: &Window, len: u64, causal: bool) -> Result<u128, CostError> {
    let (w, len) = (u128::from(w.size), u128::from(len));
    if w == 0 || len == 0 {
        return Ok(0);
    }
    if causal {
        // Σ_t min(w, t + 1).
        return if w >= len {
            triangle(len)
        } else {
            add(triangle(w)?, mul(len - w, w)?)
        };
    }
    // Pairs (t, k) of the segment with |k − t| ≤ w − 1: the diagonal and, for each distance
    // δ = 1..=m (m = min(w − 1, len − 1)), len − δ pairs on each side.
    let m = (w - 1).min(len - 1);
    let off = sub(mul(m, len)?, triangle(m)?)?;
    add(len, mul(2, off)?)
}

/// Σ_{t ∈ block i} select_keys(t), in O(1): within one block the count is affine in t (all keys
/// up to t, or whole blocks minus the unfilled part of the query's own block), so two samples
/// give the whole arithmetic series.
fn block_sum(s: &Select, i: u64, len: u64, causal: bool) -> Result<u128, CostError> {
    let lb = u64::from(s.block);
    let lo = i * lb;
    let hi = lo.saturating_add(lb).min(len);
    if lo >= hi {
        return Ok(0);
    }
    let n = u128::from(hi - lo);
    let first = u128::from(keys::select_keys(s, lo, len, causal));
    if n == 1 {
        return Ok(first);
    }
    let second = u128::from(keys::select_keys(s, lo + 1, len, causal));
    // The step is 0 or 1 (it never decreases within a block).
    let step = sub(second, first)?;
    add(mul(n, first)?, mul(step, triangle(n - 1)?)?)
}

fn select_sum(s: &Select, len: u64, causal: bool) -> Result<u128, CostError> {
    let lb = u64::from(s.block);
    if lb == 0 || len == 0 {
        return Ok(0);
    }
    let blocks = len.div_ceil(lb);
    // From block `stable` on, every block but the last has the same count per offset: more
    // candidates than `top`, the `keep_first` blocks behind, the `keep_last` blocks ending at
    // the query's own block (causal); every forced block fixed, the partial block not the
    // query's own (non-causal).
    let stable = u64::from(s.top)
        .max(u64::from(s.keep_first) + u64::from(s.keep_last))
        .saturating_add(1);
    let explicit = stable.min(blocks);
    let mut sum = 0u128;
    for i in 0..explicit {
        sum = add(sum, block_sum(s, i, len, causal)?)?;
    }
    if blocks > explicit {
        // Blocks explicit ..= blocks − 2 are full and equal; the last may be partial.
        let middle = blocks - 1 - explicit;
        if middle > 0 {
            let each = block_sum(s, explicit, len, causal)?;
            sum = add(sum, mul(each, u128::from(middle))?)?;
        }
        sum = add(sum, block_sum(s, blocks - 1, len, causal)?)?;
    }
    Ok(sum)
}

/// Σ over the positions `t < len` of the (visible compressed token j, selection block that j
/// overlaps) pairs: Σ_t P(v(t)) with v(t) the tokens visible to t and
/// P(m) = Σ_{j<m} overlapped_blocks(j).
pub fn segment_score_units(
    c: &Compress,
    select_block: u32,
    len: u64,
    causal: bool,
) -> Result<u128, CostError> {
    let (l, d, lb) = (
        u128::from(c.block),
        u128::from(c.stride),
        u128::from(select_block),
    );
    if l == 0 || d == 0 || lb == 0 {
        return Ok(0);
    }
    let n = u128::from(keys::compressed_tokens(c, len));
    if n == 0 {
        return Ok(0);
    }
    let overlaps = Overlaps { l, d, lb };
    let all = overlaps.prefix(n)?;
    if !causal {
        return mul(u128::from(len), all);
    }
    // Query t sees N(t + 1) tokens: k + 1 tokens for d positions each (k < n − 1), n tokens for
    // the positions from l + (n − 1)·d − 1 to the end.
    let last = sub(add(sub(u128::from(len), l)?, 1)?, mul(n - 1, d)?)?;
    let m = n - 1;
    // Σ_{k=1}^{m} P(k) = Σ_{j<m} ob(j)·(m − j) = m·P(m) − Σ_{j<m} j·ob(j).
    let prefix_sums = sub(mul(m, overlaps.prefix(m)?)?, overlaps.weighted(m)?)?;
    add(mul(d, prefix_sums)?, mul(last, all)?)
}

/// overlapped_blocks(j) = ⌊(j·d + l − 1)/l′⌋ − ⌊j·d/l′⌋ + 1, summed by floor sums.
struct Overlaps {
    l: u128,
    d: u128,
    lb: u128,
}

impl Overlaps {
    /// Σ_{j<m} overlapped_blocks(j).
    fn prefix(&self, m: u128) -> Result<u128, CostError> {
        if m == 0 {
            return Ok(0);
        }
        let hi = floor_sums(self.d, self.l - 1, self.lb, m - 1)?.f;
        let lo = floor_sums(self.d, 0, self.lb, m - 1)?.f;
        add(sub(hi, lo)?, m)
    }

    /// Σ_{j<m} j·overlapped_blocks(j).
    fn weighted(&self, m: u128) -> Result<u128, CostError> {
        if m == 0 {
            return Ok(0);
        }
        let hi = floor_sums(self.d, self.l - 1, self.lb, m - 1)?.g;
        let lo = floor_sums(self.d, 0, self.lb, m - 1)?.g;
        add(sub(hi, lo)?, triangle(m - 1)?)
    }
}

/// f = Σ_{i=0}^{n} ⌊(a·i + b)/c⌋, g = Σ i·⌊…⌋, h = Σ ⌊…⌋².
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FloorSums {
    pub f: u128,
    pub g: u128,
    pub h: u128,
}

/// The three floor sums of (a, b, c, n) by the universal Euclidean recursion (c > 0), each
/// level reducing (a, c) as Euclid's algorithm does: O(log) levels.
pub(crate) fn floor_sums(a: u128, b: u128, c: u128, n: u128) -> Result<FloorSums, CostError> {
    if c == 0 {
        return Err(CostError::Overflow);
    }
    let n1 = add(n, 1)?;
    let s1 = triangle(n)?; // Σ i
    // Σ i² = n(n+1)(2n+1)/6, divided early to stay in range.
    let s2 = {
        let (mut x, mut y, mut z) = (n, n1, add(mul(2, n)?, 1)?);
        for p in [2u128, 3] {
            if x.is_multiple_of(p) {
                x /= p;
            } else if y.is_multiple_of(p) {
                y /= p;
            } else {
                z /= p;
            }
        }
        mul(mul(x, y)?, z)?
    };
    if a == 0 {
        let q = b / c;
        return Ok(FloorSums {
            f: mul(n1, q)?,
            g: mul(q, s1)?,
            h: mul(n1, mul(q, q)?)?,
        });
    }
    if a >= c || b >= c {
        let (qa, qb) = (a / c, b / c);
        let r = floor_sums(a % c, b % c, c, n)?;
        let f = add(add(r.f, mul(qa, s1)?)?, mul(qb, n1)?)?;
        let g = add(add(r.g, mul(qa, s2)?)?, mul(qb, s1)?)?;
        let h = [
            r.h,
            mul(mul(qa, qa)?, s2)?,
            mul(mul(qb, qb)?, n1)?,
            mul(mul(mul(qa, qb)?, 2)?, s1)?,
            mul(mul(2, qb)?, r.f)?,
            mul(mul(2, qa)?, r.g)?,
        ]
        .into_iter()
        .try_fold(0u128, add)?;
        return Ok(FloorSums { f, g, h });
    }
    let m = add(mul(a, n)?, b)? / c;
    if m == 0 {
        return Ok(FloorSums { f: 0, g: 0, h: 0 });
    }
    let r = floor_sums(c, c - b - 1, a, m - 1)?;
    let f = sub(mul(n, m)?, r.f)?;
    let g = sub(sub(mul(m, mul(n, n1)?)?, r.h)?, r.f)? / 2;
    let h = sub(
        sub(
            sub(mul(n, mul(m, add(m, 1)?)?)?, mul(2, r.g)?)?,
            mul(2, r.f)?,
        )?,
        f,
    )?;
    Ok(FloorSums { f, g, h })
}
