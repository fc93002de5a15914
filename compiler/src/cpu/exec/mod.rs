//! The executor of a [`CpuProgram`] on one call's [`Sizes`]: pack/pool per (b, segment, kv
//! head), then the work items (b, segment, kv head, chunk of positions) in parallel, each
//! calling the drivers of the backend's steps ([`steps`]) for every position in order through
//! their argument blocks ([`super::abi`]). Tensors are found by the plan's names; outputs are
//! the plan's `Out` tensors. It lives beside the code generator because it is the other half
//! of the drivers' ABI.

mod backward;
mod given;
mod pack;

pub(super) use backward::execute_backward;
pub use backward::{Gradients, Saved};

use std::collections::BTreeMap;

use nsac_kernels::io::{InputRefs, Tensor};
use rayon::prelude::*;

use super::abi::{AbiError, Args, Driver, SlotRef};
use super::{CpuError, CpuProgram, Step, compressed_scratch, steps};
use crate::ir::{Elem, Op, Plan, PoolKind, Role, Sizes, TensorId, rules};
use pack::{Packed, Slot, offset, pack};

/// What one call computes (the f32/i32 counterpart of `kernels::reference::Output`).
#[derive(Debug, Clone, PartialEq)]
pub struct CpuOutput {
    /// `o` \[B,T,HQ,Dv\].
    pub o: Tensor<f32>,
    /// `o_<b>` \[B,T,HQ,Dv\] by branch name.
    pub branches: BTreeMap<String, Tensor<f32>>,
    /// `idx_<b>` \[B,T,H,top\] by select branch name, ascending, −1 padded.
    pub selected: BTreeMap<String, Tensor<i32>>,
}

/// A raw pointer that work items share; each item writes only its own disjoint rows.
#[derive(Clone, Copy)]
pub(super) struct Shared<T>(pub(super) *mut T);
// SAFETY: work items write disjoint elements (their own (position, kv head) rows), and the
// buffers outlive the parallel section.
unsafe impl<T> Send for Shared<T> {}
// SAFETY: see `Send`.
unsafe impl<T> Sync for Shared<T> {}

impl<T> Shared<T> {
    pub(super) fn at(self, off: usize) -> *mut T {
        // SAFETY (for callers): `off` is within the allocation by construction of the offsets.
        self.0.wrapping_add(off)
    }
}

/// Everything prepared before the work items run.
pub(super) struct Prepared<'a> {
    /// Packed raw K/V per (K tensor) per slot index.
    raw: BTreeMap<TensorId, Vec<Packed>>,
    /// Pooled K̃/Ṽ per compress branch per slot index.
    pub(super) pooled: BTreeMap<String, Vec<Packed>>,
    pub(super) slots: Vec<Slot>,
    inputs: &'a InputRefs<'a>,
}

pub(super) fn input<'a>(plan: &Plan, inputs: &'a InputRefs<'a>, id: TensorId) -> &'a [f32] {
    inputs
        .get(plan.tensor(id).name.as_str())
        .map(|t| t.data)
        .unwrap_or(&[])
}

