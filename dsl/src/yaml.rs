//! The YAML form, read through serde-saphyr into the same [`crate::ast::Document`] as the text form,
//! so both forms share one validator and yield identical [`Spec`](crate::spec::Spec)s.
//!
//! Schema (see `LANGUAGE.md`):
//! ```yaml
//! attention: nsa_paper
//! heads: 64/4              # or 16, or {q: 64, kv: 4}
//! head_dim: 192/128        # or 128, or {qk: 192, v: 128}
//! causal: true             # optional
//! scale: 0.0883            # optional
//! branches:                # each entry starts with its kind: `KIND: NAME`
//!   - {compress: cmp, block: 32, stride: 16, pool: mean}
//!   - {select: slc, block: 64, top: 16, scored_by: cmp, keep_first: 1, keep_last: 2}
//!   - {window: win, size: 512}
//! combine: gate(cmp, slc, win)   # or {gate: [cmp, slc, win]}
//! ```
//! Every YAML node keeps its byte span (serde-saphyr's `Spanned`), so diagnostics point into the
//! YAML file exactly as they do for the text form.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{Location, Spanned};

use crate::ast::{BranchDecl, Document, Ident, Item, Setting, Span, Value, ValueKind};
use crate::error::{Diagnostic, DiagnosticKind, SpecError};
use crate::parser::parse_scalar;

