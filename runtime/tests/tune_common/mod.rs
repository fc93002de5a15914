//! Shared fixtures for the tuner tests: a toy CPU-like Variant space with real pruning rules,
//! synthetic cost landscapes, and a synthetic benchmark whose "times" come from a landscape
//! (so tests are deterministic and never time anything).
#![allow(dead_code)]

use nsac_dsl::problem::Problem;
use nsac_dsl::spec::{Combine, CombineMode, HeadDim, Heads, Spec};
use nsac_runtime::tune::fingerprint::{CpuFingerprint, DeviceFingerprint};
use nsac_runtime::tune::{
    BenchError, Benchmark, Dimension, Point, PruneReason, TuneKey, VariantSpace,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// A CPU-like Variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToyVariant {
    pub q_tile: u32,
    pub k_tile: u32,
    pub unroll: u32,
    pub fuse: bool,
    pub threads: u32,
}

pub const Q_TILES: [u32; 4] = [1, 4, 8, 16];
pub const K_TILES: [u32; 4] = [16, 32, 48, 64];
pub const UNROLLS: [u32; 3] = [1, 2, 4];
pub const FUSE: [bool; 2] = [false, true];
pub const THREADS: [u32; 3] = [1, 2, 4];

/// The toy space: key tiles must divide the spec's selection block, and a tile's scratch
/// (q_tile × k_tile × 4 bytes) must fit the "device" limit.
pub struct ToySpace {
    pub block: u32,
    pub scratch_bytes: u64,
}

impl VariantSpace for ToySpace {
    type Variant = ToyVariant;

    fn dimensions(&self) -> Vec<Dimension> {
        vec![
            Dimension::new("q_tile", &Q_TILES),
            Dimension::new("k_tile", &K_TILES),
            Dimension::new("unroll", &UNROLLS),
            Dimension::new("fuse", &FUSE),
            Dimension::new("threads", &THREADS),
        ]
    }

    fn variant_at(&self, p: &[usize]) -> ToyVariant {
        ToyVariant {
            q_tile: Q_TILES[p[0]],
            k_tile: K_TILES[p[1]],
            unroll: UNROLLS[p[2]],
            fuse: FUSE[p[3]],
            threads: THREADS[p[4]],
        }
    }

    fn default_point(&self) -> Point {
        vec![0, 0, 0, 0, 0]
    }

    fn check(&self, v: &ToyVariant) -> Result<(), PruneReason> {
        if !self.block.is_multiple_of(v.k_tile) {
            return Err(PruneReason::NotDivisible {
                knob: "k_tile".into(),
                value: v.k_tile.into(),
                what: "selection block".into(),
                size: self.block.into(),
            });
        }
        let scratch = u64::from(v.q_tile) * u64::from(v.k_tile) * 4;
        if scratch > self.scratch_bytes {
            return Err(PruneReason::ExceedsLimit {
                resource: "scratch bytes".into(),
                needed: scratch,
                available: self.scratch_bytes,
            });
        }
        Ok(())
    }
}

/// A synthetic cost landscape over a grid: a product of per-dimension factors, pairwise
/// interaction factors, and holes (points that fail to compile).
pub struct Landscape {
    pub shape: Vec<usize>,
    per_dim: Vec<Vec<f64>>,
    pairs: HashMap<(usize, usize, usize, usize), f64>,
    holes: Vec<Point>,
}

impl Landscape {
    /// A random landscape; `interaction` is the spread of the pairwise factors (0 = separable).
    pub fn random(shape: &[usize], interaction: f64, hole_rate: f64, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let per_dim = shape
            .iter()
            .map(|&n| (0..n).map(|_| rng.random_range(1.0..3.0)).collect())
            .collect();
        let mut pairs = HashMap::new();
        for a in 0..shape.len() {
            for b in a + 1..shape.len() {
                for i in 0..shape[a] {
                    for j in 0..shape[b] {
                        let f = 1.0 + interaction * rng.random_range(-1.0..1.0);
                        pairs.insert((a, i, b, j), f);
                    }
                }
            }
        }
        let holes = all_points(shape)
            .into_iter()
            .filter(|_| rng.random_bool(hole_rate))
            .collect();
        Landscape {
            shape: shape.to_vec(),
            per_dim,
            pairs,
            holes,
        }
    }

    /// The cost at `p`, or `None` for a hole.
    pub fn cost(&self, p: &[usize]) -> Option<f64> {
        if self.holes.iter().any(|h| h.as_slice() == p) {
            return None;
        }
        let mut c = 100.0;
        for (d, &i) in p.iter().enumerate() {
            c *= self.per_dim[d][i];
            for (e, &j) in p.iter().enumerate().skip(d + 1) {
                c *= self.pairs[&(d, i, e, j)];
            }
        }
        Some(c)
    }
}

