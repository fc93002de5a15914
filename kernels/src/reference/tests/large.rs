//! A cross-check-sized call (T = 4096, HQ = 16, H = 1, D = 64, paper-like branches), ignored by
//! default: run it in release to see the oracle's cost,
//! `cargo test -p nsac-kernels --release --lib -- --ignored large`.

use nsac_dsl::spec::{CombineMode, Pool};

use super::support::*;
use crate::reference::forward;

#[test]
#[ignore = "large; run in release"]
fn large_paper_like_call_is_finite() {
    let spec = spec(
        true,
        (16, 1),
        (64, 64),
        vec![
            compress("cmp", 32, 16, Pool::Mean),
            select("slc", 64, 16, "cmp", 1, 2),
            window("win", 512),
        ],
        CombineMode::Gate,
    );
    let shape = batched(&spec, 1, 4096);
    let inputs = random(&spec, &shape, 1);
    let start = std::time::Instant::now();
    let out = forward(&spec, &shape, &inputs).unwrap();
    eprintln!("forward: {:?}", start.elapsed());
    assert!(out.o.data.iter().all(|x| x.is_finite()));
    // From t = 15·64 on, 16 blocks are candidates: no padding.
    let idx = &out.selected["slc"].data;
    assert!(idx[15 * 64 * 16..].iter().all(|&i| i >= 0));
}
