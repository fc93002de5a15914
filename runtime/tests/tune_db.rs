//! The tuning DB: round trip, lookups that must miss, corrupt and old files set aside,
//! export/import, and two writer processes at once.

mod tune_common;

use nsac_runtime::tune::db::SCHEMA_VERSION;
use nsac_runtime::tune::key::nsac_version;
use nsac_runtime::tune::search::SearchConfig;
use nsac_runtime::tune::{
    DbError, DbWarning, DeviceFingerprint, Entry, Lookup, Outcome, Strategy, TuneKey, TuneOptions,
    TuningDb, tune,
};
use std::path::Path;
use std::process::{Command, Stdio};
use tune_common::{FakeBench, Landscape, ToySpace, ToyVariant, fake_cpu, key};

fn variant(q_tile: u32) -> ToyVariant {
    ToyVariant {
        q_tile,
        k_tile: 32,
        unroll: 2,
        fuse: true,
        threads: 2,
    }
}

/// A small hand-made entry whose best Variant has `q_tile`.
fn entry(key: TuneKey, q_tile: u32) -> Entry {
    let best = serde_json::to_value(variant(q_tile)).unwrap();
    Entry {
        key,
        best: best.clone(),
        best_us: 10.0 * f64::from(q_tile),
        timed_seq_len: None,
        default: serde_json::to_value(variant(1)).unwrap(),
        default_us: Some(80.0),
        strategy: Strategy::Exhaustive,
        candidates: vec![nsac_runtime::tune::db::RecordedCandidate {
            variant: best,
            outcome: Outcome::CompileFailed {
                error: "a reason: with a colon\nand a newline".into(),
            },
        }],
        pruned: vec![nsac_runtime::tune::db::PrunedGroup {
            reason: "needs 9 registers, the device has 8".into(),
            count: 3,
            example: serde_json::to_value(variant(q_tile + 1)).unwrap(),
        }],
    }
}

fn db_in(dir: &Path) -> TuningDb {
    TuningDb::open(dir.join("tuning.yaml"))
}

#[test]
fn a_tuning_result_round_trips_through_the_yaml_file() {
    let dir = tempfile::tempdir().unwrap();
    let space = ToySpace {
        block: 64,
        scratch_bytes: 2048,
    };
    let grid = nsac_runtime::tune::space::enumerate(&space).unwrap();
    let bench = FakeBench::new(Landscape::random(&grid.shape, 0.1, 0.05, 4));
    let options = TuneOptions {
        search: SearchConfig {
            exhaustive_limit: 1000,
            ..SearchConfig::default()
        },
        ..TuneOptions::default()
    };
    let result = tune(&space, &bench, &options, &mut |_| {}).unwrap();
    let key = key("c0ffee", 1000, fake_cpu("Test CPU"));
    assert_eq!(key.shape.seq_len, 1024, "T is bucketed to a power of two");
    assert_eq!(key.nsac, nsac_version());
    let entry = Entry::from_result(key.clone(), &result).unwrap();

    let db = db_in(dir.path());
    assert!(db.insert(entry.clone()).unwrap().is_empty());
    let text = std::fs::read_to_string(db.path()).unwrap();
    assert!(
        text.contains(&format!("schema: {SCHEMA_VERSION}")),
        "{text}"
    );
    assert!(
        text.contains("q_tile:"),
        "variants are readable YAML maps:\n{text}"
    );

    let loaded = TuningDb::open(db.path()).load().unwrap();
    assert!(loaded.warnings.is_empty());
    assert_eq!(loaded.value.entries, vec![entry.clone()]);
    let found = db.lookup(&key).unwrap().value;
    let Lookup::Hit(hit) = found else {
        panic!("expected a hit, got {found:?}")
    };
    assert_eq!(hit.best_variant::<ToyVariant>().unwrap(), result.best);
    // Compiled candidates one by one, pruned ones counted per reason: nothing is lost.
    let pruned = result
        .candidates
        .iter()
        .filter(|c| matches!(c.outcome, Outcome::Pruned { .. }))
        .count();
    assert!(pruned > 0, "the toy space prunes some candidates");
    assert_eq!(hit.candidates.len(), result.candidates.len() - pruned);
    assert!(
        hit.candidates
            .iter()
            .all(|c| !matches!(c.outcome, Outcome::Pruned { .. }))
    );
    assert_eq!(hit.pruned.iter().map(|g| g.count).sum::<usize>(), pruned);
    for g in &hit.pruned {
        assert!(
            result.candidates.iter().any(|c| c.outcome
                == Outcome::Pruned {
                    reason: g.reason.clone()
                }
                && serde_json::to_value(&c.variant).unwrap() == g.example),
            "{g:?} is not one of the pruned candidates"
        );
    }
    assert_eq!(hit.best_us, result.best_time.as_secs_f64() * 1e6);

    // The same key again replaces the entry rather than adding one.
    let mut again = entry;
    again.best_us = 1.0;
    db.insert(again.clone()).unwrap();
    assert_eq!(db.load().unwrap().value.entries, vec![again]);
}

