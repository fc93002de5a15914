//! A top-k that scales with the candidates, not with k·candidates: an MSD radix select over
//! the f32 scores' bit patterns (docs/ARCHITECTURE.md §3's choice rule), for selections whose
//! k and candidate count are large (token-level selection: k = 2048 of 128k keys), where k
//! rounds of an arg-max scan would cost k·n.
//!
//! The rule it implements is the oracle's (`kernels::reference::score::choose_among`): the
//! first min(k, n) candidates ordered by (score descending, index ascending), reported in
//! ascending index order. Forced members are given the score +∞ by the caller; −∞ is an
//! ordinary (lowest) score, so a −∞ candidate is still taken when fewer than k rank above it.
//!
//! How: every score maps to a `u32` key that orders like the score (`key`); four passes over
//! one byte of the key each narrow the k-th largest key down to its exact value `T` and the
//! number `need` of candidates equal to `T` that make up k; then one pass takes every
//! candidate with a key above `T` and the first `need` (lowest-index) ones equal to `T`. The
//! first pass histograms every candidate; later passes only those still tied on the prefix.
//! Work: O(n + 4·256) per call, no allocation beyond the caller's scratch.

/// The `u32` that orders like `x` (larger score → larger key; −∞ lowest, +∞ highest; −0.0 and
/// +0.0 equal). Scores are never NaN (inputs are checked finite).
pub fn key(x: f32) -> u32 {
    let x = if x == 0.0 { 0.0 } else { x };
    let b = x.to_bits();
    if b & 0x8000_0000 != 0 {
        !b
    } else {
        b | 0x8000_0000
    }
}

/// Reusable scratch of [`select`].
#[derive(Debug, Default, Clone)]
pub struct Scratch {
    tied: Vec<u32>,
}

