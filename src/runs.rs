//! Loops over runs of values (a run: at most 4 KiB of one operand, see `walk.rs`), written once
//! as plain Rust that each SIMD level compiles: `ln` or `exp` of every value, the check that a
//! run holds only positive normal values, and the prefetches that keep the streams ahead of
//! them. The public [`ln_slice`] and [`exp_slice`] (re-exported in [`crate::math`]) are these
//! loops over a caller's slices.

use crate::float::Float;
use crate::simd::{dispatch, with_default_fp, Kernel};

/// `out[i] = ln(x[i])` for `f32` or `f64`, vectorised at the current [`crate::runtime::simd_level`]
/// (the same bits as [`crate::math::ln_f32`] / [`crate::math::ln_f64`] element by element).
///
/// # Panics
/// If the slices differ in length.
///
/// # Example
/// ```
/// let x = [1.0_f32, 2.0, 0.0, -1.0];
/// let mut out = [0.0; 4];
/// kldiv::math::ln_slice(&x, &mut out);
/// assert_eq!(out[1], kldiv::math::ln_f32(2.0));
/// assert_eq!(out[2], f32::NEG_INFINITY);
/// ```
pub fn ln_slice<T: Float>(x: &[T], out: &mut [T]) {
    assert_eq!(
        x.len(),
        out.len(),
        "ln_slice: input and output lengths differ"
    );
    with_default_fp(|| {
        dispatch(Transcendental {
            t: x,
            out,
            exp: false,
        })
    })
}

/// `out[i] = exp(x[i])` for `f32` or `f64`, vectorised like [`ln_slice`].
///
/// # Panics
/// If the slices differ in length.
///
/// # Example
/// ```
/// let x = [0.0_f64, 1.0, f64::NEG_INFINITY];
/// let mut out = [0.0; 3];
/// kldiv::math::exp_slice(&x, &mut out);
/// assert_eq!(out, [1.0, kldiv::math::exp_f64(1.0), 0.0]);
/// ```
pub fn exp_slice<T: Float>(x: &[T], out: &mut [T]) {
    assert_eq!(
        x.len(),
        out.len(),
        "exp_slice: input and output lengths differ"
    );
    with_default_fp(|| {
        dispatch(Transcendental {
            t: x,
            out,
            exp: true,
        })
    })
}

/// Cuts `0..n` into pieces of [`PIECE`] bytes of `T`s and calls `each` on each piece, after
/// `ahead(i)` for the first element `i` of each of its cache lines.
#[inline(always)]
pub(crate) fn by_pieces<T>(
    n: usize,
    ahead: impl Fn(usize),
    mut each: impl FnMut(std::ops::Range<usize>),
) {
    let line = 64 / std::mem::size_of::<T>();
    let piece = PIECE / std::mem::size_of::<T>();
    let mut start = 0;
    while start < n {
        let end = (start + piece).min(n);
        let mut i = start;
        while i < end {
            ahead(i);
            i += line;
        }
        each(start..end);
        start = end;
    }
}

/// The bytes of `T`s that [`by_pieces`] hands out at a time: a loop over 512 bytes of values
/// after the prefetches of its 8 lines (smaller pieces cost loop overhead, larger ones let the
/// prefetches run behind; `docs/performance.md`).
const PIECE: usize = 512;

/// `out[i] = f(t[i])`, calling `ahead(i)` at every cache line (see [`by_pieces`]).
#[inline(always)]
pub(crate) fn map_slice<T: Float>(
    t: &[T],
    out: &mut [T],
    f: impl Fn(T) -> T,
    ahead: impl Fn(usize),
) {
    by_pieces::<T>(t.len(), ahead, |r| {
        for (o, &ti) in out[r.clone()].iter_mut().zip(&t[r]) {
            *o = f(ti);
        }
    })
}

/// `ln` of a run: without the special-value and subnormal handling when every value is
/// positive, normal and finite (then returns true), else `general` (`ln` or `xlog_factor`).
/// Calls `ahead(i)` at every cache line of the first pass (see [`by_pieces`]).
#[inline(always)]
pub(crate) fn ln_slice_or<T: Float>(
    t: &[T],
    out: &mut [T],
    general: impl Fn(T) -> T,
    ahead: impl Fn(usize),
) -> bool {
    // A run whose first value is special (zero-padded or one-hot targets, mostly) goes straight
    // to `general` (judged by that one value: checking the first 16 cost W8's runs of 64 about
    // 3%). Otherwise, for `f32`, the check rides along with `ln_normal` in one pass (one load
    // of each value; a separate pass took 16% of the time of a sum of rows of 1000 on one
    // core, in `perf`), and the run is done again with `general` if it fails.
    if t.first().is_none_or(|v| v.normal_offset() < T::NORMAL_SPAN) {
        if T::CHECK_WITH_LN {
            let mut max = T::Bits::default();
            by_pieces::<T>(t.len(), ahead, |r| {
                for (o, &v) in out[r.clone()].iter_mut().zip(&t[r]) {
                    *o = v.ln_normal();
                    max = max.max(v.normal_offset());
                }
            });
            if max < T::NORMAL_SPAN {
                return true;
            }
        } else if all_positive_normal(t) {
            map_slice(t, out, T::ln_normal, ahead);
            return true;
        }
    }
    map_slice(t, out, general, |_| {});
    false
}

