//! `CpuKernel`: a spec compiled once for this CPU (Cranelift JIT) and run many times on named
//! input tensors, producing the oracle's outputs (`o`, `o_<b>`, `idx_<b>`) in f32/i32.
//!
//! The kernel owns the `Plan` and the JIT'd drivers (`nsac_compiler::cpu`). A call checks the
//! inputs, packs K/V into the generated code's layouts and pools compressed tokens (in parallel
//! per (b, segment, kv head)), then runs the work items (b, segment, kv head, chunk of
//! positions) in parallel with rayon on a pool of the requested size. Items write disjoint rows.
//!
//! Training: [`CpuKernel::compile_train`] compiles the forward/backward pair
//! (`Plan::backward`); [`CpuKernel::forward_train`] returns the outputs with what the backward
//! needs ([`Saved`]), and [`CpuKernel::backward`] the gradient of every input for an upstream
//! gradient `do` — the two calls an autograd framework makes. The gradients are bit-identical
//! for any thread count.

use std::time::Duration;

use nsac_compiler::cpu::{self as backend, CpuError, CpuProgram, CpuVariant};

pub use nsac_compiler::cpu::{CpuOutput, Gradients, OutputRef, OutputRefs, Saved};
use nsac_compiler::ir::{LowerError, Plan, Sizes};
use nsac_dsl::Spec;
use nsac_dsl::problem::{Problem, ProblemError, Shape};
use nsac_kernels::io::{InputError, InputRefs, Inputs, Tensor, input_refs};

