//! The GPU backend: a [`Plan`] + [`GpuVariant`] → PTX text for sm_80 / sm_90 plus a
//! [`Manifest`] saying how to launch it. The driver JIT-compiles the PTX at run time; nothing
//! here needs CUDA. Generated text is deterministic so it can be snapshot-tested.
//!
//! The PTX depends on the spec (heads, head dims, blocks, dtype) and the Variant only, never on
//! the batch, the sequence length or the segments: every kernel takes the call's sizes as
//! `.param .u32` after its buffers ([`launch::Scalar`]), and the manifest describes each launch
//! as a formula of them ([`launch::Geometry`]), which a launcher evaluates per call
//! ([`Manifest::launches`], where the 32-bit index limit is checked too). One module serves
//! every length and packing: [`emit_module`] writes it with its length-free
//! [`ModuleManifest`], from which each call's launches and buffers follow; [`emit_plan`] adds
//! the [`Manifest`] of one call.
//!
//! Buffers ([`Manifest::buffers`]): the plan's tensors in declaration order, shaped for the
//! manifest's call ([`Sizes::shape`]) — its `In` tensors in the problem's dtype, its `Out`
//! tensors (`o`, `o_<b>` in f32, `idx_<b>` in int32) and the `Scratch` tensors a kernel touches
//! (f32 `kc_<b>`, `vc_<b>` `[B, NC, H, D]` and `lse_<b>`; the top-k kernels keep the plan's
//! `scores_<s>` to themselves) — then the backend's scratch, derived from them
//! ([`lowering::backend_scratch`]): `seg` (per token its segment's start and end and, per
//! compress branch, the segment's first compressed slot) and, for the tensor-core kernels, the
//! 16-bit copies `kc16_<b>`, `vc16_<b>` of the compressed tokens.
//!
//! Kernels: one per GPU stage ([`lowering::lower`]: one per plan op, except that a score and
//! its top-k are one top-k kernel), in the plan's order, on one stream. With
//! [`GpuVariant::fuse_combine`] = 1 and a last branch kernel that can fuse (the tensor-core
//! selected attention or the window attention), that kernel, renamed `…_attend_<b>_combine`,
//! also computes `o` in its epilogue and takes the other branches' outputs, the gates (gated
//! combines) and `o` as extra parameters after its own; the combine kernel is then left out. The
//! buffers are the same either way (`o_<b>` of the fused branch is still written: it is a
//! result of the call, and the tuner runs every Variant on one upload). Otherwise fusion
//! changes nothing and the knob collapses.

pub mod builder;
pub mod kernels;
pub mod launch;
pub mod lowering;
pub mod probe;
pub mod variant;

use nsac_dsl::Spec;
use nsac_dsl::problem::{DType, Shape};
use serde::{Deserialize, Serialize};

use crate::ir::{self, Plan, Role, Sizes};
use kernels::{KernelOut, attend, combine, pool, tc_compress, tc_select, topk};
pub use launch::{Geometry, LaunchDims, Param, Scalar};
pub use lowering::{CallSizes, segment_table};
use lowering::{Program, Stage};
pub use variant::{GPU_VARIANT_FIELDS, GpuVariant, GpuVariantError};

/// Why PTX could not be generated or launched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PtxError {
    #[error(transparent)]
    Lower(#[from] ir::LowerError),
    #[error(transparent)]
    Sizes(#[from] ir::SizesError),
    #[error("the PTX backend does not support this: {0}")]
    Unsupported(String),
    /// A selection form beyond NSA's blocks that the CPU backend computes and the PTX
    /// backend does not yet.
    #[error(
        "branch `{branch}` uses {}, which the PTX backend does not compute yet (the CPU backend and the f64 oracle do: `--device cpu` / `--device reference`)",
        form.describe()
    )]
    Form {
        branch: String,
        form: nsac_dsl::spec::SelectionForm,
    },
    #[error("the problem is too large for the PTX backend's 32-bit indexing: {0}")]
    TooLarge(&'static str),
    #[error(
        "{tokens} tokens (B·T) are too many for the PTX kernels of this spec: their 32-bit element indices allow at most {max}"
    )]
    TooManyTokens { tokens: u64, max: u64 },
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

