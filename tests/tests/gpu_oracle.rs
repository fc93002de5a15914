//! The GPU backend against the f64 oracle on a real GPU: every library spec and 60 random specs
//! × shapes, bf16 and f16, with the default Variant; and the library specs plus 24 random cases
//! under the non-default Variants the tuner may pick (every knob's extreme values and mixes).
//! Skips with a printed reason when no CUDA driver or device is present.
//!
//! Bars (docs/ARCHITECTURE.md §4): max|out − ref| / max|ref| ≤ 1e-2 for bf16, ≤ 2e-3 for f16, for
//! `o` and every branch output. The inputs are rounded to the dtype first and the oracle is fed the
//! rounded values, so only the kernels' arithmetic differs.
//!
//! Selected blocks must equal the oracle's, except where scores tie within rounding: a row
//! (token, kv head) may choose differently only when every block the GPU chose and the oracle
//! did not, and every block the oracle chose and the GPU did not, have oracle scores within
//! `1e-4·max + 1e-7` of each other (forced blocks count as +∞ and never tie with finite ones).
//! Such rows are excluded from the `o`/`o_<select>` comparison for all heads of the group; at
//! most 1% of rows may differ.

mod gpu_common;

use std::collections::BTreeSet;

use nsac_compiler::ir::Sizes;
use nsac_compiler::ptx::GpuVariant;
use nsac_dsl::problem::{DType, Problem, Shape};
use nsac_dsl::spec::Spec;
use nsac_kernels::io::random_inputs;
use nsac_kernels::reference::{self, block_scores, sequences};
use nsac_runtime::cuda::{CudaDevice, CudaKernel, round_inputs};

fn bar(dtype: DType) -> f64 {
    match dtype {
        DType::Bf16 => 1e-2,
        DType::F16 => 2e-3,
        DType::F32 => 1e-4,
    }
}

/// Rows (flattened token, kv head) whose selection legitimately differs.
fn check_selection(
    spec: &Spec,
    shape: &Shape,
    inputs: &nsac_kernels::io::Inputs,
    branch: &str,
    gpu: &[i32],
    want: &[i32],
    top: usize,
) -> Result<BTreeSet<(usize, usize)>, String> {
    let h = shape.heads.kv as usize;
    let sel = spec
        .branch(branch)
        .and_then(|b| b.as_select())
        .ok_or("not a select branch")?;
    let scores = block_scores(spec, shape, inputs, branch).map_err(|e| e.to_string())?;
    let mut excused = BTreeSet::new();
    for (seq, sc) in sequences(shape).iter().zip(&scores) {
        let nb = sc.shape[2];
        for t in 0..seq.len() {
            let tok = seq.batch * shape.seq_len + seq.start + t;
            for hh in 0..h {
                let at = (tok * h + hh) * top;
                let g: BTreeSet<i32> = gpu[at..at + top]
                    .iter()
                    .copied()
                    .filter(|&x| x >= 0)
                    .collect();
                let w: BTreeSet<i32> = want[at..at + top]
                    .iter()
                    .copied()
                    .filter(|&x| x >= 0)
                    .collect();
                if g == w {
                    continue;
                }
                let score = |i: i32| -> f64 {
                    let i = i as usize;
                    let own = t / sel.block as usize;
                    let forced = i < sel.keep_first as usize
                        || (i <= own && i + sel.keep_last as usize > own);
                    if forced || i >= nb {
                        f64::INFINITY
                    } else {
                        sc.data[(t * h + hh) * nb + i]
                    }
                };
                let only_g: Vec<f64> = g.difference(&w).map(|&i| score(i)).collect();
                let only_w: Vec<f64> = w.difference(&g).map(|&i| score(i)).collect();
                let ok = only_g.len() == only_w.len()
                    && only_g.iter().all(|a| {
                        only_w.iter().all(|b| {
                            a.is_finite()
                                && b.is_finite()
                                && (a - b).abs() <= 1e-4 * a.abs().max(b.abs()) + 1e-7
                        })
                    });
                if !ok {
                    return Err(format!(
                        "{branch}: token {tok} kv head {hh}: GPU chose {g:?}, oracle {w:?} (GPU-only scores {only_g:?}, oracle-only {only_w:?})"
                    ));
                }
                excused.insert((tok, hh));
            }
        }
    }
    Ok(excused)
}

fn rel_err(got: &[f32], want: &[f64], skip: &dyn Fn(usize) -> bool) -> f64 {
    let mut err = 0.0f64;
    let mut max = 0.0f64;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        max = max.max(w.abs());
        if skip(i) {
            continue;
        }
        let d = (f64::from(*g) - w).abs();
        err = if d.is_nan() {
            f64::INFINITY
        } else {
            err.max(d)
        };
    }
    if max == 0.0 { err } else { err / max }
}