/// Writes into `out` the indices `cand[i]` of the first min(k, n) candidates ordered by
/// (score descending, index ascending), ascending; `scores[i]` is candidate `cand[i]`'s
/// score, and `cand` must be ascending. Returns how many were written.
pub fn select(
    cand: &[u32],
    scores: &[f32],
    k: usize,
    out: &mut Vec<u32>,
    scratch: &mut Scratch,
) -> usize {
    out.clear();
    let n = cand.len().min(scores.len());
    if k >= n {
        out.extend_from_slice(&cand[..n]);
        return n;
    }
    if k == 0 {
        return 0;
    }
    // Positions (into cand/scores) still tied with the k-th largest key's prefix.
    let tied = &mut scratch.tied;
    tied.clear();
    let (mut prefix, mut need) = (0u32, k);
    for pass in 0..4 {
        let shift = 24 - 8 * pass;
        let mut hist = [0u32; 256];
        if pass == 0 {
            for &s in &scores[..n] {
                hist[(key(s) >> 24) as usize] += 1;
            }
        } else {
            for &p in tied.iter() {
                hist[((key(scores[p as usize]) >> shift) & 0xff) as usize] += 1;
            }
        }
        // The digit holding the need-th largest key among the tied.
        let mut above = 0usize;
        let mut digit = 0u32;
        for d in (0..256).rev() {
            let c = hist[d] as usize;
            if above + c >= need {
                digit = d as u32;
                break;
            }
            above += c;
        }
        need -= above;
        prefix |= digit << shift;
        let mask = !0u32 << shift;
        if pass == 0 {
            tied.extend((0..n as u32).filter(|&p| key(scores[p as usize]) & mask == prefix & mask));
        } else {
            tied.retain(|&p| key(scores[p as usize]) & mask == prefix & mask);
        }
    }
    // `prefix` is the k-th largest key T; take keys above T and the first `need` equal to it.
    for (i, &s) in scores[..n].iter().enumerate() {
        let kk = key(s);
        if kk > prefix || (kk == prefix && need > 0) {
            if kk == prefix {
                need -= 1;
            }
            out.push(cand[i]);
        }
    }
    out.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rule stated plainly: sort by (score desc, index asc), take k, sort ascending.
    fn naive(cand: &[u32], scores: &[f32], k: usize) -> Vec<u32> {
        let mut r: Vec<(f32, u32)> = scores.iter().copied().zip(cand.iter().copied()).collect();
        r.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut out: Vec<u32> = r.into_iter().take(k).map(|(_, i)| i).collect();
        out.sort_unstable();
        out
    }

    fn run(cand: &[u32], scores: &[f32], k: usize) -> Vec<u32> {
        let mut out = Vec::new();
        let n = select(cand, scores, k, &mut out, &mut Scratch::default());
        assert_eq!(n, out.len());
        out
    }

    /// A small deterministic generator (xorshift), so the test needs no crate.
    fn rng(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    #[test]
    fn keys_order_like_scores() {
        let xs = [
            f32::NEG_INFINITY,
            -3.5,
            -1e-30,
            -0.0,
            0.0,
            1e-30,
            2.0,
            f32::MAX,
            f32::INFINITY,
        ];
        for w in xs.windows(2) {
            assert!(key(w[0]) <= key(w[1]), "{} {}", w[0], w[1]);
        }
        assert_eq!(key(-0.0), key(0.0));
    }

    #[test]
    fn ties_go_to_the_lower_index() {
        let cand: Vec<u32> = (0..10).collect();
        let scores = [1.0, 2.0, 2.0, 0.5, 2.0, 2.0, 0.0, 2.0, 1.0, 2.0];
        assert_eq!(run(&cand, &scores, 3), vec![1, 2, 4]);
        assert_eq!(run(&cand, &scores, 7), vec![0, 1, 2, 4, 5, 7, 9]);
        // All equal: the first k.
        assert_eq!(run(&cand, &[0.25; 10], 4), vec![0, 1, 2, 3]);
    }

    #[test]
    fn k_at_least_the_candidates_takes_all() {
        let cand = [3u32, 5, 9];
        assert_eq!(run(&cand, &[0.1, -1.0, 7.0], 3), vec![3, 5, 9]);
        assert_eq!(run(&cand, &[0.1, -1.0, 7.0], 100), vec![3, 5, 9]);
        assert_eq!(run(&cand, &[0.1, -1.0, 7.0], 0), Vec::<u32>::new());
        assert_eq!(run(&[], &[], 4), Vec::<u32>::new());
    }

    #[test]
    fn infinities_rank_as_the_rule_says() {
        // Forced members (+∞) first, lower index among them; −∞ still taken when needed.
        let cand = [0u32, 1, 2, 3, 4, 5];
        let inf = f32::INFINITY;
        let scores = [f32::NEG_INFINITY, inf, 3.0, inf, f32::NEG_INFINITY, -2.0];
        assert_eq!(run(&cand, &scores, 2), vec![1, 3]);
        assert_eq!(run(&cand, &scores, 3), vec![1, 2, 3]);
        assert_eq!(run(&cand, &scores, 5), vec![0, 1, 2, 3, 5]);
    }

    #[test]
    fn matches_the_rule_on_random_scores() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for case in 0..300 {
            let n = (rng(&mut seed) % 200) as usize;
            // Few distinct values make ties common; some cases use full-range floats.
            let distinct = 1 + rng(&mut seed) % 8;
            let cand: Vec<u32> = (0..n as u32).map(|i| i * 3 + (case % 3)).collect();
            let scores: Vec<f32> = (0..n)
                .map(|_| {
                    let r = rng(&mut seed);
                    if case % 2 == 0 {
                        (r % distinct) as f32 - 3.0
                    } else {
                        f32::from_bits((r as u32) & 0x7f7f_ffff)
                            * if r & 1 << 40 != 0 { -1.0 } else { 1.0 }
                    }
                })
                .collect();
            let k = (rng(&mut seed) % (n as u64 + 3)) as usize;
            assert_eq!(
                run(&cand, &scores, k),
                naive(&cand, &scores, k),
                "case {case}"
            );
        }
    }

    #[test]
    fn k_2048_of_131072() {
        let n = 131_072usize;
        let mut seed = 42u64;
        let cand: Vec<u32> = (0..n as u32).collect();
        let mut scores: Vec<f32> = (0..n)
            .map(|_| (rng(&mut seed) >> 40) as f32 / (1u64 << 24) as f32)
            .collect();
        // Some exact ties around the threshold and a few forced members.
        for i in (0..n).step_by(97) {
            scores[i] = 0.984;
        }
        for i in [5, 70_000, 131_071] {
            scores[i] = f32::INFINITY;
        }
        let got = run(&cand, &scores, 2048);
        assert_eq!(got.len(), 2048);
        assert_eq!(got, naive(&cand, &scores, 2048));
    }
}
