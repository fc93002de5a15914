//! The text form: pest grammar (`grammar.pest`) → [`crate::ast::Document`] with byte spans.
//!
//! Only syntax is checked here; what the keys and values mean is `validate`'s job.

use pest::Parser as _;
use pest::iterators::Pair;

use crate::ast::{BranchDecl, Document, Ident, Item, Setting, Span, Value, ValueKind};
use crate::error::{Diagnostic, DiagnosticKind, SpecError};

#[derive(pest_derive::Parser)]
#[grammar = "grammar.pest"]
struct SpecParser;

/// Parses `.nsa` text into the syntax tree.
pub fn parse_document(source: &str) -> Result<Document, SpecError> {
    let mut pairs = SpecParser::parse(Rule::file, source).map_err(syntax_error)?;
    let file = pairs.next().ok_or_else(|| empty_error(source))?;
    let attention = file
        .into_inner()
        .find(|p| p.as_rule() == Rule::attention)
        .ok_or_else(|| empty_error(source))?;
    Ok(document(attention))
}

/// Parses one value as written in a YAML string scalar (`64/4`, `gate(a, b)`, `mean`),
/// shifting its spans by `offset` so they point into the YAML source.
pub fn parse_scalar(text: &str, offset: usize) -> Option<Value> {
    let mut pairs = SpecParser::parse(Rule::scalar, text).ok()?;
    let scalar = pairs.next()?;
    let value_pair = scalar.into_inner().find(|p| p.as_rule() == Rule::value)?;
    let mut v = value(value_pair);
    shift_value(&mut v, offset);
    Some(v)
}

fn empty_error(source: &str) -> SpecError {
    SpecError::single(Diagnostic::new(
        DiagnosticKind::Syntax {
            message: "expected `attention NAME { … }`".to_string(),
        },
        0..source.len().min(1),
    ))
}

fn syntax_error(e: pest::error::Error<Rule>) -> SpecError {
    let span = match e.location {
        pest::error::InputLocation::Pos(p) => p..p,
        pest::error::InputLocation::Span((a, b)) => a..b,
    };
    let message = match &e.variant {
        pest::error::ErrorVariant::ParsingError { positives, .. } => {
            let mut names: Vec<&str> = positives.iter().map(|r| rule_name(*r)).collect();
            names.sort_unstable();
            names.dedup();
            match names.as_slice() {
                [] => "unexpected input".to_string(),
                [one] => format!("expected {one}"),
                [init @ .., last] => format!("expected {} or {last}", init.join(", ")),
            }
        }
        pest::error::ErrorVariant::CustomError { message } => message.clone(),
    };
    SpecError::single(Diagnostic::new(DiagnosticKind::Syntax { message }, span))
}

fn rule_name(rule: Rule) -> &'static str {
    match rule {
        Rule::EOI => "end of input",
        Rule::attention | Rule::kw_attention | Rule::file => "`attention NAME { … }`",
        Rule::close => "`}`",
        Rule::open => "`{`",
        Rule::eq => "`=`",
        Rule::items | Rule::item | Rule::branch | Rule::setting | Rule::fields => "`key = value`",
        Rule::value | Rule::scalar => "a value",
        Rule::call => "`name(…)`",
        Rule::ratio => "`a / b`",
        Rule::int => "an integer",
        Rule::float => "a number",
        Rule::boolean => "`true` or `false`",
        Rule::ident => "a name",
        Rule::sep => "a newline or `,`",
        Rule::exponent => "an exponent",
        Rule::WHITESPACE | Rule::COMMENT => "whitespace",
    }
}

fn span_of(pair: &Pair<'_, Rule>) -> Span {
    let s = pair.as_span();
    s.start()..s.end()
}

fn ident(pair: Pair<'_, Rule>) -> Ident {
    Ident {
        name: pair.as_str().to_string(),
        span: span_of(&pair),
    }
}

