//! Selected-block attention on tensor cores (bf16/f16 inputs, f32 accumulation).
//!
//! One warp per (token, kv head): the G ≤ 16 query heads of the group are the 16 rows of the
//! `mma.sync.m16n8k16` tiles (rows ≥ G are zero and never stored), so every selected key is read
//! once per group instead of once per head. Keys and values of a chunk of [`CHUNK`] tokens are
//! staged into the warp's slice of shared memory with `cp.async` (rows past the block end are
//! zero-filled), read back with `ldmatrix` (K) and `ldmatrix.trans` (V); S = Q·Kᵀ and O += P·V
//! run on the tensor cores and the online softmax (base 2) works on the accumulator fragments,
//! P going from C-fragment to A-fragment registers without touching memory.
//!
//! Fragment layout (PTX ISA, m16n8k16): lane = 4·g + t; A holds rows g, g+8 and columns
//! 2t, 2t+1 (+8); B holds column g and rows 2t, 2t+1 (+8); C holds rows g, g+8, columns 2t, 2t+1.

use nsac_dsl::problem::DType;

use crate::ptx::builder::{KernelBuilder, Operand, ParamTy, Reg, RegClass, fimm, imm, mem, sym};
use crate::ptx::lowering::{Dims, KvNames};

use super::common::{for_range, segment, visible_compressed};
use super::tc_score::split2;
use super::{KernelOut, Launch};

/// Keys staged per step (a multiple of 16).
pub const CHUNK: u32 = 32;
/// Warps per thread block (each independent, with its own shared-memory slice).
pub const WARPS: u32 = 2;

/// Whether the tensor-core kernel handles `dims` (else the scalar kernel is used).
pub fn eligible(dims: &Dims) -> bool {
    matches!(dims.dtype, DType::Bf16 | DType::F16)
        && dims.group <= 16
        && dims.dqk.is_multiple_of(16)
        && dims.dv.is_multiple_of(16)
        && dims.dqk <= 128
        && dims.dv <= 128
}

/// Bytes per staged row: padded by 16 so the 8 rows an `ldmatrix` reads hit distinct banks.
fn row_stride(dim: u32) -> u32 {
    dim * 2 + 16
}

/// Shared bytes per warp (compressed keys are staged as hi and lo halves).
fn warp_bytes(dims: &Dims, split_k: bool) -> u32 {
    let kparts = if split_k { 2 } else { 1 };
    CHUNK * (kparts * row_stride(dims.dqk) + row_stride(dims.dv))
}

/// Which keys the tensor-core kernel attends to.
pub enum TcKeys<'a> {
    /// The chosen blocks of a select branch (keys and values in the input dtype).
    Selected {
        kv: &'a KvNames,
        block: u32,
        top: u32,
    },
    /// The visible compressed tokens (f32 scratch `kc_<b>`, `vc_<b>`); keys are split into
    /// hi + lo halves so the log-sum-exp that scores the selection stays f32-accurate.
    Compressed {
        block: u32,
        stride: u32,
        write_lse: bool,
    },
}

