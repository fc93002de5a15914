//! The CPU backend in the tuner: the space's pruning on the library specs, a tiny real tune
//! recorded in a temporary DB and found there again, a retune when the device or version
//! changes, and (ignored) the measurements of the full tune and of tuned vs default at 16K.

use nsac_compiler::cpu::CpuVariant;
use nsac_dsl::Spec;
use nsac_dsl::problem::{Problem, Shape};
use nsac_dsl::spec::{HeadDim, Heads};
use nsac_kernels::io::random_inputs;
use nsac_runtime::cpu::CpuKernel;
use nsac_runtime::tune::cpu::{
    CpuBench, CpuCandidate, CpuKnobs, CpuSpace, CpuTuneOptions, available_cores, cpu_key, tune_cpu,
    tune_cpu_for_key, tuned_cpu_variant,
};
use nsac_runtime::tune::search::SearchConfig;
use nsac_runtime::tune::space::enumerate;
use nsac_runtime::tune::{
    Benchmark, CpuFingerprint, DeviceFingerprint, Outcome, Progress, TuneOptions, Tuned, TuningDb,
    VariantSpace,
};
use std::path::Path;
use std::time::{Duration, Instant};

fn library(name: &str) -> Spec {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../kernels")
        .join(format!("{name}.nsa"));
    nsac_dsl::parse_text(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn shape(spec: &Spec, len: usize, heads: (u32, u32), dim: u32) -> Shape {
    let mut problem = Problem::batched(1, len);
    problem.heads = Some(Heads {
        q: heads.0,
        kv: heads.1,
    });
    problem.head_dim = Some(HeadDim { qk: dim, v: dim });
    problem.resolve(spec).unwrap()
}

#[test]
fn every_prune_reason_appears_on_library_specs() {
    for name in ["nsa-fla", "nsa-paper"] {
        let spec = library(name);
        // A GQA group of 2, so rows = 4 is too many; 2 cores, so 3 threads are too many;
        // unroll = 3 fails the backend's own validation; 4×4 tiles spill registers.
        let s = shape(&spec, 300, (4, 2), 32);
        let knobs = CpuKnobs {
            rows: vec![1, 2, 4],
            key_vectors: vec![1, 4],
            value_vectors: vec![2],
            key_tile: vec![64],
            unroll: vec![2, 3],
            query_chunk: vec![16],
            threads: vec![1, 2, 3],
            ..CpuKnobs::default()
        };
        let space = CpuSpace::with_cores(&s, knobs, 2);
        let grid = enumerate(&space).unwrap();
        let reasons: Vec<String> = grid.pruned.iter().map(|(_, r)| r.to_string()).collect();
        for needle in ["`unroll` = 3", "F32X4 registers", "GQA group", "threads"] {
            assert!(
                reasons.iter().any(|r| r.contains(needle)),
                "{name}: no prune mentions {needle}: {reasons:#?}"
            );
        }
        // Every kept point obeys every rule; every pruned one breaks at least one.
        let obeys = |c: &CpuCandidate| {
            c.variant.validate().is_ok()
                && c.variant.registers() <= 16
                && c.variant.rows <= 2
                && (1..=2).contains(&c.threads)
        };
        for p in &grid.valid {
            assert!(obeys(&space.variant_at(p)), "{name}: kept {p:?}");
        }
        for (p, why) in &grid.pruned {
            assert!(!obeys(&space.variant_at(p)), "{name}: pruned {p:?}: {why}");
        }
        assert!(!grid.valid.is_empty());
    }
}

#[test]
fn the_default_space_keeps_the_default_and_prunes_only_big_tiles() {
    let spec = library("nsa-fla");
    let s = shape(&spec, 2048, (16, 1), 64);
    let space = CpuSpace::new(&s, CpuKnobs::default());
    let grid = enumerate(&space).unwrap();
    let default = space.default_candidate();
    assert_eq!(default.variant, CpuVariant::default());
    assert_eq!(default.threads, available_cores());
    assert_eq!(space.variant_at(&space.default_point()), default);
    assert!(grid.valid.contains(&space.default_point()));
    for (p, why) in &grid.pruned {
        assert!(
            why.to_string().contains("F32X4 registers"),
            "{:?}: {why}",
            space.variant_at(p)
        );
    }
    // 3 rows × 2 × 2 tiles × 2 unrolls × 2 chunks, one key tile and one thread count: small
    // enough to measure exhaustively; a window branch doubles it with a second key tile.
    assert_eq!(grid.valid.len() + grid.pruned.len(), 48);
    let paper = library("nsa-paper");
    let with_window = CpuSpace::new(
        &shape(&paper, 2048, (16, 1), 64),
        CpuKnobs::for_spec(&paper),
    );
    assert_eq!(enumerate(&with_window).unwrap().total(), 96);
}

#[test]
fn the_tuning_problem_is_a_small_proxy_with_the_same_group_and_dims() {
    use nsac_runtime::tune::cpu::{TUNE_WORK_GFLOP, tuning_shape};
    for name in ["nsa-fla", "nsa-paper"] {
        let spec = library(name);
        let big = shape(&spec, 16384, (64, 4), 128);
        let proxy = tuning_shape(&spec, &big);
        assert_eq!((proxy.heads.q, proxy.heads.kv), (16, 1), "{name}");
        assert_eq!(proxy.head_dim, big.head_dim);
        assert_eq!(proxy.batch, 1);
        assert!(
            proxy.seq_len.is_power_of_two() && proxy.seq_len >= 256,
            "{name}: {proxy:?}"
        );
        let gflop = |s: &Shape| nsac_compiler::cost::estimate(&spec, s).unwrap().flops.total / 1e9;
        assert!(
            gflop(&proxy) <= TUNE_WORK_GFLOP || proxy.seq_len == 256,
            "{name}"
        );
        // The next power of two would be over the budget.
        let longer = shape(&spec, proxy.seq_len * 2, (16, 1), 128);
        assert!(gflop(&longer) > TUNE_WORK_GFLOP, "{name}");
        // A small problem is its own proxy (modulo kv heads).
        let small = shape(&spec, 300, (4, 2), 16);
        let p = tuning_shape(&spec, &small);
        assert_eq!((p.seq_len, p.heads.q, p.heads.kv), (256, 2, 1));
    }
}

#[test]
fn the_check_accepts_variants_and_rejects_a_kernel_of_another_spec() {
    let spec = library("nsa-paper");
    let s = shape(&spec, 150, (4, 2), 16);
    let bench = CpuBench::new(&spec, &s).unwrap();
    for variant in [
        CpuVariant::default(),
        CpuVariant {
            rows: 1,
            key_vectors: 3,
            value_vectors: 1,
            key_tile: 32,
            unroll: 4,
            query_chunk: 7,
            bwd_key_tile: 8,
            bwd_query_chunk: 3,
        },
    ] {
        bench
            .check(&CpuCandidate {
                variant,
                threads: 1,
            })
            .unwrap();
    }
    // The bench of a spec whose window is wider gives other outputs: its check must fail
    // for the kernels of nsa-paper, which is what `check` would see from a wrong kernel.
    let mut wider = spec.clone();
    for b in &mut wider.branches {
        if let nsac_dsl::spec::BranchKind::Window(w) = &mut b.kind {
            w.size = 5;
        }
    }
    let wrong = CpuBench::new(&wider, &s).unwrap();
    let err = wrong
        .check_kernel(
            &CpuKernel::compile(&spec, wrong.check_shape(), &CpuVariant::default()).unwrap(),
            1,
        )
        .unwrap_err();
    assert!(err.to_string().contains("max|got−ref|/max|ref|"), "{err}");
}

/// A small space (2 rows × 2 key vectors × 1 thread, plus the default's values) and quick
/// timing: enough to exercise compile, time, check and record on a real spec.
fn tiny_options() -> CpuTuneOptions {
    CpuTuneOptions {
        knobs: CpuKnobs {
            rows: vec![1, 2],
            key_vectors: vec![1, 2],
            value_vectors: vec![2],
            key_tile: vec![64],
            unroll: vec![2],
            query_chunk: vec![16],
            threads: vec![1],
            ..CpuKnobs::default()
        },
        tune: TuneOptions {
            search: SearchConfig {
                exhaustive_limit: 64,
                ..SearchConfig::default()
            },
            warmup: 0,
            repeats: 1,
            drop_factor: 100.0,
            confirm_finalists: 2,
            confirm_rounds: 2,
        },
    }
}

#[test]
fn a_tiny_tune_is_recorded_and_found_again() {
    let dir = tempfile::tempdir().unwrap();
    let db = TuningDb::open(dir.path().join("tuning.yaml"));
    let spec = library("nsa-fla");
    let s = shape(&spec, 173, (4, 2), 16);
    assert_eq!(tuned_cpu_variant(&spec, &s, &db), None);
    let options = tiny_options();
    let mut events = Vec::new();
    let (first, warnings) =
        tune_cpu(&spec, &s, &db, &options, false, &mut |p| events.push(p)).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let Tuned::Fresh(result) = &first else {
        panic!("an empty DB must tune: {first:?}");
    };
    // rows ∈ {1, 2, 4} × key_vectors ∈ {1, 2} × threads ∈ {1, cores}; rows 4 > group 2.
    let threads = if available_cores() > 1 { 2 } else { 1 };
    assert_eq!(result.space, 6 * threads);
    assert_eq!(result.measured(), 4 * threads);
    assert!(
        result
            .candidates
            .iter()
            .all(|c| !matches!(c.outcome, Outcome::WrongResult { .. }))
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Progress::Finished { .. }))
    );
    let best = result.best;

    // Same spec, another T in the same power-of-two bucket: a hit, nothing compiled.
    let s2 = shape(&spec, 250, (4, 2), 16);
    let mut second_events = 0;
    let (second, _) = tune_cpu(&spec, &s2, &db, &options, false, &mut |_| {
        second_events += 1
    })
    .unwrap();
    assert_eq!(second_events, 0);
    assert!(matches!(second, Tuned::Stored { variant, .. } if variant == best));
    assert_eq!(tuned_cpu_variant(&spec, &s2, &db), Some(best));
    // Another bucket misses.
    assert_eq!(
        tuned_cpu_variant(&spec, &shape(&spec, 300, (4, 2), 16), &db),
        None
    );
}

