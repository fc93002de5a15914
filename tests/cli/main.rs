//! End-to-end tests of the `nsac` binary: exit codes, rendered diagnostics, JSON outputs, tensor
//! files in and out, and the same inputs giving the same outputs on the reference and the CPU.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod files;
mod sizes;

fn nsac(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nsac"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("the nsac binary runs")
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts a failure that is reported, not a crash: exit status 1 and no panic message.
fn assert_reported_failure(out: &Output, needle: &str) {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    assert!(err.contains(needle), "expected `{needle}` in: {err}");
}

#[test]
fn check_accepts_every_library_spec() {
    let mut args = vec!["check"];
    let specs: Vec<String> = std::fs::read_dir(root().join("kernels"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "nsa" || e == "yaml"))
        .map(|p| p.strip_prefix(root()).unwrap().display().to_string())
        .collect();
    assert!(specs.len() >= 5, "{specs:?}");
    args.extend(specs.iter().map(String::as_str));
    let out = nsac(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout)
            .lines()
            .filter(|l| l.contains(": ok"))
            .count(),
        specs.len()
    );
}

#[test]
fn check_reports_every_problem_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.nsa");
    std::fs::write(&bad, "attention x {\n  heads = 6/4\n  head_dim = 64\n  window w { size = 0 }\n  combine = sum(w, q)\n}\n").unwrap();
    let path = bad.to_str().unwrap();
    let out = nsac(&["check", path]);
    assert_reported_failure(&out, &format!("{path}:2:11"));
    let err = text(&out.stderr);
    assert!(err.contains(&format!("{path}:4:21")), "{err}");
    assert!(err.contains(&format!("{path}:5:20")), "{err}");

    let out = nsac(&["check", "--json", path]);
    assert_eq!(out.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let problems = json[0]["problems"].as_array().unwrap();
    let places: Vec<(u64, u64)> = problems
        .iter()
        .map(|p| (p["line"].as_u64().unwrap(), p["column"].as_u64().unwrap()))
        .collect();
    assert_eq!(places, vec![(2, 11), (4, 21), (5, 20)]);
}

