//! nsac-runtime: tensors in and out, devices, kernel launching, tuning.

pub mod bench;
pub mod cpu;
pub mod cuda;
pub mod guard;
pub mod tensor_io;
pub mod tune;
