//! The backward drivers (FlashAttention-2, two passes for determinism) and their tile routines.
//!
//! Tile routines, specialized like the forward's (`tile.rs`, whose `qk` and `pv` they reuse
//! with the backward's own S/P row stride `grad_stride`):
//! * `bqk` — S = scale·log₂e·Q·Kᵀ over a key tile (keys packed by four, transposed);
//! * `bdp` — dP = dO·Vᵀ (the same routine on Dv, V packed like K);
//! * `bsoft` — P = 2^(S − lse·log₂e) with lanes outside `[lo, hi)` masked to 0, and
//!   dS = scale·P∘(dP − D) in place of dP;
//! * `bpv` — dQ += dS·K (K as rows of ⌈Dqk/4⌉·4 floats);
//! * `bacc` — dV\[k\] += Σ_r P\[r\]\[k\]·dO\[r\], dK\[k\] += Σ_r dS\[r\]\[k\]·Q\[r\] over a tile.
//!
//! Drivers: `dq_<b>` (one query position, the G heads of a kv head: every key range of its key
//! set in tiles), `dkv_<b>` (one key tile: the queries that see it, from a list in query order
//! that the executor builds — a reverse index for gathered blocks, a range otherwise — so dK/dV
//! of every key is summed by one work item in a fixed order), `dcombine`, `dpool_<c>` and
//! `gsum`. The saved log-sum-exp of the forward drivers is written by [`store_lse`].

use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::types::{F32, F32X4, I32, I64};
use cranelift_codegen::ir::{FuncRef, InstBuilder, MemFlagsData, Value};
use cranelift_frontend::Variable;

use super::{Consts, Emit, mem};
use crate::ir::{PoolGrad, PoolKind};

/// Indices of the backward tile routines in a backward driver's callee list (after the
/// forward's four).
pub const BQK: usize = 4;
pub const BDP: usize = 5;
pub const BSOFT: usize = 6;
pub const BPV: usize = 7;
pub const BACC: usize = 8;

/// The consts of `bqk`: the forward's with the backward's S row stride.
pub fn qk_consts(c: &Consts) -> Consts {
    Consts {
        s_stride: c.g_stride,
        ..c.clone()
    }
}

/// The consts of `bdp`: `qk` on Dv with multiplier 1 (scale·log₂e = 1).
pub fn dp_consts(c: &Consts) -> Consts {
    Consts {
        dqk: c.dv,
        scale: 1.0 / std::f32::consts::LOG2_E,
        s_stride: c.g_stride,
        ..c.clone()
    }
}

/// The consts of `bpv`: `pv` on rows of Dqkp floats.
pub fn pv_consts(c: &Consts) -> Consts {
    Consts {
        dvp: c.dqkp,
        s_stride: c.g_stride,
        ..c.clone()
    }
}

/// `log₂ x` for a scalar `x > 0` (finite, normal): exponent plus `2·atanh((m−1)/(m+1))/ln 2`
/// of the mantissa `m ∈ [√½, √2)` (odd series to z⁹, |z| ≤ 0.172: error below 1e-9).
pub fn log2_pos(e: &mut Emit, x: Value) -> Value {
    let flags = MemFlagsData::new();
    let bits = e.b.ins().bitcast(I32, flags, x);
    let ex = e.b.ins().ushr_imm_s(bits, 23);
    let ex = e.b.ins().band_imm_s(ex, 0xff);
    let ex = e.b.ins().iadd_imm_s(ex, -127);
    let mb = e.b.ins().band_imm_s(bits, 0x007f_ffff);
    let mb = e.b.ins().bor_imm_s(mb, 0x3f80_0000);
    let m = e.b.ins().bitcast(F32, flags, mb);
    let sqrt2 = e.f32(std::f32::consts::SQRT_2);
    let big = e.b.ins().fcmp(FloatCC::GreaterThan, m, sqrt2);
    let half = e.f32(0.5);
    let mh = e.b.ins().fmul(m, half);
    let m = e.b.ins().select(big, mh, m);
    let ex1 = e.b.ins().iadd_imm_s(ex, 1);
    let ex = e.b.ins().select(big, ex1, ex);
    let one = e.f32(1.0);
    let num = e.b.ins().fsub(m, one);
    let den = e.b.ins().fadd(m, one);
    let z = e.b.ins().fdiv(num, den);
    let z2 = e.b.ins().fmul(z, z);
    let mut poly = e.f32(1.0 / 9.0);
    for k in [7.0f32, 5.0, 3.0, 1.0] {
        let ck = e.f32(1.0 / k);
        poly = e.fma(poly, z2, ck);
    }
    let lnm = e.b.ins().fmul(z, poly);
    let two_log2e = e.f32(2.0 * std::f32::consts::LOG2_E);
    let exf = e.b.ins().fcvt_from_sint(F32, ex);
    e.fma(lnm, two_log2e, exf)
}

