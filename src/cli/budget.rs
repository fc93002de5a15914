//! The one size budget of the commands that allocate a problem (`run`, `bench`, `tune`): the
//! bytes the problem needs ([`nsac_compiler::cost::footprint`], counted from the shape) are
//! checked against `--max-bytes` / `NSAC_MAX_BYTES` (default: half of this machine's memory, or
//! 8 GiB where it cannot be read) before any tensor is allocated, so a huge `--seq` is an error,
//! not an abort.

use nsac_compiler::cost;
use nsac_dsl::Spec;
use nsac_dsl::problem::Shape;

use super::args::BudgetArgs;
use super::error::CliError;

const GIB: u64 = 1 << 30;

/// The limit in force: the flag (or its environment variable), else the default.
pub fn limit(args: &BudgetArgs) -> u64 {
    args.max_bytes.unwrap_or_else(default_limit)
}

/// Half of the physical memory (Linux: `/proc/meminfo`; at least 256 MiB), or 8 GiB where it
/// cannot be read. (A fixed 8 GiB cap refused nsa-fla at T = 65536 on a 128 GiB GPU host, whose
/// host tensors alone take 8.6 GiB.)
fn default_limit() -> u64 {
    let half = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib.saturating_mul(1024) / 2)
        });
    half.map_or(8 * GIB, |h| h.max(GIB / 4))
}

/// Checks that `spec` on `shape` fits the budget when run with `threads` worker threads (on
/// the f64 reference when `reference`).
pub fn check(
    spec: &Spec,
    shape: &Shape,
    threads: usize,
    reference: bool,
    args: &BudgetArgs,
) -> Result<(), CliError> {
    let limit = limit(args);
    let needed = match cost::footprint(spec, shape, threads) {
        Ok(f) if reference => f.reference(),
        Ok(f) => f.total(),
        Err(_) => u128::MAX,
    };
    if needed > u128::from(limit) {
        return Err(CliError::Budget {
            needed: human(needed),
            limit: human(u128::from(limit)),
        });
    }
    Ok(())
}

/// `12.3 GiB`-style text.
pub fn human(bytes: u128) -> String {
    if bytes == u128::MAX {
        return "more than 2^128 bytes".into();
    }
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut x = bytes as f64;
    let mut unit = 0;
    while x >= 1024.0 && unit + 1 < units.len() {
        x /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{x:.1} {} ({bytes} bytes)", units[unit])
    }
}
