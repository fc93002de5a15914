//! `nsac run`: run a spec on a problem with random or file inputs, print a summary and
//! optionally write the outputs.

use nsac_kernels::io::{Tensor, check_inputs, random_inputs, random_upstream};
use nsac_runtime::tensor_io::{self, HostTensor, TensorSet};
use serde::Serialize;

use nsac_runtime::cuda::CudaDevice;

use nsac_dsl::problem::DType;

use super::args::{DTypeArg, DeviceArg, RunArgs};
use super::budget;
use super::device::{VariantSource, checked_threads, default_threads, run_on, values};
use super::error::CliError;
use super::files::check_run_paths;
use super::output::{emit, emit_json};
use super::problem::{describe, problem_from_args, problem_from_inputs};
use super::tune::{open_gpu, tune_gpu_if_missing, tune_if_missing};

/// What `run` prints (`--json` prints exactly this).
#[derive(Debug, Serialize)]
pub struct RunSummary {
    pub spec: String,
    pub device: String,
    pub shape: String,
    /// Output shape [B, T, HQ, Dv].
    pub output_shape: Vec<usize>,
    /// Time to compile the kernel (JIT or module load), for devices that compile.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compile_ms: Option<f64>,
    /// Wall time of the computation alone (no input generation or I/O), in milliseconds.
    pub time_ms: f64,
    pub max_abs: f64,
    /// Σ o and Σ |o| over every element: compare runs of the same inputs across devices.
    pub sum: f64,
    pub abs_sum: f64,
    /// Where the outputs were written, if anywhere.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub written: Option<String>,
    /// With `--backward`: the backward's wall time and a checksum per gradient.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backward_ms: Option<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gradients: Vec<GradSummary>,
}

/// One gradient of a `--backward` run: its shape, Σ and Σ|·|.
#[derive(Debug, Serialize)]
pub struct GradSummary {
    pub name: String,
    pub shape: Vec<usize>,
    pub sum: f64,
    pub abs_sum: f64,
}

