//! The formatter: canonical text of a [`Spec`] and comment-preserving formatting of a source.
//!
//! [`format_spec`] prints every field explicitly (defaults included), in a fixed order with
//! aligned `=` signs; it is what [`canonical_hash`](crate::canonical_hash) hashes.
//! [`format_source`] prints the same canonical layout for a `.nsa` file but keeps every comment:
//! a comment on its own line(s) stays attached to the item (or field) it precedes, a comment
//! after code stays at the end of that item's line. A branch whose braces hold comments is
//! printed one field per line so those comments keep their place.

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::ast::{Document, Item};
use crate::error::SpecError;
use crate::spec::{Branch, BranchKind, CombineMode, KvSource, Pool, Scorer, Spec};

const INDENT: &str = "    ";

/// The canonical text of a spec: every field explicit, fixed order and alignment.
pub fn format_spec(spec: &Spec) -> String {
    render(spec, &Attached::default())
}

/// Formats `.nsa` source text into the canonical layout, preserving its comments.
///
/// Fails (with the same diagnostics as [`parse_text`](crate::parse_text)) on an invalid spec:
/// only valid specs are rewritten. Line ends may be `\n`, `\r\n` or a lone `\r` (as the
/// grammar allows); the output uses `\n`.
pub fn format_source(source: &str) -> Result<String, SpecError> {
    // A lone `\r` becomes `\n`: the same length, so every span stays valid, and the line
    // splitting below (`str::lines`, which knows `\n` and `\r\n`) sees every line end.
    let source = &lone_cr_to_lf(source);
    let doc = crate::parser::parse_document(source)?;
    let spec = crate::validate::validate(&doc)?;
    let attached = attach_comments(source, &doc);
    Ok(render(&spec, &attached))
}

/// `source` with each `\r` that does not start a `\r\n` replaced by `\n` (byte offsets kept).
fn lone_cr_to_lf(source: &str) -> std::borrow::Cow<'_, str> {
    if !source.contains('\r') {
        return std::borrow::Cow::Borrowed(source);
    }
    let bytes = source.as_bytes();
    let mut out = String::with_capacity(source.len());
    for (i, c) in source.char_indices() {
        if c == '\r' && bytes.get(i + 1) != Some(&b'\n') {
            out.push('\n');
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// The canonical way to write a number with a fractional part (always re-read as a float).
pub fn format_float(x: f64) -> String {
    format!("{x:?}")
}

/// The text-form keyword of a pool.
pub fn pool_name(p: Pool) -> &'static str {
    match p {
        Pool::Mean => "mean",
        Pool::Weighted => "weighted",
        Pool::Linear => "linear",
    }
}

/// The text-form keyword of a kv source.
pub fn kv_name(k: KvSource) -> &'static str {
    match k {
        KvSource::Shared => "shared",
        KvSource::Own => "own",
    }
}

/// The text-form keyword of a combine mode.
pub fn combine_name(m: CombineMode) -> &'static str {
    match m {
        CombineMode::Gate => "gate",
        CombineMode::Sum => "sum",
    }
}

/// Comments to print before an item and at the end of its line.
#[derive(Debug, Default, Clone)]
struct Notes {
    leading: Vec<String>,
    trailing: Option<String>,
}

/// Every comment of a source, keyed by what it belongs to.
#[derive(Debug, Default)]
struct Attached {
    /// Before `attention` / on its line.
    header: Notes,
    /// Top-level items by key (`heads`, …) or branch name.
    items: HashMap<String, Notes>,
    /// Comment after a branch's opening `{`.
    branch_open: HashMap<String, String>,
    /// Fields by (branch name, field key).
    fields: HashMap<(String, String), Notes>,
    /// Whole-line comments after the last field of a branch.
    branch_tail: HashMap<String, Vec<String>>,
    /// Whole-line comments after the last item of the body.
    body_tail: Vec<String>,
    /// On the closing `}` line.
    closing: Option<String>,
    /// After the closing `}`.
    footer: Vec<String>,
}

impl Attached {
    fn multiline(&self, branch: &str) -> bool {
        self.branch_open.contains_key(branch)
            || self.branch_tail.contains_key(branch)
            || self.fields.keys().any(|(b, _)| b == branch)
    }
}

/// One comment: its line, text (from `#`, right-trimmed) and whether code precedes it.
struct Comment {
    line: usize,
    text: String,
    trailing: bool,
}

fn comments(source: &str) -> Vec<Comment> {
    let mut out = Vec::new();
    for (line, text) in source.lines().enumerate() {
        if let Some(i) = text.find('#') {
            out.push(Comment {
                line,
                text: text[i..].trim_end().to_string(),
                trailing: !text[..i].trim().is_empty(),
            });
        }
    }
    out
}

