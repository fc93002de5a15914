//! Block scoring for top-n on tensor cores: the group-summed compressed-attention probabilities
//! p(t,h,j) = 2^(q·k̃_j·scale·log2e − lse) of one (token, kv head), with the G ≤ 16 heads as the
//! rows of `mma.sync.m16n8k16` tiles, spread over the selection blocks in key order.
//!
//! The compressed keys are f32 scratch; each is split into a high and a low 16-bit part
//! (k̃ = hi + lo, about 16 significant bits) so S = Q·hiᵀ + Q·loᵀ keeps the selection's
//! ranking as exact as the scalar kernel's (Q is an input, exact in its dtype). A chunk of
//! [`CHUNK`] compressed tokens is converted into shared memory, read with `ldmatrix`; column
//! sums over the heads are formed with quad shuffles and added to the block scores in
//! ascending key order by lane 0, so the result is deterministic.

use nsac_dsl::problem::DType;

use crate::ptx::builder::{KernelBuilder, Operand, Reg, RegClass, fimm, imm, mem};
use crate::ptx::lowering::Dims;

use super::common::for_range;
use super::topn::TopNParams;

/// Compressed tokens converted per step (a multiple of 16).
pub const CHUNK: u32 = 32;

/// Whether the tensor-core scoring handles `dims`.
pub fn eligible(dims: &Dims) -> bool {
    matches!(dims.dtype, DType::Bf16 | DType::F16)
        && dims.group <= 16
        && dims.dqk.is_multiple_of(16)
        && dims.dqk <= 128
}

/// Bytes per staged row (padded by 16 against `ldmatrix` bank conflicts).
fn row_stride(dqk: u32) -> u32 {
    dqk * 2 + 16
}

/// Shared bytes the staging needs (hi and lo parts).
pub fn staging_bytes(dims: &Dims) -> u32 {
    2 * CHUNK * row_stride(dims.dqk)
}

fn vec_op(regs: &[Reg]) -> Operand {
    Operand::Vec(regs.to_vec())
}

/// The registers and addresses the scoring needs from the top-n kernel.
pub struct ScoreCtx {
    pub qb: Reg,
    pub kcb: Reg,
    pub lseb: Reg,
    /// Shared address of the block scores (f32 per candidate block).
    pub scores: Reg,
    /// Shared address of the staging area ([`staging_bytes`]).
    pub stage: Reg,
    pub lane: Reg,
    /// `tok·H + h`.
    pub row: Reg,
    pub h: Reg,
    /// Segment start (flattened token).
    pub s: Reg,
    pub nvis: Reg,
    pub nbc: Reg,
    pub lane0: Reg,
}

/// Splits 2 f32 into packed hi and lo 16-bit pairs (`x1` in the upper half).
pub fn split2(b: &mut KernelBuilder, x0: Reg, x1: Reg, dtype: DType) -> (Reg, Reg) {
    let cvt = match dtype {
        DType::F16 => "cvt.rn.f16x2.f32",
        _ => "cvt.rn.bf16x2.f32",
    };
    let hi = b.reg(RegClass::B32);
    b.ins(cvt, [hi.into(), x1.into(), x0.into()]);
    let (h0, h1) = match dtype {
        DType::F16 => {
            let (a, c) = (b.reg(RegClass::B16), b.reg(RegClass::B16));
            b.ins("mov.b32", [Operand::Vec(vec![a, c]), hi.into()]);
            (
                b.op1(RegClass::F32, "cvt.f32.f16", a.into()),
                b.op1(RegClass::F32, "cvt.f32.f16", c.into()),
            )
        }
        _ => {
            let a = b.op2(RegClass::B32, "shl.b32", hi.into(), imm(16));
            let c = b.op2(RegClass::B32, "and.b32", hi.into(), imm(0xffff_0000));
            (
                b.op1(RegClass::F32, "mov.b32", a.into()),
                b.op1(RegClass::F32, "mov.b32", c.into()),
            )
        }
    };
    let r0 = b.op2(RegClass::F32, "sub.f32", x0.into(), h0.into());
    let r1 = b.op2(RegClass::F32, "sub.f32", x1.into(), h1.into());
    let lo = b.reg(RegClass::B32);
    b.ins(cvt, [lo.into(), r1.into(), r0.into()]);
    (hi, lo)
}

