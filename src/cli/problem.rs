//! Turns the shared problem flags (`--seq`, `--batch`, `--cu-seqlens`, `--heads`, `--head-dim`,
//! `--dtype`) into a `Problem`, filling what an inputs file already fixes.

use nsac_dsl::problem::{DType, Problem, Sequences, Shape};
use nsac_dsl::spec::{HeadDim, Heads};
use nsac_kernels::io::Inputs;

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

/// The problem the flags describe (no inputs file).
pub fn problem_from_args(args: &ProblemArgs) -> Result<Problem, CliError> {
    let sequences = match (&args.cu_seqlens, args.seq) {
        (Some(cu), _) => Sequences::Varlen {
            cu_seqlens: cu.clone(),
        },
        (None, Some(len)) => Sequences::Batched {
            batch: args.batch,
            len,
        },
        (None, None) => {
            return Err(CliError::Other(
                "the sequence length is missing: pass --seq N (or --cu-seqlens 0,A,B,…)".into(),
            ));
        }
    };
    Ok(Problem {
        sequences,
        heads: args.heads.map(|(q, kv)| Heads { q, kv }),
        head_dim: args.head_dim.map(|(qk, v)| HeadDim { qk, v }),
        dtype: args.dtype.into(),
    })
}

/// The problem an inputs file fixes: B, T, heads and dims from the shapes of `q`, `k`, `v`
/// (the flags, when given, must agree), `cu_seqlens` from the file.
pub fn problem_from_inputs(
    args: &ProblemArgs,
    inputs: &Inputs,
    cu_seqlens: Option<Vec<usize>>,
) -> Result<Problem, CliError> {
    let dims = |name: &str| -> Result<[usize; 4], CliError> {
        let t = inputs
            .get(name)
            .ok_or_else(|| CliError::Other(format!("the inputs file has no `{name}` tensor")))?;
        <[usize; 4]>::try_from(t.shape.as_slice()).map_err(|_| {
            CliError::Other(format!(
                "input `{name}` has shape {:?}; expected 4 dimensions [B, T, heads, dim]",
                t.shape
            ))
        })
    };
    let ([b, t, hq, dqk], [_, _, h, _], [_, _, _, dv]) = (dims("q")?, dims("k")?, dims("v")?);
    let narrow = |n: usize, what: &str| {
        u32::try_from(n).map_err(|_| CliError::Other(format!("{what} {n} is too large")))
    };
    let heads = Heads {
        q: narrow(hq, "query heads")?,
        kv: narrow(h, "kv heads")?,
    };
    let head_dim = HeadDim {
        qk: narrow(dqk, "head dim")?,
        v: narrow(dv, "value dim")?,
    };
    let mismatch = |flag: &str, flag_value: String, file_value: String| {
        CliError::Other(format!(
            "{flag} {flag_value} disagrees with the inputs file ({file_value})"
        ))
    };
    if let Some((q, kv)) = args.heads
        && (q, kv) != (heads.q, heads.kv)
    {
        return Err(mismatch(
            "--heads",
            format!("{q}/{kv}"),
            format!("{}/{}", heads.q, heads.kv),
        ));
    }
    if let Some((qk, v)) = args.head_dim
        && (qk, v) != (head_dim.qk, head_dim.v)
    {
        return Err(mismatch(
            "--head-dim",
            format!("{qk}/{v}"),
            format!("{}/{}", head_dim.qk, head_dim.v),
        ));
    }
    if let Some(seq) = args.seq
        && cu_seqlens.is_none()
        && seq != t
    {
        return Err(mismatch("--seq", seq.to_string(), format!("T = {t}")));
    }
    let sequences = match cu_seqlens {
        Some(cu_seqlens) => Sequences::Varlen { cu_seqlens },
        None => Sequences::Batched { batch: b, len: t },
    };
    Ok(Problem {
        sequences,
        heads: Some(heads),
        head_dim: Some(head_dim),
        dtype: args.dtype.into(),
    })
}

/// A one-line human description of a shape.
pub fn describe(shape: &Shape) -> String {
    let seqs = if shape.segments.len() > 1 {
        format!(
            "{} segments, {} tokens",
            shape.segments.len(),
            shape.seq_len
        )
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
