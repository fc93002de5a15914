//! The GPU backend in the tuner: its Variant space ([`GpuSpace`]), how a candidate is compiled,
//! timed with CUDA events and checked against the f64 oracle ([`GpuBench`]), and the entry
//! points the CLI calls ([`tune_gpu`], which tunes on a DB miss, and [`tuned_gpu_variant`], a
//! DB lookup only).
//!
//! # The space
//!
//! A candidate is a [`GpuVariant`]; the default knob ranges ([`GpuKnobs::default`]) bracket the
//! hand-tuned default (H200, nsa-fla at 64k) by a factor of two each way, and try one more
//! pipeline stage and the fused combine:
//!
//! | knob | values | kernel |
//! |---|---|---|
//! | `select_tokens` | 4, 8, 16 | tensor-core selected attention: tokens (warps) per block |
//! | `select_chunk` | 16, 32, 64 | keys staged per step there |
//! | `compress_tokens` | 4, 8, 16 | tensor-core compressed attention: tokens sharing a chunk |
//! | `compress_max_regs` | 0 (none), 96, 128 | its register cap: blocks per multiprocessor vs spills |
//! | `score_tokens` | 4, 8, 16 | tensor-core top-k: tokens sharing the staged keys |
//! | `warps_per_block` | 2, 4, 8 | the scalar warp-per-row kernels (pool, combine, fallbacks) |
//! | `compress_stages` | 2, 3 | compressed chunks in flight (compressed attention, top-k) |
//! | `fuse_combine` | 0, 1 | the combine in the last branch kernel's epilogue, or its own kernel |
//!
//! A knob is kept only when one of its values changes the generated PTX of this problem (an
//! f32 problem has no tensor-core kernels, a spec without a select branch no top-k), so the
//! tuner never times two candidates that are the same code. What remains is searched
//! exhaustively when small, else by coordinate descent ([`super::search`]); the knobs act on
//! different kernels launched one after another, so their effects nearly add up, which is the
//! landscape coordinate descent solves exactly. How close it comes to the exhaustive best
//! (`nsac tune --exhaustive`) on real problems, and with how many measurements: BENCHMARKS.md,
//! "Tuner — GPU".
//!
//! Rejected before anything is loaded, each with its reason ([`PruneReason`]):
//! [`GpuVariant::validate`] fails; `select_chunk` other than the default does not divide a
//! select branch's block (a chunk would straddle two blocks or stage zeros past the end); or
//! some kernel's launch (from the manifest [`emit_ptx`] writes) needs more threads, shared
//! memory or registers per block than the device has ([`GpuLimits`], read from the driver).
//! Blocks of more than 256 threads carry a register cap that fits them (`.maxntid` and a
//! lowered `.maxnreg`, in the manifest's `max_regs`); smaller blocks launch with any register
//! count ptxas picks.

//! # Timing and checking
//!
//! Candidates are timed on the requested problem itself (a GPU runs even 64k tokens in tens of
//! milliseconds): its random inputs are converted and uploaded once, and every candidate runs on
//! those buffers, timed with CUDA events around the whole call. Every candidate that would
//! become the best is first run on a small odd-length problem long enough that the selection
//! must choose ([`check_seq_len`] tokens, one kv head of the problem's group, its dims and
//! dtype; two seeds) and compared with the oracle fed the same rounded inputs, at the dtype's
//! bar of docs/ARCHITECTURE.md §4 ([`gpu_tolerance`]).

use std::sync::Arc;
use std::time::Duration;

use nsac_compiler::ir::{Op, Plan, Sizes};
use nsac_compiler::ptx::{Arch, GpuVariant, emit_ptx};
use nsac_dsl::Spec;
use nsac_dsl::problem::{DType, Shape};
use nsac_kernels::io::random_inputs;
use serde::{Deserialize, Serialize};

