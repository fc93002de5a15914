//! The fused combine (`fuse_combine=1`) on a real GPU: `o` must equal the unfused run's bit for
//! bit (the fused epilogue does the combine kernel's operations in its order), and so must every
//! branch output and selection, for library specs and random specs × shapes (odd lengths,
//! batches, varlen segments, G from 1 to 16, gated and sum combines, some combine orders
//! reversed), under several select-kernel shapes. Skips with a printed reason without a device.
//! The fused results' accuracy against the oracle is `gpu_oracle.rs`'s job.

mod gpu_common;

use nsac_compiler::ir::Sizes;
use nsac_compiler::ptx::{GpuVariant, emit_ptx};
use nsac_dsl::problem::{DType, Problem, Shape};
use nsac_dsl::spec::Spec;
use nsac_kernels::io::random_inputs;
use nsac_runtime::cuda::{CudaDevice, CudaKernel, round_inputs};

/// Runs `spec` unfused and fused under `base`; `Ok(true)` when the fused run had no combine
/// kernel (the combine really was fused).
fn same_bits(
    dev: &std::sync::Arc<CudaDevice>,
    spec: &Spec,
    shape: &Shape,
    seed: u64,
    base: GpuVariant,
) -> Result<bool, String> {
    let inputs = round_inputs(&random_inputs(spec, shape, seed), shape.dtype);
    let fused_variant = GpuVariant {
        fuse_combine: 1,
        ..base
    };
    let run = |v: &GpuVariant| -> Result<_, String> {
        let k = CudaKernel::compile(dev, spec, shape, v).map_err(|e| e.to_string())?;
        let fused = k
            .manifest()
            .kernels
            .iter()
            .any(|k| k.name.contains("_attend_") && k.name.ends_with("_combine"));
        let out = k
            .run(&Sizes::of(shape), &inputs)
            .map_err(|e| e.to_string())?;
        Ok((out, fused))
    };
    let (a, _) = run(&base)?;
    let (b, fused) = run(&fused_variant)?;
    let bits = |t: &[f32]| t.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    if bits(&a.o.data) != bits(&b.o.data) {
        let n =
            a.o.data
                .iter()
                .zip(&b.o.data)
                .filter(|(x, y)| x.to_bits() != y.to_bits())
                .count();
        let first =
            a.o.data
                .iter()
                .zip(&b.o.data)
                .position(|(x, y)| x.to_bits() != y.to_bits());
        return Err(format!(
            "o differs in {n} of {} elements (first at {first:?})",
            a.o.data.len()
        ));
    }
    for (name, t) in &a.branches {
        if bits(&t.data) != bits(&b.branches[name].data) {
            return Err(format!("o_{name} differs"));
        }
    }
    if a.selected != b.selected {
        return Err("selections differ".into());
    }
    Ok(fused)
}

/// Whether every kernel of `spec` on `shape` under `v` fits the device's shared memory per
/// block (a large select chunk × 16 tokens does not for wide heads).
fn fits(dev: &CudaDevice, spec: &Spec, shape: &Shape, v: &GpuVariant) -> bool {
    let limit = dev.limits().expect("limits").max_shared_bytes_per_block;
    emit_ptx(spec, shape, v, dev.arch())
        .is_ok_and(|(_, m)| m.kernels.iter().all(|k| u64::from(k.shared_bytes) <= limit))
}

#[test]
fn fused_combine_equals_unfused_bit_for_bit() {
    let Some(dev) = gpu_common::device() else {
        return;
    };
    let bases = [
        GpuVariant::default(),
        GpuVariant::parse("select_tokens=4,select_chunk=16").expect("valid"),
        GpuVariant::parse("select_tokens=16,select_chunk=64").expect("valid"),
        GpuVariant::parse("select_tokens=1,select_chunk=48").expect("valid"),
    ];
    let mut cases: Vec<(Spec, Shape, u64)> = Vec::new();
    for spec in gpu_common::library_specs() {
        for (i, dtype) in [DType::Bf16, DType::F16].into_iter().enumerate() {
            let mut p = if i == 0 {
                Problem::batched(2, 301)
            } else {
                Problem::varlen(vec![0, 77, 410])
            };
            p.dtype = dtype;
            cases.push((spec.clone(), p.resolve(&spec).expect("valid"), 7 + i as u64));
        }
    }
    for seed in 0..32u64 {
        let (mut spec, shape) = gpu_common::random_case(3000 + seed);
        if seed % 3 == 0 {
            spec.combine.branches.reverse();
        }
        cases.push((spec, shape, seed));
    }
    let (mut failures, mut fused) = (Vec::new(), 0);
    for (i, (spec, shape, seed)) in cases.iter().enumerate() {
        let wanted = bases[i % bases.len()];
        let base = if fits(&dev, spec, shape, &wanted) {
            wanted
        } else {
            GpuVariant::default()
        };
        match same_bits(&dev, spec, shape, *seed, base) {
            Ok(f) => {
                fused += usize::from(f);
                println!(
                    "ok   {} {} fused={f} [{base}]",
                    spec.name,
                    shape.dtype.name()
                );
            }
            Err(e) => {
                println!("FAIL {} [{base}]: {e}", spec.name);
                failures.push(format!("{} (seed {seed}) [{base}]: {e}", spec.name));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // the cases must exercise the fusion (all but compress-only and random specs whose last
    // branch kernel is the scalar select)
    assert!(fused >= 8, "only {fused} cases fused");
}
