//! Pieces shared by the tensor-core kernels (`tc_select`, `tc_compress`, `tc_score`): Q
//! fragments of a (token, kv head) group, `cp.async` staging of 16-bit rows into shared memory,
//! `ldmatrix` lane offsets, S = Q·Kᵀ tiles and the online-softmax + O += P·V step on one chunk,
//! and the block-wide pipelined loop over shared chunks of compressed keys
//! ([`shared_chunk_loop`]) whose depth is [`GpuVariant::compress_stages`]: S staging buffers in
//! a ring, S − 1 chunks copied ahead while one is computed (2: double buffering, the default;
//! 3: one more buffer of shared memory per block for one more chunk in flight).
//!
//! [`GpuVariant::compress_stages`]: crate::ptx::GpuVariant::compress_stages
//!
//! Fragment layout (PTX ISA, m16n8k16): lane = 4·g + t; A holds rows g, g+8 and columns
//! 2t, 2t+1 (+8); B holds column g and rows 2t, 2t+1 (+8); C holds rows g, g+8, columns 2t, 2t+1.

use nsac_dsl::problem::DType;

use crate::ptx::builder::{KernelBuilder, Operand, Reg, RegClass, fimm, imm, mem, sym};

use super::combine::add_term;
use super::common::{Elem, load_if};

/// Keys staged per step of the compressed-token kernels (a multiple of 16).
pub const CHUNK: u32 = 32;

/// The ids of a kernel whose block is (token block, kv head), the last token blocks first, with
/// one warp per token of the block. The token blocks cover the call's tokens (a parameter).
pub struct BlockIds {
    pub tid: Reg,
    /// Warp in block.
    pub warp: Reg,
    pub lane: Reg,
    /// The kv head.
    pub h: Reg,
    /// The token block: `nblk − 1 − ctaid / H` with `nblk = ceil(ntok / warps)`.
    pub token_block: Reg,
    /// The call's last token, `ntok − 1`.
    pub last: Reg,
}

/// Reads `%tid.x` and `%ctaid.x` and splits them into [`BlockIds`] for `heads` kv heads and
/// token blocks of `warps` tokens over `ntok` tokens (`ntok ≥ 1`, a register).
pub fn block_ids(b: &mut KernelBuilder, heads: u32, ntok: Reg, warps: u32) -> BlockIds {
    let tid = b.op1(RegClass::B32, "mov.u32", sym("%tid.x"));
    let cta = b.op1(RegClass::B32, "mov.u32", sym("%ctaid.x"));
    let warp = b.op2(RegClass::B32, "shr.u32", tid.into(), imm(5));
    let lane = b.op2(RegClass::B32, "and.b32", tid.into(), imm(31));
    let ctb = b.op2(RegClass::B32, "div.u32", cta.into(), imm(i64::from(heads)));
    let h = b.op2(RegClass::B32, "rem.u32", cta.into(), imm(i64::from(heads)));
    // nblk − 1 = ceil(ntok / warps) − 1 = (ntok − 1) / warps
    let last = b.op2(RegClass::B32, "sub.u32", ntok.into(), imm(1));
    let top = b.op2(RegClass::B32, "div.u32", last.into(), imm(i64::from(warps)));
    let token_block = b.op2(RegClass::B32, "sub.u32", top.into(), ctb.into());
    BlockIds {
        tid,
        warp,
        lane,
        h,
        token_block,
        last,
    }
}

/// The token of a warp whose block holds `warps` consecutive tokens (warp w = token t0 + w).
pub struct WarpToken {
    /// The block's first token.
    pub t0: Reg,
    /// Whether the warp's token exists (blocks past the last token hold clamped warps).
    pub live: Reg,
    /// The warp's token, clamped to the last one.
    pub tok: Reg,
}

/// The [`WarpToken`] of warp `ids.warp` in token block `ids.token_block`, clamped to the
/// call's last token `ids.last`.
pub fn warp_token(b: &mut KernelBuilder, ids: &BlockIds, warps: u32) -> WarpToken {
    let t0 = b.op2(
        RegClass::B32,
        "mul.lo.u32",
        ids.token_block.into(),
        imm(i64::from(warps)),
    );
    let tw = b.op2(RegClass::B32, "add.u32", t0.into(), ids.warp.into());
    let live = b.setp("le.u32", tw.into(), ids.last.into());
    let tok = b.op2(RegClass::B32, "min.u32", tw.into(), ids.last.into());
    WarpToken { t0, live, tok }
}

