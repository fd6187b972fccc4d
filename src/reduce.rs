//! Fused reductions: the terms of a slice summed into fixed `f64` lanes.
//!
//! Determinism rests on one rule: the term at logical index `i` is added to lane `i % LANES`,
//! and each lane is summed in logical order. A block (see [`crate::parallel`]) starts at a
//! multiple of `LANES`, so however the block is cut into slices (contiguous runs, strided
//! tiles), every lane sees the same additions in the same order, and the lanes are folded in a
//! fixed tree. Memory layout and thread count therefore never change the bits.

use crate::float::Float;
#[cfg(feature = "python")]
use crate::runs::prefetch_ahead;
use crate::simd::Kernel;
use crate::terms::{add_factored_term, add_term, grad_input_with, term_with, transcendental_slice};
use crate::walk::TILE;

/// Number of independent `f64` accumulators per block (a multiple of every SIMD width).
pub(crate) const LANES: usize = 16;

/// The lane accumulators of one block.
pub(crate) type Lanes = [f64; LANES];

/// Adds the terms of `x`, `t` (at most [`TILE`] long) into `acc`; `x[0]` has logical index
/// `first` (only `first % LANES` matters).
#[inline(always)]
pub(crate) fn sum_slice<const LOG_TARGET: bool, T: Float>(
    ft: &mut [T; TILE],
    acc: &mut Lanes,
    first: usize,
    x: &[T],
    t: &[T],
) {
    debug_assert!(x.len() == t.len() && x.len() <= TILE);
    let ft = &mut ft[..x.len()];
    let fast = transcendental_slice::<LOG_TARGET, T>(t, ft, &[x, t]);
    sum_terms::<LOG_TARGET, false, T>(acc, first, x, t, ft, fast, 0.0, &mut []);
}

/// Adds the terms of `x`, `t` into `acc` given `ft = transcendental(t)`; element `i` goes to
/// lane `(first + i) % LANES`, in order of `i` within each lane. `fast` says that
/// [`crate::terms::factored_term`] gives every term (as [`transcendental_slice`] returns it). With
/// `GRAD`, also writes the input gradient for `g` into `gx` in the same loop (one load and
/// widening of each `t`). Every fused reduction goes through here.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn sum_terms<const LOG_TARGET: bool, const GRAD: bool, T: Float>(
    acc: &mut Lanes,
    first: usize,
    x: &[T],
    t: &[T],
    ft: &[T],
    fast: bool,
    g: f64,
    gx: &mut [T],
) {
    if fast {
        let add = add_factored_term::<LOG_TARGET, T>;
        sum_terms_with::<LOG_TARGET, GRAD, T>(acc, first, x, t, ft, g, gx, add)
    } else {
        let add = add_term::<LOG_TARGET, T>;
        sum_terms_with::<LOG_TARGET, GRAD, T>(acc, first, x, t, ft, g, gx, add)
    }
}

/// [`sum_terms`] with the function that adds a term to a lane given.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn sum_terms_with<const LOG_TARGET: bool, const GRAD: bool, T: Float>(
    acc: &mut Lanes,
    first: usize,
    x: &[T],
    t: &[T],
    ft: &[T],
    g: f64,
    gx: &mut [T],
    add: impl Fn(f64, T, T, T) -> f64,
) {
    let n = x.len();
    debug_assert!(!GRAD || gx.len() == n);
    // Element i of a head or tail: its term into `lane`, its gradient (with GRAD) into gx[i].
    let one = |lane: &mut f64, gx: &mut [T], i: usize| {
        *lane = add(*lane, x[i], t[i], ft[i]);
        if GRAD {
            gx[i] = T::from_f64(grad_input_with::<LOG_TARGET, T>(g, t[i], ft[i]));
        }
    };
    // Head: up to the next multiple of LANES.
    let head = ((LANES - first % LANES) % LANES).min(n);
    for i in 0..head {
        one(&mut acc[(first + i) % LANES], gx, i);
    }
    // Body: whole groups of LANES, element j of a group into lane j (in vector registers;
    // the same as `one`, written over exact chunks so that it vectorises: with indexed
    // groups LLVM split the 16 lanes into 8 + 4 + 2 + 1 + 1 with bounds checks, 25% slower).
    let mut lanes = *acc;
    let body_end = head + (n - head) / LANES * LANES;
    let body = head..body_end;
    let groups = x[body.clone()]
        .chunks_exact(LANES)
        .zip(t[body.clone()].chunks_exact(LANES))
        .zip(ft[body.clone()].chunks_exact(LANES));
    if GRAD {
        for (((xg, tg), ftg), gxg) in groups.zip(gx[body].chunks_exact_mut(LANES)) {
            for j in 0..LANES {
                lanes[j] = add(lanes[j], xg[j], tg[j], ftg[j]);
                gxg[j] = T::from_f64(grad_input_with::<LOG_TARGET, T>(g, tg[j], ftg[j]));
            }
        }
    } else {
        for ((xg, tg), ftg) in groups {
            for j in 0..LANES {
                lanes[j] = add(lanes[j], xg[j], tg[j], ftg[j]);
            }
        }
    }
    // Tail: lanes 0.. of a last, partial group.
    for (lane, i) in lanes.iter_mut().zip(body_end..n) {
        one(lane, gx, i);
    }
    *acc = lanes;
}

