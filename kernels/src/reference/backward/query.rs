//! One query position's backward: from the forward's row (each branch's output and chosen
//! blocks) and the upstream gradient dO of that token, the gradient of its query, of its gates,
//! and the contributions to the keys/values (or compressed tokens) each branch attended.
//!
//! Combine: o = Σ_b g_b·o_b, so dg_b = dO·o_b and branch b's upstream is g_b·dO (`sum`: g = 1;
//! a branch combined twice gets both). Each branch then runs [`attend::backward`] per query head
//! over the same keys as the forward: compress over the visible compressed tokens (K̃, Ṽ), select
//! over the keys of the chosen blocks (held fixed: no gradient through the choice), window over
//! its window. A branch that is not combined (a scorer only) gets no gradient.

use super::super::call::{Call, Plan};
use super::super::pool::PooledTokens;
use super::super::run::QueryOutput;
use super::super::softmax::dot;
use super::super::tokens::SeqData;
use super::super::{compress, select, window};
use super::attend::{self, Row};

/// The contributions of one kv head of one branch: for each key it attended (a position of the
/// sequence, or a compressed token for compress branches), dK and dV.
pub(super) struct HeadGrad {
    pub(super) keys: Vec<usize>,
    /// \[keys × Dqk\]
    pub(super) dk: Vec<f64>,
    /// \[keys × Dv\]
    pub(super) dv: Vec<f64>,
}

/// Everything one query position contributes.
pub(super) struct QueryGrad {
    /// dq \[HQ × Dqk\].
    pub(super) dq: Vec<f64>,
    /// Per entry of `call.combine`: dg per query head \[HQ\] (empty for `sum`).
    pub(super) dg: Vec<Vec<f64>>,
    /// Per branch: per kv head \[H\] (empty when the branch is not combined).
    pub(super) kv: Vec<Vec<HeadGrad>>,
}

/// The backward of query `t` of the sequence (`token`: its row in \[B·T\]); `forward` is the
/// forward's row for it and `d_o` the token's dO \[HQ × Dv\].
pub(super) fn backward(
    call: &Call<'_>,
    data: &SeqData,
    pooled: &[Option<PooledTokens>],
    (t, token): (usize, usize),
    forward: &QueryOutput,
    d_o: &[f32],
) -> QueryGrad {
    let dims = &call.dims;
    let (hq, dqk, dv) = (dims.hq, dims.dqk, dims.dv);
    let d_o: Vec<f64> = d_o.iter().map(|&x| f64::from(x)).collect();
    let d_o_head = |qh: usize| &d_o[qh * dv..(qh + 1) * dv];

    // Combine: the gates' gradients and each branch's weight per query head.
    let mut weight: Vec<Option<Vec<f64>>> = vec![None; call.plans.len()];
    let mut dg = Vec::with_capacity(call.combine.len());
    for &(branch, gate) in &call.combine {
        let w = weight[branch].get_or_insert_with(|| vec![0.0; hq]);
        let mut row = Vec::new();
        for (qh, w) in w.iter_mut().enumerate() {
            match gate {
                Some(g) => {
                    *w += f64::from(g.data[token * hq + qh]);
                    row.push(dot(d_o_head(qh), &forward.branches[branch][qh]));
                }
                None => *w += 1.0,
            }
        }
        dg.push(row);
    }

    let mut dq = vec![0.0; hq * dqk];
    let mut kv = Vec::with_capacity(call.plans.len());
    let len = data.q.len();
    for (i, (branch, plan)) in call.spec.branches.iter().zip(&call.plans).enumerate() {
        let Some(w) = &weight[i] else {
            kv.push(Vec::new());
            continue;
        };
        let (k, v) = data.kv(branch);
        let none = Vec::new();
        // The K/V this branch attends and, per kv head, which of their rows.
        let (k, v, lists): (_, _, Vec<Vec<usize>>) = match (plan, &pooled[i]) {
            (Plan::Compress { params, .. }, Some(p)) => {
                let seen: Vec<usize> = (0..p.k.len())
                    .filter(|&j| compress::visible(params, dims.causal, j, t))
                    .collect();
                (&p.k, &p.v, vec![seen; dims.h])
            }
            (Plan::Compress { .. }, None) => (k, v, vec![Vec::new(); dims.h]),
            // The choice is held fixed, so every form of selection differentiates alike.
            (Plan::Select { params, .. } | Plan::Choose { params, .. }, _) => {
                let chosen = forward.chosen[i].as_ref().unwrap_or(&none);
                let lists = (0..dims.h)
                    .map(|kvh| {
                        let blocks = chosen.get(kvh).map_or(&[][..], Vec::as_slice);
                        select::keys(params, dims.causal, blocks, t, len)
                    })
                    .collect();
                (k, v, lists)
            }
            (Plan::Window(win), _) => {
                let keys: Vec<usize> = window::keys(win, dims.causal, t, len).collect();
                (k, v, vec![keys; dims.h])
            }
            // An indexer only chooses, and the choice passes no gradient.
            (Plan::Index(_), _) => (k, v, vec![Vec::new(); dims.h]),
        };
        let mut heads = Vec::with_capacity(dims.h);
        for (kvh, list) in lists.into_iter().enumerate() {
            let keys: Vec<&[f64]> = list.iter().map(|&j| k.at(j, kvh)).collect();
            let values: Vec<&[f64]> = list.iter().map(|&j| v.at(j, kvh)).collect();
            let mut head = HeadGrad {
                dk: vec![0.0; list.len() * dqk],
                dv: vec![0.0; list.len() * dv],
                keys: list,
            };
            for qh in kvh * dims.group..(kvh + 1) * dims.group {
                let upstream: Vec<f64> = d_o_head(qh).iter().map(|x| w[qh] * x).collect();
                let row = Row {
                    q: data.q.at(t, qh),
                    keys: &keys,
                    values: &values,
                    scale: dims.scale,
                    d_o: &upstream,
                };
                let dq_head = &mut dq[qh * dqk..(qh + 1) * dqk];
                attend::backward(&row, dq_head, &mut head.dk, &mut head.dv);
            }
            heads.push(head);
        }
        kv.push(heads);
    }
    QueryGrad { dq, dg, kv }
}
