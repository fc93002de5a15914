//! Rendering of [`SpecError`]s as annotated source snippets (ariadne): `file:line:col`, the
//! offending line with a caret under the span, secondary labels and a help line.
//!
//! Line ends are `\n`, `\r\n` and a lone `\r`, here as in the grammar and the formatter. The
//! source is indexed once per file ([`LineIndex`], one ariadne `Source`), so reporting many
//! diagnostics costs time linear in their number, not number × file size.

use ariadne::{Config, IndexType, Label, Report, ReportKind, Source};

use crate::error::SpecError;

/// How many lines a secondary label may lie from the caret and still be drawn in the snippet.
const NEAR_LINES: usize = 12;

/// Renders every diagnostic of `error` against `source_text`, one report after another.
/// `color: false` gives plain text (for logs, files and snapshot tests).
pub fn render(error: &SpecError, source_name: &str, source_text: &str, color: bool) -> String {
    let mut out = Vec::new();
    let source = Source::from(source_text);
    let index = LineIndex::new(source_text);
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
        // A secondary label far from the caret is told as a note with its line:col instead:
        // ariadne draws every line between a report's labels, which would make each report
        // cost the distance (and thousands of reports quadratic time).
        let primary_line = index.line_of(span.start);
        let far = |r: &std::ops::Range<usize>| {
            index.line_of(r.start).abs_diff(primary_line) > NEAR_LINES
                || index.line_of(r.end).abs_diff(primary_line) > NEAR_LINES
        };
        let mut labels = vec![(span, primary_message(d))];
        let mut notes = Vec::new();
        for l in &d.labels {
            let r = clamp(&l.span);
            if far(&r) {
                let (line, col) = index.line_col(r.start);
                notes.push(format!("{}: {source_name}:{line}:{col}", l.message));
            } else {
                labels.push((r, l.message.clone()));
            }
        }
        labels.sort_by_key(|(span, _)| span.start);
        for (span, message) in labels {
            report = report.with_label(Label::new((source_name, span)).with_message(message));
        }
        for n in notes {
            report = report.with_note(n);
        }
        if let Some(h) = &d.help {
            report = report.with_help(h);
        }
        if report
            .finish()
            .write((source_name, &source), &mut out)
            .is_err()
        {
            out.extend_from_slice(format!("error[{}]: {}\n", d.code(), d.kind).as_bytes());
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether colour should be used on a stream that `is_terminal`: never when `NO_COLOR` is set
/// to a non-empty value (<https://no-color.org>).
pub fn use_color(is_terminal: bool) -> bool {
    color_allowed(is_terminal, std::env::var_os("NO_COLOR").as_deref())
}

/// [`use_color`] with the value of `NO_COLOR` given: colour only on a terminal, and only when
/// `NO_COLOR` is unset or empty.
pub fn color_allowed(is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// The byte offsets where each line of a text starts; a line ends at `\n`, `\r\n` or a lone
/// `\r`.
pub fn line_starts(text: &str) -> Vec<usize> {
    let bytes = text.as_bytes();
    let mut starts = vec![0];
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\n' => starts.push(i + 1),
            b'\r' if bytes.get(i + 1) == Some(&b'\n') => {
                starts.push(i + 2);
                i += 1;
            }
            b'\r' => starts.push(i + 1),
            _ => {}
        }
        i += 1;
    }
    starts
}

/// Line and column look-ups in one text, each a binary search.
#[derive(Debug, Clone)]
pub struct LineIndex<'a> {
    text: &'a str,
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    pub fn new(text: &'a str) -> Self {
        LineIndex {
            text,
            starts: line_starts(text),
        }
    }

    /// The 0-based line of a byte offset.
    pub fn line_of(&self, byte: usize) -> usize {
        self.starts
            .partition_point(|&s| s <= byte)
            .saturating_sub(1)
    }

    /// The 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, byte: usize) -> (usize, usize) {
        let mut byte = byte.min(self.text.len());
        while !self.text.is_char_boundary(byte) {
            byte -= 1;
        }
        let line = self.line_of(byte);
        let start = self.starts[line].min(byte);
        let col = self.text[start..byte].chars().count() + 1;
        (line + 1, col)
    }
}

/// The 1-based line and column (in characters) of a byte offset. For many look-ups in one
/// text, build a [`LineIndex`] once.
pub fn line_col(source_text: &str, byte: usize) -> (usize, usize) {
    LineIndex::new(source_text).line_col(byte)
}

fn primary_message(d: &crate::error::Diagnostic) -> String {
    use crate::error::DiagnosticKind as K;
    match &d.kind {
        K::Syntax { .. } | K::Yaml { .. } => "here".to_string(),
        K::NotUtf8 { .. } => "this byte".to_string(),
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
        K::ScoredByNotCompress { .. } => "not a compress or index branch".to_string(),
        K::KeepExceedsTop { .. } => "too many forced blocks".to_string(),
        K::BadCombine { .. } => "not gate(…) or sum(…)".to_string(),
        K::CombineUnknown { .. } => "no such branch".to_string(),
        K::CombineTwice { .. } => "named again here".to_string(),
        K::BranchUnused { .. } => "declared but never combined".to_string(),
        K::NoBranches => "no branches".to_string(),
        K::IndexInCombine { .. } => "an index branch".to_string(),
        K::IndexUnused { .. } => "never scores a select branch".to_string(),
        K::IndexNeedsTokens { .. } => "not 1".to_string(),
        K::WithinMissing { .. } => "no such branch".to_string(),
        K::WithinNotSelect { .. } => "not a select branch".to_string(),
        K::WithinCycle { .. } => "leads back here".to_string(),
        K::WithinNotDividing { .. } => "this size".to_string(),
        K::TopExceedsCandidates { .. } => "more than there are candidates".to_string(),
        K::GivenConflict { .. } => "has no meaning with `given = true`".to_string(),
    }
}
