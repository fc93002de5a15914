//! The four tile routines every attention branch is built from: `qk` (S = scale·Q·Kᵀ, register
//! blocked), `softmax` (masked online-softmax update of one tile, rescaling the accumulator),
//! `pv` (O += P·V, register blocked) and `finish` (O / ℓ into the output rows).
//!
//! Layouts: the G query rows of one position are contiguous (`q + r·Dqk`). Keys are packed in
//! groups of four, transposed: group `c` holds `[Dqk][4]` floats, so one F32X4 load gives dim
//! `d` of four consecutive keys and q·kᵀ needs no horizontal reduction; each broadcast query
//! element feeds `key_vectors` FMAs and each key vector feeds `rows` FMAs. Values are rows of
//! `Dvp = ⌈Dv/4⌉·4` floats (zero padded). S, P and the accumulator O live in caller scratch:
//! S/P rows of `s_stride` floats (a compile-time constant, `cpu::score_stride`, that depends
//! on the variant and the spec's constants only), O rows of `Dvp` floats, one running max `m`
//! and sum `ℓ` per row.

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::types::F32X4;
use cranelift_codegen::ir::{InstBuilder, Value};
use cranelift_frontend::Variable;

use super::{Consts, Emit};

/// Register tile of `qk`: rows `r0..r0+rb` × `cb` key vectors of accumulators, reduced over
/// Dqk. `q_alias[j]` is the query pointer as seen by key vector `j` (see [`POINTER_ALIASES`]);
/// `s_col` is the score scratch at this tile's first key (row `r` is `r·s_stride` floats on).
#[allow(clippy::too_many_arguments)]
fn qk_tile(
    e: &mut Emit,
    c: &Consts,
    q_alias: &[Value],
    kcol: Value,
    s_col: Value,
    r0: usize,
    rb: usize,
    cb: usize,
) {
    let dqk = c.dqk as i64;
    let kcol = e.materialize(&[kcol])[0];
    let zero = e.splat(0.0);
    let acc: Vec<Variable> = (0..rb * cb).map(|_| e.var(F32X4, zero)).collect();
    let u = c.variant.unroll as i64;
    let main = dqk / u * u;
    let step = |e: &mut Emit, d: Value, unroll: i64| {
        let kaddr = e.addr(kcol, d, 16);
        let qaddr: Vec<Value> = q_alias[..cb].iter().map(|q| e.addr(*q, d, 4)).collect();
        for uu in 0..unroll {
            let kv: Vec<Value> = (0..cb)
                .map(|j| e.load4_ro(kaddr, (j as i64 * dqk * 16 + uu * 16) as i32))
                .collect();
            for r in 0..rb {
                for (j, k) in kv.iter().enumerate() {
                    let off = (((r0 + r) as i64 * dqk + uu) * 4) as i32;
                    let qb = e.bcast_ro(qaddr[j], off);
                    let a = e.b.use_var(acc[r * cb + j]);
                    let n = e.fma(qb, *k, a);
                    e.b.def_var(acc[r * cb + j], n);
                }
            }
        }
    };
    let start = e.int(0);
    let end = e.int(main);
    e.for_range(start, end, u, |e, d| step(e, d, u));
    for d in main..dqk {
        let dv = e.int(d);
        step(e, dv, 1);
    }
    let scale = e.splat(c.scale * std::f32::consts::LOG2_E);
    for r in 0..rb {
        for j in 0..cb {
            let a = e.b.use_var(acc[r * cb + j]);
            let x = e.b.ins().fmul(a, scale);
            e.store(x, s_col, (((r0 + r) * c.s_stride + j * 4) * 4) as i32);
        }
    }
}

/// How many copies of the broadcast operand's pointer `qk` and `pv` take: one per key (value)
/// vector of the register tile, at most 4. The caller passes the same pointer each time. Being
/// distinct SSA values, the copies keep Cranelift's e-graph from merging the identical
/// broadcast loads of different FMAs into one; each broadcast then has a single use, so it is
/// folded into a `vbroadcastss` from memory (a load uop) whose register the FMA overwrites,
/// instead of a shared register that needs a shuffle uop and a copy per FMA.
pub const POINTER_ALIASES: usize = 4;

/// `qk(q, kp, nk4, s, q, q, q)`: `S[r][4c+i] = scale·log₂e·Σ_d q[r][d]·kp[c][d][i]`
/// for r < G, c < nk4 (`q` repeated: see [`POINTER_ALIASES`]): scores in base 2, so the
/// softmax needs `2^x` only.
pub fn qk(e: &mut Emit, c: &Consts, p: &[Value]) {
    let (kp, nk4, s) = (p[1], p[2], p[3]);
    let q_alias = [p[0], p[4], p[5], p[6]];
    let g = c.g;
    let rb_max = c.variant.rows as usize;
    let cb = c.variant.key_vectors as i64;
    let mut r0 = 0;
    while r0 < g {
        let rb = rb_max.min(g - r0);
        let nmain = e.b.ins().udiv_imm_s(nk4, cb);
        let nmain = e.b.ins().imul_imm_s(nmain, cb);
        let zero = e.int(0);
        for (lo, hi, width) in [(zero, nmain, cb), (nmain, nk4, 1)] {
            e.for_range(lo, hi, width, |e, col| {
                let kcol = e.addr(kp, col, (c.dqk * 16) as i64);
                let s_col = e.addr(s, col, 16);
                qk_tile(e, c, &q_alias, kcol, s_col, r0, rb, width as usize);
            });
        }
        r0 += rb;
    }
}

