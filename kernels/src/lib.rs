//! nsac-kernels: the library of ready specs and the reference implementation (the f64 oracle)
//! that defines what every generated kernel computes (docs/ARCHITECTURE.md §3).

pub mod io;
pub mod reference;