/// A YAML node of any shape, with spans on its children.
#[derive(Debug, Clone)]
enum Node {
    Null,
    Bool(bool),
    Int(String),
    Float(f64),
    Str(String),
    Seq(Vec<Spanned<Node>>),
    Map(Vec<(Spanned<Node>, Spanned<Node>)>),
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Int(v.to_string()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
        Ok(Node::Int(v.to_string()))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Node, E> {
        Ok(Node::Int(v.to_string()))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Node, E> {
        Ok(Node::Int(v.to_string()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Str(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Node, E> {
        Ok(Node::Str(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut out = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Node>>()? {
            out.push(item);
        }
        Ok(Node::Seq(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut out = Vec::new();
        while let Some((k, v)) = map.next_entry::<Spanned<Node>, Spanned<Node>>()? {
            out.push((k, v));
        }
        Ok(Node::Map(out))
    }
}

/// Reads YAML into the shared syntax tree.
pub fn parse_document(source: &str) -> Result<Document, SpecError> {
    let root: Spanned<Node> = serde_saphyr::from_str(source).map_err(|e| yaml_error(&e, source))?;
    let mut r = Reader {
        source,
        diags: Vec::new(),
    };
    let doc = r.document(&root);
    if r.diags.is_empty() {
        Ok(doc)
    } else {
        Err(SpecError {
            diagnostics: r.diags,
        })
    }
}

fn yaml_error(e: &serde_saphyr::Error, source: &str) -> SpecError {
    let span = e
        .location()
        .map(|l| location_span(&l, source))
        .unwrap_or(0..0);
    let message = yaml_message(&e.to_string());
    let kind = match message.strip_prefix("duplicate mapping key: ") {
        Some(rest) => DiagnosticKind::DuplicateKey {
            key: rest.split(',').next().unwrap_or(rest).trim().to_string(),
            context: "a YAML mapping".to_string(),
        },
        None => DiagnosticKind::Yaml { message },
    };
    SpecError::single(Diagnostic::new(kind, span))
}

/// serde-saphyr's message without its own position prefix and snippet (our report shows both).
fn yaml_message(full: &str) -> String {
    let first = full.lines().next().unwrap_or_default();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    let first = match first.strip_prefix("line ").and_then(|r| r.split_once(": ")) {
        Some((pos, rest)) if pos.contains(" column ") => rest,
        _ => first,
    };
    let first = match first.find(" at line ") {
        Some(i) => &first[..i],
        None => first,
    };
    first.trim().to_string()
}

/// The byte range a serde-saphyr location covers (a point where no length is known).
fn location_span(loc: &Location, source: &str) -> Span {
    let s = loc.span();
    let start = match s.byte_offset() {
        Some(o) => usize::try_from(o).unwrap_or(usize::MAX),
        None => line_col_to_byte(source, loc.line(), loc.column()),
    };
    let start = start.min(source.len());
    let len = s
        .byte_len()
        .and_then(|l| usize::try_from(l).ok())
        .unwrap_or(0);
    let mut end = start.saturating_add(len).min(source.len());
    while !source.is_char_boundary(end) {
        end -= 1;
    }
    let mut start = start;
    while !source.is_char_boundary(start) {
        start -= 1;
    }
    start..end.max(start)
}

fn line_col_to_byte(source: &str, line: u64, column: u64) -> usize {
    let mut offset = 0;
    for (i, l) in source.split_inclusive('\n').enumerate() {
        if (i as u64) + 1 == line {
            let col = usize::try_from(column.saturating_sub(1)).unwrap_or(usize::MAX);
            return offset + l.char_indices().nth(col).map(|(b, _)| b).unwrap_or(l.len());
        }
        offset += l.len();
    }
    source.len()
}

struct Reader<'s> {
    source: &'s str,
    diags: Vec<Diagnostic>,
}

impl Reader<'_> {
    fn span(&self, n: &Spanned<Node>) -> Span {
        location_span(&n.referenced, self.source)
    }

    /// A scalar used as a name: a string, or a bare word YAML read as a boolean or null
    /// (`y`, `no`, `null`…), taken as written.
    fn name_text(&self, n: &Spanned<Node>) -> Option<String> {
        match &n.value {
            Node::Str(s) => Some(s.clone()),
            Node::Bool(_) | Node::Null => {
                let span = self.span(n);
                let text = self.source.get(span)?;
                crate::validate::is_name_or_yaml_word(text).then(|| text.to_string())
            }
            _ => None,
        }
    }

    fn shape_error(&mut self, message: String, span: Span) {
        self.diags
            .push(Diagnostic::new(DiagnosticKind::Yaml { message }, span));
    }

    /// A map key as a name; reports and returns `None` for non-string keys.
    fn key(&mut self, k: &Spanned<Node>) -> Option<Ident> {
        match &k.value {
            _ if self.name_text(k).is_some() => Some(Ident {
                name: self.name_text(k).unwrap_or_default(),
                span: self.span(k),
            }),
            _ => {
                let span = self.span(k);
                self.shape_error("keys must be plain names".to_string(), span);
                None
            }
        }
    }

    fn document(&mut self, root: &Spanned<Node>) -> Document {
        let root_span = self.span(root);
        let mut doc = Document {
            name: Ident {
                name: String::new(),
                span: root_span.start..root_span.start,
            },
            items: Vec::new(),
            header: root_span.start..root_span.start,
            close: self.source.len()..self.source.len(),
        };
        let Node::Map(entries) = &root.value else {
            self.shape_error(
                "a spec is a mapping that starts with `attention: NAME`".to_string(),
                root_span,
            );
            return doc;
        };
        let mut named = false;
        for (k, v) in entries {
            let Some(key) = self.key(k) else { continue };
            match key.name.as_str() {
                "attention" => {
                    let span = self.span(v);
                    match self.name_text(v) {
                        Some(s) => {
                            doc.header = key.span.start..span.end;
                            let start = self.content_start(span.start);
                            doc.name = Ident {
                                name: s.clone(),
                                span: start..start + s.len().min(span.end.saturating_sub(start)),
                            };
                            named = true;
                        }
                        _ => self
                            .shape_error("`attention` must be the spec's name".to_string(), span),
                    }
                }
                "branches" => match &v.value {
                    Node::Seq(items) => {
                        for item in items {
                            if let Some(b) = self.branch(item) {
                                doc.items.push(Item::Branch(b));
                            }
                        }
                    }
                    _ => {
                        let span = self.span(v);
                        self.shape_error("`branches` must be a list of branches".to_string(), span);
                    }
                },
                _ => {
                    let value = self.value(&key.name, v);
                    let span = key.span.start..value.span.end.max(key.span.end);
                    doc.items.push(Item::Setting(Setting { key, value, span }));
                }
            }
        }
        if !named {
            self.diags.push(
                Diagnostic::new(
                    DiagnosticKind::MissingField {
                        field: "attention".to_string(),
                        context: "the spec".to_string(),
                    },
                    doc.header.clone(),
                )
                .help("start the file with `attention: NAME`"),
            );
        }
        doc
    }

    /// Where a scalar's text starts: after an opening quote, if any.
    fn content_start(&self, start: usize) -> usize {
        match self.source.as_bytes().get(start) {
            Some(b'"') | Some(b'\'') => start + 1,
            _ => start,
        }
    }

    fn branch(&mut self, item: &Spanned<Node>) -> Option<BranchDecl> {
        let span = self.span(item);
        let Node::Map(entries) = &item.value else {
            self.shape_error(
                "a branch is a mapping such as `{window: win, size: 512}`".to_string(),
                span,
            );
            return None;
        };
        let mut entries = entries.iter();
        let (k, v) = entries.next()?;
        let keyword = self.key(k)?;
        let name_span = self.span(v);
        let name = match self.name_text(v) {
            Some(s) => {
                let start = self.content_start(name_span.start);
                Ident {
                    span: start..start + s.len().min(name_span.end.saturating_sub(start)),
                    name: s,
                }
            }
            None => {
                self.shape_error(
                    format!("`{}` must be followed by the branch's name", keyword.name),
                    name_span,
                );
                return None;
            }
        };
        let mut fields = Vec::new();
        let mut end = name.span.end;
        for (k, v) in entries {
            let Some(key) = self.key(k) else { continue };
            let value = self.value(&key.name, v);
            let span = key.span.start..value.span.end.max(key.span.end);
            end = end.max(span.end);
            fields.push(Setting { key, value, span });
        }
        Some(BranchDecl {
            span: keyword.span.start..end,
            keyword,
            name,
            fields,
        })
    }

    fn value(&mut self, key: &str, n: &Spanned<Node>) -> Value {
        let span = self.span(n);
        let kind = match &n.value {
            Node::Null | Node::Bool(_) => match self.source.get(span.clone()) {
                Some(t @ ("true" | "false")) => ValueKind::Bool(t == "true"),
                Some(t) if crate::validate::is_name(t) => ValueKind::Word(t.to_string()),
                _ => match &n.value {
                    Node::Bool(b) => ValueKind::Bool(*b),
                    _ => ValueKind::Other("nothing (null)".to_string()),
                },
            },
            Node::Int(s) => ValueKind::Int(s.clone()),
            Node::Float(f) => ValueKind::Float(*f),
            Node::Str(s) => {
                let start = self.content_start(span.start);
                match parse_scalar(s, start) {
                    Some(v) => return v,
                    None => ValueKind::Other(format!("the text `{s}`")),
                }
            }
            Node::Seq(_) => ValueKind::Other("a list".to_string()),
            Node::Map(entries) => return self.map_value(key, entries, span),
        };
        Value { kind, span }
    }

    /// `{q: 64, kv: 4}`, `{qk: 192, v: 128}` or `{gate: [a, b]}`.
    fn map_value(
        &mut self,
        key: &str,
        entries: &[(Spanned<Node>, Spanned<Node>)],
        span: Span,
    ) -> Value {
        let other = |what: &str| Value {
            kind: ValueKind::Other(what.to_string()),
            span: span.clone(),
        };
        let names: Vec<Option<&str>> = entries
            .iter()
            .map(|(k, _)| match &k.value {
                Node::Str(s) => Some(s.as_str()),
                _ => None,
            })
            .collect();
        let pair_keys = match key {
            "heads" => Some(("q", "kv")),
            "head_dim" => Some(("qk", "v")),
            _ => None,
        };
        if let Some((a, b)) = pair_keys {
            if names.as_slice() == [Some(a), Some(b)] || names.as_slice() == [Some(b), Some(a)] {
                let find = |want: &str| {
                    entries
                        .iter()
                        .find(|(k, _)| matches!(&k.value, Node::Str(s) if s == want))
                        .map(|(_, v)| v)
                };
                if let (Some(x), Some(y)) = (find(a), find(b)) {
                    let x = self.value(key, x);
                    let y = self.value(key, y);
                    return Value {
                        kind: ValueKind::Ratio(Box::new(x), Box::new(y)),
                        span,
                    };
                }
            }
            return other(&format!("a mapping (expected `{{{a}: …, {b}: …}}`)"));
        }
        if let [(k, v)] = entries
            && let Node::Str(func) = &k.value
            && let Node::Seq(items) = &v.value
        {
            let mut args = Vec::new();
            for it in items {
                let s = self.span(it);
                match self.name_text(it) {
                    Some(name) => {
                        let start = self.content_start(s.start);
                        args.push(Ident {
                            span: start..start + name.len().min(s.end.saturating_sub(start)),
                            name,
                        });
                    }
                    None => return other("a mapping with a non-name in its list"),
                }
            }
            let ks = self.span(k);
            return Value {
                kind: ValueKind::Call {
                    func: Ident {
                        name: func.clone(),
                        span: ks,
                    },
                    args,
                },
                span,
            };
        }
        other("a mapping")
    }
}
