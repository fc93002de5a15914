//! The CPU backend in the tuner: its Variant space ([`CpuSpace`]), how a candidate is compiled,
//! timed and checked against the f64 oracle ([`CpuBench`]), and the entry points the CLI calls
//! ([`tune_cpu`], which tunes on a DB miss, and [`tuned_cpu_variant`], a DB lookup only).
//!
//! # The space and why these ranges
//!
//! A candidate is a [`CpuVariant`] plus the worker-thread count. The default knob ranges
//! ([`CpuKnobs::for_spec`]) keep the region where the backend's good variants live (measured
//! on a Zen 3 core: 1-wide key/value tiles leave the FMA chains latency-bound, 4-wide ones
//! spill next to 4 rows, unroll 4 spills):
//!
//! | knob | values | why |
//! |---|---|---|
//! | `rows` | 1, 2, 4 | heads of a GQA group per register tile (pruned above the group) |
//! | `key_vectors` | 2, 3 | F32X4 key vectors per q·kᵀ tile (8–12 keys) |
//! | `value_vectors` | 2, 3 | F32X4 value vectors per p·v tile |
//! | `key_tile` | 64 (and 128 with a window branch) | only the window branch tiles its keys |
//! | `unroll` | 1, 2 | reduction unroll |
//! | `query_chunk` | 16, 64 | positions per parallel work item: fine vs coarse grain |
//! | `threads` | every core | on these kernels fewer threads never won; a list may say otherwise |
//! | `bwd_key_tile` | 64 | backward: keys per dq/dK/dV tile (a `--backward` tune may widen it) |
//! | `bwd_query_chunk` | 16 | backward: positions per dq work item |
//!
//! The two backward knobs hold one value each by default, so a forward tune measures the
//! same points as before. That is 48 points (96 with a window), measured exhaustively. Rejected before compiling,
//! each with its reason ([`PruneReason`]): [`CpuVariant::validate`] fails; more live F32X4
//! registers than the 16 xmm registers of x86-64 ([`CpuVariant::registers`], the backend's own
//! count); `rows` larger than the GQA group (the tile would be partly empty); more threads than
//! cores.
//!
//! # The tuning problem
//!
//! Candidates are timed (and checked) on a proxy of the requested problem ([`tuning_shape`]):
//! one batch row and one kv head with the same GQA group, dims and dtype — what the generated
//! code is specialized on; more kv heads or rows only add independent work items — at the
//! longest power-of-two length up to T whose work (by `compiler::cost`) stays under
//! [`TUNE_WORK_GFLOP`], so that one run takes tens of milliseconds and a full tune fits in a
//! minute on two cores. Per-position work stops growing once the selection saturates
//! (T ≥ top·block), which the proxy reaches for the library specs at their benchmark dims; the
//! result is stored under the requested shape's key.
//!
//! # Checking
//!
//! Every candidate that would become the best is run on a small odd-length problem
//! ([`CHECK_SEQ_LEN`] tokens, the seeds of [`super::check`], the tuning problem's heads and dims)
//! and compared with the f64 oracle there: max|o−ref|/max|ref| ≤ [`CHECK_TOLERANCE`] for `o` and
//! every branch, selected blocks the oracle's or a valid near-tie choice.

use super::cached::{CachedTuneError, Tuned, stored, tune_cached_at};
use super::check::{CheckCase, Mismatch, Produced, check_cases, check_shape, compare};
use super::db::{DbError, DbWarning, TuningDb, Warned};
use super::fingerprint::DeviceFingerprint;
use super::key::TuneKey;
use super::space::{Dimension, Point, PruneReason, VariantSpace};
use super::tuner::{BenchError, Benchmark, Progress, TuneOptions};
use crate::cpu::{CpuKernel, CpuKernelError};
use nsac_compiler::cpu::CpuVariant;
use nsac_dsl::Spec;
use nsac_dsl::problem::{Problem, Shape};
use nsac_kernels::io::{Inputs, random_inputs};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// One point of the CPU space: how the kernel is generated, and on how many threads it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CpuCandidate {
    pub variant: CpuVariant,
    pub threads: usize,
}

/// The x86-64 vector registers (xmm0–15) the register tiles must fit in.
pub const VECTOR_REGISTERS: u32 = 16;

