//! Running a spec on one of the devices (`--device reference|cpu|cuda|auto`) and collecting its
//! outputs under the oracle's names, whatever the device computed them in.

use std::collections::BTreeMap;
use std::time::Instant;

use nsac_compiler::cpu::CpuVariant;
use nsac_compiler::ptx::GpuVariant;
use nsac_kernels::io::Tensor;
use nsac_runtime::cpu::CpuKernel;

use nsac_dsl::Spec;
use nsac_dsl::problem::Shape;
use nsac_kernels::io::Inputs;
use nsac_kernels::reference;
use nsac_runtime::cuda::{CudaDevice, CudaKernel};
use nsac_runtime::tensor_io::{HostTensor, TensorSet, reference_outputs};

use super::args::DeviceArg;
use super::error::CliError;

/// What a device run produced.
pub struct DeviceRun {
    /// The device's name as shown to the user.
    pub device: String,
    /// `o`, every `o_<branch>` and every `idx_<branch>`.
    pub outputs: TensorSet,
    /// Compilation (JIT or module load) time, if the device compiles.
    pub compile_ms: Option<f64>,
    /// Time of the computation alone.
    pub run_ms: f64,
}

/// Where the Variant of a run comes from: `--variant`, else the tuning database, else the
/// default; and `--threads` for the CPU.
pub struct VariantSource<'a> {
    pub variant: Option<&'a str>,
    pub db: Option<&'a std::path::Path>,
    pub threads: Option<usize>,
}

/// Runs `spec` on `device` (auto: the GPU when a CUDA driver and device are present, else the
/// CPU), with the Variant `source` picks for that device.
pub fn run_on(
    device: DeviceArg,
    spec: &Spec,
    shape: &Shape,
    inputs: &Inputs,
    source: &VariantSource<'_>,
) -> Result<DeviceRun, CliError> {
    match device {
        DeviceArg::Reference => {
            let start = Instant::now();
            let output = reference::forward(spec, shape, inputs)?;
            let run_ms = ms(start);
            Ok(DeviceRun {
                device: "reference (f64)".into(),
                outputs: reference_outputs(&output),
                compile_ms: None,
                run_ms,
            })
        }
        DeviceArg::Cpu => {
            if shape.dtype != nsac_dsl::problem::DType::F32 {
                return Err(CliError::Other(format!(
                    "the CPU backend computes in f32 only (got --dtype {}): pass --dtype f32, or run on --device cuda",
                    shape.dtype.name()
                )));
            }
            let cpu = CpuChoice::pick(spec, shape, source)?;
            let threads = cpu.threads;
            let kernel = CpuKernel::compile(spec, shape, &cpu.variant)?;
            let compile_ms = kernel.compile_time().as_secs_f64() * 1e3;
            let start = Instant::now();
            let out = kernel.run(inputs, threads)?;
            let run_ms = ms(start);
            Ok(DeviceRun {
                device: format!(
                    "cpu ({threads} threads, Cranelift JIT, f32, {} variant)",
                    cpu.origin
                ),
                outputs: collect(out.o, out.branches, out.selected),
                compile_ms: Some(compile_ms),
                run_ms,
            })
        }
        DeviceArg::Cuda => run_cuda(&super::tune::open_gpu()?, spec, shape, inputs, source),
        DeviceArg::Auto => match CudaDevice::open() {
            Ok(Some(gpu)) => run_cuda(&gpu, spec, shape, inputs, source),
            _ => run_on(DeviceArg::Cpu, spec, shape, inputs, source),
        },
    }
}

fn run_cuda(
    gpu: &std::sync::Arc<CudaDevice>,
    spec: &Spec,
    shape: &Shape,
    inputs: &Inputs,
    source: &VariantSource<'_>,
) -> Result<DeviceRun, CliError> {
    let choice = GpuChoice::pick(gpu, spec, shape, source)?;
    let start = Instant::now();
    let kernel = CudaKernel::compile(gpu, spec, shape, &choice.variant)?;
    let compile_ms = ms(start);
    let start = Instant::now();
    let out = kernel.run(inputs)?;
    let run_ms = ms(start);
    let outputs = collect(out.o, out.branches, out.selected);
    let (major, minor) = gpu.capability();
    Ok(DeviceRun {
        device: format!(
            "cuda: {} (sm_{major}{minor}, {}, {} variant)",
            gpu.name(),
            shape.dtype.name(),
            choice.origin
        ),
        outputs,
        compile_ms: Some(compile_ms),
        run_ms,
    })
}

/// A device's outputs under the oracle's names.
fn collect(
    o: Tensor<f32>,
    branches: BTreeMap<String, Tensor<f32>>,
    selected: BTreeMap<String, Tensor<i32>>,
) -> TensorSet {
    let mut outputs = TensorSet::new();
    outputs.insert("o".into(), HostTensor::from(o));
    for (b, t) in branches {
        outputs.insert(format!("o_{b}"), HostTensor::from(t));
    }
    for (b, t) in selected {
        outputs.insert(format!("idx_{b}"), HostTensor::from(t));
    }
    outputs
}

/// The cores of this machine.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Every core of this machine, the default for `--threads`.
pub fn default_threads(threads: Option<usize>) -> usize {
    threads.unwrap_or_else(cores)
}

