//! The PTX backend's manifests (typed parameters, launch geometry, buffers from the Plan) and
//! how the Variant's knobs show in them and in the generated PTX; that the PTX does not depend
//! on the problem's lengths.

use nsac_compiler::ir::{Elem, Op, Plan, Role, Sizes, TensorId};
use nsac_compiler::ptx::{
    Arch, GpuVariant, KernelInfo, Manifest, Param, PtxError, emit_module, emit_plan, emit_ptx,
    lowering, segment_table,
};
use nsac_dsl::problem::{DType, Problem};
use nsac_dsl::spec::{
    Branch, BranchKind, Combine, CombineMode, Compress, HeadDim, Heads, KvSource, Pool, Select,
    Spec, Window,
};

/// The parameter names of a kernel, buffers and sizes.
fn param_names(k: &KernelInfo) -> Vec<&str> {
    k.params.iter().map(Param::name).collect()
}

fn window_spec() -> Spec {
    Spec {
        name: "w".into(),
        heads: Heads { q: 4, kv: 2 },
        head_dim: HeadDim { qk: 40, v: 24 },
        causal: true,
        scale: None,
        branches: vec![nsac_dsl::spec::Branch {
            name: "win".into(),
            kv: KvSource::Shared,
            kind: BranchKind::Window(Window { size: 7 }),
        }],
        combine: Combine {
            mode: CombineMode::Sum,
            branches: vec!["win".into()],
        },
    }
}

#[test]
fn rejects_bad_variants_and_oversized_problems() {
    let spec = window_spec();
    let shape = Problem::batched(1, 9).resolve(&spec).expect("valid");
    let bad = GpuVariant {
        warps_per_block: 0,
        ..GpuVariant::default()
    };
    assert!(matches!(
        emit_ptx(&spec, &shape, &bad, Arch::Sm80),
        Err(PtxError::BadVariant(_))
    ));
    let huge = Problem::batched(1, 1 << 26).resolve(&spec).expect("valid");
    assert!(matches!(
        emit_ptx(&spec, &huge, &GpuVariant::default(), Arch::Sm80),
        Err(PtxError::TooManyTokens { .. })
    ));
    // the limit is the manifest's, checked for every call
    let (_, m) = emit_ptx(&spec, &shape, &GpuVariant::default(), Arch::Sm80).expect("emits");
    let mut sizes = m.sizes();
    sizes.tokens = m.max_tokens + 1;
    assert_eq!(
        m.launches(sizes),
        Err(PtxError::TooManyTokens {
            tokens: m.max_tokens + 1,
            max: m.max_tokens
        })
    );
    sizes.tokens = m.max_tokens;
    assert!(m.launches(sizes).is_ok());
}

#[test]
fn segment_table_repeats_segments_per_row() {
    let table = |spec: &Spec, p: Problem| {
        let shape = p.resolve(spec).expect("valid");
        segment_table(
            &Plan::for_shape(spec, &shape).expect("plan"),
            &Sizes::of(&shape),
        )
    };
    let spec = window_spec();
    assert_eq!(
        table(&spec, Problem::batched(2, 3)),
        vec![0, 3, 0, 3, 0, 3, 3, 6, 3, 6, 3, 6]
    );
    assert_eq!(
        table(&spec, Problem::varlen(vec![0, 1, 3])),
        vec![0, 1, 1, 3, 1, 3]
    );
    // a compress branch of block 16, stride 8 adds each segment's first compressed slot: rows
    // of 40 tokens hold 4 compressed tokens each; segments of 20, 10 and 30 tokens hold 1, 0
    // and 2
    let spec = tensor_core_spec();
    let t = table(&spec, Problem::batched(2, 40));
    assert_eq!(t.len(), 80 * 3);
    assert_eq!(&t[..3], &[0, 40, 0]);
    assert_eq!(&t[40 * 3..40 * 3 + 3], &[40, 80, 4]);
    let t = table(&spec, Problem::varlen(vec![0, 20, 30, 60]));
    assert_eq!(&t[19 * 3..21 * 3], &[0, 20, 0, 20, 30, 1]);
    assert_eq!(&t[30 * 3..30 * 3 + 3], &[30, 60, 1]);
    let m = emit_ptx(
        &spec,
        &Problem::varlen(vec![0, 20, 30, 60])
            .resolve(&spec)
            .expect("valid"),
        &GpuVariant::default(),
        Arch::Sm90,
    )
    .expect("emits")
    .1;
    assert_eq!(
        m.buffer("kc_cmp").map(|b| b.shape.clone()),
        Some(vec![1, 3, 2, 64])
    );
    assert_eq!(m.buffer("seg").map(|b| b.shape.clone()), Some(vec![60, 3]));
}

