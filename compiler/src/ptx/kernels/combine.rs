//! Combine kernel: one thread per output element, o = Σ_b g_b · o_b (all gates 1 for `sum`),
//! accumulated from 0 with one `fma` per branch in the combine's order.
//!
//! With `GpuVariant::fuse_combine = 1` the backend may instead compute the combine in the
//! epilogue of the last branch kernel ([`Fused`]: the tensor-core selected attention, `tc_select`,
//! or the window attention, `attend`): that kernel reads the other branches' outputs and the
//! gates, performs the same operations in the same order on the values it stores, and writes `o`
//! itself, so this kernel is not launched and the last branch's output is not re-read (it is
//! still written: `o_<b>` is a result of the call).

use nsac_dsl::problem::DType;

use crate::ptx::builder::{KernelBuilder, ParamTy, Reg, RegClass, fimm, imm, mem};
use crate::ptx::launch::Geometry;
use crate::ptx::lowering::{Dims, Term};

use super::common::{
    Elem, declare_buffers, declare_scalar, global_thread, lane_element, load, load_if, params_of,
    store_f32_if,
};
use super::tc_common::FusedTerms;
use super::{KernelOut, Launch, Scalar};

/// The combine computed in the epilogue of the kernel of branch `into` (`fuse_combine = 1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fused {
    /// The branch whose kernel computes the combine (the last branch stage).
    pub into: String,
    /// The combined branches' outputs and gates, in the combine's order.
    pub terms: Vec<Term>,
    /// The combined output.
    pub out: String,
}

impl Fused {
    /// The pointer parameters the fused kernel takes after its own: the other branches'
    /// outputs and then (gated only) every branch's gate, both in the combine's order, then the
    /// combined output.
    pub fn params(&self) -> Vec<String> {
        let mut params: Vec<String> = self
            .terms
            .iter()
            .filter(|t| t.branch != self.into)
            .map(|t| t.out.clone())
            .collect();
        params.extend(self.terms.iter().filter_map(|t| t.gate.clone()));
        params.push(self.out.clone());
        params
    }

    /// Declares the parameters of [`Fused::params`] (after the kernel's own) in `b`.
    pub fn declare(&self, b: &mut KernelBuilder, dims: &Dims) -> FusedParams {
        let mut ptr = |name: &str| b.param(name, ParamTy::Ptr);
        let outs: Vec<Option<String>> = self
            .terms
            .iter()
            .map(|t| (t.branch != self.into).then(|| ptr(&t.out)))
            .collect();
        let gates: Vec<String> = self
            .terms
            .iter()
            .filter_map(|t| t.gate.as_deref().map(&mut ptr))
            .collect();
        let o = ptr(&self.out);
        FusedParams {
            outs,
            gates,
            o,
            dtype: dims.dtype,
        }
    }
}

/// The fused combine's parameter symbols in a kernel ([`Fused::declare`]).
pub struct FusedParams {
    outs: Vec<Option<String>>,
    gates: Vec<String>,
    o: String,
    dtype: DType,
}

impl FusedParams {
    /// Loads the parameters' pointers: the combine's terms.
    pub fn load(&self, b: &mut KernelBuilder) -> FusedTerms {
        FusedTerms {
            outs: self
                .outs
                .iter()
                .map(|s| s.as_ref().map(|s| b.load_ptr_param(s)))
                .collect(),
            gates: self.gates.iter().map(|s| b.load_ptr_param(s)).collect(),
            o: b.load_ptr_param(&self.o),
            dtype: self.dtype,
        }
    }
}

