//! The decode model: a causal spec checked once, with its concrete sizes, each branch's rule and
//! its pool weights owned, and the names and shapes of the tensors each new token brings — what
//! every [`Cache`](super::Cache) of a batch shares (behind an `Arc`).

use nsac_dsl::problem::{DType, Problem, Sequences, Shape};
use nsac_dsl::spec::{CombineMode, Compress, HeadDim, Heads, KvSource, Select, Spec, Window};

use crate::io::{InputError, InputKind, InputSpec, Inputs, Tensor, expected_inputs};

use super::super::ReferenceError;
use super::super::call::{self, Dims, Plan, PoolWeights};
use super::DecodeError;
use super::tokens::check_tensor;

/// A spec ready for cached inference: checked, with its sizes and pool weights.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    pub(super) spec: Spec,
    pub(super) dims: Dims,
    /// One rule per branch of `spec.branches`, same order.
    pub(super) rules: Vec<Rule>,
    /// The K/V stores a cache keeps, as (key tensor, value tensor) names: the shared `k`, `v`
    /// first, then each `kv = own` branch's `k_<b>`, `v_<b>`.
    pub(super) stores: Vec<(String, String)>,
    /// Per branch: the index in `stores` of the K/V it reads.
    pub(super) source: Vec<usize>,
    /// The combined branches in order: (branch index, its gate's name when gated).
    pub(super) combine: Vec<(usize, Option<String>)>,
    /// The tensors one new token brings.
    pub(super) per_token: Vec<TokenTensor>,
}

/// One branch, resolved, with its weights owned.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Rule {
    Compress {
        c: Compress,
        weights: Weights,
    },
    Select {
        s: Select,
        /// Index of the scoring compress branch.
        scorer: usize,
        c: Compress,
    },
    Window(Window),
}

/// A compress branch's pool weights, owned.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Weights {
    Mean,
    Weighted(Tensor<f32>),
    Linear { wk: Tensor<f32>, wv: Tensor<f32> },
}

impl Weights {
    pub(super) fn get(&self) -> PoolWeights<'_> {
        match self {
            Weights::Mean => PoolWeights::Mean,
            Weights::Weighted(w) => PoolWeights::Weighted(w),
            Weights::Linear { wk, wv } => PoolWeights::Linear { wk, wv },
        }
    }
}

/// A tensor every new token brings: its name, its shape per token, and whether it is a key or
/// value tensor (what [`Cache::append`](super::Cache::append) needs) rather than a query or gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TokenTensor {
    pub(super) name: String,
    pub(super) dims: Vec<usize>,
    pub(super) kind: InputKind,
    pub(super) kv: bool,
}

impl Model {
    /// Checks `spec` for decoding with `heads` and `head_dim`, and takes its pool weights:
    /// `weights` holds exactly the weight tensors of the forward's contract (`w_<c>`, `wk_<c>`,
    /// `wv_<c>`; empty for mean pooling). Non-causal specs are refused
    /// ([`DecodeError::NotCausal`]).
    pub fn new(
        spec: &Spec,
        heads: Heads,
        head_dim: HeadDim,
        weights: &Inputs,
    ) -> Result<Model, DecodeError> {
        if !spec.causal {
            return Err(DecodeError::NotCausal(spec.name.clone()));
        }
        // One token of one sequence: the shape every per-token size is read from.
        let shape = Problem {
            sequences: Sequences::Batched { batch: 1, len: 1 },
            heads: Some(heads),
            head_dim: Some(head_dim),
            dtype: DType::F32,
        }
        .resolve(spec)?;
        call::forward_only(spec, "decode")?;
        let dims = call::check_shape(spec, &shape)?;
        call::check_names(spec)?;
        call::check_sizes(spec, &shape)?;
        let expected = expected_inputs(spec, &shape);
        check_weights(&expected, weights)?;
        let rules = spec
            .branches
            .iter()
            .map(|b| call::plan(spec, weights, &b.name, &b.kind).and_then(|p| owned(&b.name, p)))
            .collect::<Result<Vec<_>, _>>()?;
        let mut stores = vec![("k".to_string(), "v".to_string())];
        let source = spec
            .branches
            .iter()
            .map(|b| match b.kv {
                KvSource::Shared => 0,
                KvSource::Own => {
                    stores.push((format!("k_{}", b.name), format!("v_{}", b.name)));
                    stores.len() - 1
                }
            })
            .collect();
        let combine = spec
            .combine
            .branches
            .iter()
            .map(|name| {
                let index = call::branch_index(spec, name, "combine")?;
                let gate = (spec.combine.mode == CombineMode::Gate).then(|| format!("g_{name}"));
                Ok((index, gate))
            })
            .collect::<Result<Vec<_>, ReferenceError>>()?;
        let per_token = expected
            .into_iter()
            .filter(is_per_token)
            .map(|e| TokenTensor {
                kv: stores.iter().any(|(k, v)| *k == e.name || *v == e.name),
                dims: e.shape[2..].to_vec(),
                kind: e.kind,
                name: e.name,
            })
            .collect();
        Ok(Model {
            spec: spec.clone(),
            dims,
            rules,
            stores,
            source,
            combine,
            per_token,
        })
    }