#[test]
fn manifest_launches_cover_every_row() {
    let spec = window_spec();
    let shape = Problem::batched(2, 13).resolve(&spec).expect("valid");
    let variant = GpuVariant {
        warps_per_block: 3,
        ..GpuVariant::default()
    };
    let (ptx, m) = emit_ptx(&spec, &shape, &variant, Arch::Sm90).expect("emits");
    assert!(ptx.contains(".target sm_90"));
    let attend = &m.kernels[0];
    // one warp per (token, query head): 26 tokens × 4 heads = 104 warps, 3 per block
    assert_eq!(attend.block[0], 96);
    assert_eq!(attend.grid[0], 35);
    assert_eq!(
        m.buffer("o").map(|b| b.shape.clone()),
        Some(vec![2, 13, 4, 24])
    );
}

/// Compressed + selected attention in bf16 with G = 4 and 64-wide heads: every stage runs
/// on the tensor-core kernels.
fn tensor_core_spec() -> Spec {
    let branch = |name: &str, kind| Branch {
        name: name.into(),
        kv: KvSource::Shared,
        kind,
    };
    Spec {
        name: "tc".into(),
        heads: Heads { q: 8, kv: 2 },
        head_dim: HeadDim { qk: 64, v: 64 },
        causal: true,
        scale: None,
        branches: vec![
            branch(
                "cmp",
                BranchKind::Compress(Compress {
                    block: 16,
                    stride: 8,
                    pool: Pool::Mean,
                }),
            ),
            branch(
                "slc",
                BranchKind::Select(Select {
                    block: 16,
                    top: 4,
                    scored_by: nsac_dsl::spec::Scorer::Branch("cmp".into()),
                    keep_first: 1,
                    keep_last: 1,
                    within: None,
                }),
            ),
        ],
        combine: Combine {
            mode: CombineMode::Sum,
            branches: vec!["cmp".into(), "slc".into()],
        },
    }
}

fn kernel<'a>(m: &'a Manifest, stage: &str) -> &'a KernelInfo {
    m.kernels
        .iter()
        .find(|k| k.name.ends_with(stage))
        .expect("kernel present")
}

