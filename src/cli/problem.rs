//! Turns the shared problem flags (`--seq`, `--batch`, `--cu-seqlens`, `--heads`, `--head-dim`,
//! `--dtype`) into a `Problem`, filling what an inputs file already fixes.

use nsac_dsl::Spec;
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

/// The problem the flags describe (no inputs file). `--seq`, `--batch` and `--cu-seqlens` are
/// checked here, so that their errors name the flag.
pub fn problem_from_args(args: &ProblemArgs) -> Result<Problem, CliError> {
    let sequences = match (&args.cu_seqlens, args.seq) {
        (Some(cu), _) => {
            check_cu_seqlens(cu, "--cu-seqlens")?;
            Sequences::Varlen {
                cu_seqlens: cu.clone(),
            }
        }
        (None, Some(len)) => {
            let batch = args.batch.unwrap_or(1);
            if len == 0 {
                return Err(CliError::Other("--seq must be at least 1".into()));
            }
            if batch == 0 {
                return Err(CliError::Other("--batch must be at least 1".into()));
            }
            Sequences::Batched { batch, len }
        }
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

/// Segment offsets as `Problem::resolve` needs them, with an error that names where they came
/// from (`--cu-seqlens`, or the inputs file's `cu_seqlens`).
fn check_cu_seqlens(cu: &[usize], source: &str) -> Result<(), CliError> {
    let bad = |why: &str| Err(CliError::Other(format!("{source} {}: {why}", show(cu))));
    if cu.len() < 2 {
        return bad("needs at least two offsets (0 and the total length)");
    }
    if cu[0] != 0 {
        return bad("must start at 0");
    }
    if let Some(w) = cu.windows(2).find(|w| w[0] >= w[1]) {
        return bad(&format!(
            "must strictly ascend (every segment holds at least one token), but {} is followed by {}",
            w[0], w[1]
        ));
    }
    Ok(())
}

/// Offsets as the user wrote them, shortened when long.
fn show(cu: &[usize]) -> String {
    let mut parts: Vec<String> = cu.iter().take(8).map(usize::to_string).collect();
    if cu.len() > 8 {
        parts.push(format!("… ({} offsets)", cu.len()));
    }
    parts.join(",")
}

/// The problem an inputs file fixes: B, T, heads and dims from the shapes of `q`, `k`, `v`
/// (the flags, when given, must agree: `--seq`, `--batch`, `--heads`, `--head-dim`,
/// `--cu-seqlens`), `cu_seqlens` from the file (or from `--cu-seqlens` when the file has none).
pub fn problem_from_inputs(
    args: &ProblemArgs,
    spec: &Spec,
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
    let ([b, t, hq, dqk], [kb, kt, h, _], [vb, vt, hv, dv]) = (dims("q")?, dims("k")?, dims("v")?);
    // k and v must agree on the kv heads; blame the one that differs from the spec (k when
    // both do), not whichever is checked last.
    if h != hv {
        let want = args.heads.map_or(spec.heads.kv, |(_, kv)| kv) as usize;
        let (bad, good) = if hv != want && h == want {
            ("v", "k")
        } else {
            ("k", "v")
        };
        let (nb, ng) = if bad == "k" { (h, hv) } else { (hv, h) };
        return Err(CliError::Other(format!(
            "input `{bad}` has {nb} kv heads but `{good}` has {ng} (the spec has {want}): fix `{bad}`'s shape [B, T, kv heads, dim]"
        )));
    }
    for (name, (xb, xt)) in [("k", (kb, kt)), ("v", (vb, vt))] {
        if (xb, xt) != (b, t) {
            return Err(CliError::Other(format!(
                "input `{name}` has B={xb} T={xt} but `q` has B={b} T={t}"
            )));
        }
    }
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
        && seq != t
    {
        return Err(mismatch("--seq", seq.to_string(), format!("T = {t}")));
    }
    if let Some(batch) = args.batch
        && batch != b
    {
        return Err(mismatch("--batch", batch.to_string(), format!("B = {b}")));
    }
    // `--cu-seqlens` either repeats the file's `cu_seqlens` or, when the file has none,
    // segments its one packed row; it is never ignored.
    let cu_seqlens = match (&args.cu_seqlens, cu_seqlens) {
        (Some(flag), Some(file)) if *flag != file => {
            return Err(mismatch("--cu-seqlens", show(flag), show(&file)));
        }
        (Some(flag), None) => {
            check_cu_seqlens(flag, "--cu-seqlens")?;
            if b != 1 || flag.last() != Some(&t) {
                return Err(CliError::Other(format!(
                    "--cu-seqlens {} does not segment the inputs: they hold B={b} rows of T={t} tokens, and packed segments need B = 1 and a last offset of T",
                    show(flag)
                )));
            }
            Some(flag.clone())
        }
        (_, file) => file,
    };
    let sequences = match cu_seqlens {
        Some(cu_seqlens) => {
            check_cu_seqlens(&cu_seqlens, "the inputs' `cu_seqlens`")?;
            if b != 1 || cu_seqlens.last() != Some(&t) {
                return Err(CliError::Other(format!(
                    "the inputs' `cu_seqlens` {} does not match `q` (B={b}, T={t}): packed segments need B = 1 and a last offset of T",
                    show(&cu_seqlens)
                )));
            }
            Sequences::Varlen { cu_seqlens }
        }
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
