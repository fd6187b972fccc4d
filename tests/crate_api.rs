//! The crate alone (no Python): reductions, layouts, threads, broadcasting, errors.

use kldiv::{kl_div, kl_div_sum, kl_div_terms, kl_div_terms_into, term, Error, Reduction};
use ndarray::{s, Array, Array2, ArrayD, Axis, IxDyn, ShapeBuilder};

/// Deterministic pseudo-random softmax rows (no rand dependency).
fn softmax_rows(rows: usize, cols: usize, seed: u64, log: bool) -> Array2<f64> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 11) as f64 / (1u64 << 53) as f64) * 6.0 - 3.0
    };
    let mut a = Array2::from_shape_simple_fn((rows, cols), &mut next);
    for mut row in a.axis_iter_mut(Axis(0)) {
        let lse = row.iter().map(|v| v.exp()).sum::<f64>().ln();
        row.mapv_inplace(|v| if log { v - lse } else { (v - lse).exp() });
    }
    a
}

fn naive_sum(x: &Array2<f64>, t: &Array2<f64>) -> f64 {
    x.iter()
        .zip(t)
        .map(|(&xi, &ti)| term::<false, f64>(xi, ti))
        .sum()
}

#[test]
fn reductions_match_a_naive_sum() {
    let x = softmax_rows(37, 53, 1, true);
    let t = softmax_rows(37, 53, 2, false);
    let want = naive_sum(&x, &t);
    let sum = kl_div(x.view(), t.view(), Reduction::Sum, false).unwrap();
    assert!((sum - want).abs() <= 1e-12 * want.abs());
    let mean = kl_div(x.view(), t.view(), Reduction::Mean, false).unwrap();
    assert!((mean - want / (37.0 * 53.0)).abs() <= 1e-12 * mean.abs());
    let bm = kl_div(x.view(), t.view(), Reduction::BatchMean, false).unwrap();
    assert!((bm - want / 37.0).abs() <= 1e-12 * bm.abs());
}

#[test]
fn same_bits_for_every_layout_and_thread_count() {
    let (rows, cols) = (301, 997); // ~300k elements: many blocks, parallel
    let x64 = softmax_rows(rows, cols, 3, true);
    let t64 = softmax_rows(rows, cols, 4, false);
    let x = x64.mapv(|v| v as f32);
    let t = t64.mapv(|v| v as f32);
    kldiv::runtime::set_num_threads(2).unwrap();
    let want = kl_div_sum(x.view(), t.view(), false).unwrap();

    // Fortran order
    let mut xf = Array2::<f32>::zeros((rows, cols).f());
    xf.assign(&x);
    let mut tf = Array2::<f32>::zeros((rows, cols).f());
    tf.assign(&t);
    assert_eq!(
        kl_div_sum(xf.view(), tf.view(), false).unwrap().to_bits(),
        want.to_bits()
    );
    assert_eq!(
        kl_div_sum(xf.view(), t.view(), false).unwrap().to_bits(),
        want.to_bits()
    );

    // strided and negative strides
    let mut big = Array2::<f32>::zeros((rows * 2, cols * 3));
    big.slice_mut(s![..;2, ..;3]).assign(&x);
    let strided = big.slice(s![..;2, ..;3]);
    assert_eq!(
        kl_div_sum(strided, t.view(), false).unwrap().to_bits(),
        want.to_bits()
    );
    let mut rev = x.clone();
    rev.invert_axis(Axis(0));
    rev.invert_axis(Axis(1));
    let rev = rev.as_standard_layout().into_owned(); // memory reversed
    let mut back = rev.view();
    back.invert_axis(Axis(0));
    back.invert_axis(Axis(1));
    assert_eq!(
        kl_div_sum(back, t.view(), false).unwrap().to_bits(),
        want.to_bits()
    );

    for n in 1..=4 {
        kldiv::runtime::set_num_threads(n).unwrap();
        assert_eq!(kldiv::runtime::get_num_threads(), n);
        assert_eq!(
            kl_div_sum(x.view(), t.view(), false).unwrap().to_bits(),
            want.to_bits()
        );
        assert_eq!(
            kl_div_sum(xf.view(), tf.view(), false).unwrap().to_bits(),
            want.to_bits()
        );
    }
    kldiv::runtime::set_num_threads(0).unwrap();
}