#[test]
fn manifest_reflects_the_tensor_core_knobs() {
    let spec = tensor_core_spec();
    let mut p = Problem::batched(1, 77);
    p.dtype = DType::Bf16;
    let shape = p.resolve(&spec).expect("valid");
    let emit = |v: GpuVariant| emit_ptx(&spec, &shape, &v, Arch::Sm90).expect("emits");
    let (ptx0, m0) = emit(GpuVariant::default());
    // K and V rows of 2*64+16 bytes each, per staged key, per warp
    let row_pair = 2 * (2 * 64 + 16);
    for (tokens, chunk) in [(8, 32), (4, 16), (16, 64), (2, 128)] {
        let v = GpuVariant {
            select_tokens: tokens,
            select_chunk: chunk,
            ..GpuVariant::default()
        };
        let (ptx, m) = emit(v);
        let slc = kernel(&m, "attend_slc");
        assert_eq!(slc.block, [32 * tokens, 1, 1], "{v}");
        assert_eq!(slc.grid[0], 77u32.div_ceil(tokens) * 2, "{v}");
        assert_eq!(slc.shared_bytes, tokens * chunk * row_pair, "{v}");
        // 512 threads launch with 128 registers each at most
        assert_eq!(slc.max_regs, (tokens > 8).then_some(128), "{v}");
        assert_eq!(
            ptx.contains(&format!(".maxntid {}, 1, 1", 32 * tokens)),
            tokens > 8,
            "only blocks of more than 256 threads bound the registers: {v}"
        );
        // the other kernels do not depend on these knobs
        assert_eq!(kernel(&m, "attend_cmp"), kernel(&m0, "attend_cmp"));
        assert_eq!(kernel(&m, "topk_slc"), kernel(&m0, "topk_slc"));
    }

    let cmp0 = kernel(&m0, "attend_cmp");
    assert_eq!(cmp0.max_regs, Some(128));
    assert!(ptx0.contains(".maxnreg 128\n{"));
    assert!(!ptx0.contains(".maxntid"));
    // (tokens, cap asked for, cap declared): 16 warps launch with 128 registers at most
    for (tokens, regs, declared) in [
        (4, 96, Some(96)),
        (16, 0, Some(128)),
        (8, 168, Some(168)),
        (16, 168, Some(128)),
        (8, 0, None),
    ] {
        let v = GpuVariant {
            compress_tokens: tokens,
            compress_max_regs: regs,
            ..GpuVariant::default()
        };
        let (ptx, m) = emit(v);
        let cmp = kernel(&m, "attend_cmp");
        assert_eq!(cmp.block, [32 * tokens, 1, 1], "{v}");
        assert_eq!(cmp.grid[0], 77u32.div_ceil(tokens) * 2, "{v}");
        // two staging buffers of the same size, then a (start, end) pair per warp
        assert_eq!(
            cmp.shared_bytes,
            cmp0.shared_bytes - 8 * 8 + 8 * tokens,
            "{v}"
        );
        assert_eq!(cmp.max_regs, declared, "{v}");
        assert_eq!(
            ptx.contains(&format!(".maxnreg {}\n", declared.unwrap_or(0))),
            declared.is_some(),
            "{v}"
        );
        assert_eq!(ptx.contains(".maxntid 512, 1, 1"), tokens == 16, "{v}");
        assert_eq!(
            m.to_json().contains("\"max_regs\""),
            declared.is_some(),
            "only a declared cap appears in the manifest"
        );
        let back: Manifest = serde_json::from_str(&m.to_json()).expect("decodes");
        assert_eq!(back, m);
    }

    for tokens in [1, 2, 4, 16, 32] {
        let v = GpuVariant {
            score_tokens: tokens,
            ..GpuVariant::default()
        };
        let (ptx, m) = emit(v);
        let topk = kernel(&m, "topk_slc");
        // 77 tokens → 5 candidate blocks of 16: small score arrays, the whole request fits
        assert_eq!(topk.block, [32 * tokens, 1, 1], "{v}");
        assert_eq!(topk.grid[0], 77u32.div_ceil(tokens) * 2, "{v}");
        assert_eq!(ptx.contains(".maxntid"), tokens > 8, "{v}");
    }
}

/// The manifests of `spec` on 77 tokens with the default variant and with `fuse_combine=1`.
fn unfused_and_fused(spec: &Spec, dtype: DType) -> ((String, Manifest), (String, Manifest)) {
    let mut p = Problem::batched(1, 77);
    p.dtype = dtype;
    let shape = p.resolve(spec).expect("valid");
    let emit = |v: &GpuVariant| emit_ptx(spec, &shape, v, Arch::Sm90).expect("emits");
    let fused = GpuVariant {
        fuse_combine: 1,
        ..GpuVariant::default()
    };
    (emit(&GpuVariant::default()), emit(&fused))
}

