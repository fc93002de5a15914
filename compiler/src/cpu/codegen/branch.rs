//! One generated driver per branch stage and per work item (b, segment, kv head, position t):
//! pooling, compressed attention, block scoring + top-k, selected attention, window attention
//! and the gated combine. Attention drivers call the shared tile routines of `tile.rs`.

use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::types::{F32, F32X4, I32, I64};
use cranelift_codegen::ir::{FuncRef, InstBuilder, Value};

use super::{Consts, Emit, mem};
use crate::cpu::schedule::TopKParams;
use crate::ir::{Pool, PoolKind};

/// Indices into the callee list every attention driver is given.
pub const QK: usize = 0;
pub const SOFTMAX: usize = 1;
pub const PV: usize = 2;
pub const FINISH: usize = 3;

/// Sets m = −∞, ℓ = 0 and O = 0 for the G rows.
fn init_rows(e: &mut Emit, c: &Consts, m: Value, l: Value, o: Value) {
    let start = e.int(0);
    let g = e.int(c.g as i64);
    e.for_range(start, g, 1, |e, r| {
        let ninf = e.f32(f32::NEG_INFINITY);
        let zero = e.f32(0.0);
        let ma = e.addr(m, r, 4);
        e.store(ninf, ma, 0);
        let la = e.addr(l, r, 4);
        e.store(zero, la, 0);
        let zv = e.splat(0.0);
        let orow = e.addr(o, r, (c.dvp * 4) as i64);
        for j in 0..c.dvp / 4 {
            e.store(zv, orow, (j * 16) as i32);
        }
    });
}

/// Attends the G rows to keys `[lo, hi)` of a packed K/V (one tile; `lo` need not be aligned).
#[allow(clippy::too_many_arguments)]
fn attend_range(
    e: &mut Emit,
    c: &Consts,
    f: &[FuncRef],
    scratch: [Value; 5],
    kp: Value,
    vp: Value,
    lo: Value,
    hi: Value,
) {
    let [q, s, m, l, o] = scratch;
    let a4 = e.b.ins().band_imm_s(lo, !3);
    let span = e.b.ins().isub(hi, a4);
    let span = e.b.ins().iadd_imm_s(span, 3);
    let nk4 = e.b.ins().sshr_imm_s(span, 2);
    let grp = e.b.ins().sshr_imm_s(a4, 2);
    let kt = e.addr(kp, grp, (c.dqk * 16) as i64);
    e.b.ins().call(f[QK], &[q, kt, nk4, s, q, q, q]);
    let rlo = e.b.ins().isub(lo, a4);
    let rhi = e.b.ins().isub(hi, a4);
    e.b.ins().call(f[SOFTMAX], &[s, nk4, rlo, rhi, m, l, o]);
    let vt = e.addr(vp, a4, (c.dvp * 4) as i64);
    let nk = e.b.ins().ishl_imm_s(nk4, 2);
    e.b.ins().call(f[PV], &[s, vt, nk, o, s, s, s]);
}

/// Bytes between consecutive chunks of the scored compressed attention's P scratch: one key
/// tile of G rows (`[chunk][G][s_stride]`, see `cpu::compressed_scratch`).
fn chunk_bytes(c: &Consts) -> i64 {
    (c.g * c.s_stride * 4) as i64
}

/// Number of key tiles (chunks) of `key_tile` tokens covering `n` tokens: ⌈n / key_tile⌉.
fn chunk_count(e: &mut Emit, c: &Consts, n: Value) -> Value {
    let kt = c.variant.key_tile as i64;
    let n1 = e.b.ins().iadd_imm_s(n, kt - 1);
    e.b.ins().udiv_imm_s(n1, kt)
}

