//! CPU benchmark of a compiled spec: median time after warm-up, achieved GFLOP/s
//! (docs/ARCHITECTURE.md §5: 2·(Dqk+Dv) FLOPs per attended key per query head), the 128-bit FMA
//! ceiling of this machine measured in the same run by a JIT'd F32X4 FMA loop (sampled before and
//! after every timed run), their ratio, and the speed-up over the
//! f64 reference oracle (timed on a shorter sequence when asked, compared per FLOP).
//!
//! FLOPs are counted here from the plan and the indices the kernel chose (compressed tokens
//! visible, keys of the chosen blocks up to t, window keys), not from `compiler::cost`.
//!
//! The backward benchmark ([`bench_cpu_backward`]) times the forward with saved state and the
//! backward side by side, and counts the backward's work as 2.5× the forward's attention FLOPs
//! (FlashAttention's convention: dV, dP, dQ, dK and the recomputed S, against the forward's S
//! and O), whatever the kernel actually recomputes, so that rates compare across libraries.

use std::fmt;
use std::time::Instant;

use nsac_compiler::cpu::{CpuVariant, PEAK_FLOPS_PER_ITER, compile_peak};
use nsac_compiler::ir::{KeySet, Op, Plan, Sizes, rules};
use nsac_dsl::problem::{Problem, Sequences, Shape};
use nsac_dsl::spec::Spec;
use nsac_kernels::io::{random_inputs, random_upstream};
use nsac_kernels::reference;
use rayon::prelude::*;
use serde::Serialize;

use crate::cpu::{CpuKernel, CpuKernelError, CpuOutput};

/// How to benchmark.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchOptions {
    pub warmup: usize,
    pub runs: usize,
    /// Time the oracle on a batched problem of this length (None: skip the oracle).
    pub oracle_seq_len: Option<usize>,
    pub seed: u64,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            warmup: 1,
            runs: 5,
            oracle_seq_len: Some(1024),
            seed: 0,
        }
    }
}

/// Why a benchmark failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Kernel(#[from] CpuKernelError),
    #[error(transparent)]
    Codegen(#[from] nsac_compiler::cpu::CpuError),
    #[error("the oracle failed: {0}")]
    Oracle(String),
    #[error("runs must be at least 1")]
    NoRuns,
}

/// One benchmark result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchReport {
    pub spec: String,
    pub batch: usize,
    pub seq_len: usize,
    pub heads_q: usize,
    pub heads_kv: usize,
    pub dqk: usize,
    pub dv: usize,
    pub threads: usize,
    pub variant: CpuVariant,
    pub compile_ms: f64,
    pub median_ms: f64,
    pub runs: usize,
    /// Attention FLOPs of one call (docs/ARCHITECTURE.md §5).
    pub flops: f64,
    pub gflops: f64,
    /// The measured 128-bit F32X4 FMA ceiling with `threads` threads: the median of the
    /// samples taken around each timed run.
    pub fma_ceiling_gflops: f64,
    /// The median over runs of (GFLOP/s of the run) / (the ceiling sampled around it).
    pub ceiling_ratio: f64,
    /// The oracle's time on `oracle_seq_len` (single call).
    pub oracle_ms: Option<f64>,
    pub oracle_seq_len: Option<usize>,
    /// Oracle GFLOP/s on its (shorter) problem; the speed-up is the ratio of GFLOP/s.
    pub oracle_gflops: Option<f64>,
    pub speedup_vs_oracle: Option<f64>,
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}: B={} T={} heads {}/{} dims {}/{} f32, {} threads",
            self.spec,
            self.batch,
            self.seq_len,
            self.heads_q,
            self.heads_kv,
            self.dqk,
            self.dv,
            self.threads
        )?;
        writeln!(f, "  compile      {:>10.2} ms", self.compile_ms)?;
        writeln!(
            f,
            "  median       {:>10.3} ms over {} runs",
            self.median_ms, self.runs
        )?;
        writeln!(
            f,
            "  work         {:>10.3} GFLOP  -> {:.2} GFLOP/s",
            self.flops / 1e9,
            self.gflops
        )?;
        writeln!(
            f,
            "  ceiling      {:>10.2} GFLOP/s (128-bit FMA, measured) -> {:.1}%",
            self.fma_ceiling_gflops,
            100.0 * self.ceiling_ratio
        )?;
        if let (Some(ms), Some(t), Some(g), Some(s)) = (
            self.oracle_ms,
            self.oracle_seq_len,
            self.oracle_gflops,
            self.speedup_vs_oracle,
        ) {
            writeln!(
                f,
                "  oracle       {ms:>10.1} ms at T={t} ({g:.3} GFLOP/s) -> speed-up {s:.0}x"
            )?;
        }
        Ok(())
    }
}