/// An output buffer the caller lends: written in place.
#[derive(Debug)]
pub enum OutputRef<'a> {
    F32(&'a mut [f32]),
    I32(&'a mut [i32]),
}

/// Named output buffers the caller lends (any subset of the plan's `Out` tensors).
pub type OutputRefs<'a> = BTreeMap<&'a str, OutputRef<'a>>;

/// The outputs the executor allocated itself (those the caller did not lend), by tensor.
#[derive(Debug, Default)]
pub(super) struct Owned {
    pub f32: BTreeMap<TensorId, Tensor<f32>>,
    pub i32: BTreeMap<TensorId, Tensor<i32>>,
}

impl CpuOutput {
    /// The outputs under the oracle's names, by the ops that write them.
    pub(super) fn from_owned(plan: &Plan, mut owned: Owned) -> Result<CpuOutput, CpuError> {
        let mut o = None;
        let mut branches = BTreeMap::new();
        let mut selected = BTreeMap::new();
        for op in &plan.ops {
            match op {
                Op::Attend(a) => {
                    if let Some(t) = owned.f32.remove(&a.out) {
                        branches.insert(a.branch.clone(), t);
                    }
                    // Given blocks are reported as the oracle does: ascending, −1 padded.
                    if let crate::ir::KeySet::Gather { idx, .. } = a.keys
                        && plan.tensor(idx).role == Role::In
                        && let Some(t) = owned.i32.remove(&idx)
                    {
                        selected.insert(a.branch.clone(), t);
                    }
                }
                Op::TopK(k) => {
                    if let Some(t) = owned.i32.remove(&k.idx) {
                        selected.insert(k.branch.clone(), t);
                    }
                }
                Op::Combine(c) => o = owned.f32.remove(&c.out),
                _ => {}
            }
        }
        let o = o.ok_or_else(|| CpuError::Codegen("the plan has no combine output".into()))?;
        Ok(CpuOutput {
            o,
            branches,
            selected,
        })
    }
}

pub(super) fn prepare<'a>(
    plan: &Plan,
    steps: &[Step<'_>],
    sizes: &Sizes,
    program: &CpuProgram,
    inputs: &'a InputRefs<'a>,
) -> Result<Prepared<'a>, AbiError> {
    let d = &plan.consts;
    let seq_len = sizes.keys;
    let dvp = d.dv.div_ceil(4) * 4;
    let mut slots = Vec::new();
    for b in 0..sizes.batch {
        for &(start, end) in &sizes.segments {
            for h in 0..d.heads_kv {
                slots.push(Slot {
                    b,
                    start,
                    len: end - start,
                    h,
                });
            }
        }
    }
    let mut raw = BTreeMap::new();
    for st in steps {
        let (k, v) = match st {
            Step::Selected { attend, .. } | Step::Window { attend, .. } => (attend.k, attend.v),
            _ => continue,
        };
        if raw.contains_key(&k) {
            continue;
        }
        let (kd, vd) = (input(plan, inputs, k), input(plan, inputs, v));
        let packs: Vec<Packed> = slots
            .par_iter()
            .map(|s| pack(kd, vd, seq_len, d.heads_kv, d.dqk, d.dv, dvp, *s))
            .collect();
        raw.insert(k, packs);
    }
    let mut pooled = BTreeMap::new();
    for (st, driver) in steps.iter().zip(&program.drivers) {
        let Step::Pool(ps) = st else {
            continue;
        };
        let (kd, vd) = (input(plan, inputs, ps.k), input(plan, inputs, ps.v));
        let w: Vec<&[f32]> = ps.weights.iter().map(|w| input(plan, inputs, *w)).collect();
        let refs = PoolRefs::new(driver)?;
        let packs = slots
            .par_iter()
            .map(|s| {
                let ntok = rules::compressed_tokens(s.len, ps.block, ps.stride);
                let n4 = ntok.div_ceil(4).max(1);
                let mut kc = vec![0.0f32; n4 * d.dqk * 4];
                let mut vc = vec![0.0f32; n4 * 4 * dvp];
                let kp = kd[offset(seq_len, d.heads_kv, d.dqk, s.b, s.start, s.h)..].as_ptr();
                let vp = vd[offset(seq_len, d.heads_kv, d.dv, s.b, s.start, s.h)..].as_ptr();
                let (wk, wv) = match ps.kind {
                    PoolKind::Mean => (kp, kp),
                    PoolKind::Weighted => {
                        let p = w[0][s.h * ps.block..].as_ptr();
                        (p, p)
                    }
                    PoolKind::Linear => (
                        w[0][s.h * ps.block * d.dqk * d.dqk..].as_ptr(),
                        w[1][s.h * ps.block * d.dv * d.dv..].as_ptr(),
                    ),
                };
                let mut a = driver.args();
                a.ptr(refs.k, kp);
                a.ptr(refs.v, vp);
                a.ptr(refs.wk, wk);
                a.ptr(refs.wv, wv);
                a.int(refs.ntok, ntok as i64);
                a.ptr(refs.kc, kc.as_mut_ptr());
                a.ptr(refs.vc, vc.as_mut_ptr());
                // SAFETY: the pointers cover this slot's rows/weights (inputs were checked
                // against the plan's shapes) and the outputs hold ⌈ntok/4⌉ packed groups.
                unsafe { driver.call(&a) }?;
                Ok(Packed { k: kc, v: vc })
            })
            .collect::<Result<Vec<Packed>, AbiError>>()?;
        pooled.insert(ps.branch.clone(), packs);
    }
    Ok(Prepared {
        raw,
        pooled,
        slots,
        inputs,
    })
}

