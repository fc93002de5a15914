//! Search strategies over a pruned Variant grid, independent of how a point is measured.
//!
//! * **Exhaustive** when the pruned space has at most [`SearchConfig::exhaustive_limit`] points:
//!   every valid point is measured, so the best is the true best.
//! * **Coordinate descent with restarts** otherwise. From the default point, sweep the
//!   dimensions in order; for each, measure the whole line through the current point along that
//!   dimension (all its values, the others fixed) and move to the line's best. Repeat sweeps
//!   until a full sweep no longer improves. Then restart from random unmeasured valid points
//!   (seeded, so runs repeat) and keep the best seen, until the restarts or the measurement
//!   budget run out. Each line is one batch, so the caller can compile it in parallel.
//!   Kernel knobs interact mostly weakly (tile × unroll, warps × stages), which is the case
//!   coordinate descent handles well; the restarts guard against the stronger interactions.
//!   `runtime/tests/tune_search.rs` checks how often it finds the exhaustive best, and with
//!   how many measurements, on synthetic landscapes; its results are in BENCHMARKS.md ("Tuner —
//!   search on synthetic landscapes").
//!
//! A measurement is `Some(cost)` (lower is better) or `None` (failed, wrong, unusable); every
//! point is measured at most once.

use super::space::Point;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};

/// Which strategy a search used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    Exhaustive,
    CoordinateDescent,
}

/// The knobs of the search itself.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchConfig {
    /// Measure everything when the pruned space has at most this many points.
    pub exhaustive_limit: usize,
    /// Coordinate-descent runs from random starts after the one from the default point.
    pub restarts: usize,
    /// Stop starting new measurements once this many points have been measured.
    pub max_measurements: usize,
    /// Seed of the restart points.
    pub seed: u64,
}

impl Default for SearchConfig {
    fn default() -> Self {
        SearchConfig {
            exhaustive_limit: 48,
            restarts: 3,
            max_measurements: 400,
            seed: 0x5eed,
        }
    }
}

/// What a search found.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchOutcome {
    pub strategy: Strategy,
    /// The cheapest measured point and its cost; `None` when no point measured `Some`.
    pub best: Option<(Point, f64)>,
    /// Distinct points measured.
    pub measured: usize,
}

/// Searches the valid points of a grid of `shape` (value counts per dimension).
///
/// `start` is where descent begins (the default point; if it is not valid, the first valid
/// point). `measure` receives batches of distinct, never-before-seen valid points and returns
/// one cost per point, in order.
pub fn search(
    shape: &[usize],
    valid: &[Point],
    start: &[usize],
    config: &SearchConfig,
    measure: &mut dyn FnMut(&[Point]) -> Vec<Option<f64>>,
) -> SearchOutcome {
    let mut memo = Memo {
        costs: HashMap::new(),
        budget: config.max_measurements.max(1),
        measure,
    };
    let strategy = if valid.len() <= config.exhaustive_limit {
        memo.measure_all(valid);
        Strategy::Exhaustive
    } else {
        coordinate_descent(shape, valid, start, config, &mut memo);
        Strategy::CoordinateDescent
    };
    SearchOutcome {
        strategy,
        best: memo.best(),
        measured: memo.costs.len(),
    }
}

/// Measurements so far, the remaining budget, and the caller's measuring function.
struct Memo<'a> {
    costs: HashMap<Point, Option<f64>>,
    budget: usize,
    measure: &'a mut dyn FnMut(&[Point]) -> Vec<Option<f64>>,
}

impl Memo<'_> {
    fn exhausted(&self) -> bool {
        self.costs.len() >= self.budget
    }

    /// Measures the points not seen yet (within the budget), in order.
    fn measure_all(&mut self, points: &[Point]) {
        let mut seen = HashSet::new();
        let fresh: Vec<Point> = points
            .iter()
            .filter(|p| !self.costs.contains_key(*p) && seen.insert(*p))
            .take(self.budget.saturating_sub(self.costs.len()))
            .cloned()
            .collect();
        if fresh.is_empty() {
            return;
        }
        let costs = (self.measure)(&fresh);
        for (i, point) in fresh.into_iter().enumerate() {
            let cost = costs.get(i).copied().flatten().filter(|c| c.is_finite());
            self.costs.insert(point, cost);
        }
    }

    fn cost(&self, point: &[usize]) -> Option<f64> {
        self.costs.get(point).copied().flatten()
    }

    /// The cheapest measured point; ties go to the smaller point, so results repeat.
    fn best(&self) -> Option<(Point, f64)> {
        self.costs
            .iter()
            .filter_map(|(p, c)| c.map(|c| (p.clone(), c)))
            .min_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.cmp(&b.0)))
    }
}

fn coordinate_descent(
    shape: &[usize],
    valid: &[Point],
    start: &[usize],
    config: &SearchConfig,
    memo: &mut Memo<'_>,
) {
    let valid_set: HashSet<&Point> = valid.iter().collect();
    let Some(first) = valid
        .iter()
        .find(|p| p.as_slice() == start)
        .or_else(|| valid.first())
    else {
        return;
    };
    let mut restarts: Vec<&Point> = valid.iter().collect();
    restarts.shuffle(&mut StdRng::seed_from_u64(config.seed));
    let mut restarts = restarts.into_iter();
    let mut from = first.clone();
    for run in 0..=config.restarts {
        if run > 0 {
            match restarts.find(|p| !memo.costs.contains_key(*p)) {
                Some(p) => from = p.clone(),
                None => return,
            }
        }
        descend(shape, &valid_set, from.clone(), memo);
        if memo.exhausted() {
            return;
        }
    }
}

/// One descent: line sweeps from `point` until a sweep stops improving.
fn descend(shape: &[usize], valid: &HashSet<&Point>, mut point: Point, memo: &mut Memo<'_>) {
    memo.measure_all(std::slice::from_ref(&point));
    loop {
        let mut improved = false;
        for (dim, &count) in shape.iter().enumerate() {
            let line: Vec<Point> = (0..count)
                .map(|value| {
                    let mut p = point.clone();
                    p[dim] = value;
                    p
                })
                .filter(|p| valid.contains(p))
                .collect();
            memo.measure_all(&line);
            let here = memo.cost(&point).unwrap_or(f64::INFINITY);
            let line_best = line
                .iter()
                .filter_map(|p| memo.cost(p).map(|c| (p, c)))
                .min_by(|a, b| a.1.total_cmp(&b.1));
            if let Some((p, c)) = line_best
                && c < here
            {
                point = p.clone();
                improved = true;
            }
            if memo.exhausted() {
                return;
            }
        }
        if !improved {
            return;
        }
    }
}