/// Emits the scoring: `scores[i] += Σ_heads p(t,h,j)·overlap(j,i)/d` for every visible j.
pub fn tc_block_scores(b: &mut KernelBuilder, c: &ScoreCtx, p: &TopNParams<'_>, dims: &Dims) {
    let (ty, g, hh, dqk) = (
        match dims.dtype {
            DType::F16 => "f16",
            _ => "bf16",
        },
        dims.group,
        dims.h,
        dims.dqk,
    );
    let mma = format!("mma.sync.aligned.m16n8k16.row.col.f32.{ty}.{ty}.f32");
    let rs = row_stride(dqk);
    b.comment("tensor-core scoring: Q fragments of the group's heads (rows >= G are 0)");
    let gq = b.op2(RegClass::B32, "shr.u32", c.lane.into(), imm(2));
    let tq = b.op2(RegClass::B32, "and.b32", c.lane.into(), imm(3));
    let tq2 = b.op2(RegClass::B32, "shl.b32", tq.into(), imm(1));
    let g8 = b.op2(RegClass::B32, "add.u32", gq.into(), imm(8));
    let rowok = [
        b.setp("lt.u32", gq.into(), imm(i64::from(g))),
        b.setp("lt.u32", g8.into(), imm(i64::from(g))),
    ];
    let qrow = b.op3(
        RegClass::B32,
        "mad.lo.u32",
        c.row.into(),
        imm(i64::from(g)),
        gq.into(),
    );
    let qe = b.op3(
        RegClass::B32,
        "mad.lo.u32",
        qrow.into(),
        imm(i64::from(dqk)),
        tq2.into(),
    );
    let qa = b.addr(c.qb, qe, 2);
    let r8 = i64::from(8 * dqk * 2);
    let mut qf: Vec<[Reg; 4]> = Vec::new();
    for kstep in 0..dqk / 16 {
        let base = i64::from(kstep * 32);
        let offs = [base, base + r8, base + 16, base + r8 + 16];
        let regs = [0, 1, 2, 3].map(|i| {
            let r = b.reg(RegClass::B32);
            b.ins("mov.b32", [r.into(), imm(0)]);
            b.ins_if(
                rowok[i % 2],
                false,
                "ld.global.b32",
                [r.into(), mem(qa, offs[i])],
            );
            r
        });
        qf.push(regs);
    }
    let la = b.addr(c.lseb, qrow, 4);
    let lse = [0i64, 1].map(|half| {
        let r = b.reg(RegClass::F32);
        b.ins("mov.f32", [r.into(), fimm(0.0)]);
        b.ins_if(
            rowok[half as usize],
            false,
            "ld.global.f32",
            [r.into(), mem(la, half * 32)],
        );
        r
    });
    b.comment("ldmatrix lane offset: keys 8*(lane>>4)+lane&7, dims 8*((lane>>3)&1)");
    let l7 = b.op2(RegClass::B32, "and.b32", c.lane.into(), imm(7));
    let l3 = b.op2(RegClass::B32, "shr.u32", c.lane.into(), imm(3));
    let l3b = b.op2(RegClass::B32, "and.b32", l3.into(), imm(1));
    let l4 = b.op2(RegClass::B32, "shr.u32", c.lane.into(), imm(4));
    let krow = b.op3(RegClass::B32, "mad.lo.u32", l4.into(), imm(8), l7.into());
    let kcol = b.op2(RegClass::B32, "mul.lo.u32", l3b.into(), imm(16));
    let klane = b.op3(
        RegClass::B32,
        "mad.lo.u32",
        krow.into(),
        imm(i64::from(rs)),
        kcol.into(),
    );
    let khi = b.op2(RegClass::B32, "add.u32", c.stage.into(), klane.into());
    let lo_off = i64::from(CHUNK * rs);
    let (cl, cd, lb) = (
        i64::from(p.cmp_block),
        i64::from(p.cmp_stride),
        i64::from(p.block),
    );
    let inv_d = 1.0 / p.cmp_stride as f32;
    let pieces = dqk / 4; // float4 pieces per row
    for_range(b, imm(0), c.nvis.into(), i64::from(CHUNK), |b, c0| {
        b.comment("convert compressed keys c0 .. c0+CHUNK to hi/lo halves in shared memory");
        b.ins("bar.warp.sync", [imm(-1)]);
        for i in 0..pieces {
            let pc = b.op2(
                RegClass::B32,
                "add.u32",
                c.lane.into(),
                imm(i64::from(32 * i)),
            );
            let r = b.op2(RegClass::B32, "div.u32", pc.into(), imm(i64::from(pieces)));
            let col = b.op2(RegClass::B32, "rem.u32", pc.into(), imm(i64::from(pieces)));
            let j = b.op2(RegClass::B32, "add.u32", c0.into(), r.into());
            let ok = b.setp("lt.u32", j.into(), c.nvis.into());
            let slot = b.op2(RegClass::B32, "add.u32", c.s.into(), j.into());
            let sh = b.op3(
                RegClass::B32,
                "mad.lo.u32",
                slot.into(),
                imm(i64::from(hh)),
                c.h.into(),
            );
            let e = b.op2(RegClass::B32, "mul.lo.u32", sh.into(), imm(i64::from(dqk)));
            let e = b.op3(RegClass::B32, "mad.lo.u32", col.into(), imm(4), e.into());
            let ga = b.addr(c.kcb, e, 4);
            let x = [0, 1, 2, 3].map(|_| {
                let r = b.reg(RegClass::F32);
                b.ins("mov.f32", [r.into(), fimm(0.0)]);
                r
            });
            b.ins_if(ok, false, "ld.global.v4.f32", [vec_op(&x), mem(ga, 0)]);
            let (h01, l01) = split2(b, x[0], x[1], dims.dtype);
            let (h23, l23) = split2(b, x[2], x[3], dims.dtype);
            let so = b.op3(
                RegClass::B32,
                "mad.lo.u32",
                r.into(),
                imm(i64::from(rs)),
                c.stage.into(),
            );
            let so = b.op3(RegClass::B32, "mad.lo.u32", col.into(), imm(8), so.into());
            b.ins("st.shared.v2.b32", [mem(so, 0), vec_op(&[h01, h23])]);
            b.ins("st.shared.v2.b32", [mem(so, lo_off), vec_op(&[l01, l23])]);
        }
        b.ins("bar.warp.sync", [imm(-1)]);
        b.comment("S = Q hi^T + Q lo^T");
        let sf: Vec<[Reg; 4]> = (0..CHUNK / 8)
            .map(|_| {
                [0, 1, 2, 3].map(|_| {
                    let r = b.reg(RegClass::F32);
                    b.ins("mov.f32", [r.into(), fimm(0.0)]);
                    r
                })
            })
            .collect();
        for j16 in 0..CHUNK / 16 {
            for (kstep, qa) in qf.iter().enumerate() {
                for part in [0, lo_off] {
                    let r = [0, 1, 2, 3].map(|_| b.reg(RegClass::B32));
                    let off = i64::from(16 * j16 * rs) + 32 * kstep as i64 + part;
                    b.ins(
                        "ldmatrix.sync.aligned.m8n8.x4.shared.b16",
                        [vec_op(&r), mem(khi, off)],
                    );
                    for half in 0..2usize {
                        let acc = sf[2 * j16 as usize + half];
                        let bf = [r[2 * half], r[2 * half + 1]];
                        b.ins(&mma, [vec_op(&acc), vec_op(qa), vec_op(&bf), vec_op(&acc)]);
                    }
                }
            }
        }
        b.comment("p = 2^(S*scale - lse)/d for rows < G and keys < nvis; column sums over heads");
        let kq = b.op2(RegClass::B32, "add.u32", c0.into(), tq2.into());
        let mut colsum: Vec<[Reg; 2]> = Vec::new();
        for (nt, acc) in sf.iter().enumerate() {
            let k0 = b.op2(RegClass::B32, "add.u32", kq.into(), imm(8 * nt as i64));
            let k1 = b.op2(RegClass::B32, "add.u32", k0.into(), imm(1));
            let kok = [
                b.setp("lt.u32", k0.into(), c.nvis.into()),
                b.setp("lt.u32", k1.into(), c.nvis.into()),
            ];
            let pv: Vec<Reg> = acc
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let m = b.op2(RegClass::F32, "mul.f32", (*r).into(), fimm(dims.scale_log2));
                    let x = b.op2(RegClass::F32, "sub.f32", m.into(), lse[i / 2].into());
                    let e = b.op1(RegClass::F32, "ex2.approx.ftz.f32", x.into());
                    let w = b.op2(RegClass::F32, "mul.f32", e.into(), fimm(inv_d));
                    let both = b.op2(
                        RegClass::Pred,
                        "and.pred",
                        kok[i % 2].into(),
                        rowok[i / 2].into(),
                    );
                    let o = b.reg(RegClass::F32);
                    b.ins("selp.f32", [o.into(), w.into(), fimm(0.0), both.into()]);
                    o
                })
                .collect();
            let cs = [0, 1].map(|w| {
                let mut s = b.op2(RegClass::F32, "add.f32", pv[w].into(), pv[w + 2].into());
                for off in [4, 8, 16] {
                    let bits = b.op1(RegClass::B32, "mov.b32", s.into());
                    let o = b.reg(RegClass::B32);
                    b.ins(
                        "shfl.sync.bfly.b32",
                        [o.into(), bits.into(), imm(off), imm(31), imm(-1)],
                    );
                    let of = b.op1(RegClass::F32, "mov.b32", o.into());
                    s = b.op2(RegClass::F32, "add.f32", s.into(), of.into());
                }
                s
            });
            colsum.push(cs);
        }
        if p.cmp_block == p.cmp_stride && p.cmp_stride == p.block {
            b.comment("one compressed token per block: lanes 0..3 store their keys' scores");
            let quad0 = b.setp("lt.u32", c.lane.into(), imm(4));
            for (nt, cs) in colsum.iter().enumerate() {
                for (w, v) in cs.iter().enumerate() {
                    let key = b.op2(
                        RegClass::B32,
                        "add.u32",
                        kq.into(),
                        imm((8 * nt + w) as i64),
                    );
                    let a = b.setp("lt.u32", key.into(), c.nvis.into());
                    let inb = b.setp("lt.u32", key.into(), c.nbc.into());
                    let ok = b.op2(RegClass::Pred, "and.pred", a.into(), inb.into());
                    let ok = b.op2(RegClass::Pred, "and.pred", ok.into(), quad0.into());
                    let sc = b.op2(RegClass::F32, "mul.f32", (*v).into(), fimm(p.block as f32));
                    let sa = b.op3(
                        RegClass::B32,
                        "mad.lo.u32",
                        key.into(),
                        imm(4),
                        c.scores.into(),
                    );
                    b.ins_if(ok, false, "st.shared.f32", [mem(sa, 0), sc.into()]);
                }
            }
            return;
        }
        b.comment("add each key's score to its blocks in key order (lane 0 writes)");
        for k in 0..CHUNK {
            let src = colsum[(k / 8) as usize][(k % 2) as usize];
            let bits = b.op1(RegClass::B32, "mov.b32", src.into());
            let o = b.reg(RegClass::B32);
            b.ins(
                "shfl.sync.idx.b32",
                [
                    o.into(),
                    bits.into(),
                    imm(i64::from((k % 8) / 2)),
                    imm(31),
                    imm(-1),
                ],
            );
            let pw = b.op1(RegClass::F32, "mov.b32", o.into());
            let j = b.op2(RegClass::B32, "add.u32", c0.into(), imm(i64::from(k)));
            let skip = b.label();
            let past = b.setp("ge.u32", j.into(), c.nvis.into());
            b.bra_if(past, false, skip);
            let k0 = b.op2(RegClass::B32, "mul.lo.u32", j.into(), imm(cd));
            let k1 = b.op2(RegClass::B32, "add.u32", k0.into(), imm(cl));
            let ilo = b.op2(RegClass::B32, "div.u32", k0.into(), imm(lb));
            let last = b.op2(RegClass::B32, "sub.u32", k1.into(), imm(1));
            let ihi0 = b.op2(RegClass::B32, "div.u32", last.into(), imm(lb));
            let ihi1 = b.op2(RegClass::B32, "add.u32", ihi0.into(), imm(1));
            let ihi = b.op2(RegClass::B32, "min.u32", ihi1.into(), c.nbc.into());
            for_range(b, ilo.into(), ihi.into(), 1, |b, i| {
                let b0 = b.op2(RegClass::B32, "mul.lo.u32", i.into(), imm(lb));
                let b1 = b.op2(RegClass::B32, "add.u32", b0.into(), imm(lb));
                let lo = b.op2(RegClass::B32, "max.u32", b0.into(), k0.into());
                let hi = b.op2(RegClass::B32, "min.u32", b1.into(), k1.into());
                let ov = b.op2(RegClass::B32, "sub.u32", hi.into(), lo.into());
                let ovf = b.op1(RegClass::F32, "cvt.rn.f32.u32", ov.into());
                let a = b.op3(
                    RegClass::B32,
                    "mad.lo.u32",
                    i.into(),
                    imm(4),
                    c.scores.into(),
                );
                let cur = b.reg(RegClass::F32);
                b.ins("ld.shared.f32", [cur.into(), mem(a, 0)]);
                let nv = b.op3(
                    RegClass::F32,
                    "fma.rn.f32",
                    pw.into(),
                    ovf.into(),
                    cur.into(),
                );
                b.ins_if(c.lane0, false, "st.shared.f32", [mem(a, 0), nv.into()]);
            });
            b.place(skip);
        }
    });
}
