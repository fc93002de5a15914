//! Issue 11, part B: sizes, budgets, numerics and flag validation end to end — every command
//! below used to abort, panic, run unbounded or answer silently wrong; each must now fail with
//! a reported error (exit 1) that names what to change.

use super::{assert_reported_failure, nsac, text};

const FLA: &str = "kernels/nsa-fla.nsa";

fn run(extra: &[&str]) -> std::process::Output {
    let mut args = vec!["run", FLA, "--device", "cpu"];
    args.extend_from_slice(extra);
    nsac(&args)
}

#[test]
fn huge_problems_hit_the_budget_or_a_limit_not_an_abort() {
    for seq in ["100000000", "1000000000000"] {
        assert_reported_failure(&run(&["--seq", seq]), "--max-bytes");
    }
    assert_reported_failure(
        &run(&["--seq", "4", "--batch", "1000000000000"]),
        "--max-bytes",
    );
    assert_reported_failure(&run(&["--cu-seqlens", "0,1000000000000"]), "--max-bytes");
    assert_reported_failure(&run(&["--seq", "18446744073709551615"]), "token count");
    assert_reported_failure(&run(&["--seq", "4", "--heads", "4294967295/1"]), "4096");
    assert_reported_failure(&run(&["--seq", "4", "--head-dim", "4294967295"]), "1024");
    assert_reported_failure(&run(&["--seq", "4", "--head-dim", "100000"]), "1024");
    assert_reported_failure(&run(&["--seq", "4", "--heads", "65536/1"]), "4096");
    // Within the language's limits but over the CPU backend's (its code grows with G).
    assert_reported_failure(&run(&["--seq", "4", "--heads", "4096/1"]), "G = 4096");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("tuning.yaml");
    for cmd in ["bench", "tune"] {
        let out = nsac(&[cmd, FLA, "--seq", "100000000", "--db", db.to_str().unwrap()]);
        assert_reported_failure(&out, "--max-bytes");
    }
}

