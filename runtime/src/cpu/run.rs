//! One call of a compiled plan on one call's [`Sizes`]: pack/pool per (b, segment, kv head),
//! then the work items (b, segment, kv head, chunk of positions) in parallel, each calling the
//! drivers of the backend's steps (`nsac_compiler::cpu::steps`) for every position in order.
//! Tensors are found by the plan's names; outputs are the plan's `Out` tensors.

use std::collections::BTreeMap;

use nsac_compiler::cpu::{CpuProgram, StageFn, Step, compressed_scratch};
use nsac_compiler::ir::{Elem, Plan, PoolKind, Role, Sizes, TensorId, rules};
use nsac_kernels::io::{Inputs, Tensor};
use rayon::prelude::*;

use super::CpuOutput;
use super::pack::{Packed, Slot, offset, pack};

/// A raw pointer that work items share; each item writes only its own disjoint rows.
#[derive(Clone, Copy)]
struct Shared<T>(*mut T);
// SAFETY: work items write disjoint elements (their own (position, kv head) rows), and the
// buffers outlive the parallel section.
unsafe impl<T> Send for Shared<T> {}
// SAFETY: see `Send`.
unsafe impl<T> Sync for Shared<T> {}

impl<T> Shared<T> {
    fn at(self, off: usize) -> *mut T {
        // SAFETY (for callers): `off` is within the allocation by construction of the offsets.
        self.0.wrapping_add(off)
    }
}

/// Everything prepared before the work items run.
struct Prepared<'a> {
    /// Packed raw K/V per (K tensor) per slot index.
    raw: BTreeMap<TensorId, Vec<Packed>>,
    /// Pooled K̃/Ṽ per compress branch per slot index.
    pooled: BTreeMap<String, Vec<Packed>>,
    slots: Vec<Slot>,
    inputs: &'a Inputs,
}

fn input<'a>(plan: &Plan, inputs: &'a Inputs, id: TensorId) -> &'a [f32] {
    inputs
        .get(&plan.tensor(id).name)
        .map(|t| t.data.as_slice())
        .unwrap_or(&[])
}

fn prepare<'a>(
    plan: &Plan,
    steps: &[Step<'_>],
    sizes: &Sizes,
    program: &CpuProgram,
    inputs: &'a Inputs,
) -> Prepared<'a> {
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
    for (i, st) in steps.iter().enumerate() {
        let (Step::Pool(ps), StageFn::Pool(f)) = (st, program.stages[i]) else {
            continue;
        };
        let (kd, vd) = (input(plan, inputs, ps.k), input(plan, inputs, ps.v));
        let w: Vec<&[f32]> = ps.weights.iter().map(|w| input(plan, inputs, *w)).collect();
        let packs: Vec<Packed> = slots
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
                // SAFETY: the pointers cover this slot's rows/weights (inputs were checked
                // against the plan's shapes) and the outputs hold ⌈ntok/4⌉ packed groups.
                unsafe {
                    f(
                        kp,
                        vp,
                        wk,
                        wv,
                        ntok as i64,
                        kc.as_mut_ptr(),
                        vc.as_mut_ptr(),
                    )
                };
                Packed { k: kc, v: vc }
            })
            .collect();
        pooled.insert(ps.branch.clone(), packs);
    }
    Prepared {
        raw,
        pooled,
        slots,
        inputs,
    }
}