/// The name of the segment table every kernel reads: a [`Role::Scratch`] buffer of the
/// backend's own, which the launcher fills per call from [`Manifest::seg_columns`] and
/// [`segment_table`] (the other scratch buffers start zeroed).
pub const SEG: &str = "seg";

/// One device buffer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BufferInfo {
    pub name: String,
    /// The plan's role of the tensor ([`Role::Scratch`] for the backend's own buffers).
    pub role: Role,
    pub elem: ir::Elem,
    pub shape: Vec<usize>,
}

impl BufferInfo {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// Bytes per element.
    pub fn elem_bytes(&self) -> usize {
        self.elem.size()
    }
}

/// One column of the `seg` table (per token, u32).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SegColumn {
    /// The token's segment start, in flattened tokens (`row·T + start`).
    Start,
    /// Its segment end, likewise.
    End,
    /// The flattened first slot of its segment's compressed tokens in `kc_<branch>`: the
    /// compressed tokens (`(len − block)/stride + 1` per segment of `len ≥ block`, else 0) of
    /// every earlier segment and row come before.
    CompressedBase {
        branch: String,
        block: usize,
        stride: usize,
    },
}

/// One kernel launch, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelInfo {
    pub name: String,
    /// The kernel's parameters in order: buffers (by name), then `u32` sizes.
    pub params: Vec<Param>,
    /// The launch of the manifest's own problem ([`Manifest::tokens`], [`Manifest::segments`]);
    /// other calls evaluate [`KernelInfo::geometry`].
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub shared_bytes: u32,
    /// The kernel's register cap per thread (`.maxnreg`), when it declares one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub max_regs: Option<u32>,
    /// How grid and dynamic shared memory follow from a call's tokens and longest segment.
    pub geometry: Geometry,
    /// The same, in words.
    pub launch: String,
}

/// How to run the PTX: buffers, then kernels launched in order on one stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub spec: String,
    pub arch: String,
    pub dtype: String,
    /// The most tokens (B·T) a call may have: the kernels' element indices are 32-bit.
    pub max_tokens: u64,
    /// The problem the buffers' shapes and the kernels' `grid`/`shared_bytes` were written for
    /// (the PTX serves every problem): tokens B·T, batch rows B, tokens per row T, and the
    /// segments (start, end) within each row, which `seg` repeats for every row.
    pub tokens: usize,
    pub batch: usize,
    pub seq_len: usize,
    pub segments: Vec<[usize; 2]>,
    /// The columns of `seg`, per token.
    pub seg_columns: Vec<SegColumn>,
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
    /// The sizes of the manifest's own problem.
    pub fn sizes(&self) -> CallSizes {
        CallSizes {
            tokens: self.tokens as u64,
            max_len: self
                .segments
                .iter()
                .map(|[s, e]| (e - s) as u64)
                .max()
                .unwrap_or(self.seq_len as u64),
        }
    }
    /// Every kernel's launch for a call of `sizes`; fails when the call has more tokens than
    /// the kernels can index ([`Manifest::max_tokens`]) or a size overflows 32 bits.
    pub fn launches(&self, sizes: CallSizes) -> Result<Vec<LaunchDims>, PtxError> {
        self.kernels
            .iter()
            .map(|k| k.geometry.evaluate(&k.params, sizes, self.max_tokens))
            .collect()
    }
}

/// One kernel of a module, whatever the call: a [`KernelInfo`] without the evaluated launch of
/// one problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelDecl {
    pub name: String,
    /// The kernel's parameters in order: buffers (by name), then `u32` sizes.
    pub params: Vec<Param>,
    /// The kernel's register cap per thread (`.maxnreg`), when it declares one.
    pub max_regs: Option<u32>,
    /// How grid and dynamic shared memory follow from a call's tokens and longest segment.
    pub geometry: Geometry,
    /// The same, in words.
    pub launch: String,
}