#[test]
fn missing_files_and_bad_flags_are_errors_not_panics() {
    assert_reported_failure(&nsac(&["check", "no/such/spec.nsa"]), "cannot read");
    assert_reported_failure(&nsac(&["run", "kernels/nsa-fla.nsa"]), "--seq");
    assert_reported_failure(
        &nsac(&[
            "run",
            "kernels/nsa-fla.nsa",
            "--seq",
            "10",
            "--heads",
            "6/4",
        ]),
        "multiple",
    );
    assert_reported_failure(
        &nsac(&[
            "run",
            "kernels/nsa-fla.nsa",
            "--inputs",
            "no/such.safetensors",
        ]),
        "no/such.safetensors",
    );
    // clap's own usage errors exit with 2.
    let out = nsac(&[
        "run",
        "kernels/nsa-fla.nsa",
        "--seq",
        "10",
        "--heads",
        "0/1",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let out = nsac(&["cost", "kernels/nsa-fla.nsa", "--seq", "-3"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

#[test]
fn fmt_keeps_comments_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("paper.nsa");
    std::fs::copy(root().join("kernels/nsa-paper.nsa"), &spec).unwrap();
    let path = spec.to_str().unwrap();
    assert!(nsac(&["fmt", "--write", path]).status.success());
    let once = std::fs::read_to_string(&spec).unwrap();
    assert!(once.contains("# query heads / key-value heads"), "{once}");
    let out = nsac(&["fmt", "--check", path]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&nsac(&["fmt", path]).stdout), once);
    let original = std::fs::read_to_string(root().join("kernels/nsa-paper.nsa")).unwrap();
    let reparsed = |s: &str| nsac_dsl::parse_text(s).unwrap();
    assert_eq!(reparsed(&once), reparsed(&original));
}

#[test]
fn cost_json_counts_the_paper_configuration() {
    let out = nsac(&["cost", "kernels/nsa-paper.nsa", "--seq", "8192", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let keys: Vec<u64> = json["branches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["keys_last"].as_u64().unwrap())
        .collect();
    // 511 compressed tokens, 16 blocks of 64, a window of 512 (docs/ARCHITECTURE.md §3).
    assert_eq!(keys, vec![511, 1024, 512]);
}

fn read_o(path: &Path) -> Vec<f64> {
    let set = nsac_runtime::tensor_io::read_inputs(path).unwrap();
    let o = &set["o"];
    match o {
        nsac_runtime::tensor_io::HostTensor::F64(t) => t.data.clone(),
        other => other
            .to_f32()
            .unwrap()
            .data
            .iter()
            .map(|&x| f64::from(x))
            .collect(),
    }
}

/// The same saved inputs, read back, give the reference's answer on the CPU (the bar of
/// docs/ARCHITECTURE.md §4).
#[test]
fn saved_inputs_run_on_the_cpu_match_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    for (spec, extra) in [
        (
            "kernels/nsa-paper.nsa",
            vec![
                "--seq",
                "157",
                "--heads",
                "4/2",
                "--head-dim",
                "16/8",
                "--seed",
                "3",
            ],
        ),
        (
            "kernels/nsa-fla.nsa",
            vec![
                "--cu-seqlens",
                "0,70,201",
                "--heads",
                "3/1",
                "--head-dim",
                "8",
                "--seed",
                "5",
            ],
        ),
    ] {
        let (inputs, want, got) = (p("in.safetensors"), p("ref.safetensors"), p("cpu"));
        let mut args = vec![
            "run",
            spec,
            "--device",
            "reference",
            "--save-inputs",
            &inputs,
            "-o",
            &want,
        ];
        args.extend(&extra);
        let out = nsac(&args);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let out = nsac(&[
            "run",
            spec,
            "--device",
            "cpu",
            "--inputs",
            &inputs,
            "-o",
            &got,
            "--all-outputs",
            "--json",
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(summary["device"].as_str().unwrap().starts_with("cpu"));
        let (r, c) = (read_o(Path::new(&want)), read_o(Path::new(&got)));
        assert_eq!(r.len(), c.len());
        let max_ref = r.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        let max_diff = r
            .iter()
            .zip(&c)
            .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
        assert!(max_ref > 0.1, "outputs are not trivial");
        assert!(
            max_diff / max_ref <= 1e-5,
            "{spec}: relative error {}",
            max_diff / max_ref
        );
        assert!(Path::new(&got).join("idx_slc.npy").exists());
    }
}

#[test]
fn compile_writes_ptx_and_its_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let ptx = dir.path().join("fla.ptx");
    let out = nsac(&[
        "compile",
        "kernels/nsa-fla.nsa",
        "--seq",
        "300",
        "--target",
        "ptx",
        "--dtype",
        "bf16",
        "-o",
        ptx.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let text_ptx = std::fs::read_to_string(&ptx).unwrap();
    assert!(text_ptx.contains(".target sm_90"));
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("fla.manifest.json")).unwrap(),
    )
    .unwrap();
    for kernel in manifest["kernels"].as_array().unwrap() {
        let name = kernel["name"].as_str().unwrap();
        assert!(
            text_ptx.contains(&format!(".visible .entry {name}(")),
            "{name} missing from the PTX"
        );
    }
    let out = nsac(&[
        "compile",
        "kernels/sliding-window.nsa",
        "--seq",
        "50",
        "--heads",
        "2/1",
        "--target",
        "cpu",
        "--emit",
        "clif",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("function"));
}

#[test]
fn tune_records_reuses_exports_and_imports() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("tuning.yaml");
    let db = db.to_str().unwrap();
    let problem = ["--seq", "97", "--heads", "2/1", "--head-dim", "8"];
    let tune = |extra: &[&str]| {
        let mut args = vec!["tune", "kernels/nsa-fla.nsa", "--db", db, "--json"];
        args.extend(problem);
        args.extend(extra);
        let out = nsac(&args);
        assert!(out.status.success(), "{}", text(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let first = tune(&[]);
    assert_eq!(first["source"], "tuned");
    assert!(first["measured"].as_u64().unwrap() >= 2);
    let second = tune(&[]);
    assert_eq!(second["source"], "stored");
    assert_eq!(second["best"], first["best"]);

    let mut args = vec!["run", "kernels/nsa-fla.nsa", "--device", "cpu", "--db", db];
    args.extend(problem);
    let out = nsac(&args);
    assert!(
        text(&out.stdout).contains("tuned variant"),
        "{}",
        text(&out.stdout)
    );

    let shared = dir.path().join("shared.yaml");
    let shared = shared.to_str().unwrap();
    assert!(
        nsac(&["tune", "--db", db, "--export", shared])
            .status
            .success()
    );
    let other = dir.path().join("other.yaml");
    let other = other.to_str().unwrap();
    assert!(
        nsac(&["tune", "--db", other, "--import", shared])
            .status
            .success()
    );
    let mut args = vec![
        "run",
        "kernels/nsa-fla.nsa",
        "--device",
        "cpu",
        "--db",
        other,
    ];
    args.extend(problem);
    assert!(text(&nsac(&args).stdout).contains("tuned variant"));

    std::fs::write(other, "entries: [this is not: a tuning db").unwrap();
    let mut args = vec![
        "run",
        "kernels/nsa-fla.nsa",
        "--device",
        "cpu",
        "--db",
        other,
    ];
    args.extend(problem);
    let out = nsac(&args);
    assert!(
        out.status.success(),
        "a corrupt DB must not stop a run: {}",
        text(&out.stderr)
    );
    assert!(text(&out.stdout).contains("default variant"));
}

#[test]
fn run_tune_tunes_once_then_reuses_and_variant_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("tuning.yaml");
    let db = db.to_str().unwrap();
    let problem = ["--seq", "97", "--heads", "2/1", "--head-dim", "8"];
    let run = |extra: &[&str]| {
        let mut args = vec!["run", "kernels/nsa-fla.nsa", "--device", "cpu", "--db", db];
        args.extend(problem);
        args.extend(extra);
        nsac(&args)
    };
    let first = run(&["--tune"]);
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert!(
        text(&first.stderr).contains("tuning: "),
        "{}",
        text(&first.stderr)
    );
    assert!(text(&first.stdout).contains("tuned variant"));
    assert!(std::fs::metadata(db).unwrap().len() > 0);
    let again = run(&["--tune"]);
    assert!(
        text(&again.stderr).contains("already has a result"),
        "{}",
        text(&again.stderr)
    );
    // An explicit Variant wins over the database; a bad one is a rendered error.
    let explicit = run(&["--variant", "rows=1,unroll=1"]);
    assert!(explicit.status.success(), "{}", text(&explicit.stderr));
    assert!(text(&explicit.stdout).contains("explicit variant"));
    assert_reported_failure(&run(&["--variant", "rows=9"]), "`rows` = 9");
    assert_reported_failure(
        &run(&["--variant", "tiles=2"]),
        "unknown variant field `tiles`",
    );
    assert_reported_failure(&run(&["--variant", "rows"]), "not FIELD=NUMBER");
    // GPU fields are not CPU fields.
    assert_reported_failure(
        &run(&["--variant", "select_tokens=4"]),
        "unknown variant field `select_tokens`",
    );
    // The reference has nothing to tune.
    let mut args = vec![
        "run",
        "kernels/nsa-fla.nsa",
        "--device",
        "reference",
        "--tune",
    ];
    args.extend(problem);
    assert_reported_failure(&nsac(&args), "--tune does not apply to --device reference");
}

#[test]
fn gpu_variants_compile_and_gpu_commands_need_a_gpu() {
    let dir = tempfile::tempdir().unwrap();
    let ptx = dir.path().join("fla.ptx");
    let compile = |variant: &str| {
        nsac(&[
            "compile",
            "kernels/nsa-fla.nsa",
            "--seq",
            "300",
            "--target",
            "ptx",
            "--dtype",
            "bf16",
            "--variant",
            variant,
            "-o",
            ptx.to_str().unwrap(),
        ])
    };
    let selected_block = || {
        let manifest: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("fla.manifest.json")).unwrap(),
        )
        .unwrap();
        manifest["kernels"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["name"].as_str().unwrap().ends_with("attend_slc"))
            .map(|k| k["block"][0].as_u64().unwrap())
            .unwrap()
    };
    let out = compile("select_tokens=16");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(selected_block(), 16 * 32);
    let out = compile("select_tokens=4");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(selected_block(), 4 * 32);
    assert_reported_failure(&compile("select_chunk=24"), "`select_chunk` = 24");
    assert_reported_failure(&compile("rows=2"), "unknown GPU variant field `rows`");
    // Without a GPU, tuning or benchmarking on one is a clear error (CI has none; where a GPU
    // is present these succeed and are covered by tests/tests/gpu_tune.rs).
    let problem = ["kernels/nsa-fla.nsa", "--device", "cuda", "--seq", "300"];
    for command in ["tune", "bench"] {
        let mut args = vec![command];
        args.extend(problem);
        let out = nsac(&args);
        if !out.status.success() {
            assert_reported_failure(&out, "no CUDA device found");
        }
    }
}

/// `bench --backward` prints the forward's and the backward's times, their ratio and the rates
/// as JSON; on the GPU or in 16 bits it says why it cannot.
#[test]
fn bench_backward_reports_both_passes() {
    let problem = [
        "bench",
        "kernels/nsa-paper.nsa",
        "--seq",
        "97",
        "--heads",
        "4/2",
        "--head-dim",
        "16/8",
        "--backward",
        "--runs",
        "2",
        "--threads",
        "1",
    ];
    let mut args = problem.to_vec();
    args.push("--json");
    let out = nsac(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    for key in [
        "forward_ms",
        "backward_ms",
        "backward_over_forward",
        "backward_gflops",
        "backward_ceiling_ratio",
        "fma_ceiling_gflops",
    ] {
        let x = json[key].as_f64().unwrap_or(f64::NAN);
        assert!(x.is_finite() && x > 0.0, "{key} = {}", json[key]);
    }
    assert_eq!(json["seq_len"], 97);
    let mut args = problem.to_vec();
    args.extend(["--device", "cuda"]);
    assert_reported_failure(&nsac(&args), "backward on the GPU is not built yet");
    let mut args = problem.to_vec();
    args.extend(["--dtype", "bf16"]);
    assert_reported_failure(&nsac(&args), "f32 only");
}

/// Every tensor of a written file as f64, by name.
fn read_all(path: &Path) -> std::collections::BTreeMap<String, Vec<f64>> {
    let set = nsac_runtime::tensor_io::read_inputs(path).unwrap();
    set.into_iter()
        .filter_map(|(name, t)| {
            let v = match t {
                nsac_runtime::tensor_io::HostTensor::F64(t) => t.data,
                other => other.to_f32()?.data.iter().map(|&x| f64::from(x)).collect(),
            };
            Some((name, v))
        })
        .collect()
}

/// `run --backward` on the CPU writes every gradient next to `o`, and the reference's agree
/// at 1e-4 (max|d − ref| / max|ref| per gradient); the GPU says it has no backward yet.
#[test]
fn backward_writes_every_gradient_and_the_cpu_matches_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let common = [
        "kernels/nsa-paper.nsa",
        "--seq",
        "203",
        "--heads",
        "4/2",
        "--head-dim",
        "16/12",
        "--seed",
        "7",
        "--backward",
    ];
    let (cpu, reference) = (p("g.safetensors"), p("r.safetensors"));
    let mut args = vec!["run"];
    args.extend(common);
    args.extend(["--device", "cpu", "--output", &cpu, "--json"]);
    let out = nsac(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let listed: Vec<&str> = summary["gradients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["dg_cmp", "dg_slc", "dg_win", "dk", "dq", "dv"]);
    let mut args = vec!["run"];
    args.extend(common);
    args.extend(["--device", "reference", "--output", &reference]);
    let out = nsac(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("grad     dq [1, 203, 4, 16]"));
    let (c, r) = (read_all(Path::new(&cpu)), read_all(Path::new(&reference)));
    let names: Vec<&String> = c.keys().collect();
    assert_eq!(names, ["dg_cmp", "dg_slc", "dg_win", "dk", "dq", "dv", "o"]);
    for (name, want) in &r {
        let got = &c[name];
        let max_ref = want.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        let max_diff = want
            .iter()
            .zip(got)
            .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
        assert!(max_ref > 0.0, "{name} is all zero");
        let bar = if name == "o" { 1e-5 } else { 1e-4 };
        assert!(max_diff / max_ref <= bar, "{name}: {}", max_diff / max_ref);
    }
    let out = nsac(&[
        "run",
        "kernels/nsa-paper.nsa",
        "--seq",
        "50",
        "--backward",
        "--device",
        "cuda",
    ]);
    assert_reported_failure(&out, "backward on the GPU is not built yet");
}
