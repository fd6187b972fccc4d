//! Every SIMD level gives the same bits for every kernel and every path (as blake3's tests call
//! each backend), within one process: `runtime::with_simd_level` runs one caller's kernels,
//! their share on the pool's threads included, at one level.

use kldiv::{
    kl_div_and_grad, kl_div_backward_into, kl_div_sum, kl_div_terms, kl_div_terms_and_grad_into,
    runtime::{detected_simd_level, set_num_threads, with_simd_level, SimdLevel},
    Float, Reduction,
};
use ndarray::{arr0, s, Array2, ArrayD, ShapeBuilder};

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
        // Transposed sums: a Fortran-order array read column by column, with its columns next
        // to each other in memory (all rows: runs of whole columns on one thread; groups of
        // part columns when the rows are split between threads), or apart (rows sliced off).
        let fortran = |a: &Array2<T>| {
            let mut f = Array2::<T>::default((a.nrows() + 2, a.ncols()).f());
            f.slice_mut(s![1..a.nrows() + 1, ..]).assign(a);
            f
        };
        let (xf, tf) = (fortran(x), fortran(&tt));
        let rows = 1..x.nrows() + 1;
        let (xw, tw) = (xf.slice(s![rows.clone(), ..]), tf.slice(s![rows, ..]));
        let mut xa = Array2::<T>::default(x.dim().f());
        xa.assign(x);
        let mut ta = Array2::<T>::default(x.dim().f());
        ta.assign(&tt);
        for (xv, tv) in [(xa.view(), ta.view()), (xw, tw), (xa.view(), tt.view())] {
            push(&ArrayD::from_elem(
                vec![],
                T::from_f64(kl_div_sum(xv, tv, log_target).unwrap()),
            ));
        }
        // A broadcast target row against Fortran-order inputs.
        push(&ArrayD::from_elem(
            vec![],
            T::from_f64(kl_div_sum(xa.view(), tt.slice(s![..1, ..]), log_target).unwrap()),
        ));
    }
    bits
}

fn levels_agree<T: Float>() {
    let (x, t) = data::<T>(67, 1031, 5); // ~69k elements: parallel, ragged tails
    let mut seen = Vec::new();
    for threads in [1, 3] {
        set_num_threads(threads).unwrap();
        for level in [SimdLevel::Scalar, SimdLevel::Avx2, SimdLevel::Avx512] {
            if level > detected_simd_level() {
                println!("{} not supported here: skipped", level.name());
                continue;
            }
            seen.push((level, threads, with_simd_level(level, || outputs(&x, &t))));
        }
    }
    set_num_threads(0).unwrap();
    for (level, threads, bits) in &seen[1..] {
        let (first, first_threads, want) = &seen[0];
        assert!(
            bits == want,
            "{} on {threads} threads differs from {} on {first_threads}",
            level.name(),
            first.name()
        );
    }
    println!("{} runs agree on {} outputs", seen.len(), seen[0].2.len());
}

#[test]
fn every_level_gives_the_same_bits() {
    levels_agree::<f32>();
    levels_agree::<f64>();
}
