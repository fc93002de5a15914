//! The canonical YAML form of a [`Spec`] (every field explicit), the twin of `format_spec`.

use std::fmt::Write as _;

use crate::format::{combine_name, format_float, kv_name, pool_name};
use crate::spec::{BranchKind, Scorer, Spec};

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
            BranchKind::Select(s) => {
                let mut f = format!("block: {}, top: {}", s.block, s.top);
                match &s.scored_by {
                    Scorer::Branch(by) => {
                        let _ = write!(
                            f,
                            ", scored_by: {}, keep_first: {}, keep_last: {}",
                            name(by),
                            s.keep_first,
                            s.keep_last
                        );
                    }
                    Scorer::Given => f.push_str(", given: true"),
                }
                if let Some(w) = &s.within {
                    let _ = write!(f, ", within: {}", name(w));
                }
                f
            }
            BranchKind::Window(w) => format!("size: {}", w.size),
            BranchKind::Index(i) => format!("heads: {}, dim: {}", i.heads, i.dim),
        };
        let kv = if b.attends() {
            format!(", kv: {}", kv_name(b.kv))
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "  - {{{}: {}, {fields}{kv}}}",
            b.keyword(),
            name(&b.name),
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
