//! The executor of a training plan's backward pass ([`execute_backward`]).
//!
//! Per call: the forward's pools run again (their compressed tokens are scratch of the
//! forward), keys and values are packed per (b, segment, kv head) in the layouts the
//! backward drivers read (`kt`: keys by four, transposed; `kr`: key rows of ⌈Dqk/4⌉·4 floats;
//! `vt`: values like `kt`), then the steps run in plan order, each over its own work items in
//! parallel:
//! * `dcombine`, `dq_<b>`: one item per (b, segment, kv head, chunk of `bwd_query_chunk`
//!   positions), each writing its positions' rows;
//! * `dkv_<b>`: one item per (b, segment, kv head, key tile), which sums the contributions of
//!   every query that sees the tile in query order: for gathered blocks the queries come from
//!   a reverse index (for every block, the positions that chose it, built by a counting sort
//!   in position order); for windows and compressed tokens they are a contiguous range. No
//!   two items write the same row, and no sum depends on scheduling: the gradients are
//!   bit-identical for any number of threads;
//! * `dpool_<c>`: one item per kv head, its (b, segment)s in order (the weight gradients are
//!   sums over all of them);
//! * `gsum`: chunks of elements.
//!
//! The positional rules (which keys a query sees) come from [`crate::ir::rules`], as in the
//! forward executor; all arithmetic is in generated code.

use std::collections::BTreeMap;

use nsac_kernels::io::{InputRefs, Tensor};
use rayon::prelude::*;

use super::pack::{Packed, Slot, offset};
use super::{Shared, input, prepare};
use crate::cpu::abi::AbiError;
use crate::cpu::{CpuError, CpuProgram, Step, steps};
use crate::ir::{AttendGrad, Elem, KeySet, Op, Plan, PoolKind, Role, Sizes, TensorId, rules};

/// What a forward pass keeps for its backward: every `Saved` tensor (`lse_<b>`), the branch
/// outputs `o_<b>` and the chosen indices `idx_<s>`, by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Saved {
    pub f32: BTreeMap<String, Tensor<f32>>,
    pub i32: BTreeMap<String, Tensor<i32>>,
}

/// The gradient of every input, by its `Grad` tensor's name (`dq`, `dk`, `dg_<b>`, …).
pub type Gradients = BTreeMap<String, Tensor<f32>>;

fn missing(what: &str) -> CpuError {
    CpuError::Codegen(format!("the backward executor has no {what}"))
}

/// Raw keys and values of one (b, segment, kv head) in the backward's layouts.
struct GradPack {
    kt: Vec<f32>,
    kr: Vec<f32>,
    vt: Vec<f32>,
}

/// Transposes rows (`n` rows of `stride` floats, `dim` used) into groups of four,
/// `[⌈n/4⌉][dim][4]`, zero padded.
fn transpose4(rows: &[f32], n: usize, stride: usize, dim: usize) -> Vec<f32> {
    let n4 = n.div_ceil(4).max(1);
    let mut out = vec![0.0f32; n4 * dim * 4];
    for key in 0..n {
        let (grp, lane) = (key / 4, key % 4);
        for d in 0..dim {
            out[(grp * dim + d) * 4 + lane] = rows[key * stride + d];
        }
    }
    out
}

