//! The sequences of a call (batch rows or varlen segments) and their tensors widened to f64.
//!
//! Every rule of docs/ARCHITECTURE.md §3 works inside one sequence with positions relative to its
//! start, so the oracle cuts each input tensor into per-sequence \[T_seg, heads, dim\] blocks of
//! f64 (`f32 → f64` is exact) once, and the branch modules only ever see positions `0..T_seg`.

use std::collections::BTreeMap;

use nsac_dsl::problem::Shape;
use nsac_dsl::spec::{Branch, KvSource, Spec};

use crate::io::{InputError, Inputs, Tensor};

use super::ReferenceError;

/// One sequence of a call: tokens `start..end` of batch row `batch`.
///
/// Batched problems have one sequence `[0, T)` per row; varlen problems have B = 1 and one
/// sequence per `cu_seqlens` segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sequence {
    pub batch: usize,
    pub start: usize,
    pub end: usize,
}

impl Sequence {
    /// Number of tokens T_seg.
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// Whether the sequence holds no token (never true for a checked shape).
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

/// The sequences of `shape` in the order the per-sequence functions return them: batch rows in
/// order, and within a row the segments in order.
pub fn sequences(shape: &Shape) -> Vec<Sequence> {
    (0..shape.batch)
        .flat_map(|batch| {
            shape
                .segments
                .iter()
                .map(move |&(start, end)| Sequence { batch, start, end })
        })
        .collect()
}

/// Per-token, per-head vectors of one sequence in f64, laid out \[T_seg, heads, dim\].
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Tokens {
    data: Vec<f64>,
    len: usize,
    heads: usize,
    dim: usize,
}

impl Tokens {
    /// Builds `len × heads` vectors of length `dim` from `f(token, head)`.
    pub(crate) fn from_fn(
        len: usize,
        heads: usize,
        dim: usize,
        f: impl Fn(usize, usize) -> Vec<f64>,
    ) -> Tokens {
        let mut data = Vec::with_capacity(len * heads * dim);
        for t in 0..len {
            for h in 0..heads {
                let row = f(t, h);
                debug_assert_eq!(row.len(), dim);
                data.extend(row);
            }
        }
        Tokens {
            data,
            len,
            heads,
            dim,
        }
    }

    /// No token yet: a store that [`Tokens::push`] grows (a decode cache).
    pub(crate) fn empty(heads: usize, dim: usize) -> Tokens {
        Tokens {
            data: Vec::new(),
            len: 0,
            heads,
            dim,
        }
    }

    /// Appends one token: its `heads × dim` values, head by head.
    pub(crate) fn push(&mut self, values: impl IntoIterator<Item = f64>) {
        let before = self.data.len();
        self.data.extend(values);
        debug_assert_eq!(self.data.len() - before, self.heads * self.dim);
        self.len += 1;
    }

    /// `len × heads` zero vectors of length `dim` (a gradient accumulator).
    pub(crate) fn zeros(len: usize, heads: usize, dim: usize) -> Tokens {
        Tokens {
            data: vec![0.0; len * heads * dim],
            len,
            heads,
            dim,
        }
    }

    /// Cuts `seq` out of a checked \[B, T, heads, dim\] tensor, widening every value exactly.
    pub(crate) fn cut(tensor: &Tensor<f32>, seq: Sequence) -> Tokens {
        Tokens::cut_as(tensor, seq, tensor.shape[2], tensor.shape[3])
    }

    /// [`Tokens::cut`] for a checked \[B, T, …\] tensor whose rows of one token hold
    /// `heads × dim` values (an indexer's `k_<i>` \[B,T,Di\] is 1 × Di, its `w_<i>`
    /// \[B,T,Hi\] is Hi × 1).
    pub(crate) fn cut_as(tensor: &Tensor<f32>, seq: Sequence, heads: usize, dim: usize) -> Tokens {
        let seq_len = tensor.shape[1];
        let row = heads * dim;
        let from = (seq.batch * seq_len + seq.start) * row;
        let to = (seq.batch * seq_len + seq.end) * row;
        Tokens {
            data: tensor.data[from..to]
                .iter()
                .map(|&x| f64::from(x))
                .collect(),
            len: seq.len(),
            heads,
            dim,
        }
    }

