//! nsac-compiler: lowers a `Spec` into the shape-polymorphic `Plan` IR (`ir`), and a `Plan` plus
//! a Variant into CPU (Cranelift) or GPU (PTX) code; also the analytic cost model.

pub mod cost;
pub mod cpu;
pub mod ir;
pub mod ptx;

pub use ir::Plan;

/// Identifies the code this build of the compiler generates: a hash of its sources and of the
/// Cranelift it is built with (computed by `build.rs`). Two builds of one crate version can
/// generate different code; the tuning DB keys on this so that neither trusts the other's
/// measurements.
pub const CODE_VERSION: &str = env!("NSAC_CODE_HASH");
