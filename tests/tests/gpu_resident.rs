//! Device-resident tensors on a real GPU: one kernel serves calls of two lengths (batched, and
//! varlen segments) uploaded once and launched several times, its `o` within the oracle's bar
//! and bit-equal to a fresh `run`; a kernel of another Variant launches the same tensors; an
//! input replaced in place gives the new answer; inputs bound from caller device memory
//! (borrowed slices, raw pointers) and work on a caller's stream give the bytes of an upload.
//! Skips with a printed reason when no CUDA driver or device is present.
//!
//! Every library spec runs with heads 4/1 and head dims 64 (tensor-core kernels) at lengths
//! where each selection keeps all the blocks it can see, so the oracle comparison has no
//! score ties to excuse (`gpu_oracle.rs` covers the selection).

mod gpu_common;

use std::sync::Arc;

use nsac_compiler::ir::Sizes;
use nsac_compiler::ptx::GpuVariant;
use nsac_dsl::problem::{DType, Problem, Shape};
use nsac_dsl::spec::{HeadDim, Heads, Spec};
use nsac_kernels::io::{Inputs, random_inputs};
use nsac_kernels::reference;
use nsac_runtime::cuda::cudarc::driver::DevicePtr;
use nsac_runtime::cuda::{
    CudaDevice, CudaError, CudaKernel, CudaSlice, DeviceTensors, TensorsError, round_inputs,
};
use nsac_runtime::tensor_io::{HostTensor, TensorSet};

fn bar(dtype: DType) -> f64 {
    match dtype {
        DType::Bf16 => 1e-2,
        DType::F16 => 2e-3,
        DType::F32 => 1e-4,
    }
}

/// `spec` with heads 4/1 and head dims 64 on `problem` in `dtype`.
fn shape(spec: &Spec, mut problem: Problem, dtype: DType) -> Shape {
    problem.heads = Some(Heads { q: 4, kv: 1 });
    problem.head_dim = Some(HeadDim { qk: 64, v: 64 });
    problem.dtype = dtype;
    problem.resolve(spec).expect("valid test problem")
}

/// The two calls every test makes: two batch rows of an odd length, and varlen segments.
fn calls(spec: &Spec, dtype: DType) -> [Shape; 2] {
    [
        shape(spec, Problem::batched(2, 301), dtype),
        shape(spec, Problem::varlen(vec![0, 77, 410]), dtype),
    ]
}

fn inputs(spec: &Spec, shape: &Shape, seed: u64) -> Inputs {
    round_inputs(&random_inputs(spec, shape, seed), shape.dtype)
}

