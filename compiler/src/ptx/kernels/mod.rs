//! The kernel generators, one per stage kind; each returns its PTX `.entry`, its parameter
//! list (buffer names, in order) and its launch configuration.

pub mod attend;
pub mod combine;
pub mod common;
pub mod pool;
pub mod tc_common;
pub mod tc_compress;
pub mod tc_score;
pub mod tc_select;
pub mod topn;

/// One generated kernel.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelOut {
    pub ptx: String,
    pub params: Vec<String>,
    pub launch: Launch,
    /// The register cap (`.maxnreg`) the kernel declares, if any.
    pub max_regs: Option<u32>,
}

/// A 1-D launch configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Launch {
    pub grid: u32,
    pub block: u32,
    pub shared_bytes: u32,
    /// How grid/block/shared follow from the problem, for people and other launchers.
    pub formula: String,
}