/// Why compiling or running a CPU kernel failed.
#[derive(Debug, thiserror::Error)]
pub enum CpuKernelError {
    #[error(transparent)]
    Problem(#[from] ProblemError),
    #[error(transparent)]
    Lower(#[from] LowerError),
    #[error(transparent)]
    Contract(#[from] crate::contract::ContractError),
    #[error(transparent)]
    Codegen(#[from] CpuError),
    #[error(transparent)]
    Input(#[from] InputError),
    #[error(transparent)]
    Guard(#[from] Box<crate::guard::GuardError>),
    #[error("threads must be at least 1")]
    NoThreads,
    #[error("could not start the thread pool: {0}")]
    ThreadPool(String),
}

/// A spec compiled for one shape and variant.
#[derive(Debug)]
pub struct CpuKernel {
    /// The shape it was compiled for (the default of [`CpuKernel::run`]; any other sizes run
    /// through [`CpuKernel::run_sizes`]).
    shape: Shape,
    program: CpuProgram,
    /// The worker pool of the last `run`, kept for the next call with the same thread count
    /// (starting threads on every call costs more than a small problem's work).
    pool: std::sync::Mutex<Option<(usize, std::sync::Arc<rayon::ThreadPool>)>>,
}

impl CpuKernel {
    /// A pool of `threads` workers: the cached one if it has that many.
    fn pool(&self, threads: usize) -> Result<std::sync::Arc<rayon::ThreadPool>, CpuKernelError> {
        if threads == 0 {
            return Err(CpuKernelError::NoThreads);
        }
        let mut cached = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((n, pool)) = cached.as_ref()
            && *n == threads
        {
            return Ok(pool.clone());
        }
        let pool = std::sync::Arc::new(
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .map_err(|e| CpuKernelError::ThreadPool(e.to_string()))?,
        );
        *cached = Some((threads, pool.clone()));
        Ok(pool)
    }

    /// Lowers and JIT-compiles `spec` on `shape` under `variant`.
    pub fn compile(
        spec: &Spec,
        shape: &Shape,
        variant: &CpuVariant,
    ) -> Result<CpuKernel, CpuKernelError> {
        let plan = Plan::for_shape(spec, shape)?;
        let program = backend::compile(&plan, variant)?;
        Ok(CpuKernel {
            shape: shape.clone(),
            program,
            pool: std::sync::Mutex::new(None),
        })
    }

    /// Lowers the training pair of `spec` (forward saving its log-sum-exps, then backward;
    /// `Plan::backward`) and JIT-compiles it: the kernel runs forward ([`CpuKernel::run`],
    /// [`CpuKernel::forward_train`]) and backward ([`CpuKernel::backward`]).
    pub fn compile_train(
        spec: &Spec,
        shape: &Shape,
        variant: &CpuVariant,
    ) -> Result<CpuKernel, CpuKernelError> {
        let plan = Plan::backward(spec, &nsac_compiler::ir::Signature::of(shape))?;
        let program = backend::compile(&plan, variant)?;
        Ok(CpuKernel {
            shape: shape.clone(),
            program,
            pool: std::sync::Mutex::new(None),
        })
    }

    /// Whether the kernel was compiled with a backward pass ([`CpuKernel::compile_train`]).
    pub fn has_backward(&self) -> bool {
        self.program.plan().has_backward()
    }

    /// The forward pass with saved state, on `inputs` of `sizes` (see
    /// `CpuProgram::forward_train`).
    pub fn forward_train(
        &self,
        sizes: &Sizes,
        inputs: &Inputs,
        threads: usize,
    ) -> Result<(CpuOutput, Saved), CpuKernelError> {
        self.forward_train_refs(sizes, &input_refs(inputs), threads)
    }

    /// [`CpuKernel::forward_train`] on borrowed inputs.
    pub fn forward_train_refs(
        &self,
        sizes: &Sizes,
        inputs: &InputRefs<'_>,
        threads: usize,
    ) -> Result<(CpuOutput, Saved), CpuKernelError> {
        let plan = self.program.plan();
        crate::guard::check(plan, sizes, inputs, crate::guard::Arithmetic::F32)?;
        let pool = self.pool(threads)?;
        Ok(pool.install(|| self.program.forward_train(sizes, inputs))?)
    }

    /// The gradient of every input (`dq`, `dk`, `dv`, `dg_<b>`, …) for the upstream gradient
    /// `d_o` \[B,T,HQ,DV\], from the forward's `inputs` and what
    /// [`CpuKernel::forward_train`] saved.
    pub fn backward(
        &self,
        sizes: &Sizes,
        inputs: &Inputs,
        saved: &Saved,
        d_o: &Tensor<f32>,
        threads: usize,
    ) -> Result<Gradients, CpuKernelError> {
        self.backward_refs(sizes, &input_refs(inputs), saved, &d_o.data, threads)
    }

    /// [`CpuKernel::backward`] on borrowed inputs and upstream gradient.
    pub fn backward_refs(
        &self,
        sizes: &Sizes,
        inputs: &InputRefs<'_>,
        saved: &Saved,
        d_o: &[f32],
        threads: usize,
    ) -> Result<Gradients, CpuKernelError> {
        let plan = self.program.plan();
        crate::guard::check(plan, sizes, inputs, crate::guard::Arithmetic::F32)?;
        let pool = self.pool(threads)?;
        Ok(pool.install(|| self.program.backward(sizes, inputs, saved, d_o))?)
    }

    /// [`CpuKernel::compile`] for a problem (resolved against the spec first).
    pub fn compile_problem(
        spec: &Spec,
        problem: &Problem,
        variant: &CpuVariant,
    ) -> Result<CpuKernel, CpuKernelError> {
        let shape = problem.resolve(spec)?;
        Self::compile(spec, &shape, variant)
    }

    /// Code generation + JIT time of this kernel.
    pub fn compile_time(&self) -> Duration {
        self.program.compile_time
    }

    pub fn plan(&self) -> &Plan {
        self.program.plan()
    }

    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    pub fn variant(&self) -> &CpuVariant {
        &self.program.variant
    }

    /// Runs the kernel on `inputs` of the shape it was compiled for, with `threads` worker
    /// threads.
    pub fn run(&self, inputs: &Inputs, threads: usize) -> Result<CpuOutput, CpuKernelError> {
        self.run_sizes(&Sizes::of(&self.shape), inputs, threads)
    }

    /// Runs the kernel on `inputs` of any batch, lengths and packing (`sizes`): the generated
    /// code does not depend on them.
    pub fn run_sizes(
        &self,
        sizes: &Sizes,
        inputs: &Inputs,
        threads: usize,
    ) -> Result<CpuOutput, CpuKernelError> {
        let plan = self.program.plan();
        let refs = input_refs(inputs);
        nsac_compiler::ir::contract::check_input_refs_except(plan, sizes, &refs, &["do"])?;
        crate::guard::check(plan, sizes, &refs, crate::guard::Arithmetic::F32)?;
        let pool = self.pool(threads)?;
        Ok(pool.install(|| self.program.run(sizes, inputs))?)
    }

    /// Runs the kernel on borrowed inputs and writes the lent outputs in place (see
    /// `CpuProgram::run_into`): no copy of the caller's tensors.
    pub fn run_into(
        &self,
        sizes: &Sizes,
        inputs: &InputRefs<'_>,
        outputs: &mut OutputRefs<'_>,
        threads: usize,
    ) -> Result<(), CpuKernelError> {
        let plan = self.program.plan();
        nsac_compiler::ir::contract::check_input_refs_except(plan, sizes, inputs, &["do"])?;
        crate::guard::check(plan, sizes, inputs, crate::guard::Arithmetic::F32)?;
        let pool = self.pool(threads)?;
        Ok(pool.install(|| self.program.run_into(sizes, inputs, outputs))?)
    }
}

/// The CLIF text of `spec` on `shape` under `variant` (`nsac compile --target cpu --emit clif`):
/// deterministic and independent of the host CPU.
pub fn emit_clif(
    spec: &Spec,
    shape: &Shape,
    variant: &CpuVariant,
) -> Result<String, CpuKernelError> {
    let plan = Plan::for_shape(spec, shape)?;
    backend::check_size(&plan)?;
    Ok(backend::emit_clif(&plan, variant)?)
}

/// The host machine code of `spec` on `shape` under `variant` (`--emit asm`), as Cranelift's
/// lowered instruction listing.
pub fn emit_asm(
    spec: &Spec,
    shape: &Shape,
    variant: &CpuVariant,
) -> Result<String, CpuKernelError> {
    let plan = Plan::for_shape(spec, shape)?;
    backend::check_size(&plan)?;
    Ok(backend::emit_asm(&plan, variant)?)
}