/// Tokens of the check problem: odd, and not a multiple of any library block size.
pub const CHECK_SEQ_LEN: usize = 203;

/// The largest max|o−ref|/max|ref| a candidate may have (docs/ARCHITECTURE.md §4).
pub const CHECK_TOLERANCE: f64 = 1e-5;

/// The values each knob may take (before pruning).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuKnobs {
    pub rows: Vec<u32>,
    pub key_vectors: Vec<u32>,
    pub value_vectors: Vec<u32>,
    pub key_tile: Vec<u32>,
    pub unroll: Vec<u32>,
    pub query_chunk: Vec<u32>,
    pub threads: Vec<usize>,
    #[serde(default = "default_bwd_key_tiles")]
    pub bwd_key_tile: Vec<u32>,
    #[serde(default = "default_bwd_query_chunks")]
    pub bwd_query_chunk: Vec<u32>,
}

fn default_bwd_key_tiles() -> Vec<u32> {
    vec![CpuVariant::default().bwd_key_tile]
}

fn default_bwd_query_chunks() -> Vec<u32> {
    vec![CpuVariant::default().bwd_query_chunk]
}

impl Default for CpuKnobs {
    /// The ranges documented in the module docs for a spec without a window branch, all
    /// cores of this machine.
    fn default() -> Self {
        CpuKnobs {
            rows: vec![1, 2, 4],
            key_vectors: vec![2, 3],
            value_vectors: vec![2, 3],
            key_tile: vec![64],
            unroll: vec![1, 2],
            query_chunk: vec![16, 64],
            threads: vec![available_cores()],
            bwd_key_tile: default_bwd_key_tiles(),
            bwd_query_chunk: default_bwd_query_chunks(),
        }
    }
}

impl CpuKnobs {
    /// The default ranges for `spec`: `key_tile` varies only when it has a window branch.
    pub fn for_spec(spec: &Spec) -> Self {
        let mut knobs = CpuKnobs::default();
        if spec.branches.iter().any(|b| b.as_window().is_some()) {
            knobs.key_tile.push(128);
        }
        knobs
    }
}

/// Largest work (cost-model GFLOP) of the problem candidates are timed on.
pub const TUNE_WORK_GFLOP: f64 = 3.0;

/// The smallest proxy length (unless T itself is smaller).
pub const TUNE_MIN_SEQ_LEN: usize = 256;

/// The problem candidates are timed on for `shape` (see the module docs): one row, one kv head
/// of the same group, at the longest power-of-two length (at least [`TUNE_MIN_SEQ_LEN`], at
/// most the longest segment) whose work is under [`TUNE_WORK_GFLOP`].
pub fn tuning_shape(spec: &Spec, shape: &Shape) -> Shape {
    let longest = shape
        .segments
        .iter()
        .map(|(s, e)| e - s)
        .max()
        .unwrap_or(shape.seq_len)
        .max(1);
    let at = |len: usize| {
        let s = tuning_shape_at(spec, shape, len)?;
        let gflop = nsac_compiler::cost::estimate(spec, &s).ok()?.flops.total / 1e9;
        Some((s, gflop))
    };
    let mut len = TUNE_MIN_SEQ_LEN.min(longest);
    let Some((mut best, _)) = at(len) else {
        return shape.clone();
    };
    while len * 2 <= longest {
        len *= 2;
        match at(len) {
            Some((s, gflop)) if gflop <= TUNE_WORK_GFLOP => best = s,
            _ => break,
        }
    }
    best
}

/// The proxy of `shape` at length `len`: one row, one kv head of the same group, the same dims
/// and dtype (what [`tuning_shape`] picks among, and what a stored entry's `timed_seq_len`
/// names).
pub fn tuning_shape_at(spec: &Spec, shape: &Shape, len: usize) -> Option<Shape> {
    let group = (shape.heads.q / shape.heads.kv.max(1)).max(1);
    let mut problem = Problem::batched(1, len);
    problem.heads = Some(nsac_dsl::spec::Heads { q: group, kv: 1 });
    problem.head_dim = Some(shape.head_dim);
    problem.dtype = shape.dtype;
    problem.resolve(spec).ok()
}

/// Cores this process may run on.
pub fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The CPU Variant space of one spec on one problem shape.
#[derive(Debug, Clone)]
pub struct CpuSpace {
    knobs: CpuKnobs,
    /// Query heads per kv head.
    group: u32,
    cores: usize,
    default: CpuCandidate,
}

