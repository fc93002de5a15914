//! Shared helpers of the CPU backend tests: library-like specs built in Rust, and the
//! comparison of a `CpuKernel` run against the f64 oracle (docs/ARCHITECTURE.md §4 bars).
#![allow(dead_code)]

use nsac_compiler::cpu::CpuVariant;
use nsac_dsl::problem::{Problem, Shape};
use nsac_dsl::spec::{
    Branch, BranchKind, Combine, CombineMode, Compress, HeadDim, Heads, KvSource, Pool, Select,
    Spec, Window,
};
use nsac_kernels::io::{Tensor, random_inputs};
use nsac_kernels::reference::{self, verify};
use nsac_runtime::cpu::CpuKernel;

pub fn compress(name: &str, block: u32, stride: u32, pool: Pool) -> Branch {
    Branch {
        name: name.into(),
        kv: KvSource::Shared,
        kind: BranchKind::Compress(Compress {
            block,
            stride,
            pool,
        }),
    }
}

pub fn select(name: &str, block: u32, top: u32, by: &str, first: u32, last: u32) -> Branch {
    Branch {
        name: name.into(),
        kv: KvSource::Shared,
        kind: BranchKind::Select(Select {
            block,
            top,
            scored_by: nsac_dsl::spec::Scorer::Branch(by.into()),
            keep_first: first,
            keep_last: last,
            within: None,
        }),
    }
}

pub fn window(name: &str, size: u32) -> Branch {
    Branch {
        name: name.into(),
        kv: KvSource::Shared,
        kind: BranchKind::Window(Window { size }),
    }
}

pub fn spec(
    name: &str,
    heads: (u32, u32),
    dims: (u32, u32),
    causal: bool,
    branches: Vec<Branch>,
    mode: CombineMode,
) -> Spec {
    Spec {
        name: name.into(),
        heads: Heads {
            q: heads.0,
            kv: heads.1,
        },
        head_dim: HeadDim {
            qk: dims.0,
            v: dims.1,
        },
        causal,
        scale: None,
        combine: Combine {
            mode,
            branches: branches.iter().map(|b| b.name.clone()).collect(),
        },
        branches,
    }
}

/// The library spec `kernels/<file>`, parsed.
pub fn library_file(file: &str) -> Spec {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../kernels")
        .join(file);
    let text = std::fs::read_to_string(&path).expect("library spec readable");
    if file.ends_with(".yaml") {
        nsac_dsl::parse_yaml(&text).expect("library spec parses")
    } else {
        nsac_dsl::parse_text(&text).expect("library spec parses")
    }
}

/// NSA as configured in the paper (kernels/nsa-paper.nsa).
pub fn nsa_paper() -> Spec {
    library_file("nsa-paper.nsa")
}

/// NSA as configured by fla's `parallel_nsa` (kernels/nsa-fla.nsa).
pub fn nsa_fla() -> Spec {
    library_file("nsa-fla.nsa")
}

/// Every library spec (`kernels/*.nsa`, `*.yaml`) plus hand-built specs covering what the
/// library does not: weighted and linear pools, own K/V, `sum`, non-causal.
pub fn library() -> Vec<Spec> {
    library_labeled().into_iter().map(|(_, s)| s).collect()
}

/// [`library`] with a label per spec: the file name (`nsa-paper.nsa` → `nsa_paper_nsa`) or the
/// hand-built spec's name.
pub fn library_labeled() -> Vec<(String, Spec)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../kernels");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .expect("kernels/ readable")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".nsa") || n.ends_with(".yaml"))
        .collect();
    // The selection forms beyond NSA's blocks (kernels/dsa-indexer.nsa, nsa-hier.nsa) are
    // tested on their own (cpu_selection, ir_plan's selection plans): the GPU backend and the
    // backward refuse them, and the CPU does not compute index branches yet.
    files.retain(|f| library_file(f).beyond_blocks().is_none());
    files.sort();
    let mut out: Vec<(String, Spec)> = files
        .iter()
        .map(|f| (f.replace(['.', '-'], "_"), library_file(f)))
        .collect();
    let mut own = spec(
        "own_kv_weighted",
        (6, 2),
        (20, 12),
        true,
        vec![
            compress("c", 8, 4, Pool::Weighted),
            select("s", 16, 3, "c", 1, 1),
            window("w", 13),
        ],
        CombineMode::Gate,
    );
    own.branches[1].kv = KvSource::Own;
    let built = [
        own,
        spec(
            "linear_sum",
            (3, 1),
            (8, 6),
            true,
            vec![
                compress("c", 4, 2, Pool::Linear),
                select("s", 8, 2, "c", 0, 1),
            ],
            CombineMode::Sum,
        ),
        spec(
            "bidirectional",
            (4, 4),
            (16, 20),
            false,
            vec![
                compress("c", 16, 8, Pool::Mean),
                select("s", 8, 4, "c", 1, 2),
                window("w", 9),
            ],
            CombineMode::Gate,
        ),
    ];
    out.extend(built.into_iter().map(|s| (s.name.clone(), s)));
    out
}

