//! Turns the shared problem flags (`--seq`, `--batch`, `--cu-seqlens`, `--heads`, `--head-dim`,
//! `--dtype`) into a `Problem` and resolves it against a spec.

use nsac_dsl::problem::{DType, Problem, Sequences, Shape};
use nsac_dsl::spec::{HeadDim, Heads, Spec};

use super::args::{DTypeArg, ProblemArgs};
use super::error::CliError;

impl From<DTypeArg> for DType {
    fn from(d: DTypeArg) -> Self {
        match d {
            DTypeArg::F32 => DType::F32,
            DTypeArg::F16 => DType::F16,
            DTypeArg::Bf16 => DType::Bf16,
        }
    }
}

/// The problem the flags describe; `cu_seqlens` read from an input file wins over the flags.
pub fn problem_from_args(args: &ProblemArgs, file_cu_seqlens: Option<Vec<usize>>) -> Problem {
    let sequences = match (file_cu_seqlens, &args.cu_seqlens, args.seq) {
        (Some(cu), _, _) => Sequences::Varlen { cu_seqlens: cu },
        (None, Some(cu), _) => Sequences::Varlen { cu_seqlens: cu.clone() },
        (None, None, seq) => Sequences::Batched { batch: args.batch, len: seq.unwrap_or(0) },
    };
    Problem {
        sequences,
        heads: args.heads.map(|(q, kv)| Heads { q, kv }),
        head_dim: args.head_dim.map(|(qk, v)| HeadDim { qk, v }),
        dtype: args.dtype.into(),
    }
}

/// Resolves the flags against `spec` into concrete sizes.
pub fn resolve(spec: &Spec, args: &ProblemArgs) -> Result<Shape, CliError> {
    Ok(problem_from_args(args, None).resolve(spec)?)
}

/// A one-line human description of a shape.
pub fn describe(shape: &Shape) -> String {
    let seqs = if shape.segments.len() > 1 {
        format!("{} segments, {} tokens", shape.segments.len(), shape.seq_len)
    } else {
        format!("B={} T={}", shape.batch, shape.seq_len)
    };
    format!(
        "{seqs}, heads {}/{}, head_dim {}/{}, {}",
        shape.heads.q,
        shape.heads.kv,
        shape.head_dim.qk,
        shape.head_dim.v,
        shape.dtype.name()
    )
}
