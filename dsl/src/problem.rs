//! The problem a spec is applied to: batch, sequence lengths, head overrides and dtype.
//!
//! These are call parameters, never spec parameters (docs/ARCHITECTURE.md §2): the same `Spec` runs
//! on any sequence length. A `Problem` is checked against its `Spec` by [`Problem::resolve`], which
//! yields the concrete sizes every backend, the oracle and the cost model work from.
//!
//! It also owns the size limits of the language ([`MAX_HEADS`], [`MAX_HEAD_DIM`],
//! [`MAX_EXTENT`]; `dsl/LANGUAGE.md` documents them): validation reports a spec over them (E023),
//! `resolve` rejects head overrides over them and a problem whose element counts do not fit
//! the address space, so no caller ever sizes a buffer from an overflowed product.

use crate::spec::{BranchKind, HeadDim, Heads, Spec};

/// The most query heads (and key/value heads) a spec or a problem may have.
pub const MAX_HEADS: u32 = 4096;
/// The largest head dimension (query-key or value).
pub const MAX_HEAD_DIM: u32 = 1024;
/// The largest block, stride, top, window size, `keep_first` or `keep_last` (2^24).
pub const MAX_EXTENT: u32 = 1 << 24;
/// The most tokens B·T, and the most elements of `q` or `o` (B·T·HQ·D), of a problem (2^56):
/// far above any memory budget (the cost model still counts such problems), and small enough
/// that element counts times 8 bytes never overflow 64 bits.
pub const MAX_ELEMENTS: u128 = 1 << 56;

/// The limit of the spec key `key` (`heads`, `head_dim`, or a branch size).
pub fn limit_of(key: &str) -> u32 {
    match key {
        "heads" => MAX_HEADS,
        // An index branch's dimension is a head dimension.
        "dim" => MAX_HEAD_DIM,
        "head_dim" => MAX_HEAD_DIM,
        _ => MAX_EXTENT,
    }
}

/// The element type of the tensors a kernel reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DType {
    #[default]
    F32,
    F16,
    Bf16,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::Bf16 => 2,
        }
    }
    /// The lower-case name used on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::Bf16 => "bf16",
        }
    }
}

/// How the sequences of one call are laid out.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Sequences {
    /// `batch` sequences of `len` tokens each: tensors [B, T, …].
    Batched { batch: usize, len: usize },
    /// Variable-length segments packed into B = 1; `cu_seqlens` has N+1 ascending offsets
    /// starting at 0, the last being the total length.
    Varlen { cu_seqlens: Vec<usize> },
}

/// One call's parameters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Problem {
    pub sequences: Sequences,
    /// Overrides the spec's heads.
    pub heads: Option<Heads>,
    /// Overrides the spec's head dims.
    pub head_dim: Option<HeadDim>,
    pub dtype: DType,
}

/// A problem with every size made concrete.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Shape {
    /// Leading tensor dimension (1 for varlen).
    pub batch: usize,
    /// Tokens per batch row (total tokens for varlen).
    pub seq_len: usize,
    /// Segment boundaries within one row: `[0, T]` per row for batched problems,
    /// `cu_seqlens` for varlen.
    pub segments: Vec<(usize, usize)>,
    pub heads: Heads,
    pub head_dim: HeadDim,
    pub dtype: DType,
}

/// Why a problem does not fit a spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProblemError {
    #[error("sequence length must be at least 1")]
    EmptySequence,
    #[error("batch must be at least 1")]
    EmptyBatch,
    #[error("cu_seqlens must start at 0, ascend, and hold at least two entries (got {0:?})")]
    BadCuSeqlens(Vec<usize>),
    #[error("heads must be positive and query heads ({q}) a multiple of kv heads ({kv})")]
    BadHeads { q: u32, kv: u32 },
    #[error("head dims must be positive (got {qk}/{v})")]
    BadHeadDim { qk: u32, v: u32 },
    #[error("heads {q}/{kv} exceed the limit of {max} heads")]
    TooManyHeads { q: u32, kv: u32, max: u32 },
    #[error("head dims {qk}/{v} exceed the limit of {max}")]
    HeadDimTooLarge { qk: u32, v: u32, max: u32 },
    #[error("`{key}` = {value} of branch `{branch}` exceeds the limit of {max}")]
    ExtentTooLarge {
        branch: String,
        key: &'static str,
        value: u32,
        max: u32,
    },
    #[error("{what} would be {elements}, over the limit of {max}")]
    TooLarge {
        what: &'static str,
        elements: u128,
        max: u128,
    },
}

impl Problem {
    /// A batched problem with the spec's own heads and dims, in f32.
    pub fn batched(batch: usize, len: usize) -> Self {
        Problem {
            sequences: Sequences::Batched { batch, len },
            heads: None,
            head_dim: None,
            dtype: DType::F32,
        }
    }

