//! Tune once, then reuse: look a problem up in the tuning DB and tune only on a miss.
//!
//! This is what `nsac run`/`nsac tune` call. A hit (same spec hash, shape bucket, dtype, device
//! fingerprint and nsac version) returns the stored Variant without compiling anything; a miss,
//! a stale entry, or a stored Variant that no longer decodes (the backend's Variant type
//! changed) tunes afresh and records the result.

use super::db::{DbError, DbWarning, Entry, Lookup, TuningDb, Warned};
use super::key::TuneKey;
use super::space::VariantSpace;
use super::tuner::{Benchmark, Progress, TuneError, TuneOptions, TuneResult, tune};

/// Where a Variant came from.
#[derive(Debug, Clone, PartialEq)]
pub enum Tuned<V> {
    /// The DB had it; `best_us` is the time recorded then, measured at `timed_seq_len` (if the
    /// entry records it).
    Stored {
        variant: V,
        best_us: f64,
        timed_seq_len: Option<usize>,
    },
    /// Tuned just now, and recorded in the DB.
    Fresh(TuneResult<V>),
}

impl<V> Tuned<V> {
    /// The Variant to run.
    pub fn variant(&self) -> &V {
        match self {
            Tuned::Stored { variant, .. } => variant,
            Tuned::Fresh(result) => &result.best,
        }
    }
}

/// What went wrong while looking up or tuning.
#[derive(Debug, thiserror::Error)]
pub enum CachedTuneError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Tune(#[from] TuneError),
}

/// The current entry of `db` for `key`, if there is one whose Variant still decodes and passes
/// `space`'s check (never compiles or tunes), with the warnings the DB produced.
pub fn stored<S>(
    db: &TuningDb,
    key: &TuneKey,
    space: &S,
) -> Result<Warned<Option<Tuned<S::Variant>>>, DbError>
where
    S: VariantSpace + ?Sized,
{
    let found = db.lookup(key)?;
    let value = match found.value {
        Lookup::Hit(entry) => entry
            .best_variant::<S::Variant>()
            .ok()
            .filter(|variant| space.check(variant).is_ok())
            .map(|variant| Tuned::Stored {
                variant,
                best_us: entry.best_us,
                timed_seq_len: entry.timed_seq_len,
            }),
        _ => None,
    };
    Ok(Warned {
        value,
        warnings: found.warnings,
    })
}

/// The answer for `key`: from `db` unless `retune` is set or the DB has nothing current;
/// otherwise tunes with `bench` over `space` and records the result.
/// Returns the warnings the DB produced along the way (a corrupt file set aside, …); a result
/// that cannot be stored (a read-only directory, a DB of a newer schema) is still returned,
/// with a [`DbWarning::NotStored`] saying why.
pub fn tune_cached<S, B>(
    db: &TuningDb,
    key: &TuneKey,
    space: &S,
    bench: &B,
    options: &TuneOptions,
    retune: bool,
    progress: &mut dyn FnMut(Progress),
) -> Result<(Tuned<S::Variant>, Vec<DbWarning>), CachedTuneError>
where
    S: VariantSpace + ?Sized,
    B: Benchmark<S::Variant> + ?Sized,
{
    tune_cached_at(db, key, space, bench, options, retune, None, progress)
}

/// [`tune_cached`] for a tuner that times its candidates at `timed_seq_len`, which the entry
/// records (so that a later answer from the DB can say what its time was measured on).
#[allow(clippy::too_many_arguments)]
pub fn tune_cached_at<S, B>(
    db: &TuningDb,
    key: &TuneKey,
    space: &S,
    bench: &B,
    options: &TuneOptions,
    retune: bool,
    timed_seq_len: Option<usize>,
    progress: &mut dyn FnMut(Progress),
) -> Result<(Tuned<S::Variant>, Vec<DbWarning>), CachedTuneError>
where
    S: VariantSpace + ?Sized,
    B: Benchmark<S::Variant> + ?Sized,
{
    let mut warnings = Vec::new();
    if !retune {
        let found = stored(db, key, space)?;
        warnings.extend(found.warnings);
        if let Some(stored) = found.value {
            return Ok((stored, warnings));
        }
    }
    let result = tune(space, bench, options, progress)?;
    let mut entry = Entry::from_result(key.clone(), &result)?;
    entry.timed_seq_len = timed_seq_len;
    match db.insert(entry) {
        Ok(more) => warnings.extend(more),
        Err(e) => warnings.push(DbWarning::NotStored {
            file: db.path().to_path_buf(),
            reason: e.to_string(),
        }),
    }
    Ok((Tuned::Fresh(result), warnings))
}