/// The rows of `n` keys packed by four (`[⌈n/4⌉][dim][4]`) as rows of `dimp` floats.
fn untranspose4(packed: &[f32], n: usize, dim: usize, dimp: usize) -> Vec<f32> {
    let n4 = n.div_ceil(4).max(1);
    let mut out = vec![0.0f32; n4 * 4 * dimp];
    for key in 0..n {
        let (grp, lane) = (key / 4, key % 4);
        for d in 0..dim {
            out[key * dimp + d] = packed[(grp * dim + d) * 4 + lane];
        }
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn pack_raw(
    k: &[f32],
    v: &[f32],
    t: usize,
    heads: usize,
    (dqk, dqkp, dv): (usize, usize, usize),
    s: Slot,
) -> GradPack {
    let n4 = s.len.div_ceil(4).max(1);
    let mut kr = vec![0.0f32; n4 * 4 * dqkp];
    let mut vrows = vec![0.0f32; n4 * 4 * dv];
    for key in 0..s.len {
        let ks = offset(t, heads, dqk, s.b, s.start + key, s.h);
        kr[key * dqkp..key * dqkp + dqk].copy_from_slice(&k[ks..ks + dqk]);
        let vs = offset(t, heads, dv, s.b, s.start + key, s.h);
        vrows[key * dv..key * dv + dv].copy_from_slice(&v[vs..vs + dv]);
    }
    GradPack {
        kt: transpose4(&kr, s.len, dqkp, dqk),
        vt: transpose4(&vrows, s.len, dv, dv),
        kr,
    }
}

fn pack_pooled(
    p: &Packed,
    ntok: usize,
    (dqk, dqkp, dv, dvp): (usize, usize, usize, usize),
) -> GradPack {
    GradPack {
        kt: p.k.clone(),
        kr: untranspose4(&p.k, ntok, dqk, dqkp),
        vt: transpose4(&p.v, ntok, dvp, dv),
    }
}

/// The f32 buffers of one backward call, by tensor: inputs and saved tensors borrowed, the
/// rest (scratch, gradients) owned.
struct Buffers<'a> {
    read: BTreeMap<TensorId, &'a [f32]>,
    owned: BTreeMap<TensorId, Vec<f32>>,
}

impl Buffers<'_> {
    fn get(&self, id: TensorId) -> Result<*const f32, CpuError> {
        if let Some(b) = self.read.get(&id) {
            return Ok(b.as_ptr());
        }
        self.owned
            .get(&id)
            .map(|b| b.as_ptr())
            .ok_or_else(|| missing("buffer"))
    }

    fn shared(&mut self, id: TensorId) -> Result<Shared<f32>, CpuError> {
        self.owned
            .get_mut(&id)
            .map(|b| Shared(b.as_mut_ptr()))
            .ok_or_else(|| missing("output buffer"))
    }
}

#[derive(Clone, Copy)]
struct Ptr(*const f32);

impl Ptr {
    /// The pointer `off` elements on (a method, so closures capture the `Ptr`, not its field).
    fn at(self, off: usize) -> *const f32 {
        self.0.wrapping_add(off)
    }

    fn get(self) -> *const f32 {
        self.0
    }
}
// SAFETY: read-only pointers into buffers that outlive the parallel section.
unsafe impl Send for Ptr {}
// SAFETY: see `Send`.
unsafe impl Sync for Ptr {}

