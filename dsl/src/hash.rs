//! A stable hash of a spec: xxh3-64 of its canonical text (`format::format_spec`).
//!
//! The tuner keys its database on it, so it must not change across runs, platforms or Rust
//! versions — hence a fixed algorithm over fixed text, never `DefaultHasher`.

use crate::spec::Spec;

/// The stable 64-bit hash of a spec's canonical text.
pub fn canonical_hash(spec: &Spec) -> u64 {
    xxhash_rust::xxh3::xxh3_64(crate::format::format_spec(spec).as_bytes())
}
