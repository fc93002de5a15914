//! The tuner: prunes a space, searches it, compiles candidates in parallel, times them.
//!
//! A backend plugs in through [`Benchmark`]: compile a Variant, time one run, and check a Variant
//! against the f64 oracle on a small problem. The tuner compiles each batch of candidates the
//! search asks for in parallel (rayon), then times them one at a time: `warmup` untimed runs,
//! then timed runs whose median is the candidate's time. A candidate whose first timed run is
//! more than `drop_factor` × the best median so far is dropped early. A candidate may only become
//! the best after [`Benchmark::check`] accepted it. Compile, run and check failures are recorded
//! in the result, never fatal. Progress goes to a callback (the CLI drives a progress bar).
//!
//! On a shared machine a candidate timed during a burst of other work looks slow, one timed in
//! a quiet moment fast. With `confirm_finalists` > 0 the search is followed by a confirmation:
//! the default and the fastest finalists are timed again in turn, `confirm_rounds` rounds of
//! one run each (so drift hits all of them alike), and the best and the default's time come
//! from these runs. The default is always a finalist, so the tuned result is never reported
//! slower than the default.

use super::search::{SearchConfig, Strategy, search};
use super::space::{Point, SpaceError, VariantSpace, enumerate};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::Duration;

/// A failure a backend reports while compiling, running or checking a candidate.
pub type BenchError = Box<dyn std::error::Error + Send + Sync>;

/// How a backend compiles, times and checks its Variants.
pub trait Benchmark<V>: Sync {
    /// A compiled candidate, ready to run on the tuning problem.
    type Kernel: Send;

    /// Compiles `variant` for the tuning problem (called from several threads at once).
    fn compile(&self, variant: &V) -> Result<Self::Kernel, BenchError>;

    /// Runs `kernel` once on the tuning problem and returns how long it took.
    fn time_once(&self, kernel: &mut Self::Kernel) -> Result<Duration, BenchError>;

    /// Checks `variant` against the oracle on a small problem.
    fn check(&self, variant: &V) -> Result<(), BenchError>;
}

/// How the tuner measures and searches.
#[derive(Debug, Clone, PartialEq)]
pub struct TuneOptions {
    pub search: SearchConfig,
    /// Untimed runs before timing.
    pub warmup: usize,
    /// Timed runs per candidate (at least 1); the median is its time.
    pub repeats: usize,
    /// Drop a candidate whose first timed run exceeds this multiple of the best time so far.
    pub drop_factor: f64,
    /// Finalists (besides the default) of the confirmation round; 0 skips it.
    pub confirm_finalists: usize,
    /// Rounds of the confirmation: each finalist runs once per round, in turn.
    pub confirm_rounds: usize,
}

impl Default for TuneOptions {
    fn default() -> Self {
        TuneOptions {
            search: SearchConfig::default(),
            warmup: 2,
            repeats: 5,
            drop_factor: 3.0,
            confirm_finalists: 0,
            confirm_rounds: 3,
        }
    }
}

/// What became of one candidate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Timed: the median of `runs` runs, in microseconds.
    Measured {
        median_us: f64,
        runs: usize,
    },
    /// Its first timed run was far slower than the best at that moment.
    DroppedEarly {
        first_run_us: f64,
        best_us: f64,
    },
    /// Rejected before compiling.
    Pruned {
        reason: String,
    },
    CompileFailed {
        error: String,
    },
    RunFailed {
        error: String,
    },
    /// It would have been the best, but disagrees with the oracle.
    WrongResult {
        error: String,
    },
}

impl Outcome {
    /// The median time, for a measured candidate.
    pub fn median(&self) -> Option<Duration> {
        match self {
            Outcome::Measured { median_us, .. } => Some(Duration::from_secs_f64(median_us * 1e-6)),
            _ => None,
        }
    }
}

/// One candidate and its outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct CandidateReport<V> {
    pub variant: V,
    pub outcome: Outcome,
}

/// What the progress callback hears.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// The space is pruned and the search chosen. `planned` is the number of measurements the
    /// search may make at most (exact for exhaustive search).
    Planned {
        space: usize,
        pruned: usize,
        strategy: Strategy,
        planned: usize,
    },
    /// A batch of `count` candidates is being compiled.
    Compiling { count: usize },
    /// The confirmation round of `finalists` candidates has started.
    Confirming { finalists: usize },
    /// One candidate is done: `done` measured so far, `variant` is its `Debug` form.
    Candidate {
        done: usize,
        planned: usize,
        variant: String,
        outcome: Outcome,
    },
    /// The search is over.
    Finished { measured: usize },
}

