//! nsac-dsl: the spec language of nsac — grammar, AST with spans, YAML form, validation into
//! [`spec::Spec`], formatter and diagnostics. Knows nothing of backends (DESIGN §1).

pub mod problem;
pub mod spec;
