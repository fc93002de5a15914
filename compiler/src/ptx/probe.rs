//! Ceiling probes: tiny PTX kernels that do nothing but the arithmetic our attention kernels
//! are built from, so that a benchmark can report achieved GFLOP/s as a fraction of what this
//! very GPU reaches with the same instructions (docs/ARCHITECTURE.md §5 asks for the two numbers,
//! work and ceiling, per case; the CPU side measures a JIT'd FMA loop the same way).
//!
//! - [`Probe::Mma`]: `mma.sync.aligned.m16n8k16` with f32 accumulators and bf16 or f16
//!   operands, the instruction of the tensor-core kernels. Each warp keeps [`CHAINS`]
//!   independent accumulator tiles in flight so that the tensor cores, not the dependency
//!   between one `mma` and the next, set the pace. This is the `mma.sync` ceiling, below the
//!   Hopper `wgmma` peak NVIDIA quotes, because it is the ceiling of the code we generate.
//! - [`Probe::Ffma`]: `fma.rn.f32` chains, the arithmetic of the scalar (f32 and fallback)
//!   kernels.
//!
//! The accumulators start from per-chain, per-thread values and are summed into `out[thread]`
//! at the end, so ptxas can neither merge the chains nor drop the work.

use nsac_dsl::problem::DType;

use super::Arch;
use super::builder::{self, KernelBuilder, ParamTy, Reg, RegClass, fimm, imm, mem};
use super::kernels::common::global_thread;
use super::kernels::tc_common::{mma_ops, vec_op};

/// Independent accumulator chains per warp (mma) or thread (ffma).
pub const CHAINS: u32 = 8;
/// Threads per block of a probe launch.
pub const BLOCK_THREADS: u32 = 256;
/// Blocks per multiprocessor of a probe launch (so every scheduler has several warps).
pub const BLOCKS_PER_SM: u32 = 4;

/// What a probe measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// Tensor-core `mma.sync` m16n8k16 with 16-bit operands of this dtype (bf16 or f16).
    Mma(DType),
    /// f32 fused multiply-add on the CUDA cores.
    Ffma,
}

/// A probe kernel ready to load: its module text, entry name and the work one launch does.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeKernel {
    pub ptx: String,
    pub name: String,
    /// Launch `grid` blocks of [`BLOCK_THREADS`] threads; `out` holds one f32 per thread.
    pub grid: u32,
    pub block: u32,
    /// Floating-point operations one launch performs (an FMA counts two).
    pub flops: f64,
}

impl Probe {
    /// The probe for the kernels `dtype` runs: `mma` for bf16/f16 when the tensor-core kernels
    /// are used, else f32 FMA.
    pub fn for_kernels(dtype: DType, tensor_cores: bool) -> Probe {
        match dtype {
            DType::Bf16 | DType::F16 if tensor_cores => Probe::Mma(dtype),
            _ => Probe::Ffma,
        }
    }

    /// How reports name it, e.g. `mma.sync bf16`.
    pub fn describe(self) -> String {
        match self {
            Probe::Mma(dtype) => format!("mma.sync {}", dtype.name()),
            Probe::Ffma => "f32 FMA".into(),
        }
    }

    /// Loop trips of the probe kernel, each issuing every chain twice: about a millisecond of
    /// work on a large GPU, long next to launch overhead and clock ramp-up noise.
    pub fn trips(self) -> u32 {
        match self {
            Probe::Mma(_) => 2048,
            Probe::Ffma => 32768,
        }
    }

    /// The probe kernel for a device with `sms` multiprocessors.
    pub fn kernel(self, arch: Arch, sms: u32) -> ProbeKernel {
        let grid = sms.max(1) * BLOCKS_PER_SM;
        let threads = f64::from(grid) * f64::from(BLOCK_THREADS);
        let issues = f64::from(self.trips()) * 2.0 * f64::from(CHAINS);
        let (text, name, flops) = match self {
            Probe::Mma(dtype) => {
                let name = format!("nsac_ceiling_mma_{}", dtype.name());
                // 2·16·8·16 FLOPs per warp-wide mma
                let flops = threads / 32.0 * issues * 4096.0;
                (mma_kernel(&name, dtype, self.trips()), name, flops)
            }
            Probe::Ffma => {
                let name = "nsac_ceiling_ffma".to_string();
                (
                    ffma_kernel(&name, self.trips()),
                    name,
                    threads * issues * 2.0,
                )
            }
        };
        ProbeKernel {
            ptx: builder::module(arch.target(), &[text]),
            name,
            grid,
            block: BLOCK_THREADS,
            flops,
        }
    }
}

/// The global thread index as u32 and as f32 (a value ptxas cannot know).
fn thread_index(b: &mut KernelBuilder) -> (Reg, Reg) {
    let (_, n) = global_thread(b);
    let x = b.op1(RegClass::F32, "cvt.rn.f32.u32", n.into());
    (n, x)
}

/// The `trips`-trip loop around `body`.
fn counted_loop(b: &mut KernelBuilder, trips: u32, mut body: impl FnMut(&mut KernelBuilder)) {
    let i = b.reg(RegClass::B32);
    b.ins("mov.u32", [i.into(), imm(0)]);
    let top = b.label();
    b.place(top);
    body(b);
    b.ins("add.u32", [i.into(), i.into(), imm(1)]);
    let again = b.setp("lt.u32", i.into(), imm(i64::from(trips)));
    b.bra_if(again, false, top);
}