/// Converts `CHUNK` f32 rows (`dim` wide, kv head `h`) starting at slot `c0` into 16-bit
/// halves in shared memory (`lo_off`: where the low halves go, `None` to keep only the high);
/// rows at or past `hi` are zero.
#[allow(clippy::too_many_arguments)]
fn stage_f32(
    b: &mut KernelBuilder,
    gbase: Reg,
    sbase: Reg,
    lo_off: Option<i64>,
    lane: Reg,
    c0: Reg,
    hi: Reg,
    h: Reg,
    dim: u32,
    dims: &Dims,
) {
    let pieces = dim / 4; // float4 pieces per row
    let cvt = match dims.dtype {
        DType::F16 => "cvt.rn.f16x2.f32",
        _ => "cvt.rn.bf16x2.f32",
    };
    for i in 0..pieces {
        let p = b.op2(
            RegClass::B32,
            "add.u32",
            lane.into(),
            imm(i64::from(32 * i)),
        );
        let row = b.op2(RegClass::B32, "div.u32", p.into(), imm(i64::from(pieces)));
        let col = b.op2(RegClass::B32, "rem.u32", p.into(), imm(i64::from(pieces)));
        let key = b.op2(RegClass::B32, "add.u32", c0.into(), row.into());
        let ok = b.setp("lt.u32", key.into(), hi.into());
        let th = b.op3(
            RegClass::B32,
            "mad.lo.u32",
            key.into(),
            imm(i64::from(dims.h)),
            h.into(),
        );
        let e = b.op2(RegClass::B32, "mul.lo.u32", th.into(), imm(i64::from(dim)));
        let e = b.op3(RegClass::B32, "mad.lo.u32", col.into(), imm(4), e.into());
        let ga = b.addr(gbase, e, 4);
        let x = [0, 1, 2, 3].map(|_| {
            let r = b.reg(RegClass::F32);
            b.ins("mov.f32", [r.into(), fimm(0.0)]);
            r
        });
        b.ins_if(ok, false, "ld.global.v4.f32", [vec_op(&x), mem(ga, 0)]);
        let so = b.op3(
            RegClass::B32,
            "mad.lo.u32",
            row.into(),
            imm(i64::from(row_stride(dim))),
            sbase.into(),
        );
        let so = b.op3(RegClass::B32, "mad.lo.u32", col.into(), imm(8), so.into());
        match lo_off {
            Some(lo) => {
                let (h01, l01) = split2(b, x[0], x[1], dims.dtype);
                let (h23, l23) = split2(b, x[2], x[3], dims.dtype);
                b.ins("st.shared.v2.b32", [mem(so, 0), vec_op(&[h01, h23])]);
                b.ins("st.shared.v2.b32", [mem(so, lo), vec_op(&[l01, l23])]);
            }
            None => {
                let (a, c) = (b.reg(RegClass::B32), b.reg(RegClass::B32));
                b.ins(cvt, [a.into(), x[1].into(), x[0].into()]);
                b.ins(cvt, [c.into(), x[3].into(), x[2].into()]);
                b.ins("st.shared.v2.b32", [mem(so, 0), vec_op(&[a, c])]);
            }
        }
    }
}

fn vec_op(regs: &[Reg]) -> Operand {
    Operand::Vec(regs.to_vec())
}

/// `x` reduced with `op` (`max.f32`/`add.f32`) over the 4 lanes of a quad.
fn quad_reduce(b: &mut KernelBuilder, x: Reg, op: &str) -> Reg {
    let mut acc = x;
    for off in [1, 2] {
        let bits = b.op1(RegClass::B32, "mov.b32", acc.into());
        let o = b.reg(RegClass::B32);
        b.ins(
            "shfl.sync.bfly.b32",
            [o.into(), bits.into(), imm(off), imm(31), imm(-1)],
        );
        let of = b.op1(RegClass::F32, "mov.b32", o.into());
        acc = b.op2(RegClass::F32, op, acc.into(), of.into());
    }
    acc
}

/// Online-softmax state of the two rows a lane holds.
struct Rows {
    m: [Reg; 2],
    /// Per-lane partial row sums (reduced over the quad at the end).
    l: [Reg; 2],
}

