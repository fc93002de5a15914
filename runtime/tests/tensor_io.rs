//! Tensor file I/O: round trips in both formats for every element type on random data, the
//! conversion to kernel inputs, every error case, and corrupt files that must not panic.

use std::collections::BTreeMap;
use std::path::Path;

use half::{bf16, f16};
use nsac_dsl::problem::Problem;
use nsac_dsl::spec::{
    Branch, BranchKind, Combine, CombineMode, HeadDim, Heads, KvSource, Spec, Window,
};
use nsac_kernels::io::{Tensor, random_inputs};
use nsac_kernels::reference::Output;
use nsac_runtime::fs_policy::FsError;
use nsac_runtime::tensor_io::{
    HostTensor, TensorIoError, TensorSet, into_kernel_inputs, read_inputs, read_kernel_inputs,
    reference_outputs, write_outputs,
};
use proptest::prelude::*;

/// A small deterministic generator (SplitMix64) so every dtype gets varied, non-constant data.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }
}

fn shape_of(g: &mut Gen) -> Vec<usize> {
    let rank = 1 + (g.next() % 4) as usize;
    (0..rank).map(|_| 1 + (g.next() % 5) as usize).collect()
}

fn tensor<T>(g: &mut Gen, f: impl Fn(&mut Gen) -> T) -> Tensor<T> {
    let shape = shape_of(g);
    let n = shape.iter().product();
    Tensor {
        shape,
        data: (0..n).map(|_| f(g)).collect(),
    }
}

/// One tensor of each element type the format holds.
fn every_dtype(seed: u64, with_bf16: bool) -> TensorSet {
    let mut g = Gen(seed);
    let mut set = TensorSet::new();
    set.insert(
        "a_f32".into(),
        tensor(&mut g, |g| g.unit() as f32 * 10.0).into(),
    );
    set.insert("b_f64".into(), tensor(&mut g, |g| g.unit() * 1e3).into());
    set.insert(
        "c_f16".into(),
        tensor(&mut g, |g| f16::from_f64(g.unit() * 8.0)).into(),
    );
    set.insert("d_i32".into(), tensor(&mut g, |g| g.next() as i32).into());
    set.insert("e_i64".into(), tensor(&mut g, |g| g.next() as i64).into());
    if with_bf16 {
        set.insert(
            "f_bf16".into(),
            tensor(&mut g, |g| bf16::from_f64(g.unit() * 8.0)).into(),
        );
    }
    set
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn safetensors_round_trips_every_dtype() {
    for seed in [1, 2, 3] {
        let dir = tmp();
        let path = dir.path().join("t.safetensors");
        let set = every_dtype(seed, true);
        write_outputs(&path, &set).unwrap();
        assert_eq!(read_inputs(&path).unwrap(), set);
        // Nothing but the file itself is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // Readable like any file `File::create` makes, not private like a temporary file.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let plain = dir.path().join("plain");
            std::fs::File::create(&plain).unwrap();
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&path), mode(&plain));
            std::fs::remove_file(&plain).unwrap();
        }
    }
}

#[test]
fn npy_dir_round_trips_every_dtype() {
    for seed in [4, 5, 6] {
        let dir = tmp();
        let path = dir.path().join("out");
        let set = every_dtype(seed, false);
        write_outputs(&path, &set).unwrap();
        assert_eq!(read_inputs(&path).unwrap(), set);
        assert_eq!(std::fs::read_dir(&path).unwrap().count(), set.len());
    }
}

#[test]
fn npy_dir_cannot_hold_bf16() {
    let dir = tmp();
    let set = every_dtype(7, true);
    let err = write_outputs(&dir.path().join("out"), &set).unwrap_err();
    assert!(matches!(err, TensorIoError::UnsupportedDtype { ref name, .. } if name == "f_bf16"));
    // Checked before anything is written.
    assert!(!dir.path().join("out").exists());
}

fn tiny_spec() -> Spec {
    Spec {
        name: "w".into(),
        heads: Heads { q: 4, kv: 2 },
        head_dim: HeadDim { qk: 8, v: 4 },
        causal: true,
        scale: None,
        branches: vec![Branch {
            name: "win".into(),
            kv: KvSource::Shared,
            kind: BranchKind::Window(Window { size: 5 }),
        }],
        combine: Combine {
            mode: CombineMode::Gate,
            branches: vec!["win".into()],
        },
    }
}

