//! The command line: every subcommand, flag and its help text (clap derive).
//!
//! Only parsing lives here; each subcommand's behaviour lives in its own module.

use std::path::PathBuf;

use clap::builder::{EnumValueParser, TypedValueParser};
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
    /// Show or save the generated code for a spec on a problem.
    ///
    /// `--target ptx` writes PTX (for sm_80 or sm_90) plus, with `-o FILE.ptx`, a launch manifest
    /// `FILE.manifest.json`: kernel names, typed parameters in order (buffers, then `u32`
    /// sizes), each launch's grid/block/shared-memory formula and its values for this problem,
    /// and every buffer's name, role, element type and shape, so any CUDA host can launch it.
    /// The PTX does not depend on the problem's lengths or segments (the CPU code still does).
    Compile(CompileArgs),
    /// Benchmark a spec on this machine: median time, achieved GFLOP/s, and (CPU) the measured
    /// 128-bit FMA ceiling with the ratio and the speed-up over the reference, or (GPU) each
    /// kernel's median time, measured with CUDA events, and the ratio to this GPU's ceiling for
    /// the problem's arithmetic (tensor-core `mma.sync` or f32 FMA, measured in the same run).
    ///
    /// FLOPs count 2·(Dqk+Dv) per attended key per query head. Inputs are random.
    Bench(BenchArgs),
    /// Search the kernels' Variants for the fastest on this machine — on the CPU (tiles,
    /// unrolling, work-item size, threads) or on a CUDA GPU (tokens per thread block, staging
    /// chunks, register caps, pipeline stages, combine fusion) — checking each winner against the reference, and keep the result
    /// in the tuning database; `run` and `bench` then use it.
    ///
    /// The database is one YAML file (default: the user's cache directory, `nsac/tuning.yaml`),
    /// keyed by the spec's canonical hash, the problem (T rounded up to a power of two), the
    /// dtype, the device (CPU model, features and cores; GPU name, compute capability, SMs and
    /// driver) and nsac's version. CPU candidates are timed on a small proxy of the problem (one
    /// kv head of the same group and dims, a length whose work is at most 3 GFLOP), so a tune
    /// takes well under a minute at any size; GPU candidates on the problem itself, after
    /// variants that exceed the device's threads, shared memory or registers per block are
    /// pruned. The fastest few are then timed again in turn with the default, so the result is
    /// never slower than the default.
    Tune(TuneArgs),
}

/// A spec file argument and the problem it is applied to.
#[derive(Debug, Args)]
pub struct ProblemArgs {
    /// Sequence length T (tokens per batch row). Required unless `--cu-seqlens` is given or
    /// (for `run`) the inputs file fixes it.
    #[arg(long, short = 's', value_name = "N")]
    pub seq: Option<usize>,
    /// Batch size B (default 1; with `--inputs`, the file's B, which a given value must match).
    #[arg(long, short = 'b', value_name = "B", conflicts_with = "cu_seqlens")]
    pub batch: Option<usize>,
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
    /// The GPU when a CUDA driver and device are present, else the CPU.
    Auto,
    /// The f64 reference implementation (slow, exact; defines the semantics).
    Reference,
    /// This machine's CPU: code JIT-compiled by Cranelift, run on `--threads` cores.
    Cpu,
    /// An NVIDIA GPU through the CUDA driver (PTX generated by nsac, JIT-compiled by the driver).
    Cuda,
}

/// The devices `bench` and `tune` measure: a compiled backend, never the reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompiledDevice {
    /// The GPU when a CUDA driver and device are present, else the CPU.
    Auto,
    /// This machine's CPU: code JIT-compiled by Cranelift.
    Cpu,
    /// An NVIDIA GPU through the CUDA driver.
    Cuda,
}

impl From<CompiledDevice> for DeviceArg {
    fn from(d: CompiledDevice) -> Self {
        match d {
            CompiledDevice::Auto => DeviceArg::Auto,
            CompiledDevice::Cpu => DeviceArg::Cpu,
            CompiledDevice::Cuda => DeviceArg::Cuda,
        }
    }
}

/// `--device` of `bench` and `tune`: only the compiled backends are offered (and accepted).
fn compiled_device() -> impl TypedValueParser<Value = DeviceArg> {
    EnumValueParser::<CompiledDevice>::new().map(DeviceArg::from)
}

