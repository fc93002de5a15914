//! The tuning DB: one human-readable YAML file of tuned Variants, safe for concurrent writers.
//!
//! Default location `<user cache dir>/nsac/tuning.yaml` (the CLI's `--db FILE` overrides it).
//! The file is read and written by the file policy ([`crate::fs_policy`]): a path that is not a
//! regular file (a directory, a device, a FIFO) is an error and is never read, renamed or
//! replaced; a symlink is followed (the target is updated, the link stays; the lock sits beside
//! the target); reads are capped at [`DB_MAX_BYTES`]. Reads take no lock (writers replace the
//! file atomically). Every write locks the sidecar `<file>.lock`, re-reads the file, merges and
//! replaces it atomically (see [`super::file_lock`]), so two processes tuning at once both keep
//! their entries; a lock that cannot be made (a read-only directory) fails the write, which the
//! tuner reports as a [`DbWarning::NotStored`] and the result is still returned.
//!
//! What is done with a file that is not a DB of this schema, each reported as a [`DbWarning`]:
//! a corrupt regular file (not YAML, not UTF-8, not the format below, or an older or missing
//! `schema`) is set aside as `tuning.yaml.corrupt-<n>` under the lock and the DB starts empty
//! (if the lock cannot be made it is left where it is and no entry is used); a file of a
//! **newer** schema is left untouched and used read-only: no entry is read from it, no result
//! stored in it (`export`/`import` on it are errors).
//!
//! Variants are stored as plain YAML values so one file holds the entries of every backend
//! (a CPU Variant is `{threads, variant: {…}}`, a GPU Variant its knobs). `timed_seq_len` is
//! the length the candidates were timed at (the CPU tunes on a shorter proxy of the problem,
//! the GPU on the problem itself; absent in files written before it existed). `default_us` is
//! the default Variant's time if it was measured, else `null`. A candidate's `outcome` is one
//! of `measured: {median_us, runs}`, `dropped_early: {first_run_us, best_us}` (its first run
//! was far slower than the best so far), `compile_failed: {error}`, `run_failed: {error}` or
//! `wrong_result: {error}` (it disagreed with the oracle). Candidates rejected before
//! compiling are not listed one by one (a GPU space prunes about a thousand); `pruned` counts them per reason,
//! with one example each. A file looks like this (one entry, candidates shortened):
//!
//! ```yaml
//! schema: 1
//! entries:
//! - key:
//!     spec: 3f9c0a1b22d4e5f6          # nsac_dsl::canonical_hash, hex
//!     shape: {layout: batched, batch: 1, seq_len: 8192, heads_q: 64, heads_kv: 4, dim_qk: 192, dim_v: 128}
//!     dtype: f32
//!     device:
//!       cpu: {model: AMD EPYC, arch: x86_64, features: [sse4.1, avx, avx2, fma], cores: 2}
//!     nsac: "0.1.0"
//!   best:
//!     threads: 2
//!     variant: {key_tile: 64, key_vectors: 2, query_chunk: 16, rows: 4, unroll: 2, value_vectors: 2}
//!   best_us: 8123.4
//!   timed_seq_len: 4096
//!   default:
//!     threads: 2
//!     variant: {key_tile: 64, key_vectors: 2, query_chunk: 16, rows: 4, unroll: 1, value_vectors: 2}
//!   default_us: 15890.2
//!   strategy: coordinate_descent
//!   candidates:
//!   - variant:
//!       threads: 2
//!       variant: {key_tile: 64, key_vectors: 2, query_chunk: 16, rows: 2, unroll: 1, value_vectors: 2}
//!     outcome: {measured: {median_us: 14002.5, runs: 5}}
//!   - variant:
//!       threads: 2
//!       variant: {key_tile: 128, key_vectors: 3, query_chunk: 64, rows: 1, unroll: 2, value_vectors: 2}
//!     outcome: {dropped_early: {first_run_us: 44496.5, best_us: 8123.4}}
//!   pruned:
//!   - reason: "needs 20 F32X4 registers, the device has 16"
//!     count: 12
//!     example:
//!       threads: 2
//!       variant: {key_tile: 64, key_vectors: 4, query_chunk: 16, rows: 3, unroll: 1, value_vectors: 2}
//! ```

use super::file_lock::{lock_exclusive, lock_path, write_atomic};
use super::key::TuneKey;
use super::search::Strategy;
use super::tuner::{Outcome, TuneResult};
use crate::fs_policy::{DB_MAX_BYTES, FsError, read_bounded, resolve_output};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The schema version written in every file; files of an older version are set aside, files
/// of a newer one left untouched.
pub const SCHEMA_VERSION: u32 = 1;

