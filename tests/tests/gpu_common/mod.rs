//! Helpers shared by the GPU backend's tests: the library specs built directly as `Spec`
//! values (until the parser's library lands), random specs and shapes, finding `ptxas`, and
//! opening the GPU or saying why a test is skipped.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

use nsac_dsl::problem::{DType, Problem, Shape};
use nsac_dsl::spec::{
    Branch, BranchKind, Combine, CombineMode, Compress, HeadDim, Heads, KvSource, Pool, Select,
    Spec, Window,
};
use nsac_runtime::cuda::CudaDevice;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[allow(unused)]
fn branch(name: &str, kind: BranchKind) -> Branch {
    Branch {
        name: name.into(),
        kv: KvSource::Shared,
        kind,
    }
}

fn cmp(block: u32, stride: u32, pool: Pool) -> BranchKind {
    BranchKind::Compress(Compress {
        block,
        stride,
        pool,
    })
}

fn slc(block: u32, top: u32, keep_first: u32, keep_last: u32) -> BranchKind {
    BranchKind::Select(Select {
        block,
        top,
        scored_by: nsac_dsl::spec::Scorer::Branch("cmp".into()),
        keep_first,
        keep_last,
        within: None,
    })
}

/// The library specs (`kernels/*.nsa`), parsed.
pub fn library_specs() -> Vec<Spec> {
    [
        include_str!("../../../kernels/nsa-paper.nsa"),
        include_str!("../../../kernels/nsa-fla.nsa"),
        include_str!("../../../kernels/compress-only.nsa"),
        include_str!("../../../kernels/sliding-window.nsa"),
    ]
    .iter()
    .map(|src| nsac_dsl::parse_text(src).expect("library spec parses"))
    .collect()
}

/// A small batched shape for `spec` with heads/dims overridden.
pub fn shape(
    spec: &Spec,
    batch: usize,
    len: usize,
    heads: Heads,
    dims: HeadDim,
    dtype: DType,
) -> Shape {
    let mut p = Problem::batched(batch, len);
    p.heads = Some(heads);
    p.head_dim = Some(dims);
    p.dtype = dtype;
    p.resolve(spec).expect("valid test problem")
}

/// A random valid spec and shape (small sizes, odd lengths, any group size).
pub fn random_case(seed: u64) -> (Spec, Shape) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let kv = rng.random_range(1..=3u32);
    let group = [1u32, 2, 3, 4, 8, 16][rng.random_range(0..6)];
    let heads = Heads { q: kv * group, kv };
    let dqk = [16u32, 32, 40, 64, 96, 128][rng.random_range(0..6)];
    let dv = [16u32, 32, 48, 64, 128][rng.random_range(0..5)];
    let cblock = [8u32, 16, 32][rng.random_range(0..3)];
    let cstride = [cblock, cblock / 2][rng.random_range(0..2)];
    let pool = [Pool::Mean, Pool::Mean, Pool::Weighted, Pool::Linear][rng.random_range(0..4)];
    let pool = if pool == Pool::Linear && (dqk > 32 || dv > 32 || cblock > 8) {
        Pool::Weighted
    } else {
        pool
    };
    let sblock = [8u32, 16, 32, 64][rng.random_range(0..4)];
    let top = rng.random_range(1..=6u32);
    let mut branches = vec![
        branch("cmp", cmp(cblock, cstride, pool)),
        branch(
            "slc",
            slc(
                sblock,
                top,
                rng.random_range(0..=1),
                rng.random_range(0..=2),
            ),
        ),
    ];
    if rng.random_bool(0.6) {
        let mut w = branch(
            "win",
            BranchKind::Window(Window {
                size: rng.random_range(1..=80),
            }),
        );
        if rng.random_bool(0.3) {
            w.kv = KvSource::Own;
        }
        branches.push(w);
    }
    let names: Vec<String> = branches.iter().map(|b| b.name.clone()).collect();
    let spec = Spec {
        name: format!("random_{seed}"),
        heads,
        head_dim: HeadDim { qk: dqk, v: dv },
        causal: rng.random_bool(0.8),
        scale: None,
        branches,
        combine: Combine {
            mode: if rng.random_bool(0.7) {
                CombineMode::Gate
            } else {
                CombineMode::Sum
            },
            branches: names,
        },
    };
    let dtype = if rng.random_bool(0.5) {
        DType::Bf16
    } else {
        DType::F16
    };
    let batch = rng.random_range(1..=2usize);
    let len = rng.random_range(1..=300usize) | 1;
    let mut p = if rng.random_bool(0.25) {
        let a = rng.random_range(1..len.max(2));
        Problem::varlen(vec![0, a, a + len])
    } else {
        Problem::batched(batch, len)
    };
    p.dtype = dtype;
    let shape = p.resolve(&spec).expect("valid random problem");
    (spec, shape)
}

/// `ptxas`: `$NSAC_PTXAS`, else `ptxas` on PATH, else the one in the pip package
/// `nvidia-cuda-nvcc-cu12` (found through `python3`).
pub fn find_ptxas() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("NSAC_PTXAS") {
        return Some(PathBuf::from(p));
    }
    if Command::new("ptxas")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Some(PathBuf::from("ptxas"));
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import nvidia.cuda_nvcc as m, os; print(os.path.join(list(m.__path__)[0], 'bin', 'ptxas'))",
        ])
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    path.is_file().then_some(path)
}

/// Whether a missing tool must fail the test (CI) rather than skip it.
pub fn must_run() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// GPU 0 (its name printed), or `None` after printing why the test is skipped: no driver or
/// device, or CUDA failed to open.
pub fn device() -> Option<std::sync::Arc<CudaDevice>> {
    match CudaDevice::open() {
        Ok(Some(d)) => {
            println!(
                "device: {} (sm_{}{})",
                d.name(),
                d.capability().0,
                d.capability().1
            );
            Some(d)
        }
        Ok(None) => {
            eprintln!("SKIPPED: no CUDA driver or device found");
            None
        }
        Err(e) => {
            eprintln!("SKIPPED: CUDA could not be opened: {e}");
            None
        }
    }
}