impl CpuSpace {
    /// The space of `knobs` for `shape`, on this machine's cores.
    pub fn new(shape: &Shape, knobs: CpuKnobs) -> Self {
        Self::with_cores(shape, knobs, available_cores())
    }

    /// The space as if the machine had `cores` cores (for tests and offline planning).
    pub fn with_cores(shape: &Shape, mut knobs: CpuKnobs, cores: usize) -> Self {
        let default = CpuCandidate {
            variant: CpuVariant::default(),
            threads: cores.max(1),
        };
        // The default must be a point of the grid: it is the baseline the tuner reports.
        let v = default.variant;
        add_value(&mut knobs.rows, v.rows);
        add_value(&mut knobs.key_vectors, v.key_vectors);
        add_value(&mut knobs.value_vectors, v.value_vectors);
        add_value(&mut knobs.key_tile, v.key_tile);
        add_value(&mut knobs.unroll, v.unroll);
        add_value(&mut knobs.query_chunk, v.query_chunk);
        add_value(&mut knobs.bwd_key_tile, v.bwd_key_tile);
        add_value(&mut knobs.bwd_query_chunk, v.bwd_query_chunk);
        add_value(&mut knobs.threads, default.threads);
        let group = (shape.heads.q / shape.heads.kv.max(1)).max(1);
        CpuSpace {
            knobs,
            group,
            cores: cores.max(1),
            default,
        }
    }

    pub fn knobs(&self) -> &CpuKnobs {
        &self.knobs
    }

    pub fn default_candidate(&self) -> CpuCandidate {
        self.default
    }
}

fn add_value<T: PartialEq + Ord + Copy>(values: &mut Vec<T>, value: T) {
    if !values.contains(&value) {
        values.push(value);
        values.sort_unstable();
    }
}

fn position<T: PartialEq>(values: &[T], value: &T) -> usize {
    values.iter().position(|v| v == value).unwrap_or(0)
}

fn pick<T: Copy + Default>(values: &[T], index: usize) -> T {
    values.get(index).copied().unwrap_or_default()
}

impl VariantSpace for CpuSpace {
    type Variant = CpuCandidate;

    fn dimensions(&self) -> Vec<Dimension> {
        let k = &self.knobs;
        vec![
            Dimension::new("rows", &k.rows),
            Dimension::new("key_vectors", &k.key_vectors),
            Dimension::new("value_vectors", &k.value_vectors),
            Dimension::new("key_tile", &k.key_tile),
            Dimension::new("unroll", &k.unroll),
            Dimension::new("query_chunk", &k.query_chunk),
            Dimension::new("threads", &k.threads),
            Dimension::new("bwd_key_tile", &k.bwd_key_tile),
            Dimension::new("bwd_query_chunk", &k.bwd_query_chunk),
        ]
    }

    fn variant_at(&self, point: &[usize]) -> CpuCandidate {
        let k = &self.knobs;
        let at = |d: usize| point.get(d).copied().unwrap_or(0);
        CpuCandidate {
            variant: CpuVariant {
                rows: pick(&k.rows, at(0)),
                key_vectors: pick(&k.key_vectors, at(1)),
                value_vectors: pick(&k.value_vectors, at(2)),
                key_tile: pick(&k.key_tile, at(3)),
                unroll: pick(&k.unroll, at(4)),
                query_chunk: pick(&k.query_chunk, at(5)),
                bwd_key_tile: pick(&k.bwd_key_tile, at(7)),
                bwd_query_chunk: pick(&k.bwd_query_chunk, at(8)),
            },
            threads: pick(&k.threads, at(6)),
        }
    }

    fn default_point(&self) -> Point {
        let k = &self.knobs;
        let v = &self.default.variant;
        vec![
            position(&k.rows, &v.rows),
            position(&k.key_vectors, &v.key_vectors),
            position(&k.value_vectors, &v.value_vectors),
            position(&k.key_tile, &v.key_tile),
            position(&k.unroll, &v.unroll),
            position(&k.query_chunk, &v.query_chunk),
            position(&k.threads, &self.default.threads),
            position(&k.bwd_key_tile, &v.bwd_key_tile),
            position(&k.bwd_query_chunk, &v.bwd_query_chunk),
        ]
    }