/// A Fortran-order matrix is summed in groups of rows, column by column (the transposed
/// path): whatever the number of rows (one group, groups split evenly between threads, a short
/// last group, fewer rows than a cache line, columns longer than a run, many columns in a run),
/// over one block of columns or more, with its columns next to each other in memory or not
/// (rows sliced off, or reversed), it gives the bits of C order, for both types, both kinds of
/// target and one to three threads.
#[test]
fn fortran_order_same_bits_for_any_number_of_rows() {
    fn check<T: kldiv::Float + Default>(x: &Array2<T>, t: &Array2<T>, log_target: bool) {
        let want = kl_div_sum(x.view(), t.view(), log_target).unwrap();
        let want = format!("{want:?}");
        let (rows, cols) = x.dim();
        // Fortran order with two spare rows: all rows (columns adjacent), or all but the spare
        // ones, forwards or backwards (columns apart).
        let fortran = |a: &Array2<T>| {
            let mut f = Array2::<T>::default((rows + 2, cols).f());
            f.slice_mut(s![1..rows + 1, ..]).assign(a);
            f
        };
        let (xf, tf) = (fortran(x), fortran(t));
        let mut xc = Array2::<T>::default(x.dim().f());
        xc.assign(x);
        let mut tc = Array2::<T>::default(t.dim().f());
        tc.assign(t);
        let got = kl_div_sum(xc.view(), tc.view(), log_target).unwrap();
        assert_eq!(format!("{got:?}"), want, "{:?}", x.dim());
        let (xs, ts) = (xf.slice(s![1..rows + 1, ..]), tf.slice(s![1..rows + 1, ..]));
        let got = kl_div_sum(xs, ts, log_target).unwrap();
        assert_eq!(format!("{got:?}"), want, "{:?} sliced", x.dim());
        let (xr, tr) = (x.slice(s![..;-1, ..]), t.slice(s![..;-1, ..]));
        let want_r = format!("{:?}", kl_div_sum(xr, tr, log_target).unwrap());
        let (xs, ts) = (
            xf.slice(s![1..rows + 1;-1, ..]),
            tf.slice(s![1..rows + 1;-1, ..]),
        );
        let got = kl_div_sum(xs, ts, log_target).unwrap();
        assert_eq!(format!("{got:?}"), want_r, "{:?} reversed", x.dim());
    }
    let wide = 4096 + 40; // two blocks a row
    for (rows, cols) in [(1, wide), (17, wide), (129, wide), (300, wide), (1500, 300)] {
        // Terms of very different sizes and both signs, so that the bits depend on which lane
        // adds what (with terms of one sign, the rounding of the total hides that).
        let mut x = softmax_rows(rows, cols, 11, true);
        x.indexed_iter_mut()
            .for_each(|((r, c), v)| match (r * 3 + c) % 7 {
                0 => *v *= 1e9,
                3 => *v *= -1e9,
                _ => {}
            });
        for log_target in [false, true] {
            let t = softmax_rows(rows, cols, 12, log_target);
            for threads in [1, 2, 3] {
                kldiv::runtime::set_num_threads(threads).unwrap();
                check(&x, &t, log_target);
                check(&x.mapv(|v| v as f32), &t.mapv(|v| v as f32), log_target);
            }
        }
    }
    kldiv::runtime::set_num_threads(0).unwrap();
}

