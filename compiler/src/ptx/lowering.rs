//! The PTX backend's view of a [`Plan`]: one GPU stage per plan stage (pool, compressed
//! attention, top-n selection, selected/window attention, combine) in the plan's order, each
//! naming the plan buffers it reads and writes, with the sizes the kernels are specialized on
//! (heads, head dims, block sizes, dtype) as `u32`s. Nothing here depends on the sequence
//! length, the batch or the segments: those are run-time values ([`CallSizes`], the kernels'
//! `u32` parameters), so one PTX module serves every length and packing.
//!
//! The backend's own scratch, which the Plan does not have, is declared here too
//! ([`backend_scratch`]): the `seg` table and the 16-bit copies of the compressed tokens the
//! tensor-core kernels stage, each derived from plan buffers and sized like them.

use nsac_dsl::problem::DType;

use super::{BufferInfo, BufferRole, PtxError};
use crate::plan::{self, CombineMode, Plan, Pool};

/// Sizes shared by all stages: everything but the lengths.
#[derive(Debug, Clone, PartialEq)]
pub struct Dims {
    pub hq: u32,
    pub h: u32,
    pub group: u32,
    pub dqk: u32,
    pub dv: u32,
    pub causal: bool,
    /// Softmax scale times log2(e): kernels work in base 2.
    pub scale_log2: f32,
    pub dtype: DType,
    /// u32 columns per token of the `seg` table: segment start, segment end, then the first
    /// compressed slot of the token's segment for each compress branch ([`Compressed::column`]).
    pub seg_cols: u32,
}

/// Where a branch reads its keys and values.
#[derive(Debug, Clone, PartialEq)]
pub struct KvNames {
    pub k: String,
    pub v: String,
}

/// The compressed tokens of one compress branch, as the GPU holds them: the plan's f32 `kc`,
/// `vc` `[B, NC, H, D]` and, for the tensor-core kernels, their 16-bit copies (`half`: keys as
/// hi and lo rows, values rounded), with the same slots.
#[derive(Debug, Clone, PartialEq)]
pub struct Compressed {
    pub kv: KvNames,
    pub half: Option<KvNames>,
    /// The `seg` column that holds, per token, the first slot of its segment's compressed
    /// tokens (slot = that base + local compressed index).
    pub column: u32,
}

/// One term of the combine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    pub branch: String,
    /// The branch's output `o_<b>`.
    pub out: String,
    /// Its gate, `None` for `sum`.
    pub gate: Option<String>,
}

/// One GPU stage; every buffer is named as in the plan (and the launch manifest).
#[derive(Debug, Clone, PartialEq)]
pub enum Stage {
    /// Pools blocks of keys/values into compressed tokens.
    Pool {
        branch: String,
        kv: KvNames,
        /// `[w]` (weighted), `[wk, wv]` (linear) or none (mean).
        weights: Vec<String>,
        out: Compressed,
        block: u32,
        stride: u32,
        pool: Pool,
    },
    /// Softmax attention over compressed tokens; writes `out` and, when scored, `lse`.
    AttendCompressed {
        branch: String,
        q: String,
        keys: Compressed,
        out: String,
        lse: Option<String>,
        block: u32,
        stride: u32,
    },
    /// Scores selection blocks from a compress branch's probabilities and picks the top n.
    TopN {
        branch: String,
        scored_by: String,
        q: String,
        keys: Compressed,
        lse: String,
        idx: String,
        cmp_block: u32,
        cmp_stride: u32,
        block: u32,
        top: u32,
        keep_first: u32,
        keep_last: u32,
    },
    /// Softmax attention over the keys of the chosen blocks.
    AttendSelected {
        branch: String,
        q: String,
        kv: KvNames,
        idx: String,
        out: String,
        block: u32,
        top: u32,
    },
    /// Softmax attention over a sliding window.
    AttendWindow {
        branch: String,
        q: String,
        kv: KvNames,
        out: String,
        size: u32,
    },
    /// o = Σ g_b · o_b (gates all 1 for `sum`).
    Combine { terms: Vec<Term>, out: String },
}

