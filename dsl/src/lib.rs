//! nsac-dsl: the spec language of nsac — grammar, AST with spans, YAML form, validation into
//! [`spec::Spec`], formatter and diagnostics. Knows nothing of backends (docs/ARCHITECTURE.md §1).
//!
//! # The language, for a user
//!
//! A spec names one sparse attention and lists its branches (full guide: `dsl/LANGUAGE.md`):
//!
//! ```text
//! # kernels/nsa-paper.nsa — NSA as configured in the paper (arXiv 2502.11089, §4.1)
//! attention nsa_paper {
//!     heads    = 64 / 4      # query heads / key-value heads (`heads = 16` means 16 / 16)
//!     head_dim = 192 / 128   # query-key dim / value dim      (`head_dim = 128` means 128 / 128)
//!     causal   = true        # optional, default true
//!     scale    = 0.0883      # optional, default 1/sqrt(query-key dim)
//!
//!     compress cmp { block = 32, stride = 16, pool = mean }   # stride: default block; pool: mean|weighted|linear
//!     select   slc { block = 64, top = 16, scored_by = cmp, keep_first = 1, keep_last = 2 }
//!     window   win { size = 512 }                             # any branch may add `kv = own`
//!
//!     combine = gate(cmp, slc, win)                           # or sum(…)
//! }
//! ```
//!
//! The YAML form (`.yaml`/`.yml`) carries the same content (see [`yaml`](crate::parse_yaml)).
//! Validation reports every problem at once, each with a caret on the text to fix
//! ([`diagnostics::render`]).
//!
//! # Entry points
//! - [`parse_text`], [`parse_yaml`]: source → [`Spec`] or [`SpecError`];
//! - [`load`]: a file by extension; its [`LoadError`] keeps the text for rendering;
//! - [`format::format_spec`], [`format::format_source`]: canonical text, comments preserved;
//! - [`canonical_hash`]: stable hash of the canonical text (tuning DB key);
//! - [`to_yaml`]: the YAML twin of a spec;
//! - `arbitrary::valid_spec()` (feature `arbitrary`): proptest strategy of valid specs.

pub mod ast;
pub mod diagnostics;
mod emit_yaml;
pub mod error;
pub mod format;
pub mod fs_policy;
mod hash;
pub mod parser;
pub mod problem;
pub mod source;
pub mod spec;
pub mod validate;
pub mod yaml;

#[cfg(any(test, feature = "arbitrary"))]
pub mod arbitrary;
#[cfg(test)]
mod properties;

pub use emit_yaml::to_yaml;
pub use error::{Diagnostic, DiagnosticKind, Label, SpecError};
pub use hash::canonical_hash;
pub use source::{LoadError, SourceFile, SourceKind, load};
pub use spec::Spec;

/// Parses and validates the text form (`.nsa`).
pub fn parse_text(source: &str) -> Result<Spec, SpecError> {
    validate::validate(&parser::parse_document(source)?)
}

/// Parses and validates the YAML form (`.yaml`/`.yml`).
pub fn parse_yaml(source: &str) -> Result<Spec, SpecError> {
    validate::validate(&yaml::parse_document(source)?)
}
