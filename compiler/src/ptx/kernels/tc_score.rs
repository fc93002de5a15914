//! Block scoring for top-k on tensor cores: the group-summed compressed-attention probabilities
//! p(t,h,j) = 2^(q·k̃_j·scale·log2e − lse) of one (token, kv head), with the G ≤ 16 heads as the
//! rows of `mma.sync.m16n8k16` tiles, spread over the selection blocks in key order.
//!
//! The compressed keys come from the 16-bit scratch `kc16_<b>` the pool kernel writes: each key
//! as a high and a low 16-bit part (k̃ = hi + lo, about 16 significant bits), so S = Q·hiᵀ +
//! Q·loᵀ keeps the selection's ranking as exact as the scalar kernel's (Q is an input, exact in
//! its dtype). The warps of a thread block score consecutive tokens of one kv head and share
//! each chunk of [`CHUNK`] compressed keys, copied once with `cp.async` into a ring of
//! [`GpuVariant::compress_stages`] buffers (the next S − 1 chunks in flight while chunk i is
//! scored; S = 2 by default, S = 3 adds one buffer of `2·CHUNK·(2·Dqk+16)` shared bytes beside the
//! warps' score arrays) and read with `ldmatrix`. Column sums
//! over the heads are formed with quad shuffles and added to the warp's block scores in
//! ascending key order by lane 0 (or stored directly when compressed and selection blocks
//! coincide), so the result is deterministic.
//!
//! [`GpuVariant::compress_stages`]: crate::ptx::GpuVariant::compress_stages

use nsac_dsl::problem::DType;

use crate::ptx::builder::{KernelBuilder, Reg, RegClass, fimm, imm, mem};
use crate::ptx::lowering::Dims;

use super::tc_common::{
    CHUNK, CpRows, Lanes, SharedChunks, buffering, cp_stage, k_lane_offset, lanes, load_q, mma_ops,
    qk_tiles, row_stride, shared_chunk_loop,
};
use super::topk::{TopKParams, spread_over_blocks};

/// Whether the tensor-core scoring handles `dims`.
pub fn eligible(dims: &Dims) -> bool {
    crate::ptx::lowering::half_scratch(dims)
}

/// Shared bytes of one staging buffer (hi and lo rows).
fn buf_bytes(dims: &Dims) -> u32 {
    2 * CHUNK * row_stride(dims.dqk)
}

/// Shared bytes the staging needs (`stages` buffers: [`GpuVariant::compress_stages`]); the
/// warps' slot ranges follow them.
///
/// [`GpuVariant::compress_stages`]: crate::ptx::GpuVariant::compress_stages
pub fn staging_bytes(dims: &Dims, stages: u32) -> u32 {
    stages * buf_bytes(dims)
}

/// The registers and addresses the scoring needs from the top-k kernel.
pub struct ScoreCtx {
    pub qb: Reg,
    /// `kc16_<b>`: per (slot, kv head) the hi row then the lo row of the compressed key.
    pub kcb: Reg,
    pub lseb: Reg,
    /// Shared address of this warp's block scores (f32 per candidate block).
    pub scores: Reg,
    /// Shared address of the block's staging buffers ([`staging_bytes`]), followed by the warps'
    /// slot ranges (`tc_common::ranges_bytes`).
    pub stage: Reg,
    pub lane: Reg,
    /// Thread index in the block, and the block's thread count.
    pub tid: Reg,
    pub nthreads: u32,
    /// Staging buffers (the pipeline depth of the chunk loop).
    pub stages: u32,
    /// `tok·H + h`.
    pub row: Reg,
    pub h: Reg,
    /// The first compressed slot of this warp's token's segment, and its visible compressed
    /// count.
    pub s: Reg,
    pub nvis: Reg,
    pub nbc: Reg,
    pub lane0: Reg,
    /// One past the block's last visible slot (the same for every warp of the block).
    pub hi: Reg,
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
            b.ins("mov.b32", [super::tc_common::vec_op(&[a, c]), hi.into()]);
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

/// What scoring one staged chunk needs.
struct ChunkScore<'a> {
    mma: &'a str,
    qf: &'a [[Reg; 4]],
    lse: [Reg; 2],
    l: &'a Lanes,
    kaddr: Reg,
    lo_off: i64,
}

