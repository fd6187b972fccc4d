//! Every SIMD level gives the same bits for every kernel (as blake3's CI proves for its paths).
//! Its own test binary, because it changes the process-wide level.

use kldiv::{
    kl_div_and_grad, kl_div_backward_into, kl_div_sum, kl_div_terms, kl_div_terms_and_grad_into,
    runtime::{set_simd_level, SimdLevel},
    Float, Reduction,
};
use ndarray::{arr0, s, Array2, ArrayD};

fn data<T: Float>(rows: usize, cols: usize, seed: u64) -> (Array2<T>, Array2<T>) {
    let mut state = seed;
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let specials = [
        0.0,
        -0.0,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
        -1.0,
        1e-310,
        1e-40,
    ];
    let mut x = Array2::from_shape_simple_fn((rows, cols), || T::from_f64(-20.0 * next()));
    let mut t = Array2::from_shape_simple_fn((rows, cols), || T::from_f64(next() * next()));
    // sprinkle special values in both
    for (k, v) in specials.iter().enumerate() {
        x[[k % rows, (7 * k) % cols]] = T::from_f64(*v);
        t[[(k + 1) % rows, (11 * k) % cols]] = T::from_f64(*v);
    }
    (x, t)
}

/// Every kernel's output bits, at the current level.
fn outputs<T: Float>(x: &Array2<T>, t: &Array2<T>) -> Vec<u64> {
    let mut bits = Vec::new();
    let mut push = |a: &ArrayD<T>| bits.extend(a.iter().map(|v| v.to_f64().to_bits()));
    for log_target in [false, true] {
        let tt = t.mapv(|v| {
            if log_target {
                T::from_f64(v.to_f64().ln())
            } else {
                v
            }
        });
        let strided = x.slice(s![..;-1, ..;2]);
        let tstr = tt.slice(s![..;-1, ..;2]);
        push(&ArrayD::from_elem(
            vec![],
            T::from_f64(kl_div_sum(x.view(), tt.view(), log_target).unwrap()),
        ));
        push(&ArrayD::from_elem(
            vec![],
            T::from_f64(kl_div_sum(strided, tstr, log_target).unwrap()),
        ));
        // A target row broadcast over the batch (its transcendental computed once).
        push(&ArrayD::from_elem(
            vec![],
            T::from_f64(kl_div_sum(x.view(), tt.slice(s![..1, ..]), log_target).unwrap()),
        ));
        push(&kl_div_terms(x.view(), tt.view(), log_target).unwrap());
        push(&kl_div_terms(x.t(), tt.t(), log_target).unwrap());
        let (loss, g) =
            kl_div_and_grad(x.view(), tt.view(), kldiv::Reduction::BatchMean, log_target).unwrap();
        push(&ArrayD::from_elem(vec![], loss));
        push(&g);
        let (mut gx, mut gt) = (Array2::default(x.dim()), Array2::default(x.dim()));
        let g0 = arr0(T::from_f64(0.5));
        kl_div_backward_into(
            g0.view(),
            x.view(),
            tt.view(),
            Reduction::Mean,
            Some(gx.view_mut()),
            Some(gt.view_mut()),
            log_target,
        )
        .unwrap();
        push(&gx.into_dyn());
        push(&gt.into_dyn());
        let (mut l, mut g) = (Array2::default(x.dim()), Array2::default(x.dim()));
        kl_div_terms_and_grad_into(x.view(), tt.view(), l.view_mut(), g.view_mut(), log_target)
            .unwrap();
        push(&l.into_dyn());
        push(&g.into_dyn());
    }
    bits
}

fn levels_agree<T: Float>() {
    let (x, t) = data::<T>(67, 1031, 5); // ~69k elements: parallel, ragged tails
    let mut seen = Vec::new();
    for level in [SimdLevel::Scalar, SimdLevel::Avx2, SimdLevel::Avx512] {
        let got = set_simd_level(level);
        if got != level {
            println!("{} not supported here: skipped", level.name());
            continue;
        }
        seen.push((level, outputs(&x, &t)));
    }
    set_simd_level(SimdLevel::Avx512);
    for (level, bits) in &seen[1..] {
        assert!(
            bits == &seen[0].1,
            "{} differs from {}",
            level.name(),
            seen[0].0.name()
        );
    }
    println!("{} levels agree on {} outputs", seen.len(), seen[0].1.len());
}

#[test]
fn every_level_gives_the_same_bits() {
    levels_agree::<f32>();
    levels_agree::<f64>();
}
