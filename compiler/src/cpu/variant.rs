//! `CpuVariant`: the HOW of a CPU kernel — register-tile shape, key tiling, unrolling and
//! parallel grain. Every variant of a plan computes the same function (docs/ARCHITECTURE.md §1);
//! the tuner enumerates [`candidates`] and measures them.

use serde::{Deserialize, Serialize};

use crate::ir::Plan;

/// Tuning knobs of the CPU backend. Plain data: serializable, comparable, with a default that is
/// good on a 16-register x86-64 (SSE/AVX xmm) machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CpuVariant {
    /// Query rows (heads of a GQA group) per register tile in q·kᵀ and p·v: 1..=4.
    pub rows: u32,
    /// F32X4 key vectors (4 keys each) per register tile in q·kᵀ: 1..=4.
    pub key_vectors: u32,
    /// F32X4 value vectors (4 dims each) per register tile in p·v: 1..=4.
    pub value_vectors: u32,
    /// Keys per online-softmax tile (chunk) of the compressed and window branches (multiple
    /// of 4, ≥ 4).
    pub key_tile: u32,
    /// Inner-loop unroll factor over the reduction dimension (1, 2 or 4).
    pub unroll: u32,
    /// Query positions per parallel work item (≥ 1).
    pub query_chunk: u32,
    /// Backward: keys per tile of the dq and dK/dV drivers of the compressed and window
    /// branches, and keys per dK/dV work item (multiple of 4, 4..=1024).
    #[serde(default = "default_bwd_key_tile")]
    pub bwd_key_tile: u32,
    /// Backward: query positions per parallel work item of the dq drivers and the combine's
    /// backward (1..=4096).
    #[serde(default = "default_bwd_query_chunk")]
    pub bwd_query_chunk: u32,
}

fn default_bwd_key_tile() -> u32 {
    64
}

fn default_bwd_query_chunk() -> u32 {
    16
}

impl Default for CpuVariant {
    fn default() -> Self {
        CpuVariant {
            rows: 4,
            key_vectors: 2,
            value_vectors: 2,
            key_tile: 64,
            unroll: 2,
            query_chunk: 16,
            bwd_key_tile: default_bwd_key_tile(),
            bwd_query_chunk: default_bwd_query_chunk(),
        }
    }
}

/// Why a variant is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VariantError {
    #[error(
        "unknown variant field `{0}` (fields: rows, key_vectors, value_vectors, key_tile, unroll, query_chunk, bwd_key_tile, bwd_query_chunk)"
    )]
    UnknownField(String),
    #[error("variant setting `{0}` is not FIELD=NUMBER")]
    Malformed(String),
    #[error("variant field `{field}` = {value} is outside {allowed}")]
    OutOfRange {
        field: &'static str,
        value: u32,
        allowed: &'static str,
    },
}

fn check(
    field: &'static str,
    value: u32,
    ok: bool,
    allowed: &'static str,
) -> Result<(), VariantError> {
    if ok {
        Ok(())
    } else {
        Err(VariantError::OutOfRange {
            field,
            value,
            allowed,
        })
    }
}

impl std::fmt::Display for CpuVariant {
    /// The `FIELD=VALUE,…` form [`CpuVariant::parse`] reads.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "rows={},key_vectors={},value_vectors={},key_tile={},unroll={},query_chunk={},bwd_key_tile={},bwd_query_chunk={}",
            self.rows,
            self.key_vectors,
            self.value_vectors,
            self.key_tile,
            self.unroll,
            self.query_chunk,
            self.bwd_key_tile,
            self.bwd_query_chunk
        )
    }
}

