//! The analytic cost model: how much work and memory traffic a spec does on a problem shape,
//! counted from docs/ARCHITECTURE.md §3 without touching a tensor (docs/ARCHITECTURE.md §5).
//!
//! What is counted, exactly:
//! - **keys per query**, per branch: compressed tokens visible to the query (compress), keys of
//!   the chosen blocks clipped at the query (select; unforced choices depend on the data and are
//!   counted as full blocks, see [`keys::select_keys`]), min(w, t+1) (causal window; the
//!   symmetric |k − t| < w inside the sequence when non-causal, as the oracle defines it). Reported at the
//!   last position of the longest segment and averaged over every position of every segment.
//!   A branch that `combine` does not name (a select that only chooses for another's
//!   `within`, an index branch) attends nothing.
//! - **attention FLOPs** = 2·(Dqk+Dv)·keys per query head (one multiply-add per key for q·k and
//!   one per key for p·v), summed over queries, query heads and branches. Softmax
//!   exponentials, maxima and the gate multiply are not counted.
//! - **pooling FLOPs**, once per compressed token and kv head, over K and V (own K/V when the
//!   branch has them): mean l·(Dqk+Dv) (l−1 adds and one scale per element), weighted
//!   2·l·(Dqk+Dv), linear 2·l·(Dqk²+Dv²) (the flattened block times the weight matrix).
//! - **scoring FLOPs** of a select branch: per query head, per compressed token j of its
//!   scorer visible to the query, 2 per selection block that j overlaps (multiply the
//!   probability by the overlap weight, add it into the block's score; the group sum is this
//!   add). Top-k comparisons are not FLOPs and are not counted. The same rule counts
//!   token-level selection scored by a compress branch (block 1: every compressed token
//!   overlaps its l tokens) and each level of a hierarchy at its own block size, over every
//!   block (an upper bound for a level `within` another: a kernel need score only the blocks
//!   inside the outer choice). Given blocks and index-scored selects score nothing themselves.
//! - **indexer FLOPs** (an `index` branch, reported as its scoring): per query token — not per
//!   head: the indexer is shared — and per key it may see (s ≤ t causal, every key otherwise),
//!   2·Hi·Di for the Hi dot products q(t,j)·k(s) and 2·Hi for the weighted ReLU sum. An index
//!   branch attends no keys.
//! - **bytes**: every input of `kernels::io::expected_inputs` read once and `o` written once at
//!   the problem's dtype, plus `cu_seqlens` (int32) for varlen problems. Debug outputs (`o_<b>`,
//!   `idx_<b>`) are not counted. **Intermediate bytes** are reported separately: the minimum
//!   traffic if a kernel materialises them — compressed K̃/Ṽ at the dtype and the chosen block
//!   indices (int32, `top` per query and kv head), each written once and read once.
//! - **intensity** = total FLOPs / (input + output bytes); a second figure adds intermediates.
//!
//! The per-segment sums are closed forms (`sums.rs`), so the cost of any length — 10¹² tokens
//! included — is computed at once, without a step per position.

mod footprint;
pub mod keys;
mod report;
mod sums;

pub use footprint::{Footprint, footprint};
pub use sums::{segment_keys, segment_score_units};

use nsac_dsl::problem::Shape;
use nsac_dsl::spec::{Branch, BranchKind, Compress, Pool, Spec};
use nsac_kernels::io::expected_inputs;

pub use report::{BranchCost, Bytes, CostReport, Flops};

/// Why a cost cannot be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CostError {
    #[error("branch `{branch}`: {what} must be at least 1")]
    ZeroParameter { branch: String, what: &'static str },
    #[error("select branch `{branch}` is scored by `{scorer}`, which is not a compress branch")]
    BadScorer { branch: String, scorer: String },
    #[error("shape is not usable: {0}")]
    BadShape(String),
    #[error("the byte count of this problem does not fit in 64 bits")]
    Overflow,
}