#[test]
fn kernel_inputs_round_trip_through_both_formats_with_cu_seqlens() {
    let spec = tiny_spec();
    let shape = Problem::varlen(vec![0, 7, 13]).resolve(&spec).unwrap();
    for (seed, file) in [(11, "in.safetensors"), (12, "in_npy")] {
        let inputs = random_inputs(&spec, &shape, seed);
        let mut set: TensorSet = inputs
            .iter()
            .map(|(k, v)| (k.clone(), HostTensor::F32(v.clone())))
            .collect();
        set.insert(
            "cu_seqlens".into(),
            HostTensor::I32(Tensor {
                shape: vec![3],
                data: vec![0, 7, 13],
            }),
        );
        let dir = tmp();
        let path = dir.path().join(file);
        write_outputs(&path, &set).unwrap();
        let got = read_kernel_inputs(&path).unwrap();
        assert_eq!(got.inputs, inputs);
        assert_eq!(got.cu_seqlens, Some(vec![0, 7, 13]));
        nsac_kernels::io::check_inputs(&spec, &shape, &got.inputs).unwrap();
    }
}

#[test]
fn kernel_inputs_widen_half_types_and_narrow_f64() {
    let mut g = Gen(21);
    let h = tensor(&mut g, |g| f16::from_f64(g.unit()));
    let b = tensor(&mut g, |g| bf16::from_f64(g.unit()));
    let d = tensor(&mut g, |g| g.unit());
    let mut set = TensorSet::new();
    set.insert("h".into(), h.clone().into());
    set.insert("b".into(), b.clone().into());
    set.insert("d".into(), d.clone().into());
    set.insert(
        "cu_seqlens".into(),
        HostTensor::I64(Tensor {
            shape: vec![2],
            data: vec![0, 9],
        }),
    );
    let got = into_kernel_inputs(set, Path::new("x")).unwrap();
    assert_eq!(
        got.inputs["h"].data,
        h.data.iter().map(|x| x.to_f32()).collect::<Vec<_>>()
    );
    assert_eq!(
        got.inputs["b"].data,
        b.data.iter().map(|x| x.to_f32()).collect::<Vec<_>>()
    );
    assert_eq!(
        got.inputs["d"].data,
        d.data.iter().map(|&x| x as f32).collect::<Vec<_>>()
    );
    assert_eq!(got.inputs["d"].shape, d.shape);
    assert_eq!(got.cu_seqlens, Some(vec![0, 9]));
}

fn one(name: &str, t: HostTensor) -> TensorSet {
    BTreeMap::from([(name.to_string(), t)])
}

#[test]
fn kernel_inputs_reject_bad_dtypes_and_cu_seqlens() {
    let ints = HostTensor::I32(Tensor {
        shape: vec![2],
        data: vec![1, 2],
    });
    let err = into_kernel_inputs(one("q", ints), Path::new("x")).unwrap_err();
    assert!(matches!(err, TensorIoError::UnsupportedDtype { ref name, .. } if name == "q"));

    let float_cu = HostTensor::F32(Tensor {
        shape: vec![2],
        data: vec![0.0, 3.0],
    });
    let err = into_kernel_inputs(one("cu_seqlens", float_cu), Path::new("x")).unwrap_err();
    assert!(matches!(err, TensorIoError::UnsupportedDtype { .. }));

    let negative = HostTensor::I64(Tensor {
        shape: vec![2],
        data: vec![0, -3],
    });
    let err = into_kernel_inputs(one("cu_seqlens", negative), Path::new("x")).unwrap_err();
    assert!(matches!(err, TensorIoError::BadCuSeqlens { .. }));

    let two_d = HostTensor::I32(Tensor {
        shape: vec![1, 2],
        data: vec![0, 3],
    });
    let err = into_kernel_inputs(one("cu_seqlens", two_d), Path::new("x")).unwrap_err();
    assert!(matches!(err, TensorIoError::BadCuSeqlens { .. }));
}

#[test]
fn reference_outputs_are_written_as_f64_and_i32() {
    let mut g = Gen(31);
    let o = tensor(&mut g, |g| g.unit());
    let ob = tensor(&mut g, |g| g.unit());
    let idx = tensor(&mut g, |g| (g.next() % 9) as i32 - 1);
    let out = Output {
        o: o.clone(),
        branches: BTreeMap::from([("slc".to_string(), ob.clone())]),
        selected: BTreeMap::from([("slc".to_string(), idx.clone())]),
    };
    let set = reference_outputs(&out);
    let dir = tmp();
    for file in ["o.safetensors", "o_dir"] {
        let path = dir.path().join(file);
        write_outputs(&path, &set).unwrap();
        let back = read_inputs(&path).unwrap();
        assert_eq!(back["o"], HostTensor::F64(o.clone()));
        assert_eq!(back["o_slc"], HostTensor::F64(ob.clone()));
        assert_eq!(back["idx_slc"], HostTensor::I32(idx.clone()));
    }
}