/// Issues the `cp.async` copies of `CHUNK` rows of one tensor (`dim` wide, kv head `h`) starting
/// at key `c0`; rows at or past `hi` are zero-filled.
#[allow(clippy::too_many_arguments)]
fn stage(
    b: &mut KernelBuilder,
    gbase: Reg,
    sbase: Reg,
    lane: Reg,
    c0: Reg,
    hi: Reg,
    h: Reg,
    dim: u32,
    heads: u32,
) {
    let pieces = dim / 8; // 16-byte pieces per row
    for i in 0..pieces {
        let p = b.op2(
            RegClass::B32,
            "add.u32",
            lane.into(),
            imm(i64::from(32 * i)),
        );
        let row = b.op2(RegClass::B32, "div.u32", p.into(), imm(i64::from(pieces)));
        let col = b.op2(RegClass::B32, "rem.u32", p.into(), imm(i64::from(pieces)));
        let key = b.op2(RegClass::B32, "add.u32", c0.into(), row.into());
        let ok = b.setp("lt.u32", key.into(), hi.into());
        let src_key = b.reg(RegClass::B32);
        b.ins(
            "selp.u32",
            [src_key.into(), key.into(), c0.into(), ok.into()],
        );
        let size = b.reg(RegClass::B32);
        b.ins("selp.u32", [size.into(), imm(16), imm(0), ok.into()]);
        let th = b.op3(
            RegClass::B32,
            "mad.lo.u32",
            src_key.into(),
            imm(i64::from(heads)),
            h.into(),
        );
        let ga = b.addr(gbase, th, dim * 2);
        let coff = b.op2(RegClass::B32, "mul.lo.u32", col.into(), imm(16));
        let src = b.addr(ga, coff, 1);
        let soff = b.op3(
            RegClass::B32,
            "mad.lo.u32",
            row.into(),
            imm(i64::from(row_stride(dim))),
            coff.into(),
        );
        let dst = b.op2(RegClass::B32, "add.u32", sbase.into(), soff.into());
        b.ins(
            "cp.async.cg.shared.global",
            [mem(dst, 0), mem(src, 0), imm(16), size.into()],
        );
    }
}

