//! Code pieces shared by the kernel generators: parameter declaration (buffers, then `u32`
//! sizes), the warp-per-row prologue, segment lookup, typed element loads (bf16/f16/f32/i32 → f32),
//! warp-distributed head vectors, warp reductions, counted loops and the register bound of large
//! thread blocks.

use crate::ptx::builder::{
    KernelBuilder, Label, Operand, ParamTy, Reg, RegClass, fimm, imm, mem, sym,
};
use crate::ptx::launch::Geometry;

use super::{KernelOut, Launch, Param, Scalar};

/// Declares a pointer parameter per buffer name; returns their symbols.
pub fn declare_buffers(b: &mut KernelBuilder, names: &[String]) -> Vec<String> {
    names.iter().map(|n| b.param(n, ParamTy::Ptr)).collect()
}

/// Declares the `u32` size parameter `s` (after every pointer); returns its symbol.
pub fn declare_scalar(b: &mut KernelBuilder, s: Scalar) -> String {
    b.param(s.name(), ParamTy::U32)
}

/// The manifest's parameter list: `buffers` in order, then `scalars`.
pub fn params_of(buffers: &[String], scalars: &[Scalar]) -> Vec<Param> {
    buffers
        .iter()
        .map(|n| Param::buffer(n))
        .chain(scalars.iter().map(|&name| Param::U32 { name }))
        .collect()
}

/// The element type of a buffer the kernels load from: the plan's own ([`Elem::of`] the call's
/// dtype for inputs, f32 for the compressed tokens and branch outputs).
pub use crate::ir::Elem;

/// Registers of a multiprocessor (sm_80, sm_90) and the per-thread unit they are allocated in.
const REGISTER_FILE: u32 = 64 * 1024;
const REGISTER_UNIT: u32 = 8;

/// The most registers per thread ptxas may choose (`.maxnreg` limit).
const MAX_REGS: u32 = 255;

/// The most registers per thread with which a block of `threads` still launches.
pub fn launchable_regs(threads: u32) -> u32 {
    let per_thread = REGISTER_FILE / threads.max(1);
    (per_thread - per_thread % REGISTER_UNIT).min(MAX_REGS)
}

/// Bounds the registers per thread of a kernel launched with blocks of `threads` when such a
/// block limits them (fewer than `MAX_REGS` launch): declares `.maxntid threads` and lowers
/// the `.maxnreg` cap to [`launchable_regs`] (ptxas honours a higher cap over `.maxntid`, and
/// with `.maxntid` alone it has chosen far fewer registers than allowed, spilling kilobytes).
/// The kernel then spills rather than fail to launch. Smaller blocks (up to 256 threads) get
/// nothing: the bound would not constrain ptxas, yet `.maxntid` changes its register allocation
/// (seen with `ptxas -v`: more spills for some default kernels).
pub fn bound_threads(b: &mut KernelBuilder, threads: u32) {
    let most = launchable_regs(threads);
    if most < MAX_REGS {
        b.max_threads(threads);
        b.max_regs(b.reg_cap().map_or(most, |cap| cap.min(most)));
    }
}

/// The registers every warp-per-row kernel starts with.
pub struct WarpRow {
    pub row: Reg,
    pub lane: Reg,
    pub exit: Label,
}

/// `(%tid.x, the global thread index %ctaid.x·%ntid.x + %tid.x)` of a 1-D launch.
pub fn global_thread(b: &mut KernelBuilder) -> (Reg, Reg) {
    let tid = b.op1(RegClass::B32, "mov.u32", sym("%tid.x"));
    let cta = b.op1(RegClass::B32, "mov.u32", sym("%ctaid.x"));
    let ntid = b.op1(RegClass::B32, "mov.u32", sym("%ntid.x"));
    let gt = b.op3(
        RegClass::B32,
        "mad.lo.u32",
        cta.into(),
        ntid.into(),
        tid.into(),
    );
    (tid, gt)
}