/// The tuner's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct TuneResult<V> {
    pub best: V,
    pub best_time: Duration,
    /// The space's default Variant and its time (`None` if it was pruned or failed).
    pub default: V,
    pub default_time: Option<Duration>,
    pub strategy: Strategy,
    /// Every candidate: measured ones in measuring order, then the pruned ones.
    pub candidates: Vec<CandidateReport<V>>,
    /// Points in the whole space, before pruning.
    pub space: usize,
}

impl<V> TuneResult<V> {
    /// How many times faster the best is than the default (`default_time / best_time`).
    pub fn speedup_over_default(&self) -> Option<f64> {
        let default = self.default_time?.as_secs_f64();
        let best = self.best_time.as_secs_f64();
        (best > 0.0).then(|| default / best)
    }

    /// Candidates that were compiled (or tried to be).
    pub fn measured(&self) -> usize {
        self.candidates
            .iter()
            .filter(|c| !matches!(c.outcome, Outcome::Pruned { .. }))
            .count()
    }
}

/// Why tuning produced no Variant.
#[derive(Debug, thiserror::Error)]
pub enum TuneError {
    #[error(transparent)]
    Space(#[from] SpaceError),
    #[error("every candidate of the space was pruned ({pruned} of them)")]
    AllPruned { pruned: usize },
    #[error(
        "none of the {tried} candidates tried compiled, ran and matched the oracle; first failure: {first_failure}"
    )]
    NothingWorked { tried: usize, first_failure: String },
}

/// Tunes `space` with `bench`: the best checked Variant, and every candidate's outcome.
pub fn tune<S, B>(
    space: &S,
    bench: &B,
    options: &TuneOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<TuneResult<S::Variant>, TuneError>
where
    S: VariantSpace + ?Sized,
    B: Benchmark<S::Variant> + ?Sized,
{
    let grid = enumerate(space)?;
    if grid.valid.is_empty() {
        return Err(TuneError::AllPruned {
            pruned: grid.pruned.len(),
        });
    }
    let default_point = space.default_point();
    let exhaustive = grid.valid.len() <= options.search.exhaustive_limit;
    progress(Progress::Planned {
        space: grid.total(),
        pruned: grid.pruned.len(),
        strategy: if exhaustive {
            Strategy::Exhaustive
        } else {
            Strategy::CoordinateDescent
        },
        planned: if exhaustive {
            grid.valid.len()
        } else {
            options.search.max_measurements.min(grid.valid.len())
        },
    });
    let mut bencher = Bencher {
        space,
        bench,
        options,
        planned: options.search.max_measurements.min(grid.valid.len()),
        best_us: None,
        results: HashMap::new(),
        order: Vec::new(),
        progress,
    };
    // The default goes first: it is the baseline, and its time arms the early drop.
    if grid.valid.contains(&default_point) {
        bencher.measure_batch(std::slice::from_ref(&default_point));
    }
    let outcome = search(
        &grid.shape,
        &grid.valid,
        &default_point,
        &options.search,
        &mut |points| bencher.measure_batch(points),
    );
    let confirmed = bencher.confirm(&default_point);
    let measured = bencher.order.len();
    (bencher.progress)(Progress::Finished { measured });

    let report = |point: &Point| CandidateReport {
        variant: space.variant_at(point),
        outcome: bencher.results[point].outcome.clone(),
    };
    let mut candidates: Vec<_> = bencher.order.iter().map(report).collect();
    let best = match &confirmed {
        Some(c) => c.best.as_ref().map(|(p, t)| (p, *t)),
        None => bencher
            .order
            .iter()
            .filter(|p| bencher.results[*p].checked)
            .filter_map(|p| bencher.results[p].outcome.median().map(|t| (p, t)))
            .min_by(|a, b| a.1.cmp(&b.1)),
    };
    let Some((best_point, best_time)) = best else {
        let first_failure = candidates
            .iter()
            .find_map(|c| match &c.outcome {
                Outcome::CompileFailed { error }
                | Outcome::RunFailed { error }
                | Outcome::WrongResult { error } => Some(error.clone()),
                _ => None,
            })
            .unwrap_or_else(|| "no candidate was measured".to_string());
        return Err(TuneError::NothingWorked {
            tried: candidates.len(),
            first_failure,
        });
    };
    let default_time = match confirmed.as_ref().and_then(|c| c.default_time) {
        Some(t) => Some(t),
        None => bencher
            .results
            .get(&default_point)
            .and_then(|r| r.outcome.median()),
    };
    let best = space.variant_at(best_point);
    candidates.extend(grid.pruned.iter().map(|(p, why)| CandidateReport {
        variant: space.variant_at(p),
        outcome: Outcome::Pruned {
            reason: why.to_string(),
        },
    }));
    debug_assert!(outcome.measured <= measured);
    Ok(TuneResult {
        best,
        best_time,
        default: space.variant_at(&default_point),
        default_time,
        strategy: outcome.strategy,
        candidates,
        space: grid.total(),
    })
}

/// One measured point.
struct Measured {
    outcome: Outcome,
    /// Whether the oracle check accepted it (only candidates that beat the best are checked).
    checked: bool,
}

/// The measuring side of a tuning run: compiles batches, times, checks, reports progress.
struct Bencher<'a, S: VariantSpace + ?Sized, B: ?Sized> {
    space: &'a S,
    bench: &'a B,
    options: &'a TuneOptions,
    planned: usize,
    /// The best checked median so far, in microseconds.
    best_us: Option<f64>,
    results: HashMap<Point, Measured>,
    order: Vec<Point>,
    progress: &'a mut dyn FnMut(Progress),
}