/// The slots of a pool driver.
struct PoolRefs {
    k: SlotRef,
    v: SlotRef,
    wk: SlotRef,
    wv: SlotRef,
    ntok: SlotRef,
    kc: SlotRef,
    vc: SlotRef,
}

impl PoolRefs {
    fn new(d: &Driver) -> Result<Self, AbiError> {
        Ok(PoolRefs {
            k: d.read("k")?,
            v: d.read("v")?,
            wk: d.read("wk")?,
            wv: d.read("wv")?,
            ntok: d.int("ntok")?,
            kc: d.write("kc")?,
            vc: d.write("vc")?,
        })
    }
}

/// One work item's argument block for one step, with the per-item slots (packed K/V, the
/// segment length, scratch) already set and the per-position ones resolved; `lse` is the
/// saved log-sum-exp's slot and tensor of a training plan's attention.
enum Bound {
    Pool,
    Compressed {
        args: Args,
        q: SlotRef,
        nvis: SlotRef,
        out: SlotRef,
        lse: Option<(SlotRef, TensorId)>,
    },
    TopK {
        args: Args,
        nvis: SlotRef,
        t: SlotRef,
        idx: SlotRef,
    },
    Selected {
        args: Args,
        q: SlotRef,
        idx: SlotRef,
        count: SlotRef,
        t: SlotRef,
        out: SlotRef,
        lse: Option<(SlotRef, TensorId)>,
    },
    Window {
        args: Args,
        q: SlotRef,
        t: SlotRef,
        out: SlotRef,
        lse: Option<(SlotRef, TensorId)>,
    },
    Combine {
        args: Args,
        out: SlotRef,
        terms: Vec<TermSlots>,
    },
}

/// A combine term's branch output and its gate (tensor, slot).
struct TermSlots {
    out: TensorId,
    slot: SlotRef,
    gate: Option<(TensorId, SlotRef)>,
}

/// Per-item scratch every attention driver shares (one driver runs at a time per item).
struct Scratch {
    tile: Vec<f32>,
    m: Vec<f32>,
    l: Vec<f32>,
    acc: Vec<f32>,
    scores: Vec<f32>,
}

/// Sets the shared attention scratch slots of `d` in `a`.
fn bind_scratch(d: &Driver, a: &mut Args, s: &mut Scratch, tile: *mut f32) -> Result<(), AbiError> {
    a.ptr(d.write("s")?, tile);
    a.ptr(d.write("m")?, s.m.as_mut_ptr());
    a.ptr(d.write("l")?, s.l.as_mut_ptr());
    a.ptr(d.write("acc")?, s.acc.as_mut_ptr());
    Ok(())
}