use super::cached::{CachedTuneError, Tuned, stored, tune_cached_at};
use super::check::{CheckCase, Mismatch, Produced, check_cases, check_shape, compare};
use super::db::{DbError, DbWarning, TuningDb, Warned};
use super::fingerprint::DeviceFingerprint;
use super::key::TuneKey;
use super::limits::{BlockNeeds, GpuLimits};
use super::space::{Dimension, Point, PruneReason, VariantSpace};
use super::tuner::{BenchError, Benchmark, Progress, TuneOptions};
use crate::cuda::{CudaDevice, CudaError, CudaKernel, DeviceTensors};

/// The values each knob may take (before pruning).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuKnobs {
    pub warps_per_block: Vec<u32>,
    pub select_tokens: Vec<u32>,
    pub select_chunk: Vec<u32>,
    pub compress_tokens: Vec<u32>,
    pub compress_max_regs: Vec<u32>,
    pub score_tokens: Vec<u32>,
    pub compress_stages: Vec<u32>,
    pub fuse_combine: Vec<u32>,
}

impl Default for GpuKnobs {
    /// The ranges of the module docs.
    fn default() -> Self {
        GpuKnobs {
            warps_per_block: vec![2, 4, 8],
            select_tokens: vec![4, 8, 16],
            select_chunk: vec![16, 32, 64],
            compress_tokens: vec![4, 8, 16],
            compress_max_regs: vec![0, 96, 128],
            score_tokens: vec![4, 8, 16],
            compress_stages: vec![2, 3],
            fuse_combine: vec![0, 1],
        }
    }
}

impl GpuKnobs {
    /// Each knob's values with its [`GpuVariant`] field name.
    fn lists(&self) -> [(&'static str, &Vec<u32>); 8] {
        [
            ("warps_per_block", &self.warps_per_block),
            ("select_tokens", &self.select_tokens),
            ("select_chunk", &self.select_chunk),
            ("compress_tokens", &self.compress_tokens),
            ("compress_max_regs", &self.compress_max_regs),
            ("score_tokens", &self.score_tokens),
            ("compress_stages", &self.compress_stages),
            ("fuse_combine", &self.fuse_combine),
        ]
    }

    fn lists_mut(&mut self) -> [(&'static str, &mut Vec<u32>); 8] {
        [
            ("warps_per_block", &mut self.warps_per_block),
            ("select_tokens", &mut self.select_tokens),
            ("select_chunk", &mut self.select_chunk),
            ("compress_tokens", &mut self.compress_tokens),
            ("compress_max_regs", &mut self.compress_max_regs),
            ("score_tokens", &mut self.score_tokens),
            ("compress_stages", &mut self.compress_stages),
            ("fuse_combine", &mut self.fuse_combine),
        ]
    }
}

/// `variant` with knob `name` set to `value`.
fn with_knob(mut variant: GpuVariant, name: &str, value: u32) -> GpuVariant {
    if let Some(field) = variant.field_mut(name) {
        *field = value;
    }
    variant
}

/// The GPU Variant space of one spec on one problem shape and device.
#[derive(Debug, Clone)]
pub struct GpuSpace {
    knobs: GpuKnobs,
    spec: Spec,
    shape: Shape,
    /// The select stages' blocks, from the plan.
    select_blocks: Vec<usize>,
    arch: Arch,
    limits: GpuLimits,
}

/// The (block, top) of every top-k op of `plan` (one per select branch).
fn selects(plan: &Plan) -> impl Iterator<Item = (usize, usize)> + '_ {
    plan.ops.iter().filter_map(|op| match op {
        Op::TopK(t) => Some((t.block, t.k)),
        _ => None,
    })
}

impl GpuSpace {
    /// The space of `knobs` for `spec` on `shape`, for a device of `arch` with `limits`: the
    /// default's value is added to every knob, and knobs that do not change this problem's PTX
    /// keep only the default.
    pub fn new(spec: &Spec, shape: &Shape, arch: Arch, limits: GpuLimits, knobs: GpuKnobs) -> Self {
        let mut knobs = knobs;
        let default = GpuVariant::default();
        let base = emit_ptx(spec, shape, &default, arch).ok();
        for (name, values) in knobs.lists_mut() {
            let own = default.get(name).unwrap_or_default();
            if !values.contains(&own) {
                values.push(own);
                values.sort_unstable();
            }
            let matters = values.iter().any(|&value| {
                let v = with_knob(default, name, value);
                v.validate().is_ok() && emit_ptx(spec, shape, &v, arch).ok() != base
            });
            if !matters {
                *values = vec![own];
            }
        }
        let select_blocks = Plan::for_shape(spec, shape)
            .map(|p| selects(&p).map(|(block, _)| block).collect())
            .unwrap_or_default();
        GpuSpace {
            knobs,
            spec: spec.clone(),
            shape: shape.clone(),
            select_blocks,
            arch,
            limits,
        }
    }