/// The `.entry` of kernel `name` in `ptx`.
fn entry<'a>(ptx: &'a str, name: &str) -> &'a str {
    let start = ptx
        .find(&format!(".visible .entry {name}("))
        .expect("kernel present");
    let rest = &ptx[start + 1..];
    &ptx[start..start + 1 + rest.find(".visible .entry").unwrap_or(rest.len())]
}

#[test]
fn fused_combine_moves_into_the_tensor_core_select_kernel() {
    let strs = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let own = ["seg", "q", "k", "v", "idx_slc", "o_slc"];
    // (combine mode, combine order, the fused kernel's extra parameters)
    let cases = [
        (
            CombineMode::Gate,
            ["cmp", "slc"],
            strs(&["o_cmp", "g_cmp", "g_slc", "o"]),
        ),
        (
            CombineMode::Gate,
            ["slc", "cmp"],
            strs(&["o_cmp", "g_slc", "g_cmp", "o"]),
        ),
        (CombineMode::Sum, ["cmp", "slc"], strs(&["o_cmp", "o"])),
    ];
    for (mode, order, extra) in cases {
        let mut spec = tensor_core_spec();
        spec.combine = Combine {
            mode,
            branches: strs(&order),
        };
        for dtype in [DType::Bf16, DType::F16] {
            let ((ptx0, m0), (ptx1, m1)) = unfused_and_fused(&spec, dtype);
            // same buffers: the select branch's own output is still written
            assert_eq!(m1.buffers, m0.buffers);
            assert!(m0.kernels.iter().any(|k| k.name == "nsac_tc_combine"));
            let names: Vec<&str> = m1.kernels.iter().map(|k| k.name.as_str()).collect();
            assert_eq!(
                names,
                [
                    "nsac_tc_pool_cmp",
                    "nsac_tc_attend_cmp",
                    "nsac_tc_topk_slc",
                    "nsac_tc_attend_slc_combine"
                ]
            );
            assert_eq!(m1.kernels[..3], m0.kernels[..3]);
            let slc = &m1.kernels[3];
            let mut want = strs(&own);
            want.extend(extra.iter().cloned());
            want.push("ntok".into());
            assert_eq!(param_names(slc), want, "{mode:?} {order:?}");
            let slc0 = kernel(&m0, "attend_slc");
            assert_eq!(
                (slc.grid, slc.block, slc.shared_bytes, slc.max_regs),
                (slc0.grid, slc0.block, slc0.shared_bytes, slc0.max_regs)
            );
            assert!(ptx1.contains(".visible .entry nsac_tc_attend_slc_combine("));
            assert!(!ptx1.contains(".visible .entry nsac_tc_combine("));
            // the combine's arithmetic: per stored pair of elements, one fma (gated) or
            // add (sum) per branch and element
            let op = match mode {
                CombineMode::Gate => "fma.rn.f32",
                CombineMode::Sum => "add.rn.f32",
            };
            let per = 2 * 2;
            let (k0, k1) = (
                entry(&ptx0, "nsac_tc_attend_slc"),
                entry(&ptx1, "nsac_tc_attend_slc_combine"),
            );
            let count = |k: &str, op: &str| k.matches(op).count();
            // rows gq and gq+8, Dv/8 column pairs each, also written to o
            let stores = count(k1, "st.global.v2.f32") - count(k0, "st.global.v2.f32");
            assert_eq!(stores, 2 * 64 / 8);
            // the other branch's pair read for each
            let loads = count(k1, "ld.global.v2.f32") - count(k0, "ld.global.v2.f32");
            assert_eq!(loads, stores);
            assert_eq!(count(k1, op) - count(k0, op), stores * per);
        }
    }
}

