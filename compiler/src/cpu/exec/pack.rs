//! Packing raw K/V of one (b, segment, kv head) into the generated code's layouts: keys in
//! groups of four, transposed (`[⌈L/4⌉][Dqk][4]`), values as rows of `Dvp` floats, zero padded.
//! Pure data movement; every arithmetic operation of the spec happens in generated code.

/// Packed keys and values of one (b, segment, kv head).
#[derive(Debug, Clone, Default)]
pub struct Packed {
    pub k: Vec<f32>,
    pub v: Vec<f32>,
}

/// Where one (b, segment, kv head) lives in a `[B,T,H,D]` tensor.
#[derive(Debug, Clone, Copy)]
pub struct Slot {
    pub b: usize,
    pub start: usize,
    pub len: usize,
    pub h: usize,
}

/// Element offset of `(b, pos, h, 0)` in a `[B,T,H,D]` tensor.
pub fn offset(t: usize, heads: usize, dim: usize, b: usize, pos: usize, h: usize) -> usize {
    ((b * t + pos) * heads + h) * dim
}

/// Packs K (`dqk` wide) and V (`dv` wide, padded to `dvp`) of `slot`.
#[allow(clippy::too_many_arguments)]
pub fn pack(
    k: &[f32],
    v: &[f32],
    t: usize,
    heads: usize,
    dqk: usize,
    dv: usize,
    dvp: usize,
    slot: Slot,
) -> Packed {
    let n4 = slot.len.div_ceil(4).max(1);
    let mut kp = vec![0.0f32; n4 * dqk * 4];
    let mut vp = vec![0.0f32; n4 * 4 * dvp];
    for key in 0..slot.len {
        let ks = offset(t, heads, dqk, slot.b, slot.start + key, slot.h);
        let (grp, lane) = (key / 4, key % 4);
        for d in 0..dqk {
            kp[(grp * dqk + d) * 4 + lane] = k[ks + d];
        }
        let vs = offset(t, heads, dv, slot.b, slot.start + key, slot.h);
        vp[key * dvp..key * dvp + dv].copy_from_slice(&v[vs..vs + dv]);
    }
    Packed { k: kp, v: vp }
}
