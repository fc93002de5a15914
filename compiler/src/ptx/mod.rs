//! The GPU backend: `Spec` + `Shape` + [`GpuVariant`] → PTX text for sm_80 / sm_90 plus a
//! [`Manifest`] saying how to launch it. The driver JIT-compiles the PTX at run time; nothing
//! here needs CUDA. Generated text is deterministic so it can be snapshot-tested.
//!
//! Buffers: the inputs of the tensor contract (`q`, `k`, `v`, `g_<b>`, …) in the call's dtype,
//! `seg` [B·T, 2] int32 (each token's segment start and end in flattened tokens), f32 scratch
//! (`kc_<b>`, `vc_<b>`, `lse_<b>`; `kc16_<b>`, `vc16_<b>` in the input dtype for the tensor-core
//! kernels), outputs `o`, `o_<b>` in f32 and `idx_<b>` in int32.
//!
//! Kernels: one per plan stage, in the plan's order, on one stream. With
//! [`GpuVariant::fuse_combine`] = 1 and a last branch kernel that can fuse (the tensor-core
//! selected attention or the window attention), that kernel, renamed `…_attend_<b>_combine`,
//! also computes `o` in its epilogue and takes the other branches' outputs, the gates (gated
//! combines) and `o` as extra parameters after its own; the combine kernel is then left out. The
//! buffers are the same either way (`o_<b>` of the fused branch is still written: it is a
//! result of the call, and the tuner runs every Variant on one upload). Otherwise fusion
//! changes nothing and the knob collapses.

pub mod builder;
pub mod kernels;
pub mod lowering;
pub mod probe;
pub mod variant;

use nsac_dsl::problem::{DType, Shape};
use nsac_dsl::spec::{BranchKind, CombineMode, Compress, KvSource, Pool, Spec};
use serde::{Deserialize, Serialize};

use crate::plan::Plan;
use kernels::{KernelOut, attend, combine, pool, tc_common, tc_compress, tc_select, topn};
use lowering::{Dims, Program, Stage};
pub use variant::{GPU_VARIANT_FIELDS, GpuVariant, GpuVariantError};

/// Why PTX could not be generated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PtxError {
    #[error(transparent)]
    Plan(#[from] crate::plan::PlanError),
    #[error("the PTX backend does not support this: {0}")]
    Unsupported(String),
    #[error("the problem is too large for the PTX backend's 32-bit indexing: {0}")]
    TooLarge(&'static str),
    #[error("bad GPU variant: {0}")]
    BadVariant(String),
}

/// The GPU architecture the PTX targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum Arch {
    #[default]
    Sm80,
    Sm90,
}

impl Arch {
    /// The `.target` name (`sm_80`, `sm_90`).
    pub fn target(self) -> &'static str {
        match self {
            Arch::Sm80 => "sm_80",
            Arch::Sm90 => "sm_90",
        }
    }

    /// Parses `sm_80` / `sm_90` (also `80`, `90`).
    pub fn parse(s: &str) -> Option<Arch> {
        match s.trim_start_matches("sm_") {
            "80" => Some(Arch::Sm80),
            "90" => Some(Arch::Sm90),
            _ => None,
        }
    }

    /// The best target for a device of compute capability `major.minor`.
    pub fn for_capability(major: i32, _minor: i32) -> Arch {
        if major >= 9 { Arch::Sm90 } else { Arch::Sm80 }
    }
}

/// What a buffer is to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BufferRole {
    /// A tensor of the contract the caller provides.
    Input,
    /// `seg`: per token (segment start, segment end), int32, built from the problem.
    Segments,
    /// Intermediate data; only its size matters.
    Scratch,
    /// A result (`o`, `o_<b>`, `idx_<b>`).
    Output,
}

/// One device buffer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BufferInfo {
    pub name: String,
    pub role: BufferRole,
    /// `f32`, `f16`, `bf16` or `i32`.
    pub elem: String,
    pub shape: Vec<usize>,
}

impl BufferInfo {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// Bytes per element.
    pub fn elem_bytes(&self) -> usize {
        match self.elem.as_str() {
            "f16" | "bf16" => 2,
            _ => 4,
        }
    }
}

/// One kernel launch, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelInfo {
    pub name: String,
    /// Buffer names passed as the kernel's pointer parameters, in order.
    pub params: Vec<String>,
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub shared_bytes: u32,
    /// The kernel's register cap per thread (`.maxnreg`), when it declares one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub max_regs: Option<u32>,
    /// How the launch follows from the problem.
    pub launch: String,
}

