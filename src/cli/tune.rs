//! `nsac tune`: search the CPU or GPU kernels' Variants for this machine, keep the best in the
//! tuning database, and share databases (`--export`, `--import`). Also the DB look-ups that
//! `run` and `bench` use to pick a tuned Variant.

use std::path::Path;
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressStyle};
use nsac_compiler::cost;
use nsac_compiler::ptx::GpuVariant;
use nsac_dsl::Spec;
use nsac_dsl::problem::Shape;
use nsac_runtime::bench::fma_ceiling;
use nsac_runtime::cuda::{CudaDevice, GpuCeiling};
use nsac_runtime::tune::cpu::{
    CpuCandidate, CpuTuneOptions, tune_cpu, tuned_cpu_variant_warned, tuning_shape, tuning_shape_at,
};
use nsac_runtime::tune::gpu::{GpuTuneOptions, tune_gpu};
use nsac_runtime::tune::{
    CandidateReport, DbError, DbWarning, Outcome, Progress, TuneOptions, Tuned, TuningDb,
};
use serde::Serialize;

use super::args::{DeviceArg, TuneArgs};
use super::device::gpu_ceiling;
use super::error::CliError;
use super::output::{emit_json, emit_line};
use super::problem::problem_from_args;

/// The tuning database: `--db FILE`, else the user's cache directory.
pub fn open_db(path: Option<&Path>) -> Result<TuningDb, CliError> {
    match path {
        Some(p) => Ok(TuningDb::open(p)),
        None => TuningDb::open_default()
            .map_err(|e| CliError::Other(format!("no tuning database: {e}"))),
    }
}

/// The database `run`/`bench` look a Variant up in: `--db FILE`, else the default one if this
/// system has a cache directory (none: nothing is tuned, silently — there is no database).
fn db_error(e: DbError) -> CliError {
    CliError::Other(e.to_string())
}

/// `run --tune --device cuda`: tunes `spec` on `shape` for `gpu` unless the database already has
/// a current result, as [`tune_if_missing`] does for the CPU.
pub fn tune_gpu_if_missing(
    gpu: &Arc<CudaDevice>,
    spec: &Spec,
    shape: &Shape,
    db: Option<&Path>,
    quiet: bool,
) -> Result<(), CliError> {
    let db = open_db(db)?;
    let bar = progress_bar_unless(quiet)?;
    let (tuned, warnings) = tune_gpu(
        gpu,
        spec,
        shape,
        &db,
        &GpuTuneOptions::default(),
        false,
        &mut |event| follow(&bar, event),
    )
    .map_err(|e| CliError::Other(format!("tuning failed: {e}")))?;
    bar.finish_and_clear();
    warn(&warnings);
    if quiet {
        return Ok(());
    }
    match &tuned {
        Tuned::Stored { .. } => {
            eprintln!("tuning: the database already has a result for this GPU")
        }
        Tuned::Fresh(result) => eprintln!(
            "tuning: {} of {} variants measured; best {} ({:.2}× the default), saved to {}",
            result.measured(),
            result.space,
            result.best,
            result.speedup_over_default().unwrap_or(1.0),
            db.path().display()
        ),
    }
    Ok(())
}

/// `run --tune`: tunes `spec` on `shape` for this CPU unless the database already has a current
/// result, with a progress bar (none when `quiet`) and a one-line report on standard error.
pub fn tune_if_missing(
    spec: &Spec,
    shape: &Shape,
    db: Option<&Path>,
    quiet: bool,
) -> Result<(), CliError> {
    let db = open_db(db)?;
    let found = tuned_cpu_variant_warned(spec, shape, &db).map_err(db_error)?;
    warn(&found.warnings);
    if found.value.is_some() {
        if !quiet {
            eprintln!("tuning: the database already has a result for this machine");
        }
        return Ok(());
    }
    let bar = progress_bar_unless(quiet)?;
    let (tuned, warnings) = tune_cpu(
        spec,
        shape,
        &db,
        &CpuTuneOptions::for_spec(spec),
        false,
        &mut |event| follow(&bar, event),
    )
    .map_err(|e| CliError::Other(format!("tuning failed: {e}")))?;
    bar.finish_and_clear();
    warn(&warnings);
    if let (Tuned::Fresh(result), false) = (&tuned, quiet) {
        eprintln!(
            "tuning: {} of {} variants measured at T={}; best {} ({:.2}× the default), saved to {}",
            result.measured(),
            result.space,
            tuning_shape(spec, shape).seq_len,
            result.best.variant,
            result.speedup_over_default().unwrap_or(1.0),
            db.path().display()
        );
    }
    Ok(())
}

