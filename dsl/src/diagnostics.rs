//! Rendering of [`SpecError`]s as annotated source snippets (ariadne): `file:line:col`, the
//! offending line with a caret under the span, secondary labels and a help line.

use ariadne::{Config, IndexType, Label, Report, ReportKind, Source};

use crate::error::SpecError;

/// Renders every diagnostic of `error` against `source_text`, one report after another.
/// `color: false` gives plain text (for logs, files and snapshot tests).
pub fn render(error: &SpecError, source_name: &str, source_text: &str, color: bool) -> String {
    let mut out = Vec::new();
    let len = source_text.len();
    let boundary = |mut i: usize| {
        i = i.min(len);
        while !source_text.is_char_boundary(i) {
            i -= 1;
        }
        i
    };
    let clamp = |r: &std::ops::Range<usize>| {
        let start = boundary(r.start);
        start..boundary(r.end.max(start))
    };
    for d in &error.diagnostics {
        let span = clamp(&d.span);
        let mut report = Report::build(ReportKind::Error, (source_name, span.clone()))
            .with_config(
                Config::default()
                    .with_color(color)
                    .with_index_type(IndexType::Byte),
            )
            .with_code(d.code())
            .with_message(d.kind.to_string());
        // Labels in source order: ariadne starts a new snippet whenever a label lies above the
        // previous one, which would repeat the header and split one picture in two.
        let mut labels = vec![(span, primary_message(d))];
        labels.extend(d.labels.iter().map(|l| (clamp(&l.span), l.message.clone())));
        labels.sort_by_key(|(span, _)| span.start);
        for (span, message) in labels {
            report = report.with_label(Label::new((source_name, span)).with_message(message));
        }
        if let Some(h) = &d.help {
            report = report.with_help(h);
        }
        if report
            .finish()
            .write((source_name, Source::from(source_text)), &mut out)
            .is_err()
        {
            out.extend_from_slice(format!("error[{}]: {}\n", d.code(), d.kind).as_bytes());
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The 1-based line and column (in characters) of a byte offset.
pub fn line_col(source_text: &str, byte: usize) -> (usize, usize) {
    let byte = byte.min(source_text.len());
    let before = source_text.get(..byte).unwrap_or(source_text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

fn primary_message(d: &crate::error::Diagnostic) -> String {
    use crate::error::DiagnosticKind as K;
    match &d.kind {
        K::Syntax { .. } | K::Yaml { .. } => "here".to_string(),
        K::UnknownKey { .. } => "unknown key".to_string(),
        K::DuplicateKey { .. } => "given again here".to_string(),
        K::MissingField { field, .. } => format!("needs `{field}`"),
        K::UnknownBranchKind { .. } => "not a branch kind".to_string(),
        K::DuplicateBranch { .. } => "declared again here".to_string(),
        K::WrongType { expected, .. } => format!("expected {expected}"),
        K::NotPositive { .. } => "must be at least 1".to_string(),
        K::Negative { .. } => "must be 0 or more".to_string(),
        K::TooLarge { .. } => "too large".to_string(),
        K::BadScale { .. } => "not a positive number".to_string(),
        K::UnknownWord { .. } => "unknown".to_string(),
        K::HeadsNotDivisible { .. } => "query heads / kv heads".to_string(),
        K::StrideExceedsBlock { .. } | K::StrideNotDividing { .. } => "this size".to_string(),
        K::ScoredByMissing { .. } => "no such branch".to_string(),
        K::ScoredByNotCompress { .. } => "not a compress branch".to_string(),
        K::KeepExceedsTop { .. } => "too many forced blocks".to_string(),
        K::BadCombine { .. } => "not gate(…) or sum(…)".to_string(),
        K::CombineUnknown { .. } => "no such branch".to_string(),
        K::CombineTwice { .. } => "named again here".to_string(),
        K::BranchUnused { .. } => "declared but never combined".to_string(),
        K::NoBranches => "no branches".to_string(),
    }
}
