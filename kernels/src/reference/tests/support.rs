//! Builders for specs, shapes and inputs, and a direct (dense) attention to compare against.

use nsac_dsl::problem::{Problem, Shape};
use nsac_dsl::spec::{
    Branch, BranchKind, Combine, CombineMode, Compress, HeadDim, Heads, KvSource, Pool, Scale,
    Select, Spec, Window,
};

use crate::io::{Inputs, Tensor, random_inputs};

/// A spec combining all `branches` in order.
pub fn spec(
    causal: bool,
    (q, kv): (u32, u32),
    (qk, v): (u32, u32),
    branches: Vec<Branch>,
    mode: CombineMode,
) -> Spec {
    Spec {
        name: "test".into(),
        heads: Heads { q, kv },
        head_dim: HeadDim { qk, v },
        causal,
        scale: None,
        combine: Combine {
            mode,
            branches: branches.iter().map(|b| b.name.clone()).collect(),
        },
        branches,
    }
}

/// The same spec with an explicit softmax scale.
pub fn with_scale(mut spec: Spec, scale: f64) -> Spec {
    spec.scale = Some(Scale::new(scale));
    spec
}

pub fn compress(name: &str, block: u32, stride: u32, pool: Pool) -> Branch {
    Branch {
        name: name.into(),
        kv: KvSource::Shared,
        kind: BranchKind::Compress(Compress {
            block,
            stride,
            pool,
        }),
    }
}

pub fn select(
    name: &str,
    block: u32,
    top: u32,
    scored_by: &str,
    keep_first: u32,
    keep_last: u32,
) -> Branch {
    Branch {
        name: name.into(),
        kv: KvSource::Shared,
        kind: BranchKind::Select(Select {
            block,
            top,
            scored_by: nsac_dsl::spec::Scorer::Branch(scored_by.into()),
            keep_first,
            keep_last,
            within: None,
        }),
    }
}

pub fn window(name: &str, size: u32) -> Branch {
    Branch {
        name: name.into(),
        kv: KvSource::Shared,
        kind: BranchKind::Window(Window { size }),
    }
}

/// The branch reading its own K/V.
pub fn own(mut branch: Branch) -> Branch {
    branch.kv = KvSource::Own;
    branch
}

pub fn batched(spec: &Spec, batch: usize, len: usize) -> Shape {
    Problem::batched(batch, len).resolve(spec).unwrap()
}

pub fn varlen(spec: &Spec, cu_seqlens: &[usize]) -> Shape {
    Problem::varlen(cu_seqlens.to_vec()).resolve(spec).unwrap()
}

pub fn tensor(shape: &[usize], data: &[f32]) -> Tensor<f32> {
    assert_eq!(shape.iter().product::<usize>(), data.len());
    Tensor {
        shape: shape.to_vec(),
        data: data.to_vec(),
    }
}

/// Inputs from explicit (name, shape, values) triples.
pub fn inputs(list: &[(&str, &[usize], &[f32])]) -> Inputs {
    list.iter()
        .map(|(name, shape, data)| (name.to_string(), tensor(shape, data)))
        .collect()
}

/// Random inputs for `spec` on `shape`.
pub fn random(spec: &Spec, shape: &Shape, seed: u64) -> Inputs {
    random_inputs(spec, shape, seed)
}

/// Tokens `start..end` of batch row `row` of every [B,T,…] input (weights unchanged), as a
/// batched B = 1 call of length end − start.
pub fn slice_rows(inputs: &Inputs, row: usize, start: usize, end: usize) -> Inputs {
    inputs
        .iter()
        .map(|(name, t)| {
            let is_activation = matches!(name.as_str(), "q" | "k" | "v")
                || ["k_", "v_", "g_"].iter().any(|p| name.starts_with(p));
            if !is_activation {
                return (name.clone(), t.clone());
            }
            let inner: usize = t.shape[2..].iter().product();
            let first = (row * t.shape[1] + start) * inner;
            let last = (row * t.shape[1] + end) * inner;
            let mut shape = t.shape.clone();
            shape[0] = 1;
            shape[1] = end - start;
            let data = t.data[first..last].to_vec();
            (name.clone(), Tensor { shape, data })
        })
        .collect()
}