/// Scores the staged chunk of slots `c0 .. c0 + CHUNK` into the warp's block scores.
fn score_chunk(
    b: &mut KernelBuilder,
    c: &ScoreCtx,
    cs: &ChunkScore<'_>,
    c0: Reg,
    p: &TopKParams<'_>,
    dims: &Dims,
) {
    b.comment("S = Q hi^T + Q lo^T");
    let sf = qk_tiles(b, cs.mma, cs.qf, cs.kaddr, dims.dqk, &[0, cs.lo_off], CHUNK);
    b.comment("p = 2^(S*scale - lse)/d for rows < G and visible keys; column sums over heads");
    let j0 = b.op2(RegClass::B32, "sub.u32", c0.into(), c.s.into());
    let kq = b.op2(RegClass::B32, "add.u32", j0.into(), cs.l.tq2.into());
    let inv_d = 1.0 / p.cmp_stride as f32;
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
                let x = b.op2(RegClass::F32, "sub.f32", m.into(), cs.lse[i / 2].into());
                let e = b.op1(RegClass::F32, "ex2.approx.ftz.f32", x.into());
                let w = b.op2(RegClass::F32, "mul.f32", e.into(), fimm(inv_d));
                let both = b.op2(
                    RegClass::Pred,
                    "and.pred",
                    kok[i % 2].into(),
                    cs.l.rowok[i / 2].into(),
                );
                let o = b.reg(RegClass::F32);
                b.ins("selp.f32", [o.into(), w.into(), fimm(0.0), both.into()]);
                o
            })
            .collect();
        let sums = [0, 1].map(|w| {
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
        colsum.push(sums);
    }
    if p.cmp_block == p.cmp_stride && p.cmp_stride == p.block {
        b.comment("one compressed token per block: lanes 0..3 store their keys' scores");
        let quad0 = b.setp("lt.u32", c.lane.into(), imm(4));
        for (nt, sums) in colsum.iter().enumerate() {
            for (w, v) in sums.iter().enumerate() {
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
    b.comment("add each key's score to its blocks in key order (lane 0 alone)");
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
        let j = b.op2(RegClass::B32, "add.u32", j0.into(), imm(i64::from(k)));
        let skip = b.label();
        // Only lane 0 reads and writes the scores (other lanes reading them while lane 0
        // writes would be an intra-warp race, harmless but flagged by racecheck).
        let past = b.setp("ge.u32", j.into(), c.nvis.into());
        let other = b.op1(RegClass::Pred, "not.pred", c.lane0.into());
        let leave = b.op2(RegClass::Pred, "or.pred", past.into(), other.into());
        b.bra_if(leave, false, skip);
        spread_over_blocks(b, p, j, pw, c.nbc, c.scores);
        b.place(skip);
    }
}

/// Emits the scoring: `scores[i] += Σ_heads p(t,h,j)·overlap(j,i)/d` for every visible j.
/// Every warp of the block runs it (the chunk loop holds block-wide barriers).
pub fn tc_block_scores(b: &mut KernelBuilder, c: &ScoreCtx, p: &TopKParams<'_>, dims: &Dims) {
    let (g, hh, dqk) = (dims.group, dims.h, dims.dqk);
    let (mma, _) = mma_ops(dims.dtype);
    let rs = row_stride(dqk);
    b.comment("tensor-core scoring: Q fragments of the group's heads (rows >= G are 0)");
    let l = lanes(b, c.lane, g);
    let qrow = b.op3(
        RegClass::B32,
        "mad.lo.u32",
        c.row.into(),
        imm(i64::from(g)),
        l.gq.into(),
    );
    let qf = load_q(b, c.qb, qrow, &l, dqk);
    let la = b.addr(c.lseb, qrow, 4);
    let lse = [0i64, 1].map(|half| {
        let r = b.reg(RegClass::F32);
        b.ins("mov.f32", [r.into(), fimm(0.0)]);
        b.ins_if(
            l.rowok[half as usize],
            false,
            "ld.global.f32",
            [r.into(), mem(la, half * 32)],
        );
        r
    });
    let ko = k_lane_offset(b, c.lane, rs);
    let kaddr0 = b.op2(RegClass::B32, "add.u32", c.stage.into(), ko.into());
    let lo_off = i64::from(CHUNK * rs);
    let h2 = b.op2(RegClass::B32, "shl.b32", c.h.into(), imm(1));
    let h21 = b.op2(RegClass::B32, "add.u32", h2.into(), imm(1));
    let wend = b.op2(RegClass::B32, "add.u32", c.s.into(), c.nvis.into());
    let stage = |b: &mut KernelBuilder, c0: Reg, off: Reg| {
        let sb = b.op2(RegClass::B32, "add.u32", c.stage.into(), off.into());
        let sl = b.op2(RegClass::B32, "add.u32", sb.into(), imm(lo_off));
        for (sub, sdst) in [(h2, sb), (h21, sl)] {
            let rows = CpRows {
                chunk: CHUNK,
                gbase: c.kcb,
                row_mul: 2 * hh,
                sub,
                dim: dqk,
                sdst,
                keep_l1: false,
            };
            cp_stage(b, &rows, c.tid, c.nthreads, c0, c.hi);
        }
    };
    let sc = SharedChunks {
        chunk: CHUNK,
        ranges: b.op2(
            RegClass::B32,
            "add.u32",
            c.stage.into(),
            imm(i64::from(staging_bytes(dims, c.stages))),
        ),
        nwarps: c.nthreads / 32,
        buf_bytes: buf_bytes(dims),
        stages: c.stages,
        wib: b.op2(RegClass::B32, "shr.u32", c.tid.into(), imm(5)),
        lane: c.lane,
        s: c.s,
        wend,
    };
    b.comment(&format!(
        "{} chunks of slots, shared by the block's warps",
        buffering(c.stages)
    ));
    shared_chunk_loop(b, &sc, stage, |b, c0, bufoff| {
        let kaddr = b.op2(RegClass::B32, "add.u32", kaddr0.into(), bufoff.into());
        let cs = ChunkScore {
            mma: &mma,
            qf: &qf,
            lse,
            l: &l,
            kaddr,
            lo_off,
        };
        score_chunk(b, c, &cs, c0, p, dims);
    });
}
