//! Compressed attention on tensor cores: a thread block of [`GpuVariant::compress_tokens`] warps
//! handles that many consecutive tokens of one kv head (one warp per token, the G ≤ 16 query heads as the rows of
//! the `mma.sync.m16n8k16` tiles). Neighbouring tokens see almost the same compressed tokens, so
//! each chunk of [`CHUNK`] compressed keys and values is copied into shared memory once for the
//! whole block with `cp.async` (from the 16-bit scratch the pool kernel writes: keys as hi + lo
//! halves so the log-sum-exp that scores the selection stays f32-accurate, values rounded to the
//! input dtype), into a ring of [`GpuVariant::compress_stages`] buffers so the copies of the next
//! S − 1 chunks overlap the math of chunk i (S = 2, the default: double buffering; S = 3 costs
//! one more buffer, `CHUNK·(2·(2·Dqk+16) + 2·Dv+16)` bytes, of shared memory). Each warp
//! masks the keys outside its own visible range and skips chunks that hold none of them; the
//! block visits only chunks some warp needs (`tc_common::shared_chunk_loop`), so a block whose
//! tokens span segments skips the slots between them. The registers per thread are capped at
//! [`GpuVariant::compress_max_regs`] (0: only by the block size, through `.maxntid`), and never
//! above what the block size lets launch.

use crate::ptx::SEG;
use crate::ptx::builder::{KernelBuilder, Reg, RegClass, imm, mem, sym};
use crate::ptx::launch::Geometry;
use crate::ptx::lowering::{Compressed, Dims, KvNames};
use crate::ptx::variant::GpuVariant;

use super::common::{
    bound_threads, declare_buffers, declare_scalar, params_of, segment, segment_column,
    visible_compressed,
};
use super::tc_common::{
    Attn, CHUNK, ChunkMath, CpRows, KeyMask, SharedChunks, WarpToken, block_ids, block_last_token,
    buffering, chunk_step, cp_stage, k_lane_offset, lanes, load_q, mma_ops, ranges_bytes,
    row_stride, shared_chunk_loop, store_o, v_lane_offset, warp_token,
};
use super::{KernelOut, Launch, Scalar};

/// Bytes of one staging buffer: K hi rows, K lo rows, V rows.
fn buf_bytes(dims: &Dims) -> u32 {
    CHUNK * (2 * row_stride(dims.dqk) + row_stride(dims.dv))
}

/// The first visible slot and one past the last visible slot of token `tok` (kv head
/// independent): `(cb, cb + nvis)` with `cb` the first slot of its segment's compressed tokens,
/// plus `nvis`.
fn visible_slots(
    b: &mut KernelBuilder,
    seg: Reg,
    tok: Reg,
    keys: &Compressed,
    (block, stride): (u32, u32),
    dims: &Dims,
) -> (Reg, Reg, Reg) {
    let (s, e) = segment(b, seg, tok, dims.seg_cols);
    let pos = b.op2(RegClass::B32, "sub.u32", tok.into(), s.into());
    let len = b.op2(RegClass::B32, "sub.u32", e.into(), s.into());
    let nvis = visible_compressed(b, pos, len, block, stride, dims.causal);
    let cb = segment_column(b, seg, tok, dims.seg_cols, keys.column);
    let end = b.op2(RegClass::B32, "add.u32", cb.into(), nvis.into());
    (cb, end, nvis)
}

/// The buffers of the compressed attention: queries, the compressed tokens' 16-bit copies
/// (`half`), the output and (when scored) the log-sum-exp.
pub struct CompressedIo<'a> {
    pub q: &'a str,
    pub keys: &'a Compressed,
    pub half: &'a KvNames,
    pub out: &'a str,
    pub lse: Option<&'a str>,
}

