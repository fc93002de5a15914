//! The tensor contract of a spec: which named tensors a call reads and writes, their shapes,
//! and random inputs for tests and demos.
//!
//! Every backend and the oracle agree on these names (documented in the README):
//! `q` `[B,T,HQ,Dqk]`, `k` `[B,T,H,Dqk]`, `v` `[B,T,H,Dv]`; per gated branch `g_<b>` `[B,T,HQ]`;
//! per `kv = own` branch `k_<b>`, `v_<b>`; per weighted compress branch `w_<b>` `[H,l]`; per linear
//! compress branch `wk_<b>` `[H,l·Dqk,Dqk]` and `wv_<b>` `[H,l·Dv,Dv]`; per index branch
//! `q_<i>` `[B,T,Hi,Di]`, `k_<i>` `[B,T,Di]`, `w_<i>` `[B,T,Hi]`; per given select branch
//! `idx_<s>` `[B,T,H,top]` (block indices held as f32 integers, −1 for an unused slot).
//! Outputs: `o` `[B,T,HQ,Dv]`,
//! per branch `o_<b>` `[B,T,HQ,Dv]`, per select branch `idx_<b>` `[B,T,H,top]` (int32, −1 padded).

use std::collections::BTreeMap;

use nsac_dsl::problem::Shape;
use nsac_dsl::spec::{BranchKind, CombineMode, KvSource, Pool, Scorer, Spec};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal, Uniform};

/// A dense row-major host tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor<T> {
    pub shape: Vec<usize>,
    pub data: Vec<T>,
}

impl<T: Clone> Tensor<T> {
    /// A tensor of `shape` filled with `value`.
    pub fn full(shape: Vec<usize>, value: T) -> Self {
        let n = shape.iter().product();
        Tensor {
            shape,
            data: vec![value; n],
        }
    }
}

impl<T> Tensor<T> {
    /// Number of elements the shape describes.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Named input tensors of one call (f32; the oracle widens them to f64 exactly).
pub type Inputs = BTreeMap<String, Tensor<f32>>;

/// How an input tensor's values are drawn at random.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    /// q, k, v and own K/V: standard normal.
    Activation,
    /// Gates: uniform in (0, 1), as after the model's sigmoid.
    Gate,
    /// Pool weights: normal, scaled by 1/√fan_in.
    Weight { fan_in: usize },
    /// An index branch's per-token head weights `w_<i>` \[B,T,Hi\]: normal, scaled by
    /// 1/√Hi (one row per token, unlike the pool weights).
    TokenWeight { heads: usize },
    /// A given selection `idx_<s>` \[B,T,H,top\]: integers; random inputs draw, per row, the
    /// min(top, #candidates) distinct candidate blocks (of `block` keys) ascending, then −1.
    Indices { block: usize, causal: bool },
}

/// One tensor a spec reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub kind: InputKind,
}

