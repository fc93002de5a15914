//! The CUDA device: generated PTX loaded through cudarc's driver API, dynamically loaded so
//! that building needs no CUDA and the GPU is found at run time. Modules are cached per PTX
//! text on the device (one module serves every length and packing of a spec and variant); a
//! call's buffers live in [`DeviceTensors`], so inputs stay on the device across launches.
//! Every CUDA call is checked; errors name the kernel and its launch configuration.

mod ceiling;
mod device;
mod kernel;
mod tensors;

pub use ceiling::GpuCeiling;
/// The cudarc this crate links, whose streams and device buffers [`DeviceTensors`] take.
pub use cudarc;
pub use cudarc::driver::{CudaSlice, CudaStream, sys::CUdeviceptr};
pub use device::CudaDevice;
pub use kernel::{CudaKernel, CudaOutput, KernelTime, round_inputs};
pub use tensors::{DeviceTensors, INPUT_ALIGN, TensorsError};

use nsac_compiler::ptx::PtxError;
use nsac_kernels::io::InputError;

/// Why a CUDA operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    #[error("CUDA driver call failed while {what}: {source}")]
    Driver {
        what: String,
        #[source]
        source: cudarc::driver::DriverError,
    },
    #[error(
        "launching kernel `{kernel}` (grid {grid}, block {block}, {shared} B shared) failed: {source}"
    )]
    Launch {
        kernel: String,
        grid: u32,
        block: u32,
        shared: u32,
        #[source]
        source: cudarc::driver::DriverError,
    },
    #[error(transparent)]
    Ptx(#[from] PtxError),
    #[error(transparent)]
    Input(#[from] InputError),
    #[error(transparent)]
    Tensors(#[from] TensorsError),
    #[error(transparent)]
    Guard(#[from] Box<crate::guard::GuardError>),
    #[error(
        "kernel `{kernel}` needs {needed} B of shared memory per block for this call, the device allows {available} B (the top-k score arrays grow with the longest segment: shorten it, or lower the GPU variant's score_tokens)"
    )]
    SharedMemory {
        kernel: String,
        needed: u64,
        available: u64,
    },
    #[error("the PTX manifest is inconsistent: {0}")]
    Manifest(String),
    #[error("the ceiling probe failed: {0}")]
    Probe(String),
}

/// The device time in milliseconds of what `launch` enqueues on `stream`, between two CUDA
/// events; a failed launch or kernel surfaces as the error of the wait.
pub(crate) fn time_on_stream(
    stream: &cudarc::driver::CudaStream,
    launch: impl FnOnce() -> Result<(), CudaError>,
) -> Result<f32, CudaError> {
    use cudarc::driver::sys::CUevent_flags;
    let ev = || {
        driver(
            || "recording an event".into(),
            stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT)),
        )
    };
    let a = ev()?;
    launch()?;
    let b = ev()?;
    driver(|| "waiting for a timed run".into(), b.synchronize())?;
    driver(|| "reading an event".into(), a.elapsed_ms(&b))
}

pub(crate) fn driver<T>(
    what: impl FnOnce() -> String,
    r: Result<T, cudarc::driver::DriverError>,
) -> Result<T, CudaError> {
    r.map_err(|source| CudaError::Driver {
        what: what(),
        source,
    })
}
