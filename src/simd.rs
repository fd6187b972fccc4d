//! Where dispatch lives: the SIMD level, detected once at run time, and [`dispatch`], which
//! runs a kernel compiled for that level.
//!
//! Every kernel is written once, as plain Rust over slices (see `reduce.rs`, `terms.rs`,
//! `grad.rs`, `math.rs`), marked `#[inline(always)]`; [`dispatch`] inlines it into a function
//! compiled with `#[target_feature]` for AVX-512 or AVX2, or calls it as it is (baseline
//! x86-64, or NEON on aarch64, where it is baseline). The kernels use only IEEE operations that
//! every level evaluates identically, in the same order (a `mul_add` is one fused instruction
//! with AVX2/AVX-512/NEON and the C library's exact `fma` on baseline x86-64, so it rounds once
//! everywhere), so all levels give the same bits; the
//! tests force each level (`KLDIV_SIMD` or [`set_simd_level`]) and compare.

use std::cell::Cell;
use std::sync::atomic::{AtomicU8, Ordering};

/// An instruction-set level the kernels can be compiled for.
///
/// # Example
/// ```
/// use kldiv::runtime::{simd_level, SimdLevel};
/// assert!(simd_level() >= SimdLevel::Scalar);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SimdLevel {
    /// The target's baseline (SSE2 on x86-64, NEON on aarch64).
    Scalar = 1,
    /// AVX2 (x86-64).
    Avx2 = 2,
    /// AVX-512 F/DQ/BW/VL (x86-64).
    Avx512 = 3,
}

impl SimdLevel {
    /// The level's name, as `KLDIV_SIMD` spells it: `scalar`, `avx2` or `avx512`.
    ///
    /// # Example
    /// ```
    /// assert_eq!(kldiv::runtime::SimdLevel::Avx2.name(), "avx2");
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            SimdLevel::Scalar => "scalar",
            SimdLevel::Avx2 => "avx2",
            SimdLevel::Avx512 => "avx512",
        }
    }

    /// The level named `name` (`scalar`, `avx2`, `avx512`), if any.
    ///
    /// # Example
    /// ```
    /// assert_eq!(kldiv::runtime::SimdLevel::from_name("avx512"), Some(kldiv::runtime::SimdLevel::Avx512));
    /// ```
    pub fn from_name(name: &str) -> Option<SimdLevel> {
        match name.trim().to_ascii_lowercase().as_str() {
            "scalar" => Some(SimdLevel::Scalar),
            "avx2" => Some(SimdLevel::Avx2),
            "avx512" => Some(SimdLevel::Avx512),
            _ => None,
        }
    }

    #[inline]
    fn from_u8(v: u8) -> SimdLevel {
        match v {
            3 => SimdLevel::Avx512,
            2 => SimdLevel::Avx2,
            _ => SimdLevel::Scalar,
        }
    }
}

/// The best level this CPU supports.
///
/// # Example
/// ```
/// assert!(kldiv::runtime::detected_simd_level() >= kldiv::runtime::simd_level());
/// ```
pub fn detected_simd_level() -> SimdLevel {
    // Miri runs the baseline code (it does not interpret every AVX-512 intrinsic).
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    {
        if is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512dq")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
        {
            return SimdLevel::Avx512;
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return SimdLevel::Avx2;
        }
    }
    SimdLevel::Scalar
}

const UNSET: u8 = 0;
static LEVEL: AtomicU8 = AtomicU8::new(UNSET);

thread_local! {
    /// The level [`with_simd_level`] asks for on this thread (UNSET: none).
    static FORCED: Cell<u8> = const { Cell::new(UNSET) };
}

/// The level the kernels run at: the detected one, lowered by the `KLDIV_SIMD` environment
/// variable (`scalar`, `avx2`, `avx512`) or by [`set_simd_level`], or the one
/// [`with_simd_level`] sets for the calling thread's kernels. Results do not depend on it.
///
/// # Example
/// ```
/// println!("kldiv runs at {}", kldiv::runtime::simd_level().name());
/// ```
#[inline]
pub fn simd_level() -> SimdLevel {
    match FORCED.with(Cell::get) {
        UNSET => match LEVEL.load(Ordering::Relaxed) {
            UNSET => first_simd_level(),
            v => SimdLevel::from_u8(v),
        },
        v => SimdLevel::from_u8(v),
    }
}

