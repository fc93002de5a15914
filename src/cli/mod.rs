//! The `nsac` command line: argument parsing, one module per subcommand, error rendering.

pub mod args;
mod bench;
mod budget;
mod check;
mod compile;
mod cost;
mod device;
pub mod error;
mod files;
mod fmt;
mod output;
mod problem;
mod run;
mod tune;

use args::{Cli, Command};
use error::CliError;

/// Runs one parsed command line.
pub fn dispatch(cli: &Cli) -> Result<(), CliError> {
    match &cli.command {
        Command::Check(a) => check::run(a),
        Command::Fmt(a) => fmt::run(a),
        Command::Cost(a) => cost::run(a),
        Command::Run(a) => run::run(a),
        Command::Compile(a) => compile::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Tune(a) => tune::run(a),
    }
}