    pub fn knobs(&self) -> &GpuKnobs {
        &self.knobs
    }
}

impl VariantSpace for GpuSpace {
    type Variant = GpuVariant;

    fn dimensions(&self) -> Vec<Dimension> {
        self.knobs
            .lists()
            .iter()
            .map(|(name, values)| Dimension::new(name, values))
            .collect()
    }

    fn variant_at(&self, point: &[usize]) -> GpuVariant {
        let mut v = GpuVariant::default();
        for (index, (name, values)) in self.knobs.lists().iter().enumerate() {
            let at = point.get(index).copied().unwrap_or(0);
            if let Some(&value) = values.get(at) {
                v = with_knob(v, name, value);
            }
        }
        v
    }

    fn default_point(&self) -> Point {
        let default = GpuVariant::default();
        self.knobs
            .lists()
            .iter()
            .map(|(name, values)| {
                let own = default.get(name).unwrap_or_default();
                values.iter().position(|&v| v == own).unwrap_or(0)
            })
            .collect()
    }

    fn check(&self, v: &GpuVariant) -> Result<(), PruneReason> {
        v.validate()
            .map_err(|e| PruneReason::Incompatible(e.to_string()))?;
        // The default is the baseline every problem runs, whatever its blocks.
        let default_chunk = GpuVariant::default().select_chunk;
        for &block in &self.select_blocks {
            let chunk = v.select_chunk as usize;
            if v.select_chunk != default_chunk && !block.is_multiple_of(chunk) {
                return Err(PruneReason::NotDivisible {
                    knob: "select_chunk".into(),
                    value: v.select_chunk.into(),
                    what: "the select block".into(),
                    size: block as u64,
                });
            }
        }
        let (_, manifest) = emit_ptx(&self.spec, &self.shape, v, self.arch)
            .map_err(|e| PruneReason::Incompatible(e.to_string()))?;
        for kernel in &manifest.kernels {
            let threads = kernel.block.iter().product::<u32>();
            let registers_per_thread = kernel.max_regs.unwrap_or_else(|| {
                // No cap: a block of at most 256 threads, which launches with whatever ptxas
                // picks (at most this):
                (self.limits.max_registers_per_block / threads.max(1))
                    .min(self.limits.max_registers_per_thread)
            });
            self.limits
                .check_block(BlockNeeds {
                    threads,
                    shared_bytes: kernel.shared_bytes.into(),
                    registers_per_thread,
                })
                .map_err(|reason| match reason {
                    PruneReason::ExceedsLimit {
                        resource,
                        needed,
                        available,
                    } => PruneReason::ExceedsLimit {
                        resource: format!("{resource} in `{}`", kernel.name),
                        needed,
                        available,
                    },
                    other => other,
                })?;
        }
        Ok(())
    }
}

/// The largest max|o−ref|/max|ref| a GPU candidate may have in `dtype` (docs/ARCHITECTURE.md §4).
pub fn gpu_tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::Bf16 => 1e-2,
        DType::F16 => 2e-3,
        DType::F32 => 1e-4,
    }
}

/// Tokens of the GPU check problem for the plan of a problem: odd, at least 203, and past two
/// blocks more than every select stage's top-k could cover, so the top-k really chooses.
pub fn check_seq_len(plan: &Plan) -> usize {
    let span = selects(plan)
        .map(|(block, top)| (top + 2) * block + 37)
        .max()
        .unwrap_or(0);
    span.max(203) | 1
}

