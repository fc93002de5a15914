//! A spec prepared for one device: the device chosen, the Variant taken (explicit, tuned or
//! default) and the compiled kernels kept for reuse, so a program compiles once and calls many
//! times; on a GPU, the kernel itself for device-resident calls ([`Compiled::cuda_kernel`]).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nsac_compiler::cpu::CpuVariant;
use nsac_compiler::ir::Sizes;
use nsac_compiler::ptx::GpuVariant;
use nsac_dsl::Spec;
use nsac_dsl::problem::{DType, Problem, Sequences, Shape};
use nsac_dsl::spec::{HeadDim, Heads};
use nsac_kernels::io::{Inputs, Tensor};
use nsac_runtime::cpu::CpuKernel;
use nsac_runtime::cuda::{CudaDevice, CudaKernel};
use nsac_runtime::tensor_io::{HostTensor, TensorSet, reference_outputs};

use super::Error;
use super::choice::{VariantOrigin, VariantRequest, pick_cpu, pick_gpu};

mod train;
pub use train::{GradRun, NO_GPU_BACKWARD, TrainState};

/// Where to run.
#[derive(Debug, Clone, Default)]
pub enum Device {
    /// The f64 oracle: slow, the definition of the semantics.
    Reference,
    /// This machine's CPU (Cranelift JIT, f32).
    Cpu,
    /// The first CUDA device (PTX we generate, loaded through the driver).
    Cuda,
    /// The GPU when a CUDA driver and device are present, else the CPU.
    #[default]
    Auto,
}

/// What a compile binds besides the spec, and how to pick the Variant.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Overrides the spec's heads.
    pub heads: Option<Heads>,
    /// Overrides the spec's head dims.
    pub head_dim: Option<HeadDim>,
    /// The tensors' element type (default f32).
    pub dtype: DType,
    /// CPU worker threads (default: every core, or the tuned count).
    pub threads: Option<usize>,
    /// An explicit Variant, `FIELD=VALUE,…` over the defaults (CPU or GPU fields).
    pub variant: Option<String>,
    /// The tuning database to look the Variant up in (default: the user's cache); with
    /// `no_tuned`, the default Variant is taken without looking.
    pub db: Option<PathBuf>,
    pub no_tuned: bool,
}

/// What one call produced.
#[derive(Debug, Clone)]
pub struct Run {
    /// `o`, every branch output `o_<b>` and every select branch's `idx_<b>`, under those names.
    pub outputs: TensorSet,
    /// The device, as shown to a person.
    pub device: String,
    pub origin: VariantOrigin,
    /// Code generation / module load time when this call compiled.
    pub compile: Option<Duration>,
    /// Time of the computation alone.
    pub time: Duration,
    /// The tuning database's warnings met while choosing the Variant, for the caller to show.
    pub warnings: Vec<String>,
}

struct CpuEntry {
    kernel: Arc<CpuKernel>,
    threads: usize,
    origin: VariantOrigin,
    warnings: Vec<String>,
}

struct CudaEntry {
    kernel: Arc<CudaKernel>,
    origin: VariantOrigin,
    warnings: Vec<String>,
}

impl Run {
    /// max |x − ref| / max |ref| of output `name` against the same output of `reference` (the
    /// numerics bar's measure, docs/ARCHITECTURE.md §4); `None` when either run lacks it, it
    /// is not a float tensor, or the shapes differ.
    pub fn relative_error(&self, reference: &Run, name: &str) -> Option<f64> {
        let got = self.outputs.get(name)?.to_f32()?;
        let want = match reference.outputs.get(name)? {
            HostTensor::F64(t) => t.clone(),
            other => {
                let t = other.to_f32()?;
                Tensor {
                    shape: t.shape,
                    data: t.data.into_iter().map(f64::from).collect(),
                }
            }
        };
        nsac_kernels::reference::relative_error(&got, &want)
    }
}

enum Backend {
    Reference,
    Cpu,
    Cuda(Arc<CudaDevice>),
}

/// A spec prepared for a device. Kernels are compiled on first use and kept, one per Variant,
/// each serving every length and packing, and [`Compiled::run`] can be called from several
/// threads.
pub struct Compiled {
    spec: Spec,
    options: Options,
    backend: Backend,
    /// CPU kernels by Variant: the generated code does not depend on the lengths, so one
    /// compiled kernel serves every problem that picks the same Variant.
    cpu: Mutex<HashMap<CpuVariant, Arc<CpuKernel>>>,
    /// GPU kernels by Variant, likewise.
    cuda: Mutex<HashMap<GpuVariant, Arc<CudaKernel>>>,
    /// CPU training kernels (forward + backward) by Variant (`train.rs`).
    cpu_train: Mutex<HashMap<CpuVariant, Arc<CpuKernel>>>,
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiled")
            .field("spec", &self.spec.name)
            .field("device", &self.device())
            .finish()
    }
}

