//! `nsac tune`: search the CPU kernel's Variants for this machine, keep the best in the tuning
//! database, and share databases (`--export`, `--import`). Also the DB look-up that `run` and
//! `bench` use to pick a tuned Variant.

use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};
use nsac_compiler::cost;
use nsac_dsl::Spec;
use nsac_dsl::problem::Shape;
use nsac_runtime::bench::fma_ceiling;
use nsac_runtime::tune::cpu::{
    CpuCandidate, CpuTuneOptions, tune_cpu, tuned_cpu_variant, tuning_shape,
};
use nsac_runtime::tune::{DbWarning, Outcome, Progress, Tuned, TuningDb};
use serde::Serialize;

use super::args::{DeviceArg, TuneArgs};
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

/// The tuned CPU candidate for this spec and shape, if the database has a current one.
/// A database that cannot be opened means "not tuned", never an error for `run`/`bench`.
pub fn tuned_candidate(spec: &Spec, shape: &Shape, db: Option<&Path>) -> Option<CpuCandidate> {
    let db = open_db(db).ok()?;
    tuned_cpu_variant(spec, shape, &db)
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
    if tuned_cpu_variant(spec, shape, &db).is_some() {
        if !quiet {
            eprintln!("tuning: the database already has a result for this machine");
        }
        return Ok(());
    }
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        progress_bar()?
    };
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
    /// dims; times and GFLOP/s below are of this problem).
    timed_seq_len: usize,
    /// `stored` (the DB already had it) or `tuned` (measured now).
    source: &'static str,
    best: CpuCandidate,
    best_ms: f64,
    gflops: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    default_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    speedup_over_default: Option<f64>,
    fma_ceiling_gflops: f64,
    ceiling_ratio: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    measured: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    space: Option<usize>,
    db: String,
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
    if !matches!(args.device, DeviceArg::Cpu | DeviceArg::Auto) {
        return Err(CliError::Other(
            "the tuner searches the CPU backend's Variants for now (--device cpu)".into(),
        ));
    }
    let spec = nsac_dsl::load(spec_path)?;
    let shape = problem_from_args(&args.problem)?.resolve(&spec)?;
    let bar = progress_bar()?;
    let mut progress = |event: Progress| follow(&bar, event);
    let (tuned, warnings) = tune_cpu(
        &spec,
        &shape,
        &db,
        &CpuTuneOptions::for_spec(&spec),
        args.retune,
        &mut progress,
    )
    .map_err(|e| CliError::Other(format!("tuning failed: {e}")))?;
    bar.finish_and_clear();
    warn(&warnings);

    let best = *tuned.variant();
    let timing = tuning_shape(&spec, &shape);
    let flops = cost::estimate(&spec, &timing)?.flops.attention;
    let ceiling = fma_ceiling(best.threads)?;
    let mut summary = TuneSummary {
        spec: spec.name.clone(),
        seq_len: shape.seq_len,
        timed_seq_len: timing.seq_len,
        source: "stored",
        best,
        best_ms: 0.0,
        gflops: 0.0,
        default_ms: None,
        speedup_over_default: None,
        fma_ceiling_gflops: ceiling,
        ceiling_ratio: 0.0,
        measured: None,
        space: None,
        db: db.path().display().to_string(),
    };
    match &tuned {
        Tuned::Stored { best_us, .. } => summary.best_ms = best_us / 1e3,
        Tuned::Fresh(result) => {
            summary.source = "tuned";
            summary.best_ms = result.best_time.as_secs_f64() * 1e3;
            summary.default_ms = result.default_time.map(|t| t.as_secs_f64() * 1e3);
            summary.speedup_over_default = result.speedup_over_default();
            summary.measured = Some(result.measured());
            summary.space = Some(result.space);
            let failed: Vec<String> = result
                .candidates
                .iter()
                .filter_map(|c| match &c.outcome {
                    Outcome::CompileFailed { error } | Outcome::RunFailed { error } => {
                        Some(error.clone())
                    }
                    _ => None,
                })
                .collect();
            if !failed.is_empty() {
                eprintln!(
                    "note: {} candidate(s) failed and were skipped (first: {})",
                    failed.len(),
                    failed[0]
                );
            }
        }
    }
    summary.gflops = flops / (summary.best_ms / 1e3) / 1e9;
    summary.ceiling_ratio = summary.gflops / ceiling;
    if args.json {
        return emit_json(&summary).map_err(CliError::Stdout);
    }
    let v = &summary.best.variant;
    let mut text = format!(
        "{} at T={} ({}, timed at T={}):\n  best      rows {} key_vectors {} value_vectors {} key_tile {} unroll {} query_chunk {}, {} threads\n  time      {:.3} ms   {:.2} GFLOP/s   {:.0}% of the 128-bit FMA ceiling ({:.1} GFLOP/s, measured now)\n",
        summary.spec,
        summary.seq_len,
        if summary.source == "tuned" {
            "tuned now"
        } else {
            "from the tuning database"
        },
        summary.timed_seq_len,
        v.rows,
        v.key_vectors,
        v.value_vectors,
        v.key_tile,
        v.unroll,
        v.query_chunk,
        summary.best.threads,
        summary.best_ms,
        summary.gflops,
        100.0 * summary.ceiling_ratio,
        ceiling
    );
    if let (Some(d), Some(s)) = (summary.default_ms, summary.speedup_over_default) {
        text.push_str(&format!(
            "  default   {d:.3} ms   → tuned is {s:.2}× the default's speed\n"
        ));
    }
    if let (Some(m), Some(sp)) = (summary.measured, summary.space) {
        text.push_str(&format!("  searched  {m} of {sp} variants\n"));
    }
    text.push_str(&format!("  database  {}\n", summary.db));
    emit_line(&text).map_err(CliError::Stdout)
}

fn warn(warnings: &[DbWarning]) {
    for w in warnings {
        eprintln!("warning: {w}");
    }
}
