//! One call of a compiled plan: pack/pool per (b, segment, kv head), then the work items
//! (b, segment, kv head, chunk of positions) in parallel, each calling the stage drivers for
//! every position in stage order.

use std::collections::BTreeMap;

use nsac_compiler::cpu::{CpuProgram, StageFn, compressed_scratch};
use nsac_compiler::plan::{BufferId, Plan, Stage};
use nsac_dsl::spec::Pool;
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
    /// Packed raw K/V per (K buffer id) per slot index.
    raw: BTreeMap<BufferId, Vec<Packed>>,
    /// Pooled K̃/V̈ per compress stage index per slot index.
    pooled: BTreeMap<usize, Vec<Packed>>,
    slots: Vec<Slot>,
    inputs: &'a Inputs,
}

fn input<'a>(plan: &Plan, inputs: &'a Inputs, id: BufferId) -> &'a [f32] {
    inputs
        .get(&plan.buffer(id).name)
        .map(|t| t.data.as_slice())
        .unwrap_or(&[])
}

fn prepare<'a>(plan: &Plan, program: &CpuProgram, inputs: &'a Inputs) -> Prepared<'a> {
    let d = &plan.dims;
    let dvp = d.dv.div_ceil(4) * 4;
    let mut slots = Vec::new();
    for b in 0..d.batch {
        for &(start, end) in &d.segments {
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
    for st in &plan.stages {
        let (k, v) = match st {
            Stage::SelectedAttention(s) => (s.k, s.v),
            Stage::WindowAttention(w) => (w.k, w.v),
            _ => continue,
        };
        if raw.contains_key(&k) {
            continue;
        }
        let (kd, vd) = (input(plan, inputs, k), input(plan, inputs, v));
        let packs: Vec<Packed> = slots
            .par_iter()
            .map(|s| pack(kd, vd, d.seq_len, d.heads_kv, d.dqk, d.dv, dvp, *s))
            .collect();
        raw.insert(k, packs);
    }
    let mut pooled = BTreeMap::new();
    for (i, st) in plan.stages.iter().enumerate() {
        let (Stage::Pool(ps), StageFn::Pool(f)) = (st, program.stages[i]) else {
            continue;
        };
        let (kd, vd) = (input(plan, inputs, ps.k), input(plan, inputs, ps.v));
        let w: Vec<&[f32]> = ps.weights.iter().map(|w| input(plan, inputs, *w)).collect();
        let packs: Vec<Packed> = slots
            .par_iter()
            .map(|s| {
                let ntok = ps.tokens_in(s.len);
                let n4 = ntok.div_ceil(4).max(1);
                let mut kc = vec![0.0f32; n4 * d.dqk * 4];
                let mut vc = vec![0.0f32; n4 * 4 * dvp];
                let kp = kd[offset(d.seq_len, d.heads_kv, d.dqk, s.b, s.start, s.h)..].as_ptr();
                let vp = vd[offset(d.seq_len, d.heads_kv, d.dv, s.b, s.start, s.h)..].as_ptr();
                let (wk, wv) = match ps.pool {
                    Pool::Mean => (kp, kp),
                    Pool::Weighted => {
                        let p = w[0][s.h * ps.block..].as_ptr();
                        (p, p)
                    }
                    Pool::Linear => (
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
        pooled.insert(i, packs);
    }
    Prepared {
        raw,
        pooled,
        slots,
        inputs,
    }
}

/// Runs the plan; inputs were checked by the caller.
pub fn execute(plan: &Plan, program: &CpuProgram, inputs: &Inputs) -> CpuOutput {
    let d = &plan.dims;
    let prep = prepare(plan, program, inputs);
    let (bt, hq, dv) = (d.batch * d.seq_len, d.heads_q, d.dv);
    let dvp = dv.div_ceil(4) * 4;
    let g = d.group;

    // Outputs.
    let mut f32_out: BTreeMap<BufferId, Tensor<f32>> = BTreeMap::new();
    let mut i32_out: BTreeMap<BufferId, Tensor<i32>> = BTreeMap::new();
    for (i, b) in plan.buffers.iter().enumerate() {
        if b.role != nsac_compiler::plan::BufferRole::Output {
            continue;
        }
        match b.elem {
            nsac_compiler::plan::Elem::F32 => {
                f32_out.insert(BufferId(i), Tensor::full(b.dims.clone(), 0.0));
            }
            nsac_compiler::plan::Elem::I32 => {
                i32_out.insert(BufferId(i), Tensor::full(b.dims.clone(), -1));
            }
        }
    }
    let fptr: BTreeMap<BufferId, Shared<f32>> = f32_out
        .iter_mut()
        .map(|(k, t)| (*k, Shared(t.data.as_mut_ptr())))
        .collect();
    let iptr: BTreeMap<BufferId, Shared<i32>> = i32_out
        .iter_mut()
        .map(|(k, t)| (*k, Shared(t.data.as_mut_ptr())))
        .collect();

    // Scratch: every attention driver's S/P rows are `score_stride` floats apart (a constant
    // of the generated code; a scored compressed stage keeps one such tile per key tile of
    // visible tokens); the scores of block selection need one float per block.
    let max_len = d.segments.iter().map(|(s, e)| e - s).max().unwrap_or(1);
    let stride = program.score_stride;
    let mut scores_len = 1usize;
    // Compressed attention stages: (stage index, scored by a select branch).
    let mut cmp_stages: Vec<(usize, bool)> = Vec::new();
    for (i, st) in plan.stages.iter().enumerate() {
        match st {
            Stage::CompressedAttention(c) => {
                cmp_stages.push((i, plan.selects_scored_by(&c.branch) > 0))
            }
            Stage::SelectBlocks(s) => scores_len = scores_len.max(max_len.div_ceil(s.block) + 1),
            _ => {}
        }
    }
    let chunk = program.variant.query_chunk as usize;
    let nseg = d.segments.len();
    let items: Vec<(usize, usize)> = prep
        .slots
        .iter()
        .enumerate()
        .flat_map(|(si, s)| (0..s.len.div_ceil(chunk)).map(move |c| (si, c * chunk)))
        .collect();
    let _ = nseg;

    items.par_iter().for_each(|&(si, t0)| {
        let slot = prep.slots[si];
        let t1 = (t0 + chunk).min(slot.len);
        // The compressed stages' P scratch (and running maxima per chunk when scored), sized
        // for the tokens visible to this item's last position (visibility grows with t).
        let mut cmp_s: BTreeMap<usize, (Vec<f32>, Vec<f32>)> = cmp_stages
            .iter()
            .map(|&(i, scored)| {
                let nvis = match &plan.stages[i] {
                    Stage::CompressedAttention(c) => plan
                        .pool_of(&c.branch)
                        .map_or(0, |p| p.visible_to(t1 - 1, slot.len, d.causal)),
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
        let mut counts: BTreeMap<BufferId, i64> = BTreeMap::new();
        for t in t0..t1 {
            let pos = slot.start + t;
            let row = slot.b * d.seq_len + pos;
            let q = input(plan, prep.inputs, BufferId(0));
            let qp = q[(row * hq + slot.h * g) * d.dqk..].as_ptr();
            let out_off = (row * hq + slot.h * g) * dv;
            for (i, st) in plan.stages.iter().enumerate() {
                // SAFETY: every pointer below addresses this item's rows of a buffer sized by
                // the plan, or scratch sized above for the largest tile of any stage.
                unsafe {
                    match (st, program.stages[i]) {
                        (Stage::CompressedAttention(c), StageFn::Compressed(f)) => {
                            let pool = plan.pool_of(&c.branch);
                            let nvis =
                                pool.map_or(0, |p| p.visible_to(t, slot.len, d.causal)) as i64;
                            let pidx = plan
                                .stages
                                .iter()
                                .position(|s| matches!(s, Stage::Pool(p) if p.branch == c.branch))
                                .unwrap_or(0);
                            let packed = &prep.pooled[&pidx][si];
                            let (s, mc) = cmp_s
                                .get_mut(&i)
                                .map_or((std::ptr::null_mut(), std::ptr::null_mut()), |(s, mc)| {
                                    (s.as_mut_ptr(), mc.as_mut_ptr())
                                });
                            f(
                                qp,
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
                        (Stage::SelectBlocks(sb), StageFn::Topn(f)) => {
                            let (ci, nvis) = cmp_nvis.get(&sb.scored_by).copied().unwrap_or((0, 0));
                            let s = cmp_s.get(&ci).map_or(std::ptr::null(), |v| v.0.as_ptr());
                            let idx = iptr[&sb.idx].at((row * d.heads_kv + slot.h) * sb.top);
                            let n = f(s, nvis, t as i64, slot.len as i64, scores.as_mut_ptr(), idx);
                            counts.insert(sb.idx, n);
                        }
                        (Stage::SelectedAttention(sa), StageFn::Selected(f)) => {
                            let packed = &prep.raw[&sa.k][si];
                            let idx = iptr[&sa.idx].at((row * d.heads_kv + slot.h) * sa.top);
                            f(
                                qp,
                                packed.k.as_ptr(),
                                packed.v.as_ptr(),
                                idx,
                                counts.get(&sa.idx).copied().unwrap_or(0),
                                t as i64,
                                slot.len as i64,
                                tile.as_mut_ptr(),
                                m.as_mut_ptr(),
                                l.as_mut_ptr(),
                                o.as_mut_ptr(),
                                fptr[&sa.out].at(out_off),
                            );
                        }
                        (Stage::WindowAttention(w), StageFn::Window(f)) => {
                            let packed = &prep.raw[&w.k][si];
                            f(
                                qp,
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
                        (Stage::Combine(c), StageFn::Combine(f)) => {
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
    let mut o_out = Tensor::full(vec![d.batch, d.seq_len, hq, dv], 0.0f32);
    let _ = bt;
    for (id, t) in f32_out {
        let name = &plan.buffer(id).name;
        if name == "o" {
            o_out = t;
        } else if let Some(b) = name.strip_prefix("o_") {
            branches.insert(b.to_string(), t);
        }
    }
    for (id, t) in i32_out {
        if let Some(b) = plan.buffer(id).name.strip_prefix("idx_") {
            selected.insert(b.to_string(), t);
        }
    }
    CpuOutput {
        o: o_out,
        branches,
        selected,
    }
}
