//! The diagnostics corpus: every spec under `tests/specs/broken/` has exactly one problem,
//! named on its first line as `# expect: LINE:COL — why`. Each must fail with exactly one
//! diagnostic whose caret is at that line and column, and its rendered report (color off) is
//! snapshot-tested, one snapshot per file.

use std::path::{Path, PathBuf};

use nsac_dsl::LoadError;
use nsac_dsl::diagnostics::{line_col, render};

fn broken_specs() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("specs/broken");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("the broken-spec corpus exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("nsa" | "yaml")))
        .collect();
    files.sort();
    files
}

/// `# expect: 5:28 — …` on the first line → (5, 28).
fn expected_position(text: &str) -> (usize, usize) {
    let first = text.lines().next().unwrap_or_default();
    let rest = first
        .strip_prefix("# expect: ")
        .unwrap_or_else(|| panic!("first line must be `# expect: L:C — why`, got {first:?}"));
    let pos = rest.split_whitespace().next().expect("a position");
    let (l, c) = pos.split_once(':').expect("LINE:COL");
    (l.parse().expect("line"), c.parse().expect("column"))
}

#[test]
fn corpus_is_large_and_mixed() {
    let files = broken_specs();
    assert!(files.len() >= 15, "only {} broken specs", files.len());
    let yaml = files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .count();
    assert!(yaml >= 5 && files.len() - yaml >= 10);
}

#[test]
fn every_broken_spec_gets_one_diagnostic_at_the_right_place() {
    let mut problems = Vec::new();
    for path in broken_specs() {
        let file_name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("utf-8 name");
        let err = match nsac_dsl::load(&path) {
            Ok(spec) => {
                problems.push(format!(
                    "{file_name} should be rejected, parsed as {spec:?}"
                ));
                continue;
            }
            Err(LoadError::Invalid { error, .. }) => error,
            Err(other) => panic!("{file_name}: {other}"),
        };
        let text = std::fs::read_to_string(&path).expect("readable");
        let name = format!("specs/broken/{file_name}");
        let rendered = render(&err, &name, &text, false);
        if err.diagnostics.len() != 1 {
            problems.push(format!(
                "{file_name}: expected exactly one diagnostic, got {}:\n{rendered}",
                err.diagnostics.len()
            ));
            continue;
        }
        let (line, col) = expected_position(&text);
        let at = line_col(&text, err.diagnostics[0].span.start);
        if at != (line, col) || !rendered.contains(&format!("{name}:{line}:{col}")) {
            problems.push(format!(
                "{file_name}: caret expected at {line}:{col}, found {}:{}:\n{rendered}",
                at.0, at.1
            ));
            continue;
        }
        let stem = file_name.replace('.', "_");
        insta::assert_snapshot!(format!("broken_{stem}"), rendered);
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
