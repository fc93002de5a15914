//! The facade's error type: every library error a load, compile or run can end in.

use nsac_dsl::LoadError;
use nsac_dsl::problem::ProblemError;

/// Why a facade call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec file could not be read or has problems (see [`Error::render`]).
    #[error(transparent)]
    Spec(#[from] LoadError),
    /// Spec text with problems.
    #[error("the spec has problems: {0}")]
    Parse(String),
    #[error(transparent)]
    Problem(#[from] ProblemError),
    #[error(transparent)]
    Lower(#[from] nsac_compiler::ir::LowerError),
    #[error(transparent)]
    Reference(#[from] nsac_kernels::reference::ReferenceError),
    #[error(transparent)]
    Cpu(#[from] nsac_runtime::cpu::CpuKernelError),
    #[error(transparent)]
    Cuda(#[from] nsac_runtime::cuda::CudaError),
    #[error("no CUDA device found (no NVIDIA driver, or no GPU visible)")]
    NoGpu,
    /// A bad option: a malformed Variant, thread count or device choice.
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    /// The text to show a person: spec diagnostics with file:line:col and snippets (coloured
    /// when `color`), anything else as one line.
    ///
    /// ```
    /// let err = nsac::Attention::load("no/such/spec.nsa").unwrap_err();
    /// assert!(err.render(false).contains("no/such/spec.nsa"));
    /// ```
    pub fn render(&self, color: bool) -> String {
        match self {
            Error::Spec(e) => e.render(color),
            other => format!("error: {other}\n"),
        }
    }
}