/// Tokens loaded per decode step, per kv head group, as in the NSA paper's Table 4: the query
/// at position T−1 of a `context_len`-token context reads the compressed tokens it sees, the
/// keys of its selected blocks and its window, summed over branches (no de-duplication of keys
/// that two branches both read; the group shares K/V, so heads do not multiply it).
///
/// A branch with a zero block or stride (which validation rejects) contributes 0.
pub fn decode_tokens_loaded(spec: &Spec, context_len: usize) -> f64 {
    let len = context_len as u64;
    if len == 0 {
        return 0.0;
    }
    spec.branches
        .iter()
        .map(|b| keys::branch_keys(&b.kind, len - 1, len, spec.causal) as f64)
        .sum()
}

/// Counts the work, traffic and intensity of `spec` on `shape`.
pub fn estimate(spec: &Spec, shape: &Shape) -> Result<CostReport, CostError> {
    check(spec, shape)?;
    // FLOPs are f64 (they may exceed any integer for absurd shapes, and are reported as f64);
    // bytes are exact integers, multiplied with overflow checks.
    let (hq, h) = (u128::from(shape.heads.q), u128::from(shape.heads.kv));
    let (dqk, dv) = (u128::from(shape.head_dim.qk), u128::from(shape.head_dim.v));
    let batch = shape.batch as u128;
    let elem = shape.dtype.size() as u128;
    let row_positions: u128 = shape.segments.iter().map(|(s, e)| (e - s) as u128).sum();
    let positions = prod(&[batch, row_positions])?;
    let longest = shape
        .segments
        .iter()
        .map(|(s, e)| (e - s) as u64)
        .max()
        .unwrap_or(0);
    let f = |x: u128| x as f64;
    let (fq, fh, fb) = (f(hq), f(h), f(batch));
    let (fqk, fv) = (f(dqk), f(dv));

    let mut branches = Vec::with_capacity(spec.branches.len());
    let mut intermediates: u128 = 0;
    for br in &spec.branches {
        let mut key_sum: u128 = 0;
        let mut score_units: u128 = 0; // Σ over positions of overlapped (token, block) pairs
        let mut pooled_tokens: u128 = 0;
        let scorer = scorer_of(spec, br)?;
        // A select branch left out of `combine` (an outer level of a hierarchy) only chooses.
        let attends = spec.combine.branches.contains(&br.name);
        for &(s, e) in &shape.segments {
            let len = (e - s) as u64;
            if attends {
                key_sum = add(key_sum, sums::segment_keys(&br.kind, len, spec.causal)?)?;
            }
            if let (Some(c), BranchKind::Select(sel)) = (scorer, &br.kind) {
                let units = sums::segment_score_units(c, sel.block, len, spec.causal)?;
                score_units = add(score_units, units)?;
            }
            if let BranchKind::Compress(c) = &br.kind {
                pooled_tokens += u128::from(keys::compressed_tokens(c, len));
            }
        }
        let keys_last = if longest == 0 || !attends {
            0
        } else {
            keys::branch_keys(&br.kind, longest - 1, longest, spec.causal)
        };
        let attention = 2.0 * (fqk + fv) * f(key_sum) * fq * fb;
        let mut scoring = 2.0 * f(score_units) * fq * fb;
        if let BranchKind::Index(i) = &br.kind {
            let (hi, di) = (f64::from(i.heads), f64::from(i.dim));
            let mut pairs = 0u128; // Σ over positions of the keys each query may see
            for &(s, e) in &shape.segments {
                let len = (e - s) as u128;
                let seen = if spec.causal {
                    prod(&[len, len + 1])? / 2
                } else {
                    prod(&[len, len])?
                };
                pairs = add(pairs, seen)?;
            }
            scoring = (2.0 * hi * di + 2.0 * hi) * f(pairs) * fb;
        }
        let pooling = match &br.kind {
            BranchKind::Compress(c) => {
                let l = f64::from(c.block);
                let per_token = match c.pool {
                    Pool::Mean => l * (fqk + fv),
                    Pool::Weighted => 2.0 * l * (fqk + fv),
                    Pool::Linear => 2.0 * l * (fqk * fqk + fv * fv),
                };
                let kv = prod(&[2, pooled_tokens, batch, h, dqk + dv, elem])?;
                intermediates = add(intermediates, kv)?;
                per_token * f(pooled_tokens) * fh * fb
            }
            _ => 0.0,
        };
        if let BranchKind::Select(sel) = &br.kind {
            let idx = prod(&[2, positions, h, u128::from(sel.top), 4])?;
            intermediates = add(intermediates, idx)?;
        }
        branches.push(BranchCost {
            name: br.name.clone(),
            kind: br.keyword(),
            keys_last,
            keys_mean: ratio(key_sum, row_positions),
            flops: Flops::new(attention, pooling, scoring),
        });
    }

    let mut input_elems: u128 = 0;
    for input in expected_inputs(spec, shape) {
        let dims: Vec<u128> = input.shape.iter().map(|&d| d as u128).collect();
        input_elems = add(input_elems, prod(&dims)?)?;
    }
    let inputs = add(prod(&[input_elems, elem])?, cu_seqlens_bytes(shape))?;
    let output = prod(&[positions, hq, dv, elem])?;
    let bytes = Bytes::new(to_u64(inputs)?, to_u64(output)?, to_u64(intermediates)?);
    Ok(CostReport::new(spec, shape, branches, bytes))
}

