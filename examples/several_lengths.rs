//! Compile a library spec once for the CPU and call it on several lengths and a packed
//! variable-length batch, checking each result against the f64 reference.
//!
//! `cargo run --release --example several_lengths`

use nsac::dsl::problem::Sequences;
use nsac::dsl::spec::{HeadDim, Heads};
use nsac::{Attention, Device, Options};

fn main() -> Result<(), String> {
    let show = |e: nsac::Error| e.render(false);
    let attn = Attention::load("kernels/nsa-paper.nsa").map_err(show)?;
    let options = Options {
        heads: Some(Heads { q: 8, kv: 2 }),
        head_dim: Some(HeadDim { qk: 64, v: 32 }),
        ..Options::default()
    };
    let cpu = attn.compile(&Device::Cpu, &options).map_err(show)?;
    let reference = attn.compile(&Device::Reference, &options).map_err(show)?;
    let cases = [
        Sequences::Batched { batch: 1, len: 300 },
        Sequences::Batched {
            batch: 2,
            len: 1001,
        },
        Sequences::Varlen {
            cu_seqlens: vec![0, 77, 700, 1500],
        },
    ];
    for sequences in cases {
        let problem = cpu.problem(sequences.clone());
        let inputs = attn.random_inputs(&problem, 1).map_err(show)?;
        let got = cpu.run(&problem, &inputs).map_err(show)?;
        let want = reference.run(&problem, &inputs).map_err(show)?;
        let err = got
            .relative_error(&want, "o")
            .ok_or("o is missing or shaped unlike the reference's")?;
        println!(
            "{sequences:?}: {} in {:.1} ms ({} variant{}), max|o - ref| / max|ref| = {err:.1e}",
            got.device,
            got.time.as_secs_f64() * 1e3,
            got.origin.name(),
            got.compile
                .map(|c| format!(", compiled in {:.0} ms", c.as_secs_f64() * 1e3))
                .unwrap_or_default(),
        );
        if err > 1e-5 {
            return Err(format!("the CPU result is off by {err:e}"));
        }
    }
    Ok(())
}