    fn check(&self, candidate: &CpuCandidate) -> Result<(), PruneReason> {
        let v = &candidate.variant;
        v.validate()
            .map_err(|e| PruneReason::Incompatible(e.to_string()))?;
        let registers = v.registers();
        if registers > VECTOR_REGISTERS {
            return Err(PruneReason::ExceedsLimit {
                resource: "F32X4 registers".into(),
                needed: registers.into(),
                available: VECTOR_REGISTERS.into(),
            });
        }
        if v.rows > self.group {
            return Err(PruneReason::NotDivisible {
                knob: "rows".into(),
                value: v.rows.into(),
                what: "the GQA group (query heads per kv head)".into(),
                size: self.group.into(),
            });
        }
        if candidate.threads == 0 || candidate.threads > self.cores {
            return Err(PruneReason::ExceedsLimit {
                resource: "threads".into(),
                needed: candidate.threads as u64,
                available: self.cores as u64,
            });
        }
        Ok(())
    }
}

/// Why a candidate failed its oracle check (or the check could not be set up).
#[derive(Debug, thiserror::Error)]
pub enum CpuCheckError {
    #[error(transparent)]
    Kernel(#[from] CpuKernelError),
    #[error(transparent)]
    Mismatch(#[from] Mismatch),
}

/// Compiles, times and checks CPU candidates for one spec and tuning shape.
pub struct CpuBench {
    spec: Spec,
    shape: Shape,
    inputs: Inputs,
    check_shape: Shape,
    cases: Vec<CheckCase>,
}

impl CpuBench {
    /// A benchmark of `spec` on the [`tuning_shape`] of `shape` (random inputs made once), with
    /// the oracle's answers on the check problem (the tuning shape's heads and dims,
    /// [`CHECK_SEQ_LEN`] tokens) computed up front.
    pub fn new(spec: &Spec, shape: &Shape) -> Result<Self, CpuCheckError> {
        let tuning = tuning_shape(spec, shape);
        let check_shape = check_shape(spec, &tuning, CHECK_SEQ_LEN).map_err(Mismatch::from)?;
        let cases = check_cases(spec, &check_shape, None).map_err(Mismatch::from)?;
        Ok(CpuBench {
            spec: spec.clone(),
            inputs: random_inputs(spec, &tuning, 0x1234),
            shape: tuning,
            check_shape,
            cases,
        })
    }

    /// The shape candidates are timed on.
    pub fn timing_shape(&self) -> &Shape {
        &self.shape
    }

    /// The shape of the check problem.
    pub fn check_shape(&self) -> &Shape {
        &self.check_shape
    }

    /// Runs `kernel` (compiled for [`CpuBench::check_shape`]) on every check seed and compares
    /// it with the oracle.
    pub fn check_kernel(&self, kernel: &CpuKernel, threads: usize) -> Result<(), CpuCheckError> {
        for case in &self.cases {
            self.check_case(kernel, threads, case)?;
        }
        Ok(())
    }

    fn check_case(
        &self,
        kernel: &CpuKernel,
        threads: usize,
        case: &CheckCase,
    ) -> Result<(), CpuCheckError> {
        let got = kernel.run(&case.inputs, threads)?;
        let produced = Produced {
            o: &got.o,
            branches: &got.branches,
            selected: &got.selected,
        };
        compare(
            &self.spec,
            &self.check_shape,
            case,
            produced,
            CHECK_TOLERANCE,
        )?;
        Ok(())
    }
}

/// A candidate compiled for the tuning problem, with the threads it runs on.
pub struct CompiledCandidate {
    kernel: CpuKernel,
    threads: usize,
}

impl Benchmark<CpuCandidate> for CpuBench {
    type Kernel = CompiledCandidate;

    fn compile(&self, candidate: &CpuCandidate) -> Result<CompiledCandidate, BenchError> {
        let kernel = CpuKernel::compile(&self.spec, &self.shape, &candidate.variant)?;
        Ok(CompiledCandidate {
            kernel,
            threads: candidate.threads,
        })
    }

    fn time_once(&self, compiled: &mut CompiledCandidate) -> Result<Duration, BenchError> {
        let start = Instant::now();
        let out = compiled.kernel.run(&self.inputs, compiled.threads)?;
        let elapsed = start.elapsed();
        drop(std::hint::black_box(out));
        Ok(elapsed)
    }

    fn check(&self, candidate: &CpuCandidate) -> Result<(), BenchError> {
        let kernel = CpuKernel::compile(&self.spec, &self.check_shape, &candidate.variant)?;
        Ok(self.check_kernel(&kernel, candidate.threads)?)
    }
}

/// How [`tune_cpu`] searches: the knob ranges and the tuner's options.
#[derive(Debug, Clone, PartialEq)]
pub struct CpuTuneOptions {
    pub knobs: CpuKnobs,
    pub tune: TuneOptions,
}

impl CpuTuneOptions {
    /// The default ranges for `spec` ([`CpuKnobs::for_spec`]); one warm-up and three timed runs
    /// per candidate (a run of the proxy problem takes tens of milliseconds), then the four
    /// fastest and the default confirmed over five rounds.
    pub fn for_spec(spec: &Spec) -> Self {
        CpuTuneOptions {
            knobs: CpuKnobs::for_spec(spec),
            tune: TuneOptions {
                warmup: 1,
                repeats: 3,
                confirm_finalists: 4,
                confirm_rounds: 5,
                ..TuneOptions::default()
            },
        }
    }
}

/// Why CPU tuning failed.
#[derive(Debug, thiserror::Error)]
pub enum CpuTuneError {
    #[error("could not set up the oracle check: {0}")]
    Check(#[from] CpuCheckError),
    #[error(transparent)]
    Tune(#[from] CachedTuneError),
}

/// The tuning-DB key of `spec` on `shape` on this CPU.
pub fn cpu_key(spec: &Spec, shape: &Shape) -> TuneKey {
    TuneKey::for_spec(spec, shape, DeviceFingerprint::this_cpu())
}

/// The best CPU candidate for `spec` on `shape` (bucketed by T): from `db` unless `retune` or
/// the DB has nothing current for this CPU and nsac version; otherwise tunes and records it.
pub fn tune_cpu(
    spec: &Spec,
    shape: &Shape,
    db: &TuningDb,
    options: &CpuTuneOptions,
    retune: bool,
    progress: &mut dyn FnMut(Progress),
) -> Result<(Tuned<CpuCandidate>, Vec<DbWarning>), CpuTuneError> {
    tune_cpu_for_key(
        &cpu_key(spec, shape),
        spec,
        shape,
        db,
        options,
        retune,
        progress,
    )
}

/// [`tune_cpu`] under an explicit key (tests use another fingerprint or version).
pub fn tune_cpu_for_key(
    key: &TuneKey,
    spec: &Spec,
    shape: &Shape,
    db: &TuningDb,
    options: &CpuTuneOptions,
    retune: bool,
    progress: &mut dyn FnMut(Progress),
) -> Result<(Tuned<CpuCandidate>, Vec<DbWarning>), CpuTuneError> {
    let space = CpuSpace::new(shape, options.knobs.clone());
    let bench = CpuBench::new(spec, shape)?;
    Ok(tune_cached_at(
        db,
        key,
        &space,
        &bench,
        &options.tune,
        retune,
        Some(tuning_shape(spec, shape).seq_len),
        progress,
    )?)
}

/// The tuned candidate the DB holds for `spec` on `shape` on this CPU and nsac version, if any
/// (and if it still fits this machine). Looks up only: never compiles or tunes.
pub fn tuned_cpu_variant(spec: &Spec, shape: &Shape, db: &TuningDb) -> Option<CpuCandidate> {
    tuned_cpu_variant_warned(spec, shape, db).ok()?.value
}

/// [`tuned_cpu_variant`] with the DB's warnings and errors (a DB path that is not a regular
/// file, a corrupt file set aside, a newer schema) for the caller to print.
pub fn tuned_cpu_variant_warned(
    spec: &Spec,
    shape: &Shape,
    db: &TuningDb,
) -> Result<Warned<Option<CpuCandidate>>, DbError> {
    let space = CpuSpace::new(shape, CpuKnobs::default());
    let found = stored(db, &cpu_key(spec, shape), &space)?;
    Ok(Warned {
        value: found.value.map(|tuned| *tuned.variant()),
        warnings: found.warnings,
    })
}