#[test]
fn fused_combine_collapses_where_the_last_branch_kernel_cannot_fuse() {
    let mut gated = tensor_core_spec();
    gated.combine.mode = CombineMode::Gate;
    // f32: the scalar select kernel
    let (a, b) = unfused_and_fused(&gated, DType::F32);
    assert_eq!(a, b);
    // G = 32 > 16 heads per kv head: the scalar select kernel
    let mut wide = gated.clone();
    wide.heads = Heads { q: 64, kv: 2 };
    let (a, b) = unfused_and_fused(&wide, DType::Bf16);
    assert_eq!(a, b);
    // only a compress branch
    let mut compress_only = gated.clone();
    compress_only.branches.truncate(1);
    compress_only.combine.branches.truncate(1);
    for dtype in [DType::Bf16, DType::F32] {
        let (a, b) = unfused_and_fused(&compress_only, dtype);
        assert!(a.1.kernels.iter().any(|k| k.name == "nsac_tc_combine"));
        assert_eq!(a, b);
    }
}

#[test]
fn fused_combine_moves_into_the_window_kernel_when_it_runs_last() {
    let mut spec = tensor_core_spec();
    spec.branches.push(Branch {
        name: "win".into(),
        kv: KvSource::Shared,
        kind: BranchKind::Window(Window { size: 9 }),
    });
    spec.combine = Combine {
        mode: CombineMode::Gate,
        branches: ["win", "cmp", "slc"].map(String::from).to_vec(),
    };
    // the window kernel is scalar in every dtype
    for dtype in [DType::Bf16, DType::F32] {
        let ((_, m0), (ptx1, m1)) = unfused_and_fused(&spec, dtype);
        assert_eq!(m1.buffers, m0.buffers);
        let names: Vec<&str> = m1.kernels.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(names.last(), Some(&"nsac_tc_attend_win_combine"));
        assert_eq!(m1.kernels.len() + 1, m0.kernels.len());
        assert_eq!(
            m1.kernels[..4],
            m0.kernels[..4],
            "the select kernel is not fused"
        );
        let win = &m1.kernels[4];
        assert_eq!(
            param_names(win),
            [
                "seg", "q", "k", "v", "o_win", "o_cmp", "o_slc", "g_win", "g_cmp", "g_slc", "o",
                "ntok"
            ]
        );
        assert_eq!(
            (win.grid, win.block),
            (m0.kernels[4].grid, m0.kernels[4].block)
        );
        // three gates, then per lane and 32-wide chunk of Dv = 64: two loads of other
        // branches, three fmas and one store to o
        let k1 = entry(&ptx1, "nsac_tc_attend_win_combine");
        let tail = &k1[k1.find("combine fused").expect("epilogue")..];
        // (16-bit gates load as b16, f32 gates as f32)
        let f32_gates = if dtype == DType::F32 { 3 } else { 0 };
        assert_eq!(tail.matches("ld.global.b16").count(), 3 - f32_gates);
        assert_eq!(tail.matches("ld.global.f32").count(), 2 * 2 + f32_gates);
        assert_eq!(tail.matches("fma.rn.f32").count(), 2 * 3);
        assert_eq!(tail.matches("st.global.f32").count(), 2);
    }
    // sum: adds instead, no gates
    spec.combine.mode = CombineMode::Sum;
    let (_, (ptx1, m1)) = unfused_and_fused(&spec, DType::F16);
    let win = m1.kernels.last().expect("kernels");
    assert_eq!(
        param_names(win),
        ["seg", "q", "k", "v", "o_win", "o_cmp", "o_slc", "o", "ntok"]
    );
    let k1 = entry(&ptx1, "nsac_tc_attend_win_combine");
    assert_eq!(k1.matches("add.rn.f32").count(), 2 * 3);
}

