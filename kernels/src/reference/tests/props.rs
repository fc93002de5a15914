//! Properties on random specs and inputs (odd lengths, several seeds): branch outputs are
//! convex combinations of what they attend, the chosen blocks are exactly the top-k of the
//! block scores, selecting everything / a window ≥ T is plain dense attention, and varlen
//! segments are independent sequences.

use nsac_dsl::problem::Shape;
use nsac_dsl::spec::{CombineMode, Pool, Spec};
use proptest::prelude::*;

use super::support::*;
use crate::io::Inputs;
use crate::reference::score::{block_count, is_candidate, is_forced, is_valid_choice};
use crate::reference::{Output, block_scores, forward, pooled};

const TOL: f64 = 1e-12;

/// A random NSA-like spec, a batched shape and its random inputs.
#[derive(Debug, Clone)]
struct Case {
    spec: Spec,
    shape: Shape,
    inputs: Inputs,
}

prop_compose! {
    fn any_case()(
        causal in any::<bool>(),
        kv in 1u32..3,
        group in 1u32..4,
        dqk in 1u32..6,
        dv in 1u32..5,
        block in 1u32..7,
        stride in 1u32..7,
        sel_block in 1u32..8,
        top in 0u32..5,
        keep_first in 0u32..3,
        keep_last in 0u32..3,
        win in 1u32..9,
        batch in 1usize..3,
        len in 1usize..40,
        seed in any::<u64>(),
    ) -> Case {
        let spec = spec(
            causal,
            (kv * group, kv),
            (dqk, dv),
            vec![
                compress("cmp", block, 1 + (stride - 1) % block, Pool::Mean),
                select("slc", sel_block, top, "cmp", keep_first, keep_last),
                window("win", win),
            ],
            CombineMode::Gate,
        );
        let shape = batched(&spec, batch, len);
        let inputs = random(&spec, &shape, seed);
        Case { spec, shape, inputs }
    }
}

/// The parameters of the random spec's branches.
fn params(spec: &Spec) -> (nsac_dsl::spec::Compress, nsac_dsl::spec::Select, u32) {
    let c = *spec.branches[0].as_compress().unwrap();
    let s = spec.branches[1].as_select().unwrap().clone();
    let w = spec.branches[2].as_window().unwrap().size;
    (c, s, w)
}

/// Asserts `o` (length Dv) lies within the element-wise min/max of `values`, or is exactly
/// zero when `values` is empty.
fn assert_convex(o: &[f64], values: &[Vec<f64>], what: &str) -> Result<(), TestCaseError> {
    if values.is_empty() {
        prop_assert!(o.iter().all(|&x| x == 0.0), "{what}: empty row gave {o:?}");
        return Ok(());
    }
    for (e, &x) in o.iter().enumerate() {
        let lo = values.iter().map(|v| v[e]).fold(f64::INFINITY, f64::min);
        let hi = values
            .iter()
            .map(|v| v[e])
            .fold(f64::NEG_INFINITY, f64::max);
        prop_assert!(
            lo - TOL <= x && x <= hi + TOL,
            "{what}: {x} outside [{lo}, {hi}]"
        );
    }
    Ok(())
}

fn row(t: &crate::io::Tensor<f64>, b: usize, pos: usize, qh: usize) -> Vec<f64> {
    let dv = t.shape[3];
    (0..dv).map(|e| at(t, &[b, pos, qh, e])).collect()
}