impl CpuVariant {
    /// Reads `FIELD=VALUE,…` (e.g. `rows=4,key_vectors=3`); fields not named keep their
    /// default. The result is validated.
    pub fn parse(text: &str) -> Result<CpuVariant, VariantError> {
        let mut v = CpuVariant::default();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, value) = item
                .split_once('=')
                .ok_or_else(|| VariantError::Malformed(item.to_string()))?;
            let value: u32 = value
                .trim()
                .parse()
                .map_err(|_| VariantError::Malformed(item.to_string()))?;
            let field = match name.trim() {
                "rows" => &mut v.rows,
                "key_vectors" => &mut v.key_vectors,
                "value_vectors" => &mut v.value_vectors,
                "key_tile" => &mut v.key_tile,
                "unroll" => &mut v.unroll,
                "query_chunk" => &mut v.query_chunk,
                "bwd_key_tile" => &mut v.bwd_key_tile,
                "bwd_query_chunk" => &mut v.bwd_query_chunk,
                other => return Err(VariantError::UnknownField(other.to_string())),
            };
            *field = value;
        }
        v.validate()?;
        Ok(v)
    }

    /// Checks every field against its documented range (the constraints the tuner must obey).
    pub fn validate(&self) -> Result<(), VariantError> {
        check("rows", self.rows, (1..=4).contains(&self.rows), "1..=4")?;
        check(
            "key_vectors",
            self.key_vectors,
            (1..=4).contains(&self.key_vectors),
            "1..=4",
        )?;
        check(
            "value_vectors",
            self.value_vectors,
            (1..=4).contains(&self.value_vectors),
            "1..=4",
        )?;
        check(
            "key_tile",
            self.key_tile,
            self.key_tile >= 4 && self.key_tile.is_multiple_of(4) && self.key_tile <= 4096,
            "multiples of 4 in 4..=4096",
        )?;
        check(
            "unroll",
            self.unroll,
            matches!(self.unroll, 1 | 2 | 4),
            "{1, 2, 4}",
        )?;
        check(
            "query_chunk",
            self.query_chunk,
            (1..=4096).contains(&self.query_chunk),
            "1..=4096",
        )?;
        check(
            "bwd_key_tile",
            self.bwd_key_tile,
            self.bwd_key_tile >= 4
                && self.bwd_key_tile.is_multiple_of(4)
                && self.bwd_key_tile <= 1024,
            "multiples of 4 in 4..=1024",
        )?;
        check(
            "bwd_query_chunk",
            self.bwd_query_chunk,
            (1..=4096).contains(&self.bwd_query_chunk),
            "1..=4096",
        )?;
        Ok(())
    }

    /// Number of live F32X4 registers the q·kᵀ and p·v register tiles need (accumulators plus
    /// the loaded vectors plus one broadcast); above 16 the x86-64 allocator spills.
    pub fn registers(&self) -> u32 {
        let qk = self.rows * self.key_vectors + self.key_vectors + 1;
        let pv = self.rows * self.value_vectors + self.value_vectors + 1;
        qk.max(pv)
    }
}

/// The candidate variants for a plan, in a stable order, the default first. Constraints every
/// candidate obeys: [`CpuVariant::validate`] passes and [`CpuVariant::registers`] ≤ 16; `rows`
/// is not larger than the GQA group (more rows than heads would only leave the tile empty).
pub fn candidates(plan: &Plan) -> Vec<CpuVariant> {
    let g = plan.consts.group as u32;
    let mut out = vec![CpuVariant::default()];
    for rows in [1u32, 2, 3, 4] {
        if rows > g.max(1) && rows != 1 {
            continue;
        }
        for key_vectors in [1u32, 2, 3, 4] {
            for value_vectors in [1u32, 2, 3, 4] {
                for key_tile in [32u32, 64, 128] {
                    for unroll in [1u32, 2, 4] {
                        let v = CpuVariant {
                            rows,
                            key_vectors,
                            value_vectors,
                            key_tile,
                            unroll,
                            ..CpuVariant::default()
                        };
                        if v.registers() <= 16 && v.validate().is_ok() && !out.contains(&v) {
                            out.push(v);
                        }
                    }
                }
            }
        }
    }
    out
}
