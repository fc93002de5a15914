//! A checked call: the problem's sizes, each branch's resolved parameters, and the combine
//! weights — everything the oracle verifies before computing anything.
//!
//! `Spec` values may be built by hand (not only by the validating parser), so the oracle
//! re-checks what it relies on — names that refer to branches, non-zero block sizes, a usable
//! scale, sizes that fit in memory arithmetic — and reports a typed [`ReferenceError`] instead
//! of panicking.

use std::collections::BTreeSet;

use nsac_dsl::problem::Shape;
use nsac_dsl::spec::{
    BranchKind, CombineMode, Compress, Index, Pool, Scorer, Select, Spec, Window,
};

use crate::io::{Inputs, Tensor, check_inputs, expected_inputs};

use super::ReferenceError;
use super::tokens::input;

/// The concrete sizes of a call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Dims {
    /// Query heads HQ.
    pub(crate) hq: usize,
    /// Key/value heads H.
    pub(crate) h: usize,
    /// GQA group G = HQ / H: query head `qh` reads kv head `qh / group`.
    pub(crate) group: usize,
    pub(crate) dqk: usize,
    pub(crate) dv: usize,
    /// The softmax scale s.
    pub(crate) scale: f64,
    pub(crate) causal: bool,
}

/// The pool of a compress branch together with its weight tensors.
#[derive(Debug, Clone, Copy)]
pub(crate) enum PoolWeights<'a> {
    Mean,
    /// `w_<b>` \[H, l\], applied to both K and V.
    Weighted(&'a Tensor<f32>),
    /// `wk_<b>` \[H, l·Dqk, Dqk\] and `wv_<b>` \[H, l·Dv, Dv\].
    Linear {
        wk: &'a Tensor<f32>,
        wv: &'a Tensor<f32>,
    },
}

/// One branch, resolved.
#[derive(Debug, Clone)]
pub(crate) enum Plan<'a> {
    Compress {
        params: Compress,
        weights: PoolWeights<'a>,
    },
    Select {
        params: &'a Select,
        /// Index (in `spec.branches`) of the compress branch that scores the blocks.
        scorer: usize,
        scorer_params: Compress,
    },
    Window(Window),
    /// An index branch: it only scores (its inputs are cut per sequence by `SeqData`).
    Index(Index),
    /// A select branch in a form beyond NSA's blocks: scored by an index branch, given, or
    /// `within` another select branch (an NSA-form select scored at `block = 1` by a compress
    /// branch of any stride stays a [`Plan::Select`]: the overlap rule covers it).
    Choose {
        params: &'a Select,
        source: Source<'a>,
        /// Index (in `spec.branches`) of the select branch whose chosen blocks hold the
        /// candidates.
        within: Option<usize>,
    },
}

/// What scores (or gives) the blocks of a [`Plan::Choose`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum Source<'a> {
    /// The probabilities of a compress branch, spread by overlap (as for NSA's blocks).
    Compress { branch: usize, params: Compress },
    /// The token scores of an index branch (`block = 1`).
    Index { branch: usize },
    /// The caller's `idx_<select>` \[B,T,H,top\] (checked by `Call::new`).
    Given(&'a Tensor<f32>),
}

/// A call whose spec, shape and inputs have all been checked.
#[derive(Debug, Clone)]
pub(crate) struct Call<'a> {
    pub(crate) spec: &'a Spec,
    pub(crate) dims: Dims,
    /// One plan per branch of `spec.branches`, same order.
    pub(crate) plans: Vec<Plan<'a>>,
    /// The combined branches: (index in `spec.branches`, its gate tensor when gated).
    pub(crate) combine: Vec<(usize, Option<&'a Tensor<f32>>)>,
    /// The select branches (indices in `spec.branches`) in an order where every branch comes
    /// after the one it is `within`: the order their blocks are chosen in.
    pub(crate) choice_order: Vec<usize>,
}

impl<'a> Call<'a> {
    /// Checks everything and resolves the branches.
    pub(crate) fn new(
        spec: &'a Spec,
        shape: &Shape,
        inputs: &'a Inputs,
    ) -> Result<Self, ReferenceError> {
        let dims = check_shape(spec, shape)?;
        check_names(spec)?;
        check_sizes(spec, shape)?;
        check_inputs(spec, shape, inputs)?;
        let plans = spec
            .branches
            .iter()
            .map(|b| plan(spec, inputs, &b.name, &b.kind))
            .collect::<Result<Vec<_>, _>>()?;
        let combine = spec
            .combine
            .branches
            .iter()
            .map(|name| {
                let index = branch_index(spec, name, "combine")?;
                let gate = match spec.combine.mode {
                    CombineMode::Gate => Some(input(inputs, &format!("g_{name}"))?),
                    CombineMode::Sum => None,
                };
                Ok((index, gate))
            })
            .collect::<Result<Vec<_>, ReferenceError>>()?;
        let choice_order = choice_order(spec, &plans)?;
        for (branch, plan) in spec.branches.iter().zip(&plans) {
            if let Plan::Choose {
                params,
                source: Source::Given(idx),
                ..
            } = plan
            {
                super::choose::check_given(&branch.name, params, idx, shape, dims.h)?;
            }
        }
        Ok(Call {
            spec,
            dims,
            plans,
            combine,
            choice_order,
        })
    }
}

