//! The tuning-DB key: which question a tuned Variant answers, and on what machine.
//!
//! The question is the spec (its canonical hash), the problem shape bucketed (sequence length
//! rounded up to a power of two; batch, heads and dims exact) and the dtype. The answer is only
//! trusted on the same device fingerprint and nsac version — the crate version and the code
//! generator's own hash ([`nsac_compiler::CODE_VERSION`]), since two builds of one release can
//! generate different code; a lookup that finds the question but not those retunes.

use super::fingerprint::DeviceFingerprint;
use nsac_dsl::Spec;
use nsac_dsl::problem::Shape;
use serde::{Deserialize, Serialize};

/// nsac's version, part of every key: a new compiler may generate different code. The crate
/// version alone does not say that (a development build changes the code generator without
/// changing it), so the code generator's hash follows it: `0.1.0+1f2e…`.
pub fn nsac_version() -> String {
    format!(
        "{}+{}",
        env!("CARGO_PKG_VERSION"),
        nsac_compiler::CODE_VERSION
    )
}

/// One tuning-DB key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TuneKey {
    /// The stable hash of the spec's canonical form.
    pub spec: String,
    pub shape: ShapeBucket,
    /// `f32`, `f16` or `bf16`.
    pub dtype: String,
    pub device: DeviceFingerprint,
    /// The nsac version that tuned it.
    pub nsac: String,
}

/// How the sequences are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    Batched,
    Varlen,
}

/// A problem shape with the sequence length rounded up to a power of two.
///
/// Batched: `batch` rows of `seq_len` tokens. Varlen: `batch` is the number of segments and
/// `seq_len` the longest segment, rounded up.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ShapeBucket {
    pub layout: Layout,
    pub batch: usize,
    pub seq_len: usize,
    pub heads_q: u32,
    pub heads_kv: u32,
    pub dim_qk: u32,
    pub dim_v: u32,
}

impl ShapeBucket {
    /// The bucket a resolved problem shape falls in.
    pub fn of(shape: &Shape) -> Self {
        let longest = shape
            .segments
            .iter()
            .map(|&(start, end)| end.saturating_sub(start))
            .max()
            .unwrap_or(shape.seq_len);
        let batched = shape.segments.len() == 1 && shape.segments[0] == (0, shape.seq_len);
        let (layout, batch, len) = if batched {
            (Layout::Batched, shape.batch, shape.seq_len)
        } else {
            (Layout::Varlen, shape.segments.len(), longest)
        };
        ShapeBucket {
            layout,
            batch,
            seq_len: len.checked_next_power_of_two().unwrap_or(len),
            heads_q: shape.heads.q,
            heads_kv: shape.heads.kv,
            dim_qk: shape.head_dim.qk,
            dim_v: shape.head_dim.v,
        }
    }
}

impl TuneKey {
    /// The key for `spec_hash` on `shape`, tuned on `device` by this nsac version.
    pub fn new(spec_hash: impl Into<String>, shape: &Shape, device: DeviceFingerprint) -> Self {
        TuneKey {
            spec: spec_hash.into(),
            shape: ShapeBucket::of(shape),
            dtype: shape.dtype.name().to_string(),
            device,
            nsac: nsac_version(),
        }
    }

    /// The key for `spec` (by [`nsac_dsl::canonical_hash`], as 16 hex digits) on `shape`.
    pub fn for_spec(spec: &Spec, shape: &Shape, device: DeviceFingerprint) -> Self {
        Self::new(spec_hash_hex(spec), shape, device)
    }

    /// Whether both keys ask the same question (spec, shape bucket, dtype), on any machine.
    pub fn same_question(&self, other: &TuneKey) -> bool {
        self.spec == other.spec && self.shape == other.shape && self.dtype == other.dtype
    }
}

/// The spec's stable canonical hash as 16 lower-case hex digits (the DB's `spec` field).
pub fn spec_hash_hex(spec: &Spec) -> String {
    format!("{:016x}", nsac_dsl::canonical_hash(spec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_names_the_release_and_the_code_generator() {
        let v = nsac_version();
        let (release, code) = v.split_once('+').expect("release+code");
        assert_eq!(release, env!("CARGO_PKG_VERSION"));
        assert_eq!(code, nsac_compiler::CODE_VERSION);
        assert_eq!(code.len(), 16, "{code}");
        assert!(code.bytes().all(|b| b.is_ascii_hexdigit()), "{code}");
    }
}
