//! The YAML form: parse + validate. Any input either fails with diagnostics that render, or
//! gives a `Spec` that its canonical text and its emitted YAML give back unchanged (the YAML
//! emitter is idempotent).
#![no_main]

use libfuzzer_sys::fuzz_target;
use nsac_dsl::format::format_spec;
use nsac_dsl::{diagnostics, parse_text, parse_yaml, to_yaml};

fuzz_target!(|data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    let spec = match parse_yaml(source) {
        Ok(spec) => spec,
        Err(e) => {
            let _ = diagnostics::render(&e, "fuzz.yaml", source, false);
            return;
        }
    };
    let canonical = format_spec(&spec);
    assert_eq!(
        parse_text(&canonical).ok().as_ref(),
        Some(&spec),
        "the canonical text does not give the YAML spec back\n{canonical}"
    );
    let yaml = to_yaml(&spec);
    let again =
        parse_yaml(&yaml).unwrap_or_else(|e| panic!("emitted YAML does not parse: {e:?}\n{yaml}"));
    assert_eq!(again, spec, "emitted YAML changed the spec\n{yaml}");
    assert_eq!(to_yaml(&again), yaml, "to_yaml is not idempotent");
});