/// The select branches in dependency order (each after the branch it is `within`); a cycle
/// or a `within` that names no select branch is an error.
fn choice_order(spec: &Spec, plans: &[Plan<'_>]) -> Result<Vec<usize>, ReferenceError> {
    let within = |i: usize| match &plans[i] {
        Plan::Choose { within, .. } => *within,
        _ => None,
    };
    let mut order = Vec::new();
    let mut placed = vec![false; plans.len()];
    for start in 0..plans.len() {
        if !matches!(plans[start], Plan::Select { .. } | Plan::Choose { .. }) || placed[start] {
            continue;
        }
        // The chain start → within → … up to a placed branch or the outermost one.
        let mut chain = vec![start];
        while let Some(next) = within(*chain.last().unwrap_or(&start)) {
            if chain.contains(&next) {
                return Err(ReferenceError::WithinCycle(
                    spec.branches[start].name.clone(),
                ));
            }
            if placed[next] {
                break;
            }
            chain.push(next);
        }
        for &i in chain.iter().rev() {
            placed[i] = true;
            order.push(i);
        }
    }
    Ok(order)
}

/// Refuses a spec using a selection form beyond NSA's blocks for a pass the oracle defines
/// for the forward only so far (`pass`: "backward", "decode").
pub(crate) fn forward_only(spec: &Spec, pass: &'static str) -> Result<(), ReferenceError> {
    match spec.beyond_blocks() {
        Some((branch, form)) => Err(ReferenceError::ForwardOnly {
            branch: branch.to_string(),
            form,
            pass,
        }),
        None => Ok(()),
    }
}

/// The kinds a select branch's `within` and index scorer must have, checked for specs built in
/// code (the validator guarantees them for parsed ones).
fn check_select(spec: &Spec, name: &str, s: &Select) -> Result<(), ReferenceError> {
    if let Some(w) = &s.within {
        let i = branch_index(spec, w, name)?;
        if spec.branches[i].as_select().is_none() {
            return Err(ReferenceError::WrongKind {
                branch: w.clone(),
                expected: "select",
            });
        }
    }
    Ok(())
}

/// Checks the heads, head dims, segments and scale of `shape`; its concrete sizes.
pub(crate) fn check_shape(spec: &Spec, shape: &Shape) -> Result<Dims, ReferenceError> {
    let bad = |why: String| Err(ReferenceError::BadShape(why));
    let (q, kv) = (shape.heads.q, shape.heads.kv);
    if q == 0 || kv == 0 || !q.is_multiple_of(kv) {
        return bad(format!(
            "query heads ({q}) must be a positive multiple of kv heads ({kv})"
        ));
    }
    if shape.head_dim.qk == 0 || shape.head_dim.v == 0 {
        return bad(format!(
            "head dims must be positive (got {}/{})",
            shape.head_dim.qk, shape.head_dim.v
        ));
    }
    if shape.batch == 0 || shape.seq_len == 0 {
        return bad("batch and sequence length must be at least 1".into());
    }
    let mut previous_end = 0;
    for &(start, end) in &shape.segments {
        if start < previous_end || start >= end || end > shape.seq_len {
            return bad(format!(
                "segments must be non-empty, ascending, disjoint and inside [0, {}) (got {:?})",
                shape.seq_len, shape.segments
            ));
        }
        previous_end = end;
    }
    let scale = spec.scale_for(shape.head_dim.qk);
    if !(scale.is_finite() && scale > 0.0) {
        return Err(ReferenceError::BadScale(scale.to_string()));
    }
    Ok(Dims {
        hq: q as usize,
        h: kv as usize,
        group: (q / kv) as usize,
        dqk: shape.head_dim.qk as usize,
        dv: shape.head_dim.v as usize,
        scale,
        causal: spec.causal,
    })
}

/// Checks that branch names are unique and block sizes and strides are non-zero.
pub(crate) fn check_names(spec: &Spec) -> Result<(), ReferenceError> {
    let mut seen = BTreeSet::new();
    for b in &spec.branches {
        if !seen.insert(b.name.as_str()) {
            return Err(ReferenceError::DuplicateBranch(b.name.clone()));
        }
        let zero = |field: &'static str| {
            Err(ReferenceError::ZeroSize {
                branch: b.name.clone(),
                field,
            })
        };
        match &b.kind {
            BranchKind::Compress(c) if c.block == 0 => return zero("block"),
            BranchKind::Compress(c) if c.stride == 0 => return zero("stride"),
            BranchKind::Select(s) if s.block == 0 => return zero("block"),
            BranchKind::Index(i) if i.heads == 0 => return zero("heads"),
            BranchKind::Index(i) if i.dim == 0 => return zero("dim"),
            _ => {}
        }
        if b.kv == nsac_dsl::spec::KvSource::Own && !b.attends() {
            return Err(ReferenceError::WrongKind {
                branch: b.name.clone(),
                expected: "attending (kv = own)",
            });
        }
    }
    Ok(())
}