fn document(attention: Pair<'_, Rule>) -> Document {
    let whole = span_of(&attention);
    let mut name = Ident {
        name: String::new(),
        span: whole.start..whole.start,
    };
    let mut items = Vec::new();
    let mut close = whole.end..whole.end;
    for p in attention.into_inner() {
        match p.as_rule() {
            Rule::close => close = span_of(&p),
            Rule::ident => name = ident(p),
            Rule::items => {
                for item in p.into_inner() {
                    match item.as_rule() {
                        Rule::setting => items.push(Item::Setting(setting(item))),
                        Rule::branch => items.push(Item::Branch(branch(item))),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    let header = whole.start..name.span.end;
    Document {
        name,
        items,
        header,
        close,
    }
}

fn branch(pair: Pair<'_, Rule>) -> BranchDecl {
    let span = span_of(&pair);
    let mut idents = Vec::new();
    let mut fields = Vec::new();
    for p in pair.into_inner() {
        match p.as_rule() {
            Rule::ident => idents.push(ident(p)),
            Rule::fields => fields.extend(
                p.into_inner()
                    .filter(|f| f.as_rule() == Rule::setting)
                    .map(setting),
            ),
            _ => {}
        }
    }
    let mut idents = idents.into_iter();
    let empty = Ident {
        name: String::new(),
        span: span.start..span.start,
    };
    let keyword = idents.next().unwrap_or_else(|| empty.clone());
    let name = idents.next().unwrap_or(empty);
    BranchDecl {
        keyword,
        name,
        fields,
        span,
    }
}

fn setting(pair: Pair<'_, Rule>) -> Setting {
    let span = span_of(&pair);
    let mut key = Ident {
        name: String::new(),
        span: span.clone(),
    };
    let mut val = Value {
        kind: ValueKind::Other("nothing".to_string()),
        span: span.clone(),
    };
    for p in pair.into_inner() {
        match p.as_rule() {
            Rule::ident => key = ident(p),
            Rule::value => val = value(p),
            _ => {}
        }
    }
    Setting {
        key,
        value: val,
        span,
    }
}

fn value(pair: Pair<'_, Rule>) -> Value {
    let span = span_of(&pair);
    let kind = match pair.into_inner().next() {
        Some(inner) => value_kind(inner),
        None => ValueKind::Other("nothing".to_string()),
    };
    Value { kind, span }
}

fn value_kind(p: Pair<'_, Rule>) -> ValueKind {
    match p.as_rule() {
        Rule::int => ValueKind::Int(p.as_str().to_string()),
        Rule::float => match p.as_str().parse::<f64>() {
            Ok(f) => ValueKind::Float(f),
            Err(_) => ValueKind::Other(format!("the malformed number `{}`", p.as_str())),
        },
        Rule::boolean => ValueKind::Bool(p.as_str() == "true"),
        Rule::ident => ValueKind::Word(p.as_str().to_string()),
        Rule::ratio => {
            let mut parts = p.into_inner().map(|i| Value {
                span: span_of(&i),
                kind: ValueKind::Int(i.as_str().to_string()),
            });
            match (parts.next(), parts.next()) {
                (Some(a), Some(b)) => ValueKind::Ratio(Box::new(a), Box::new(b)),
                _ => ValueKind::Other("a malformed ratio".to_string()),
            }
        }
        Rule::call => {
            let mut ids = p
                .into_inner()
                .filter(|i| i.as_rule() == Rule::ident)
                .map(ident);
            match ids.next() {
                Some(func) => ValueKind::Call {
                    func,
                    args: ids.collect(),
                },
                None => ValueKind::Other("a malformed call".to_string()),
            }
        }
        _ => ValueKind::Other(format!("`{}`", p.as_str())),
    }
}

fn shift(span: &mut Span, offset: usize) {
    span.start += offset;
    span.end += offset;
}

fn shift_value(v: &mut Value, offset: usize) {
    shift(&mut v.span, offset);
    match &mut v.kind {
        ValueKind::Ratio(a, b) => {
            shift_value(a, offset);
            shift_value(b, offset);
        }
        ValueKind::Call { func, args } => {
            shift(&mut func.span, offset);
            for a in args {
                shift(&mut a.span, offset);
            }
        }
        _ => {}
    }
}