/// `row = global thread / 32`, `lane = tid & 31`; warps past `ntok · per_token` rows jump to
/// `exit` (`ntok`: the call's tokens, a parameter).
pub fn warp_row(b: &mut KernelBuilder, ntok: Reg, per_token: u32) -> WarpRow {
    let (tid, gt) = global_thread(b);
    let row = b.op2(RegClass::B32, "shr.u32", gt.into(), imm(5));
    let lane = b.op2(RegClass::B32, "and.b32", tid.into(), imm(31));
    let exit = b.label();
    let nrows = b.op2(
        RegClass::B32,
        "mul.lo.u32",
        ntok.into(),
        imm(i64::from(per_token)),
    );
    let p = b.setp("ge.u32", row.into(), nrows.into());
    b.bra_if(p, false, exit);
    WarpRow { row, lane, exit }
}

impl WarpRow {
    /// Ends the kernel (exit label, `ret`) and describes its launch: `per_token` warps per
    /// token of the call, `warps` per block. `rows` is the row count as the launch formula
    /// writes it (e.g. `B*T*HQ`), `row` what one warp handles (e.g. `(token, query head)`).
    pub fn finish(
        self,
        mut b: KernelBuilder,
        params: Vec<Param>,
        (per_token, warps): (u32, u32),
        rows: &str,
        row: &str,
    ) -> KernelOut {
        b.place(self.exit);
        b.ins("ret", []);
        let threads = warps * 32;
        bound_threads(&mut b, threads);
        KernelOut {
            ptx: b.finish(),
            params,
            max_regs: b.reg_cap(),
            launch: Launch {
                geometry: Geometry::new(per_token, warps, 1, threads, 0),
                formula: format!(
                    "grid = ceil({rows} / {warps}), block = {threads}: one warp per {row}"
                ),
            },
        }
    }
}

/// The segment `(start, end)` of flattened token `tok`, read from the `seg` buffer of `cols`
/// u32 columns per token.
pub fn segment(b: &mut KernelBuilder, seg: Reg, tok: Reg, cols: u32) -> (Reg, Reg) {
    let a = b.addr(seg, tok, 4 * cols);
    let s = b.reg(RegClass::B32);
    let e = b.reg(RegClass::B32);
    b.ins("ld.global.u32", [s.into(), mem(a, 0)]);
    b.ins("ld.global.u32", [e.into(), mem(a, 4)]);
    (s, e)
}

/// Column `column` of token `tok`'s row of the `seg` buffer: the first compressed slot of the
/// token's segment for one compress branch (`lowering::Compressed::column`).
pub fn segment_column(b: &mut KernelBuilder, seg: Reg, tok: Reg, cols: u32, column: u32) -> Reg {
    let a = b.addr(seg, tok, 4 * cols);
    let c = b.reg(RegClass::B32);
    b.ins("ld.global.u32", [c.into(), mem(a, i64::from(4 * column))]);
    c
}

/// Loads element `index` of `base` as f32.
pub fn load(b: &mut KernelBuilder, base: Reg, index: Reg, elem: Elem) -> Reg {
    load_if(b, base, index, elem, None)
}

/// Loads element `index` of `base` as f32 where `guard` holds (0 elsewhere).
pub fn load_if(
    b: &mut KernelBuilder,
    base: Reg,
    index: Reg,
    elem: Elem,
    guard: Option<Reg>,
) -> Reg {
    let a = b.addr(base, index, elem.size() as u32);
    let f = b.reg(RegClass::F32);
    let emit = |b: &mut KernelBuilder, op: &str, args: Vec<Operand>| match guard {
        Some(p) => b.ins_if(p, false, op, args),
        None => b.ins(op, args),
    };
    match elem {
        Elem::F32 => {
            if guard.is_some() {
                b.ins("mov.f32", [f.into(), fimm(0.0)]);
            }
            emit(b, "ld.global.f32", vec![f.into(), mem(a, 0)]);
        }
        Elem::Bf16 => {
            let h = b.reg(RegClass::B16);
            if guard.is_some() {
                b.ins("mov.b16", [h.into(), imm(0)]);
            }
            emit(b, "ld.global.b16", vec![h.into(), mem(a, 0)]);
            let w = b.op1(RegClass::B32, "cvt.u32.u16", h.into());
            let s = b.op2(RegClass::B32, "shl.b32", w.into(), imm(16));
            b.ins("mov.b32", [f.into(), s.into()]);
        }
        Elem::F16 => {
            let h = b.reg(RegClass::B16);
            if guard.is_some() {
                b.ins("mov.b16", [h.into(), imm(0)]);
            }
            emit(b, "ld.global.b16", vec![h.into(), mem(a, 0)]);
            b.ins("cvt.f32.f16", [f.into(), h.into()]);
        }
        Elem::I32 => {
            let i = b.reg(RegClass::B32);
            if guard.is_some() {
                b.ins("mov.b32", [i.into(), imm(0)]);
            }
            emit(b, "ld.global.s32", vec![i.into(), mem(a, 0)]);
            b.ins("cvt.rn.f32.s32", [f.into(), i.into()]);
        }
    }
    f
}