#[test]
fn paths_that_are_not_tensor_files_are_errors() {
    let dir = tmp();
    let missing = dir.path().join("nope.safetensors");
    assert!(matches!(
        read_inputs(&missing),
        Err(TensorIoError::Missing(_))
    ));
    let txt = dir.path().join("x.txt");
    std::fs::write(&txt, b"hello").unwrap();
    assert!(matches!(
        read_inputs(&txt),
        Err(TensorIoError::UnknownFormat(_))
    ));
    let set = every_dtype(41, false);
    assert!(matches!(
        write_outputs(&txt, &set),
        Err(TensorIoError::UnknownFormat(_))
    ));
    let as_dir = dir.path().join("d.safetensors");
    std::fs::create_dir(&as_dir).unwrap();
    assert!(matches!(
        write_outputs(&as_dir, &set),
        Err(TensorIoError::IsDirectory(_))
    ));
    let no_parent = dir.path().join("no/such/dir/x.safetensors");
    let err = write_outputs(&no_parent, &set).unwrap_err();
    assert!(
        matches!(err, TensorIoError::File(FsError::NotWritable { .. })),
        "{err:?}"
    );
    // The error names the user's path, not a temporary file.
    assert!(
        err.to_string().contains("no/such/dir/x.safetensors"),
        "{err}"
    );
    assert!(!err.to_string().contains("nsac-tmp"), "{err}");
}

#[test]
fn a_failed_write_leaves_the_old_file_whole() {
    let dir = tmp();
    let path = dir.path().join("o.safetensors");
    let good = every_dtype(51, true);
    write_outputs(&path, &good).unwrap();
    let bad = one(
        "o",
        HostTensor::F32(Tensor {
            shape: vec![2, 3],
            data: vec![1.0; 5],
        }),
    );
    let err = write_outputs(&path, &bad).unwrap_err();
    assert!(matches!(err, TensorIoError::ShapeMismatch { ref name, len: 5, .. } if name == "o"));
    assert_eq!(read_inputs(&path).unwrap(), good);
}

#[test]
fn names_that_cannot_be_file_names_are_refused() {
    let dir = tmp();
    for name in ["../escape", "a/b", "", ".."] {
        let set = one(
            name,
            HostTensor::F32(Tensor {
                shape: vec![1],
                data: vec![0.5],
            }),
        );
        let err = write_outputs(&dir.path().join("out"), &set).unwrap_err();
        assert!(
            matches!(err, TensorIoError::BadName { .. }),
            "{name}: {err}"
        );
    }
}

#[test]
fn truncated_files_are_errors() {
    let dir = tmp();
    let set = every_dtype(61, false);
    let st = dir.path().join("t.safetensors");
    write_outputs(&st, &set).unwrap();
    let bytes = std::fs::read(&st).unwrap();
    for cut in [0, 4, 8, 20, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&st, &bytes[..cut]).unwrap();
        assert!(
            matches!(read_inputs(&st), Err(TensorIoError::NotSafetensors { .. })),
            "cut at {cut}"
        );
    }
    let npy = dir.path().join("n");
    write_outputs(&npy, &set).unwrap();
    let file = npy.join("a_f32.npy");
    let bytes = std::fs::read(&file).unwrap();
    for cut in [0, 5, 10, 60, bytes.len() - 1] {
        std::fs::write(&file, &bytes[..cut]).unwrap();
        assert!(
            matches!(read_inputs(&npy), Err(TensorIoError::NotNpy { .. })),
            "cut at {cut}"
        );
    }
}

#[test]
fn unsupported_file_dtypes_are_typed_errors() {
    let dir = tmp();
    // A safetensors file holding u8, written with the crate directly.
    let data = [1u8, 2, 3];
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::U8, vec![3], &data).unwrap();
    let bytes = safetensors::serialize([("bytes", view)], None).unwrap();
    let st = dir.path().join("u8.safetensors");
    std::fs::write(&st, bytes).unwrap();
    let err = read_inputs(&st).unwrap_err();
    assert!(matches!(err, TensorIoError::UnsupportedDtype { ref name, .. } if name == "bytes"));
    // An npy file holding u16.
    let npy = dir.path().join("n");
    std::fs::create_dir(&npy).unwrap();
    npyz::to_file_1d(npy.join("w.npy"), vec![1u16, 2, 3]).unwrap();
    let err = read_inputs(&npy).unwrap_err();
    assert!(matches!(err, TensorIoError::UnsupportedDtype { ref name, .. } if name == "w"));
}