/// The last token of the block starting at `t0` (of `warps` tokens, clamped to the call's last
/// token `last`).
pub fn block_last_token(b: &mut KernelBuilder, t0: Reg, warps: u32, last: Reg) -> Reg {
    let tl0 = b.op2(
        RegClass::B32,
        "add.u32",
        t0.into(),
        imm(i64::from(warps - 1)),
    );
    b.op2(RegClass::B32, "min.u32", tl0.into(), last.into())
}

/// Bytes per staged row: padded by 16 so the 8 rows an `ldmatrix` reads hit distinct banks.
pub fn row_stride(dim: u32) -> u32 {
    dim * 2 + 16
}

pub fn vec_op(regs: &[Reg]) -> Operand {
    Operand::Vec(regs.to_vec())
}

/// The `mma.sync` opcode and the f32x2 → 16-bit pair conversion for `dtype`.
pub fn mma_ops(dtype: DType) -> (String, &'static str) {
    let (ty, cvt) = match dtype {
        DType::F16 => ("f16", "cvt.rn.f16x2.f32"),
        _ => ("bf16", "cvt.rn.bf16x2.f32"),
    };
    (
        format!("mma.sync.aligned.m16n8k16.row.col.f32.{ty}.{ty}.f32"),
        cvt,
    )
}