/// The lowered program.
#[derive(Debug, Clone, PartialEq)]
pub struct Program {
    pub name: String,
    pub dims: Dims,
    pub stages: Vec<Stage>,
    /// The most tokens (B·T) one call may have: every flattened element index the kernels form
    /// (token · heads · dim and the like) must stay below 2³¹.
    pub max_tokens: u64,
}

/// The run-time sizes of one call: what the kernels' `u32` parameters and launch geometry are
/// computed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallSizes {
    /// Tokens over the whole call (B·T).
    pub tokens: u64,
    /// The longest segment.
    pub max_len: u64,
}

impl CallSizes {
    /// The sizes of the plan's problem.
    pub fn of(plan: &Plan) -> CallSizes {
        let d = &plan.dims;
        CallSizes {
            tokens: (d.batch * d.seq_len) as u64,
            max_len: d
                .segments
                .iter()
                .map(|(s, e)| e - s)
                .max()
                .unwrap_or(d.seq_len) as u64,
        }
    }
}

fn to_u32(v: usize, what: &'static str) -> Result<u32, PtxError> {
    u32::try_from(v).map_err(|_| PtxError::TooLarge(what))
}

/// Whether the pool kernel also writes the 16-bit compressed scratch (`kc16_<b>`: hi and lo
/// rows of every compressed key, `vc16_<b>`: values rounded to the input dtype) that the
/// tensor-core kernels copy with `cp.async`.
pub fn half_scratch(dims: &Dims) -> bool {
    matches!(dims.dtype, DType::Bf16 | DType::F16)
        && dims.group <= 16
        && dims.dqk.is_multiple_of(16)
        && dims.dqk <= 128
}

/// The names of the 16-bit copies of compress branch `branch`'s tokens.
fn half_names(branch: &str) -> KvNames {
    KvNames {
        k: format!("kc16_{branch}"),
        v: format!("vc16_{branch}"),
    }
}

/// The sizes every stage shares, from the plan's dims (no length among them).
fn dims_of(plan: &Plan) -> Result<Dims, PtxError> {
    let d = &plan.dims;
    let (hq, h) = (
        to_u32(d.heads_q, "query heads")?,
        to_u32(d.heads_kv, "kv heads")?,
    );
    if h == 0 || hq == 0 || hq % h != 0 {
        return Err(PtxError::Unsupported(format!(
            "heads {hq}/{h}: query heads must be a positive multiple of kv heads"
        )));
    }
    let (dqk, dv) = (to_u32(d.dqk, "head dim")?, to_u32(d.dv, "head dim")?);
    let pools = plan
        .stages
        .iter()
        .filter(|s| matches!(s, plan::Stage::Pool(_)))
        .count();
    Ok(Dims {
        hq,
        h,
        group: hq / h,
        dqk,
        dv,
        causal: d.causal,
        scale_log2: (d.scale * std::f64::consts::LOG2_E) as f32,
        dtype: d.dtype,
        seg_cols: to_u32(2 + pools, "compress branches")?,
    })
}

/// The compressed tokens of compress branch `branch` (its pool stage's buffers).
fn compressed(plan: &Plan, dims: &Dims, branch: &str) -> Result<Compressed, PtxError> {
    let (column, pool) = plan
        .stages
        .iter()
        .filter_map(|s| match s {
            plan::Stage::Pool(p) => Some(p),
            _ => None,
        })
        .enumerate()
        .find(|(_, p)| p.branch == branch)
        .ok_or_else(|| PtxError::Unsupported(format!("compress `{branch}` has no pool stage")))?;
    Ok(Compressed {
        kv: kv_names(plan, pool.kc, pool.vc),
        half: half_scratch(dims).then(|| half_names(branch)),
        column: 2 + column as u32,
    })
}