/// Every point of a grid, row-major.
pub fn all_points(shape: &[usize]) -> Vec<Point> {
    let mut points = vec![vec![]];
    for &n in shape {
        points = points
            .into_iter()
            .flat_map(|p| {
                (0..n).map(move |i| {
                    let mut q = p.clone();
                    q.push(i);
                    q
                })
            })
            .collect();
    }
    points
}

/// The index of each toy variant's values in the toy space.
pub fn toy_point(v: &ToyVariant) -> Point {
    let at = |values: &[u32], x: u32| values.iter().position(|&y| y == x).unwrap_or(0);
    vec![
        at(&Q_TILES, v.q_tile),
        at(&K_TILES, v.k_tile),
        at(&UNROLLS, v.unroll),
        usize::from(v.fuse),
        at(&THREADS, v.threads),
    ]
}

/// A benchmark whose times come from a landscape over the toy space.
pub struct FakeBench {
    pub landscape: Landscape,
    /// Variants that compile and run but disagree with the "oracle".
    pub wrong: Vec<ToyVariant>,
    /// Variants whose runs fail.
    pub run_fails: Vec<ToyVariant>,
    pub compiles: AtomicUsize,
    pub checks: Mutex<Vec<ToyVariant>>,
    /// Timed runs per variant (warm-up included).
    pub runs: Mutex<HashMap<Point, usize>>,
    /// A point that looks `factor` times its cost during its first `runs` runs (a quiet moment
    /// of a shared machine), then shows its true cost.
    pub lucky: Option<(Point, f64, usize)>,
}

impl FakeBench {
    pub fn new(landscape: Landscape) -> Self {
        FakeBench {
            landscape,
            wrong: Vec::new(),
            run_fails: Vec::new(),
            compiles: AtomicUsize::new(0),
            checks: Mutex::new(Vec::new()),
            runs: Mutex::new(HashMap::new()),
            lucky: None,
        }
    }
}

/// A compiled fake kernel: its point, and the run count for deterministic jitter.
pub struct FakeKernel {
    point: Point,
    runs: u32,
}

impl Benchmark<ToyVariant> for FakeBench {
    type Kernel = FakeKernel;

    fn compile(&self, v: &ToyVariant) -> Result<FakeKernel, BenchError> {
        self.compiles.fetch_add(1, Ordering::SeqCst);
        let point = toy_point(v);
        match self.landscape.cost(&point) {
            Some(_) => Ok(FakeKernel { point, runs: 0 }),
            None => Err(format!("no code for {v:?}").into()),
        }
    }

    fn time_once(&self, k: &mut FakeKernel) -> Result<Duration, BenchError> {
        let total = {
            let mut runs = self.runs.lock().unwrap();
            let n = runs.entry(k.point.clone()).or_default();
            *n += 1;
            *n
        };
        let luck = match &self.lucky {
            Some((p, factor, first)) if *p == k.point && total <= *first => *factor,
            _ => 1.0,
        };
        let v = ToySpace {
            block: 64,
            scratch_bytes: u64::MAX,
        }
        .variant_at(&k.point);
        if self.run_fails.contains(&v) {
            return Err("launch failed".into());
        }
        // The first run after warm-up is slow, like a cold cache; the median must not care.
        k.runs += 1;
        let cost = self.landscape.cost(&k.point).unwrap_or(f64::INFINITY);
        let jitter = if k.runs == 3 {
            1.5
        } else {
            1.0 + 0.001 * f64::from(k.runs % 3)
        };
        Ok(Duration::from_secs_f64(cost * jitter * luck * 1e-6))
    }

    fn check(&self, v: &ToyVariant) -> Result<(), BenchError> {
        self.checks.lock().unwrap().push(v.clone());
        if self.wrong.contains(v) {
            Err("max rel err 3e-2 > 1e-5".into())
        } else {
            Ok(())
        }
    }
}

/// A small spec to build keys from.
pub fn spec() -> Spec {
    Spec {
        name: "toy".into(),
        heads: Heads { q: 4, kv: 2 },
        head_dim: HeadDim { qk: 32, v: 32 },
        causal: true,
        scale: None,
        branches: Vec::new(),
        combine: Combine {
            mode: CombineMode::Sum,
            branches: Vec::new(),
        },
    }
}

/// A CPU fingerprint that is not this machine's.
pub fn fake_cpu(model: &str) -> DeviceFingerprint {
    DeviceFingerprint::Cpu(CpuFingerprint {
        model: model.into(),
        arch: "x86_64".into(),
        features: vec!["sse4.1".into(), "avx".into()],
        cores: 2,
    })
}

/// A key for spec hash `spec` at batch 1, length `len`.
pub fn key(spec_hash: &str, len: usize, device: DeviceFingerprint) -> TuneKey {
    let shape = Problem::batched(1, len).resolve(&spec()).unwrap();
    TuneKey::new(spec_hash, &shape, device)
}