/// Runs the program on `sizes`, writing the outputs in `lent` in place and allocating the
/// others; inputs and lent outputs were checked by [`CpuProgram::run_into`].
pub(super) fn execute<'a>(
    program: &CpuProgram,
    sizes: &Sizes,
    inputs: &'a InputRefs<'a>,
    lent: &mut OutputRefs<'_>,
) -> Result<Owned, CpuError> {
    let plan = &program.plan;
    let d = &plan.consts;
    let steps = steps(plan)?;
    let prep = prepare(plan, &steps, sizes, program, inputs)?;
    let seq_len = sizes.queries;
    let (hq, dv) = (d.heads_q, d.dv);
    let dvp = dv.div_ceil(4) * 4;
    let g = d.group;

    // Outputs: the lent ones filled like fresh ones (0, and −1 for indices), the rest owned.
    let mut owned = Owned::default();
    let mut fptr: BTreeMap<TensorId, Shared<f32>> = BTreeMap::new();
    let mut iptr: BTreeMap<TensorId, Shared<i32>> = BTreeMap::new();
    let produced: Vec<TensorId> = plan
        .tensors_with(Role::Out)
        .chain(plan.tensors_with(Role::Saved))
        .collect();
    for id in produced {
        let t = plan.tensor(id);
        match (lent.get_mut(t.name.as_str()), t.elem) {
            (Some(OutputRef::I32(buf)), Elem::I32) => {
                buf.fill(-1);
                iptr.insert(id, Shared(buf.as_mut_ptr()));
            }
            (Some(OutputRef::F32(buf)), e) if e != Elem::I32 => {
                buf.fill(0.0);
                fptr.insert(id, Shared(buf.as_mut_ptr()));
            }
            _ => {
                let shape = sizes
                    .shape(plan, id)
                    .map_err(crate::ir::contract::ContractError::from)?;
                if t.elem == Elem::I32 {
                    let buf = owned.i32.entry(id).or_insert(Tensor::full(shape, -1));
                    iptr.insert(id, Shared(buf.data.as_mut_ptr()));
                } else {
                    let buf = owned.f32.entry(id).or_insert(Tensor::full(shape, 0.0));
                    fptr.insert(id, Shared(buf.data.as_mut_ptr()));
                }
            }
        }
    }
    // Given blocks (an `In` index tensor): checked and sorted before any work item runs.
    for st in &steps {
        if let Step::Selected {
            attend,
            idx,
            block,
            top,
        } = st
            && plan.tensor(*idx).role == Role::In
        {
            let data = input(plan, inputs, *idx);
            let rows = given::normalize(&attend.branch, data, sizes, d.heads_kv, *top, *block)?;
            let shape = sizes
                .shape(plan, *idx)
                .map_err(crate::ir::contract::ContractError::from)?;
            let buf = owned
                .i32
                .entry(*idx)
                .or_insert(Tensor { shape, data: rows });
            iptr.insert(*idx, Shared(buf.data.as_mut_ptr()));
        }
    }
    let missing = |what: &str| CpuError::Codegen(format!("the executor has no {what}"));
    let out_ptr = |id: &TensorId| {
        fptr.get(id)
            .copied()
            .ok_or_else(|| missing("output buffer"))
    };
    let idx_ptr = |id: &TensorId| iptr.get(id).copied().ok_or_else(|| missing("index buffer"));

    // Scratch: every attention driver's S/P rows are `score_stride` floats apart (a constant
    // of the generated code; a scored compressed stage keeps one such tile per key tile of
    // visible tokens); the scores of block selection need one float per block.
    let max_len = sizes.max_segment().max(1);
    let stride = program.score_stride;
    let mut scores_len = 1usize;
    for st in &steps {
        if let Step::TopK { params, .. } = st {
            scores_len = scores_len.max(max_len.div_ceil(params.block) + 1)
        }
    }
    let chunk = program.variant.query_chunk as usize;
    let items: Vec<(usize, usize)> = prep
        .slots
        .iter()
        .enumerate()
        .flat_map(|(si, s)| (0..s.len.div_ceil(chunk)).map(move |c| (si, c * chunk)))
        .collect();

    items
        .par_iter()
        .try_for_each(|&(si, t0)| -> Result<(), CpuError> {
            let slot = prep.slots[si];
            let t1 = (t0 + chunk).min(slot.len);
            let mut scratch = Scratch {
                tile: vec![0.0f32; g * stride],
                m: vec![0.0f32; g],
                l: vec![0.0f32; g],
                acc: vec![0.0f32; g * dvp],
                scores: vec![0.0f32; scores_len],
            };
            // The compressed stages' P scratch (and running maxima per chunk when scored), sized
            // for the tokens visible to this item's last position (visibility grows with t); a
            // top-k reads the P of the stage that scores it.
            let mut cmp_s: BTreeMap<usize, (Vec<f32>, Vec<f32>)> = BTreeMap::new();
            for (i, st) in steps.iter().enumerate() {
                if let Step::Compressed { pool, scored, .. } = st {
                    let nvis = rules::visible_compressed(
                        t1 - 1,
                        slot.len,
                        pool.block,
                        pool.stride,
                        d.causal,
                    );
                    let (sl, ml) = compressed_scratch(plan, &program.variant, *scored, nvis);
                    cmp_s.insert(i, (vec![0.0f32; sl], vec![0.0f32; ml]));
                }
            }
            // Which compressed stage each compress branch's attention is.
            let cmp_stage: BTreeMap<&str, usize> = steps
                .iter()
                .enumerate()
                .filter_map(|(i, st)| match st {
                    Step::Compressed { attend, .. } => Some((attend.branch.as_str(), i)),
                    _ => None,
                })
                .collect();
            let mut bound = Vec::with_capacity(steps.len());
            for ((i, st), dr) in steps.iter().enumerate().zip(&program.drivers) {
                let mut args = dr.args();
                let lse = match st {
                    Step::Compressed { attend, .. }
                    | Step::Selected { attend, .. }
                    | Step::Window { attend, .. }
                        if st.saves_lse(plan) =>
                    {
                        match attend.lse {
                            Some(l) => Some((dr.write("lse")?, l)),
                            None => None,
                        }
                    }
                    _ => None,
                };
                let b = match st {
                    Step::Pool(_) => Bound::Pool,
                    Step::CombineGrad(_)
                    | Step::GradQ(_)
                    | Step::GradKv(_)
                    | Step::PoolGrad(_)
                    | Step::GradSum(_) => Bound::Pool,
                    Step::Compressed { pool, .. } => {
                        let packed = &prep.pooled[&pool.branch][si];
                        args.ptr(dr.read("kc")?, packed.k.as_ptr());
                        args.ptr(dr.read("vc")?, packed.v.as_ptr());
                        let (s, mc) = cmp_s.get_mut(&i).ok_or_else(|| missing("P scratch"))?;
                        bind_scratch(dr, &mut args, &mut scratch, s.as_mut_ptr())?;
                        args.ptr(dr.write("mc")?, mc.as_mut_ptr());
                        Bound::Compressed {
                            q: dr.read("q")?,
                            nvis: dr.int("nvis")?,
                            out: dr.write("out")?,
                            args,
                            lse,
                        }
                    }
                    Step::TopK { by, .. } => {
                        let ci = cmp_stage.get(by).ok_or_else(|| missing("scoring stage"))?;
                        let p = cmp_s.get(ci).ok_or_else(|| missing("P scratch"))?;
                        args.ptr(dr.read("p")?, p.0.as_ptr());
                        args.int(dr.int("len")?, slot.len as i64);
                        args.ptr(dr.write("scores")?, scratch.scores.as_mut_ptr());
                        Bound::TopK {
                            nvis: dr.int("nvis")?,
                            t: dr.int("t")?,
                            idx: dr.write("idx")?,
                            args,
                        }
                    }
                    Step::Selected { attend, .. } | Step::Window { attend, .. } => {
                        let packed = &prep.raw[&attend.k][si];
                        args.ptr(dr.read("k")?, packed.k.as_ptr());
                        args.ptr(dr.read("v")?, packed.v.as_ptr());
                        args.int(dr.int("len")?, slot.len as i64);
                        let tile = scratch.tile.as_mut_ptr();
                        bind_scratch(dr, &mut args, &mut scratch, tile)?;
                        let (q, t, out) = (dr.read("q")?, dr.int("t")?, dr.write("out")?);
                        if let Step::Selected { .. } = st {
                            Bound::Selected {
                                idx: dr.read("idx")?,
                                count: dr.int("count")?,
                                args,
                                q,
                                t,
                                out,
                                lse,
                            }
                        } else {
                            Bound::Window {
                                args,
                                q,
                                t,
                                out,
                                lse,
                            }
                        }
                    }
                    Step::Combine(c) => {
                        let mut terms = Vec::new();
                        for term in &c.terms {
                            let o = dr.read(&plan.tensor(term.out).name)?;
                            let gate = match term.gate {
                                Some(gid) => Some((gid, dr.read(&plan.tensor(gid).name)?)),
                                None => None,
                            };
                            terms.push(TermSlots {
                                out: term.out,
                                slot: o,
                                gate,
                            });
                        }
                        Bound::Combine {
                            out: dr.write("out")?,
                            args,
                            terms,
                        }
                    }
                };
                bound.push(b);
            }
            let mut picks = Picks::default();
            let mut nvis_of: BTreeMap<usize, i64> = BTreeMap::new();
            let mut counts: BTreeMap<TensorId, i64> = BTreeMap::new();
            for t in t0..t1 {
                let pos = slot.start + t;
                let row = slot.b * seq_len + pos;
                let q_at = |q: TensorId| {
                    input(plan, prep.inputs, q)[(row * hq + slot.h * g) * d.dqk..].as_ptr()
                };
                let out_off = (row * hq + slot.h * g) * dv;
                let lse_off = row * hq + slot.h * g;
                for (i, (st, b)) in steps.iter().zip(bound.iter_mut()).enumerate() {
                    let dr = &program.drivers[i];
                    // SAFETY (every call below): each pointer addresses this item's rows of a
                    // buffer sized by the plan for the checked inputs' sizes, or scratch sized
                    // above for the largest tile of any stage.
                    match (st, b) {
                        (
                            Step::Compressed {
                                attend: c, pool, ..
                            },
                            Bound::Compressed {
                                args,
                                q,
                                nvis,
                                out,
                                lse,
                            },
                        ) => {
                            if let Some((slot_ref, id)) = lse {
                                args.ptr(*slot_ref, out_ptr(id)?.at(lse_off));
                            }
                            let n = rules::visible_compressed(
                                t,
                                slot.len,
                                pool.block,
                                pool.stride,
                                d.causal,
                            ) as i64;
                            args.ptr(*q, q_at(c.q));
                            args.int(*nvis, n);
                            args.ptr(*out, out_ptr(&c.out)?.at(out_off));
                            unsafe { dr.call(args) }?;
                            nvis_of.insert(i, n);
                        }
                        (
                            Step::TopK {
                                topk, by, params, ..
                            },
                            Bound::TopK {
                                args,
                                nvis,
                                t: ts,
                                idx,
                            },
                        ) => {
                            let n = cmp_stage.get(by).and_then(|ci| nvis_of.get(ci)).copied();
                            args.int(*nvis, n.unwrap_or(0));
                            args.int(*ts, t as i64);
                            let at = (row * d.heads_kv + slot.h) * params.top;
                            args.ptr(*idx, idx_ptr(&topk.idx)?.at(at));
                            let count = unsafe { dr.call(args) }?;
                            let count = match topk.within {
                                None => count,
                                Some(w) => {
                                    // SAFETY: the outer top-k ran earlier for this position
                                    // (ops are ordered by `within` depth) and wrote its row.
                                    let outer = unsafe {
                                        let k = top_of(plan, w.idx);
                                        std::slice::from_raw_parts(
                                            idx_ptr(&w.idx)?.at((row * d.heads_kv + slot.h) * k),
                                            k,
                                        )
                                    };
                                    let dst = unsafe {
                                        std::slice::from_raw_parts_mut(
                                            idx_ptr(&topk.idx)?.at(at),
                                            params.top,
                                        )
                                    };
                                    within_choice(
                                        outer,
                                        w.block / params.block,
                                        count as usize,
                                        &scratch.scores,
                                        params.top,
                                        dst,
                                        &mut picks,
                                    ) as i64
                                }
                            };
                            counts.insert(topk.idx, count);
                        }
                        (
                            Step::Selected {
                                attend: sa,
                                idx: sel_idx,
                                top,
                                block,
                            },
                            Bound::Selected {
                                args,
                                q,
                                idx,
                                count,
                                t: ts,
                                out,
                                lse,
                            },
                        ) => {
                            if let Some((slot_ref, id)) = lse {
                                args.ptr(*slot_ref, out_ptr(id)?.at(lse_off));
                            }
                            args.ptr(*q, q_at(sa.q));
                            let at = (row * d.heads_kv + slot.h) * top;
                            let rows = idx_ptr(sel_idx)?;
                            args.ptr(*idx, rows.at(at));
                            let n = match counts.get(sel_idx) {
                                Some(&n) => n,
                                None => {
                                    // SAFETY: `at..at + top` is this item's row of the given
                                    // blocks, normalized above and not written while items run.
                                    let row =
                                        unsafe { std::slice::from_raw_parts(rows.at(at), *top) };
                                    given::attended(row, *block, t, d.causal) as i64
                                }
                            };
                            args.int(*count, n);
                            args.int(*ts, t as i64);
                            args.ptr(*out, out_ptr(&sa.out)?.at(out_off));
                            unsafe { dr.call(args) }?;
                        }
                        (
                            Step::Window { attend: w, .. },
                            Bound::Window {
                                args,
                                q,
                                t: ts,
                                out,
                                lse,
                            },
                        ) => {
                            if let Some((slot_ref, id)) = lse {
                                args.ptr(*slot_ref, out_ptr(id)?.at(lse_off));
                            }
                            args.ptr(*q, q_at(w.q));
                            args.int(*ts, t as i64);
                            args.ptr(*out, out_ptr(&w.out)?.at(out_off));
                            unsafe { dr.call(args) }?;
                        }
                        (Step::Combine(c), Bound::Combine { args, out, terms }) => {
                            args.ptr(*out, out_ptr(&c.out)?.at(out_off));
                            for term in terms.iter() {
                                args.ptr(term.slot, out_ptr(&term.out)?.at(out_off));
                                if let Some((gid, gs)) = &term.gate {
                                    let gd = input(plan, prep.inputs, *gid);
                                    args.ptr(*gs, gd[row * hq + slot.h * g..].as_ptr());
                                }
                            }
                            unsafe { dr.call(args) }?;
                        }
                        _ => {}
                    }
                }
            }
            Ok(())
        })?;

    Ok(owned)
}

