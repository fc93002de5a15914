//! The cost report: a serde-serialisable record of the counts and a readable table (`Display`),
//! which is what `nsac cost` prints as JSON and as text.

use std::fmt;

use nsac_dsl::problem::Shape;
use nsac_dsl::spec::Spec;
use serde::Serialize;

/// Work and traffic of one spec on one problem shape.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CostReport {
    pub spec: String,
    pub causal: bool,
    pub batch: usize,
    pub seq_len: usize,
    /// Number of sequences (segments) per batch row.
    pub segments: usize,
    pub heads_q: u32,
    pub heads_kv: u32,
    pub head_dim_qk: u32,
    pub head_dim_v: u32,
    pub dtype: &'static str,
    /// One row per branch, in declaration order.
    pub branches: Vec<BranchCost>,
    /// Keys per query summed over branches, at the last position of the longest segment.
    pub keys_last: u64,
    /// Keys per query summed over branches, averaged over all positions.
    pub keys_mean: f64,
    /// FLOPs summed over branches.
    pub flops: Flops,
    pub bytes: Bytes,
    /// Total FLOPs per byte of compulsory traffic (inputs read once, output written once).
    pub intensity: f64,
    /// Total FLOPs per byte of compulsory plus intermediate traffic.
    pub intensity_with_intermediates: f64,
}

/// One branch's share.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BranchCost {
    pub name: String,
    /// `compress`, `select` or `window`.
    pub kind: &'static str,
    /// Keys (compressed tokens for compress) per query at the last position of the longest segment.
    pub keys_last: u64,
    /// Keys per query averaged over all positions of all segments.
    pub keys_mean: f64,
    pub flops: Flops,
}

/// FLOP counts (see the module docs of [`crate::cost`] for how each is counted).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Flops {
    pub attention: f64,
    pub pooling: f64,
    pub scoring: f64,
    pub total: f64,
}

impl Flops {
    /// Counts with their total.
    pub fn new(attention: f64, pooling: f64, scoring: f64) -> Self {
        Flops {
            attention,
            pooling,
            scoring,
            total: attention + pooling + scoring,
        }
    }
}

/// Bytes moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Bytes {
    /// Every input tensor read once (plus `cu_seqlens` for varlen).
    pub inputs: u64,
    /// `o` written once.
    pub output: u64,
    /// inputs + output.
    pub compulsory: u64,
    /// Minimum traffic of materialised intermediates (compressed K/V, block indices).
    pub intermediates: u64,
}

impl Bytes {
    /// Counts with the compulsory sum (saturating: each part already fits in 64 bits).
    pub fn new(inputs: u64, output: u64, intermediates: u64) -> Self {
        Bytes {
            inputs,
            output,
            compulsory: inputs.saturating_add(output),
            intermediates,
        }
    }
}

impl CostReport {
    pub(crate) fn new(spec: &Spec, shape: &Shape, branches: Vec<BranchCost>, bytes: Bytes) -> Self {
        let sum = |f: fn(&Flops) -> f64| branches.iter().map(|b| f(&b.flops)).sum::<f64>();
        let flops = Flops::new(sum(|f| f.attention), sum(|f| f.pooling), sum(|f| f.scoring));
        let per_byte = |b: u64| if b == 0 { 0.0 } else { flops.total / b as f64 };
        CostReport {
            spec: spec.name.clone(),
            causal: spec.causal,
            batch: shape.batch,
            seq_len: shape.seq_len,
            segments: shape.segments.len(),
            heads_q: shape.heads.q,
            heads_kv: shape.heads.kv,
            head_dim_qk: shape.head_dim.qk,
            head_dim_v: shape.head_dim.v,
            dtype: shape.dtype.name(),
            keys_last: branches.iter().map(|b| b.keys_last).sum(),
            keys_mean: branches.iter().map(|b| b.keys_mean).sum(),
            intensity: per_byte(bytes.compulsory),
            intensity_with_intermediates: per_byte(
                bytes.compulsory.saturating_add(bytes.intermediates),
            ),
            branches,
            flops,
            bytes,
        }
    }
}

const GIGA: f64 = 1e9;
const MIB: f64 = 1024.0 * 1024.0;

impl fmt::Display for CostReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "cost of `{}`: B={} T={} segments={} HQ={} H={} Dqk={} Dv={} {} {}",
            self.spec,
            self.batch,
            self.seq_len,
            self.segments,
            self.heads_q,
            self.heads_kv,
            self.head_dim_qk,
            self.head_dim_v,
            self.dtype,
            if self.causal { "causal" } else { "non-causal" },
        )?;
        writeln!(
            f,
            "{:<12} {:<9} {:>12} {:>12} {:>12} {:>12} {:>12}",
            "branch",
            "kind",
            "keys/q last",
            "keys/q mean",
            "GFLOP attn",
            "GFLOP pool",
            "GFLOP score"
        )?;
        for b in &self.branches {
            row(f, &b.name, b.kind, b.keys_last, b.keys_mean, &b.flops)?;
        }
        row(f, "total", "", self.keys_last, self.keys_mean, &self.flops)?;
        writeln!(f, "GFLOP total  {:.3}", self.flops.total / GIGA)?;
        writeln!(
            f,
            "bytes        inputs {:.3} MiB, output {:.3} MiB, total {:.3} MiB; intermediates {:.3} MiB",
            self.bytes.inputs as f64 / MIB,
            self.bytes.output as f64 / MIB,
            self.bytes.compulsory as f64 / MIB,
            self.bytes.intermediates as f64 / MIB,
        )?;
        write!(
            f,
            "intensity    {:.2} FLOP/byte ({:.2} with intermediates)",
            self.intensity, self.intensity_with_intermediates
        )
    }
}

fn row(
    f: &mut fmt::Formatter<'_>,
    name: &str,
    kind: &str,
    last: u64,
    mean: f64,
    flops: &Flops,
) -> fmt::Result {
    writeln!(
        f,
        "{:<12} {:<9} {:>12} {:>12.2} {:>12.4} {:>12.4} {:>12.4}",
        name,
        kind,
        last,
        mean,
        flops.attention / GIGA,
        flops.pooling / GIGA,
        flops.scoring / GIGA
    )
}
