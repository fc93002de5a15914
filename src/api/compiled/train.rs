//! Training through the facade: [`Compiled::forward_train`] (the forward, keeping what the
//! backward needs in a [`TrainState`]) and [`Compiled::backward`] (the gradient of every input
//! for an upstream gradient `do`) — the two calls an autograd framework makes. On the CPU they
//! run the compiled training pair (`Plan::backward`); on the reference device the f64 oracle
//! (`backward_with_blocks` with the forward's own blocks); the GPU has no backward yet.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nsac_compiler::ir::Sizes;
use nsac_dsl::problem::Shape;
use nsac_kernels::io::{Inputs, Tensor};
use nsac_runtime::cpu::{CpuKernel, Saved};
use nsac_runtime::tensor_io::{HostTensor, TensorSet, reference_outputs};

use super::super::Error;
use super::super::choice::{VariantOrigin, pick_cpu};
use super::{Backend, Compiled, Run, collect};

/// What [`Compiled::forward_train`] keeps for [`Compiled::backward`].
pub struct TrainState {
    inner: State,
}

enum State {
    /// The oracle keeps the chosen blocks (it recomputes everything else).
    Reference {
        selected: BTreeMap<String, Tensor<i32>>,
    },
    Cpu {
        kernel: Arc<CpuKernel>,
        threads: usize,
        saved: Saved,
    },
}

impl std::fmt::Debug for TrainState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner {
            State::Reference { .. } => f.write_str("TrainState(reference)"),
            State::Cpu { saved, .. } => f
                .debug_struct("TrainState")
                .field("saved", &saved.f32.keys().collect::<Vec<_>>())
                .finish(),
        }
    }
}

/// What one backward call produced.
#[derive(Debug, Clone)]
pub struct GradRun {
    /// The gradient of every input, `d<input>` (`dq`, `dk`, `dv`, `dg_<b>`, …), each of its
    /// input's shape (f64 from the reference, f32 from the CPU).
    pub gradients: TensorSet,
    pub device: String,
    /// Time of the computation alone.
    pub time: Duration,
}

/// The message for a device without a backward.
pub const NO_GPU_BACKWARD: &str =
    "backward on the GPU is not built yet: use --device cpu or --device reference";

impl Compiled {
    pub(super) fn cpu_train_kernel(
        &self,
        shape: &Shape,
    ) -> Result<(Arc<CpuKernel>, usize, VariantOrigin, Option<Duration>), Error> {
        let (choice, _warnings) = pick_cpu(&self.spec, shape, &self.request())?;
        let mut cache = self.cpu_train.lock().unwrap_or_else(|e| e.into_inner());
        let (kernel, compile) = match cache.get(&choice.variant) {
            Some(k) => (k.clone(), None),
            None => {
                let kernel = Arc::new(CpuKernel::compile_train(
                    &self.spec,
                    shape,
                    &choice.variant,
                )?);
                cache.insert(choice.variant, kernel.clone());
                let t = kernel.compile_time();
                (kernel, Some(t))
            }
        };
        Ok((kernel, choice.threads, choice.origin, compile))
    }

    /// The forward pass on `inputs`, keeping what [`Compiled::backward`] needs.
    pub fn forward_train(
        &self,
        shape: &Shape,
        inputs: &Inputs,
    ) -> Result<(Run, TrainState), Error> {
        match &self.backend {
            Backend::Reference => {
                let start = Instant::now();
                let out = nsac_kernels::reference::forward(&self.spec, shape, inputs)?;
                let run = Run {
                    outputs: reference_outputs(&out),
                    device: "reference (f64)".into(),
                    origin: VariantOrigin::None,
                    compile: None,
                    time: start.elapsed(),
                    warnings: Vec::new(),
                };
                let inner = State::Reference {
                    selected: out.selected,
                };
                Ok((run, TrainState { inner }))
            }
            Backend::Cpu => {
                let (kernel, threads, origin, compile) = self.cpu_train_kernel(shape)?;
                let start = Instant::now();
                let (out, saved) = kernel.forward_train(&Sizes::of(shape), inputs, threads)?;
                let run = Run {
                    outputs: collect(out.o, out.branches, out.selected),
                    device: format!("cpu ({threads} threads, Cranelift JIT, f32)"),
                    origin,
                    compile,
                    time: start.elapsed(),
                    warnings: Vec::new(),
                };
                let inner = State::Cpu {
                    kernel,
                    threads,
                    saved,
                };
                Ok((run, TrainState { inner }))
            }
            Backend::Cuda(_) => Err(Error::Invalid(NO_GPU_BACKWARD.into())),
        }
    }

    /// The gradient of every input for the upstream gradient `d_o` \[B,T,HQ,Dv\], after
    /// [`Compiled::forward_train`] on the same `shape` and `inputs` gave `state`.
    pub fn backward(
        &self,
        shape: &Shape,
        inputs: &Inputs,
        state: &TrainState,
        d_o: &Tensor<f32>,
    ) -> Result<GradRun, Error> {
        let start = Instant::now();
        match &state.inner {
            State::Reference { selected } => {
                let grads = nsac_kernels::reference::backward_with_blocks(
                    &self.spec, shape, inputs, selected, d_o,
                )?;
                Ok(GradRun {
                    gradients: grads
                        .into_iter()
                        .map(|(n, t)| (n, HostTensor::F64(t)))
                        .collect(),
                    device: "reference (f64)".into(),
                    time: start.elapsed(),
                })
            }
            State::Cpu {
                kernel,
                threads,
                saved,
            } => {
                let want = shape.output_dims();
                if d_o.shape != want {
                    return Err(Error::Reference(
                        nsac_kernels::reference::ReferenceError::Input(
                            nsac_kernels::io::InputError::BadShape {
                                name: "do".into(),
                                got: d_o.shape.clone(),
                                expected: want.to_vec(),
                            },
                        ),
                    ));
                }
                let grads = kernel.backward(&Sizes::of(shape), inputs, saved, d_o, *threads)?;
                Ok(GradRun {
                    gradients: grads
                        .into_iter()
                        .map(|(n, t)| (n, HostTensor::from(t)))
                        .collect(),
                    device: format!("cpu ({threads} threads, Cranelift JIT, f32)"),
                    time: start.elapsed(),
                })
            }
        }
    }
}