    /// The vector of token `t`, head `h`.
    pub(crate) fn at(&self, t: usize, h: usize) -> &[f64] {
        let offset = (t * self.heads + h) * self.dim;
        &self.data[offset..offset + self.dim]
    }

    /// The vector of token `t`, head `h`, for accumulating into.
    pub(crate) fn at_mut(&mut self, t: usize, h: usize) -> &mut [f64] {
        let offset = (t * self.heads + h) * self.dim;
        &mut self.data[offset..offset + self.dim]
    }

    /// Writes these values back where [`Tokens::cut`] took them from: rows `seq` of a
    /// \[B, T, heads, dim\] tensor.
    pub(crate) fn paste(&self, tensor: &mut Tensor<f64>, seq: Sequence) {
        let row = self.heads * self.dim;
        let from = (seq.batch * tensor.shape[1] + seq.start) * row;
        tensor.data[from..from + self.data.len()].copy_from_slice(&self.data);
    }

    /// Number of tokens.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The same values as a \[len, heads, dim\] tensor.
    pub(crate) fn into_tensor(self) -> Tensor<f64> {
        Tensor {
            shape: vec![self.len, self.heads, self.dim],
            data: self.data,
        }
    }
}

/// A checked input tensor by name (a typed error instead of a panic if it is absent).
pub(crate) fn input<'a>(inputs: &'a Inputs, name: &str) -> Result<&'a Tensor<f32>, ReferenceError> {
    inputs
        .get(name)
        .ok_or_else(|| ReferenceError::Input(InputError::Missing(name.to_string())))
}

/// The activations of one sequence: the queries, the shared K/V and every `kv = own` branch's
/// K/V.
#[derive(Debug, Clone)]
pub(crate) struct SeqData {
    pub(crate) q: Tokens,
    k: Tokens,
    v: Tokens,
    own: BTreeMap<String, (Tokens, Tokens)>,
    /// Every index branch's inputs, by branch name.
    index: BTreeMap<String, IndexTokens>,
}

/// An index branch's inputs for one sequence: `q_<i>` \[T_seg, Hi, Di\], `k_<i>`
/// \[T_seg, 1, Di\] and `w_<i>` \[T_seg, Hi, 1\].
#[derive(Debug, Clone)]
pub(crate) struct IndexTokens {
    pub(crate) q: Tokens,
    pub(crate) k: Tokens,
    pub(crate) w: Tokens,
}

impl SeqData {
    /// Cuts every activation of `spec` out of the checked `inputs` for `seq`.
    pub(crate) fn load(
        spec: &Spec,
        inputs: &Inputs,
        seq: Sequence,
    ) -> Result<Self, ReferenceError> {
        let cut = |name: &str| input(inputs, name).map(|t| Tokens::cut(t, seq));
        let mut own = BTreeMap::new();
        for b in spec.branches.iter().filter(|b| b.kv == KvSource::Own) {
            let kv = (
                cut(&format!("k_{}", b.name))?,
                cut(&format!("v_{}", b.name))?,
            );
            own.insert(b.name.clone(), kv);
        }
        let mut index = BTreeMap::new();
        for b in &spec.branches {
            if let Some(i) = b.as_index() {
                let (hi, di) = (i.heads as usize, i.dim as usize);
                let tensor = |prefix: &str| input(inputs, &format!("{prefix}_{}", b.name));
                let x = IndexTokens {
                    q: Tokens::cut_as(tensor("q")?, seq, hi, di),
                    k: Tokens::cut_as(tensor("k")?, seq, 1, di),
                    w: Tokens::cut_as(tensor("w")?, seq, hi, 1),
                };
                index.insert(b.name.clone(), x);
            }
        }
        Ok(SeqData {
            q: cut("q")?,
            k: cut("k")?,
            v: cut("v")?,
            own,
            index,
        })
    }

    /// The inputs of index branch `name` (`None` if it is not one).
    pub(crate) fn index(&self, name: &str) -> Option<&IndexTokens> {
        self.index.get(name)
    }

    /// The keys and values `branch` reads: its own with `kv = own`, else the shared ones.
    pub(crate) fn kv(&self, branch: &Branch) -> (&Tokens, &Tokens) {
        match self.own.get(&branch.name) {
            Some((k, v)) => (k, v),
            None => (&self.k, &self.v),
        }
    }
}
