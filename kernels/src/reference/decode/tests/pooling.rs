//! Appending pools only the compressed tokens the new keys complete — counted through the
//! cache's [`Cache::pooled_count`], never timed — and the compressed tokens equal the
//! forward's pooled K̃/Ṽ at every length.

use std::sync::Arc;

use nsac_dsl::spec::{CombineMode, Pool};

use crate::reference::decode::{Cache, Model, cut_tokens};
use crate::reference::pool::token_count;
use crate::reference::sequences;
use crate::reference::tests::support::*;

#[test]
fn appending_pools_only_the_newly_completed_tokens() {
    // Two compress branches: 4/2 (mean, shared K/V) and 6/3 (linear, own K/V).
    let spec = spec(
        true,
        (2, 1),
        (3, 2),
        vec![
            compress("a", 4, 2, Pool::Mean),
            own(compress("b", 6, 3, Pool::Linear)),
        ],
        CombineMode::Sum,
    );
    let (ca, cb) = (
        *spec.branches[0].as_compress().unwrap(),
        *spec.branches[1].as_compress().unwrap(),
    );
    let shape = batched(&spec, 1, 40);
    let inputs = random(&spec, &shape, 11);
    let seq = sequences(&shape)[0];
    let model = Arc::new(Model::from_inputs(&spec, &shape, &inputs).unwrap());
    let mut cache = Cache::new(model);
    let mut counts = Vec::new();
    for t in 0..40 {
        let before = cache.pooled_count();
        cache
            .append(&cut_tokens(&spec, &shape, &inputs, seq, t..t + 1).unwrap())
            .unwrap();
        let len = t + 1;
        // One token completes a compressed token of a branch exactly when len − l is a
        // multiple of d: at most one per branch, whatever the length so far.
        let new = [ca, cb]
            .iter()
            .filter(|c| {
                len >= c.block as usize
                    && (len - c.block as usize).is_multiple_of(c.stride as usize)
            })
            .count();
        assert_eq!(cache.pooled_count() - before, new, "len {len}");
        assert_eq!(
            cache.pooled_count(),
            token_count(len, &ca) + token_count(len, &cb)
        );
        counts.push(cache.compressed("a").unwrap().k.shape[0]);
        // The compressed tokens so far are the forward's pooled tokens over the prefix.
        let prefix = batched(&spec, 1, len);
        let part = slice_rows(&inputs, 0, 0, len);
        for name in ["a", "b"] {
            let want = &crate::reference::pooled(&spec, &prefix, &part, name).unwrap()[0];
            assert!(
                cache.compressed(name).as_ref() == Some(want),
                "{name} at len {len}"
            );
        }
    }
    // Block 4, stride 2: tokens complete at lengths 4, 6, 8, …
    assert_eq!(counts[..10], [0, 0, 0, 1, 1, 2, 2, 3, 3, 4]);
    assert!(cache.compressed("missing").is_none());
}

#[test]
fn a_chunk_pools_what_it_completes_once() {
    let spec = nsa(true, (2, 1), (4, 3), CombineMode::Gate);
    let c = *spec.branches[0].as_compress().unwrap();
    let shape = batched(&spec, 1, 50);
    let inputs = random(&spec, &shape, 2);
    let seq = sequences(&shape)[0];
    let model = Arc::new(Model::from_inputs(&spec, &shape, &inputs).unwrap());
    let mut cache = Cache::new(model);
    let mut pos = 0;
    for size in [3, 1, 12, 0, 9, 25] {
        let before = cache.pooled_count();
        cache
            .chunk(&cut_tokens(&spec, &shape, &inputs, seq, pos..pos + size).unwrap())
            .unwrap();
        pos += size;
        assert_eq!(
            cache.pooled_count() - before,
            token_count(pos, &c) - token_count(pos - size, &c)
        );
    }
    // Over the whole sequence each compressed token was pooled exactly once.
    assert_eq!(cache.pooled_count(), token_count(50, &c));
}