/// Runs the plan on `sizes`; inputs were checked by the caller.
pub fn execute(plan: &Plan, program: &CpuProgram, sizes: &Sizes, inputs: &Inputs) -> CpuOutput {
    let d = &plan.consts;
    // The steps were computed from this plan when it compiled; they cannot fail now.
    let steps = nsac_compiler::cpu::steps(plan).unwrap_or_default();
    let prep = prepare(plan, &steps, sizes, program, inputs);
    let seq_len = sizes.queries;
    let (hq, dv) = (d.heads_q, d.dv);
    let dvp = dv.div_ceil(4) * 4;
    let g = d.group;

    // Outputs.
    let mut f32_out: BTreeMap<TensorId, Tensor<f32>> = BTreeMap::new();
    let mut i32_out: BTreeMap<TensorId, Tensor<i32>> = BTreeMap::new();
    for id in plan.tensors_with(Role::Out) {
        // Shapes were bound (and their products checked) when the inputs were.
        let shape = sizes.shape(plan, id).unwrap_or_default();
        match plan.tensor(id).elem {
            Elem::I32 => {
                i32_out.insert(id, Tensor::full(shape, -1));
            }
            _ => {
                f32_out.insert(id, Tensor::full(shape, 0.0));
            }
        }
    }
    let fptr: BTreeMap<TensorId, Shared<f32>> = f32_out
        .iter_mut()
        .map(|(k, t)| (*k, Shared(t.data.as_mut_ptr())))
        .collect();
    let iptr: BTreeMap<TensorId, Shared<i32>> = i32_out
        .iter_mut()
        .map(|(k, t)| (*k, Shared(t.data.as_mut_ptr())))
        .collect();

    // Scratch: every attention driver's S/P rows are `score_stride` floats apart (a constant
    // of the generated code; a scored compressed stage keeps one such tile per key tile of
    // visible tokens); the scores of block selection need one float per block.
    let max_len = sizes.max_segment().max(1);
    let stride = program.score_stride;
    let mut scores_len = 1usize;
    // Compressed attention stages: (stage index, scored by a select branch).
    let mut cmp_stages: Vec<(usize, bool)> = Vec::new();
    for (i, st) in steps.iter().enumerate() {
        match st {
            Step::Compressed { scored, .. } => cmp_stages.push((i, *scored)),
            Step::Topn { params, .. } => {
                scores_len = scores_len.max(max_len.div_ceil(params.block) + 1)
            }
            _ => {}
        }
    }
    let chunk = program.variant.query_chunk as usize;
    let items: Vec<(usize, usize)> = prep
        .slots
        .iter()
        .enumerate()
        .flat_map(|(si, s)| (0..s.len.div_ceil(chunk)).map(move |c| (si, c * chunk)))
        .collect();

    items.par_iter().for_each(|&(si, t0)| {
        let slot = prep.slots[si];
        let t1 = (t0 + chunk).min(slot.len);
        // The compressed stages' P scratch (and running maxima per chunk when scored), sized
        // for the tokens visible to this item's last position (visibility grows with t).
        let mut cmp_s: BTreeMap<usize, (Vec<f32>, Vec<f32>)> = cmp_stages
            .iter()
            .map(|&(i, scored)| {
                let nvis = match &steps[i] {
                    Step::Compressed { pool, .. } => rules::visible_compressed(
                        t1 - 1,
                        slot.len,
                        pool.block,
                        pool.stride,
                        d.causal,
                    ),
                    _ => 0,
                };
                let (sl, ml) = compressed_scratch(plan, &program.variant, scored, nvis);
                (i, (vec![0.0f32; sl], vec![0.0f32; ml]))
            })
            .collect();
        let mut cmp_nvis: BTreeMap<String, (usize, i64)> = BTreeMap::new();
        let mut tile = vec![0.0f32; g * stride];
        let mut m = vec![0.0f32; g];
        let mut l = vec![0.0f32; g];
        let mut o = vec![0.0f32; g * dvp];
        let mut scores = vec![0.0f32; scores_len];
        let mut counts: BTreeMap<TensorId, i64> = BTreeMap::new();
        for t in t0..t1 {
            let pos = slot.start + t;
            let row = slot.b * seq_len + pos;
            let q_at = |q: TensorId| {
                input(plan, prep.inputs, q)[(row * hq + slot.h * g) * d.dqk..].as_ptr()
            };
            let out_off = (row * hq + slot.h * g) * dv;
            for (i, st) in steps.iter().enumerate() {
                // SAFETY: every pointer below addresses this item's rows of a buffer sized by
                // the plan, or scratch sized above for the largest tile of any stage.
                unsafe {
                    match (st, program.stages[i]) {
                        (
                            Step::Compressed {
                                attend: c, pool, ..
                            },
                            StageFn::Compressed(f),
                        ) => {
                            let nvis = rules::visible_compressed(
                                t,
                                slot.len,
                                pool.block,
                                pool.stride,
                                d.causal,
                            ) as i64;
                            let packed = &prep.pooled[&pool.branch][si];
                            let (s, mc) = cmp_s
                                .get_mut(&i)
                                .map_or((std::ptr::null_mut(), std::ptr::null_mut()), |(s, mc)| {
                                    (s.as_mut_ptr(), mc.as_mut_ptr())
                                });
                            f(
                                q_at(c.q),
                                packed.k.as_ptr(),
                                packed.v.as_ptr(),
                                nvis,
                                s,
                                mc,
                                m.as_mut_ptr(),
                                l.as_mut_ptr(),
                                o.as_mut_ptr(),
                                fptr[&c.out].at(out_off),
                            );
                            cmp_nvis.insert(c.branch.clone(), (i, nvis));
                        }
                        (
                            Step::Topn {
                                topk, by, params, ..
                            },
                            StageFn::Topn(f),
                        ) => {
                            let (ci, nvis) = cmp_nvis.get(*by).copied().unwrap_or((0, 0));
                            let s = cmp_s.get(&ci).map_or(std::ptr::null(), |v| v.0.as_ptr());
                            let idx = iptr[&topk.idx].at((row * d.heads_kv + slot.h) * params.top);
                            let n = f(s, nvis, t as i64, slot.len as i64, scores.as_mut_ptr(), idx);
                            counts.insert(topk.idx, n);
                        }
                        (
                            Step::Selected {
                                attend: sa,
                                idx: sel_idx,
                                top,
                                ..
                            },
                            StageFn::Selected(f),
                        ) => {
                            let packed = &prep.raw[&sa.k][si];
                            let idx = iptr[sel_idx].at((row * d.heads_kv + slot.h) * top);
                            f(
                                q_at(sa.q),
                                packed.k.as_ptr(),
                                packed.v.as_ptr(),
                                idx,
                                counts.get(sel_idx).copied().unwrap_or(0),
                                t as i64,
                                slot.len as i64,
                                tile.as_mut_ptr(),
                                m.as_mut_ptr(),
                                l.as_mut_ptr(),
                                o.as_mut_ptr(),
                                fptr[&sa.out].at(out_off),
                            );
                        }
                        (Step::Window { attend: w, .. }, StageFn::Window(f)) => {
                            let packed = &prep.raw[&w.k][si];
                            f(
                                q_at(w.q),
                                packed.k.as_ptr(),
                                packed.v.as_ptr(),
                                t as i64,
                                slot.len as i64,
                                tile.as_mut_ptr(),
                                m.as_mut_ptr(),
                                l.as_mut_ptr(),
                                o.as_mut_ptr(),
                                fptr[&w.out].at(out_off),
                            );
                        }
                        (Step::Combine(c), StageFn::Combine(f)) => {
                            let mut args: Vec<*mut f32> = vec![fptr[&c.out].at(out_off)];
                            for term in &c.terms {
                                args.push(fptr[&term.out].at(out_off));
                                if let Some(gid) = term.gate {
                                    let gd = input(plan, prep.inputs, gid);
                                    args.push(gd[row * hq + slot.h * g..].as_ptr() as *mut f32);
                                }
                            }
                            f(args.as_ptr());
                        }
                        _ => {}
                    }
                }
            }
        }
    });

    let mut branches = BTreeMap::new();
    let mut selected = BTreeMap::new();
    let mut o_out = Tensor::full(vec![sizes.batch, seq_len, hq, dv], 0.0f32);
    for (id, t) in f32_out {
        let name = &plan.tensor(id).name;
        if name == "o" {
            o_out = t;
        } else if let Some(b) = name.strip_prefix("o_") {
            branches.insert(b.to_string(), t);
        }
    }
    for (id, t) in i32_out {
        if let Some(b) = plan.tensor(id).name.strip_prefix("idx_") {
            selected.insert(b.to_string(), t);
        }
    }
    CpuOutput {
        o: o_out,
        branches,
        selected,
    }
}
