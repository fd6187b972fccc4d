//! The element types the kernels accept: `f32` and `f64`.

/// A floating-point element type that kldiv computes on (`f32` or `f64`).
///
/// `log` and `exp` are evaluated in the element type's precision, as PyTorch does; the rest of
/// each formula in `f64` (for an `f32` target `t > 0`, the term `t * (ln t - x)` takes the
/// difference in `f32`, once rounded, and the product exactly in `f64`), sums are accumulated
/// in `f64`, and an `f32` result is rounded once, at the end. This trait is sealed: it is implemented for `f32` and `f64` only.
///
/// # Example
/// ```
/// use kldiv::Float;
/// assert_eq!(<f32 as Float>::from_f64(0.5_f64).to_f64(), 0.5);
/// ```
pub trait Float:
    Copy + Send + Sync + Default + PartialOrd + std::fmt::Debug + sealed::Sealed + 'static
{
    /// Positive infinity.
    const INFINITY: Self;
    /// The positive quiet NaN.
    const NAN: Self;
    /// Widens to `f64` (exact for both types).
    fn to_f64(self) -> f64;
    /// Rounds an `f64` to this type (round to nearest even, as `as` does); every NaN becomes
    /// the positive quiet NaN, so that results do not depend on which NaN operand an
    /// instruction happened to propagate.
    fn from_f64(v: f64) -> Self;
    /// The natural logarithm in this type's precision ([`crate::math::ln_f32`] or
    /// [`crate::math::ln_f64`]).
    fn ln(self) -> Self;
    /// The factor `ln t` of `xlogy(t, t) = t * ln t`: [`Float::ln`], except at ±0, where it is
    /// `self`, so that `t * t.xlog_factor()` is `+0` at `t = ±0`, as `xlogy(0, 0)` is.
    fn xlog_factor(self) -> Self;
    /// `e^self` in this type's precision ([`crate::math::exp_f32`] or [`crate::math::exp_f64`]).
    fn exp(self) -> Self;
}

impl Float for f32 {
    const INFINITY: Self = f32::INFINITY;
    const NAN: Self = f32::NAN;
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        // Checked after rounding: one compare per 16 f32 lanes instead of per 8 f64 lanes.
        let r = v as f32;
        if r.is_nan() {
            f32::NAN
        } else {
            r
        }
    }
    #[inline(always)]
    fn ln(self) -> Self {
        crate::math::ln_f32(self)
    }
    #[inline(always)]
    fn xlog_factor(self) -> Self {
        crate::math::xlog_factor_f32(self)
    }
    #[inline(always)]
    fn exp(self) -> Self {
        crate::math::exp_f32(self)
    }
}

impl Float for f64 {
    const INFINITY: Self = f64::INFINITY;
    const NAN: Self = f64::NAN;
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self
    }
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        if v.is_nan() {
            f64::NAN
        } else {
            v
        }
    }
    #[inline(always)]
    fn ln(self) -> Self {
        crate::math::ln_f64(self)
    }
    #[inline(always)]
    fn xlog_factor(self) -> Self {
        crate::math::xlog_factor_f64(self)
    }
    #[inline(always)]
    fn exp(self) -> Self {
        crate::math::exp_f64(self)
    }
}

mod sealed {
    /// What the kernels need beyond [`super::Float`].
    pub trait Sealed: Sized {
        /// The unsigned integer of the same width.
        type Bits: Copy + Ord + Default;
        /// Below this exactly when `self` is positive, normal and finite: see
        /// [`Sealed::normal_offset`].
        const NORMAL_SPAN: Self::Bits;
        /// The bits minus those of the smallest positive normal value, wrapping: below
        /// [`Sealed::NORMAL_SPAN`] exactly for positive, normal, finite values (zero and
        /// subnormals wrap around to large values; negative values, infinities and NaNs lie
        /// above). One integer operation, so that a run is checked with a vector maximum.
        fn normal_offset(self) -> Self::Bits;
        /// `crate::terms::positive_term`: `t * (tr - x)` for positive, finite `t`, `tr = ln t`.
        fn positive_term(x: Self, t: Self, tr: Self) -> f64;
        /// `acc + positive_term(x, t, tr)`, the same bits (for `f32` in one fused multiply-add:
        /// the product is exact, so fusing does not change the rounding).
        fn add_positive_term(acc: f64, x: Self, t: Self, tr: Self) -> f64;
        /// `ln self` for positive, normal, finite `self` (the same bits as [`super::Float::ln`]
        /// there); anything for other values.
        fn ln_normal(self) -> Self;
    }
    impl Sealed for f32 {
        type Bits = u32;
        const NORMAL_SPAN: u32 = f32::INFINITY.to_bits() - f32::MIN_POSITIVE.to_bits();
        #[inline(always)]
        fn normal_offset(self) -> u32 {
            self.to_bits().wrapping_sub(f32::MIN_POSITIVE.to_bits())
        }
        #[inline(always)]
        fn positive_term(x: f32, t: f32, tr: f32) -> f64 {
            // The difference rounded once; the product of two f32 is exact in f64.
            t as f64 * (tr - x) as f64
        }
        #[inline(always)]
        fn add_positive_term(acc: f64, x: f32, t: f32, tr: f32) -> f64 {
            (t as f64).mul_add((tr - x) as f64, acc)
        }
        #[inline(always)]
        fn ln_normal(self) -> Self {
            crate::math::ln_f32_normal(self)
        }
    }
    impl Sealed for f64 {
        type Bits = u64;
        const NORMAL_SPAN: u64 = f64::INFINITY.to_bits() - f64::MIN_POSITIVE.to_bits();
        #[inline(always)]
        fn normal_offset(self) -> u64 {
            self.to_bits().wrapping_sub(f64::MIN_POSITIVE.to_bits())
        }
        #[inline(always)]
        fn positive_term(x: f64, t: f64, tr: f64) -> f64 {
            // As for the special values (no cancellation to avoid in f64; no overflow of
            // t * (tr - x) where t * tr and t * x do not).
            t.mul_add(tr, -(t * x))
        }
        #[inline(always)]
        fn add_positive_term(acc: f64, x: f64, t: f64, tr: f64) -> f64 {
            acc + Self::positive_term(x, t, tr)
        }
        #[inline(always)]
        fn ln_normal(self) -> Self {
            crate::math::ln_f64_normal(self)
        }
    }
}
