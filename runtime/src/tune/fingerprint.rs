//! Device fingerprints: what a tuning result was measured on.
//!
//! A tuned Variant is only trusted on the machine it was measured on, so every tuning-DB key
//! carries a [`DeviceFingerprint`]. The CPU side is detected here; the GPU side is a plain struct
//! that the CUDA runtime fills from the driver (name, compute capability, SM count, driver).

use serde::{Deserialize, Serialize};

/// The machine a kernel was tuned on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceFingerprint {
    Cpu(CpuFingerprint),
    Gpu(GpuFingerprint),
}

/// A CPU: its model, the vector features the JIT may use, and the cores it may run on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CpuFingerprint {
    /// The model name as the OS reports it (`/proc/cpuinfo` on Linux), else the architecture.
    pub model: String,
    /// The architecture (`x86_64`, `aarch64`, …).
    pub arch: String,
    /// The vector features present, from the fixed list [`CPU_FEATURES`], in that order.
    pub features: Vec<String>,
    /// Cores available to this process.
    pub cores: usize,
}

/// A GPU, as the CUDA driver describes it; filled by the GPU runtime.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GpuFingerprint {
    pub name: String,
    /// Compute capability `(major, minor)`, e.g. `(9, 0)` for an H100.
    pub compute_capability: (u32, u32),
    pub sm_count: u32,
    /// The driver version string.
    pub driver: String,
}

/// The x86 vector features a fingerprint records (the ones that change generated code).
pub const CPU_FEATURES: [&str; 5] = ["sse4.1", "avx", "avx2", "fma", "avx512f"];

impl CpuFingerprint {
    /// Fingerprints the CPU this process runs on.
    pub fn detect() -> Self {
        CpuFingerprint {
            model: cpu_model().unwrap_or_else(|| std::env::consts::ARCH.to_string()),
            arch: std::env::consts::ARCH.to_string(),
            features: detected_features(),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

impl DeviceFingerprint {
    /// The fingerprint of this process's CPU.
    pub fn this_cpu() -> Self {
        DeviceFingerprint::Cpu(CpuFingerprint::detect())
    }
}

/// The "model name" line of `/proc/cpuinfo`, where there is one.
fn cpu_model() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim() == "model name")
        .map(|(_, value)| value.trim().to_string())
        .filter(|model| !model.is_empty())
}

#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
fn detected_features() -> Vec<String> {
    let present = [
        std::arch::is_x86_feature_detected!("sse4.1"),
        std::arch::is_x86_feature_detected!("avx"),
        std::arch::is_x86_feature_detected!("avx2"),
        std::arch::is_x86_feature_detected!("fma"),
        std::arch::is_x86_feature_detected!("avx512f"),
    ];
    CPU_FEATURES
        .iter()
        .zip(present)
        .filter(|(_, on)| *on)
        .map(|(name, _)| (*name).to_string())
        .collect()
}

#[cfg(not(any(target_arch = "x86", target_arch = "x86_64")))]
fn detected_features() -> Vec<String> {
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection_is_stable_and_lists_only_known_features() {
        let a = CpuFingerprint::detect();
        let b = CpuFingerprint::detect();
        assert_eq!(a, b);
        assert!(a.cores >= 1);
        assert!(!a.model.is_empty());
        assert!(
            a.features
                .iter()
                .all(|f| CPU_FEATURES.contains(&f.as_str()))
        );
    }
}