    /// The model of a forward call: the heads, head dims and pool weights of `shape` and
    /// `inputs` (the whole call is checked; its activations are not kept).
    pub fn from_inputs(spec: &Spec, shape: &Shape, inputs: &Inputs) -> Result<Model, DecodeError> {
        if !spec.causal {
            return Err(DecodeError::NotCausal(spec.name.clone()));
        }
        call::Call::new(spec, shape, inputs)?;
        let weights: Inputs = expected_inputs(spec, shape)
            .into_iter()
            .filter(|e| !is_per_token(e))
            .filter_map(|e| inputs.get(&e.name).map(|t| (e.name, t.clone())))
            .collect();
        Model::new(spec, shape.heads, shape.head_dim, &weights)
    }

    /// The spec.
    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    /// The tensors a chunk of `n` new tokens of one sequence holds, named as in the forward's
    /// contract and shaped like its \[B,T,…\] tensors without B: `q` \[n,HQ,Dqk\], `k`
    /// \[n,H,Dqk\], `v` \[n,H,Dv\], `k_<b>`/`v_<b>` for `kv = own`, `g_<b>` \[n,HQ\] per gate.
    pub fn token_inputs(&self, n: usize) -> Vec<InputSpec> {
        self.per_token
            .iter()
            .map(|t| InputSpec {
                name: t.name.clone(),
                shape: std::iter::once(n).chain(t.dims.iter().copied()).collect(),
                kind: t.kind,
            })
            .collect()
    }
}

/// Whether an input of the forward's contract comes one row per token (activations and
/// gates), rather than once per call (pool weights).
pub(super) fn is_per_token(e: &InputSpec) -> bool {
    matches!(e.kind, InputKind::Activation | InputKind::Gate)
}

/// `weights` holds exactly the weight tensors of `expected`, with their shapes, finite.
fn check_weights(expected: &[InputSpec], weights: &Inputs) -> Result<(), DecodeError> {
    let wanted: Vec<&InputSpec> = expected.iter().filter(|e| !is_per_token(e)).collect();
    for e in &wanted {
        check_tensor(&e.name, &e.shape, weights.get(&e.name))?;
    }
    if let Some(name) = weights
        .keys()
        .find(|n| !wanted.iter().any(|e| &e.name == *n))
    {
        let names: Vec<&str> = wanted.iter().map(|e| e.name.as_str()).collect();
        return Err(InputError::Unexpected(name.clone(), names.join(", ")).into());
    }
    Ok(())
}

/// The decode rule of one resolved branch; the forms beyond NSA's blocks were refused before
/// (`call::forward_only`), so meeting one here is an error, not a panic.
fn owned(name: &str, plan: Plan<'_>) -> Result<Rule, ReferenceError> {
    Ok(match plan {
        Plan::Compress { params, weights } => Rule::Compress {
            c: params,
            weights: match weights {
                PoolWeights::Mean => Weights::Mean,
                PoolWeights::Weighted(w) => Weights::Weighted(w.clone()),
                PoolWeights::Linear { wk, wv } => Weights::Linear {
                    wk: wk.clone(),
                    wv: wv.clone(),
                },
            },
        },
        Plan::Select {
            params,
            scorer,
            scorer_params,
        } => Rule::Select {
            s: params.clone(),
            scorer,
            c: scorer_params,
        },
        Plan::Window(w) => Rule::Window(w),
        Plan::Index(_) | Plan::Choose { .. } => {
            return Err(ReferenceError::WrongKind {
                branch: name.to_string(),
                expected: "compress, NSA-form select or window (decode)",
            });
        }
    })
}
