//! The validated meaning of a sparse-attention spec: the WHAT, never the HOW.
//!
//! A [`Spec`] is what both the text form (`.nsa`, pest) and the YAML form lower to after
//! validation. Everything downstream (the compiler's `Plan`, the reference oracle, the cost
//! model) reads only this type, never the AST. Two specs are equal exactly when they compute the
//! same function; the formatter prints a `Spec` in canonical form. See docs/ARCHITECTURE.md §2–§3.

/// One attention spec: heads, dims, causality, branches and how they are combined.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Spec {
    /// The name after the `attention` keyword.
    pub name: String,
    /// Query heads and key/value heads (GQA); per-problem overrides live in `Problem`.
    pub heads: Heads,
    /// Query-key and value head dimensions; per-problem overrides live in `Problem`.
    pub head_dim: HeadDim,
    /// `true`: query t sees keys k ≤ t only (and the visibility rules of docs/ARCHITECTURE.md §3).
    pub causal: bool,
    /// Softmax scale; `None` means 1/√Dqk.
    pub scale: Option<Scale>,
    /// The branches in declaration order.
    pub branches: Vec<Branch>,
    /// How branch outputs are mixed.
    pub combine: Combine,
}

/// A softmax scale, stored as the f64 bit pattern so that `Spec` stays `Eq + Hash`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Scale(u64);

impl Scale {
    /// Wraps a finite positive scale.
    pub fn new(value: f64) -> Self {
        Scale(value.to_bits())
    }
    /// The scale as a float.
    pub fn get(self) -> f64 {
        f64::from_bits(self.0)
    }
}

/// Query heads `q` and key/value heads `kv`; `q` is a multiple of `kv` (group G = q / kv).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Heads {
    pub q: u32,
    pub kv: u32,
}

impl Heads {
    /// The GQA group size G = q / kv.
    pub fn group(self) -> u32 {
        self.q / self.kv
    }
}

/// Query-key dimension `qk` and value dimension `v`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HeadDim {
    pub qk: u32,
    pub v: u32,
}

/// One named branch of the attention.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Branch {
    pub name: String,
    /// Whether the branch reads the shared K/V or its own (`kv = own`).
    pub kv: KvSource,
    pub kind: BranchKind,
}

/// Where a branch's keys and values come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum KvSource {
    /// The spec's shared `k`, `v` tensors.
    #[default]
    Shared,
    /// The branch's own `k_<branch>`, `v_<branch>` tensors.
    Own,
}

/// What a branch computes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BranchKind {
    Compress(Compress),
    Select(Select),
    Window(Window),
    /// A learned token scorer (DSA's lightning indexer); it scores select branches and has no
    /// output of its own (it is never in `combine`).
    Index(Index),
}

/// DSA's lightning indexer: per query token t and key s,
/// I(t, s) = Σ_j w(t, j)·ReLU(q(t, j)·k(s)) over its `heads` j, from its own inputs
/// `q_<branch>` \[B,T,heads,dim\], `k_<branch>` \[B,T,dim\] and `w_<branch>` \[B,T,heads\].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Index {
    /// Indexer heads Hi.
    pub heads: u32,
    /// Indexer dimension Di.
    pub dim: u32,
}

/// Attention over pooled blocks of keys: token j covers keys [j·stride, j·stride + block).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Compress {
    pub block: u32,
    pub stride: u32,
    pub pool: Pool,
}

/// How a block of keys (and values) is pooled into one compressed token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pool {
    /// The plain mean of the block.
    Mean,
    /// Σ_i w[h, i]·K[j·d + i] with input weights `w_<branch>` [H, block], applied to K and V.
    Weighted,
    /// A learned linear map of the flattened block: `wk_<branch>` [H, block·Dqk, Dqk] and
    /// `wv_<branch>` [H, block·Dv, Dv].
    Linear,
}

/// Attention over the top-k key blocks (single tokens at `block = 1`) chosen by a scorer, or
/// given by the caller.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Select {
    pub block: u32,
    pub top: u32,
    /// What chooses the blocks.
    pub scored_by: Scorer,
    /// Blocks 0..keep_first are always chosen (when they are candidates).
    pub keep_first: u32,
    /// The keep_last blocks ending at the query's own block are always chosen.
    pub keep_last: u32,
    /// Hierarchical selection: the candidates are only the blocks inside the blocks that this
    /// other select branch chose for the same query (`within = coarse`).
    pub within: Option<String>,
}

/// What chooses a select branch's blocks.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scorer {
    /// The named compress branch (its probabilities spread over the blocks they overlap) or
    /// index branch (its token scores; only at `block = 1`).
    Branch(String),
    /// The caller's input `idx_<select>` \[B,T,H,top\] (`given = true`).
    Given,
}

impl Scorer {
    /// The scoring branch's name; `None` for given blocks.
    pub fn branch(&self) -> Option<&str> {
        match self {
            Scorer::Branch(name) => Some(name),
            Scorer::Given => None,
        }
    }
}

