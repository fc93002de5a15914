//! `nsac bench`: time a spec on this machine's CPU and put the number next to the two numbers
//! that matter — the work (FLOPs) and the ceiling (a JIT'd 128-bit FMA loop, same run).

use nsac_runtime::bench::{BenchOptions, bench_cpu};

use super::args::{BenchArgs, DeviceArg};
use super::device::CpuChoice;
use super::error::CliError;
use super::output::{emit_json, emit_line};
use super::problem::problem_from_args;

pub fn run(args: &BenchArgs) -> Result<(), CliError> {
    let spec = nsac_dsl::load(&args.spec)?;
    let shape = problem_from_args(&args.problem)?.resolve(&spec)?;
    if !matches!(args.device, DeviceArg::Cpu | DeviceArg::Auto) {
        return Err(CliError::Other(
            "`nsac bench` measures the CPU backend; GPU benchmarks run from bench/gpu/ (see its README)".into(),
        ));
    }
    if args.runs == 0 {
        return Err(CliError::Other("--runs must be at least 1".into()));
    }
    let options = BenchOptions {
        runs: args.runs,
        oracle_seq_len: (args.oracle_seq > 0).then_some(args.oracle_seq),
        ..BenchOptions::default()
    };
    let cpu = CpuChoice::pick(
        &spec,
        &shape,
        args.threads,
        args.db.as_deref(),
        args.variant.as_deref(),
    )?;
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
