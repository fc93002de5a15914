//! nsac-compiler: lowers a `Spec` and a problem shape into a `Plan`, and a `Plan` plus a Variant
//! into CPU (Cranelift) or GPU (PTX) code; also the analytic cost model.

pub mod cost;
pub mod cpu;
pub mod ir;
pub mod plan;
pub mod ptx;

pub use plan::Plan;
