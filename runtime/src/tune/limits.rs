//! Device resource limits that prune Variants before compiling.
//!
//! The GPU runtime fills [`GpuLimits`] from the device attributes (cudarc); a GPU
//! [`super::VariantSpace`] asks [`GpuLimits::check_block`] whether a thread block of a Variant
//! fits, and gets a [`PruneReason`] naming the resource when it does not.

use super::space::PruneReason;
use serde::{Deserialize, Serialize};

/// Per-block limits of one GPU, as the driver reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuLimits {
    pub max_threads_per_block: u32,
    /// Shared memory a block may use, opt-in maximum included (bytes).
    pub max_shared_bytes_per_block: u64,
    /// 32-bit registers available to one block.
    pub max_registers_per_block: u32,
    /// The most registers one thread may use (255 on current NVIDIA GPUs).
    pub max_registers_per_thread: u32,
}

/// What one thread block of a Variant needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockNeeds {
    pub threads: u32,
    pub shared_bytes: u64,
    /// Registers per thread, as estimated by the backend for this Variant.
    pub registers_per_thread: u32,
}

impl GpuLimits {
    /// Accepts a block that fits every limit, or names the first one it exceeds.
    pub fn check_block(&self, needs: BlockNeeds) -> Result<(), PruneReason> {
        let over = |resource: &str, needed: u64, available: u64| {
            (needed > available).then(|| PruneReason::ExceedsLimit {
                resource: resource.to_string(),
                needed,
                available,
            })
        };
        let registers = u64::from(needs.threads) * u64::from(needs.registers_per_thread);
        let failure = over(
            "threads per block",
            needs.threads.into(),
            self.max_threads_per_block.into(),
        )
        .or_else(|| {
            over(
                "bytes of shared memory per block",
                needs.shared_bytes,
                self.max_shared_bytes_per_block,
            )
        })
        .or_else(|| {
            over(
                "registers per thread",
                needs.registers_per_thread.into(),
                self.max_registers_per_thread.into(),
            )
        })
        .or_else(|| {
            over(
                "registers per block",
                registers,
                self.max_registers_per_block.into(),
            )
        });
        failure.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An H100's limits.
    const H100: GpuLimits = GpuLimits {
        max_threads_per_block: 1024,
        max_shared_bytes_per_block: 227 * 1024,
        max_registers_per_block: 65536,
        max_registers_per_thread: 255,
    };

    fn needs(threads: u32, shared_bytes: u64, registers_per_thread: u32) -> BlockNeeds {
        BlockNeeds {
            threads,
            shared_bytes,
            registers_per_thread,
        }
    }

    #[test]
    fn blocks_within_every_limit_fit() {
        assert_eq!(H100.check_block(needs(256, 100 * 1024, 128)), Ok(()));
        assert_eq!(H100.check_block(needs(1024, 227 * 1024, 64)), Ok(()));
    }

    #[test]
    fn each_limit_prunes_with_its_own_reason() {
        let resource = |n: BlockNeeds| match H100.check_block(n) {
            Err(PruneReason::ExceedsLimit { resource, .. }) => resource,
            other => panic!("expected a limit, got {other:?}"),
        };
        assert_eq!(resource(needs(2048, 0, 32)), "threads per block");
        assert_eq!(
            resource(needs(128, 228 * 1024, 32)),
            "bytes of shared memory per block"
        );
        assert_eq!(resource(needs(128, 0, 256)), "registers per thread");
        assert_eq!(resource(needs(512, 0, 255)), "registers per block");
    }
}
