//! Validation: [`crate::ast::Document`] → [`Spec`], reporting every problem at once.
//!
//! Each problem yields exactly one [`Diagnostic`] whose primary span is the offending text
//! (a value, a key, a branch name), so the caret lands where the user must edit. Checks that
//! depend on a value that was itself wrong are skipped rather than reported twice.

use std::collections::{HashMap, HashSet};

use crate::ast::{BranchDecl, Document, Ident, Item, Setting, Span, Value, ValueKind};
use crate::error::{Diagnostic, DiagnosticKind, SpecError};
use crate::spec::{
    Branch, BranchKind, Combine, CombineMode, Compress, HeadDim, Heads, Index, KvSource, Pool,
    Scale, Scorer, Select, Spec, Window,
};

const TOP_KEYS: &[&str] = &["heads", "head_dim", "causal", "scale", "combine"];
const COMPRESS_KEYS: &[&str] = &["block", "stride", "pool", "kv"];
const SELECT_KEYS: &[&str] = &[
    "block",
    "top",
    "scored_by",
    "keep_first",
    "keep_last",
    "within",
    "given",
    "kv",
];
const WINDOW_KEYS: &[&str] = &["size", "kv"];
const INDEX_KEYS: &[&str] = &["heads", "dim"];

/// Checks a syntax tree and lowers it to a [`Spec`].
pub fn validate(doc: &Document) -> Result<Spec, SpecError> {
    let mut v = Validator { diags: Vec::new() };
    let spec = v.document(doc);
    match spec {
        Some(spec) if v.diags.is_empty() => Ok(spec),
        _ => {
            if v.diags.is_empty() {
                // Defensive: a failed lowering always records why; never return an empty error.
                v.diags.push(Diagnostic::new(
                    DiagnosticKind::Syntax {
                        message: "invalid spec".to_string(),
                    },
                    doc.header.clone(),
                ));
            }
            Err(SpecError {
                diagnostics: v.diags,
            })
        }
    }
}

/// Whether `name` can be written as a name in the text form.
pub fn is_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !matches!(name, "true" | "false")
}

/// A name, or a word YAML reads as a boolean or null but that is a name in the text form.
pub(crate) fn is_name_or_yaml_word(text: &str) -> bool {
    is_name(text) || matches!(text, "true" | "false")
}

struct Validator {
    diags: Vec<Diagnostic>,
}

/// The settings of one `{ … }` (or the top level), checked for unknown and repeated keys.
struct Fields<'a> {
    by_key: HashMap<&'a str, &'a Setting>,
}

impl<'a> Fields<'a> {
    fn get(&self, key: &str) -> Option<&'a Setting> {
        self.by_key.get(key).copied()
    }
}

/// A branch as far as it could be read, with the spans later cross-checks point at.
struct Parsed<'a> {
    decl: &'a BranchDecl,
    kind: Option<PartialKind<'a>>,
    /// `None` if `kv` was bad (already reported); the other fields are still checked.
    kv: Option<KvSource>,
}

impl Parsed<'_> {
    /// The branch named by a select's `within`, if written as a word.
    fn within_name(&self) -> Option<&str> {
        match &self.kind {
            Some(PartialKind::Select {
                within: Some(v), ..
            }) => word(v),
            _ => None,
        }
    }

    /// The branch named by a select's `scored_by`, if written as a word.
    fn scorer_name(&self) -> Option<&str> {
        match &self.kind {
            Some(PartialKind::Select {
                scored_by: Some(v), ..
            }) => word(v),
            _ => None,
        }
    }
}

fn word(v: &Value) -> Option<&str> {
    match &v.kind {
        ValueKind::Word(w) => Some(w.as_str()),
        _ => None,
    }
}

enum PartialKind<'a> {
    Compress {
        block: Option<(u32, Span)>,
        stride: Option<(u32, Span)>,
        pool: Option<Pool>,
    },
    Select {
        block: Option<(u32, Span)>,
        top: Option<u32>,
        scored_by: Option<&'a Value>,
        keep_first: Option<u32>,
        keep_last: Option<u32>,
        keep_span: Span,
        /// `within = NAME`, if written (a word; anything else is reported already).
        within: Option<&'a Value>,
        /// `given = true|false`; `None` when the value was bad (reported).
        given: Option<bool>,
        /// Settings that contradict `given = true`: (key, span of the key).
        given_conflicts: Vec<(&'static str, Span)>,
    },
    Window {
        size: Option<u32>,
    },
    Index {
        heads: Option<u32>,
        dim: Option<u32>,
    },
}

