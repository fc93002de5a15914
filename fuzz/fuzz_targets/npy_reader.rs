//! The npy reader (`tensor_io::read_kernel_inputs` on a directory holding one `q.npy`): any
//! bytes give a typed error or a well-formed tensor, and what was read writes and reads back
//! bit for bit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nsac_fuzz::{assert_same_bits, assert_well_formed, scratch_dir};
use nsac_runtime::tensor_io::{into_kernel_inputs, read_inputs, write_outputs};

fuzz_target!(|data: &[u8]| {
    let dir = scratch_dir().join("in");
    let out = scratch_dir().join("out");
    std::fs::create_dir_all(&dir).expect("scratch directory");
    std::fs::write(dir.join("q.npy"), data).expect("scratch file");
    let Ok(set) = read_inputs(&dir) else {
        return;
    };
    assert_well_formed(&set);
    write_outputs(&out, &set).expect("a set that was read can be written");
    let back = read_inputs(&out).expect("a written directory reads back");
    assert_same_bits(&set, &back);
    let _ = into_kernel_inputs(set, &dir);
});