/// A shape for `spec` with optional head/dim overrides.
pub fn shape(spec: &Spec, problem: Problem) -> Shape {
    problem.resolve(spec).expect("valid problem")
}

pub fn with_heads(mut p: Problem, q: u32, kv: u32, dqk: u32, dv: u32) -> Problem {
    p.heads = Some(Heads { q, kv });
    p.head_dim = Some(HeadDim { qk: dqk, v: dv });
    p
}

/// max|got − want| / max|want| (the plain max difference when `want` is all zeros).
pub fn rel_err(got: &Tensor<f32>, want: &Tensor<f64>) -> f64 {
    assert_eq!(got.shape, want.shape, "shape mismatch");
    let max_ref = want.data.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    let max_diff = got
        .data
        .iter()
        .zip(&want.data)
        .fold(0.0f64, |m, (g, w)| m.max((f64::from(*g) - w).abs()));
    if max_ref == 0.0 {
        max_diff
    } else {
        max_diff / max_ref
    }
}

/// Runs `spec` on `shape` under every variant and checks it against the oracle:
/// max|o−ref|/max|ref| ≤ 1e-5 for `o` and every branch, selected indices identical except for
/// near-ties (`reference::verify`).
pub fn check(spec: &Spec, shape: &Shape, seed: u64, variants: &[CpuVariant], threads: usize) {
    let inputs = random_inputs(spec, shape, seed);
    check_inputs(spec, shape, &inputs, seed, variants, threads);
}

/// [`check`] on the given inputs (`seed` only labels the failure).
pub fn check_inputs(
    spec: &Spec,
    shape: &Shape,
    inputs: &nsac_kernels::io::Inputs,
    seed: u64,
    variants: &[CpuVariant],
    threads: usize,
) {
    let inputs = inputs.clone();
    let want = reference::forward(spec, shape, &inputs).expect("oracle runs");
    for variant in variants {
        let kernel = CpuKernel::compile(spec, shape, variant).expect("compiles");
        let got = kernel.run(&inputs, threads).expect("runs");
        let ctx = format!(
            "spec {} shape {:?} seed {seed} variant {variant:?}",
            spec.name, shape
        );
        // Identical blocks, or near-ties within f32 rounding of the oracle's scores (then the
        // oracle is re-run on the kernel's blocks); anything else is a bug.
        let want = verify::reference_for_choices(
            spec,
            shape,
            &inputs,
            &want,
            &got.selected,
            verify::SCORE_TIE_TOLERANCE,
        )
        .unwrap_or_else(|e| panic!("{e}; {ctx}"));
        for (name, w) in &want.branches {
            let e = rel_err(&got.branches[name], w);
            assert!(e <= 1e-5, "o_{name} rel err {e:e}; {ctx}");
        }
        let e = rel_err(&got.o, &want.o);
        assert!(e <= 1e-5, "o rel err {e:e}; {ctx}");
    }
}

/// Two deliberately different variants (tile shapes, unroll, chunking, key tile).
pub fn two_variants() -> [CpuVariant; 2] {
    [
        CpuVariant::default(),
        CpuVariant {
            rows: 3,
            key_vectors: 1,
            value_vectors: 3,
            key_tile: 8,
            unroll: 1,
            query_chunk: 5,
            bwd_key_tile: 12,
            bwd_query_chunk: 3,
        },
    ]
}

/// Random problems for the property tests: batched (1–2 rows, odd lengths up to
/// `2·half_len − 1`) or varlen (1–3 sequences of 1–30 tokens).
pub fn any_problem(half_len: usize) -> impl proptest::strategy::Strategy<Value = Problem> {
    use proptest::prelude::*;
    prop_oneof![
        (1usize..=2, 1usize..=half_len).prop_map(|(b, t)| Problem::batched(b, 2 * t - 1)),
        prop::collection::vec(1usize..=30, 1..=3).prop_map(|lens| {
            let mut cu = vec![0];
            for l in lens {
                cu.push(cu[cu.len() - 1] + l);
            }
            Problem::varlen(cu)
        }),
    ]
}

/// Random CPU Variants over every knob the forward has.
pub fn any_variant() -> impl proptest::strategy::Strategy<Value = CpuVariant> {
    use proptest::prelude::*;
    (1u32..=4, 1u32..=4, 1u32..=4, 1u32..=8, 0usize..3, 1u32..=9).prop_map(
        |(rows, key_vectors, value_vectors, kt, u, query_chunk)| CpuVariant {
            rows,
            key_vectors,
            value_vectors,
            key_tile: kt * 4,
            unroll: [1, 2, 4][u],
            query_chunk,
            ..CpuVariant::default()
        },
    )
}

/// [`check`] of `spec` on `problem` under the default Variant and `variant`, 2 threads.
pub fn run_case(spec: &Spec, problem: &Problem, variant: CpuVariant, seed: u64) {
    let shape: Shape = problem.resolve(spec).expect("valid problem");
    check(spec, &shape, seed, &[CpuVariant::default(), variant], 2);
}
