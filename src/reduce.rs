//! Fused reductions: the terms of a slice summed into fixed `f64` lanes.
//!
//! Determinism rests on one rule: the term at logical index `i` is added to lane `i % LANES`,
//! and each lane is summed in logical order. A block (see [`crate::parallel`]) starts at a
//! multiple of `LANES`, so however the block is cut into slices (contiguous runs, strided
//! tiles), every lane sees the same additions in the same order, and the lanes are folded in a
//! fixed tree. Memory layout and thread count therefore never change the bits.

use crate::float::Float;
use crate::terms::term;

/// Number of independent `f64` accumulators per block (a multiple of every SIMD width).
pub(crate) const LANES: usize = 16;

/// The lane accumulators of one block.
pub(crate) type Lanes = [f64; LANES];

/// Adds the terms of `x`, `t` into `acc`; `x[0]` has logical index `first` (only `first %
/// LANES` matters).
#[inline]
pub(crate) fn sum_slice<T: Float, const LOG_TARGET: bool>(
    acc: &mut Lanes,
    first: usize,
    x: &[T],
    t: &[T],
) {
    debug_assert_eq!(x.len(), t.len());
    sum_lanes(acc, first, x.len(), |i| {
        term::<LOG_TARGET>(x[i].to_f64(), t[i].to_f64())
    });
}

/// Adds `value(i)` for `i in 0..n` into `acc`, element `i` into lane `(first + i) % LANES`, in
/// order of `i` within each lane. Every fused reduction goes through here.
#[inline(always)]
pub(crate) fn sum_lanes(
    acc: &mut Lanes,
    first: usize,
    n: usize,
    mut value: impl FnMut(usize) -> f64,
) {
    // Head: up to the next multiple of LANES.
    let head = ((LANES - first % LANES) % LANES).min(n);
    for i in 0..head {
        acc[(first + i) % LANES] += value(i);
    }
    // Body: whole groups of LANES, element j of a group into lane j.
    let groups = (n - head) / LANES;
    for g in 0..groups {
        let base = head + g * LANES;
        for (j, a) in acc.iter_mut().enumerate() {
            *a += value(base + j);
        }
    }
    // Tail: lanes 0.. of a last, partial group.
    let base = head + groups * LANES;
    for (j, a) in acc.iter_mut().enumerate().take(n - base) {
        *a += value(base + j);
    }
}

/// Folds the lanes in a fixed pairwise tree.
#[inline]
pub(crate) fn fold_lanes(acc: &Lanes) -> f64 {
    pairwise(acc)
}

/// Pairwise sum of `v` with a fixed split (first half, second half): the same tree every time.
pub(crate) fn pairwise(v: &[f64]) -> f64 {
    match v.len() {
        0 => 0.0,
        1 => v[0],
        n => {
            let (a, b) = v.split_at(n / 2);
            pairwise(a) + pairwise(b)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cutting_a_slice_anywhere_gives_the_same_lanes() {
        let n = 203;
        let x: Vec<f32> = (0..n).map(|i| -1.0 - (i as f32) * 0.013).collect();
        let t: Vec<f32> = (0..n).map(|i| ((i * 7919) % 97) as f32 / 97.0).collect();
        let mut whole = [0.0; LANES];
        sum_slice::<f32, false>(&mut whole, 0, &x, &t);
        for cut in [1, 5, 16, 17, 100, 202] {
            let mut parts = [0.0; LANES];
            sum_slice::<f32, false>(&mut parts, 0, &x[..cut], &t[..cut]);
            sum_slice::<f32, false>(&mut parts, cut, &x[cut..], &t[cut..]);
            assert_eq!(
                whole.map(f64::to_bits),
                parts.map(f64::to_bits),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn pairwise_tree_is_fixed() {
        assert_eq!(pairwise(&[]), 0.0);
        assert_eq!(pairwise(&[1.0, 2.0, 3.0]), 1.0 + (2.0 + 3.0));
    }
}
