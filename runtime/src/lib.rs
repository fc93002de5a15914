//! nsac-runtime: tensors in and out, devices, kernel launching, tuning.

pub mod bench;
pub mod contract;
pub mod cpu;
pub mod cuda;
pub mod guard;
pub mod tensor_io;
pub mod tune;

/// The file policy every reader and writer follows (it lives in `nsac-dsl`, the lowest crate
/// that reads files).
pub use nsac_dsl::fs_policy;