#[test]
fn another_device_or_version_or_shape_misses() {
    let dir = tempfile::tempdir().unwrap();
    let db = db_in(dir.path());
    let here = key("abc", 300, fake_cpu("CPU A"));
    db.insert(entry(here.clone(), 4)).unwrap();

    assert!(matches!(db.lookup(&here).unwrap().value, Lookup::Hit(_)));
    // Same bucket (T 300 and 500 both round to 512): a hit.
    assert!(matches!(
        db.lookup(&key("abc", 500, fake_cpu("CPU A")))
            .unwrap()
            .value,
        Lookup::Hit(_)
    ));
    let other_cpu = key("abc", 300, fake_cpu("CPU B"));
    assert_eq!(
        db.lookup(&other_cpu).unwrap().value,
        Lookup::Stale {
            other_device: true,
            other_version: false
        }
    );
    let mut newer = here.clone();
    newer.nsac = "99.0.0".into();
    assert_eq!(
        db.lookup(&newer).unwrap().value,
        Lookup::Stale {
            other_device: false,
            other_version: true
        }
    );
    assert_eq!(
        db.lookup(&key("abc", 600, fake_cpu("CPU A")))
            .unwrap()
            .value,
        Lookup::Miss
    );
    assert_eq!(
        db.lookup(&key("abd", 300, fake_cpu("CPU A")))
            .unwrap()
            .value,
        Lookup::Miss
    );
}

#[test]
fn a_corrupt_file_is_set_aside_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let db = db_in(dir.path());
    std::fs::write(db.path(), "schema: 1\nentries: [ {key: oops\n").unwrap();
    let loaded = db.load().unwrap();
    assert!(loaded.value.entries.is_empty());
    let moved = dir.path().join("tuning.yaml.corrupt-1");
    match loaded.warnings.as_slice() {
        [DbWarning::Corrupt { moved_to, .. }] => assert_eq!(moved_to, &moved),
        other => panic!("expected one corrupt warning, got {other:?}"),
    }
    assert!(moved.exists() && !db.path().exists());

    // A second bad file gets the next number; writing afterwards works.
    std::fs::write(db.path(), [0xff, 0xfe, 0x00]).unwrap();
    let warnings = db.insert(entry(key("x", 64, fake_cpu("C")), 8)).unwrap();
    assert!(matches!(warnings.as_slice(), [DbWarning::Corrupt { .. }]));
    assert!(dir.path().join("tuning.yaml.corrupt-2").exists());
    assert_eq!(db.load().unwrap().value.entries.len(), 1);
}

#[test]
fn an_old_schema_is_set_aside_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let db = db_in(dir.path());
    std::fs::write(db.path(), "schema: 0\nentries: []\n").unwrap();
    let loaded = db.load().unwrap();
    match loaded.warnings.as_slice() {
        [
            DbWarning::OtherSchema {
                found, moved_to, ..
            },
        ] => {
            assert_eq!(*found, Some(0));
            assert!(moved_to.exists());
        }
        other => panic!("expected one schema warning, got {other:?}"),
    }
    std::fs::write(db.path(), "entries: []\n").unwrap();
    let loaded = db.load().unwrap();
    assert!(matches!(
        loaded.warnings.as_slice(),
        [DbWarning::OtherSchema { found: None, .. }]
    ));
}