/// The length-free part of a [`Manifest`], written by [`emit_module`] once per plan and
/// Variant: a launcher keeps it beside the PTX and derives what each call needs from it, its
/// launches ([`ModuleManifest::launches`]) and its buffer layout ([`ModuleManifest::buffers`]);
/// [`ModuleManifest::for_call`] writes the whole [`Manifest`] of one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleManifest {
    pub spec: String,
    pub arch: String,
    pub dtype: String,
    /// The most tokens (B·T) a call may have: the kernels' element indices are 32-bit.
    pub max_tokens: u64,
    /// The columns of `seg`, per token.
    pub seg_columns: Vec<SegColumn>,
    pub kernels: Vec<KernelDecl>,
}

impl ModuleManifest {
    /// Every kernel's launch for a call of `sizes`, as [`Manifest::launches`].
    pub fn launches(&self, sizes: CallSizes) -> Result<Vec<LaunchDims>, PtxError> {
        self.kernels
            .iter()
            .map(|k| k.geometry.evaluate(&k.params, sizes, self.max_tokens))
            .collect()
    }

    /// Whether some kernel takes buffer `name`.
    fn uses(&self, name: &str) -> bool {
        self.kernels.iter().any(|k| {
            k.params
                .iter()
                .any(|p| matches!(p, Param::Buffer { name: n } if n == name))
        })
    }

    /// The buffers of a call of `sizes` ([`Manifest::buffers`]); `plan` is the plan the module
    /// was emitted from.
    pub fn buffers(&self, plan: &Plan, sizes: &Sizes) -> Result<Vec<BufferInfo>, PtxError> {
        let program = lowering::lower(plan)?;
        buffers(plan, sizes, &program, |name| self.uses(name))
    }

    /// The manifest of a call of `sizes`: kernels with their launch for it, buffers shaped for
    /// it; `plan` is the plan the module was emitted from.
    pub fn for_call(&self, plan: &Plan, sizes: &Sizes) -> Result<Manifest, PtxError> {
        let call = CallSizes::of(sizes);
        let kernels = self
            .kernels
            .iter()
            .map(|k| {
                let now = k.geometry.evaluate(&k.params, call, self.max_tokens)?;
                Ok(KernelInfo {
                    name: k.name.clone(),
                    params: k.params.clone(),
                    grid: [now.grid, 1, 1],
                    block: [now.block, 1, 1],
                    shared_bytes: now.shared_bytes,
                    max_regs: k.max_regs,
                    geometry: k.geometry,
                    launch: k.launch.clone(),
                })
            })
            .collect::<Result<Vec<_>, PtxError>>()?;
        Ok(Manifest {
            spec: self.spec.clone(),
            arch: self.arch.clone(),
            dtype: self.dtype.clone(),
            max_tokens: self.max_tokens,
            tokens: sizes.tokens(),
            batch: sizes.batch,
            seq_len: sizes.queries,
            segments: sizes.segments.iter().map(|&(a, b)| [a, b]).collect(),
            seg_columns: self.seg_columns.clone(),
            buffers: self.buffers(plan, sizes)?,
            kernels,
        })
    }
}

/// The element type of plan tensor `t` on the GPU: inputs in the problem's dtype, the rest as
/// the plan declares them (f32 results and scratch, i32 indices).
fn gpu_elem(t: &ir::Tensor, dtype: DType) -> ir::Elem {
    match t.role {
        Role::In => ir::Elem::of(dtype),
        _ => t.elem,
    }
}

/// Whether the GPU launcher handles tensors of `role` (those a forward plan has).
fn gpu_role(role: Role) -> bool {
    match role {
        Role::In | Role::Out | Role::Scratch => true,
        Role::Saved | Role::Grad | Role::State => false,
    }
}

