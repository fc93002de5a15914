//! Validation and formatting behaviour of the language, case by case: defaults, liberal
//! separators, every problem reported at once, comment-preserving formatting, the stable hash.

use nsac_dsl::diagnostics::line_col;
use nsac_dsl::format::{format_source, format_spec};
use nsac_dsl::spec::{
    BranchKind, CombineMode, Compress, HeadDim, Heads, KvSource, Pool, Scorer, Select,
};
use nsac_dsl::{DiagnosticKind, canonical_hash, parse_text, parse_yaml, to_yaml};

const PAPER: &str = include_str!("../../kernels/nsa-paper.nsa");

fn kinds(src: &str) -> Vec<DiagnosticKind> {
    match parse_text(src) {
        Ok(s) => panic!("expected errors, got {s:?}"),
        Err(e) => e.diagnostics.into_iter().map(|d| d.kind).collect(),
    }
}

#[test]
fn defaults_fill_in_what_is_not_written() {
    let s = parse_text(
        "attention d {\n heads = 16\n head_dim = 128\n compress c { block = 8 }\n \
         select s { block = 16, top = 3, scored_by = c, kv = own }\n combine = sum(c, s)\n}\n",
    )
    .unwrap();
    assert_eq!(s.heads, Heads { q: 16, kv: 16 });
    assert_eq!(s.head_dim, HeadDim { qk: 128, v: 128 });
    assert!(s.causal);
    assert_eq!(s.scale, None);
    assert_eq!(
        s.branches[0].kind,
        BranchKind::Compress(Compress {
            block: 8,
            stride: 8,
            pool: Pool::Mean
        })
    );
    assert_eq!(s.branches[0].kv, KvSource::Shared);
    assert_eq!(
        s.branches[1].kind,
        BranchKind::Select(Select {
            block: 16,
            top: 3,
            scored_by: Scorer::Branch("c".into()),
            keep_first: 0,
            keep_last: 0,
            within: None,
        })
    );
    assert_eq!(s.branches[1].kv, KvSource::Own);
    assert_eq!(s.combine.mode, CombineMode::Sum);
    assert!((s.scale_for(128) - 1.0 / 128f64.sqrt()).abs() < 1e-15);
}

#[test]
fn separators_are_liberal() {
    let one_line = "attention a { heads = 4 / 2, head_dim = 8, causal = false, scale = 0.25, \
                    window w { size = 3, }, combine = gate(w,), }";
    let spread = "\n\n# lead\nattention a {\n\n  heads = 4/2\n  head_dim = 8,\n  causal = false\n  scale = 0.25\n  window w {\n    size = 3\n  }\n  combine = gate(\n    w\n  )\n}\n\n";
    let a = parse_text(one_line).unwrap();
    assert_eq!(parse_text(spread).unwrap(), a);
    assert!(!a.causal);
    assert_eq!(a.scale.map(|s| s.get()), Some(0.25));
}

#[test]
fn every_problem_is_reported_at_once() {
    let k = kinds(
        "attention many {\n heads = 6 / 4\n hed_dim = 8\n compress c { block = 0, stride = 3 }\n \
         window w { size = -2 }\n window w { size = 3 }\n combine = gate(c, x, c)\n}\n",
    );
    assert!(
        k.contains(&DiagnosticKind::HeadsNotDivisible { q: 6, kv: 4 }),
        "{k:#?}"
    );
    assert!(
        k.iter()
            .any(|d| matches!(d, DiagnosticKind::UnknownKey { key, .. } if key == "hed_dim"))
    );
    assert!(
        k.iter().any(
            |d| matches!(d, DiagnosticKind::MissingField { field, .. } if field == "head_dim")
        )
    );
    assert!(k.iter().any(|d| matches!(d, DiagnosticKind::NotPositive { key, value } if key == "block" && value == "0")));
    assert!(k.iter().any(|d| matches!(d, DiagnosticKind::NotPositive { key, value } if key == "size" && value == "-2")));
    assert!(
        k.iter()
            .any(|d| matches!(d, DiagnosticKind::DuplicateBranch { name } if name == "w"))
    );
    assert!(
        k.iter()
            .any(|d| matches!(d, DiagnosticKind::CombineUnknown { name } if name == "x"))
    );
    assert!(
        k.iter()
            .any(|d| matches!(d, DiagnosticKind::CombineTwice { name } if name == "c"))
    );
    assert!(
        k.iter()
            .any(|d| matches!(d, DiagnosticKind::BranchUnused { name } if name == "w"))
    );
    assert_eq!(k.len(), 9, "one diagnostic per problem: {k:#?}");
}