/// The tuning progress bar, or a hidden one when `quiet`.
fn progress_bar_unless(quiet: bool) -> Result<ProgressBar, CliError> {
    if quiet {
        Ok(ProgressBar::hidden())
    } else {
        progress_bar()
    }
}

fn progress_bar() -> Result<ProgressBar, CliError> {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} tuning [{bar:30}] {pos}/{len} {msg}")
            .map_err(|e| CliError::Other(e.to_string()))?
            .progress_chars("=> "),
    );
    Ok(bar)
}

/// Moves `bar` along with the tuner's events.
fn follow(bar: &ProgressBar, event: Progress) {
    match event {
        Progress::Planned {
            space,
            pruned,
            planned,
            strategy,
        } => {
            bar.set_length(planned as u64);
            bar.set_message(format!("{space} variants, {pruned} pruned, {strategy:?}"));
        }
        Progress::Compiling { count } => bar.set_message(format!("compiling {count}")),
        Progress::Confirming { finalists } => {
            bar.set_message(format!("confirming the {finalists} fastest, in turn"))
        }
        Progress::Candidate { done, .. } => bar.set_position(done as u64),
        Progress::Finished { .. } => bar.finish_and_clear(),
    }
}

/// What `tune --json` prints.
#[derive(Debug, Serialize)]
struct TuneSummary {
    spec: String,
    seq_len: usize,
    /// The length candidates were timed at (a proxy of `seq_len` with the same GQA group and
    /// dims; times and GFLOP/s below are of this problem). For an answer from the database,
    /// the length its entry was timed at; absent if the entry does not record it (then so are
    /// `gflops` and `ceiling_ratio`).
    #[serde(skip_serializing_if = "Option::is_none")]
    timed_seq_len: Option<usize>,
    best: CpuCandidate,
    #[serde(flatten)]
    outcome: TuneOutcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    gflops: Option<f64>,
    fma_ceiling_gflops: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    ceiling_ratio: Option<f64>,
    db: String,
}

/// Where a tuned Variant came from and how it compared (both devices' `tune --json`).
#[derive(Debug, Serialize)]
struct TuneOutcome {
    /// `stored` (the DB already had it) or `tuned` (measured now).
    source: &'static str,
    best_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    default_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    speedup_over_default: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    measured: Option<usize>,
    /// Variants rejected before compiling (device limits, the spec's blocks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pruned: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    space: Option<usize>,
}

impl TuneOutcome {
    /// The outcome of `tuned`; notes failed candidates on standard error.
    fn of<V>(tuned: &Tuned<V>) -> TuneOutcome {
        match tuned {
            Tuned::Stored { best_us, .. } => TuneOutcome {
                source: "stored",
                best_ms: best_us / 1e3,
                default_ms: None,
                speedup_over_default: None,
                measured: None,
                pruned: None,
                space: None,
            },
            Tuned::Fresh(result) => {
                note_failures(&result.candidates);
                TuneOutcome {
                    source: "tuned",
                    best_ms: result.best_time.as_secs_f64() * 1e3,
                    default_ms: result.default_time.map(|t| t.as_secs_f64() * 1e3),
                    speedup_over_default: result.speedup_over_default(),
                    measured: Some(result.measured()),
                    pruned: Some(result.candidates.len() - result.measured()),
                    space: Some(result.space),
                }
            }
        }
    }