/// `x` reduced with `op` (`max.f32`/`add.f32`) over the 4 lanes of a quad.
pub fn quad_reduce(b: &mut KernelBuilder, x: Reg, op: &str) -> Reg {
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

/// A lane's place in the fragments: `gq = lane >> 2`, `tq = lane & 3`, and whether its rows
/// gq, gq + 8 are heads of the group (< G).
pub struct Lanes {
    pub gq: Reg,
    pub tq2: Reg,
    pub rowok: [Reg; 2],
}

pub fn lanes(b: &mut KernelBuilder, lane: Reg, g: u32) -> Lanes {
    let gq = b.op2(RegClass::B32, "shr.u32", lane.into(), imm(2));
    let tq = b.op2(RegClass::B32, "and.b32", lane.into(), imm(3));
    let tq2 = b.op2(RegClass::B32, "shl.b32", tq.into(), imm(1));
    let g8 = b.op2(RegClass::B32, "add.u32", gq.into(), imm(8));
    let rowok = [
        b.setp("lt.u32", gq.into(), imm(i64::from(g))),
        b.setp("lt.u32", g8.into(), imm(i64::from(g))),
    ];
    Lanes { gq, tq2, rowok }
}

/// The A fragments of Q for query row `qrow = (tok·H + h)·G + gq` (rows ≥ G are 0), one
/// `[Reg; 4]` per 16-wide k-step.
pub fn load_q(b: &mut KernelBuilder, qb: Reg, qrow: Reg, l: &Lanes, dqk: u32) -> Vec<[Reg; 4]> {
    let qe = b.op3(
        RegClass::B32,
        "mad.lo.u32",
        qrow.into(),
        imm(i64::from(dqk)),
        l.tq2.into(),
    );
    let qa = b.addr(qb, qe, 2);
    let r8 = i64::from(8 * dqk * 2);
    (0..dqk / 16)
        .map(|kstep| {
            let base = i64::from(kstep * 32);
            let offs = [base, base + r8, base + 16, base + r8 + 16];
            [0, 1, 2, 3].map(|i| {
                let r = b.reg(RegClass::B32);
                b.ins("mov.b32", [r.into(), imm(0)]);
                b.ins_if(
                    l.rowok[i % 2],
                    false,
                    "ld.global.b32",
                    [r.into(), mem(qa, offs[i])],
                );
                r
            })
        })
        .collect()
}

/// The byte offset of a lane's `ldmatrix.x4` row in a staged K tile (keys
/// 8·(lane>>4) + lane&7, dims 8·((lane>>3)&1)).
pub fn k_lane_offset(b: &mut KernelBuilder, lane: Reg, stride: u32) -> Reg {
    let l7 = b.op2(RegClass::B32, "and.b32", lane.into(), imm(7));
    let l3 = b.op2(RegClass::B32, "shr.u32", lane.into(), imm(3));
    let l3b = b.op2(RegClass::B32, "and.b32", l3.into(), imm(1));
    let l4 = b.op2(RegClass::B32, "shr.u32", lane.into(), imm(4));
    let krow = b.op3(RegClass::B32, "mad.lo.u32", l4.into(), imm(8), l7.into());
    let kcol = b.op2(RegClass::B32, "mul.lo.u32", l3b.into(), imm(16));
    b.op3(
        RegClass::B32,
        "mad.lo.u32",
        krow.into(),
        imm(i64::from(stride)),
        kcol.into(),
    )
}

/// The byte offset of a lane's `ldmatrix.x4.trans` row in a staged V tile (keys
/// 8·((lane>>3)&1) + lane&7, dims 8·(lane>>4)).
pub fn v_lane_offset(b: &mut KernelBuilder, lane: Reg, stride: u32) -> Reg {
    let l7 = b.op2(RegClass::B32, "and.b32", lane.into(), imm(7));
    let l3 = b.op2(RegClass::B32, "shr.u32", lane.into(), imm(3));
    let l3b = b.op2(RegClass::B32, "and.b32", l3.into(), imm(1));
    let l4 = b.op2(RegClass::B32, "shr.u32", lane.into(), imm(4));
    let vrow = b.op3(RegClass::B32, "mad.lo.u32", l3b.into(), imm(8), l7.into());
    let vcol = b.op2(RegClass::B32, "mul.lo.u32", l4.into(), imm(16));
    b.op3(
        RegClass::B32,
        "mad.lo.u32",
        vrow.into(),
        imm(i64::from(stride)),
        vcol.into(),
    )
}

/// `chunk` rows of 16-bit elements to copy into shared memory: key `c0 + r` comes from global
/// row `key·row_mul + sub` of width `dim` (rows at or past `hi` are zero-filled).
pub struct CpRows {
    pub chunk: u32,
    pub gbase: Reg,
    pub row_mul: u32,
    pub sub: Reg,
    pub dim: u32,
    /// Shared address of the first staged row.
    pub sdst: Reg,
    /// Keep the rows in L1 too (`cp.async.ca`): for rows other warps of the multiprocessor
    /// are likely to read soon; otherwise L2 only (`cp.async.cg`).
    pub keep_l1: bool,
}

/// Issues the `cp.async` copies of `rows` (16 bytes each) from `nthreads` threads, thread `tid`
/// taking pieces tid, tid + nthreads, …; the caller commits and waits.
pub fn cp_stage(b: &mut KernelBuilder, rows: &CpRows, tid: Reg, nthreads: u32, c0: Reg, hi: Reg) {
    let pieces = rows.dim / 8; // 16-byte pieces per row
    let total = rows.chunk * pieces;
    for i in 0..total.div_ceil(nthreads) {
        let p = b.op2(
            RegClass::B32,
            "add.u32",
            tid.into(),
            imm(i64::from(nthreads * i)),
        );
        let inside =
            ((i + 1) * nthreads > total).then(|| b.setp("lt.u32", p.into(), imm(i64::from(total))));
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
            imm(i64::from(rows.row_mul)),
            rows.sub.into(),
        );
        let ga = b.addr(rows.gbase, th, rows.dim * 2);
        let coff = b.op2(RegClass::B32, "mul.lo.u32", col.into(), imm(16));
        let src = b.addr(ga, coff, 1);
        let soff = b.op3(
            RegClass::B32,
            "mad.lo.u32",
            row.into(),
            imm(i64::from(row_stride(rows.dim))),
            coff.into(),
        );
        let dst = b.op2(RegClass::B32, "add.u32", rows.sdst.into(), soff.into());
        let args = [mem(dst, 0), mem(src, 0), imm(16), size.into()];
        let op = if rows.keep_l1 {
            "cp.async.ca.shared.global"
        } else {
            "cp.async.cg.shared.global"
        };
        match inside {
            Some(q) => b.ins_if(q, false, op, args),
            None => b.ins(op, args),
        }
    }
}

/// S = Q·Kᵀ for `chunk` staged keys: `chunk / 8` C tiles (rows = heads, columns = keys).
/// `kaddr` is the lane's `ldmatrix` address in the staged K tile (row stride
/// `row_stride(dqk)`); each part offset (hi, lo) adds its product.
pub fn qk_tiles(
    b: &mut KernelBuilder,
    mma: &str,
    qf: &[[Reg; 4]],
    kaddr: Reg,
    dqk: u32,
    parts: &[i64],
    chunk: u32,
) -> Vec<[Reg; 4]> {
    let sf: Vec<[Reg; 4]> = (0..chunk / 8)
        .map(|_| {
            [0, 1, 2, 3].map(|_| {
                let r = b.reg(RegClass::F32);
                b.ins("mov.f32", [r.into(), fimm(0.0)]);
                r
            })
        })
        .collect();
    for j in 0..chunk / 16 {
        for (kstep, qa) in qf.iter().enumerate() {
            for part in parts {
                let r = [0, 1, 2, 3].map(|_| b.reg(RegClass::B32));
                let off = i64::from(16 * j * row_stride(dqk)) + 32 * kstep as i64 + part;
                b.ins(
                    "ldmatrix.sync.aligned.m8n8.x4.shared.b16",
                    [vec_op(&r), mem(kaddr, off)],
                );
                for half in 0..2 {
                    let c = sf[(2 * j + half) as usize];
                    let bfrag = [r[2 * half as usize], r[2 * half as usize + 1]];
                    b.ins(mma, [vec_op(&c), vec_op(qa), vec_op(&bfrag), vec_op(&c)]);
                }
            }
        }
    }
    sf
}

