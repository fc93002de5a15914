//! The file policy end to end (issue 11, part A): special files refused before any read, outputs
//! never written over a non-regular file, symlinks followed, modes kept, unwritable outputs and
//! outputs naming inputs found before the computation, npy directories never half-written, the
//! tuning DB's warnings printed, and `fmt --write` on CR-only specs.
//!
//! Device nodes are only ever `/dev/null` and `/dev/zero`, read-only: each test checks that they
//! are still character devices afterwards.

use std::os::unix::fs::{FileTypeExt, PermissionsExt, symlink};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::{assert_reported_failure, nsac, text};

const SMALL: [&str; 6] = ["--seq", "37", "--heads", "2/1", "--head-dim", "8"];

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn assert_devices_intact() {
    for dev in ["/dev/null", "/dev/zero"] {
        let m = std::fs::symlink_metadata(dev).unwrap();
        assert!(
            m.file_type().is_char_device(),
            "{dev} is no longer a device"
        );
    }
}

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("mkfifo runs");
    assert!(status.success());
}

/// Runs nsac and kills it if it is still running after a minute (a hang on a FIFO is the bug
/// this guards against; a correct nsac answers at once).
fn nsac_or_kill(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_nsac"))
        .args(args)
        .current_dir(super::root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(60) {
            child.kill().unwrap();
            panic!("nsac {args:?} hung");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn run_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["run", "kernels/nsa-fla.nsa", "--device", "cpu"];
    args.extend(SMALL);
    args.extend(extra);
    args
}

#[test]
fn inputs_that_are_devices_or_fifos_are_refused_without_reading() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("in.safetensors");
    mkfifo(&fifo);
    let zero = dir.path().join("zero.safetensors");
    symlink("/dev/zero", &zero).unwrap();
    for input in [s(&fifo), s(&zero), "/dev/zero"] {
        let out = nsac_or_kill(&run_args(&["--inputs", input]));
        assert_reported_failure(&out, "not a regular file");
    }
    // An npy directory whose `q.npy` is a FIFO.
    let npy = dir.path().join("npy");
    std::fs::create_dir(&npy).unwrap();
    mkfifo(&npy.join("q.npy"));
    let out = nsac_or_kill(&run_args(&["--inputs", s(&npy)]));
    assert_reported_failure(&out, "q.npy: is a FIFO");
    // Spec files, tuning DBs and import files too.
    let spec = dir.path().join("fifo.nsa");
    mkfifo(&spec);
    assert_reported_failure(&nsac_or_kill(&["check", s(&spec)]), "not a regular file");
    let db = dir.path().join("fifo.yaml");
    mkfifo(&db);
    assert_reported_failure(
        &nsac_or_kill(&run_args(&["--db", s(&db)])),
        "not a regular file",
    );
    assert_reported_failure(
        &nsac_or_kill(&["tune", "--db", "/dev/zero", "--export", "x.yaml"]),
        "not a regular file",
    );
    let good = dir.path().join("db.yaml");
    assert_reported_failure(
        &nsac_or_kill(&["tune", "--db", s(&good), "--import", s(&db)]),
        "not a regular file",
    );
    assert!(
        std::fs::symlink_metadata(&db)
            .unwrap()
            .file_type()
            .is_fifo()
    );
    assert_devices_intact();
}

#[test]
fn outputs_over_devices_are_refused_and_the_device_kept() {
    let dir = tempfile::tempdir().unwrap();
    let st = dir.path().join("o.safetensors");
    symlink("/dev/null", &st).unwrap();
    let ptx = dir.path().join("k.ptx");
    symlink("/dev/null", &ptx).unwrap();
    let export = dir.path().join("export.yaml");
    symlink("/dev/null", &export).unwrap();
    let db = dir.path().join("db.yaml");
    for args in [
        run_args(&["--output", s(&st)]),
        run_args(&["--save-inputs", s(&st)]),
        vec![
            "compile",
            "kernels/nsa-fla.nsa",
            "--seq",
            "64",
            "--target",
            "ptx",
            "-o",
            s(&ptx),
        ],
        vec!["tune", "--db", s(&db), "--export", s(&export)],
        run_args(&["--db", "/dev/null"]),
        vec!["tune", "--db", "/dev/null", "--export", s(&export)],
    ] {
        let out = nsac(&args);
        assert_reported_failure(&out, "character device");
    }
    assert!(!db.exists(), "the DB was created by a refused export");
    for link in [&st, &ptx, &export] {
        assert!(
            std::fs::symlink_metadata(link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }
    assert_devices_intact();
}

#[test]
fn symlinked_outputs_update_their_target_and_keep_its_mode() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real.safetensors");
    std::fs::write(&real, b"old").unwrap();
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o640)).unwrap();
    let link = dir.path().join("link.safetensors");
    symlink("real.safetensors", &link).unwrap();
    let out = nsac(&run_args(&["--output", s(&link)]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(std::fs::metadata(&real).unwrap().len() > 100);
    assert_eq!(
        std::fs::metadata(&real).unwrap().permissions().mode() & 0o7777,
        0o640
    );
    // A new file gets what `File::create` gives here (0o666 less the umask), not 0o600.
    let fresh = dir.path().join("fresh.safetensors");
    let out = nsac(&run_args(&["--output", s(&fresh)]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let plain = dir.path().join("plain");
    std::fs::File::create(&plain).unwrap();
    assert_eq!(
        std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777,
        std::fs::metadata(&plain).unwrap().permissions().mode() & 0o777
    );
    // No temporary file is left behind.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.contains("nsac-tmp")), "{names:?}");
}

#[test]
fn a_bad_output_is_found_before_the_computation_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("saved.safetensors");
    let bad = dir.path().join("no/such/dir/o.safetensors");
    let out = nsac(&run_args(&[
        "--save-inputs",
        s(&saved),
        "--output",
        s(&bad),
    ]));
    assert_reported_failure(&out, s(&bad));
    let err = text(&out.stderr);
    assert!(!err.contains("nsac-tmp"), "{err}");
    assert!(
        !saved.exists(),
        "the inputs were saved: the check came after work began"
    );
    // `compile -o` likewise, before any code is generated.
    let out = nsac(&[
        "compile",
        "kernels/nsa-fla.nsa",
        "--seq",
        "64",
        "--target",
        "ptx",
        "-o",
        s(&dir.path().join("none/k.ptx")),
    ]);
    assert_reported_failure(&out, "none/k.ptx");
}

#[test]
fn an_output_naming_an_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = dir.path().join("inputs");
    let out = nsac(&run_args(&["--save-inputs", s(&inputs)]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let before = std::fs::read_dir(&inputs).unwrap().count();
    let alias = dir.path().join("alias");
    symlink("inputs", &alias).unwrap();
    let dotted = format!("{}/../inputs/.", s(&inputs));
    for output in [s(&inputs), s(&alias), dotted.as_str()] {
        let out = nsac(&run_args(&["--inputs", s(&inputs), "--output", output]));
        assert_reported_failure(&out, "names the same file as --inputs");
    }
    assert_eq!(std::fs::read_dir(&inputs).unwrap().count(), before);
    let st = dir.path().join("in.safetensors");
    assert!(nsac(&run_args(&["--save-inputs", s(&st)])).status.success());
    let out = nsac(&run_args(&["--inputs", s(&st), "--save-inputs", s(&st)]));
    assert_reported_failure(&out, "names the same file");
}

#[test]
fn an_npy_output_directory_is_never_half_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let outdir = dir.path().join("out");
    let out = nsac(&run_args(&["--output", s(&outdir), "--all-outputs"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut files: Vec<String> = std::fs::read_dir(&outdir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert!(files.len() >= 3, "{files:?}");
    let before: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(outdir.join(f)).unwrap())
        .collect();
    // The last file in write order becomes a FIFO: every other file must stay as it was.
    let last = files.last().unwrap().clone();
    std::fs::remove_file(outdir.join(&last)).unwrap();
    mkfifo(&outdir.join(&last));
    let out = nsac_or_kill(&run_args(&[
        "--output",
        s(&outdir),
        "--all-outputs",
        "--seed",
        "7",
    ]));
    assert_reported_failure(&out, "FIFO");
    for (f, old) in files.iter().zip(&before) {
        if *f != last {
            assert_eq!(&std::fs::read(outdir.join(f)).unwrap(), old, "{f} changed");
        }
    }
    let names: Vec<String> = std::fs::read_dir(&outdir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.contains("nsac-tmp")), "{names:?}");
}

#[test]
fn npy_files_with_trailing_bytes_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = dir.path().join("inputs");
    assert!(
        nsac(&run_args(&["--save-inputs", s(&inputs)]))
            .status
            .success()
    );
    assert!(nsac(&run_args(&["--inputs", s(&inputs)])).status.success());
    let q = inputs.join("q.npy");
    let mut bytes = std::fs::read(&q).unwrap();
    bytes.extend(std::iter::repeat_n(0x5a, 4096));
    std::fs::write(&q, bytes).unwrap();
    let out = nsac(&run_args(&["--inputs", s(&inputs)]));
    assert_reported_failure(&out, "4096 trailing bytes");
}

#[test]
fn database_problems_are_reported_and_files_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    // A newer schema: reported as such, used read-only, never moved or changed.
    let newer = dir.path().join("newer.yaml");
    let future = "schema: 2\nentries: []\nsomething_new: {a: 1}\n";
    std::fs::write(&newer, future).unwrap();
    let out = nsac(&run_args(&["--db", s(&newer)]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("warning:") && err.contains("schema 2"),
        "{err}"
    );
    assert!(!err.contains("Some("), "{err}");
    assert_eq!(std::fs::read_to_string(&newer).unwrap(), future);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    let mut tune = vec!["tune", "kernels/nsa-fla.nsa", "--db", s(&newer)];
    tune.extend(SMALL);
    let out = nsac(&tune);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("not stored"), "{err}");
    assert!(!err.contains("Some("), "{err}");
    assert_eq!(std::fs::read_to_string(&newer).unwrap(), future);

    // A corrupt regular file: moved aside, with a warning.
    let corrupt = dir.path().join("corrupt.yaml");
    std::fs::write(&corrupt, "entries: [this is not: a tuning db").unwrap();
    let out = nsac(&run_args(&["--db", s(&corrupt)]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("warning:") && err.contains("corrupt.yaml.corrupt-1"),
        "{err}"
    );
    assert!(dir.path().join("corrupt.yaml.corrupt-1").exists());

    // A lock that cannot be made (here: the lock path is a directory, which stops root too,
    // as a read-only directory stops everyone else): the result is printed, not stored, and
    // the run says so.
    let locked = dir.path().join("locked.yaml");
    std::fs::create_dir(dir.path().join("locked.yaml.lock")).unwrap();
    let mut tune = vec!["tune", "kernels/nsa-fla.nsa", "--db", s(&locked)];
    tune.extend(SMALL);
    let out = nsac(&tune);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("warning:") && err.contains("lock"), "{err}");
    assert!(!locked.exists());
}

#[test]
fn a_symlinked_database_is_updated_through_the_link() {
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    let real = shared.join("tuning.yaml");
    std::fs::write(&real, "schema: 1\nentries: []\n").unwrap();
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o664)).unwrap();
    let link = dir.path().join("db.yaml");
    symlink(&real, &link).unwrap();
    let mut tune = vec!["tune", "kernels/nsa-fla.nsa", "--db", s(&link), "--json"];
    tune.extend(SMALL);
    let out = nsac(&tune);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(
        std::fs::read_to_string(&real)
            .unwrap()
            .contains("timed_seq_len: 37")
    );
    assert_eq!(
        std::fs::metadata(&real).unwrap().permissions().mode() & 0o777,
        0o664
    );
    assert!(
        shared.join("tuning.yaml.lock").exists(),
        "the lock sits beside the target"
    );
}

/// A stored entry answers every T of its bucket: `tune` must report the length that entry was
/// timed at, and the GFLOP/s of that problem.
#[test]
fn tune_from_a_stored_entry_reports_its_own_timing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db.yaml");
    let tune = |seq: &str| {
        let out = nsac(&[
            "tune",
            "kernels/sliding-window.nsa",
            "--db",
            s(&db),
            "--json",
            "--seq",
            seq,
            "--heads",
            "2/1",
            "--head-dim",
            "8",
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let first = tune("200");
    assert_eq!(first["source"], "tuned");
    assert_eq!(first["timed_seq_len"], 200);
    let second = tune("150"); // the same bucket (256), a shorter proxy
    assert_eq!(second["source"], "stored");
    assert_eq!(second["seq_len"], 150);
    assert_eq!(second["timed_seq_len"], 200);
    // The database keeps times to the microsecond: the stored answer is the entry's time as written.
    let (t1, t2) = (
        first["best_ms"].as_f64().unwrap(),
        second["best_ms"].as_f64().unwrap(),
    );
    assert!((t1 - t2).abs() <= 1e-6, "{t1} vs {t2}");
    let (g1, g2) = (
        first["gflops"].as_f64().unwrap(),
        second["gflops"].as_f64().unwrap(),
    );
    assert!((g1 - g2).abs() <= 1e-9 * g1, "{g1} vs {g2}");
    let ratio = second["ceiling_ratio"].as_f64().unwrap();
    let expect =
        second["gflops"].as_f64().unwrap() / second["fma_ceiling_gflops"].as_f64().unwrap();
    assert!((ratio - expect).abs() < 1e-12, "{ratio} vs {expect}");
}

#[test]
fn fmt_write_on_cr_only_line_ends_gives_the_canonical_spec() {
    let dir = tempfile::tempdir().unwrap();
    let original = std::fs::read_to_string(super::root().join("kernels/nsa-paper.nsa")).unwrap();
    for (name, end) in [("cr.nsa", "\r"), ("crlf.nsa", "\r\n")] {
        let path = dir.path().join(name);
        std::fs::write(&path, original.replace('\n', end)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o604)).unwrap();
        let out = nsac(&["fmt", "--write", s(&path)]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), original, "{name}");
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o604
        );
        assert!(nsac(&["fmt", "--check", s(&path)]).status.success());
        assert!(nsac(&["check", s(&path)]).status.success());
    }
}

#[test]
fn check_points_at_a_latin1_byte() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("latin1.nsa");
    let mut bytes = std::fs::read(super::root().join("kernels/nsa-fla.nsa")).unwrap();
    bytes.splice(0..0, b"# r\xe9sum\xe9\n".iter().copied());
    std::fs::write(&path, bytes).unwrap();
    let out = nsac(&["check", s(&path)]);
    assert_reported_failure(&out, &format!("{}:1:4", s(&path)));
    assert!(!text(&out.stderr).contains("stream did not contain"));
    let out = nsac(&["check", "--json", s(&path)]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let p = &json[0]["problems"][0];
    assert_eq!(
        (p["code"].as_str(), p["line"].as_u64(), p["column"].as_u64()),
        (Some("E003"), Some(1), Some(4))
    );
}
