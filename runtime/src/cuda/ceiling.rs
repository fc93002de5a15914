//! The arithmetic ceiling of this GPU for the instructions a problem's kernels are made of,
//! measured now with the probe kernels of `nsac_compiler::ptx::probe` (docs/ARCHITECTURE.md §5:
//! report the work and the ceiling side by side). The GPU counterpart of the CPU's JIT'd FMA loop.

use cudarc::driver::sys::CUdevice_attribute;
use cudarc::driver::{LaunchConfig, PushKernelArg};
use cudarc::nvrtc::Ptx;
use nsac_compiler::ptx::probe::Probe;
use serde::Serialize;

use super::{CudaDevice, CudaError, driver, time_on_stream};
use crate::bench::median;

/// Launches before timing (clocks ramp up, the module is JIT-compiled).
const WARMUP: usize = 3;
/// Timed launches; the median is kept.
const RUNS: usize = 9;

/// A measured ceiling.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuCeiling {
    /// What was measured, e.g. `mma.sync bf16`.
    pub probe: String,
    /// The median over timed launches, in GFLOP/s.
    pub gflops: f64,
}

impl CudaDevice {
    /// Measures `probe` on this GPU: every multiprocessor busy with independent chains of the
    /// probe's instruction, timed with CUDA events, median of several launches.
    pub fn ceiling(&self, probe: Probe) -> Result<GpuCeiling, CudaError> {
        let sms = driver(
            || "reading the multiprocessor count".into(),
            self.ctx
                .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT),
        )?;
        let kernel = probe.kernel(self.arch(), sms.max(1) as u32);
        let module = driver(
            || format!("JIT-loading the ceiling probe `{}`", kernel.name),
            self.ctx.load_module(Ptx::from_src(kernel.ptx.clone())),
        )?;
        let function = driver(
            || format!("loading kernel `{}`", kernel.name),
            module.load_function(&kernel.name),
        )?;
        let threads = (kernel.grid * kernel.block) as usize;
        let out = driver(
            || "allocating the probe's output".into(),
            self.stream.alloc_zeros::<f32>(threads),
        )?;
        let launch = || {
            let mut args = self.stream.launch_builder(&function);
            args.arg(&out);
            let cfg = LaunchConfig {
                grid_dim: (kernel.grid, 1, 1),
                block_dim: (kernel.block, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: the probe takes one pointer to `grid·block` f32, which `out` is.
            unsafe { args.launch(cfg) }.map_err(|source| CudaError::Launch {
                kernel: kernel.name.clone(),
                grid: kernel.grid,
                block: kernel.block,
                shared: 0,
                source,
            })?;
            Ok(())
        };
        for _ in 0..WARMUP {
            launch()?;
        }
        let times = (0..RUNS)
            .map(|_| time_on_stream(&self.stream, launch))
            .collect::<Result<Vec<f32>, _>>()?;
        // The probe's sums are finite and non-zero when every thread ran to the end.
        let sums = driver(
            || "copying the probe's output to the host".into(),
            self.stream.clone_dtoh(&out),
        )?;
        if let Some(bad) = sums.iter().position(|x| !x.is_finite() || *x == 0.0) {
            return Err(CudaError::Probe(format!(
                "`{}` left thread {bad} without a result ({})",
                kernel.name, sums[bad]
            )));
        }
        let ms = f64::from(median(times));
        Ok(GpuCeiling {
            probe: probe.describe(),
            gflops: kernel.flops / (ms / 1e3) / 1e9,
        })
    }
}
