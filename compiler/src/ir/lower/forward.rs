//! The forward pass: each branch of a spec onto pool / attend / score / top-k ops, then the
//! combine. Compress branches pool their keys and attend over the compressed tokens (saving the
//! log-sum-exp when a select branch is scored by them); select branches score blocks with the
//! compress branch's probabilities, pick the top-k and gather their keys; window branches
//! attend over a window. Op order: every pool, every compressed attention, every score and
//! top-k, every other attention in declaration order, then the combine.

use nsac_dsl::spec::{
    BranchKind, CombineMode as SpecCombine, KvSource, Pool as SpecPool, Scorer, SelectionForm, Spec,
};

use super::LowerError;
use crate::ir::op::{
    Attend, Combine, CombineMode, Forced, KeySet, Op, Pool, PoolKind, Score, ScoreSource, Term,
    Tie, TopK, Within,
};
use crate::ir::tensor::{Elem, Extent, Layout, Role, Tensor, TensorId};
use crate::ir::{Consts, Plan, Signature};

/// The tensors being declared.
struct Decls(Vec<Tensor>);

impl Decls {
    /// Declares `name` (or returns the existing declaration of that name).
    fn add(&mut self, name: String, role: Role, elem: Elem, shape: Vec<Extent>) -> TensorId {
        if let Some(i) = self.0.iter().position(|t| t.name == name) {
            return TensorId(i);
        }
        self.0.push(Tensor {
            name,
            role,
            elem,
            shape,
            layout: Layout::RowMajor,
        });
        TensorId(self.0.len() - 1)
    }
}

fn positive(branch: &str, param: &'static str, v: u32) -> Result<usize, LowerError> {
    if v == 0 {
        return Err(LowerError::ZeroParameter {
            branch: branch.to_string(),
            param,
        });
    }
    Ok(v as usize)
}

/// The selection forms beyond NSA's blocks that the forward lowering emits (the others are
/// refused by name, [`LowerError::Unsupported`]).
pub const SUPPORTED_FORMS: &[SelectionForm] = &[SelectionForm::Given, SelectionForm::Within];

/// How many `within` links lead from select branch `name` to an outermost one (a cycle is an
/// error).
fn within_depth(spec: &Spec, name: &str) -> Result<usize, LowerError> {
    let mut depth = 0;
    let mut at = name;
    while let Some(outer) = spec
        .branch(at)
        .and_then(|b| b.as_select())
        .and_then(|s| s.within.as_deref())
    {
        depth += 1;
        if depth > spec.branches.len() {
            return Err(LowerError::BadWithin {
                branch: name.to_string(),
                within: outer.to_string(),
            });
        }
        at = outer;
    }
    Ok(depth)
}