pub fn run(args: &RunArgs) -> Result<(), CliError> {
    check_run_paths(
        args.inputs.as_deref(),
        args.save_inputs.as_deref(),
        args.output.as_deref(),
    )?;
    let spec = nsac_dsl::load(&args.spec)?;
    if args.device == DeviceArg::Reference {
        if args.variant.is_some() {
            return Err(CliError::Other(
                "--variant does not apply to --device reference (it has no Variants)".into(),
            ));
        }
        if args.problem.dtype != DTypeArg::F32 {
            return Err(CliError::Other(format!(
                "--device reference computes in f64 from f32 inputs and would ignore --dtype {}: drop --dtype (or use --dtype f32), or run the 16-bit kernels on --device cuda",
                DType::from(args.problem.dtype).name()
            )));
        }
    }
    let threads = match args.device {
        DeviceArg::Reference => 1,
        _ => default_threads(checked_threads(args.threads)?),
    };
    let reference = args.device == DeviceArg::Reference;
    let mut file_d_o = None;
    let (shape, inputs) = match &args.inputs {
        Some(path) => {
            let mut file = tensor_io::read_kernel_inputs(path)?;
            if args.backward {
                file_d_o = file.inputs.remove(UPSTREAM);
            }
            let problem = problem_from_inputs(&args.problem, &spec, &file.inputs, file.cu_seqlens)?;
            let shape = problem.resolve(&spec)?;
            budget::check(&spec, &shape, threads, reference, &args.budget)?;
            (shape, file.inputs)
        }
        None => {
            let shape = problem_from_args(&args.problem)?.resolve(&spec)?;
            budget::check(&spec, &shape, threads, reference, &args.budget)?;
            let inputs = random_inputs(&spec, &shape, args.seed);
            (shape, inputs)
        }
    };
    check_inputs(&spec, &shape, &inputs)?;
    if let Some(path) = &args.save_inputs {
        let mut set: TensorSet = inputs
            .iter()
            .map(|(name, t)| (name.clone(), HostTensor::from(t.clone())))
            .collect();
        if shape.segments.len() > 1 || args.problem.cu_seqlens.is_some() {
            let cu: Vec<i32> = std::iter::once(0)
                .chain(shape.segments.iter().map(|&(_, end)| end))
                .map(|x| {
                    i32::try_from(x)
                        .map_err(|_| CliError::Other(format!("offset {x} does not fit int32")))
                })
                .collect::<Result<_, _>>()?;
            set.insert(
                tensor_io::CU_SEQLENS.into(),
                HostTensor::from(Tensor {
                    shape: vec![cu.len()],
                    data: cu,
                }),
            );
        }
        tensor_io::write_outputs(path, &set)?;
    }

    if args.tune {
        let db = args.db.as_deref();
        match args.device {
            DeviceArg::Cpu => tune_if_missing(&spec, &shape, db, args.json)?,
            DeviceArg::Cuda => tune_gpu_if_missing(&open_gpu()?, &spec, &shape, db, args.json)?,
            DeviceArg::Auto => match CudaDevice::open().ok().flatten() {
                Some(gpu) => tune_gpu_if_missing(&gpu, &spec, &shape, db, args.json)?,
                None => tune_if_missing(&spec, &shape, db, args.json)?,
            },
            DeviceArg::Reference => {
                return Err(CliError::Other(
                    "--tune does not apply to --device reference (it has no Variants)".into(),
                ));
            }
        }
    }
    let source = VariantSource {
        variant: args.variant.as_deref(),
        db: args.db.as_deref(),
        threads: args.threads,
    };
    if args.backward {
        let d_o = file_d_o.unwrap_or_else(|| random_upstream(&shape, args.seed));
        return run_backward(args, &spec, &shape, &inputs, &d_o, &source);
    }
    let run = run_on(args.device, &spec, &shape, &inputs, &source)?;
    refuse_non_finite(&run.outputs, &run.device)?;
    let written = match &args.output {
        Some(path) => {
            let mut set = run.outputs.clone();
            if !args.all_outputs {
                set.retain(|name, _| name == "o");
            }
            tensor_io::write_outputs(path, &set)?;
            Some(path.display().to_string())
        }
        None => None,
    };
    let o = run
        .outputs
        .get("o")
        .ok_or_else(|| CliError::Other("the device returned no output `o`".into()))?;
    let values = values(o);
    let summary = RunSummary {
        spec: spec.name.clone(),
        device: run.device,
        shape: describe(&shape),
        output_shape: o.shape().to_vec(),
        compile_ms: run.compile_ms,
        time_ms: run.run_ms,
        max_abs: values.iter().fold(0.0f64, |m, x| m.max(x.abs())),
        sum: values.iter().sum(),
        abs_sum: values.iter().map(|x| x.abs()).sum(),
        written,
        backward_ms: None,
        gradients: Vec::new(),
    };
    print_summary(&summary, args.json)
}

/// The upstream gradient's name in an `--inputs` file.
const UPSTREAM: &str = "do";

