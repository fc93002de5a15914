//! Lowering a `Spec` on a `Shape` into a `Plan`: buffer allocation and stage ordering.

use nsac_dsl::problem::Shape;
use nsac_dsl::spec::{BranchKind, CombineMode, KvSource, Pool, Spec};

use super::stage::{
    Buffer, BufferId, BufferRole, CombineStage, CombineTerm, CompressedAttentionStage, Elem,
    PoolStage, SelectBlocksStage, SelectedAttentionStage, Stage, WindowAttentionStage,
};
use super::{Dims, Plan};

/// Why a spec cannot be lowered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("branch `{branch}`: parameter `{param}` must be positive")]
    ZeroParameter { branch: String, param: &'static str },
    #[error("select branch `{branch}` is scored by `{by}`, which is not a compress branch")]
    BadScoredBy { branch: String, by: String },
    #[error("combine names `{0}`, which is not a branch")]
    UnknownCombineBranch(String),
    #[error("branch `{0}` is declared twice or missing from combine")]
    CombineMismatch(String),
    #[error("heads {q}/{kv}: query heads must be a positive multiple of kv heads")]
    BadHeads { q: u32, kv: u32 },
    #[error("head dims must be positive")]
    BadHeadDim,
    #[error("the problem is empty")]
    EmptyProblem,
}

struct Buffers(Vec<Buffer>);

impl Buffers {
    fn add(&mut self, name: String, role: BufferRole, elem: Elem, dims: Vec<usize>) -> BufferId {
        if let Some(i) = self.0.iter().position(|b| b.name == name) {
            return BufferId(i);
        }
        self.0.push(Buffer {
            name,
            role,
            elem,
            dims,
        });
        BufferId(self.0.len() - 1)
    }
}

fn positive(branch: &str, param: &'static str, v: u32) -> Result<usize, PlanError> {
    if v == 0 {
        return Err(PlanError::ZeroParameter {
            branch: branch.to_string(),
            param,
        });
    }
    Ok(v as usize)
}