fn o_of(t: &DeviceTensors<'_>) -> Result<nsac_kernels::io::Tensor<f32>, String> {
    match t.download("o").map_err(|e| e.to_string())? {
        HostTensor::F32(o) => Ok(o),
        other => Err(format!("o is {:?}", other.elem_type())),
    }
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

/// `o` against the oracle on the same inputs, at the dtype's bar.
fn near_oracle(
    spec: &Spec,
    shape: &Shape,
    inputs: &Inputs,
    o: &nsac_kernels::io::Tensor<f32>,
) -> Result<f64, String> {
    let want = reference::forward(spec, shape, inputs).map_err(|e| e.to_string())?;
    let err = reference::relative_error(o, &want.o).ok_or("o is shaped unlike the oracle's")?;
    if err > bar(shape.dtype) {
        return Err(format!("o is off the oracle by {err:.2e}"));
    }
    Ok(err)
}

fn for_every_case(test: impl Fn(&Arc<CudaDevice>, &Spec, DType) -> Result<String, String>) {
    let Some(dev) = gpu_common::device() else {
        return;
    };
    let mut failures = Vec::new();
    for spec in gpu_common::library_specs() {
        for dtype in [DType::Bf16, DType::F16] {
            match test(&dev, &spec, dtype) {
                Ok(line) => println!("ok   {} {}: {line}", spec.name, dtype.name()),
                Err(e) => {
                    println!("FAIL {} {}: {e}", spec.name, dtype.name());
                    failures.push(format!("{} {}: {e}", spec.name, dtype.name()));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn one_kernel_serves_two_lengths_and_many_launches() {
    for_every_case(|dev, spec, dtype| {
        let [a, b] = calls(spec, dtype);
        let kernel = CudaKernel::compile(dev, spec, &a, &GpuVariant::default())
            .map_err(|e| e.to_string())?;
        let other = GpuVariant::parse("select_tokens=4,fuse_combine=1").expect("valid");
        let other = CudaKernel::compile(dev, spec, &b, &other).map_err(|e| e.to_string())?;
        let mut line = String::new();
        let (ia, ib) = (inputs(spec, &a, 11), inputs(spec, &b, 12));
        let ta = kernel
            .upload(&Sizes::of(&a), &ia)
            .map_err(|e| e.to_string())?;
        let tb = kernel
            .upload(&Sizes::of(&b), &ib)
            .map_err(|e| e.to_string())?;
        // interleaved launches: each call's buffers are its own
        let mut first: [Option<Vec<u32>>; 2] = [None, None];
        for round in 0..3 {
            for (i, (shape, ins, t)) in [(&a, &ia, &ta), (&b, &ib, &tb)].into_iter().enumerate() {
                kernel.launch(t).map_err(|e| e.to_string())?;
                if round == 1 {
                    continue; // two launches in a row, one download
                }
                let o = o_of(t)?;
                match &first[i] {
                    None => {
                        let err = near_oracle(spec, shape, ins, &o)?;
                        line += &format!(" T={} {err:.1e}", shape.seq_len);
                        let fresh = kernel
                            .run(&Sizes::of(shape), ins)
                            .map_err(|e| e.to_string())?;
                        if bits(&fresh.o.data) != bits(&o.data) {
                            return Err(format!("T={}: o differs from a fresh run", shape.seq_len));
                        }
                        first[i] = Some(bits(&o.data));
                    }
                    Some(f) if *f != bits(&o.data) => {
                        return Err(format!("T={}: o changed in round {round}", shape.seq_len));
                    }
                    Some(_) => {}
                }
            }
        }
        // another Variant's kernel launches the same tensors with its own geometry
        other.launch(&ta).map_err(|e| e.to_string())?;
        let o = o_of(&ta)?;
        let own = other.run(&Sizes::of(&a), &ia).map_err(|e| e.to_string())?;
        if bits(&own.o.data) != bits(&o.data) {
            return Err("another Variant on the shared tensors differs from its own run".into());
        }
        near_oracle(spec, &a, &ia, &o)?;
        Ok(line)
    });
}

#[test]
fn set_input_gives_the_new_answer() {
    for_every_case(|dev, spec, dtype| {
        let [_, b] = calls(spec, dtype);
        let kernel = CudaKernel::compile(dev, spec, &b, &GpuVariant::default())
            .map_err(|e| e.to_string())?;
        let mut ins = inputs(spec, &b, 21);
        let mut t = kernel
            .upload(&Sizes::of(&b), &ins)
            .map_err(|e| e.to_string())?;
        kernel.launch(&t).map_err(|e| e.to_string())?;
        let before = o_of(&t)?;
        let next = inputs(spec, &b, 22);
        let mut line = String::new();
        for name in ["q", "v"] {
            t.set_input(name, &next[name]).map_err(|e| e.to_string())?;
            ins.insert(name.into(), next[name].clone());
            kernel.launch(&t).map_err(|e| e.to_string())?;
            let after = o_of(&t)?;
            if bits(&after.data) == bits(&before.data) {
                return Err(format!("o did not change with a new `{name}`"));
            }
            let err = near_oracle(spec, &b, &ins, &after)?;
            line += &format!(" new {name}: {err:.1e}");
        }
        // a wrong shape is refused and leaves the input as it was
        let mut bad = next["q"].clone();
        bad.shape[1] += 1;
        bad.data
            .extend(std::iter::repeat_n(0.5, bad.shape[2] * bad.shape[3]));
        match t.set_input("q", &bad) {
            Err(CudaError::Input(_)) => {}
            other => return Err(format!("a misshaped q gave {other:?}")),
        }
        kernel.launch(&t).map_err(|e| e.to_string())?;
        near_oracle(spec, &b, &ins, &o_of(&t)?)?;
        Ok(line)
    });
}

/// The bytes of a host input in the kernels' dtype.
fn device_bytes(t: &nsac_kernels::io::Tensor<f32>, dtype: DType) -> Vec<u8> {
    match dtype {
        DType::F32 => t.data.iter().flat_map(|x| x.to_le_bytes()).collect(),
        DType::F16 => t
            .data
            .iter()
            .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
            .collect(),
        DType::Bf16 => t
            .data
            .iter()
            .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
            .collect(),
    }
}

#[test]
fn borrowed_inputs_give_the_bytes_of_an_upload() {
    for_every_case(|dev, spec, dtype| {
        let [a, _] = calls(spec, dtype);
        let sizes = Sizes::of(&a);
        let kernel = CudaKernel::compile(dev, spec, &a, &GpuVariant::default())
            .map_err(|e| e.to_string())?;
        let ins = inputs(spec, &a, 31);
        let uploaded = kernel.upload(&sizes, &ins).map_err(|e| e.to_string())?;
        kernel.launch(&uploaded).map_err(|e| e.to_string())?;
        let want: TensorSet = uploaded.download_outputs().map_err(|e| e.to_string())?;

        // the caller's own device buffers, made on the device's stream
        let stream = dev.stream();
        let slices: Vec<(String, CudaSlice<u8>)> = ins
            .iter()
            .map(|(name, t)| {
                let s = stream.clone_htod(&device_bytes(t, dtype));
                s.map(|s| (name.clone(), s)).map_err(|e| e.to_string())
            })
            .collect::<Result<_, _>>()?;
        let mut borrowed = kernel.alloc(&sizes).map_err(|e| e.to_string())?;
        match kernel.launch(&borrowed) {
            Err(CudaError::Tensors(TensorsError::Unbound(_))) => {}
            other => return Err(format!("launching unbound inputs gave {other:?}")),
        }
        for (i, (name, s)) in slices.iter().enumerate() {
            if i % 2 == 0 {
                borrowed.bind_input(name, s).map_err(|e| e.to_string())?;
            } else {
                let (ptr, sync) = s.device_ptr(stream);
                drop(sync);
                // SAFETY: `slices` holds the buffer, allocated and written on the tensors'
                // stream, until after `borrowed` is dropped; nothing else writes it.
                unsafe { borrowed.bind_input_raw(name, ptr, s.num_bytes()) }
                    .map_err(|e| e.to_string())?;
            }
        }
        // a slice of the wrong length is refused
        let (name, short) = (&slices[0].0, &slices[1].1);
        if short.num_bytes() != slices[0].1.num_bytes() {
            match borrowed.bind_input(name, short) {
                Err(CudaError::Tensors(TensorsError::ByteLength { .. })) => {}
                other => return Err(format!("binding a wrong-size buffer gave {other:?}")),
            }
        }
        kernel.launch(&borrowed).map_err(|e| e.to_string())?;
        if borrowed.download_outputs().map_err(|e| e.to_string())? != want {
            return Err("borrowed inputs give other outputs than uploaded ones".into());
        }
        // the same on a stream of the caller's, and read as a device view
        let side = dev.context().new_stream().map_err(|e| e.to_string())?;
        borrowed
            .set_stream(side.clone())
            .map_err(|e| e.to_string())?;
        kernel.launch(&borrowed).map_err(|e| e.to_string())?;
        let o = borrowed.output("o").map_err(|e| e.to_string())?;
        let o_bytes = side.clone_dtoh(o).map_err(|e| e.to_string())?;
        side.synchronize().map_err(|e| e.to_string())?;
        let HostTensor::F32(wo) = &want["o"] else {
            return Err("o is not f32".into());
        };
        let wo_bytes: Vec<u8> = wo.data.iter().flat_map(|x| x.to_le_bytes()).collect();
        if o_bytes[..wo_bytes.len()] != wo_bytes[..] {
            return Err("o on the caller's stream differs".into());
        }
        // tensors of another plan are refused
        let other_spec = gpu_common::library_specs()
            .into_iter()
            .find(|s| s.name != spec.name)
            .ok_or("one library spec only")?;
        let other = CudaKernel::compile(
            dev,
            &other_spec,
            &shape(&other_spec, Problem::batched(1, 64), dtype),
            &GpuVariant::default(),
        )
        .map_err(|e| e.to_string())?;
        match other.launch(&uploaded) {
            Err(CudaError::Tensors(TensorsError::OtherPlan)) => {}
            other => return Err(format!("launching another plan's tensors gave {other:?}")),
        }
        drop(borrowed);
        drop(slices);
        Ok(format!("{} outputs equal", want.len()))
    });
}