/// Lowers the forward pass of `spec` for `sig` (not yet verified).
pub fn forward(spec: &Spec, sig: &Signature) -> Result<Plan, LowerError> {
    let heads = sig.heads;
    if heads.q == 0 || heads.kv == 0 || !heads.q.is_multiple_of(heads.kv) {
        return Err(LowerError::BadHeads {
            q: heads.q,
            kv: heads.kv,
        });
    }
    if sig.head_dim.qk == 0 || sig.head_dim.v == 0 {
        return Err(LowerError::BadHeadDim);
    }
    if let Some((branch, form)) = spec.beyond_blocks_except(SUPPORTED_FORMS) {
        return Err(LowerError::Unsupported {
            branch: branch.to_string(),
            form,
        });
    }
    for name in &spec.combine.branches {
        if spec.branch(name).is_none() {
            return Err(LowerError::UnknownCombineBranch(name.clone()));
        }
    }
    // A select branch another is `within` may be left out of combine: it then only chooses.
    let chooses_only = |name: &str| {
        spec.branches
            .iter()
            .any(|b| b.as_select().and_then(|s| s.within.as_deref()) == Some(name))
    };
    for br in &spec.branches {
        let named = spec
            .combine
            .branches
            .iter()
            .filter(|n| **n == br.name)
            .count();
        let dup = spec.branches.iter().filter(|o| o.name == br.name).count();
        if !(named == 1 || named == 0 && chooses_only(&br.name)) || dup != 1 {
            return Err(LowerError::CombineMismatch(br.name.clone()));
        }
    }
    let consts = Consts {
        heads_q: heads.q as usize,
        heads_kv: heads.kv as usize,
        group: heads.group() as usize,
        dqk: sig.head_dim.qk as usize,
        dv: sig.head_dim.v as usize,
        scale: spec.scale_for(sig.head_dim.qk),
        causal: spec.causal,
        dtype: sig.dtype,
    };
    use Extent::{Batch as B, Dqk, Dv, HeadsKv as H, HeadsQ as HQ, Keys as TK, Queries as TQ};
    let act = Elem::of(sig.dtype);
    let mut t = Decls(Vec::new());
    let q = t.add("q".into(), Role::In, act, vec![B, TQ, HQ, Dqk]);
    let k_shared = t.add("k".into(), Role::In, act, vec![B, TK, H, Dqk]);
    let v_shared = t.add("v".into(), Role::In, act, vec![B, TK, H, Dv]);
    let out_shape = || vec![B, TQ, HQ, Dv];
    let scored: Vec<&str> = spec
        .branches
        .iter()
        .filter_map(|b| b.as_select().and_then(|s| s.scorer()))
        .collect();

    let (mut pools, mut compressed, mut selections, mut others) = (vec![], vec![], vec![], vec![]);
    // The `within` depth of each op of `selections` (score and top-k pairs), to order every
    // top-k after the one it is within.
    let mut depths: Vec<usize> = Vec::new();
    for br in &spec.branches {
        let name = br.name.as_str();
        let (k, v) = match br.kv {
            KvSource::Shared => (k_shared, v_shared),
            KvSource::Own => (
                t.add(format!("k_{name}"), Role::In, act, vec![B, TK, H, Dqk]),
                t.add(format!("v_{name}"), Role::In, act, vec![B, TK, H, Dv]),
            ),
        };
        match &br.kind {
            BranchKind::Compress(c) => {
                let block = positive(name, "block", c.block)?;
                let stride = positive(name, "stride", c.stride)?;
                let (kind, weights) = match c.pool {
                    SpecPool::Mean => (PoolKind::Mean, vec![]),
                    SpecPool::Weighted => (
                        PoolKind::Weighted,
                        vec![t.add(
                            format!("w_{name}"),
                            Role::In,
                            act,
                            vec![H, Extent::Const(block)],
                        )],
                    ),
                    SpecPool::Linear => (
                        PoolKind::Linear,
                        vec![
                            t.add(
                                format!("wk_{name}"),
                                Role::In,
                                act,
                                vec![H, Extent::Const(block * consts.dqk), Dqk],
                            ),
                            t.add(
                                format!("wv_{name}"),
                                Role::In,
                                act,
                                vec![H, Extent::Const(block * consts.dv), Dv],
                            ),
                        ],
                    ),
                };
                let nc = Extent::Compressed(name.to_string());
                let kc = t.add(
                    format!("kc_{name}"),
                    Role::Scratch,
                    Elem::F32,
                    vec![B, nc.clone(), H, Dqk],
                );
                let vc = t.add(
                    format!("vc_{name}"),
                    Role::Scratch,
                    Elem::F32,
                    vec![B, nc, H, Dv],
                );
                let out = t.add(format!("o_{name}"), Role::Out, Elem::F32, out_shape());
                let lse = scored.contains(&name).then(|| {
                    t.add(
                        format!("lse_{name}"),
                        Role::Scratch,
                        Elem::F32,
                        vec![B, TQ, HQ],
                    )
                });
                pools.push(Op::Pool(Pool {
                    branch: name.to_string(),
                    kind,
                    block,
                    stride,
                    k,
                    v,
                    weights,
                    kc,
                    vc,
                }));
                compressed.push(Op::Attend(Attend {
                    branch: name.to_string(),
                    keys: KeySet::Compressed { block, stride },
                    q,
                    k: kc,
                    v: vc,
                    out,
                    lse,
                }));
            }
            BranchKind::Select(s) => {
                let block = positive(name, "block", s.block)?;
                let top = positive(name, "top", s.top)?;
                if s.scored_by == Scorer::Given {
                    let out = t.add(format!("o_{name}"), Role::Out, Elem::F32, out_shape());
                    // The caller's blocks (`idx_<s>`, block indices per query and kv head, −1
                    // for an unused slot, any order) are read directly; no score, no top-k.
                    let idx = t.add(
                        format!("idx_{name}"),
                        Role::In,
                        Elem::I32,
                        vec![B, TQ, H, Extent::Const(top)],
                    );
                    others.push(Op::Attend(Attend {
                        branch: name.to_string(),
                        keys: KeySet::Gather {
                            idx,
                            granularity: block,
                        },
                        q,
                        k,
                        v,
                        out,
                        lse: None,
                    }));
                    continue;
                }
                // Nested selections were refused above (`beyond_blocks_except`).
                let by_name = s.scorer().unwrap_or_default();
                let by = spec
                    .branch(by_name)
                    .and_then(|c| c.as_compress())
                    .ok_or_else(|| LowerError::BadScoredBy {
                        branch: name.to_string(),
                        by: by_name.to_string(),
                    })?;
                let (cb, cs) = (
                    positive(by_name, "block", by.block)?,
                    positive(by_name, "stride", by.stride)?,
                );
                let nc = Extent::Compressed(by_name.to_string());
                // The scoring branch's tensors are declared with the same names and shapes
                // whichever branch comes first; `add` returns the existing declaration.
                let kc = t.add(
                    format!("kc_{by_name}"),
                    Role::Scratch,
                    Elem::F32,
                    vec![B, nc, H, Dqk],
                );
                let lse = t.add(
                    format!("lse_{by_name}"),
                    Role::Scratch,
                    Elem::F32,
                    vec![B, TQ, HQ],
                );
                let scores = t.add(
                    format!("scores_{name}"),
                    Role::Scratch,
                    Elem::F32,
                    vec![B, TQ, H, Extent::Blocks(block)],
                );
                let idx = t.add(
                    format!("idx_{name}"),
                    Role::Out,
                    Elem::I32,
                    vec![B, TQ, H, Extent::Const(top)],
                );
                let out = t.add(format!("o_{name}"), Role::Out, Elem::F32, out_shape());
                let within = match &s.within {
                    None => None,
                    Some(outer) => {
                        let o =
                            spec.branch(outer)
                                .and_then(|b| b.as_select())
                                .ok_or_else(|| LowerError::BadWithin {
                                    branch: name.to_string(),
                                    within: outer.clone(),
                                })?;
                        let ob = positive(outer, "block", o.block)?;
                        let otop = positive(outer, "top", o.top)?;
                        // The outer choice: a top-k's output, or the caller's given blocks.
                        let role = if o.scored_by == Scorer::Given {
                            Role::In
                        } else {
                            Role::Out
                        };
                        let idx = t.add(
                            format!("idx_{outer}"),
                            role,
                            Elem::I32,
                            vec![B, TQ, H, Extent::Const(otop)],
                        );
                        Some(Within { idx, block: ob })
                    }
                };
                let depth = within_depth(spec, name)?;
                selections.push(Op::Score(Score {
                    branch: name.to_string(),
                    source: ScoreSource::Compressed {
                        branch: by_name.to_string(),
                        block: cb,
                        stride: cs,
                        q,
                        kc,
                        lse,
                    },
                    granularity: block,
                    out: scores,
                }));
                selections.push(Op::TopK(TopK {
                    branch: name.to_string(),
                    k: top,
                    block,
                    forced: Forced {
                        first: s.keep_first as usize,
                        last: s.keep_last as usize,
                    },
                    tie: Tie::LowerIndex,
                    scores,
                    idx,
                    within,
                }));
                depths.push(depth);
                depths.push(depth);
                others.push(Op::Attend(Attend {
                    branch: name.to_string(),
                    keys: KeySet::Gather {
                        idx,
                        granularity: block,
                    },
                    q,
                    k,
                    v,
                    out,
                    lse: None,
                }));
            }
            // Refused before any tensor is declared (`beyond_blocks`).
            BranchKind::Index(_) => {
                return Err(LowerError::Unsupported {
                    branch: name.to_string(),
                    form: nsac_dsl::spec::SelectionForm::Indexer,
                });
            }
            BranchKind::Window(w) => {
                let out = t.add(format!("o_{name}"), Role::Out, Elem::F32, out_shape());
                others.push(Op::Attend(Attend {
                    branch: name.to_string(),
                    keys: KeySet::Window {
                        size: w.size as usize,
                    },
                    q,
                    k,
                    v,
                    out,
                    lse: None,
                }));
            }
        }
    }
    let mode = match spec.combine.mode {
        SpecCombine::Gate => CombineMode::Gate,
        SpecCombine::Sum => CombineMode::Sum,
    };
    let mut terms = Vec::new();
    for name in &spec.combine.branches {
        let out = t.add(format!("o_{name}"), Role::Out, Elem::F32, out_shape());
        let gate = (mode == CombineMode::Gate)
            .then(|| t.add(format!("g_{name}"), Role::In, act, vec![B, TQ, HQ]));
        terms.push(Term {
            branch: name.clone(),
            out,
            gate,
        });
    }
    let o = t.add("o".into(), Role::Out, Elem::F32, out_shape());
    let mut ops = pools;
    ops.extend(compressed);
    // Stable: pairs of one depth keep declaration order.
    let mut ordered: Vec<(usize, Op)> = depths.into_iter().zip(selections).collect();
    ordered.sort_by_key(|(d, _)| *d);
    ops.extend(ordered.into_iter().map(|(_, op)| op));
    ops.extend(others);
    ops.push(Op::Combine(Combine {
        mode,
        terms,
        out: o,
    }));
    Ok(Plan {
        name: spec.name.clone(),
        consts,
        tensors: t.0,
        ops,
    })
}
