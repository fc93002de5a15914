//! Property tests of the language: round trips through both forms, formatter idempotence,
//! and no panic on random or mutated input.

use proptest::prelude::*;

use crate::arbitrary::{selection_spec, valid_spec};
use crate::format::{format_source, format_spec};
use crate::{parse_text, parse_yaml, to_yaml};

const PAPER: &str = include_str!("../../kernels/nsa-paper.nsa");
const PAPER_YAML: &str = include_str!("../../kernels/nsa-paper.yaml");

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn text_round_trip(spec in valid_spec()) {
        let text = format_spec(&spec);
        prop_assert_eq!(parse_text(&text), Ok(spec), "{}", text);
    }

    #[test]
    fn yaml_round_trip(spec in valid_spec()) {
        let yaml = to_yaml(&spec);
        prop_assert_eq!(parse_yaml(&yaml), Ok(spec), "{}", yaml);
    }

    #[test]
    fn format_is_idempotent(spec in valid_spec()) {
        let once = format_spec(&spec);
        let twice = format_source(&once).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&once, &twice);
    }

    #[test]
    fn no_panic_on_random_text(s in "\\PC{0,200}") {
        let _ = parse_text(&s);
        let _ = parse_yaml(&s);
        let _ = format_source(&s);
    }

    #[test]
    fn no_panic_on_mutated_specs(
        pos in 0usize..10_000,
        cut in 0usize..20,
        insert in "[-0-9a-z_{}()=,/#:\\[\\] \n]{0,8}",
        yaml in any::<bool>(),
    ) {
        let base = if yaml { PAPER_YAML } else { PAPER };
        let mut at = pos % (base.len() + 1);
        while !base.is_char_boundary(at) { at -= 1; }
        let mut end = (at + cut).min(base.len());
        while !base.is_char_boundary(end) { end -= 1; }
        let mutated = format!("{}{}{}", &base[..at], insert, &base[end.max(at)..]);
        let r = if yaml { parse_yaml(&mutated) } else { parse_text(&mutated) };
        if let Err(e) = &r {
            prop_assert!(!e.diagnostics.is_empty());
            let rendered = crate::diagnostics::render(e, "m", &mutated, false);
            prop_assert!(!rendered.is_empty());
        }
        if !yaml && let Ok(formatted) = format_source(&mutated) {
            // Formatting keeps meaning and every comment, and is idempotent.
            prop_assert_eq!(parse_text(&formatted), r);
            prop_assert_eq!(format_source(&formatted), Ok(formatted.clone()));
            for line in mutated.lines() {
                if let Some(i) = line.find('#') {
                    prop_assert!(formatted.contains(line[i..].trim_end()), "lost {:?}", &line[i..]);
                }
            }
        }
    }
}

#[test]
fn paper_spec_formats_with_comments_kept() {
    let out = format_source(PAPER).unwrap();
    for line in PAPER.lines() {
        if let Some(i) = line.find('#') {
            assert!(
                out.contains(line[i..].trim_end()),
                "lost comment {line:?}\n{out}"
            );
        }
    }
    assert_eq!(format_source(&out).unwrap(), out);
    assert_eq!(parse_text(&out).unwrap(), parse_text(PAPER).unwrap());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// The strategy only makes specs the validator accepts (the backends rely on it).
    #[test]
    fn strategy_specs_are_valid(spec in valid_spec()) {
        let text = format_spec(&spec);
        prop_assert!(parse_text(&text).is_ok(), "{}", text);
        prop_assert!(!spec.branches.is_empty());
        prop_assert_eq!(spec.combine.branches.len(), spec.branches.len());
        prop_assert_eq!(spec.beyond_blocks(), None);
    }

    /// The same for the selection forms beyond NSA's blocks, which also round-trip through
    /// both forms and format idempotently.
    #[test]
    fn selection_specs_are_valid_and_round_trip(spec in selection_spec()) {
        let text = format_spec(&spec);
        prop_assert_eq!(parse_text(&text), Ok(spec.clone()), "{}", text);
        let yaml = to_yaml(&spec);
        prop_assert_eq!(parse_yaml(&yaml), Ok(spec.clone()), "{}", yaml);
        let again = format_source(&text).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&again, &text);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Token soup: random sequences of the language's own tokens reach deeper into the grammar
    /// and the validator than random characters do.
    #[test]
    fn no_panic_on_token_soup(tokens in prop::collection::vec(
        "attention|compress|select|window|index|within|given|dim|heads|head_dim|block|stride|top|scored_by|keep_first|keep_last|size|pool|kv|combine|gate|sum|mean|own|true|[a-z]{1,3}|-?[0-9]{1,12}|0\\.5|=|/|,|\\{|\\}|\\(|\\)|\n| |#|:|- |\\[|\\]",
        0..60,
    )) {
        let s = tokens.concat();
        for r in [parse_text(&s), parse_yaml(&s)] {
            if let Err(e) = r {
                prop_assert!(!e.diagnostics.is_empty());
                let _ = crate::diagnostics::render(&e, "soup", &s, false);
            }
        }
        let _ = format_source(&s);
    }
}
