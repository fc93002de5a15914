//! `CpuKernel`: a spec compiled once for this CPU (Cranelift JIT) and run many times on named
//! input tensors, producing the oracle's outputs (`o`, `o_<b>`, `idx_<b>`) in f32/i32.
//!
//! The kernel owns the `Plan` and the JIT'd drivers (`nsac_compiler::cpu`). A call checks the
//! inputs, packs K/V into the generated code's layouts and pools compressed tokens (in parallel
//! per (b, segment, kv head)), then runs the work items (b, segment, kv head, chunk of
//! positions) in parallel with rayon on a pool of the requested size. Items write disjoint rows.

use std::time::Duration;

use nsac_compiler::cpu::{self as backend, CpuError, CpuProgram, CpuVariant};

pub use nsac_compiler::cpu::{CpuOutput, OutputRef, OutputRefs};
use nsac_compiler::ir::{LowerError, Plan, Sizes};
use nsac_dsl::Spec;
use nsac_dsl::problem::{Problem, ProblemError, Shape};
use nsac_kernels::io::{InputError, InputRefs, Inputs, input_refs};

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
        crate::contract::check_input_refs(plan, sizes, &refs)?;
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
        crate::contract::check_input_refs(plan, sizes, inputs)?;
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
