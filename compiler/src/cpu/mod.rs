//! The CPU backend: `Plan` + [`CpuVariant`] → Cranelift IR → host machine code (cranelift-jit).
//!
//! # What is generated
//!
//! For a plan, one JIT module holds (names `nsac_<spec>_<fn>`):
//! * four tile routines specialized on G, Dqk, Dv, the scale and the variant: `qk`
//!   (S = scale·Q·Kᵀ over a key tile, rows × key-vector register tiles of F32X4 FMAs), `softmax`
//!   (masked online-softmax update: running max and sum, −∞-safe, rescales the accumulator),
//!   `pv` (O += P·V, rows × value-vector register tiles), `finish` (O/ℓ, 0 for an empty row);
//! * one driver per step of [`steps`]: `pool_<c>` (pooling into packed compressed K̃/Ṽ),
//!   `cmp_<c>` (compressed attention in key tiles; when scored, keeps every tile's P and
//!   leaves the normalized probabilities for scoring),
//!   `topk_<s>` (block scores by overlap weights, forced blocks, partial top-k selection
//!   with the oracle's tie rule), `sel_<s>` / `win_<w>` (online softmax over the chosen blocks /
//!   the window), `combine` (gated or plain sum).
//!
//! Every driver has the one signature of [`abi`]: a pointer to an argument block whose slots
//! its [`abi::Entry`] names. A driver handles one work item — (b, segment, kv head, position) —
//! and the executor (`exec`, beside the code that defines the ABI) runs items in parallel with
//! rayon; every item writes disjoint output rows. Everything the spec computes runs in
//! generated code, with no helper calls: `exp` is an inline polynomial (see `emit`); the
//! executor only packs K/V into the layouts documented in `codegen::tile` and loops over items.
//! [`CpuProgram::run`] is the checked entry: it checks the inputs against the plan first.
//!
//! The score scratch `s` holds G rows of [`score_stride`] floats, a constant of the generated
//! code (the scored compressed attention: one such tile per chunk, [`compressed_scratch`]).
//! No generated code depends on B, T or `cu_seqlens`: lengths arrive in the argument block.

pub mod abi;
mod codegen;
mod emit;
mod exec;
mod jit;
pub mod schedule;
pub mod topk;
mod variant;

use std::time::Duration;

use cranelift_jit::JITModule;

pub use jit::{emit_asm, emit_clif, host_has_fma};
pub use variant::{CpuVariant, VariantError, candidates};

use crate::ir::contract::{ContractError, check_input_refs_except};
use crate::ir::{Elem, Plan, Role as TensorRole, Sizes};
use abi::Driver;
use codegen::Role;
use nsac_kernels::io::{InputRefs, Inputs, input_refs};

pub use exec::{CpuOutput, Gradients, OutputRef, OutputRefs, Saved};
pub use schedule::{Step, TopKParams, steps};

