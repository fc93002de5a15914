//! Run a library spec on the GPU when one is present (else say why not and stop), in bf16, with
//! device-resident tensors: one kernel for every length, each length's inputs uploaded once,
//! new queries written in place between launches, and `o` alone copied back and compared with
//! the f64 reference on the same (bf16-rounded) inputs.
//!
//! `cargo run --release --example on_the_gpu`

use std::sync::Arc;
use std::time::Instant;

use nsac::dsl::problem::{DType, Sequences};
use nsac::dsl::spec::{HeadDim, Heads};
use nsac::{Attention, Device, Error, Options};

fn main() -> Result<(), String> {
    let show = |e: Error| e.render(false);
    let cuda = |e: nsac::cuda::CudaError| Error::from(e).render(false);
    let attn = Attention::load("kernels/nsa-fla.nsa").map_err(show)?;
    let options = Options {
        heads: Some(Heads { q: 16, kv: 1 }),
        head_dim: Some(HeadDim { qk: 64, v: 64 }),
        dtype: DType::Bf16,
        ..Options::default()
    };
    let gpu = match attn.compile(&Device::Cuda, &options) {
        Ok(gpu) => gpu,
        Err(e @ (Error::NoGpu | Error::Cuda(_))) => {
            println!("no GPU here, nothing to run: {e}");
            return Ok(());
        }
        Err(e) => return Err(show(e)),
    };
    let mut first_kernel = None;
    for (len, seeds) in [(4099, [3, 4]), (1000, [5, 6])] {
        let problem = gpu.problem(Sequences::Batched { batch: 1, len });
        let kernel = gpu.cuda_kernel(&problem).map_err(show)?;
        let first = first_kernel.get_or_insert_with(|| kernel.clone());
        let rounded = |seed| -> Result<_, String> {
            let raw = attn.random_inputs(&problem, seed).map_err(show)?;
            Ok(nsac::cuda::round_inputs(&raw, DType::Bf16))
        };
        let mut inputs = rounded(seeds[0])?;
        let mut tensors = kernel
            .upload(&gpu.sizes(&problem).map_err(show)?, &inputs)
            .map_err(cuda)?;
        for (i, &seed) in seeds.iter().enumerate() {
            if i > 0 {
                // new queries; the keys, values and gates stay where they are
                let q = rounded(seed)?.remove("q").ok_or("no input q")?;
                tensors.set_input("q", &q).map_err(cuda)?;
                inputs.insert("q".into(), q);
            }
            let start = Instant::now();
            kernel.launch(&tensors).map_err(cuda)?;
            let o = tensors.download("o").map_err(cuda)?;
            let took = start.elapsed();
            let shape = problem.resolve(attn.spec()).map_err(|e| show(e.into()))?;
            let want = nsac::kernels::reference::forward(attn.spec(), &shape, &inputs)
                .map_err(|e| show(e.into()))?;
            let got = o.to_f32().ok_or("o is not float")?;
            let err = nsac::kernels::reference::relative_error(&got, &want.o)
                .ok_or("o is shaped unlike the reference's")?;
            println!(
                "T={len} seed {seed}: {:.2} ms launch + download of o, max|o - ref| / max|ref| = {err:.1e} (bar 1e-2); the T=4099 kernel: {}",
                took.as_secs_f64() * 1e3,
                Arc::ptr_eq(first, &kernel)
            );
            if err > 1e-2 {
                return Err(format!("the GPU result is off by {err:e}"));
            }
        }
    }
    Ok(())
}
