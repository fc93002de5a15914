//! Cross-check-sized calls, ignored by default: the forward at T = 4096, HQ = 16, H = 1,
//! D = 64 with paper-like branches, and the backward of `nsa-paper.nsa` at T = 1000, heads
//! 16/4, head dims 64/32 (the CLI acceptance problem). Run them in release to see the
//! oracle's cost, `cargo test -p nsac-kernels --release --lib -- --ignored large --nocapture`.

use std::path::PathBuf;

use nsac_dsl::problem::Problem;
use nsac_dsl::spec::{CombineMode, HeadDim, Heads, Pool};

use super::grad_check::upstream;
use super::support::*;
use crate::reference::{backward_with_blocks, forward};

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

#[test]
#[ignore = "large; run in release"]
fn large_paper_backward_is_finite() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("nsa-paper.nsa");
    let spec = nsac_dsl::load(&path).unwrap();
    let shape = Problem {
        heads: Some(Heads { q: 16, kv: 4 }),
        head_dim: Some(HeadDim { qk: 64, v: 32 }),
        ..Problem::batched(1, 1000)
    }
    .resolve(&spec)
    .unwrap();
    let inputs = random(&spec, &shape, 2);
    let d_o = upstream(&shape, 2);
    let start = std::time::Instant::now();
    let out = forward(&spec, &shape, &inputs).unwrap();
    eprintln!("forward: {:?}", start.elapsed());
    let start = std::time::Instant::now();
    let grads = backward_with_blocks(&spec, &shape, &inputs, &out.selected, &d_o).unwrap();
    eprintln!("backward: {:?}", start.elapsed());
    assert_eq!(grads.len(), inputs.len());
    for (name, g) in &grads {
        assert!(g.data.iter().all(|x| x.is_finite()), "{name}");
        assert!(g.data.iter().any(|&x| x != 0.0), "{name} is all zero");
    }
}