pub(super) fn lower(spec: &Spec, shape: &Shape) -> Result<Plan, PlanError> {
    let heads = shape.heads;
    if heads.q == 0 || heads.kv == 0 || !heads.q.is_multiple_of(heads.kv) {
        return Err(PlanError::BadHeads {
            q: heads.q,
            kv: heads.kv,
        });
    }
    if shape.head_dim.qk == 0 || shape.head_dim.v == 0 {
        return Err(PlanError::BadHeadDim);
    }
    if shape.batch == 0 || shape.seq_len == 0 || shape.segments.is_empty() {
        return Err(PlanError::EmptyProblem);
    }
    let dims = Dims {
        batch: shape.batch,
        seq_len: shape.seq_len,
        segments: shape.segments.clone(),
        heads_q: heads.q as usize,
        heads_kv: heads.kv as usize,
        group: heads.group() as usize,
        dqk: shape.head_dim.qk as usize,
        dv: shape.head_dim.v as usize,
        scale: spec.scale_for(shape.head_dim.qk),
        causal: spec.causal,
        dtype: shape.dtype,
    };
    let (b, t, hq, h, dqk, dv) = (
        dims.batch,
        dims.seq_len,
        dims.heads_q,
        dims.heads_kv,
        dims.dqk,
        dims.dv,
    );
    let mut bufs = Buffers(Vec::new());
    let q = bufs.add(
        "q".into(),
        BufferRole::Input,
        Elem::F32,
        vec![b, t, hq, dqk],
    );
    let k_shared = bufs.add("k".into(), BufferRole::Input, Elem::F32, vec![b, t, h, dqk]);
    let v_shared = bufs.add("v".into(), BufferRole::Input, Elem::F32, vec![b, t, h, dv]);

    // Combine must name every branch exactly once.
    for name in &spec.combine.branches {
        if spec.branch(name).is_none() {
            return Err(PlanError::UnknownCombineBranch(name.clone()));
        }
    }
    for br in &spec.branches {
        let n = spec
            .combine
            .branches
            .iter()
            .filter(|n| **n == br.name)
            .count();
        let dup = spec.branches.iter().filter(|o| o.name == br.name).count();
        if n != 1 || dup != 1 {
            return Err(PlanError::CombineMismatch(br.name.clone()));
        }
    }

    let mut pools = Vec::new();
    let mut cmps = Vec::new();
    let mut selects = Vec::new();
    let mut others = Vec::new();
    let kv_of = |bufs: &mut Buffers, name: &str, src: KvSource| match src {
        KvSource::Shared => (k_shared, v_shared),
        KvSource::Own => (
            bufs.add(
                format!("k_{name}"),
                BufferRole::Input,
                Elem::F32,
                vec![b, t, h, dqk],
            ),
            bufs.add(
                format!("v_{name}"),
                BufferRole::Input,
                Elem::F32,
                vec![b, t, h, dv],
            ),
        ),
    };
    let out_dims = vec![b, t, hq, dv];

    for br in &spec.branches {
        let name = br.name.as_str();
        let (k, v) = kv_of(&mut bufs, name, br.kv);
        match &br.kind {
            BranchKind::Compress(c) => {
                let block = positive(name, "block", c.block)?;
                let stride = positive(name, "stride", c.stride)?;
                let weights = match c.pool {
                    Pool::Mean => vec![],
                    Pool::Weighted => vec![bufs.add(
                        format!("w_{name}"),
                        BufferRole::Input,
                        Elem::F32,
                        vec![h, block],
                    )],
                    Pool::Linear => vec![
                        bufs.add(
                            format!("wk_{name}"),
                            BufferRole::Input,
                            Elem::F32,
                            vec![h, block * dqk, dqk],
                        ),
                        bufs.add(
                            format!("wv_{name}"),
                            BufferRole::Input,
                            Elem::F32,
                            vec![h, block * dv, dv],
                        ),
                    ],
                };
                let mut pool = PoolStage {
                    branch: name.to_string(),
                    pool: c.pool,
                    block,
                    stride,
                    k,
                    v,
                    weights,
                    kc: BufferId(0),
                    vc: BufferId(0),
                    cmp_offsets: Vec::new(),
                };
                let mut total = 0;
                for &(s, e) in &dims.segments {
                    pool.cmp_offsets.push(total);
                    total += pool.tokens_in(e - s);
                }
                pool.kc = bufs.add(
                    format!("kc_{name}"),
                    BufferRole::Intermediate,
                    Elem::F32,
                    vec![b, total, h, dqk],
                );
                pool.vc = bufs.add(
                    format!("vc_{name}"),
                    BufferRole::Intermediate,
                    Elem::F32,
                    vec![b, total, h, dv],
                );
                let out = bufs.add(
                    format!("o_{name}"),
                    BufferRole::Output,
                    Elem::F32,
                    out_dims.clone(),
                );
                let lse = bufs.add(
                    format!("lse_{name}"),
                    BufferRole::Intermediate,
                    Elem::F32,
                    vec![b, t, hq],
                );
                cmps.push(Stage::CompressedAttention(CompressedAttentionStage {
                    branch: name.to_string(),
                    q,
                    kc: pool.kc,
                    vc: pool.vc,
                    out,
                    lse,
                }));
                pools.push(Stage::Pool(pool));
            }
            BranchKind::Select(s) => {
                let block = positive(name, "block", s.block)?;
                let top = s.top as usize;
                let scorer = spec
                    .branch(&s.scored_by)
                    .and_then(|c| c.as_compress())
                    .ok_or_else(|| PlanError::BadScoredBy {
                        branch: name.to_string(),
                        by: s.scored_by.clone(),
                    })?;
                let idx = bufs.add(
                    format!("idx_{name}"),
                    BufferRole::Output,
                    Elem::I32,
                    vec![b, t, h, top],
                );
                let out = bufs.add(
                    format!("o_{name}"),
                    BufferRole::Output,
                    Elem::F32,
                    out_dims.clone(),
                );
                selects.push(Stage::SelectBlocks(SelectBlocksStage {
                    branch: name.to_string(),
                    scored_by: s.scored_by.clone(),
                    block,
                    top,
                    keep_first: s.keep_first as usize,
                    keep_last: s.keep_last as usize,
                    cmp_block: positive(&s.scored_by, "block", scorer.block)?,
                    cmp_stride: positive(&s.scored_by, "stride", scorer.stride)?,
                    q,
                    kc: BufferId(usize::MAX),
                    lse: BufferId(usize::MAX),
                    idx,
                }));
                others.push(Stage::SelectedAttention(SelectedAttentionStage {
                    branch: name.to_string(),
                    block,
                    top,
                    q,
                    k,
                    v,
                    idx,
                    out,
                }));
            }
            BranchKind::Window(w) => {
                let size = w.size as usize;
                let out = bufs.add(
                    format!("o_{name}"),
                    BufferRole::Output,
                    Elem::F32,
                    out_dims.clone(),
                );
                others.push(Stage::WindowAttention(WindowAttentionStage {
                    branch: name.to_string(),
                    size,
                    q,
                    k,
                    v,
                    out,
                }));
            }
        }
    }
    // Resolve the scoring buffers now that every compress branch has its buffers.
    for st in &mut selects {
        if let Stage::SelectBlocks(sb) = st {
            let find = |n: String| bufs.0.iter().position(|x| x.name == n).map(BufferId);
            match (
                find(format!("kc_{}", sb.scored_by)),
                find(format!("lse_{}", sb.scored_by)),
            ) {
                (Some(kc), Some(lse)) => {
                    sb.kc = kc;
                    sb.lse = lse;
                }
                _ => {
                    return Err(PlanError::BadScoredBy {
                        branch: sb.branch.clone(),
                        by: sb.scored_by.clone(),
                    });
                }
            }
        }
    }

    let mut terms = Vec::new();
    for name in &spec.combine.branches {
        let out = bufs
            .0
            .iter()
            .position(|x| x.name == format!("o_{name}"))
            .map(BufferId)
            .ok_or_else(|| PlanError::UnknownCombineBranch(name.clone()))?;
        let gate = match spec.combine.mode {
            CombineMode::Gate => Some(bufs.add(
                format!("g_{name}"),
                BufferRole::Input,
                Elem::F32,
                vec![b, t, hq],
            )),
            CombineMode::Sum => None,
        };
        terms.push(CombineTerm {
            branch: name.clone(),
            out,
            gate,
        });
    }
    let o = bufs.add("o".into(), BufferRole::Output, Elem::F32, out_dims);

    let mut stages = pools;
    stages.extend(cmps);
    stages.extend(selects);
    stages.extend(others);
    stages.push(Stage::Combine(CombineStage {
        mode: spec.combine.mode,
        terms,
        out: o,
    }));
    Ok(Plan {
        name: spec.name.clone(),
        dims,
        buffers: bufs.0,
        stages,
    })
}
