//! Snapshots of the CLIF generated for each library spec at the default variant and a fixed
//! small shape (T = 100, heads overridden to 4/1 so the G-unrolled tiles stay reviewable). The text is built for a fixed target (x86-64 System V, FMA), before any
//! ISA-specific legalization, so it does not depend on the host CPU.

mod cpu_common;

use cpu_common::{library_labeled, two_variants, with_heads};
use nsac_compiler::cpu::CpuVariant;
use nsac_dsl::problem::Problem;
use nsac_runtime::cpu::emit_clif;

#[test]
fn clif_of_library_specs() {
    for (label, spec) in library_labeled() {
        let dims = (spec.head_dim.qk, spec.head_dim.v);
        let shape = with_heads(Problem::batched(1, 100), 4, 1, dims.0, dims.1)
            .resolve(&spec)
            .expect("valid");
        let clif = emit_clif(&spec, &shape, &CpuVariant::default()).expect("generates");
        let again = emit_clif(&spec, &shape, &CpuVariant::default()).expect("generates");
        assert_eq!(clif, again, "CLIF text must be deterministic");
        insta::assert_snapshot!(format!("cpu_clif_{label}"), clif);
    }
}

/// The generated code does not depend on B, T or `cu_seqlens` (issue 10, "sizes at run time"):
/// every library spec, at its own heads and dims, gives the same CLIF for short and long lengths,
/// a batch and a packing of segments (the CLI's `--seq`, `--batch`, `--cu-seqlens`), under the
/// default variant and one with a small key tile (many compressed chunks).
#[test]
fn clif_does_not_depend_on_the_shape() {
    let problems = [
        ("--seq 1000", Problem::batched(1, 1000)),
        ("--seq 4099", Problem::batched(1, 4099)),
        // Long enough that nsa-fla's compressed tokens (T/64) outgrow its selection block.
        ("--seq 16384", Problem::batched(1, 16384)),
        ("--batch 3 --seq 77", Problem::batched(3, 77)),
        (
            "--cu-seqlens 0,500,1000",
            Problem::varlen(vec![0, 500, 1000]),
        ),
    ];
    for (label, spec) in library_labeled() {
        for variant in two_variants() {
            let clif = |p: &Problem| {
                let shape = p.resolve(&spec).expect("valid");
                emit_clif(&spec, &shape, &variant).expect("generates")
            };
            let first = clif(&problems[0].1);
            for (name, p) in &problems[1..] {
                assert!(
                    clif(p) == first,
                    "{label} ({variant}): the CLIF for {name} differs from the one for {}",
                    problems[0].0
                );
            }
        }
    }
}

#[test]
fn asm_is_emitted_for_the_host() {
    let spec = &cpu_common::nsa_fla();
    let shape = Problem::batched(1, 100).resolve(spec).expect("valid");
    let asm = nsac_runtime::cpu::emit_asm(spec, &shape, &CpuVariant::default()).expect("asm");
    assert!(asm.contains("nsac_nsa_fla_qk"), "function names are listed");
    assert!(asm.lines().count() > 100, "the listing holds instructions");
}
