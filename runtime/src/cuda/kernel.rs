//! A compiled plan on a CUDA device: one PTX module per (plan, Variant), serving every call.
//! The PTX holds no length; each call's launches (grid, shared memory, `u32` sizes) and buffer
//! layout follow from the length-free [`ModuleManifest`] and the call's [`Sizes`], which the
//! [`DeviceTensors`] carry. Upload once and launch many times, or [`CudaKernel::run`] to do
//! all of it and read the outputs back.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::sys::CUfunction_attribute;
use cudarc::driver::{CudaFunction, LaunchConfig, PushKernelArg};
use nsac_compiler::ir::{Op, Plan, Sizes, TensorId};
use nsac_compiler::ptx::{
    BufferInfo, CallSizes, GpuVariant, LaunchDims, Manifest, ModuleManifest, Param, PtxError,
    emit_module, segment_table,
};
use nsac_dsl::Spec;
use nsac_dsl::problem::{DType, Shape};
use nsac_kernels::io::{Inputs, Tensor, input_refs};

use super::tensors::{DeviceTensors, TensorsError, check_sizes};
use super::{CudaDevice, CudaError, driver, time_on_stream};
use crate::bench::median;
use crate::contract::ContractError;
use crate::tensor_io::HostTensor;

/// What one GPU call produces (f32 outputs, int32 indices), by branch.
#[derive(Debug, Clone, PartialEq)]
pub struct CudaOutput {
    pub o: Tensor<f32>,
    pub branches: BTreeMap<String, Tensor<f32>>,
    pub selected: BTreeMap<String, Tensor<i32>>,
}

/// Median time of one kernel over timed runs.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelTime {
    pub kernel: String,
    pub median_ms: f32,
}

/// A plan compiled for one Variant on one device; it launches the [`DeviceTensors`] of any
/// call of its plan.
pub struct CudaKernel {
    device: Arc<CudaDevice>,
    plan: Arc<Plan>,
    variant: GpuVariant,
    manifest: ModuleManifest,
    ptx: String,
    functions: Vec<CudaFunction>,
    /// The dynamic shared bytes each function is allowed so far (raised when a call needs more
    /// than 48 KiB).
    shared_allowed: Mutex<Vec<u32>>,
}

/// Rounds every input to `dtype` (what the GPU reads), so the oracle can be fed the same values.
pub fn round_inputs(inputs: &Inputs, dtype: DType) -> Inputs {
    inputs
        .iter()
        .map(|(k, t)| {
            let data = t
                .data
                .iter()
                .map(|&x| match dtype {
                    DType::F32 => x,
                    DType::F16 => half::f16::from_f32(x).to_f32(),
                    DType::Bf16 => half::bf16::from_f32(x).to_f32(),
                })
                .collect();
            (
                k.clone(),
                Tensor {
                    shape: t.shape.clone(),
                    data,
                },
            )
        })
        .collect()
}

/// The dynamic shared memory every kernel may use without opting in.
const DEFAULT_SHARED: u32 = 48 * 1024;

fn contract(e: ContractError) -> CudaError {
    match e {
        ContractError::Input(e) => CudaError::Input(e),
        ContractError::Sizes(e) => CudaError::Ptx(PtxError::Sizes(e)),
    }
}

impl CudaKernel {
    /// Builds the plan of `spec` for `shape`'s heads, head dims and dtype (its lengths are used
    /// for nothing), generates its PTX with `variant` and loads it.
    pub fn compile(
        device: &Arc<CudaDevice>,
        spec: &Spec,
        shape: &Shape,
        variant: &GpuVariant,
    ) -> Result<CudaKernel, CudaError> {
        let plan = Plan::for_shape(spec, shape).map_err(PtxError::from)?;
        Self::compile_plan(device, plan, variant)
    }

    /// Generates PTX for `plan` with `variant` and loads it (cached per device by the PTX
    /// text).
    pub fn compile_plan(
        device: &Arc<CudaDevice>,
        plan: Plan,
        variant: &GpuVariant,
    ) -> Result<CudaKernel, CudaError> {
        let (ptx, manifest) = emit_module(&plan, variant, device.arch())?;
        let module = device.module(&ptx, &plan.name)?;
        let mut functions = Vec::new();
        for k in &manifest.kernels {
            let f = driver(
                || format!("loading kernel `{}`", k.name),
                module.load_function(&k.name),
            )?;
            functions.push(f);
        }
        let shared_allowed = Mutex::new(vec![DEFAULT_SHARED; functions.len()]);
        Ok(CudaKernel {
            device: device.clone(),
            plan: Arc::new(plan),
            variant: *variant,
            manifest,
            ptx,
            functions,
            shared_allowed,
        })
    }