#[test]
fn another_device_or_version_retunes() {
    let spec = library("nsa-paper");
    let s = shape(&spec, 99, (2, 1), 8);
    let mut options = tiny_options();
    options.knobs.rows = vec![1];
    options.knobs.key_vectors = vec![2];
    let here = cpu_key(&spec, &s);

    let mut other_cpu = here.clone();
    other_cpu.device = DeviceFingerprint::Cpu(CpuFingerprint {
        model: "Some Other CPU".into(),
        arch: "x86_64".into(),
        features: vec![],
        cores: 64,
    });
    let mut older = here.clone();
    older.nsac = "0.0.0-old".into();
    for stale in [other_cpu, older] {
        let dir = tempfile::tempdir().unwrap();
        let db = TuningDb::open(dir.path().join("tuning.yaml"));
        let (tuned, _) =
            tune_cpu_for_key(&stale, &spec, &s, &db, &options, false, &mut |_| {}).unwrap();
        assert!(matches!(tuned, Tuned::Fresh(_)));
        assert_eq!(
            tuned_cpu_variant(&spec, &s, &db),
            None,
            "an entry of {stale:?} must not serve this machine"
        );
        let (tuned, _) = tune_cpu(&spec, &s, &db, &options, false, &mut |_| {}).unwrap();
        assert!(matches!(tuned, Tuned::Fresh(_)), "stale entry reused");
        let (again, _) = tune_cpu(&spec, &s, &db, &options, false, &mut |_| {}).unwrap();
        assert!(matches!(again, Tuned::Stored { .. }));
        // `retune` ignores a current entry.
        let (forced, _) = tune_cpu(&spec, &s, &db, &options, true, &mut |_| {}).unwrap();
        assert!(matches!(forced, Tuned::Fresh(_)));
    }
}