/// `run --backward`: the forward with saved state, then the gradients for `d_o`.
fn run_backward(
    args: &RunArgs,
    spec: &nsac_dsl::Spec,
    shape: &nsac_dsl::problem::Shape,
    inputs: &nsac_kernels::io::Inputs,
    d_o: &Tensor<f32>,
    source: &VariantSource<'_>,
) -> Result<(), CliError> {
    let device = match args.device {
        DeviceArg::Reference => nsac::Device::Reference,
        DeviceArg::Cpu | DeviceArg::Auto => {
            if shape.dtype != DType::F32 {
                return Err(CliError::Other(format!(
                    "the CPU backward computes in f32 only (got --dtype {}): pass --dtype f32",
                    shape.dtype.name()
                )));
            }
            nsac::Device::Cpu
        }
        DeviceArg::Cuda => return Err(CliError::Other(nsac::api::NO_GPU_BACKWARD.into())),
    };
    let want = shape.output_dims().to_vec();
    if d_o.shape != want {
        return Err(CliError::Other(format!(
            "the upstream gradient `do` has shape {:?}, the output's is {want:?}",
            d_o.shape
        )));
    }
    let options = nsac::Options {
        heads: Some(shape.heads),
        head_dim: Some(shape.head_dim),
        dtype: shape.dtype,
        threads: checked_threads(source.threads)?,
        variant: source.variant.map(str::to_string),
        db: source.db.map(|p| p.to_path_buf()),
        no_tuned: false,
    };
    let compiled = nsac::Attention::from_spec(spec.clone()).compile(&device, &options)?;
    let (run, state) = compiled.forward_train(shape, inputs)?;
    let grads = compiled.backward(shape, inputs, &state, d_o)?;
    refuse_non_finite(run.outputs.iter().chain(&grads.gradients), &run.device)?;
    let written = match &args.output {
        Some(path) => {
            let mut set = run.outputs.clone();
            if !args.all_outputs {
                set.retain(|name, _| name == "o");
            }
            set.extend(grads.gradients.clone());
            tensor_io::write_outputs(path, &set)?;
            Some(path.display().to_string())
        }
        None => None,
    };
    let o = run
        .outputs
        .get("o")
        .ok_or_else(|| CliError::Other("the device returned no output `o`".into()))?;
    let ov = values(o);
    let gradients = grads
        .gradients
        .iter()
        .map(|(name, t)| {
            let v = values(t);
            GradSummary {
                name: name.clone(),
                shape: t.shape().to_vec(),
                sum: v.iter().sum(),
                abs_sum: v.iter().map(|x| x.abs()).sum(),
            }
        })
        .collect();
    let summary = RunSummary {
        spec: spec.name.clone(),
        device: run.device,
        shape: describe(shape),
        output_shape: o.shape().to_vec(),
        compile_ms: run.compile.map(|d| d.as_secs_f64() * 1e3),
        time_ms: run.time.as_secs_f64() * 1e3,
        max_abs: ov.iter().fold(0.0f64, |m, x| m.max(x.abs())),
        sum: ov.iter().sum(),
        abs_sum: ov.iter().map(|x| x.abs()).sum(),
        written,
        backward_ms: Some(grads.time.as_secs_f64() * 1e3),
        gradients,
    };
    print_summary(&summary, args.json)
}

fn print_summary(s: &RunSummary, json: bool) -> Result<(), CliError> {
    if json {
        return emit_json(s).map_err(CliError::Stdout);
    }
    let mut text = format!(
        "spec     {}\nproblem  {}\ndevice   {}\noutput   o {:?}\ntime     {:.3} ms\nmax|o|   {:.6}\nchecksum Σo = {:.6}, Σ|o| = {:.6}\n",
        s.spec, s.shape, s.device, s.output_shape, s.time_ms, s.max_abs, s.sum, s.abs_sum
    );
    if let Some(c) = s.compile_ms {
        text.push_str(&format!("compile  {c:.3} ms\n"));
    }
    if let Some(b) = s.backward_ms {
        text.push_str(&format!("backward {b:.3} ms\n"));
    }
    for g in &s.gradients {
        text.push_str(&format!(
            "grad     {} {:?}: Σ = {:.6}, Σ|·| = {:.6}\n",
            g.name, g.shape, g.sum, g.abs_sum
        ));
    }
    if let Some(w) = &s.written {
        text.push_str(&format!("written  {w}\n"));
    }
    emit(&text).map_err(CliError::Stdout)
}

/// Refuses to report tensors holding NaN or Inf: the computation overflowed on `device` (a
/// device bug the magnitude guard missed), and a summary of them would mislead.
fn refuse_non_finite<'a>(
    tensors: impl IntoIterator<Item = (&'a String, &'a HostTensor)>,
    device: &str,
) -> Result<(), CliError> {
    for (name, t) in tensors {
        let bad = values(t).iter().filter(|x| !x.is_finite()).count();
        if bad > 0 {
            return Err(CliError::Other(format!(
                "the output `{name}` holds {bad} NaN or infinite values: the computation overflowed on {device} (a device bug the magnitude guard missed); the summary would mislead, so nothing is reported"
            )));
        }
    }
    Ok(())
}