/// The buffers of the manifest for a call of `sizes`: the plan's inputs and outputs, the plan's
/// scratch tensors some kernel reads or writes (`used`: the top-k kernels keep their
/// `scores_<s>` to themselves), then the backend's scratch, all in declaration order.
fn buffers(
    plan: &Plan,
    sizes: &Sizes,
    program: &Program,
    used: impl Fn(&str) -> bool,
) -> Result<Vec<BufferInfo>, PtxError> {
    let mut out = Vec::new();
    for (i, t) in plan.tensors.iter().enumerate() {
        if !gpu_role(t.role) {
            return Err(PtxError::Unsupported(format!(
                "tensor `{}` of role {}",
                t.name,
                t.role.name()
            )));
        }
        if t.role == Role::Scratch && !used(&t.name) {
            continue;
        }
        out.push(BufferInfo {
            name: t.name.clone(),
            role: t.role,
            elem: gpu_elem(t, plan.consts.dtype),
            shape: sizes.shape(plan, ir::TensorId(i))?,
        });
    }
    out.extend(
        lowering::backend_scratch(plan, sizes, program)?
            .into_iter()
            .filter(|b| used(&b.name)),
    );
    Ok(out)
}

/// The `seg` columns of `plan`.
fn seg_columns(plan: &Plan) -> Vec<SegColumn> {
    let mut cols = vec![SegColumn::Start, SegColumn::End];
    cols.extend(plan.ops.iter().filter_map(|op| match op {
        ir::Op::Pool(p) => Some(SegColumn::CompressedBase {
            branch: p.branch.clone(),
            block: p.block,
            stride: p.stride,
        }),
        _ => None,
    }));
    cols
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
    let [.., last, Stage::Combine { terms, out }] = program.stages.as_slice() else {
        return None;
    };
    let into = match last {
        Stage::AttendSelected { branch, .. } if tc_select::eligible(&program.dims) => branch,
        Stage::AttendWindow { branch, .. } => branch,
        _ => return None,
    };
    terms
        .iter()
        .any(|t| t.branch == *into)
        .then(|| combine::Fused {
            into: into.clone(),
            terms: terms.clone(),
            out: out.clone(),
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
                weights,
                out,
                block,
                stride,
                pool,
            } => pool::pool(
                &nm(&format!("pool_{branch}")),
                &pool::PoolArgs {
                    kv,
                    weights,
                    out,
                    block: *block,
                    stride: *stride,
                    pool: *pool,
                },
                d,
                w,
            ),
            Stage::AttendCompressed {
                branch,
                q,
                keys,
                out,
                lse,
                block,
                stride,
            } => match (&keys.half, tc_select::eligible(d)) {
                (Some(half), true) => tc_compress::attend_compressed_tc(
                    &nm(&format!("attend_{branch}")),
                    &tc_compress::CompressedIo {
                        q,
                        keys,
                        half,
                        out,
                        lse: lse.as_deref(),
                    },
                    (*block, *stride),
                    d,
                    variant,
                ),
                _ => attend::attend(
                    &nm(&format!("attend_{branch}")),
                    &attend::Rows {
                        q,
                        out,
                        lse: lse.as_deref(),
                    },
                    attend::Keys::Compressed {
                        keys,
                        block: *block,
                        stride: *stride,
                    },
                    d,
                    w,
                    None,
                ),
            },
            Stage::TopK {
                branch,
                q,
                keys,
                lse,
                idx,
                cmp_block,
                cmp_stride,
                block,
                top,
                keep_first,
                keep_last,
                ..
            } => topk::topk(
                &nm(&format!("topk_{branch}")),
                &topk::TopKParams {
                    q,
                    keys,
                    lse,
                    idx,
                    cmp_block: *cmp_block,
                    cmp_stride: *cmp_stride,
                    block: *block,
                    top: *top,
                    keep_first: *keep_first,
                    keep_last: *keep_last,
                },
                d,
                variant,
            ),
            Stage::AttendSelected {
                branch,
                q,
                kv,
                idx,
                out,
                block,
                top,
            } if tc_select::eligible(d) => {
                let fused = fused_into(branch);
                tc_select::attend_selected_tc(
                    &nm(&attend_stage(branch, fused.is_some())),
                    &tc_select::SelectedIo { q, kv, idx, out },
                    (*block, *top),
                    d,
                    variant,
                    fused,
                )
            }
            Stage::AttendSelected {
                branch,
                q,
                kv,
                idx,
                out,
                block,
                top,
            } => attend::attend(
                &nm(&format!("attend_{branch}")),
                &attend::Rows { q, out, lse: None },
                attend::Keys::Selected {
                    kv,
                    idx,
                    block: *block,
                    top: *top,
                },
                d,
                w,
                None,
            ),
            Stage::AttendWindow {
                branch,
                q,
                kv,
                out,
                size,
            } => {
                let fused = fused_into(branch);
                attend::attend(
                    &nm(&attend_stage(branch, fused.is_some())),
                    &attend::Rows { q, out, lse: None },
                    attend::Keys::Window { kv, size: *size },
                    d,
                    w,
                    fused,
                )
            }
            Stage::Combine { terms, out } => combine::combine(&nm("combine"), terms, out, d),
        })
        .collect()
}