/// `lse[r] = (m[r] + log₂ ℓ[r])·ln 2` for the G rows (−∞ where ℓ = 0: an empty row): the
/// natural log-sum-exp of the row, from the online softmax's base-2 running max and sum.
pub fn store_lse(e: &mut Emit, c: &Consts, m: Value, l: Value, lse: Value) {
    let start = e.int(0);
    let g = e.int(c.g as i64);
    e.for_range(start, g, 1, |e, r| {
        let la = e.addr(l, r, 4);
        let lv = e.load1(la, 0);
        let ma = e.addr(m, r, 4);
        let mv = e.load1(ma, 0);
        let zero = e.f32(0.0);
        let one = e.f32(1.0);
        let pos = e.b.ins().fcmp(FloatCC::GreaterThan, lv, zero);
        let safe = e.b.ins().select(pos, lv, one);
        let lg = log2_pos(e, safe);
        let zero2 = e.f32(0.0);
        let ms = e.b.ins().select(pos, mv, zero2);
        let sum = e.b.ins().fadd(ms, lg);
        let ln2 = e.f32(std::f32::consts::LN_2);
        let val = e.b.ins().fmul(sum, ln2);
        let ninf = e.f32(f32::NEG_INFINITY);
        let val = e.b.ins().select(pos, val, ninf);
        let dst = e.addr(lse, r, 4);
        e.store(val, dst, 0);
    });
}

/// `bsoft(s, dp, nk4, lo, hi, lse, delta)`: per row r < G and lane k < 4·nk4:
/// `P = 2^(S − lse[r]·log₂e)` (0 outside `[lo, hi)`) into `s`, `dS = scale·P·(dP − delta[r])`
/// into `dp`. Rows are `g_stride` floats apart.
pub fn soft(e: &mut Emit, c: &Consts, p: &[Value]) {
    let (s, dp, nk4, lo, hi, lse, delta) = (p[0], p[1], p[2], p[3], p[4], p[5], p[6]);
    let iota = e.iota();
    let start = e.int(0);
    let g = e.int(c.g as i64);
    e.for_range(start, g, 1, |e, r| {
        let srow = e.addr(s, r, (c.g_stride * 4) as i64);
        let drow = e.addr(dp, r, (c.g_stride * 4) as i64);
        let la = e.addr(lse, r, 4);
        let lv = e.load1(la, 0);
        let log2e = e.f32(std::f32::consts::LOG2_E);
        let l2 = e.b.ins().fmul(lv, log2e);
        let l2v = e.b.ins().splat(F32X4, l2);
        let da = e.addr(delta, r, 4);
        let dv = e.load1(da, 0);
        let dvv = e.b.ins().splat(F32X4, dv);
        let scalev = e.splat(c.scale);
        let pinned = e.materialize(&[srow, drow, l2v, dvv, scalev]);
        let [srow, drow, l2v, dvv, scalev] =
            [pinned[0], pinned[1], pinned[2], pinned[3], pinned[4]];
        let z = e.int(0);
        e.for_range(z, nk4, 1, |e, col| {
            let a = e.addr(srow, col, 16);
            let x = e.load4(a, 0);
            let base = e.b.ins().imul_imm_s(col, 4);
            let x = e.mask_range(x, iota, base, lo, hi);
            let x = e.b.ins().fsub(x, l2v);
            let pr = e.vexp2(x);
            e.store(pr, a, 0);
            let b = e.addr(drow, col, 16);
            let d = e.load4(b, 0);
            let d = e.b.ins().fsub(d, dvv);
            let ps = e.b.ins().fmul(pr, scalev);
            let ds = e.b.ins().fmul(d, ps);
            e.store(ds, b, 0);
        });
    });
}