/// `softmax(s, nk4, lo, hi, m, l, o)`: for each row, lanes outside `[lo, hi)` become
/// −∞ (so 0 after exp); `m' = max(m, max S)`, `α = 2^(m − m')`, `P = 2^(S − m')` in place,
/// `ℓ' = α·ℓ + ΣP`, `O *= α` (skipped when `m' = m`, i.e. `α = 1`). Scores are in base 2 (see
/// `qk`). A tile with every lane in range (the common case) skips the masking pass. A row that
/// has seen only −∞ keeps `m = −∞`, `ℓ = 0`, `O = 0`.
pub fn softmax(e: &mut Emit, c: &Consts, p: &[Value]) {
    let (s, nk4, lo, hi, m, l, o) = (p[0], p[1], p[2], p[3], p[4], p[5], p[6]);
    let iota = e.iota();
    let zero_i = e.int(0);
    let n = e.b.ins().ishl_imm_s(nk4, 2);
    let lo_ok = e.b.ins().icmp(IntCC::Equal, lo, zero_i);
    let hi_ok = e.b.ins().icmp(IntCC::Equal, hi, n);
    let full = e.b.ins().band(lo_ok, hi_ok);
    let start = e.int(0);
    let g = e.int(c.g as i64);
    e.for_range(start, g, 1, |e, r| {
        let srow = e.addr(s, r, (c.s_stride * 4) as i64);
        let srow = e.materialize(&[srow])[0];
        let ninf = e.splat(f32::NEG_INFINITY);
        let mx = e.var(F32X4, ninf);
        e.if_else(
            full,
            |e| {
                let z = e.int(0);
                e.for_range(z, nk4, 1, |e, col| {
                    let a = e.addr(srow, col, 16);
                    let x = e.load4(a, 0);
                    let cur = e.b.use_var(mx);
                    let n = e.vmax(cur, x);
                    e.b.def_var(mx, n);
                });
            },
            |e| {
                let z = e.int(0);
                e.for_range(z, nk4, 1, |e, col| {
                    let a = e.addr(srow, col, 16);
                    let x = e.load4(a, 0);
                    let base = e.b.ins().imul_imm_s(col, 4);
                    let x = e.mask_range(x, iota, base, lo, hi);
                    e.store(x, a, 0);
                    let cur = e.b.use_var(mx);
                    let n = e.vmax(cur, x);
                    e.b.def_var(mx, n);
                });
            },
        );
        let maddr = e.addr(m, r, 4);
        let laddr = e.addr(l, r, 4);
        let m_old = e.load1(maddr, 0);
        let mxv = e.b.use_var(mx);
        let tile_max = e.hmax(mxv);
        let m_new = e.b.ins().fmax(m_old, tile_max);
        let ninf1 = e.f32(f32::NEG_INFINITY);
        let zero1 = e.f32(0.0);
        let is_ninf = e.b.ins().fcmp(FloatCC::Equal, m_new, ninf1);
        let m_safe = e.b.ins().select(is_ninf, zero1, m_new);
        let diff = e.b.ins().fsub(m_old, m_safe);
        let diffv = e.b.ins().splat(F32X4, diff);
        let alphav = e.vexp2(diffv);
        let msv = e.b.ins().splat(F32X4, m_safe);
        // `srow` is pinned already (above the max loop).
        let pinned = e.materialize(&[alphav, msv, m_new, m_old]);
        let [alphav, msv, m_new, m_old] = [pinned[0], pinned[1], pinned[2], pinned[3]];
        let zero = e.splat(0.0);
        let sum = e.var(F32X4, zero);
        let z = e.int(0);
        e.for_range(z, nk4, 1, |e, col| {
            let a = e.addr(srow, col, 16);
            let x = e.load4(a, 0);
            let x = e.b.ins().fsub(x, msv);
            let px = e.vexp2(x);
            e.store(px, a, 0);
            let cur = e.b.use_var(sum);
            let n = e.b.ins().fadd(cur, px);
            e.b.def_var(sum, n);
        });
        let sumv = e.b.use_var(sum);
        let total = e.hsum(sumv);
        let alpha = e.b.ins().extractlane(alphav, 0);
        let l_old = e.load1(laddr, 0);
        let l_new = e.fma(l_old, alpha, total);
        e.store(l_new, laddr, 0);
        e.store(m_new, maddr, 0);
        let changed = e.b.ins().fcmp(FloatCC::NotEqual, m_new, m_old);
        e.when(changed, |e| {
            let orow = e.addr(o, r, (c.dvp * 4) as i64);
            for j in 0..c.dvp / 4 {
                let x = e.load4(orow, (j * 16) as i32);
                let y = e.b.ins().fmul(x, alphav);
                e.store(y, orow, (j * 16) as i32);
            }
        });
    });
}

