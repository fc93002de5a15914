//! The text form: parser + validator + formatter. Any input either fails with diagnostics that
//! render (spans inside the text), or parses to a `Spec` that the comment-preserving formatter,
//! the canonical formatter and the YAML emitter all give back unchanged; formatting is
//! idempotent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nsac_dsl::format::{format_source, format_spec};
use nsac_dsl::{canonical_hash, diagnostics, parse_text, parse_yaml, to_yaml};

fuzz_target!(|data: &[u8]| {
    // Non-UTF-8 bytes are the loader's business (`SourceFile::read`); the parser takes `&str`.
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = parse_text(source);
    let formatted = format_source(source);
    let (spec, text) = match (parsed, formatted) {
        (Ok(spec), Ok(text)) => (spec, text),
        (Err(e), Err(_)) => {
            let _ = diagnostics::render(&e, "fuzz.nsa", source, false);
            return;
        }
        (p, f) => panic!(
            "parse_text and format_source disagree: {:?} vs {:?}",
            p.is_ok(),
            f.is_ok()
        ),
    };

    // `fmt` keeps the meaning and is idempotent.
    let reparsed = parse_text(&text).unwrap_or_else(|e| {
        panic!("format_source output does not parse: {e:?}\n--- output ---\n{text}")
    });
    assert_eq!(reparsed, spec, "format_source changed the spec\n{text}");
    let twice = format_source(&text).expect("formatted text formats");
    assert_eq!(twice, text, "format_source is not idempotent");

    // The canonical text and the YAML twin give the same spec.
    let canonical = format_spec(&spec);
    assert_eq!(
        parse_text(&canonical).ok().as_ref(),
        Some(&spec),
        "canonical text does not give the spec back\n{canonical}"
    );
    assert_eq!(format_source(&canonical).ok().as_deref(), Some(&*canonical));
    let yaml = to_yaml(&spec);
    assert_eq!(
        parse_yaml(&yaml).ok().as_ref(),
        Some(&spec),
        "the YAML twin does not give the spec back\n{yaml}"
    );
    let _ = canonical_hash(&spec);
});
