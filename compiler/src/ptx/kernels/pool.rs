//! Pooling kernel: one warp per (token, kv head); the warp of token s + j of a segment starting
//! at s turns the block of keys and values starting at j·d into compressed token j (mean,
//! weighted by the plan's weights, or a linear map), when that block lies in the segment. The
//! plan's `kc`/`vc` `[B, NC, H, D]` hold only compressed tokens: token j of a segment goes to
//! the segment's first slot (its `seg` column) + j. For the tensor-core kernels it also writes
//! the 16-bit copies (`kc16_<b>`: keys as hi + lo rows, `vc16_<b>`: values) with the same
//! slots, which they copy with `cp.async`.

use nsac_dsl::problem::DType;

use crate::ir::PoolKind;
use crate::ptx::SEG;
use crate::ptx::builder::{KernelBuilder, Reg, RegClass, fimm, imm, mem};
use crate::ptx::lowering::{Compressed, Dims, KvNames};

use super::common::{
    Elem, chunk_guard, chunks, declare_buffers, declare_scalar, for_range, load, load_vec,
    params_of, segment, segment_column, store_vec, warp_row,
};
use super::{KernelOut, Scalar};

/// One pooled tensor (K or V) of the branch.
struct Side {
    src: Reg,
    dst: Reg,
    weights: Option<Reg>,
    dim: u32,
}

#[allow(clippy::too_many_arguments)]
fn pool_side(
    b: &mut KernelBuilder,
    side: &Side,
    pool: PoolKind,
    kt0: Reg,
    h: Reg,
    slot_row: Reg,
    lane: Reg,
    block: u32,
    dims: &Dims,
) -> Vec<Reg> {
    let hh = i64::from(dims.h);
    let dim = side.dim;
    let elem = Elem::of(dims.dtype);
    let acc: Vec<Reg> = (0..chunks(dim)).map(|_| b.reg(RegClass::F32)).collect();
    for a in &acc {
        b.ins("mov.f32", [(*a).into(), fimm(0.0)]);
    }
    match pool {
        PoolKind::Mean | PoolKind::Weighted => {
            for_range(b, imm(0), imm(i64::from(block)), 1, |b, i| {
                let kt = b.op2(RegClass::B32, "add.u32", kt0.into(), i.into());
                let th = b.op3(RegClass::B32, "mad.lo.u32", kt.into(), imm(hh), h.into());
                let off = b.op2(RegClass::B32, "mul.lo.u32", th.into(), imm(i64::from(dim)));
                let x = load_vec(b, side.src, off, lane, dim, elem);
                let w = match (pool, side.weights) {
                    (PoolKind::Weighted, Some(wb)) => {
                        let wi = b.op3(
                            RegClass::B32,
                            "mad.lo.u32",
                            h.into(),
                            imm(i64::from(block)),
                            i.into(),
                        );
                        load(b, wb, wi, elem)
                    }
                    _ => {
                        let r = b.reg(RegClass::F32);
                        b.ins("mov.f32", [r.into(), fimm(1.0 / block as f32)]);
                        r
                    }
                };
                for (a, xv) in acc.iter().zip(&x) {
                    b.ins(
                        "fma.rn.f32",
                        [(*a).into(), w.into(), (*xv).into(), (*a).into()],
                    );
                }
            });
        }
        PoolKind::Linear => {
            let Some(wb) = side.weights else {
                return acc;
            };
            // out[e] = Σ_{i<l, c<D} X[kt0+i, h, c] · W[h, i·D + c, e]
            let flat = i64::from(block) * i64::from(dim);
            for_range(b, imm(0), imm(flat), 1, |b, f| {
                let i = b.op2(RegClass::B32, "div.u32", f.into(), imm(i64::from(dim)));
                let c = b.op2(RegClass::B32, "rem.u32", f.into(), imm(i64::from(dim)));
                let kt = b.op2(RegClass::B32, "add.u32", kt0.into(), i.into());
                let th = b.op3(RegClass::B32, "mad.lo.u32", kt.into(), imm(hh), h.into());
                let xi = b.op3(
                    RegClass::B32,
                    "mad.lo.u32",
                    th.into(),
                    imm(i64::from(dim)),
                    c.into(),
                );
                let x = load(b, side.src, xi, elem);
                let wr = b.op3(RegClass::B32, "mad.lo.u32", h.into(), imm(flat), f.into());
                let woff = b.op2(RegClass::B32, "mul.lo.u32", wr.into(), imm(i64::from(dim)));
                let w = load_vec(b, wb, woff, lane, dim, elem);
                for (a, wv) in acc.iter().zip(&w) {
                    b.ins(
                        "fma.rn.f32",
                        [(*a).into(), x.into(), (*wv).into(), (*a).into()],
                    );
                }
            });
        }
    }
    let off = b.op2(
        RegClass::B32,
        "mul.lo.u32",
        slot_row.into(),
        imm(i64::from(dim)),
    );
    store_vec(b, side.dst, off, lane, dim, &acc);
    acc
}