impl Compiled {
    pub(super) fn new(spec: Spec, device: &Device, options: &Options) -> Result<Compiled, Error> {
        let backend = match device {
            Device::Reference => Backend::Reference,
            Device::Cpu => Backend::Cpu,
            Device::Cuda => Backend::Cuda(CudaDevice::open()?.ok_or(Error::NoGpu)?),
            Device::Auto => match CudaDevice::open() {
                Ok(Some(gpu)) => Backend::Cuda(gpu),
                _ => Backend::Cpu,
            },
        };
        if let (Backend::Reference, Some(_)) = (&backend, &options.variant) {
            return Err(Error::Invalid(
                "the reference device has no Variant to choose".into(),
            ));
        }
        if matches!(backend, Backend::Cpu) && options.dtype != DType::F32 {
            return Err(Error::Invalid(format!(
                "the CPU backend computes in f32 only (got {}): use f32, or the cuda device",
                options.dtype.name()
            )));
        }
        Ok(Compiled {
            spec,
            options: options.clone(),
            backend,
            cpu: Mutex::new(HashMap::new()),
            cuda: Mutex::new(HashMap::new()),
            cpu_train: Mutex::new(HashMap::new()),
        })
    }

    /// The device kind: `reference`, `cpu` or `cuda`.
    pub fn device(&self) -> &'static str {
        match self.backend {
            Backend::Reference => "reference",
            Backend::Cpu => "cpu",
            Backend::Cuda(_) => "cuda",
        }
    }

    /// The problem of `sequences` with this compile's heads, head dims and dtype.
    pub fn problem(&self, sequences: Sequences) -> Problem {
        Problem {
            sequences,
            heads: self.options.heads,
            head_dim: self.options.head_dim,
            dtype: self.options.dtype,
        }
    }

    fn request(&self) -> VariantRequest<'_> {
        VariantRequest {
            variant: self.options.variant.as_deref(),
            db: self.options.db.as_deref(),
            no_tuned: self.options.no_tuned,
            threads: self.options.threads,
        }
    }

    fn cpu_kernel(&self, shape: &Shape) -> Result<(CpuEntry, Option<Duration>), Error> {
        // The Variant is looked up per problem (the tuning database buckets lengths); the
        // kernel is compiled once per Variant.
        let (choice, warnings) = pick_cpu(&self.spec, shape, &self.request())?;
        let mut cache = self.cpu.lock().unwrap_or_else(|e| e.into_inner());
        let (kernel, compile) = match cache.get(&choice.variant) {
            Some(k) => (k.clone(), None),
            None => {
                let kernel = Arc::new(CpuKernel::compile(&self.spec, shape, &choice.variant)?);
                cache.insert(choice.variant, kernel.clone());
                let compile = kernel.compile_time();
                (kernel, Some(compile))
            }
        };
        let entry = CpuEntry {
            kernel,
            threads: choice.threads,
            origin: choice.origin,
            warnings,
        };
        Ok((entry, compile))
    }

    fn cuda_entry(
        &self,
        gpu: &Arc<CudaDevice>,
        shape: &Shape,
    ) -> Result<(CudaEntry, Option<Duration>), Error> {
        // As on the CPU: the Variant is looked up per problem, the kernel compiled once per
        // Variant.
        let (choice, warnings) = pick_gpu(gpu, &self.spec, shape, &self.request())?;
        let mut cache = self.cuda.lock().unwrap_or_else(|e| e.into_inner());
        let (kernel, compile) = match cache.get(&choice.variant) {
            Some(k) => (k.clone(), None),
            None => {
                let start = Instant::now();
                let kernel = Arc::new(CudaKernel::compile(
                    gpu,
                    &self.spec,
                    shape,
                    &choice.variant,
                )?);
                cache.insert(choice.variant, kernel.clone());
                (kernel, Some(start.elapsed()))
            }
        };
        let entry = CudaEntry {
            kernel,
            origin: choice.origin,
            warnings,
        };
        Ok((entry, compile))
    }

    /// The sizes of a call on `problem` (its batch, lengths and segments), which device tensors
    /// are laid out for.
    pub fn sizes(&self, problem: &Problem) -> Result<Sizes, Error> {
        Ok(Sizes::of(&problem.resolve(&self.spec)?))
    }

    /// The GPU kernel [`Compiled::run`] takes for `problem` (the Variant it picks for it,
    /// compiled once per Variant), for device-resident calls: upload inputs once, launch many
    /// times, replace inputs in place, bind the caller's device memory, read outputs by name
    /// only when asked ([`nsac_runtime::cuda::DeviceTensors`]). It serves every length:
    /// `problem` only picks the Variant. Fails with [`Error::Invalid`] when this compile is not
    /// on a GPU.
    ///
    /// ```no_run
    /// use nsac::{Attention, Device, Options};
    /// let attn = Attention::load("kernels/nsa-fla.nsa")?;
    /// let gpu = attn.compile(&Device::Cuda, &Options::default())?;
    /// let problem = gpu.problem(nsac::dsl::problem::Sequences::Batched { batch: 1, len: 4096 });
    /// let kernel = gpu.cuda_kernel(&problem)?;
    /// let mut tensors = kernel.upload(&gpu.sizes(&problem)?, &attn.random_inputs(&problem, 1)?)?;
    /// for seed in 2..5 {
    ///     kernel.launch(&tensors)?; // enqueued, no copy back
    ///     let next = attn.random_inputs(&problem, seed)?;
    ///     tensors.set_input("q", &next["q"])?; // ordered after the launch
    /// }
    /// kernel.launch(&tensors)?;
    /// let o = tensors.download("o")?; // waits, copies `o` alone
    /// assert_eq!(o.shape()[..2], [1, 4096]);
    /// # Ok::<(), nsac::Error>(())
    /// ```
    pub fn cuda_kernel(&self, problem: &Problem) -> Result<Arc<CudaKernel>, Error> {
        let Backend::Cuda(gpu) = &self.backend else {
            return Err(Error::Invalid(format!(
                "this compile runs on the {} device, not a GPU",
                self.device()
            )));
        };
        let shape = problem.resolve(&self.spec)?;
        Ok(self.cuda_entry(gpu, &shape)?.0.kernel)
    }

    /// The CPU kernel and worker-thread count that [`Compiled::run`] (`training == false`) or
    /// [`Compiled::forward_train`] (`training == true`: the training pair) takes for `shape`,
    /// for callers that lend their own buffers — `CpuKernel::run_into`, `forward_train_refs`
    /// and `backward_refs` read the caller's memory in place (the Python module does). Fails
    /// with [`Error::Invalid`] when this compile is not on the CPU.
    pub fn cpu_kernel_for(
        &self,
        shape: &Shape,
        training: bool,
    ) -> Result<(Arc<CpuKernel>, usize), Error> {
        if !matches!(self.backend, Backend::Cpu) {
            return Err(Error::Invalid(format!(
                "this compile runs on the {} device, not the CPU",
                self.device()
            )));
        }
        if training {
            let (kernel, threads, _, _) = self.cpu_train_kernel(shape)?;
            Ok((kernel, threads))
        } else {
            let (entry, _) = self.cpu_kernel(shape)?;
            Ok((entry.kernel, entry.threads))
        }
    }

    /// Runs on `inputs` (the README's tensor names and layouts) for the sequences of `problem`
    /// (its heads, head dims and dtype must be this compile's: see [`Compiled::problem`]).
    pub fn run(&self, problem: &Problem, inputs: &Inputs) -> Result<Run, Error> {
        self.run_shape(&problem.resolve(&self.spec)?, inputs)
    }

    /// [`Compiled::run`] for a problem already resolved against the spec.
    pub fn run_shape(&self, shape: &Shape, inputs: &Inputs) -> Result<Run, Error> {
        let shape = shape.clone();
        match &self.backend {
            Backend::Reference => {
                let start = Instant::now();
                let out = nsac_kernels::reference::forward(&self.spec, &shape, inputs)?;
                Ok(Run {
                    outputs: reference_outputs(&out),
                    device: "reference (f64)".into(),
                    origin: VariantOrigin::None,
                    compile: None,
                    time: start.elapsed(),
                    warnings: Vec::new(),
                })
            }
            Backend::Cpu => {
                let (entry, compile) = self.cpu_kernel(&shape)?;
                let start = Instant::now();
                let out = entry
                    .kernel
                    .run_sizes(&Sizes::of(&shape), inputs, entry.threads)?;
                Ok(Run {
                    outputs: collect(out.o, out.branches, out.selected),
                    device: format!("cpu ({} threads, Cranelift JIT, f32)", entry.threads),
                    origin: entry.origin,
                    compile,
                    time: start.elapsed(),
                    warnings: entry.warnings.clone(),
                })
            }
            Backend::Cuda(gpu) => {
                let (entry, compile) = self.cuda_entry(gpu, &shape)?;
                let start = Instant::now();
                let out = entry.kernel.run(&Sizes::of(&shape), inputs)?;
                let (major, minor) = gpu.capability();
                Ok(Run {
                    outputs: collect(out.o, out.branches, out.selected),
                    device: format!(
                        "cuda: {} (sm_{major}{minor}, {})",
                        gpu.name(),
                        shape.dtype.name()
                    ),
                    origin: entry.origin,
                    compile,
                    time: start.elapsed(),
                    warnings: entry.warnings.clone(),
                })
            }
        }
    }
}