/// `--threads` within 1 ..= 4 × the cores (more only adds contention and stacks).
pub fn checked_threads(threads: Option<usize>) -> Result<Option<usize>, CliError> {
    let max = 4 * cores();
    match threads {
        Some(0) => Err(CliError::Other("--threads must be at least 1".into())),
        Some(n) if n > max => Err(CliError::Other(format!(
            "--threads {n} is more than 4 × the {} cores of this machine (at most {max})",
            cores()
        ))),
        other => Ok(other),
    }
}

/// A `--variant` text well formed as a list: not empty, no empty field, no field twice.
fn check_fields(text: &str) -> Result<(), CliError> {
    let bad = |why: String| Err(CliError::Other(format!("--variant `{text}`: {why}")));
    if text.trim().is_empty() {
        return bad("is empty; give FIELD=VALUE,… or leave --variant out".into());
    }
    let mut seen: Vec<&str> = Vec::new();
    for item in text.split(',') {
        let item = item.trim();
        if item.is_empty() {
            return bad("has an empty field (a stray comma)".into());
        }
        let name = item.split_once('=').map_or(item, |(n, _)| n).trim();
        if seen.contains(&name) {
            return bad(format!("gives `{name}` twice"));
        }
        seen.push(name);
    }
    Ok(())
}

/// Which CPU Variant and thread count to run, and where they came from.
pub struct CpuChoice {
    pub variant: CpuVariant,
    pub threads: usize,
    /// `explicit` (`--variant`), `tuned` (from the tuning database) or `default`.
    pub origin: &'static str,
}

/// Parses a `--variant FIELD=VALUE,…` argument for the CPU.
pub fn explicit_variant(text: Option<&str>) -> Result<Option<CpuVariant>, CliError> {
    text.map(|t| {
        check_fields(t)?;
        CpuVariant::parse(t).map_err(|e| CliError::Other(format!("--variant: {e}")))
    })
    .transpose()
}

/// Parses a `--variant FIELD=VALUE,…` argument for the GPU.
pub fn explicit_gpu_variant(text: Option<&str>) -> Result<Option<GpuVariant>, CliError> {
    text.map(|t| {
        check_fields(t)?;
        GpuVariant::parse(t).map_err(|e| CliError::Other(format!("--variant: {e}")))
    })
    .transpose()
}

impl CpuChoice {
    /// The explicit Variant if given (`--variant FIELD=VALUE,…`), else the tuned Variant when
    /// the database has one for this spec, shape and machine, else the default; `--threads`
    /// wins over the tuned thread count.
    pub fn pick(
        spec: &Spec,
        shape: &Shape,
        source: &VariantSource<'_>,
    ) -> Result<CpuChoice, CliError> {
        let threads = checked_threads(source.threads)?;
        if let Some(variant) = explicit_variant(source.variant)? {
            return Ok(CpuChoice {
                variant,
                threads: default_threads(threads),
                origin: "explicit",
            });
        }
        Ok(
            match super::tune::tuned_candidate(spec, shape, source.db)? {
                Some(c) => CpuChoice {
                    variant: c.variant,
                    threads: threads.unwrap_or(c.threads),
                    origin: "tuned",
                },
                None => CpuChoice {
                    variant: CpuVariant::default(),
                    threads: default_threads(threads),
                    origin: "default",
                },
            },
        )
    }
}

/// Which GPU Variant to run, and where it came from.
pub struct GpuChoice {
    pub variant: GpuVariant,
    /// `explicit` (`--variant`), `tuned` (from the tuning database) or `default`.
    pub origin: &'static str,
}

impl GpuChoice {
    /// The explicit Variant if given, else the tuned one when the database has one for this
    /// spec, shape and GPU, else the default.
    pub fn pick(
        gpu: &CudaDevice,
        spec: &Spec,
        shape: &Shape,
        source: &VariantSource<'_>,
    ) -> Result<GpuChoice, CliError> {
        if let Some(variant) = explicit_gpu_variant(source.variant)? {
            return Ok(GpuChoice {
                variant,
                origin: "explicit",
            });
        }
        Ok(match super::tune::tuned_gpu(gpu, spec, shape, source.db)? {
            Some(variant) => GpuChoice {
                variant,
                origin: "tuned",
            },
            None => GpuChoice {
                variant: GpuVariant::default(),
                origin: "default",
            },
        })
    }
}

fn ms(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1e3
}

/// The values of a floating-point output as f64 (empty for integer tensors).
/// This GPU's measured ceiling for the arithmetic `spec` on `shape` runs on (tensor-core
/// `mma.sync` of its dtype, or f32 FMA), for the ratio `bench` and `tune` report.
pub fn gpu_ceiling(
    gpu: &CudaDevice,
    spec: &Spec,
    shape: &Shape,
) -> Result<nsac_runtime::cuda::GpuCeiling, CliError> {
    let probe = nsac_compiler::ptx::ceiling_probe(spec, shape)
        .map_err(|e| CliError::Other(e.to_string()))?;
    Ok(gpu.ceiling(probe)?)
}

pub fn values(t: &HostTensor) -> Vec<f64> {
    match t {
        HostTensor::F64(t) => t.data.clone(),
        other => other
            .to_f32()
            .map(|t| t.data.iter().map(|&x| f64::from(x)).collect())
            .unwrap_or_default(),
    }
}
