//! Typed errors of the spec language: one [`Diagnostic`] per problem, gathered in a
//! [`SpecError`]. Each diagnostic has a primary byte span (the caret), optional secondary
//! labels and a help line; `diagnostics::render` turns them into annotated snippets.

use std::ops::Range;

/// A secondary annotation: another place in the source that explains the problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    pub span: Range<usize>,
    pub message: String,
}

/// One problem in a spec, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub kind: DiagnosticKind,
    /// Byte range of the offending text in the source.
    pub span: Range<usize>,
    pub labels: Vec<Label>,
    pub help: Option<String>,
}

impl Diagnostic {
    /// A diagnostic with no labels and no help.
    pub fn new(kind: DiagnosticKind, span: Range<usize>) -> Self {
        Diagnostic {
            kind,
            span,
            labels: Vec::new(),
            help: None,
        }
    }
    /// Adds a secondary label.
    pub fn label(mut self, span: Range<usize>, message: impl Into<String>) -> Self {
        self.labels.push(Label {
            span,
            message: message.into(),
        });
        self
    }
    /// Sets the help line.
    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
    /// A short stable code for the kind, shown in rendered reports (`E…`).
    pub fn code(&self) -> &'static str {
        self.kind.code()
    }
}

/// What is wrong. The `Display` text is the headline of the rendered report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiagnosticKind {
    /// The text does not follow the grammar (from pest).
    #[error("syntax error: {message}")]
    Syntax { message: String },
    /// The YAML is malformed or has a shape the schema does not allow (from serde-saphyr).
    #[error("YAML error: {message}")]
    Yaml { message: String },
    /// The file is not UTF-8 text; the span is its first bad byte.
    #[error("the file is not UTF-8 text: byte {byte} is not valid UTF-8 here")]
    NotUtf8 { byte: String },
    #[error("unknown key `{key}` in {context}")]
    UnknownKey { key: String, context: String },
    #[error("`{key}` is given twice in {context}")]
    DuplicateKey { key: String, context: String },
    #[error("{context} is missing the required `{field}`")]
    MissingField { field: String, context: String },
    #[error("unknown branch kind `{keyword}`")]
    UnknownBranchKind { keyword: String },
    #[error("a branch named `{name}` is already declared")]
    DuplicateBranch { name: String },
    #[error("`{key}` expects {expected}, found {found}")]
    WrongType {
        key: String,
        expected: String,
        found: String,
    },
    #[error("`{key}` must be positive, found {value}")]
    NotPositive { key: String, value: String },
    #[error("`{key}` must not be negative, found {value}")]
    Negative { key: String, value: String },
    #[error("`{key}` = {value} is too large (at most {max})")]
    TooLarge {
        key: String,
        value: String,
        max: u32,
    },
    #[error("`scale` must be a finite positive number, found {value}")]
    BadScale { value: String },
    #[error("unknown {what} `{found}`")]
    UnknownWord { what: String, found: String },
    #[error("query heads ({q}) are not a multiple of key/value heads ({kv})")]
    HeadsNotDivisible { q: u32, kv: u32 },
    #[error("stride {stride} is larger than block {block} in compress branch `{branch}`")]
    StrideExceedsBlock {
        branch: String,
        stride: u32,
        block: u32,
    },
    #[error("stride {stride} of `{compress}` does not divide {what} block {block}")]
    StrideNotDividing {
        compress: String,
        what: String,
        stride: u32,
        block: u32,
    },
    #[error("`scored_by` names `{name}`, which is not a declared branch")]
    ScoredByMissing { name: String },
    #[error(
        "`scored_by` names `{name}`, a {kind} branch; it must be a compress or an index branch"
    )]
    ScoredByNotCompress { name: String, kind: String },
    #[error("keep_first ({first}) + keep_last ({last}) is more than top ({top})")]
    KeepExceedsTop { first: u32, last: u32, top: u32 },
    #[error("`combine` must be `gate(…)` or `sum(…)`, found {found}")]
    BadCombine { found: String },
    #[error("`combine` names `{name}`, which is not a declared branch")]
    CombineUnknown { name: String },
    #[error("`combine` names `{name}` twice")]
    CombineTwice { name: String },
    #[error("branch `{name}` is never used by `combine`")]
    BranchUnused { name: String },
    #[error("the spec declares no branches")]
    NoBranches,
    #[error(
        "`combine` names `{name}`, an index branch; an index branch has no output, it only scores select branches"
    )]
    IndexInCombine { name: String },
    #[error("index branch `{name}` scores no select branch")]
    IndexUnused { name: String },
    #[error(
        "select `{select}` has block {block} but is scored by index branch `{index}`, which scores single tokens"
    )]
    IndexNeedsTokens {
        select: String,
        index: String,
        block: u32,
    },
    #[error("`within` names `{name}`, which is not a declared branch")]
    WithinMissing { name: String },
    #[error("`within` names `{name}`, a {kind} branch; it must be a select branch")]
    WithinNotSelect { name: String, kind: String },
    #[error("`within` forms a cycle: {cycle}")]
    WithinCycle { cycle: String },
    #[error(
        "block {fine_block} of `{fine}` does not divide block {coarse_block} of `{coarse}`, the branch it is within"
    )]
    WithinNotDividing {
        fine: String,
        fine_block: u32,
        coarse: String,
        coarse_block: u32,
    },
    #[error(
        "top {top} of `{fine}` is more than the {candidates} blocks it can choose from within `{coarse}`"
    )]
    TopExceedsCandidates {
        fine: String,
        top: u32,
        candidates: u64,
        coarse: String,
    },
    #[error("select `{select}` has `given = true` and `{key}`; given blocks are used as given")]
    GivenConflict { select: String, key: String },
}