/// The tensors a call of `spec` on `shape` reads, in a stable order.
pub fn expected_inputs(spec: &Spec, shape: &Shape) -> Vec<InputSpec> {
    let (b, t) = (shape.batch, shape.seq_len);
    let (hq, h) = (shape.heads.q as usize, shape.heads.kv as usize);
    let (dqk, dv) = (shape.head_dim.qk as usize, shape.head_dim.v as usize);
    let act = |name: String, shape: Vec<usize>| InputSpec {
        name,
        shape,
        kind: InputKind::Activation,
    };
    let mut out = vec![
        act("q".into(), vec![b, t, hq, dqk]),
        act("k".into(), vec![b, t, h, dqk]),
        act("v".into(), vec![b, t, h, dv]),
    ];
    for br in &spec.branches {
        if br.kv == KvSource::Own {
            out.push(act(format!("k_{}", br.name), vec![b, t, h, dqk]));
            out.push(act(format!("v_{}", br.name), vec![b, t, h, dv]));
        }
        if let BranchKind::Index(i) = &br.kind {
            let (hi, di) = (i.heads as usize, i.dim as usize);
            out.push(act(format!("q_{}", br.name), vec![b, t, hi, di]));
            out.push(act(format!("k_{}", br.name), vec![b, t, di]));
            out.push(InputSpec {
                name: format!("w_{}", br.name),
                shape: vec![b, t, hi],
                kind: InputKind::TokenWeight { heads: hi },
            });
        }
        if let BranchKind::Select(s) = &br.kind
            && s.scored_by == Scorer::Given
        {
            out.push(InputSpec {
                name: format!("idx_{}", br.name),
                shape: vec![b, t, h, s.top as usize],
                kind: InputKind::Indices {
                    block: s.block as usize,
                    causal: spec.causal,
                },
            });
        }
        if let BranchKind::Compress(c) = &br.kind {
            let l = c.block as usize;
            match c.pool {
                Pool::Mean => {}
                Pool::Weighted => out.push(InputSpec {
                    name: format!("w_{}", br.name),
                    shape: vec![h, l],
                    kind: InputKind::Weight { fan_in: l },
                }),
                Pool::Linear => {
                    out.push(InputSpec {
                        name: format!("wk_{}", br.name),
                        shape: vec![h, l * dqk, dqk],
                        kind: InputKind::Weight { fan_in: l * dqk },
                    });
                    out.push(InputSpec {
                        name: format!("wv_{}", br.name),
                        shape: vec![h, l * dv, dv],
                        kind: InputKind::Weight { fan_in: l * dv },
                    });
                }
            }
        }
    }
    if spec.combine.mode == CombineMode::Gate {
        for name in &spec.combine.branches {
            out.push(InputSpec {
                name: format!("g_{name}"),
                shape: vec![b, t, hq],
                kind: InputKind::Gate,
            });
        }
    }
    out
}

/// Random inputs for `spec` on `shape`, reproducible from `seed` on every platform.
pub fn random_inputs(spec: &Spec, shape: &Shape, seed: u64) -> Inputs {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut inputs = Inputs::new();
    for input in expected_inputs(spec, shape) {
        let n: usize = input.shape.iter().product();
        let data: Vec<f32> = match input.kind {
            InputKind::Activation => (0..n).map(|_| StandardNormal.sample(&mut rng)).collect(),
            InputKind::Gate => {
                let u = Uniform::new(0.0f32, 1.0).expect("constant bounds are valid");
                (0..n).map(|_| u.sample(&mut rng)).collect()
            }
            InputKind::Weight { fan_in } => {
                let s = 1.0 / (fan_in as f32).sqrt();
                (0..n)
                    .map(|_| {
                        let x: f32 = StandardNormal.sample(&mut rng);
                        s * x
                    })
                    .collect()
            }
            InputKind::TokenWeight { heads } => {
                let s = 1.0 / (heads as f32).sqrt();
                (0..n)
                    .map(|_| {
                        let x: f32 = StandardNormal.sample(&mut rng);
                        s * x
                    })
                    .collect()
            }
            InputKind::Indices { block, causal } => {
                random_indices(&input.shape, shape, block, causal, &mut rng)
            }
        };
        inputs.insert(
            input.name,
            Tensor {
                shape: input.shape,
                data,
            },
        );
    }
    inputs
}

/// Random given blocks \[B,T,H,top\]: per row the min(top, #candidates) distinct candidate
/// blocks of its sequence (causal: starting at or before the query), ascending, then −1.
fn random_indices(
    dims: &[usize],
    shape: &Shape,
    block: usize,
    causal: bool,
    rng: &mut ChaCha8Rng,
) -> Vec<f32> {
    let (h, top) = (dims[2], dims[3]);
    let mut data = vec![-1.0f32; dims.iter().product()];
    for batch in 0..shape.batch {
        for &(start, end) in &shape.segments {
            let len = end - start;
            let nb = len.div_ceil(block.max(1));
            for pos in 0..len {
                let candidates = if causal { pos / block.max(1) + 1 } else { nb };
                for kvh in 0..h {
                    let row = ((batch * shape.seq_len + start + pos) * h + kvh) * top;
                    // A partial Fisher–Yates shuffle of the candidates picks the first `top`.
                    let mut pool: Vec<usize> = (0..candidates).collect();
                    let take = top.min(candidates);
                    for i in 0..take {
                        let j = Uniform::new(i, candidates)
                            .expect("i < candidates")
                            .sample(rng);
                        pool.swap(i, j);
                    }
                    let mut chosen = pool[..take].to_vec();
                    chosen.sort_unstable();
                    for (slot, b) in data[row..row + top].iter_mut().zip(chosen) {
                        *slot = b as f32;
                    }
                }
            }
        }
    }
    data
}

