//! Variant spaces: the knobs a backend may turn, and the constraints that prune them.
//!
//! A backend declares its space as a list of [`Dimension`]s (CPU: query/key tiles, unroll,
//! fusion, threads; GPU: warps, tile shapes, stages, fusion, split). A point of the space is one
//! value index per dimension; [`VariantSpace::variant_at`] turns it into the backend's Variant.
//! [`VariantSpace::check`] rejects a Variant BEFORE anything is compiled (register or shared
//! memory limits read from the device, divisibility by the spec's block sizes), with a reason
//! that the tuner reports. The grid form lets the search move one knob at a time.

use rayon::prelude::*;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;

/// One value index per dimension, in the order of [`VariantSpace::dimensions`].
pub type Point = Vec<usize>;

/// One knob: its name and the labels of its values (for reports; the Variant holds the values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dimension {
    pub name: String,
    pub values: Vec<String>,
}

impl Dimension {
    /// A knob whose value labels are the `Display` forms of `values`.
    pub fn new<T: std::fmt::Display>(name: &str, values: &[T]) -> Self {
        Dimension {
            name: name.to_string(),
            values: values.iter().map(ToString::to_string).collect(),
        }
    }
}

/// Why a Variant was rejected without compiling it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PruneReason {
    /// It needs more of a device resource than there is (registers, shared memory, threads).
    #[error("needs {needed} {resource}, the device has {available}")]
    ExceedsLimit {
        resource: String,
        needed: u64,
        available: u64,
    },
    /// A knob's value must divide, or be divided by, a size fixed by the spec or problem.
    #[error("{knob} = {value} does not fit {what} = {size}")]
    NotDivisible {
        knob: String,
        value: u64,
        what: String,
        size: u64,
    },
    /// Two knobs that cannot be combined, or any other backend-specific rule.
    #[error("{0}")]
    Incompatible(String),
}

/// A backend's space of Variants.
pub trait VariantSpace: Sync {
    /// The backend's Variant: the HOW of a kernel, never its meaning.
    type Variant: Serialize + DeserializeOwned + Clone + Debug + PartialEq + Send + Sync;

    /// The knobs, each with at least one value.
    fn dimensions(&self) -> Vec<Dimension>;

    /// The Variant at `point`; every index is within its dimension's values.
    fn variant_at(&self, point: &[usize]) -> Self::Variant;

    /// The point of the untuned default Variant (the baseline the tuner reports against).
    fn default_point(&self) -> Point;

    /// Accepts a Variant that may be compiled and run, or says why not.
    fn check(&self, variant: &Self::Variant) -> Result<(), PruneReason>;
}

/// A space whose grid cannot be walked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpaceError {
    #[error("the variant space has no dimensions")]
    NoDimensions,
    #[error("dimension `{0}` has no values")]
    EmptyDimension(String),
    #[error("the variant space has more than {limit} points")]
    TooLarge { limit: usize },
    #[error("the default point {point:?} does not fit the dimensions")]
    BadDefault { point: Point },
}

/// The most points a space may have: beyond this, a backend should split or narrow its knobs.
pub const MAX_SPACE_POINTS: usize = 1 << 20;

/// Every point of a space, split into those that may be compiled and those pruned (with why).
#[derive(Debug, Clone)]
pub struct Enumerated {
    /// The value counts per dimension.
    pub shape: Vec<usize>,
    pub valid: Vec<Point>,
    pub pruned: Vec<(Point, PruneReason)>,
}

impl Enumerated {
    /// Points in the whole grid.
    pub fn total(&self) -> usize {
        self.valid.len() + self.pruned.len()
    }
}

/// Walks the grid of `space` in row-major order and checks every point.
pub fn enumerate<S: VariantSpace + ?Sized>(space: &S) -> Result<Enumerated, SpaceError> {
    let dims = space.dimensions();
    if dims.is_empty() {
        return Err(SpaceError::NoDimensions);
    }
    if let Some(empty) = dims.iter().find(|d| d.values.is_empty()) {
        return Err(SpaceError::EmptyDimension(empty.name.clone()));
    }
    let shape: Vec<usize> = dims.iter().map(|d| d.values.len()).collect();
    let total = shape
        .iter()
        .try_fold(1usize, |acc, &n| acc.checked_mul(n))
        .filter(|&n| n <= MAX_SPACE_POINTS)
        .ok_or(SpaceError::TooLarge {
            limit: MAX_SPACE_POINTS,
        })?;
    let default = space.default_point();
    if !in_bounds(&shape, &default) {
        return Err(SpaceError::BadDefault { point: default });
    }
    // Checks may generate code (the GPU space reads launch needs from the PTX manifest), so
    // points are checked in parallel; the order stays row-major.
    let checked: Vec<(Point, Result<(), PruneReason>)> = (0..total)
        .into_par_iter()
        .map(|index| {
            let point = unflatten(&shape, index);
            let verdict = space.check(&space.variant_at(&point));
            (point, verdict)
        })
        .collect();
    let mut valid = Vec::new();
    let mut pruned = Vec::new();
    for (point, verdict) in checked {
        match verdict {
            Ok(()) => valid.push(point),
            Err(reason) => pruned.push((point, reason)),
        }
    }
    Ok(Enumerated {
        shape,
        valid,
        pruned,
    })
}

/// Whether `point` has one in-range index per dimension of `shape`.
pub fn in_bounds(shape: &[usize], point: &[usize]) -> bool {
    point.len() == shape.len() && point.iter().zip(shape).all(|(&i, &n)| i < n)
}

/// The `index`-th point of the grid in row-major order (last dimension fastest).
fn unflatten(shape: &[usize], mut index: usize) -> Point {
    let mut point = vec![0; shape.len()];
    for (slot, &n) in point.iter_mut().zip(shape).rev() {
        *slot = index % n;
        index /= n;
    }
    point
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unflatten_walks_row_major() {
        let shape = [2, 3];
        let points: Vec<Point> = (0..6).map(|i| unflatten(&shape, i)).collect();
        assert_eq!(
            points,
            vec![
                vec![0, 0],
                vec![0, 1],
                vec![0, 2],
                vec![1, 0],
                vec![1, 1],
                vec![1, 2]
            ]
        );
    }
}
