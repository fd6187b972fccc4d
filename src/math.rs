//! `ln` and `exp` for `f32` and `f64`, written once as branch-free scalar code that the compiler
//! vectorises for every SIMD level (see [`crate::runtime::simd_level`]).
//!
//! They use only IEEE adds, multiplies, fused multiply-adds (`mul_add`: one instruction on
//! AVX2, AVX-512 and NEON, the C library's exact `fma` on baseline x86-64), divisions, integer
//! bit operations and selects (no lookup tables, no approximate reciprocals), so the scalar,
//! AVX2 and AVX-512 builds of the same code give the same bits, lane by lane.
//!
//! - `ln_f32`: musl's `logf` (from FreeBSD/fdlibm): reduction to `[sqrt(2)/2, sqrt(2))`, then
//!   fdlibm's formula `ln(1+f) = f - s*(f - R)`, `s = f/(2+f)`, in fused multiply-adds, with a
//!   polynomial `R` of three terms (`scripts/fit_ln_f32.py`). At most 1 ulp from the correctly
//!   rounded result over all 2^32 inputs (`tests/exhaustive.rs`, at every SIMD level; at most
//!   0.90 ulp from the exact value).
//! - `ln_f64`: fdlibm's `e_log.c` with its formula `ln(1+f) = f - s*(f - R)` everywhere. At
//!   most 1 ulp against the C library's `log` on 2 million random and 200,000 near-1 inputs
//!   (unit tests).
//! - `exp_f32`, `exp_f64`: `2^k * exp(r)`, `r = x - k ln2` (Cody-Waite, two constants), a Taylor
//!   polynomial of degree 7 (f32) or 13 (f64) for `exp(r)`, and `2^k` applied in two steps so
//!   that results in the subnormal range are right. At most 1 ulp over all 2^32 `f32` inputs
//!   (`tests/exhaustive.rs`), at most 2 ulp for `f64` (unit tests against the C library).
//! - [`ln_slice`] and [`exp_slice`] run them over slices at the current SIMD level (they live
//!   in `runs.rs`, with the other loops over runs).
//!
//! Special values follow `f32::ln` / `f64::exp` and friends: `ln(0) = -inf`, `ln(x < 0) = NaN`,
//! `ln(inf) = inf`, `exp(-inf) = 0`, `exp(inf) = inf`, NaN in, NaN out.

pub use crate::runs::{exp_slice, ln_slice};

/// Natural logarithm of an `f32` (at most 1 ulp; see the module docs).
///
/// # Example
/// ```
/// assert_eq!(kldiv::math::ln_f32(1.0), 0.0);
/// assert!((kldiv::math::ln_f32(2.0) - std::f32::consts::LN_2).abs() <= f32::EPSILON);
/// assert!(kldiv::math::ln_f32(-1.0).is_nan());
/// ```
#[inline(always)]
pub fn ln_f32(x: f32) -> f32 {
    special_ln(x, ln_f32_positive(x), f32::NEG_INFINITY)
}

/// [`ln_f32`], except at ±0, where it returns `x` itself: the factor `ln t` of
/// `xlogy(t, t) = t * ln t`, chosen so that the product is `+0` at `t = ±0`.
#[inline(always)]
pub(crate) fn xlog_factor_f32(x: f32) -> f32 {
    special_ln(x, ln_f32_positive(x), x)
}

/// `ln x` for positive, finite `x` (normal or subnormal); anything for other `x`.
#[inline(always)]
fn ln_f32_positive(x: f32) -> f32 {
    // Subnormals: scale into the normal range first.
    let sub = x < f32::MIN_POSITIVE;
    let xs = if sub {
        x * f32::from_bits(0x4c000000) // 2^25
    } else {
        x
    };
    ln_f32_scaled(xs, if sub { -25 } else { 0 })
}

/// `ln x` for positive, normal, finite `x` (the same bits as [`ln_f32`] there); anything for
/// other `x`. For runs known to hold only such values (probabilities, mostly).
#[inline(always)]
pub(crate) fn ln_f32_normal(x: f32) -> f32 {
    ln_f32_scaled(x, 0)
}

