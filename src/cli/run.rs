//! `nsac run`: run a spec on a problem with random or file inputs, print a summary and
//! optionally write the outputs.

use std::time::Instant;

use nsac_kernels::io::{Tensor, check_inputs, random_inputs};
use nsac_kernels::reference;
use serde::Serialize;

use super::args::{DeviceArg, RunArgs};
use super::error::CliError;
use super::problem::{describe, problem_from_args};

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
    let problem = problem_from_args(&args.problem, None);
    let shape = problem.resolve(&spec)?;
    let inputs = random_inputs(&spec, &shape, args.seed);
    check_inputs(&spec, &shape, &inputs)?;

    let (device, start) = (args.device, Instant::now());
    let output = match device {
        DeviceArg::Reference => reference::forward(&spec, &shape, &inputs)?,
    };
    let time_ms = start.elapsed().as_secs_f64() * 1e3;
    let summary = summarize(&spec.name, "reference", describe(&shape), &output.o, time_ms, None);
    print_summary(&summary, args.json)
}

fn summarize(spec: &str, device: &str, shape: String, o: &Tensor<f64>, time_ms: f64, written: Option<String>) -> RunSummary {
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
        let text = serde_json::to_string_pretty(s).map_err(|e| CliError::Other(e.to_string()))?;
        println!("{text}");
        return Ok(());
    }
    println!("spec     {}", s.spec);
    println!("problem  {}", s.shape);
    println!("device   {}", s.device);
    println!("output   o {:?}", s.output_shape);
    println!("time     {:.3} ms", s.time_ms);
    println!("max|o|   {:.6}", s.max_abs);
    println!("checksum Σo = {:.6}, Σ|o| = {:.6}", s.sum, s.abs_sum);
    if let Some(w) = &s.written {
        println!("written  {w}");
    }
    Ok(())
}