/// Why a GPU candidate failed its oracle check (or the check could not be set up).
#[derive(Debug, thiserror::Error)]
pub enum GpuCheckError {
    #[error(transparent)]
    Cuda(#[from] CudaError),
    #[error(transparent)]
    Mismatch(#[from] Mismatch),
}

/// Compiles, times and checks GPU candidates of one spec on one problem and device.
pub struct GpuBench {
    device: Arc<CudaDevice>,
    spec: Spec,
    shape: Shape,
    tensors: DeviceTensors<'static>,
    check_shape: Shape,
    cases: Vec<CheckCase>,
}

impl GpuBench {
    /// A benchmark of `spec` on `shape` (random inputs made and uploaded once: every Variant of
    /// the plan launches the same device tensors, each with its own launch geometry), with the
    /// oracle's answers on the check problem computed up front.
    pub fn new(
        device: &Arc<CudaDevice>,
        spec: &Spec,
        shape: &Shape,
    ) -> Result<Self, GpuCheckError> {
        let plan = Plan::for_shape(spec, shape)
            .map_err(|e| CudaError::from(nsac_compiler::ptx::PtxError::from(e)))?;
        let check_shape = check_shape(spec, shape, check_seq_len(&plan)).map_err(Mismatch::from)?;
        let cases = check_cases(spec, &check_shape, Some(shape.dtype)).map_err(Mismatch::from)?;
        let layout = CudaKernel::compile(device, spec, shape, &GpuVariant::default())?;
        let tensors = layout.upload(&Sizes::of(shape), &random_inputs(spec, shape, 0x1234))?;
        Ok(GpuBench {
            device: device.clone(),
            spec: spec.clone(),
            shape: shape.clone(),
            tensors,
            check_shape,
            cases,
        })
    }

    /// The shape of the check problem.
    pub fn check_shape(&self) -> &Shape {
        &self.check_shape
    }

    /// Runs `variant` on every check seed and compares it with the oracle.
    pub fn check_variant(&self, variant: &GpuVariant) -> Result<(), GpuCheckError> {
        let kernel = CudaKernel::compile(&self.device, &self.spec, &self.check_shape, variant)?;
        let sizes = Sizes::of(&self.check_shape);
        for case in &self.cases {
            let got = kernel.run(&sizes, &case.inputs)?;
            let produced = Produced {
                o: &got.o,
                branches: &got.branches,
                selected: &got.selected,
            };
            let tolerance = gpu_tolerance(self.shape.dtype);
            compare(&self.spec, &self.check_shape, case, produced, tolerance)?;
        }
        Ok(())
    }
}

impl Benchmark<GpuVariant> for GpuBench {
    type Kernel = CudaKernel;

    fn compile(&self, variant: &GpuVariant) -> Result<CudaKernel, BenchError> {
        Ok(CudaKernel::compile(
            &self.device,
            &self.spec,
            &self.shape,
            variant,
        )?)
    }

    fn time_once(&self, kernel: &mut CudaKernel) -> Result<Duration, BenchError> {
        let ms = kernel.time_once(&self.tensors)?;
        Ok(Duration::from_secs_f64(f64::from(ms) * 1e-3))
    }

    fn check(&self, variant: &GpuVariant) -> Result<(), BenchError> {
        Ok(self.check_variant(variant)?)
    }
}

/// How [`tune_gpu`] searches: the knob ranges and the tuner's options.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuTuneOptions {
    pub knobs: GpuKnobs,
    pub tune: TuneOptions,
}

impl Default for GpuTuneOptions {
    /// The default ranges; two warm-up and five timed runs per candidate, then the four
    /// fastest and the default confirmed over five rounds.
    fn default() -> Self {
        GpuTuneOptions {
            knobs: GpuKnobs::default(),
            tune: TuneOptions {
                warmup: 2,
                repeats: 5,
                confirm_finalists: 4,
                confirm_rounds: 5,
                ..TuneOptions::default()
            },
        }
    }
}

/// Why GPU tuning failed.
#[derive(Debug, thiserror::Error)]
pub enum GpuTuneError {
    #[error("could not read the device: {0}")]
    Device(#[from] CudaError),
    #[error("could not set up the benchmark or the oracle check: {0}")]
    Check(#[from] GpuCheckError),
    #[error(transparent)]
    Tune(#[from] CachedTuneError),
}

/// The tuning-DB key of `spec` on `shape` on `device`.
pub fn gpu_key(device: &CudaDevice, spec: &Spec, shape: &Shape) -> Result<TuneKey, CudaError> {
    let fingerprint = DeviceFingerprint::Gpu(device.fingerprint()?);
    Ok(TuneKey::for_spec(spec, shape, fingerprint))
}

/// The space of `knobs` for `spec` on `shape` on `device`.
pub fn gpu_space(
    device: &CudaDevice,
    spec: &Spec,
    shape: &Shape,
    knobs: GpuKnobs,
) -> Result<GpuSpace, CudaError> {
    Ok(GpuSpace::new(
        spec,
        shape,
        device.arch(),
        device.limits()?,
        knobs,
    ))
}

/// The best GPU Variant for `spec` on `shape` (bucketed by T) on `device`: from `db` unless
/// `retune` or the DB has nothing current for this GPU and nsac version; otherwise tunes and
/// records it.
pub fn tune_gpu(
    device: &Arc<CudaDevice>,
    spec: &Spec,
    shape: &Shape,
    db: &TuningDb,
    options: &GpuTuneOptions,
    retune: bool,
    progress: &mut dyn FnMut(Progress),
) -> Result<(Tuned<GpuVariant>, Vec<DbWarning>), GpuTuneError> {
    let key = gpu_key(device, spec, shape)?;
    let space = gpu_space(device, spec, shape, options.knobs.clone())?;
    // A stored result needs no benchmark (uploading a long problem's inputs takes seconds).
    let mut warnings = Vec::new();
    if !retune {
        let found = stored(db, &key, &space).map_err(CachedTuneError::from)?;
        if let Some(tuned) = found.value {
            return Ok((tuned, found.warnings));
        }
        warnings = found.warnings;
    }
    let bench = GpuBench::new(device, spec, shape)?;
    // Already looked up: tune straight away (`retune: true`).
    let (tuned, more) = tune_cached_at(
        db,
        &key,
        &space,
        &bench,
        &options.tune,
        true,
        Some(shape.seq_len),
        progress,
    )?;
    warnings.extend(more);
    Ok((tuned, warnings))
}

/// The tuned Variant the DB holds for `spec` on `shape` on `device` and this nsac version, if
/// any (and if it still fits the device). Looks up only: never compiles or tunes.
pub fn tuned_gpu_variant(
    device: &CudaDevice,
    spec: &Spec,
    shape: &Shape,
    db: &TuningDb,
) -> Option<GpuVariant> {
    tuned_gpu_variant_warned(device, spec, shape, db)
        .ok()?
        .value
}

/// [`tuned_gpu_variant`] with the DB's warnings and errors (a DB path that is not a regular
/// file, a corrupt file set aside, a newer schema) for the caller to print.
pub fn tuned_gpu_variant_warned(
    device: &CudaDevice,
    spec: &Spec,
    shape: &Shape,
    db: &TuningDb,
) -> Result<Warned<Option<GpuVariant>>, DbError> {
    let (Ok(key), Ok(space)) = (
        gpu_key(device, spec, shape),
        gpu_space(device, spec, shape, GpuKnobs::default()),
    ) else {
        return Ok(Warned {
            value: None,
            warnings: Vec::new(),
        });
    };
    let found = stored(db, &key, &space)?;
    Ok(Warned {
        value: found.value.map(|tuned| *tuned.variant()),
        warnings: found.warnings,
    })
}