    /// Raises kernel `i`'s dynamic shared memory allowance to `bytes` if needed; fails with
    /// [`CudaError::SharedMemory`] when the device has less.
    fn allow_shared(&self, i: usize, bytes: u32) -> Result<(), CudaError> {
        let mut allowed = self
            .shared_allowed
            .lock()
            .map_err(|_| CudaError::Manifest("shared-memory allowances poisoned".into()))?;
        if bytes <= allowed[i] {
            return Ok(());
        }
        let name = &self.manifest.kernels[i].name;
        let limit = self.device.limits()?.max_shared_bytes_per_block;
        if u64::from(bytes) > limit {
            return Err(CudaError::SharedMemory {
                kernel: name.clone(),
                needed: bytes.into(),
                available: limit,
            });
        }
        driver(
            || format!("allowing {bytes} B of dynamic shared memory for kernel `{name}`"),
            self.functions[i].set_attribute(
                CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                bytes as i32,
            ),
        )?;
        allowed[i] = bytes;
        Ok(())
    }

    /// Every kernel's launch for a call of `sizes`, with the shared memory each needs allowed.
    fn launches(&self, sizes: &Sizes) -> Result<Vec<LaunchDims>, CudaError> {
        let launches = self.manifest.launches(CallSizes::of(sizes))?;
        for (i, l) in launches.iter().enumerate() {
            self.allow_shared(i, l.shared_bytes)?;
        }
        Ok(launches)
    }

    /// The plan the kernels were generated from.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The Variant the kernels were generated with.
    pub fn variant(&self) -> &GpuVariant {
        &self.variant
    }

    /// The device the kernels are loaded on.
    pub fn device(&self) -> &Arc<CudaDevice> {
        &self.device
    }

    /// The length-free launch manifest: kernels, their parameters and launch formulas.
    pub fn manifest(&self) -> &ModuleManifest {
        &self.manifest
    }

    /// The launch manifest of a call of `sizes` (its launches and buffers).
    pub fn manifest_for(&self, sizes: &Sizes) -> Result<Manifest, CudaError> {
        Ok(self.manifest.for_call(&self.plan, sizes)?)
    }

    /// The buffers of a call of `sizes`, in the manifest's order.
    pub fn layout(&self, sizes: &Sizes) -> Result<Vec<BufferInfo>, CudaError> {
        Ok(self.manifest.buffers(&self.plan, sizes)?)
    }

    /// The PTX text that was loaded.
    pub fn ptx(&self) -> &str {
        &self.ptx
    }

    /// Allocates the buffers of a call of `sizes` on the device's stream: the segment table
    /// uploaded, scratch and outputs zeroed, inputs unbound (set them with
    /// [`DeviceTensors::set_input`], [`DeviceTensors::bind_input`] or
    /// [`DeviceTensors::bind_input_raw`]). Fails before allocating when `sizes` is not a
    /// forward call (segments partitioning each row) or more than the kernels can index.
    pub fn alloc<'a>(&self, sizes: &Sizes) -> Result<DeviceTensors<'a>, CudaError> {
        check_sizes(sizes)?;
        self.manifest.launches(CallSizes::of(sizes))?;
        let layout = self.layout(sizes)?;
        DeviceTensors::allocate(
            self.plan.clone(),
            sizes.clone(),
            layout,
            &segment_table(&self.plan, sizes),
            self.device.stream.clone(),
        )
    }