#[test]
fn export_then_import_merges_entries() {
    let dir = tempfile::tempdir().unwrap();
    let a = TuningDb::open(dir.path().join("a.yaml"));
    let b = TuningDb::open(dir.path().join("b.yaml"));
    let shared = key("shared", 128, fake_cpu("C"));
    a.insert(entry(shared.clone(), 16)).unwrap();
    a.insert(entry(key("only-a", 128, fake_cpu("C")), 4))
        .unwrap();
    b.insert(entry(shared.clone(), 8)).unwrap();
    b.insert(entry(key("only-b", 128, fake_cpu("C")), 1))
        .unwrap();

    let file = dir.path().join("exported.yaml");
    assert_eq!(a.export(&file).unwrap().value, 2);
    let report = b.import(&file).unwrap().value;
    assert_eq!((report.added, report.replaced), (1, 1));
    let entries = b.load().unwrap().value.entries;
    assert_eq!(entries.len(), 3);
    let Lookup::Hit(hit) = b.lookup(&shared).unwrap().value else {
        panic!("shared entry lost")
    };
    assert_eq!(
        hit.best_variant::<ToyVariant>().unwrap().q_tile,
        16,
        "imported wins"
    );

    // A bad import file is an error and stays where it is.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "not: [a, db").unwrap();
    assert!(matches!(b.import(&bad), Err(DbError::Import { .. })));
    assert!(bad.exists());
    assert_eq!(b.load().unwrap().value.entries.len(), 3);
}

#[test]
fn the_default_db_lives_in_the_user_cache_dir() {
    if let Ok(path) = TuningDb::default_path() {
        assert!(path.ends_with("nsac/tuning.yaml"), "{}", path.display());
    }
}

const CHILD_DB: &str = "NSAC_TUNE_TEST_CHILD_DB";
const CHILD_ID: &str = "NSAC_TUNE_TEST_CHILD_ID";
const ENTRIES_PER_WRITER: u32 = 12;

/// Not a test by itself: the body of a writer process spawned by
/// `two_writer_processes_keep_both_their_entries`.
#[test]
#[ignore = "run as a child process by two_writer_processes_keep_both_their_entries"]
fn writer_process() {
    let path = std::env::var(CHILD_DB).expect("spawned with the DB path");
    let id = std::env::var(CHILD_ID).expect("spawned with an id");
    let db = TuningDb::open(path);
    for i in 0..ENTRIES_PER_WRITER {
        let key = key(&format!("writer-{id}-{i}"), 256, fake_cpu("C"));
        let warnings = db.insert(entry(key, i + 1)).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
    }
}

