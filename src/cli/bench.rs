//! `nsac bench`: time a spec on this machine's CPU and put the number next to the two numbers
//! that matter — the work (FLOPs) and the ceiling (a JIT'd 128-bit FMA loop, same run) — or on a
//! CUDA GPU, with CUDA-event times of the whole call and of each kernel.

use std::sync::Arc;

use nsac_compiler::cost;
use nsac_compiler::ir::Sizes;
use nsac_compiler::ptx::GpuVariant;
use nsac_dsl::Spec;
use nsac_dsl::problem::{DType, Sequences, Shape};
use nsac_kernels::io::random_inputs;
use nsac_runtime::bench::{BenchOptions, bench_cpu, bench_cpu_backward};
use nsac_runtime::cuda::{CudaDevice, CudaKernel, GpuCeiling};
use serde::Serialize;

use super::args::{BenchArgs, DeviceArg};
use super::budget;
use super::device::{
    CpuChoice, GpuChoice, VariantSource, checked_threads, default_threads, gpu_ceiling,
};
use super::error::CliError;
use super::output::{emit_json, emit_line};
use super::problem::{describe, problem_from_args};
use super::tune::open_gpu;

pub fn run(args: &BenchArgs) -> Result<(), CliError> {
    let spec = nsac_dsl::load(&args.spec)?;
    let shape = problem_from_args(&args.problem)?.resolve(&spec)?;
    let threads = default_threads(checked_threads(args.threads)?);
    budget::check(&spec, &shape, threads, false, &args.budget)?;
    if args.backward {
        return bench_backward(args, &spec, &shape);
    }
    if args.oracle_seq > 0 {
        // The reference is timed on its own problem (same B, heads and dims): budget it too.
        let mut oracle = problem_from_args(&args.problem)?;
        oracle.sequences = Sequences::Batched {
            batch: shape.batch,
            len: args.oracle_seq,
        };
        oracle.heads = Some(shape.heads);
        oracle.head_dim = Some(shape.head_dim);
        budget::check(&spec, &oracle.resolve(&spec)?, 1, true, &args.budget)?;
    }
    if args.runs == 0 {
        return Err(CliError::Other("--runs must be at least 1".into()));
    }
    let source = VariantSource {
        variant: args.variant.as_deref(),
        db: args.db.as_deref(),
        threads: args.threads,
    };
    match args.device {
        DeviceArg::Reference => {
            return Err(CliError::Other(
                "`nsac bench` measures a compiled backend: --device cpu, cuda or auto".into(),
            ));
        }
        DeviceArg::Cuda => return bench_gpu(args, &spec, &shape, &open_gpu()?, &source),
        DeviceArg::Auto => {
            if let Some(gpu) = CudaDevice::open().ok().flatten() {
                return bench_gpu(args, &spec, &shape, &gpu, &source);
            }
        }
        DeviceArg::Cpu => {}
    }
    let options = BenchOptions {
        runs: args.runs,
        oracle_seq_len: (args.oracle_seq > 0).then_some(args.oracle_seq),
        ..BenchOptions::default()
    };
    let cpu = CpuChoice::pick(&spec, &shape, &source)?;
    if !args.json {
        eprintln!("using the {} CPU variant", cpu.origin);
    }
    let report = bench_cpu(&spec, &shape, &cpu.variant, cpu.threads, &options)?;
    if args.json {
        emit_json(&report).map_err(CliError::Stdout)
    } else {
        emit_line(&report.to_string()).map_err(CliError::Stdout)
    }
}

