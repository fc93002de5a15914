//! Launch-time values of the generated kernels: their typed parameters ([`Param`]: device
//! buffers, then `u32` sizes), the symbolic launch geometry the manifest carries per kernel
//! ([`Geometry`]: grid and dynamic shared memory as small formulas of the call's tokens and
//! longest segment), and its evaluation for one call ([`LaunchDims`]). The PTX never holds a
//! length, so a launcher (the CUDA runtime, `bench/gpu/nsac_ptx.py`) computes these per call.

use serde::{Deserialize, Serialize};

use super::PtxError;
use super::lowering::CallSizes;

/// A run-time size a kernel takes as a `.param .u32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scalar {
    /// Tokens of the call (B·T).
    Ntok,
    /// Bytes of one warp's top-k score array in dynamic shared memory:
    /// `align16(4 · ceil(max_len / select block))` ([`Geometry::score_bytes`]).
    ScoreBytes,
}

impl Scalar {
    /// The parameter's name in the PTX (`<kernel>_param_<name>`) and the manifest.
    pub fn name(self) -> &'static str {
        match self {
            Scalar::Ntok => "ntok",
            Scalar::ScoreBytes => "score_bytes",
        }
    }
}

/// One kernel parameter, in order: device buffers (64-bit pointers) first, then `u32` sizes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Param {
    /// A buffer of the manifest, by name.
    Buffer { name: String },
    /// A run-time size.
    U32 { name: Scalar },
}

impl Param {
    pub fn buffer(name: &str) -> Param {
        Param::Buffer {
            name: name.to_string(),
        }
    }

    /// The parameter's name (a buffer's, or the size's).
    pub fn name(&self) -> &str {
        match self {
            Param::Buffer { name } => name,
            Param::U32 { name } => name.name(),
        }
    }
}

/// `grid.x = ceil(tokens · per_token / per_block) · times`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GridRule {
    pub per_token: u32,
    pub per_block: u32,
    pub times: u32,
}

/// `dynamic shared bytes = bytes + score_arrays · score_bytes`, with `score_bytes` =
/// `align16(4 · ceil(max_len / score_block))` (no score arrays: `score_block` = 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedRule {
    pub bytes: u32,
    pub score_arrays: u32,
    pub score_block: u32,
}

/// How a kernel's launch follows from the call: a 1-D grid over the call's tokens, a fixed
/// block, and dynamic shared memory that may grow with the longest segment (top-k scores).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Geometry {
    pub grid_x: GridRule,
    pub block_x: u32,
    pub shared: SharedRule,
}

/// One kernel's launch for one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchDims {
    pub grid: u32,
    pub block: u32,
    pub shared_bytes: u32,
    /// The values of the kernel's `u32` parameters, in order.
    pub scalars: Vec<u32>,
}

impl Geometry {
    /// A grid of `ceil(tokens · per_token / per_block) · times` blocks of `block_x` threads,
    /// `bytes` of dynamic shared memory.
    pub fn new(per_token: u32, per_block: u32, times: u32, block_x: u32, bytes: u32) -> Self {
        Geometry {
            grid_x: GridRule {
                per_token,
                per_block,
                times,
            },
            block_x,
            shared: SharedRule {
                bytes,
                score_arrays: 0,
                score_block: 0,
            },
        }
    }

    /// Adds `arrays` top-k score arrays of candidate blocks of `block` keys to the shared bytes.
    pub fn with_scores(mut self, arrays: u32, block: u32) -> Self {
        self.shared.score_arrays = arrays;
        self.shared.score_block = block;
        self
    }

    /// The grid size for `tokens`.
    pub fn grid(&self, tokens: u64) -> u64 {
        let g = &self.grid_x;
        (tokens * u64::from(g.per_token)).div_ceil(u64::from(g.per_block.max(1)))
            * u64::from(g.times)
    }