/// [`sum_slice`] as a [`Kernel`] for [`crate::simd::dispatch`]; with `scaled`, each term
/// multiplied by [`SCALE`] first.
pub(crate) struct Sum<'a, T> {
    pub(crate) ft: &'a mut [T; TILE],
    pub(crate) acc: &'a mut Lanes,
    pub(crate) first: usize,
    pub(crate) x: &'a [T],
    pub(crate) t: &'a [T],
    pub(crate) log_target: bool,
    pub(crate) scaled: bool,
}

impl<T: Float> Kernel for Sum<'_, T> {
    type Output = ();
    fn log_target(&self) -> bool {
        self.log_target
    }
    #[inline(always)]
    fn run<const LOG_TARGET: bool>(self) {
        if !self.scaled {
            return sum_slice::<LOG_TARGET, T>(self.ft, self.acc, self.first, self.x, self.t);
        }
        let ft = &mut self.ft[..self.x.len()];
        transcendental_slice::<LOG_TARGET, T>(self.t, ft, &[]);
        let add = |acc: f64, x: T, t: T, ft: T| acc + term_with::<LOG_TARGET, T>(x, t, ft) * SCALE;
        let (acc, first, x, t) = (self.acc, self.first, self.x, self.t);
        sum_terms_with::<LOG_TARGET, false, T>(acc, first, x, t, ft, 0.0, &mut [], add);
    }
}

/// 2^-70: the factor of a scaled [`Sum`], whose partial sums cannot overflow: a term of `f64`
/// is at most `f64::MAX` (about 2^1024), so scaled terms are below 2^954, and a sum of up to
/// 2^63 of them stays below 2^1017 (tiny terms may round away, which a sum large enough to need
/// this does not see).
pub(crate) const SCALE: f64 = 1.0 / (1u128 << 70) as f64;

/// [`sum_terms`] as a [`Kernel`], `ft` given, and `fast` as [`transcendental_slice`] returned
/// it for all the `t` that `ft` was computed from.
pub(crate) struct SumPrecomputed<'a, T> {
    pub(crate) acc: &'a mut Lanes,
    pub(crate) first: usize,
    pub(crate) x: &'a [T],
    pub(crate) t: &'a [T],
    pub(crate) ft: &'a [T],
    pub(crate) fast: bool,
    pub(crate) log_target: bool,
}

impl<T: Float> Kernel for SumPrecomputed<'_, T> {
    type Output = ();
    fn log_target(&self) -> bool {
        self.log_target
    }
    #[inline(always)]
    fn run<const LOG_TARGET: bool>(self) {
        let (acc, first, x, t, ft, fast) =
            (self.acc, self.first, self.x, self.t, self.ft, self.fast);
        sum_terms::<LOG_TARGET, false, T>(acc, first, x, t, ft, fast, 0.0, &mut [])
    }
}

/// The values of `x` and of `t` added to the lanes, in `T` (the benchmarks' read floor: what a
/// sum of the loss reads, with nothing to compute).
#[cfg(feature = "python")]
pub(crate) struct ReadSum<'a, T> {
    pub(crate) acc: &'a mut [T; LANES],
    pub(crate) x: &'a [T],
    pub(crate) t: &'a [T],
}