/// Median of `runs` timed runs after one warm-up.
fn time(kernel: &CpuKernel, inputs: &nsac_kernels::io::Inputs, threads: usize) -> Duration {
    kernel.run(inputs, threads).unwrap();
    let mut times: Vec<Duration> = (0..3)
        .map(|_| {
            let start = Instant::now();
            kernel.run(inputs, threads).unwrap();
            start.elapsed()
        })
        .collect();
    times.sort();
    times[1]
}

/// The measurements of the report: the full default-space tune of nsa-fla and nsa-paper
/// (heads 16/1, head_dim 64) at T = `NSAC_TUNE_T` (default 2048), then the tuned and the
/// default variant at T = 16384 (default on all cores), side by side.
/// `cargo test --release -p nsac-runtime --test tune_cpu -- --ignored --nocapture`
#[test]
#[ignore = "minutes of measurement; run by hand in release mode"]
fn measure_full_tune_and_tuned_vs_default() {
    let tune_t: usize = std::env::var("NSAC_TUNE_T")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2048);
    let dir = tempfile::tempdir().unwrap();
    let db = TuningDb::open(dir.path().join("tuning.yaml"));
    let DeviceFingerprint::Cpu(cpu) = DeviceFingerprint::this_cpu() else {
        unreachable!()
    };
    println!(
        "cpu: {} ({} cores, {:?})",
        cpu.model, cpu.cores, cpu.features
    );
    let options = CpuTuneOptions::for_spec(&library("nsa-paper"));
    for name in ["nsa-fla", "nsa-paper"] {
        let spec = library(name);
        let s = shape(&spec, tune_t, (16, 1), 64);
        let start = Instant::now();
        let (tuned, _) = tune_cpu(&spec, &s, &db, &options, true, &mut |_| {}).unwrap();
        let took = start.elapsed();
        let Tuned::Fresh(result) = tuned else {
            unreachable!()
        };
        println!(
            "{name}: tune T={tune_t}: {:.1} s, space {}, measured {}, best {:?} {:.2} ms, \
             default {:.2} ms ({:.2}x)",
            took.as_secs_f64(),
            result.space,
            result.measured(),
            result.best,
            result.best_time.as_secs_f64() * 1e3,
            result
                .default_time
                .map_or(f64::NAN, |t| t.as_secs_f64() * 1e3),
            result.speedup_over_default().unwrap_or(f64::NAN),
        );
        let big = shape(&spec, 16384, (16, 1), 64);
        let inputs = random_inputs(&spec, &big, 7);
        let default = CpuKernel::compile(&spec, &big, &CpuVariant::default()).unwrap();
        let best = CpuKernel::compile(&spec, &big, &result.best.variant).unwrap();
        let d = time(&default, &inputs, available_cores());
        let b = time(&best, &inputs, result.best.threads);
        println!(
            "{name}: T=16384: default {:.1} ms ({} threads), tuned {:.1} ms ({} threads): {:.2}x",
            d.as_secs_f64() * 1e3,
            available_cores(),
            b.as_secs_f64() * 1e3,
            result.best.threads,
            d.as_secs_f64() / b.as_secs_f64()
        );
    }
}