    /// "tuned now" or "from the tuning database".
    fn origin(&self) -> &'static str {
        if self.source == "tuned" {
            "tuned now"
        } else {
            "from the tuning database"
        }
    }

    /// The report's `default`, `searched` and `database` lines.
    fn tail(&self, db: &str) -> String {
        let mut text = String::new();
        if let (Some(d), Some(s)) = (self.default_ms, self.speedup_over_default) {
            text.push_str(&format!(
                "  default   {d:.3} ms   → tuned is {s:.2}× the default's speed\n"
            ));
        }
        if let (Some(m), Some(p), Some(sp)) = (self.measured, self.pruned, self.space) {
            text.push_str(&format!(
                "  searched  {m} of {sp} variants ({p} pruned before compiling)\n"
            ));
        }
        text.push_str(&format!("  database  {db}\n"));
        text
    }
}

pub fn run(args: &TuneArgs) -> Result<(), CliError> {
    let db = open_db(args.db.as_deref())?;
    if let Some(file) = &args.export {
        let done = db
            .export(file)
            .map_err(|e| CliError::Other(e.to_string()))?;
        warn(&done.warnings);
        eprintln!(
            "exported {} entries from {} to {}",
            done.value,
            db.path().display(),
            file.display()
        );
        return Ok(());
    }
    if let Some(file) = &args.import {
        let done = db
            .import(file)
            .map_err(|e| CliError::Other(e.to_string()))?;
        warn(&done.warnings);
        eprintln!(
            "imported {}: {} added, {} replaced, into {}",
            file.display(),
            done.value.added,
            done.value.replaced,
            db.path().display()
        );
        return Ok(());
    }
    let Some(spec_path) = &args.spec else {
        return Err(CliError::Other(
            "nothing to tune: give a SPEC (or --export / --import)".into(),
        ));
    };
    let spec = nsac_dsl::load(spec_path)?;
    let shape = problem_from_args(&args.problem)?.resolve(&spec)?;
    super::budget::check(&spec, &shape, 1, false, &args.budget)?;
    match args.device {
        DeviceArg::Cpu => {}
        DeviceArg::Reference => {
            return Err(CliError::Other(
                "the reference has nothing to tune; use --device cpu or --device cuda".into(),
            ));
        }
        DeviceArg::Cuda => return run_gpu(args, &spec, &shape, &db, &open_gpu()?),
        DeviceArg::Auto => {
            if let Some(gpu) = CudaDevice::open().ok().flatten() {
                return run_gpu(args, &spec, &shape, &db, &gpu);
            }
        }
    }
    let bar = progress_bar()?;
    let mut progress = |event: Progress| follow(&bar, event);
    let (tuned, warnings) = tune_cpu(
        &spec,
        &shape,
        &db,
        &{
            let mut options = CpuTuneOptions::for_spec(&spec);
            exhaustive_if(args, &mut options.tune);
            options
        },
        args.retune,
        &mut progress,
    )
    .map_err(|e| CliError::Other(format!("tuning failed: {e}")))?;
    bar.finish_and_clear();
    warn(&warnings);

    let best = *tuned.variant();
    // The problem the time was measured on: this run's proxy, or the one the stored entry was
    // timed at (an entry answers every T of its bucket, each with its own proxy).
    let timing = match &tuned {
        Tuned::Fresh(_) => Some(tuning_shape(&spec, &shape)),
        Tuned::Stored { timed_seq_len, .. } => {
            timed_seq_len.and_then(|len| tuning_shape_at(&spec, &shape, len))
        }
    };
    let ceiling = fma_ceiling(best.threads)?;
    let outcome = TuneOutcome::of(&tuned);
    let gflops = match &timing {
        Some(t) => Some(cost::estimate(&spec, t)?.flops.attention / (outcome.best_ms / 1e3) / 1e9),
        None => None,
    };
    let summary = TuneSummary {
        spec: spec.name.clone(),
        seq_len: shape.seq_len,
        timed_seq_len: timing.as_ref().map(|t| t.seq_len),
        best,
        outcome,
        gflops,
        fma_ceiling_gflops: ceiling,
        ceiling_ratio: gflops.map(|g| g / ceiling),
        db: db.path().display().to_string(),
    };
    if args.json {
        return emit_json(&summary).map_err(CliError::Stdout);
    }
    let v = &summary.best.variant;
    let timed = match summary.timed_seq_len {
        Some(t) => format!("timed at T={t}"),
        None => "timed at a length the entry does not record".to_string(),
    };
    let speed = match (summary.gflops, summary.ceiling_ratio) {
        (Some(g), Some(r)) => format!(
            "{g:.2} GFLOP/s   {:.0}% of the 128-bit FMA ceiling ({ceiling:.1} GFLOP/s, measured now)",
            100.0 * r
        ),
        _ => format!(
            "GFLOP/s unknown (--retune measures again); the 128-bit FMA ceiling is {ceiling:.1} GFLOP/s, measured now"
        ),
    };
    let mut text = format!(
        "{} at T={} ({}, {timed}):\n  best      rows {} key_vectors {} value_vectors {} key_tile {} unroll {} query_chunk {}, {} threads\n  time      {:.3} ms   {speed}\n",
        summary.spec,
        summary.seq_len,
        summary.outcome.origin(),
        v.rows,
        v.key_vectors,
        v.value_vectors,
        v.key_tile,
        v.unroll,
        v.query_chunk,
        summary.best.threads,
        summary.outcome.best_ms,
    );
    text.push_str(&summary.outcome.tail(&summary.db));
    emit_line(&text).map_err(CliError::Stdout)
}