/// `cmp_<c>(q, kcp, vcp, nvis, s, mc, m, l, o, out)`: compressed attention over the first
/// `nvis` pooled tokens, an online softmax over key tiles of `key_tile` tokens (as `win_<w>`).
/// When `scored` (a select branch reads its probabilities), every chunk keeps its P in its own
/// tile of `s` (chunk-major `[chunk][G][s_stride]`) and the running maxima after it in
/// `mc[chunk][G]`; a final pass scales chunk `k`'s P by `2^(m_k − m)/ℓ`, so that `s` holds
/// exactly the normalized probabilities `2^(S − m)/ℓ` the block scoring reads (and `l` holds
/// 1/ℓ afterwards). Otherwise every chunk reuses the one tile at `s` and `mc` is not read.
pub fn compressed(
    e: &mut Emit,
    c: &Consts,
    f: &[FuncRef],
    p: &[Value],
    scored: bool,
    lse: Option<Value>,
) {
    let (q, kcp, vcp, nvis, s, mc, m, l, o, out) =
        (p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], p[9]);
    init_rows(e, c, m, l, o);
    let kt = c.variant.key_tile as i64;
    let nch = chunk_count(e, c, nvis);
    let zero = e.int(0);
    e.for_range(zero, nch, 1, |e, ch| {
        let lo = e.b.ins().imul_imm_s(ch, kt);
        let hi = e.b.ins().iadd_imm_s(lo, kt);
        let hi = e.min(hi, nvis);
        let sc = if scored {
            e.addr(s, ch, chunk_bytes(c))
        } else {
            s
        };
        attend_range(e, c, f, [q, sc, m, l, o], kcp, vcp, lo, hi);
        if scored {
            let dst = e.addr(mc, ch, (c.g * 4) as i64);
            for j in 0..c.g / 4 {
                let x = e.load4(m, (j * 16) as i32);
                e.store(x, dst, (j * 16) as i32);
            }
            for r in (c.g / 4 * 4)..c.g {
                let x = e.load1(m, (r * 4) as i32);
                e.store(x, dst, (r * 4) as i32);
            }
        }
    });
    e.b.ins().call(f[FINISH], &[o, l, out]);
    if let Some(lse) = lse {
        super::grad::store_lse(e, c, m, l, lse);
    }
    if scored {
        // ℓ is not read after `finish`: keep 1/ℓ there (0 for an empty row), one division per
        // row instead of one per row and chunk.
        let start = e.int(0);
        let g = e.int(c.g as i64);
        e.for_range(start, g, 1, |e, r| {
            let (inv, _) = super::tile::inverse_row_sum(e, l, r);
            let la = e.addr(l, r, 4);
            e.store(inv, la, 0);
        });
        e.for_range(zero, nch, 1, |e, ch| {
            let lo = e.b.ins().imul_imm_s(ch, kt);
            let hi = e.b.ins().iadd_imm_s(lo, kt);
            let hi = e.min(hi, nvis);
            let n = e.b.ins().isub(hi, lo);
            let n3 = e.b.ins().iadd_imm_s(n, 3);
            let nk4 = e.b.ins().sshr_imm_s(n3, 2);
            let tile = e.addr(s, ch, chunk_bytes(c));
            let mrow = e.addr(mc, ch, (c.g * 4) as i64);
            let start = e.int(0);
            let g = e.int(c.g as i64);
            e.for_range(start, g, 1, |e, r| {
                let ia = e.addr(l, r, 4);
                let inv = e.load1(ia, 0);
                let mca = e.addr(mrow, r, 4);
                let m_chunk = e.load1(mca, 0);
                let ma = e.addr(m, r, 4);
                let m_final = e.load1(ma, 0);
                // m_chunk ≤ m_final (running maxima only grow), so 2^(m_chunk − m_final) ≤ 1;
                // a row that saw only −∞ has ℓ = 0, hence factor 0 (vexp2 maps NaN to 0 too).
                let diff = e.b.ins().fsub(m_chunk, m_final);
                let diffv = e.b.ins().splat(F32X4, diff);
                let alphav = e.vexp2(diffv);
                let invv = e.b.ins().splat(F32X4, inv);
                let factor = e.b.ins().fmul(alphav, invv);
                let row = e.addr(tile, r, (c.s_stride * 4) as i64);
                let pinned = e.materialize(&[row, factor]);
                let (row, factor) = (pinned[0], pinned[1]);
                let z = e.int(0);
                e.for_range(z, nk4, 1, |e, col| {
                    let a = e.addr(row, col, 16);
                    let x = e.load4(a, 0);
                    let y = e.b.ins().fmul(x, factor);
                    e.store(y, a, 0);
                });
            });
        });
    }
}

