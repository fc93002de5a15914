//! Helpers shared by the fuzz targets: a per-process scratch directory for the readers that
//! take a path (tensor files, the tuning DB), and a bit-exact comparison of tensor sets (NaN
//! payloads included, which `PartialEq` on floats cannot give).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

#[cfg(feature = "runtime")]
use nsac_runtime::tensor_io::{HostTensor, TensorSet};

/// The scratch directory, made on first use.
static DIR: OnceLock<PathBuf> = OnceLock::new();

/// A directory private to this process, in memory (`/dev/shm`) where there is one, removed
/// when the process exits (libFuzzer ends a run with `exit`).
pub fn scratch_dir() -> &'static Path {
    DIR.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("nsac-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("cannot create the fuzz scratch directory");
        // SAFETY: `remove_scratch` is a plain `extern "C" fn()` that only reads `DIR`.
        unsafe {
            atexit(remove_scratch);
        }
        dir
    })
}

unsafe extern "C" {
    fn atexit(f: extern "C" fn()) -> i32;
}

extern "C" fn remove_scratch() {
    if let Some(dir) = DIR.get() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[cfg(feature = "runtime")]
/// Every tensor's shape multiplies out to the number of values it holds.
pub fn assert_well_formed(set: &TensorSet) {
    for (name, t) in set {
        let numel = t.shape().iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        assert_eq!(
            numel,
            Some(t.len()),
            "tensor `{name}`: shape {:?} but {} values",
            t.shape(),
            t.len()
        );
    }
}

#[cfg(feature = "runtime")]
/// The element type, shape and raw bits of a tensor.
fn bits(t: &HostTensor) -> (String, Vec<usize>, Vec<u64>) {
    let data: Vec<u64> = match t {
        HostTensor::F32(t) => t.data.iter().map(|x| u64::from(x.to_bits())).collect(),
        HostTensor::F64(t) => t.data.iter().map(|x| x.to_bits()).collect(),
        HostTensor::F16(t) => t.data.iter().map(|x| u64::from(x.to_bits())).collect(),
        HostTensor::Bf16(t) => t.data.iter().map(|x| u64::from(x.to_bits())).collect(),
        HostTensor::I32(t) => t.data.iter().map(|&x| x as u32 as u64).collect(),
        HostTensor::I64(t) => t.data.iter().map(|&x| x as u64).collect(),
    };
    (t.elem_type().to_string(), t.shape().to_vec(), data)
}

#[cfg(feature = "runtime")]
/// Two tensor sets hold the same names, element types, shapes and bits.
pub fn assert_same_bits(a: &TensorSet, b: &TensorSet) {
    let names = |s: &TensorSet| s.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(a), names(b), "tensor names differ after a round trip");
    for (name, t) in a {
        assert_eq!(
            bits(t),
            bits(&b[name]),
            "tensor `{name}` differs after a round trip"
        );
    }
}
