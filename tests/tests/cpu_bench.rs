//! The CPU benchmarks of the issue, behind `#[ignore]` (performance is shown by benchmarks,
//! never by timed tests), and a check of what the backward benchmark counts. Run:
//! `cargo test --release -p nsac-tests --test cpu_bench -- --ignored --nocapture --test-threads 1`

mod cpu_common;

use cpu_common::{nsa_fla, nsa_paper, with_heads};
use nsac_compiler::cpu::CpuVariant;
use nsac_dsl::problem::Problem;
use nsac_runtime::bench::{
    BACKWARD_FLOPS_PER_FORWARD, BenchOptions, bench_cpu, bench_cpu_backward,
};

#[test]
#[ignore = "benchmark; run explicitly in release"]
fn bench_nsa_fla_and_paper() {
    let seqs: Vec<usize> = std::env::var("NSAC_BENCH_SEQS")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|| vec![4096, 16384]);
    for spec in [nsa_fla(), nsa_paper()] {
        for &t in &seqs {
            let shape = with_heads(Problem::batched(1, t), 16, 1, 64, 64)
                .resolve(&spec)
                .expect("valid");
            let opts = BenchOptions {
                warmup: 1,
                runs: 3,
                oracle_seq_len: Some(1024),
                seed: 0,
            };
            let report =
                bench_cpu(&spec, &shape, &CpuVariant::default(), 2, &opts).expect("bench runs");
            println!("{report}");
            println!(
                "{}",
                serde_json::to_string(&report).expect("report serializes")
            );
        }
    }
}

/// `bench --backward` counts the forward's work exactly as `bench` does (the same kernel
/// choices on the same seed), the backward's as 2.5× that, and its rates and ratios from the
/// times it reports (what is checked is the arithmetic, not the speed).
#[test]
fn backward_bench_counts_the_work_of_the_forward() {
    let spec = nsa_paper();
    let shape = with_heads(Problem::batched(1, 173), 4, 2, 16, 8)
        .resolve(&spec)
        .expect("valid");
    let opts = BenchOptions {
        warmup: 1,
        runs: 3,
        oracle_seq_len: None,
        seed: 7,
    };
    let v = CpuVariant::default();
    let fwd = bench_cpu(&spec, &shape, &v, 2, &opts).expect("bench runs");
    let r = bench_cpu_backward(&spec, &shape, &v, 2, &opts).expect("backward bench runs");
    assert!(r.forward_flops > 0.0);
    assert_eq!(r.forward_flops, fwd.flops);
    assert_eq!(
        r.backward_flops,
        BACKWARD_FLOPS_PER_FORWARD * r.forward_flops
    );
    assert_eq!(r.runs, 3);
    assert!(r.forward_ms > 0.0 && r.backward_ms > 0.0, "{r:?}");
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs();
    assert!(
        close(r.backward_over_forward, r.backward_ms / r.forward_ms),
        "{r:?}"
    );
    assert!(
        close(r.forward_gflops, r.forward_flops / r.forward_ms / 1e6),
        "{r:?}"
    );
    assert!(
        close(r.backward_gflops, r.backward_flops / r.backward_ms / 1e6),
        "{r:?}"
    );
    assert!(r.fma_ceiling_gflops > 0.0);
    for ratio in [r.forward_ceiling_ratio, r.backward_ceiling_ratio] {
        assert!(ratio.is_finite() && ratio > 0.0, "{r:?}");
    }
    let zero = BenchOptions { runs: 0, ..opts };
    assert!(bench_cpu_backward(&spec, &shape, &v, 2, &zero).is_err());
}
