//! Attention kernels for the three branch kinds (compressed tokens, selected blocks, sliding
//! window): one warp per (token, query head), lanes spread over the head dimension, online
//! softmax in base 2 with f32 accumulation, an empty row yields 0.
//!
//! Fused combine (`GpuVariant::fuse_combine = 1`, when the window attention is the last branch
//! stage): after storing its row, the warp also computes `o = Σ_b g_b·o_b` for the same elements
//! (`combine::store_combined_vec`) and writes `o`; the combine kernel is then not launched.

use crate::ptx::SEG;
use crate::ptx::builder::{KernelBuilder, Reg, RegClass, fimm, imm, mem};
use crate::ptx::lowering::{Compressed, Dims, KvNames};

use super::combine::{Fused, store_combined_vec};
use super::common::{
    Elem, chunks, declare_buffers, declare_scalar, for_range, load_vec, params_of, segment,
    segment_column, store_vec, visible_compressed, warp_dot, warp_row,
};
use super::{KernelOut, Scalar};

/// Which keys a row attends to.
pub enum Keys<'a> {
    Compressed {
        keys: &'a Compressed,
        block: u32,
        stride: u32,
    },
    Selected {
        kv: &'a KvNames,
        idx: &'a str,
        block: u32,
        top: u32,
    },
    Window {
        kv: &'a KvNames,
        size: u32,
    },
}

/// The buffers of an attention kernel besides its keys: the queries, the output and (scored
/// compressed branches) the log-sum-exp.
pub struct Rows<'a> {
    pub q: &'a str,
    pub out: &'a str,
    pub lse: Option<&'a str>,
}

/// Online-softmax state of one row.
struct Softmax {
    m: Reg,
    l: Reg,
    acc: Vec<Reg>,
}

/// Emits one softmax step for key row `krow`/`vrow` (element offsets).
#[allow(clippy::too_many_arguments)]
fn step(
    b: &mut KernelBuilder,
    st: &Softmax,
    q: &[Reg],
    kbase: Reg,
    vbase: Reg,
    krow: Reg,
    vrow: Reg,
    lane: Reg,
    dims: &Dims,
    kelem: Elem,
) {
    let k = load_vec(b, kbase, krow, lane, dims.dqk, kelem);
    let x = warp_dot(b, q, &k);
    let v = load_vec(b, vbase, vrow, lane, dims.dv, kelem);
    let mnew = b.op2(RegClass::F32, "max.f32", st.m.into(), x.into());
    let dm = b.op2(RegClass::F32, "sub.f32", st.m.into(), mnew.into());
    let corr = b.op1(RegClass::F32, "ex2.approx.ftz.f32", dm.into());
    let dx = b.op2(RegClass::F32, "sub.f32", x.into(), mnew.into());
    let p = b.op1(RegClass::F32, "ex2.approx.ftz.f32", dx.into());
    b.ins(
        "fma.rn.f32",
        [st.l.into(), st.l.into(), corr.into(), p.into()],
    );
    for (a, vv) in st.acc.iter().zip(&v) {
        b.ins("mul.f32", [(*a).into(), (*a).into(), corr.into()]);
        b.ins(
            "fma.rn.f32",
            [(*a).into(), p.into(), (*vv).into(), (*a).into()],
        );
    }
    b.ins("mov.f32", [st.m.into(), mnew.into()]);
}

