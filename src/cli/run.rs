//! `nsac run`: run a spec on a problem with random or file inputs, print a summary and
//! optionally write the outputs.

use std::time::Instant;

use nsac_kernels::io::{Tensor, check_inputs, random_inputs};
use nsac_kernels::reference;
use nsac_runtime::tensor_io;
use serde::Serialize;

use super::args::{DeviceArg, RunArgs};
use super::error::CliError;
use super::output::{emit, emit_json};
use super::problem::{describe, problem_from_args, problem_from_inputs};

/// What `run` prints (`--json` prints exactly this).
#[derive(Debug, Serialize)]
pub struct RunSummary {
    pub spec: String,
    pub device: String,
    pub shape: String,
    /// Output shape [B, T, HQ, Dv].
    pub output_shape: Vec<usize>,
    /// Wall time of the computation alone (no input generation or I/O), in milliseconds.
    pub time_ms: f64,
    pub max_abs: f64,
    /// Σ o and Σ |o| over every element: compare runs of the same inputs across devices.
    pub sum: f64,
    pub abs_sum: f64,
    /// Where the outputs were written, if anywhere.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub written: Option<String>,
}

pub fn run(args: &RunArgs) -> Result<(), CliError> {
    let spec = nsac_dsl::load(&args.spec)?;
    let (shape, inputs) = match &args.inputs {
        Some(path) => {
            let file = tensor_io::read_kernel_inputs(path)?;
            let problem = problem_from_inputs(&args.problem, &file.inputs, file.cu_seqlens)?;
            let shape = problem.resolve(&spec)?;
            (shape, file.inputs)
        }
        None => {
            let shape = problem_from_args(&args.problem)?.resolve(&spec)?;
            let inputs = random_inputs(&spec, &shape, args.seed);
            (shape, inputs)
        }
    };
    check_inputs(&spec, &shape, &inputs)?;

    let (device, start) = (args.device, Instant::now());
    let output = match device {
        DeviceArg::Reference => reference::forward(&spec, &shape, &inputs)?,
    };
    let time_ms = start.elapsed().as_secs_f64() * 1e3;
    let written = match &args.output {
        Some(path) => {
            let mut set = tensor_io::reference_outputs(&output);
            if !args.all_outputs {
                set.retain(|name, _| name == "o");
            }
            tensor_io::write_outputs(path, &set)?;
            Some(path.display().to_string())
        }
        None => None,
    };
    let summary = summarize(
        &spec.name,
        "reference",
        describe(&shape),
        &output.o,
        time_ms,
        written,
    );
    print_summary(&summary, args.json)
}

fn summarize(
    spec: &str,
    device: &str,
    shape: String,
    o: &Tensor<f64>,
    time_ms: f64,
    written: Option<String>,
) -> RunSummary {
    let max_abs = o.data.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    RunSummary {
        spec: spec.to_string(),
        device: device.to_string(),
        shape,
        output_shape: o.shape.clone(),
        time_ms,
        max_abs,
        sum: o.data.iter().sum(),
        abs_sum: o.data.iter().map(|x| x.abs()).sum(),
        written,
    }
}

fn print_summary(s: &RunSummary, json: bool) -> Result<(), CliError> {
    if json {
        return emit_json(s).map_err(CliError::Stdout);
    }
    let mut text = format!(
        "spec     {}\nproblem  {}\ndevice   {}\noutput   o {:?}\ntime     {:.3} ms\nmax|o|   {:.6}\nchecksum Σo = {:.6}, Σ|o| = {:.6}\n",
        s.spec, s.shape, s.device, s.output_shape, s.time_ms, s.max_abs, s.sum, s.abs_sum
    );
    if let Some(w) = &s.written {
        text.push_str(&format!("written  {w}\n"));
    }
    emit(&text).map_err(CliError::Stdout)
}