fn name(plan: &Plan, id: plan::BufferId) -> String {
    plan.buffer(id).name.clone()
}

fn kv_names(plan: &Plan, k: plan::BufferId, v: plan::BufferId) -> KvNames {
    KvNames {
        k: name(plan, k),
        v: name(plan, v),
    }
}

/// The most tokens a call of `plan`'s spec may have for 32-bit element indices: the widest
/// per-token extent of any buffer the kernels index (q and o rows, the 16-bit compressed keys'
/// hi + lo rows, the selections), times the tokens, stays below 2³¹.
fn max_tokens(plan: &Plan, dims: &Dims) -> u64 {
    let (hq, h) = (u64::from(dims.hq), u64::from(dims.h));
    let (dqk, dv) = (u64::from(dims.dqk), u64::from(dims.dv));
    let mut widest = (hq * dqk.max(dv))
        .max(2 * h * dqk)
        .max(u64::from(dims.seg_cols));
    for s in &plan.stages {
        if let plan::Stage::SelectBlocks(sb) = s {
            widest = widest.max(h * sb.top as u64);
        }
    }
    ((1u64 << 31) - 1) / widest.max(1)
}

/// Lowers `plan` into GPU stages.
pub fn lower(plan: &Plan) -> Result<Program, PtxError> {
    let dims = dims_of(plan)?;
    let size = |v: usize, what: &'static str| to_u32(v, what);
    let mut stages = Vec::new();
    for stage in &plan.stages {
        stages.push(match stage {
            plan::Stage::Pool(p) => Stage::Pool {
                branch: p.branch.clone(),
                kv: kv_names(plan, p.k, p.v),
                weights: p.weights.iter().map(|&w| name(plan, w)).collect(),
                out: compressed(plan, &dims, &p.branch)?,
                block: size(p.block, "compress block")?,
                stride: size(p.stride, "compress stride")?,
                pool: p.pool,
            },
            plan::Stage::CompressedAttention(c) => {
                let pool = plan.pool_of(&c.branch).ok_or_else(|| {
                    PtxError::Unsupported(format!("compress `{}` has no pool stage", c.branch))
                })?;
                Stage::AttendCompressed {
                    branch: c.branch.clone(),
                    q: name(plan, c.q),
                    keys: compressed(plan, &dims, &c.branch)?,
                    out: name(plan, c.out),
                    lse: (plan.selects_scored_by(&c.branch) > 0).then(|| name(plan, c.lse)),
                    block: size(pool.block, "compress block")?,
                    stride: size(pool.stride, "compress stride")?,
                }
            }
            plan::Stage::SelectBlocks(s) => Stage::TopN {
                branch: s.branch.clone(),
                scored_by: s.scored_by.clone(),
                q: name(plan, s.q),
                keys: compressed(plan, &dims, &s.scored_by)?,
                lse: name(plan, s.lse),
                idx: name(plan, s.idx),
                cmp_block: size(s.cmp_block, "compress block")?,
                cmp_stride: size(s.cmp_stride, "compress stride")?,
                block: size(s.block, "select block")?,
                top: size(s.top, "top")?,
                keep_first: size(s.keep_first, "keep_first")?,
                keep_last: size(s.keep_last, "keep_last")?,
            },
            plan::Stage::SelectedAttention(s) => Stage::AttendSelected {
                branch: s.branch.clone(),
                q: name(plan, s.q),
                kv: kv_names(plan, s.k, s.v),
                idx: name(plan, s.idx),
                out: name(plan, s.out),
                block: size(s.block, "select block")?,
                top: size(s.top, "top")?,
            },
            plan::Stage::WindowAttention(w) => Stage::AttendWindow {
                branch: w.branch.clone(),
                q: name(plan, w.q),
                kv: kv_names(plan, w.k, w.v),
                out: name(plan, w.out),
                size: size(w.size, "window")?,
            },
            plan::Stage::Combine(c) => Stage::Combine {
                terms: c
                    .terms
                    .iter()
                    .map(|t| Term {
                        branch: t.branch.clone(),
                        out: name(plan, t.out),
                        gate: match c.mode {
                            CombineMode::Gate => t.gate.map(|g| name(plan, g)),
                            CombineMode::Sum => None,
                        },
                    })
                    .collect(),
                out: name(plan, c.out),
            },
        });
    }
    Ok(Program {
        name: plan.name.clone(),
        max_tokens: max_tokens(plan, &dims),
        dims,
        stages,
    })
}

