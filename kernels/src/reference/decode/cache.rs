//! The cache of one sequence: the keys and values seen so far (the shared `k`/`v` and every
//! `kv = own` branch's `k_<b>`/`v_<b>`) and, per compress branch, the compressed tokens
//! completed so far. Appending tokens pools only the compressed tokens they complete: token j
//! exists once keys [j·d, j·d + l) are all in the cache, so with stride d < block l one
//! completes at every stride once the first block is in.

use std::sync::Arc;

use nsac_dsl::spec::Compress;

use crate::io::Inputs;

use super::super::pool::{self, Pooled, PooledTokens};
use super::super::tokens::Tokens;
use super::model::Rule;
use super::tokens::{check, row};
use super::{DecodeError, Model};

/// What one sequence has seen so far.
#[derive(Debug, Clone)]
pub struct Cache {
    pub(super) model: Arc<Model>,
    /// K and V \[len, H, D\] per store of [`Model`] (shared first, then each `kv = own`).
    kv: Vec<(Tokens, Tokens)>,
    /// Per branch: the compressed tokens completed so far (compress branches only).
    compressed: Vec<Option<PooledTokens>>,
    /// How many compressed tokens this cache has pooled, over all compress branches.
    pooled: usize,
}

impl Cache {
    /// An empty cache (no token yet) of one sequence.
    pub fn new(model: Arc<Model>) -> Cache {
        let d = model.dims;
        let kv = model
            .stores
            .iter()
            .map(|_| (Tokens::empty(d.h, d.dqk), Tokens::empty(d.h, d.dv)))
            .collect();
        let compressed = model
            .rules
            .iter()
            .map(|r| {
                matches!(r, Rule::Compress { .. }).then(|| PooledTokens {
                    k: Tokens::empty(d.h, d.dqk),
                    v: Tokens::empty(d.h, d.dv),
                })
            })
            .collect();
        Cache {
            model,
            kv,
            compressed,
            pooled: 0,
        }
    }

    /// The model this cache belongs to.
    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// The number of tokens seen so far.
    pub fn len(&self) -> usize {
        self.kv[0].0.len()
    }

    /// Whether no token has been seen yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The compressed tokens of compress branch `branch` completed so far: K̃ \[N,H,Dqk\] and
    /// Ṽ \[N,H,Dv\] (equal to [`pooled`](super::super::pooled) of the forward over the tokens
    /// seen); `None` if `branch` is not a compress branch.
    pub fn compressed(&self, branch: &str) -> Option<Pooled> {
        let i = self
            .model
            .spec
            .branches
            .iter()
            .position(|b| b.name == branch)?;
        self.compressed[i].clone().map(PooledTokens::into_public)
    }

    /// How many compressed tokens this cache has pooled since it was created, over all
    /// compress branches: each is pooled once, when the token completing it arrives.
    pub fn pooled_count(&self) -> usize {
        self.pooled
    }

    /// Appends new tokens' keys and values (a chunk of [`Model::token_inputs`]; `q` and gates
    /// may be present and are ignored) and pools the compressed tokens they complete.
    pub fn append(&mut self, tokens: &Inputs) -> Result<(), DecodeError> {
        let n = check(&self.model, tokens, false)?;
        self.push(tokens, n);
        Ok(())
    }

    /// Appends `n` checked tokens, then pools what they completed.
    pub(super) fn push(&mut self, tokens: &Inputs, n: usize) {
        for ((k, v), (k_name, v_name)) in self.kv.iter_mut().zip(&self.model.stores) {
            if let (Some(kt), Some(vt)) = (tokens.get(k_name), tokens.get(v_name)) {
                for i in 0..n {
                    k.push(row(kt, i));
                    v.push(row(vt, i));
                }
            }
        }
        let len = self.len();
        let d = self.model.dims;
        for (b, rule) in self.model.rules.iter().enumerate() {
            let (Rule::Compress { c, weights }, Some(done)) = (rule, &mut self.compressed[b])
            else {
                continue;
            };
            let (k, v) = &self.kv[self.model.source[b]];
            while completes(c, done.k.len(), len) {
                let j = done.k.len();
                let (kj, vj) = pool::pool_token(c, weights.get(), (k, v), j, (d.h, d.dqk, d.dv));
                done.k.push(kj);
                done.v.push(vj);
                self.pooled += 1;
            }
        }
    }

    /// The keys and values branch `b` reads.
    pub(super) fn keys(&self, b: usize) -> (&Tokens, &Tokens) {
        let (k, v) = &self.kv[self.model.source[b]];
        (k, v)
    }

    /// The compressed tokens of branch `b` (a compress branch) completed so far.
    pub(super) fn compressed_tokens(&self, b: usize) -> Option<&PooledTokens> {
        self.compressed[b].as_ref()
    }
}

/// Whether compressed token `j` is complete in a cache of `len` tokens: j·d + l ≤ len.
fn completes(c: &Compress, j: usize, len: usize) -> bool {
    j * c.stride as usize + c.block as usize <= len
}