/// Runs one case; returns a one-line summary or the reason it failed.
fn run_case(
    dev: &std::sync::Arc<CudaDevice>,
    spec: &Spec,
    shape: &Shape,
    seed: u64,
    variant: &GpuVariant,
) -> Result<String, String> {
    let raw = random_inputs(spec, shape, seed);
    let inputs = round_inputs(&raw, shape.dtype);
    let kernel = CudaKernel::compile(dev, spec, shape, variant).map_err(|e| e.to_string())?;
    let got = kernel
        .run(&Sizes::of(shape), &inputs)
        .map_err(|e| e.to_string())?;
    let want = reference::forward(spec, shape, &inputs).map_err(|e| e.to_string())?;
    let (hq, h, dv) = (
        shape.heads.q as usize,
        shape.heads.kv as usize,
        shape.head_dim.v as usize,
    );
    let group = hq / h;
    let mut excused = BTreeSet::new();
    for br in &spec.branches {
        if let Some(s) = br.as_select() {
            let g = &got.selected[&br.name];
            let w = &want.selected[&br.name];
            if g.shape != w.shape {
                return Err(format!(
                    "idx_{} shape {:?} vs {:?}",
                    br.name, g.shape, w.shape
                ));
            }
            excused.extend(check_selection(
                spec,
                shape,
                &inputs,
                &br.name,
                &g.data,
                &w.data,
                s.top as usize,
            )?);
        }
    }
    let rows = shape.tokens() * h;
    if excused.len() * 100 > rows.max(100) {
        return Err(format!(
            "{} of {rows} selection rows differ (ties)",
            excused.len()
        ));
    }
    let skip = |i: usize| {
        let tok = i / (hq * dv);
        let qh = (i / dv) % hq;
        excused.contains(&(tok, qh / group))
    };
    let limit = bar(shape.dtype);
    let mut summary = format!(
        "{} {} B={} T={} seg={} heads={}/{} dims={}/{}:",
        spec.name,
        shape.dtype.name(),
        shape.batch,
        shape.seq_len,
        shape.segments.len(),
        hq,
        h,
        shape.head_dim.qk,
        dv
    );
    let e = rel_err(&got.o.data, &want.o.data, &skip);
    summary += &format!(" o {e:.2e}");
    let mut worst = e;
    for br in &spec.branches {
        let skip_b = |i: usize| br.as_select().is_some() && skip(i);
        let e = rel_err(
            &got.branches[&br.name].data,
            &want.branches[&br.name].data,
            &skip_b,
        );
        summary += &format!(" o_{} {e:.2e}", br.name);
        worst = worst.max(e);
    }
    summary += &format!(" tie-rows {}", excused.len());
    if worst > limit {
        return Err(format!("{summary} — exceeds {limit:e}"));
    }
    Ok(summary)
}

fn run_all(cases: Vec<(Spec, Shape, u64)>) {
    let default = GpuVariant::default();
    run_variants(
        cases
            .into_iter()
            .map(|(spec, shape, seed)| (spec, shape, seed, default))
            .collect(),
    );
}

fn run_variants(cases: Vec<(Spec, Shape, u64, GpuVariant)>) {
    let Some(dev) = gpu_common::device() else {
        return;
    };
    let mut failures = Vec::new();
    for (spec, shape, seed, variant) in &cases {
        match run_case(&dev, spec, shape, *seed, variant) {
            Ok(s) => println!("ok   {s} [{variant}]"),
            Err(e) => {
                println!("FAIL {} [{variant}]: {e}", spec.name);
                failures.push(format!("{} (seed {seed}) [{variant}]: {e}", spec.name));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn library_specs_match_oracle() {
    let mut cases = Vec::new();
    for spec in gpu_common::library_specs() {
        for (i, dtype) in [DType::Bf16, DType::F16].into_iter().enumerate() {
            let mut p = Problem::batched(2, 301);
            p.dtype = dtype;
            cases.push((
                spec.clone(),
                p.resolve(&spec).expect("valid"),
                10 + i as u64,
            ));
        }
        let mut p = Problem::varlen(vec![0, 77, 410]);
        p.dtype = DType::Bf16;
        cases.push((spec.clone(), p.resolve(&spec).expect("valid"), 20));
    }
    run_all(cases);
}

#[test]
fn random_specs_match_oracle() {
    let cases = (0..60u64)
        .map(|seed| {
            let (spec, shape) = gpu_common::random_case(1000 + seed);
            (spec, shape, seed)
        })
        .collect();
    run_all(cases);
}

/// Non-default Variants: each knob at the ends of the tuner's ranges, and mixes of them (all
/// within an H100's shared memory for the test shapes).
fn tuner_variants() -> Vec<GpuVariant> {
    let d = GpuVariant::default();
    vec![
        GpuVariant {
            select_tokens: 4,
            select_chunk: 64,
            ..d
        },
        GpuVariant {
            select_tokens: 16,
            select_chunk: 16,
            ..d
        },
        GpuVariant {
            compress_tokens: 4,
            compress_max_regs: 0,
            ..d
        },
        GpuVariant {
            compress_tokens: 16,
            compress_max_regs: 96,
            ..d
        },
        GpuVariant {
            score_tokens: 4,
            warps_per_block: 2,
            ..d
        },
        GpuVariant {
            score_tokens: 16,
            warps_per_block: 8,
            ..d
        },
        GpuVariant {
            warps_per_block: 1,
            select_tokens: 1,
            select_chunk: 48,
            compress_tokens: 3,
            compress_max_regs: 168,
            score_tokens: 1,
            compress_stages: 3,
            fuse_combine: 1,
        },
        GpuVariant {
            compress_stages: 3,
            ..d
        },
        GpuVariant {
            fuse_combine: 1,
            ..d
        },
    ]
}

#[test]
fn tuner_variants_match_oracle() {
    let mut cases = Vec::new();
    for spec in gpu_common::library_specs() {
        for (i, variant) in tuner_variants().into_iter().enumerate() {
            let dtype = if i % 2 == 0 { DType::Bf16 } else { DType::F16 };
            let mut p = if i % 3 == 0 {
                Problem::varlen(vec![0, 77, 410])
            } else {
                Problem::batched(2, 301)
            };
            p.dtype = dtype;
            cases.push((
                spec.clone(),
                p.resolve(&spec).expect("valid"),
                40 + i as u64,
                variant,
            ));
        }
    }
    let variants = tuner_variants();
    for seed in 0..24u64 {
        let (spec, shape) = gpu_common::random_case(2000 + seed);
        cases.push((spec, shape, seed, variants[seed as usize % variants.len()]));
    }
    run_variants(cases);
}
