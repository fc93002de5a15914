//! Every generated PTX module assembles with `ptxas` for sm_80 and sm_90 without errors; prints
//! register and spill counts. Skips with a reason when ptxas is absent, except under `CI=true`.

mod gpu_common;

use std::process::Command;

use nsac_compiler::ptx::{Arch, GpuVariant, emit_ptx};
use nsac_dsl::problem::DType;

fn assemble(ptxas: &std::path::Path, name: &str, ptx: &str, arch: Arch) -> Result<String, String> {
    let dir = std::env::temp_dir().join(format!("nsac_ptxas_{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
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

#[test]
fn generated_ptx_assembles_for_sm80_and_sm90() {
    let Some(ptxas) = gpu_common::find_ptxas() else {
        assert!(
            !gpu_common::must_run(),
            "CI=true but ptxas was not found (set NSAC_PTXAS or pip install nvidia-cuda-nvcc-cu12)"
        );
        eprintln!(
            "SKIPPED: ptxas not found (set NSAC_PTXAS, put ptxas on PATH, or pip install nvidia-cuda-nvcc-cu12)"
        );
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