/// Runs the backward steps of `program` (a training plan) on `sizes`: `inputs` hold the
/// forward's inputs and `do`, `saved` what its forward kept; all were checked by the caller.
pub(in crate::cpu) fn execute_backward<'a>(
    program: &CpuProgram,
    sizes: &Sizes,
    inputs: &'a InputRefs<'a>,
    saved: &'a Saved,
) -> Result<Gradients, CpuError> {
    let plan = &program.plan;
    let d = &plan.consts;
    let all = steps(plan)?;
    let prep = prepare(plan, &all, sizes, program, inputs)?;
    let (hq, h, g, dqk, dv) = (d.heads_q, d.heads_kv, d.group, d.dqk, d.dv);
    let dqkp = dqk.div_ceil(4) * 4;
    let dvp = dv.div_ceil(4) * 4;
    let seq = sizes.queries;
    let variant = &program.variant;
    let gs = super::super::grad_stride(plan, variant);

    // Buffers: inputs, saved tensors (read), every other tensor a backward op touches (owned).
    let mut bufs = Buffers {
        read: BTreeMap::new(),
        owned: BTreeMap::new(),
    };
    let start = plan.backward_start();
    for op in &plan.ops[start..] {
        for id in op.reads().into_iter().chain(op.writes()) {
            let t = plan.tensor(id);
            if bufs.read.contains_key(&id) || bufs.owned.contains_key(&id) || t.elem == Elem::I32 {
                continue;
            }
            let n = sizes
                .numel(plan, id)
                .map_err(crate::ir::contract::ContractError::from)?;
            if t.role == Role::In {
                let data = input(plan, inputs, id);
                bufs.read.insert(id, data);
            } else if let Some(s) = saved.f32.get(&t.name) {
                if s.data.len() != n {
                    return Err(CpuError::Output(format!(
                        "the saved `{}` holds {} values, the plan needs {n}",
                        t.name,
                        s.data.len()
                    )));
                }
                bufs.read.insert(id, &s.data);
            } else if matches!(t.role, Role::Scratch | Role::Grad)
                && plan.producer(id).is_some_and(|(i, _)| i >= start)
            {
                bufs.owned.insert(id, vec![0.0f32; n]);
            } else if !matches!(plan.producer(id), Some((_, Op::Pool(_)))) {
                return Err(CpuError::Output(format!(
                    "the backward needs the forward's `{}`",
                    t.name
                )));
            }
        }
    }
    let index = |id: TensorId| -> Result<&[i32], CpuError> {
        let name = &plan.tensor(id).name;
        let t = saved.i32.get(name).ok_or_else(|| {
            CpuError::Output(format!("the backward needs the forward's `{name}`"))
        })?;
        let n = sizes
            .numel(plan, id)
            .map_err(crate::ir::contract::ContractError::from)?;
        if t.data.len() != n {
            return Err(CpuError::Output(format!(
                "the saved `{name}` holds {} values, the plan needs {n}",
                t.data.len()
            )));
        }
        Ok(&t.data)
    };

    // Packs per key tensor (raw) or compress branch, per slot.
    let slots = &prep.slots;
    let mut packs: BTreeMap<TensorId, Vec<GradPack>> = BTreeMap::new();
    let mut ntoks: BTreeMap<TensorId, Vec<usize>> = BTreeMap::new();
    for op in &plan.ops[start..] {
        let Op::AttendGrad(a) = op else { continue };
        if packs.contains_key(&a.k) {
            continue;
        }
        match a.keys {
            KeySet::Compressed { block, stride } => {
                let branch = plan
                    .pool_of(&a.branch)
                    .filter(|p| p.kc == a.k)
                    .map(|p| p.branch.clone())
                    .or_else(|| {
                        plan.producer(a.k).and_then(|(_, op)| match op {
                            Op::Pool(p) => Some(p.branch.clone()),
                            _ => None,
                        })
                    })
                    .ok_or_else(|| missing("pool"))?;
                let pooled = prep
                    .pooled
                    .get(&branch)
                    .ok_or_else(|| missing("pooled keys"))?;
                let n: Vec<usize> = slots
                    .iter()
                    .map(|s| rules::compressed_tokens(s.len, block, stride))
                    .collect();
                let list = pooled
                    .par_iter()
                    .zip(&n)
                    .map(|(p, &nt)| pack_pooled(p, nt, (dqk, dqkp, dv, dvp)))
                    .collect();
                packs.insert(a.k, list);
                ntoks.insert(a.k, n);
            }
            _ => {
                let (kd, vd) = (input(plan, inputs, a.k), input(plan, inputs, a.v));
                let list = slots
                    .par_iter()
                    .map(|s| pack_raw(kd, vd, sizes.keys, h, (dqk, dqkp, dv), *s))
                    .collect();
                packs.insert(a.k, list);
            }
        }
    }

    let qchunk = variant.bwd_query_chunk as usize;
    let ktile = variant.bwd_key_tile as usize;
    let query_items: Vec<(usize, usize)> = slots
        .iter()
        .enumerate()
        .flat_map(|(si, s)| (0..s.len.div_ceil(qchunk)).map(move |c| (si, c * qchunk)))
        .collect();
    let qrow = |s: &Slot, t: usize| (s.b * seq + s.start + t) * hq + s.h * g;

    for (st, dr) in all.iter().zip(&program.drivers) {
        match st {
            Step::CombineGrad(cg) => {
                let d_o = Ptr(bufs.get(cg.d_out)?);
                let do_slot = dr.read("do")?;
                struct T {
                    o: (super::super::abi::SlotRef, Ptr),
                    gate: Option<(super::super::abi::SlotRef, Ptr)>,
                    dg: Option<(super::super::abi::SlotRef, Shared<f32>)>,
                    dob: (super::super::abi::SlotRef, Shared<f32>),
                    delta: (super::super::abi::SlotRef, Shared<f32>),
                }
                let mut terms = Vec::new();
                for term in &cg.terms {
                    let name = |id: TensorId| plan.tensor(id).name.clone();
                    terms.push(T {
                        o: (dr.read(&name(term.out))?, Ptr(bufs.get(term.out)?)),
                        gate: match term.gate {
                            Some(gid) => Some((dr.read(&name(gid))?, Ptr(bufs.get(gid)?))),
                            None => None,
                        },
                        dg: match term.d_gate {
                            Some(id) => Some((dr.write(&name(id))?, bufs.shared(id)?)),
                            None => None,
                        },
                        dob: (dr.write(&name(term.d_out))?, bufs.shared(term.d_out)?),
                        delta: (dr.write(&name(term.delta))?, bufs.shared(term.delta)?),
                    });
                }
                query_items
                    .par_iter()
                    .try_for_each(|&(si, t0)| -> Result<(), AbiError> {
                        let s = slots[si];
                        let mut args = dr.args();
                        for t in t0..(t0 + qchunk).min(s.len) {
                            let r = qrow(&s, t);
                            args.ptr(do_slot, d_o.at(r * dv));
                            for term in &terms {
                                args.ptr(term.o.0, term.o.1.at(r * dv));
                                if let Some((sl, p)) = term.gate {
                                    args.ptr(sl, p.at(r));
                                }
                                if let Some((sl, p)) = term.dg {
                                    args.ptr(sl, p.at(r));
                                }
                                args.ptr(term.dob.0, term.dob.1.at(r * dv));
                                args.ptr(term.delta.0, term.delta.1.at(r));
                            }
                            // SAFETY: every pointer addresses the G rows of position t of kv
                            // head s.h in a tensor of the plan's shape for these sizes.
                            unsafe { dr.call(&args) }?;
                        }
                        Ok(())
                    })?;
            }
            Step::GradQ(a) => {
                let out = bufs.shared(a.dq)?;
                let chunks = (&query_items[..], qchunk);
                grad_q(
                    plan, sizes, &bufs, &packs, slots, chunks, dr, a, &index, gs, out,
                )?;
            }
            Step::GradKv(a) => {
                let out = (bufs.shared(a.dk)?, bufs.shared(a.dv)?);
                grad_kv(
                    plan, sizes, &bufs, &packs, &ntoks, slots, dr, a, &index, gs, ktile, out,
                )?;
            }
            Step::PoolGrad(pg) => {
                let (kd, vd) = (input(plan, inputs, pg.k), input(plan, inputs, pg.v));
                let w: Vec<Ptr> = pg
                    .weights
                    .iter()
                    .map(|w| Ptr(input(plan, inputs, *w).as_ptr()))
                    .collect();
                let dw: Vec<Shared<f32>> = pg
                    .d_weights
                    .iter()
                    .map(|id| bufs.shared(*id))
                    .collect::<Result<_, _>>()?;
                let (dkc, dvc) = (Ptr(bufs.get(pg.d_kc)?), Ptr(bufs.get(pg.d_vc)?));
                let (dk, dvo) = (bufs.shared(pg.dk)?, bufs.shared(pg.dv)?);
                let (offs, nc) = sizes.compressed_offsets(pg.block, pg.stride);
                let names = [
                    "k", "v", "wk", "wv", "dkc", "dvc", "ntok", "dk", "dv", "dwk", "dwv",
                ];
                let mut refs = Vec::new();
                for (i, n) in names.iter().enumerate() {
                    refs.push(match i {
                        0..=5 => dr.read(n)?,
                        6 => dr.int(n)?,
                        _ => dr.write(n)?,
                    });
                }
                let (kp, vp) = (Ptr(kd.as_ptr()), Ptr(vd.as_ptr()));
                let (l, tk) = (pg.block, sizes.keys);
                let nseg = sizes.segments.len().max(1);
                (0..h)
                    .into_par_iter()
                    .try_for_each(|head| -> Result<(), AbiError> {
                        let mut args = dr.args();
                        for (si, s) in slots.iter().enumerate().filter(|(_, s)| s.h == head) {
                            // Slots are ordered (b, segment, kv head).
                            let seg = (si / h) % nseg;
                            let ntok = rules::compressed_tokens(s.len, pg.block, pg.stride);
                            let c0 =
                                ((s.b * nc + offs.get(seg).copied().unwrap_or(0)) * h + head) * dqk;
                            let c0v =
                                ((s.b * nc + offs.get(seg).copied().unwrap_or(0)) * h + head) * dv;
                            let r0 = offset(tk, h, dqk, s.b, s.start, head);
                            let r0v = offset(tk, h, dv, s.b, s.start, head);
                            let (wk, wv, dwk, dwv) = match pg.kind {
                                PoolKind::Mean => (kp.get(), kp.get(), dk.at(r0), dk.at(r0)),
                                PoolKind::Weighted => (
                                    w[0].at(head * l),
                                    w[0].at(head * l),
                                    dw[0].at(head * l),
                                    dw[0].at(head * l),
                                ),
                                PoolKind::Linear => (
                                    w[0].at(head * l * dqk * dqk),
                                    w[1].at(head * l * dv * dv),
                                    dw[0].at(head * l * dqk * dqk),
                                    dw[1].at(head * l * dv * dv),
                                ),
                            };
                            args.ptr(refs[0], kp.at(r0));
                            args.ptr(refs[1], vp.at(r0v));
                            args.ptr(refs[2], wk);
                            args.ptr(refs[3], wv);
                            args.ptr(refs[4], dkc.at(c0));
                            args.ptr(refs[5], dvc.at(c0v));
                            args.int(refs[6], ntok as i64);
                            args.ptr(refs[7], dk.at(r0));
                            args.ptr(refs[8], dvo.at(r0v));
                            args.ptr(refs[9], dwk);
                            args.ptr(refs[10], dwv);
                            // SAFETY: the rows of this (b, segment, head) and the head's weights,
                            // in tensors of the plan's shapes; one item per head writes them.
                            unsafe { dr.call(&args) }?;
                        }
                        Ok(())
                    })?;
            }
            Step::GradSum(gsum) => {
                let n = sizes
                    .numel(plan, gsum.out)
                    .map_err(crate::ir::contract::ContractError::from)?;
                let parts: Vec<Ptr> = gsum
                    .parts
                    .iter()
                    .map(|p| bufs.get(*p).map(Ptr))
                    .collect::<Result<_, _>>()?;
                let out = bufs.shared(gsum.out)?;
                let (os, ns) = (dr.write("out")?, dr.int("n")?);
                let prefs: Vec<_> = (0..parts.len())
                    .map(|i| dr.read(&format!("part{i}")))
                    .collect::<Result<_, _>>()?;
                const CHUNK: usize = 1 << 14;
                (0..n.div_ceil(CHUNK)).into_par_iter().try_for_each(
                    |c| -> Result<(), AbiError> {
                        let (a, b) = (c * CHUNK, ((c + 1) * CHUNK).min(n));
                        let mut args = dr.args();
                        args.ptr(os, out.at(a));
                        args.int(ns, (b - a) as i64);
                        for (r, p) in prefs.iter().zip(&parts) {
                            args.ptr(*r, p.at(a));
                        }
                        // SAFETY: elements a..b of tensors of one shape.
                        unsafe { dr.call(&args) }.map(|_| ())
                    },
                )?;
            }
            _ => {}
        }
    }
    let mut grads = Gradients::new();
    for id in plan.tensors_with(Role::Grad) {
        let shape = sizes
            .shape(plan, id)
            .map_err(crate::ir::contract::ContractError::from)?;
        let data = bufs.owned.remove(&id).ok_or_else(|| missing("gradient"))?;
        grads.insert(plan.tensor(id).name.clone(), Tensor { shape, data });
    }
    Ok(grads)
}