/// `--exhaustive`: every valid variant is measured.
fn exhaustive_if(args: &TuneArgs, options: &mut TuneOptions) {
    if args.exhaustive {
        options.search.exhaustive_limit = usize::MAX;
        options.search.max_measurements = usize::MAX;
    }
}

/// GPU 0, or an error saying there is none.
pub fn open_gpu() -> Result<Arc<CudaDevice>, CliError> {
    CudaDevice::open()?.ok_or_else(|| {
        CliError::Other(
            "no CUDA device found (no NVIDIA driver, or no GPU visible); try --device cpu".into(),
        )
    })
}

/// What `tune --device cuda --json` prints.
#[derive(Debug, Serialize)]
struct GpuTuneSummary {
    spec: String,
    seq_len: usize,
    device: String,
    /// The length the best time was measured at: `seq_len`, or for an answer from the database
    /// the length its entry was tuned at (absent if the entry does not record it; then so are
    /// `gflops` and `ceiling_ratio`).
    #[serde(skip_serializing_if = "Option::is_none")]
    timed_seq_len: Option<usize>,
    best: GpuVariant,
    #[serde(flatten)]
    outcome: TuneOutcome,
    /// Attention FLOPs of the timed problem (cost model) per second of the best Variant.
    #[serde(skip_serializing_if = "Option::is_none")]
    gflops: Option<f64>,
    /// This GPU's measured ceiling for the problem's arithmetic, and `gflops` over it.
    ceiling: GpuCeiling,
    #[serde(skip_serializing_if = "Option::is_none")]
    ceiling_ratio: Option<f64>,
    db: String,
}

/// `shape` with its sequence length replaced by `len` (batched shapes only: a varlen layout
/// has no one length to replace).
fn same_problem_at(spec: &Spec, shape: &Shape, len: usize) -> Option<Shape> {
    if len == shape.seq_len {
        return Some(shape.clone());
    }
    if shape.segments.len() != 1 || shape.segments[0] != (0, shape.seq_len) {
        return None;
    }
    let mut problem = nsac_dsl::problem::Problem::batched(shape.batch, len);
    problem.heads = Some(shape.heads);
    problem.head_dim = Some(shape.head_dim);
    problem.dtype = shape.dtype;
    problem.resolve(spec).ok()
}