/// Why CPU code generation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CpuError {
    #[error(transparent)]
    Variant(#[from] VariantError),
    #[error("the CPU backend computes in f32 only (got {0})")]
    DType(&'static str),
    #[error("no Cranelift backend for this host: {0}")]
    Isa(String),
    #[error("code generation failed: {0}")]
    Codegen(String),
    #[error(transparent)]
    Contract(#[from] ContractError),
    #[error(transparent)]
    Abi(#[from] abi::AbiError),
    #[error("{0}")]
    Output(String),
    #[error("the blocks given for `{branch}` (input idx_{branch}) are invalid: {reason}")]
    BadIndices { branch: String, reason: String },
    #[error(
        "the CPU backend's code grows with the group size and head dims: G = {group}, head dims {dqk}/{dv} exceed its limits (G ≤ {MAX_GROUP}, dims ≤ {MAX_HEAD_DIM}, G·(Dqk+Dv) ≤ {MAX_GROUP_DIMS}); use fewer query heads per kv head, smaller dims, or another device"
    )]
    TooLarge { group: usize, dqk: usize, dv: usize },
}

/// The largest GQA group the CPU backend compiles (its code is specialised on G).
pub const MAX_GROUP: usize = 256;
/// The largest head dim the CPU backend compiles.
pub const MAX_HEAD_DIM: usize = 1024;
/// The largest G·(Dqk+Dv): code size and compile memory grow with the product (measured: G = 256
/// at dims 128 about 110 MB and 2 s to compile; G = 256 at dims 1024, 3.7 GB and 47 s).
pub const MAX_GROUP_DIMS: usize = 65536;

/// `fma_peak(iters) -> checksum`: 12 chains × 8 FLOPs per iteration.
pub type PeakFn = unsafe extern "C" fn(i64) -> f32;

/// Floats between consecutive rows of the score scratch (S/P) every attention driver is given:
/// enough for a key tile (`variant.key_tile`: the chunk width of compressed and window
/// attention) and a selection block (plus the three keys of misalignment), padded by a cache
/// line when it is a multiple of 256 bytes. It depends only on the variant and the spec's
/// constants, never on B, T or `cu_seqlens`, and is a compile-time constant of the generated
/// code, so row addresses fold into instruction displacements.
pub fn score_stride(plan: &Plan, variant: &CpuVariant) -> usize {
    let round4 = |x: usize| x.div_ceil(4).max(1) * 4;
    let widest = steps(plan)
        .unwrap_or_default()
        .iter()
        .map(|st| match st {
            Step::Compressed { .. } | Step::Window { .. } => variant.key_tile as usize,
            Step::Selected { block, .. } => round4(block + 3),
            _ => 4,
        })
        .fold(4, usize::max);
    // Rows a multiple of 256 bytes apart share L1 sets (4 KiB apart: all of them, more than
    // the 8 ways); one more cache line spreads the G rows over distinct sets.
    if widest.is_multiple_of(64) {
        widest + 16
    } else {
        widest
    }
}

/// Floats between consecutive rows of the backward drivers' S/P and dP/dS scratch: a key tile
/// of `bwd_key_tile` keys (tiles start at multiples of 4) and, for a gathered attention, a
/// selection block plus the three keys of misalignment (its dK/dV tile). A constant of the
/// generated code, like [`score_stride`].
pub fn grad_stride(plan: &Plan, variant: &CpuVariant) -> usize {
    let round4 = |x: usize| x.div_ceil(4).max(1) * 4;
    let widest = plan
        .ops
        .iter()
        .filter_map(|op| match op {
            crate::ir::Op::AttendGrad(a) => Some(match a.keys {
                crate::ir::KeySet::Gather { granularity, .. } => {
                    round4(granularity + 3).max(variant.bwd_key_tile as usize)
                }
                _ => variant.bwd_key_tile as usize,
            }),
            _ => None,
        })
        .fold(4, usize::max);
    if widest.is_multiple_of(64) {
        widest + 16
    } else {
        widest
    }
}

/// Floats of the scratch a compressed attention driver `cmp_<c>` needs for at most `nvis`
/// visible tokens, as `(s, mc)`. Unscored: `s` is one key tile of G rows of [`score_stride`]
/// floats, `mc` is not read. Scored by a select branch: every key tile (chunk) of
/// `key_tile` tokens keeps its P, chunk-major `[chunk][G][score_stride]`, and `mc` holds the
/// running maxima after each chunk, `[chunk][G]`.
pub fn compressed_scratch(
    plan: &Plan,
    variant: &CpuVariant,
    scored: bool,
    nvis: usize,
) -> (usize, usize) {
    let g = plan.consts.group;
    let tile = g * score_stride(plan, variant);
    if scored {
        let chunks = nvis.div_ceil(variant.key_tile as usize).max(1);
        (chunks * tile, chunks * g)
    } else {
        (tile, 1)
    }
}

/// A plan compiled for this host. The code lives as long as this value.
pub struct CpuProgram {
    module: Option<JITModule>,
    /// The plan the code was generated from (the executor walks its steps).
    plan: Plan,
    /// One driver per step of [`steps`], in order.
    pub drivers: Vec<Driver>,
    /// Wall time of code generation + JIT compilation.
    pub compile_time: Duration,
    pub variant: CpuVariant,
    /// [`score_stride`] of this plan and variant: the S/P row stride of every driver.
    pub score_stride: usize,
}

// SAFETY: after finalization the module is only kept to own the executable memory (it is
// never mutated until drop); the function pointers are plain code addresses.
unsafe impl Send for CpuProgram {}
// SAFETY: see `Send`: shared access only reads function pointers.
unsafe impl Sync for CpuProgram {}

impl std::fmt::Debug for CpuProgram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuProgram")
            .field("plan", &self.plan.name)
            .field("drivers", &self.drivers.len())
            .field("compile_time", &self.compile_time)
            .field("variant", &self.variant)
            .finish()
    }
}

impl Drop for CpuProgram {
    fn drop(&mut self) {
        if let Some(m) = self.module.take() {
            // SAFETY: the function pointers die with `self`; nobody can call them afterwards.
            unsafe { m.free_memory() };
        }
    }
}

/// Rejects a plan whose code would be too large to generate ([`CpuError::TooLarge`]).
pub fn check_size(plan: &Plan) -> Result<(), CpuError> {
    let (group, dqk, dv) = (plan.consts.group, plan.consts.dqk, plan.consts.dv);
    let dims = dqk.saturating_add(dv);
    if group > MAX_GROUP
        || dqk.max(dv) > MAX_HEAD_DIM
        || group.saturating_mul(dims) > MAX_GROUP_DIMS
    {
        return Err(CpuError::TooLarge { group, dqk, dv });
    }
    Ok(())
}