/// Which keys of a chunk count: `k < hi`, or `k − lo < n` (unsigned, so keys below `lo` fail).
#[derive(Clone, Copy)]
pub enum KeyMask {
    Below(Reg),
    Range { lo: Reg, n: Reg },
}

impl KeyMask {
    /// The predicate "key `k` counts".
    pub fn test(self, b: &mut KernelBuilder, k: Reg) -> Reg {
        match self {
            KeyMask::Below(hi) => b.setp("lt.u32", k.into(), hi.into()),
            KeyMask::Range { lo, n } => {
                let d = b.op2(RegClass::B32, "sub.u32", k.into(), lo.into());
                b.setp("lt.u32", d.into(), n.into())
            }
        }
    }
}

/// The online-softmax attention state of one warp: O accumulator tiles and, for the two rows a
/// lane holds, the running max `m` and the per-lane partial sum `l` (reduced over the quad at
/// the end).
pub struct Attn {
    pub acc: Vec<[Reg; 4]>,
    pub m: [Reg; 2],
    pub l: [Reg; 2],
}

impl Attn {
    pub fn new(b: &mut KernelBuilder, dv: u32) -> Attn {
        let acc = (0..dv / 8)
            .map(|_| {
                [0, 1, 2, 3].map(|_| {
                    let r = b.reg(RegClass::F32);
                    b.ins("mov.f32", [r.into(), fimm(0.0)]);
                    r
                })
            })
            .collect();
        let m = [0, 1].map(|_| {
            let r = b.reg(RegClass::F32);
            b.ins("mov.f32", [r.into(), fimm(f32::NEG_INFINITY)]);
            r
        });
        let l = [0, 1].map(|_| {
            let r = b.reg(RegClass::F32);
            b.ins("mov.f32", [r.into(), fimm(0.0)]);
            r
        });
        Attn { acc, m, l }
    }
}

/// What one chunk step needs besides the chunk's position.
pub struct ChunkMath<'a> {
    /// Keys per step (a multiple of 16).
    pub chunk: u32,
    pub mma: &'a str,
    pub cvt: &'a str,
    pub qf: &'a [[Reg; 4]],
    /// K part offsets from `kaddr` (hi only, or hi and lo).
    pub parts: &'a [i64],
    pub dqk: u32,
    pub dv: u32,
    pub scale_log2: f32,
    pub tq2: Reg,
}