#[cfg(feature = "python")]
impl<T: Float + std::ops::Add<Output = T>> Kernel for ReadSum<'_, T> {
    type Output = ();
    fn log_target(&self) -> bool {
        false
    }
    #[inline(always)]
    fn run<const LOG_TARGET: bool>(self) {
        // Two sets of lanes (in registers), so that the adds do not wait for each other; the
        // streams asked for ahead as the kernels ask for them, a line at a time.
        let (mut a, mut b) = (*self.acc, [T::default(); LANES]);
        let (x, t) = (self.x, self.t);
        let body = x.len() / LANES * LANES;
        let line = 64 / std::mem::size_of::<T>();
        let groups = x[..body]
            .chunks_exact(LANES)
            .zip(t[..body].chunks_exact(LANES));
        for (k, (xg, tg)) in groups.enumerate() {
            if (k * LANES) % line == 0 {
                prefetch_ahead(x, k * LANES);
                prefetch_ahead(t, k * LANES);
            }
            for j in 0..LANES {
                a[j] = a[j] + xg[j];
                b[j] = b[j] + tg[j];
            }
        }
        let tail = body;
        for (i, (&x, &t)) in self.x[tail..].iter().zip(&self.t[tail..]).enumerate() {
            a[i] = a[i] + x + t;
        }
        for j in 0..LANES {
            self.acc[j] = a[j] + b[j];
        }
    }
}

/// Folds the lanes in a fixed tree: lane `i` plus lane `i + 8`, then `i + 4`, `i + 2`, `i + 1`.
#[inline]
pub(crate) fn fold_lanes(acc: &Lanes) -> f64 {
    let mut v = *acc;
    let mut width = LANES / 2;
    while width > 0 {
        for i in 0..width {
            v[i] += v[i + width];
        }
        width /= 2;
    }
    v[0]
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
        let mut ft = [0.0; TILE];
        sum_slice::<false, f32>(&mut ft, &mut whole, 0, &x, &t);
        for cut in [1, 5, 16, 17, 100, 202] {
            let mut parts = [0.0; LANES];
            sum_slice::<false, f32>(&mut ft, &mut parts, 0, &x[..cut], &t[..cut]);
            sum_slice::<false, f32>(&mut ft, &mut parts, cut, &x[cut..], &t[cut..]);
            assert_eq!(
                whole.map(f64::to_bits),
                parts.map(f64::to_bits),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn fast_terms_add_up_to_the_same_bits_either_way() {
        // The shortcut (a fused multiply-add of the f32 difference) for runs of positive
        // normal targets, and always with log_target, gives the bits of the general term.
        let n = 1000;
        let mut s = 0x2545f4914f6cdd1d_u64;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32
        };
        let x: Vec<f32> = (0..n)
            .map(|i| -30.0 * next() + (i % 7) as f32 * 1e3)
            .collect();
        let t: Vec<f32> = (0..n)
            .map(|i| next() * 10f32.powi(-((i % 38) as i32)) + 1e-37)
            .collect();
        let mut ft = vec![0.0f32; n];
        assert!(transcendental_slice::<false, f32>(&t, &mut ft, &[]));
        for first in [0, 5] {
            let (mut fast, mut general) = ([0.0; LANES], [0.0; LANES]);
            sum_terms::<false, false, f32>(&mut fast, first, &x, &t, &ft, true, 0.0, &mut []);
            sum_terms::<false, false, f32>(&mut general, first, &x, &t, &ft, false, 0.0, &mut []);
            assert_eq!(fast.map(f64::to_bits), general.map(f64::to_bits));
        }
        // log_target: t holds log-probabilities, and some special values.
        let mut lt: Vec<f32> = t.iter().map(|&v| v.ln()).collect();
        lt[3] = f32::NEG_INFINITY;
        lt[9] = f32::INFINITY;
        lt[17] = f32::NAN;
        lt[20] = 80.0;
        assert!(transcendental_slice::<true, f32>(&lt, &mut ft, &[]));
        let (mut fast, mut general) = ([0.0; LANES], [0.0; LANES]);
        sum_terms::<true, false, f32>(&mut fast, 3, &x, &lt, &ft, true, 0.0, &mut []);
        sum_terms::<true, false, f32>(&mut general, 3, &x, &lt, &ft, false, 0.0, &mut []);
        for (f, g) in fast.iter().zip(&general) {
            assert!(f.to_bits() == g.to_bits() || (f.is_nan() && g.is_nan()));
        }
    }

    #[test]
    fn lanes_fold_in_a_fixed_tree() {
        let v: Lanes = std::array::from_fn(|i| 1.0 / (i as f64 + 1.0));
        let mut w = v;
        for width in [8, 4, 2, 1] {
            for i in 0..width {
                w[i] += w[i + width];
            }
        }
        assert_eq!(fold_lanes(&v).to_bits(), w[0].to_bits());
    }
}
