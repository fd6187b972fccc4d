//! The element types the kernels accept: `f32` and `f64`.

/// A floating-point element type that kldiv computes on (`f32` or `f64`).
///
/// `log` and `exp` are evaluated in the element type's precision, as PyTorch does; a term is
/// a factor times a difference, `t * (ln t - x)` (or `exp(t) * (t - x)`), with the difference
/// in the element type and the product in `f64` (exact for `f32`); sums are accumulated in
/// `f64`, and an `f32` result is rounded once, at the end. This trait is sealed: it is
/// implemented for `f32` and `f64` only.
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
    /// The larger of `self` and `other`, a NaN ignored (`f32::max`, `f64::max`).
    ///
    /// # Example
    /// ```
    /// use kldiv::Float;
    /// assert_eq!(Float::max(1.0_f32, f32::NAN), 1.0);
    /// ```
    fn max(self, other: Self) -> Self;
}

impl Float for f32 {
    #[inline(always)]
    fn max(self, other: f32) -> f32 {
        f32::max(self, other)
    }
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
    #[inline(always)]
    fn max(self, other: f64) -> f64 {
        f64::max(self, other)
    }
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
        /// Whether a run's positive-normal check is best done in the pass of `ln_normal`
        /// itself (see `crate::runs`): so for `f32`, which saves a pass; not for `f64`, whose
        /// `ln` loop then runs out of vector registers (figures in `docs/performance.md`).
        const CHECK_WITH_LN: bool;
        /// `a * (b - c)` in `f64`, the difference rounded once to `Self` (for `f32` the product
        /// is then exact in `f64`): how a term is a factor times a difference.
        fn scaled_difference(a: Self, b: Self, c: Self) -> f64;
        /// `acc + scaled_difference(a, b, c)`, the same bits (for `f32` in one fused
        /// multiply-add: the product is exact, so fusing does not change the rounding).
        fn add_scaled_difference(acc: f64, a: Self, b: Self, c: Self) -> f64;
        /// `ln self` for positive, normal, finite `self` (the same bits as [`super::Float::ln`]
        /// there); anything for other values.
        fn ln_normal(self) -> Self;
    }
    impl Sealed for f32 {
        type Bits = u32;
        const NORMAL_SPAN: u32 = f32::INFINITY.to_bits() - f32::MIN_POSITIVE.to_bits();
        const CHECK_WITH_LN: bool = true;
        #[inline(always)]
        fn normal_offset(self) -> u32 {
            self.to_bits().wrapping_sub(f32::MIN_POSITIVE.to_bits())
        }
        #[inline(always)]
        fn scaled_difference(a: f32, b: f32, c: f32) -> f64 {
            a as f64 * (b - c) as f64
        }
        #[inline(always)]
        fn add_scaled_difference(acc: f64, a: f32, b: f32, c: f32) -> f64 {
            (a as f64).mul_add((b - c) as f64, acc)
        }
        #[inline(always)]
        fn ln_normal(self) -> Self {
            crate::math::ln_f32_normal(self)
        }
    }
    impl Sealed for f64 {
        type Bits = u64;
        const NORMAL_SPAN: u64 = f64::INFINITY.to_bits() - f64::MIN_POSITIVE.to_bits();
        const CHECK_WITH_LN: bool = false;
        #[inline(always)]
        fn normal_offset(self) -> u64 {
            self.to_bits().wrapping_sub(f64::MIN_POSITIVE.to_bits())
        }
        #[inline(always)]
        fn scaled_difference(a: f64, b: f64, c: f64) -> f64 {
            a * (b - c)
        }
        #[inline(always)]
        fn add_scaled_difference(acc: f64, a: f64, b: f64, c: f64) -> f64 {
            acc + a * (b - c) // not fused: the product is rounded, as in `scaled_difference`
        }
        #[inline(always)]
        fn ln_normal(self) -> Self {
            crate::math::ln_f64_normal(self)
        }
    }
}