/// Runs `f` with the kernels it starts on this thread, and their share on the pool's threads,
/// at `level` (or the best level the CPU supports if that is lower), without changing the level
/// of other callers: tests and benchmarks call each level within one process this way, as
/// blake3's tests call each backend.
///
/// # Example
/// ```
/// use kldiv::runtime::{simd_level, with_simd_level, SimdLevel};
/// let x = ndarray::Array1::from_elem(100_000, -2.0_f32);
/// let t = ndarray::Array1::from_elem(100_000, 0.5_f32);
/// let sums = [SimdLevel::Scalar, SimdLevel::Avx2, SimdLevel::Avx512]
///     .map(|level| with_simd_level(level, || kldiv::kl_div_sum(x.view(), t.view(), false)));
/// assert!(sums.iter().all(|s| s == &sums[0])); // every level, the same bits
/// assert_eq!(with_simd_level(SimdLevel::Scalar, simd_level), SimdLevel::Scalar);
/// ```
pub fn with_simd_level<R>(level: SimdLevel, f: impl FnOnce() -> R) -> R {
    let level = level.min(detected_simd_level());
    Context {
        forced: level as u8,
    }
    .enter(f)
}

/// What a kernel call carries to every thread that runs a share of it: the level
/// [`with_simd_level`] forced on the calling thread, if any. Each thread enters it (and the
/// floating-point environment the kernels assume, see [`with_default_fp`]) around its share.
#[derive(Clone, Copy)]
pub(crate) struct Context {
    forced: u8,
}

impl Context {
    /// The calling thread's context.
    pub(crate) fn current() -> Context {
        Context {
            forced: FORCED.with(Cell::get),
        }
    }

    /// Runs `f` on this thread in this context.
    #[inline]
    pub(crate) fn enter<R>(self, f: impl FnOnce() -> R) -> R {
        struct Restore(u8);
        impl Drop for Restore {
            fn drop(&mut self) {
                FORCED.with(|c| c.set(self.0));
            }
        }
        let _restore = Restore(FORCED.with(|c| c.replace(self.forced)));
        with_default_fp(f)
    }
}

/// [`simd_level`]'s first call: reads `KLDIV_SIMD` (out of line: every kernel call inlines the
/// rest).
#[cold]
#[inline(never)]
fn first_simd_level() -> SimdLevel {
    let requested = std::env::var("KLDIV_SIMD")
        .ok()
        .and_then(|v| SimdLevel::from_name(&v));
    set_simd_level(requested.unwrap_or(SimdLevel::Avx512))
}

/// Runs the kernels of every caller at `level`, or at the best level the CPU supports if that
/// is lower; returns the level set (see also [`with_simd_level`]).
///
/// # Example
/// ```
/// use kldiv::runtime::{set_simd_level, SimdLevel};
/// assert_eq!(set_simd_level(SimdLevel::Scalar), SimdLevel::Scalar);
/// set_simd_level(SimdLevel::Avx512); // back to the best available
/// ```
pub fn set_simd_level(level: SimdLevel) -> SimdLevel {
    let level = level.min(detected_simd_level());
    LEVEL.store(level as u8, Ordering::Relaxed);
    level
}

/// A kernel over slices, run by [`dispatch`], written once for both forms of the target:
/// `run::<LOG_TARGET>` is the instance for a target of log-probabilities, and [`dispatch`] is
/// the one place that turns the runtime `log_target` into it. Implementations mark `run`
/// `#[inline(always)]` so that it is compiled into each level's function.
pub(crate) trait Kernel: Sized {
    type Output;
    /// Whether the target holds log-probabilities (which instance of `run` runs).
    fn log_target(&self) -> bool;
    /// The kernel for a target of probabilities, or of log-probabilities with `LOG_TARGET`.
    fn run<const LOG_TARGET: bool>(self) -> Self::Output;
}

/// `kernel`'s instance for its `log_target`, compiled into the caller (a level's function).
#[inline(always)]
fn run<K: Kernel>(kernel: K) -> K::Output {
    if kernel.log_target() {
        kernel.run::<true>()
    } else {
        kernel.run::<false>()
    }
}

