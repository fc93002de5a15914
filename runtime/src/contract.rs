//! The plan's input contract (`nsac_compiler::ir::contract`), re-exported for the CUDA kernel.

pub use nsac_compiler::ir::contract::{ContractError, check_input_refs, check_inputs};
