//! Small CLIF-building helpers shared by every generated function: counted loops, constants,
//! F32X4 arithmetic with or without `fma`, and an inline polynomial `exp`.
//!
//! `exp` is generated inline (range reduction `x = n·ln2 + r`, degree-6 polynomial in `r`,
//! `2ⁿ` built in the exponent bits) so generated code calls no helper at all. Inputs below
//! −87.3 (including −∞) give exactly 0, which is what masked softmax lanes need.

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::types::{F32, F32X4, I32, I32X4, I64};
use cranelift_codegen::ir::{Endianness, InstBuilder, MemFlagsData, Value};
use cranelift_frontend::{FunctionBuilder, Variable};

/// A function builder plus the code-generation options of this compilation.
pub struct Emit<'a> {
    pub b: FunctionBuilder<'a>,
    /// Use `fma` (host has FMA); otherwise `fmul` + `fadd`.
    pub fma: bool,
}

/// Memory flags for the plain, aligned-enough, non-trapping accesses of generated code.
pub fn mem() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

fn lane_flags() -> MemFlagsData {
    MemFlagsData::new().with_endianness(Endianness::Little)
}

impl<'a> Emit<'a> {
    pub fn new(b: FunctionBuilder<'a>, fma: bool) -> Self {
        Emit { b, fma }
    }

    pub fn int(&mut self, v: i64) -> Value {
        self.b.ins().iconst(I64, v)
    }

    pub fn f32(&mut self, v: f32) -> Value {
        self.b.ins().f32const(v)
    }

    pub fn splat(&mut self, v: f32) -> Value {
        let s = self.f32(v);
        self.b.ins().splat(F32X4, s)
    }

    /// `base + index·scale_bytes` as an address.
    pub fn addr(&mut self, base: Value, index: Value, scale_bytes: i64) -> Value {
        let off = self.b.ins().imul_imm_s(index, scale_bytes);
        self.b.ins().iadd(base, off)
    }

    pub fn load4(&mut self, ptr: Value, off: i32) -> Value {
        self.b.ins().load(F32X4, mem(), ptr, off)
    }

    pub fn load1(&mut self, ptr: Value, off: i32) -> Value {
        self.b.ins().load(F32, mem(), ptr, off)
    }

    /// Loads one f32 and broadcasts it to four lanes.
    pub fn bcast(&mut self, ptr: Value, off: i32) -> Value {
        let x = self.load1(ptr, off);
        self.b.ins().splat(F32X4, x)
    }

    pub fn store(&mut self, v: Value, ptr: Value, off: i32) {
        self.b.ins().store(mem(), v, ptr, off);
    }

    /// `a·b + c` (vector or scalar).
    pub fn fma(&mut self, a: Value, b: Value, c: Value) -> Value {
        if self.fma {
            self.b.ins().fma(a, b, c)
        } else {
            let m = self.b.ins().fmul(a, b);
            self.b.ins().fadd(m, c)
        }
    }

    pub fn var(&mut self, ty: cranelift_codegen::ir::Type, init: Value) -> Variable {
        let v = self.b.declare_var(ty);
        self.b.def_var(v, init);
        v
    }

    /// `for i in (start..end).step_by(step)` with `i` an i64 block parameter; values that change
    /// across iterations must live in [`Variable`]s.
    pub fn for_range(
        &mut self,
        start: Value,
        end: Value,
        step: i64,
        mut body: impl FnMut(&mut Self, Value),
    ) {
        let header = self.b.create_block();
        let body_blk = self.b.create_block();
        let exit = self.b.create_block();
        let i = self.b.append_block_param(header, I64);
        self.b.ins().jump(header, &[start.into()]);
        self.b.switch_to_block(header);
        let more = self.b.ins().icmp(IntCC::SignedLessThan, i, end);
        self.b.ins().brif(more, body_blk, &[], exit, &[]);
        self.b.switch_to_block(body_blk);
        self.b.seal_block(body_blk);
        body(self, i);
        let next = self.b.ins().iadd_imm_s(i, step);
        self.b.ins().jump(header, &[next.into()]);
        self.b.seal_block(header);
        self.b.switch_to_block(exit);
        self.b.seal_block(exit);
    }

    /// `if cond { then() }`.
    pub fn when(&mut self, cond: Value, then: impl FnOnce(&mut Self)) {
        let t = self.b.create_block();
        let join = self.b.create_block();
        self.b.ins().brif(cond, t, &[], join, &[]);
        self.b.switch_to_block(t);
        self.b.seal_block(t);
        then(self);
        self.b.ins().jump(join, &[]);
        self.b.switch_to_block(join);
        self.b.seal_block(join);
    }

    pub fn min(&mut self, a: Value, b: Value) -> Value {
        self.b.ins().smin(a, b)
    }