/// Where a slot of the document sits, in lines.
struct Anchor {
    start: usize,
    end: usize,
    /// Item key, or branch name.
    key: String,
    /// For a field: its branch; for a branch: `None`.
    branch: Option<String>,
    is_branch: bool,
}

fn attach_comments(source: &str, doc: &Document) -> Attached {
    let line_starts: Vec<usize> = std::iter::once(0)
        .chain(source.match_indices('\n').map(|(i, _)| i + 1))
        .collect();
    let line_of = |byte: usize| {
        line_starts
            .partition_point(|&s| s <= byte)
            .saturating_sub(1)
    };
    let last_line =
        |span: &std::ops::Range<usize>| line_of(span.end.saturating_sub(1).max(span.start));

    let mut items = Vec::new();
    let mut fields = Vec::new();
    for item in &doc.items {
        match item {
            Item::Setting(s) => items.push(Anchor {
                start: line_of(s.span.start),
                end: last_line(&s.span),
                key: s.key.name.clone(),
                branch: None,
                is_branch: false,
            }),
            Item::Branch(b) => {
                items.push(Anchor {
                    start: line_of(b.span.start),
                    end: last_line(&b.span),
                    key: b.name.name.clone(),
                    branch: None,
                    is_branch: true,
                });
                for f in &b.fields {
                    fields.push(Anchor {
                        start: line_of(f.span.start),
                        end: last_line(&f.span),
                        key: f.key.name.clone(),
                        branch: Some(b.name.name.clone()),
                        is_branch: false,
                    });
                }
            }
        }
    }
    let header_line = line_of(doc.header.start);
    let open_line = line_of(doc.name.span.end);
    let close_line = line_of(doc.close.start);

    let mut a = Attached::default();
    for c in comments(source) {
        let l = c.line;
        if c.trailing {
            if let Some(it) = items.iter().rev().find(|it| it.end == l) {
                a.items.entry(it.key.clone()).or_default().trailing = Some(c.text);
            } else if let Some(f) = fields.iter().rev().find(|f| f.end == l) {
                let b = f.branch.clone().unwrap_or_default();
                a.fields.entry((b, f.key.clone())).or_default().trailing = Some(c.text);
            } else if let Some(b) = items.iter().find(|it| it.is_branch && it.start == l) {
                a.branch_open.insert(b.key.clone(), c.text);
            } else if l == close_line {
                a.closing = Some(c.text);
            } else if l <= open_line || l == header_line {
                a.header.trailing = Some(c.text);
            } else {
                place_line_comment(&mut a, &items, &fields, l, c.text);
            }
        } else if l < header_line {
            a.header.leading.push(c.text);
        } else if l > close_line {
            a.footer.push(c.text);
        } else {
            place_line_comment(&mut a, &items, &fields, l, c.text);
        }
    }
    a
}

/// A whole-line comment inside the body: it belongs to the next field (inside a branch's
/// braces) or the next item; at the end of a block it stays at that block's end.
fn place_line_comment(
    a: &mut Attached,
    items: &[Anchor],
    fields: &[Anchor],
    l: usize,
    text: String,
) {
    if let Some(b) = items
        .iter()
        .find(|it| it.is_branch && it.start < l && l < it.end)
    {
        match fields
            .iter()
            .find(|f| f.branch.as_deref() == Some(b.key.as_str()) && f.start > l)
        {
            Some(f) => a
                .fields
                .entry((b.key.clone(), f.key.clone()))
                .or_default()
                .leading
                .push(text),
            None => a.branch_tail.entry(b.key.clone()).or_default().push(text),
        }
        return;
    }
    match items.iter().find(|it| it.start > l) {
        Some(it) => a
            .items
            .entry(it.key.clone())
            .or_default()
            .leading
            .push(text),
        None => a.body_tail.push(text),
    }
}

/// Lines of one section: (leading comments, code, trailing comment).
type Line = (Vec<String>, String, Option<String>);

fn push_section(out: &mut String, lines: &[Line], indent: &str) {
    let width = lines
        .iter()
        .filter(|(_, _, t)| t.is_some())
        .map(|(_, code, _)| code.lines().last().map_or(0, str::len))
        .max()
        .unwrap_or(0);
    for (leading, code, trailing) in lines {
        for c in leading {
            let _ = writeln!(out, "{indent}{c}");
        }
        let mut code_lines: Vec<&str> = code.lines().collect();
        let last = code_lines.pop().unwrap_or("");
        for cl in code_lines {
            let _ = writeln!(out, "{indent}{cl}");
        }
        match trailing {
            Some(t) => {
                let _ = writeln!(out, "{indent}{last:<width$}  {t}");
            }
            None => {
                let _ = writeln!(out, "{indent}{last}");
            }
        }
    }
}