/// The whole file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DbContents {
    pub schema: u32,
    pub entries: Vec<Entry>,
}

impl Default for DbContents {
    fn default() -> Self {
        DbContents {
            schema: SCHEMA_VERSION,
            entries: Vec::new(),
        }
    }
}

/// One tuned problem: the best Variant and everything measured on the way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub key: TuneKey,
    /// The winning Variant, as the backend serializes it.
    pub best: serde_json::Value,
    pub best_us: f64,
    /// The sequence length the candidates were timed at (the CPU tunes on a shorter proxy of
    /// the problem; the GPU on the problem itself). Absent in files written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timed_seq_len: Option<usize>,
    pub default: serde_json::Value,
    pub default_us: Option<f64>,
    pub strategy: Strategy,
    /// Every candidate that was compiled, with its time or why it failed. (Files written
    /// before `pruned` existed list pruned candidates here too.)
    pub candidates: Vec<RecordedCandidate>,
    /// The candidates rejected before compiling, counted per reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pruned: Vec<PrunedGroup>,
}

/// Candidates pruned for one reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrunedGroup {
    pub reason: String,
    pub count: usize,
    /// The first of them, as the backend serializes it.
    pub example: serde_json::Value,
}

/// The pruned candidates of `result` grouped by reason, in order of first appearance.
fn pruned_groups<V>(
    result: &TuneResult<V>,
    value: impl Fn(&V) -> Result<serde_json::Value, DbError>,
) -> Result<Vec<PrunedGroup>, DbError> {
    let mut groups: Vec<PrunedGroup> = Vec::new();
    for c in &result.candidates {
        let Outcome::Pruned { reason } = &c.outcome else {
            continue;
        };
        match groups.iter_mut().find(|g| &g.reason == reason) {
            Some(g) => g.count += 1,
            None => groups.push(PrunedGroup {
                reason: reason.clone(),
                count: 1,
                example: value(&c.variant)?,
            }),
        }
    }
    Ok(groups)
}

/// One candidate as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedCandidate {
    pub variant: serde_json::Value,
    pub outcome: Outcome,
}

impl Entry {
    /// Records a tuning result under `key`.
    pub fn from_result<V: Serialize>(
        key: TuneKey,
        result: &TuneResult<V>,
    ) -> Result<Self, DbError> {
        let value = |v: &V| serde_json::to_value(v).map_err(|e| DbError::Variant(e.to_string()));
        Ok(Entry {
            key,
            best: value(&result.best)?,
            best_us: result.best_time.as_secs_f64() * 1e6,
            timed_seq_len: None,
            default: value(&result.default)?,
            default_us: result.default_time.map(|t| t.as_secs_f64() * 1e6),
            strategy: result.strategy,
            candidates: result
                .candidates
                .iter()
                .filter(|c| !matches!(c.outcome, Outcome::Pruned { .. }))
                .map(|c| {
                    Ok(RecordedCandidate {
                        variant: value(&c.variant)?,
                        outcome: c.outcome.clone(),
                    })
                })
                .collect::<Result<_, DbError>>()?,
            pruned: pruned_groups(result, value)?,
        })
    }

    /// The best Variant, decoded as the backend's type.
    pub fn best_variant<V: DeserializeOwned>(&self) -> Result<V, DbError> {
        serde_json::from_value(self.best.clone()).map_err(|e| DbError::Variant(e.to_string()))
    }
}

/// A problem with the DB file that was handled without failing (the CLI prints each one).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DbWarning {
    #[error("tuning DB {file} is unreadable ({reason}); moved it to {moved_to} and started empty")]
    Corrupt {
        file: PathBuf,
        moved_to: PathBuf,
        reason: String,
    },
    #[error(
        "tuning DB {file} is unreadable ({reason}) and was left as it is ({why_kept}); using no tuned entries"
    )]
    CorruptKept {
        file: PathBuf,
        reason: String,
        why_kept: String,
    },
    #[error(
        "tuning DB {file} has {}, this nsac writes schema {SCHEMA_VERSION}; moved it to {moved_to} and started empty",
        describe_schema(*found)
    )]
    OtherSchema {
        file: PathBuf,
        moved_to: PathBuf,
        found: Option<u32>,
    },
    #[error(
        "tuning DB {file} has schema {found}, newer than this nsac's {SCHEMA_VERSION}: it is left untouched and not used (no entries read, no tuning results stored); use a newer nsac or another --db"
    )]
    NewerSchema { file: PathBuf, found: u32 },
    #[error("the tuning result was not stored in {file}: {reason}")]
    NotStored { file: PathBuf, reason: String },
}

