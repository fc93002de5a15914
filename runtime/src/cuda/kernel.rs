//! A compiled plan on a CUDA device: buffers per the PTX manifest (which lists the plan's
//! tensors and the backend's scratch), kernels launched in order with their launch geometry and
//! `u32` size parameters evaluated for the call, outputs read back from the plan's `Out`
//! tensors under the oracle's names (`o`, `o_<b>`, `idx_<b>`). The PTX does not depend on the
//! problem's lengths, so modules are cached by their text and shared by every shape.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::sys::CUfunction_attribute;
use cudarc::driver::{CudaFunction, CudaSlice, LaunchConfig, PushKernelArg};
use nsac_compiler::ir::{Op, Plan, Sizes};
use nsac_compiler::ptx::{
    BufferRole, CallSizes, GpuVariant, LaunchDims, Manifest, Param, PtxError, emit_plan,
    segment_table,
};
use nsac_dsl::Spec;
use nsac_dsl::problem::{DType, Shape};
use nsac_kernels::io::{Inputs, Tensor};

use super::{CudaDevice, CudaError, driver, time_on_stream};
use crate::bench::median;
use crate::contract::ContractError;

/// What one GPU call produces (f32 outputs, int32 indices).
#[derive(Debug, Clone, PartialEq)]
pub struct CudaOutput {
    pub o: Tensor<f32>,
    pub branches: BTreeMap<String, Tensor<f32>>,
    pub selected: BTreeMap<String, Tensor<i32>>,
}

/// Device buffers laid out by one manifest, inputs uploaded: every Variant of a spec on a shape
/// has the same buffers, so a tuner uploads once and times every candidate on them.
pub struct DeviceBuffers {
    layout: Vec<nsac_compiler::ptx::BufferInfo>,
    slices: BTreeMap<String, CudaSlice<u8>>,
    /// Every kernel's launch for these buffers' problem.
    launches: Vec<LaunchDims>,
}

/// Median time of one kernel over timed runs.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelTime {
    pub kernel: String,
    pub median_ms: f32,
}

/// A plan compiled for one variant on one device, with the sizes of the call its buffers are
/// laid out for.
pub struct CudaKernel {
    device: Arc<CudaDevice>,
    plan: Plan,
    sizes: Sizes,
    variant: GpuVariant,
    manifest: Manifest,
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

fn to_bytes(data: &[f32], dtype: DType) -> Vec<u8> {
    match dtype {
        DType::F32 => data.iter().flat_map(|x| x.to_le_bytes()).collect(),
        DType::F16 => data
            .iter()
            .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
            .collect(),
        DType::Bf16 => data
            .iter()
            .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
            .collect(),
    }
}

/// The dynamic shared memory every kernel may use without opting in.
const DEFAULT_SHARED: u32 = 48 * 1024;

impl CudaKernel {
    /// Builds the plan of `spec` on `shape` (they are used for nothing else), generates its
    /// PTX with `variant` and loads it (cached per device by the PTX text, which is the same
    /// for every length and packing).
    pub fn compile(
        device: &Arc<CudaDevice>,
        spec: &Spec,
        shape: &Shape,
        variant: &GpuVariant,
    ) -> Result<CudaKernel, CudaError> {
        let plan = Plan::for_shape(spec, shape).map_err(PtxError::from)?;
        Self::compile_plan(device, plan, Sizes::of(shape), variant)
    }