#[test]
fn npy_header_claiming_more_data_than_the_file_holds_is_an_error() {
    let dir = tmp();
    let npy = dir.path().join("n");
    std::fs::create_dir(&npy).unwrap();
    let mut buf = Vec::new();
    {
        use npyz::WriterBuilder;
        let mut w = npyz::WriteOptions::new()
            .default_dtype()
            .shape(&[1u64 << 40, 1 << 20])
            .writer(&mut buf)
            .begin_nd()
            .unwrap();
        w.push(&1.0f32).unwrap();
        // Dropped unfinished on purpose: the header lies about the length.
        std::mem::forget(w);
    }
    std::fs::write(npy.join("big.npy"), &buf).unwrap();
    assert!(matches!(
        read_inputs(&npy),
        Err(TensorIoError::NotNpy { .. })
    ));
}

/// Found by the `npy_reader` fuzz target: a 137-byte version-3 file whose header length field
/// says 4 GiB made npyz allocate 4 GiB before reading (an abort where memory is limited). The
/// claim is now checked against the file first, and the error says so.
#[test]
fn npy_header_length_claiming_more_than_the_file_is_refused_before_allocating() {
    let dir = tmp();
    let npy = dir.path().join("n");
    std::fs::create_dir(&npy).unwrap();
    for (version, length) in [(3u8, u32::MAX), (2, 1 << 30), (1, 0xffff)] {
        let mut bytes = b"\x93NUMPY".to_vec();
        bytes.extend([version, 0]);
        if version == 1 {
            bytes.extend((length as u16).to_le_bytes());
        } else {
            bytes.extend(length.to_le_bytes());
        }
        bytes.extend(b"{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }\n");
        bytes.extend(1.0f32.to_le_bytes());
        std::fs::write(npy.join("q.npy"), &bytes).unwrap();
        match read_inputs(&npy) {
            Err(TensorIoError::NotNpy { reason, .. }) => assert!(
                reason.contains(&format!("the header claims {length} bytes")),
                "version {version}: {reason}"
            ),
            other => panic!("version {version}: expected NotNpy, got {other:?}"),
        }
    }
}

/// Found by the `npy_reader` fuzz target: a 236-byte header of ~75 unclosed `{` ran npyz's
/// Python-literal parser for minutes (exponential backtracking). Headers nesting deeper than a
/// plain one can are refused before npyz sees them; the error names the nesting.
#[test]
fn npy_header_nesting_brackets_deeply_is_refused_before_parsing() {
    let dir = tmp();
    let npy = dir.path().join("n");
    std::fs::create_dir(&npy).unwrap();
    let mut text = "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'x': ".to_string();
    text.push_str(&"{".repeat(80));
    text.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((text.len() as u16).to_le_bytes());
    bytes.extend(text.as_bytes());
    bytes.extend(1.0f32.to_le_bytes());
    std::fs::write(npy.join("q.npy"), &bytes).unwrap();
    match read_inputs(&npy) {
        Err(TensorIoError::NotNpy { reason, .. }) => {
            assert!(reason.contains("nests brackets"), "{reason}")
        }
        other => panic!("expected NotNpy, got {other:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let dir = tmp();
        let st = dir.path().join("r.safetensors");
        std::fs::write(&st, &bytes).unwrap();
        let _ = read_inputs(&st);
        let npy = dir.path().join("n");
        std::fs::create_dir(&npy).unwrap();
        std::fs::write(npy.join("r.npy"), &bytes).unwrap();
        let _ = read_inputs(&npy);
    }

    #[test]
    fn corrupted_valid_files_never_panic(
        seed in 0u64..1000, flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
    ) {
        let dir = tmp();
        let set = every_dtype(seed, false);
        for path in [dir.path().join("c.safetensors"), dir.path().join("c")] {
            write_outputs(&path, &set).unwrap();
            let file = if path.is_dir() { path.join("a_f32.npy") } else { path.clone() };
            let mut bytes = std::fs::read(&file).unwrap();
            for &(at, x) in &flips {
                let i = at % bytes.len();
                bytes[i] ^= x;
            }
            std::fs::write(&file, &bytes).unwrap();
            let _ = read_inputs(&path);
        }
    }
}
