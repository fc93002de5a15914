//! The CPU drivers' argument blocks: every driver of every library spec has an entry with
//! unique slot names of the kinds its step needs, and a driver refuses a block with a slot
//! left unset, built for another driver, or set through a slot of the wrong kind.

use nsac_compiler::cpu::abi::{AbiError, SlotKind};
use nsac_compiler::cpu::{self, CpuVariant};
use nsac_compiler::ir::{Plan, Signature};
use nsac_dsl::problem::DType;

fn plan(name: &str) -> Plan {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../kernels")
        .join(name);
    let spec = nsac_dsl::load(&path).expect("library spec loads");
    let sig = Signature {
        heads: spec.heads,
        head_dim: spec.head_dim,
        dtype: DType::F32,
    };
    Plan::forward(&spec, &sig).expect("lowers")
}

#[test]
fn every_driver_has_an_entry_with_unique_slot_names() {
    for name in [
        "nsa-paper.nsa",
        "nsa-fla.nsa",
        "sliding-window.nsa",
        "compress-only.nsa",
    ] {
        let plan = plan(name);
        let program = cpu::compile(&plan, &CpuVariant::default()).expect("compiles");
        let steps = cpu::steps(&plan).expect("steps");
        assert_eq!(program.drivers.len(), steps.len(), "{name}");
        for (d, st) in program.drivers.iter().zip(&steps) {
            assert_eq!(d.entry, cpu::abi::entry(&plan, st), "{}", d.name);
            let mut names: Vec<&str> = d.entry.slots.iter().map(|s| s.name.as_str()).collect();
            names.sort_unstable();
            let n = names.len();
            names.dedup();
            assert_eq!(
                names.len(),
                n,
                "duplicate slot in {}: {}",
                d.name,
                d.entry.describe()
            );
            let writes = d
                .entry
                .slots
                .iter()
                .filter(|s| matches!(s.kind, SlotKind::Write | SlotKind::WriteI32))
                .count();
            assert!(
                writes >= 1,
                "{} writes nothing: {}",
                d.name,
                d.entry.describe()
            );
            assert_eq!(
                d.entry.returns_count,
                matches!(st, cpu::Step::TopK { .. }),
                "{}",
                d.name
            );
        }
    }
}

#[test]
fn drivers_refuse_incomplete_or_foreign_blocks() {
    let plan = plan("nsa-paper.nsa");
    let program = cpu::compile(&plan, &CpuVariant::default()).expect("compiles");
    let (a, b) = (&program.drivers[0], &program.drivers[1]);
    // Nothing set: the first slot is reported unset, and the driver never runs.
    // SAFETY: the call is refused before any pointer is read.
    let err = unsafe { a.call(&a.args()) }.unwrap_err();
    assert_eq!(
        err,
        AbiError::Unset {
            driver: a.name.clone(),
            name: a.entry.slots[0].name.clone(),
        }
    );
    // SAFETY: as above.
    let err = unsafe { a.call(&b.args()) }.unwrap_err();
    assert!(matches!(err, AbiError::OtherDriver { .. }), "{err}");
    // Slots resolve by name and kind only.
    assert!(matches!(a.int("nope"), Err(AbiError::NoSlot { .. })));
    let read = a
        .entry
        .slots
        .iter()
        .find(|s| s.kind == SlotKind::Read)
        .expect("a read slot");
    assert!(matches!(a.int(&read.name), Err(AbiError::WrongKind { .. })));
    assert!(a.read(&read.name).is_ok());
}