#[test]
fn a_third_compress_stage_adds_one_chunk_buffer_and_waits_for_two_groups() {
    let spec = tensor_core_spec();
    let mut p = Problem::batched(1, 77);
    p.dtype = DType::Bf16;
    let shape = p.resolve(&spec).expect("valid");
    let emit = |v: GpuVariant| emit_ptx(&spec, &shape, &v, Arch::Sm90).expect("emits");
    let (ptx2, m2) = emit(GpuVariant::default());
    let (ptx3, m3) = emit(GpuVariant {
        compress_stages: 3,
        ..GpuVariant::default()
    });
    // one staging buffer of 32 keys: K hi, K lo and V rows of 2*64+16 bytes (attention),
    // K hi and lo rows (top-k scoring)
    let row = 2 * 64 + 16;
    let (attn_buf, score_buf) = (32 * 3 * row, 32 * 2 * row);
    let (a2, a3) = (kernel(&m2, "attend_cmp"), kernel(&m3, "attend_cmp"));
    assert_eq!(a2.shared_bytes, 2 * attn_buf + 8 * 8);
    assert_eq!(a3.shared_bytes, a2.shared_bytes + attn_buf);
    assert!(a3.launch.contains("shared = 3*32*(") && a3.launch.contains("triple-buffered"));
    let (t2, t3) = (kernel(&m2, "topk_slc"), kernel(&m3, "topk_slc"));
    assert_eq!(
        t3.block, t2.block,
        "8 score arrays still fit beside 3 buffers"
    );
    assert_eq!(t3.shared_bytes, t2.shared_bytes + score_buf);
    // the other kernels do not depend on the knob
    assert_eq!(kernel(&m3, "attend_slc"), kernel(&m2, "attend_slc"));

    // S buffers: wait until only the S - 1 newest groups are pending; the prologue commits
    // S - 1 groups and each loop step one (attention and top-k hold one loop each)
    let count = |ptx: &str, s: &str| ptx.matches(s).count();
    assert_eq!(count(&ptx2, "cp.async.wait_group 1;"), 2);
    assert_eq!(count(&ptx2, "cp.async.wait_group 2;"), 0);
    assert_eq!(count(&ptx3, "cp.async.wait_group 1;"), 0);
    assert_eq!(count(&ptx3, "cp.async.wait_group 2;"), 2);
    assert_eq!(
        count(&ptx3, "cp.async.commit_group;"),
        count(&ptx2, "cp.async.commit_group;") + 2,
        "one more prologue group in each of the two loops"
    );
    // the step's copies go to the buffer before the current one in the ring, which then
    // advances by one buffer and wraps after three
    let has = |ptx: &str, op: &str, x: u32| {
        ptx.lines()
            .any(|l| l.trim().starts_with(op) && l.ends_with(&format!(", {x};")))
    };
    for buf in [attn_buf, score_buf] {
        assert!(has(&ptx3, "add.u32", 2 * buf), "{buf}");
        assert!(has(&ptx3, "setp.eq.u32", 3 * buf), "{buf}");
        assert!(!has(&ptx2, "setp.eq.u32", 3 * buf), "{buf}");
    }
}

