//! Small CLIF-building helpers shared by every generated function: counted loops, constants,
//! F32X4 arithmetic with or without `fma`, and an inline polynomial `exp`.
//!
//! The softmax works in base 2 (scores are pre-scaled by log₂e), and `2^x` is generated inline
//! (`x = n + r`, degree-6 polynomial in `r`, `2ⁿ` built in the exponent bits), so generated
//! code calls no helper at all. Inputs at or below −127 (including −∞) give exactly 0, which
//! is what masked softmax lanes need.

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

/// Flags for loads of memory that no generated code writes while the function runs (the
/// inputs Q, K, V and, inside `pv`, the probabilities P). Such loads are pure to Cranelift's
/// e-graph, so it places each one right before its first use instead of keeping CLIF order;
/// without this, the arithmetic of an unrolled register tile is sunk below all of its loads
/// and the register tile spills.
pub fn mem_ro() -> MemFlagsData {
    MemFlagsData::new()
        .with_notrap()
        .with_readonly()
        .with_can_move()
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

    /// `load4` of read-only memory (see [`mem_ro`]).
    pub fn load4_ro(&mut self, ptr: Value, off: i32) -> Value {
        self.b.ins().load(F32X4, mem_ro(), ptr, off)
    }

    /// `bcast` of read-only memory (see [`mem_ro`]).
    pub fn bcast_ro(&mut self, ptr: Value, off: i32) -> Value {
        let x = self.b.ins().load(F32, mem_ro(), ptr, off);
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

    /// `if cond { then() } else { otherwise() }`.
    pub fn if_else(
        &mut self,
        cond: Value,
        then: impl FnOnce(&mut Self),
        otherwise: impl FnOnce(&mut Self),
    ) {
        let t = self.b.create_block();
        let f = self.b.create_block();
        let join = self.b.create_block();
        self.b.ins().brif(cond, t, &[], f, &[]);
        for (blk, body) in [
            (t, Box::new(then) as Box<dyn FnOnce(&mut Self)>),
            (f, Box::new(otherwise)),
        ] {
            self.b.switch_to_block(blk);
            self.b.seal_block(blk);
            body(self);
            self.b.ins().jump(join, &[]);
        }
        self.b.switch_to_block(join);
        self.b.seal_block(join);
    }

    /// Returns values equal to `vals` that are computed *here*, before a loop that uses them.
    ///
    /// Cranelift's e-graph places a pure value at its first use and, in the loops we generate,
    /// does not hoist it back out (seen in the optimized CLIF: a row's max/offset and address
    /// arithmetic recomputed for every vector). Passing the values as parameters of a join
    /// block pins them: the two incoming edges carry different SSA values (the second an
    /// identity of the first, on an edge never taken), so the parameters survive constant-phi
    /// removal, and uses inside the loop refer to parameters defined outside it.
    pub fn materialize(&mut self, vals: &[Value]) -> Vec<Value> {
        let join = self.b.create_block();
        let params: Vec<Value> = vals
            .iter()
            .map(|v| {
                let ty = self.b.func.dfg.value_type(*v);
                self.b.append_block_param(join, ty)
            })
            .collect();
        let alt = self.b.create_block();
        let zero = self.b.ins().iconst(I64, 0);
        let one = self.b.ins().iconst(I64, 1);
        let taken = self.b.ins().icmp(IntCC::SignedLessThan, zero, one);
        let args: Vec<_> = vals.iter().map(|v| (*v).into()).collect();
        self.b.ins().brif(taken, join, &args, alt, &[]);
        self.b.switch_to_block(alt);
        self.b.seal_block(alt);
        let alt_args: Vec<_> = vals
            .iter()
            .map(|v| {
                let ty = self.b.func.dfg.value_type(*v);
                let same = if ty.is_vector() {
                    self.b.ins().bor(*v, *v)
                } else if ty.is_float() {
                    let n = self.b.ins().fneg(*v);
                    self.b.ins().fneg(n)
                } else {
                    self.b.ins().bor(*v, *v)
                };
                same.into()
            })
            .collect();
        self.b.ins().jump(join, &alt_args);
        self.b.switch_to_block(join);
        self.b.seal_block(join);
        params
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

    /// Lane-wise maximum as one `maxps`: `b < a ? a : b`. (Cranelift's `fmax` is IEEE-exact
    /// for NaN and −0, which costs seven instructions; the values here are never NaN.)
    pub fn vmax(&mut self, a: Value, b: Value) -> Value {
        let lt = self.b.ins().fcmp(FloatCC::LessThan, b, a);
        let ltf = self.b.ins().bitcast(F32X4, lane_flags(), lt);
        self.b.ins().bitselect(ltf, a, b)
    }

    /// Lane-wise `2^x` for an F32X4 of `x ≤ 0` (softmax exponents after subtracting the
    /// maximum); `x ≤ −127` (including −∞) gives exactly 0.
    ///
    /// `n = round(x)` comes from adding and subtracting 1.5·2²³ (the sum's low mantissa bits
    /// then hold `n`, so `2ⁿ` is those bits plus the bias, shifted into the exponent field);
    /// `2^r` for `|r| ≤ ½` is the degree-6 Taylor polynomial of `e^{r·ln 2}` (truncation error
    /// below 1.3e-7 relative). At `n = −127` the exponent field is 0, i.e. the factor is +0.
    pub fn vexp2(&mut self, x: Value) -> Value {
        let lo = self.splat(-127.0);
        let xc = self.vmax(x, lo);
        let magic = self.splat(12_582_912.0);
        let t = self.b.ins().fadd(xc, magic);
        let n = self.b.ins().fsub(t, magic);
        let r = self.b.ins().fsub(xc, n);
        let ln2 = std::f64::consts::LN_2;
        let mut p = self.splat((ln2.powi(6) / 720.0) as f32);
        for k in (0..6).rev() {
            let fact: f64 = (1..=k).map(f64::from).product();
            let cv = self.splat((ln2.powi(k) / fact) as f32);
            p = self.fma(p, r, cv);
        }
        let bits = self.b.ins().bitcast(I32X4, lane_flags(), t);
        let bias = self.b.ins().iconst(I32, 127);
        let bias = self.b.ins().splat(I32X4, bias);
        let e = self.b.ins().iadd(bits, bias);
        let e = self.b.ins().ishl_imm_s(e, 23);
        let pow = self.b.ins().bitcast(F32X4, lane_flags(), e);
        self.b.ins().fmul(p, pow)
    }

    /// Converts an i64 to f32.
    pub fn int_to_f32(&mut self, v: Value) -> Value {
        self.b.ins().fcvt_from_sint(F32, v)
    }
}
