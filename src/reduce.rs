//! Fused reductions: the terms of a slice summed into fixed `f64` lanes.
//!
//! Determinism rests on one rule: the term at logical index `i` is added to lane `i % LANES`,
//! and each lane is summed in logical order. A block (see [`crate::parallel`]) starts at a
//! multiple of `LANES`, so however the block is cut into slices (contiguous runs, strided
//! tiles), every lane sees the same additions in the same order, and the lanes are folded in a
//! fixed tree. Memory layout and thread count therefore never change the bits.

use crate::float::Float;
use crate::simd::Kernel;
use crate::terms::{term_with, transcendental_slice};
use crate::walk::TILE;

/// Number of independent `f64` accumulators per block (a multiple of every SIMD width).
pub(crate) const LANES: usize = 16;

/// The lane accumulators of one block.
pub(crate) type Lanes = [f64; LANES];

/// Adds the terms of `x`, `t` (at most [`TILE`] long) into `acc`; `x[0]` has logical index
/// `first` (only `first % LANES` matters).
#[inline(always)]
pub(crate) fn sum_slice<const LOG_TARGET: bool, T: Float>(
    scratch: &mut Scratch<T>,
    acc: &mut Lanes,
    first: usize,
    x: &[T],
    t: &[T],
) {
    debug_assert!(x.len() == t.len() && x.len() <= TILE);
    let n = x.len();
    let tr = &mut scratch.tr[..n];
    transcendental_slice::<LOG_TARGET, T>(t, tr);
    // Head (up to a multiple of LANES) and tail through the terms buffer; whole groups of
    // LANES straight into the lanes, element j of a group into lane j.
    let head = ((LANES - first % LANES) % LANES).min(n);
    let body = (n - head) / LANES * LANES;
    let terms = &mut scratch.terms[..n];
    for i in (0..head).chain(head + body..n) {
        terms[i] = term_with::<LOG_TARGET, T>(x[i], t[i], tr[i]);
    }
    add_lanes(acc, first, &terms[..head]);
    let mut lanes = *acc;
    let groups = x[head..head + body]
        .chunks_exact(LANES)
        .zip(t[head..head + body].chunks_exact(LANES))
        .zip(tr[head..head + body].chunks_exact(LANES));
    for ((xg, tg), trg) in groups {
        for j in 0..LANES {
            lanes[j] += term_with::<LOG_TARGET, T>(xg[j], tg[j], trg[j]);
        }
    }
    *acc = lanes;
    add_lanes(acc, first + head + body, &terms[head + body..]);
}

/// Per-block working memory of the kernels that reduce: a run's transcendentals and terms.
pub(crate) struct Scratch<T> {
    pub tr: [T; TILE],
    pub terms: [f64; TILE],
}

impl<T: Float> Scratch<T> {
    pub(crate) fn new() -> Self {
        Scratch {
            tr: [T::default(); TILE],
            terms: [0.0; TILE],
        }
    }
}

/// [`sum_slice`] as a [`Kernel`] for [`crate::simd::dispatch`].
pub(crate) struct Sum<'a, T> {
    pub scratch: &'a mut Scratch<T>,
    pub acc: &'a mut Lanes,
    pub first: usize,
    pub x: &'a [T],
    pub t: &'a [T],
    pub log_target: bool,
}

impl<T: Float> Kernel for Sum<'_, T> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        if self.log_target {
            sum_slice::<true, T>(self.scratch, self.acc, self.first, self.x, self.t)
        } else {
            sum_slice::<false, T>(self.scratch, self.acc, self.first, self.x, self.t)
        }
    }
}

/// Adds `values[i]` into lane `(first + i) % LANES`, in order of `i` within each lane. Every
/// fused reduction goes through here.
#[inline(always)]
pub(crate) fn add_lanes(acc: &mut Lanes, first: usize, values: &[f64]) {
    // Head: up to the next multiple of LANES.
    let head = ((LANES - first % LANES) % LANES).min(values.len());
    for (i, &v) in values[..head].iter().enumerate() {
        acc[(first + i) % LANES] += v;
    }
    // Body: whole groups of LANES, element j of a group into lane j; then a partial group.
    // The lanes live in a local array so that they stay in vector registers.
    let mut lanes = *acc;
    let groups = values[head..].chunks_exact(LANES);
    let tail = groups.remainder();
    for group in groups {
        let group: &[f64; LANES] = group.try_into().expect("chunks_exact gives LANES");
        for j in 0..LANES {
            lanes[j] += group[j];
        }
    }
    for (a, &v) in lanes.iter_mut().zip(tail) {
        *a += v;
    }
    *acc = lanes;
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
        let mut scratch = Scratch::new();
        sum_slice::<false, f32>(&mut scratch, &mut whole, 0, &x, &t);
        for cut in [1, 5, 16, 17, 100, 202] {
            let mut parts = [0.0; LANES];
            sum_slice::<false, f32>(&mut scratch, &mut parts, 0, &x[..cut], &t[..cut]);
            sum_slice::<false, f32>(&mut scratch, &mut parts, cut, &x[cut..], &t[cut..]);
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