#[test]
fn two_writer_processes_keep_both_their_entries() {
    let dir = tempfile::tempdir().unwrap();
    let db = db_in(dir.path());
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = ["a", "b"]
        .iter()
        .map(|id| {
            Command::new(&exe)
                .args(["writer_process", "--exact", "--ignored", "--test-threads=1"])
                .env(CHILD_DB, db.path())
                .env(CHILD_ID, id)
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut child in children {
        assert!(child.wait().unwrap().success(), "a writer process failed");
    }
    let loaded = db.load().unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let mut specs: Vec<String> = loaded
        .value
        .entries
        .iter()
        .map(|e| e.key.spec.clone())
        .collect();
    specs.sort();
    let mut expected: Vec<String> = ["a", "b"]
        .iter()
        .flat_map(|id| (0..ENTRIES_PER_WRITER).map(move |i| format!("writer-{id}-{i}")))
        .collect();
    expected.sort();
    assert_eq!(specs, expected);
}

#[test]
fn tune_cached_tunes_on_a_miss_and_reuses_on_a_hit() {
    use nsac_runtime::tune::{Tuned, tune_cached};
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let db = db_in(dir.path());
    let space = ToySpace {
        block: 64,
        scratch_bytes: 2048,
    };
    let grid = nsac_runtime::tune::space::enumerate(&space).unwrap();
    let bench = FakeBench::new(Landscape::random(&grid.shape, 0.1, 0.0, 8));
    let options = TuneOptions::default();
    let here = key("s", 100, fake_cpu("C"));

    let (first, warnings) =
        tune_cached(&db, &here, &space, &bench, &options, false, &mut |_| {}).unwrap();
    assert!(warnings.is_empty());
    let Tuned::Fresh(result) = &first else {
        panic!("an empty DB cannot hit")
    };
    let compiled = bench.compiles.load(Ordering::SeqCst);
    assert!(compiled > 0);

    let (second, _) =
        tune_cached(&db, &here, &space, &bench, &options, false, &mut |_| {}).unwrap();
    assert_eq!(
        second,
        Tuned::Stored {
            variant: result.best.clone(),
            best_us: result.best_time.as_secs_f64() * 1e6,
            timed_seq_len: None,
        }
    );
    assert_eq!(
        bench.compiles.load(Ordering::SeqCst),
        compiled,
        "a hit compiles nothing"
    );

    // Another machine, or an explicit retune, tunes again.
    let elsewhere = key("s", 100, fake_cpu("D"));
    let (third, _) = tune_cached(
        &db,
        &elsewhere,
        &space,
        &bench,
        &options,
        false,
        &mut |_| {},
    )
    .unwrap();
    assert!(matches!(third, Tuned::Fresh(_)));
    let (fourth, _) = tune_cached(&db, &here, &space, &bench, &options, true, &mut |_| {}).unwrap();
    assert!(matches!(fourth, Tuned::Fresh(_)));
    assert_eq!(db.load().unwrap().value.entries.len(), 2);
}

#[test]
fn keys_of_library_specs_follow_the_canonical_hash() {
    use nsac_dsl::problem::Problem;
    let library = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kernels");
    let read = |name: &str| std::fs::read_to_string(library.join(name)).unwrap();
    let text = nsac_dsl::parse_text(&read("nsa-paper.nsa")).unwrap();
    let yaml = nsac_dsl::parse_yaml(&read("nsa-paper.yaml")).unwrap();
    let window = nsac_dsl::parse_text(&read("sliding-window.nsa")).unwrap();
    let shape = |spec| Problem::batched(2, 777).resolve(spec).unwrap();
    let device = DeviceFingerprint::this_cpu();
    let k_text = TuneKey::for_spec(&text, &shape(&text), device.clone());
    let k_yaml = TuneKey::for_spec(&yaml, &shape(&yaml), device.clone());
    let k_window = TuneKey::for_spec(&window, &shape(&window), device);
    assert_eq!(k_text, k_yaml, "both forms of one spec share a key");
    assert_ne!(k_text.spec, k_window.spec);
    assert_eq!(k_text.spec.len(), 16);
    assert_eq!((k_text.shape.batch, k_text.shape.seq_len), (2, 1024));
}

#[test]
fn a_hand_written_file_in_the_documented_format_loads() {
    // The example from the `tune::db` module docs, verbatim.
    let docs = include_str!("../src/tune/db.rs");
    let yaml: String = docs
        .lines()
        .skip_while(|l| !l.starts_with("//! ```yaml"))
        .skip(1)
        .take_while(|l| !l.starts_with("//! ```"))
        .map(|l| {
            format!(
                "{}\n",
                l.trim_start_matches("//!").strip_prefix(' ').unwrap_or("")
            )
        })
        .collect();
    assert!(yaml.starts_with("schema: 1\n"), "{yaml}");
    let dir = tempfile::tempdir().unwrap();
    let db = db_in(dir.path());
    std::fs::write(db.path(), &yaml).unwrap();
    let loaded = db.load().unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let entry = &loaded.value.entries[0];
    assert_eq!(entry.key.shape.seq_len, 8192);
    assert_eq!(
        entry.candidates[0].outcome.median().map(|t| t.as_micros()),
        Some(14002)
    );
    assert_eq!(entry.pruned.len(), 1);
    assert_eq!(entry.pruned[0].count, 12);
    assert!(entry.pruned[0].reason.contains("registers, the device"));
    assert_eq!(entry.pruned[0].example["variant"]["rows"], 3);
    assert_eq!(entry.timed_seq_len, Some(4096));
    assert_eq!(entry.candidates.len(), 2);
    // The documented Variants are what the CPU backend reads.
    let best: nsac_runtime::tune::CpuCandidate = entry.best_variant().unwrap();
    assert_eq!((best.threads, best.variant.rows), (2, 4));
}

#[test]
fn files_that_list_pruned_candidates_one_by_one_still_load() {
    // How entries were written before pruned candidates were counted per reason.
    let yaml = r#"schema: 1
entries:
- key:
    spec: 3f9c0a1b22d4e5f6
    shape: {layout: batched, batch: 1, seq_len: 8192, heads_q: 64, heads_kv: 4, dim_qk: 192, dim_v: 128}
    dtype: f32
    device:
      cpu: {model: AMD EPYC, arch: x86_64, features: [sse4.1, avx, avx2, fma], cores: 2}
    nsac: "0.1.0"
  best: {rows: 4, key_vectors: 2, threads: 2}
  best_us: 8123.4
  default: {rows: 1, key_vectors: 1, threads: 2}
  default_us: 15890.2
  strategy: coordinate_descent
  candidates:
  - variant: {rows: 3, key_vectors: 4, threads: 2}
    outcome: {pruned: {reason: "needs 20 F32X4 registers, the device has 16"}}
"#;
    let dir = tempfile::tempdir().unwrap();
    let db = db_in(dir.path());
    std::fs::write(db.path(), yaml).unwrap();
    let loaded = db.load().unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let entry = &loaded.value.entries[0];
    assert!(entry.pruned.is_empty());
    assert!(matches!(
        &entry.candidates[0].outcome,
        Outcome::Pruned { reason } if reason.contains("registers, the device")
    ));
}

#[test]
fn a_newer_schema_is_left_untouched_and_used_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let db = db_in(dir.path());
    let future = "schema: 2\nentries: [{whatever: 1}]\n";
    std::fs::write(db.path(), future).unwrap();
    let loaded = db.load().unwrap();
    assert!(loaded.value.entries.is_empty());
    match loaded.warnings.as_slice() {
        [w @ DbWarning::NewerSchema { found: 2, .. }] => {
            let text = w.to_string();
            assert!(
                text.contains("schema 2") && !text.contains("Some("),
                "{text}"
            );
        }
        other => panic!("expected one newer-schema warning, got {other:?}"),
    }
    let err = db
        .insert(entry(key("x", 64, fake_cpu("C")), 8))
        .unwrap_err();
    assert!(
        matches!(err, DbError::NewerSchema { found: 2, .. }),
        "{err}"
    );
    assert!(matches!(
        db.export(&dir.path().join("e.yaml")),
        Err(DbError::NewerSchema { .. })
    ));
    assert_eq!(std::fs::read_to_string(db.path()).unwrap(), future);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        names
            .iter()
            .all(|n| !n.to_string_lossy().contains("corrupt")),
        "{names:?}"
    );
}

