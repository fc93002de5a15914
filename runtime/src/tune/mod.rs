//! The auto-tuner: Variant spaces, the search over them, and the tuning DB (issue #5).
//!
//! A backend declares its knobs as a [`VariantSpace`] and how to compile, time and check a
//! Variant as a [`Benchmark`]; [`tune`] prunes, searches, measures and returns a
//! [`TuneResult`]; [`TuningDb`] keeps results per spec, shape bucket, dtype, device and nsac
//! version in one YAML file; [`tune_cached`] ties the two together (tune only on a miss).
//! The backends' spaces and benchmarks live in [`cpu`] and [`gpu`]; [`check`] is the oracle
//! check both use.

pub mod cached;
pub mod check;
pub mod cpu;
pub mod db;
pub mod file_lock;
pub mod fingerprint;
pub mod gpu;
pub mod key;
pub mod limits;
pub mod search;
pub mod space;
pub mod tuner;

pub use cached::{CachedTuneError, Tuned, tune_cached};
pub use cpu::{CpuCandidate, CpuSpace, tune_cpu, tuned_cpu_variant};
pub use db::{DbContents, DbError, DbWarning, Entry, ImportReport, Lookup, TuningDb, Warned};
pub use fingerprint::{CpuFingerprint, DeviceFingerprint, GpuFingerprint};
pub use key::{ShapeBucket, TuneKey};
pub use limits::{BlockNeeds, GpuLimits};
pub use search::{SearchConfig, Strategy};
pub use space::{Dimension, Point, PruneReason, VariantSpace};
pub use tuner::{
    BenchError, Benchmark, CandidateReport, Outcome, Progress, TuneError, TuneOptions, TuneResult,
    tune,
};
