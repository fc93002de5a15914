//! Snapshots of the generated PTX and its launch manifest for every library spec (default
//! Variant, B=1, T=100, bf16, sm_90): any change to the generated code shows up in review. Also
//! nsa-fla's manifest with the combine fused into the selected attention (`fuse_combine=1`), and
//! that the PTX of every library spec is one text for every length, batch and packing.

mod gpu_common;

use nsac_compiler::ptx::{Arch, GpuVariant, emit_ptx};
use nsac_dsl::problem::{DType, Problem};

#[test]
fn library_specs_ptx_and_manifest() {
    for spec in gpu_common::library_specs() {
        let mut p = Problem::batched(1, 100);
        p.dtype = DType::Bf16;
        let shape = p.resolve(&spec).expect("valid");
        let (ptx, manifest) =
            emit_ptx(&spec, &shape, &GpuVariant::default(), Arch::Sm90).expect("emits");
        insta::assert_snapshot!(format!("ptx_{}_t100_bf16_sm90", spec.name), ptx);
        insta::assert_snapshot!(
            format!("manifest_{}_t100_bf16_sm90", spec.name),
            manifest.to_json()
        );
    }
}

/// nsa-fla with `fuse_combine=1`: no combine kernel; the selected attention kernel also reads
/// the compressed branch's output and both gates and writes `o`; the buffers are unchanged.
#[test]
fn nsa_fla_fused_combine_manifest() {
    let spec = gpu_common::library_specs()
        .into_iter()
        .find(|s| s.name == "nsa_fla")
        .expect("library spec");
    let mut p = Problem::batched(1, 100);
    p.dtype = DType::Bf16;
    let shape = p.resolve(&spec).expect("valid");
    let variant = GpuVariant::parse("fuse_combine=1").expect("valid variant");
    let (_, manifest) = emit_ptx(&spec, &shape, &variant, Arch::Sm90).expect("emits");
    let (_, unfused) = emit_ptx(&spec, &shape, &GpuVariant::default(), Arch::Sm90).expect("emits");
    assert_eq!(manifest.buffers, unfused.buffers);
    insta::assert_snapshot!(
        "manifest_nsa_fla_t100_bf16_sm90_fuse_combine",
        serde_json::to_string_pretty(&manifest.kernels).expect("serializes")
    );
}

#[test]
fn emission_is_deterministic() {
    for spec in gpu_common::library_specs() {
        let mut p = Problem::varlen(vec![0, 37, 140]);
        p.dtype = DType::F16;
        let shape = p.resolve(&spec).expect("valid");
        let a = emit_ptx(&spec, &shape, &GpuVariant::default(), Arch::Sm80).expect("emits");
        let b = emit_ptx(&spec, &shape, &GpuVariant::default(), Arch::Sm80).expect("emits");
        assert_eq!(a, b);
        assert!(a.0.contains(".target sm_80"));
        assert_eq!(a.1.kernels.len(), a.0.matches(".visible .entry").count());
    }
}

/// `nsac compile --target ptx` output does not depend on the problem's lengths: every library
/// spec gives byte-identical PTX for T = 1000, T = 4099, B = 3 × T = 77 and the varlen
/// segments 0,500,1000, in bf16 and f32, for sm_80 and sm_90, default and fused Variants; and
/// each of those manifests' launches equals what another one's geometry evaluates for it.
#[test]
fn library_ptx_is_the_same_for_every_length_and_packing() {
    let problems = || {
        [
            Problem::batched(1, 1000),
            Problem::batched(1, 4099),
            Problem::batched(3, 77),
            Problem::varlen(vec![0, 500, 1000]),
        ]
    };
    let fused = GpuVariant::parse("fuse_combine=1").expect("valid variant");
    for spec in gpu_common::library_specs() {
        for dtype in [DType::Bf16, DType::F32] {
            for arch in [Arch::Sm80, Arch::Sm90] {
                for variant in [GpuVariant::default(), fused] {
                    let emitted: Vec<_> = problems()
                        .into_iter()
                        .map(|mut p| {
                            p.dtype = dtype;
                            let shape = p.resolve(&spec).expect("valid");
                            emit_ptx(&spec, &shape, &variant, arch).expect("emits")
                        })
                        .collect();
                    let (ptx0, m0) = &emitted[0];
                    for (ptx, m) in &emitted[1..] {
                        assert!(
                            ptx == ptx0,
                            "{} {} {}: the PTX differs between {:?} and {:?}",
                            spec.name,
                            dtype.name(),
                            arch.target(),
                            (m0.batch, m0.seq_len, &m0.segments),
                            (m.batch, m.seq_len, &m.segments)
                        );
                        let own: Vec<_> = m
                            .kernels
                            .iter()
                            .map(|k| (k.grid[0], k.block[0], k.shared_bytes))
                            .collect();
                        let evaluated: Vec<_> = m0
                            .launches(m.sizes())
                            .expect("fits")
                            .iter()
                            .map(|l| (l.grid, l.block, l.shared_bytes))
                            .collect();
                        assert_eq!(own, evaluated, "{}", spec.name);
                    }
                }
            }
        }
    }
}
