//! The PTX backend's view of a [`Plan`]: one GPU stage per plan stage (pool, compressed
//! attention, top-n selection, selected/window attention, combine) in the plan's order, with
//! the sizes the kernels are specialized on as `u32`s and the buffers named as in the launch
//! manifest. The plan is the one IR between the DSL and every backend (docs/ARCHITECTURE.md §1);
//! this module only restates it in the form the PTX generators take, and rejects what they cannot
//! index.

use nsac_dsl::problem::DType;
use nsac_dsl::spec::{CombineMode, Pool};

use super::PtxError;
use crate::plan::{self, Plan};

/// Concrete sizes shared by all stages.
#[derive(Debug, Clone, PartialEq)]
pub struct Dims {
    /// Tokens over the whole call (B·T).
    pub ntok: u32,
    pub hq: u32,
    pub h: u32,
    pub group: u32,
    pub dqk: u32,
    pub dv: u32,
    /// The longest segment.
    pub max_len: u32,
    pub causal: bool,
    /// Softmax scale times log2(e): kernels work in base 2.
    pub scale_log2: f32,
    pub dtype: DType,
}

/// Where a branch reads its keys and values.
#[derive(Debug, Clone, PartialEq)]
pub struct KvNames {
    pub k: String,
    pub v: String,
}

/// One GPU stage.
#[derive(Debug, Clone, PartialEq)]
pub enum Stage {
    /// Pools blocks of keys/values into compressed tokens `kc_<b>`, `vc_<b>`.
    Pool {
        branch: String,
        kv: KvNames,
        block: u32,
        stride: u32,
        pool: Pool,
    },
    /// Softmax attention over compressed tokens; writes `o_<b>` and, when scored, `lse_<b>`.
    AttendCompressed {
        branch: String,
        block: u32,
        stride: u32,
        write_lse: bool,
    },
    /// Scores selection blocks from a compress branch's probabilities and picks the top n.
    TopN {
        branch: String,
        scored_by: String,
        cmp_block: u32,
        cmp_stride: u32,
        block: u32,
        top: u32,
        keep_first: u32,
        keep_last: u32,
        /// Upper bound on candidate blocks per query (sizes shared memory).
        max_blocks: u32,
    },
    /// Softmax attention over the keys of the chosen blocks.
    AttendSelected {
        branch: String,
        kv: KvNames,
        block: u32,
        top: u32,
    },
    /// Softmax attention over a sliding window.
    AttendWindow {
        branch: String,
        kv: KvNames,
        size: u32,
    },
    /// o = Σ g_b · o_b (gates all 1 for `sum`).
    Combine { branches: Vec<String>, gated: bool },
}

/// The lowered program.
#[derive(Debug, Clone, PartialEq)]
pub struct Program {
    pub name: String,
    pub dims: Dims,
    pub stages: Vec<Stage>,
}

fn to_u32(v: usize, what: &'static str) -> Result<u32, PtxError> {
    u32::try_from(v).map_err(|_| PtxError::TooLarge(what))
}

/// Lowers `plan` into GPU stages.
pub fn lower(plan: &Plan) -> Result<Program, PtxError> {
    let d = &plan.dims;
    let ntok = to_u32(d.batch * d.seq_len, "token count")?;
    let max_len = d
        .segments
        .iter()
        .map(|(s, e)| e - s)
        .max()
        .unwrap_or(d.seq_len);
    let max_len = to_u32(max_len, "sequence length")?;
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
    // Every flattened index (token · heads · dim) must fit the kernels' 32-bit arithmetic.
    let widest = u64::from(ntok) * u64::from(hq) * u64::from(dqk.max(dv));
    if widest >= 1 << 31 {
        return Err(PtxError::TooLarge("tokens × heads × head dim"));
    }
    let dims = Dims {
        ntok,
        hq,
        h,
        group: hq / h,
        dqk,
        dv,
        max_len,
        causal: d.causal,
        scale_log2: (d.scale * std::f64::consts::LOG2_E) as f32,
        dtype: d.dtype,
    };
    let kv = |k: plan::BufferId, v: plan::BufferId| KvNames {
        k: plan.buffer(k).name.clone(),
        v: plan.buffer(v).name.clone(),
    };
    let size = |v: usize, what: &'static str| to_u32(v, what);
    let mut stages = Vec::new();
    for stage in &plan.stages {
        stages.push(match stage {
            plan::Stage::Pool(p) => Stage::Pool {
                branch: p.branch.clone(),
                kv: kv(p.k, p.v),
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
                    block: size(pool.block, "compress block")?,
                    stride: size(pool.stride, "compress stride")?,
                    write_lse: plan.selects_scored_by(&c.branch) > 0,
                }
            }
            plan::Stage::SelectBlocks(s) => Stage::TopN {
                branch: s.branch.clone(),
                scored_by: s.scored_by.clone(),
                cmp_block: size(s.cmp_block, "compress block")?,
                cmp_stride: size(s.cmp_stride, "compress stride")?,
                block: size(s.block, "select block")?,
                top: size(s.top, "top")?,
                keep_first: size(s.keep_first, "keep_first")?,
                keep_last: size(s.keep_last, "keep_last")?,
                max_blocks: max_len.div_ceil(size(s.block, "select block")?),
            },
            plan::Stage::SelectedAttention(s) => Stage::AttendSelected {
                branch: s.branch.clone(),
                kv: kv(s.k, s.v),
                block: size(s.block, "select block")?,
                top: size(s.top, "top")?,
            },
            plan::Stage::WindowAttention(w) => Stage::AttendWindow {
                branch: w.branch.clone(),
                kv: kv(w.k, w.v),
                size: size(w.size, "window")?,
            },
            plan::Stage::Combine(c) => Stage::Combine {
                branches: c.terms.iter().map(|t| t.branch.clone()).collect(),
                gated: c.mode == CombineMode::Gate,
            },
        });
    }
    Ok(Program {
        name: plan.name.clone(),
        dims,
        stages,
    })
}