    /// [`CudaKernel::alloc`], then uploads `inputs` (f32 host tensors converted to the plan's
    /// dtype; exactly the plan's inputs, shaped for `sizes`, finite, and within the magnitudes
    /// the dtype and f32 accumulation represent: `crate::guard`). Inputs replaced later with
    /// `set_input` or bound from device memory are checked for shape only.
    pub fn upload<'a>(
        &self,
        sizes: &Sizes,
        inputs: &Inputs,
    ) -> Result<DeviceTensors<'a>, CudaError> {
        crate::contract::check_inputs(&self.plan, sizes, inputs).map_err(contract)?;
        let arith = crate::guard::Arithmetic::Inputs(self.plan.consts.dtype);
        crate::guard::check(&self.plan, sizes, &input_refs(inputs), arith)?;
        let mut tensors = self.alloc(sizes)?;
        for (name, t) in inputs {
            tensors.set_input(name, t)?;
        }
        Ok(tensors)
    }

    /// Enqueues every kernel on the tensors' stream: no wait and no copy back (read the outputs
    /// with [`DeviceTensors::download`] or hand on [`DeviceTensors::output`]). Each launch is
    /// checked; a kernel that fails while running surfaces at the next wait.
    pub fn launch(&self, tensors: &DeviceTensors<'_>) -> Result<(), CudaError> {
        self.launch_kernels(tensors, None)
    }

    fn launch_kernels(
        &self,
        tensors: &DeviceTensors<'_>,
        only: Option<usize>,
    ) -> Result<(), CudaError> {
        // Tensors of the same plan have the same buffers under the same names and shapes for
        // their sizes whatever the Variant; each kernel looks its buffers up by name.
        if !(Arc::ptr_eq(tensors.plan(), &self.plan) || **tensors.plan() == *self.plan) {
            return Err(TensorsError::OtherPlan.into());
        }
        let stream = tensors.stream();
        if stream.context().cu_ctx() != self.device.ctx.cu_ctx() {
            return Err(TensorsError::OtherContext("the tensors' stream".into()).into());
        }
        tensors.check_bound()?;
        let launches = self.launches(tensors.sizes())?;
        for (i, ((k, f), l)) in self
            .manifest
            .kernels
            .iter()
            .zip(&self.functions)
            .zip(&launches)
            .enumerate()
        {
            if only.is_some_and(|o| o != i) {
                continue;
            }
            let mut args = stream.launch_builder(f);
            for p in &k.params {
                if let Param::Buffer { name } = p {
                    tensors.push_arg(&mut args, name)?;
                }
            }
            for x in &l.scalars {
                args.arg(x);
            }
            let cfg = LaunchConfig {
                grid_dim: (l.grid, 1, 1),
                block_dim: (l.block, 1, 1),
                shared_mem_bytes: l.shared_bytes,
            };
            // SAFETY: the parameters are exactly the kernel's parameters, in order: device
            // buffers laid out by the manifest for the tensors' sizes (owned ones allocated so,
            // borrowed ones checked to hold exactly their bytes), then its `u32` sizes for
            // those sizes, evaluated with the launch (checked against the kernels' 32-bit
            // index limit).
            unsafe { args.launch(cfg) }.map_err(|source| CudaError::Launch {
                kernel: k.name.clone(),
                grid: l.grid,
                block: l.block,
                shared: l.shared_bytes,
                source,
            })?;
        }
        Ok(())
    }

    /// Runs the plan on `inputs` for a call of `sizes`: uploads, launches, waits and reads
    /// every output back.
    pub fn run(&self, sizes: &Sizes, inputs: &Inputs) -> Result<CudaOutput, CudaError> {
        let tensors = self.upload(sizes, inputs)?;
        self.launch(&tensors)?;
        tensors.synchronize()?;
        self.outputs(&tensors)
    }

    /// The outputs of `tensors` by branch: `o`, each branch's `o_<b>`, each select branch's
    /// `idx_<b>`.
    pub fn outputs(&self, tensors: &DeviceTensors<'_>) -> Result<CudaOutput, CudaError> {
        let name = |id: TensorId| self.plan.tensor(id).name.as_str();
        let f32s = |id: TensorId| -> Result<Tensor<f32>, CudaError> {
            match tensors.download(name(id))? {
                HostTensor::F32(t) => Ok(t),
                _ => Err(CudaError::Manifest(format!(
                    "output `{}` is not f32",
                    name(id)
                ))),
            }
        };
        let mut o = None;
        let mut branches = BTreeMap::new();
        let mut selected = BTreeMap::new();
        for op in &self.plan.ops {
            match op {
                Op::Attend(a) => {
                    branches.insert(a.branch.clone(), f32s(a.out)?);
                }
                Op::TopK(t) => match tensors.download(name(t.idx))? {
                    HostTensor::I32(idx) => {
                        selected.insert(t.branch.clone(), idx);
                    }
                    _ => {
                        return Err(CudaError::Manifest(format!(
                            "output `{}` is not i32",
                            name(t.idx)
                        )));
                    }
                },
                Op::Combine(c) => o = Some(f32s(c.out)?),
                _ => {}
            }
        }
        let o = o.ok_or_else(|| CudaError::Manifest("the plan has no combine".into()))?;
        Ok(CudaOutput {
            o,
            branches,
            selected,
        })
    }

    /// Runs every kernel once on `tensors` and returns the device time in milliseconds,
    /// measured with CUDA events on the tensors' stream.
    pub fn time_once(&self, tensors: &DeviceTensors<'_>) -> Result<f32, CudaError> {
        time_on_stream(tensors.stream(), || self.launch(tensors))
    }

    /// Median wall time of the whole call and of each kernel over `iters` timed runs after
    /// `warmup` runs on `inputs` for a call of `sizes`, measured with CUDA events.
    pub fn time(
        &self,
        sizes: &Sizes,
        inputs: &Inputs,
        warmup: usize,
        iters: usize,
    ) -> Result<(f32, Vec<KernelTime>), CudaError> {
        let tensors = self.upload(sizes, inputs)?;
        for _ in 0..warmup {
            self.launch(&tensors)?;
        }
        let whole = (0..iters.max(1))
            .map(|_| self.time_once(&tensors))
            .collect::<Result<Vec<f32>, _>>()?;
        let mut per = Vec::new();
        for (i, k) in self.manifest.kernels.iter().enumerate() {
            let ts = (0..iters.max(1))
                .map(|_| {
                    time_on_stream(tensors.stream(), || self.launch_kernels(&tensors, Some(i)))
                })
                .collect::<Result<Vec<f32>, _>>()?;
            per.push(KernelTime {
                kernel: k.name.clone(),
                median_ms: median(ts),
            });
        }
        Ok((median(whole), per))
    }
}
