//! Computes `NSAC_CODE_HASH`: a hash of the code generator's sources (and of the workspace's
//! Cargo.lock, which pins Cranelift), so that a tuned Variant recorded by one build of the
//! compiler is not trusted by another that may generate different code, even when the crate
//! version is the same (the tuning DB keys on it, see `nsac_compiler::CODE_VERSION`).

use std::fs;
use std::path::{Path, PathBuf};

/// FNV-1a, 64-bit: stable across toolchains and platforms (std's hasher is not).
fn fnv1a(hash: &mut u64, bytes: &[u8]) {
    for &b in bytes {
        *hash ^= u64::from(b);
        *hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
}

/// Every file under `dir`, sorted, so the hash does not depend on directory order.
fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files(&path, out);
        } else {
            out.push(path);
        }
    }
}

fn main() {
    let root = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let src = root.join("src");
    let lock = root.join("../Cargo.lock");
    println!("cargo:rerun-if-changed={}", src.display());
    println!("cargo:rerun-if-changed={}", lock.display());

    let mut paths = Vec::new();
    files(&src, &mut paths);
    paths.sort();
    let mut hash = 0xcbf2_9ce4_8422_2325_u64;
    for path in paths.iter().chain([&lock]) {
        let name = path.strip_prefix(&root).unwrap_or(path);
        fnv1a(&mut hash, name.to_string_lossy().as_bytes());
        if let Ok(bytes) = fs::read(path) {
            fnv1a(&mut hash, &bytes);
        }
    }
    println!("cargo:rustc-env=NSAC_CODE_HASH={hash:016x}");
}