/// "schema 2" or "no schema field".
fn describe_schema(found: Option<u32>) -> String {
    match found {
        Some(n) => format!("schema {n}"),
        None => "no `schema` field".to_string(),
    }
}

/// A failure of the DB itself.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("no user cache directory on this system; pass a DB file explicitly")]
    NoCacheDir,
    #[error("tuning DB I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "tuning DB {}: is a {kind}, not a regular file; it is never read, moved or replaced (give --db a regular file)",
        path.display()
    )]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("tuning DB: {0}")]
    File(#[from] FsError),
    #[error("cannot lock the tuning DB {path} (the lock file {lock} cannot be made: {source})")]
    Lock {
        path: PathBuf,
        lock: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "tuning DB {path} has schema {found}, newer than this nsac's {SCHEMA_VERSION}; it was left untouched"
    )]
    NewerSchema { path: PathBuf, found: u32 },
    #[error("cannot write the tuning DB: {0}")]
    Serialize(String),
    #[error("cannot import {path}: {reason}")]
    Import { path: PathBuf, reason: String },
    #[error("a Variant does not (de)serialize: {0}")]
    Variant(String),
}

/// A value together with the warnings met while producing it.
#[derive(Debug, Clone, PartialEq)]
pub struct Warned<T> {
    pub value: T,
    pub warnings: Vec<DbWarning>,
}

/// What a lookup found.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// An entry for this question, device and version.
    Hit(Box<Entry>),
    /// Entries for this question exist, but tuned on another device or nsac version: retune.
    Stale {
        other_device: bool,
        other_version: bool,
    },
    /// Nothing for this question.
    Miss,
}

/// How an import changed the DB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportReport {
    pub added: usize,
    pub replaced: usize,
}

/// A tuning DB file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TuningDb {
    path: PathBuf,
}

impl TuningDb {
    /// The DB in `path` (created on first write).
    pub fn open(path: impl Into<PathBuf>) -> Self {
        TuningDb { path: path.into() }
    }

    /// `<user cache dir>/nsac/tuning.yaml`.
    pub fn default_path() -> Result<PathBuf, DbError> {
        let cache = dirs::cache_dir().ok_or(DbError::NoCacheDir)?;
        Ok(cache.join("nsac").join("tuning.yaml"))
    }

