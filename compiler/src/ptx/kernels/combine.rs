//! Combine kernel: one thread per output element, o = Σ_b g_b · o_b (all gates 1 for `sum`),
//! accumulated from 0 with one `fma` per branch in the combine's order.
//!
//! With `GpuVariant::fuse_combine = 1` the backend may instead compute the combine in the
//! epilogue of the last branch kernel ([`Fused`]; today the tensor-core selected attention,
//! `tc_select`): that kernel reads the other branches' outputs and the gates, performs the same
//! operations in the same order, and writes `o` itself, so this kernel is not launched and the
//! last branch's output is not re-read.

use crate::ptx::builder::{KernelBuilder, ParamTy, Reg, RegClass, fimm, imm, mem, sym};
use crate::ptx::lowering::Dims;

use super::common::{Elem, load};
use super::{KernelOut, Launch};

/// The combine computed in the epilogue of the kernel of branch `into` (`fuse_combine = 1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fused {
    /// The branch whose kernel computes the combine (the last branch stage).
    pub into: String,
    /// The combined branches, in the combine's order.
    pub branches: Vec<String>,
    pub gated: bool,
}

impl Fused {
    /// The pointer parameters the fused kernel takes after its own: the other branches'
    /// outputs `o_<b>` and then (gated only) every branch's gate `g_<b>`, both in the combine's
    /// order, then `o`.
    pub fn params(&self) -> Vec<String> {
        let mut params: Vec<String> = self
            .branches
            .iter()
            .filter(|n| **n != self.into)
            .map(|n| format!("o_{n}"))
            .collect();
        if self.gated {
            params.extend(self.branches.iter().map(|n| format!("g_{n}")));
        }
        params.push("o".into());
        params
    }
}

/// Generates the combine kernel.
pub fn combine(name: &str, branches: &[String], gated: bool, dims: &Dims) -> KernelOut {
    let mut b = KernelBuilder::new(name);
    let mut params: Vec<String> = branches.iter().map(|n| format!("o_{n}")).collect();
    if gated {
        params.extend(branches.iter().map(|n| format!("g_{n}")));
    }
    params.push("o".into());
    let syms: Vec<String> = params.iter().map(|p| b.param(p, ParamTy::Ptr)).collect();
    let total = dims.ntok * dims.hq * dims.dv;
    let tid = b.op1(RegClass::B32, "mov.u32", sym("%tid.x"));
    let cta = b.op1(RegClass::B32, "mov.u32", sym("%ctaid.x"));
    let ntid = b.op1(RegClass::B32, "mov.u32", sym("%ntid.x"));
    let n = b.op3(
        RegClass::B32,
        "mad.lo.u32",
        cta.into(),
        ntid.into(),
        tid.into(),
    );
    let exit = b.label();
    let p = b.setp("ge.u32", n.into(), imm(i64::from(total)));
    b.bra_if(p, false, exit);
    let ptrs: Vec<Reg> = syms.iter().map(|s| b.load_ptr_param(s)).collect();
    let th = b.op2(RegClass::B32, "div.u32", n.into(), imm(i64::from(dims.dv)));
    let acc = b.reg(RegClass::F32);
    b.ins("mov.f32", [acc.into(), fimm(0.0)]);
    let nb = branches.len();
    for i in 0..nb {
        let x = load(&mut b, ptrs[i], n, Elem::F32);
        if gated {
            let g = load(&mut b, ptrs[nb + i], th, Elem::Input(dims.dtype));
            b.ins("fma.rn.f32", [acc.into(), g.into(), x.into(), acc.into()]);
        } else {
            b.ins("add.f32", [acc.into(), acc.into(), x.into()]);
        }
    }
    let a = b.addr(ptrs[ptrs.len() - 1], n, 4);
    b.ins("st.global.f32", [mem(a, 0), acc.into()]);
    b.place(exit);
    b.ins("ret", []);
    KernelOut {
        ptx: b.finish(),
        params,
        max_regs: b.reg_cap(),
        launch: Launch {
            grid: total.div_ceil(256),
            block: 256,
            shared_bytes: 0,
            formula: "grid = ceil(B*T*HQ*Dv / 256), block = 256: one thread per output element"
                .into(),
        },
    }
}