fn chosen(out: &Output, b: usize, pos: usize, kvh: usize) -> Vec<usize> {
    let idx = &out.selected["slc"];
    (0..idx.shape[3])
        .map(|n| at(idx, &[b, pos, kvh, n]))
        .filter(|&i| i >= 0)
        .map(|i| i as usize)
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn branch_outputs_are_convex_combinations(case in any_case()) {
        let Case { spec, shape, inputs } = case;
        let (c, s, w) = params(&spec);
        let out = forward(&spec, &shape, &inputs).unwrap();
        let pooled = pooled(&spec, &shape, &inputs, "cmp").unwrap();
        let (len, hq, h) = (shape.seq_len, shape.heads.q as usize, shape.heads.kv as usize);
        let (dv, g) = (shape.head_dim.v as usize, hq / h);
        let v = |b: usize, k: usize, kvh: usize| -> Vec<f64> {
            (0..dv).map(|e| f64::from(at(&inputs["v"], &[b, k, kvh, e]))).collect()
        };
        for (b, pooled) in pooled.iter().enumerate() {
            let n = pooled.v.shape[0];
            for t in 0..len {
                for qh in 0..hq {
                    let kvh = qh / g;
                    // compress: the Ṽ of the tokens t sees.
                    let seen: Vec<Vec<f64>> = (0..n)
                        .filter(|&j| !spec.causal || j * c.stride as usize + c.block as usize - 1 <= t)
                        .map(|j| (0..dv).map(|e| at(&pooled.v, &[j, kvh, e])).collect())
                        .collect();
                    assert_convex(&row(&out.branches["cmp"], b, t, qh), &seen, "cmp")?;
                    // select: the values of the chosen blocks' keys.
                    let keys: Vec<Vec<f64>> = chosen(&out, b, t, kvh)
                        .iter()
                        .flat_map(|&i| i * s.block as usize..((i + 1) * s.block as usize).min(len))
                        .filter(|&k| !spec.causal || k <= t)
                        .map(|k| v(b, k, kvh))
                        .collect();
                    assert_convex(&row(&out.branches["slc"], b, t, qh), &keys, "slc")?;
                    // window
                    let keys: Vec<Vec<f64>> = (0..len)
                        .filter(|&k| if spec.causal { k <= t && t - k < w as usize } else { t.abs_diff(k) < w as usize })
                        .map(|k| v(b, k, kvh))
                        .collect();
                    assert_convex(&row(&out.branches["win"], b, t, qh), &keys, "win")?;
                }
            }
        }
    }

    #[test]
    fn chosen_blocks_are_the_top_n_of_the_scores(case in any_case()) {
        let Case { spec, shape, inputs } = case;
        let (_, s, _) = params(&spec);
        let out = forward(&spec, &shape, &inputs).unwrap();
        let scores = block_scores(&spec, &shape, &inputs, "slc").unwrap();
        let (len, h) = (shape.seq_len, shape.heads.kv as usize);
        let nb = block_count(len, &s);
        for (b, scores) in scores.iter().enumerate() {
            prop_assert_eq!(&scores.shape, &vec![len, h, nb]);
            for t in 0..len {
                for kvh in 0..h {
                    let picked = chosen(&out, b, t, kvh);
                    let candidates: Vec<usize> =
                        (0..nb).filter(|&i| is_candidate(&s, spec.causal, i, t, len)).collect();
                    prop_assert_eq!(picked.len(), candidates.len().min(s.top as usize));
                    prop_assert!(picked.windows(2).all(|p| p[0] < p[1]), "not ascending: {:?}", picked);
                    prop_assert!(picked.iter().all(|i| candidates.contains(i)));
                    let row: Vec<f64> = (0..nb).map(|i| at(scores, &[t, kvh, i])).collect();
                    prop_assert!(is_valid_choice(&row, &picked, &s, spec.causal, t, len, 0.0));
                    // Rank key: forced first, then higher score, then lower index.
                    let key = |i: usize| {
                        let score = if is_forced(&s, i, t) { f64::INFINITY } else { at(scores, &[t, kvh, i]) };
                        (score, i)
                    };
                    for &i in candidates.iter().filter(|i| !picked.contains(i)) {
                        for &j in &picked {
                            let ((si, _), (sj, _)) = (key(i), key(j));
                            prop_assert!(
                                si < sj || (si == sj && i > j),
                                "t {} head {}: skipped block {} ({}) over chosen {} ({})", t, kvh, i, si, j, sj
                            );
                        }
                    }
                }
            }
        }
        // The selected output attends exactly the keys of the chosen blocks.
        let idx = &out.selected["slc"];
        let top = s.top as usize;
        let dense = dense_attention(&inputs, ("k", "v"), spec.scale_for(shape.head_dim.qk), |b, t, kvh, k| {
            (!spec.causal || k <= t)
                && (0..top).any(|n| at(idx, &[b, t, kvh, n]) == (k / s.block as usize) as i32)
        });
        assert_tensors_close(&out.branches["slc"], &dense, TOL);
    }

    #[test]
    fn selecting_every_block_or_a_window_of_t_is_dense_attention(case in any_case()) {
        let Case { mut spec, shape, inputs } = case;
        let len = shape.seq_len;
        if let nsac_dsl::spec::BranchKind::Select(s) = &mut spec.branches[1].kind {
            s.top += block_count(len, s) as u32;
        }
        if let nsac_dsl::spec::BranchKind::Window(w) = &mut spec.branches[2].kind {
            w.size += len as u32;
        }
        let out = forward(&spec, &shape, &inputs).unwrap();
        let causal = spec.causal;
        let dense = dense_attention(&inputs, ("k", "v"), spec.scale_for(shape.head_dim.qk), |_, t, _, k| !causal || k <= t);
        assert_tensors_close(&out.branches["slc"], &dense, TOL);
        assert_tensors_close(&out.branches["win"], &dense, TOL);
    }

    #[test]
    fn varlen_segments_are_independent_sequences(
        case in any_case(),
        lengths in proptest::collection::vec(1usize..15, 1..4),
        seed in any::<u64>(),
    ) {
        let spec = case.spec;
        let mut cu = vec![0];
        for l in &lengths {
            cu.push(cu[cu.len() - 1] + l);
        }
        let shape = varlen(&spec, &cu);
        let inputs = random(&spec, &shape, seed);
        let out = forward(&spec, &shape, &inputs).unwrap();
        for w in cu.windows(2) {
            let part = slice_rows(&inputs, 0, w[0], w[1]);
            let alone = forward(&spec, &batched(&spec, 1, w[1] - w[0]), &part).unwrap();
            prop_assert_eq!(slice_out(&out.o, 0, w[0], w[1]), alone.o);
            prop_assert_eq!(slice_out(&out.selected["slc"], 0, w[0], w[1]), alone.selected["slc"].clone());
        }
    }
}