/// Generates the tensor-core compressed-attention kernel of a compress branch (same outputs
/// as the scalar kernel; reads the 16-bit copies), with `variant.compress_tokens` warps per
/// thread block and `variant.compress_max_regs` registers per thread at most.
pub fn attend_compressed_tc(
    name: &str,
    io: &CompressedIo<'_>,
    (block, stride): (u32, u32),
    dims: &Dims,
    variant: &GpuVariant,
) -> KernelOut {
    let write_lse = io.lse.is_some();
    let warps = variant.compress_tokens;
    let stages = variant.compress_stages;
    let mut b = KernelBuilder::new(name);
    b.use_dynamic_shared();
    // The default cap of 128 fits two blocks of 8 warps per multiprocessor instead of one
    // (ptxas needs ~163 registers uncapped; the cap costs a few spilled bytes). A cap above
    // what the block size allows is lowered to it by `bound_threads`.
    if variant.compress_max_regs > 0 {
        b.max_regs(variant.compress_max_regs);
    }
    bound_threads(&mut b, 32 * warps);
    let mut params: Vec<String> = vec![
        SEG.into(),
        io.q.to_string(),
        io.half.k.clone(),
        io.half.v.clone(),
        io.out.to_string(),
    ];
    params.extend(io.lse.map(str::to_string));
    let syms = declare_buffers(&mut b, &params);
    let ntok_sym = declare_scalar(&mut b, Scalar::Ntok);
    let (mma, cvt) = mma_ops(dims.dtype);
    let (g, hh, dqk, dv) = (dims.group, dims.h, dims.dqk, dims.dv);
    let nthreads = 32 * warps;

    b.comment("block = (token block, kv head), the longest (last) token blocks first;");
    b.comment("warp w = token t0 + w (clamped to the last token, stores only when live)");
    let ntok = b.load_u32_param(&ntok_sym);
    let ids = block_ids(&mut b, hh, ntok, warps);
    let (tid, wib, lane, h) = (ids.tid, ids.warp, ids.lane, ids.h);
    let WarpToken { t0, live, tok } = warp_token(&mut b, &ids, warps);
    let tlast = block_last_token(&mut b, t0, warps, ids.last);
    let ptrs: Vec<Reg> = syms.iter().map(|s| b.load_ptr_param(s)).collect();
    let (seg, qb, kb, vb, ob) = (ptrs[0], ptrs[1], ptrs[2], ptrs[3], ptrs[4]);
    b.comment("this warp's visible slots s .. wend; hi = the block's last (largest) end");
    let bs = (block, stride);
    let (s, wend, nvis) = visible_slots(&mut b, seg, tok, io.keys, bs, dims);
    let (_, hi, _) = visible_slots(&mut b, seg, tlast, io.keys, bs, dims);

    let l = lanes(&mut b, lane, g);
    let row = b.op3(
        RegClass::B32,
        "mad.lo.u32",
        tok.into(),
        imm(i64::from(hh)),
        h.into(),
    );
    let qrow = b.op3(
        RegClass::B32,
        "mad.lo.u32",
        row.into(),
        imm(i64::from(g)),
        l.gq.into(),
    );
    b.comment("Q fragments: rows gq, gq+8 of the group (0 past G), columns 2tq(+8) per k-step");
    let qf = load_q(&mut b, qb, qrow, &l, dqk);
    b.comment("accumulators and softmax state");
    let st = Attn::new(&mut b, dv);

    let smem0 = b.op1(RegClass::B32, "mov.u32", sym("smem"));
    let lo_off = i64::from(CHUNK * row_stride(dqk));
    let v_off = 2 * lo_off;
    let ko = k_lane_offset(&mut b, lane, row_stride(dqk));
    let kaddr0 = b.op2(RegClass::B32, "add.u32", smem0.into(), ko.into());
    let vo = v_lane_offset(&mut b, lane, row_stride(dv));
    let vs0 = b.op2(RegClass::B32, "add.u32", vo.into(), imm(v_off));
    let vaddr0 = b.op2(RegClass::B32, "add.u32", smem0.into(), vs0.into());
    let h2 = b.op2(RegClass::B32, "shl.b32", h.into(), imm(1));
    let h21 = b.op2(RegClass::B32, "add.u32", h2.into(), imm(1));

    // Issues the copies of chunk c0 into the buffer at byte offset `off` (all threads of the
    // block; the caller commits the group).
    let stage = |b: &mut KernelBuilder, c0: Reg, off: Reg| {
        let sb = b.op2(RegClass::B32, "add.u32", smem0.into(), off.into());
        let sl = b.op2(RegClass::B32, "add.u32", sb.into(), imm(lo_off));
        let sv = b.op2(RegClass::B32, "add.u32", sb.into(), imm(v_off));
        for (sub, sdst) in [(h2, sb), (h21, sl)] {
            let rows = CpRows {
                chunk: CHUNK,
                gbase: kb,
                row_mul: 2 * hh,
                sub,
                dim: dqk,
                sdst,
                keep_l1: false,
            };
            cp_stage(b, &rows, tid, nthreads, c0, hi);
        }
        let rows = CpRows {
            chunk: CHUNK,
            gbase: vb,
            row_mul: hh,
            sub: h,
            dim: dv,
            sdst: sv,
            keep_l1: false,
        };
        cp_stage(b, &rows, tid, nthreads, c0, hi);
    };

    let cm = ChunkMath {
        chunk: CHUNK,
        mma: &mma,
        cvt,
        qf: &qf,
        parts: &[0, lo_off],
        dqk,
        dv,
        scale_log2: dims.scale_log2,
        tq2: l.tq2,
    };
    let mask = KeyMask::Range { lo: s, n: nvis };
    let sc = SharedChunks {
        chunk: CHUNK,
        ranges: b.op2(
            RegClass::B32,
            "add.u32",
            smem0.into(),
            imm(i64::from(stages * buf_bytes(dims))),
        ),
        nwarps: warps,
        buf_bytes: buf_bytes(dims),
        stages,
        wib,
        lane,
        s,
        wend,
    };
    let ahead = if stages == 2 {
        "the next needed chunk".to_string()
    } else {
        format!("the next {} needed chunks", stages - 1)
    };
    b.comment(&format!(
        "{} chunks: copy {ahead} while computing this one",
        buffering(stages)
    ));
    shared_chunk_loop(&mut b, &sc, stage, |b, c0, bufoff| {
        let ka = b.op2(RegClass::B32, "add.u32", kaddr0.into(), bufoff.into());
        let va = b.op2(RegClass::B32, "add.u32", vaddr0.into(), bufoff.into());
        chunk_step(b, &cm, &st, ka, va, c0, mask);
    });
    let sums = store_o(&mut b, &st, ob, qrow, &l, dv, Some(live));
    if write_lse {
        b.comment("lse in base 2 (-inf for an empty row)");
        let lb = ptrs[ptrs.len() - 1];
        let la = b.addr(lb, qrow, 4);
        for (half, sum) in sums.iter().enumerate() {
            let lg = b.op1(RegClass::F32, "lg2.approx.ftz.f32", (*sum).into());
            let lse = b.op2(RegClass::F32, "add.f32", st.m[half].into(), lg.into());
            let ok = b.op2(
                RegClass::Pred,
                "and.pred",
                l.rowok[half].into(),
                live.into(),
            );
            b.ins_if(
                ok,
                false,
                "st.global.f32",
                [mem(la, 32 * half as i64), lse.into()],
            );
        }
    }
    b.ins("ret", []);
    KernelOut {
        ptx: b.finish(),
        params: params_of(&params, &[Scalar::Ntok]),
        max_regs: b.reg_cap(),
        launch: Launch {
            geometry: Geometry::new(
                1,
                warps,
                hh,
                nthreads,
                stages * buf_bytes(dims) + ranges_bytes(warps),
            ),
            formula: format!(
                "grid = ceil(B*T / {warps}) * H, block = {nthreads}, shared = {stages}*{CHUNK}*(2*(2*Dqk+16) + 2*Dv+16) + 8*{warps} bytes: {warps} consecutive tokens of one kv head per block, one warp per token, tensor cores, {} cp.async chunks",
                buffering(stages)
            ),
        },
    }
}