/// `bench --backward`: the CPU's training pair (`auto` means the CPU: the GPU has no backward).
fn bench_backward(args: &BenchArgs, spec: &Spec, shape: &Shape) -> Result<(), CliError> {
    if args.runs == 0 {
        return Err(CliError::Other("--runs must be at least 1".into()));
    }
    if args.device == DeviceArg::Cuda {
        return Err(CliError::Other(
            "backward on the GPU is not built yet: `bench --backward` runs on --device cpu".into(),
        ));
    }
    if shape.dtype != DType::F32 {
        return Err(CliError::Other(format!(
            "the CPU backward computes in f32 only (got --dtype {}): pass --dtype f32",
            shape.dtype.name()
        )));
    }
    let source = VariantSource {
        variant: args.variant.as_deref(),
        db: args.db.as_deref(),
        threads: args.threads,
    };
    let cpu = CpuChoice::pick(spec, shape, &source)?;
    if !args.json {
        eprintln!("using the {} CPU variant", cpu.origin);
    }
    let options = BenchOptions {
        runs: args.runs,
        oracle_seq_len: None,
        ..BenchOptions::default()
    };
    let report = bench_cpu_backward(spec, shape, &cpu.variant, cpu.threads, &options)?;
    if args.json {
        emit_json(&report).map_err(CliError::Stdout)
    } else {
        emit_line(&report.to_string()).map_err(CliError::Stdout)
    }
}

/// What `bench --device cuda` reports (`--json` prints exactly this).
#[derive(Debug, Serialize)]
struct GpuBenchReport {
    spec: String,
    shape: String,
    device: String,
    /// `explicit`, `tuned` or `default`, and the Variant itself.
    variant_origin: &'static str,
    variant: GpuVariant,
    /// Median device time of the whole call (every kernel, one stream), CUDA events.
    median_ms: f64,
    /// Attention FLOPs of the problem (cost model) per second.
    gflops: f64,
    /// This GPU's measured ceiling for the problem's arithmetic, and `gflops` over it.
    ceiling: GpuCeiling,
    ceiling_ratio: f64,
    /// Median time of each kernel launched alone, in launch order.
    kernels: Vec<(String, f64)>,
    runs: usize,
}

fn bench_gpu(
    args: &BenchArgs,
    spec: &Spec,
    shape: &Shape,
    gpu: &Arc<CudaDevice>,
    source: &VariantSource<'_>,
) -> Result<(), CliError> {
    let choice = GpuChoice::pick(gpu, spec, shape, source)?;
    if !args.json {
        eprintln!(
            "using the {} GPU variant: {}",
            choice.origin, choice.variant
        );
    }
    let kernel = CudaKernel::compile(gpu, spec, shape, &choice.variant)?;
    let inputs = random_inputs(spec, shape, 0);
    let (median_ms, per_kernel) = kernel.time(&Sizes::of(shape), &inputs, 2, args.runs)?;
    let median_ms = f64::from(median_ms);
    let flops = cost::estimate(spec, shape)?.flops.attention;
    let gflops = flops / (median_ms / 1e3) / 1e9;
    let ceiling = gpu_ceiling(gpu, spec, shape)?;
    let (major, minor) = gpu.capability();
    let report = GpuBenchReport {
        spec: spec.name.clone(),
        shape: describe(shape),
        device: format!("{} (sm_{major}{minor})", gpu.name()),
        variant_origin: choice.origin,
        variant: choice.variant,
        median_ms,
        gflops,
        ceiling_ratio: gflops / ceiling.gflops,
        ceiling,
        kernels: per_kernel
            .into_iter()
            .map(|k| (k.kernel, f64::from(k.median_ms)))
            .collect(),
        runs: args.runs,
    };
    if args.json {
        return emit_json(&report).map_err(CliError::Stdout);
    }
    let mut text = format!(
        "spec     {}\nproblem  {}\ndevice   {}\nvariant  {} ({})\ntime     {:.3} ms (median of {} runs, CUDA events)\nrate     {:.1} GFLOP/s\nceiling  {:.1} GFLOP/s ({}, measured) -> {:.1}%\nkernels\n",
        report.spec,
        report.shape,
        report.device,
        report.variant,
        report.variant_origin,
        report.median_ms,
        report.runs,
        report.gflops,
        report.ceiling.gflops,
        report.ceiling.probe,
        100.0 * report.ceiling_ratio
    );
    for (name, ms) in &report.kernels {
        text.push_str(&format!("  {ms:9.3} ms  {name}\n"));
    }
    emit_line(&text).map_err(CliError::Stdout)
}