/// Compiles `plan` under `variant` for this host.
pub fn compile(plan: &Plan, variant: &CpuVariant) -> Result<CpuProgram, CpuError> {
    check_size(plan)?;
    if plan.consts.dtype != nsac_dsl::problem::DType::F32 {
        return Err(CpuError::DType(plan.consts.dtype.name()));
    }
    let steps = steps(plan)?;
    let (module, funcs, compile_time) = jit::compile_host(plan, variant)?;
    let mut drivers = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        let g = funcs
            .iter()
            .find(|g| g.role == Role::Stage(i))
            .ok_or_else(|| CpuError::Codegen(format!("step {i} has no function")))?;
        let ptr = module.get_finalized_function(g.id);
        // SAFETY: `ptr` is the finalized code of a function built with the one driver
        // signature, loading exactly the slots of `abi::entry(plan, step)`
        // (`codegen::generate`).
        let driver = unsafe {
            Driver::new(
                g.name.clone(),
                abi::entry(plan, step),
                std::mem::transmute::<*const u8, abi::EntryFn>(ptr),
            )
        };
        drivers.push(driver);
    }
    Ok(CpuProgram {
        module: Some(module),
        plan: plan.clone(),
        drivers,
        compile_time,
        variant: *variant,
        score_stride: score_stride(plan, variant),
    })
}

/// The name of the upstream gradient in a training plan's inputs.
const UPSTREAM: &str = "do";

impl CpuProgram {
    /// The plan the code was generated from.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The forward's inputs: the plan's `In` tensors but the upstream gradient.
    fn check_forward_inputs(&self, sizes: &Sizes, inputs: &InputRefs<'_>) -> Result<(), CpuError> {
        Ok(check_input_refs_except(
            &self.plan,
            sizes,
            inputs,
            &[UPSTREAM],
        )?)
    }

    /// Runs the program on `inputs` of any batch, lengths and packing (`sizes`), after checking
    /// them against the plan's `In` tensors; work items run on the current rayon pool.
    pub fn run(&self, sizes: &Sizes, inputs: &Inputs) -> Result<CpuOutput, CpuError> {
        let refs = input_refs(inputs);
        self.check_forward_inputs(sizes, &refs)?;
        let owned = exec::execute(self, sizes, &refs, &mut OutputRefs::new())?;
        CpuOutput::from_owned(&self.plan, owned)
    }

    /// Runs the program on borrowed inputs, writing the outputs named in `outputs` (any of the
    /// plan's `Out` tensors: `o`, `o_<b>`, `idx_<b>`) in place — no copy in or out. Outputs
    /// not lent are computed in scratch and dropped. Inputs and lent buffers are checked
    /// against the plan first (names, element types, lengths for `sizes`).
    pub fn run_into(
        &self,
        sizes: &Sizes,
        inputs: &InputRefs<'_>,
        outputs: &mut OutputRefs<'_>,
    ) -> Result<(), CpuError> {
        self.check_forward_inputs(sizes, inputs)?;
        self.check_outputs(sizes, outputs)?;
        exec::execute(self, sizes, inputs, outputs)?;
        Ok(())
    }

    /// The forward pass of a training plan ([`Plan::backward`]): the outputs, and what the
    /// backward needs ([`Saved`]: every saved log-sum-exp, the branch outputs and the chosen
    /// indices). On a forward-only plan this is [`CpuProgram::run`] with nothing saved.
    pub fn forward_train(
        &self,
        sizes: &Sizes,
        inputs: &InputRefs<'_>,
    ) -> Result<(CpuOutput, Saved), CpuError> {
        self.check_forward_inputs(sizes, inputs)?;
        let mut owned = exec::execute(self, sizes, inputs, &mut OutputRefs::new())?;
        let mut saved = Saved::default();
        for id in self.plan.tensors_with(TensorRole::Saved) {
            if let Some(t) = owned.f32.remove(&id) {
                saved.f32.insert(self.plan.tensor(id).name.clone(), t);
            }
        }
        let out = CpuOutput::from_owned(&self.plan, owned)?;
        for op in &self.plan.ops {
            if let crate::ir::Op::Attend(a) = op
                && let Some(t) = out.branches.get(&a.branch)
            {
                saved
                    .f32
                    .insert(self.plan.tensor(a.out).name.clone(), t.clone());
            }
            if let crate::ir::Op::TopK(k) = op
                && let Some(t) = out.selected.get(&k.branch)
            {
                saved
                    .i32
                    .insert(self.plan.tensor(k.idx).name.clone(), t.clone());
            }
        }
        Ok((out, saved))
    }

