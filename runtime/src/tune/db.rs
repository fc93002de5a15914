//! The tuning DB: one human-readable YAML file of tuned Variants, safe for concurrent writers.
//!
//! Default location `<user cache dir>/nsac/tuning.yaml` (the CLI's `--db FILE` overrides it).
//! Every write locks the sidecar, re-reads the file, merges and replaces it atomically (see
//! [`super::file_lock`]), so two processes tuning at once both keep their entries. A file that
//! does not parse, or has another schema version, is set aside as `tuning.yaml.corrupt-<n>` and
//! reported as a [`DbWarning`]; the DB then starts empty. Variants are stored as plain YAML
//! values so one file holds the entries of every backend. Candidates rejected before compiling
//! are not listed one by one (a GPU space prunes about a thousand); `pruned` counts them per
//! reason, with one example each. A file looks like this (one entry, candidates shortened):
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
//!   best: {rows: 4, key_vectors: 2, threads: 2}
//!   best_us: 8123.4
//!   default: {rows: 1, key_vectors: 1, threads: 2}
//!   default_us: 15890.2
//!   strategy: coordinate_descent
//!   candidates:
//!   - variant: {rows: 2, key_vectors: 2, threads: 1}
//!     outcome: {measured: {median_us: 14002.5, runs: 5}}
//!   pruned:
//!   - reason: "needs 20 F32X4 registers, the device has 16"
//!     count: 12
//!     example: {rows: 3, key_vectors: 4, threads: 2}
//! ```

use super::file_lock::{lock_exclusive, write_atomic};
use super::key::TuneKey;
use super::search::Strategy;
use super::tuner::{Outcome, TuneResult};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The schema version written in every file; files of another version are set aside.
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

/// A problem with the DB file that was handled without failing.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DbWarning {
    #[error("tuning DB {file} is unreadable ({reason}); moved it to {moved_to} and started empty")]
    Corrupt {
        file: PathBuf,
        moved_to: PathBuf,
        reason: String,
    },
    #[error(
        "tuning DB {file} has schema {found:?}, this nsac writes {SCHEMA_VERSION}; moved it to {moved_to} and started empty"
    )]
    OtherSchema {
        file: PathBuf,
        moved_to: PathBuf,
        found: Option<u32>,
    },
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

    /// Reads every entry (an absent file is an empty DB).
    pub fn load(&self) -> Result<Warned<DbContents>, DbError> {
        let _lock = self.lock()?;
        self.read_locked()
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

    /// Writes every entry to `file` (a DB file of its own, importable elsewhere).
    pub fn export(&self, file: &Path) -> Result<Warned<usize>, DbError> {
        let Warned { value, warnings } = self.load()?;
        write_atomic(file, render(&value)?.as_bytes()).map_err(|e| io_error(file, e))?;
        Ok(Warned {
            value: value.entries.len(),
            warnings,
        })
    }

    /// Merges the entries of an exported `file` into this DB; an imported entry replaces one
    /// with the same key. A bad import file is an error and is left where it is.
    pub fn import(&self, file: &Path) -> Result<Warned<ImportReport>, DbError> {
        let text = std::fs::read_to_string(file).map_err(|e| io_error(file, e))?;
        let contents = parse(&text).map_err(|bad| DbError::Import {
            path: file.to_path_buf(),
            reason: match bad {
                Unreadable::Corrupt(reason) => reason,
                Unreadable::Schema(found) => {
                    format!("schema {found:?}, this nsac reads {SCHEMA_VERSION}")
                }
            },
        })?;
        self.merge(contents.entries)
    }

    /// Lock, re-read, put `entries` in (same key: replaced), write, unlock.
    fn merge(&self, entries: Vec<Entry>) -> Result<Warned<ImportReport>, DbError> {
        let _lock = self.lock()?;
        let Warned {
            value: mut contents,
            warnings,
        } = self.read_locked()?;
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
        write_atomic(&self.path, render(&contents)?.as_bytes())
            .map_err(|e| io_error(&self.path, e))?;
        Ok(Warned {
            value: report,
            warnings,
        })
    }

    fn lock(&self) -> Result<super::file_lock::LockGuard, DbError> {
        lock_exclusive(&self.path).map_err(|e| io_error(&self.path, e))
    }

    /// Reads the file under the lock, setting an unreadable one aside.
    fn read_locked(&self) -> Result<Warned<DbContents>, DbError> {
        let text = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Warned {
                    value: DbContents::default(),
                    warnings: Vec::new(),
                });
            }
            Err(e) => return Err(io_error(&self.path, e)),
        };
        let parsed = match String::from_utf8(text) {
            Ok(text) => parse(&text),
            Err(_) => Err(Unreadable::Corrupt("not UTF-8 text".to_string())),
        };
        let bad = match parsed {
            Ok(value) => {
                return Ok(Warned {
                    value,
                    warnings: Vec::new(),
                });
            }
            Err(bad) => bad,
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
            value: DbContents::default(),
            warnings: vec![warning],
        })
    }

    /// Renames the file to the first free `<name>.corrupt-<n>`.
    fn set_aside(&self) -> Result<PathBuf, DbError> {
        for n in 1u32.. {
            let mut name = self.path.as_os_str().to_owned();
            name.push(format!(".corrupt-{n}"));
            let target = PathBuf::from(name);
            if !target.exists() {
                std::fs::rename(&self.path, &target).map_err(|e| io_error(&self.path, e))?;
                return Ok(target);
            }
        }
        Err(io_error(
            &self.path,
            std::io::Error::other("no free name to set the file aside"),
        ))
    }
}

/// Why a file's text is not a DB of this schema.
enum Unreadable {
    Corrupt(String),
    Schema(Option<u32>),
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
