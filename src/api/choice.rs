//! Which Variant a call runs and where it came from: an explicit `FIELD=VALUE,…` text, else the
//! tuning database's result for this spec, problem and device, else the default. The CLI's
//! `--variant`, `--db` and `--threads` and the facade's [`super::Options`] both come here.

use std::path::Path;

use nsac_compiler::cpu::CpuVariant;
use nsac_compiler::ptx::GpuVariant;
use nsac_dsl::Spec;
use nsac_dsl::problem::Shape;
use nsac_runtime::cuda::CudaDevice;
use nsac_runtime::tune::cpu::tuned_cpu_variant_warned;
use nsac_runtime::tune::db::TuningDb;
use nsac_runtime::tune::gpu::tuned_gpu_variant_warned;

use super::Error;

/// Where a run's Variant came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VariantOrigin {
    /// Given explicitly.
    Explicit,
    /// The tuning database's result for this spec, problem and machine.
    Tuned,
    Default,
    /// The reference has no Variant.
    None,
}

impl VariantOrigin {
    pub fn name(self) -> &'static str {
        match self {
            VariantOrigin::Explicit => "explicit",
            VariantOrigin::Tuned => "tuned",
            VariantOrigin::Default => "default",
            VariantOrigin::None => "none",
        }
    }
}

/// What to choose a Variant from.
#[derive(Debug, Clone, Copy, Default)]
pub struct VariantRequest<'a> {
    /// An explicit Variant, `FIELD=VALUE,…` over the defaults.
    pub variant: Option<&'a str>,
    /// The tuning database (default: the user's cache directory's).
    pub db: Option<&'a Path>,
    /// Do not look in the database.
    pub no_tuned: bool,
    /// CPU worker threads (default: the tuned count, else every core).
    pub threads: Option<usize>,
}

/// A CPU Variant and thread count.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuChoice {
    pub variant: CpuVariant,
    pub threads: usize,
    pub origin: VariantOrigin,
}

/// A GPU Variant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GpuChoice {
    pub variant: GpuVariant,
    pub origin: VariantOrigin,
}

/// A choice and the tuning database's warnings met on the way (a corrupt file set aside, a
/// newer schema left alone), for the caller to show.
pub type Chosen<T> = (T, Vec<String>);

/// The cores of this machine.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A thread count within 1 ..= 4 × the cores (more only adds contention and stacks).
pub fn checked_threads(threads: Option<usize>) -> Result<Option<usize>, Error> {
    let max = 4 * cores();
    match threads {
        Some(0) => Err(Error::Invalid("--threads must be at least 1".into())),
        Some(n) if n > max => Err(Error::Invalid(format!(
            "--threads {n} is more than 4 × the {} cores of this machine (at most {max})",
            cores()
        ))),
        other => Ok(other),
    }
}

/// A `FIELD=VALUE,…` text well formed as a list: not empty, no empty field, no field twice.
fn check_fields(text: &str) -> Result<(), Error> {
    let bad = |why: String| Err(Error::Invalid(format!("--variant `{text}`: {why}")));
    if text.trim().is_empty() {
        return bad("is empty; give FIELD=VALUE,… or leave --variant out".into());
    }
    let mut seen: Vec<&str> = Vec::new();
    for item in text.split(',') {
        let item = item.trim();
        if item.is_empty() {
            return bad("has an empty field (a stray comma)".into());
        }
        let name = item.split_once('=').map_or(item, |(n, _)| n).trim();
        if seen.contains(&name) {
            return bad(format!("gives `{name}` twice"));
        }
        seen.push(name);
    }
    Ok(())
}

/// Parses an explicit CPU Variant.
pub fn parse_cpu_variant(text: &str) -> Result<CpuVariant, Error> {
    check_fields(text)?;
    CpuVariant::parse(text).map_err(|e| Error::Invalid(format!("--variant: {e}")))
}

/// Parses an explicit GPU Variant.
pub fn parse_gpu_variant(text: &str) -> Result<GpuVariant, Error> {
    check_fields(text)?;
    GpuVariant::parse(text).map_err(|e| Error::Invalid(format!("--variant: {e}")))
}

fn open_db(req: &VariantRequest<'_>) -> Option<TuningDb> {
    if req.no_tuned {
        return None;
    }
    match req.db {
        Some(p) => Some(TuningDb::open(p)),
        None => TuningDb::open_default().ok(),
    }
}

fn messages<W: std::fmt::Display>(warnings: &[W]) -> Vec<String> {
    warnings.iter().map(|w| w.to_string()).collect()
}

/// The CPU Variant for `spec` on `shape`: explicit, else tuned, else the default; an explicit
/// thread count wins over the tuned one. A database path that cannot be used at all (not a
/// regular file) is an error.
pub fn pick_cpu(
    spec: &Spec,
    shape: &Shape,
    req: &VariantRequest<'_>,
) -> Result<Chosen<CpuChoice>, Error> {
    let threads = checked_threads(req.threads)?;
    if let Some(text) = req.variant {
        let choice = CpuChoice {
            variant: parse_cpu_variant(text)?,
            threads: threads.unwrap_or_else(cores),
            origin: VariantOrigin::Explicit,
        };
        return Ok((choice, Vec::new()));
    }
    let (found, warnings) = match open_db(req) {
        Some(db) => {
            let w = tuned_cpu_variant_warned(spec, shape, &db)
                .map_err(|e| Error::Invalid(e.to_string()))?;
            (w.value, messages(&w.warnings))
        }
        None => (None, Vec::new()),
    };
    let choice = match found {
        Some(c) => CpuChoice {
            variant: c.variant,
            threads: threads.unwrap_or(c.threads),
            origin: VariantOrigin::Tuned,
        },
        None => CpuChoice {
            variant: CpuVariant::default(),
            threads: threads.unwrap_or_else(cores),
            origin: VariantOrigin::Default,
        },
    };
    Ok((choice, warnings))
}

/// The GPU Variant for `spec` on `shape` on `gpu`: explicit, else tuned, else the default.
pub fn pick_gpu(
    gpu: &CudaDevice,
    spec: &Spec,
    shape: &Shape,
    req: &VariantRequest<'_>,
) -> Result<Chosen<GpuChoice>, Error> {
    if let Some(text) = req.variant {
        let choice = GpuChoice {
            variant: parse_gpu_variant(text)?,
            origin: VariantOrigin::Explicit,
        };
        return Ok((choice, Vec::new()));
    }
    let (found, warnings) = match open_db(req) {
        Some(db) => {
            let w = tuned_gpu_variant_warned(gpu, spec, shape, &db)
                .map_err(|e| Error::Invalid(e.to_string()))?;
            (w.value, messages(&w.warnings))
        }
        None => (None, Vec::new()),
    };
    let choice = match found {
        Some(variant) => GpuChoice {
            variant,
            origin: VariantOrigin::Tuned,
        },
        None => GpuChoice {
            variant: GpuVariant::default(),
            origin: VariantOrigin::Default,
        },
    };
    Ok((choice, warnings))
}
