//! Writes PTX + manifest files for the Python example and the GPU benchmark (`bench/gpu/`).
//! Ignored by default: run with `NSAC_EMIT_DIR=DIR cargo test --release --test gpu_emit --
//! --ignored`. For the example it also writes random inputs and the oracle's `o` as raw
//! little-endian f32 files (`<case>.<tensor>.f32`).

mod gpu_common;

use std::path::PathBuf;

use nsac_compiler::ptx::{Arch, GpuVariant, emit_ptx};
use nsac_dsl::problem::{DType, Problem};
use nsac_kernels::io::random_inputs;
use nsac_kernels::reference;
use nsac_runtime::cuda::round_inputs;

fn dir() -> PathBuf {
    PathBuf::from(std::env::var("NSAC_EMIT_DIR").unwrap_or_else(|_| "target/nsac-emit".into()))
}

fn write_f32(path: PathBuf, data: impl Iterator<Item = f32>) {
    let bytes: Vec<u8> = data.flat_map(|x| x.to_le_bytes()).collect();
    std::fs::write(path, bytes).expect("write");
}

#[test]
#[ignore = "writes files for the GPU benchmark; run by hand"]
fn emit_bench_and_example_files() {
    let out = dir();
    std::fs::create_dir_all(&out).expect("mkdir");
    let specs = gpu_common::library_specs();
    let arch = std::env::var("NSAC_ARCH")
        .ok()
        .and_then(|a| Arch::parse(&a))
        .unwrap_or(Arch::Sm90);
    // Example: a small nsa_paper call in bf16, with inputs and the oracle's output.
    let paper = specs
        .iter()
        .find(|s| s.name == "nsa_paper")
        .expect("nsa_paper");
    let mut p = Problem::batched(1, 203);
    p.dtype = DType::Bf16;
    let shape = p.resolve(paper).expect("valid");
    let (ptx, manifest) = emit_ptx(paper, &shape, &GpuVariant::default(), arch).expect("emit");
    std::fs::write(out.join("example.ptx"), ptx).expect("write");
    std::fs::write(out.join("example.json"), manifest.to_json()).expect("write");
    let inputs = round_inputs(&random_inputs(paper, &shape, 7), shape.dtype);
    for (name, t) in &inputs {
        write_f32(
            out.join(format!("example.{name}.f32")),
            t.data.iter().copied(),
        );
    }
    let want = reference::forward(paper, &shape, &inputs).expect("oracle");
    write_f32(
        out.join("example.expected_o.f32"),
        want.o.data.iter().map(|&x| x as f32),
    );
    // Benchmark: nsa_fla and nsa_paper, B=1 HQ=64 H=4, bf16, T in 8k..64k.
    let lens: Vec<usize> = std::env::var("NSAC_BENCH_T")
        .unwrap_or_else(|_| "8192,16384,32768,65536".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    for name in ["nsa_fla", "nsa_paper"] {
        let spec = specs.iter().find(|s| s.name == name).expect("library spec");
        for &t in &lens {
            let mut p = Problem::batched(1, t);
            p.dtype = DType::Bf16;
            let shape = p.resolve(spec).expect("valid");
            let (ptx, manifest) =
                emit_ptx(spec, &shape, &GpuVariant::default(), arch).expect("emit");
            std::fs::write(out.join(format!("{name}_{t}.ptx")), ptx).expect("write");
            std::fs::write(out.join(format!("{name}_{t}.json")), manifest.to_json())
                .expect("write");
        }
    }
}