/// `ln x + k0 ln 2` for positive, normal, finite `x`.
#[inline(always)]
fn ln_f32_scaled(x: f32, k0: i32) -> f32 {
    const LN2_HI: f32 = f32::from_bits(0x3f317180); // 6.9313812256e-01
    const LN2_LO: f32 = f32::from_bits(0x3717f7d1); // 9.0580006145e-06

    // R(z)/z for ln(1+f) = f - s*(f - R), fitted by scripts/fit_ln_f32.py (three terms; musl's
    // logf has four, and is no more exact in this formula).
    const LG1: f32 = f32::from_bits(0x3f2aaab0); // 6.6666698456e-01
    const LG2: f32 = f32::from_bits(0x3eccbd15); // 3.9988008142e-01
    const LG3: f32 = f32::from_bits(0x3e97739f); // 2.9580399394e-01

    let mut ix = x.to_bits();
    let mut k = k0;
    // Reduce to m in [sqrt(2)/2, sqrt(2)), x = 2^k * m.
    ix = ix.wrapping_add(0x3f800000 - 0x3f3504f3);
    k += (ix >> 23) as i32 - 0x7f;
    ix = (ix & 0x007fffff) + 0x3f3504f3;
    let f = f32::from_bits(ix) - 1.0;
    let s = f / (2.0 + f);
    let z = s * s;
    let p = z.mul_add(z.mul_add(LG3, LG2), LG1);
    let dk = k as f32;
    // fdlibm's second formula, ln(1+f) = f - s*(f - R) with R = z*P(z), in fused steps (five
    // fewer operations than musl's s*(hfsq+R) - hfsq + f with hfsq = f*f/2 and four terms; at
    // most 0.90 ulp from the exact value over all inputs, against musl's 0.87), plus dk*ln2
    // in two parts.
    let f_r = (-z).mul_add(p, f);
    dk.mul_add(LN2_HI, (-s).mul_add(f_r, dk * LN2_LO) + f)
}

/// Natural logarithm of an `f64` (below 1 ulp; see the module docs).
///
/// # Example
/// ```
/// assert_eq!(kldiv::math::ln_f64(1.0), 0.0);
/// assert_eq!(kldiv::math::ln_f64(0.0), f64::NEG_INFINITY);
/// assert!((kldiv::math::ln_f64(10.0) - std::f64::consts::LN_10).abs() <= f64::EPSILON);
/// ```
#[inline(always)]
pub fn ln_f64(x: f64) -> f64 {
    special_ln(x, ln_f64_positive(x), f64::NEG_INFINITY)
}

/// [`ln_f64`], except at ±0, where it returns `x` itself (see [`xlog_factor_f32`]).
#[inline(always)]
pub(crate) fn xlog_factor_f64(x: f64) -> f64 {
    special_ln(x, ln_f64_positive(x), x)
}

/// `ln x` for positive, finite `x` (normal or subnormal); anything for other `x`.
#[inline(always)]
fn ln_f64_positive(x: f64) -> f64 {
    let sub = x < f64::MIN_POSITIVE;
    let xs = if sub {
        x * f64::from_bits(0x4350000000000000) // 2^54
    } else {
        x
    };
    ln_f64_scaled(xs, if sub { -54 } else { 0 })
}

/// `ln x` for positive, normal, finite `x` (see [`ln_f32_normal`]).
#[inline(always)]
pub(crate) fn ln_f64_normal(x: f64) -> f64 {
    ln_f64_scaled(x, 0)
}

