//! The sizes of one call: what a [`super::Plan`]'s symbolic extents stand for at run time. A plan
//! (and the code compiled from it) is the same for every length and packing; a `Sizes` gives the
//! batch, the query and key lengths and the segments of one call.

use nsac_dsl::problem::Shape;

use super::Plan;
use super::op::Op;
use super::rules;
use super::tensor::{Extent, TensorId};

/// Batch, lengths and segments of one call.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Sizes {
    /// `B`: batch rows (1 for varlen problems).
    pub batch: usize,
    /// `Tq`: query positions per row.
    pub queries: usize,
    /// `Tk`: key positions per row.
    pub keys: usize,
    /// `(start, end)` position ranges within each row, the same for every row: `(0, T)` for
    /// batched problems, the `cu_seqlens` pairs for varlen ones.
    pub segments: Vec<(usize, usize)>,
}

/// Why sizes cannot be bound to a plan.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizesError {
    #[error("extent `{0}` of tensor `{1}` overflows the address space")]
    Overflow(String, String),
    #[error("`NC_{0}` names no pool op of the plan")]
    UnknownBranch(String),
}

impl Sizes {
    /// The sizes of a forward call on `shape` (queries and keys share the length).
    pub fn of(shape: &Shape) -> Sizes {
        Sizes {
            batch: shape.batch,
            queries: shape.seq_len,
            keys: shape.seq_len,
            segments: shape.segments.clone(),
        }
    }

    /// The longest segment.
    pub fn max_segment(&self) -> usize {
        self.segments.iter().map(|(s, e)| e - s).max().unwrap_or(0)
    }

    /// Query positions over the whole call (`B·Tq`).
    pub fn tokens(&self) -> usize {
        self.batch * self.queries
    }

    /// First compressed token of each segment within a row, and the row's total, for a pool
    /// of `block`/`stride`.
    pub fn compressed_offsets(&self, block: usize, stride: usize) -> (Vec<usize>, usize) {
        let mut offsets = Vec::with_capacity(self.segments.len());
        let mut total = 0;
        for &(s, e) in &self.segments {
            offsets.push(total);
            total += rules::compressed_tokens(e - s, block, stride);
        }
        (offsets, total)
    }

    /// The value of `extent` in `plan` for this call.
    pub fn extent(&self, plan: &Plan, extent: &Extent) -> Result<usize, SizesError> {
        let c = &plan.consts;
        Ok(match extent {
            Extent::Batch => self.batch,
            Extent::Queries => self.queries,
            Extent::Keys => self.keys,
            Extent::Compressed(branch) => {
                let pool = plan
                    .ops
                    .iter()
                    .find_map(|op| match op {
                        Op::Pool(p) if p.branch == *branch => Some(p),
                        _ => None,
                    })
                    .ok_or_else(|| SizesError::UnknownBranch(branch.clone()))?;
                self.compressed_offsets(pool.block, pool.stride).1
            }
            Extent::Blocks(l) => rules::block_count(self.keys, *l),
            Extent::HeadsQ => c.heads_q,
            Extent::HeadsKv => c.heads_kv,
            Extent::Dqk => c.dqk,
            Extent::Dv => c.dv,
            Extent::Const(n) => *n,
        })
    }

    /// The concrete shape of tensor `id` for this call, every product checked.
    ///
    /// ```
    /// use nsac_compiler::ir::{Plan, Sizes};
    /// use nsac_dsl::problem::Problem;
    /// let spec = nsac_dsl::load(std::path::Path::new("../kernels/nsa-fla.nsa")).unwrap();
    /// let shape = Problem::varlen(vec![0, 100, 300]).resolve(&spec).unwrap();
    /// let plan = Plan::for_shape(&spec, &shape).unwrap();
    /// let kc = plan.tensor_named("kc_cmp").unwrap();
    /// // compression 64/64: one token from the first segment, three from the second
    /// assert_eq!(Sizes::of(&shape).shape(&plan, kc).unwrap(), [1, 4, 4, 128]);
    /// ```
    pub fn shape(&self, plan: &Plan, id: TensorId) -> Result<Vec<usize>, SizesError> {
        let t = plan.tensor(id);
        let dims = t
            .shape
            .iter()
            .map(|e| self.extent(plan, e))
            .collect::<Result<Vec<_>, _>>()?;
        dims.iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .and_then(|n| n.checked_mul(t.elem.size()))
            .ok_or_else(|| SizesError::Overflow(format!("{:?}", t.shape), t.name.clone()))?;
        Ok(dims)
    }

    /// Elements of tensor `id` for this call.
    pub fn numel(&self, plan: &Plan, id: TensorId) -> Result<usize, SizesError> {
        Ok(self.shape(plan, id)?.iter().product())
    }
}