/// `bacc(p, ds, nk, qpad, dopad, kacc, vacc)`: for keys k < nk of a tile,
/// `vacc[k] += Σ_r P[r][k]·dopad[r]` and `kacc[k] += Σ_r dS[r][k]·qpad[r]` (rows of Dvp /
/// Dqkp floats; P and dS rows `g_stride` floats apart).
pub fn acc(e: &mut Emit, c: &Consts, p: &[Value]) {
    let (pp, ds, nk, qpad, dopad, kacc, vacc) = (p[0], p[1], p[2], p[3], p[4], p[5], p[6]);
    let start = e.int(0);
    e.for_range(start, nk, 1, |e, k| {
        for (dst, src, dimp, coef) in [(vacc, dopad, c.dvp, pp), (kacc, qpad, c.dqkp, ds)] {
            let drow = e.addr(dst, k, (dimp * 4) as i64);
            let ccol = e.addr(coef, k, 4);
            let nvec = dimp / 4;
            let mut j0 = 0;
            while j0 < nvec {
                let nb = 4.min(nvec - j0);
                let accs: Vec<Variable> = (0..nb)
                    .map(|j| {
                        let x = e.load4(drow, ((j0 + j) * 16) as i32);
                        e.var(F32X4, x)
                    })
                    .collect();
                let z = e.int(0);
                let g = e.int(c.g as i64);
                e.for_range(z, g, 1, |e, r| {
                    let ca = e.addr(ccol, r, (c.g_stride * 4) as i64);
                    let cv = e.load1(ca, 0);
                    let cvv = e.b.ins().splat(F32X4, cv);
                    let srow = e.addr(src, r, (dimp * 4) as i64);
                    for (j, a) in accs.iter().enumerate() {
                        let x = e.load4(srow, ((j0 + j) * 16) as i32);
                        let cur = e.b.use_var(*a);
                        let n = e.fma(cvv, x, cur);
                        e.b.def_var(*a, n);
                    }
                });
                for (j, a) in accs.iter().enumerate() {
                    let x = e.b.use_var(*a);
                    e.store(x, drow, ((j0 + j) * 16) as i32);
                }
                j0 += nb;
            }
        }
    });
}

/// Stores 0 in `n` floats at `p` (`n` a compile-time multiple of 4 or not).
fn zero_floats(e: &mut Emit, p: Value, n: Value) {
    let z = e.int(0);
    let zf = e.f32(0.0);
    e.for_range(z, n, 1, |e, i| {
        let a = e.addr(p, i, 4);
        e.store(zf, a, 0);
    });
}

/// Copies `rows` rows of `dim` floats (`src_stride` floats apart) into rows of `dstride`.
fn copy_rows(e: &mut Emit, src: Value, dim: usize, dst: Value, dstride: usize, rows: usize) {
    let z = e.int(0);
    let g = e.int(rows as i64);
    e.for_range(z, g, 1, |e, r| {
        let s = e.addr(src, r, (dim * 4) as i64);
        let d = e.addr(dst, r, (dstride * 4) as i64);
        for j in 0..dim / 4 {
            let x = e.load4(s, (j * 16) as i32);
            e.store(x, d, (j * 16) as i32);
        }
        for x in (dim / 4 * 4)..dim {
            let v = e.load1(s, (x * 4) as i32);
            e.store(v, d, (x * 4) as i32);
        }
    });
}

/// One key tile `[base, base + 4·nk4)` of a backward pass: S, dP, then P and dS (lanes
/// outside `[lo, hi)`, relative to `base`, masked). Returns nothing; `s` holds P, `dp` dS.
#[allow(clippy::too_many_arguments)]
fn tile_p_ds(
    e: &mut Emit,
    c: &Consts,
    f: &[FuncRef],
    (q, d_o, lse, delta): (Value, Value, Value, Value),
    (kt, vt): (Value, Value),
    base: Value,
    nk4: Value,
    (lo, hi): (Value, Value),
    (s, dp): (Value, Value),
) {
    let grp = e.b.ins().sshr_imm_s(base, 2);
    let kcol = e.addr(kt, grp, (c.dqk * 16) as i64);
    e.b.ins().call(f[BQK], &[q, kcol, nk4, s, q, q, q]);
    let vcol = e.addr(vt, grp, (c.dv * 16) as i64);
    e.b.ins().call(f[BDP], &[d_o, vcol, nk4, dp, d_o, d_o, d_o]);
    e.b.ins().call(f[BSOFT], &[s, dp, nk4, lo, hi, lse, delta]);
}

