//! `GpuVariant`: the HOW of the GPU kernels — thread-block shapes, staging chunk sizes and
//! register caps. Every Variant computes the same function (docs/ARCHITECTURE.md §1); the tuner
//! (`nsac_runtime::tune::gpu`) searches them. Plain data: serializable (fields a stored
//! Variant lacks take their defaults), comparable, with `FIELD=VALUE,…` text for `--variant`.

use serde::{Deserialize, Serialize};

/// Tuning knobs of the PTX backend. The default was tuned by hand for nsa-fla at 64k on an H200
/// (BENCHMARKS.md, GPU).
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
    /// Consecutive tokens per thread block of the tensor-core top-k scoring (their score arrays
    /// grow with the call's longest segment; a call whose scores do not fit the device's shared
    /// memory is refused at launch): 1..=32.
    pub score_tokens: u32,
    /// Pipeline depth of the shared compressed-key chunks (tensor-core compressed attention and
    /// top-k scoring): chunks in flight with `cp.async` while one is consumed; 2 (double
    /// buffering) ..= 3.
    pub compress_stages: u32,
    /// 1: the gated/summed combine runs in the epilogue of the last branch's kernel (which reads
    /// the other branches' outputs and writes the final output), where that kernel supports it;
    /// 0: a separate combine kernel.
    pub fuse_combine: u32,
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
            compress_stages: 2,
            fuse_combine: 0,
        }
    }
}

/// The field names `FIELD=VALUE` may use, in order.
pub const GPU_VARIANT_FIELDS: [&str; 8] = [
    "warps_per_block",
    "select_tokens",
    "select_chunk",
    "compress_tokens",
    "compress_max_regs",
    "score_tokens",
    "compress_stages",
    "fuse_combine",
];

/// Why a GPU variant is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GpuVariantError {
    #[error(
        "unknown GPU variant field `{0}` (fields: warps_per_block, select_tokens, select_chunk, compress_tokens, compress_max_regs, score_tokens, compress_stages, fuse_combine)"
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
        for (i, name) in GPU_VARIANT_FIELDS.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            write!(f, "{sep}{name}={}", self.get(name).unwrap_or_default())?;
        }
        Ok(())
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
            let name = name.trim();
            let field = v
                .field_mut(name)
                .ok_or_else(|| GpuVariantError::UnknownField(name.to_string()))?;
            *field = value;
        }
        v.validate()?;
        Ok(v)
    }

    /// The value of field `name` (one of [`GPU_VARIANT_FIELDS`]).
    pub fn get(&self, name: &str) -> Option<u32> {
        let mut copy = *self;
        copy.field_mut(name).map(|f| *f)
    }

    /// Field `name` (one of [`GPU_VARIANT_FIELDS`]), to set.
    pub fn field_mut(&mut self, name: &str) -> Option<&mut u32> {
        Some(match name {
            "warps_per_block" => &mut self.warps_per_block,
            "select_tokens" => &mut self.select_tokens,
            "select_chunk" => &mut self.select_chunk,
            "compress_tokens" => &mut self.compress_tokens,
            "compress_max_regs" => &mut self.compress_max_regs,
            "score_tokens" => &mut self.score_tokens,
            "compress_stages" => &mut self.compress_stages,
            "fuse_combine" => &mut self.fuse_combine,
            _ => return None,
        })
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
        check(
            "compress_stages",
            self.compress_stages,
            (2..=3).contains(&self.compress_stages),
            "2..=3",
        )?;
        check(
            "fuse_combine",
            self.fuse_combine,
            self.fuse_combine <= 1,
            "0 (separate kernel) or 1 (fused)",
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
        assert!(GpuVariant::parse("compress_stages=1").is_err());
        assert!(GpuVariant::parse("fuse_combine=2").is_err());
        let every = GpuVariant::parse("compress_stages=3,fuse_combine=1").expect("valid");
        assert_eq!((every.compress_stages, every.fuse_combine), (3, 1));
        for name in GPU_VARIANT_FIELDS {
            assert!(v.get(name).is_some(), "{name} has no accessor");
            assert!(
                v.to_string().contains(&format!("{name}=")),
                "{name} not printed"
            );
        }
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
