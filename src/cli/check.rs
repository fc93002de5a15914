//! `nsac check`: validate spec files and summarize each one.

use std::io::IsTerminal;

use nsac_dsl::Spec;
use nsac_dsl::format::{combine_name, pool_name};
use nsac_dsl::spec::{BranchKind, KvSource};
use serde::Serialize;

use super::args::CheckArgs;
use super::error::CliError;
use super::output::{emit_json, emit_line};

/// One file's result, as printed by `--json`.
#[derive(Debug, Serialize)]
struct CheckResult {
    file: String,
    ok: bool,
    /// The spec's name (valid files).
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    summary: Option<String>,
    /// Each problem: its code, message and 1-based line and column (invalid files).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    problems: Vec<Problem>,
}

#[derive(Debug, Serialize)]
struct Problem {
    code: String,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    column: Option<usize>,
}

pub fn run(args: &CheckArgs) -> Result<(), CliError> {
    let color = nsac_dsl::diagnostics::use_color(std::io::stderr().is_terminal());
    let mut results = Vec::new();
    for path in &args.specs {
        let file = path.display().to_string();
        match nsac_dsl::load(path) {
            Ok(spec) => {
                let summary = summarize(&spec);
                if !args.json {
                    emit_line(&format!("{file}: ok — {summary}")).map_err(CliError::Stdout)?;
                }
                results.push(CheckResult {
                    file,
                    ok: true,
                    name: Some(spec.name.clone()),
                    summary: Some(summary),
                    problems: vec![],
                });
            }
            Err(error) => {
                if !args.json {
                    eprint!("{}", error.render(color));
                }
                results.push(CheckResult {
                    file,
                    ok: false,
                    name: None,
                    summary: None,
                    problems: problems(&error),
                });
            }
        }
    }
    if args.json {
        emit_json(&results).map_err(CliError::Stdout)?;
    }
    let failed = results.iter().filter(|r| !r.ok).count();
    if failed > 0 {
        return Err(CliError::Reported(format!(
            "{failed} of {} spec(s) invalid",
            results.len()
        )));
    }
    Ok(())
}

fn problems(error: &nsac_dsl::LoadError) -> Vec<Problem> {
    match error {
        nsac_dsl::LoadError::Invalid { file, error } => {
            let index = nsac_dsl::diagnostics::LineIndex::new(&file.text);
            error
                .diagnostics
                .iter()
                .map(|d| {
                    let (line, column) = index.line_col(d.span.start);
                    Problem {
                        code: d.code().to_string(),
                        message: d.kind.to_string(),
                        line: Some(line),
                        column: Some(column),
                    }
                })
                .collect()
        }
        other => vec![Problem {
            code: "io".into(),
            message: other.to_string(),
            line: None,
            column: None,
        }],
    }
}

/// `nsa_paper: heads 64/4 (G=16), head_dim 192/128, causal; compress cmp(l=32,d=16,mean) → …`
pub fn summarize(spec: &Spec) -> String {
    let branches: Vec<String> = spec
        .branches
        .iter()
        .map(|b| {
            let own = if b.kv == KvSource::Own {
                ", own kv"
            } else {
                ""
            };
            match &b.kind {
                BranchKind::Compress(c) => format!(
                    "compress {}(block {}, stride {}, {}{own})",
                    b.name,
                    c.block,
                    c.stride,
                    pool_name(c.pool)
                ),
                BranchKind::Select(s) => {
                    let within = s
                        .within
                        .as_ref()
                        .map_or(String::new(), |w| format!(" within {w}"));
                    match s.scorer() {
                        Some(by) => format!(
                            "select {}(top {} of blocks of {} by {}, keep {}+{}{within}{own})",
                            b.name, s.top, s.block, by, s.keep_first, s.keep_last
                        ),
                        None => format!(
                            "select {}(top {} of blocks of {} given{within}{own})",
                            b.name, s.top, s.block
                        ),
                    }
                }
                BranchKind::Window(w) => format!("window {}(size {}{own})", b.name, w.size),
                BranchKind::Index(i) => {
                    format!("index {}(heads {}, dim {})", b.name, i.heads, i.dim)
                }
            }
        })
        .collect();
    let mode = combine_name(spec.combine.mode);
    format!(
        "{}: heads {}/{} (G={}), head_dim {}/{}, {}; {}; combine {mode}({})",
        spec.name,
        spec.heads.q,
        spec.heads.kv,
        spec.heads.group(),
        spec.head_dim.qk,
        spec.head_dim.v,
        if spec.causal { "causal" } else { "non-causal" },
        branches.join(", "),
        spec.combine.branches.join(", ")
    )
}