/// A standard-normal upstream gradient `do` \[B,T,HQ,Dv\] for `shape`, reproducible from
/// `seed` on every platform (its stream differs from [`random_inputs`]' for the same seed).
pub fn random_upstream(shape: &Shape, seed: u64) -> Tensor<f32> {
    let dims = shape.output_dims().to_vec();
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x00d0_d0d0);
    let n = dims.iter().product();
    Tensor {
        shape: dims,
        data: (0..n).map(|_| StandardNormal.sample(&mut rng)).collect(),
    }
}

/// Why a set of inputs does not fit a spec and problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error("missing input tensor `{0}`")]
    Missing(String),
    #[error("input tensor `{name}` has shape {got:?}, expected {expected:?}")]
    BadShape {
        name: String,
        got: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("input tensor `{name}` holds {got} values but its shape {shape:?} needs {expected}")]
    BadLength {
        name: String,
        shape: Vec<usize>,
        got: usize,
        expected: usize,
    },
    #[error("input tensor `{0}` holds a NaN or infinite value")]
    NonFinite(String),
    #[error("unexpected input tensor `{0}` (this spec reads: {1})")]
    Unexpected(String, String),
    #[error("input tensor `{0}` holds block indices, but a value is not an integer ≥ -1")]
    NotIndex(String),
}

/// Checks that `inputs` holds exactly the tensors `spec` reads on `shape`, with finite values.
pub fn check_inputs(spec: &Spec, shape: &Shape, inputs: &Inputs) -> Result<(), InputError> {
    let expected = expected_inputs(spec, shape);
    for e in &expected {
        let t = inputs
            .get(&e.name)
            .ok_or_else(|| InputError::Missing(e.name.clone()))?;
        if t.shape != e.shape {
            return Err(InputError::BadShape {
                name: e.name.clone(),
                got: t.shape.clone(),
                expected: e.shape.clone(),
            });
        }
        if t.data.len() != t.numel() {
            return Err(InputError::BadLength {
                name: e.name.clone(),
                shape: t.shape.clone(),
                got: t.data.len(),
                expected: t.numel(),
            });
        }
        if t.data.iter().any(|x| !x.is_finite()) {
            return Err(InputError::NonFinite(e.name.clone()));
        }
        if matches!(e.kind, InputKind::Indices { .. })
            && t.data.iter().any(|x| x.fract() != 0.0 || *x < -1.0)
        {
            return Err(InputError::NotIndex(e.name.clone()));
        }
    }
    for name in inputs.keys() {
        if !expected.iter().any(|e| &e.name == name) {
            let names: Vec<&str> = expected.iter().map(|e| e.name.as_str()).collect();
            return Err(InputError::Unexpected(name.clone(), names.join(", ")));
        }
    }
    Ok(())
}

/// A borrowed dense row-major tensor: the caller's memory, read in place (no copy).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TensorRef<'a, T> {
    pub shape: &'a [usize],
    pub data: &'a [T],
}

impl<'a, T> From<&'a Tensor<T>> for TensorRef<'a, T> {
    fn from(t: &'a Tensor<T>) -> Self {
        TensorRef {
            shape: &t.shape,
            data: &t.data,
        }
    }
}

/// Named borrowed input tensors of one call (what a backend reads in place).
pub type InputRefs<'a> = BTreeMap<&'a str, TensorRef<'a, f32>>;

/// Borrows every tensor of `inputs`.
pub fn input_refs(inputs: &Inputs) -> InputRefs<'_> {
    inputs
        .iter()
        .map(|(k, t)| (k.as_str(), TensorRef::from(t)))
        .collect()
}