/// Tokens `start..end` of batch row `row` of an output tensor [B,T,…].
pub fn slice_out<T: Clone>(t: &Tensor<T>, row: usize, start: usize, end: usize) -> Tensor<T> {
    let inner: usize = t.shape[2..].iter().product();
    let first = (row * t.shape[1] + start) * inner;
    let last = (row * t.shape[1] + end) * inner;
    let mut shape = t.shape.clone();
    shape[0] = 1;
    shape[1] = end - start;
    Tensor {
        shape,
        data: t.data[first..last].to_vec(),
    }
}

/// A spec with every branch kind: compress (mean), select scored by it, window.
pub fn nsa(causal: bool, heads: (u32, u32), dims: (u32, u32), mode: CombineMode) -> Spec {
    spec(
        causal,
        heads,
        dims,
        vec![
            compress("cmp", 4, 2, Pool::Mean),
            select("slc", 3, 2, "cmp", 1, 1),
            window("win", 5),
        ],
        mode,
    )
}

/// Element `index` of a row-major tensor.
pub fn at<T: Copy>(t: &Tensor<T>, index: &[usize]) -> T {
    assert_eq!(t.shape.len(), index.len());
    let mut offset = 0;
    for (&i, &n) in index.iter().zip(&t.shape) {
        assert!(i < n, "index {index:?} out of shape {:?}", t.shape);
        offset = offset * n + i;
    }
    t.data[offset]
}

/// Asserts |a − b| ≤ tol·max(1, |b|).
#[track_caller]
pub fn assert_close(a: f64, b: f64, tol: f64) {
    assert!(
        (a - b).abs() <= tol * b.abs().max(1.0),
        "{a} != {b} (tol {tol})"
    );
}

/// Asserts two tensors have the same shape and close values.
#[track_caller]
pub fn assert_tensors_close(a: &Tensor<f64>, b: &Tensor<f64>, tol: f64) {
    assert_eq!(a.shape, b.shape);
    let scale = b.data.iter().fold(1.0f64, |m, x| m.max(x.abs()));
    let worst = a
        .data
        .iter()
        .zip(&b.data)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f64, f64::max);
    assert!(worst <= tol * scale, "max |a−b| = {worst} (tol {tol})");
}

/// Plain dense softmax attention from the input tensors `q`, `k_name`, `v_name` of a batched
/// call, where query t of row b (kv head h) may attend key k iff `allowed(b, t, h, k)`;
/// [B,T,HQ,Dv], 0 where nothing is allowed.
pub fn dense_attention(
    inputs: &Inputs,
    (k_name, v_name): (&str, &str),
    scale: f64,
    allowed: impl Fn(usize, usize, usize, usize) -> bool,
) -> Tensor<f64> {
    let (q, k, v) = (&inputs["q"], &inputs[k_name], &inputs[v_name]);
    let (b, t, hq, dqk) = (q.shape[0], q.shape[1], q.shape[2], q.shape[3]);
    let (h, dv) = (k.shape[2], v.shape[3]);
    let g = hq / h;
    let mut out = Tensor::full(vec![b, t, hq, dv], 0.0);
    for bi in 0..b {
        for ti in 0..t {
            for qh in 0..hq {
                let kvh = qh / g;
                let qv: Vec<f64> = (0..dqk)
                    .map(|e| f64::from(at(q, &[bi, ti, qh, e])))
                    .collect();
                let keys: Vec<usize> = (0..t).filter(|&kk| allowed(bi, ti, kvh, kk)).collect();
                let logits: Vec<f64> = keys
                    .iter()
                    .map(|&kk| {
                        scale
                            * (0..dqk)
                                .map(|e| qv[e] * f64::from(at(k, &[bi, kk, kvh, e])))
                                .sum::<f64>()
                    })
                    .collect();
                let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let weights: Vec<f64> = logits.iter().map(|x| (x - max).exp()).collect();
                let total: f64 = weights.iter().sum();
                for e in 0..dv {
                    let value: f64 = keys
                        .iter()
                        .zip(&weights)
                        .map(|(&kk, w)| w * f64::from(at(v, &[bi, kk, kvh, e])))
                        .sum();
                    let offset = ((bi * t + ti) * hq + qh) * dv + e;
                    out.data[offset] = if keys.is_empty() { 0.0 } else { value / total };
                }
            }
        }
    }
    out
}
