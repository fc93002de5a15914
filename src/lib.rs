//! nsac: a compiler for sparse-attention kernels (Native Sparse Attention and relatives).
//!
//! Load a spec, compile it for a device and call it on tensors:
//!
//! ```
//! use nsac::{Attention, Device, Options, Problem};
//!
//! let attn = Attention::load("kernels/nsa-fla.nsa")?;
//! // heads 4/1 and head dim 32 instead of the spec's own, to keep the example small
//! let options = Options {
//!     heads: Some(nsac::dsl::spec::Heads { q: 4, kv: 1 }),
//!     head_dim: Some(nsac::dsl::spec::HeadDim { qk: 32, v: 32 }),
//!     no_tuned: true,
//!     ..Options::default()
//! };
//! let kernel = attn.compile(&Device::Cpu, &options)?;
//! for len in [100, 257] {
//!     let problem = kernel.problem(nsac::dsl::problem::Sequences::Batched { batch: 1, len });
//!     let inputs = attn.random_inputs(&problem, 7)?;
//!     let run = kernel.run(&problem, &inputs)?;
//!     assert_eq!(run.outputs["o"].shape(), [1, len, 4, 32]);
//! }
//! # Ok::<(), nsac::Error>(())
//! ```
//!
//! The pieces, for programs that need more: [`dsl`] (the spec language), [`compiler`] (the
//! [`Plan`] IR, the cost model, the CPU and PTX code generators), [`runtime`] (devices, kernels,
//! tensor files, the tuner) and [`kernels`] (the spec library and the f64 reference, which
//! defines what every kernel computes).

pub mod api;

pub use api::{
    Attention, Compiled, Device, Error, GradRun, Options, Run, TrainState, VariantOrigin,
};
pub use nsac_compiler as compiler;
pub use nsac_compiler::ir::{Plan, Sizes};
pub use nsac_dsl as dsl;
pub use nsac_dsl::Spec;
pub use nsac_dsl::problem::{DType, Problem};
pub use nsac_kernels as kernels;
pub use nsac_kernels::io::{Inputs, Tensor};
pub use nsac_runtime as runtime;
/// The GPU backend: devices, kernels and device-resident tensors ([`Compiled::cuda_kernel`]).
pub use nsac_runtime::cuda;