/// Stores `value` to `out[n]`.
fn store(b: &mut KernelBuilder, out: &str, n: Reg, value: Reg) {
    let base = b.load_ptr_param(out);
    let a = b.addr(base, n, 4);
    b.ins("st.global.f32", [mem(a, 0), value.into()]);
    b.ins("ret", []);
}

fn mma_kernel(name: &str, dtype: DType, trips: u32) -> String {
    let mut b = KernelBuilder::new(name);
    let out = b.param("out", ParamTy::Ptr);
    let (n, x) = thread_index(&mut b);
    let (mma, cvt) = mma_ops(dtype);
    // Operands: small values that depend on the thread, packed to 16-bit pairs.
    let small = b.op2(RegClass::F32, "mul.f32", x.into(), fimm(1.0e-6));
    let pack = |b: &mut KernelBuilder, add: f32| {
        let hi = b.op2(RegClass::F32, "add.f32", small.into(), fimm(add));
        let r = b.reg(RegClass::B32);
        b.ins(cvt, [r.into(), hi.into(), small.into()]);
        r
    };
    let a: Vec<Reg> = (0..4).map(|i| pack(&mut b, 0.25 * i as f32)).collect();
    let bb: Vec<Reg> = (0..2)
        .map(|i| pack(&mut b, 0.5 + 0.25 * i as f32))
        .collect();
    let chains: Vec<Vec<Reg>> = (0..CHAINS)
        .map(|c| {
            (0..4)
                .map(|j| {
                    b.op2(
                        RegClass::F32,
                        "add.f32",
                        small.into(),
                        fimm((c * 4 + j) as f32),
                    )
                })
                .collect()
        })
        .collect();
    counted_loop(&mut b, trips, |b| {
        for _ in 0..2 {
            for d in &chains {
                b.ins(&mma, [vec_op(d), vec_op(&a), vec_op(&bb), vec_op(d)]);
            }
        }
    });
    let sum = sum_all(&mut b, chains.iter().flatten().copied());
    store(&mut b, &out, n, sum);
    b.finish()
}

fn ffma_kernel(name: &str, trips: u32) -> String {
    let mut b = KernelBuilder::new(name);
    let out = b.param("out", ParamTy::Ptr);
    let (n, x) = thread_index(&mut b);
    // x ← x·m + k stays finite and non-constant: m just below 1, k small.
    let small = b.op2(RegClass::F32, "mul.f32", x.into(), fimm(1.0e-9));
    let m = b.op2(RegClass::F32, "sub.f32", fimm(0.999_999), small.into());
    let chains: Vec<Reg> = (0..CHAINS)
        .map(|c| b.op2(RegClass::F32, "add.f32", small.into(), fimm(c as f32)))
        .collect();
    counted_loop(&mut b, trips, |b| {
        for _ in 0..2 {
            for &c in &chains {
                b.ins("fma.rn.f32", [c.into(), c.into(), m.into(), small.into()]);
            }
        }
    });
    let sum = sum_all(&mut b, chains.iter().copied());
    store(&mut b, &out, n, sum);
    b.finish()
}

/// The f32 sum of `regs`.
fn sum_all(b: &mut KernelBuilder, regs: impl Iterator<Item = Reg>) -> Reg {
    let acc = b.reg(RegClass::F32);
    b.ins("mov.f32", [acc.into(), fimm(0.0)]);
    for r in regs {
        b.ins("add.f32", [acc.into(), acc.into(), r.into()]);
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_follow_the_kernels_and_count_their_work() {
        assert_eq!(
            Probe::for_kernels(DType::Bf16, true),
            Probe::Mma(DType::Bf16)
        );
        assert_eq!(Probe::for_kernels(DType::Bf16, false), Probe::Ffma);
        assert_eq!(Probe::for_kernels(DType::F32, true), Probe::Ffma);

        let mma = Probe::Mma(DType::F16);
        let k = mma.kernel(Arch::Sm90, 132);
        assert_eq!(k.grid, 132 * BLOCKS_PER_SM);
        let warps = f64::from(k.grid * k.block / 32);
        let mmas = k
            .ptx
            .matches("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32")
            .count();
        assert_eq!(
            mmas as u32,
            2 * CHAINS,
            "one loop body issues each chain twice"
        );
        assert_eq!(
            k.flops,
            warps * f64::from(mma.trips()) * mmas as f64 * 2.0 * 16.0 * 8.0 * 16.0
        );
        assert!(k.ptx.contains(".target sm_90"));
        assert!(
            k.ptx.contains(&format!(", {};", mma.trips())),
            "the loop bound"
        );

        let f = Probe::Ffma.kernel(Arch::Sm80, 108);
        let fmas = f.ptx.matches("fma.rn.f32").count();
        assert_eq!(fmas as u32, 2 * CHAINS);
        assert_eq!(
            f.flops,
            f64::from(f.grid * f.block) * f64::from(Probe::Ffma.trips()) * fmas as f64 * 2.0
        );
        assert_eq!(Probe::Mma(DType::Bf16).describe(), "mma.sync bf16");
    }
}