/// The per-item scratch of the dq and dK/dV drivers.
struct GradScratch {
    s: Vec<f32>,
    dp: Vec<f32>,
    acc: Vec<f32>,
    qpad: Vec<f32>,
    dopad: Vec<f32>,
    kacc: Vec<f32>,
    vacc: Vec<f32>,
}

impl GradScratch {
    fn new(plan: &Plan, gs: usize) -> Self {
        let d = &plan.consts;
        let dqkp = d.dqk.div_ceil(4) * 4;
        let dvp = d.dv.div_ceil(4) * 4;
        GradScratch {
            s: vec![0.0; d.group * gs],
            dp: vec![0.0; d.group * gs],
            acc: vec![0.0; d.group * dqkp],
            qpad: vec![0.0; d.group * dqkp],
            dopad: vec![0.0; d.group * dvp],
            kacc: vec![0.0; gs * dqkp],
            vacc: vec![0.0; gs * dvp],
        }
    }
}

/// The keys query `t` of a segment of `len` sees in `a`'s key set, as ranges (`idx`: the
/// row of chosen blocks, for gathered keys; `ntok`: the segment's compressed tokens).
fn key_ranges(plan: &Plan, a: &AttendGrad, t: usize, len: usize, idx: &[i32]) -> Vec<i32> {
    let causal = plan.consts.causal;
    let mut out = Vec::new();
    let mut push = |r: std::ops::Range<usize>| {
        if r.start < r.end {
            out.push(r.start as i32);
            out.push(r.end as i32);
        }
    };
    match a.keys {
        KeySet::Compressed { block, stride } => {
            push(0..rules::visible_compressed(t, len, block, stride, causal));
        }
        KeySet::Window { size } => push(rules::window_keys(t, len, size, causal)),
        KeySet::Gather { granularity, .. } => {
            for &i in idx {
                if i >= 0 {
                    push(rules::block_keys(i as usize, granularity, t, len, causal));
                }
            }
        }
        KeySet::Causal => push(rules::causal_keys(t, len, causal)),
    }
    out
}

