//! Regression tests of the spec front end against hostile input (issue 11, part A): line ends
//! of every kind, non-UTF-8 files, thousands of diagnostics, the library specs in canonical
//! form, E035 next to E025, and `NO_COLOR`.

use std::path::{Path, PathBuf};

use nsac_dsl::diagnostics::{LineIndex, color_allowed, line_col, line_starts, render};
use nsac_dsl::format::format_source;
use nsac_dsl::{LoadError, parse_text};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

fn library_specs() -> Vec<PathBuf> {
    let mut specs: Vec<PathBuf> = std::fs::read_dir(root().join("kernels"))
        .expect("kernels/ exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "nsa"))
        .collect();
    specs.sort();
    specs
}

fn codes(source: &str) -> Vec<&'static str> {
    match parse_text(source) {
        Ok(_) => Vec::new(),
        Err(e) => e.diagnostics.iter().map(|d| d.code()).collect(),
    }
}

#[test]
fn library_specs_are_in_canonical_form() {
    let specs = library_specs();
    assert!(specs.len() >= 4, "{specs:?}");
    for path in specs {
        let text = std::fs::read_to_string(&path).unwrap();
        let formatted = format_source(&text).unwrap();
        assert_eq!(formatted, text, "{} is not formatted", path.display());
    }
}

/// Every library spec with its line ends rewritten as `\r` alone or `\r\n` formats to the same
/// canonical `\n` text as the original, and that text is a fixed point of the formatter.
#[test]
fn every_kind_of_line_end_formats_the_same() {
    for path in library_specs() {
        let text = std::fs::read_to_string(&path).unwrap();
        let canonical = format_source(&text).unwrap();
        for (name, end) in [("CR", "\r"), ("CRLF", "\r\n")] {
            let variant = text.replace('\n', end);
            let formatted = format_source(&variant)
                .unwrap_or_else(|e| panic!("{} with {name}: {e}", path.display()));
            assert_eq!(formatted, canonical, "{} with {name}", path.display());
            assert!(!formatted.contains('\r'));
            assert_eq!(format_source(&formatted).unwrap(), formatted);
            assert_eq!(
                parse_text(&formatted).unwrap(),
                parse_text(&text).unwrap(),
                "{} with {name} means something else once formatted",
                path.display()
            );
        }
    }
}

#[test]
fn positions_count_every_kind_of_line_end() {
    let text = "a\rb\r\nc\nd";
    assert_eq!(line_starts(text), vec![0, 2, 5, 7]);
    let index = LineIndex::new(text);
    assert_eq!(index.line_col(0), (1, 1));
    assert_eq!(index.line_col(2), (2, 1));
    assert_eq!(index.line_col(3), (2, 2));
    assert_eq!(index.line_col(5), (3, 1));
    assert_eq!(index.line_col(8), (4, 2));
    assert_eq!(line_col(text, 100), (4, 2));
    // Columns count characters, not bytes.
    assert_eq!(line_col("é# x\ry", 3), (1, 3));
}

/// A diagnostic in a CR-only file points at its real line.
#[test]
fn diagnostics_in_a_cr_only_file_point_at_the_line() {
    let source = "attention x {\r  heads = 6/4\r  head_dim = 64\r  window w { size = 4 }\r  combine = sum(w)\r}\r";
    let error = parse_text(source).unwrap_err();
    let d = &error.diagnostics[0];
    assert_eq!(d.code(), "E030");
    assert_eq!(line_col(source, d.span.start), (2, 11));
    let report = render(&error, "cr.nsa", source, false);
    assert!(report.contains("cr.nsa:2:11"), "{report}");
}

fn many_unknown_keys(n: usize) -> String {
    let mut s = String::from("attention a {\n    heads = 4 / 1\n    head_dim = 16\n");
    for i in 0..n {
        s.push_str(&format!("    bogus{i} = 1\n"));
    }
    s.push_str("    window w { size = 4 }\n    combine = gate(w)\n}\n");
    s
}

fn many_unused_branches(n: usize) -> String {
    let mut s = String::from("attention a {\n    heads = 4 / 1\n    head_dim = 16\n");
    for i in 0..n {
        s.push_str(&format!("    window w{i} {{ size = 4 }}\n"));
    }
    s.push_str("    window w { size = 4 }\n    combine = gate(w)\n}\n");
    s
}

/// 20,000 problems: each reported once, at its own line, rendered with its own snippet (the
/// far-away `combine` label as a note). The time this takes is the ignored test below.
#[test]
fn thousands_of_diagnostics_are_each_reported_where_they_are() {
    let n = 20_000;
    for (source, code, first_col) in [
        (many_unknown_keys(n), "E010", 5),
        (many_unused_branches(n), "E043", 12),
    ] {
        let error = parse_text(&source).unwrap_err();
        assert_eq!(error.diagnostics.len(), n);
        let index = LineIndex::new(&source);
        for (i, d) in error.diagnostics.iter().enumerate() {
            assert_eq!(d.code(), code);
            assert_eq!(index.line_col(d.span.start), (i + 4, first_col));
        }
        let report = render(&error, "many.nsa", &source, false);
        assert_eq!(report.matches(&format!("[{code}]")).count(), n);
        assert!(report.contains(&format!("many.nsa:{}:{first_col}", n + 3)));
        if code == "E043" {
            assert!(
                report.contains(&format!("not named here: many.nsa:{}:15", n + 5)),
                "{}",
                &report[..2000]
            );
        }
    }
}