    /// The backward pass of a training plan: the gradient of every input (by the names of
    /// its `Grad` tensors, `dq`, `dk`, `dg_<b>`, …) for the upstream gradient `d_o`
    /// \[B,T,HQ,DV\], given the forward's `inputs` and what [`CpuProgram::forward_train`] saved.
    /// Deterministic: bit-identical for any number of threads.
    pub fn backward(
        &self,
        sizes: &Sizes,
        inputs: &InputRefs<'_>,
        saved: &Saved,
        d_o: &[f32],
    ) -> Result<Gradients, CpuError> {
        if !self.plan.has_backward() {
            return Err(CpuError::Output(
                "this program was compiled without a backward pass (compile Plan::backward)".into(),
            ));
        }
        self.check_forward_inputs(sizes, inputs)?;
        let id = self
            .plan
            .tensor_named(UPSTREAM)
            .ok_or_else(|| CpuError::Output("the plan has no upstream gradient `do`".into()))?;
        let shape = sizes.shape(&self.plan, id).map_err(ContractError::from)?;
        let n: usize = shape.iter().product();
        if d_o.len() != n {
            return Err(CpuError::Contract(ContractError::Input(
                nsac_kernels::io::InputError::BadLength {
                    name: UPSTREAM.into(),
                    shape,
                    got: d_o.len(),
                    expected: n,
                },
            )));
        }
        if d_o.iter().any(|x| !x.is_finite()) {
            return Err(CpuError::Contract(ContractError::Input(
                nsac_kernels::io::InputError::NonFinite(UPSTREAM.into()),
            )));
        }
        let mut all = inputs.clone();
        all.insert(
            UPSTREAM,
            nsac_kernels::io::TensorRef {
                shape: &shape,
                data: d_o,
            },
        );
        exec::execute_backward(self, sizes, &all, saved)
    }

    fn check_outputs(&self, sizes: &Sizes, outputs: &OutputRefs<'_>) -> Result<(), CpuError> {
        for (name, buf) in outputs {
            let id = self
                .plan
                .tensors_with(TensorRole::Out)
                .find(|&id| self.plan.tensor(id).name == *name)
                .ok_or_else(|| {
                    let names: Vec<&str> = self
                        .plan
                        .tensors_with(TensorRole::Out)
                        .map(|id| self.plan.tensor(id).name.as_str())
                        .collect();
                    CpuError::Output(format!(
                        "`{name}` is not an output of this plan (its outputs: {})",
                        names.join(", ")
                    ))
                })?;
            let want = sizes.numel(&self.plan, id).map_err(ContractError::from)?;
            let (len, is_i32) = match buf {
                OutputRef::F32(b) => (b.len(), false),
                OutputRef::I32(b) => (b.len(), true),
            };
            if is_i32 != (self.plan.tensor(id).elem == Elem::I32) {
                return Err(CpuError::Output(format!(
                    "`{name}` holds {} values, the buffer lent for it {}",
                    if is_i32 { "f32" } else { "i32" },
                    if is_i32 { "i32" } else { "f32" },
                )));
            }
            if len != want {
                return Err(CpuError::Output(format!(
                    "the buffer lent for `{name}` holds {len} values, the output has {want}"
                )));
            }
        }
        Ok(())
    }
}

/// The JIT'd 128-bit FMA ceiling probe.
pub struct PeakProgram {
    module: Option<JITModule>,
    pub run: PeakFn,
}

impl Drop for PeakProgram {
    fn drop(&mut self) {
        if let Some(m) = self.module.take() {
            // SAFETY: `run` dies with `self`.
            unsafe { m.free_memory() };
        }
    }
}

// SAFETY: as for `CpuProgram`.
unsafe impl Send for PeakProgram {}
// SAFETY: as for `CpuProgram`.
unsafe impl Sync for PeakProgram {}

/// Compiles the FMA ceiling probe for this host.
pub fn compile_peak() -> Result<PeakProgram, CpuError> {
    let mut module = jit::host_module()?;
    let g = codegen::generate_peak(&mut module, host_has_fma())
        .map_err(|e| CpuError::Codegen(e.to_string()))?;
    jit::define_all(&mut module, std::slice::from_ref(&g), false)?;
    let ptr = module.get_finalized_function(g.id);
    // SAFETY: built with signature (i64) -> f32.
    let run = unsafe { std::mem::transmute::<*const u8, PeakFn>(ptr) };
    Ok(PeakProgram {
        module: Some(module),
        run,
    })
}

/// FLOPs of one `fma_peak` iteration.
pub const PEAK_FLOPS_PER_ITER: u64 = 12 * 8;