/// The checked product of `xs` (also the footprint's).
fn prod(xs: &[u128]) -> Result<u128, CostError> {
    xs.iter()
        .try_fold(1u128, |a, &x| a.checked_mul(x))
        .ok_or(CostError::Overflow)
}

/// The checked sum `a + b` (also the footprint's).
fn add(a: u128, b: u128) -> Result<u128, CostError> {
    a.checked_add(b).ok_or(CostError::Overflow)
}

/// Bytes of `cu_seqlens` (int32, N+1 entries) when the shape has several segments. A
/// one-segment varlen call looks like B = 1 batched in a `Shape` and is counted as such.
fn cu_seqlens_bytes(shape: &Shape) -> u128 {
    if shape.segments.len() > 1 {
        (shape.segments.len() as u128 + 1) * 4
    } else {
        0
    }
}

fn ratio(num: u128, den: u128) -> f64 {
    if den == 0 {
        0.0
    } else {
        num as f64 / den as f64
    }
}

fn to_u64(x: u128) -> Result<u64, CostError> {
    u64::try_from(x).map_err(|_| CostError::Overflow)
}

/// The compress branch that scores a select branch (`None` for other kinds, for given
/// blocks and for an index scorer, whose work is counted on the index branch).
fn scorer_of<'a>(spec: &'a Spec, br: &Branch) -> Result<Option<&'a Compress>, CostError> {
    let BranchKind::Select(sel) = &br.kind else {
        return Ok(None);
    };
    let Some(name) = sel.scorer() else {
        return Ok(None);
    };
    match spec.branch(name).map(|b| &b.kind) {
        Some(BranchKind::Compress(c)) => Ok(Some(c)),
        Some(BranchKind::Index(_)) => Ok(None),
        _ => Err(CostError::BadScorer {
            branch: br.name.clone(),
            scorer: name.to_string(),
        }),
    }
}

fn check(spec: &Spec, shape: &Shape) -> Result<(), CostError> {
    let zero = |branch: &Branch, what| CostError::ZeroParameter {
        branch: branch.name.clone(),
        what,
    };
    for br in &spec.branches {
        match &br.kind {
            BranchKind::Compress(c) if c.block == 0 => return Err(zero(br, "block")),
            BranchKind::Compress(c) if c.stride == 0 => return Err(zero(br, "stride")),
            BranchKind::Select(s) if s.block == 0 => return Err(zero(br, "block")),
            BranchKind::Index(i) if i.heads == 0 => return Err(zero(br, "heads")),
            BranchKind::Index(i) if i.dim == 0 => return Err(zero(br, "dim")),
            _ => {}
        }
    }
    let bad = |m: &str| Err(CostError::BadShape(m.into()));
    if shape.heads.q == 0 || shape.heads.kv == 0 || !shape.heads.q.is_multiple_of(shape.heads.kv) {
        return bad("query heads must be a positive multiple of kv heads");
    }
    if shape.head_dim.qk == 0 || shape.head_dim.v == 0 {
        return bad("head dims must be positive");
    }
    if shape.batch == 0 || shape.segments.is_empty() {
        return bad("no sequences");
    }
    if shape
        .segments
        .iter()
        .any(|&(s, e)| s >= e || e > shape.seq_len)
    {
        return bad("segments must be non-empty and lie within the sequence");
    }
    Ok(())
}

#[cfg(test)]
mod tests;
