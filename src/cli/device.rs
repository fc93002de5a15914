//! Running a spec on one of the devices (`--device reference|cpu|cuda|auto`): the flags turned
//! into a call of the library facade (`nsac::Attention`, `nsac::api::choice`), which picks the
//! device and the Variant; outputs come back under the oracle's names.

use nsac::api::choice::{self, VariantRequest};
use nsac::{Attention, Device, Options, VariantOrigin};
use nsac_compiler::cpu::CpuVariant;
use nsac_compiler::ptx::GpuVariant;
use nsac_dsl::Spec;
use nsac_dsl::problem::Shape;
use nsac_kernels::io::Inputs;
use nsac_runtime::cuda::CudaDevice;
use nsac_runtime::tensor_io::{HostTensor, TensorSet};

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
/// CPU), with the Variant `source` picks for that device: a client of the library facade
/// (`nsac::Attention::compile`), which chooses the device and the Variant.
pub fn run_on(
    device: DeviceArg,
    spec: &Spec,
    shape: &Shape,
    inputs: &Inputs,
    source: &VariantSource<'_>,
) -> Result<DeviceRun, CliError> {
    let device = match device {
        DeviceArg::Reference => Device::Reference,
        DeviceArg::Cpu => {
            if shape.dtype != nsac_dsl::problem::DType::F32 {
                return Err(CliError::Other(format!(
                    "the CPU backend computes in f32 only (got --dtype {}): pass --dtype f32, or run on --device cuda",
                    shape.dtype.name()
                )));
            }
            Device::Cpu
        }
        DeviceArg::Cuda => {
            // the CLI's own message, naming the flag to use instead
            super::tune::open_gpu()?;
            Device::Cuda
        }
        DeviceArg::Auto => Device::Auto,
    };
    let options = Options {
        heads: Some(shape.heads),
        head_dim: Some(shape.head_dim),
        dtype: shape.dtype,
        threads: checked_threads(source.threads)?,
        variant: source.variant.map(str::to_string),
        db: source.db.map(|p| p.to_path_buf()),
        no_tuned: false,
    };
    let compiled = Attention::from_spec(spec.clone()).compile(&device, &options)?;
    let run = compiled.run_shape(shape, inputs)?;
    warn(&run.warnings);
    let device = match run.origin {
        VariantOrigin::None => run.device,
        origin => format!(
            "{}, {} variant)",
            run.device.trim_end_matches(')'),
            origin.name()
        ),
    };
    Ok(DeviceRun {
        device,
        outputs: run.outputs,
        compile_ms: run.compile.map(|d| d.as_secs_f64() * 1e3),
        run_ms: run.time.as_secs_f64() * 1e3,
    })
}

fn warn(warnings: &[String]) {
    for w in warnings {
        eprintln!("warning: {w}");
    }
}

/// Every core of this machine, the default for `--threads`.
pub fn default_threads(threads: Option<usize>) -> usize {
    threads.unwrap_or_else(choice::cores)
}

/// `--threads` within 1 ..= 4 × the cores (more only adds contention and stacks).
pub fn checked_threads(threads: Option<usize>) -> Result<Option<usize>, CliError> {
    Ok(choice::checked_threads(threads)?)
}

/// Parses a `--variant FIELD=VALUE,…` argument for the CPU.
pub fn explicit_variant(text: Option<&str>) -> Result<Option<CpuVariant>, CliError> {
    Ok(text.map(choice::parse_cpu_variant).transpose()?)
}

/// Parses a `--variant FIELD=VALUE,…` argument for the GPU.
pub fn explicit_gpu_variant(text: Option<&str>) -> Result<Option<GpuVariant>, CliError> {
    Ok(text.map(choice::parse_gpu_variant).transpose()?)
}

fn request<'a>(source: &VariantSource<'a>) -> VariantRequest<'a> {
    VariantRequest {
        variant: source.variant,
        db: source.db,
        no_tuned: false,
        threads: source.threads,
    }
}

/// Which CPU Variant and thread count to run, and where they came from (the tuning database's
/// warnings printed).
pub struct CpuChoice {
    pub variant: CpuVariant,
    pub threads: usize,
    /// `explicit` (`--variant`), `tuned` (from the tuning database) or `default`.
    pub origin: &'static str,
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
        let (c, warnings) = choice::pick_cpu(spec, shape, &request(source))?;
        warn(&warnings);
        Ok(CpuChoice {
            variant: c.variant,
            threads: c.threads,
            origin: c.origin.name(),
        })
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
        let (c, warnings) = choice::pick_gpu(gpu, spec, shape, &request(source))?;
        warn(&warnings);
        Ok(GpuChoice {
            variant: c.variant,
            origin: c.origin.name(),
        })
    }
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
