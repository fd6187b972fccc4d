//! The formula: one element of PyTorch's `kl_div` and its derivatives, and the elementwise
//! kernels that write them.
//!
//! PyTorch, `aten/src/ATen/native/Loss.cpp`, `kl_div`:
//!
//! ```text
//! if (log_target) output = at::exp(target) * (target - input);
//! else            output = at::xlogy(target, target) - target * input;
//! ```
//!
//! `xlogy(t, t)` is NaN where `t` is NaN, 0 where `t == 0`, `t * log(t)` elsewhere (NaN for
//! `t < 0`). `log t` and `exp t` are evaluated in the element type's precision (as PyTorch
//! does). A term is then a factor times a difference ([`factored_term`]): `exp(t) * (t - x)`, and
//! for a positive, finite target `t * (ln t - x)`, which is `xlogy(t, t) - t * x` without its
//! cancellation. The difference is rounded once to the element type and the product taken in
//! `f64` (exact for `f32`), so every IEEE special value comes out as in PyTorch. For the other
//! targets (0, +inf, negative, NaN) `xlogy(t, t) - t * x` is evaluated literally, in `f64`.
//! Results are rounded once to the element type.
//!
//! `ft` is the target's one transcendental, `f(t)`: `ln t`, or `exp t` with `LOG_TARGET`
//! ([`transcendental`]). Kernels compute it over a whole run first, in `T`'s SIMD width, then
//! the rest of each term from it (the `_with` functions take it).

use crate::float::Float;
use crate::runs::{ln_slice_or, map_slice, prefetch_ahead};
use crate::simd::Kernel;

/// One unreduced term `t * (log t - x)`, written as PyTorch writes it (see the module docs),
/// in `f64`. `LOG_TARGET` selects the `log_target=True` form `exp(t) * (t - x)`.
///
/// # Example
/// ```
/// let v = kldiv::term::<false, f64>(-1.0, 0.5);
/// assert!((v - (0.5 * 0.5_f64.ln() + 0.5)).abs() < 1e-15);
/// assert!(kldiv::term::<false, f64>(f64::NEG_INFINITY, 0.0).is_nan()); // 0 - 0 * -inf
/// assert_eq!(kldiv::term::<false, f32>(-3.0, 0.0), 0.0);
/// ```
#[inline(always)]
pub fn term<const LOG_TARGET: bool, T: Float>(x: T, t: T) -> f64 {
    term_with::<LOG_TARGET, T>(x, t, transcendental::<LOG_TARGET, T>(t))
}

/// The one transcendental function of a term, in `T`'s precision: `ln t` (as
/// [`Float::xlog_factor`]: `t` itself at `t = ±0`, where `xlogy(t, t)` is 0), or `exp t` with
/// `LOG_TARGET`. Kernels compute it over a whole run first (in `T`'s SIMD width), then the
/// rest of the formula in `f64` ([`term_with`], [`grad_input_with`], [`grad_target_with`]).
#[inline(always)]
pub(crate) fn transcendental<const LOG_TARGET: bool, T: Float>(t: T) -> T {
    if LOG_TARGET {
        t.exp()
    } else {
        t.xlog_factor()
    }
}

/// [`term`] given `ft = transcendental(t)`.
#[inline(always)]
pub(crate) fn term_with<const LOG_TARGET: bool, T: Float>(x: T, t: T, ft: T) -> f64 {
    if LOG_TARGET || (t > T::default() && t < T::INFINITY) {
        factored_term::<LOG_TARGET, T>(x, t, ft)
    } else {
        // xlogy(t, t) - t * x literally, for the special values: NaN for NaN (and negative) t,
        // +0 for ±0 and finite x (`ft` is `t` there), NaN for +inf and x >= 0.
        let (x64, t64, ft64) = (x.to_f64(), t.to_f64(), ft.to_f64());
        t64.mul_add(ft64, -(t64 * x64))
    }
}

/// A term as a factor times a difference, the difference rounded once to `T` and the product
/// in `f64` (exact for `f32`: two conversions to `f64` per element instead of three, the hot
/// loop's cost): `exp(t) * (t - x)` with `LOG_TARGET`, else `t * (ln t - x)`. [`term_with`]
/// for every `t` with `LOG_TARGET`, and for positive, finite `t` without.
#[inline(always)]
pub(crate) fn factored_term<const LOG_TARGET: bool, T: Float>(x: T, t: T, ft: T) -> f64 {
    if LOG_TARGET {
        T::scaled_difference(ft, t, x)
    } else {
        T::scaled_difference(t, ft, x)
    }
}