/// The memory budget of the commands that allocate the problem's tensors.
#[derive(Debug, Args)]
pub struct BudgetArgs {
    /// The most bytes of host memory the problem may need (inputs, outputs and scratch, counted
    /// from the shape before anything is allocated), e.g. `16GiB`, `500M` or `1000000`
    /// (K/M/G/T are powers of 1024). Default: half of this machine's memory (8 GiB where it
    /// cannot be read).
    #[arg(long, value_name = "BYTES", env = "NSAC_MAX_BYTES", value_parser = parse_bytes)]
    pub max_bytes: Option<u64>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The spec file.
    #[arg(value_name = "SPEC")]
    pub spec: PathBuf,
    #[command(flatten)]
    pub problem: ProblemArgs,
    #[command(flatten)]
    pub budget: BudgetArgs,
    /// Where to run. The reference computes in f64 from f32 inputs, so it takes `--dtype f32`
    /// only.
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
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
    /// Save the inputs this run used (random or read) to a `.safetensors` file or `.npy`
    /// directory, e.g. to feed the same tensors to another implementation or device.
    #[arg(long, value_name = "FILE")]
    pub save_inputs: Option<PathBuf>,
    /// Also write each branch's output and each select branch's chosen block indices.
    #[arg(long, requires = "output")]
    pub all_outputs: bool,
    /// Seed for random inputs.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Worker threads for `--device cpu`, at most 4 × the cores (default: the tuned count, else
    /// every core).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// The tuning database whose Variant to use (default: the user's cache directory).
    #[arg(long, value_name = "FILE")]
    pub db: Option<PathBuf>,
    /// An explicit Variant for the device that runs, `FIELD=VALUE,…` over the defaults; overrides
    /// the tuning database. CPU fields: rows, key_vectors, value_vectors, key_tile, unroll,
    /// query_chunk, bwd_key_tile, bwd_query_chunk. GPU fields: warps_per_block, select_tokens, select_chunk, compress_tokens,
    /// compress_max_regs, score_tokens, compress_stages, fuse_combine.
    #[arg(long, value_name = "FIELDS", conflicts_with = "tune")]
    pub variant: Option<String>,
    /// Tune the kernels of the device that runs (CPU or GPU) for this spec and shape first if the
    /// tuning database has no current result for it (as `nsac tune` does), then run with them.
    #[arg(long)]
    pub tune: bool,
    /// Also run the backward pass: the gradient of every input (dq, dk, dv, dg_<b>, dw_<c>, …)
    /// for the upstream gradient `do` (read from `--inputs` when the file has it, else standard
    /// normal from the seed), written next to `o` in `--output`; the summary prints a checksum
    /// per gradient. On `--device cpu` (or auto without a GPU) and `--device reference`.
    #[arg(long, conflicts_with = "tune")]
    pub backward: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// This machine's CPU (Cranelift).
    Cpu,
    /// PTX text for NVIDIA GPUs.
    Ptx,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Emit {
    /// The verified Plan, the IR every backend reads (no --target needed).
    Plan,
    /// Cranelift IR (--target cpu): deterministic, independent of the host CPU.
    Clif,
    /// The host machine code as Cranelift's lowered instruction listing (--target cpu).
    Asm,
    /// PTX text (--target ptx).
    Ptx,
}

impl Emit {
    /// The flag value.
    pub fn name(self) -> &'static str {
        match self {
            Emit::Plan => "plan",
            Emit::Clif => "clif",
            Emit::Asm => "asm",
            Emit::Ptx => "ptx",
        }
    }
}