/// Run with `cargo test --release -p nsac-tests --test dsl_hardening -- --ignored`: before the
/// fix these took 24–79 s (quadratic in the number of diagnostics).
#[test]
#[ignore = "timing: run by hand"]
fn thousands_of_diagnostics_render_in_linear_time() {
    for source in [many_unknown_keys(20_000), many_unused_branches(20_000)] {
        let start = std::time::Instant::now();
        let error = parse_text(&source).unwrap_err();
        let report = render(&error, "many.nsa", &source, false);
        let index = LineIndex::new(&source);
        let last = error
            .diagnostics
            .last()
            .map(|d| index.line_col(d.span.start));
        let took = start.elapsed();
        eprintln!(
            "{} diagnostics, {} bytes of report, last at {last:?}: {took:?}",
            error.diagnostics.len(),
            report.len()
        );
        assert!(took.as_secs_f64() < 2.0, "{took:?}");
    }
}

#[test]
fn keep_exceeding_top_is_reported_next_to_a_bad_word() {
    let source = "attention x {\n  heads = 4/1\n  head_dim = 16\n  compress c { block = 8 }\n  select s { block = 8, top = 1, scored_by = c, keep_first = 1, keep_last = 2, kv = bogus }\n  combine = gate(c, s)\n}\n";
    assert_eq!(codes(source), vec!["E025", "E035"]);
    // Each alone, as before.
    assert_eq!(
        codes(&source.replace("kv = bogus", "kv = own")),
        vec!["E035"]
    );
    assert_eq!(codes(&source.replace("top = 1", "top = 3")), vec!["E025"]);
    // A bad `pool` on the scoring branch keeps the stride check of the select branch.
    let stride = "attention x {\n  heads = 4/1\n  head_dim = 16\n  compress c { block = 8, stride = 8, kv = nope }\n  select s { block = 12, top = 1, scored_by = c }\n  combine = gate(c, s)\n}\n";
    assert_eq!(codes(stride), vec!["E025", "E032"]);
}

#[test]
fn a_latin1_byte_is_a_diagnostic_at_its_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("latin1.nsa");
    let text = std::fs::read(root().join("kernels/sliding-window.nsa")).unwrap();
    let mut bytes = b"# caf\xe9 au lait\n".to_vec();
    bytes.extend_from_slice(&text);
    std::fs::write(&path, &bytes).unwrap();
    let err = nsac_dsl::load(&path).unwrap_err();
    let LoadError::Invalid { file, error } = &err else {
        panic!("expected a diagnostic, got {err}");
    };
    assert_eq!(error.diagnostics.len(), 1);
    let d = &error.diagnostics[0];
    assert_eq!(d.code(), "E003");
    assert_eq!(line_col(&file.text, d.span.start), (1, 6));
    let report = err.render(false);
    assert!(report.contains("latin1.nsa:1:6"), "{report}");
    assert!(report.contains("0xE9"), "{report}");
}

#[test]
fn no_color_turns_colour_off() {
    use std::ffi::OsStr;
    assert!(color_allowed(true, None));
    assert!(color_allowed(true, Some(OsStr::new(""))));
    assert!(!color_allowed(true, Some(OsStr::new("1"))));
    assert!(!color_allowed(true, Some(OsStr::new("no"))));
    assert!(!color_allowed(false, None));
}

#[test]
fn special_files_are_refused_as_specs() {
    let err = nsac_dsl::load(Path::new("/dev/null/x.nsa")).unwrap_err();
    assert!(matches!(err, LoadError::Io { .. }), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("zero.nsa");
    std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
    let err = nsac_dsl::load(&link).unwrap_err();
    assert!(err.to_string().contains("character device"), "{err}");
}

/// The inputs the `spec_text` fuzz target found (a lone CR after a comment: the comment used to
/// swallow the next field and `fmt` printed it twice): `fmt` keeps the spec and is idempotent.
#[test]
fn lone_cr_after_a_comment_survives_fmt() {
    let dir = root().join("fuzz/regressions/spec_text");
    for name in ["lone-cr-minimal.nsa", "lone-cr-after-comment.nsa"] {
        let source = std::fs::read_to_string(dir.join(name)).expect("regression input");
        let spec = parse_text(&source).expect("the input is a valid spec");
        let once = format_source(&source).expect("formats");
        assert_eq!(
            parse_text(&once).expect("formatted text parses"),
            spec,
            "{name}"
        );
        assert_eq!(
            format_source(&once).expect("formats"),
            once,
            "{name}: idempotent"
        );
    }
}