/// `acc + term_with(x, t, ft)`: how the summing kernels add a term to a lane.
#[inline(always)]
pub(crate) fn add_term<const LOG_TARGET: bool, T: Float>(acc: f64, x: T, t: T, ft: T) -> f64 {
    acc + term_with::<LOG_TARGET, T>(x, t, ft)
}

/// `acc + factored_term(x, t, ft)`: the same bits as [`add_term`] where [`factored_term`] applies (in
/// one fused multiply-add for `f32`, whose product is exact).
#[inline(always)]
pub(crate) fn add_factored_term<const LOG_TARGET: bool, T: Float>(
    acc: f64,
    x: T,
    t: T,
    ft: T,
) -> f64 {
    if LOG_TARGET {
        T::add_scaled_difference(acc, ft, t, x)
    } else {
        T::add_scaled_difference(acc, t, ft, x)
    }
}

/// `d term / d x` times the incoming gradient `g`, as PyTorch's autograd evaluates it:
/// `-(g * t)`, or `-(g * exp(t))` with `LOG_TARGET`.
///
/// # Example
/// ```
/// assert_eq!(kldiv::grad_input::<false, f64>(2.0, 0.25), -0.5);
/// assert_eq!(kldiv::grad_input::<true, f32>(1.0, 0.0), -1.0);
/// ```
#[inline(always)]
pub fn grad_input<const LOG_TARGET: bool, T: Float>(g: f64, t: T) -> f64 {
    grad_input_with::<LOG_TARGET, T>(g, t, transcendental::<LOG_TARGET, T>(t))
}

/// [`grad_input`] given `ft = transcendental(t)`.
#[inline(always)]
pub(crate) fn grad_input_with<const LOG_TARGET: bool, T: Float>(g: f64, t: T, ft: T) -> f64 {
    if LOG_TARGET {
        -(g * ft.to_f64())
    } else {
        -(g * t.to_f64())
    }
}

/// `d term / d t` times the incoming gradient `g`, term by term as PyTorch's autograd
/// evaluates it, so that special values come out the same (NaN at `t = 0`, for example):
///
/// - `xlogy(t, t) - t * x`: `XlogyBackward` for both arguments, then `MulBackward`:
///   `xlogy(g, t)` (0 where `t == 0`) + `(g * t) / t` + `(-g) * x`. `xlogy(g, t)` is 0 for
///   `g == 0` and a `t` that is not NaN (negative `t` included), `g * ln t` otherwise; `(g * t) / t`
///   is taken as `g` where `t` is finite and nonzero (its exact value, which PyTorch's reaches
///   when the broadcast `g` is summed first: `g * t` would underflow at subnormal `t`);
/// - `exp(t) * (t - x)`: `(g * (t - x)) * exp(t) + g * exp(t)`.
///
/// # Example
/// ```
/// let g = kldiv::grad_target::<false, f64>(1.0, -1.0, 0.5);
/// assert!((g - (0.5_f64.ln() + 1.0 + 1.0)).abs() < 1e-15);
/// assert!(kldiv::grad_target::<false, f64>(1.0, -1.0, 0.0).is_nan());
/// assert_eq!(kldiv::grad_target::<false, f64>(0.0, -1.0, -0.5), 0.0); // as PyTorch
/// ```
#[inline(always)]
pub fn grad_target<const LOG_TARGET: bool, T: Float>(g: f64, x: T, t: T) -> f64 {
    grad_target_with::<LOG_TARGET, T>(g, x, t, transcendental::<LOG_TARGET, T>(t))
}

/// [`grad_target`] given `ft = transcendental(t)`.
#[inline(always)]
pub(crate) fn grad_target_with<const LOG_TARGET: bool, T: Float>(g: f64, x: T, t: T, ft: T) -> f64 {
    let (x64, t64, ft64) = (x.to_f64(), t.to_f64(), ft.to_f64());
    if LOG_TARGET {
        (g * (t64 - x64)) * ft64 + g * ft64
    } else {
        let xlogy_g = if t64 == 0.0 || (g == 0.0 && !t64.is_nan()) {
            0.0
        } else {
            g * ft64
        };
        let g_t_over_t = if t64 != 0.0 && t64.is_finite() {
            g
        } else {
            (g * t64) / t64 // NaN
        };
        xlogy_g + g_t_over_t + (-g) * x64
    }
}

