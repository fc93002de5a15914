//! The `nsac` binary: parses the command line, runs the command, renders any error and sets the
//! exit status (0 ok, 1 the command failed, 2 bad usage — clap's own).

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

mod cli;

fn main() -> ExitCode {
    let args = cli::args::Cli::parse();
    match cli::dispatch(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprint!(
                "{}",
                error.render(nsac_dsl::diagnostics::use_color(
                    std::io::stderr().is_terminal()
                ))
            );
            ExitCode::FAILURE
        }
    }
}