/// `sel_<s>(q, kp, vp, idx, count, t, len, s, m, l, o, out)`: online softmax over the
/// keys of the `count` chosen blocks `idx[0..count]`, each block one tile.
pub fn selected(
    e: &mut Emit,
    c: &Consts,
    f: &[FuncRef],
    p: &[Value],
    block: usize,
    lse: Option<Value>,
) {
    let (q, kp, vp, idx, count, t, len, s, m, l, o, out) = (
        p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], p[9], p[10], p[11],
    );
    init_rows(e, c, m, l, o);
    let limit = if c.causal {
        e.b.ins().iadd_imm_s(t, 1)
    } else {
        len
    };
    let start = e.int(0);
    e.for_range(start, count, 1, |e, k| {
        let ia = e.addr(idx, k, 4);
        let i = e.b.ins().load(I32, mem(), ia, 0);
        let i = e.b.ins().sextend(I64, i);
        let lo = e.b.ins().imul_imm_s(i, block as i64);
        let hi = e.b.ins().iadd_imm_s(lo, block as i64);
        let hi = e.min(hi, limit);
        attend_range(e, c, f, [q, s, m, l, o], kp, vp, lo, hi);
    });
    e.b.ins().call(f[FINISH], &[o, l, out]);
    if let Some(lse) = lse {
        super::grad::store_lse(e, c, m, l, lse);
    }
}

/// `win_<w>(q, kp, vp, t, len, s, m, l, o, out)`: online softmax over the window,
/// in tiles of `key_tile` keys aligned to 4.
pub fn window(
    e: &mut Emit,
    c: &Consts,
    f: &[FuncRef],
    p: &[Value],
    size: usize,
    lse: Option<Value>,
) {
    let (q, kp, vp, t, len, s, m, l, o, out) =
        (p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], p[9]);
    init_rows(e, c, m, l, o);
    let t1 = e.b.ins().iadd_imm_s(t, 1);
    let lo = e.b.ins().iadd_imm_s(t1, -(size as i64));
    let zero = e.int(0);
    let lo = e.max(lo, zero);
    let hi = if c.causal {
        t1
    } else {
        let h = e.b.ins().iadd_imm_s(t, size as i64);
        e.min(h, len)
    };
    let kt = c.variant.key_tile as i64;
    let a4 = e.b.ins().band_imm_s(lo, !3);
    e.for_range(a4, hi, kt, |e, base| {
        let end = e.b.ins().iadd_imm_s(base, kt);
        let end = e.min(end, hi);
        let tlo = e.max(lo, base);
        attend_range(e, c, f, [q, s, m, l, o], kp, vp, tlo, end);
    });
    e.b.ins().call(f[FINISH], &[o, l, out]);
    if let Some(lse) = lse {
        super::grad::store_lse(e, c, m, l, lse);
    }
}

