//! Block scoring and top-k selection: one warp per (token, kv head). Block scores live in
//! dynamic shared memory; they are the group-summed compressed-attention probabilities spread
//! over the selection blocks by overlap (docs/ARCHITECTURE.md §3), forced blocks score +∞, and the
//! top n are taken by (score descending, block index ascending) — the tie rule every backend
//! shares. With tensor-core scoring a thread block holds up to [`GpuVariant::score_tokens`]
//! consecutive tokens of one kv head (one warp and one score array each) sharing the staged
//! compressed keys; after scoring every warp works alone (warp barriers only). The scalar fallback
//! runs one warp per block.
//!
//! [`GpuVariant::score_tokens`]: crate::ptx::GpuVariant::score_tokens

use crate::ptx::SEG;
use crate::ptx::builder::{KernelBuilder, Reg, RegClass, fimm, imm, mem, sym};
use crate::ptx::launch::Geometry;
use crate::ptx::lowering::{Compressed, Dims};
use crate::ptx::variant::GpuVariant;

use super::common::{
    Elem, bound_threads, declare_buffers, declare_scalar, for_range, load, load_vec, params_of,
    segment, segment_column, visible_compressed, warp_dot,
};
use super::tc_common::{
    WarpToken, block_ids, block_last_token, buffering, ranges_bytes, warp_token,
};
use super::{KernelOut, Launch, Scalar, tc_score};

/// Parameters of one select branch as the kernel needs them.
pub struct TopKParams<'a> {
    pub q: &'a str,
    /// The scoring compress branch's compressed tokens.
    pub keys: &'a Compressed,
    /// Its log-sum-exp.
    pub lse: &'a str,
    pub idx: &'a str,
    pub cmp_block: u32,
    pub cmp_stride: u32,
    pub block: u32,
    pub top: u32,
    pub keep_first: u32,
    pub keep_last: u32,
}

/// Marks a block already taken (real scores are ≥ 0).
const TAKEN: f32 = -2.0;

fn shared_addr(b: &mut KernelBuilder, base: Reg, i: Reg) -> Reg {
    b.op3(RegClass::B32, "mad.lo.u32", i.into(), imm(4), base.into())
}

/// `scores[i] += pw · overlap(j, i)` for every selection block `i < nbc` that compressed token
/// `j` overlaps (docs/ARCHITECTURE.md §3), on the score array at shared address `scores`. One
/// thread runs it: its loads and stores of the scores are not ordered with other lanes'.
pub(super) fn spread_over_blocks(
    b: &mut KernelBuilder,
    p: &TopKParams<'_>,
    j: Reg,
    pw: Reg,
    nbc: Reg,
    scores: Reg,
) {
    let (cl, cd, lb) = (
        i64::from(p.cmp_block),
        i64::from(p.cmp_stride),
        i64::from(p.block),
    );
    let k0 = b.op2(RegClass::B32, "mul.lo.u32", j.into(), imm(cd));
    let k1 = b.op2(RegClass::B32, "add.u32", k0.into(), imm(cl));
    let ilo = b.op2(RegClass::B32, "div.u32", k0.into(), imm(lb));
    let last = b.op2(RegClass::B32, "sub.u32", k1.into(), imm(1));
    let ihi0 = b.op2(RegClass::B32, "div.u32", last.into(), imm(lb));
    let ihi1 = b.op2(RegClass::B32, "add.u32", ihi0.into(), imm(1));
    let ihi = b.op2(RegClass::B32, "min.u32", ihi1.into(), nbc.into());
    for_range(b, ilo.into(), ihi.into(), 1, |b, i| {
        let b0 = b.op2(RegClass::B32, "mul.lo.u32", i.into(), imm(lb));
        let b1 = b.op2(RegClass::B32, "add.u32", b0.into(), imm(lb));
        let lo = b.op2(RegClass::B32, "max.u32", b0.into(), k0.into());
        let hi = b.op2(RegClass::B32, "min.u32", b1.into(), k1.into());
        let ov = b.op2(RegClass::B32, "sub.u32", hi.into(), lo.into());
        let ovf = b.op1(RegClass::F32, "cvt.rn.f32.u32", ov.into());
        let a = shared_addr(b, scores, i);
        let cur = b.reg(RegClass::F32);
        b.ins("ld.shared.f32", [cur.into(), mem(a, 0)]);
        let nv = b.op3(
            RegClass::F32,
            "fma.rn.f32",
            pw.into(),
            ovf.into(),
            cur.into(),
        );
        b.ins("st.shared.f32", [mem(a, 0), nv.into()]);
    });
}