/// `pv(p, vp, nk, o, p, p, p)`: `O[r][:] += Σ_{k < nk} P[r][k]·vp[k][:]`; `nk` is a multiple
/// of 4 (`p` repeated: see [`POINTER_ALIASES`]). P rows are `s_stride` floats apart.
pub fn pv(e: &mut Emit, c: &Consts, p: &[Value]) {
    let (vp, nk, o) = (p[1], p[2], p[3]);
    let p_alias = [p[0], p[4], p[5], p[6]];
    let g = c.g;
    let rb_max = c.variant.rows as usize;
    let cbv = c.variant.value_vectors as usize;
    let nvec = c.dvp / 4;
    let u = c.variant.unroll as i64;
    let mut r0 = 0;
    while r0 < g {
        let rb = rb_max.min(g - r0);
        let mut v0 = 0;
        while v0 < nvec {
            let cb = cbv.min(nvec - v0);
            let orow = e.b.ins().iadd_imm_s(o, (r0 * c.dvp * 4 + v0 * 16) as i64);
            let acc: Vec<Variable> = (0..rb * cb)
                .map(|i| {
                    let (r, j) = (i / cb, i % cb);
                    let x = e.load4(orow, (r * c.dvp * 4 + j * 16) as i32);
                    e.var(F32X4, x)
                })
                .collect();
            let start = e.int(0);
            e.for_range(start, nk, u, |e, k| {
                let vaddr = e.addr(vp, k, (c.dvp * 4) as i64);
                let paddr: Vec<Value> = p_alias[..cb].iter().map(|pp| e.addr(*pp, k, 4)).collect();
                for uu in 0..u {
                    let vv: Vec<Value> = (0..cb)
                        .map(|j| {
                            e.load4_ro(vaddr, ((uu as usize * c.dvp + (v0 + j) * 4) * 4) as i32)
                        })
                        .collect();
                    for r in 0..rb {
                        for (j, vvj) in vv.iter().enumerate() {
                            let off = ((r0 + r) * c.s_stride * 4) as i64 + uu * 4;
                            let pb = e.bcast_ro(paddr[j], off as i32);
                            let a = e.b.use_var(acc[r * cb + j]);
                            let n = e.fma(pb, *vvj, a);
                            e.b.def_var(acc[r * cb + j], n);
                        }
                    }
                }
            });
            for (i, a) in acc.iter().enumerate() {
                let (r, j) = (i / cb, i % cb);
                let x = e.b.use_var(*a);
                e.store(x, orow, (r * c.dvp * 4 + j * 16) as i32);
            }
            v0 += cb;
        }
        r0 += rb;
    }
}

/// 1/ℓ[r] as a scalar and splatted to F32X4, or 0 where ℓ[r] ≤ 0 (an empty row yields 0,
/// never NaN).
pub fn inverse_row_sum(e: &mut Emit, l: Value, r: Value) -> (Value, Value) {
    let la = e.addr(l, r, 4);
    let lv = e.load1(la, 0);
    let zero = e.f32(0.0);
    let one = e.f32(1.0);
    let pos = e.b.ins().fcmp(FloatCC::GreaterThan, lv, zero);
    let inv = e.b.ins().fdiv(one, lv);
    let inv = e.b.ins().select(pos, inv, zero);
    (inv, e.b.ins().splat(F32X4, inv))
}

/// `finish(o, l, out)`: `out[r][d] = O[r][d] / ℓ[r]` for d < Dv (0 where ℓ = 0); `out` rows are
/// Dv floats apart (the output tensor's layout).
pub fn finish(e: &mut Emit, c: &Consts, p: &[Value]) {
    let (o, l, out) = (p[0], p[1], p[2]);
    let start = e.int(0);
    let g = e.int(c.g as i64);
    e.for_range(start, g, 1, |e, r| {
        let (inv, invv) = inverse_row_sum(e, l, r);
        let orow = e.addr(o, r, (c.dvp * 4) as i64);
        let dst = e.addr(out, r, (c.dv * 4) as i64);
        for j in 0..c.dv / 4 {
            let x = e.load4(orow, (j * 16) as i32);
            let y = e.b.ins().fmul(x, invv);
            e.store(y, dst, (j * 16) as i32);
        }
        for d in (c.dv / 4 * 4)..c.dv {
            let x = e.load1(orow, (d * 4) as i32);
            let y = e.b.ins().fmul(x, inv);
            e.store(y, dst, (d * 4) as i32);
        }
    });
}
