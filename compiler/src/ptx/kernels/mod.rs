//! The kernel generators, one per stage kind; each returns its PTX `.entry`, its parameter
//! list (buffers, then `u32` sizes, in order) and its launch geometry, a formula of the call's
//! sizes (no length is compiled into a kernel).

pub mod attend;
pub mod combine;
pub mod common;
pub mod pool;
pub mod tc_common;
pub mod tc_compress;
pub mod tc_score;
pub mod tc_select;
pub mod topk;

use super::launch::Geometry;
pub use super::launch::{Param, Scalar};

/// One generated kernel.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelOut {
    pub ptx: String,
    pub params: Vec<Param>,
    pub launch: Launch,
    /// The register cap (`.maxnreg`) the kernel declares, if any.
    pub max_regs: Option<u32>,
}

/// A 1-D launch configuration, as a function of the call's sizes.
#[derive(Debug, Clone, PartialEq)]
pub struct Launch {
    pub geometry: Geometry,
    /// How grid/block/shared follow from the problem, for people.
    pub formula: String,
}