/// `dq_<b>(q, kt, kr, vt, do, lse, delta, ranges, nranges, s, dp, acc, out)`: the query
/// gradient of one position's G rows over the key ranges `ranges[0..2·nranges]` (pairs
/// `[lo, hi)` of segment-local keys, from the executor's rules), each range in tiles of
/// `bwd_key_tile` keys aligned to 4: `out[r] = Σ dS·K`.
pub fn grad_q(e: &mut Emit, c: &Consts, f: &[FuncRef], p: &[Value]) {
    let (q, kt, kr, vt, d_o, lse, delta, ranges, nranges, s, dp, acc, out) = (
        p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], p[9], p[10], p[11], p[12],
    );
    let n = e.int((c.g * c.dqkp) as i64);
    zero_floats(e, acc, n);
    let kt_len = c.variant.bwd_key_tile as i64;
    let z = e.int(0);
    e.for_range(z, nranges, 1, |e, i| {
        let ra = e.addr(ranges, i, 8);
        let lo = e.b.ins().load(I32, mem(), ra, 0);
        let lo = e.b.ins().sextend(I64, lo);
        let hi = e.b.ins().load(I32, mem(), ra, 4);
        let hi = e.b.ins().sextend(I64, hi);
        let a4 = e.b.ins().band_imm_s(lo, !3);
        e.for_range(a4, hi, kt_len, |e, base| {
            let end = e.b.ins().iadd_imm_s(base, kt_len);
            let end = e.min(end, hi);
            let tlo = e.max(lo, base);
            let span = e.b.ins().isub(end, base);
            let span = e.b.ins().iadd_imm_s(span, 3);
            let nk4 = e.b.ins().sshr_imm_s(span, 2);
            let rlo = e.b.ins().isub(tlo, base);
            let rhi = e.b.ins().isub(end, base);
            tile_p_ds(
                e,
                c,
                f,
                (q, d_o, lse, delta),
                (kt, vt),
                base,
                nk4,
                (rlo, rhi),
                (s, dp),
            );
            let krow = e.addr(kr, base, (c.dqkp * 4) as i64);
            let nk = e.b.ins().ishl_imm_s(nk4, 2);
            e.b.ins().call(f[BPV], &[dp, krow, nk, acc, dp, dp, dp]);
        });
    });
    let z = e.int(0);
    let g = e.int(c.g as i64);
    e.for_range(z, g, 1, |e, r| {
        let src = e.addr(acc, r, (c.dqkp * 4) as i64);
        let dst = e.addr(out, r, (c.dqk * 4) as i64);
        for j in 0..c.dqk / 4 {
            let x = e.load4(src, (j * 16) as i32);
            e.store(x, dst, (j * 16) as i32);
        }
        for x in (c.dqk / 4 * 4)..c.dqk {
            let v = e.load1(src, (x * 4) as i32);
            e.store(v, dst, (x * 4) as i32);
        }
    });
}