impl<S, B> Bencher<'_, S, B>
where
    S: VariantSpace + ?Sized,
    B: Benchmark<S::Variant> + ?Sized,
{
    /// Measures `points` (compiling them in parallel) and returns their costs for the search:
    /// the median, or the first run for a dropped candidate, or `None` for a failure.
    fn measure_batch(&mut self, points: &[Point]) -> Vec<Option<f64>> {
        let fresh: Vec<&Point> = points
            .iter()
            .filter(|p| !self.results.contains_key(*p))
            .collect();
        // Compile a few per thread at a time: memory stays bounded and progress keeps moving.
        let chunk = rayon::current_num_threads().max(1) * 4;
        for fresh in fresh.chunks(chunk) {
            (self.progress)(Progress::Compiling { count: fresh.len() });
            let variants: Vec<S::Variant> =
                fresh.iter().map(|p| self.space.variant_at(p)).collect();
            let bench = self.bench;
            let kernels: Vec<Result<B::Kernel, BenchError>> =
                variants.par_iter().map(|v| bench.compile(v)).collect();
            for ((point, variant), kernel) in fresh.iter().zip(&variants).zip(kernels) {
                let measured = self.measure_one(variant, kernel);
                self.order.push((*point).clone());
                (self.progress)(Progress::Candidate {
                    done: self.order.len(),
                    planned: self.planned.max(self.order.len()),
                    variant: format!("{variant:?}"),
                    outcome: measured.outcome.clone(),
                });
                self.results.insert((*point).clone(), measured);
            }
        }
        points
            .iter()
            .map(|p| match self.results.get(p).map(|m| &m.outcome) {
                Some(Outcome::Measured { median_us, .. }) => Some(*median_us),
                Some(Outcome::DroppedEarly { first_run_us, .. }) => Some(*first_run_us),
                _ => None,
            })
            .collect()
    }

    fn measure_one(
        &mut self,
        variant: &S::Variant,
        kernel: Result<B::Kernel, BenchError>,
    ) -> Measured {
        let failed = |outcome| Measured {
            outcome,
            checked: false,
        };
        let mut kernel = match kernel {
            Ok(kernel) => kernel,
            Err(e) => {
                return failed(Outcome::CompileFailed {
                    error: e.to_string(),
                });
            }
        };
        let times = match self.time(&mut kernel) {
            Ok(Timing::Dropped { first_run_us }) => {
                return failed(Outcome::DroppedEarly {
                    first_run_us,
                    best_us: self.best_us.unwrap_or(f64::NAN),
                });
            }
            Ok(Timing::Runs(times)) => times,
            Err(e) => {
                return failed(Outcome::RunFailed {
                    error: e.to_string(),
                });
            }
        };
        let median_us = median(times.clone());
        let outcome = Outcome::Measured {
            median_us,
            runs: times.len(),
        };
        if self.best_us.is_some_and(|best| median_us >= best) {
            return failed(outcome);
        }
        match self.bench.check(variant) {
            Ok(()) => {
                self.best_us = Some(median_us);
                Measured {
                    outcome,
                    checked: true,
                }
            }
            Err(e) => failed(Outcome::WrongResult {
                error: e.to_string(),
            }),
        }
    }

    /// The confirmation round (see the module docs): `None` when it is off or there is nothing
    /// to compare.
    fn confirm(&mut self, default_point: &Point) -> Option<Confirmed> {
        let wanted = self.options.confirm_finalists;
        if wanted == 0 || self.options.confirm_rounds == 0 {
            return None;
        }
        let mut ranked: Vec<(Point, f64)> = self
            .order
            .iter()
            .filter(|p| *p != default_point)
            .filter_map(|p| match &self.results[p].outcome {
                Outcome::Measured { median_us, .. } => Some((p.clone(), *median_us)),
                _ => None,
            })
            .collect();
        ranked.sort_by(|a, b| a.1.total_cmp(&b.1));
        let mut finalists: Vec<Point> = ranked.into_iter().take(wanted).map(|x| x.0).collect();
        if matches!(
            self.results.get(default_point).map(|m| &m.outcome),
            Some(Outcome::Measured { .. })
        ) {
            finalists.push(default_point.clone());
        }
        if finalists.len() < 2 {
            return None;
        }
        (self.progress)(Progress::Confirming {
            finalists: finalists.len(),
        });
        let bench = self.bench;
        let variants: Vec<S::Variant> =
            finalists.iter().map(|p| self.space.variant_at(p)).collect();
        let compiled: Vec<Result<B::Kernel, BenchError>> =
            variants.par_iter().map(|v| bench.compile(v)).collect();
        let mut kernels: Vec<(usize, B::Kernel)> = compiled
            .into_iter()
            .enumerate()
            .filter_map(|(i, k)| k.ok().map(|k| (i, k)))
            .collect();
        let mut times: Vec<Vec<f64>> = vec![Vec::new(); finalists.len()];
        for (_, kernel) in &mut kernels {
            // One untimed run each: caches and page tables as in the first pass.
            let _ = bench.time_once(kernel);
        }
        for round in 0..self.options.confirm_rounds {
            let n = kernels.len();
            for k in 0..n {
                // Rotate the order every round so no finalist always runs first.
                let (i, kernel) = &mut kernels[(k + round) % n];
                if let Ok(t) = bench.time_once(kernel) {
                    times[*i].push(t.as_secs_f64() * 1e6);
                }
            }
        }
        let medians: Vec<Option<f64>> = times
            .into_iter()
            .map(|t| (!t.is_empty()).then(|| median(t)))
            .collect();
        let mut order: Vec<usize> = (0..finalists.len())
            .filter(|i| medians[*i].is_some())
            .collect();
        order.sort_by(|a, b| {
            medians[*a]
                .unwrap_or(f64::INFINITY)
                .total_cmp(&medians[*b].unwrap_or(f64::INFINITY))
        });
        let mut best = None;
        for i in order {
            let point = &finalists[i];
            let ok = self.results[point].checked || bench.check(&variants[i]).is_ok();
            if ok {
                if let Some(m) = self.results.get_mut(point) {
                    m.checked = true;
                }
                best = medians[i].map(|us| (point.clone(), Duration::from_secs_f64(us * 1e-6)));
                break;
            }
        }
        let default_time = finalists
            .iter()
            .position(|p| p == default_point)
            .and_then(|i| medians[i])
            .map(|us| Duration::from_secs_f64(us * 1e-6));
        Some(Confirmed { best, default_time })
    }

    /// Warm-up, then timed runs (in microseconds), or an early drop.
    fn time(&self, kernel: &mut B::Kernel) -> Result<Timing, BenchError> {
        for _ in 0..self.options.warmup {
            self.bench.time_once(kernel)?;
        }
        let first = self.bench.time_once(kernel)?.as_secs_f64() * 1e6;
        if self
            .best_us
            .is_some_and(|best| first > self.options.drop_factor * best)
        {
            return Ok(Timing::Dropped {
                first_run_us: first,
            });
        }
        let mut times = vec![first];
        for _ in 1..self.options.repeats.max(1) {
            times.push(self.bench.time_once(kernel)?.as_secs_f64() * 1e6);
        }
        Ok(Timing::Runs(times))
    }
}

/// What the confirmation round found.
struct Confirmed {
    /// The fastest finalist that passes the oracle check, with its confirmation median.
    best: Option<(Point, Duration)>,
    /// The default's confirmation median.
    default_time: Option<Duration>,
}

enum Timing {
    Dropped { first_run_us: f64 },
    Runs(Vec<f64>),
}

/// The median of a non-empty list (the mean of the middle two for an even count).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
    }
}
