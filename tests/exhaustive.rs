//! Every one of the 2^32 `f32` inputs of `ln` and `exp`: within 1 ulp
//! of the correctly rounded result, special values as the standard library's, and the same bits
//! from the vectorised slice kernel (at the current SIMD level) as from the scalar function.
//!
//! Slow in a debug build, so ignored by default; `make test-exhaustive` runs them in release
//! mode once per SIMD level (`KLDIV_SIMD=avx2`, `avx512`), about half a minute each on 2 cores.

use kldiv::math::{exp_f32, exp_slice, ln_f32, ln_slice};
use rayon::prelude::*;

const CHUNK: u64 = 1 << 16;

/// Distance in ulps between two non-NaN `f32`s (across zero and subnormals too).
fn ulps(a: f32, b: f32) -> u64 {
    let ord = |v: f32| {
        let bits = v.to_bits() as i64;
        if bits < 0x8000_0000 {
            bits
        } else {
            -(bits & 0x7fff_ffff)
        }
    };
    ord(a).abs_diff(ord(b))
}

/// Checks `vector` (slice kernel) against `scalar` and `reference` on every input; returns the
/// largest ulp error seen.
fn every_input(
    vector: impl Fn(&[f32], &mut [f32]) + Sync,
    scalar: impl Fn(f32) -> f32 + Sync,
    reference: impl Fn(f32) -> f32 + Sync,
) -> u64 {
    (0..(1u64 << 32) / CHUNK)
        .into_par_iter()
        .map(|c| {
            let x: Vec<f32> = (c * CHUNK..(c + 1) * CHUNK)
                .map(|b| f32::from_bits(b as u32))
                .collect();
            let mut out = vec![0.0f32; x.len()];
            vector(&x, &mut out);
            let mut worst = 0;
            for (&xi, &vi) in x.iter().zip(&out) {
                let si = scalar(xi);
                assert_eq!(
                    vi.to_bits(),
                    si.to_bits(),
                    "vector and scalar differ at {xi:e}"
                );
                let want = reference(xi);
                if want.is_nan() {
                    assert!(vi.is_nan(), "f({xi:e}) = {vi:e}, want NaN");
                } else if want.is_infinite() || vi.is_infinite() {
                    assert_eq!(vi, want, "f({xi:e})");
                } else {
                    worst = worst.max(ulps(vi, want));
                }
            }
            worst
        })
        .max()
        .unwrap()
}

#[test]
#[ignore = "2^32 inputs: run in release mode (make test-exhaustive)"]
fn ln_f32_every_input_within_1_ulp() {
    let worst = every_input(ln_slice, ln_f32, |x| (x as f64).ln() as f32);
    println!(
        "ln_f32 at {}: worst {worst} ulp",
        kldiv::runtime::simd_level().name()
    );
    assert!(worst <= 1, "worst {worst} ulp");
}

#[test]
#[ignore = "2^32 inputs: run in release mode (make test-exhaustive)"]
fn exp_f32_every_input_within_1_ulp() {
    let worst = every_input(exp_slice, exp_f32, |x| (x as f64).exp() as f32);
    println!(
        "exp_f32 at {}: worst {worst} ulp",
        kldiv::runtime::simd_level().name()
    );
    assert!(worst <= 1, "worst {worst} ulp");
}