#[test]
fn broadcast_views_equal_materialised_copies() {
    let x = softmax_rows(200, 500, 5, true);
    let row = softmax_rows(1, 500, 6, false);
    let full = row.broadcast((200, 500)).unwrap().to_owned();
    let a = kl_div_sum(x.view(), row.view(), false).unwrap();
    let b = kl_div_sum(x.view(), full.view(), false).unwrap();
    let c = kl_div_sum(x.view(), row.row(0), false).unwrap(); // 1-d against 2-d
    assert_eq!(a.to_bits(), b.to_bits());
    assert_eq!(a.to_bits(), c.to_bits());
    // A target broadcast over many terms has its ln computed once per element: the same bits
    // for log_target, a reversed (non-contiguous) target, a Fortran-order input (transposed
    // walk) and a target broadcast along a middle axis.
    for log_target in [false, true] {
        let want = kl_div_sum(x.view(), full.view(), log_target).unwrap();
        let got = kl_div_sum(x.view(), row.view(), log_target).unwrap();
        assert_eq!(got.to_bits(), want.to_bits(), "log_target {log_target}");
        let reversed = row.slice(s![.., ..;-1]).to_owned();
        let reversed_view = reversed.slice(s![.., ..;-1]);
        let got = kl_div_sum(x.view(), reversed_view, log_target).unwrap();
        assert_eq!(got.to_bits(), want.to_bits());
        let xf = x.t().as_standard_layout().reversed_axes().into_owned();
        let got = kl_div_sum(xf.view(), row.view(), log_target).unwrap();
        assert_eq!(got.to_bits(), want.to_bits());
    }
    let x3 = x.clone().into_shape_with_order((20, 10, 500)).unwrap();
    let t3 = softmax_rows(20, 500, 9, false)
        .into_shape_with_order((20, 1, 500))
        .unwrap();
    let t3_full = t3.broadcast((20, 10, 500)).unwrap().to_owned();
    let got = kl_div_sum(x3.view(), t3.view(), false).unwrap();
    let want = kl_div_sum(x3.view(), t3_full.view(), false).unwrap();
    assert_eq!(got.to_bits(), want.to_bits());
}

#[test]
fn terms_into_any_output_layout() {
    let x = softmax_rows(30, 70, 7, true);
    let t = softmax_rows(30, 70, 8, false);
    let c = kl_div_terms(x.view(), t.view(), false).unwrap();
    let mut f = Array2::<f64>::zeros((30, 70).f());
    kl_div_terms_into(x.view(), t.view(), f.view_mut(), false).unwrap();
    assert_eq!(c.into_dimensionality().unwrap(), f);
    let mut big = Array2::<f64>::zeros((30, 140));
    kl_div_terms_into(x.view(), t.view(), big.slice_mut(s![.., ..;-2]), true).unwrap();
    assert_eq!(big[[0, 139]], term::<true, f64>(x[[0, 0]], t[[0, 0]]));
    assert_eq!(big[[0, 138]], 0.0);
}

#[test]
fn zero_dim_empty_and_batchmean_rules() {
    let x = ArrayD::from_elem(IxDyn(&[]), -0.7f64);
    let t = ArrayD::from_elem(IxDyn(&[]), 0.4f64);
    let v = kl_div(x.view(), t.view(), Reduction::BatchMean, false).unwrap();
    assert_eq!(v, term::<false, f64>(-0.7, 0.4));
    let e = Array::<f32, _>::zeros((0, 3));
    assert_eq!(
        kl_div(e.view(), e.view(), Reduction::Sum, false).unwrap(),
        0.0
    );
    assert!(kl_div(e.view(), e.view(), Reduction::Mean, false)
        .unwrap()
        .is_nan());
    assert!(kl_div(e.view(), e.view(), Reduction::BatchMean, false)
        .unwrap()
        .is_nan());
    let e = Array::<f32, _>::zeros((3, 0));
    assert_eq!(
        kl_div(e.view(), e.view(), Reduction::BatchMean, false).unwrap(),
        0.0
    );
    // batchmean divides by input's first dimension, even when the target broadcasts it larger
    let x1 = softmax_rows(1, 5, 9, true)
        .into_shape_with_order(5)
        .unwrap();
    let t2 = softmax_rows(4, 5, 10, false);
    let s = kl_div_sum(x1.view(), t2.view(), false).unwrap();
    let bm = kl_div(x1.view(), t2.view(), Reduction::BatchMean, false).unwrap();
    assert_eq!(bm, s / 5.0);
}

