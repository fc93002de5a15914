//! `GpuVariant`: the HOW of the GPU kernels — thread-block shapes, staging chunk sizes and
//! register caps. Every Variant computes the same function (DESIGN §1); the tuner
//! (`nsac_runtime::tune::gpu`) searches them. Plain data: serializable (fields a stored
//! Variant lacks take their defaults), comparable, with `FIELD=VALUE,…` text for `--variant`.

use serde::{Deserialize, Serialize};

/// Tuning knobs of the PTX backend. The default is the hand-tuned version-3 configuration
/// (H200, nsa-fla at 64k).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct GpuVariant {
    /// Warps per thread block of the scalar warp-per-row kernels (pool, scalar attention,
    /// combine): 1..=32.
    pub warps_per_block: u32,
    /// Consecutive tokens (one warp each) per thread block of the tensor-core selected
    /// attention: 1..=32.
    pub select_tokens: u32,
    /// Keys staged in shared memory per step of the tensor-core selected attention: a
    /// multiple of 16 in 16..=128.
    pub select_chunk: u32,
    /// Consecutive tokens (one warp each) per thread block of the tensor-core compressed
    /// attention, which share each staged chunk of compressed keys: 1..=32.
    pub compress_tokens: u32,
    /// Register cap (`.maxnreg`) of the tensor-core compressed attention; 0 leaves it to
    /// ptxas (bounded by the block size): 0 or 32..=255.
    pub compress_max_regs: u32,
    /// The most consecutive tokens per thread block of the tensor-core top-n scoring (fewer
    /// when their block scores would not fit shared memory): 1..=32.
    pub score_tokens: u32,
}

impl Default for GpuVariant {
    fn default() -> Self {
        GpuVariant {
            warps_per_block: 4,
            select_tokens: 8,
            select_chunk: 32,
            compress_tokens: 8,
            compress_max_regs: 128,
            score_tokens: 8,
        }
    }
}

/// The field names `FIELD=VALUE` may use, in order.
pub const GPU_VARIANT_FIELDS: [&str; 6] = [
    "warps_per_block",
    "select_tokens",
    "select_chunk",
    "compress_tokens",
    "compress_max_regs",
    "score_tokens",
];

/// Why a GPU variant is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GpuVariantError {
    #[error(
        "unknown GPU variant field `{0}` (fields: warps_per_block, select_tokens, select_chunk, compress_tokens, compress_max_regs, score_tokens)"
    )]
    UnknownField(String),
    #[error("variant setting `{0}` is not FIELD=NUMBER")]
    Malformed(String),
    #[error("GPU variant field `{field}` = {value} is outside {allowed}")]
    OutOfRange {
        field: &'static str,
        value: u32,
        allowed: &'static str,
    },
}

impl std::fmt::Display for GpuVariant {
    /// The `FIELD=VALUE,…` form [`GpuVariant::parse`] reads.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "warps_per_block={},select_tokens={},select_chunk={},compress_tokens={},compress_max_regs={},score_tokens={}",
            self.warps_per_block,
            self.select_tokens,
            self.select_chunk,
            self.compress_tokens,
            self.compress_max_regs,
            self.score_tokens
        )
    }
}

impl GpuVariant {
    /// Reads `FIELD=VALUE,…` (e.g. `select_tokens=16,select_chunk=16`); fields not named keep
    /// their default. The result is validated.
    pub fn parse(text: &str) -> Result<GpuVariant, GpuVariantError> {
        let mut v = GpuVariant::default();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, value) = item
                .split_once('=')
                .ok_or_else(|| GpuVariantError::Malformed(item.to_string()))?;
            let value: u32 = value
                .trim()
                .parse()
                .map_err(|_| GpuVariantError::Malformed(item.to_string()))?;
            let field = match name.trim() {
                "warps_per_block" => &mut v.warps_per_block,
                "select_tokens" => &mut v.select_tokens,
                "select_chunk" => &mut v.select_chunk,
                "compress_tokens" => &mut v.compress_tokens,
                "compress_max_regs" => &mut v.compress_max_regs,
                "score_tokens" => &mut v.score_tokens,
                other => return Err(GpuVariantError::UnknownField(other.to_string())),
            };
            *field = value;
        }
        v.validate()?;
        Ok(v)
    }

    /// Checks every field against its documented range.
    pub fn validate(&self) -> Result<(), GpuVariantError> {
        let warps = |field, value: u32| check(field, value, (1..=32).contains(&value), "1..=32");
        warps("warps_per_block", self.warps_per_block)?;
        warps("select_tokens", self.select_tokens)?;
        warps("compress_tokens", self.compress_tokens)?;
        warps("score_tokens", self.score_tokens)?;
        check(
            "select_chunk",
            self.select_chunk,
            self.select_chunk.is_multiple_of(16) && (16..=128).contains(&self.select_chunk),
            "multiples of 16 in 16..=128",
        )?;
        check(
            "compress_max_regs",
            self.compress_max_regs,
            self.compress_max_regs == 0 || (32..=255).contains(&self.compress_max_regs),
            "0 (no cap) or 32..=255",
        )?;
        Ok(())
    }
}

fn check(
    field: &'static str,
    value: u32,
    ok: bool,
    allowed: &'static str,
) -> Result<(), GpuVariantError> {
    if ok {
        Ok(())
    } else {
        Err(GpuVariantError::OutOfRange {
            field,
            value,
            allowed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_round_trips_and_names_bad_fields() {
        let v = GpuVariant::parse("select_tokens=16, select_chunk=64,compress_max_regs=0")
            .expect("valid");
        assert_eq!(v.select_tokens, 16);
        assert_eq!(v.select_chunk, 64);
        assert_eq!(v.compress_max_regs, 0);
        assert_eq!(v.warps_per_block, GpuVariant::default().warps_per_block);
        assert_eq!(GpuVariant::parse(&v.to_string()), Ok(v));
        assert!(matches!(
            GpuVariant::parse("tokens=3"),
            Err(GpuVariantError::UnknownField(f)) if f == "tokens"
        ));
        assert!(matches!(
            GpuVariant::parse("select_chunk=24"),
            Err(GpuVariantError::OutOfRange {
                field: "select_chunk",
                ..
            })
        ));
        assert!(matches!(
            GpuVariant::parse("select_tokens"),
            Err(GpuVariantError::Malformed(_))
        ));
        assert!(GpuVariant::parse("compress_max_regs=16").is_err());
        assert!(GpuVariant::parse("score_tokens=33").is_err());
    }

    #[test]
    fn stored_variants_without_new_fields_take_defaults() {
        let old: GpuVariant = serde_json::from_str(r#"{"warps_per_block": 2}"#).expect("decodes");
        assert_eq!(
            old,
            GpuVariant {
                warps_per_block: 2,
                ..GpuVariant::default()
            }
        );
    }
}
