//! The facade's typed errors as Python exceptions: spec diagnostics raise `SpecError` (a
//! `ValueError`) carrying the rendered, uncoloured diagnostic; problems with the caller's
//! tensors or sizes raise `ValueError`; a kernel that fails to build or run raises
//! `NsacError` (a `RuntimeError`). This is the only place the module renders errors.

use nsac::Error;
use nsac::kernels::reference::ReferenceError;
use nsac::runtime::cpu::CpuKernelError;
use pyo3::PyErr;
use pyo3::create_exception;
use pyo3::exceptions::{PyRuntimeError, PyValueError};

create_exception!(
    _nsac,
    SpecError,
    PyValueError,
    "A spec with problems; the message is the rendered diagnostic."
);
create_exception!(
    _nsac,
    NsacError,
    PyRuntimeError,
    "A kernel could not be compiled or run."
);

/// The Python exception for a facade error.
pub fn to_py(err: Error) -> PyErr {
    let text = err.render(false);
    let text = text.trim_end().trim_start_matches("error: ").to_string();
    match &err {
        Error::Spec(_) | Error::Parse(_) => SpecError::new_err(text),
        Error::Problem(_) | Error::Invalid(_) => PyValueError::new_err(text),
        Error::Reference(ReferenceError::Input(_) | ReferenceError::BadShape(_)) => {
            PyValueError::new_err(text)
        }
        Error::Cpu(
            CpuKernelError::Input(_)
            | CpuKernelError::Guard(_)
            | CpuKernelError::Contract(_)
            | CpuKernelError::Problem(_)
            | CpuKernelError::NoThreads,
        ) => PyValueError::new_err(text),
        _ => NsacError::new_err(text),
    }
}

/// A CPU kernel error as a Python exception.
pub fn cpu_to_py(err: CpuKernelError) -> PyErr {
    to_py(Error::Cpu(err))
}
