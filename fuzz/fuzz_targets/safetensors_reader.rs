//! The safetensors reader (`tensor_io::read_kernel_inputs` on a `.safetensors` file): any bytes
//! give a typed error or well-formed tensors, and what was read writes and reads back bit for
//! bit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nsac_fuzz::{assert_same_bits, assert_well_formed, scratch_dir};
use nsac_runtime::tensor_io::{into_kernel_inputs, read_inputs, write_outputs};

fuzz_target!(|data: &[u8]| {
    let path = scratch_dir().join("in.safetensors");
    std::fs::write(&path, data).expect("scratch file");
    let Ok(set) = read_inputs(&path) else {
        return;
    };
    assert_well_formed(&set);
    let out = scratch_dir().join("out.safetensors");
    write_outputs(&out, &set).expect("a set that was read can be written");
    let back = read_inputs(&out).expect("a written file reads back");
    assert_same_bits(&set, &back);
    let _ = into_kernel_inputs(set, &path);
});