    /// The DB at [`TuningDb::default_path`].
    pub fn open_default() -> Result<Self, DbError> {
        Ok(Self::open(Self::default_path()?))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads every entry (an absent file is an empty DB; a file of a newer schema is read as
    /// empty, with a warning, and left untouched). Needs no lock: writers replace the file
    /// atomically. Only a corrupt file is locked, re-read and set aside.
    pub fn load(&self) -> Result<Warned<DbContents>, DbError> {
        match self.read()? {
            Read::Contents(value) => Ok(Warned {
                value,
                warnings: Vec::new(),
            }),
            Read::Newer(found) => Ok(Warned {
                value: DbContents::default(),
                warnings: vec![DbWarning::NewerSchema {
                    file: self.path.clone(),
                    found,
                }],
            }),
            Read::Bad(_) => {
                let lock = match self.lock() {
                    Ok(lock) => lock,
                    Err(e) => {
                        // Cannot lock, so cannot safely move it aside: report and use nothing.
                        let Read::Bad(bad) = self.read()? else {
                            return self.load_unlocked();
                        };
                        return Ok(Warned {
                            value: DbContents::default(),
                            warnings: vec![DbWarning::CorruptKept {
                                file: self.path.clone(),
                                reason: bad.reason(),
                                why_kept: e.to_string(),
                            }],
                        });
                    }
                };
                let loaded = self.read_locked()?;
                drop(lock);
                Ok(Warned {
                    value: loaded.value.unwrap_or_default(),
                    warnings: loaded.warnings,
                })
            }
        }
    }

    /// [`TuningDb::load`] of a file that turned good between two reads.
    fn load_unlocked(&self) -> Result<Warned<DbContents>, DbError> {
        match self.read()? {
            Read::Contents(value) => Ok(Warned {
                value,
                warnings: Vec::new(),
            }),
            _ => Ok(Warned {
                value: DbContents::default(),
                warnings: Vec::new(),
            }),
        }
    }

    /// The entry for `key`, only if tuned on the same device by the same nsac version.
    pub fn lookup(&self, key: &TuneKey) -> Result<Warned<Lookup>, DbError> {
        let Warned { value, warnings } = self.load()?;
        let mut other_device = false;
        let mut other_version = false;
        for entry in value.entries {
            if entry.key == *key {
                return Ok(Warned {
                    value: Lookup::Hit(Box::new(entry)),
                    warnings,
                });
            }
            if entry.key.same_question(key) {
                other_device |= entry.key.device != key.device;
                other_version |= entry.key.nsac != key.nsac;
            }
        }
        let value = if other_device || other_version {
            Lookup::Stale {
                other_device,
                other_version,
            }
        } else {
            Lookup::Miss
        };
        Ok(Warned { value, warnings })
    }

    /// Adds `entry`, replacing one with the same key; other writers' entries are kept.
    pub fn insert(&self, entry: Entry) -> Result<Vec<DbWarning>, DbError> {
        self.merge(vec![entry]).map(|w| w.warnings)
    }

    /// Writes every entry to `file` (a DB file of its own, importable elsewhere), under the
    /// file policy. A DB of a newer schema is an error (its entries cannot be read).
    pub fn export(&self, file: &Path) -> Result<Warned<usize>, DbError> {
        if let Read::Newer(found) = self.read()? {
            return Err(DbError::NewerSchema {
                path: self.path.clone(),
                found,
            });
        }
        let Warned { value, warnings } = self.load()?;
        write_atomic(file, render(&value)?.as_bytes())?;
        Ok(Warned {
            value: value.entries.len(),
            warnings,
        })
    }

    /// Merges the entries of an exported `file` into this DB; an imported entry replaces one
    /// with the same key. A bad import file is an error and is left where it is.
    pub fn import(&self, file: &Path) -> Result<Warned<ImportReport>, DbError> {
        let bytes = read_bounded(file, DB_MAX_BYTES, "a tuning DB")?;
        let contents = parse_bytes(&bytes).map_err(|bad| DbError::Import {
            path: file.to_path_buf(),
            reason: bad.reason(),
        })?;
        self.merge(contents.entries)
    }

    /// Lock, re-read, put `entries` in (same key: replaced), write, unlock. A DB of a newer
    /// schema is an error and is left untouched.
    fn merge(&self, entries: Vec<Entry>) -> Result<Warned<ImportReport>, DbError> {
        let _lock = self.lock()?;
        let Warned { value, warnings } = self.read_locked()?;
        let Some(mut contents) = value else {
            // `read_locked` gives no contents only for a newer schema.
            let found = match warnings.first() {
                Some(DbWarning::NewerSchema { found, .. }) => *found,
                _ => SCHEMA_VERSION + 1,
            };
            return Err(DbError::NewerSchema {
                path: self.path.clone(),
                found,
            });
        };
        let mut report = ImportReport {
            added: 0,
            replaced: 0,
        };
        for entry in entries {
            match contents.entries.iter_mut().find(|e| e.key == entry.key) {
                Some(old) => {
                    *old = entry;
                    report.replaced += 1;
                }
                None => {
                    contents.entries.push(entry);
                    report.added += 1;
                }
            }
        }
        write_atomic(&self.path, render(&contents)?.as_bytes())?;
        Ok(Warned {
            value: report,
            warnings,
        })
    }

    /// The file the DB's path leads to (symlinks followed); an error if it is not a regular
    /// file (a directory, a device, a FIFO), which is never read, renamed or replaced.
    fn target(&self) -> Result<PathBuf, DbError> {
        match resolve_output(&self.path) {
            Ok(out) => Ok(out.target),
            Err(FsError::OutputNotRegular { kind, .. }) => Err(DbError::NotRegular {
                path: self.path.clone(),
                kind,
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Takes the lock beside the DB's target (so every link to one DB shares one lock),
    /// creating the directory for a first write.
    fn lock(&self) -> Result<super::file_lock::LockGuard, DbError> {
        let target = self.target()?;
        lock_exclusive(&target).map_err(|source| DbError::Lock {
            path: self.path.clone(),
            lock: lock_path(&target),
            source,
        })
    }

    /// The file as read now, without a lock.
    fn read(&self) -> Result<Read, DbError> {
        let target = self.target()?;
        let bytes = match read_bounded(&target, DB_MAX_BYTES, "a tuning DB") {
            Ok(bytes) => bytes,
            Err(FsError::Missing { .. }) => return Ok(Read::Contents(DbContents::default())),
            Err(FsError::TooLarge { size, cap, .. }) => {
                return Ok(Read::Bad(Unreadable::Corrupt(format!(
                    "{size} bytes, more than the {cap}-byte limit"
                ))));
            }
            Err(FsError::NotRegular { kind, .. }) => {
                return Err(DbError::NotRegular {
                    path: self.path.clone(),
                    kind,
                });
            }
            Err(e) => return Err(e.into()),
        };
        Ok(match parse_bytes(&bytes) {
            Ok(contents) => Read::Contents(contents),
            Err(Unreadable::Schema(Some(found))) if found > SCHEMA_VERSION => Read::Newer(found),
            Err(bad) => Read::Bad(bad),
        })
    }

    /// Reads the file under the lock, setting a corrupt (or older-schema) one aside; `None`
    /// (with a [`DbWarning::NewerSchema`]) for a file of a newer schema, which is left alone.
    fn read_locked(&self) -> Result<Warned<Option<DbContents>>, DbError> {
        let bad = match self.read()? {
            Read::Contents(value) => {
                return Ok(Warned {
                    value: Some(value),
                    warnings: Vec::new(),
                });
            }
            Read::Newer(found) => {
                return Ok(Warned {
                    value: None,
                    warnings: vec![DbWarning::NewerSchema {
                        file: self.path.clone(),
                        found,
                    }],
                });
            }
            Read::Bad(bad) => bad,
        };
        let moved_to = self.set_aside()?;
        let file = self.path.clone();
        let warning = match bad {
            Unreadable::Corrupt(reason) => DbWarning::Corrupt {
                file,
                moved_to,
                reason,
            },
            Unreadable::Schema(found) => DbWarning::OtherSchema {
                file,
                moved_to,
                found,
            },
        };
        Ok(Warned {
            value: Some(DbContents::default()),
            warnings: vec![warning],
        })
    }

    /// Renames the (regular) target file to the first free `<name>.corrupt-<n>` beside it.
    fn set_aside(&self) -> Result<PathBuf, DbError> {
        let target = self.target()?;
        for n in 1u32..10_000 {
            let mut name = target.as_os_str().to_owned();
            name.push(format!(".corrupt-{n}"));
            let moved = PathBuf::from(name);
            if std::fs::symlink_metadata(&moved).is_err() {
                std::fs::rename(&target, &moved).map_err(|e| io_error(&self.path, e))?;
                return Ok(moved);
            }
        }
        Err(io_error(
            &self.path,
            std::io::Error::other("no free name to set the file aside"),
        ))
    }
}

/// The DB file as read.
enum Read {
    Contents(DbContents),
    /// A file of a newer schema: left alone.
    Newer(u32),
    Bad(Unreadable),
}

/// Why a file's text is not a DB of this schema.
enum Unreadable {
    Corrupt(String),
    Schema(Option<u32>),
}

impl Unreadable {
    fn reason(&self) -> String {
        match self {
            Unreadable::Corrupt(reason) => reason.clone(),
            Unreadable::Schema(found) => format!(
                "{}, this nsac reads schema {SCHEMA_VERSION}",
                describe_schema(*found)
            ),
        }
    }
}

fn parse_bytes(bytes: &[u8]) -> Result<DbContents, Unreadable> {
    match std::str::from_utf8(bytes) {
        Ok(text) => parse(text),
        Err(e) => Err(Unreadable::Corrupt(format!(
            "not UTF-8 text (byte {} is not)",
            e.valid_up_to()
        ))),
    }
}

/// Just the schema field, read before trusting the rest of the file.
#[derive(Deserialize)]
struct Header {
    schema: Option<u32>,
}

fn parse(text: &str) -> Result<DbContents, Unreadable> {
    let header: Header =
        serde_saphyr::from_str(text).map_err(|e| Unreadable::Corrupt(e.to_string()))?;
    if header.schema != Some(SCHEMA_VERSION) {
        return Err(Unreadable::Schema(header.schema));
    }
    serde_saphyr::from_str(text).map_err(|e| Unreadable::Corrupt(e.to_string()))
}

fn render(contents: &DbContents) -> Result<String, DbError> {
    serde_saphyr::to_string(contents).map_err(|e| DbError::Serialize(e.to_string()))
}

fn io_error(path: &Path, source: std::io::Error) -> DbError {
    DbError::Io {
        path: path.to_path_buf(),
        source,
    }
}
