//! Selected-block attention on tensor cores (bf16/f16 inputs, f32 accumulation).
//!
//! One warp per (token, kv head): the G ≤ 16 query heads of the group are the 16 rows of the
//! `mma.sync.m16n8k16` tiles (rows ≥ G are zero and never stored), so every selected key is read
//! once per group instead of once per head. A thread block holds
//! [`GpuVariant::select_tokens`] consecutive tokens of one kv head (independent warps, each with
//! its own shared-memory slice) and copies with `cp.async.ca`, so the blocks several of them
//! select (the forced first and local blocks, and neighbours' common picks) are served from L1
//! after the first read instead of from L2 (the kernel is L2-bandwidth-bound). Keys and values
//! of a chunk of [`GpuVariant::select_chunk`] tokens (a multiple of 16; the default's choice is
//! measured in BENCHMARKS.md, GPU version 3) are staged into the warp's slice of shared memory
//! with `cp.async` (rows past the block end are zero-filled), read back with `ldmatrix` (K) and
//! `ldmatrix.trans` (V);
//! S = Q·Kᵀ and O += P·V run on the tensor cores and the online softmax (base 2) works on the
//! accumulator fragments (`tc_common::chunk_step`).
//!
//! Fused combine (`GpuVariant::fuse_combine = 1`, when this is the last branch stage): the
//! epilogue also computes `o = Σ_b g_b·o_b` for the elements the warp stores
//! (`tc_common::store_o_combined`), reading the other branches' outputs (written by earlier
//! kernels of the stream) and the gates, and writes `o`; the separate combine kernel is then not
//! launched. The branch's own output `o_<b>` is still written (it is a result of the call).

use nsac_dsl::problem::DType;

use crate::ptx::SEG;
use crate::ptx::builder::{KernelBuilder, Reg, RegClass, imm, mem, sym};
use crate::ptx::launch::Geometry;
use crate::ptx::lowering::{Dims, KvNames};
use crate::ptx::variant::GpuVariant;

use super::combine::Fused;
use super::common::{
    bound_threads, declare_buffers, declare_scalar, for_range, params_of, segment,
};
use super::tc_common::{
    Attn, BlockIds, ChunkMath, CpRows, KeyMask, block_ids, cp_stage, k_lane_offset, lanes, load_q,
    mma_ops, row_stride, store_o, store_o_combined, v_lane_offset,
};
use super::{KernelOut, Launch, Scalar};

/// Whether the tensor-core kernels handle `dims` (else the scalar kernel is used).
pub fn eligible(dims: &Dims) -> bool {
    matches!(dims.dtype, DType::Bf16 | DType::F16)
        && dims.group <= 16
        && dims.dqk.is_multiple_of(16)
        && dims.dv.is_multiple_of(16)
        && dims.dqk <= 128
        && dims.dv <= 128
}

/// Shared bytes per warp: `chunk` staged K and V rows.
fn warp_bytes(dims: &Dims, chunk: u32) -> u32 {
    chunk * (row_stride(dims.dqk) + row_stride(dims.dv))
}

/// The buffers of the selected attention.
pub struct SelectedIo<'a> {
    pub q: &'a str,
    pub kv: &'a KvNames,
    pub idx: &'a str,
    pub out: &'a str,
}