/// The GPU's scratch beside the plan's buffers, derived from them: `seg` `[B·T, seg_cols]`
/// int32 (per token: its segment's start and end in flattened tokens, then for each compress
/// branch the first slot of the segment's compressed tokens, [`segment_table`]) and, when the
/// tensor-core kernels run, per compress branch `kc16_<b>` `[B, NC, H, 2, Dqk]` (hi and lo
/// rows of the plan's `kc_<b>`) and `vc16_<b>` `[B, NC, H, Dv]` (the plan's `vc_<b>` rounded),
/// in the input dtype and with the plan buffers' compressed-token extent NC.
pub fn backend_scratch(plan: &Plan, program: &Program) -> Vec<BufferInfo> {
    let d = &plan.dims;
    let dims = &program.dims;
    let dt = d.dtype.name().to_string();
    let mut out = vec![BufferInfo {
        name: "seg".into(),
        role: BufferRole::Segments,
        elem: "i32".into(),
        shape: vec![d.batch * d.seq_len, dims.seg_cols as usize],
    }];
    for stage in &program.stages {
        let Stage::Pool {
            out:
                Compressed {
                    kv,
                    half: Some(half),
                    ..
                },
            ..
        } = stage
        else {
            continue;
        };
        let (Some(kc), Some(vc)) = (plan.buffer_named(&kv.k), plan.buffer_named(&kv.v)) else {
            continue;
        };
        // kc [B, NC, H, Dqk] → [B, NC, H, 2, Dqk]; vc keeps its shape
        let mut kshape = plan.buffer(kc).dims.clone();
        let last = kshape.pop().unwrap_or(0);
        kshape.extend([2, last]);
        out.push(BufferInfo {
            name: half.k.clone(),
            role: BufferRole::Scratch,
            elem: dt.clone(),
            shape: kshape,
        });
        out.push(BufferInfo {
            name: half.v.clone(),
            role: BufferRole::Scratch,
            elem: dt.clone(),
            shape: plan.buffer(vc).dims.clone(),
        });
    }
    out
}

/// The `seg` table of `plan`'s problem: per flattened token, its segment's (start, end) in
/// flattened tokens, then for each pool stage in plan order the flattened first slot of the
/// segment's compressed tokens in `kc_<b>` (`row · NC + cmp_offsets[segment]`).
pub fn segment_table(plan: &Plan) -> Vec<i32> {
    let d = &plan.dims;
    let pools: Vec<(&plan::PoolStage, usize)> = plan
        .stages
        .iter()
        .filter_map(|s| match s {
            plan::Stage::Pool(p) => {
                let nc = plan.buffer(p.kc).dims.get(1).copied().unwrap_or(0);
                Some((p, nc))
            }
            _ => None,
        })
        .collect();
    let mut out = Vec::with_capacity(d.batch * d.seq_len * (2 + pools.len()));
    for b in 0..d.batch {
        let row = b * d.seq_len;
        for (si, &(s, e)) in d.segments.iter().enumerate() {
            for _ in s..e {
                out.push((row + s) as i32);
                out.push((row + e) as i32);
                for (p, nc) in &pools {
                    let off = p.cmp_offsets.get(si).copied().unwrap_or(0);
                    out.push((b * nc + off) as i32);
                }
            }
        }
    }
    out
}