#[test]
fn errors_name_the_shapes() {
    let x = Array2::<f64>::zeros((2, 3));
    let t = Array2::<f64>::zeros((4, 3));
    let err = kl_div_sum(x.view(), t.view(), false).unwrap_err();
    assert_eq!(
        err,
        Error::Broadcast {
            input: vec![2, 3],
            target: vec![4, 3]
        }
    );
    let mut out = Array2::<f64>::zeros((3, 2));
    let err = kl_div_terms_into(x.view(), x.view(), out.view_mut(), false).unwrap_err();
    assert_eq!(
        err,
        Error::OutputShape {
            expected: vec![2, 3],
            actual: vec![3, 2]
        }
    );
    assert!(err.to_string().contains("(3, 2)"));
}

#[test]
fn fused_loss_and_grad_equal_forward_and_backward() {
    use kldiv::{kl_div_and_grad, kl_div_backward_into};
    use ndarray::arr0;
    let x = softmax_rows(120, 900, 11, true).mapv(|v| v as f32);
    let t = softmax_rows(120, 900, 12, false).mapv(|v| v as f32);
    for n in [1, 3] {
        kldiv::runtime::set_num_threads(n).unwrap();
        for (reduction, divisor) in [(Reduction::Sum, 1.0), (Reduction::BatchMean, 120.0)] {
            let (loss, gx) = kl_div_and_grad(x.view(), t.view(), reduction, false).unwrap();
            assert_eq!(loss, kl_div(x.view(), t.view(), reduction, false).unwrap());
            let (mut bx, mut bt) = (Array2::zeros((120, 900)), Array2::zeros((120, 900)));
            kl_div_backward_into(
                arr0(1.0f32).view(),
                x.view(),
                t.view(),
                reduction,
                Some(bx.view_mut()),
                Some(bt.view_mut()),
                false,
            )
            .unwrap();
            assert_eq!(gx.into_dimensionality().unwrap(), bx);
            let g = 1.0 / divisor;
            let want = (x[[5, 7]] as f64, t[[5, 7]] as f64);
            assert_eq!(
                bt[[5, 7]],
                (g * kldiv::math::ln_f32(t[[5, 7]]) as f64 + g - g * want.0) as f32
            );
        }
    }
    kldiv::runtime::set_num_threads(0).unwrap();
}

#[test]
fn hostile_shapes_work_or_error() {
    use kldiv::kl_div_terms_into;
    // 40 dimensions, zero-size axes anywhere, 0-d against n-d, stride-0 broadcast views
    let deep = ArrayD::from_elem(IxDyn(&[1; 40]), -1.0f64);
    let t = ArrayD::from_elem(IxDyn(&[2]), 0.5f64);
    assert_eq!(
        kl_div_terms(deep.view(), t.view(), false).unwrap().ndim(),
        40
    );
    for shape in [&[0, 3][..], &[3, 0], &[2, 0, 4], &[0]] {
        let e = ArrayD::<f32>::zeros(IxDyn(shape));
        assert_eq!(kl_div_sum(e.view(), e.view(), true).unwrap(), 0.0);
        assert_eq!(
            kl_div_terms(e.view(), e.view(), false).unwrap().shape(),
            shape
        );
    }
    let scalar = ndarray::arr0(0.25f64);
    let x = Array2::from_elem((3, 5), -2.0f64);
    let row = x.row(0);
    let b = row.broadcast((1000, 5)).unwrap();
    let s = kl_div_sum(b, scalar.view(), false).unwrap();
    assert!((s - 5000.0 * term::<false, f64>(-2.0, 0.25)).abs() < 1e-9);
    // errors, not panics
    let y = Array2::<f64>::zeros((4, 5));
    assert!(kl_div_sum(x.view(), y.view(), false).is_err());
    let mut out = Array2::<f64>::zeros((5, 3));
    assert!(kl_div_terms_into(x.view(), x.view(), out.view_mut(), false).is_err());
    let (mut g1, mut g2) = (Array2::<f64>::zeros((3, 5)), Array2::<f64>::zeros((3, 4)));
    let go = Array2::<f64>::ones((2, 5));
    assert!(kldiv::kl_div_backward_into(
        go.view(),
        x.view(),
        x.view(),
        Reduction::Sum,
        Some(g1.view_mut()),
        Some(g2.view_mut()),
        false
    )
    .is_err());
}