/// Stores a warp-distributed row of the last branch's output (lane holds elements
/// `lane + 32·m` of row `row`, values `own`, as `common::store_vec` writes them) combined with
/// the other branches' rows into `o`: per element `acc = 0; acc = fma(g_b, o_b, acc)` over the
/// terms in order (`add.rn` for `sum`), the combine kernel's operations in its order. `row` is the
/// flattened (token, q head) index of the gates.
pub fn store_combined_vec(
    b: &mut KernelBuilder,
    terms: &FusedTerms,
    row: Reg,
    lane: Reg,
    dv: u32,
    own: &[Reg],
) {
    b.comment("combine fused: o = sum of g_b * o_b in the combine's order");
    let gates: Vec<Reg> = terms
        .gates
        .iter()
        .map(|&g| load(b, g, row, Elem::of(terms.dtype)))
        .collect();
    let ooff = b.op2(RegClass::B32, "mul.lo.u32", row.into(), imm(i64::from(dv)));
    let start = b.op2(RegClass::B32, "add.u32", ooff.into(), lane.into());
    for (m, x) in own.iter().enumerate() {
        let (idx, guard) = lane_element(b, start, lane, m as u32, dv);
        let acc = b.reg(RegClass::F32);
        b.ins("mov.f32", [acc.into(), fimm(0.0)]);
        for (i, src) in terms.outs.iter().enumerate() {
            let v = match src {
                None => *x,
                Some(p) => load_if(b, *p, idx, Elem::F32, guard),
            };
            add_term(b, acc, gates.get(i).copied(), v);
        }
        store_f32_if(b, terms.o, idx, acc, guard);
    }
}

/// One term of a fused combine: `acc = fma(gate, v, acc)`, or `acc += v` without gates
/// (`add.rn`, so ptxas cannot contract a preceding `mul` of `v` into it and change the
/// rounding the separate combine kernel has).
pub fn add_term(b: &mut KernelBuilder, acc: Reg, gate: Option<Reg>, v: Reg) {
    match gate {
        Some(g) => b.ins("fma.rn.f32", [acc.into(), g.into(), v.into(), acc.into()]),
        None => b.ins("add.rn.f32", [acc.into(), acc.into(), v.into()]),
    }
}

/// Generates the combine kernel of `terms` into `out`.
pub fn combine(name: &str, terms: &[Term], out: &str, dims: &Dims) -> KernelOut {
    let mut b = KernelBuilder::new(name);
    let gated = terms.iter().all(|t| t.gate.is_some());
    let mut params: Vec<String> = terms.iter().map(|t| t.out.clone()).collect();
    if gated {
        params.extend(terms.iter().filter_map(|t| t.gate.clone()));
    }
    params.push(out.to_string());
    let syms = declare_buffers(&mut b, &params);
    let ntok_sym = declare_scalar(&mut b, Scalar::Ntok);
    let ntok = b.load_u32_param(&ntok_sym);
    let per_token = dims.hq * dims.dv;
    let total = b.op2(
        RegClass::B32,
        "mul.lo.u32",
        ntok.into(),
        imm(i64::from(per_token)),
    );
    let (_, n) = global_thread(&mut b);
    let exit = b.label();
    let p = b.setp("ge.u32", n.into(), total.into());
    b.bra_if(p, false, exit);
    let ptrs: Vec<Reg> = syms.iter().map(|s| b.load_ptr_param(s)).collect();
    let th = b.op2(RegClass::B32, "div.u32", n.into(), imm(i64::from(dims.dv)));
    let acc = b.reg(RegClass::F32);
    b.ins("mov.f32", [acc.into(), fimm(0.0)]);
    let nb = terms.len();
    for i in 0..nb {
        let x = load(&mut b, ptrs[i], n, Elem::F32);
        if gated {
            let g = load(&mut b, ptrs[nb + i], th, Elem::of(dims.dtype));
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
        params: params_of(&params, &[Scalar::Ntok]),
        max_regs: b.reg_cap(),
        launch: Launch {
            geometry: Geometry::new(per_token, 256, 1, 256, 0),
            formula: "grid = ceil(B*T*HQ*Dv / 256), block = 256: one thread per output element"
                .into(),
        },
    }
}
