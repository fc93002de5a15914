//! The syntax tree both spec forms (text and YAML) are read into before validation.
//!
//! The tree is deliberately loose — any `key = value`, any `word NAME { … }` — so that
//! validation can report every unknown key, missing field and bad value at once. Every node
//! carries the byte span of the text it came from, which is where diagnostics point.

use std::ops::Range;

/// A byte range into the source text.
pub type Span = Range<usize>;

/// A name with where it was written.
#[derive(Debug, Clone, PartialEq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

/// A whole spec: `attention NAME { items }`.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub name: Ident,
    pub items: Vec<Item>,
    /// Where a missing item is reported: the `attention NAME` header.
    pub header: Span,
    /// The closing `}` of the body (the end of the document for YAML).
    pub close: Span,
}

/// One entry of the attention body.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// `key = value`
    Setting(Setting),
    /// `keyword NAME { fields }`
    Branch(BranchDecl),
}

impl Item {
    /// The span of the whole item.
    pub fn span(&self) -> Span {
        match self {
            Item::Setting(s) => s.span.clone(),
            Item::Branch(b) => b.span.clone(),
        }
    }
}

/// `key = value`, at the top level or inside a branch.
#[derive(Debug, Clone, PartialEq)]
pub struct Setting {
    pub key: Ident,
    pub value: Value,
    pub span: Span,
}

/// `keyword NAME { fields }`: a branch declaration (the keyword is checked by validation).
#[derive(Debug, Clone, PartialEq)]
pub struct BranchDecl {
    pub keyword: Ident,
    pub name: Ident,
    pub fields: Vec<Setting>,
    pub span: Span,
}

/// A value with its span.
#[derive(Debug, Clone, PartialEq)]
pub struct Value {
    pub kind: ValueKind,
    pub span: Span,
}

/// The shapes a value can take.
#[derive(Debug, Clone, PartialEq)]
pub enum ValueKind {
    /// An integer literal, kept as written (signed, any length) so validation can say what is
    /// wrong with it.
    Int(String),
    /// A floating-point literal.
    Float(f64),
    /// `true` / `false`
    Bool(bool),
    /// A bare word such as `mean` or `cmp`.
    Word(String),
    /// `a / b` (two integer values).
    Ratio(Box<Value>, Box<Value>),
    /// `f(a, b, …)`
    Call { func: Ident, args: Vec<Ident> },
    /// A YAML value that has no text-form equivalent (a list, a map, null…), described for the
    /// diagnostic.
    Other(String),
}

impl ValueKind {
    /// What this value is, in a user's words, for "expected X, found Y" diagnostics.
    pub fn describe(&self) -> String {
        match self {
            ValueKind::Int(s) => format!("the integer `{s}`"),
            ValueKind::Float(f) => format!("the number `{f}`"),
            ValueKind::Bool(b) => format!("`{b}`"),
            ValueKind::Word(w) => format!("the word `{w}`"),
            ValueKind::Ratio(..) => "a ratio `a / b`".to_string(),
            ValueKind::Call { func, .. } => format!("the call `{}(…)`", func.name),
            ValueKind::Other(what) => what.clone(),
        }
    }
}