#[test]
fn a_db_path_that_is_not_a_regular_file_is_an_error_and_kept() {
    use std::os::unix::fs::FileTypeExt;
    let db = TuningDb::open("/dev/null");
    assert!(matches!(db.load(), Err(DbError::NotRegular { .. })));
    assert!(matches!(
        db.insert(entry(key("x", 64, fake_cpu("C")), 8)),
        Err(DbError::NotRegular { .. })
    ));
    assert!(
        std::fs::symlink_metadata("/dev/null")
            .unwrap()
            .file_type()
            .is_char_device()
    );
    let dir = tempfile::tempdir().unwrap();
    let as_dir = TuningDb::open(dir.path());
    assert!(matches!(as_dir.load(), Err(DbError::NotRegular { .. })));
    assert!(dir.path().is_dir());
}

#[test]
fn a_corrupt_file_that_cannot_be_locked_is_reported_and_left() {
    let dir = tempfile::tempdir().unwrap();
    let db = db_in(dir.path());
    std::fs::write(db.path(), "schema: 1\nentries: [ {key: oops\n").unwrap();
    // A directory where the lock file should go stops even root, as a read-only directory does.
    std::fs::create_dir(nsac_runtime::tune::file_lock::lock_path(db.path())).unwrap();
    let loaded = db.load().unwrap();
    assert!(loaded.value.entries.is_empty());
    assert!(
        matches!(loaded.warnings.as_slice(), [DbWarning::CorruptKept { .. }]),
        "{:?}",
        loaded.warnings
    );
    assert!(db.path().exists());
    assert!(matches!(
        db.insert(entry(key("x", 64, fake_cpu("C")), 8)),
        Err(DbError::Lock { .. })
    ));
}
