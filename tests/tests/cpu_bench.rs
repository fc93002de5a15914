//! The CPU benchmarks of the issue, behind `#[ignore]` (performance is shown by benchmarks,
//! never by timed tests). Run:
//! `cargo test --release -p nsac-tests --test cpu_bench -- --ignored --nocapture --test-threads 1`

mod cpu_common;

use cpu_common::{nsa_fla, nsa_paper, with_heads};
use nsac_compiler::cpu::CpuVariant;
use nsac_dsl::problem::Problem;
use nsac_runtime::bench::{BenchOptions, bench_cpu};

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
