//! Snapshots of the generated PTX and its launch manifest for every library spec (default
//! Variant, B=1, T=100, bf16, sm_90): any change to the generated code shows up in review. Also
//! nsa-fla's manifest with the combine fused into the selected attention (`fuse_combine=1`).

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