/// `ln x + k0 ln 2` for positive, normal, finite `x`.
#[inline(always)]
fn ln_f64_scaled(x: f64, k0: i32) -> f64 {
    const LN2_HI: f64 = f64::from_bits(0x3fe62e42fee00000); // 6.93147180369123816490e-01
    const LN2_LO: f64 = f64::from_bits(0x3dea39ef35793c76); // 1.90821492927058770002e-10
    const LG1: f64 = f64::from_bits(0x3fe5555555555593); // 6.666666666666735130e-01
    const LG2: f64 = f64::from_bits(0x3fd999999997fa04); // 3.999999999940941908e-01
    const LG3: f64 = f64::from_bits(0x3fd2492494229359); // 2.857142874366239149e-01
    const LG4: f64 = f64::from_bits(0x3fcc71c51d8e78af); // 2.222219843214978396e-01
    const LG5: f64 = f64::from_bits(0x3fc7466496cb03de); // 1.818357216161805012e-01
    const LG6: f64 = f64::from_bits(0x3fc39a09d078c69f); // 1.531383769920937332e-01
    const LG7: f64 = f64::from_bits(0x3fc2f112df3e5244); // 1.479819860511658591e-01

    let ix = x.to_bits();
    let hx = (ix >> 32) as u32;
    let mut k: i32 = ((hx >> 20) as i32) - 1023 + k0;
    let hm = hx & 0x000fffff;
    // Normalise m into [sqrt(2)/2, sqrt(2)).
    let i = (hm + 0x95f64) & 0x100000;
    let m = f64::from_bits((((hm | (i ^ 0x3ff00000)) as u64) << 32) | (ix & 0xffff_ffff));
    k += (i >> 20) as i32;
    let f = m - 1.0;
    let s = f / (2.0 + f);
    let dk = k as f64;
    let z = s * s;
    let mut p = LG7;
    for c in [LG6, LG5, LG4, LG3, LG2, LG1] {
        p = p.mul_add(z, c);
    }
    let r = z * p;
    // fdlibm's second formula: ln(1+f) = f - s*(f - R).
    dk.mul_add(LN2_HI, -(s.mul_add(f - r, -(dk * LN2_LO)) - f))
}

/// The IEEE values `ln`'s special cases need, for `f32` and `f64`.
trait Ieee: Copy + PartialOrd {
    const ZERO: Self;
    const INFINITY: Self;
    const NAN: Self;
}

impl Ieee for f32 {
    const ZERO: f32 = 0.0;
    const INFINITY: f32 = f32::INFINITY;
    const NAN: f32 = f32::NAN;
}

impl Ieee for f64 {
    const ZERO: f64 = 0.0;
    const INFINITY: f64 = f64::INFINITY;
    const NAN: f64 = f64::NAN;
}

/// `ln`'s special values around `y = ln x` for positive, finite `x`: `at_zero` at ±0, NaN
/// below 0 and at NaN, +inf at +inf.
#[inline(always)]
fn special_ln<F: Ieee>(x: F, y: F, at_zero: F) -> F {
    if x == F::ZERO {
        at_zero
    } else if x == F::INFINITY {
        x
    } else if x > F::ZERO {
        y
    } else {
        F::NAN // negative or NaN
    }
}

/// `e^x` for an `f32` (at most 1 ulp; see the module docs).
///
/// # Example
/// ```
/// assert_eq!(kldiv::math::exp_f32(0.0), 1.0);
/// assert_eq!(kldiv::math::exp_f32(f32::NEG_INFINITY), 0.0);
/// assert!((kldiv::math::exp_f32(1.0) - std::f32::consts::E).abs() <= 2.0 * f32::EPSILON);
/// ```
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    // Clamp so that k fits the two-step scaling.
    let xc = x.clamp(-110.0, 100.0); // NaN stays NaN
    let (r, k) = exp_f32_reduce(xc);
    exp_f32_from_reduced(r, k)
}