/// `topk_<s>(p, nvis, t, len, scores, idx) -> count`: block scores from the scoring
/// branch's normalized probabilities `p` (chunk-major G rows per key tile, as `compressed`
/// leaves them), forced blocks = +∞, then `count = min(top, nb)` rounds
/// of an arg-max scan (strict `>`, ascending index: ties go to the lower block); chosen blocks
/// are marked −1 and written to `idx` in ascending order, the rest of `idx` is −1.
pub fn topk(e: &mut Emit, c: &Consts, p: &[Value], sb: &TopKParams) -> Value {
    let (pp, nvis, t, len, scores, idx) = (p[0], p[1], p[2], p[3], p[4], p[5]);
    let bl = sb.block as i64;
    let nb = if c.causal {
        let x = e.b.ins().udiv_imm_s(t, bl);
        e.b.ins().iadd_imm_s(x, 1)
    } else {
        let x = e.b.ins().iadd_imm_s(len, bl - 1);
        e.b.ins().udiv_imm_s(x, bl)
    };
    let zero = e.int(0);
    e.for_range(zero, nb, 1, |e, i| {
        let a = e.addr(scores, i, 4);
        let z = e.f32(0.0);
        e.store(z, a, 0);
    });
    // Scores: Σ_rows p[r][j] spread over the blocks token j overlaps, weighted |overlap|/d.
    let (cl, cd) = (sb.cmp_block as i64, sb.cmp_stride as i64);
    let inv_d = e.f32(1.0 / sb.cmp_stride as f32);
    let nb1 = e.b.ins().iadd_imm_s(nb, -1);
    // The probabilities are chunk-major (`[chunk][G][s_stride]`, see `compressed`): loop over
    // chunks, then over the chunk's tokens, whose G rows are a constant stride apart.
    let kt = c.variant.key_tile as i64;
    let nch = chunk_count(e, c, nvis);
    e.for_range(zero, nch, 1, |e, ch| {
        let j0 = e.b.ins().imul_imm_s(ch, kt);
        let j1 = e.b.ins().iadd_imm_s(j0, kt);
        let j1 = e.min(j1, nvis);
        // Token j of this chunk is column j − j0 of its tile: `base + 4·j`.
        let tile = e.addr(pp, ch, chunk_bytes(c));
        let back = e.b.ins().imul_imm_s(j0, -4);
        let base = e.b.ins().iadd(tile, back);
        e.for_range(j0, j1, 1, |e, j| {
            let z = e.f32(0.0);
            let pj = e.var(F32, z);
            let col = e.addr(base, j, 4);
            for r in 0..c.g {
                let x = e.load1(col, (r * c.s_stride * 4) as i32);
                let cur = e.b.use_var(pj);
                let n = e.b.ins().fadd(cur, x);
                e.b.def_var(pj, n);
            }
            let pjv = e.b.use_var(pj);
            let w = e.b.ins().fmul(pjv, inv_d);
            let start = e.b.ins().imul_imm_s(j, cd);
            let end = e.b.ins().iadd_imm_s(start, cl);
            let i0 = e.b.ins().udiv_imm_s(start, bl);
            let last = e.b.ins().iadd_imm_s(end, -1);
            let i1 = e.b.ins().udiv_imm_s(last, bl);
            let i1 = e.min(i1, nb1);
            let i1p = e.b.ins().iadd_imm_s(i1, 1);
            e.for_range(i0, i1p, 1, |e, i| {
                let blo = e.b.ins().imul_imm_s(i, bl);
                let bhi = e.b.ins().iadd_imm_s(blo, bl);
                let a = e.max(start, blo);
                let b = e.min(end, bhi);
                let ov = e.b.ins().isub(b, a);
                let ovf = e.int_to_f32(ov);
                let sa = e.addr(scores, i, 4);
                let cur = e.load1(sa, 0);
                let n = e.fma(w, ovf, cur);
                e.store(n, sa, 0);
            });
        });
    });
    // Forced blocks.
    let inf = e.f32(f32::INFINITY);
    let kf = e.int(sb.keep_first as i64);
    let kf = e.min(kf, nb);
    e.for_range(zero, kf, 1, |e, i| {
        let a = e.addr(scores, i, 4);
        e.store(inf, a, 0);
    });
    if sb.keep_last > 0 {
        let tb = e.b.ins().udiv_imm_s(t, bl);
        let lo = e.b.ins().iadd_imm_s(tb, 1 - sb.keep_last as i64);
        let lo = e.max(lo, zero);
        let hi = e.b.ins().iadd_imm_s(tb, 1);
        let hi = e.min(hi, nb);
        e.for_range(lo, hi, 1, |e, i| {
            let a = e.addr(scores, i, 4);
            e.store(inf, a, 0);
        });
    }
    if sb.within_block.is_some() {
        // Hierarchical: the executor chooses among the blocks inside the outer choice.
        return nb;
    }
    // Partial selection.
    let top = e.int(sb.top as i64);
    let count = e.min(top, nb);
    let chosen = e.f32(-1.0);
    e.for_range(zero, count, 1, |e, _k| {
        let m1 = e.int(0);
        let best = e.var(I64, m1);
        let init = e.f32(-2.0);
        let bestv = e.var(F32, init);
        let z = e.int(0);
        e.for_range(z, nb, 1, |e, i| {
            let a = e.addr(scores, i, 4);
            let x = e.load1(a, 0);
            let bv = e.b.use_var(bestv);
            let gt = e.b.ins().fcmp(FloatCC::GreaterThan, x, bv);
            let bi = e.b.use_var(best);
            let nbi = e.b.ins().select(gt, i, bi);
            let nbv = e.b.ins().select(gt, x, bv);
            e.b.def_var(best, nbi);
            e.b.def_var(bestv, nbv);
        });
        let bi = e.b.use_var(best);
        let a = e.addr(scores, bi, 4);
        e.store(chosen, a, 0);
    });
    let z = e.int(0);
    let k = e.var(I64, z);
    e.for_range(zero, nb, 1, |e, i| {
        let a = e.addr(scores, i, 4);
        let x = e.load1(a, 0);
        let is = e.b.ins().fcmp(FloatCC::Equal, x, chosen);
        e.when(is, |e| {
            let kk = e.b.use_var(k);
            let dst = e.addr(idx, kk, 4);
            let i32v = e.b.ins().ireduce(I32, i);
            e.b.ins().store(mem(), i32v, dst, 0);
            let n = e.b.ins().iadd_imm_s(kk, 1);
            e.b.def_var(k, n);
        });
    });
    let minus1 = e.b.ins().iconst(I32, -1);
    e.for_range(count, top, 1, |e, kk| {
        let dst = e.addr(idx, kk, 4);
        e.b.ins().store(mem(), minus1, dst, 0);
    });
    count
}

