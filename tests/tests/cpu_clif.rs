//! Snapshots of the CLIF generated for each library spec at the default variant and a fixed
//! small shape (T = 100, heads overridden to 4/1 so the G-unrolled tiles stay reviewable). The text is built for a fixed target (x86-64 System V, FMA), before any
//! ISA-specific legalization, so it does not depend on the host CPU.

mod cpu_common;

use cpu_common::{library, with_heads};
use nsac_compiler::cpu::CpuVariant;
use nsac_dsl::problem::Problem;
use nsac_runtime::cpu::emit_clif;

#[test]
fn clif_of_library_specs() {
    for spec in library() {
        let dims = (spec.head_dim.qk, spec.head_dim.v);
        let shape = with_heads(Problem::batched(1, 100), 4, 1, dims.0, dims.1)
            .resolve(&spec)
            .expect("valid");
        let clif = emit_clif(&spec, &shape, &CpuVariant::default()).expect("generates");
        let again = emit_clif(&spec, &shape, &CpuVariant::default()).expect("generates");
        assert_eq!(clif, again, "CLIF text must be deterministic");
        insta::assert_snapshot!(format!("cpu_clif_{}", spec.name), clif);
    }
}

#[test]
fn asm_is_emitted_for_the_host() {
    let spec = &library()[1];
    let shape = Problem::batched(1, 100).resolve(spec).expect("valid");
    let asm = nsac_runtime::cpu::emit_asm(spec, &shape, &CpuVariant::default()).expect("asm");
    assert!(asm.contains("nsac_nsa_fla_qk"), "function names are listed");
    assert!(asm.lines().count() > 100, "the listing holds instructions");
}
