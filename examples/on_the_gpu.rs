//! Run a library spec on the GPU when one is present (else say why not and stop), in bf16, and
//! compare with the f64 reference on the same (bf16-rounded) inputs.
//!
//! `cargo run --release --example on_the_gpu`

use nsac::dsl::problem::{DType, Sequences};
use nsac::dsl::spec::{HeadDim, Heads};
use nsac::{Attention, Device, Error, Options};

fn main() -> Result<(), String> {
    let show = |e: Error| e.render(false);
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
    let problem = gpu.problem(Sequences::Batched {
        batch: 1,
        len: 4099,
    });
    let inputs = attn.random_inputs(&problem, 3).map_err(show)?;
    let inputs = nsac::runtime::cuda::round_inputs(&inputs, DType::Bf16);
    let got = gpu.run(&problem, &inputs).map_err(show)?;
    let mut f32_problem = problem.clone();
    f32_problem.dtype = DType::F32;
    let reference = attn
        .compile(
            &Device::Reference,
            &Options {
                dtype: DType::F32,
                ..options.clone()
            },
        )
        .map_err(show)?;
    let want = reference.run(&f32_problem, &inputs).map_err(show)?;
    let err = got
        .relative_error(&want, "o")
        .ok_or("o is missing or shaped unlike the reference's")?;
    println!(
        "{}: {:.2} ms, max|o - ref| / max|ref| = {err:.1e} (bar 1e-2)",
        got.device,
        got.time.as_secs_f64() * 1e3
    );
    if err > 1e-2 {
        return Err(format!("the GPU result is off by {err:e}"));
    }
    Ok(())
}