/// A device's outputs under the oracle's names.
pub(crate) fn collect(
    o: Tensor<f32>,
    branches: BTreeMap<String, Tensor<f32>>,
    selected: BTreeMap<String, Tensor<i32>>,
) -> TensorSet {
    let mut outputs = TensorSet::new();
    outputs.insert("o".into(), HostTensor::from(o));
    for (b, t) in branches {
        outputs.insert(format!("o_{b}"), HostTensor::from(t));
    }
    for (b, t) in selected {
        outputs.insert(format!("idx_{b}"), HostTensor::from(t));
    }
    outputs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Attention;

    #[test]
    fn device_resident_calls_need_a_gpu_and_take_the_problems_sizes() {
        let attn = Attention::parse(
            "attention tiny {\n heads = 4/2\n head_dim = 16\n window w { size = 8 }\n combine = sum(w)\n}",
        )
        .expect("parses");
        let cpu = attn
            .compile(&Device::Cpu, &Options::default())
            .expect("compiles");
        let problem = cpu.problem(Sequences::Varlen {
            cu_seqlens: vec![0, 5, 12],
        });
        assert!(matches!(cpu.cuda_kernel(&problem), Err(Error::Invalid(_))));
        let sizes = cpu.sizes(&problem).expect("sizes");
        assert_eq!(
            (sizes.batch, sizes.queries, sizes.segments),
            (1, 12, vec![(0, 5), (5, 12)])
        );
        let bad = cpu.problem(Sequences::Varlen {
            cu_seqlens: vec![0, 5, 5],
        });
        assert!(matches!(cpu.sizes(&bad), Err(Error::Problem(_))));
    }

    #[test]
    fn cpu_kernel_for_lends_the_kernel_run_takes_and_the_training_pair() {
        let attn = Attention::parse(
            "attention tiny {\n heads = 4/2\n head_dim = 16\n compress c { block = 8, stride = 4 }\n window w { size = 8 }\n combine = gate(c, w)\n}",
        )
        .expect("parses");
        let options = Options {
            no_tuned: true,
            ..Options::default()
        };
        let reference = attn.compile(&Device::Reference, &options).expect("ok");
        let cpu = attn.compile(&Device::Cpu, &options).expect("compiles");
        let problem = cpu.problem(Sequences::Batched { batch: 2, len: 37 });
        let shape = problem.resolve(attn.spec()).expect("resolves");
        assert!(matches!(
            reference.cpu_kernel_for(&shape, false),
            Err(Error::Invalid(_))
        ));
        let inputs = attn.random_inputs(&problem, 3).expect("inputs");
        let want = cpu.run(&problem, &inputs).expect("runs").outputs["o"]
            .to_f32()
            .expect("f32");
        for training in [false, true] {
            let (kernel, threads) = cpu.cpu_kernel_for(&shape, training).expect("kernel");
            assert_eq!(kernel.has_backward(), training);
            let mut o = vec![f32::NAN; want.data.len()];
            let mut outputs = nsac_runtime::cpu::OutputRefs::new();
            outputs.insert("o", nsac_runtime::cpu::OutputRef::F32(&mut o));
            kernel
                .run_into(
                    &Sizes::of(&shape),
                    &nsac_kernels::io::input_refs(&inputs),
                    &mut outputs,
                    threads,
                )
                .expect("runs in place");
            assert_eq!(o, want.data, "training = {training}");
        }
    }
}
