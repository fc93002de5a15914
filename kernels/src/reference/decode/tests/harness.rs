//! The one check every decode test uses: decode each sequence of a forward call by a schedule
//! (prefill a context, then chunks, then single steps) and compare every answered row with
//! the forward's rows, the chosen blocks with its `idx_<b>`, and the caches' compressed tokens
//! with its pooled K̃/Ṽ.
//!
//! The comparison is exact (f64 `==`, so ±0 compare equal): decode sums in the forward's order
//! (the same pooling, softmax and block-score helpers over the same keys in the same order,
//! branches added in the combine's order), so any difference at all is a bug, not rounding.

use std::sync::Arc;

use nsac_dsl::problem::Shape;
use nsac_dsl::spec::Spec;

use crate::io::{Inputs, Tensor};
use crate::reference::decode::{Cache, Decoded, Model, cut_tokens, prefill, step_batch};
use crate::reference::{Output, Sequence, forward, pooled, sequences};

/// How one sequence is decoded: prefill `context` tokens (no queries answered), then chunks
/// of the given sizes (clipped to what is left), then single steps to the end.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub context: usize,
    pub chunks: Vec<usize>,
}

impl Schedule {
    pub fn steps_after(context: usize) -> Schedule {
        Schedule {
            context,
            chunks: Vec::new(),
        }
    }
}

/// Rows `from..from + n` of sequence `seq` of a forward tensor \[B,T,…\], flat.
fn rows<T: Clone>(t: &Tensor<T>, seq: Sequence, from: usize, n: usize) -> Vec<T> {
    let inner: usize = t.shape[2..].iter().product();
    let first = (seq.batch * t.shape[1] + seq.start + from) * inner;
    t.data[first..first + n * inner].to_vec()
}

/// Asserts that `got` is exactly rows `from..` of `seq` of the forward's `want`.
#[track_caller]
pub fn assert_rows(want: &Output, seq: Sequence, from: usize, got: &Decoded) {
    let n = got.o.shape[0];
    let at = format!("{seq:?}, rows {from}..{}", from + n);
    assert_eq!(got.o.shape[1..], want.o.shape[2..], "{at}");
    assert!(
        rows(&want.o, seq, from, n) == got.o.data,
        "o differs at {at}"
    );
    assert_eq!(got.branches.len(), want.branches.len());
    for (name, tensor) in &want.branches {
        assert!(
            rows(tensor, seq, from, n) == got.branches[name].data,
            "o_{name} differs at {at}"
        );
    }
    assert_eq!(got.selected.len(), want.selected.len());
    for (name, tensor) in &want.selected {
        assert_eq!(got.selected[name].shape[1..], tensor.shape[2..], "{at}");
        assert_eq!(
            rows(tensor, seq, from, n),
            got.selected[name].data,
            "idx_{name} differs at {at}"
        );
    }
}

/// The cache's compressed tokens equal the forward's pooled tokens of sequence `index`
/// (which the cache has seen completely).
#[track_caller]
pub fn assert_compressed(spec: &Spec, shape: &Shape, inputs: &Inputs, index: usize, cache: &Cache) {
    for b in spec.branches.iter().filter(|b| b.as_compress().is_some()) {
        let want = &pooled(spec, shape, inputs, &b.name).unwrap()[index];
        assert!(
            cache.compressed(&b.name).as_ref() == Some(want),
            "compressed tokens of {} differ",
            b.name
        );
    }
}

/// Decodes every sequence of the call by `schedule(i)` (i: its index in [`sequences`]) and
/// checks everything against the forward. Returns the number of rows compared.
pub fn check_decode(
    spec: &Spec,
    shape: &Shape,
    inputs: &Inputs,
    schedule: impl Fn(usize) -> Schedule,
) -> usize {
    let want = forward(spec, shape, inputs).unwrap();
    let model = Arc::new(Model::from_inputs(spec, shape, inputs).unwrap());
    let cut = |seq, range| cut_tokens(spec, shape, inputs, seq, range).unwrap();
    let mut compared = 0;
    for (i, seq) in sequences(shape).into_iter().enumerate() {
        let plan = schedule(i);
        let len = seq.len();
        let mut pos = plan.context.min(len);
        let mut cache = prefill(&model, &cut(seq, 0..pos)).unwrap();
        assert_eq!(cache.len(), pos);
        for &size in &plan.chunks {
            let n = size.min(len - pos);
            let got = cache.chunk(&cut(seq, pos..pos + n)).unwrap();
            assert_rows(&want, seq, pos, &got);
            pos += n;
            compared += n;
        }
        while pos < len {
            let got = cache.step(&cut(seq, pos..pos + 1)).unwrap();
            assert_rows(&want, seq, pos, &got);
            pos += 1;
            compared += 1;
        }
        assert_eq!(cache.len(), len);
        assert_compressed(spec, shape, inputs, i, &cache);
    }
    compared
}

/// A ragged batch: every sequence prefilled with its own context, then stepped in lockstep
/// with [`step_batch`] — each round steps the sequences still short of their end — until all
/// are done. Returns the number of rows compared.
pub fn check_ragged(spec: &Spec, shape: &Shape, inputs: &Inputs, contexts: &[usize]) -> usize {
    let want = forward(spec, shape, inputs).unwrap();
    let model = Arc::new(Model::from_inputs(spec, shape, inputs).unwrap());
    let seqs = sequences(shape);
    assert_eq!(seqs.len(), contexts.len());
    let cut = |seq, range| cut_tokens(spec, shape, inputs, seq, range).unwrap();
    // The live sequences' indices and their caches, side by side.
    let mut ids: Vec<usize> = (0..seqs.len()).collect();
    let mut caches: Vec<Cache> = seqs
        .iter()
        .zip(contexts)
        .map(|(&seq, &c)| prefill(&model, &cut(seq, 0..c)).unwrap())
        .collect();
    let mut compared = 0;
    loop {
        let done: Vec<bool> = ids
            .iter()
            .zip(&caches)
            .map(|(&i, c)| c.len() == seqs[i].len())
            .collect();
        for (&i, cache) in ids
            .iter()
            .zip(&caches)
            .zip(&done)
            .filter(|(_, d)| **d)
            .map(|(x, _)| x)
        {
            assert_compressed(spec, shape, inputs, i, cache);
        }
        let mut keep = done.iter().map(|d| !d);
        caches.retain(|_| keep.next().unwrap_or(false));
        let mut keep = done.iter().map(|d| !d);
        ids.retain(|_| keep.next().unwrap_or(false));
        if ids.is_empty() {
            break;
        }
        let tokens: Vec<Inputs> = ids
            .iter()
            .zip(&caches)
            .map(|(&i, c)| cut(seqs[i], c.len()..c.len() + 1))
            .collect();
        let got = step_batch(&mut caches, &tokens).unwrap();
        for ((&i, cache), got) in ids.iter().zip(&caches).zip(&got) {
            assert_rows(&want, seqs[i], cache.len() - 1, got);
            compared += 1;
        }
    }
    compared
}