    /// A varlen problem (B = 1) with the spec's own heads and dims, in f32.
    pub fn varlen(cu_seqlens: Vec<usize>) -> Self {
        Problem {
            sequences: Sequences::Varlen { cu_seqlens },
            heads: None,
            head_dim: None,
            dtype: DType::F32,
        }
    }

    /// Checks the problem and makes every size concrete.
    pub fn resolve(&self, spec: &Spec) -> Result<Shape, ProblemError> {
        let heads = self.heads.unwrap_or(spec.heads);
        if heads.q == 0 || heads.kv == 0 || !heads.q.is_multiple_of(heads.kv) {
            return Err(ProblemError::BadHeads {
                q: heads.q,
                kv: heads.kv,
            });
        }
        if heads.q > MAX_HEADS || heads.kv > MAX_HEADS {
            return Err(ProblemError::TooManyHeads {
                q: heads.q,
                kv: heads.kv,
                max: MAX_HEADS,
            });
        }
        let head_dim = self.head_dim.unwrap_or(spec.head_dim);
        if head_dim.qk == 0 || head_dim.v == 0 {
            return Err(ProblemError::BadHeadDim {
                qk: head_dim.qk,
                v: head_dim.v,
            });
        }
        if head_dim.qk > MAX_HEAD_DIM || head_dim.v > MAX_HEAD_DIM {
            return Err(ProblemError::HeadDimTooLarge {
                qk: head_dim.qk,
                v: head_dim.v,
                max: MAX_HEAD_DIM,
            });
        }
        check_extents(spec)?;
        let (batch, seq_len, segments) = match &self.sequences {
            Sequences::Batched { batch, len } => {
                if *batch == 0 {
                    return Err(ProblemError::EmptyBatch);
                }
                if *len == 0 {
                    return Err(ProblemError::EmptySequence);
                }
                (*batch, *len, vec![(0, *len)])
            }
            Sequences::Varlen { cu_seqlens } => {
                let ok = cu_seqlens.len() >= 2
                    && cu_seqlens[0] == 0
                    && cu_seqlens.windows(2).all(|w| w[0] < w[1]);
                if !ok {
                    return Err(ProblemError::BadCuSeqlens(cu_seqlens.clone()));
                }
                let segments = cu_seqlens.windows(2).map(|w| (w[0], w[1])).collect();
                (1, cu_seqlens[cu_seqlens.len() - 1], segments)
            }
        };
        check_elements(batch, seq_len, heads, head_dim)?;
        Ok(Shape {
            batch,
            seq_len,
            segments,
            heads,
            head_dim,
            dtype: self.dtype,
        })
    }
}

/// Every branch size of `spec` within [`MAX_EXTENT`] (validation guarantees it for parsed
/// specs; a `Spec` built in code is checked here).
fn check_extents(spec: &Spec) -> Result<(), ProblemError> {
    for br in &spec.branches {
        let sizes: &[(&'static str, u32)] = match &br.kind {
            BranchKind::Compress(c) => &[("block", c.block), ("stride", c.stride)],
            BranchKind::Select(s) => &[
                ("block", s.block),
                ("top", s.top),
                ("keep_first", s.keep_first),
                ("keep_last", s.keep_last),
            ],
            BranchKind::Window(w) => &[("size", w.size)],
            BranchKind::Index(i) => &[("heads", i.heads), ("dim", i.dim)],
        };
        if let Some(&(key, value)) = sizes.iter().find(|(k, v)| *v > limit_of(k)) {
            return Err(ProblemError::ExtentTooLarge {
                branch: br.name.clone(),
                key,
                value,
                max: limit_of(key),
            });
        }
    }
    Ok(())
}

/// The token count B·T and the largest tensors (B·T·HQ·D) within [`MAX_ELEMENTS`], computed
/// without overflow.
fn check_elements(
    batch: usize,
    seq_len: usize,
    heads: Heads,
    head_dim: HeadDim,
) -> Result<(), ProblemError> {
    let tokens = (batch as u128) * (seq_len as u128);
    let dim = u128::from(head_dim.qk.max(head_dim.v));
    let checks = [
        ("the token count B·T", tokens),
        (
            "the elements of q or o (B·T·HQ·D)",
            tokens * u128::from(heads.q) * dim,
        ),
    ];
    for (what, elements) in checks {
        if elements > MAX_ELEMENTS {
            return Err(ProblemError::TooLarge {
                what,
                elements,
                max: MAX_ELEMENTS,
            });
        }
    }
    Ok(())
}

impl Shape {
    /// Total query tokens over the whole call.
    pub fn tokens(&self) -> usize {
        self.batch * self.seq_len
    }

    /// The extents of the output `o` (and of its upstream gradient `do`): \[B, T, HQ, Dv\].
    pub fn output_dims(&self) -> [usize; 4] {
        [
            self.batch,
            self.seq_len,
            self.heads.q as usize,
            self.head_dim.v as usize,
        ]
    }
}
