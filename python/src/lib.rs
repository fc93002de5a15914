//! `nsac._nsac`: the native half of the `nsac` Python package. It owns the bridge between
//! Python buffers and the Rust facade — a spec loaded and compiled once ([`kernel::Kernel`]),
//! called on numpy arrays borrowed in place — and the mapping of the facade's typed errors to
//! Python exceptions ([`errors`]). Everything torch-specific (the custom op, autograd, fake
//! tensors, dtype conversion) lives in the Python half, `nsac/`.

mod arrays;
mod errors;
mod kernel;

use pyo3::prelude::*;

#[pymodule]
fn _nsac(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("SpecError", m.py().get_type::<errors::SpecError>())?;
    m.add("NsacError", m.py().get_type::<errors::NsacError>())?;
    m.add_class::<kernel::Kernel>()?;
    Ok(())
}