/// Number of 32-wide chunks a warp needs for a vector of `dim` elements.
pub fn chunks(dim: u32) -> u32 {
    dim.div_ceil(32)
}

/// The predicate "lane + 32·m < dim" for a partial last chunk, `None` when the chunk is full.
pub fn chunk_guard(b: &mut KernelBuilder, lane: Reg, m: u32, dim: u32) -> Option<Reg> {
    if (m + 1) * 32 <= dim {
        return None;
    }
    let d = b.op2(
        RegClass::B32,
        "add.u32",
        lane.into(),
        imm(i64::from(m * 32)),
    );
    Some(b.setp("lt.u32", d.into(), imm(i64::from(dim))))
}

/// The index `start + 32·m` of a lane's element in chunk `m` of a warp-distributed row whose
/// lane-0 element is at `start − lane`, with its [`chunk_guard`].
pub fn lane_element(
    b: &mut KernelBuilder,
    start: Reg,
    lane: Reg,
    m: u32,
    dim: u32,
) -> (Reg, Option<Reg>) {
    let g = chunk_guard(b, lane, m, dim);
    let idx = b.op2(
        RegClass::B32,
        "add.u32",
        start.into(),
        imm(i64::from(m * 32)),
    );
    (idx, g)
}

/// Stores f32 `value` at element `idx` of `base`, under `guard` when there is one.
pub fn store_f32_if(b: &mut KernelBuilder, base: Reg, idx: Reg, value: Reg, guard: Option<Reg>) {
    let a = b.addr(base, idx, 4);
    match guard {
        Some(p) => b.ins_if(p, false, "st.global.f32", [mem(a, 0), value.into()]),
        None => b.ins("st.global.f32", [mem(a, 0), value.into()]),
    }
}

/// Loads the warp-distributed vector at element offset `row_off` of `base`: lane holds
/// elements `lane + 32·m`, one register per chunk, 0 past `dim`.
pub fn load_vec(
    b: &mut KernelBuilder,
    base: Reg,
    row_off: Reg,
    lane: Reg,
    dim: u32,
    elem: Elem,
) -> Vec<Reg> {
    let start = b.op2(RegClass::B32, "add.u32", row_off.into(), lane.into());
    (0..chunks(dim))
        .map(|m| {
            let (idx, g) = lane_element(b, start, lane, m, dim);
            load_if(b, base, idx, elem, g)
        })
        .collect()
}

/// Stores a warp-distributed f32 vector to `base` at element offset `row_off`.
pub fn store_vec(b: &mut KernelBuilder, base: Reg, row_off: Reg, lane: Reg, dim: u32, v: &[Reg]) {
    let start = b.op2(RegClass::B32, "add.u32", row_off.into(), lane.into());
    for (m, r) in v.iter().enumerate() {
        let (idx, g) = lane_element(b, start, lane, m as u32, dim);
        store_f32_if(b, base, idx, *r, g);
    }
}