fn top_of(plan: &Plan, a: &AttendGrad) -> (Option<TensorId>, usize) {
    match a.keys {
        KeySet::Gather { idx, .. } => {
            let top = match plan.tensor(idx).shape.get(3) {
                Some(crate::ir::Extent::Const(n)) => *n,
                _ => 0,
            };
            (Some(idx), top)
        }
        _ => (None, 0),
    }
}

#[allow(clippy::too_many_arguments)]
fn grad_q<'i>(
    plan: &Plan,
    sizes: &Sizes,
    bufs: &Buffers<'_>,
    packs: &BTreeMap<TensorId, Vec<GradPack>>,
    slots: &[Slot],
    (items, qchunk): (&[(usize, usize)], usize),
    dr: &crate::cpu::abi::Driver,
    a: &AttendGrad,
    index: &dyn Fn(TensorId) -> Result<&'i [i32], CpuError>,
    gs: usize,
    out: Shared<f32>,
) -> Result<(), CpuError> {
    let d = &plan.consts;
    let (hq, g, h) = (d.heads_q, d.group, d.heads_kv);
    let seq = sizes.queries;
    let (idx_id, top) = top_of(plan, a);
    let idx = match idx_id {
        Some(id) => Some(index(id)?),
        None => None,
    };
    let pk = packs.get(&a.k).ok_or_else(|| missing("packed keys"))?;
    let q = Ptr(bufs.get(a.q)?);
    let d_o = Ptr(bufs.get(a.d_out)?);
    let lse = Ptr(bufs.get(a.lse)?);
    let delta = Ptr(bufs.get(a.delta)?);
    let names = ["q", "kt", "kr", "vt", "do", "lse", "delta", "ranges"];
    let mut refs = Vec::new();
    for n in names {
        refs.push(dr.read(n)?);
    }
    let nr = dr.int("nranges")?;
    let (ss, dps, accs, outs) = (
        dr.write("s")?,
        dr.write("dp")?,
        dr.write("acc")?,
        dr.write("out")?,
    );
    items
        .par_iter()
        .try_for_each(|&(si, t0)| -> Result<(), CpuError> {
            let s = slots[si];
            let p = &pk[si];
            let mut sc = GradScratch::new(plan, gs);
            let mut args = dr.args();
            args.ptr(refs[1], p.kt.as_ptr());
            args.ptr(refs[2], p.kr.as_ptr());
            args.ptr(refs[3], p.vt.as_ptr());
            args.ptr(ss, sc.s.as_mut_ptr());
            args.ptr(dps, sc.dp.as_mut_ptr());
            args.ptr(accs, sc.acc.as_mut_ptr());
            let t1 = t0.saturating_add(qchunk).min(s.len);
            for t in t0..t1 {
                let r = (s.b * seq + s.start + t) * hq + s.h * g;
                let row_idx = match idx {
                    Some(ix) => {
                        let at = ((s.b * seq + s.start + t) * h + s.h) * top;
                        &ix[at..at + top]
                    }
                    None => &[][..],
                };
                let ranges = key_ranges(plan, a, t, s.len, row_idx);
                args.ptr(refs[0], q.at(r * d.dqk));
                args.ptr(refs[4], d_o.at(r * d.dv));
                args.ptr(refs[5], lse.at(r));
                args.ptr(refs[6], delta.at(r));
                args.ptr(refs[7], ranges.as_ptr());
                args.int(nr, (ranges.len() / 2) as i64);
                args.ptr(outs, out.at(r * d.dqk));
                // SAFETY: the rows of position t in tensors of the plan's shapes, the slot's
                // packs, and ranges within the segment (at most its length).
                unsafe { dr.call(&args) }?;
            }
            Ok(())
        })
}