/// Generates the tensor-core attention kernel of a select branch over the chosen blocks (same
/// parameters and outputs as the scalar kernel), with `variant.select_tokens` warps per thread
/// block and `variant.select_chunk` keys per staged chunk; with `fused`, the kernel also
/// computes the combine in its epilogue (extra parameters [`Fused::params`]).
pub fn attend_selected_tc(
    name: &str,
    io: &SelectedIo<'_>,
    (block, top): (u32, u32),
    dims: &Dims,
    variant: &GpuVariant,
    fused: Option<&Fused>,
) -> KernelOut {
    let (warps, chunk) = (variant.select_tokens, variant.select_chunk);
    let mut b = KernelBuilder::new(name);
    b.use_dynamic_shared();
    bound_threads(&mut b, 32 * warps);
    let mut params: Vec<String> = vec![
        SEG.into(),
        io.q.to_string(),
        io.kv.k.clone(),
        io.kv.v.clone(),
        io.idx.to_string(),
        io.out.to_string(),
    ];
    let syms = declare_buffers(&mut b, &params);
    let fused_params = fused.map(|f| f.declare(&mut b, dims));
    params.extend(fused.map(Fused::params).unwrap_or_default());
    let ntok_sym = declare_scalar(&mut b, Scalar::Ntok);
    let (mma, cvt) = mma_ops(dims.dtype);
    let (g, hh, dqk, dv) = (dims.group, dims.h, dims.dqk, dims.dv);

    b.comment("block = (token block, kv head), the last token blocks first; warp w = token t0 + w");
    b.comment("(one warp per (token, kv head); lane = 4*gq + tq)");
    let ntok = b.load_u32_param(&ntok_sym);
    let BlockIds {
        warp: wib,
        lane,
        h,
        token_block: tb,
        ..
    } = block_ids(&mut b, hh, ntok, warps);
    let tok = b.op3(
        RegClass::B32,
        "mad.lo.u32",
        tb.into(),
        imm(i64::from(warps)),
        wib.into(),
    );
    let exit = b.label();
    let past = b.setp("ge.u32", tok.into(), ntok.into());
    b.bra_if(past, false, exit);
    let row = b.op3(
        RegClass::B32,
        "mad.lo.u32",
        tok.into(),
        imm(i64::from(hh)),
        h.into(),
    );
    let ptrs: Vec<Reg> = syms.iter().map(|s| b.load_ptr_param(s)).collect();
    let (seg, qb, kb, vb, ib, ob) = (ptrs[0], ptrs[1], ptrs[2], ptrs[3], ptrs[4], ptrs[5]);
    let (s, e) = segment(&mut b, seg, tok, dims.seg_cols);
    let end = if dims.causal {
        b.op2(RegClass::B32, "add.u32", tok.into(), imm(1))
    } else {
        e
    };
    let l = lanes(&mut b, lane, g);
    let smem0 = b.op1(RegClass::B32, "mov.u32", sym("smem"));
    let ks = b.op3(
        RegClass::B32,
        "mad.lo.u32",
        wib.into(),
        imm(i64::from(warp_bytes(dims, chunk))),
        smem0.into(),
    );
    let vs = b.op2(
        RegClass::B32,
        "add.u32",
        ks.into(),
        imm(i64::from(chunk * row_stride(dqk))),
    );

    b.comment("Q fragments: rows gq, gq+8 of the group (0 past G), columns 2tq(+8) per k-step");
    let qrow = b.op3(
        RegClass::B32,
        "mad.lo.u32",
        row.into(),
        imm(i64::from(g)),
        l.gq.into(),
    );
    let qf = load_q(&mut b, qb, qrow, &l, dqk);
    b.comment("accumulators and softmax state");
    let st = Attn::new(&mut b, dv);
    b.comment("ldmatrix lane addresses");
    let ko = k_lane_offset(&mut b, lane, row_stride(dqk));
    let kaddr = b.op2(RegClass::B32, "add.u32", ks.into(), ko.into());
    let vo = v_lane_offset(&mut b, lane, row_stride(dv));
    let vaddr = b.op2(RegClass::B32, "add.u32", vs.into(), vo.into());
    let cm = ChunkMath {
        chunk,
        mma: &mma,
        cvt,
        qf: &qf,
        parts: &[0],
        dqk,
        dv,
        scale_log2: dims.scale_log2,
        tq2: l.tq2,
    };
    let krows = CpRows {
        chunk,
        gbase: kb,
        row_mul: hh,
        sub: h,
        dim: dqk,
        sdst: ks,
        keep_l1: true,
    };
    let vrows = CpRows {
        chunk,
        gbase: vb,
        row_mul: hh,
        sub: h,
        dim: dv,
        sdst: vs,
        keep_l1: true,
    };

    b.comment("chosen blocks in ascending order, -1 padded");
    let ioff = b.op2(RegClass::B32, "mul.lo.u32", row.into(), imm(i64::from(top)));
    let lb = i64::from(block);
    for_range(&mut b, imm(0), imm(i64::from(top)), 1, |b, n| {
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
        for_range(b, lo.into(), hi.into(), i64::from(chunk), |b, c0| {
            b.comment("stage K and V rows c0 .. c0+CHUNK (zero past hi)");
            b.ins("bar.warp.sync", [imm(-1)]);
            cp_stage(b, &krows, lane, 32, c0, hi);
            cp_stage(b, &vrows, lane, 32, c0, hi);
            b.ins("cp.async.commit_group", []);
            b.ins("cp.async.wait_group", [imm(0)]);
            b.ins("bar.warp.sync", [imm(-1)]);
            super::tc_common::chunk_step(b, &cm, &st, kaddr, vaddr, c0, KeyMask::Below(hi));
        });
        b.place(skip);
    });
    match &fused_params {
        None => {
            store_o(&mut b, &st, ob, qrow, &l, dv, None);
        }
        Some(fp) => {
            // the combine's pointers are loaded here, not kept through the loop
            let terms = fp.load(&mut b);
            store_o_combined(&mut b, &st, ob, qrow, &l, dv, None, &terms);
        }
    }
    b.place(exit);
    b.ins("ret", []);
    let shared = warps * warp_bytes(dims, chunk);
    let epilogue = if fused.is_some() {
        "; epilogue: o = sum of g_b*o_b over the combined branches (combine fused)"
    } else {
        ""
    };
    KernelOut {
        ptx: b.finish(),
        params: params_of(&params, &[Scalar::Ntok]),
        max_regs: b.reg_cap(),
        launch: Launch {
            geometry: Geometry::new(1, warps, hh, warps * 32, shared),
            formula: format!(
                "grid = ceil(B*T / {warps}) * H, block = {}, shared = {warps}*{chunk}*(2*Dqk+16 + 2*Dv+16) bytes: {warps} consecutive tokens of one kv head per block, one warp per (token, kv head), tensor cores{epilogue}",
                warps * 32,
            ),
        },
    }
}