/// The transcendental of every element of `t` (see [`transcendental`]), into `out`. Returns
/// whether [`factored_term`] is every element's [`term_with`]: always with `LOG_TARGET`, else when
/// every `t` is positive, normal and finite.
///
/// `streams` are the slices of this run whose memory goes on beyond it (the run's `x` and `t`
/// as the walk hands them out): while the transcendentals are computed, the lines
/// [`crate::runs::AHEAD`] bytes further on in each are asked for (see [`prefetch_ahead`]). When
/// a slice is a tile (a strided or broadcast operand), those prefetches fetch nothing useful
/// and cost only their instructions.
#[inline(always)]
pub(crate) fn transcendental_slice<const LOG_TARGET: bool, T: Float>(
    t: &[T],
    out: &mut [T],
    streams: &[&[T]],
) -> bool {
    transcendental_slice_with::<LOG_TARGET, T>(t, out, |i| {
        streams.iter().for_each(|s| prefetch_ahead(s, i))
    })
}

/// [`transcendental_slice`], calling `ahead(i)` at the first element `i` of each cache line of
/// `t` to ask for memory that is read later (the transposed path, whose runs are not pieces of
/// one stream, says which).
#[inline(always)]
pub(crate) fn transcendental_slice_with<const LOG_TARGET: bool, T: Float>(
    t: &[T],
    out: &mut [T],
    ahead: impl Fn(usize),
) -> bool {
    if LOG_TARGET {
        map_slice(t, out, T::exp, ahead);
        true
    } else {
        ln_slice_or(t, out, T::xlog_factor, ahead)
    }
}

/// Writes `out[i] = term(x[i], t[i])`, rounded to `T`; the three slices have the same length.
#[inline(always)]
pub(crate) fn terms_slice<const LOG_TARGET: bool, T: Float>(x: &[T], t: &[T], out: &mut [T]) {
    debug_assert!(x.len() == t.len() && t.len() == out.len());
    // The transcendental first, in place in `out` (T's full SIMD width), then the rest.
    if transcendental_slice::<LOG_TARGET, T>(t, out, &[x, t]) {
        terms_given(x, t, out, factored_term::<LOG_TARGET, T>)
    } else {
        terms_given(x, t, out, term_with::<LOG_TARGET, T>)
    }
}

/// `out[i] = term(x[i], t[i], out[i])`, rounded to `T`, where `out` holds the transcendentals.
#[inline(always)]
fn terms_given<T: Float>(x: &[T], t: &[T], out: &mut [T], term: impl Fn(T, T, T) -> f64) {
    for ((o, &xi), &ti) in out.iter_mut().zip(x).zip(t) {
        *o = T::from_f64(term(xi, ti, *o));
    }
}

/// [`transcendental_slice`] as a [`Kernel`]: `out[i] = transcendental(t[i])`, and whether
/// [`factored_term`] gives every term of these `t`.
pub(crate) struct TargetFactor<'a, T> {
    pub(crate) t: &'a [T],
    pub(crate) out: &'a mut [T],
    pub(crate) log_target: bool,
}

impl<T: Float> Kernel for TargetFactor<'_, T> {
    type Output = bool;
    fn log_target(&self) -> bool {
        self.log_target
    }
    #[inline(always)]
    fn run<const LOG_TARGET: bool>(self) -> bool {
        transcendental_slice::<LOG_TARGET, T>(self.t, self.out, &[])
    }
}

/// [`terms_slice`] as a [`Kernel`] for [`crate::simd::dispatch`].
pub(crate) struct Terms<'a, T> {
    pub(crate) x: &'a [T],
    pub(crate) t: &'a [T],
    pub(crate) out: &'a mut [T],
    pub(crate) log_target: bool,
}

