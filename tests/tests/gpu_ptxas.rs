//! Every generated PTX module assembles with `ptxas` for sm_80 and sm_90 without errors, for
//! the default Variant and for Variants covering every value the GPU tuner tries; prints register
//! and spill counts. Skips with a reason when ptxas is absent, except under `CI=true`.

mod gpu_common;

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use nsac_compiler::ptx::{Arch, GpuVariant, Manifest, builder, emit_ptx};
use nsac_dsl::problem::DType;
use nsac_dsl::spec::HeadDim;

fn assemble(ptxas: &std::path::Path, name: &str, ptx: &str, arch: Arch) -> Result<String, String> {
    // Removed when `dir` drops, so a run leaves nothing behind.
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let dir = dir.path();
    let src = dir.join(format!("{name}_{}.ptx", arch.target()));
    let obj = dir.join(format!("{name}_{}.cubin", arch.target()));
    std::fs::write(&src, ptx).map_err(|e| e.to_string())?;
    let out = Command::new(ptxas)
        .arg(format!("-arch={}", arch.target()))
        .arg("-v")
        .arg("-o")
        .arg(&obj)
        .arg(&src)
        .output()
        .map_err(|e| e.to_string())?;
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

/// `ptxas`, or `None` after saying why the test is skipped (a failure under `CI=true`).
fn ptxas_or_skip() -> Option<std::path::PathBuf> {
    let found = gpu_common::find_ptxas();
    if found.is_none() {
        assert!(
            !gpu_common::must_run(),
            "CI=true but ptxas was not found (set NSAC_PTXAS or pip install nvidia-cuda-nvcc-cu12)"
        );
        eprintln!(
            "SKIPPED: ptxas not found (set NSAC_PTXAS, put ptxas on PATH, or pip install nvidia-cuda-nvcc-cu12)"
        );
    }
    found
}

#[test]
fn generated_ptx_assembles_for_sm80_and_sm90() {
    let Some(ptxas) = ptxas_or_skip() else {
        return;
    };
    let mut cases = Vec::new();
    for spec in gpu_common::library_specs() {
        for dtype in [DType::Bf16, DType::F16, DType::F32] {
            let shape = gpu_common::shape(&spec, 1, 777, spec.heads, spec.head_dim, dtype);
            cases.push((
                format!("{}_{}", spec.name, dtype.name()),
                spec.clone(),
                shape,
            ));
        }
    }
    for seed in 0..6 {
        let (spec, shape) = gpu_common::random_case(seed);
        cases.push((spec.name.clone(), spec, shape));
    }
    let mut failures = Vec::new();
    for (name, spec, shape) in &cases {
        for arch in [Arch::Sm80, Arch::Sm90] {
            let (ptx, _) = emit_ptx(spec, shape, &GpuVariant::default(), arch).expect("emits");
            match assemble(&ptxas, name, &ptx, arch) {
                Ok(log) => {
                    for line in log
                        .lines()
                        .filter(|l| l.contains("registers") || l.contains("spill"))
                    {
                        println!("{name} {}: {}", arch.target(), line.trim());
                    }
                }
                Err(log) => failures.push(format!("{name} {}:\n{log}", arch.target())),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "ptxas failed:\n{}",
        failures.join("\n")
    );
}

/// The `.entry` texts of a PTX module, in order.
fn entries(ptx: &str) -> Vec<String> {
    ptx.split("\n.visible .entry ")
        .skip(1)
        .map(|e| format!(".visible .entry {e}"))
        .collect()
}

/// What `ptxas -v` reports for one kernel.
#[derive(Debug, Default)]
struct KernelUse {
    name: String,
    registers: u32,
    spill_stores: u32,
    spill_loads: u32,
}

/// The number just before `word` in `line` (`"… 186 registers"` → 186).
fn number_before(line: &str, word: &str) -> Option<u32> {
    let head = &line[..line.find(word)?];
    head.split_whitespace().last()?.parse().ok()
}

/// Per-kernel register and spill counts from a `ptxas -v` log.
fn kernel_uses(log: &str) -> Vec<KernelUse> {
    let mut out: Vec<KernelUse> = Vec::new();
    for line in log.lines() {
        if let Some(name) = line.split("Function properties for ").nth(1) {
            out.push(KernelUse {
                name: name.trim().to_string(),
                ..KernelUse::default()
            });
        } else if let Some(k) = out.last_mut() {
            if let Some(n) = number_before(line, "bytes spill stores") {
                k.spill_stores = n;
            }
            if let Some(n) = number_before(line, "bytes spill loads") {
                k.spill_loads = n;
            }
            if let Some(n) = number_before(line, "registers") {
                k.registers = n;
            }
        }
    }
    out
}

/// The non-default Variants assembled: every knob varied alone from the default over the values
/// the GPU tuner uses (plus select chunks of 48 and 128), then mixes, the last at every knob's
/// upper end.
const VARIANTS: [&str; 22] = [
    "select_tokens=4",
    "select_tokens=16",
    "select_chunk=16",
    "select_chunk=48",
    "select_chunk=64",
    "select_chunk=128",
    "compress_tokens=4",
    "compress_tokens=16",
    "compress_max_regs=0",
    "compress_max_regs=96",
    "compress_max_regs=168",
    "score_tokens=2",
    "score_tokens=4",
    "score_tokens=16",
    "warps_per_block=2",
    "warps_per_block=8",
    "compress_stages=3",
    "fuse_combine=1",
    "compress_tokens=16,compress_max_regs=0",
    "select_tokens=16,select_chunk=64,compress_tokens=16,compress_max_regs=168,score_tokens=16,warps_per_block=8,compress_stages=3,fuse_combine=1",
    "select_tokens=4,select_chunk=16,compress_tokens=4,compress_max_regs=96,score_tokens=2,warps_per_block=2,fuse_combine=1",
    "select_tokens=32,select_chunk=128,compress_tokens=32,compress_max_regs=255,score_tokens=32,warps_per_block=32,compress_stages=3,fuse_combine=1",
];

/// Whether the default and [`VARIANTS`] together hold every value the tuner tries.
#[test]
fn variants_cover_the_tuner_values() {
    let mut all: Vec<GpuVariant> = VARIANTS
        .iter()
        .map(|t| GpuVariant::parse(t).expect("valid variant"))
        .collect();
    all.push(GpuVariant::default());
    // every FIELD=VALUE some variant has, from their text form
    let have: BTreeSet<String> = all
        .iter()
        .flat_map(|v| {
            v.to_string()
                .split(',')
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    let wanted: [(&str, &[u32]); 8] = [
        ("select_tokens", &[4, 8, 16]),
        ("select_chunk", &[16, 32, 64]),
        ("compress_tokens", &[4, 8, 16]),
        ("compress_max_regs", &[0, 96, 128, 168]),
        ("score_tokens", &[2, 4, 8, 16]),
        ("warps_per_block", &[2, 4, 8]),
        ("compress_stages", &[2, 3]),
        ("fuse_combine", &[0, 1]),
    ];
    for (field, values) in wanted {
        for x in values {
            assert!(
                have.contains(&format!("{field}={x}")),
                "no variant has {field}={x}"
            );
        }
    }
}

/// Registers a multiprocessor of sm_80 / sm_90 holds, and the per-thread allocation unit.
const REGISTER_FILE: u32 = 64 * 1024;
const REGISTER_UNIT: u32 = 8;

#[test]
fn tuner_variants_assemble_and_can_launch() {
    let Some(ptxas) = ptxas_or_skip() else {
        return;
    };
    let library = gpu_common::library_specs();
    let by_name = |n: &str| {
        library
            .iter()
            .find(|s| s.name.replace('-', "_") == n.replace('-', "_"))
            .cloned()
            .expect("library spec")
    };
    let fla = by_name("nsa_fla");
    let paper = by_name("nsa_paper");
    // nsa-paper's heads (G = 16) with 128-wide heads, so its attention runs on tensor cores
    let paper_tc_dims = HeadDim { qk: 128, v: 128 };
    let mut cases = vec![
        (
            "nsa_fla_bf16".to_string(),
            gpu_common::shape(&fla, 1, 777, fla.heads, fla.head_dim, DType::Bf16),
            fla.clone(),
        ),
        (
            "nsa_paper_d128_bf16".to_string(),
            gpu_common::shape(&paper, 1, 777, paper.heads, paper_tc_dims, DType::Bf16),
            paper.clone(),
        ),
    ];
    for seed in [0, 2, 4, 5] {
        let (spec, shape) = gpu_common::random_case(seed);
        cases.push((spec.name.clone(), shape, spec));
    }
    // (case, variant, arch, PTX, manifest): each job assembles the kernels of a variant that
    // differ from the default's and from every kernel already listed for its arch (a knob
    // changes only the kernels that use it), which keeps the test short
    let mut jobs: Vec<(String, String, Arch, String, Manifest)> = Vec::new();
    let mut seen = BTreeSet::new();
    for (name, shape, spec) in &cases {
        for arch in [Arch::Sm80, Arch::Sm90] {
            let (ptx, _) = emit_ptx(spec, shape, &GpuVariant::default(), arch).expect("emits");
            seen.extend(entries(&ptx).into_iter().map(|e| (arch.target(), e)));
            for text in VARIANTS {
                let v = GpuVariant::parse(text).expect("valid variant");
                let (ptx, m) = emit_ptx(spec, shape, &v, arch).expect("emits");
                let fresh: Vec<String> = entries(&ptx)
                    .into_iter()
                    .filter(|e| seen.insert((arch.target(), e.clone())))
                    .collect();
                if !fresh.is_empty() {
                    let module = builder::module(arch.target(), &fresh);
                    jobs.push((name.clone(), text.to_string(), arch, module, m));
                }
            }
        }
    }
    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::new());
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((name, _, arch, ptx, _)) = jobs.get(i) else {
                        break;
                    };
                    let out = assemble(&ptxas, &format!("{name}_v{i}"), ptx, *arch);
                    results.lock().expect("no panics").push((i, out));
                }
            });
        }
    });
    let mut results = results.into_inner().expect("no panics");
    results.sort_by_key(|(i, _)| *i);
    let mut failures = Vec::new();
    for (i, out) in results {
        let (name, variant, arch, _, manifest) = &jobs[i];
        let at = format!("{name} {} [{variant}]", arch.target());
        let log = match out {
            Ok(log) => log,
            Err(log) => {
                failures.push(format!("{at}: ptxas failed:\n{log}"));
                continue;
            }
        };
        let uses = kernel_uses(&log);
        if uses.len() != entries(&jobs[i].3).len() {
            failures.push(format!("{at}: ptxas reported {} kernels", uses.len()));
        }
        for k in &uses {
            let Some(info) = manifest.kernels.iter().find(|m| m.name == k.name) else {
                failures.push(format!("{at}: {} is not in the manifest", k.name));
                continue;
            };
            let threads = info.block[0];
            println!(
                "{at} {}: block {threads}, {} registers (cap {:?}), spill {}/{} bytes",
                k.name, k.registers, info.max_regs, k.spill_stores, k.spill_loads
            );
            if k.registers.next_multiple_of(REGISTER_UNIT) * threads > REGISTER_FILE {
                failures.push(format!(
                    "{at}: {} needs {} registers x {threads} threads: cannot launch",
                    k.name, k.registers
                ));
            }
            if info.max_regs.is_some_and(|cap| k.registers > cap) {
                failures.push(format!("{at}: {} exceeds its register cap", k.name));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The ceiling probes assemble for sm_80 and sm_90 without spills (a spilling probe would
/// measure memory, not arithmetic), and their blocks can launch `BLOCKS_PER_SM` at a time.
#[test]
fn ceiling_probes_assemble_without_spills() {
    use nsac_compiler::ptx::probe::{BLOCKS_PER_SM, Probe};
    let Some(ptxas) = ptxas_or_skip() else {
        return;
    };
    for probe in [Probe::Ffma, Probe::Mma(DType::Bf16), Probe::Mma(DType::F16)] {
        for arch in [Arch::Sm80, Arch::Sm90] {
            let k = probe.kernel(arch, 108);
            let log = assemble(&ptxas, &k.name, &k.ptx, arch)
                .unwrap_or_else(|log| panic!("{} {}: ptxas failed:\n{log}", k.name, arch.target()));
            let uses = kernel_uses(&log);
            assert_eq!(uses.len(), 1, "{log}");
            let u = &uses[0];
            println!("{} {}: {} registers", k.name, arch.target(), u.registers);
            assert_eq!((u.spill_stores, u.spill_loads), (0, 0), "{log}");
            assert!(
                u.registers.next_multiple_of(REGISTER_UNIT) * k.block * BLOCKS_PER_SM
                    <= REGISTER_FILE,
                "{} needs {} registers: fewer than {BLOCKS_PER_SM} blocks fit",
                k.name,
                u.registers
            );
        }
    }
}