fn branch_fields(b: &Branch) -> Vec<(&'static str, String)> {
    let mut f: Vec<(&'static str, String)> = match &b.kind {
        BranchKind::Compress(c) => vec![
            ("block", c.block.to_string()),
            ("stride", c.stride.to_string()),
            ("pool", pool_name(c.pool).to_string()),
        ],
        BranchKind::Select(s) => {
            let mut f = vec![("block", s.block.to_string()), ("top", s.top.to_string())];
            // NSA's own forms print exactly as they always have; the wave-2 keys only when used.
            match &s.scored_by {
                Scorer::Branch(name) => {
                    f.push(("scored_by", name.clone()));
                    f.push(("keep_first", s.keep_first.to_string()));
                    f.push(("keep_last", s.keep_last.to_string()));
                }
                Scorer::Given => f.push(("given", "true".to_string())),
            }
            if let Some(w) = &s.within {
                f.push(("within", w.clone()));
            }
            f
        }
        BranchKind::Window(w) => vec![("size", w.size.to_string())],
        // An index branch has no `kv`: its inputs are always its own.
        BranchKind::Index(i) => {
            return vec![("heads", i.heads.to_string()), ("dim", i.dim.to_string())];
        }
    };
    f.push(("kv", kv_name(b.kv).to_string()));
    f
}

fn branch_text(b: &Branch, a: &Attached) -> String {
    let head = format!("{:<8} {} {{", b.keyword(), b.name);
    let fields = branch_fields(b);
    if !a.multiline(&b.name) {
        let body: Vec<String> = fields.iter().map(|(k, v)| format!("{k} = {v}")).collect();
        return format!("{head} {} }}", body.join(", "));
    }
    let mut out = String::new();
    match a.branch_open.get(&b.name) {
        Some(c) => {
            let _ = writeln!(out, "{head}  {c}");
        }
        None => {
            let _ = writeln!(out, "{head}");
        }
    }
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let lines: Vec<Line> = fields
        .iter()
        .map(|(k, v)| {
            let notes = a
                .fields
                .get(&(b.name.clone(), (*k).to_string()))
                .cloned()
                .unwrap_or_default();
            (notes.leading, format!("{k:<width$} = {v}"), notes.trailing)
        })
        .collect();
    push_section(&mut out, &lines, INDENT);
    for c in a.branch_tail.get(&b.name).into_iter().flatten() {
        let _ = writeln!(out, "{INDENT}{c}");
    }
    out.push('}');
    out
}

fn render(spec: &Spec, a: &Attached) -> String {
    let mut out = String::new();
    for c in &a.header.leading {
        let _ = writeln!(out, "{c}");
    }
    match &a.header.trailing {
        Some(c) => {
            let _ = writeln!(out, "attention {} {{  {c}", spec.name);
        }
        None => {
            let _ = writeln!(out, "attention {} {{", spec.name);
        }
    }
    let line = |key: &str, code: String| -> Line {
        let notes = a.items.get(key).cloned().unwrap_or_default();
        (notes.leading, code, notes.trailing)
    };
    let mut settings = vec![
        line(
            "heads",
            format!("{:<8} = {} / {}", "heads", spec.heads.q, spec.heads.kv),
        ),
        line(
            "head_dim",
            format!(
                "{:<8} = {} / {}",
                "head_dim", spec.head_dim.qk, spec.head_dim.v
            ),
        ),
        line("causal", format!("{:<8} = {}", "causal", spec.causal)),
    ];
    if let Some(s) = spec.scale {
        settings.push(line(
            "scale",
            format!("{:<8} = {}", "scale", format_float(s.get())),
        ));
    }
    push_section(&mut out, &settings, INDENT);
    out.push('\n');
    let branches: Vec<Line> = spec
        .branches
        .iter()
        .map(|b| line(&b.name, branch_text(b, a)))
        .collect();
    push_section(&mut out, &branches, INDENT);
    out.push('\n');
    let combine = vec![line(
        "combine",
        format!(
            "{:<8} = {}({})",
            "combine",
            combine_name(spec.combine.mode),
            spec.combine.branches.join(", ")
        ),
    )];
    push_section(&mut out, &combine, INDENT);
    for c in &a.body_tail {
        let _ = writeln!(out, "{INDENT}{c}");
    }
    match &a.closing {
        Some(c) => {
            let _ = writeln!(out, "}}  {c}");
        }
        None => out.push_str("}\n"),
    }
    for c in &a.footer {
        let _ = writeln!(out, "{c}");
    }
    out
}