/// `dkv_<b>(q, kt, vt, do, lse, delta, list, count, lo, hi, s, dp, qpad, dopad, kacc, vacc,
/// dk, dv)`: dK and dV of the keys `[lo, hi)` of one (b, segment, kv head) — `q`, `do`,
/// `lse`, `delta` point at the segment's first position of the kv head's G rows; `list` holds
/// `count` triples `(t, klo, khi)` in query order: query `t` sees keys `[klo, khi)` of the
/// tile. Writes rows `lo..hi` of `dk`/`dv` (rows H·D floats apart, pointing at key 0).
pub fn grad_kv(e: &mut Emit, c: &Consts, f: &[FuncRef], p: &[Value]) {
    let (q, kt, vt, d_o, lse, delta, list, count, lo, hi) =
        (p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], p[9]);
    let (s, dp, qpad, dopad, kacc, vacc, dk, dv) =
        (p[10], p[11], p[12], p[13], p[14], p[15], p[16], p[17]);
    let a4 = e.b.ins().band_imm_s(lo, !3);
    let span = e.b.ins().isub(hi, a4);
    let span = e.b.ins().iadd_imm_s(span, 3);
    let nk4 = e.b.ins().sshr_imm_s(span, 2);
    let nk = e.b.ins().ishl_imm_s(nk4, 2);
    let nka = e.b.ins().imul_imm_s(nk, c.dqkp as i64);
    zero_floats(e, kacc, nka);
    let nva = e.b.ins().imul_imm_s(nk, c.dvp as i64);
    zero_floats(e, vacc, nva);
    let nq = e.int((c.g * c.dqkp) as i64);
    zero_floats(e, qpad, nq);
    let nd = e.int((c.g * c.dvp) as i64);
    zero_floats(e, dopad, nd);
    let hq = (c.g * c.h) as i64;
    let z = e.int(0);
    e.for_range(z, count, 1, |e, i| {
        let ea = e.addr(list, i, 12);
        let t = e.b.ins().load(I32, mem(), ea, 0);
        let t = e.b.ins().sextend(I64, t);
        let klo = e.b.ins().load(I32, mem(), ea, 4);
        let klo = e.b.ins().sextend(I64, klo);
        let khi = e.b.ins().load(I32, mem(), ea, 8);
        let khi = e.b.ins().sextend(I64, khi);
        let any = e.b.ins().icmp(
            cranelift_codegen::ir::condcodes::IntCC::SignedLessThan,
            klo,
            khi,
        );
        e.when(any, |e| {
            let qr = e.addr(q, t, hq * c.dqk as i64 * 4);
            let dor = e.addr(d_o, t, hq * c.dv as i64 * 4);
            let lr = e.addr(lse, t, hq * 4);
            let dr = e.addr(delta, t, hq * 4);
            let rlo = e.b.ins().isub(klo, a4);
            let rhi = e.b.ins().isub(khi, a4);
            tile_p_ds(
                e,
                c,
                f,
                (qr, dor, lr, dr),
                (kt, vt),
                a4,
                nk4,
                (rlo, rhi),
                (s, dp),
            );
            copy_rows(e, qr, c.dqk, qpad, c.dqkp, c.g);
            copy_rows(e, dor, c.dv, dopad, c.dvp, c.g);
            e.b.ins()
                .call(f[BACC], &[s, dp, nk, qpad, dopad, kacc, vacc]);
        });
    });
    // Rows lo..hi of the tile's accumulators into dk / dv.
    e.for_range(lo, hi, 1, |e, key| {
        let rel = e.b.ins().isub(key, a4);
        for (acc, dim, dimp, out) in [(kacc, c.dqk, c.dqkp, dk), (vacc, c.dv, c.dvp, dv)] {
            let src = e.addr(acc, rel, (dimp * 4) as i64);
            let dst = e.addr(out, key, (c.h * dim * 4) as i64);
            for j in 0..dim / 4 {
                let x = e.load4(src, (j * 16) as i32);
                e.store(x, dst, (j * 16) as i32);
            }
            for x in (dim / 4 * 4)..dim {
                let v = e.load1(src, (x * 4) as i32);
                e.store(v, dst, (x * 4) as i32);
            }
        }
    });
}

/// Σ_x a[x]·b[x] over `dim` floats (F32X4 then a scalar tail).
fn dot(e: &mut Emit, a: Value, b: Value, dim: usize) -> Value {
    let mut acc = e.splat(0.0);
    for j in 0..dim / 4 {
        let x = e.load4(a, (j * 16) as i32);
        let y = e.load4(b, (j * 16) as i32);
        acc = e.fma(x, y, acc);
    }
    let mut s = e.hsum(acc);
    for x in (dim / 4 * 4)..dim {
        let u = e.load1(a, (x * 4) as i32);
        let v = e.load1(b, (x * 4) as i32);
        s = e.fma(u, v, s);
    }
    s
}