/// How to run the PTX: buffers, then kernels launched in order on one stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub spec: String,
    pub arch: String,
    pub dtype: String,
    pub tokens: usize,
    /// Batch rows B and tokens per row T of the buffers' leading dims.
    pub batch: usize,
    pub seq_len: usize,
    /// Segments (start, end) within each row; `seg` repeats them for every row.
    pub segments: Vec<[usize; 2]>,
    pub buffers: Vec<BufferInfo>,
    pub kernels: Vec<KernelInfo>,
}

impl Manifest {
    /// The buffer called `name`.
    pub fn buffer(&self, name: &str) -> Option<&BufferInfo> {
        self.buffers.iter().find(|b| b.name == name)
    }
    /// The manifest as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

fn buffers(spec: &Spec, shape: &Shape, dims: &Dims) -> Vec<BufferInfo> {
    let (bb, t) = (shape.batch, shape.seq_len);
    let (hq, h) = (shape.heads.q as usize, shape.heads.kv as usize);
    let (dqk, dv) = (shape.head_dim.qk as usize, shape.head_dim.v as usize);
    let n = bb * t;
    let dt = shape.dtype.name().to_string();
    let buf = |name: String, role, elem: &str, shape: Vec<usize>| BufferInfo {
        name,
        role,
        elem: elem.to_string(),
        shape,
    };
    let mut out = vec![
        buf("q".into(), BufferRole::Input, &dt, vec![bb, t, hq, dqk]),
        buf("k".into(), BufferRole::Input, &dt, vec![bb, t, h, dqk]),
        buf("v".into(), BufferRole::Input, &dt, vec![bb, t, h, dv]),
    ];
    for br in &spec.branches {
        let nm = &br.name;
        if br.kv == KvSource::Own {
            out.push(buf(
                format!("k_{nm}"),
                BufferRole::Input,
                &dt,
                vec![bb, t, h, dqk],
            ));
            out.push(buf(
                format!("v_{nm}"),
                BufferRole::Input,
                &dt,
                vec![bb, t, h, dv],
            ));
        }
        if let BranchKind::Compress(c) = &br.kind {
            let l = c.block as usize;
            match c.pool {
                Pool::Mean => {}
                Pool::Weighted => {
                    out.push(buf(format!("w_{nm}"), BufferRole::Input, &dt, vec![h, l]))
                }
                Pool::Linear => {
                    out.push(buf(
                        format!("wk_{nm}"),
                        BufferRole::Input,
                        &dt,
                        vec![h, l * dqk, dqk],
                    ));
                    out.push(buf(
                        format!("wv_{nm}"),
                        BufferRole::Input,
                        &dt,
                        vec![h, l * dv, dv],
                    ));
                }
            }
        }
    }
    if spec.combine.mode == CombineMode::Gate {
        for nm in &spec.combine.branches {
            out.push(buf(
                format!("g_{nm}"),
                BufferRole::Input,
                &dt,
                vec![bb, t, hq],
            ));
        }
    }
    out.push(buf("seg".into(), BufferRole::Segments, "i32", vec![n, 2]));
    let scored: Vec<&str> = spec
        .branches
        .iter()
        .filter_map(|b| b.as_select().map(|s| s.scored_by.as_str()))
        .collect();
    for br in &spec.branches {
        let nm = &br.name;
        if br.as_compress().is_some() {
            out.push(buf(
                format!("kc_{nm}"),
                BufferRole::Scratch,
                "f32",
                vec![n, h, dqk],
            ));
            out.push(buf(
                format!("vc_{nm}"),
                BufferRole::Scratch,
                "f32",
                vec![n, h, dv],
            ));
            if tc_common::half_scratch(dims) {
                out.push(buf(
                    format!("kc16_{nm}"),
                    BufferRole::Scratch,
                    &dt,
                    vec![n, h, 2, dqk],
                ));
                out.push(buf(
                    format!("vc16_{nm}"),
                    BufferRole::Scratch,
                    &dt,
                    vec![n, h, dv],
                ));
            }
            if scored.contains(&nm.as_str()) {
                out.push(buf(
                    format!("lse_{nm}"),
                    BufferRole::Scratch,
                    "f32",
                    vec![n, hq],
                ));
            }
        }
    }
    out.push(buf(
        "o".into(),
        BufferRole::Output,
        "f32",
        vec![bb, t, hq, dv],
    ));
    for br in &spec.branches {
        let nm = &br.name;
        out.push(buf(
            format!("o_{nm}"),
            BufferRole::Output,
            "f32",
            vec![bb, t, hq, dv],
        ));
        if let Some(s) = br.as_select() {
            out.push(buf(
                format!("idx_{nm}"),
                BufferRole::Output,
                "i32",
                vec![bb, t, h, s.top as usize],
            ));
        }
    }
    out
}

fn kernel_name(spec: &str, stage: &str) -> String {
    let clean: String = spec
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("nsac_{clean}_{stage}")
}

/// The combine to compute in the epilogue of the last branch kernel, when `variant` asks for it
/// (`fuse_combine = 1`) and that kernel can: the tensor-core selected attention or the window
/// attention (the scalar selected and compressed attention kernels are not fused). The stages
/// run in order on one stream and the plan puts every branch stage before the combine, so the
/// other branches' outputs are complete when the last branch kernel starts; only the combine
/// reads branch outputs, so the combine kernel is then dropped.
fn fused_combine(program: &Program, variant: &GpuVariant) -> Option<combine::Fused> {
    if variant.fuse_combine != 1 {
        return None;
    }
    let [.., last, Stage::Combine { branches, gated }] = program.stages.as_slice() else {
        return None;
    };
    let into = match last {
        Stage::AttendSelected { branch, .. } if tc_select::eligible(&program.dims) => branch,
        Stage::AttendWindow { branch, .. } => branch,
        _ => return None,
    };
    branches.contains(into).then(|| combine::Fused {
        into: into.clone(),
        branches: branches.clone(),
        gated: *gated,
    })
}

/// The stage part of an attention kernel's name: `attend_<b>`, `attend_<b>_combine` when the
/// combine is fused into it.
fn attend_stage(branch: &str, fused: bool) -> String {
    if fused {
        format!("attend_{branch}_combine")
    } else {
        format!("attend_{branch}")
    }
}

fn generate(program: &Program, variant: &GpuVariant) -> Vec<KernelOut> {
    let d = &program.dims;
    let w = variant.warps_per_block;
    let nm = |s: &str| kernel_name(&program.name, s);
    let fused = fused_combine(program, variant);
    let fused_into = |branch: &str| fused.as_ref().filter(|f| f.into == branch);
    program
        .stages
        .iter()
        .filter(|stage| !(fused.is_some() && matches!(stage, Stage::Combine { .. })))
        .map(|stage| match stage {
            Stage::Pool {
                branch,
                kv,
                block,
                stride,
                pool,
            } => pool::pool(
                &nm(&format!("pool_{branch}")),
                branch,
                kv,
                Compress {
                    block: *block,
                    stride: *stride,
                    pool: *pool,
                },
                d,
                w,
            ),
            Stage::AttendCompressed {
                branch,
                block,
                stride,
                write_lse,
            } if tc_select::eligible(d) => tc_compress::attend_compressed_tc(
                &nm(&format!("attend_{branch}")),
                branch,
                *block,
                *stride,
                *write_lse,
                d,
                variant,
            ),
            Stage::AttendCompressed {
                branch,
                block,
                stride,
                write_lse,
            } => attend::attend(
                &nm(&format!("attend_{branch}")),
                branch,
                attend::Keys::Compressed {
                    block: *block,
                    stride: *stride,
                    write_lse: *write_lse,
                },
                d,
                w,
                None,
            ),
            Stage::TopN {
                branch,
                scored_by,
                cmp_block,
                cmp_stride,
                block,
                top,
                keep_first,
                keep_last,
                max_blocks,
            } => topn::topn(
                &nm(&format!("topn_{branch}")),
                &topn::TopNParams {
                    branch,
                    scored_by,
                    cmp_block: *cmp_block,
                    cmp_stride: *cmp_stride,
                    block: *block,
                    top: *top,
                    keep_first: *keep_first,
                    keep_last: *keep_last,
                    max_blocks: *max_blocks,
                },
                d,
                variant,
            ),
            Stage::AttendSelected {
                branch,
                kv,
                block,
                top,
            } if tc_select::eligible(d) => {
                let fused = fused_into(branch);
                tc_select::attend_selected_tc(
                    &nm(&attend_stage(branch, fused.is_some())),
                    branch,
                    kv,
                    *block,
                    *top,
                    d,
                    variant,
                    fused,
                )
            }
            Stage::AttendSelected {
                branch,
                kv,
                block,
                top,
            } => attend::attend(
                &nm(&format!("attend_{branch}")),
                branch,
                attend::Keys::Selected {
                    kv,
                    block: *block,
                    top: *top,
                },
                d,
                w,
                None,
            ),
            Stage::AttendWindow { branch, kv, size } => {
                let fused = fused_into(branch);
                attend::attend(
                    &nm(&attend_stage(branch, fused.is_some())),
                    branch,
                    attend::Keys::Window { kv, size: *size },
                    d,
                    w,
                    fused,
                )
            }
            Stage::Combine { branches, gated } => {
                combine::combine(&nm("combine"), branches, *gated, d)
            }
        })
        .collect()
}

/// PTX text and launch manifest for `spec` on `shape` with `variant`, targeting `arch`: the
/// spec is lowered to the shared [`Plan`], whose stages become the kernels.
pub fn emit_ptx(
    spec: &Spec,
    shape: &Shape,
    variant: &GpuVariant,
    arch: Arch,
) -> Result<(String, Manifest), PtxError> {
    variant
        .validate()
        .map_err(|e| PtxError::BadVariant(e.to_string()))?;
    let plan = Plan::new(spec, shape)?;
    let program = lowering::lower(&plan)?;
    let outs = generate(&program, variant);
    let texts: Vec<String> = outs.iter().map(|k| k.ptx.clone()).collect();
    let ptx = builder::module(arch.target(), &texts);
    let names = outs.iter().map(|k| {
        k.ptx
            .lines()
            .next()
            .and_then(|l| l.strip_prefix(".visible .entry "))
            .map(|l| l.trim_end_matches('(').to_string())
            .unwrap_or_default()
    });
    let kernels = outs
        .iter()
        .zip(names)
        .map(|(k, name)| KernelInfo {
            name,
            params: k.params.clone(),
            grid: [k.launch.grid, 1, 1],
            block: [k.launch.block, 1, 1],
            shared_bytes: k.launch.shared_bytes,
            max_regs: k.max_regs,
            launch: k.launch.formula.clone(),
        })
        .collect();
    let manifest = Manifest {
        spec: spec.name.clone(),
        arch: arch.target().to_string(),
        dtype: shape.dtype.name().to_string(),
        tokens: shape.tokens(),
        batch: shape.batch,
        seq_len: shape.seq_len,
        segments: shape.segments.iter().map(|&(a, b)| [a, b]).collect(),
        buffers: buffers(spec, shape, &program.dims),
        kernels,
    };
    Ok((ptx, manifest))
}

/// The `seg` buffer's contents for `shape`: per flattened token, its segment's (start, end).
pub fn segment_table(shape: &Shape) -> Vec<i32> {
    let mut out = Vec::with_capacity(shape.tokens() * 2);
    for b in 0..shape.batch {
        let row = b * shape.seq_len;
        for &(s, e) in &shape.segments {
            for _ in s..e {
                out.push((row + s) as i32);
                out.push((row + e) as i32);
            }
        }
    }
    out
}

/// The ceiling probe of the arithmetic `spec` on `shape` runs on: tensor-core `mma` when its
/// attention kernels use them, else f32 FMA.
pub fn ceiling_probe(spec: &Spec, shape: &Shape) -> Result<probe::Probe, PtxError> {
    let plan = Plan::new(spec, shape)?;
    let program = lowering::lower(&plan)?;
    Ok(probe::Probe::for_kernels(
        shape.dtype,
        tc_select::eligible(&program.dims),
    ))
}

/// Whether `dtype` is one the PTX kernels read.
pub fn supports(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::F16 | DType::Bf16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nsac_dsl::problem::Problem;
    use nsac_dsl::spec::{Branch, Combine, HeadDim, Heads, Select, Window};

    fn window_spec() -> Spec {
        Spec {
            name: "w".into(),
            heads: Heads { q: 4, kv: 2 },
            head_dim: HeadDim { qk: 40, v: 24 },
            causal: true,
            scale: None,
            branches: vec![nsac_dsl::spec::Branch {
                name: "win".into(),
                kv: KvSource::Shared,
                kind: BranchKind::Window(Window { size: 7 }),
            }],
            combine: Combine {
                mode: CombineMode::Sum,
                branches: vec!["win".into()],
            },
        }
    }

    #[test]
    fn rejects_bad_variants_and_oversized_problems() {
        let spec = window_spec();
        let shape = Problem::batched(1, 9).resolve(&spec).expect("valid");
        let bad = GpuVariant {
            warps_per_block: 0,
            ..GpuVariant::default()
        };
        assert!(matches!(
            emit_ptx(&spec, &shape, &bad, Arch::Sm80),
            Err(PtxError::BadVariant(_))
        ));
        let huge = Problem::batched(1, 1 << 26).resolve(&spec).expect("valid");
        assert!(matches!(
            emit_ptx(&spec, &huge, &GpuVariant::default(), Arch::Sm80),
            Err(PtxError::TooLarge(_))
        ));
    }

    #[test]
    fn segment_table_repeats_segments_per_row() {
        let spec = window_spec();
        let shape = Problem::batched(2, 3).resolve(&spec).expect("valid");
        assert_eq!(
            segment_table(&shape),
            vec![0, 3, 0, 3, 0, 3, 3, 6, 3, 6, 3, 6]
        );
        let shape = Problem::varlen(vec![0, 1, 3])
            .resolve(&spec)
            .expect("valid");
        assert_eq!(segment_table(&shape), vec![0, 1, 1, 3, 1, 3]);
    }

    #[test]
    fn manifest_launches_cover_every_row() {
        let spec = window_spec();
        let shape = Problem::batched(2, 13).resolve(&spec).expect("valid");
        let variant = GpuVariant {
            warps_per_block: 3,
            ..GpuVariant::default()
        };
        let (ptx, m) = emit_ptx(&spec, &shape, &variant, Arch::Sm90).expect("emits");
        assert!(ptx.contains(".target sm_90"));
        let attend = &m.kernels[0];
        // one warp per (token, query head): 26 tokens × 4 heads = 104 warps, 3 per block
        assert_eq!(attend.block[0], 96);
        assert_eq!(attend.grid[0], 35);
        assert_eq!(
            m.buffer("o").map(|b| b.shape.clone()),
            Some(vec![2, 13, 4, 24])
        );
    }

    /// Compressed + selected attention in bf16 with G = 4 and 64-wide heads: every stage runs
    /// on the tensor-core kernels.
    fn tensor_core_spec() -> Spec {
        let branch = |name: &str, kind| Branch {
            name: name.into(),
            kv: KvSource::Shared,
            kind,
        };
        Spec {
            name: "tc".into(),
            heads: Heads { q: 8, kv: 2 },
            head_dim: HeadDim { qk: 64, v: 64 },
            causal: true,
            scale: None,
            branches: vec![
                branch(
                    "cmp",
                    BranchKind::Compress(Compress {
                        block: 16,
                        stride: 8,
                        pool: Pool::Mean,
                    }),
                ),
                branch(
                    "slc",
                    BranchKind::Select(Select {
                        block: 16,
                        top: 4,
                        scored_by: "cmp".into(),
                        keep_first: 1,
                        keep_last: 1,
                    }),
                ),
            ],
            combine: Combine {
                mode: CombineMode::Sum,
                branches: vec!["cmp".into(), "slc".into()],
            },
        }
    }

    fn kernel<'a>(m: &'a Manifest, stage: &str) -> &'a KernelInfo {
        m.kernels
            .iter()
            .find(|k| k.name.ends_with(stage))
            .expect("kernel present")
    }

    #[test]
    fn manifest_reflects_the_tensor_core_knobs() {
        let spec = tensor_core_spec();
        let mut p = Problem::batched(1, 77);
        p.dtype = DType::Bf16;
        let shape = p.resolve(&spec).expect("valid");
        let emit = |v: GpuVariant| emit_ptx(&spec, &shape, &v, Arch::Sm90).expect("emits");
        let (ptx0, m0) = emit(GpuVariant::default());
        // K and V rows of 2*64+16 bytes each, per staged key, per warp
        let row_pair = 2 * (2 * 64 + 16);
        for (tokens, chunk) in [(8, 32), (4, 16), (16, 64), (2, 128)] {
            let v = GpuVariant {
                select_tokens: tokens,
                select_chunk: chunk,
                ..GpuVariant::default()
            };
            let (ptx, m) = emit(v);
            let slc = kernel(&m, "attend_slc");
            assert_eq!(slc.block, [32 * tokens, 1, 1], "{v}");
            assert_eq!(slc.grid[0], 77u32.div_ceil(tokens) * 2, "{v}");
            assert_eq!(slc.shared_bytes, tokens * chunk * row_pair, "{v}");
            // 512 threads launch with 128 registers each at most
            assert_eq!(slc.max_regs, (tokens > 8).then_some(128), "{v}");
            assert_eq!(
                ptx.contains(&format!(".maxntid {}, 1, 1", 32 * tokens)),
                tokens > 8,
                "only blocks of more than 256 threads bound the registers: {v}"
            );
            // the other kernels do not depend on these knobs
            assert_eq!(kernel(&m, "attend_cmp"), kernel(&m0, "attend_cmp"));
            assert_eq!(kernel(&m, "topn_slc"), kernel(&m0, "topn_slc"));
        }

        let cmp0 = kernel(&m0, "attend_cmp");
        assert_eq!(cmp0.max_regs, Some(128));
        assert!(ptx0.contains(".maxnreg 128\n{"));
        assert!(!ptx0.contains(".maxntid"));
        // (tokens, cap asked for, cap declared): 16 warps launch with 128 registers at most
        for (tokens, regs, declared) in [
            (4, 96, Some(96)),
            (16, 0, Some(128)),
            (8, 168, Some(168)),
            (16, 168, Some(128)),
            (8, 0, None),
        ] {
            let v = GpuVariant {
                compress_tokens: tokens,
                compress_max_regs: regs,
                ..GpuVariant::default()
            };
            let (ptx, m) = emit(v);
            let cmp = kernel(&m, "attend_cmp");
            assert_eq!(cmp.block, [32 * tokens, 1, 1], "{v}");
            assert_eq!(cmp.grid[0], 77u32.div_ceil(tokens) * 2, "{v}");
            // two staging buffers of the same size, then a (start, end) pair per warp
            assert_eq!(
                cmp.shared_bytes,
                cmp0.shared_bytes - 8 * 8 + 8 * tokens,
                "{v}"
            );
            assert_eq!(cmp.max_regs, declared, "{v}");
            assert_eq!(
                ptx.contains(&format!(".maxnreg {}\n", declared.unwrap_or(0))),
                declared.is_some(),
                "{v}"
            );
            assert_eq!(ptx.contains(".maxntid 512, 1, 1"), tokens == 16, "{v}");
            assert_eq!(
                m.to_json().contains("\"max_regs\""),
                declared.is_some(),
                "only a declared cap appears in the manifest"
            );
            let back: Manifest = serde_json::from_str(&m.to_json()).expect("decodes");
            assert_eq!(back, m);
        }

        for tokens in [1, 2, 4, 16, 32] {
            let v = GpuVariant {
                score_tokens: tokens,
                ..GpuVariant::default()
            };
            let (ptx, m) = emit(v);
            let topn = kernel(&m, "topn_slc");
            // 77 tokens → 5 candidate blocks of 16: small score arrays, the whole request fits
            assert_eq!(topn.block, [32 * tokens, 1, 1], "{v}");
            assert_eq!(topn.grid[0], 77u32.div_ceil(tokens) * 2, "{v}");
            assert_eq!(ptx.contains(".maxntid"), tokens > 8, "{v}");
        }
    }

    /// The manifests of `spec` on 77 tokens with the default variant and with `fuse_combine=1`.
    fn unfused_and_fused(spec: &Spec, dtype: DType) -> ((String, Manifest), (String, Manifest)) {
        let mut p = Problem::batched(1, 77);
        p.dtype = dtype;
        let shape = p.resolve(spec).expect("valid");
        let emit = |v: &GpuVariant| emit_ptx(spec, &shape, v, Arch::Sm90).expect("emits");
        let fused = GpuVariant {
            fuse_combine: 1,
            ..GpuVariant::default()
        };
        (emit(&GpuVariant::default()), emit(&fused))
    }

    /// The `.entry` of kernel `name` in `ptx`.
    fn entry<'a>(ptx: &'a str, name: &str) -> &'a str {
        let start = ptx
            .find(&format!(".visible .entry {name}("))
            .expect("kernel present");
        let rest = &ptx[start + 1..];
        &ptx[start..start + 1 + rest.find(".visible .entry").unwrap_or(rest.len())]
    }

    #[test]
    fn fused_combine_moves_into_the_tensor_core_select_kernel() {
        let strs = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let own = ["seg", "q", "k", "v", "idx_slc", "o_slc"];
        // (combine mode, combine order, the fused kernel's extra parameters)
        let cases = [
            (
                CombineMode::Gate,
                ["cmp", "slc"],
                strs(&["o_cmp", "g_cmp", "g_slc", "o"]),
            ),
            (
                CombineMode::Gate,
                ["slc", "cmp"],
                strs(&["o_cmp", "g_slc", "g_cmp", "o"]),
            ),
            (CombineMode::Sum, ["cmp", "slc"], strs(&["o_cmp", "o"])),
        ];
        for (mode, order, extra) in cases {
            let mut spec = tensor_core_spec();
            spec.combine = Combine {
                mode,
                branches: strs(&order),
            };
            for dtype in [DType::Bf16, DType::F16] {
                let ((ptx0, m0), (ptx1, m1)) = unfused_and_fused(&spec, dtype);
                // same buffers: the select branch's own output is still written
                assert_eq!(m1.buffers, m0.buffers);
                assert!(m0.kernels.iter().any(|k| k.name == "nsac_tc_combine"));
                let names: Vec<&str> = m1.kernels.iter().map(|k| k.name.as_str()).collect();
                assert_eq!(
                    names,
                    [
                        "nsac_tc_pool_cmp",
                        "nsac_tc_attend_cmp",
                        "nsac_tc_topn_slc",
                        "nsac_tc_attend_slc_combine"
                    ]
                );
                assert_eq!(m1.kernels[..3], m0.kernels[..3]);
                let slc = &m1.kernels[3];
                let mut want = strs(&own);
                want.extend(extra.iter().cloned());
                assert_eq!(slc.params, want, "{mode:?} {order:?}");
                let slc0 = kernel(&m0, "attend_slc");
                assert_eq!(
                    (slc.grid, slc.block, slc.shared_bytes, slc.max_regs),
                    (slc0.grid, slc0.block, slc0.shared_bytes, slc0.max_regs)
                );
                assert!(ptx1.contains(".visible .entry nsac_tc_attend_slc_combine("));
                assert!(!ptx1.contains(".visible .entry nsac_tc_combine("));
                // the combine's arithmetic: per stored pair of elements, one fma (gated) or
                // add (sum) per branch and element
                let op = match mode {
                    CombineMode::Gate => "fma.rn.f32",
                    CombineMode::Sum => "add.rn.f32",
                };
                let per = 2 * 2;
                let (k0, k1) = (
                    entry(&ptx0, "nsac_tc_attend_slc"),
                    entry(&ptx1, "nsac_tc_attend_slc_combine"),
                );
                let count = |k: &str, op: &str| k.matches(op).count();
                // rows gq and gq+8, Dv/8 column pairs each, also written to o
                let stores = count(k1, "st.global.v2.f32") - count(k0, "st.global.v2.f32");
                assert_eq!(stores, 2 * 64 / 8);
                // the other branch's pair read for each
                let loads = count(k1, "ld.global.v2.f32") - count(k0, "ld.global.v2.f32");
                assert_eq!(loads, stores);
                assert_eq!(count(k1, op) - count(k0, op), stores * per);
            }
        }
    }

    #[test]
    fn fused_combine_collapses_where_the_last_branch_kernel_cannot_fuse() {
        let mut gated = tensor_core_spec();
        gated.combine.mode = CombineMode::Gate;
        // f32: the scalar select kernel
        let (a, b) = unfused_and_fused(&gated, DType::F32);
        assert_eq!(a, b);
        // G = 32 > 16 heads per kv head: the scalar select kernel
        let mut wide = gated.clone();
        wide.heads = Heads { q: 64, kv: 2 };
        let (a, b) = unfused_and_fused(&wide, DType::Bf16);
        assert_eq!(a, b);
        // only a compress branch
        let mut compress_only = gated.clone();
        compress_only.branches.truncate(1);
        compress_only.combine.branches.truncate(1);
        for dtype in [DType::Bf16, DType::F32] {
            let (a, b) = unfused_and_fused(&compress_only, dtype);
            assert!(a.1.kernels.iter().any(|k| k.name == "nsac_tc_combine"));
            assert_eq!(a, b);
        }
    }

    #[test]
    fn fused_combine_moves_into_the_window_kernel_when_it_runs_last() {
        let mut spec = tensor_core_spec();
        spec.branches.push(Branch {
            name: "win".into(),
            kv: KvSource::Shared,
            kind: BranchKind::Window(Window { size: 9 }),
        });
        spec.combine = Combine {
            mode: CombineMode::Gate,
            branches: ["win", "cmp", "slc"].map(String::from).to_vec(),
        };
        // the window kernel is scalar in every dtype
        for dtype in [DType::Bf16, DType::F32] {
            let ((_, m0), (ptx1, m1)) = unfused_and_fused(&spec, dtype);
            assert_eq!(m1.buffers, m0.buffers);
            let names: Vec<&str> = m1.kernels.iter().map(|k| k.name.as_str()).collect();
            assert_eq!(names.last(), Some(&"nsac_tc_attend_win_combine"));
            assert_eq!(m1.kernels.len() + 1, m0.kernels.len());
            assert_eq!(
                m1.kernels[..4],
                m0.kernels[..4],
                "the select kernel is not fused"
            );
            let win = &m1.kernels[4];
            assert_eq!(
                win.params,
                [
                    "seg", "q", "k", "v", "o_win", "o_cmp", "o_slc", "g_win", "g_cmp", "g_slc", "o"
                ]
            );
            assert_eq!(
                (win.grid, win.block),
                (m0.kernels[4].grid, m0.kernels[4].block)
            );
            // three gates, then per lane and 32-wide chunk of Dv = 64: two loads of other
            // branches, three fmas and one store to o
            let k1 = entry(&ptx1, "nsac_tc_attend_win_combine");
            let tail = &k1[k1.find("combine fused").expect("epilogue")..];
            // (16-bit gates load as b16, f32 gates as f32)
            let f32_gates = if dtype == DType::F32 { 3 } else { 0 };
            assert_eq!(tail.matches("ld.global.b16").count(), 3 - f32_gates);
            assert_eq!(tail.matches("ld.global.f32").count(), 2 * 2 + f32_gates);
            assert_eq!(tail.matches("fma.rn.f32").count(), 2 * 3);
            assert_eq!(tail.matches("st.global.f32").count(), 2);
        }
        // sum: adds instead, no gates
        spec.combine.mode = CombineMode::Sum;
        let (_, (ptx1, m1)) = unfused_and_fused(&spec, DType::F16);
        let win = m1.kernels.last().expect("kernels");
        assert_eq!(
            win.params,
            ["seg", "q", "k", "v", "o_win", "o_cmp", "o_slc", "o"]
        );
        let k1 = entry(&ptx1, "nsac_tc_attend_win_combine");
        assert_eq!(k1.matches("add.rn.f32").count(), 2 * 3);
    }

    #[test]
    fn a_third_compress_stage_adds_one_chunk_buffer_and_waits_for_two_groups() {
        let spec = tensor_core_spec();
        let mut p = Problem::batched(1, 77);
        p.dtype = DType::Bf16;
        let shape = p.resolve(&spec).expect("valid");
        let emit = |v: GpuVariant| emit_ptx(&spec, &shape, &v, Arch::Sm90).expect("emits");
        let (ptx2, m2) = emit(GpuVariant::default());
        let (ptx3, m3) = emit(GpuVariant {
            compress_stages: 3,
            ..GpuVariant::default()
        });
        // one staging buffer of 32 keys: K hi, K lo and V rows of 2*64+16 bytes (attention),
        // K hi and lo rows (top-n scoring)
        let row = 2 * 64 + 16;
        let (attn_buf, score_buf) = (32 * 3 * row, 32 * 2 * row);
        let (a2, a3) = (kernel(&m2, "attend_cmp"), kernel(&m3, "attend_cmp"));
        assert_eq!(a2.shared_bytes, 2 * attn_buf + 8 * 8);
        assert_eq!(a3.shared_bytes, a2.shared_bytes + attn_buf);
        assert!(a3.launch.contains("shared = 3*32*(") && a3.launch.contains("triple-buffered"));
        let (t2, t3) = (kernel(&m2, "topn_slc"), kernel(&m3, "topn_slc"));
        assert_eq!(
            t3.block, t2.block,
            "8 score arrays still fit beside 3 buffers"
        );
        assert_eq!(t3.shared_bytes, t2.shared_bytes + score_buf);
        // the other kernels do not depend on the knob
        assert_eq!(kernel(&m3, "attend_slc"), kernel(&m2, "attend_slc"));

        // S buffers: wait until only the S - 1 newest groups are pending; the prologue commits
        // S - 1 groups and each loop step one (attention and top-n hold one loop each)
        let count = |ptx: &str, s: &str| ptx.matches(s).count();
        assert_eq!(count(&ptx2, "cp.async.wait_group 1;"), 2);
        assert_eq!(count(&ptx2, "cp.async.wait_group 2;"), 0);
        assert_eq!(count(&ptx3, "cp.async.wait_group 1;"), 0);
        assert_eq!(count(&ptx3, "cp.async.wait_group 2;"), 2);
        assert_eq!(
            count(&ptx3, "cp.async.commit_group;"),
            count(&ptx2, "cp.async.commit_group;") + 2,
            "one more prologue group in each of the two loops"
        );
        // the step's copies go to the buffer before the current one in the ring, which then
        // advances by one buffer and wraps after three
        let has = |ptx: &str, op: &str, x: u32| {
            ptx.lines()
                .any(|l| l.trim().starts_with(op) && l.ends_with(&format!(", {x};")))
        };
        for buf in [attn_buf, score_buf] {
            assert!(has(&ptx3, "add.u32", 2 * buf), "{buf}");
            assert!(has(&ptx3, "setp.eq.u32", 3 * buf), "{buf}");
            assert!(!has(&ptx2, "setp.eq.u32", 3 * buf), "{buf}");
        }
    }

    #[test]
    fn top_n_halves_its_tokens_until_the_scores_fit() {
        use kernels::topn::tc_warps;
        // default: 8 tokens, fewer when 8 score arrays do not fit beside the staging
        assert_eq!(tc_warps(8, 1024, 20_000), 8);
        assert_eq!(tc_warps(8, 20 * 1024, 8_000), 4);
        assert_eq!(tc_warps(8, 40 * 1024, 8_000), 2);
        assert_eq!(tc_warps(8, 100 * 1024, 8_000), 1);
        assert_eq!(tc_warps(8, 200 * 1024, 8_000), 1);
        assert_eq!(tc_warps(16, 1024, 20_000), 16);
        assert_eq!(tc_warps(16, 9 * 1024, 8_000), 16);
        assert_eq!(tc_warps(16, 10 * 1024, 8_000), 8);
        assert_eq!(tc_warps(6, 30 * 1024, 8_000), 3);
        assert_eq!(tc_warps(2, 1024, 8_000), 2);
    }
}