impl<T: Float> Kernel for Terms<'_, T> {
    type Output = ();
    fn log_target(&self) -> bool {
        self.log_target
    }
    #[inline(always)]
    fn run<const LOG_TARGET: bool>(self) {
        terms_slice::<LOG_TARGET, T>(self.x, self.t, self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_values_follow_pytorch() {
        let nan = f64::NAN;
        let inf = f64::INFINITY;
        // t = 0: the term is 0 for finite x, NaN for x = -inf (0 * -inf).
        assert_eq!(term::<false, f64>(-2.0, 0.0), 0.0);
        assert!(term::<false, f64>(-inf, 0.0).is_nan());
        // t < 0 and NaN anywhere give NaN.
        assert!(term::<false, f64>(-1.0, -0.5).is_nan());
        assert!(term::<false, f64>(nan, 0.5).is_nan());
        assert!(term::<false, f64>(-1.0, nan).is_nan());
        assert!(term::<false, f32>(-1.0, f32::NAN).is_nan());
        // t = +inf: +inf for negative x, NaN for x = 0 (inf - inf).
        assert_eq!(term::<false, f64>(-1.0, inf), inf);
        assert!(term::<false, f64>(0.0, inf).is_nan());
        // x = +inf with t > 0: -inf.
        assert_eq!(term::<false, f64>(inf, 0.5), -inf);
        // log_target: t = -inf gives 0 * -inf = NaN, as in PyTorch.
        assert!(term::<true, f64>(-1.0, -inf).is_nan());
        assert_eq!(term::<true, f64>(-1.0, 0.0), 1.0);
    }

    #[test]
    fn runs_of_normal_values_take_a_shortcut_to_the_same_bits() {
        fn check<T: Float>(subnormal: T) {
            let normal: Vec<T> = (1..=100).map(|i| T::from_f64(i as f64 / 101.0)).collect();
            let mut fast = vec![T::default(); normal.len()];
            // All positive and normal: the shortcut.
            assert!(transcendental_slice::<false, T>(&normal, &mut fast, &[]));
            // A special value first (general at once) or later (for f32 the shortcut's pass
            // is done again): either way the whole run goes the general way.
            let (zero, neg_zero) = (T::from_f64(0.0), T::from_f64(-0.0));
            for (at, special) in [(0, subnormal), (50, subnormal), (0, zero), (99, neg_zero)] {
                let mut t = normal.clone();
                t[at] = special;
                let mut general = vec![T::default(); t.len()];
                assert!(!transcendental_slice::<false, T>(&t, &mut general, &[]));
                for i in (0..t.len()).filter(|&i| i != at) {
                    assert_eq!(fast[i].to_f64().to_bits(), general[i].to_f64().to_bits());
                    assert_eq!(fast[i].to_f64().to_bits(), t[i].ln().to_f64().to_bits());
                }
                let want = special.xlog_factor().to_f64();
                assert_eq!(general[at].to_f64().to_bits(), want.to_bits(), "{at}");
            }
        }
        check::<f32>(1e-40);
        check::<f64>(1e-310);
        fn ln_normal<T: Float>(v: T) -> T {
            v.ln_normal()
        }
        for v in [f64::MIN_POSITIVE, 1e-300, 0.5, 1.0, 3.0, 1e300, f64::MAX] {
            assert_eq!(ln_normal(v).to_bits(), crate::math::ln_f64(v).to_bits());
        }
    }

    #[test]
    fn positive_targets_take_the_factored_term() {
        // For positive finite t: t * (ln t - x), the difference rounded to f32, the product exact
        // in f64; within an f32 rounding of PyTorch's xlogy(t, t) - t * x (in f64 here).
        for t in [1e-40f32, 1e-30, 0.001, 0.5, 1.0, 3.0, 1e30, f32::MAX] {
            for x in [-1e30f32, -20.0, -0.5, 0.0, 2.0, 1e30, f32::MAX] {
                let ft = crate::math::xlog_factor_f32(t);
                let got = term_with::<false, f32>(x, t, ft);
                assert_eq!(got, t as f64 * (ft - x) as f64, "t {t:e} x {x:e}");
                let (t64, ft64, x64) = (t as f64, ft as f64, x as f64);
                let literal = t64 * ft64 - t64 * x64;
                assert!((got - literal).abs() <= 1e-7 * (t64 * ft64).abs().max((t64 * x64).abs()));
                assert_eq!(add_term::<false, f32>(0.25, x, t, ft).to_bits(), {
                    add_factored_term::<false, f32>(0.25, x, t, ft).to_bits()
                });
            }
        }
        // Special targets keep PyTorch's literal expression.
        assert!(term::<false, f32>(0.0, f32::INFINITY).is_nan()); // inf * 0
        assert!(term::<false, f32>(1.0, f32::INFINITY).is_nan()); // inf - inf
        assert_eq!(term::<false, f32>(-1.0, f32::INFINITY), f64::INFINITY);
        assert_eq!(term::<false, f32>(5.0, 0.0).to_bits(), 0.0f64.to_bits()); // +0, not -0
    }

    #[test]
    fn slice_kernel_rounds_as_the_scalar_term() {
        let x = [-1.0f32, -2.0];
        let t = [0.25f32, 0.75];
        let mut out = [0.0f32; 2];
        terms_slice::<false, f32>(&x, &t, &mut out);
        for i in 0..2 {
            let want = term::<false, f32>(x[i], t[i]) as f32;
            assert_eq!(out[i].to_bits(), want.to_bits());
        }
    }
}