    pub fn max(&mut self, a: Value, b: Value) -> Value {
        self.b.ins().smax(a, b)
    }

    /// Horizontal maximum of the four lanes.
    pub fn hmax(&mut self, v: Value) -> Value {
        let l: Vec<Value> = (0..4).map(|i| self.b.ins().extractlane(v, i)).collect();
        let a = self.b.ins().fmax(l[0], l[1]);
        let c = self.b.ins().fmax(l[2], l[3]);
        self.b.ins().fmax(a, c)
    }

    /// Horizontal sum of the four lanes.
    pub fn hsum(&mut self, v: Value) -> Value {
        let l: Vec<Value> = (0..4).map(|i| self.b.ins().extractlane(v, i)).collect();
        let a = self.b.ins().fadd(l[0], l[1]);
        let c = self.b.ins().fadd(l[2], l[3]);
        self.b.ins().fadd(a, c)
    }

    /// The lane offsets `[0, 1, 2, 3]` as an I32X4.
    pub fn iota(&mut self) -> Value {
        let z = self.b.ins().iconst(I32, 0);
        let mut v = self.b.ins().splat(I32X4, z);
        for lane in 1..4u8 {
            let c = self.b.ins().iconst(I32, i64::from(lane));
            v = self.b.ins().insertlane(v, c, lane);
        }
        v
    }

    /// Lanes of `x` whose key index `base + iota` lies in `[lo, hi)` keep their value; the
    /// others become −∞. `base`, `lo`, `hi` are i64 scalars.
    pub fn mask_range(
        &mut self,
        x: Value,
        iota: Value,
        base: Value,
        lo: Value,
        hi: Value,
    ) -> Value {
        let base32 = self.b.ins().ireduce(I32, base);
        let bs = self.b.ins().splat(I32X4, base32);
        let idx = self.b.ins().iadd(bs, iota);
        let lo32 = self.b.ins().ireduce(I32, lo);
        let hi32 = self.b.ins().ireduce(I32, hi);
        let los = self.b.ins().splat(I32X4, lo32);
        let his = self.b.ins().splat(I32X4, hi32);
        let ge = self.b.ins().icmp(IntCC::SignedGreaterThanOrEqual, idx, los);
        let lt = self.b.ins().icmp(IntCC::SignedLessThan, idx, his);
        let keep = self.b.ins().band(ge, lt);
        let keepf = self.b.ins().bitcast(F32X4, lane_flags(), keep);
        let ninf = self.splat(f32::NEG_INFINITY);
        self.b.ins().bitselect(keepf, x, ninf)
    }

    /// Lane-wise `exp(x)` for an F32X4; `x < −87.3` (and −∞) gives exactly 0.
    pub fn vexp(&mut self, x: Value) -> Value {
        let lo = self.splat(-87.3);
        let hi = self.splat(88.0);
        let xc = self.b.ins().fmax(x, lo);
        let xc = self.b.ins().fmin(xc, hi);
        let log2e = self.splat(std::f32::consts::LOG2_E);
        let t = self.b.ins().fmul(xc, log2e);
        let n = self.b.ins().nearest(t);
        let ln2_hi = self.splat(-0.693_145_75);
        let ln2_lo = self.splat(-1.428_606_8e-6);
        let r = self.fma(n, ln2_hi, xc);
        let r = self.fma(n, ln2_lo, r);
        // Taylor coefficients 1/k!, k = 6..0 (|r| ≤ ln2/2: truncation error < 2e-7 relative).
        let coeffs = [
            1.0 / 720.0,
            1.0 / 120.0,
            1.0 / 24.0,
            1.0 / 6.0,
            0.5,
            1.0,
            1.0,
        ];
        let mut p = self.splat(coeffs[0]);
        for &c in &coeffs[1..] {
            let cv = self.splat(c);
            p = self.fma(p, r, cv);
        }
        let ni = self.b.ins().fcvt_to_sint_sat(I32X4, n);
        let bias = self.b.ins().iconst(I32, 127);
        let bias = self.b.ins().splat(I32X4, bias);
        let e = self.b.ins().iadd(ni, bias);
        let e = self.b.ins().ishl_imm_s(e, 23);
        let pow = self.b.ins().bitcast(F32X4, lane_flags(), e);
        let y = self.b.ins().fmul(p, pow);
        let under = self.b.ins().fcmp(FloatCC::LessThan, x, lo);
        let underf = self.b.ins().bitcast(F32X4, lane_flags(), under);
        let zero = self.splat(0.0);
        self.b.ins().bitselect(underf, zero, y)
    }

    /// Converts an i64 to f32.
    pub fn int_to_f32(&mut self, v: Value) -> Value {
        self.b.ins().fcvt_from_sint(F32, v)
    }
}