/// The warp-wide sum of `x` (every lane receives it), by butterfly shuffles.
pub fn warp_sum(b: &mut KernelBuilder, x: Reg) -> Reg {
    let mut acc = x;
    for off in [16, 8, 4, 2, 1] {
        let bits = b.op1(RegClass::B32, "mov.b32", acc.into());
        let o = b.reg(RegClass::B32);
        b.ins(
            "shfl.sync.bfly.b32",
            [o.into(), bits.into(), imm(off), imm(31), imm(-1)],
        );
        let of = b.op1(RegClass::F32, "mov.b32", o.into());
        acc = b.op2(RegClass::F32, "add.f32", acc.into(), of.into());
    }
    acc
}

/// The dot product of two warp-distributed vectors, reduced over the warp.
pub fn warp_dot(b: &mut KernelBuilder, x: &[Reg], y: &[Reg]) -> Reg {
    let mut acc = b.op2(RegClass::F32, "mul.f32", x[0].into(), y[0].into());
    for (a, c) in x.iter().zip(y).skip(1) {
        acc = b.op3(
            RegClass::F32,
            "fma.rn.f32",
            (*a).into(),
            (*c).into(),
            acc.into(),
        );
    }
    warp_sum(b, acc)
}

/// A counted loop `for i in lo..hi` (unsigned, `hi` exclusive); `body` gets `i`.
pub fn for_range(
    b: &mut KernelBuilder,
    lo: Operand,
    hi: Operand,
    step: i64,
    body: impl FnOnce(&mut KernelBuilder, Reg),
) {
    let i = b.reg(RegClass::B32);
    b.ins("mov.u32", [i.into(), lo]);
    let head = b.label();
    let done = b.label();
    b.place(head);
    let p = b.setp("ge.u32", i.into(), hi);
    b.bra_if(p, false, done);
    body(b, i);
    b.ins("add.u32", [i.into(), i.into(), imm(step)]);
    b.bra(head);
    b.place(done);
}

/// Number of compressed tokens visible to position `pos` of a segment of length `len`
/// (docs/ARCHITECTURE.md §3: token j exists when j·d + l ≤ len, and is visible when
/// j·d + l − 1 ≤ pos).
pub fn visible_compressed(
    b: &mut KernelBuilder,
    pos: Reg,
    len: Reg,
    block: u32,
    stride: u32,
    causal: bool,
) -> Reg {
    let (l, d) = (i64::from(block), i64::from(stride));
    // count(x) = x ≥ l ? (x − l)/d + 1 : 0, for x = len (exists) or pos + 1 (visible).
    let count = |b: &mut KernelBuilder, x: Reg| {
        let ok = b.setp("ge.u32", x.into(), imm(l));
        let t = b.op2(RegClass::B32, "sub.u32", x.into(), imm(l));
        let q = b.op2(RegClass::B32, "div.u32", t.into(), imm(d));
        let c = b.op2(RegClass::B32, "add.u32", q.into(), imm(1));
        let r = b.reg(RegClass::B32);
        b.ins("selp.u32", [r.into(), c.into(), imm(0), ok.into()]);
        r
    };
    let exist = count(b, len);
    if !causal {
        return exist;
    }
    let p1 = b.op2(RegClass::B32, "add.u32", pos.into(), imm(1));
    let vis = count(b, p1);
    b.op2(RegClass::B32, "min.u32", vis.into(), exist.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launchable_registers_follow_the_block_size() {
        assert_eq!(launchable_regs(32), 255);
        assert_eq!(launchable_regs(256), 255);
        assert_eq!(launchable_regs(288), 224);
        assert_eq!(launchable_regs(512), 128);
        assert_eq!(launchable_regs(1024), 64);
        for threads in [256, 288, 512, 1024] {
            let mut b = KernelBuilder::new("k");
            bound_threads(&mut b, threads);
            assert_eq!(
                b.finish().contains(&format!(".maxntid {threads}, 1, 1")),
                threads > 256
            );
            assert_eq!(
                b.reg_cap(),
                (threads > 256).then(|| launchable_regs(threads))
            );
        }
        let mut b = KernelBuilder::new("k");
        b.max_regs(96);
        bound_threads(&mut b, 512);
        assert_eq!(b.reg_cap(), Some(96), "a lower cap stays");
    }
}
