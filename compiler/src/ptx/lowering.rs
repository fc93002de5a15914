//! The PTX backend's reading of a [`Plan`]: its ops grouped into GPU stages in plan order — a
//! pool, an attention over compressed tokens, a score with its top-k (one top-k kernel: the
//! scores never leave it), an attention over gathered blocks or a window, the combine — each
//! naming the plan tensors it reads and writes, with the sizes the kernels are specialized on
//! (heads, head dims, block sizes, dtype) as `u32`s. Nothing here depends on the sequence
//! length, the batch or the segments: those are run-time values ([`Sizes`], [`CallSizes`], the
//! kernels' `u32` parameters), so one PTX module serves every length and packing.
//!
//! The backend's own scratch, which the Plan does not have, is declared here too
//! ([`backend_scratch`]): the `seg` table and the 16-bit copies of the compressed tokens the
//! tensor-core kernels stage, each derived from plan tensors and sized like them for a call.

use nsac_dsl::problem::DType;

use super::{BufferInfo, PtxError, SEG};
use crate::ir::{self, CombineMode, Extent, KeySet, Op, Plan, PoolKind, ScoreSource, Sizes};

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

/// One GPU stage; every buffer is named as the plan's tensor (and the launch manifest's buffer).
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
        pool: PoolKind,
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
    TopK {
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
    /// The launch sizes of a call of `sizes`.
    pub fn of(sizes: &Sizes) -> CallSizes {
        CallSizes {
            tokens: sizes.tokens() as u64,
            max_len: sizes
                .segments
                .iter()
                .map(|(s, e)| e - s)
                .max()
                .unwrap_or(sizes.queries) as u64,
        }
    }
}

fn to_u32(v: usize, what: &'static str) -> Result<u32, PtxError> {
    u32::try_from(v).map_err(|_| PtxError::TooLarge(what))
}