/// Generates the attention kernel of `branch`; with `fused`, it also computes the combine
/// after storing its row (extra parameters [`Fused::params`]).
pub fn attend(
    name: &str,
    rows_io: &Rows<'_>,
    keys: Keys<'_>,
    dims: &Dims,
    warps: u32,
    fused: Option<&Fused>,
) -> KernelOut {
    let mut b = KernelBuilder::new(name);
    let mut params: Vec<String> = vec![SEG.into(), rows_io.q.to_string()];
    let (kname, vname, kelem) = match &keys {
        Keys::Compressed { keys, .. } => (keys.kv.k.clone(), keys.kv.v.clone(), Elem::F32),
        Keys::Selected { kv, .. } | Keys::Window { kv, .. } => {
            (kv.k.clone(), kv.v.clone(), Elem::of(dims.dtype))
        }
    };
    params.push(kname);
    params.push(vname);
    if let Keys::Selected { idx, .. } = keys {
        params.push(idx.to_string());
    }
    params.push(rows_io.out.to_string());
    let write_lse = matches!(keys, Keys::Compressed { .. }) && rows_io.lse.is_some();
    if let (true, Some(lse)) = (write_lse, rows_io.lse) {
        params.push(lse.to_string());
    }
    let syms = declare_buffers(&mut b, &params);
    let fused_params = fused.map(|f| f.declare(&mut b, dims));
    params.extend(fused.map(Fused::params).unwrap_or_default());
    let ntok_sym = declare_scalar(&mut b, Scalar::Ntok);
    let ntok = b.load_u32_param(&ntok_sym);
    let wr = warp_row(&mut b, ntok, dims.hq);
    let ptrs: Vec<Reg> = syms.iter().map(|s| b.load_ptr_param(s)).collect();
    let (seg, qb, kb, vb) = (ptrs[0], ptrs[1], ptrs[2], ptrs[3]);
    let tok = b.op2(
        RegClass::B32,
        "div.u32",
        wr.row.into(),
        imm(i64::from(dims.hq)),
    );
    let hq = b.op2(
        RegClass::B32,
        "rem.u32",
        wr.row.into(),
        imm(i64::from(dims.hq)),
    );
    let h = b.op2(
        RegClass::B32,
        "div.u32",
        hq.into(),
        imm(i64::from(dims.group)),
    );
    let (s, e) = segment(&mut b, seg, tok, dims.seg_cols);
    let qoff = b.op2(
        RegClass::B32,
        "mul.lo.u32",
        wr.row.into(),
        imm(i64::from(dims.dqk)),
    );
    let qraw = load_vec(&mut b, qb, qoff, wr.lane, dims.dqk, Elem::of(dims.dtype));
    let q: Vec<Reg> = qraw
        .iter()
        .map(|r| b.op2(RegClass::F32, "mul.f32", (*r).into(), fimm(dims.scale_log2)))
        .collect();
    let st = Softmax {
        m: b.reg(RegClass::F32),
        l: b.reg(RegClass::F32),
        acc: (0..chunks(dims.dv)).map(|_| b.reg(RegClass::F32)).collect(),
    };
    b.ins("mov.f32", [st.m.into(), fimm(f32::NEG_INFINITY)]);
    b.ins("mov.f32", [st.l.into(), fimm(0.0)]);
    for a in &st.acc {
        b.ins("mov.f32", [(*a).into(), fimm(0.0)]);
    }
    let (hh, dqk, dv) = (i64::from(dims.h), dims.dqk, dims.dv);
    // Element offsets of key token `kt`'s row for kv head h.
    let rows = |b: &mut KernelBuilder, kt: Reg| {
        let th = b.op3(RegClass::B32, "mad.lo.u32", kt.into(), imm(hh), h.into());
        let kr = b.op2(RegClass::B32, "mul.lo.u32", th.into(), imm(i64::from(dqk)));
        let vr = b.op2(RegClass::B32, "mul.lo.u32", th.into(), imm(i64::from(dv)));
        (kr, vr)
    };
    let pos = b.op2(RegClass::B32, "sub.u32", tok.into(), s.into());
    let len = b.op2(RegClass::B32, "sub.u32", e.into(), s.into());
    match &keys {
        Keys::Compressed {
            keys,
            block,
            stride,
        } => {
            b.comment("compressed tokens j < visible; slot = the segment's first slot + j");
            let nvis = visible_compressed(&mut b, pos, len, *block, *stride, dims.causal);
            let cb = segment_column(&mut b, seg, tok, dims.seg_cols, keys.column);
            let hi = b.op2(RegClass::B32, "add.u32", cb.into(), nvis.into());
            for_range(&mut b, cb.into(), hi.into(), 1, |b, kt| {
                let (kr, vr) = rows(b, kt);
                step(b, &st, &q, kb, vb, kr, vr, wr.lane, dims, kelem);
            });
        }
        Keys::Window { size, .. } => {
            b.comment("window keys max(s, t-w+1) ..= t");
            let t1 = b.op2(RegClass::B32, "add.u32", tok.into(), imm(1));
            let w = i64::from(*size);
            let big = b.setp("gt.u32", t1.into(), imm(w));
            let d = b.op2(RegClass::B32, "sub.u32", t1.into(), imm(w));
            let lo0 = b.reg(RegClass::B32);
            b.ins("selp.u32", [lo0.into(), d.into(), imm(0), big.into()]);
            let lo = b.op2(RegClass::B32, "max.u32", lo0.into(), s.into());
            let hi = if dims.causal {
                t1
            } else {
                let f = b.op2(RegClass::B32, "add.u32", tok.into(), imm(w));
                b.op2(RegClass::B32, "min.u32", f.into(), e.into())
            };
            for_range(&mut b, lo.into(), hi.into(), 1, |b, kt| {
                let (kr, vr) = rows(b, kt);
                step(b, &st, &q, kb, vb, kr, vr, wr.lane, dims, kelem);
            });
        }
        Keys::Selected { block, top, .. } => {
            b.comment("chosen blocks in ascending order, -1 padded");
            let ib = ptrs[4];
            let th = b.op3(RegClass::B32, "mad.lo.u32", tok.into(), imm(hh), h.into());
            let ioff = b.op2(RegClass::B32, "mul.lo.u32", th.into(), imm(i64::from(*top)));
            let end = if dims.causal {
                b.op2(RegClass::B32, "add.u32", tok.into(), imm(1))
            } else {
                e
            };
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
                for_range(b, lo.into(), hi.into(), 1, |b, kt| {
                    let (kr, vr) = rows(b, kt);
                    step(b, &st, &q, kb, vb, kr, vr, wr.lane, dims, kelem);
                });
                b.place(skip);
            });
        }
    }
    b.comment("normalise; an empty row yields 0");
    let empty = b.setp("eq.f32", st.l.into(), fimm(0.0));
    let inv = b.op1(RegClass::F32, "rcp.rn.f32", st.l.into());
    let out: Vec<Reg> = st
        .acc
        .iter()
        .map(|a| {
            let o = b.op2(RegClass::F32, "mul.f32", (*a).into(), inv.into());
            let r = b.reg(RegClass::F32);
            b.ins("selp.f32", [r.into(), fimm(0.0), o.into(), empty.into()]);
            r
        })
        .collect();
    let ob = if write_lse {
        ptrs[ptrs.len() - 2]
    } else {
        ptrs[ptrs.len() - 1]
    };
    let ooff = b.op2(
        RegClass::B32,
        "mul.lo.u32",
        wr.row.into(),
        imm(i64::from(dims.dv)),
    );
    store_vec(&mut b, ob, ooff, wr.lane, dims.dv, &out);
    if let Some(fp) = &fused_params {
        let terms = fp.load(&mut b);
        store_combined_vec(&mut b, &terms, wr.row, wr.lane, dims.dv, &out);
    }
    if write_lse {
        b.comment("lse in base 2 (-inf for an empty row), written by lane 0");
        let lb = ptrs[ptrs.len() - 1];
        let lg = b.op1(RegClass::F32, "lg2.approx.ftz.f32", st.l.into());
        let lse = b.op2(RegClass::F32, "add.f32", st.m.into(), lg.into());
        let lane0 = b.setp("eq.u32", wr.lane.into(), imm(0));
        let a = b.addr(lb, wr.row, 4);
        b.ins_if(lane0, false, "st.global.f32", [mem(a, 0), lse.into()]);
    }
    let row = if fused.is_some() {
        "(token, query head); epilogue: o = sum of g_b*o_b over the combined branches (combine fused)"
    } else {
        "(token, query head)"
    };
    let params = params_of(&params, &[Scalar::Ntok]);
    wr.finish(b, params, (dims.hq, warps), "B*T*HQ", row)
}