/// PTX text and the length-free manifest of `plan` with `variant`, targeting `arch`: one
/// module serves every call, each call's launches and buffers follow from the
/// [`ModuleManifest`].
pub fn emit_module(
    plan: &Plan,
    variant: &GpuVariant,
    arch: Arch,
) -> Result<(String, ModuleManifest), PtxError> {
    variant
        .validate()
        .map_err(|e| PtxError::BadVariant(e.to_string()))?;
    let program = lowering::lower(plan)?;
    let outs = generate(&program, variant);
    let texts: Vec<String> = outs.iter().map(|k| k.ptx.clone()).collect();
    let ptx = builder::module(arch.target(), &texts);
    let kernels = outs
        .iter()
        .map(|k| KernelDecl {
            name: k
                .ptx
                .lines()
                .next()
                .and_then(|l| l.strip_prefix(".visible .entry "))
                .map(|l| l.trim_end_matches('(').to_string())
                .unwrap_or_default(),
            params: k.params.clone(),
            max_regs: k.max_regs,
            geometry: k.launch.geometry,
            launch: k.launch.formula.clone(),
        })
        .collect();
    let manifest = ModuleManifest {
        spec: plan.name.clone(),
        arch: arch.target().to_string(),
        dtype: plan.consts.dtype.name().to_string(),
        max_tokens: program.max_tokens,
        seg_columns: seg_columns(plan),
        kernels,
    };
    Ok((ptx, manifest))
}

/// PTX text and launch manifest for `plan` with `variant`, targeting `arch`. The PTX does not
/// depend on `sizes` (the plan has no lengths); the manifest's buffers and evaluated launches
/// are those of a call of `sizes` ([`emit_module`], then [`ModuleManifest::for_call`]).
pub fn emit_plan(
    plan: &Plan,
    sizes: &Sizes,
    variant: &GpuVariant,
    arch: Arch,
) -> Result<(String, Manifest), PtxError> {
    let (ptx, module) = emit_module(plan, variant, arch)?;
    Ok((ptx, module.for_call(plan, sizes)?))
}

/// [`emit_plan`] of the plan of `spec` for `shape`'s heads, head dims and dtype, with the
/// manifest written for a call of `shape`'s sizes (the spec and shape are only used to build
/// them).
pub fn emit_ptx(
    spec: &Spec,
    shape: &Shape,
    variant: &GpuVariant,
    arch: Arch,
) -> Result<(String, Manifest), PtxError> {
    emit_plan(
        &Plan::for_shape(spec, shape)?,
        &Sizes::of(shape),
        variant,
        arch,
    )
}

/// The ceiling probe of the arithmetic `plan` runs on: tensor-core `mma` when its attention
/// kernels use them, else f32 FMA.
pub fn ceiling_probe_for(plan: &Plan) -> Result<probe::Probe, PtxError> {
    let program = lowering::lower(plan)?;
    Ok(probe::Probe::for_kernels(
        plan.consts.dtype,
        tc_select::eligible(&program.dims),
    ))
}

/// [`ceiling_probe_for`] the plan of `spec` for `shape`'s heads, head dims and dtype.
pub fn ceiling_probe(spec: &Spec, shape: &Shape) -> Result<probe::Probe, PtxError> {
    ceiling_probe_for(&Plan::for_shape(spec, shape)?)
}

/// Whether `dtype` is one the PTX kernels read.
pub fn supports(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::F16 | DType::Bf16)
}