/// Generates the tensor-core attention kernel of a select or compress branch (same
/// parameters and outputs as the scalar kernel).
pub fn attend_tc(name: &str, branch: &str, keys: TcKeys<'_>, dims: &Dims) -> KernelOut {
    let mut b = KernelBuilder::new(name);
    b.use_dynamic_shared();
    let split_k = matches!(keys, TcKeys::Compressed { .. });
    let params: Vec<String> = match &keys {
        TcKeys::Selected { kv, .. } => vec![
            "seg".into(),
            "q".into(),
            kv.k.clone(),
            kv.v.clone(),
            format!("idx_{branch}"),
            format!("o_{branch}"),
        ],
        TcKeys::Compressed { write_lse, .. } => {
            let mut p = vec![
                "seg".into(),
                "q".into(),
                format!("kc_{branch}"),
                format!("vc_{branch}"),
                format!("o_{branch}"),
            ];
            if *write_lse {
                p.push(format!("lse_{branch}"));
            }
            p
        }
    };
    let syms: Vec<String> = params.iter().map(|p| b.param(p, ParamTy::Ptr)).collect();
    let (ty, cvt) = match dims.dtype {
        DType::F16 => ("f16", "cvt.rn.f16x2.f32"),
        _ => ("bf16", "cvt.rn.bf16x2.f32"),
    };
    let mma = format!("mma.sync.aligned.m16n8k16.row.col.f32.{ty}.{ty}.f32");
    let (g, hh, dqk, dv) = (dims.group, dims.h, dims.dqk, dims.dv);
    let nrows = dims.ntok * hh;

    b.comment("warp = (token, kv head); lane = 4*gq + tq");
    let tid = b.op1(RegClass::B32, "mov.u32", sym("%tid.x"));
    let cta = b.op1(RegClass::B32, "mov.u32", sym("%ctaid.x"));
    let wib = b.op2(RegClass::B32, "shr.u32", tid.into(), imm(5));
    let lane = b.op2(RegClass::B32, "and.b32", tid.into(), imm(31));
    let row = b.op3(
        RegClass::B32,
        "mad.lo.u32",
        cta.into(),
        imm(i64::from(WARPS)),
        wib.into(),
    );
    let exit = b.label();
    let past = b.setp("ge.u32", row.into(), imm(i64::from(nrows)));
    b.bra_if(past, false, exit);
    let ptrs: Vec<Reg> = syms.iter().map(|s| b.load_ptr_param(s)).collect();
    let (seg, qb, kb, vb) = (ptrs[0], ptrs[1], ptrs[2], ptrs[3]);
    let (ib, ob) = if split_k {
        (ptrs[3], ptrs[4])
    } else {
        (ptrs[4], ptrs[5])
    };
    let tok = b.op2(RegClass::B32, "div.u32", row.into(), imm(i64::from(hh)));
    let h = b.op2(RegClass::B32, "rem.u32", row.into(), imm(i64::from(hh)));
    let (s, e) = segment(&mut b, seg, tok);
    let end = match &keys {
        TcKeys::Compressed { block, stride, .. } => {
            b.comment("compressed slots s .. s + visible");
            let pos = b.op2(RegClass::B32, "sub.u32", tok.into(), s.into());
            let len = b.op2(RegClass::B32, "sub.u32", e.into(), s.into());
            let nvis = visible_compressed(&mut b, pos, len, *block, *stride, dims.causal);
            b.op2(RegClass::B32, "add.u32", s.into(), nvis.into())
        }
        TcKeys::Selected { .. } if dims.causal => {
            b.op2(RegClass::B32, "add.u32", tok.into(), imm(1))
        }
        TcKeys::Selected { .. } => e,
    };
    let gq = b.op2(RegClass::B32, "shr.u32", lane.into(), imm(2));
    let tq = b.op2(RegClass::B32, "and.b32", lane.into(), imm(3));
    let smem0 = b.op1(RegClass::B32, "mov.u32", sym("smem"));
    let ks = b.op3(
        RegClass::B32,
        "mad.lo.u32",
        wib.into(),
        imm(i64::from(warp_bytes(dims, split_k))),
        smem0.into(),
    );
    let lo_off = i64::from(CHUNK * row_stride(dqk));
    let kparts_bytes = if split_k {
        2 * CHUNK * row_stride(dqk)
    } else {
        CHUNK * row_stride(dqk)
    };
    let vs = b.op2(
        RegClass::B32,
        "add.u32",
        ks.into(),
        imm(i64::from(kparts_bytes)),
    );

    b.comment("Q fragments: rows gq, gq+8 of the group (0 past G), columns 2tq(+8) per k-step");
    let rowok = [b.setp("lt.u32", gq.into(), imm(i64::from(g))), {
        let r1 = b.op2(RegClass::B32, "add.u32", gq.into(), imm(8));
        b.setp("lt.u32", r1.into(), imm(i64::from(g)))
    }];
    let qrow = b.op3(
        RegClass::B32,
        "mad.lo.u32",
        row.into(),
        imm(i64::from(g)),
        gq.into(),
    );
    let qe = b.op3(
        RegClass::B32,
        "mad.lo.u32",
        qrow.into(),
        imm(i64::from(dqk)),
        tq.into(),
    );
    let qe = b.op3(RegClass::B32, "mad.lo.u32", tq.into(), imm(1), qe.into());
    let qa = b.addr(qb, qe, 2);
    let r8 = i64::from(8 * dqk * 2);
    let mut qf: Vec<[Reg; 4]> = Vec::new();
    for kstep in 0..dqk / 16 {
        let base = i64::from(kstep * 32);
        let offs = [base, base + r8, base + 16, base + r8 + 16];
        let regs = [0, 1, 2, 3].map(|i| {
            let r = b.reg(RegClass::B32);
            b.ins("mov.b32", [r.into(), imm(0)]);
            let ok = rowok[i % 2];
            b.ins_if(ok, false, "ld.global.b32", [r.into(), mem(qa, offs[i])]);
            r
        });
        qf.push(regs);
    }

    b.comment("accumulators and softmax state");
    let acc: Vec<[Reg; 4]> = (0..dv / 8)
        .map(|_| {
            [0, 1, 2, 3].map(|_| {
                let r = b.reg(RegClass::F32);
                b.ins("mov.f32", [r.into(), fimm(0.0)]);
                r
            })
        })
        .collect();
    let st = Rows {
        m: [0, 1].map(|_| {
            let r = b.reg(RegClass::F32);
            b.ins("mov.f32", [r.into(), fimm(f32::NEG_INFINITY)]);
            r
        }),
        l: [0, 1].map(|_| {
            let r = b.reg(RegClass::F32);
            b.ins("mov.f32", [r.into(), fimm(0.0)]);
            r
        }),
    };

    b.comment("ldmatrix lane offsets: K (keys 8*(lane>>4)+lane&7, dims 8*((lane>>3)&1)),");
    b.comment("V (keys 8*((lane>>3)&1)+lane&7, dims 8*(lane>>4))");
    let l7 = b.op2(RegClass::B32, "and.b32", lane.into(), imm(7));
    let l3 = b.op2(RegClass::B32, "shr.u32", lane.into(), imm(3));
    let l3b = b.op2(RegClass::B32, "and.b32", l3.into(), imm(1));
    let l4 = b.op2(RegClass::B32, "shr.u32", lane.into(), imm(4));
    let krow = b.op3(RegClass::B32, "mad.lo.u32", l4.into(), imm(8), l7.into());
    let kcol = b.op2(RegClass::B32, "mul.lo.u32", l3b.into(), imm(16));
    let klane = b.op3(
        RegClass::B32,
        "mad.lo.u32",
        krow.into(),
        imm(i64::from(row_stride(dqk))),
        kcol.into(),
    );
    let kaddr = b.op2(RegClass::B32, "add.u32", ks.into(), klane.into());
    let vrow = b.op3(RegClass::B32, "mad.lo.u32", l3b.into(), imm(8), l7.into());
    let vcol = b.op2(RegClass::B32, "mul.lo.u32", l4.into(), imm(16));
    let vlane = b.op3(
        RegClass::B32,
        "mad.lo.u32",
        vrow.into(),
        imm(i64::from(row_stride(dv))),
        vcol.into(),
    );
    let vaddr = b.op2(RegClass::B32, "add.u32", vs.into(), vlane.into());
    let tq2 = b.op2(RegClass::B32, "shl.b32", tq.into(), imm(1));

    let nt_s = CHUNK / 8;
    let parts: Vec<i64> = if split_k { vec![0, lo_off] } else { vec![0] };
    let body = |b: &mut KernelBuilder, c0: Reg, hi: Reg| {
        if split_k {
            b.comment("convert compressed K (hi, lo) and V rows c0 .. c0+CHUNK (zero past hi)");
            b.ins("bar.warp.sync", [imm(-1)]);
            stage_f32(b, kb, ks, Some(lo_off), lane, c0, hi, h, dqk, dims);
            stage_f32(b, vb, vs, None, lane, c0, hi, h, dv, dims);
        } else {
            b.comment("stage K and V rows c0 .. c0+CHUNK (zero past hi)");
            b.ins("bar.warp.sync", [imm(-1)]);
            stage(b, kb, ks, lane, c0, hi, h, dqk, hh);
            stage(b, vb, vs, lane, c0, hi, h, dv, hh);
            b.ins("cp.async.commit_group", []);
            b.ins("cp.async.wait_group", [imm(0)]);
        }
        b.ins("bar.warp.sync", [imm(-1)]);

        b.comment("S = Q K^T");
        let sf: Vec<[Reg; 4]> = (0..nt_s)
            .map(|_| {
                [0, 1, 2, 3].map(|_| {
                    let r = b.reg(RegClass::F32);
                    b.ins("mov.f32", [r.into(), fimm(0.0)]);
                    r
                })
            })
            .collect();
        for j in 0..CHUNK / 16 {
            for (kstep, qa) in qf.iter().enumerate() {
                for part in &parts {
                    let r = [0, 1, 2, 3].map(|_| b.reg(RegClass::B32));
                    let off = i64::from(16 * j * row_stride(dqk)) + 32 * kstep as i64 + part;
                    b.ins(
                        "ldmatrix.sync.aligned.m8n8.x4.shared.b16",
                        [vec_op(&r), mem(kaddr, off)],
                    );
                    for half in 0..2 {
                        let c = sf[(2 * j + half) as usize];
                        let bfrag = [r[2 * half as usize], r[2 * half as usize + 1]];
                        b.ins(&mma, [vec_op(&c), vec_op(qa), vec_op(&bfrag), vec_op(&c)]);
                    }
                }
            }
        }

        b.comment("scale to base 2, mask keys >= hi, online softmax per row");
        let kq = b.op2(RegClass::B32, "add.u32", c0.into(), tq2.into());
        for (nt, c) in sf.iter().enumerate() {
            let k0 = b.op2(RegClass::B32, "add.u32", kq.into(), imm(8 * nt as i64));
            let k1 = b.op2(RegClass::B32, "add.u32", k0.into(), imm(1));
            let ok = [
                b.setp("lt.u32", k0.into(), hi.into()),
                b.setp("lt.u32", k1.into(), hi.into()),
            ];
            for (i, r) in c.iter().enumerate() {
                let x = b.op2(RegClass::F32, "mul.f32", (*r).into(), fimm(dims.scale_log2));
                b.ins(
                    "selp.f32",
                    [
                        (*r).into(),
                        x.into(),
                        fimm(f32::NEG_INFINITY),
                        ok[i % 2].into(),
                    ],
                );
            }
        }
        for half in 0..2 {
            let mut mx = b.op2(
                RegClass::F32,
                "max.f32",
                sf[0][2 * half].into(),
                sf[0][2 * half + 1].into(),
            );
            for c in sf.iter().skip(1) {
                let t = b.op2(
                    RegClass::F32,
                    "max.f32",
                    c[2 * half].into(),
                    c[2 * half + 1].into(),
                );
                mx = b.op2(RegClass::F32, "max.f32", mx.into(), t.into());
            }
            let mx = quad_reduce(b, mx, "max.f32");
            let mnew = b.op2(RegClass::F32, "max.f32", st.m[half].into(), mx.into());
            let inf = b.setp("eq.f32", mnew.into(), fimm(f32::NEG_INFINITY));
            let muse = b.reg(RegClass::F32);
            b.ins(
                "selp.f32",
                [muse.into(), fimm(0.0), mnew.into(), inf.into()],
            );
            let dm = b.op2(RegClass::F32, "sub.f32", st.m[half].into(), muse.into());
            let corr = b.op1(RegClass::F32, "ex2.approx.ftz.f32", dm.into());
            b.ins("mov.f32", [st.m[half].into(), mnew.into()]);
            b.ins(
                "mul.f32",
                [st.l[half].into(), st.l[half].into(), corr.into()],
            );
            for c in &sf {
                for i in [2 * half, 2 * half + 1] {
                    let d = b.op2(RegClass::F32, "sub.f32", c[i].into(), muse.into());
                    b.ins("ex2.approx.ftz.f32", [c[i].into(), d.into()]);
                    b.ins(
                        "add.f32",
                        [st.l[half].into(), st.l[half].into(), c[i].into()],
                    );
                }
            }
            for a in &acc {
                for i in [2 * half, 2 * half + 1] {
                    b.ins("mul.f32", [a[i].into(), a[i].into(), corr.into()]);
                }
            }
        }

        b.comment("O += P V (P from the S fragments, V via ldmatrix.trans)");
        for j in 0..(CHUNK / 16) as usize {
            let (c, d) = (sf[2 * j], sf[2 * j + 1]);
            let pa = [(c[1], c[0]), (c[3], c[2]), (d[1], d[0]), (d[3], d[2])].map(|(hi, lo)| {
                let r = b.reg(RegClass::B32);
                b.ins(cvt, [r.into(), hi.into(), lo.into()]);
                r
            });
            for np in 0..(dv / 16) as usize {
                let r = [0, 1, 2, 3].map(|_| b.reg(RegClass::B32));
                let off = i64::from(16 * j as u32 * row_stride(dv)) + 32 * np as i64;
                b.ins(
                    "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16",
                    [vec_op(&r), mem(vaddr, off)],
                );
                for half in 0..2 {
                    let o = acc[2 * np + half];
                    let bfrag = [r[2 * half], r[2 * half + 1]];
                    b.ins(&mma, [vec_op(&o), vec_op(&pa), vec_op(&bfrag), vec_op(&o)]);
                }
            }
        }
    };
    match &keys {
        TcKeys::Selected { block, top, .. } => {
            b.comment("chosen blocks in ascending order, -1 padded");
            let ioff = b.op2(
                RegClass::B32,
                "mul.lo.u32",
                row.into(),
                imm(i64::from(*top)),
            );
            let lb = i64::from(*block);
            for_range(&mut b, imm(0), imm(i64::from(*top)), 1, |b, n| {
                let ix = b.op2(RegClass::B32, "add.u32", ioff.into(), n.into());
                let a = b.addr(ib, ix, 4);
                let blk = b.reg(RegClass::B32);
                b.ins("ld.global.s32", [blk.into(), mem(a, 0)]);
                let neg = b.setp("lt.s32", blk.into(), imm(0));
                let skip = b.label();
                b.bra_if(neg, false, skip);
                let lo = b.op3(RegClass::B32, "mad.lo.u32", blk.into(), imm(lb), s.into());
                let hi0 = b.op2(RegClass::B32, "add.u32", lo.into(), imm(lb));
                let hi = b.op2(RegClass::B32, "min.u32", hi0.into(), end.into());
                for_range(b, lo.into(), hi.into(), i64::from(CHUNK), |b, c0| {
                    body(b, c0, hi)
                });
                b.place(skip);
            });
        }
        TcKeys::Compressed { .. } => {
            for_range(&mut b, s.into(), end.into(), i64::from(CHUNK), |b, c0| {
                body(b, c0, end)
            });
        }
    }

    b.comment("normalise (an empty row yields 0) and store rows < G");
    let oe = b.op3(
        RegClass::B32,
        "mad.lo.u32",
        qrow.into(),
        imm(i64::from(dv)),
        tq2.into(),
    );
    let oa = b.addr(ob, oe, 4);
    for half in 0..2 {
        let l = quad_reduce(&mut b, st.l[half], "add.f32");
        let empty = b.setp("eq.f32", l.into(), fimm(0.0));
        let r = b.op1(RegClass::F32, "rcp.rn.f32", l.into());
        let inv = b.reg(RegClass::F32);
        b.ins("selp.f32", [inv.into(), fimm(0.0), r.into(), empty.into()]);
        for (nt, a) in acc.iter().enumerate() {
            let x = b.op2(RegClass::F32, "mul.f32", a[2 * half].into(), inv.into());
            let y = b.op2(RegClass::F32, "mul.f32", a[2 * half + 1].into(), inv.into());
            let off = (half as i64) * i64::from(8 * dv * 4) + 32 * nt as i64;
            b.ins_if(
                rowok[half],
                false,
                "st.global.v2.f32",
                [mem(oa, off), vec_op(&[x, y])],
            );
        }
    }
    if let TcKeys::Compressed {
        write_lse: true, ..
    } = keys
    {
        b.comment("lse in base 2 (-inf for an empty row)");
        let lb = ptrs[ptrs.len() - 1];
        let la = b.addr(lb, qrow, 4);
        for (half, ((l, m), ok)) in st.l.iter().zip(st.m).zip(rowok).enumerate() {
            let l = quad_reduce(&mut b, *l, "add.f32");
            let lg = b.op1(RegClass::F32, "lg2.approx.ftz.f32", l.into());
            let lse = b.op2(RegClass::F32, "add.f32", m.into(), lg.into());
            b.ins_if(
                ok,
                false,
                "st.global.f32",
                [mem(la, 32 * half as i64), lse.into()],
            );
        }
    }
    b.place(exit);
    b.ins("ret", []);
    let shared = WARPS * warp_bytes(dims, split_k);
    KernelOut {
        ptx: b.finish(),
        params,
        launch: Launch {
            grid: nrows.div_ceil(WARPS),
            block: WARPS * 32,
            shared_bytes: shared,
            formula: format!(
                "grid = ceil(B*T*H / {WARPS}), block = {}, shared = {WARPS}*{CHUNK}*({}(2*Dqk+16) + 2*Dv+16) bytes: one warp per (token, kv head), tensor cores",
                WARPS * 32,
                if split_k { "2*" } else { "" }
            ),
        },
    }
}
