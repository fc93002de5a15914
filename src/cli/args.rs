//! The command line: every subcommand, flag and its help text (clap derive).
//!
//! Only parsing lives here; each subcommand's behaviour lives in its own module.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// nsac compiles sparse-attention specs (Native Sparse Attention and relatives) into kernels.
///
/// A spec (`.nsa` text or `.yaml`) says WHAT an attention computes: its compressed, selected and
/// sliding-window branches and how they are combined. nsac checks it, counts its cost, runs it on
/// the f64 reference, and compiles it to CPU code (Cranelift JIT) or PTX for NVIDIA GPUs.
///
/// Start with `nsac check kernels/nsa-paper.nsa`, then
/// `nsac run kernels/nsa-paper.nsa --seq 4096`.
#[derive(Debug, Parser)]
#[command(name = "nsac", version, about, long_about, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate specs and print a short summary of each.
    ///
    /// Every problem is reported with its file:line:col and a caret under the offending text; the
    /// exit status is non-zero when any spec is invalid.
    Check(CheckArgs),
    /// Print a spec in canonical form (comments kept).
    ///
    /// `--write` rewrites the file in place; `--check` only reports whether it is formatted.
    Fmt(FmtArgs),
    /// Count the work of a spec on a problem: keys attended per query, FLOPs, bytes moved.
    ///
    /// FLOPs are 2·(Dqk+Dv) per attended key per query head; bytes are every input read once and
    /// the output written once at the chosen dtype.
    Cost(CostArgs),
    /// Run a spec on a problem and print a summary (optionally writing the outputs).
    ///
    /// Without `--inputs`, q, k, v, gates and pool weights are drawn at random from `--seed`
    /// (standard normal activations, uniform (0,1) gates).
    Run(RunArgs),
}

/// A spec file argument and the problem it is applied to.
#[derive(Debug, Args)]
pub struct ProblemArgs {
    /// Sequence length T (tokens per batch row). Required unless `--cu-seqlens` is given or
    /// (for `run`) the inputs file fixes it.
    #[arg(long, short = 's', value_name = "N")]
    pub seq: Option<usize>,
    /// Batch size B.
    #[arg(
        long,
        short = 'b',
        value_name = "B",
        default_value_t = 1,
        conflicts_with = "cu_seqlens"
    )]
    pub batch: usize,
    /// Variable-length segments packed into one row: ascending offsets starting at 0, e.g.
    /// `0,100,357` (two segments of 100 and 257 tokens).
    #[arg(
        long,
        value_name = "OFFSETS",
        value_delimiter = ',',
        conflicts_with = "seq"
    )]
    pub cu_seqlens: Option<Vec<usize>>,
    /// Override the spec's heads: `QUERY/KV` (e.g. `64/4`) or one number for both.
    #[arg(long, value_name = "Q/KV", value_parser = parse_pair)]
    pub heads: Option<(u32, u32)>,
    /// Override the spec's head dims: `QK/V` (e.g. `192/128`) or one number for both.
    #[arg(long, value_name = "QK/V", value_parser = parse_pair)]
    pub head_dim: Option<(u32, u32)>,
    /// Element type of the inputs.
    #[arg(long, value_enum, default_value_t = DTypeArg::F32)]
    pub dtype: DTypeArg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DTypeArg {
    F32,
    F16,
    Bf16,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Spec files (`.nsa` text or `.yaml`/`.yml`).
    #[arg(required = true, value_name = "SPEC")]
    pub specs: Vec<PathBuf>,
    /// Print one JSON object per run (a list of results) instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct FmtArgs {
    /// The spec file to format (`.nsa` text).
    #[arg(value_name = "SPEC")]
    pub spec: PathBuf,
    /// Rewrite the file in place (atomically) instead of printing.
    #[arg(long, conflicts_with = "check")]
    pub write: bool,
    /// Exit non-zero if the file is not already formatted; print nothing else.
    #[arg(long)]
    pub check: bool,
}

#[derive(Debug, Args)]
pub struct CostArgs {
    /// The spec file.
    #[arg(value_name = "SPEC")]
    pub spec: PathBuf,
    #[command(flatten)]
    pub problem: ProblemArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeviceArg {
    /// The f64 reference implementation (slow, exact; defines the semantics).
    Reference,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The spec file.
    #[arg(value_name = "SPEC")]
    pub spec: PathBuf,
    #[command(flatten)]
    pub problem: ProblemArgs,
    /// Where to run.
    #[arg(long, value_enum, default_value_t = DeviceArg::Reference)]
    pub device: DeviceArg,
    /// Read inputs from a `.safetensors` file or a directory of `.npy` files (names: q, k, v,
    /// g_<branch>, w_<branch>, wk_<branch>, wv_<branch>, k_<branch>, v_<branch>, cu_seqlens).
    #[arg(long, value_name = "FILE")]
    pub inputs: Option<PathBuf>,
    /// Write the output `o` (and with `--all-outputs` every `o_<branch>` and `idx_<branch>`) to a
    /// `.safetensors` file, or to a directory of `.npy` files when FILE ends with `/` or is a
    /// directory.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Also write each branch's output and each select branch's chosen block indices.
    #[arg(long, requires = "output")]
    pub all_outputs: bool,
    /// Seed for random inputs.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Parses `A/B` or `A` (meaning `A/A`) into two positive integers.
fn parse_pair(text: &str) -> Result<(u32, u32), String> {
    let number = |s: &str| -> Result<u32, String> {
        let n: u32 = s
            .trim()
            .parse()
            .map_err(|_| format!("`{}` is not a positive integer", s.trim()))?;
        if n == 0 {
            return Err("must be at least 1".into());
        }
        Ok(n)
    };
    match text.split_once('/') {
        Some((a, b)) => Ok((number(a)?, number(b)?)),
        None => {
            let n = number(text)?;
            Ok((n, n))
        }
    }
}
