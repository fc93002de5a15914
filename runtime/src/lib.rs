//! nsac-runtime: tensors in and out, devices, kernel launching, tuning.

pub mod bench;
pub mod cpu;
