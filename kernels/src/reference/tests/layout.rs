//! Layout: varlen segments and batch rows are independent sequences.

use nsac_dsl::spec::CombineMode;

use super::support::*;
use crate::reference::{forward, sequences};

#[test]
fn varlen_equals_each_segment_run_separately() {
    let spec = nsa(true, (4, 2), (5, 3), CombineMode::Gate);
    let cu = [0, 7, 20, 21, 34];
    let shape = varlen(&spec, &cu);
    assert_eq!(sequences(&shape).len(), 4);
    for seed in 0..2 {
        let inputs = random(&spec, &shape, seed);
        let out = forward(&spec, &shape, &inputs).unwrap();
        for w in cu.windows(2) {
            let (start, end) = (w[0], w[1]);
            let part = slice_rows(&inputs, 0, start, end);
            let alone = forward(&spec, &batched(&spec, 1, end - start), &part).unwrap();
            assert_eq!(slice_out(&out.o, 0, start, end), alone.o);
            assert_eq!(
                slice_out(&out.branches["cmp"], 0, start, end),
                alone.branches["cmp"]
            );
            assert_eq!(
                slice_out(&out.branches["slc"], 0, start, end),
                alone.branches["slc"]
            );
            assert_eq!(
                slice_out(&out.branches["win"], 0, start, end),
                alone.branches["win"]
            );
            assert_eq!(
                slice_out(&out.selected["slc"], 0, start, end),
                alone.selected["slc"]
            );
        }
    }
}

#[test]
fn batch_rows_are_independent() {
    let spec = nsa(true, (2, 2), (3, 4), CombineMode::Gate);
    let shape = batched(&spec, 3, 11);
    let inputs = random(&spec, &shape, 5);
    let out = forward(&spec, &shape, &inputs).unwrap();
    for row in 0..3 {
        let part = slice_rows(&inputs, row, 0, 11);
        let alone = forward(&spec, &batched(&spec, 1, 11), &part).unwrap();
        assert_eq!(slice_out(&out.o, row, 0, 11), alone.o);
        assert_eq!(
            slice_out(&out.selected["slc"], row, 0, 11),
            alone.selected["slc"]
        );
    }
}