/// Pools one of K or V: `src` rows are `src_stride` floats apart, `dim` wide; token `j`'s pooled
/// row `x` is stored at `dst_of(j, x)`.
#[allow(clippy::too_many_arguments)]
fn pool_one(
    e: &mut Emit,
    ps: &Pool,
    src: Value,
    src_stride: usize,
    dim: usize,
    w: Value,
    ntok: Value,
    dst_of: &dyn Fn(&mut Emit, Value, Value) -> Value,
) {
    let zero = e.int(0);
    let dimv = e.int(dim as i64);
    let lv = e.int(ps.block as i64);
    e.for_range(zero, ntok, 1, |e, j| {
        let first = e.b.ins().imul_imm_s(j, ps.stride as i64);
        let z = e.int(0);
        e.for_range(z, dimv, 1, |e, x| {
            let zf = e.f32(0.0);
            let acc = e.var(F32, zf);
            let z = e.int(0);
            e.for_range(z, lv, 1, |e, i| {
                let tok = e.b.ins().iadd(first, i);
                let row = e.addr(src, tok, (src_stride * 4) as i64);
                match ps.kind {
                    PoolKind::Mean | PoolKind::Weighted => {
                        let xa = e.addr(row, x, 4);
                        let val = e.load1(xa, 0);
                        let cur = e.b.use_var(acc);
                        let n = if ps.kind == PoolKind::Mean {
                            e.b.ins().fadd(cur, val)
                        } else {
                            let wa = e.addr(w, i, 4);
                            let wv = e.load1(wa, 0);
                            e.fma(wv, val, cur)
                        };
                        e.b.def_var(acc, n);
                    }
                    PoolKind::Linear => {
                        // Σ_y K[tok, y]·W[i·dim + y, x]
                        let z = e.int(0);
                        let dv = e.int(dim as i64);
                        let wrow0 = e.b.ins().imul_imm_s(i, (dim * dim * 4) as i64);
                        let wrow0 = e.b.ins().iadd(w, wrow0);
                        let wcol = e.addr(wrow0, x, 4);
                        e.for_range(z, dv, 1, |e, y| {
                            let ka = e.addr(row, y, 4);
                            let kv = e.load1(ka, 0);
                            let wa = e.addr(wcol, y, (dim * 4) as i64);
                            let wv = e.load1(wa, 0);
                            let cur = e.b.use_var(acc);
                            let n = e.fma(kv, wv, cur);
                            e.b.def_var(acc, n);
                        });
                    }
                }
            });
            let mut val = e.b.use_var(acc);
            if ps.kind == PoolKind::Mean {
                let inv = e.f32(1.0 / ps.block as f32);
                val = e.b.ins().fmul(val, inv);
            }
            let dst = dst_of(e, j, x);
            e.store(val, dst, 0);
        });
    });
}