/// Generates the top-k kernel of a select branch; the tensor-core form holds
/// `variant.score_tokens` tokens per thread block and stages the compressed keys in
/// `variant.compress_stages` buffers. Each warp's score array (one f32 per candidate block)
/// lives in dynamic shared memory; its size follows the call's longest segment and is a
/// parameter (`score_bytes`), so the launch's shared bytes grow with it
/// ([`Geometry::with_scores`]): a launcher refuses a call whose scores do not fit the device.
pub fn topk(name: &str, p: &TopKParams<'_>, dims: &Dims, variant: &GpuVariant) -> KernelOut {
    let stages = variant.compress_stages;
    let mut b = KernelBuilder::new(name);
    b.use_dynamic_shared();
    let half = p.keys.half.as_ref().filter(|_| tc_score::eligible(dims));
    let tc = half.is_some();
    let kc = half.map_or(&p.keys.kv.k, |h| &h.k).clone();
    let bufs: Vec<String> = vec![
        SEG.into(),
        p.q.to_string(),
        kc,
        p.lse.to_string(),
        p.idx.to_string(),
    ];
    let syms = declare_buffers(&mut b, &bufs);
    let ntok_sym = declare_scalar(&mut b, Scalar::Ntok);
    let sb_sym = declare_scalar(&mut b, Scalar::ScoreBytes);
    let wpc = if tc { variant.score_tokens } else { 1 };
    let staging = if tc {
        tc_score::staging_bytes(dims, stages) + ranges_bytes(wpc)
    } else {
        0
    };
    if tc {
        bound_threads(&mut b, 32 * wpc);
    }
    b.comment("block = (token block, kv head), the last token blocks first; warp w = token t0 + w");
    b.comment("(clamped to the last token; only live warps write indices)");
    let ntok = b.load_u32_param(&ntok_sym);
    let scores_bytes = b.load_u32_param(&sb_sym);
    let ids = block_ids(&mut b, dims.h, ntok, wpc);
    let (tid, wib, lane, h) = (ids.tid, ids.warp, ids.lane, ids.h);
    let hh = i64::from(dims.h);
    let WarpToken { t0, live, tok } = warp_token(&mut b, &ids, wpc);
    let row = b.op3(RegClass::B32, "mad.lo.u32", tok.into(), imm(hh), h.into());
    let ptrs: Vec<Reg> = syms.iter().map(|s| b.load_ptr_param(s)).collect();
    let (seg, qb, kcb, lseb, idxb) = (ptrs[0], ptrs[1], ptrs[2], ptrs[3], ptrs[4]);
    let smem0 = b.op1(RegClass::B32, "mov.u32", sym("smem"));
    b.comment("this warp's score array: score_bytes (a parameter) per warp");
    let sbase = b.op3(
        RegClass::B32,
        "mad.lo.u32",
        wib.into(),
        scores_bytes.into(),
        smem0.into(),
    );
    let (s, e) = segment(&mut b, seg, tok, dims.seg_cols);
    let cb = segment_column(&mut b, seg, tok, dims.seg_cols, p.keys.column);
    let pos = b.op2(RegClass::B32, "sub.u32", tok.into(), s.into());
    let len = b.op2(RegClass::B32, "sub.u32", e.into(), s.into());
    let lb = i64::from(p.block);
    let nbc = if dims.causal {
        let c = b.op2(RegClass::B32, "div.u32", pos.into(), imm(lb));
        b.op2(RegClass::B32, "add.u32", c.into(), imm(1))
    } else {
        let c = b.op2(RegClass::B32, "add.u32", len.into(), imm(lb - 1));
        b.op2(RegClass::B32, "div.u32", c.into(), imm(lb))
    };
    b.comment("zero the candidate scores");
    for_range(&mut b, lane.into(), nbc.into(), 32, |b, i| {
        let a = shared_addr(b, sbase, i);
        b.ins("st.shared.f32", [mem(a, 0), fimm(0.0)]);
    });
    b.ins("bar.warp.sync", [imm(-1)]);
    let lane0 = b.setp("eq.u32", lane.into(), imm(0));
    let nvis = visible_compressed(&mut b, pos, len, p.cmp_block, p.cmp_stride, dims.causal);
    if tc {
        b.comment("one past the block's last visible slot: the last token's end");
        let tlast = block_last_token(&mut b, t0, wpc, ids.last);
        let (sl, el) = segment(&mut b, seg, tlast, dims.seg_cols);
        let posl = b.op2(RegClass::B32, "sub.u32", tlast.into(), sl.into());
        let lenl = b.op2(RegClass::B32, "sub.u32", el.into(), sl.into());
        let nvl = visible_compressed(&mut b, posl, lenl, p.cmp_block, p.cmp_stride, dims.causal);
        let cbl = segment_column(&mut b, seg, tlast, dims.seg_cols, p.keys.column);
        let hi = b.op2(RegClass::B32, "add.u32", cbl.into(), nvl.into());
        b.comment("the staging buffers follow the block's score arrays");
        let stage = b.op3(
            RegClass::B32,
            "mad.lo.u32",
            scores_bytes.into(),
            imm(i64::from(wpc)),
            smem0.into(),
        );
        let ctx = tc_score::ScoreCtx {
            qb,
            kcb,
            lseb,
            scores: sbase,
            stage,
            lane,
            tid,
            nthreads: 32 * wpc,
            stages,
            row,
            h,
            s: cb,
            nvis,
            nbc,
            lane0,
            hi,
        };
        tc_score::tc_block_scores(&mut b, &ctx, p, dims);
    } else {
        scalar_scores(
            &mut b,
            p,
            dims,
            &ScalarCtx {
                qb,
                kcb,
                lseb,
                sbase,
                lane,
                tok,
                h,
                s: cb,
                nvis,
                nbc,
                lane0,
            },
        );
    }
    b.ins("bar.warp.sync", [imm(-1)]);
    b.comment("forced blocks: the first keep_first and the keep_last ending at t's block");
    let skipf = b.label();
    b.bra_if(lane0, true, skipf);
    if p.keep_first > 0 {
        let hi = b.op2(
            RegClass::B32,
            "min.u32",
            nbc.into(),
            imm(i64::from(p.keep_first)),
        );
        for_range(&mut b, imm(0), hi.into(), 1, |b, i| {
            let a = shared_addr(b, sbase, i);
            b.ins("st.shared.f32", [mem(a, 0), fimm(f32::INFINITY)]);
        });
    }
    if p.keep_last > 0 {
        let cur = b.op2(RegClass::B32, "div.u32", pos.into(), imm(lb));
        let c1 = b.op2(RegClass::B32, "add.u32", cur.into(), imm(1));
        let kl = i64::from(p.keep_last);
        let big = b.setp("gt.u32", c1.into(), imm(kl));
        let d = b.op2(RegClass::B32, "sub.u32", c1.into(), imm(kl));
        let lo = b.reg(RegClass::B32);
        b.ins("selp.u32", [lo.into(), d.into(), imm(0), big.into()]);
        let hi = b.op2(RegClass::B32, "min.u32", c1.into(), nbc.into());
        for_range(&mut b, lo.into(), hi.into(), 1, |b, i| {
            let a = shared_addr(b, sbase, i);
            b.ins("st.shared.f32", [mem(a, 0), fimm(f32::INFINITY)]);
        });
    }
    b.place(skipf);
    b.ins("bar.warp.sync", [imm(-1)]);
    b.comment("take the best block n times: score desc, index asc");
    let nsel = b.op2(RegClass::B32, "min.u32", nbc.into(), imm(i64::from(p.top)));
    for_range(&mut b, imm(0), nsel.into(), 1, |b, _r| {
        let bv = b.reg(RegClass::F32);
        let bi = b.reg(RegClass::B32);
        b.ins("mov.f32", [bv.into(), fimm(-1.0)]);
        b.ins("mov.u32", [bi.into(), imm(i64::from(i32::MAX))]);
        for_range(b, lane.into(), nbc.into(), 32, |b, i| {
            let a = shared_addr(b, sbase, i);
            let v = b.reg(RegClass::F32);
            b.ins("ld.shared.f32", [v.into(), mem(a, 0)]);
            let better = b.setp("gt.f32", v.into(), bv.into());
            b.ins("selp.f32", [bv.into(), v.into(), bv.into(), better.into()]);
            b.ins("selp.u32", [bi.into(), i.into(), bi.into(), better.into()]);
        });
        for off in [16, 8, 4, 2, 1] {
            let vb = b.op1(RegClass::B32, "mov.b32", bv.into());
            let ov = b.reg(RegClass::B32);
            b.ins(
                "shfl.sync.bfly.b32",
                [ov.into(), vb.into(), imm(off), imm(31), imm(-1)],
            );
            let oi = b.reg(RegClass::B32);
            b.ins(
                "shfl.sync.bfly.b32",
                [oi.into(), bi.into(), imm(off), imm(31), imm(-1)],
            );
            let ovf = b.op1(RegClass::F32, "mov.b32", ov.into());
            let gt = b.setp("gt.f32", ovf.into(), bv.into());
            let eq = b.setp("eq.f32", ovf.into(), bv.into());
            let lt = b.setp("lt.u32", oi.into(), bi.into());
            let tie = b.op2(RegClass::Pred, "and.pred", eq.into(), lt.into());
            let take = b.op2(RegClass::Pred, "or.pred", gt.into(), tie.into());
            b.ins("selp.f32", [bv.into(), ovf.into(), bv.into(), take.into()]);
            b.ins("selp.u32", [bi.into(), oi.into(), bi.into(), take.into()]);
        }
        // Every lane's reads of this round are done before lane 0 marks the winner (the
        // shuffles order them in practice, the memory model only through a barrier).
        b.ins("bar.warp.sync", [imm(-1)]);
        let a = shared_addr(b, sbase, bi);
        b.ins_if(lane0, false, "st.shared.f32", [mem(a, 0), fimm(TAKEN)]);
        b.ins("bar.warp.sync", [imm(-1)]);
    });
    b.comment(
        "write the chosen blocks in ascending order (ballot + prefix count), then -1 padding",
    );
    let exit = b.label();
    b.bra_if(live, true, exit);
    let out0 = b.op2(
        RegClass::B32,
        "mul.lo.u32",
        row.into(),
        imm(i64::from(p.top)),
    );
    let cnt = b.reg(RegClass::B32);
    b.ins("mov.u32", [cnt.into(), out0.into()]);
    let below = b.op1(RegClass::B32, "mov.u32", sym("%lanemask_lt"));
    for_range(&mut b, imm(0), nbc.into(), 32, |b, base| {
        let i = b.op2(RegClass::B32, "add.u32", base.into(), lane.into());
        let inside = b.setp("lt.u32", i.into(), nbc.into());
        let a = shared_addr(b, sbase, i);
        let v = b.reg(RegClass::F32);
        b.ins("mov.f32", [v.into(), fimm(0.0)]);
        b.ins_if(inside, false, "ld.shared.f32", [v.into(), mem(a, 0)]);
        let taken = b.setp("eq.f32", v.into(), fimm(TAKEN));
        let bal = b.reg(RegClass::B32);
        b.ins("vote.sync.ballot.b32", [bal.into(), taken.into(), imm(-1)]);
        let lower = b.op2(RegClass::B32, "and.b32", bal.into(), below.into());
        let pre = b.op1(RegClass::B32, "popc.b32", lower.into());
        let at = b.op2(RegClass::B32, "add.u32", cnt.into(), pre.into());
        let oa = b.addr(idxb, at, 4);
        b.ins_if(taken, false, "st.global.s32", [mem(oa, 0), i.into()]);
        let n = b.op1(RegClass::B32, "popc.b32", bal.into());
        b.ins("add.u32", [cnt.into(), cnt.into(), n.into()]);
    });
    let end = b.op2(RegClass::B32, "add.u32", out0.into(), imm(i64::from(p.top)));
    let first = b.op2(RegClass::B32, "add.u32", cnt.into(), lane.into());
    for_range(&mut b, first.into(), end.into(), 32, |b, i| {
        let oa = b.addr(idxb, i, 4);
        b.ins("st.global.s32", [mem(oa, 0), imm(-1)]);
    });
    b.place(exit);
    b.ins("ret", []);
    KernelOut {
        ptx: b.finish(),
        params: params_of(&bufs, &[Scalar::Ntok, Scalar::ScoreBytes]),
        max_regs: b.reg_cap(),
        launch: Launch {
            geometry: Geometry::new(1, wpc, dims.h, 32 * wpc, staging).with_scores(wpc, p.block),
            formula: if tc {
                format!(
                    "grid = ceil(B*T / {wpc}) * H, block = {}, shared = {wpc}*align16(4*ceil(max_len/{})) + {staging} bytes (staging + warp ranges): {wpc} consecutive tokens of one kv head per block, one warp per token, tensor-core scoring on shared {} chunks",
                    32 * wpc,
                    p.block,
                    buffering(stages),
                )
            } else {
                format!(
                    "grid = B*T*H, block = 32, shared = align16(4*ceil(max_len/{})) bytes: one warp per (token, kv head)",
                    p.block
                )
            },
        },
    }
}

