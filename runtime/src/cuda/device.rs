//! Opening a CUDA device (or learning there is none) and caching loaded PTX modules.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::sys::CUdevice_attribute;
use cudarc::driver::{CudaContext, CudaModule, CudaStream};
use cudarc::nvrtc::Ptx;
use nsac_compiler::ptx::Arch;

use super::{CudaError, driver};
use crate::tune::{GpuFingerprint, GpuLimits};

/// Loaded modules are keyed by their PTX text: it holds no length, so every shape of a spec
/// and variant shares one module.
type ModuleKey = String;

/// The most registers one thread may use on every NVIDIA GPU since Kepler (the driver has no
/// attribute for it).
pub const MAX_REGISTERS_PER_THREAD: u32 = 255;

/// One GPU with its default stream and a cache of loaded modules.
pub struct CudaDevice {
    pub(crate) ctx: Arc<CudaContext>,
    pub(crate) stream: Arc<CudaStream>,
    name: String,
    capability: (i32, i32),
    modules: Mutex<HashMap<ModuleKey, Arc<CudaModule>>>,
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaDevice")
            .field("name", &self.name)
            .field("capability", &self.capability)
            .finish()
    }
}

impl CudaDevice {
    /// GPU 0, or `None` when no CUDA driver library or no device is present.
    pub fn open() -> Result<Option<Arc<CudaDevice>>, CudaError> {
        Self::open_ordinal(0)
    }

    /// GPU `ordinal`, or `None` when no CUDA driver library or no such device is present.
    pub fn open_ordinal(ordinal: usize) -> Result<Option<Arc<CudaDevice>>, CudaError> {
        // SAFETY: only probes whether the driver library can be loaded.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Ok(None);
        }
        let count = driver(|| "counting devices".into(), CudaContext::device_count())?;
        if count <= 0 || ordinal >= count as usize {
            return Ok(None);
        }
        let ctx = driver(
            || format!("creating a context on device {ordinal}"),
            CudaContext::new(ordinal),
        )?;
        let name = driver(|| "reading the device name".into(), ctx.name())?;
        let capability = driver(
            || "reading the compute capability".into(),
            ctx.compute_capability(),
        )?;
        let stream = ctx.default_stream();
        Ok(Some(Arc::new(CudaDevice {
            ctx,
            stream,
            name,
            capability,
            modules: Mutex::new(HashMap::new()),
        })))
    }

    /// The device's stream (the context's default stream): where device tensors' work goes
    /// unless they are given another.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The device's CUDA context (the primary context, shared with other libraries on the
    /// device): to make streams or buffers for device tensors.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The device's name, e.g. "NVIDIA H100 80GB HBM3".
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Compute capability (major, minor).
    pub fn capability(&self) -> (i32, i32) {
        self.capability
    }

    /// What a tuning result measured on this GPU is keyed by: name, compute capability,
    /// multiprocessors and driver version.
    pub fn fingerprint(&self) -> Result<GpuFingerprint, CudaError> {
        let sm_count = self.attribute(
            "the multiprocessor count",
            CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
        )?;
        let mut version = 0i32;
        // SAFETY: cuDriverGetVersion writes one int; the driver library is loaded (a context
        // exists).
        let status = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut version) };
        driver(|| "reading the driver version".into(), status.result())?;
        Ok(GpuFingerprint {
            name: self.name.clone(),
            compute_capability: (
                self.capability.0.max(0) as u32,
                self.capability.1.max(0) as u32,
            ),
            sm_count,
            driver: format!("{}.{}", version / 1000, (version % 1000) / 10),
        })
    }

    /// The per-block limits that prune GPU Variants before they are compiled.
    pub fn limits(&self) -> Result<GpuLimits, CudaError> {
        use CUdevice_attribute as A;
        Ok(GpuLimits {
            max_threads_per_block: self.attribute(
                "the most threads per block",
                A::CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK,
            )?,
            max_shared_bytes_per_block: self
                .attribute(
                    "the opt-in shared memory per block",
                    A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
                )?
                .into(),
            max_registers_per_block: self.attribute(
                "the registers per block",
                A::CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_BLOCK,
            )?,
            max_registers_per_thread: MAX_REGISTERS_PER_THREAD,
        })
    }

    fn attribute(&self, what: &str, attribute: CUdevice_attribute) -> Result<u32, CudaError> {
        let value = driver(|| format!("reading {what}"), self.ctx.attribute(attribute))?;
        Ok(value.max(0) as u32)
    }

    /// The PTX target used for this device.
    pub fn arch(&self) -> Arch {
        Arch::for_capability(self.capability.0, self.capability.1)
    }

    /// Loads `ptx` (of spec `name`), or returns the module already loaded for the same text.
    pub(crate) fn module(&self, ptx: &str, name: &str) -> Result<Arc<CudaModule>, CudaError> {
        let mut cache = self
            .modules
            .lock()
            .map_err(|_| CudaError::Manifest("module cache poisoned".into()))?;
        if let Some(m) = cache.get(ptx) {
            return Ok(m.clone());
        }
        let m = driver(
            || format!("JIT-loading the PTX module of `{name}`"),
            self.ctx.load_module(Ptx::from_src(ptx)),
        )?;
        cache.insert(ptx.to_string(), m.clone());
        Ok(m)
    }
}