/// `dcombine(do, o_1, [g_1, dg_1,] do_1, delta_1, …)` for the G rows of one (position, kv
/// head): per term `dg = dO·o_b`, `do_b = g·dO` (gated; `dO` for `sum`), `delta_b = g·dg`.
pub fn combine_grad(e: &mut Emit, c: &Consts, p: &[Value], terms: usize, gated: bool) {
    let per = if gated { 5 } else { 3 };
    let d_o = p[0];
    let start = e.int(0);
    let g = e.int(c.g as i64);
    e.for_range(start, g, 1, |e, r| {
        let dor = e.addr(d_o, r, (c.dv * 4) as i64);
        for b in 0..terms {
            let at = 1 + b * per;
            let o = e.addr(p[at], r, (c.dv * 4) as i64);
            let dotv = dot(e, dor, o, c.dv);
            let (gate, dob, delta) = if gated {
                let ga = e.addr(p[at + 1], r, 4);
                let gv = e.load1(ga, 0);
                let dga = e.addr(p[at + 2], r, 4);
                e.store(dotv, dga, 0);
                (Some(gv), p[at + 3], p[at + 4])
            } else {
                (None, p[at + 1], p[at + 2])
            };
            let dst = e.addr(dob, r, (c.dv * 4) as i64);
            let gvv = gate.map(|gv| e.b.ins().splat(F32X4, gv));
            for j in 0..c.dv / 4 {
                let x = e.load4(dor, (j * 16) as i32);
                let y = match gvv {
                    Some(gv) => e.b.ins().fmul(x, gv),
                    None => x,
                };
                e.store(y, dst, (j * 16) as i32);
            }
            for x in (c.dv / 4 * 4)..c.dv {
                let v = e.load1(dor, (x * 4) as i32);
                let y = match gate {
                    Some(gv) => e.b.ins().fmul(v, gv),
                    None => v,
                };
                e.store(y, dst, (x * 4) as i32);
            }
            let dl = match gate {
                Some(gv) => e.b.ins().fmul(gv, dotv),
                None => dotv,
            };
            let da = e.addr(delta, r, 4);
            e.store(dl, da, 0);
        }
    });
}

/// `gsum(out, n, part_1, …)`: `out[i] = Σ_j part_j[i]` for i < n, parts in order (0 without).
pub fn grad_sum(e: &mut Emit, p: &[Value], parts: usize) {
    let (out, n) = (p[0], p[1]);
    let n4 = e.b.ins().band_imm_s(n, !3);
    let z = e.int(0);
    e.for_range(z, n4, 4, |e, i| {
        let mut acc = e.splat(0.0);
        for j in 0..parts {
            let a = e.addr(p[2 + j], i, 4);
            let x = e.load4(a, 0);
            acc = e.b.ins().fadd(acc, x);
        }
        let d = e.addr(out, i, 4);
        e.store(acc, d, 0);
    });
    e.for_range(n4, n, 1, |e, i| {
        let mut acc = e.f32(0.0);
        for j in 0..parts {
            let a = e.addr(p[2 + j], i, 4);
            let x = e.load1(a, 0);
            acc = e.b.ins().fadd(acc, x);
        }
        let d = e.addr(out, i, 4);
        e.store(acc, d, 0);
    });
}

