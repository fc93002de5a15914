//! The GPU tuner on a real GPU: a tune of a small problem measures, checks and records a Variant
//! under this GPU's fingerprint, and the next call reuses it without measuring. Skips with a
//! printed reason when no CUDA driver or device is present.

use nsac_dsl::problem::{DType, Problem};
use nsac_runtime::tune::gpu::{GpuKnobs, GpuTuneOptions, tune_gpu, tuned_gpu_variant};
use nsac_runtime::tune::{Outcome, Tuned, TuningDb};

mod gpu_common;

#[test]
fn tuning_records_a_checked_variant_and_reuses_it() {
    let Some(gpu) = gpu_common::device() else {
        return;
    };
    let spec = gpu_common::library_specs()
        .into_iter()
        .find(|s| s.name == "nsa_fla")
        .expect("nsa_fla is in the library");
    let mut problem = Problem::batched(1, 4099);
    problem.dtype = DType::Bf16;
    let shape = problem.resolve(&spec).expect("valid");
    let dir = tempfile::tempdir().expect("temp dir");
    let dir = dir.path();
    let db = TuningDb::open(dir.join("tuning.yaml"));
    let mut options = GpuTuneOptions {
        knobs: GpuKnobs {
            warps_per_block: vec![4],
            select_tokens: vec![4, 8, 16],
            select_chunk: vec![32, 64],
            compress_tokens: vec![8],
            compress_max_regs: vec![0, 128],
            score_tokens: vec![8],
            compress_stages: vec![2],
            fuse_combine: vec![0, 1],
        },
        ..GpuTuneOptions::default()
    };
    options.tune.confirm_rounds = 3;
    let mut events = 0;
    let (first, _) = tune_gpu(&gpu, &spec, &shape, &db, &options, false, &mut |_| {
        events += 1
    })
    .expect("tunes");
    let Tuned::Fresh(result) = &first else {
        panic!("an empty database cannot hold a result");
    };
    println!(
        "device {}: best {} {:.3} ms, default {:?}, {} measured of {}",
        gpu.name(),
        result.best,
        result.best_time.as_secs_f64() * 1e3,
        result.default_time,
        result.measured(),
        result.space
    );
    assert!(events > 0);
    assert_eq!(result.space, 24);
    assert!(result.measured() >= 2);
    assert!(result.default_time.is_some());
    assert!(
        result
            .candidates
            .iter()
            .any(|c| c.variant == result.best && matches!(c.outcome, Outcome::Measured { .. }))
    );
    // The next call finds it under this GPU's fingerprint.
    let (again, _) = tune_gpu(&gpu, &spec, &shape, &db, &options, false, &mut |_| {
        panic!("a stored result must not be measured again")
    })
    .expect("looks up");
    assert!(matches!(again, Tuned::Stored { variant, .. } if variant == result.best));
    assert_eq!(
        tuned_gpu_variant(&gpu, &spec, &shape, &db),
        Some(result.best)
    );
    let text = std::fs::read_to_string(db.path()).expect("db written");
    let fingerprint = gpu.fingerprint().expect("fingerprint");
    assert!(text.contains(&fingerprint.name), "{text}");
    assert!(
        text.contains(&format!("sm_count: {}", fingerprint.sm_count)),
        "{text}"
    );
}

/// The ceiling probes run on every multiprocessor and give rates a GPU can have: tensor-core
/// `mma.sync` several times the f32 FMA rate (at least 4× since Ampere: 16× dense on A100), and
/// FMA no faster than every CUDA core retiring one FMA per cycle at 3 GHz.
#[test]
fn ceiling_probes_measure_plausible_rates() {
    use nsac_compiler::ptx::probe::Probe;
    let Some(gpu) = gpu_common::device() else {
        return;
    };
    let sms = gpu.fingerprint().expect("fingerprint").sm_count;
    let ffma = gpu.ceiling(Probe::Ffma).expect("ffma probe");
    let bf16 = gpu.ceiling(Probe::Mma(DType::Bf16)).expect("bf16 probe");
    let f16 = gpu.ceiling(Probe::Mma(DType::F16)).expect("f16 probe");
    eprintln!(
        "{}: f32 FMA {:.0}, mma.sync bf16 {:.0}, f16 {:.0} GFLOP/s",
        gpu.name(),
        ffma.gflops,
        bf16.gflops,
        f16.gflops
    );
    let fma_bound = f64::from(sms) * 128.0 * 2.0 * 3.0;
    assert!(
        ffma.gflops > 0.05 * fma_bound && ffma.gflops < fma_bound,
        "{ffma:?}"
    );
    assert!(bf16.gflops > 4.0 * ffma.gflops, "{bf16:?} vs {ffma:?}");
    assert!(f16.gflops > 4.0 * ffma.gflops, "{f16:?} vs {ffma:?}");
}