fn unsupported(what: String) -> PtxError {
    PtxError::Unsupported(what)
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

/// The plan's pool ops, in order.
fn pools(plan: &Plan) -> impl Iterator<Item = &ir::Pool> {
    plan.ops.iter().filter_map(|op| match op {
        Op::Pool(p) => Some(p),
        _ => None,
    })
}

/// The sizes every stage shares, from the plan's compiled-in constants (no length among them).
fn dims_of(plan: &Plan) -> Result<Dims, PtxError> {
    let c = &plan.consts;
    let (hq, h) = (
        to_u32(c.heads_q, "query heads")?,
        to_u32(c.heads_kv, "kv heads")?,
    );
    if h == 0 || hq == 0 || hq % h != 0 {
        return Err(PtxError::Unsupported(format!(
            "heads {hq}/{h}: query heads must be a positive multiple of kv heads"
        )));
    }
    let (dqk, dv) = (to_u32(c.dqk, "head dim")?, to_u32(c.dv, "head dim")?);
    Ok(Dims {
        hq,
        h,
        group: hq / h,
        dqk,
        dv,
        causal: c.causal,
        scale_log2: (c.scale * std::f64::consts::LOG2_E) as f32,
        dtype: c.dtype,
        seg_cols: to_u32(2 + pools(plan).count(), "compress branches")?,
    })
}

/// The compressed tokens of compress branch `branch` (its pool op's tensors).
fn compressed(plan: &Plan, dims: &Dims, branch: &str) -> Result<Compressed, PtxError> {
    let (column, pool) = pools(plan)
        .enumerate()
        .find(|(_, p)| p.branch == branch)
        .ok_or_else(|| unsupported(format!("compress `{branch}` has no pool op")))?;
    Ok(Compressed {
        kv: kv_names(plan, pool.kc, pool.vc),
        half: half_scratch(dims).then(|| half_names(branch)),
        column: 2 + column as u32,
    })
}

fn name(plan: &Plan, id: ir::TensorId) -> String {
    plan.tensor(id).name.clone()
}

fn kv_names(plan: &Plan, k: ir::TensorId, v: ir::TensorId) -> KvNames {
    KvNames {
        k: name(plan, k),
        v: name(plan, v),
    }
}

/// The most tokens a call of `plan` may have for 32-bit element indices: the widest per-token
/// extent of any tensor the kernels index (q and o rows, the 16-bit compressed keys' hi + lo
/// rows, the selections), times the tokens, stays below 2³¹.
fn max_tokens(plan: &Plan, dims: &Dims) -> u64 {
    let (hq, h) = (u64::from(dims.hq), u64::from(dims.h));
    let (dqk, dv) = (u64::from(dims.dqk), u64::from(dims.dv));
    let mut widest = (hq * dqk.max(dv))
        .max(2 * h * dqk)
        .max(u64::from(dims.seg_cols));
    for op in &plan.ops {
        if let Op::TopK(t) = op {
            widest = widest.max(h * t.k as u64);
        }
    }
    ((1u64 << 31) - 1) / widest.max(1)
}

/// The `k` of the top-k that writes index tensor `idx` (its last extent).
fn top_of(plan: &Plan, idx: ir::TensorId) -> Result<usize, PtxError> {
    match plan.tensor(idx).shape.last() {
        Some(Extent::Const(n)) => Ok(*n),
        _ => Err(unsupported(format!(
            "index tensor `{}` without a fixed top-k",
            plan.tensor(idx).name
        ))),
    }
}

/// Lowers `plan` into GPU stages.
pub fn lower(plan: &Plan) -> Result<Program, PtxError> {
    if let Some(&(branch, form)) = plan.selection_forms().first() {
        return Err(PtxError::Form {
            branch: branch.to_string(),
            form,
        });
    }
    let dims = dims_of(plan)?;
    let size = |v: usize, what: &'static str| to_u32(v, what);
    let mut stages = Vec::new();
    let mut ops = plan.ops.iter().peekable();
    while let Some(op) = ops.next() {
        stages.push(match op {
            Op::Pool(p) => Stage::Pool {
                branch: p.branch.clone(),
                kv: kv_names(plan, p.k, p.v),
                weights: p.weights.iter().map(|&w| name(plan, w)).collect(),
                out: compressed(plan, &dims, &p.branch)?,
                block: size(p.block, "compress block")?,
                stride: size(p.stride, "compress stride")?,
                pool: p.kind,
            },
            Op::Attend(a) => match &a.keys {
                KeySet::Compressed { block, stride } => Stage::AttendCompressed {
                    branch: a.branch.clone(),
                    q: name(plan, a.q),
                    keys: compressed(plan, &dims, &a.branch)?,
                    out: name(plan, a.out),
                    lse: a.lse.map(|l| name(plan, l)),
                    block: size(*block, "compress block")?,
                    stride: size(*stride, "compress stride")?,
                },
                KeySet::Gather { idx, granularity } => Stage::AttendSelected {
                    branch: a.branch.clone(),
                    q: name(plan, a.q),
                    kv: kv_names(plan, a.k, a.v),
                    idx: name(plan, *idx),
                    out: name(plan, a.out),
                    block: size(*granularity, "select block")?,
                    top: size(top_of(plan, *idx)?, "top")?,
                },
                KeySet::Window { size: w } => Stage::AttendWindow {
                    branch: a.branch.clone(),
                    q: name(plan, a.q),
                    kv: kv_names(plan, a.k, a.v),
                    out: name(plan, a.out),
                    size: size(*w, "window")?,
                },
                KeySet::Causal => {
                    return Err(unsupported(format!(
                        "dense causal attention (branch `{}`)",
                        a.branch
                    )));
                }
            },
            Op::Score(score) => {
                let Some(Op::TopK(topk)) = ops.next() else {
                    return Err(unsupported(format!(
                        "a score op of `{}` not followed by its top-k",
                        score.branch
                    )));
                };
                if topk.scores != score.out || topk.block != score.granularity {
                    return Err(unsupported(format!(
                        "top-k `{}` reading another op's scores",
                        topk.branch
                    )));
                }
                let ScoreSource::Compressed {
                    branch: by,
                    block: cb,
                    stride: cs,
                    q,
                    lse,
                    ..
                } = &score.source;
                Stage::TopK {
                    branch: topk.branch.clone(),
                    scored_by: by.clone(),
                    q: name(plan, *q),
                    keys: compressed(plan, &dims, by)?,
                    lse: name(plan, *lse),
                    idx: name(plan, topk.idx),
                    cmp_block: size(*cb, "compress block")?,
                    cmp_stride: size(*cs, "compress stride")?,
                    block: size(topk.block, "select block")?,
                    top: size(topk.k, "top")?,
                    keep_first: size(topk.forced.first, "keep_first")?,
                    keep_last: size(topk.forced.last, "keep_last")?,
                }
            }
            Op::TopK(t) => {
                return Err(unsupported(format!("top-k `{}` without scores", t.branch)));
            }
            Op::CombineGrad(_) | Op::AttendGrad(_) | Op::PoolGrad(_) | Op::GradSum(_) => {
                return Err(unsupported(
                    "a backward pass (backward on the GPU is not built yet)".to_string(),
                ));
            }
            Op::Combine(c) => Stage::Combine {
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

/// The GPU's scratch beside the plan's tensors, derived from them and sized for a call of
/// `sizes`: `seg` `[B·T, seg_cols]` int32 (per token: its segment's start and end in flattened
/// tokens, then for each compress branch the first slot of the segment's compressed tokens,
/// [`segment_table`]) and, when the tensor-core kernels run, per compress branch `kc16_<b>`
/// `[B, NC, H, 2, Dqk]` (hi and lo rows of the plan's `kc_<b>`) and `vc16_<b>` `[B, NC, H, Dv]`
/// (the plan's `vc_<b>` rounded), in the input dtype and with the plan tensors' compressed-token
/// extent NC.
pub fn backend_scratch(
    plan: &Plan,
    sizes: &Sizes,
    program: &Program,
) -> Result<Vec<BufferInfo>, PtxError> {
    let dims = &program.dims;
    let dt = ir::Elem::of(dims.dtype);
    let mut out = vec![BufferInfo {
        name: SEG.into(),
        role: ir::Role::Scratch,
        elem: ir::Elem::I32,
        shape: vec![sizes.tokens(), dims.seg_cols as usize],
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
        let (Some(kc), Some(vc)) = (plan.tensor_named(&kv.k), plan.tensor_named(&kv.v)) else {
            continue;
        };
        // kc [B, NC, H, Dqk] → [B, NC, H, 2, Dqk]; vc keeps its shape
        let mut kshape = sizes.shape(plan, kc)?;
        let last = kshape.pop().unwrap_or(0);
        kshape.extend([2, last]);
        out.push(BufferInfo {
            name: half.k.clone(),
            role: ir::Role::Scratch,
            elem: dt,
            shape: kshape,
        });
        out.push(BufferInfo {
            name: half.v.clone(),
            role: ir::Role::Scratch,
            elem: dt,
            shape: sizes.shape(plan, vc)?,
        });
    }
    Ok(out)
}

/// The `seg` table of a call of `sizes`: per flattened token, its segment's (start, end) in
/// flattened tokens, then for each pool op in plan order the flattened first slot of the
/// segment's compressed tokens in `kc_<b>` (`row · NC + offset of the segment`, the offsets
/// and NC from [`Sizes::compressed_offsets`]).
pub fn segment_table(plan: &Plan, sizes: &Sizes) -> Vec<i32> {
    let pools: Vec<(Vec<usize>, usize)> = pools(plan)
        .map(|p| sizes.compressed_offsets(p.block, p.stride))
        .collect();
    let t = sizes.queries;
    let mut out = Vec::with_capacity(sizes.tokens() * (2 + pools.len()));
    for b in 0..sizes.batch {
        let row = b * t;
        for (si, &(s, e)) in sizes.segments.iter().enumerate() {
            for _ in s..e {
                out.push((row + s) as i32);
                out.push((row + e) as i32);
                for (offsets, nc) in &pools {
                    let off = offsets.get(si).copied().unwrap_or(0);
                    out.push((b * nc + off) as i32);
                }
            }
        }
    }
    out
}