#[test]
fn the_budget_names_size_limit_and_flag_and_can_be_raised() {
    let out = run(&["--seq", "64", "--max-bytes", "1000"]);
    assert_reported_failure(&out, "over the budget of 1000 B");
    assert!(text(&out.stderr).contains("NSAC_MAX_BYTES"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nsac"))
        .args([
            "run", FLA, "--device", "cpu", "--seq", "64", "--heads", "4/1",
        ])
        .args(["--head-dim", "16"])
        .env("NSAC_MAX_BYTES", "1000")
        .current_dir(super::root())
        .output()
        .unwrap();
    assert_reported_failure(&out, "over the budget of 1000 B");
    let out = run(&[
        "--seq",
        "64",
        "--heads",
        "4/1",
        "--head-dim",
        "16",
        "--max-bytes",
        "1G",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run(&["--seq", "64", "--max-bytes", "12Q"]);
    assert_eq!(out.status.code(), Some(2), "a usage error");
    assert!(text(&out.stderr).contains("unknown unit"));
}

#[test]
fn specs_at_the_u32_limit_are_rejected_by_check() {
    let dir = tempfile::tempdir().unwrap();
    let big = "4294967295";
    let cases = [
        format!("heads = {big}/1\n  head_dim = 8\n  window w {{ size = 4 }}"),
        format!("heads = 2/1\n  head_dim = {big}\n  window w {{ size = 4 }}"),
        format!("heads = 2/1\n  head_dim = 8\n  window w {{ size = {big} }}"),
    ];
    for (i, body) in cases.iter().enumerate() {
        let path = dir.path().join(format!("big{i}.nsa"));
        let spec = format!("attention big {{\n  {body}\n  combine = sum(w)\n}}\n");
        std::fs::write(&path, spec).unwrap();
        let out = nsac(&["check", path.to_str().unwrap()]);
        assert_reported_failure(&out, "E023");
    }
    let path = dir.path().join("sel.nsa");
    let spec = format!(
        "attention big {{\n  heads = 2/1\n  head_dim = 8\n  compress c {{ block = {big} }}\n  select s {{ block = 64, top = {big}, scored_by = c, keep_last = {big} }}\n  combine = sum(c, s)\n}}\n"
    );
    std::fs::write(&path, spec).unwrap();
    let err = text(&nsac(&["check", path.to_str().unwrap()]).stderr);
    assert_eq!(err.matches("E023").count(), 3, "{err}");
}

#[test]
fn cost_of_a_trillion_tokens_answers() {
    let out = nsac(&[
        "cost",
        "kernels/nsa-paper.nsa",
        "--seq",
        "1000000000000",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["seq_len"], 1_000_000_000_000u64);
}

#[test]
fn sequence_and_thread_errors_name_their_flag() {
    let not_spec = |out: &std::process::Output| {
        assert!(!text(&out.stderr).contains("does not fit the spec"));
    };
    for (args, needle) in [
        (vec!["--seq", "0"], "--seq must be at least 1"),
        (
            vec!["--seq", "3", "--batch", "0"],
            "--batch must be at least 1",
        ),
        (vec!["--cu-seqlens", "0,5,5"], "--cu-seqlens 0,5,5"),
        (vec!["--cu-seqlens", "2,5"], "must start at 0"),
        (vec!["--cu-seqlens", "0"], "--cu-seqlens 0"),
        (
            vec!["--seq", "8", "--threads", "0"],
            "--threads must be at least 1",
        ),
        (
            vec!["--seq", "8", "--threads", "100000"],
            "--threads 100000",
        ),
    ] {
        let out = run(&args);
        assert_reported_failure(&out, needle);
        not_spec(&out);
    }
}

#[test]
fn malformed_variants_and_reference_misuse_are_errors() {
    for v in ["", "rows=4,rows=2", "rows=4,,", " , "] {
        assert_reported_failure(&run(&["--seq", "8", "--variant", v]), "--variant");
    }
    let reference = |extra: &[&str]| {
        let mut args = vec!["run", FLA, "--seq", "8", "--device", "reference"];
        args.extend_from_slice(extra);
        nsac(&args)
    };
    assert_reported_failure(&reference(&["--variant", "rows=4"]), "--variant");
    assert_reported_failure(&reference(&["--dtype", "bf16"]), "--dtype bf16");
    assert_reported_failure(
        &run(&["--seq", "8", "--dtype", "bf16"]),
        "pass --dtype f32, or run on --device cuda",
    );
    for cmd in ["bench", "tune"] {
        let help = text(&nsac(&[cmd, "--help"]).stdout);
        let device = help.split("--device").nth(1).unwrap_or_default();
        let device = device.split("\n      -").next().unwrap_or_default();
        assert!(device.contains("- cpu"), "{cmd} --help: {device}");
        assert!(!device.contains("reference"), "{cmd} --help: {device}");
        let out = nsac(&[cmd, FLA, "--seq", "8", "--device", "reference"]);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    }
}

#[test]
fn flags_that_disagree_with_the_inputs_file_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("in.safetensors");
    let saved = saved.to_str().unwrap();
    let small = ["--heads", "4/2", "--head-dim", "16/8"];
    let mut args = vec!["--seq", "40", "--batch", "2", "--save-inputs", saved];
    args.extend_from_slice(&small);
    let out = run(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let with = |extra: &[&str]| {
        let mut a = vec!["--inputs", saved];
        a.extend_from_slice(extra);
        run(&a)
    };
    assert!(with(&[]).status.success());
    assert!(with(&["--batch", "2"]).status.success());
    assert_reported_failure(&with(&["--batch", "1"]), "--batch 1 disagrees");
    assert_reported_failure(&with(&["--cu-seqlens", "0,40"]), "--cu-seqlens 0,40");
}

#[test]
fn a_wrong_kv_head_count_in_k_is_blamed_on_k() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good");
    let good_s = format!("{}/", good.display());
    let out = run(&[
        "--seq",
        "20",
        "--heads",
        "4/2",
        "--head-dim",
        "16/8",
        "--save-inputs",
        &good_s,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // k with 4 kv heads, v with the spec's 2: rewrite k from a 4/4-headed run's k.
    let other = dir.path().join("other");
    let other_s = format!("{}/", other.display());
    let out = run(&[
        "--seq",
        "20",
        "--heads",
        "4/4",
        "--head-dim",
        "16/8",
        "--save-inputs",
        &other_s,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    std::fs::copy(other.join("k.npy"), good.join("k.npy")).unwrap();
    let out = run(&["--inputs", &good_s, "--heads", "4/2"]);
    assert_reported_failure(&out, "input `k` has 4 kv heads but `v` has 2");
}

#[test]
fn inputs_too_large_for_f32_are_refused_not_answered() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("big_scale.nsa");
    std::fs::write(
        &spec,
        "attention s {\n  heads = 2/1\n  head_dim = 8\n  scale = 3e38\n  window w { size = 16 }\n  combine = sum(w)\n}\n",
    )
    .unwrap();
    let spec = spec.to_str().unwrap();
    let out = nsac(&["run", spec, "--seq", "40", "--device", "cpu"]);
    assert_reported_failure(&out, "`scale` is too large for f32 arithmetic");
    // The oracle computes it (f64).
    let out = nsac(&["run", spec, "--seq", "40", "--device", "reference"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}
