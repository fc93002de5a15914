//! A compiled spec on a CUDA device: buffers per the PTX manifest, kernels launched in order,
//! outputs read back under the oracle's names (`o`, `o_<b>`, `idx_<b>`).

use std::collections::BTreeMap;
use std::sync::Arc;

use cudarc::driver::sys::CUfunction_attribute;
use cudarc::driver::{CudaFunction, CudaSlice, LaunchConfig, PushKernelArg};
use nsac_compiler::ptx::{BufferRole, GpuVariant, Manifest, emit_ptx, segment_table};
use nsac_dsl::problem::{DType, Shape};
use nsac_dsl::spec::Spec;
use nsac_kernels::io::{Inputs, Tensor, check_inputs};

use super::{CudaDevice, CudaError, driver, time_on_stream};
use crate::bench::median;
use crate::guard::Arithmetic;

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
}

/// Median time of one kernel over timed runs.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelTime {
    pub kernel: String,
    pub median_ms: f32,
}

/// `spec` compiled for one shape and variant on one device.
pub struct CudaKernel {
    device: Arc<CudaDevice>,
    spec: Spec,
    shape: Shape,
    manifest: Manifest,
    ptx: String,
    functions: Vec<CudaFunction>,
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

impl CudaKernel {
    /// Generates PTX for `spec` on `shape` with `variant`, loads it (cached per device).
    pub fn compile(
        device: &Arc<CudaDevice>,
        spec: &Spec,
        shape: &Shape,
        variant: &GpuVariant,
    ) -> Result<CudaKernel, CudaError> {
        let (ptx, manifest) = emit_ptx(spec, shape, variant, device.arch())?;
        let module = device.module((spec.clone(), shape.clone(), *variant), &ptx)?;
        let mut functions = Vec::new();
        for k in &manifest.kernels {
            let f = driver(
                || format!("loading kernel `{}`", k.name),
                module.load_function(&k.name),
            )?;
            if k.shared_bytes > 48 * 1024 {
                driver(
                    || {
                        format!(
                            "allowing {} B of dynamic shared memory for kernel `{}`",
                            k.shared_bytes, k.name
                        )
                    },
                    f.set_attribute(
                        CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                        k.shared_bytes as i32,
                    ),
                )?;
            }
            functions.push(f);
        }
        Ok(CudaKernel {
            device: device.clone(),
            spec: spec.clone(),
            shape: shape.clone(),
            manifest,
            ptx,
            functions,
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
        check_inputs(&self.spec, &self.shape, inputs)?;
        crate::guard::check(
            &self.spec,
            &self.shape,
            inputs,
            Arithmetic::Inputs(self.shape.dtype),
        )?;
        let stream = &self.device.stream;
        let mut bufs = BTreeMap::new();
        for b in &self.manifest.buffers {
            let slice = match b.role {
                BufferRole::Input => {
                    let t = inputs.get(&b.name).ok_or_else(|| {
                        CudaError::Manifest(format!("no input for buffer `{}`", b.name))
                    })?;
                    let bytes = to_bytes(&t.data, self.shape.dtype);
                    driver(
                        || format!("copying input `{}` to the device", b.name),
                        stream.clone_htod(&bytes),
                    )?
                }
                BufferRole::Segments => {
                    let seg: Vec<u8> = segment_table(&self.shape)
                        .iter()
                        .flat_map(|x| x.to_le_bytes())
                        .collect();
                    driver(|| "copying segments".into(), stream.clone_htod(&seg))?
                }
                BufferRole::Scratch | BufferRole::Output => driver(
                    || format!("allocating buffer `{}`", b.name),
                    stream.alloc_zeros::<u8>(b.numel() * b.elem_bytes()),
                )?,
            };
            bufs.insert(b.name.clone(), slice);
        }
        Ok(DeviceBuffers {
            layout: self.manifest.buffers.clone(),
            slices: bufs,
        })
    }

    fn launch_all(&self, bufs: &DeviceBuffers, only: Option<usize>) -> Result<(), CudaError> {
        if bufs.layout != self.manifest.buffers {
            return Err(CudaError::Manifest(
                "the buffers were uploaded for another spec or shape".into(),
            ));
        }
        let bufs = &bufs.slices;
        let stream = &self.device.stream;
        for (i, (k, f)) in self
            .manifest
            .kernels
            .iter()
            .zip(&self.functions)
            .enumerate()
        {
            if only.is_some_and(|o| o != i) {
                continue;
            }
            let mut args = stream.launch_builder(f);
            for p in &k.params {
                let b = bufs.get(p).ok_or_else(|| {
                    CudaError::Manifest(format!("kernel `{}` reads unknown buffer `{p}`", k.name))
                })?;
                args.arg(b);
            }
            let cfg = LaunchConfig {
                grid_dim: (k.grid[0], 1, 1),
                block_dim: (k.block[0], 1, 1),
                shared_mem_bytes: k.shared_bytes,
            };
            // SAFETY: the parameters are exactly the kernel's pointer parameters, in order, each
            // a device buffer sized by the manifest the kernel was generated with.
            unsafe { args.launch(cfg) }.map_err(|source| CudaError::Launch {
                kernel: k.name.clone(),
                grid: k.grid[0],
                block: k.block[0],
                shared: k.shared_bytes,
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
        let o = self.download_f32(&bufs, "o")?;
        let mut branches = BTreeMap::new();
        let mut selected = BTreeMap::new();
        for br in &self.spec.branches {
            branches.insert(
                br.name.clone(),
                self.download_f32(&bufs, &format!("o_{}", br.name))?,
            );
            if br.as_select().is_some() {
                let (bytes, shape) = self.download(&bufs, &format!("idx_{}", br.name))?;
                let data = bytes
                    .chunks_exact(4)
                    .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                selected.insert(br.name.clone(), Tensor { shape, data });
            }
        }
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