fn run_gpu(
    args: &TuneArgs,
    spec: &Spec,
    shape: &Shape,
    db: &TuningDb,
    gpu: &Arc<CudaDevice>,
) -> Result<(), CliError> {
    let bar = progress_bar()?;
    let (tuned, warnings) = tune_gpu(
        gpu,
        spec,
        shape,
        db,
        &{
            let mut options = GpuTuneOptions::default();
            exhaustive_if(args, &mut options.tune);
            options
        },
        args.retune,
        &mut |event| follow(&bar, event),
    )
    .map_err(|e| CliError::Other(format!("tuning failed: {e}")))?;
    bar.finish_and_clear();
    warn(&warnings);
    let (major, minor) = gpu.capability();
    let outcome = TuneOutcome::of(&tuned);
    let timing = match &tuned {
        Tuned::Fresh(_) => Some(shape.clone()),
        Tuned::Stored { timed_seq_len, .. } => {
            timed_seq_len.and_then(|len| same_problem_at(spec, shape, len))
        }
    };
    let gflops = match &timing {
        Some(t) => Some(cost::estimate(spec, t)?.flops.attention / (outcome.best_ms / 1e3) / 1e9),
        None => None,
    };
    let ceiling = gpu_ceiling(gpu, spec, shape)?;
    let summary = GpuTuneSummary {
        spec: spec.name.clone(),
        seq_len: shape.seq_len,
        device: format!("{} (sm_{major}{minor})", gpu.name()),
        timed_seq_len: timing.as_ref().map(|t| t.seq_len),
        best: *tuned.variant(),
        gflops,
        ceiling_ratio: gflops.map(|g| g / ceiling.gflops),
        ceiling,
        outcome,
        db: db.path().display().to_string(),
    };
    if args.json {
        return emit_json(&summary).map_err(CliError::Stdout);
    }
    let timed = match summary.timed_seq_len {
        Some(t) if t == summary.seq_len => String::new(),
        Some(t) => format!(", timed at T={t}"),
        None => ", timed at a length the entry does not record".to_string(),
    };
    let speed = match (summary.gflops, summary.ceiling_ratio) {
        (Some(g), Some(r)) => format!(
            "{g:.1} GFLOP/s\n  ceiling   {:.1} GFLOP/s ({}, measured) → {:.1}% of it",
            summary.ceiling.gflops,
            summary.ceiling.probe,
            100.0 * r
        ),
        _ => format!(
            "GFLOP/s unknown (--retune measures again)\n  ceiling   {:.1} GFLOP/s ({}, measured)",
            summary.ceiling.gflops, summary.ceiling.probe
        ),
    };
    let mut text = format!(
        "{} at T={} on {} ({}{timed}):\n  best      {}\n  time      {:.3} ms   {speed}\n",
        summary.spec,
        summary.seq_len,
        summary.device,
        summary.outcome.origin(),
        summary.best,
        summary.outcome.best_ms,
    );
    text.push_str(&summary.outcome.tail(&summary.db));
    emit_line(&text).map_err(CliError::Stdout)
}

/// Says on standard error how many candidates failed to compile or run, and the first error.
fn note_failures<V>(candidates: &[CandidateReport<V>]) {
    let failed: Vec<&String> = candidates
        .iter()
        .filter_map(|c| match &c.outcome {
            Outcome::CompileFailed { error } | Outcome::RunFailed { error } => Some(error),
            _ => None,
        })
        .collect();
    if let Some(first) = failed.first() {
        eprintln!(
            "note: {} candidate(s) failed and were skipped (first: {first})",
            failed.len()
        );
    }
}

fn warn(warnings: &[DbWarning]) {
    for w in warnings {
        eprintln!("warning: {w}");
    }
}