    /// Generates PTX for `plan` with `variant` and loads it (cached per device); buffers are
    /// laid out for a call of `sizes`.
    pub fn compile_plan(
        device: &Arc<CudaDevice>,
        plan: Plan,
        sizes: Sizes,
        variant: &GpuVariant,
    ) -> Result<CudaKernel, CudaError> {
        let (ptx, manifest) = emit_plan(&plan, &sizes, variant, device.arch())?;
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
            plan,
            sizes,
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

    /// Every kernel's launch for `sizes`, with the shared memory each needs allowed.
    fn launches(&self, sizes: CallSizes) -> Result<Vec<LaunchDims>, CudaError> {
        let launches = self.manifest.launches(sizes)?;
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

    /// Checks that `inputs` holds exactly the plan's `In` tensors, with their shapes for the
    /// kernel's sizes and finite values.
    fn check_inputs(&self, inputs: &Inputs) -> Result<(), CudaError> {
        crate::contract::check_inputs(&self.plan, &self.sizes, inputs).map_err(|e| match e {
            ContractError::Input(e) => CudaError::Input(e),
            ContractError::Sizes(e) => CudaError::Ptx(PtxError::Sizes(e)),
        })
    }

    /// The launch manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The PTX text that was loaded.
    pub fn ptx(&self) -> &str {
        &self.ptx
    }

    /// Allocates this kernel's buffers and copies `inputs` (converted to the shape's dtype) in.
    pub fn upload(&self, inputs: &Inputs) -> Result<DeviceBuffers, CudaError> {
        self.check_inputs(inputs)?;
        let launches = self.launches(CallSizes::of(&self.sizes))?;
        let dtype = self.plan.consts.dtype;
        let stream = &self.device.stream;
        let mut bufs = BTreeMap::new();
        for b in &self.manifest.buffers {
            let slice = match b.role {
                BufferRole::Input => {
                    let t = inputs.get(&b.name).ok_or_else(|| {
                        CudaError::Manifest(format!("no input for buffer `{}`", b.name))
                    })?;
                    let bytes = to_bytes(&t.data, dtype);
                    driver(
                        || format!("copying input `{}` to the device", b.name),
                        stream.clone_htod(&bytes),
                    )?
                }
                BufferRole::Segments => {
                    let seg: Vec<u8> = segment_table(&self.plan, &self.sizes)
                        .iter()
                        .flat_map(|x| x.to_le_bytes())
                        .collect();
                    driver(|| "copying segments".into(), stream.clone_htod(&seg))?
                }
                // (at least one element: a problem may have no compressed token)
                BufferRole::Scratch | BufferRole::Output => driver(
                    || format!("allocating buffer `{}`", b.name),
                    stream.alloc_zeros::<u8>(b.numel().max(1) * b.elem_bytes()),
                )?,
            };
            bufs.insert(b.name.clone(), slice);
        }
        Ok(DeviceBuffers {
            layout: self.manifest.buffers.clone(),
            slices: bufs,
            launches,
        })
    }

    fn launch_all(&self, bufs: &DeviceBuffers, only: Option<usize>) -> Result<(), CudaError> {
        if bufs.layout != self.manifest.buffers {
            return Err(CudaError::Manifest(
                "the buffers were uploaded for another spec or shape".into(),
            ));
        }
        let (slices, launches) = (&bufs.slices, &bufs.launches);
        let stream = &self.device.stream;
        for (i, ((k, f), l)) in self
            .manifest
            .kernels
            .iter()
            .zip(&self.functions)
            .zip(launches)
            .enumerate()
        {
            if only.is_some_and(|o| o != i) {
                continue;
            }
            let mut args = stream.launch_builder(f);
            for p in &k.params {
                if let Param::Buffer { name } = p {
                    let b = slices.get(name).ok_or_else(|| {
                        CudaError::Manifest(format!(
                            "kernel `{}` reads unknown buffer `{name}`",
                            k.name
                        ))
                    })?;
                    args.arg(b);
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
            // buffers sized by the manifest of the problem they were uploaded for, then its
            // `u32` sizes for that problem, evaluated with the launch (checked against the
            // kernels' 32-bit index limit).
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

    fn download_f32(&self, bufs: &DeviceBuffers, name: &str) -> Result<Tensor<f32>, CudaError> {
        let (bytes, shape) = self.download(bufs, name)?;
        let data = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(Tensor { shape, data })
    }

    fn download(
        &self,
        bufs: &DeviceBuffers,
        name: &str,
    ) -> Result<(Vec<u8>, Vec<usize>), CudaError> {
        let info = self
            .manifest
            .buffer(name)
            .ok_or_else(|| CudaError::Manifest(format!("no buffer `{name}`")))?;
        let b = bufs
            .slices
            .get(name)
            .ok_or_else(|| CudaError::Manifest(format!("buffer `{name}` not allocated")))?;
        let bytes = driver(
            || format!("copying output `{name}` to the host"),
            self.device.stream.clone_dtoh(b),
        )?;
        Ok((bytes, info.shape.clone()))
    }

    /// Runs the spec on `inputs` (f32 host tensors, converted to the shape's dtype).
    pub fn run(&self, inputs: &Inputs) -> Result<CudaOutput, CudaError> {
        let bufs = self.upload(inputs)?;
        self.launch_all(&bufs, None)?;
        driver(
            || "waiting for the kernels".into(),
            self.device.stream.synchronize(),
        )?;
        let name = |id| self.plan.tensor(id).name.as_str();
        let mut o = None;
        let mut branches = BTreeMap::new();
        let mut selected = BTreeMap::new();
        for op in &self.plan.ops {
            match op {
                Op::Attend(a) => {
                    branches.insert(a.branch.clone(), self.download_f32(&bufs, name(a.out))?);
                }
                Op::TopK(t) => {
                    let (bytes, shape) = self.download(&bufs, name(t.idx))?;
                    let data = bytes
                        .chunks_exact(4)
                        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect();
                    selected.insert(t.branch.clone(), Tensor { shape, data });
                }
                Op::Combine(c) => o = Some(self.download_f32(&bufs, name(c.out))?),
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

    /// Runs every kernel once on `bufs` and returns the device time in milliseconds, measured
    /// with CUDA events on the device's stream.
    pub fn time_once(&self, bufs: &DeviceBuffers) -> Result<f32, CudaError> {
        self.timed(|| self.launch_all(bufs, None))
    }

    fn timed(&self, launch: impl FnOnce() -> Result<(), CudaError>) -> Result<f32, CudaError> {
        time_on_stream(&self.device.stream, launch)
    }

    /// Median wall time of the whole call and of each kernel over `iters` timed runs after
    /// `warmup` runs, measured with CUDA events on the device's stream.
    pub fn time(
        &self,
        inputs: &Inputs,
        warmup: usize,
        iters: usize,
    ) -> Result<(f32, Vec<KernelTime>), CudaError> {
        let bufs = self.upload(inputs)?;
        for _ in 0..warmup {
            self.launch_all(&bufs, None)?;
        }
        let whole = (0..iters.max(1))
            .map(|_| self.time_once(&bufs))
            .collect::<Result<Vec<f32>, _>>()?;
        let mut per = Vec::new();
        for (i, k) in self.manifest.kernels.iter().enumerate() {
            let ts = (0..iters.max(1))
                .map(|_| self.timed(|| self.launch_all(&bufs, Some(i))))
                .collect::<Result<Vec<f32>, _>>()?;
            per.push(KernelTime {
                kernel: k.name.clone(),
                median_ms: median(ts),
            });
        }
        Ok((median(whole), per))
    }
}
