//! nsac-compiler: lowers a `Spec` into the shape-polymorphic `Plan` IR (`ir`), and a `Plan` plus
//! a Variant into CPU (Cranelift) or GPU (PTX) code; also the analytic cost model.

pub mod cost;
pub mod cpu;
pub mod ir;
pub mod ptx;

pub use ir::Plan;