impl DiagnosticKind {
    /// A short stable code per kind.
    pub fn code(&self) -> &'static str {
        match self {
            DiagnosticKind::Syntax { .. } => "E001",
            DiagnosticKind::Yaml { .. } => "E002",
            DiagnosticKind::NotUtf8 { .. } => "E003",
            DiagnosticKind::UnknownKey { .. } => "E010",
            DiagnosticKind::DuplicateKey { .. } => "E011",
            DiagnosticKind::MissingField { .. } => "E012",
            DiagnosticKind::UnknownBranchKind { .. } => "E013",
            DiagnosticKind::DuplicateBranch { .. } => "E014",
            DiagnosticKind::WrongType { .. } => "E020",
            DiagnosticKind::NotPositive { .. } => "E021",
            DiagnosticKind::Negative { .. } => "E022",
            DiagnosticKind::TooLarge { .. } => "E023",
            DiagnosticKind::BadScale { .. } => "E024",
            DiagnosticKind::UnknownWord { .. } => "E025",
            DiagnosticKind::HeadsNotDivisible { .. } => "E030",
            DiagnosticKind::StrideExceedsBlock { .. } => "E031",
            DiagnosticKind::StrideNotDividing { .. } => "E032",
            DiagnosticKind::ScoredByMissing { .. } => "E033",
            DiagnosticKind::ScoredByNotCompress { .. } => "E034",
            DiagnosticKind::KeepExceedsTop { .. } => "E035",
            DiagnosticKind::BadCombine { .. } => "E040",
            DiagnosticKind::CombineUnknown { .. } => "E041",
            DiagnosticKind::CombineTwice { .. } => "E042",
            DiagnosticKind::BranchUnused { .. } => "E043",
            DiagnosticKind::NoBranches => "E044",
            DiagnosticKind::IndexInCombine { .. } => "E050",
            DiagnosticKind::IndexUnused { .. } => "E051",
            DiagnosticKind::IndexNeedsTokens { .. } => "E052",
            DiagnosticKind::WithinMissing { .. } => "E053",
            DiagnosticKind::WithinNotSelect { .. } => "E054",
            DiagnosticKind::WithinCycle { .. } => "E055",
            DiagnosticKind::WithinNotDividing { .. } => "E056",
            DiagnosticKind::TopExceedsCandidates { .. } => "E057",
            DiagnosticKind::GivenConflict { .. } => "E058",
        }
    }
}

/// Every problem found in one spec source (never empty). `Display` gives a one-line summary;
/// `diagnostics::render` gives the full annotated report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", summary(diagnostics))]
pub struct SpecError {
    pub diagnostics: Vec<Diagnostic>,
}

impl SpecError {
    /// Wraps one diagnostic.
    pub fn single(diagnostic: Diagnostic) -> Self {
        SpecError {
            diagnostics: vec![diagnostic],
        }
    }
}

fn summary(diagnostics: &[Diagnostic]) -> String {
    match diagnostics {
        [] => "invalid spec".to_string(),
        [one] => one.kind.to_string(),
        [first, rest @ ..] => format!("{} (and {} more problems)", first.kind, rest.len()),
    }
}