#[allow(clippy::too_many_arguments)]
fn grad_kv<'i>(
    plan: &Plan,
    sizes: &Sizes,
    bufs: &Buffers<'_>,
    packs: &BTreeMap<TensorId, Vec<GradPack>>,
    ntoks: &BTreeMap<TensorId, Vec<usize>>,
    slots: &[Slot],
    dr: &crate::cpu::abi::Driver,
    a: &AttendGrad,
    index: &dyn Fn(TensorId) -> Result<&'i [i32], CpuError>,
    gs: usize,
    ktile: usize,
    (dk, dv): (Shared<f32>, Shared<f32>),
) -> Result<(), CpuError> {
    let d = &plan.consts;
    let (hq, g, h) = (d.heads_q, d.group, d.heads_kv);
    let causal = d.causal;
    let seq = sizes.queries;
    let (idx_id, top) = top_of(plan, a);
    let idx = match idx_id {
        Some(id) => Some(index(id)?),
        None => None,
    };
    let pk = packs.get(&a.k).ok_or_else(|| missing("packed keys"))?;
    let (q, d_o) = (Ptr(bufs.get(a.q)?), Ptr(bufs.get(a.d_out)?));
    let (lse, delta) = (Ptr(bufs.get(a.lse)?), Ptr(bufs.get(a.delta)?));
    // Key rows: raw keys per segment position, or compressed tokens after the segment's offset.
    let (key_base, nkeys): (Vec<usize>, Vec<usize>) = match a.keys {
        KeySet::Compressed { block, stride } => {
            let (offs, nc) = sizes.compressed_offsets(block, stride);
            let n = ntoks.get(&a.k).ok_or_else(|| missing("token counts"))?;
            let nseg = sizes.segments.len().max(1);
            slots
                .iter()
                .zip(n)
                .enumerate()
                .map(|(si, (s, &nt))| {
                    // Slots are ordered (b, segment, kv head).
                    let seg = (si / h) % nseg;
                    (
                        (s.b * nc + offs.get(seg).copied().unwrap_or(0)) * h + s.h,
                        nt,
                    )
                })
                .unzip()
        }
        _ => slots
            .iter()
            .map(|s| ((s.b * sizes.keys + s.start) * h + s.h, s.len))
            .unzip(),
    };
    // Reverse index of gathered blocks per slot: for every block, the positions that chose
    // it, in position order (counting sort).
    let block = match a.keys {
        KeySet::Gather { granularity, .. } => granularity,
        _ => ktile,
    };
    let reverse: Vec<(Vec<usize>, Vec<u32>)> = match idx {
        Some(ix) => slots
            .par_iter()
            .map(|s| {
                let nb = rules::block_count(s.len, block);
                let mut count = vec![0usize; nb + 1];
                let row = |t: usize| ((s.b * seq + s.start + t) * h + s.h) * top;
                for t in 0..s.len {
                    for &i in &ix[row(t)..row(t) + top] {
                        if i >= 0 && (i as usize) < nb {
                            count[i as usize + 1] += 1;
                        }
                    }
                }
                for i in 0..nb {
                    count[i + 1] += count[i];
                }
                let mut fill = count.clone();
                let mut list = vec![0u32; count[nb]];
                for t in 0..s.len {
                    for &i in &ix[row(t)..row(t) + top] {
                        if i >= 0 && (i as usize) < nb {
                            list[fill[i as usize]] = t as u32;
                            fill[i as usize] += 1;
                        }
                    }
                }
                (count, list)
            })
            .collect(),
        None => Vec::new(),
    };
    let items: Vec<(usize, usize)> = slots
        .iter()
        .enumerate()
        .flat_map(|(si, _)| (0..nkeys[si].div_ceil(block)).map(move |c| (si, c * block)))
        .collect();
    let names = ["q", "kt", "vt", "do", "lse", "delta", "list"];
    let mut refs = Vec::new();
    for n in names {
        refs.push(dr.read(n)?);
    }
    let (cs, los, his) = (dr.int("count")?, dr.int("lo")?, dr.int("hi")?);
    let scr: Vec<_> = ["s", "dp", "qpad", "dopad", "kacc", "vacc", "dk", "dv"]
        .iter()
        .map(|n| dr.write(n))
        .collect::<Result<_, _>>()?;
    items
        .par_iter()
        .try_for_each(|&(si, k0)| -> Result<(), CpuError> {
            let s = slots[si];
            let k1 = (k0 + block).min(nkeys[si]);
            let len = s.len;
            // (t, klo, khi) for every query that may see keys k0..k1, in query order.
            let mut list: Vec<i32> = Vec::new();
            let mut add = |t: usize, r: std::ops::Range<usize>| {
                let (lo, hi) = (r.start.max(k0), r.end.min(k1));
                if lo < hi {
                    list.extend([t as i32, lo as i32, hi as i32]);
                }
            };
            match a.keys {
                KeySet::Compressed {
                    block: cb,
                    stride: cd,
                } => {
                    let first = if causal { k0 * cd + cb - 1 } else { 0 };
                    for t in first..len {
                        add(t, 0..rules::visible_compressed(t, len, cb, cd, causal));
                    }
                }
                KeySet::Window { size } => {
                    let lo = if causal {
                        k0
                    } else {
                        k0.saturating_sub(size.saturating_sub(1))
                    };
                    let hi = (k1 - 1 + size).min(len);
                    for t in lo..hi {
                        add(t, rules::window_keys(t, len, size, causal));
                    }
                }
                KeySet::Gather { granularity, .. } => {
                    let (count, rev) = &reverse[si];
                    let i = k0 / granularity;
                    for &t in &rev[count[i]..count[i + 1]] {
                        let t = t as usize;
                        add(t, rules::block_keys(i, granularity, t, len, causal));
                    }
                }
                KeySet::Causal => {
                    for t in 0..len {
                        add(t, rules::causal_keys(t, len, causal));
                    }
                }
            }
            let p = &pk[si];
            let mut sc = GradScratch::new(plan, gs);
            let r0 = (s.b * seq + s.start) * hq + s.h * g;
            let mut args = dr.args();
            args.ptr(refs[0], q.at(r0 * d.dqk));
            args.ptr(refs[1], p.kt.as_ptr());
            args.ptr(refs[2], p.vt.as_ptr());
            args.ptr(refs[3], d_o.at(r0 * d.dv));
            args.ptr(refs[4], lse.at(r0));
            args.ptr(refs[5], delta.at(r0));
            args.ptr(refs[6], list.as_ptr());
            args.int(cs, (list.len() / 3) as i64);
            args.int(los, k0 as i64);
            args.int(his, k1 as i64);
            let bufs_ptrs = [
                sc.s.as_mut_ptr(),
                sc.dp.as_mut_ptr(),
                sc.qpad.as_mut_ptr(),
                sc.dopad.as_mut_ptr(),
                sc.kacc.as_mut_ptr(),
                sc.vacc.as_mut_ptr(),
            ];
            for (r, ptr) in scr.iter().zip(bufs_ptrs) {
                args.ptr(*r, ptr);
            }
            args.ptr(scr[6], dk.at(key_base[si] * d.dqk));
            args.ptr(scr[7], dv.at(key_base[si] * d.dv));
            // SAFETY: the segment's rows of q/do/lse/delta, its packs, keys k0..k1 of its rows
            // of dk/dv (this item's alone) and scratch sized for a tile of `grad_stride` keys.
            unsafe { dr.call(&args) }?;
            Ok(())
        })
}