/// Attention FLOPs of one call on `sizes` given the indices the kernel chose.
pub fn attention_flops(plan: &Plan, sizes: &Sizes, out: &CpuOutput) -> f64 {
    let d = &plan.consts;
    let per_key = 2.0 * (d.dqk + d.dv) as f64 * d.heads_q as f64;
    let batch = sizes.batch;
    let mut keys = 0.0f64;
    for op in &plan.ops {
        let Op::Attend(a) = op else { continue };
        for &(s, e) in &sizes.segments {
            let len = e - s;
            match &a.keys {
                KeySet::Compressed { block, stride } => {
                    let n: usize = (0..len)
                        .map(|t| rules::visible_compressed(t, len, *block, *stride, d.causal))
                        .sum();
                    keys += (n * batch) as f64;
                }
                KeySet::Window { size } => {
                    let n: usize = (0..len)
                        .map(|t| rules::window_keys(t, len, *size, d.causal).len())
                        .sum();
                    keys += (n * batch) as f64;
                }
                KeySet::Causal => {
                    let n: usize = (0..len)
                        .map(|t| rules::causal_keys(t, len, d.causal).len())
                        .sum();
                    keys += (n * batch) as f64;
                }
                KeySet::Gather { granularity, .. } => {
                    let Some(idx) = out.selected.get(&a.branch) else {
                        continue;
                    };
                    let top = idx.shape.last().copied().unwrap_or(0);
                    for b in 0..batch {
                        for t in 0..len {
                            for h in 0..d.heads_kv {
                                let base = (((b * sizes.queries) + s + t) * d.heads_kv + h) * top;
                                for &i in &idx.data[base..base + top] {
                                    if i < 0 {
                                        continue;
                                    }
                                    let n = rules::block_keys(
                                        i as usize,
                                        *granularity,
                                        t,
                                        len,
                                        d.causal,
                                    )
                                    .len();
                                    keys += n as f64 / d.heads_kv as f64;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    // Selected keys were summed per kv head; every query head of the group attends them.
    keys * per_key
}

/// The JIT'd FMA probe with its thread pool, to sample the ceiling next to each timed run.
pub struct CeilingProbe {
    peak: nsac_compiler::cpu::PeakProgram,
    pool: rayon::ThreadPool,
    threads: usize,
}

impl CeilingProbe {
    pub fn new(threads: usize) -> Result<CeilingProbe, BenchError> {
        let threads = threads.max(1);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(|e| CpuKernelError::ThreadPool(e.to_string()))?;
        Ok(CeilingProbe {
            peak: compile_peak()?,
            pool,
            threads,
        })
    }

    /// GFLOP/s of `iters` probe rounds on every thread at once.
    pub fn sample(&self, iters: i64) -> f64 {
        let run = self.peak.run;
        let start = Instant::now();
        let sums: Vec<f32> = self.pool.install(|| {
            (0..self.threads)
                .into_par_iter()
                // SAFETY: `run` is the finalized probe (i64) -> f32, alive while `self` lives.
                .map(|_| unsafe { run(iters) })
                .collect()
        });
        let secs = start.elapsed().as_secs_f64();
        std::hint::black_box(sums);
        (PEAK_FLOPS_PER_ITER as f64) * iters as f64 * self.threads as f64 / secs / 1e9
    }
}

/// Probe rounds of one ceiling sample next to a timed run (about 10 ms per thread).
const SAMPLE_ITERS: i64 = 5_000_000;

/// The 128-bit FMA ceiling of this machine in GFLOP/s with `threads` threads, measured now
/// (best of three samples).
pub fn fma_ceiling(threads: usize) -> Result<f64, BenchError> {
    let probe = CeilingProbe::new(threads)?;
    Ok((0..3)
        .map(|_| probe.sample(4 * SAMPLE_ITERS))
        .fold(0.0, f64::max))
}

/// The upper median of a non-empty list.
pub(crate) fn median<T: Copy + PartialOrd>(mut xs: Vec<T>) -> T {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    xs[xs.len() / 2]
}

/// The times of `runs` calls, each between two ceiling samples so that a machine whose speed
/// drifts (other processes, frequency) affects both sides of the ratio alike.
#[derive(Default)]
struct Timed {
    secs: Vec<f64>,
    /// The mean of the samples before and after each run.
    ceilings: Vec<f64>,
}

impl Timed {
    fn extend(&mut self, other: Timed) {
        self.secs.extend(other.secs);
        self.ceilings.extend(other.ceilings);
    }

    fn median_secs(&self) -> f64 {
        median(self.secs.clone())
    }

    /// The median over runs of (GFLOP/s of the run) / (the ceiling sampled around it).
    fn ceiling_ratio(&self, flops: f64) -> f64 {
        median(
            self.secs
                .iter()
                .zip(&self.ceilings)
                .map(|(t, c)| flops / t / 1e9 / c)
                .collect(),
        )
    }
}

fn timed(
    probe: &CeilingProbe,
    runs: usize,
    mut call: impl FnMut() -> Result<(), BenchError>,
) -> Result<Timed, BenchError> {
    let mut t = Timed {
        secs: Vec::with_capacity(runs),
        ceilings: Vec::with_capacity(runs),
    };
    let mut before = probe.sample(SAMPLE_ITERS);
    for _ in 0..runs {
        let start = Instant::now();
        call()?;
        t.secs.push(start.elapsed().as_secs_f64());
        let after = probe.sample(SAMPLE_ITERS);
        t.ceilings.push((before + after) / 2.0);
        before = after;
    }
    Ok(t)
}

/// Benchmarks `spec` on `shape` under `variant` with `threads` threads.
pub fn bench_cpu(
    spec: &Spec,
    shape: &Shape,
    variant: &CpuVariant,
    threads: usize,
    opts: &BenchOptions,
) -> Result<BenchReport, BenchError> {
    if opts.runs == 0 {
        return Err(BenchError::NoRuns);
    }
    let kernel = CpuKernel::compile(spec, shape, variant)?;
    let inputs = random_inputs(spec, shape, opts.seed);
    let mut out = kernel.run(&inputs, threads)?;
    for _ in 1..opts.warmup {
        out = kernel.run(&inputs, threads)?;
    }
    let probe = CeilingProbe::new(threads)?;
    let runs = timed(&probe, opts.runs, || {
        out = kernel.run(&inputs, threads)?;
        Ok(())
    })?;
    let flops = attention_flops(kernel.plan(), &Sizes::of(kernel.shape()), &out);
    let med = runs.median_secs();
    let gflops = flops / med / 1e9;
    let ceiling = median(runs.ceilings.clone());
    let ceiling_ratio = runs.ceiling_ratio(flops);
    let (oracle_ms, oracle_gflops) = match opts.oracle_seq_len {
        Some(t) => {
            let mut p = Problem::batched(shape.batch, t);
            p.heads = Some(shape.heads);
            p.head_dim = Some(shape.head_dim);
            p.sequences = Sequences::Batched {
                batch: shape.batch,
                len: t,
            };
            let small = p.resolve(spec).map_err(CpuKernelError::from)?;
            let small_inputs = random_inputs(spec, &small, opts.seed);
            let start = Instant::now();
            reference::forward(spec, &small, &small_inputs)
                .map_err(|e| BenchError::Oracle(e.to_string()))?;
            let secs = start.elapsed().as_secs_f64();
            // Count the oracle's work with the CPU kernel's (identical) choices.
            let small_kernel = CpuKernel::compile(spec, &small, variant)?;
            let small_out = small_kernel.run(&small_inputs, threads)?;
            let f = attention_flops(
                small_kernel.plan(),
                &Sizes::of(small_kernel.shape()),
                &small_out,
            );
            (Some(secs * 1e3), Some(f / secs / 1e9))
        }
        None => (None, None),
    };
    Ok(BenchReport {
        spec: spec.name.clone(),
        batch: shape.batch,
        seq_len: shape.seq_len,
        heads_q: shape.heads.q as usize,
        heads_kv: shape.heads.kv as usize,
        dqk: shape.head_dim.qk as usize,
        dv: shape.head_dim.v as usize,
        threads,
        variant: *variant,
        compile_ms: kernel.compile_time().as_secs_f64() * 1e3,
        median_ms: med * 1e3,
        runs: opts.runs,
        flops,
        gflops,
        fma_ceiling_gflops: ceiling,
        ceiling_ratio,
        oracle_ms,
        oracle_seq_len: opts.oracle_seq_len,
        oracle_gflops,
        speedup_vs_oracle: oracle_gflops.map(|g| gflops / g),
    })
}

/// The backward's work per the FlashAttention convention: 2.5× the forward's attention FLOPs.
pub const BACKWARD_FLOPS_PER_FORWARD: f64 = 2.5;

/// One backward benchmark: the forward with saved state and the backward, timed in alternation
/// in the same run, each against the ceiling sampled around it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BackwardReport {
    pub spec: String,
    pub batch: usize,
    pub seq_len: usize,
    pub heads_q: usize,
    pub heads_kv: usize,
    pub dqk: usize,
    pub dv: usize,
    pub threads: usize,
    pub variant: CpuVariant,
    /// Code generation + JIT of the forward/backward pair.
    pub compile_ms: f64,
    pub runs: usize,
    /// Median of the forward with saved state (`forward_train`).
    pub forward_ms: f64,
    /// Median of the backward alone (given the forward's saved state).
    pub backward_ms: f64,
    /// `backward_ms / forward_ms`.
    pub backward_over_forward: f64,
    /// Attention FLOPs of the forward (as `nsac bench`).
    pub forward_flops: f64,
    /// [`BACKWARD_FLOPS_PER_FORWARD`] × `forward_flops`.
    pub backward_flops: f64,
    pub forward_gflops: f64,
    pub backward_gflops: f64,
    /// The measured 128-bit F32X4 FMA ceiling (median of the samples around every run).
    pub fma_ceiling_gflops: f64,
    pub forward_ceiling_ratio: f64,
    pub backward_ceiling_ratio: f64,
}

impl fmt::Display for BackwardReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} (training): B={} T={} heads {}/{} dims {}/{} f32, {} threads",
            self.spec,
            self.batch,
            self.seq_len,
            self.heads_q,
            self.heads_kv,
            self.dqk,
            self.dv,
            self.threads
        )?;
        writeln!(f, "  compile      {:>10.2} ms", self.compile_ms)?;
        writeln!(
            f,
            "  forward      {:>10.3} ms  {:>8.2} GFLOP/s  {:>5.1}% of the ceiling (median of {})",
            self.forward_ms,
            self.forward_gflops,
            100.0 * self.forward_ceiling_ratio,
            self.runs
        )?;
        writeln!(
            f,
            "  backward     {:>10.3} ms  {:>8.2} GFLOP/s  {:>5.1}% of the ceiling ({}x the forward's FLOPs)",
            self.backward_ms,
            self.backward_gflops,
            100.0 * self.backward_ceiling_ratio,
            BACKWARD_FLOPS_PER_FORWARD
        )?;
        writeln!(
            f,
            "  ratio        {:>10.2}   backward / forward time",
            self.backward_over_forward
        )?;
        writeln!(
            f,
            "  ceiling      {:>10.2} GFLOP/s (128-bit FMA, measured)",
            self.fma_ceiling_gflops
        )
    }
}

/// Benchmarks the training pair of `spec` on `shape`: `opts.runs` rounds of forward (with
/// saved state) then backward, on random inputs and a random upstream gradient from
/// `opts.seed`. The oracle is not timed (`opts.oracle_seq_len` is ignored).
pub fn bench_cpu_backward(
    spec: &Spec,
    shape: &Shape,
    variant: &CpuVariant,
    threads: usize,
    opts: &BenchOptions,
) -> Result<BackwardReport, BenchError> {
    if opts.runs == 0 {
        return Err(BenchError::NoRuns);
    }
    let kernel = CpuKernel::compile_train(spec, shape, variant)?;
    let sizes = Sizes::of(shape);
    let inputs = random_inputs(spec, shape, opts.seed);
    let d_o = random_upstream(shape, opts.seed);
    let (mut out, mut saved) = kernel.forward_train(&sizes, &inputs, threads)?;
    for _ in 0..opts.warmup {
        kernel.backward(&sizes, &inputs, &saved, &d_o, threads)?;
    }
    let probe = CeilingProbe::new(threads)?;
    let mut forward = Timed::default();
    let mut backward = Timed::default();
    for _ in 0..opts.runs {
        forward.extend(timed(&probe, 1, || {
            (out, saved) = kernel.forward_train(&sizes, &inputs, threads)?;
            Ok(())
        })?);
        backward.extend(timed(&probe, 1, || {
            kernel.backward(&sizes, &inputs, &saved, &d_o, threads)?;
            Ok(())
        })?);
    }
    let forward_flops = attention_flops(kernel.plan(), &sizes, &out);
    let backward_flops = BACKWARD_FLOPS_PER_FORWARD * forward_flops;
    let (fwd, bwd) = (forward.median_secs(), backward.median_secs());
    let mut ceilings = forward.ceilings.clone();
    ceilings.extend(&backward.ceilings);
    Ok(BackwardReport {
        spec: spec.name.clone(),
        batch: shape.batch,
        seq_len: shape.seq_len,
        heads_q: shape.heads.q as usize,
        heads_kv: shape.heads.kv as usize,
        dqk: shape.head_dim.qk as usize,
        dv: shape.head_dim.v as usize,
        threads,
        variant: *variant,
        compile_ms: kernel.compile_time().as_secs_f64() * 1e3,
        runs: opts.runs,
        forward_ms: fwd * 1e3,
        backward_ms: bwd * 1e3,
        backward_over_forward: bwd / fwd,
        forward_flops,
        backward_flops,
        forward_gflops: forward_flops / fwd / 1e9,
        backward_gflops: backward_flops / bwd / 1e9,
        fma_ceiling_gflops: median(ceilings),
        forward_ceiling_ratio: forward.ceiling_ratio(forward_flops),
        backward_ceiling_ratio: backward.ceiling_ratio(backward_flops),
    })
}