    /// Bytes of one score array for a longest segment of `max_len` (0 without score arrays).
    pub fn score_bytes(&self, max_len: u64) -> u64 {
        match self.shared.score_block {
            0 => 0,
            block => (4 * max_len.div_ceil(u64::from(block))).next_multiple_of(16),
        }
    }

    /// The dynamic shared bytes for a longest segment of `max_len`.
    pub fn shared_bytes(&self, max_len: u64) -> u64 {
        u64::from(self.shared.bytes)
            + u64::from(self.shared.score_arrays) * self.score_bytes(max_len)
    }

    /// The launch of a kernel with parameters `params` for a call of `sizes` (`max_tokens`:
    /// the most tokens the kernels can index, [`super::Manifest::max_tokens`]).
    pub fn evaluate(
        &self,
        params: &[Param],
        sizes: CallSizes,
        max_tokens: u64,
    ) -> Result<LaunchDims, PtxError> {
        if sizes.tokens == 0 {
            return Err(PtxError::Unsupported("a call without tokens".into()));
        }
        if sizes.tokens > max_tokens {
            return Err(PtxError::TooManyTokens {
                tokens: sizes.tokens,
                max: max_tokens,
            });
        }
        let fit =
            |v: u64, what: &'static str| u32::try_from(v).map_err(|_| PtxError::TooLarge(what));
        let scalars = params
            .iter()
            .filter_map(|p| match p {
                Param::U32 { name } => Some(*name),
                Param::Buffer { .. } => None,
            })
            .map(|s| match s {
                Scalar::Ntok => fit(sizes.tokens, "token count"),
                Scalar::ScoreBytes => fit(self.score_bytes(sizes.max_len), "top-k score array"),
            })
            .collect::<Result<Vec<u32>, _>>()?;
        Ok(LaunchDims {
            grid: fit(self.grid(sizes.tokens), "grid")?,
            block: self.block_x,
            shared_bytes: fit(self.shared_bytes(sizes.max_len), "shared memory")?,
            scalars,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ptx::SEG;

    #[test]
    fn geometry_follows_tokens_and_the_longest_segment() {
        let g = Geometry::new(4, 8, 2, 256, 1000).with_scores(8, 64);
        assert_eq!(g.grid(100), 100); // ceil(400 / 8) * 2
        assert_eq!(g.grid(101), 102);
        assert_eq!(g.score_bytes(64), 16);
        assert_eq!(g.score_bytes(65 * 64), 272); // 65 blocks → 260 bytes → 272
        assert_eq!(g.shared_bytes(65 * 64), 1000 + 8 * 272);
        let params = [
            Param::buffer(SEG),
            Param::U32 { name: Scalar::Ntok },
            Param::U32 {
                name: Scalar::ScoreBytes,
            },
        ];
        let l = g
            .evaluate(
                &params,
                CallSizes {
                    tokens: 101,
                    max_len: 65 * 64,
                },
                1 << 20,
            )
            .expect("fits");
        assert_eq!(l.scalars, [101, 272]);
        assert_eq!(
            (l.grid, l.block, l.shared_bytes),
            (102, 256, 1000 + 8 * 272)
        );
        let too_many = g.evaluate(
            &params,
            CallSizes {
                tokens: 1001,
                max_len: 7,
            },
            1000,
        );
        assert_eq!(
            too_many,
            Err(PtxError::TooManyTokens {
                tokens: 1001,
                max: 1000
            })
        );
        // no score arrays: the longest segment does not matter
        let flat = Geometry::new(1, 1, 1, 32, 0);
        assert_eq!(flat.shared_bytes(1 << 30), 0);
    }

    #[test]
    fn params_serialize_with_their_kind() {
        let p = [Param::buffer("q"), Param::U32 { name: Scalar::Ntok }];
        let json = serde_json::to_string(&p).expect("serializes");
        assert_eq!(
            json,
            r#"[{"kind":"buffer","name":"q"},{"kind":"u32","name":"ntok"}]"#
        );
        let back: Vec<Param> = serde_json::from_str(&json).expect("decodes");
        assert_eq!(back, p);
    }
}