/// `pool_<c>(k, v, wk, wv, ntok, kcp, vcp)` for one (b, segment, kv head): `k`/`v` point at the
/// segment's first row of this head (rows H·D floats apart); `wk`/`wv` at this head's weights
/// (the same `w` twice for weighted; unused for mean). Writes K̃ packed by four, transposed,
/// and Ṽ as rows of Dvp floats.
pub fn pool(e: &mut Emit, c: &Consts, p: &[Value], ps: &Pool) {
    let (k, v, wk, wv, ntok, kcp, vcp) = (p[0], p[1], p[2], p[3], p[4], p[5], p[6]);
    let dqk = c.dqk;
    let kdst = move |e: &mut Emit, j: Value, x: Value| {
        let grp = e.b.ins().sshr_imm_s(j, 2);
        let lane = e.b.ins().band_imm_s(j, 3);
        let base = e.addr(kcp, grp, (dqk * 16) as i64);
        let base = e.addr(base, x, 16);
        e.addr(base, lane, 4)
    };
    pool_one(e, ps, k, c.h * c.dqk, c.dqk, wk, ntok, &kdst);
    let dvp = c.dvp;
    let vdst = move |e: &mut Emit, j: Value, x: Value| {
        let base = e.addr(vcp, j, (dvp * 4) as i64);
        e.addr(base, x, 4)
    };
    pool_one(e, ps, v, c.h * c.dv, c.dv, wv, ntok, &vdst);
}

/// `combine(out, o_1, g_1, o_2, g_2, …)` (no g for `sum`), all pointing at the G rows of one
/// (position, kv head); `out[r][d] = Σ_b g_b[r]·o_b[r][d]`.
pub fn combine(e: &mut Emit, c: &Consts, p: &[Value], terms: usize, gated: bool) {
    let stride = if gated { 2 } else { 1 };
    let out = p[0];
    let ptrs: Vec<(Value, Option<Value>)> = (0..terms)
        .map(|b| {
            let at = 1 + b * stride;
            (p[at], gated.then(|| p[at + 1]))
        })
        .collect();
    let start = e.int(0);
    let g = e.int(c.g as i64);
    e.for_range(start, g, 1, |e, r| {
        let rows: Vec<(Value, Option<Value>)> = ptrs
            .iter()
            .map(|(o, g)| {
                let orow = e.addr(*o, r, (c.dv * 4) as i64);
                let gate = g.map(|g| {
                    let ga = e.addr(g, r, 4);
                    e.load1(ga, 0)
                });
                (orow, gate)
            })
            .collect();
        let gv: Vec<Option<Value>> = rows
            .iter()
            .map(|(_, g)| g.map(|g| e.b.ins().splat(F32X4, g)))
            .collect();
        let dst = e.addr(out, r, (c.dv * 4) as i64);
        for j in 0..c.dv / 4 {
            let mut acc = e.splat(0.0);
            for ((orow, _), g) in rows.iter().zip(&gv) {
                let x = e.load4(*orow, (j * 16) as i32);
                acc = match g {
                    Some(g) => e.fma(*g, x, acc),
                    None => e.b.ins().fadd(acc, x),
                };
            }
            e.store(acc, dst, (j * 16) as i32);
        }
        for d in (c.dv / 4 * 4)..c.dv {
            let mut acc = e.f32(0.0);
            for (orow, g) in &rows {
                let x = e.load1(*orow, (d * 4) as i32);
                acc = match g {
                    Some(g) => e.fma(*g, x, acc),
                    None => e.b.ins().fadd(acc, x),
                };
            }
            e.store(acc, dst, (d * 4) as i32);
        }
    });
}

/// `fma_peak(iters) -> acc`: twelve independent F32X4 FMA chains, `iters` rounds
/// (96 FLOPs per round per chain group of 12): the 128-bit FMA ceiling of this machine.
pub fn fma_peak(e: &mut Emit, p: &[Value]) -> Value {
    let iters = p[0];
    let chains = 12;
    let accs: Vec<_> = (0..chains)
        .map(|i| {
            let x = e.splat(i as f32 * 0.01);
            e.var(F32X4, x)
        })
        .collect();
    let a = e.splat(0.999_999);
    let b = e.splat(1e-7);
    let zero = e.int(0);
    e.for_range(zero, iters, 1, |e, _| {
        for v in &accs {
            let x = e.b.use_var(*v);
            let n = e.fma(x, a, b);
            e.b.def_var(*v, n);
        }
    });
    let mut sum = e.splat(0.0);
    for v in &accs {
        let x = e.b.use_var(*v);
        sum = e.b.ins().fadd(sum, x);
    }
    e.hsum(sum)
}