/// One chunk of `cm.chunk` staged keys starting at key `c0`: S = Q·Kᵀ, base-2 scaling, masking,
/// online softmax on the fragments, O += P·V (P from the S fragments, V via `ldmatrix.trans`).
pub fn chunk_step(
    b: &mut KernelBuilder,
    cm: &ChunkMath<'_>,
    st: &Attn,
    kaddr: Reg,
    vaddr: Reg,
    c0: Reg,
    mask: KeyMask,
) {
    b.comment("S = Q K^T");
    let sf = qk_tiles(b, cm.mma, cm.qf, kaddr, cm.dqk, cm.parts, cm.chunk);
    b.comment("scale to base 2, mask keys, online softmax per row");
    let kq = b.op2(RegClass::B32, "add.u32", c0.into(), cm.tq2.into());
    for (nt, c) in sf.iter().enumerate() {
        let k0 = b.op2(RegClass::B32, "add.u32", kq.into(), imm(8 * nt as i64));
        let k1 = b.op2(RegClass::B32, "add.u32", k0.into(), imm(1));
        let ok = [mask.test(b, k0), mask.test(b, k1)];
        for (i, r) in c.iter().enumerate() {
            let x = b.op2(RegClass::F32, "mul.f32", (*r).into(), fimm(cm.scale_log2));
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
        for a in &st.acc {
            for i in [2 * half, 2 * half + 1] {
                b.ins("mul.f32", [a[i].into(), a[i].into(), corr.into()]);
            }
        }
    }

    b.comment("O += P V (P from the S fragments, V via ldmatrix.trans)");
    for j in 0..(cm.chunk / 16) as usize {
        let (c, d) = (sf[2 * j], sf[2 * j + 1]);
        let pa = [(c[1], c[0]), (c[3], c[2]), (d[1], d[0]), (d[3], d[2])].map(|(hi, lo)| {
            let r = b.reg(RegClass::B32);
            b.ins(cm.cvt, [r.into(), hi.into(), lo.into()]);
            r
        });
        for np in 0..(cm.dv / 16) as usize {
            let r = [0, 1, 2, 3].map(|_| b.reg(RegClass::B32));
            let off = i64::from(16 * j as u32 * row_stride(cm.dv)) + 32 * np as i64;
            b.ins(
                "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16",
                [vec_op(&r), mem(vaddr, off)],
            );
            for half in 0..2 {
                let o = st.acc[2 * np + half];
                let bfrag = [r[2 * half], r[2 * half + 1]];
                b.ins(
                    cm.mma,
                    [vec_op(&o), vec_op(&pa), vec_op(&bfrag), vec_op(&o)],
                );
            }
        }
    }
}

/// The flat element index `qrow·Dv + 2·tq` of a lane's first output column in row `qrow`.
fn fragment_element(b: &mut KernelBuilder, qrow: Reg, l: &Lanes, dv: u32) -> Reg {
    b.op3(
        RegClass::B32,
        "mad.lo.u32",
        qrow.into(),
        imm(i64::from(dv)),
        l.tq2.into(),
    )
}

/// For row half `half` of O: the quad-reduced row sum, its reciprocal (0 for an empty row,
/// which then yields 0) and whether the lane's row is stored (a row < G, and `live`).
fn row_scale(
    b: &mut KernelBuilder,
    st: &Attn,
    l: &Lanes,
    half: usize,
    live: Option<Reg>,
) -> (Reg, Reg, Reg) {
    let sum = quad_reduce(b, st.l[half], "add.f32");
    let empty = b.setp("eq.f32", sum.into(), fimm(0.0));
    let r = b.op1(RegClass::F32, "rcp.rn.f32", sum.into());
    let inv = b.reg(RegClass::F32);
    b.ins("selp.f32", [inv.into(), fimm(0.0), r.into(), empty.into()]);
    let ok = match live {
        Some(lv) => b.op2(RegClass::Pred, "and.pred", l.rowok[half].into(), lv.into()),
        None => l.rowok[half],
    };
    (sum, inv, ok)
}

/// Normalises and stores the rows < G of O (f32, row `qrow`, an empty row yields 0) under
/// `live`; returns the quad-reduced row sums.
pub fn store_o(
    b: &mut KernelBuilder,
    st: &Attn,
    ob: Reg,
    qrow: Reg,
    l: &Lanes,
    dv: u32,
    live: Option<Reg>,
) -> [Reg; 2] {
    b.comment("normalise (an empty row yields 0) and store rows < G");
    let oe = fragment_element(b, qrow, l, dv);
    let oa = b.addr(ob, oe, 4);
    [0, 1].map(|half| {
        let (sum, inv, ok) = row_scale(b, st, l, half, live);
        for (nt, a) in st.acc.iter().enumerate() {
            let x = b.op2(RegClass::F32, "mul.f32", a[2 * half].into(), inv.into());
            let y = b.op2(RegClass::F32, "mul.f32", a[2 * half + 1].into(), inv.into());
            let off = (half as i64) * i64::from(8 * dv * 4) + 32 * nt as i64;
            b.ins_if(
                ok,
                false,
                "st.global.v2.f32",
                [mem(oa, off), vec_op(&[x, y])],
            );
        }
        sum
    })
}

/// The combine `o = Σ_b g_b·o_b` computed in a branch kernel's epilogue (`fuse_combine = 1`):
/// one term per combined branch, in the combine's order.
pub struct FusedTerms {
    /// Per combined branch: the base of its f32 output `o_<b>` `[B·T, HQ, Dv]`, or `None` for
    /// the kernel's own branch (whose values are in registers).
    pub outs: Vec<Option<Reg>>,
    /// Per combined branch: the base of its gate `g_<b>` `[B·T, HQ]` in the input dtype; empty
    /// for a `sum` combine.
    pub gates: Vec<Reg>,
    /// The base of the final output `o` `[B·T, HQ, Dv]` (f32).
    pub o: Reg,
    /// The input dtype (of the gates).
    pub dtype: DType,
}

/// [`store_o`] followed by the combine: normalises and stores the rows < G of O into the
/// branch's own output `ob` (row `qrow`, an empty row yields 0) under `live`, and into `o` the
/// element-wise `acc = 0; acc = fma(g_b, o_b, acc)` over `terms` in order (`add.rn` for `sum`), the
/// own term taken from the stored values: the separate combine kernel's operations in its
/// order, so `o` is the same bit for bit. A lane stores, and reads the other branches' elements
/// and the gates of, exactly the elements [`store_o`] stores: rows (q heads) gq and gq + 8 of
/// the group where they are < G, columns 8·nt + 2·tq, +1; nothing for padding rows or dead
/// warps. Returns the quad-reduced row sums.
#[allow(clippy::too_many_arguments)]
pub fn store_o_combined(
    b: &mut KernelBuilder,
    st: &Attn,
    ob: Reg,
    qrow: Reg,
    l: &Lanes,
    dv: u32,
    live: Option<Reg>,
    terms: &FusedTerms,
) -> [Reg; 2] {
    b.comment("normalise (an empty row yields 0), store rows < G and combine them into o");
    let oe = fragment_element(b, qrow, l, dv);
    let oa = b.addr(ob, oe, 4);
    let other: Vec<Option<Reg>> = terms
        .outs
        .iter()
        .map(|p| p.map(|p| b.addr(p, oe, 4)))
        .collect();
    let fa = b.addr(terms.o, oe, 4);
    [0, 1].map(|half| {
        let (sum, inv, ok) = row_scale(b, st, l, half, live);
        b.comment("gates of this row's (token, q head)");
        let grow = if half == 0 {
            qrow
        } else {
            b.op2(RegClass::B32, "add.u32", qrow.into(), imm(8))
        };
        let gates: Vec<Reg> = terms
            .gates
            .iter()
            .map(|&g| load_if(b, g, grow, Elem::of(terms.dtype), Some(ok)))
            .collect();
        let off = |nt: usize| (half as i64) * i64::from(8 * dv * 4) + 32 * nt as i64;
        // Every load of the other branches' elements comes before the first store: ptxas may
        // not move a load past a store that could alias it, and loads issued one store apart
        // each wait a full memory round trip (the select kernel has few warps to hide it).
        let loaded: Vec<Vec<Option<[Reg; 2]>>> = (0..st.acc.len())
            .map(|nt| {
                other
                    .iter()
                    .map(|src| {
                        src.map(|p| {
                            let v = [0, 1].map(|_| {
                                let r = b.reg(RegClass::F32);
                                b.ins("mov.f32", [r.into(), fimm(0.0)]);
                                r
                            });
                            b.ins_if(ok, false, "ld.global.v2.f32", [vec_op(&v), mem(p, off(nt))]);
                            v
                        })
                    })
                    .collect()
            })
            .collect();
        for (nt, a) in st.acc.iter().enumerate() {
            let x = b.op2(RegClass::F32, "mul.f32", a[2 * half].into(), inv.into());
            let y = b.op2(RegClass::F32, "mul.f32", a[2 * half + 1].into(), inv.into());
            b.ins_if(
                ok,
                false,
                "st.global.v2.f32",
                [mem(oa, off(nt)), vec_op(&[x, y])],
            );
            let c = [0, 1].map(|_| {
                let r = b.reg(RegClass::F32);
                b.ins("mov.f32", [r.into(), fimm(0.0)]);
                r
            });
            for (i, src) in loaded[nt].iter().enumerate() {
                let v = src.unwrap_or([x, y]);
                for j in 0..2 {
                    add_term(b, c[j], gates.get(i).copied(), v[j]);
                }
            }
            b.ins_if(
                ok,
                false,
                "st.global.v2.f32",
                [mem(fa, off(nt)), vec_op(&c)],
            );
        }
        sum
    })
}

/// Marks "no chunk": larger than any slot.
const NO_SLOT: i64 = 0xffff_ffff;

/// A thread block's loop over chunks of compressed slots that its warps share: each warp needs
/// the slots `s .. wend` of its own token; the block visits, in ascending order, only chunks
/// that some warp needs (a block whose tokens span segments skips the slots between them), each
/// copied once for all warps into one of `stages` buffers (a ring) while the chunks before it
/// are computed: `stages − 1` chunks are in flight ahead of the one being computed.
pub struct SharedChunks {
    /// Keys per chunk.
    pub chunk: u32,
    /// Shared address of `nwarps` (start, end) u32 pairs ([`ranges_bytes`]).
    pub ranges: Reg,
    pub nwarps: u32,
    /// Bytes of one staging buffer; the others follow it.
    pub buf_bytes: u32,
    /// Staging buffers (pipeline depth): [`GpuVariant::compress_stages`], 2 or more.
    ///
    /// [`GpuVariant::compress_stages`]: crate::ptx::GpuVariant::compress_stages
    pub stages: u32,
    pub wib: Reg,
    pub lane: Reg,
    pub s: Reg,
    pub wend: Reg,
}

/// Shared bytes of the warps' slot ranges.
pub fn ranges_bytes(nwarps: u32) -> u32 {
    8 * nwarps
}

/// How a kernel's comments and launch formula name `stages` staging buffers.
pub fn buffering(stages: u32) -> String {
    match stages {
        2 => "double-buffered".into(),
        3 => "triple-buffered".into(),
        n => format!("{n}-buffered"),
    }
}

/// The smallest slot ≥ `x` that some warp needs, or `NO_SLOT` (the same in every thread).
fn next_needed(b: &mut KernelBuilder, sc: &SharedChunks, x: Reg) -> Reg {
    let res = b.reg(RegClass::B32);
    b.ins("mov.u32", [res.into(), imm(NO_SLOT)]);
    for w in 0..sc.nwarps {
        let (sw, ew) = (b.reg(RegClass::B32), b.reg(RegClass::B32));
        b.ins(
            "ld.shared.v2.u32",
            [vec_op(&[sw, ew]), mem(sc.ranges, i64::from(8 * w))],
        );
        let xw = b.op2(RegClass::B32, "max.u32", x.into(), sw.into());
        let ok = b.setp("lt.u32", xw.into(), ew.into());
        let cand = b.reg(RegClass::B32);
        b.ins(
            "selp.u32",
            [cand.into(), xw.into(), imm(NO_SLOT), ok.into()],
        );
        b.ins("min.u32", [res.into(), res.into(), cand.into()]);
    }
    res
}

/// The first needed slot of the chunk after the one starting at `c` (`NO_SLOT` after
/// `NO_SLOT`: `c + chunk` wraps there, and `max` with `c` keeps it `NO_SLOT`, which no warp
/// needs).
fn needed_after(b: &mut KernelBuilder, sc: &SharedChunks, c: Reg) -> Reg {
    let cn = b.op2(RegClass::B32, "add.u32", c.into(), imm(i64::from(sc.chunk)));
    let from = b.op2(RegClass::B32, "max.u32", cn.into(), c.into());
    next_needed(b, sc, from)
}

/// Stages chunk `c` into the buffer at byte offset `off` unless `c` is `NO_SLOT`, then commits
/// the group (an empty one when nothing was staged, so every loop step commits exactly one).
fn stage_and_commit(
    b: &mut KernelBuilder,
    stage: &impl Fn(&mut KernelBuilder, Reg, Reg),
    c: Reg,
    off: Reg,
) {
    let nostage = b.label();
    let none = b.setp("eq.u32", c.into(), imm(NO_SLOT));
    b.bra_if(none, false, nostage);
    stage(b, c, off);
    b.place(nostage);
    b.ins("cp.async.commit_group", []);
}

/// Emits the block-wide pipelined loop over the needed chunks: `stage(b, c0, bufoff)` issues
/// the copies of the chunk starting at slot `c0` into the buffer at byte offset `bufoff` (all
/// threads; committed here), `compute(b, c0, bufoff)` runs in the warps that need some slot of
/// the chunk. Every warp of the block must reach this loop (it holds block-wide barriers).
///
/// Schedule with S = `sc.stages` buffers, the k-th visited chunk in buffer k mod S: the
/// prologue stages chunks 0 .. S−2, one `cp.async` group each. Step i stages chunk i+S−1 into
/// buffer (i−1) mod S (the one chunk i−1 used; the closing `bar.sync` of step i−1 ordered
/// every warp's reads of it before), commits one group (empty past the last chunk), waits
/// with `cp.async.wait_group S−1` (this thread's copies of chunk i done: the S−1 newer groups
/// may still run), `bar.sync` (every thread's copies of chunk i visible), computes chunk i and
/// closes with a `bar.sync`.
pub fn shared_chunk_loop(
    b: &mut KernelBuilder,
    sc: &SharedChunks,
    stage: impl Fn(&mut KernelBuilder, Reg, Reg),
    compute: impl Fn(&mut KernelBuilder, Reg, Reg),
) {
    b.comment("publish this warp's slot range; visit only chunks some warp needs");
    let lane0 = b.setp("eq.u32", sc.lane.into(), imm(0));
    let ra = b.op3(
        RegClass::B32,
        "mad.lo.u32",
        sc.wib.into(),
        imm(8),
        sc.ranges.into(),
    );
    b.ins_if(
        lane0,
        false,
        "st.shared.v2.u32",
        [mem(ra, 0), vec_op(&[sc.s, sc.wend])],
    );
    b.ins("bar.sync", [imm(0)]);
    let zero = b.op1(RegClass::B32, "mov.u32", imm(0));
    let first = next_needed(b, sc, zero);
    let c0 = b.op1(RegClass::B32, "mov.u32", first.into());
    let bufoff = b.op1(RegClass::B32, "mov.u32", imm(0));
    let done = b.label();
    let none = b.setp("eq.u32", c0.into(), imm(NO_SLOT));
    b.bra_if(none, false, done);
    stage(b, c0, bufoff);
    b.ins("cp.async.commit_group", []);
    // Deeper pipelines: `ahead[k]` is the chunk k+1 after the one computed (NO_SLOT past the
    // last); the prologue stages chunks 1 .. S−2 into buffers 1 .. S−2.
    let mut ahead = Vec::new();
    for k in 1..sc.stages.saturating_sub(1) {
        let prev = ahead.last().copied().unwrap_or(c0);
        let ck = needed_after(b, sc, prev);
        let cr = b.op1(RegClass::B32, "mov.u32", ck.into());
        let off = b.op1(RegClass::B32, "mov.u32", imm(i64::from(k * sc.buf_bytes)));
        stage_and_commit(b, &stage, cr, off);
        ahead.push(cr);
    }
    let head = b.label();
    b.place(head);
    let fin = b.setp("eq.u32", c0.into(), imm(NO_SLOT));
    b.bra_if(fin, false, done);
    let cn = b.op2(
        RegClass::B32,
        "add.u32",
        c0.into(),
        imm(i64::from(sc.chunk)),
    );
    let ring = sc.stages * sc.buf_bytes;
    let (nxt, nbuf) = match ahead.last() {
        // double buffering: the chunk after c0 (c0 is a real slot here), into the other buffer
        None => {
            let nxt = next_needed(b, sc, cn);
            let nbuf = b.op2(
                RegClass::B32,
                "sub.u32",
                imm(i64::from(sc.buf_bytes)),
                bufoff.into(),
            );
            (nxt, nbuf)
        }
        // the chunk after the last one in flight, into the buffer before c0's in the ring
        Some(&last) => {
            let nxt = needed_after(b, sc, last);
            let up = b.op2(
                RegClass::B32,
                "add.u32",
                bufoff.into(),
                imm(i64::from(ring - sc.buf_bytes)),
            );
            let down = b.op2(
                RegClass::B32,
                "sub.u32",
                bufoff.into(),
                imm(i64::from(sc.buf_bytes)),
            );
            let wraps = b.setp("lt.u32", bufoff.into(), imm(i64::from(sc.buf_bytes)));
            let nbuf = b.reg(RegClass::B32);
            b.ins(
                "selp.u32",
                [nbuf.into(), up.into(), down.into(), wraps.into()],
            );
            (nxt, nbuf)
        }
    };
    stage_and_commit(b, &stage, nxt, nbuf);
    b.ins(
        "cp.async.wait_group",
        [imm(i64::from(sc.stages.max(2) - 1))],
    );
    b.ins("bar.sync", [imm(0)]);
    b.comment("skip a chunk that holds none of this warp's slots");
    let skip = b.label();
    let after = b.setp("ge.u32", c0.into(), sc.wend.into());
    let before = b.setp("le.u32", cn.into(), sc.s.into());
    let out = b.op2(RegClass::Pred, "or.pred", after.into(), before.into());
    b.bra_if(out, false, skip);
    compute(b, c0, bufoff);
    b.place(skip);
    b.ins("bar.sync", [imm(0)]);
    match ahead.split_first() {
        None => {
            b.ins("mov.u32", [c0.into(), nxt.into()]);
            b.ins("mov.u32", [bufoff.into(), nbuf.into()]);
        }
        Some((&first_ahead, rest)) => {
            b.ins("mov.u32", [c0.into(), first_ahead.into()]);
            let mut prev = first_ahead;
            for &r in rest {
                b.ins("mov.u32", [prev.into(), r.into()]);
                prev = r;
            }
            b.ins("mov.u32", [prev.into(), nxt.into()]);
            b.comment("the next buffer in the ring");
            let inc = b.op2(
                RegClass::B32,
                "add.u32",
                bufoff.into(),
                imm(i64::from(sc.buf_bytes)),
            );
            let end = b.setp("eq.u32", inc.into(), imm(i64::from(ring)));
            b.ins("selp.u32", [bufoff.into(), imm(0), inc.into(), end.into()]);
        }
    }
    b.bra(head);
    b.place(done);
}
