//! The PTX backend's own small lowering: `Spec` + `Shape` → the list of GPU stages (pool,
//! compressed attention, top-n selection, selected/window attention, combine) with every size
//! made concrete. When the shared `Plan` IR lands this is the one module that switches to it.

use nsac_dsl::problem::{DType, Shape};
use nsac_dsl::spec::{BranchKind, CombineMode, KvSource, Pool, Spec};

use super::PtxError;

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

fn kv_names(name: &str, kv: KvSource) -> KvNames {
    match kv {
        KvSource::Shared => KvNames {
            k: "k".into(),
            v: "v".into(),
        },
        KvSource::Own => KvNames {
            k: format!("k_{name}"),
            v: format!("v_{name}"),
        },
    }
}

fn to_u32(v: usize, what: &'static str) -> Result<u32, PtxError> {
    u32::try_from(v).map_err(|_| PtxError::TooLarge(what))
}

/// Lowers `spec` on `shape` into GPU stages.
pub fn lower(spec: &Spec, shape: &Shape) -> Result<Program, PtxError> {
    let ntok = to_u32(shape.tokens(), "token count")?;
    let max_len = shape
        .segments
        .iter()
        .map(|(s, e)| e - s)
        .max()
        .unwrap_or(shape.seq_len);
    let max_len = to_u32(max_len, "sequence length")?;
    let (hq, h) = (shape.heads.q, shape.heads.kv);
    if h == 0 || hq == 0 || hq % h != 0 {
        return Err(PtxError::Unsupported(format!(
            "heads {hq}/{h}: query heads must be a positive multiple of kv heads"
        )));
    }
    // Every flattened index (token · heads · dim) must fit the kernels' 32-bit arithmetic.
    let widest =
        u64::from(ntok) * u64::from(hq) * u64::from(shape.head_dim.qk.max(shape.head_dim.v));
    if widest >= 1 << 31 {
        return Err(PtxError::TooLarge("tokens × heads × head dim"));
    }
    let scale = spec.scale_for(shape.head_dim.qk);
    let dims = Dims {
        ntok,
        hq,
        h,
        group: hq / h,
        dqk: shape.head_dim.qk,
        dv: shape.head_dim.v,
        max_len,
        causal: spec.causal,
        scale_log2: (scale * std::f64::consts::LOG2_E) as f32,
        dtype: shape.dtype,
    };
    let scored: Vec<&str> = spec
        .branches
        .iter()
        .filter_map(|b| b.as_select().map(|s| s.scored_by.as_str()))
        .collect();
    let mut stages = Vec::new();
    for br in &spec.branches {
        let kv = kv_names(&br.name, br.kv);
        match &br.kind {
            BranchKind::Compress(c) => {
                if c.block == 0 || c.stride == 0 {
                    return Err(PtxError::Unsupported(format!(
                        "compress `{}` needs positive block and stride",
                        br.name
                    )));
                }
                stages.push(Stage::Pool {
                    branch: br.name.clone(),
                    kv,
                    block: c.block,
                    stride: c.stride,
                    pool: c.pool,
                });
                stages.push(Stage::AttendCompressed {
                    branch: br.name.clone(),
                    block: c.block,
                    stride: c.stride,
                    write_lse: scored.contains(&br.name.as_str()),
                });
            }
            BranchKind::Select(s) => {
                let cmp = spec
                    .branch(&s.scored_by)
                    .and_then(|b| b.as_compress())
                    .ok_or_else(|| {
                        PtxError::Unsupported(format!(
                            "select `{}` is scored by `{}`, which is not a compress branch",
                            br.name, s.scored_by
                        ))
                    })?;
                if s.block == 0 || s.top == 0 {
                    return Err(PtxError::Unsupported(format!(
                        "select `{}` needs positive block and top",
                        br.name
                    )));
                }
                stages.push(Stage::TopN {
                    branch: br.name.clone(),
                    scored_by: s.scored_by.clone(),
                    cmp_block: cmp.block,
                    cmp_stride: cmp.stride,
                    block: s.block,
                    top: s.top,
                    keep_first: s.keep_first,
                    keep_last: s.keep_last,
                    max_blocks: max_len.div_ceil(s.block),
                });
                stages.push(Stage::AttendSelected {
                    branch: br.name.clone(),
                    kv,
                    block: s.block,
                    top: s.top,
                });
            }
            BranchKind::Window(w) => {
                stages.push(Stage::AttendWindow {
                    branch: br.name.clone(),
                    kv,
                    size: w.size,
                });
            }
        }
    }
    stages.push(Stage::Combine {
        branches: spec.combine.branches.clone(),
        gated: spec.combine.mode == CombineMode::Gate,
    });
    Ok(Program {
        name: spec.name.clone(),
        dims,
        stages,
    })
}
