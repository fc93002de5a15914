//! The canonical YAML form of a [`Spec`] (every field explicit), the twin of `format_spec`.

use std::fmt::Write as _;

use crate::format::{combine_name, format_float, kv_name, pool_name};
use crate::spec::{BranchKind, Spec};

/// Prints a spec in the YAML form; `parse_yaml(&to_yaml(s))` gives back `s`.
pub fn to_yaml(spec: &Spec) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "attention: {}", name(&spec.name));
    let _ = writeln!(out, "heads: {}/{}", spec.heads.q, spec.heads.kv);
    let _ = writeln!(out, "head_dim: {}/{}", spec.head_dim.qk, spec.head_dim.v);
    let _ = writeln!(out, "causal: {}", spec.causal);
    if let Some(s) = spec.scale {
        let _ = writeln!(out, "scale: {}", format_float(s.get()));
    }
    out.push_str("branches:\n");
    for b in &spec.branches {
        let fields = match &b.kind {
            BranchKind::Compress(c) => format!(
                "block: {}, stride: {}, pool: {}",
                c.block,
                c.stride,
                pool_name(c.pool)
            ),
            BranchKind::Select(s) => format!(
                "block: {}, top: {}, scored_by: {}, keep_first: {}, keep_last: {}",
                s.block,
                s.top,
                name(&s.scored_by),
                s.keep_first,
                s.keep_last
            ),
            BranchKind::Window(w) => format!("size: {}", w.size),
        };
        let _ = writeln!(
            out,
            "  - {{{}: {}, {fields}, kv: {}}}",
            b.keyword(),
            name(&b.name),
            kv_name(b.kv)
        );
    }
    let _ = writeln!(
        out,
        "combine: {}({})",
        combine_name(spec.combine.mode),
        spec.combine.branches.join(", ")
    );
    out
}

/// A name as a YAML scalar: quoted where YAML would read the bare word as null or a boolean.
fn name(n: &str) -> String {
    const SPECIAL: &[&str] = &["null", "true", "false", "yes", "no", "on", "off", "y", "n"];
    if SPECIAL.contains(&n.to_ascii_lowercase().as_str()) {
        format!("\"{n}\"")
    } else {
        n.to_string()
    }
}
