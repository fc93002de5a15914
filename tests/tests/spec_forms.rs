//! The spec library: every file in `kernels/` parses and validates, the text and YAML forms of
//! the paper's configuration are the same `Spec`, and the library's numbers are the documented
//! ones.

use std::path::{Path, PathBuf};

use nsac_dsl::spec::{BranchKind, CombineMode, Compress, HeadDim, Heads, Pool, Select, Window};

fn kernels_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../kernels")
}

fn library_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(kernels_dir())
        .expect("kernels/ exists")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("nsa" | "yaml" | "yml")
            )
        })
        .collect();
    files.sort();
    files
}

#[test]
fn every_library_file_parses_validates_and_says_where_it_comes_from() {
    let files = library_files();
    for expected in [
        "nsa-paper.nsa",
        "nsa-paper.yaml",
        "nsa-fla.nsa",
        "sliding-window.nsa",
        "compress-only.nsa",
    ] {
        assert!(
            files.iter().any(|p| p.ends_with(expected)),
            "kernels/{expected} is missing"
        );
    }
    for path in &files {
        let spec = nsac_dsl::load(path).unwrap_or_else(|e| panic!("{}", e.render(false)));
        let text = std::fs::read_to_string(path).expect("readable");
        assert!(
            text.starts_with('#'),
            "{} must open with a comment",
            path.display()
        );
        // The canonical text re-reads to the same spec, and formatting keeps every comment.
        assert_eq!(
            nsac_dsl::parse_text(&nsac_dsl::format::format_spec(&spec)),
            Ok(spec.clone())
        );
        if path.extension().is_some_and(|e| e == "nsa") {
            let formatted = nsac_dsl::format::format_source(&text).expect("formats");
            for line in text.lines() {
                if let Some(i) = line.find('#') {
                    assert!(
                        formatted.contains(line[i..].trim_end()),
                        "lost comment {line:?}"
                    );
                }
            }
        }
    }
}

#[test]
fn text_and_yaml_twins_are_the_same_spec() {
    let text = nsac_dsl::load(&kernels_dir().join("nsa-paper.nsa")).expect("text form");
    let yaml = nsac_dsl::load(&kernels_dir().join("nsa-paper.yaml")).expect("yaml form");
    assert_eq!(text, yaml);
    assert_eq!(
        nsac_dsl::canonical_hash(&text),
        nsac_dsl::canonical_hash(&yaml)
    );
    assert_eq!(nsac_dsl::parse_yaml(&nsac_dsl::to_yaml(&text)), Ok(text));
}

#[test]
fn yaml_accepts_the_mapping_spellings() {
    let short = nsac_dsl::load(&kernels_dir().join("nsa-paper.yaml")).expect("yaml form");
    let long = std::fs::read_to_string(kernels_dir().join("nsa-paper.yaml"))
        .expect("readable")
        .replace("heads: 64/4", "heads: {q: 64, kv: 4}")
        .replace("head_dim: 192/128", "head_dim: {qk: 192, v: 128}")
        .replace(
            "combine: gate(cmp, slc, win)",
            "combine: {gate: [cmp, slc, win]}",
        );
    assert_eq!(nsac_dsl::parse_yaml(&long), Ok(short));
}

#[test]
fn paper_spec_has_the_paper_numbers() {
    let s = nsac_dsl::load(&kernels_dir().join("nsa-paper.nsa")).expect("parses");
    assert_eq!(s.heads, Heads { q: 64, kv: 4 });
    assert_eq!(s.head_dim, HeadDim { qk: 192, v: 128 });
    assert!(s.causal && s.scale.is_none());
    let kinds: Vec<&BranchKind> = s.branches.iter().map(|b| &b.kind).collect();
    assert_eq!(
        kinds,
        [
            &BranchKind::Compress(Compress {
                block: 32,
                stride: 16,
                pool: Pool::Mean
            }),
            &BranchKind::Select(Select {
                block: 64,
                top: 16,
                scored_by: nsac_dsl::spec::Scorer::Branch("cmp".into()),
                keep_first: 1,
                keep_last: 2,
                within: None,
            }),
            &BranchKind::Window(Window { size: 512 }),
        ]
    );
    assert_eq!(s.combine.mode, CombineMode::Gate);
    assert_eq!(s.combine.branches, ["cmp", "slc", "win"]);
}

#[test]
fn fla_spec_has_the_fla_numbers() {
    let s = nsac_dsl::load(&kernels_dir().join("nsa-fla.nsa")).expect("parses");
    assert_eq!(s.heads, Heads { q: 64, kv: 4 });
    assert_eq!(s.head_dim, HeadDim { qk: 128, v: 128 });
    assert_eq!(s.branches.len(), 2, "no window branch");
    assert_eq!(
        s.branch("cmp").and_then(|b| b.as_compress()),
        Some(&Compress {
            block: 64,
            stride: 64,
            pool: Pool::Mean
        })
    );
    let slc = s.branch("slc").and_then(|b| b.as_select()).expect("select");
    assert_eq!(
        (slc.block, slc.top, slc.keep_first, slc.keep_last),
        (64, 16, 1, 2)
    );
    assert_eq!(s.combine.mode, CombineMode::Gate);
}