#[test]
fn value_problems_point_at_the_value() {
    let src = "attention v {\n heads = 4\n head_dim = 99999999999\n scale = 0\n causal = yes\n \
               compress c { block = 4, pool = 3 }\n combine = max(c)\n}\n";
    let e = parse_text(src).unwrap_err();
    let at = |needle: &str| src.find(needle).unwrap();
    let starts: Vec<usize> = e.diagnostics.iter().map(|d| d.span.start).collect();
    for needle in ["99999999999", "0\n", "yes", "3 }", "max"] {
        assert!(
            starts.contains(&at(needle)),
            "no caret on {needle:?}: {:#?}",
            e.diagnostics
        );
    }
    assert_eq!(e.diagnostics.len(), 5);
}

#[test]
fn syntax_errors_carry_the_position() {
    let src = "attention s {\n heads = 4\n head_dim = 8 8\n}\n";
    let e = parse_text(src).unwrap_err();
    assert_eq!(e.diagnostics.len(), 1);
    assert!(matches!(
        e.diagnostics[0].kind,
        DiagnosticKind::Syntax { .. }
    ));
    assert_eq!(line_col(src, e.diagnostics[0].span.start), (3, 15));
}

#[test]
fn yaml_diagnostics_point_into_the_yaml() {
    let src = "attention: y\nheads: 4\nhead_dim: 8\nbranches:\n  - {window: w, size: 3, sise: 4}\ncombine: sum(w)\nextra: 1\n";
    let e = parse_yaml(src).unwrap_err();
    let pos: Vec<(usize, usize)> = e
        .diagnostics
        .iter()
        .map(|d| line_col(src, d.span.start))
        .collect();
    assert_eq!(pos, [(7, 1), (5, 26)], "{:#?}", e.diagnostics);
}

#[test]
fn yaml_twin_round_trips_and_quotes_yaml_words() {
    let mut s = parse_text(PAPER).unwrap();
    assert_eq!(parse_yaml(&to_yaml(&s)), Ok(s.clone()));
    s.name = "null".into();
    s.branches[2].name = "yes".into();
    s.combine.branches[2] = "yes".into();
    assert_eq!(parse_yaml(&to_yaml(&s)), Ok(s));
}

#[test]
fn format_source_keeps_comments_inside_branches() {
    let src = "# head\nattention f { # on header\n  combine = sum(c) # why sum\n  compress c {  # open\n    # about block\n    block = 8 # eight\n    # tail\n  }\n  heads = 2 # two\n  head_dim = 4\n  # end of body\n} # closing\n# footer\n";
    let out = format_source(src).unwrap();
    for c in [
        "# head",
        "# on header",
        "# why sum",
        "# open",
        "# about block",
        "# eight",
        "# tail",
        "# two",
        "# end of body",
        "# closing",
        "# footer",
    ] {
        assert!(out.contains(c), "lost {c}:\n{out}");
    }
    // Canonical order: heads before the branch, combine last; comments travel with their item.
    assert!(
        out.find("# two").unwrap() < out.find("compress").unwrap(),
        "{out}"
    );
    assert!(
        out.find("# about block").unwrap() < out.find("block  = 8").unwrap(),
        "{out}"
    );
    assert!(
        out.find("# why sum").unwrap() > out.find("# tail").unwrap(),
        "{out}"
    );
    assert_eq!(format_source(&out).unwrap(), out);
    assert_eq!(parse_text(&out), parse_text(src));
}

#[test]
fn canonical_text_and_hash_are_stable() {
    let s = parse_text(PAPER).unwrap();
    let text = format_spec(&s);
    assert!(text.contains("    select   slc { block = 64, top = 16, scored_by = cmp, keep_first = 1, keep_last = 2, kv = shared }\n"));
    // Pinned: the tuner's database is keyed on this; changing it invalidates tuning results.
    assert_eq!(
        canonical_hash(&s),
        0x7083_ca9b_b3e9_4fe2,
        "{:#018x}",
        canonical_hash(&s)
    );
    let mut other = s.clone();
    other.causal = false;
    assert_ne!(canonical_hash(&other), canonical_hash(&s));
}

#[test]
fn load_reports_io_and_extension_problems() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let missing = nsac_dsl::load(&dir.join("absent.nsa")).unwrap_err();
    assert!(
        matches!(missing, nsac_dsl::LoadError::Io { .. }),
        "{missing}"
    );
    let txt = dir.join("spec.txt");
    std::fs::write(&txt, PAPER).unwrap();
    assert!(matches!(
        nsac_dsl::load(&txt).unwrap_err(),
        nsac_dsl::LoadError::UnknownExtension { .. }
    ));
    let bad = dir.join("bad.nsa");
    std::fs::write(&bad, PAPER.replace("block = 32", "block = 0")).unwrap();
    let err = nsac_dsl::load(&bad).unwrap_err();
    let rendered = err.render(false);
    assert!(rendered.contains("bad.nsa:10:28"), "{rendered}");
    let good = dir.join("good.yml");
    std::fs::write(&good, include_str!("../../kernels/nsa-paper.yaml")).unwrap();
    assert_eq!(nsac_dsl::load(&good).unwrap(), parse_text(PAPER).unwrap());
}