/// `x` rounded to the input dtype (`hi`) and, when `with_lo`, the rounded remainder
/// x − hi (`lo`), as 16-bit registers.
fn split16(b: &mut KernelBuilder, x: Reg, dtype: DType, with_lo: bool) -> (Reg, Option<Reg>) {
    let cvt = match dtype {
        DType::F16 => "cvt.rn.f16.f32",
        _ => "cvt.rn.bf16.f32",
    };
    let hi = b.reg(RegClass::B16);
    b.ins(cvt, [hi.into(), x.into()]);
    if !with_lo {
        return (hi, None);
    }
    let back = match dtype {
        DType::F16 => b.op1(RegClass::F32, "cvt.f32.f16", hi.into()),
        _ => {
            let w = b.op1(RegClass::B32, "cvt.u32.u16", hi.into());
            let sh = b.op2(RegClass::B32, "shl.b32", w.into(), imm(16));
            b.op1(RegClass::F32, "mov.b32", sh.into())
        }
    };
    let r = b.op2(RegClass::F32, "sub.f32", x.into(), back.into());
    let lo = b.reg(RegClass::B16);
    b.ins(cvt, [lo.into(), r.into()]);
    (hi, Some(lo))
}

/// One 16-bit scratch tensor: keys as a hi row then a lo row (`split`), values as one row.
struct HalfRows {
    dst: Reg,
    dim: u32,
    split: bool,
}

/// Stores a warp-distributed compressed row into the 16-bit scratch.
fn store_half(
    b: &mut KernelBuilder,
    t: &HalfRows,
    slot_row: Reg,
    lane: Reg,
    acc: &[Reg],
    dtype: DType,
) {
    let HalfRows { dst, dim, split } = *t;
    let rows = if split { 2 } else { 1 };
    let row0 = b.op2(
        RegClass::B32,
        "mul.lo.u32",
        slot_row.into(),
        imm(i64::from(rows * dim)),
    );
    let start = b.op2(RegClass::B32, "add.u32", row0.into(), lane.into());
    for m in 0..chunks(dim) {
        let idx = b.op2(
            RegClass::B32,
            "add.u32",
            start.into(),
            imm(i64::from(m * 32)),
        );
        let a = b.addr(dst, idx, 2);
        let (hi, lo) = split16(b, acc[m as usize], dtype, split);
        let g = chunk_guard(b, lane, m, dim);
        let st = |b: &mut KernelBuilder, off: i64, r: Reg| match g {
            Some(p) => b.ins_if(p, false, "st.global.b16", [mem(a, off), r.into()]),
            None => b.ins("st.global.b16", [mem(a, off), r.into()]),
        };
        st(b, 0, hi);
        if let Some(lo) = lo {
            st(b, i64::from(dim * 2), lo);
        }
    }
}

/// The pooling of one compress branch: where it reads and writes, and its block, stride and
/// kind.
pub struct PoolArgs<'a> {
    pub kv: &'a KvNames,
    /// `[w]` (weighted), `[wk, wv]` (linear) or none (mean).
    pub weights: &'a [String],
    pub out: &'a Compressed,
    pub block: u32,
    pub stride: u32,
    pub pool: PoolKind,
}