/// One of K or V through a pool's backward, for one (b, segment, kv head): token `j`'s
/// gradient row `dy` (at `dc + j·row`) goes to the rows `j·d + i` of `dx` (and the weights).
#[allow(clippy::too_many_arguments)]
fn pool_grad_one(
    e: &mut Emit,
    pg: &PoolGrad,
    (x, dx, dc): (Value, Value, Value),
    row: usize,
    dim: usize,
    (w, dw): (Value, Value),
    ntok: Value,
) {
    let zero = e.int(0);
    let lv = e.int(pg.block as i64);
    let dimv = e.int(dim as i64);
    e.for_range(zero, ntok, 1, |e, j| {
        let dy = e.addr(dc, j, (row * 4) as i64);
        let first = e.b.ins().imul_imm_s(j, pg.stride as i64);
        let z = e.int(0);
        e.for_range(z, lv, 1, |e, i| {
            let tok = e.b.ins().iadd(first, i);
            let xr = e.addr(x, tok, (row * 4) as i64);
            let dxr = e.addr(dx, tok, (row * 4) as i64);
            match pg.kind {
                PoolKind::Mean | PoolKind::Weighted => {
                    let coef = if pg.kind == PoolKind::Mean {
                        e.f32(1.0 / pg.block as f32)
                    } else {
                        let wa = e.addr(w, i, 4);
                        e.load1(wa, 0)
                    };
                    let zf = e.f32(0.0);
                    let dot = e.var(F32, zf);
                    let z = e.int(0);
                    e.for_range(z, dimv, 1, |e, f| {
                        let ya = e.addr(dy, f, 4);
                        let y = e.load1(ya, 0);
                        let ga = e.addr(dxr, f, 4);
                        let cur = e.load1(ga, 0);
                        let n = e.fma(coef, y, cur);
                        e.store(n, ga, 0);
                        if pg.kind == PoolKind::Weighted {
                            let xa = e.addr(xr, f, 4);
                            let xv = e.load1(xa, 0);
                            let d = e.b.use_var(dot);
                            let n = e.fma(xv, y, d);
                            e.b.def_var(dot, n);
                        }
                    });
                    if pg.kind == PoolKind::Weighted {
                        let dwa = e.addr(dw, i, 4);
                        let cur = e.load1(dwa, 0);
                        let d = e.b.use_var(dot);
                        let n = e.b.ins().fadd(cur, d);
                        e.store(n, dwa, 0);
                    }
                }
                PoolKind::Linear => {
                    // Rows (i·dim + f) of this head's [l·dim, dim] weights.
                    let wblk = e.b.ins().imul_imm_s(i, (dim * dim * 4) as i64);
                    let wb = e.b.ins().iadd(w, wblk);
                    let dwb = e.b.ins().iadd(dw, wblk);
                    let z = e.int(0);
                    e.for_range(z, dimv, 1, |e, f| {
                        let wrow = e.addr(wb, f, (dim * 4) as i64);
                        let dwrow = e.addr(dwb, f, (dim * 4) as i64);
                        let xa = e.addr(xr, f, 4);
                        let xv = e.load1(xa, 0);
                        let zf = e.f32(0.0);
                        let acc = e.var(F32, zf);
                        let z = e.int(0);
                        e.for_range(z, dimv, 1, |e, ee| {
                            let ya = e.addr(dy, ee, 4);
                            let y = e.load1(ya, 0);
                            let wa = e.addr(wrow, ee, 4);
                            let wv = e.load1(wa, 0);
                            let cur = e.b.use_var(acc);
                            let n = e.fma(wv, y, cur);
                            e.b.def_var(acc, n);
                            let dwa = e.addr(dwrow, ee, 4);
                            let dcur = e.load1(dwa, 0);
                            let dn = e.fma(xv, y, dcur);
                            e.store(dn, dwa, 0);
                        });
                        let ga = e.addr(dxr, f, 4);
                        let cur = e.load1(ga, 0);
                        let a = e.b.use_var(acc);
                        let n = e.b.ins().fadd(cur, a);
                        e.store(n, ga, 0);
                    });
                }
            }
        });
    });
}

/// `dpool_<c>(k, v, wk, wv, dkc, dvc, ntok, dk, dv, dwk, dwv)` for one (b, segment, kv head):
/// `k`/`v`/`dk`/`dv` point at the segment's first row of this head (rows H·D floats apart),
/// `dkc`/`dvc` at its first compressed token's gradient (rows H·D apart), `wk`/`wv` at this
/// head's weights and `dwk`/`dwv` at their gradients (the same `w`, `dw` twice for weighted;
/// unused for mean). Adds into `dk`, `dv` and the weight gradients, tokens in order.
pub fn pool_grad(e: &mut Emit, c: &Consts, p: &[Value], pg: &PoolGrad) {
    let (k, v, wk, wv, dkc, dvc, ntok, dk, dv, dwk, dwv) = (
        p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], p[9], p[10],
    );
    pool_grad_one(e, pg, (k, dk, dkc), c.h * c.dqk, c.dqk, (wk, dwk), ntok);
    pool_grad_one(e, pg, (v, dv, dvc), c.h * c.dv, c.dv, (wv, dwv), ntok);
}
