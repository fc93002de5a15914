//! `nsac cost`: the analytic work and traffic of a spec on a problem (table or JSON).

use nsac_compiler::cost;

use super::args::CostArgs;
use super::error::CliError;
use super::output::{emit_json, emit_line};
use super::problem::problem_from_args;

pub fn run(args: &CostArgs) -> Result<(), CliError> {
    let spec = nsac_dsl::load(&args.spec)?;
    let shape = problem_from_args(&args.problem)?.resolve(&spec)?;
    let report = cost::estimate(&spec, &shape)?;
    if args.json {
        emit_json(&report).map_err(CliError::Stdout)?;
    } else {
        emit_line(&report.to_string()).map_err(CliError::Stdout)?;
    }
    Ok(())
}