/// Generates the pooling kernel of a compress branch.
pub fn pool(name: &str, a: &PoolArgs<'_>, dims: &Dims, warps: u32) -> KernelOut {
    let (block, stride, pool) = (a.block, a.stride, a.pool);
    let mut b = KernelBuilder::new(name);
    let mut bufs: Vec<String> = vec![SEG.into(), a.kv.k.clone(), a.kv.v.clone()];
    bufs.extend(a.weights.iter().cloned());
    bufs.push(a.out.kv.k.clone());
    bufs.push(a.out.kv.v.clone());
    if let Some(h) = &a.out.half {
        bufs.push(h.k.clone());
        bufs.push(h.v.clone());
    }
    let half = a.out.half.is_some();
    let syms = declare_buffers(&mut b, &bufs);
    let ntok_sym = declare_scalar(&mut b, Scalar::Ntok);
    let ntok = b.load_u32_param(&ntok_sym);
    let wr = warp_row(&mut b, ntok, dims.h);
    let ptrs: Vec<Reg> = syms.iter().map(|s| b.load_ptr_param(s)).collect();
    let n = ptrs.len() - if half { 2 } else { 0 };
    let (seg, kb, vb, kcb, vcb) = (ptrs[0], ptrs[1], ptrs[2], ptrs[n - 2], ptrs[n - 1]);
    let kh = HalfRows {
        dst: ptrs[ptrs.len() - 2],
        dim: dims.dqk,
        split: true,
    };
    let vh = HalfRows {
        dst: ptrs[ptrs.len() - 1],
        dim: dims.dv,
        split: false,
    };
    let (wk, wv) = match (pool, a.weights.len()) {
        (PoolKind::Weighted, 1) => (Some(ptrs[3]), Some(ptrs[3])),
        (PoolKind::Linear, 2) => (Some(ptrs[3]), Some(ptrs[4])),
        _ => (None, None),
    };
    let hh = i64::from(dims.h);
    let tok = b.op2(RegClass::B32, "div.u32", wr.row.into(), imm(hh));
    let h = b.op2(RegClass::B32, "rem.u32", wr.row.into(), imm(hh));
    let (s, e) = segment(&mut b, seg, tok, dims.seg_cols);
    b.comment("token s + j pools compressed token j when j*d + l <= segment length");
    let j = b.op2(RegClass::B32, "sub.u32", tok.into(), s.into());
    let len = b.op2(RegClass::B32, "sub.u32", e.into(), s.into());
    let k0 = b.op2(
        RegClass::B32,
        "mul.lo.u32",
        j.into(),
        imm(i64::from(stride)),
    );
    let k1 = b.op2(RegClass::B32, "add.u32", k0.into(), imm(i64::from(block)));
    let outside = b.setp("gt.u32", k1.into(), len.into());
    b.bra_if(outside, false, wr.exit);
    b.comment("its slot: the segment's first compressed slot + j");
    let cb = segment_column(&mut b, seg, tok, dims.seg_cols, a.out.column);
    let slot = b.op2(RegClass::B32, "add.u32", cb.into(), j.into());
    let slot_row = b.op3(RegClass::B32, "mad.lo.u32", slot.into(), imm(hh), h.into());
    let kt0 = b.op2(RegClass::B32, "add.u32", s.into(), k0.into());
    let kside = Side {
        src: kb,
        dst: kcb,
        weights: wk,
        dim: dims.dqk,
    };
    let kacc = pool_side(&mut b, &kside, pool, kt0, h, slot_row, wr.lane, block, dims);
    if half {
        b.comment("keys as hi + lo halves, for the tensor-core kernels");
        store_half(&mut b, &kh, slot_row, wr.lane, &kacc, dims.dtype);
    }
    let vside = Side {
        src: vb,
        dst: vcb,
        weights: wv,
        dim: dims.dv,
    };
    let vacc = pool_side(&mut b, &vside, pool, kt0, h, slot_row, wr.lane, block, dims);
    if half {
        b.comment("values rounded to the input dtype, for the tensor-core kernels");
        store_half(&mut b, &vh, slot_row, wr.lane, &vacc, dims.dtype);
    }
    let params = params_of(&bufs, &[Scalar::Ntok]);
    wr.finish(
        b,
        params,
        (dims.h, warps),
        "B*T*H",
        "(token, kv head), pooling where a compressed token starts",
    )
}