/// Whether every value is positive, normal and finite (the common case for probabilities),
/// so that `ln_normal` gives the same bits as `ln` does with all its special cases, and
/// [`factored_term`](crate::terms::factored_term) those of [`term_with`](crate::terms::term_with).
#[inline(always)]
pub(crate) fn all_positive_normal<T: Float>(t: &[T]) -> bool {
    // A maximum over the run, so that it vectorises without branches or mask chains.
    let max = t
        .iter()
        .fold(T::Bits::default(), |m, &v| m.max(v.normal_offset()));
    max < T::NORMAL_SPAN
}

/// [`ln_slice`] and [`exp_slice`] as a [`Kernel`]: `out = ln(t)`, or `exp(t)` with `exp`.
struct Transcendental<'a, T> {
    t: &'a [T],
    out: &'a mut [T],
    exp: bool,
}

impl<T: Float> Kernel for Transcendental<'_, T> {
    type Output = ();
    fn log_target(&self) -> bool {
        false // no target: `exp` says which function
    }
    #[inline(always)]
    fn run<const LOG_TARGET: bool>(self) {
        if self.exp {
            map_slice(self.t, self.out, T::exp, |_| {});
        } else {
            ln_slice_or(self.t, self.out, T::ln, |_| {});
        }
    }
}

/// How far ahead of the value being computed the fused kernels ask for the memory they stream
/// through (see [`prefetch_ahead`]): without it the hardware prefetchers let the two streams
/// fall behind while the `ln` of a run is computed, and each run waits for memory (1 to 4 KiB
/// were within the noise of each other; `docs/performance.md`).
pub(crate) const AHEAD: usize = 3072;

/// Asks for the cache line [`AHEAD`] bytes after element `i` of `s`, into L1. Only a hint: the
/// address may lie beyond `s` (or its array), where it costs a wasted fetch at worst.
#[inline(always)]
pub(crate) fn prefetch_ahead<T>(s: &[T], i: usize) {
    let step = AHEAD / std::mem::size_of::<T>().max(1);
    prefetch(s.as_ptr().wrapping_add(i + step))
}

/// Asks the CPU to bring the cache line at `p` into L1.
#[inline(always)]
pub(crate) fn prefetch<T>(p: *const T) {
    prefetch_into::<0, T>(p)
}

/// Asks the CPU to bring the cache line at `p` into L2 to be written (so that a later store
/// finds it there, owned, and does not wait for it: a row of a gradient).
#[inline(always)]
pub(crate) fn prefetch_l2_write<T>(p: *const T) {
    prefetch_into::<2, T>(p)
}

/// A prefetch of the cache line at `p` into cache level 1 for `LEVEL` 0, level 2 to be
/// written for 2 (x86's `_MM_HINT_T0`, `_MM_HINT_ET1`). No effect on other targets, nor under
/// Miri.
#[inline(always)]
fn prefetch_into<const LEVEL: i32, T>(p: *const T) {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    // SAFETY: a prefetch is a hint: it never faults and reads nothing into the program, so
    // any address is allowed (`p` may lie outside the view: it is made with `wrapping_offset`).
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_ET1, _MM_HINT_T0};
        match LEVEL {
            0 => _mm_prefetch::<_MM_HINT_T0>(p as *const i8),
            _ => _mm_prefetch::<_MM_HINT_ET1>(p as *const i8),
        }
    };
    #[cfg(not(all(target_arch = "x86_64", not(miri))))]
    let _ = p;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positive_normal_runs_are_recognised_exactly() {
        fn check<T: Float>(yes: &[T], no: &[T]) {
            for &v in yes {
                assert!(all_positive_normal(&[v, v]), "{v:?}");
            }
            for &v in no {
                assert!(!all_positive_normal(&[yes[0], v, yes[0]]), "{v:?}");
            }
            assert!(all_positive_normal::<T>(&[]));
        }
        let sub32 = f32::from_bits(f32::MIN_POSITIVE.to_bits() - 1);
        check::<f32>(
            &[0.5, f32::MIN_POSITIVE, f32::MAX, 1.0],
            &[
                0.0,
                -0.0,
                sub32,
                f32::from_bits(1),
                -0.5,
                -f32::MIN_POSITIVE,
                f32::INFINITY,
            ],
        );
        check::<f32>(&[1.0], &[f32::NEG_INFINITY, f32::NAN, -f32::NAN, -f32::MAX]);
        let sub64 = f64::from_bits(f64::MIN_POSITIVE.to_bits() - 1);
        check::<f64>(
            &[0.5, f64::MIN_POSITIVE, f64::MAX, 1.0],
            &[
                0.0,
                -0.0,
                sub64,
                f64::from_bits(1),
                -0.5,
                f64::INFINITY,
                f64::NEG_INFINITY,
            ],
        );
        check::<f64>(&[1.0], &[f64::NAN, -f64::NAN, -f64::MAX]);
    }
}
