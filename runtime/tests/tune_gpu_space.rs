//! The GPU Variant space, without a GPU (PTX generation needs no driver): knobs that do not
//! change a problem's code collapse to the default, and Variants that exceed a device's limits
//! or split the spec's blocks are pruned with the reason before anything is loaded.

use nsac_compiler::ptx::{Arch, GpuVariant, emit_ptx};
use nsac_dsl::Spec;
use nsac_dsl::problem::{DType, Problem, Shape};
use nsac_runtime::tune::gpu::{GpuKnobs, GpuSpace};
use nsac_runtime::tune::space::enumerate;
use nsac_runtime::tune::{GpuLimits, PruneReason, VariantSpace};

/// An H100's per-block limits (cuDeviceGetAttribute on an H100 80GB HBM3).
const H100: GpuLimits = GpuLimits {
    max_threads_per_block: 1024,
    max_shared_bytes_per_block: 227 * 1024,
    max_registers_per_block: 65536,
    max_registers_per_thread: 255,
};

fn library(file: &str) -> Spec {
    let path = format!("{}/../kernels/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("library spec");
    nsac_dsl::parse_text(&text).expect("valid spec")
}

fn shape(spec: &Spec, seq_len: usize, dtype: DType) -> Shape {
    let mut problem = Problem::batched(1, seq_len);
    problem.dtype = dtype;
    problem.resolve(spec).expect("valid problem")
}

fn values(space: &GpuSpace) -> Vec<(String, usize)> {
    space
        .dimensions()
        .into_iter()
        .map(|d| (d.name, d.values.len()))
        .collect()
}

#[test]
fn knobs_that_do_not_change_the_code_collapse_to_the_default() {
    let fla = library("nsa-fla.nsa");
    let bf16 = GpuSpace::new(
        &fla,
        &shape(&fla, 3001, DType::Bf16),
        Arch::Sm90,
        H100,
        GpuKnobs::default(),
    );
    // Tensor-core kernels: every knob keeps all its values.
    // (compress_stages and fuse_combine have two values each.)
    for (name, n) in values(&bf16) {
        let want = match name.as_str() {
            "compress_stages" | "fuse_combine" => 2,
            _ => 3,
        };
        assert_eq!(n, want, "{name}");
    }
    // f32 runs the scalar kernels only: just the warp-per-row knob is left.
    let f32 = GpuSpace::new(
        &fla,
        &shape(&fla, 3001, DType::F32),
        Arch::Sm90,
        H100,
        GpuKnobs::default(),
    );
    for (name, n) in values(&f32) {
        let want = if name == "warps_per_block" { 3 } else { 1 };
        assert_eq!(n, want, "{name}");
    }
    assert_eq!(f32.variant_at(&f32.default_point()), GpuVariant::default());
    // Every collapsed knob is truly inert: the code of any grid point equals the default's
    // but for warps_per_block.
    let grid = enumerate(&f32).expect("grid");
    let base = emit_ptx(
        &fla,
        &shape(&fla, 3001, DType::F32),
        &GpuVariant {
            select_tokens: 16,
            select_chunk: 64,
            compress_tokens: 4,
            compress_max_regs: 0,
            score_tokens: 4,
            ..GpuVariant::default()
        },
        Arch::Sm90,
    )
    .expect("emits");
    let default = emit_ptx(
        &fla,
        &shape(&fla, 3001, DType::F32),
        &GpuVariant::default(),
        Arch::Sm90,
    )
    .expect("emits");
    assert_eq!(base.0, default.0);
    assert_eq!(grid.total(), 3);
}

#[test]
fn device_limits_and_block_sizes_prune_with_their_reasons() {
    // nsa-fla in bf16 runs the tensor-core kernels, whose blocks the knobs size; a made-up
    // small GPU (100 KiB of shared memory and 32768 registers per block) must prune some.
    let fla = library("nsa-fla.nsa");
    let problem = shape(&fla, 2049, DType::Bf16);
    let small = GpuLimits {
        max_threads_per_block: 1024,
        max_shared_bytes_per_block: 100 * 1024,
        max_registers_per_block: 32768,
        max_registers_per_thread: 255,
    };
    let space = GpuSpace::new(&fla, &problem, Arch::Sm80, small, GpuKnobs::default());
    let grid = enumerate(&space).expect("grid");
    assert!(!grid.valid.is_empty() && !grid.pruned.is_empty());
    for point in &grid.valid {
        let (_, manifest) =
            emit_ptx(&fla, &problem, &space.variant_at(point), Arch::Sm80).expect("emits");
        assert!(manifest.kernels.iter().all(|k| {
            let threads = k.block[0];
            u64::from(k.shared_bytes) <= small.max_shared_bytes_per_block
                && k.max_regs.is_none_or(|r| threads * r <= 32768)
        }));
    }
    let mut reasons = std::collections::BTreeSet::new();
    for (point, why) in &grid.pruned {
        let v = space.variant_at(point);
        let (_, manifest) = emit_ptx(&fla, &problem, &v, Arch::Sm80).expect("emits");
        match why {
            PruneReason::ExceedsLimit {
                resource,
                needed,
                available,
            } => {
                assert!(needed > available, "{why}");
                if resource.starts_with("bytes of shared memory") {
                    assert!(
                        manifest
                            .kernels
                            .iter()
                            .any(|k| u64::from(k.shared_bytes) > small.max_shared_bytes_per_block)
                    );
                    reasons.insert("shared");
                } else if resource.starts_with("registers per block") {
                    assert!(
                        manifest
                            .kernels
                            .iter()
                            .any(|k| k.block[0] * k.max_regs.unwrap_or(0) > 32768),
                        "{v:?}"
                    );
                    reasons.insert("registers");
                } else {
                    panic!("unexpected resource: {why}");
                }
            }
            PruneReason::NotDivisible {
                knob, value, size, ..
            } => {
                assert_eq!(knob, "select_chunk");
                assert_ne!(size % value, 0);
                reasons.insert("divisible");
            }
            PruneReason::Incompatible(other) => panic!("unexpected reason {other}"),
        }
    }
    // nsa-fla selects 64-token blocks: every chunk of 16/32/64 divides them, so only the
    // device's limits prune here.
    assert_eq!(
        reasons,
        ["registers", "shared"].into_iter().collect(),
        "{} pruned",
        grid.pruned.len()
    );
    // On an H100 the default fits, and so do 16 tokens of uncapped compressed attention (512
    // threads get a register cap that launches); the made-up GPU cannot hold the default.
    let h100 = GpuSpace::new(&fla, &problem, Arch::Sm90, H100, GpuKnobs::default());
    assert_eq!(h100.check(&GpuVariant::default()), Ok(()));
    assert!(space.check(&GpuVariant::default()).is_err());
    let big = GpuVariant {
        compress_tokens: 16,
        compress_max_regs: 0,
        ..GpuVariant::default()
    };
    assert_eq!(h100.check(&big), Ok(()));
}

#[test]
fn a_chunk_that_splits_the_select_block_is_pruned() {
    let text = "attention small_blocks {\n    heads = 16 / 1\n    head_dim = 64\n    causal = true\n    compress cmp { block = 32, stride = 16, pool = mean }\n    select slc { block = 16, top = 4, scored_by = cmp }\n    combine = sum(cmp, slc)\n}\n";
    let spec = nsac_dsl::parse_text(text).expect("valid spec");
    let problem = shape(&spec, 1001, DType::F16);
    let space = GpuSpace::new(&spec, &problem, Arch::Sm90, H100, GpuKnobs::default());
    let v = GpuVariant {
        select_chunk: 64,
        ..GpuVariant::default()
    };
    assert_eq!(
        space.check(&v),
        Err(PruneReason::NotDivisible {
            knob: "select_chunk".into(),
            value: 64,
            what: "the select block".into(),
            size: 16,
        })
    );
    // The default stays runnable whatever the blocks: it is the baseline.
    assert_eq!(space.check(&GpuVariant::default()), Ok(()));
    let sixteen = GpuVariant {
        select_chunk: 16,
        ..GpuVariant::default()
    };
    assert_eq!(space.check(&sixteen), Ok(()));
}