/// `(r, k)` with `x = k ln(2) + r`, `|r| <= ln(2)/2` (Cody-Waite, two constants).
#[inline(always)]
fn exp_f32_reduce(x: f32) -> (f32, i32) {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = f32::from_bits(0x3f318000); // 0.693359375, exact times k
    const LN2_LO: f32 = -2.121_944_4e-4;
    const MAGIC: f32 = 12582912.0; // 1.5 * 2^23: adding it rounds to an integer
    let kb = x.mul_add(LOG2E, MAGIC);
    let kf = kb - MAGIC;
    let k = (kb.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    ((-kf).mul_add(LN2_LO, (-kf).mul_add(LN2_HI, x)), k)
}

/// `2^k e^r` for `|r| <= ln(2)/2`: a Taylor polynomial of degree 7 by Horner's rule, and `2^k`
/// applied in two steps so that results in the subnormal range are right.
#[inline(always)]
fn exp_f32_from_reduced(r: f32, k: i32) -> f32 {
    let mut p: f32 = 1.0 / 5040.0;
    for c in [720.0, 120.0, 24.0, 6.0, 2.0, 1.0, 1.0] {
        p = p.mul_add(r, 1.0 / c);
    }
    let k1 = k >> 1;
    let k2 = k - k1;
    let s1 = f32::from_bits(((k1 + 127) as u32) << 23);
    let s2 = f32::from_bits(((k2 + 127) as u32) << 23);
    (p * s1) * s2
}

/// `e^x` for `x <= 0` that is not below -87, for the exponentials of a softmax: [`exp_f32`]'s
/// reduction, `2^k` in one step (the result is normal), and a minimax polynomial of degree 6
/// (`scripts/fit_exp_f32.py`) in place of the Taylor polynomial of degree 7: one multiply-add
/// fewer an element, within 1.06 ulp on every input (`make test-exhaustive`). Below -87,
/// `e^-87` (about `1.6e-38`: callers treat such values as 0); NaN stays NaN. The softmax runs
/// its two halves, [`exp_f32_unit_reduce`] and [`exp_f32_unit_finish`], as two loops over a
/// block in L1: on Zen 2, 15% faster than one loop of the whole (docs/performance.md); the
/// tests check the whole.
#[cfg(test)]
fn exp_f32_unit(x: f32) -> f32 {
    let (r, scale) = exp_f32_unit_reduce(x);
    exp_f32_unit_finish(r, scale)
}

/// The first half of `exp_f32_unit`: `(r, 2^k)` with `x = k ln(2) + r` (`x` clamped first).
#[inline(always)]
pub(crate) fn exp_f32_unit_reduce(x: f32) -> (f32, f32) {
    let xc = if x < -87.0 { -87.0 } else { x };
    let (r, k) = exp_f32_reduce(xc);
    (r, f32::from_bits(((k + 127) as u32) << 23))
}

/// The second half of `exp_f32_unit`: `e^r 2^k` from [`exp_f32_unit_reduce`]'s `(r, 2^k)`.
#[inline(always)]
pub(crate) fn exp_f32_unit_finish(r: f32, scale: f32) -> f32 {
    let mut p = f32::from_bits(0x3ab5_5cb1);
    for c in [
        0x3c09_3681,
        0x3d2a_ac4d,
        0x3e2a_aa05,
        0x3eff_fffd,
        0x3f80_0000,
        0x3f80_0000,
    ] {
        p = p.mul_add(r, f32::from_bits(c));
    }
    p * scale
}

/// `e^x - 1` for an `f32`, with a small relative error near 0 as well (at most 2 ulp; tests
/// below): `e^x - 1 = 2^k (e^r - 1) + (2^k - 1)` with `e^r - 1` a Taylor polynomial to `r^8/8!`
/// (which does not cancel) and one rounding for the sum. `+inf` above 88 (where `e^x` nears
/// the largest `f32`), `-1` below -30.
///
/// # Example
/// ```
/// let x = 1e-6_f32;
/// let want = f64::from(x).exp_m1();
/// let got = f64::from(kldiv::math::expm1_f32(x));
/// assert!((got - want).abs() <= 2.0 * f64::from(f32::EPSILON) * want);
/// assert_eq!(kldiv::math::expm1_f32(f32::NEG_INFINITY), -1.0);
/// ```
#[inline(always)]
pub fn expm1_f32(x: f32) -> f32 {
    let xc = x.clamp(-30.0, 88.0); // NaN stays NaN
    let (r, k) = exp_f32_reduce(xc);
    let mut p: f32 = 1.0 / 40320.0;
    for c in [5040.0, 720.0, 120.0, 24.0, 6.0, 2.0] {
        p = p.mul_add(r, 1.0 / c);
    }
    let em = r.mul_add(r * p, r); // e^r - 1
    let two_k = f32::from_bits(((k + 127) as u32) << 23);
    let v = two_k.mul_add(em, two_k - 1.0);
    if x > 88.0 {
        f32::INFINITY
    } else {
        v
    }
}

/// `ln(1 + x)` for an `f32`, with a small relative error near 0 as well: `u = 1 + x` rounded,
/// then `ln u + (x - (u - 1)) / u`, the second term correcting the rounding of `u` (exact:
/// `u - 1` and `x - (u - 1)` round nothing). For `x > -1 + 2^-24` (where `u` is a positive
/// normal number) and finite.
#[inline(always)]
pub(crate) fn log1p_f32(x: f32) -> f32 {
    let u = 1.0 + x;
    let c = x - (u - 1.0);
    ln_f32_normal(u) + c / u
}

/// `e^x` for an `f64` (at most 2 ulp; see the module docs).
///
/// # Example
/// ```
/// assert_eq!(kldiv::math::exp_f64(0.0), 1.0);
/// assert_eq!(kldiv::math::exp_f64(1000.0), f64::INFINITY);
/// assert!((kldiv::math::exp_f64(1.0) - std::f64::consts::E).abs() <= 2.0 * f64::EPSILON);
/// ```
#[inline(always)]
pub fn exp_f64(x: f64) -> f64 {
    let (r, k) = exp_f64_reduce(x.clamp(-750.0, 710.0)); // NaN stays NaN
    let p = exp_f64_poly(r);
    let k1 = k >> 1;
    let k2 = k - k1;
    let s1 = f64::from_bits(((k1 + 1023) as u64) << 52);
    let s2 = f64::from_bits(((k2 + 1023) as u64) << 52);
    (p * s1) * s2
}

/// `(r, k)` with `x = k ln(2) + r`, `|r| <= ln(2)/2` (Cody-Waite, two constants).
#[inline(always)]
fn exp_f64_reduce(x: f64) -> (f64, i64) {
    const LOG2E: f64 = std::f64::consts::LOG2_E;
    const LN2_HI: f64 = f64::from_bits(0x3fe62e42fee00000);
    const LN2_LO: f64 = f64::from_bits(0x3dea39ef35793c76);
    const MAGIC: f64 = 6755399441055744.0; // 1.5 * 2^52
    let kb = x.mul_add(LOG2E, MAGIC);
    let kf = kb - MAGIC;
    let k = (kb.to_bits() as i64).wrapping_sub(MAGIC.to_bits() as i64);
    ((-kf).mul_add(LN2_LO, (-kf).mul_add(LN2_HI, x)), k)
}

/// `e^r` for `|r| <= ln(2)/2`: the Taylor polynomial of degree 13, by Horner's rule.
#[inline(always)]
fn exp_f64_poly(r: f64) -> f64 {
    let mut p: f64 = 1.0 / 6227020800.0; // 1/13!
    for d in [
        479001600.0,
        39916800.0,
        3628800.0,
        362880.0,
        40320.0,
        5040.0,
        720.0,
        120.0,
        24.0,
        6.0,
        2.0,
        1.0,
        1.0,
    ] {
        p = p.mul_add(r, 1.0 / d);
    }
    p
}

/// [`exp_f64_unit_in_place`]'s first half: `r` and `2^k` (`(0, 0)` below -708, where the
/// result is 0).
#[inline(always)]
fn exp_f64_unit_reduce(x: f64) -> (f64, f64) {
    let (r, k) = exp_f64_reduce(x);
    let s = f64::from_bits((k.wrapping_add(1023) as u64) << 52);
    if x < -708.0 {
        (0.0, 0.0)
    } else {
        (r, s)
    }
}

/// `e^x` of each element of `x`, in place, for `x <= 0`: the `f64` exponentials of a softmax
/// (the exact path of the losses from logits). [`exp_f64`]'s steps with `2^k` applied in one
/// step, so [`exp_f64`]'s bits for `x >= -708`, and 0 below (where `e^x < 2^-1021`: a
/// probability that small changes no sum and no `f32` gradient; [`exp_f64`] splits `2^k` in
/// two there, with a shift of `f64` lanes that AVX2 does not have). NaN stays NaN. The
/// reduction and the polynomial are two loops over pieces in L1, as [`exp_f32_unit_reduce`]
/// and [`exp_f32_unit_finish`]: each loop keeps its constants in registers (the exact path of
/// rows of 1000 took 10% less on Zen 2).
#[inline(always)]
pub(crate) fn exp_f64_unit_in_place(x: &mut [f64]) {
    const PIECE: usize = 256;
    if x.len() < PIECE {
        // One loop: zeroing the buffer would cost short rows more than the split saves.
        for x in x.iter_mut() {
            let (r, s) = exp_f64_unit_reduce(*x);
            *x = exp_f64_poly(r) * s;
        }
        return;
    }
    let mut scale = [0.0_f64; PIECE];
    for x in x.chunks_mut(PIECE) {
        let scale = &mut scale[..x.len()];
        for (x, s) in x.iter_mut().zip(scale.iter_mut()) {
            (*x, *s) = exp_f64_unit_reduce(*x);
        }
        for (x, &s) in x.iter_mut().zip(scale.iter()) {
            *x = exp_f64_poly(*x) * s;
        }
    }
}

// No `unsafe` here, and millions of inputs: not run under Miri.
#[cfg(all(test, not(miri)))]
mod tests {
    use super::*;

    /// Distance in ulps between two finite values of the same sign class.
    fn ulps64(a: f64, b: f64) -> f64 {
        if a == b {
            return 0.0;
        }
        ((a - b) / (b.abs() * f64::EPSILON).max(f64::from_bits(1))).abs()
    }

    fn randoms(n: usize, seed: u64) -> impl Iterator<Item = u64> {
        let mut s = seed;
        (0..n).map(move |_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        })
    }

    #[test]
    fn ln_f64_is_within_one_ulp_of_libm() {
        let mut worst: f64 = 0.0;
        for bits in randoms(2_000_000, 0x9e3779b97f4a7c15) {
            let x = f64::from_bits(bits & 0x7fff_ffff_ffff_ffff);
            if !x.is_finite() || x == 0.0 {
                continue;
            }
            worst = worst.max(ulps64(ln_f64(x), x.ln()));
        }
        // near 1, where cancellation is worst
        for i in 0..200_000 {
            let x = 1.0 + (i as f64 - 100_000.0) * 1e-7;
            worst = worst.max(ulps64(ln_f64(x), x.ln()));
        }
        assert!(worst <= 1.0, "worst {worst} ulp");
    }

    #[test]
    fn exp_f64_is_within_two_ulp_of_libm() {
        let mut worst: f64 = 0.0;
        for (i, bits) in randoms(2_000_000, 12345).enumerate() {
            let x = (bits >> 11) as f64 / (1u64 << 53) as f64 * 1460.0 - 745.0;
            let x = if i % 2 == 0 { x / 1000.0 } else { x };
            let (got, want) = (exp_f64(x), x.exp());
            if want.is_finite() && want >= f64::MIN_POSITIVE {
                worst = worst.max(ulps64(got, want));
            } else if want == 0.0 || want.is_infinite() {
                assert_eq!(got, want, "exp({x})");
            } else {
                assert!((got - want).abs() <= 2.0 * f64::from_bits(1), "exp({x})");
            }
        }
        assert!(worst <= 2.0, "worst {worst} ulp");
    }

    /// [`exp_f64_unit_in_place`] has [`exp_f64`]'s bits from -708 up, 0 below, NaN for NaN
    /// (a million inputs: whole pieces and a remainder; and a short slice).
    #[test]
    fn exp_f64_unit_is_exp_f64_down_to_its_cut() {
        let mut x: Vec<f64> = randoms(1_000_000, 4242)
            .map(|bits| -((bits >> 11) as f64 / (1u64 << 53) as f64) * 760.0)
            .collect();
        x.extend([0.0, -708.0, -708.5, f64::NEG_INFINITY, f64::NAN]);
        let mut e = x.clone();
        exp_f64_unit_in_place(&mut e);
        let mut short = x[x.len() - 100..].to_vec(); // the one-loop form of short slices
        exp_f64_unit_in_place(&mut short);
        e.extend(short);
        x.extend_from_within(x.len() - 100..);
        for (&x, &e) in x.iter().zip(&e) {
            let want = if x < -708.0 { 0.0 } else { exp_f64(x) };
            let same = e.to_bits() == want.to_bits() || (e.is_nan() && want.is_nan());
            assert!(same, "exp({x}): {e} against {want}");
        }
        assert_eq!(e[1_000_000], 1.0);
    }

    /// Distance in `f32` ulps (of `want`, rounded to `f32`) from `got` to the exact `want`.
    fn ulps32(got: f32, want: f64) -> f64 {
        let w = (want.abs() as f32).max(f32::MIN_POSITIVE);
        let ulp = (f32::from_bits(w.to_bits() + 1) - w) as f64;
        (got as f64 - want).abs() / ulp
    }

    /// [`exp_f32_unit`] on every `f32` in [-87, 0] (a softmax's exponents), against `f64`'s
    /// `exp`: within 1.06 ulp (1.052 measured); below -87 `e^-87`, NaN for NaN.
    #[test]
    #[ignore = "a billion inputs: run in release mode (make test-exhaustive)"]
    fn exp_f32_unit_on_every_input_of_a_softmax() {
        let worst = |bits: std::ops::Range<u32>| {
            bits.map(|b| {
                let x = f32::from_bits(b);
                ulps32(exp_f32_unit(x), (x as f64).exp())
            })
            .fold(0.0, f64::max)
        };
        // Negative floats from -0 (bit 31 alone) to -87, in two halves.
        let (lo, hi) = (1u32 << 31, (-87.0f32).to_bits() + 1);
        let mid = lo + (hi - lo) / 2;
        let w = std::thread::scope(|s| {
            let h = s.spawn(|| worst(mid..hi));
            worst(lo..mid).max(h.join().expect("the thread ran"))
        });
        assert!(w <= 1.06, "worst {w} ulp");
        let at = |x: f32| exp_f32_unit(x).to_bits();
        assert_eq!(at(-1000.0), at(-87.0));
        assert_eq!(at(f32::NEG_INFINITY), at(-87.0));
        assert!(exp_f32_unit(f32::NAN).is_nan());
    }

    #[test]
    fn expm1_and_log1p_are_within_two_ulp() {
        let (mut e, mut l) = (0.0f64, 0.0f64);
        for (i, bits) in randoms(2_000_000, 777).enumerate() {
            let u = (bits >> 11) as f64 / (1u64 << 53) as f64;
            // Near 0 on a log scale, and over the whole range.
            let small = (if i % 4 == 0 { -1.0 } else { 1.0 }) * (-40.0 * u).exp2();
            let x = if i % 2 == 0 { small } else { u * 118.0 - 30.0 } as f32;
            e = e.max(ulps32(expm1_f32(x), (x as f64).exp_m1()));
            let y = if i % 2 == 0 {
                small
            } else {
                (u * 70.0 - 24.0).exp2() - 1.0
            } as f32;
            if y > -1.0 + f32::EPSILON {
                l = l.max(ulps32(log1p_f32(y), (y as f64).ln_1p()));
            }
        }
        assert!(e <= 2.0, "expm1_f32: worst {e} ulp");
        assert!(l <= 2.0, "log1p_f32: worst {l} ulp");
        assert_eq!(expm1_f32(f32::INFINITY), f32::INFINITY);
        assert_eq!(expm1_f32(89.0), f32::INFINITY);
        assert!(expm1_f32(f32::NAN).is_nan());
        assert_eq!(log1p_f32(0.0), 0.0);
    }

    #[test]
    fn special_values() {
        for (x, want) in [
            (0.0, f64::NEG_INFINITY),
            (-0.0, f64::NEG_INFINITY),
            (f64::INFINITY, f64::INFINITY),
        ] {
            assert_eq!(ln_f64(x), want);
            assert_eq!(ln_f32(x as f32), want as f32);
        }
        for x in [-1.0, f64::NEG_INFINITY, f64::NAN, -1e-30] {
            assert!(ln_f64(x).is_nan());
            assert!(ln_f32(x as f32).is_nan());
        }
        assert_eq!(ln_f64(f64::from_bits(1)), f64::from_bits(1).ln()); // smallest subnormal
        assert_eq!(ln_f32(f32::from_bits(1)), f32::from_bits(1).ln());
        assert_eq!(exp_f64(f64::NEG_INFINITY), 0.0);
        assert_eq!(exp_f64(f64::INFINITY), f64::INFINITY);
        assert!(exp_f64(f64::NAN).is_nan());
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(f32::INFINITY), f32::INFINITY);
        assert!(exp_f32(f32::NAN).is_nan());
        assert_eq!(exp_f32(-0.0), 1.0);
    }
}