#[derive(Debug, Args)]
pub struct CompileArgs {
    /// The spec file.
    #[arg(value_name = "SPEC")]
    pub spec: PathBuf,
    #[command(flatten)]
    pub problem: ProblemArgs,
    /// What to generate code for (implied by --emit clif|asm (cpu) and ptx (ptx); not needed
    /// for --emit plan).
    #[arg(long, value_enum)]
    pub target: Option<Target>,
    /// Which text to show (default: the target's natural output). `plan` prints the verified
    /// Plan: the tensors and ops every backend reads, independent of --seq/--batch/--cu-seqlens.
    #[arg(long, value_enum)]
    pub emit: Option<Emit>,
    /// With `--emit plan`: the training pair (the forward saving its log-sum-exps, then the
    /// backward ops writing every input's gradient) instead of the forward.
    #[arg(long)]
    pub backward: bool,
    /// GPU architecture for --target ptx: sm_80 (Ampere) or sm_90 (Hopper).
    #[arg(long, default_value = "sm_90")]
    pub arch: String,
    /// Write to FILE instead of standard output (for PTX, also FILE's `.manifest.json`).
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// The Variant to compile, `FIELD=VALUE,…` over the defaults. --target cpu fields: rows,
    /// key_vectors, value_vectors, key_tile, unroll, query_chunk. --target ptx fields:
    /// warps_per_block, select_tokens, select_chunk, compress_tokens, compress_max_regs,
    /// score_tokens, compress_stages, fuse_combine.
    #[arg(long, value_name = "FIELDS")]
    pub variant: Option<String>,
}

#[derive(Debug, Args)]
pub struct TuneArgs {
    /// The spec file (not needed with --export or --import).
    #[arg(value_name = "SPEC", required_unless_present_any = ["export", "import"])]
    pub spec: Option<PathBuf>,
    #[command(flatten)]
    pub problem: ProblemArgs,
    #[command(flatten)]
    pub budget: BudgetArgs,
    /// Which backend to tune: cpu, cuda (GPU 0), or auto (the GPU when one is present).
    #[arg(long, default_value = "cpu", value_parser = compiled_device())]
    pub device: DeviceArg,
    /// Tune again even when the database already has a result for this machine.
    #[arg(long)]
    pub retune: bool,
    /// Measure every variant that fits instead of searching (coordinate descent takes over
    /// above 48 variants); slower, and how the search's answer was compared with the true best.
    #[arg(long)]
    pub exhaustive: bool,
    /// The tuning database file (default: the user's cache directory).
    #[arg(long, value_name = "FILE")]
    pub db: Option<PathBuf>,
    /// Write every entry of the database to FILE (to share it) and exit.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["import", "spec"])]
    pub export: Option<PathBuf>,
    /// Merge the entries of FILE into the database (same keys are replaced) and exit.
    #[arg(long, value_name = "FILE", conflicts_with = "spec")]
    pub import: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The spec file.
    #[arg(value_name = "SPEC")]
    pub spec: PathBuf,
    #[command(flatten)]
    pub problem: ProblemArgs,
    #[command(flatten)]
    pub budget: BudgetArgs,
    /// Where to run: cpu, cuda, or auto (the GPU when one is present, else the CPU).
    #[arg(long, default_value = "cpu", value_parser = compiled_device())]
    pub device: DeviceArg,
    /// Worker threads for the CPU, at most 4 × the cores (default: the tuned count, else every
    /// core).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// The tuning database whose Variant to use (default: the user's cache directory).
    #[arg(long, value_name = "FILE")]
    pub db: Option<PathBuf>,
    /// An explicit Variant for the device that runs, `FIELD=VALUE,…` over the defaults;
    /// overrides the tuning database (fields: see `nsac run --help`).
    #[arg(long, value_name = "FIELDS")]
    pub variant: Option<String>,
    /// Timed runs (the median is reported) after one warm-up run.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Sequence length at which the reference is timed for the speed-up (0: skip it; not
    /// timed with --backward).
    #[arg(long, default_value_t = 512)]
    pub oracle_seq: usize,
    /// Benchmark training instead (CPU): the forward with saved state and the backward for a
    /// random upstream gradient, timed in alternation; prints both times, their ratio and the
    /// GFLOP/s and FMA-ceiling ratio of each. The backward's work is counted as 2.5× the
    /// forward's attention FLOPs (FlashAttention's convention).
    #[arg(long)]
    pub backward: bool,
    /// Print JSON instead of text.
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

/// Parses a byte count: digits with an optional K, M, G or T suffix (powers of 1024; `KiB`,
/// `KB`, `k` … are the same).
fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{t}` is not a byte count (e.g. 8GiB, 500M, 1000000)"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        other => return Err(format!("unknown unit `{other}` (use K, M, G or T)")),
    };
    n.checked_mul(1u64 << shift)
        .filter(|&b| b > 0)
        .ok_or_else(|| format!("`{t}` must be at least 1 byte and below 16 EiB"))
}
