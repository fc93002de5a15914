//! Every way a CLI command can fail, and how it is shown to the user.
//!
//! Library crates return typed errors; this is the one place that renders them: spec problems
//! with file:line:col and caret snippets, everything else as `error: …` with its causes.

use std::error::Error as _;

use nsac_dsl::LoadError;
use nsac_dsl::problem::ProblemError;
use nsac_kernels::io::InputError;
use nsac_kernels::reference::ReferenceError;

/// A failed command.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("the problem does not fit the spec: {0}")]
    Problem(#[from] ProblemError),
    #[error("bad inputs: {0}")]
    Input(#[from] InputError),
    #[error("the reference run failed: {0}")]
    Reference(#[from] ReferenceError),
    #[error("cannot count the cost: {0}")]
    Cost(#[from] nsac_compiler::cost::CostError),
    #[error(transparent)]
    TensorIo(#[from] nsac_runtime::tensor_io::TensorIoError),
    #[error(transparent)]
    File(#[from] nsac_runtime::fs_policy::FsError),
    #[error(transparent)]
    Cpu(#[from] nsac_runtime::cpu::CpuKernelError),
    #[error(transparent)]
    Bench(#[from] nsac_runtime::bench::BenchError),
    #[error(transparent)]
    Cuda(#[from] nsac_runtime::cuda::CudaError),
    #[error(transparent)]
    Ptx(#[from] nsac_compiler::ptx::PtxError),
    #[error(transparent)]
    Api(#[from] nsac::Error),
    #[error("cannot lower the spec: {0}")]
    Lower(#[from] nsac_compiler::ir::LowerError),
    #[error("cannot write to standard output: {0}")]
    Stdout(#[source] std::io::Error),
    #[error(
        "the problem needs about {needed} of memory (inputs, outputs and scratch), over the budget of {limit}; raise it with --max-bytes (or NSAC_MAX_BYTES), or make the problem smaller"
    )]
    Budget { needed: String, limit: String },
    #[error("{0}")]
    Other(String),
    /// Problems already reported to the user (e.g. by `check` on several files).
    #[error("{0}")]
    Reported(String),
}

impl CliError {
    /// The full text for standard error.
    pub fn render(&self, color: bool) -> String {
        match self {
            CliError::Load(e) => e.render(color),
            CliError::Api(e @ nsac::Error::Spec(_)) => e.render(color),
            CliError::Reported(summary) => format!("error: {summary}\n"),
            other => {
                let mut text = format!("error: {other}\n");
                let mut cause = other.source();
                // `transparent`/`{0}` variants already print their source; skip repeats.
                while let Some(c) = cause {
                    let line = c.to_string();
                    if !text.contains(&line) {
                        text.push_str(&format!("  caused by: {line}\n"));
                    }
                    cause = c.source();
                }
                text
            }
        }
    }
}