#[test]
fn top_n_keeps_its_tokens_and_sizes_its_scores_per_call() {
    let spec = tensor_core_spec();
    let emit = |p: Problem, v: &GpuVariant| {
        let mut p = p;
        p.dtype = DType::Bf16;
        let shape = p.resolve(&spec).expect("valid");
        emit_ptx(&spec, &shape, v, Arch::Sm90).expect("emits")
    };
    for tokens in [2, 8, 16] {
        let v = GpuVariant {
            score_tokens: tokens,
            ..GpuVariant::default()
        };
        let (ptx_short, short) = emit(Problem::batched(1, 77), &v);
        let (ptx_long, long) = emit(Problem::batched(1, 200_000), &v);
        assert_eq!(ptx_short, ptx_long, "the PTX does not depend on T");
        let (a, b) = (kernel(&short, "topk_slc"), kernel(&long, "topk_slc"));
        // the block size is the variant's, whatever T: the scores grow instead
        assert_eq!(a.block, [32 * tokens, 1, 1]);
        assert_eq!(b.block, a.block);
        assert_eq!(a.geometry, b.geometry);
        // 77 tokens: 5 candidate blocks of 16 (20 → 32 bytes); 200000: 12500 (50000 bytes)
        let staging = a.geometry.shared.bytes;
        assert_eq!(a.shared_bytes, staging + tokens * 32);
        assert_eq!(b.shared_bytes, staging + tokens * 50_000);
        assert_eq!(b.grid[0], 200_000u32.div_ceil(tokens) * 2);
        // the short manifest evaluates the long call's launch to the same numbers
        let launches = short.launches(long.sizes()).expect("fits");
        let l = &launches[short
            .kernels
            .iter()
            .position(|k| k.name == a.name)
            .expect("topk")];
        assert_eq!(
            (l.grid, l.block, l.shared_bytes),
            (b.grid[0], b.block[0], b.shared_bytes)
        );
        assert_eq!(l.scalars, [200_000, 50_000]);
        assert_eq!(param_names(a)[5..], ["ntok", "score_bytes"]);
    }
}

/// Every library-like spec gives one PTX text for every length, batch and packing; only the
/// manifest's buffers and evaluated launches follow the problem, and a manifest evaluates any
/// other problem's launches exactly as that problem's own manifest states them.
#[test]
fn ptx_is_the_same_for_every_length_and_packing() {
    let spec = tensor_core_spec();
    for dtype in [DType::Bf16, DType::F32] {
        let problems = [
            Problem::batched(1, 1000),
            Problem::batched(1, 4099),
            Problem::batched(3, 77),
            Problem::varlen(vec![0, 500, 1000]),
        ];
        let emitted: Vec<(String, Manifest)> = problems
            .into_iter()
            .map(|mut p| {
                p.dtype = dtype;
                let shape = p.resolve(&spec).expect("valid");
                emit_ptx(&spec, &shape, &GpuVariant::default(), Arch::Sm80).expect("emits")
            })
            .collect();
        let (ptx0, m0) = &emitted[0];
        for (ptx, m) in &emitted {
            assert_eq!(ptx, ptx0);
            let own: Vec<_> = m
                .kernels
                .iter()
                .map(|k| (k.grid[0], k.block[0], k.shared_bytes))
                .collect();
            let from_first: Vec<_> = m0
                .launches(m.sizes())
                .expect("fits")
                .iter()
                .map(|l| (l.grid, l.block, l.shared_bytes))
                .collect();
            assert_eq!(own, from_first);
        }
    }
}

/// The manifest's buffers are the plan's tensors in declaration order, shaped by the call's
/// `Sizes` (all but the scores, which the top-k kernel keeps to itself), then the backend's
/// scratch; roles and element types follow the plan's.
#[test]
fn manifest_buffers_are_the_plans_tensors() {
    let spec = tensor_core_spec();
    for mut p in [
        Problem::batched(2, 77),
        Problem::varlen(vec![0, 20, 51, 90]),
    ] {
        p.dtype = DType::Bf16;
        let shape = p.resolve(&spec).expect("valid");
        let plan = Plan::for_shape(&spec, &shape).expect("plan");
        let sizes = Sizes::of(&shape);
        let (_, m) = emit_plan(&plan, &sizes, &GpuVariant::default(), Arch::Sm90).expect("emits");
        let want: Vec<(String, Vec<usize>)> = plan
            .tensors
            .iter()
            .enumerate()
            .filter(|(_, t)| !t.name.starts_with("scores_"))
            .map(|(i, t)| {
                let shape = sizes.shape(&plan, TensorId(i)).expect("sized");
                (t.name.clone(), shape)
            })
            .collect();
        assert!(want.len() < plan.tensors.len(), "the plan declares scores");
        let got: Vec<(String, Vec<usize>)> = m
            .buffers
            .iter()
            .map(|b| (b.name.clone(), b.shape.clone()))
            .collect();
        assert_eq!(got[..want.len()], want[..]);
        let rest: Vec<&str> = m.buffers[want.len()..]
            .iter()
            .map(|b| b.name.as_str())
            .collect();
        assert_eq!(rest, ["seg", "kc16_cmp", "vc16_cmp"]);
        for b in &m.buffers[..want.len()] {
            let t = plan.tensor(plan.tensor_named(&b.name).expect("a plan tensor"));
            let elem = match t.role {
                Role::In => Elem::Bf16,
                _ => t.elem,
            };
            assert_eq!((b.role, b.elem), (t.role, elem), "{}", b.name);
        }
        for b in &m.buffers[want.len()..] {
            assert_eq!(b.role, Role::Scratch, "{}", b.name);
        }
        assert_eq!(m.buffer("idx_slc").map(|b| b.elem), Some(Elem::I32));
    }
}

