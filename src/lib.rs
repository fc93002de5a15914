//! nsac: a compiler for sparse-attention kernels. This facade re-exports the public API.
pub use nsac_dsl as dsl;
pub use nsac_kernels as kernels;
