//! The formula: one element of PyTorch's `kl_div`, and the kernel that writes the unreduced terms.
//!
//! PyTorch, `aten/src/ATen/native/Loss.cpp`, `kl_div`:
//!
//! ```text
//! if (log_target) output = at::exp(target) * (target - input);
//! else            output = at::xlogy(target, target) - target * input;
//! ```
//!
//! `xlogy(t, t)` is NaN where `t` is NaN, 0 where `t == 0`, `t * log(t)` elsewhere (NaN for
//! `t < 0`). Every IEEE special value follows from these expressions, so they are evaluated
//! literally, in `f64` (an `f32` term is rounded once, at the end).

use crate::float::Float;

/// One unreduced term `t * (log t - x)`, written as PyTorch writes it (see the module docs).
///
/// `LOG_TARGET` selects the `log_target=True` form `exp(t) * (t - x)`.
///
/// # Example
/// ```
/// let v = kldiv::term::<false>(-1.0, 0.5);
/// assert!((v - (0.5 * 0.5_f64.ln() + 0.5)).abs() < 1e-15);
/// assert_eq!(kldiv::term::<false>(f64::NEG_INFINITY, 0.0).is_nan(), true); // 0 - 0 * -inf
/// assert_eq!(kldiv::term::<false>(-3.0, 0.0), 0.0);
/// ```
#[inline(always)]
pub fn term<const LOG_TARGET: bool>(x: f64, t: f64) -> f64 {
    if LOG_TARGET {
        t.exp() * (t - x)
    } else {
        xlogy_self(t) - t * x
    }
}

/// `d term / d x` times the incoming gradient `g`, as PyTorch's autograd evaluates it:
/// `-(g * t)`, or `-(g * exp(t))` with `LOG_TARGET`.
///
/// # Example
/// ```
/// assert_eq!(kldiv::grad_input::<false>(2.0, 0.25), -0.5);
/// assert_eq!(kldiv::grad_input::<true>(1.0, 0.0), -1.0);
/// ```
#[inline(always)]
pub fn grad_input<const LOG_TARGET: bool>(g: f64, t: f64) -> f64 {
    if LOG_TARGET {
        -(g * t.exp())
    } else {
        -(g * t)
    }
}

/// `d term / d t` times the incoming gradient `g`, term by term as PyTorch's autograd
/// evaluates it, so that special values come out the same (NaN at `t = 0`, for example):
///
/// - `xlogy(t, t) - t * x`: `g * xlogy(t != 0, t) + (g * t) / t + (-g) * x`
///   (`XlogyBackward` for both arguments, then `MulBackward`);
/// - `exp(t) * (t - x)`: `(g * (t - x)) * exp(t) + g * exp(t)`.
///
/// # Example
/// ```
/// let g = kldiv::grad_target::<false>(1.0, -1.0, 0.5);
/// assert!((g - (0.5_f64.ln() + 1.0 + 1.0)).abs() < 1e-15);
/// assert!(kldiv::grad_target::<false>(1.0, -1.0, 0.0).is_nan());
/// ```
#[inline(always)]
pub fn grad_target<const LOG_TARGET: bool>(g: f64, x: f64, t: f64) -> f64 {
    if LOG_TARGET {
        let e = t.exp();
        (g * (t - x)) * e + g * e
    } else {
        let xlogy_self_arg = if t.is_nan() {
            f64::NAN
        } else if t == 0.0 {
            0.0
        } else {
            t.ln()
        };
        g * xlogy_self_arg + (g * t) / t + (-g) * x
    }
}

/// `xlogy(t, t)` as PyTorch defines it: NaN for NaN, 0 for 0, `t * ln(t)` otherwise.
#[inline(always)]
fn xlogy_self(t: f64) -> f64 {
    if t.is_nan() {
        f64::NAN
    } else if t == 0.0 {
        0.0
    } else {
        t * t.ln()
    }
}

/// Writes `out[i] = term(x[i], t[i])`; the three slices have the same length.
#[inline]
pub(crate) fn terms_slice<T: Float, const LOG_TARGET: bool>(x: &[T], t: &[T], out: &mut [T]) {
    debug_assert!(x.len() == t.len() && t.len() == out.len());
    for ((o, &xi), &ti) in out.iter_mut().zip(x).zip(t) {
        *o = T::from_f64(term::<LOG_TARGET>(xi.to_f64(), ti.to_f64()));
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
        assert_eq!(term::<false>(-2.0, 0.0), 0.0);
        assert!(term::<false>(-inf, 0.0).is_nan());
        // t < 0 and NaN anywhere give NaN.
        assert!(term::<false>(-1.0, -0.5).is_nan());
        assert!(term::<false>(nan, 0.5).is_nan());
        assert!(term::<false>(-1.0, nan).is_nan());
        // t = +inf: +inf for negative x, NaN for x = 0 (inf - inf).
        assert_eq!(term::<false>(-1.0, inf), inf);
        assert!(term::<false>(0.0, inf).is_nan());
        // x = +inf with t > 0: -inf.
        assert_eq!(term::<false>(inf, 0.5), -inf);
        // log_target: t = -inf gives 0 * -inf = NaN, as in PyTorch.
        assert!(term::<true>(-1.0, -inf).is_nan());
        assert_eq!(term::<true>(-1.0, 0.0), 1.0);
    }

    #[test]
    fn slice_kernel_rounds_once() {
        let x = [-1.0f32, -2.0];
        let t = [0.25f32, 0.75];
        let mut out = [0.0f32; 2];
        terms_slice::<f32, false>(&x, &t, &mut out);
        for i in 0..2 {
            let want = term::<false>(x[i] as f64, t[i] as f64) as f32;
            assert_eq!(out[i].to_bits(), want.to_bits());
        }
    }
}