impl Validator {
    fn push(&mut self, d: Diagnostic) {
        self.diags.push(d);
    }

    fn fields<'a>(
        &mut self,
        settings: impl Iterator<Item = &'a Setting>,
        known: &[&str],
        context: &str,
    ) -> Fields<'a> {
        let mut by_key: HashMap<&'a str, &'a Setting> = HashMap::new();
        for s in settings {
            let key = s.key.name.as_str();
            if !known.contains(&key) {
                self.push(
                    Diagnostic::new(
                        DiagnosticKind::UnknownKey {
                            key: key.to_string(),
                            context: context.to_string(),
                        },
                        s.key.span.clone(),
                    )
                    .help(format!("the keys allowed here are: {}", known.join(", "))),
                );
                continue;
            }
            if let Some(first) = by_key.get(key) {
                self.push(
                    Diagnostic::new(
                        DiagnosticKind::DuplicateKey {
                            key: key.to_string(),
                            context: context.to_string(),
                        },
                        s.key.span.clone(),
                    )
                    .label(first.key.span.clone(), "first given here")
                    .help("remove one of them"),
                );
                continue;
            }
            by_key.insert(key, s);
        }
        Fields { by_key }
    }

    fn missing(&mut self, field: &str, context: &str, at: Span, example: &str) {
        self.push(
            Diagnostic::new(
                DiagnosticKind::MissingField {
                    field: field.to_string(),
                    context: context.to_string(),
                },
                at,
            )
            .help(format!("add `{field}` (for example {example})")),
        );
    }

    fn wrong_type(&mut self, key: &str, expected: &str, v: &Value) {
        self.push(Diagnostic::new(
            DiagnosticKind::WrongType {
                key: key.to_string(),
                expected: expected.to_string(),
                found: v.kind.describe(),
            },
            v.span.clone(),
        ));
    }

    /// An integer literal as u32 within its key's limit ([`crate::problem::limit_of`]);
    /// `positive` rejects zero. Reports and returns `None` if bad.
    fn int_literal(&mut self, key: &str, text: &str, span: &Span, positive: bool) -> Option<u32> {
        let negative = text.starts_with('-');
        let digits = text.trim_start_matches('-');
        let is_zero = digits.bytes().all(|b| b == b'0');
        if negative && !is_zero {
            let kind = if positive {
                DiagnosticKind::NotPositive {
                    key: key.to_string(),
                    value: text.to_string(),
                }
            } else {
                DiagnosticKind::Negative {
                    key: key.to_string(),
                    value: text.to_string(),
                }
            };
            self.push(Diagnostic::new(kind, span.clone()));
            return None;
        }
        if positive && is_zero {
            self.push(Diagnostic::new(
                DiagnosticKind::NotPositive {
                    key: key.to_string(),
                    value: text.to_string(),
                },
                span.clone(),
            ));
            return None;
        }
        let max = crate::problem::limit_of(key);
        match digits.parse::<u32>() {
            Ok(n) if n <= max => Some(n),
            _ => {
                self.push(Diagnostic::new(
                    DiagnosticKind::TooLarge {
                        key: key.to_string(),
                        value: text.to_string(),
                        max,
                    },
                    span.clone(),
                ));
                None
            }
        }
    }

    fn integer(&mut self, key: &str, v: &Value, positive: bool) -> Option<u32> {
        match &v.kind {
            ValueKind::Int(text) => self.int_literal(key, text, &v.span, positive),
            _ => {
                let expected = if positive {
                    "a positive integer"
                } else {
                    "a non-negative integer"
                };
                self.wrong_type(key, expected, v);
                None
            }
        }
    }

    fn opt_integer(&mut self, f: &Fields<'_>, key: &str, positive: bool) -> Option<(u32, Span)> {
        let s = f.get(key)?;
        self.integer(key, &s.value, positive)
            .map(|n| (n, s.value.span.clone()))
    }

    /// `a / b` or a single integer `a` (meaning `a / a`).
    fn pair(&mut self, key: &str, v: &Value) -> Option<(u32, u32, Span, Span)> {
        match &v.kind {
            ValueKind::Int(_) => {
                let n = self.integer(key, v, true)?;
                Some((n, n, v.span.clone(), v.span.clone()))
            }
            ValueKind::Ratio(a, b) => {
                let x = self.integer(key, a, true);
                let y = self.integer(key, b, true);
                Some((x?, y?, a.span.clone(), b.span.clone()))
            }
            _ => {
                self.wrong_type(key, "`a / b` or a positive integer", v);
                None
            }
        }
    }

    fn word<T: Copy>(
        &mut self,
        key: &str,
        v: &Value,
        what: &str,
        options: &[(&str, T)],
    ) -> Option<T> {
        let ValueKind::Word(w) = &v.kind else {
            let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
            self.wrong_type(key, &format!("one of {}", names.join(", ")), v);
            return None;
        };
        if let Some((_, t)) = options.iter().find(|(n, _)| n == w) {
            return Some(*t);
        }
        let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
        self.push(
            Diagnostic::new(
                DiagnosticKind::UnknownWord {
                    what: what.to_string(),
                    found: w.clone(),
                },
                v.span.clone(),
            )
            .help(format!("expected one of: {}", names.join(", "))),
        );
        None
    }

    fn check_name(&mut self, id: &Ident, what: &str) {
        if !is_name(&id.name) {
            self.push(Diagnostic::new(
                DiagnosticKind::WrongType {
                    key: what.to_string(),
                    expected: "a name (a letter or `_`, then letters, digits or `_`)".to_string(),
                    found: format!("`{}`", id.name),
                },
                id.span.clone(),
            ));
        }
    }

    fn document(&mut self, doc: &Document) -> Option<Spec> {
        self.check_name(&doc.name, "attention");
        let settings = doc.items.iter().filter_map(|i| match i {
            Item::Setting(s) => Some(s),
            Item::Branch(_) => None,
        });
        let top = self.fields(settings, TOP_KEYS, "the attention body");

        let heads = match top.get("heads") {
            None => {
                self.missing("heads", "the spec", doc.header.clone(), "64 / 4");
                None
            }
            Some(s) => self
                .pair("heads", &s.value)
                .and_then(|(q, kv, _, kv_span)| {
                    if q % kv != 0 {
                        self.push(
                            Diagnostic::new(
                                DiagnosticKind::HeadsNotDivisible { q, kv },
                                s.value.span.clone(),
                            )
                            .label(kv_span, "key/value heads")
                            .help("each kv head serves a group of q / kv query heads"),
                        );
                        None
                    } else {
                        Some(Heads { q, kv })
                    }
                }),
        };
        let head_dim = match top.get("head_dim") {
            None => {
                self.missing("head_dim", "the spec", doc.header.clone(), "128");
                None
            }
            Some(s) => self
                .pair("head_dim", &s.value)
                .map(|(qk, v, _, _)| HeadDim { qk, v }),
        };
        let causal = match top.get("causal") {
            None => Some(true),
            Some(s) => match s.value.kind {
                ValueKind::Bool(b) => Some(b),
                _ => {
                    self.wrong_type("causal", "`true` or `false`", &s.value);
                    None
                }
            },
        };
        let scale = match top.get("scale") {
            None => Some(None),
            Some(s) => self.scale(&s.value).map(Some),
        };

        let branches = self.branches(doc);
        let combine = match top.get("combine") {
            None => {
                self.missing("combine", "the spec", doc.header.clone(), "gate(…)");
                None
            }
            Some(s) => {
                let declared: HashSet<&str> = doc
                    .items
                    .iter()
                    .filter_map(|i| match i {
                        Item::Branch(b) => Some(b.name.name.as_str()),
                        Item::Setting(_) => None,
                    })
                    .collect();
                self.combine(&s.value, &branches, &declared)
            }
        };
        if branches.is_empty() {
            self.push(
                Diagnostic::new(DiagnosticKind::NoBranches, doc.header.clone())
                    .help("declare at least one `compress`, `select` or `window` branch"),
            );
        }
        self.cross_check(&branches);
        self.within_cycles(&branches);
        self.index_used(&branches);

        let mut out = Vec::new();
        for b in &branches {
            out.push(lower_branch(b)?);
        }
        Some(Spec {
            name: doc.name.name.clone(),
            heads: heads?,
            head_dim: head_dim?,
            causal: causal?,
            scale: scale?,
            branches: out,
            combine: combine?,
        })
    }

    fn scale(&mut self, v: &Value) -> Option<Scale> {
        let x = match &v.kind {
            ValueKind::Float(f) => *f,
            ValueKind::Int(t) => t.parse::<f64>().unwrap_or(f64::NAN),
            _ => {
                self.wrong_type("scale", "a positive number", v);
                return None;
            }
        };
        if x.is_finite() && x > 0.0 {
            Some(Scale::new(x))
        } else {
            let value = match &v.kind {
                ValueKind::Int(t) => t.clone(),
                _ => format!("{x}"),
            };
            self.push(Diagnostic::new(
                DiagnosticKind::BadScale { value },
                v.span.clone(),
            ));
            None
        }
    }

    fn branches<'a>(&mut self, doc: &'a Document) -> Vec<Parsed<'a>> {
        let mut seen: HashMap<&str, Span> = HashMap::new();
        let mut out = Vec::new();
        for item in &doc.items {
            let Item::Branch(decl) = item else { continue };
            self.check_name(&decl.name, "branch name");
            let known = match decl.keyword.name.as_str() {
                "compress" => COMPRESS_KEYS,
                "select" => SELECT_KEYS,
                "window" => WINDOW_KEYS,
                "index" => INDEX_KEYS,
                other => {
                    self.push(
                        Diagnostic::new(
                            DiagnosticKind::UnknownBranchKind {
                                keyword: other.to_string(),
                            },
                            decl.keyword.span.clone(),
                        )
                        .help("a branch is `compress`, `select`, `window` or `index`"),
                    );
                    continue;
                }
            };
            if let Some(first) = seen.get(decl.name.name.as_str()) {
                self.push(
                    Diagnostic::new(
                        DiagnosticKind::DuplicateBranch {
                            name: decl.name.name.clone(),
                        },
                        decl.name.span.clone(),
                    )
                    .label(first.clone(), "first declared here")
                    .help("give each branch its own name"),
                );
                continue;
            }
            seen.insert(decl.name.name.as_str(), decl.name.span.clone());
            let context = format!("{} branch `{}`", decl.keyword.name, decl.name.name);
            let f = self.fields(decl.fields.iter(), known, &context);
            let kv = match f.get("kv") {
                // An index branch has no `kv` key (its inputs are always its own).
                None => Some(KvSource::Shared),
                Some(s) => self.word(
                    "kv",
                    &s.value,
                    "kv source",
                    &[("shared", KvSource::Shared), ("own", KvSource::Own)],
                ),
            };
            let at = decl.name.span.clone();
            let kind = match decl.keyword.name.as_str() {
                "compress" => {
                    let block = self.opt_integer(&f, "block", true);
                    if f.get("block").is_none() {
                        self.missing("block", &context, at, "32");
                    }
                    let stride = self.opt_integer(&f, "stride", true);
                    let pool = match f.get("pool") {
                        None => Some(Pool::Mean),
                        Some(s) => self.word(
                            "pool",
                            &s.value,
                            "pool",
                            &[
                                ("mean", Pool::Mean),
                                ("weighted", Pool::Weighted),
                                ("linear", Pool::Linear),
                            ],
                        ),
                    };
                    let stride_given = f.get("stride").is_some();
                    Some(PartialKind::Compress {
                        stride: if stride_given { stride } else { block.clone() },
                        block,
                        pool,
                    })
                }
                "select" => {
                    let block = self.opt_integer(&f, "block", true);
                    let top = self.opt_integer(&f, "top", true).map(|(n, _)| n);
                    let given = match f.get("given") {
                        None => Some(false),
                        Some(s) => match s.value.kind {
                            ValueKind::Bool(b) => Some(b),
                            _ => {
                                self.wrong_type("given", "`true` or `false`", &s.value);
                                None
                            }
                        },
                    };
                    for (field, example) in [("block", "64"), ("top", "16"), ("scored_by", "cmp")] {
                        // Given blocks need no scorer (a bad `given` value: no second report).
                        if field == "scored_by" && given != Some(false) {
                            continue;
                        }
                        if f.get(field).is_none() {
                            self.missing(field, &context, at.clone(), example);
                        }
                    }
                    let scored_by = f.get("scored_by").map(|s| &s.value);
                    if let Some(v) = scored_by
                        && !matches!(v.kind, ValueKind::Word(_))
                    {
                        self.wrong_type("scored_by", "the name of a compress branch", v);
                    }
                    let within = f.get("within").map(|s| &s.value);
                    if let Some(v) = within
                        && !matches!(v.kind, ValueKind::Word(_))
                    {
                        self.wrong_type("within", "the name of a select branch", v);
                    }
                    let mut given_conflicts = Vec::new();
                    if given == Some(true) {
                        for key in ["scored_by", "within"] {
                            if let Some(s) = f.get(key) {
                                given_conflicts.push((key, s.key.span.clone()));
                            }
                        }
                        for key in ["keep_first", "keep_last"] {
                            if let Some(s) = f.get(key)
                                && !matches!(&s.value.kind, ValueKind::Int(t) if t.trim_start_matches('-').bytes().all(|b| b == b'0'))
                            {
                                given_conflicts.push((key, s.key.span.clone()));
                            }
                        }
                    }
                    let keep_first = match f.get("keep_first") {
                        None => Some(0),
                        Some(s) => self.integer("keep_first", &s.value, false),
                    };
                    let keep_last = match f.get("keep_last") {
                        None => Some(0),
                        Some(s) => self.integer("keep_last", &s.value, false),
                    };
                    let keep_span = match (f.get("keep_first"), f.get("keep_last")) {
                        (Some(a), Some(b)) => {
                            a.span.start.min(b.span.start)..a.span.end.max(b.span.end)
                        }
                        (Some(a), None) | (None, Some(a)) => a.span.clone(),
                        (None, None) => at.clone(),
                    };
                    Some(PartialKind::Select {
                        block,
                        top,
                        scored_by,
                        keep_first,
                        keep_last,
                        keep_span,
                        within,
                        given,
                        given_conflicts,
                    })
                }
                "index" => {
                    let heads = self.opt_integer(&f, "heads", true).map(|(n, _)| n);
                    let dim = self.opt_integer(&f, "dim", true).map(|(n, _)| n);
                    for (field, example) in [("heads", "64"), ("dim", "128")] {
                        if f.get(field).is_none() {
                            self.missing(field, &context, at.clone(), example);
                        }
                    }
                    Some(PartialKind::Index { heads, dim })
                }
                _ => {
                    let size = self.opt_integer(&f, "size", true).map(|(n, _)| n);
                    if f.get("size").is_none() {
                        self.missing("size", &context, at, "512");
                    }
                    Some(PartialKind::Window { size })
                }
            };
            out.push(Parsed { decl, kind, kv });
        }
        out
    }

    fn cross_check(&mut self, branches: &[Parsed<'_>]) {
        let by_name: HashMap<&str, &Parsed<'_>> = branches
            .iter()
            .map(|b| (b.decl.name.name.as_str(), b))
            .collect();
        for b in branches {
            match &b.kind {
                Some(PartialKind::Compress {
                    block: Some((l, _)),
                    stride: Some((d, d_span)),
                    ..
                }) => {
                    if d > l {
                        self.push(
                            Diagnostic::new(
                                DiagnosticKind::StrideExceedsBlock {
                                    branch: b.decl.name.name.clone(),
                                    stride: *d,
                                    block: *l,
                                },
                                d_span.clone(),
                            )
                            .help("compressed blocks must cover every key: use stride ≤ block"),
                        );
                    } else if l % d != 0 {
                        self.push(
                            Diagnostic::new(
                                DiagnosticKind::StrideNotDividing {
                                    compress: b.decl.name.name.clone(),
                                    what: "its own".to_string(),
                                    stride: *d,
                                    block: *l,
                                },
                                d_span.clone(),
                            )
                            .help("the overlap score map needs stride | block"),
                        );
                    }
                }
                Some(PartialKind::Select {
                    block,
                    top,
                    scored_by,
                    keep_first,
                    keep_last,
                    keep_span,
                    within,
                    given,
                    given_conflicts,
                }) => {
                    if let (Some(t), Some(a), Some(z)) = (top, keep_first, keep_last)
                        && u64::from(*a) + u64::from(*z) > u64::from(*t)
                    {
                        self.push(
                            Diagnostic::new(
                                DiagnosticKind::KeepExceedsTop {
                                    first: *a,
                                    last: *z,
                                    top: *t,
                                },
                                keep_span.clone(),
                            )
                            .help("forced blocks count towards `top`; raise `top` or keep fewer"),
                        );
                    }
                    for (key, span) in given_conflicts {
                        self.push(
                            Diagnostic::new(
                                DiagnosticKind::GivenConflict {
                                    select: b.decl.name.name.clone(),
                                    key: (*key).to_string(),
                                },
                                span.clone(),
                            )
                            .help(format!(
                                "remove `{key}`, or drop `given = true` to choose the blocks here"
                            )),
                        );
                    }
                    if let Some(v) = within {
                        self.check_within(b, v, block.as_ref(), *top, &by_name);
                    }
                    if *given == Some(true) {
                        continue;
                    }
                    let Some(v) = scored_by else { continue };
                    let ValueKind::Word(name) = &v.kind else {
                        continue;
                    };
                    self.check_scorer(b, name, v, block.as_ref(), &by_name);
                }
                _ => {}
            }
        }
    }

    /// The branch a select's `scored_by` names: a compress branch whose stride divides the
    /// select block (any stride at `block = 1`: the probabilities spread over the tokens), or
    /// an index branch at `block = 1`.
    fn check_scorer(
        &mut self,
        b: &Parsed<'_>,
        name: &str,
        v: &Value,
        block: Option<&(u32, Span)>,
        by_name: &HashMap<&str, &Parsed<'_>>,
    ) {
        let Some(target) = by_name.get(name) else {
            self.push(
                Diagnostic::new(
                    DiagnosticKind::ScoredByMissing {
                        name: name.to_string(),
                    },
                    v.span.clone(),
                )
                .help("name a compress branch declared in this spec"),
            );
            return;
        };
        match &target.kind {
            Some(PartialKind::Compress { stride, .. }) => {
                if let (Some((d, d_span)), Some((l2, l2_span))) = (stride, block)
                    && *l2 != 1
                    && *l2 % *d != 0
                {
                    self.push(
                        Diagnostic::new(
                            DiagnosticKind::StrideNotDividing {
                                compress: name.to_string(),
                                what: format!("select `{}`", b.decl.name.name),
                                stride: *d,
                                block: *l2,
                            },
                            l2_span.clone(),
                        )
                        .label(d_span.clone(), "the compress stride")
                        .help("the overlap score map needs the stride to divide the select block"),
                    );
                }
            }
            Some(PartialKind::Index { .. }) => {
                if let Some((l2, l2_span)) = block
                    && *l2 != 1
                {
                    self.push(
                        Diagnostic::new(
                            DiagnosticKind::IndexNeedsTokens {
                                select: b.decl.name.name.clone(),
                                index: name.to_string(),
                                block: *l2,
                            },
                            l2_span.clone(),
                        )
                        .label(v.span.clone(), "an index branch")
                        .help("use `block = 1` (token-level selection), or score blocks with a compress branch"),
                    );
                }
            }
            Some(_) => self.push(
                Diagnostic::new(
                    DiagnosticKind::ScoredByNotCompress {
                        name: name.to_string(),
                        kind: target.decl.keyword.name.clone(),
                    },
                    v.span.clone(),
                )
                .label(target.decl.name.span.clone(), "declared here"),
            ),
            None => {}
        }
    }

    /// `within = coarse` of select `b`: `coarse` is a select branch, b's block divides its
    /// block, and b's top does not exceed the blocks it can choose from. Cycles are checked
    /// once for the whole spec ([`Validator::within_cycles`]).
    fn check_within(
        &mut self,
        b: &Parsed<'_>,
        v: &Value,
        block: Option<&(u32, Span)>,
        top: Option<u32>,
        by_name: &HashMap<&str, &Parsed<'_>>,
    ) {
        let ValueKind::Word(name) = &v.kind else {
            return;
        };
        let Some(target) = by_name.get(name.as_str()) else {
            self.push(
                Diagnostic::new(
                    DiagnosticKind::WithinMissing { name: name.clone() },
                    v.span.clone(),
                )
                .help("name a select branch declared in this spec"),
            );
            return;
        };
        let Some(PartialKind::Select {
            block: coarse_block,
            top: coarse_top,
            ..
        }) = &target.kind
        else {
            if target.kind.is_some() {
                self.push(
                    Diagnostic::new(
                        DiagnosticKind::WithinNotSelect {
                            name: name.clone(),
                            kind: target.decl.keyword.name.clone(),
                        },
                        v.span.clone(),
                    )
                    .label(target.decl.name.span.clone(), "declared here"),
                );
            }
            return;
        };
        if name == &b.decl.name.name {
            return; // a cycle of one, reported by `within_cycles`
        }
        let (Some((fine, fine_span)), Some((coarse, coarse_span))) = (block, coarse_block) else {
            return;
        };
        if coarse % fine != 0 {
            self.push(
                Diagnostic::new(
                    DiagnosticKind::WithinNotDividing {
                        fine: b.decl.name.name.clone(),
                        fine_block: *fine,
                        coarse: name.clone(),
                        coarse_block: *coarse,
                    },
                    fine_span.clone(),
                )
                .label(coarse_span.clone(), "the block it is within")
                .help("each block of the outer branch must split into whole blocks of this one"),
            );
            return;
        }
        if let (Some(top), Some(coarse_top)) = (top, coarse_top) {
            let candidates = u64::from(*coarse_top) * u64::from(coarse / fine);
            if u64::from(top) > candidates {
                let top_span = b
                    .decl
                    .fields
                    .iter()
                    .find(|f| f.key.name == "top")
                    .map_or_else(|| b.decl.name.span.clone(), |f| f.value.span.clone());
                self.push(
                    Diagnostic::new(
                        DiagnosticKind::TopExceedsCandidates {
                            fine: b.decl.name.name.clone(),
                            top,
                            candidates,
                            coarse: name.clone(),
                        },
                        top_span,
                    )
                    .label(
                        v.span.clone(),
                        format!("{coarse_top} blocks of {coarse} keys"),
                    )
                    .help(format!(
                        "at most top × block / {fine} of the outer branch: lower `top`"
                    )),
                );
            }
        }
    }

    /// Every cycle of `within` references, reported once at the `within` of its first
    /// branch in declaration order (a branch within itself is a cycle of one).
    fn within_cycles(&mut self, branches: &[Parsed<'_>]) {
        let index: HashMap<&str, usize> = branches
            .iter()
            .enumerate()
            .map(|(i, b)| (b.decl.name.name.as_str(), i))
            .collect();
        let mut reported = vec![false; branches.len()];
        for start in 0..branches.len() {
            // Follow the chain from `start`; a cycle through `start` is reported by its
            // first member in declaration order only.
            let mut path = vec![start];
            let mut at = start;
            while let Some(next) = branches[at]
                .within_name()
                .and_then(|w| index.get(w).copied())
            {
                if next == start {
                    if path.iter().all(|&i| i >= start && !reported[i]) {
                        for &i in &path {
                            reported[i] = true;
                        }
                        let mut names: Vec<&str> = path
                            .iter()
                            .map(|&i| branches[i].decl.name.name.as_str())
                            .collect();
                        names.push(branches[start].decl.name.name.as_str());
                        let span = match &branches[start].kind {
                            Some(PartialKind::Select {
                                within: Some(v), ..
                            }) => v.span.clone(),
                            _ => branches[start].decl.name.span.clone(),
                        };
                        self.push(
                            Diagnostic::new(
                                DiagnosticKind::WithinCycle {
                                    cycle: names.join(" → "),
                                },
                                span,
                            )
                            .help("the outermost select branch of a hierarchy has no `within`"),
                        );
                    }
                    break;
                }
                if path.contains(&next) || path.len() > branches.len() {
                    break; // a cycle not through `start`: its own first member reports it
                }
                path.push(next);
                at = next;
            }
        }
    }

    /// Every index branch must score some select branch.
    fn index_used(&mut self, branches: &[Parsed<'_>]) {
        let scorers: HashSet<&str> = branches.iter().filter_map(Parsed::scorer_name).collect();
        for p in branches {
            if matches!(p.kind, Some(PartialKind::Index { .. }))
                && !scorers.contains(p.decl.name.name.as_str())
            {
                self.push(
                    Diagnostic::new(
                        DiagnosticKind::IndexUnused {
                            name: p.decl.name.name.clone(),
                        },
                        p.decl.name.span.clone(),
                    )
                    .help(format!(
                        "name it in a select branch's `scored_by = {}`, or remove it",
                        p.decl.name.name
                    )),
                );
            }
        }
    }

    /// `declared` holds every branch name written, even of branches already rejected, so that
    /// a branch with a bad keyword is not reported a second time as unknown to `combine`.
    fn combine(
        &mut self,
        v: &Value,
        branches: &[Parsed<'_>],
        declared: &HashSet<&str>,
    ) -> Option<Combine> {
        let ValueKind::Call { func, args } = &v.kind else {
            self.push(
                Diagnostic::new(
                    DiagnosticKind::BadCombine {
                        found: v.kind.describe(),
                    },
                    v.span.clone(),
                )
                .help("write `combine = gate(a, b, …)` or `combine = sum(a, b, …)`"),
            );
            return None;
        };
        let mode = match func.name.as_str() {
            "gate" => Some(CombineMode::Gate),
            "sum" => Some(CombineMode::Sum),
            other => {
                self.push(
                    Diagnostic::new(
                        DiagnosticKind::BadCombine {
                            found: format!("`{other}(…)`"),
                        },
                        func.span.clone(),
                    )
                    .help("write `combine = gate(a, b, …)` or `combine = sum(a, b, …)`"),
                );
                None
            }
        };
        let mut ok = mode.is_some();
        let mut used: HashMap<&str, Span> = HashMap::new();
        // The list of branch names for the help of an unknown name, built once (a spec may
        // name thousands of unknown branches).
        let mut names: Option<String> = None;
        for a in args {
            let is_declared = declared.contains(a.name.as_str());
            if let Some(first) = used.get(a.name.as_str()) {
                self.push(
                    Diagnostic::new(
                        DiagnosticKind::CombineTwice {
                            name: a.name.clone(),
                        },
                        a.span.clone(),
                    )
                    .label(first.clone(), "first named here"),
                );
                ok = false;
            } else if !is_declared {
                let names = names.get_or_insert_with(|| {
                    let names: Vec<&str> =
                        branches.iter().map(|b| b.decl.name.name.as_str()).collect();
                    names.join(", ")
                });
                let mut d = Diagnostic::new(
                    DiagnosticKind::CombineUnknown {
                        name: a.name.clone(),
                    },
                    a.span.clone(),
                );
                if !names.is_empty() {
                    d = d.help(format!("the branches are: {names}"));
                }
                self.push(d);
                ok = false;
                used.insert(a.name.as_str(), a.span.clone());
            } else if let Some(index) = branches
                .iter()
                .find(|b| b.decl.name.name == a.name && b.decl.keyword.name == "index")
            {
                self.push(
                    Diagnostic::new(
                        DiagnosticKind::IndexInCombine {
                            name: a.name.clone(),
                        },
                        a.span.clone(),
                    )
                    .label(index.decl.name.span.clone(), "declared here")
                    .help(format!("remove `{}` from `combine`", a.name)),
                );
                ok = false;
                used.insert(a.name.as_str(), a.span.clone());
            } else {
                used.insert(a.name.as_str(), a.span.clone());
            }
        }
        // A select branch that another is `within` may only choose (no output of its own).
        let outer: HashSet<&str> = branches.iter().filter_map(Parsed::within_name).collect();
        for b in branches {
            let name = b.decl.name.name.as_str();
            if b.decl.keyword.name == "index" || outer.contains(name) {
                continue;
            }
            if !used.contains_key(name) {
                self.push(
                    Diagnostic::new(
                        DiagnosticKind::BranchUnused {
                            name: b.decl.name.name.clone(),
                        },
                        b.decl.name.span.clone(),
                    )
                    .label(v.span.clone(), "not named here")
                    .help(format!(
                        "add `{}` to `combine`, or remove the branch",
                        b.decl.name.name
                    )),
                );
                ok = false;
            }
        }
        if !ok {
            return None;
        }
        Some(Combine {
            mode: mode?,
            branches: args.iter().map(|a| a.name.clone()).collect(),
        })
    }
}

fn lower_branch(b: &Parsed<'_>) -> Option<Branch> {
    let kind = match b.kind.as_ref()? {
        PartialKind::Compress {
            block,
            stride,
            pool,
        } => BranchKind::Compress(Compress {
            block: block.as_ref()?.0,
            stride: stride.as_ref()?.0,
            pool: (*pool)?,
        }),
        PartialKind::Select {
            block,
            top,
            scored_by,
            keep_first,
            keep_last,
            within,
            given,
            ..
        } => {
            let scored_by = if (*given)? {
                Scorer::Given
            } else {
                let ValueKind::Word(name) = &scored_by.as_ref()?.kind else {
                    return None;
                };
                Scorer::Branch(name.clone())
            };
            let within = match within {
                None => None,
                Some(v) => match &v.kind {
                    ValueKind::Word(name) => Some(name.clone()),
                    _ => return None,
                },
            };
            BranchKind::Select(Select {
                block: block.as_ref()?.0,
                top: (*top)?,
                scored_by,
                keep_first: (*keep_first)?,
                keep_last: (*keep_last)?,
                within,
            })
        }
        PartialKind::Window { size } => BranchKind::Window(Window { size: (*size)? }),
        PartialKind::Index { heads, dim } => BranchKind::Index(Index {
            heads: (*heads)?,
            dim: (*dim)?,
        }),
    };
    Some(Branch {
        name: b.decl.name.name.clone(),
        kv: b.kv?,
        kind,
    })
}
