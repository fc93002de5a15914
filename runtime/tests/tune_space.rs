//! Variant spaces: every point is either valid or pruned with the reason, before compiling.

mod tune_common;

use nsac_runtime::tune::space::{SpaceError, enumerate};
use nsac_runtime::tune::{Dimension, Point, PruneReason, VariantSpace};
use tune_common::{K_TILES, Q_TILES, ToySpace};

#[test]
fn pruning_keeps_exactly_the_variants_that_fit_and_says_why_not() {
    let space = ToySpace {
        block: 64,
        scratch_bytes: 1024,
    };
    let grid = enumerate(&space).unwrap();
    assert_eq!(grid.total(), 4 * 4 * 3 * 2 * 3);
    assert_eq!(grid.shape, vec![4, 4, 3, 2, 3]);
    // Fitting (q_tile, k_tile) pairs: k_tile divides 64 (not 48), q·k·4 ≤ 1024.
    let fitting = Q_TILES
        .iter()
        .flat_map(|q| K_TILES.iter().map(move |k| (q, k)))
        .filter(|&(q, k)| 64u32.is_multiple_of(*k) && q * k * 4 <= 1024)
        .count();
    assert_eq!(fitting, 9);
    assert_eq!(grid.valid.len(), fitting * 3 * 2 * 3);
    for p in &grid.valid {
        assert!(space.check(&space.variant_at(p)).is_ok());
    }
    for (p, why) in &grid.pruned {
        let v = space.variant_at(p);
        match why {
            PruneReason::NotDivisible { knob, value, .. } => {
                assert_eq!((knob.as_str(), *value), ("k_tile", 48));
                assert_eq!(
                    why.to_string(),
                    "k_tile = 48 does not fit selection block = 64"
                );
            }
            PruneReason::ExceedsLimit {
                needed, available, ..
            } => {
                assert_eq!(*needed, u64::from(v.q_tile * v.k_tile * 4));
                assert!(needed > available);
            }
            PruneReason::Incompatible(other) => panic!("unexpected reason {other}"),
        }
    }
}

/// A space built from explicit parts, to feed the grid walker bad shapes.
struct Raw {
    dims: Vec<Dimension>,
    default: Point,
}

impl VariantSpace for Raw {
    type Variant = Vec<usize>;
    fn dimensions(&self) -> Vec<Dimension> {
        self.dims.clone()
    }
    fn variant_at(&self, point: &[usize]) -> Vec<usize> {
        point.to_vec()
    }
    fn default_point(&self) -> Point {
        self.default.clone()
    }
    fn check(&self, _: &Vec<usize>) -> Result<(), PruneReason> {
        Ok(())
    }
}

#[test]
fn malformed_spaces_are_errors() {
    let raw = |dims: Vec<Dimension>, default: Point| enumerate(&Raw { dims, default });
    assert_eq!(raw(vec![], vec![]).unwrap_err(), SpaceError::NoDimensions);
    let empty: [u32; 0] = [];
    assert_eq!(
        raw(vec![Dimension::new("warps", &empty)], vec![0]).unwrap_err(),
        SpaceError::EmptyDimension("warps".into())
    );
    assert_eq!(
        raw(vec![Dimension::new("warps", &[4, 8])], vec![2]).unwrap_err(),
        SpaceError::BadDefault { point: vec![2] }
    );
    let wide: Vec<u32> = (0..2000).collect();
    let dims = vec![Dimension::new("a", &wide), Dimension::new("b", &wide)];
    assert!(matches!(
        raw(dims, vec![0, 0]).unwrap_err(),
        SpaceError::TooLarge { .. }
    ));
    let grid = raw(
        vec![
            Dimension::new("a", &[1, 2, 3]),
            Dimension::new("b", &[true, false]),
        ],
        vec![1, 1],
    )
    .unwrap();
    assert_eq!(grid.valid.len(), 6);
    assert!(grid.pruned.is_empty());
}