/// A plan whose score op is not followed by its top-k has no GPU stage: an error, not a panic.
#[test]
fn a_score_without_its_top_k_is_unsupported() {
    let spec = tensor_core_spec();
    let shape = Problem::batched(1, 50).resolve(&spec).expect("valid");
    let plan = Plan::for_shape(&spec, &shape).expect("plan");
    assert!(lowering::lower(&plan).is_ok());
    let topk = plan
        .ops
        .iter()
        .position(|op| matches!(op, Op::TopK(_)))
        .expect("a top-k");
    let mut lone = plan.clone();
    lone.ops.remove(topk);
    assert!(matches!(
        lowering::lower(&lone),
        Err(PtxError::Unsupported(_))
    ));
    let mut swapped = plan.clone();
    swapped.ops.swap(topk - 1, topk);
    assert!(matches!(
        lowering::lower(&swapped),
        Err(PtxError::Unsupported(_))
    ));
}

/// One module manifest serves every call: written once per plan and Variant, its manifest for a
/// call's sizes is the one `emit_plan` writes for them (the PTX too), and its buffers and
/// launches follow each call's lengths and segments.
#[test]
fn one_module_manifest_serves_every_call() {
    let spec = tensor_core_spec();
    let mut base = Problem::batched(1, 64);
    base.dtype = DType::Bf16;
    let plan = Plan::for_shape(&spec, &base.resolve(&spec).expect("valid")).expect("plan");
    for variant in [
        GpuVariant::default(),
        GpuVariant::parse("select_tokens=4,fuse_combine=1").expect("valid"),
    ] {
        let (ptx, module) = emit_module(&plan, &variant, Arch::Sm90).expect("emits");
        let mut seen = Vec::new();
        for mut p in [
            Problem::batched(2, 77),
            Problem::batched(1, 301),
            Problem::varlen(vec![0, 20, 51, 90]),
        ] {
            p.dtype = DType::Bf16;
            let shape = p.resolve(&spec).expect("valid");
            let sizes = Sizes::of(&shape);
            let (want_ptx, want) = emit_plan(&plan, &sizes, &variant, Arch::Sm90).expect("emits");
            assert_eq!(ptx, want_ptx);
            let got = module.for_call(&plan, &sizes).expect("a manifest");
            assert_eq!(got, want);
            assert_eq!(
                module.buffers(&plan, &sizes).expect("buffers"),
                want.buffers
            );
            let call = lowering::CallSizes::of(&sizes);
            assert_eq!(
                module.launches(call).expect("launches"),
                want.launches(call).expect("launches")
            );
            let q = want.buffer("q").expect("q");
            assert_eq!(q.shape[..2], [shape.batch, shape.seq_len]);
            seen.push(want.buffers);
        }
        assert_ne!(seen[0], seen[1], "the layout follows the lengths");
        assert_ne!(seen[1], seen[2]);
    }
}