/// Runs `kernel` compiled for the current [`simd_level`].
#[inline(always)]
pub(crate) fn dispatch<K: Kernel>(kernel: K) -> K::Output {
    match simd_level() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `simd_level` never exceeds `detected_simd_level`, so the CPU has AVX-512.
        SimdLevel::Avx512 => unsafe { run_avx512(kernel) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, the CPU has AVX2 and FMA.
        SimdLevel::Avx2 => unsafe { run_avx2(kernel) },
        _ => run(kernel),
    }
}

/// # Safety
/// The CPU must support AVX-512 F/DQ/BW/VL, AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl,avx2,fma")]
unsafe fn run_avx512<K: Kernel>(kernel: K) -> K::Output {
    run(kernel)
}

/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_avx2<K: Kernel>(kernel: K) -> K::Output {
    run(kernel)
}

/// Runs `f` in the floating-point environment the kernels are written for (and Rust assumes):
/// round to nearest, no flush-to-zero or denormals-are-zero, exceptions masked. The caller's
/// environment is restored afterwards. A library built with fast-math, or
/// `torch.set_flush_denormal(True)`, sets flush-to-zero on its thread, and threads started from
/// it inherit the mode: without this, a subnormal target's `ln` would read 0 on such a thread.
#[inline]
pub(crate) fn with_default_fp<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(Option<fp_env::Env>);
    impl Drop for Restore {
        fn drop(&mut self) {
            if let Some(env) = self.0 {
                fp_env::set(env);
            }
        }
    }
    let caller = fp_env::get();
    let _restore = Restore((!fp_env::is_default(caller)).then(|| {
        fp_env::set(fp_env::DEFAULT);
        caller
    }));
    f()
}

/// The x86-64 MXCSR register.
#[cfg(all(target_arch = "x86_64", not(miri)))]
mod fp_env {
    pub(super) type Env = u32;
    /// Round to nearest, all exceptions masked, FTZ and DAZ off, no exception flag raised.
    pub(super) const DEFAULT: Env = 0x1f80;

    /// Whether `env` is [`DEFAULT`] but for the sticky exception flags (bits 0-5).
    #[inline]
    pub(super) fn is_default(env: Env) -> bool {
        env & !0x3f == DEFAULT
    }

    #[inline]
    pub(super) fn get() -> Env {
        let mut csr = 0u32;
        // SAFETY: `stmxcsr` stores the 32-bit MXCSR at the address given, a live `u32`.
        unsafe {
            std::arch::asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack, preserves_flags))
        };
        csr
    }

    #[inline(never)]
    pub(super) fn set(env: Env) {
        // SAFETY: `ldmxcsr` loads MXCSR from a live `u32`; `env` is a value read from MXCSR
        // or the default, with no reserved bit set.
        unsafe {
            std::arch::asm!("ldmxcsr [{}]", in(reg) &env, options(nostack, preserves_flags, readonly))
        };
    }
}

/// The AArch64 FPCR register (rounding mode, flush-to-zero, default NaN, trap enables).
#[cfg(all(target_arch = "aarch64", not(miri)))]
mod fp_env {
    pub(super) type Env = u64;
    /// Round to nearest, no flush-to-zero, no default NaN, no traps.
    pub(super) const DEFAULT: Env = 0;

    #[inline]
    pub(super) fn is_default(env: Env) -> bool {
        env == DEFAULT
    }

    #[inline]
    pub(super) fn get() -> Env {
        let fpcr: u64;
        // SAFETY: reading FPCR has no side effects.
        unsafe { std::arch::asm!("mrs {}, fpcr", out(reg) fpcr, options(nomem, nostack)) };
        fpcr
    }

    #[inline(never)]
    pub(super) fn set(env: Env) {
        // SAFETY: `env` is a value read from FPCR or the default.
        unsafe { std::arch::asm!("msr fpcr, {}", in(reg) env, options(nostack)) };
    }
}

/// Other targets (and Miri): the environment is left as it is.
#[cfg(not(all(any(target_arch = "x86_64", target_arch = "aarch64"), not(miri))))]
mod fp_env {
    pub(super) type Env = ();
    pub(super) const DEFAULT: Env = ();
    #[inline]
    pub(super) fn is_default(_: Env) -> bool {
        true
    }
    #[inline]
    pub(super) fn get() -> Env {}
    #[inline]
    pub(super) fn set(_: Env) {}
}