impl Select {
    /// A select branch scored by the named branch, without forced blocks or nesting — the
    /// common case, for specs built in code.
    pub fn scored(block: u32, top: u32, scored_by: &str) -> Select {
        Select {
            block,
            top,
            scored_by: Scorer::Branch(scored_by.to_string()),
            keep_first: 0,
            keep_last: 0,
            within: None,
        }
    }

    /// The scoring branch's name; `None` for given blocks.
    pub fn scorer(&self) -> Option<&str> {
        self.scored_by.branch()
    }
}

/// A form of selection beyond NSA's compress-scored blocks (issue 12). The oracle defines them
/// all; a backend that does not compute one yet refuses the spec naming it
/// ([`Spec::beyond_blocks`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SelectionForm {
    /// An `index` branch (DSA's lightning indexer) scoring single tokens.
    Indexer,
    /// A select branch `within` another (hierarchical selection).
    Within,
    /// A select branch whose blocks are given (`given = true`, input `idx_<branch>`).
    Given,
}

impl SelectionForm {
    /// The form in a user's words, for errors.
    pub fn describe(self) -> &'static str {
        match self {
            SelectionForm::Indexer => "an index branch (learned token scorer)",
            SelectionForm::Within => "hierarchical selection (`within`)",
            SelectionForm::Given => "given selection indices (`given = true`)",
        }
    }
}

/// Attention over the last `size` keys (inclusive of the query's own position).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Window {
    pub size: u32,
}

/// How the branch outputs are mixed into the output.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Combine {
    pub mode: CombineMode,
    /// Branch names in the order written; every branch appears exactly once.
    pub branches: Vec<String>,
}

/// `gate(...)`: o = Σ g_b·o_b with one gate tensor `g_<branch>` \[B,T,HQ\] per branch;
/// `sum(...)`: all gates are 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CombineMode {
    Gate,
    Sum,
}

impl Spec {
    /// The branch with this name.
    pub fn branch(&self, name: &str) -> Option<&Branch> {
        self.branches.iter().find(|b| b.name == name)
    }

    /// The first branch (in declaration order) using a selection form beyond NSA's
    /// compress-scored blocks, with that form; `None` for a spec every backend computes.
    pub fn beyond_blocks(&self) -> Option<(&str, SelectionForm)> {
        self.beyond_blocks_except(&[])
    }

    /// [`Spec::beyond_blocks`] ignoring the forms in `supported`: the first branch using a form
    /// a backend that computes only `supported` (besides NSA's blocks) must refuse.
    pub fn beyond_blocks_except(
        &self,
        supported: &[SelectionForm],
    ) -> Option<(&str, SelectionForm)> {
        self.branches.iter().find_map(|b| {
            let form = match &b.kind {
                BranchKind::Index(_) => SelectionForm::Indexer,
                BranchKind::Select(s) if s.scored_by == Scorer::Given => SelectionForm::Given,
                BranchKind::Select(s) if s.within.is_some() => SelectionForm::Within,
                // Token-level selection scored by a compress branch is NSA's overlap rule,
                // which every backend computes; an index scorer is reported at its own branch.
                _ => return None,
            };
            (!supported.contains(&form)).then_some((b.name.as_str(), form))
        })
    }

    /// The softmax scale for a query-key dimension (the spec's, or 1/√Dqk).
    pub fn scale_for(&self, dqk: u32) -> f64 {
        self.scale
            .map(Scale::get)
            .unwrap_or_else(|| 1.0 / f64::from(dqk).sqrt())
    }
}

impl Branch {
    /// The compress parameters, if this is a compress branch.
    pub fn as_compress(&self) -> Option<&Compress> {
        match &self.kind {
            BranchKind::Compress(c) => Some(c),
            _ => None,
        }
    }
    /// The select parameters, if this is a select branch.
    pub fn as_select(&self) -> Option<&Select> {
        match &self.kind {
            BranchKind::Select(s) => Some(s),
            _ => None,
        }
    }
    /// The window parameters, if this is a window branch.
    pub fn as_window(&self) -> Option<&Window> {
        match &self.kind {
            BranchKind::Window(w) => Some(w),
            _ => None,
        }
    }
    /// The index parameters, if this is an index branch.
    pub fn as_index(&self) -> Option<&Index> {
        match &self.kind {
            BranchKind::Index(i) => Some(i),
            _ => None,
        }
    }
    /// Whether the branch has an output of its own (every kind but `index`).
    pub fn attends(&self) -> bool {
        !matches!(self.kind, BranchKind::Index(_))
    }
    /// The keyword that introduces this branch in the text form.
    pub fn keyword(&self) -> &'static str {
        match &self.kind {
            BranchKind::Compress(_) => "compress",
            BranchKind::Select(_) => "select",
            BranchKind::Window(_) => "window",
            BranchKind::Index(_) => "index",
        }
    }
}