/// The constant width of an index tensor `[B, Tq, H, k]` (0 if it has none).
fn top_of(plan: &Plan, idx: TensorId) -> usize {
    match plan.tensor(idx).shape.get(3) {
        Some(crate::ir::Extent::Const(n)) => *n,
        _ => 0,
    }
}

/// Reusable buffers of [`within_choice`].
#[derive(Default)]
struct Picks {
    cand: Vec<u32>,
    scores: Vec<f32>,
    out: Vec<u32>,
    radix: super::topk::Scratch,
}

/// Hierarchical selection for one (position, kv head): the candidates are the blocks (of
/// this top-k) inside the outer choice `outer` (ascending, −1 padded; `ratio` of these blocks
/// per outer block) among the `nb` blocks the query may see; the best `top` by (score
/// descending, index ascending) from `scores` (forced blocks already +∞) are written to `dst`
/// ascending, then −1. Returns how many were chosen.
fn within_choice(
    outer: &[i32],
    ratio: usize,
    nb: usize,
    scores: &[f32],
    top: usize,
    dst: &mut [i32],
    p: &mut Picks,
) -> usize {
    p.cand.clear();
    p.scores.clear();
    for &c in outer.iter().take_while(|&&c| c >= 0) {
        let first = c as usize * ratio;
        for i in first..(first + ratio).min(nb) {
            p.cand.push(i as u32);
            p.scores
                .push(scores.get(i).copied().unwrap_or(f32::NEG_INFINITY));
        }
    }
    let n = super::topk::select(&p.cand, &p.scores, top, &mut p.out, &mut p.radix);
    for (slot, v) in dst.iter_mut().enumerate() {
        *v = p.out.get(slot).map_or(-1, |&i| i as i32);
    }
    n
}