/// Every tensor the call reads or writes must have an element count that fits in `usize`.
pub(crate) fn check_sizes(spec: &Spec, shape: &Shape) -> Result<(), ReferenceError> {
    let fits = |dims: &[usize]| {
        dims.iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .is_some()
    };
    let (b, t) = (shape.batch, shape.seq_len);
    let out = [b, t, shape.heads.q as usize, shape.head_dim.v as usize];
    if !fits(&out) {
        return Err(ReferenceError::TooLarge("o".into()));
    }
    for br in &spec.branches {
        if let BranchKind::Select(s) = &br.kind
            && !fits(&[b, t, shape.heads.kv as usize, s.top as usize])
        {
            return Err(ReferenceError::TooLarge(format!("idx_{}", br.name)));
        }
        if let BranchKind::Compress(c) = &br.kind {
            let l = c.block as usize;
            let h = shape.heads.kv as usize;
            let (dqk, dv) = (shape.head_dim.qk as usize, shape.head_dim.v as usize);
            let linear_ok = c.pool != Pool::Linear
                || (l.checked_mul(dqk).is_some_and(|n| fits(&[h, n, dqk]))
                    && l.checked_mul(dv).is_some_and(|n| fits(&[h, n, dv])));
            if !linear_ok {
                return Err(ReferenceError::TooLarge(format!("wk_{}", br.name)));
            }
        }
    }
    // Only now is it safe to let `io` compute the expected shapes.
    for e in expected_inputs(spec, shape) {
        if !fits(&e.shape) {
            return Err(ReferenceError::TooLarge(e.name));
        }
    }
    Ok(())
}

/// The index of branch `name` in `spec.branches`, or an error naming who refers to it.
pub(crate) fn branch_index(
    spec: &Spec,
    name: &str,
    used_by: &str,
) -> Result<usize, ReferenceError> {
    spec.branches
        .iter()
        .position(|b| b.name == name)
        .ok_or_else(|| ReferenceError::UnknownBranch {
            name: name.to_string(),
            used_by: used_by.to_string(),
        })
}

/// Resolves one branch: its parameters, scorer and pool weights (looked up in `inputs`).
pub(crate) fn plan<'a>(
    spec: &'a Spec,
    inputs: &'a Inputs,
    name: &str,
    kind: &'a BranchKind,
) -> Result<Plan<'a>, ReferenceError> {
    Ok(match kind {
        BranchKind::Compress(c) => Plan::Compress {
            params: *c,
            weights: match c.pool {
                Pool::Mean => PoolWeights::Mean,
                Pool::Weighted => PoolWeights::Weighted(input(inputs, &format!("w_{name}"))?),
                Pool::Linear => PoolWeights::Linear {
                    wk: input(inputs, &format!("wk_{name}"))?,
                    wv: input(inputs, &format!("wv_{name}"))?,
                },
            },
        },
        BranchKind::Select(s) => {
            check_select(spec, name, s)?;
            let within = match &s.within {
                Some(w) => Some(branch_index(spec, w, name)?),
                None => None,
            };
            let by = match &s.scored_by {
                Scorer::Given => {
                    let idx = input(inputs, &format!("idx_{name}"))?;
                    return Ok(Plan::Choose {
                        params: s,
                        source: Source::Given(idx),
                        within,
                    });
                }
                Scorer::Branch(by) => by,
            };
            let scorer = branch_index(spec, by, name)?;
            let not_scorer = || ReferenceError::NotCompress {
                select: name.to_string(),
                scored_by: by.clone(),
            };
            match &spec.branches[scorer].kind {
                BranchKind::Compress(c) if within.is_none() => Plan::Select {
                    params: s,
                    scorer,
                    scorer_params: *c,
                },
                BranchKind::Compress(c) => Plan::Choose {
                    params: s,
                    source: Source::Compress {
                        branch: scorer,
                        params: *c,
                    },
                    within,
                },
                BranchKind::Index(_) if s.block == 1 => Plan::Choose {
                    params: s,
                    source: Source::Index { branch: scorer },
                    within,
                },
                _ => return Err(not_scorer()),
            }
        }
        BranchKind::Window(w) => Plan::Window(*w),
        BranchKind::Index(i) => Plan::Index(*i),
    })
}