/// What the scalar scoring loop needs from the kernel (`s`: the first compressed slot of the
/// token's segment).
struct ScalarCtx {
    qb: Reg,
    kcb: Reg,
    lseb: Reg,
    sbase: Reg,
    lane: Reg,
    tok: Reg,
    h: Reg,
    s: Reg,
    nvis: Reg,
    nbc: Reg,
    lane0: Reg,
}

/// Scores on CUDA cores: one head at a time, one compressed token per warp dot product.
fn scalar_scores(b: &mut KernelBuilder, p: &TopKParams<'_>, dims: &Dims, c: &ScalarCtx) {
    let ScalarCtx {
        qb,
        kcb,
        lseb,
        sbase,
        lane,
        tok,
        h,
        s,
        nvis,
        nbc,
        lane0,
    } = *c;
    let (hh, g) = (i64::from(dims.h), i64::from(dims.group));
    let inv_d = 1.0 / p.cmp_stride as f32;
    b.comment("scores[i] += p_c(t,h,j) * overlap(j,i) / d, summed over the group");
    for_range(b, imm(0), imm(g), 1, |b, gi| {
        let hq = b.op3(RegClass::B32, "mad.lo.u32", h.into(), imm(g), gi.into());
        let th = b.op3(
            RegClass::B32,
            "mad.lo.u32",
            tok.into(),
            imm(i64::from(dims.hq)),
            hq.into(),
        );
        let qoff = b.op2(
            RegClass::B32,
            "mul.lo.u32",
            th.into(),
            imm(i64::from(dims.dqk)),
        );
        let qraw = load_vec(b, qb, qoff, lane, dims.dqk, Elem::of(dims.dtype));
        let q: Vec<Reg> = qraw
            .iter()
            .map(|r| b.op2(RegClass::F32, "mul.f32", (*r).into(), fimm(dims.scale_log2)))
            .collect();
        let lse = load(b, lseb, th, Elem::F32);
        for_range(b, imm(0), nvis.into(), 1, |b, j| {
            let slot = b.op2(RegClass::B32, "add.u32", s.into(), j.into());
            let sh = b.op3(RegClass::B32, "mad.lo.u32", slot.into(), imm(hh), h.into());
            let koff = b.op2(
                RegClass::B32,
                "mul.lo.u32",
                sh.into(),
                imm(i64::from(dims.dqk)),
            );
            let k = load_vec(b, kcb, koff, lane, dims.dqk, Elem::F32);
            let x = warp_dot(b, &q, &k);
            let dx = b.op2(RegClass::F32, "sub.f32", x.into(), lse.into());
            let pr = b.op1(RegClass::F32, "ex2.approx.ftz.f32", dx.into());
            let pw = b.op2(RegClass::F32, "mul.f32", pr.into(), fimm(inv_d));
            let skip = b.label();
            b.bra_if(lane0, true, skip);
            spread_over_blocks(b, p, j, pw, nbc, sbase);
            b.place(skip);
        });
    });
}
