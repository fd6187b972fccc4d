//! Every kernel over small arrays of every layout (C and Fortran order, strided, reversed,
//! broadcast), on one and three threads: the same bits as the elementwise functions and as
//! the contiguous case.
//!
//! Small enough for Miri, which `.ci/run` runs it under (`cargo +nightly miri test --test
//! small_layouts`): there kldiv's blocks and its parallel threshold are smaller, so these
//! arrays are split over the pool's threads, and Miri checks the pool, the walks, the tiles
//! and the reductions for undefined behaviour.

use kldiv::{
    grad_input, grad_target, kl_div, kl_div_and_grad_into, kl_div_backward_into, kl_div_sum,
    kl_div_terms_and_grad_into, kl_div_terms_into, term, Float, Reduction,
};
use ndarray::{arr0, s, Array2, ArrayView2, ArrayViewMut2, Axis, ShapeBuilder};

// Under Miri, whose blocks are 32 elements, rows at least 16 and parallel calls at least 128
// (see `parallel.rs`): several threads, and the Fortran layout on the transposed path.
const ROWS: usize = if cfg!(miri) { 4 } else { 12 };
const COLS: usize = if cfg!(miri) { 40 } else { 300 };

/// Uniform numbers in [0, 1) from a fixed seed (xorshift64).
fn uniform(mut state: u64) -> impl FnMut() -> f64 {
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Log-probabilities and probabilities (or log-probabilities), with some special values.
fn data<T: Float>(log_target: bool) -> (Array2<T>, Array2<T>) {
    let mut next = uniform(0x2545f4914f6cdd1d);
    let mut x = Array2::from_shape_simple_fn((ROWS, COLS), || T::from_f64(-8.0 * next()));
    let mut t = Array2::from_shape_simple_fn((ROWS, COLS), || {
        let p = next() / COLS as f64;
        T::from_f64(if log_target { p.ln() } else { p })
    });
    x[[3, 5]] = T::from_f64(f64::NEG_INFINITY);
    t[[0, 6]] = T::from_f64(0.0);
    t[[1, 7]] = T::from_f64(1e-310);
    t[[2, 8]] = T::from_f64(f64::NAN);
    (x, t)
}

/// A layout: its name, the array that holds the values, and the view that reads them back.
type Layout<T> = (&'static str, Array2<T>, fn(&Array2<T>) -> ArrayView2<'_, T>);

/// The same values in other layouts.
fn layouts<T: Float>(a: &Array2<T>) -> Vec<Layout<T>> {
    fn plain<T>(a: &Array2<T>) -> ArrayView2<'_, T> {
        a.view()
    }
    fn strided<T>(a: &Array2<T>) -> ArrayView2<'_, T> {
        a.slice(s![..;2, 1..;3])
    }
    fn reversed<T>(a: &Array2<T>) -> ArrayView2<'_, T> {
        a.slice(s![..;-1, ..;-1])
    }
    let mut fortran = Array2::<T>::default((ROWS, COLS).f());
    fortran.assign(a);
    // Stored so that the view reads back `a`'s values.
    let mut wide = Array2::<T>::default((ROWS * 2, COLS * 3 + 1));
    wide.slice_mut(s![..;2, 1..;3]).assign(a);
    let mut back = a.clone();
    back.invert_axis(Axis(0));
    back.invert_axis(Axis(1));
    let back = back.as_standard_layout().into_owned();
    vec![
        ("C", a.clone(), plain::<T>),
        ("Fortran", fortran, plain::<T>),
        ("strided", wide, strided::<T>),
        ("reversed", back, reversed::<T>),
    ]
}

fn same<T: Float>(a: &[T], b: &[T]) -> bool {
    a.iter().zip(b).all(|(p, q)| {
        p.to_f64().to_bits() == q.to_f64().to_bits() || (p.to_f64().is_nan() && q.to_f64().is_nan())
    })
}

/// Checks the sums, and with `all` every other kernel too.
fn check<T: Float>(log_target: bool, all: bool) {
    let (x, t) = data::<T>(log_target);
    let term_of = |xi: T, ti: T| {
        if log_target {
            term::<true, T>(xi, ti)
        } else {
            term::<false, T>(xi, ti)
        }
    };
    let want_terms: Vec<T> = x
        .iter()
        .zip(&t)
        .map(|(&a, &b)| T::from_f64(term_of(a, b)))
        .collect();
    let want_sum = kl_div_sum(x.view(), t.view(), log_target).unwrap();
    let d = ROWS as f64;
    let g = 1.0 / d;
    let want_gx: Vec<T> = t
        .iter()
        .map(|&b| {
            T::from_f64(if log_target {
                grad_input::<true, T>(g, b)
            } else {
                grad_input::<false, T>(g, b)
            })
        })
        .collect();
    let want_gt: Vec<T> = x
        .iter()
        .zip(&t)
        .map(|(&a, &b)| {
            T::from_f64(if log_target {
                grad_target::<true, T>(g, a, b)
            } else {
                grad_target::<false, T>(g, a, b)
            })
        })
        .collect();
    let want_loss = kl_div(x.view(), t.view(), Reduction::BatchMean, log_target).unwrap();
    let want_loss = format!("{want_loss:?}");
    let ones = arr0(T::from_f64(1.0));
    let (xl, tl) = (layouts(&x), layouts(&t));
    // Every pair of layouts; under Miri (about a second a kernel call) each input layout
    // against a C-order target, and a reversed target.
    let pairs: Vec<(usize, usize)> = (0..xl.len())
        .flat_map(|i| (0..tl.len()).map(move |j| (i, j)))
        .filter(|&(i, j)| !cfg!(miri) || j == 0 || (i, j) == (0, 3))
        .collect();
    for (i, j) in pairs {
        let ((xname, xs, xv), (tname, ts, tv)) = (&xl[i], &tl[j]);
        let (xv, tv) = (xv(xs), tv(ts));
        let case = format!("x {xname}, t {tname}, log_target {log_target}");
        let sum = kl_div_sum(xv, tv, log_target).unwrap();
        assert_eq!(format!("{sum:?}"), format!("{want_sum:?}"), "{case}");
        if !all {
            continue;
        }
        // Outputs in C and in Fortran order (under Miri, Fortran order once).
        let orders = [false, true].into_iter();
        for order_f in orders.filter(|&f| !f || !cfg!(miri) || (i, j) == (0, 0)) {
            let shape = (ROWS, COLS).set_f(order_f);
            let mut out = Array2::<T>::default(shape);
            kl_div_terms_into(xv, tv, out.view_mut(), log_target).unwrap();
            let got: Vec<T> = out.iter().copied().collect();
            assert!(same(&got, &want_terms), "terms, {case}");
            let (mut gx, mut gt) = (Array2::<T>::default(shape), Array2::<T>::default(shape));
            kl_div_backward_into(
                ones.view(),
                xv,
                tv,
                Reduction::BatchMean,
                Some(gx.view_mut()),
                Some(gt.view_mut()),
                log_target,
            )
            .unwrap();
            assert!(
                same(&gx.iter().copied().collect::<Vec<_>>(), &want_gx),
                "gx, {case}"
            );
            assert!(
                same(&gt.iter().copied().collect::<Vec<_>>(), &want_gt),
                "gt, {case}"
            );
            let mut only = Array2::<T>::default(shape);
            kl_div_backward_into(
                ones.view(),
                xv,
                tv,
                Reduction::BatchMean,
                Some(only.view_mut()),
                None::<ArrayViewMut2<T>>,
                log_target,
            )
            .unwrap();
            assert!(
                same(&only.iter().copied().collect::<Vec<_>>(), &want_gx),
                "gx alone, {case}"
            );
            let loss =
                kl_div_and_grad_into(xv, tv, Reduction::BatchMean, gx.view_mut(), log_target)
                    .unwrap();
            assert_eq!(format!("{loss:?}"), want_loss, "fused, {case}");
            let mut terms = Array2::<T>::default(shape);
            kl_div_terms_and_grad_into(xv, tv, terms.view_mut(), gx.view_mut(), log_target)
                .unwrap();
            assert!(
                same(&terms.iter().copied().collect::<Vec<_>>(), &want_terms),
                "{case}"
            );
        }
    }
    // One target row broadcast over the batch (its transcendental computed once).
    let row = t.slice(s![..1, ..]);
    let want: f64 = x
        .rows()
        .into_iter()
        .flat_map(|r| {
            r.iter()
                .zip(row.row(0))
                .map(|(&a, &b)| term_of(a, b))
                .collect::<Vec<_>>()
        })
        .fold(0.0, |acc, v| acc + v);
    let got = kl_div_sum(x.view(), row, log_target).unwrap();
    assert!(
        got == want || (got - want).abs() <= 1e-12 * want.abs(),
        "{got} vs {want}"
    );
}

#[test]
fn every_kernel_every_layout_one_and_three_threads() {
    // Under Miri: three threads (the crate's unit tests run one), every kernel once.
    let threads: &[usize] = if cfg!(miri) { &[3] } else { &[1, 3] };
    for &n in threads {
        kldiv::runtime::set_num_threads(n).unwrap();
        check::<f64>(false, true);
        check::<f64>(true, !cfg!(miri));
        check::<f32>(false, !cfg!(miri));
    }
    kldiv::runtime::set_num_threads(0).unwrap();
}

#[test]
fn sums_that_overflow_halfway_are_summed_again() {
    // 1e308 twice in one lane, -1e308 and -5e307 in the next: inf and -inf, folded to NaN.
    let mut x = Array2::<f64>::zeros((8, 100));
    let mut t = Array2::<f64>::zeros((8, 100));
    for (i, v) in [(0, -1e308), (16, -1e308), (1, 1e308), (17, 5e307)] {
        x[[0, i]] = v;
        t[[0, i]] = 1.0;
    }
    kldiv::runtime::set_num_threads(2).unwrap();
    let got = kl_div_sum(x.view(), t.view(), false).unwrap();
    assert!((got - 5e307).abs() <= 1e-15 * 5e307, "{got}");
    kldiv::runtime::set_num_threads(0).unwrap();
}

/// Logits in every layout, for the loss from logits: the same bits as the C-order case, its
/// gradient written through every layout too (the crate's `logits` module reads and writes
/// rows through raw pointers: Miri checks them here).
#[test]
fn losses_from_logits_every_layout_one_and_three_threads() {
    use kldiv::{
        kl_div_logits_and_grad_into, Bf16, Divergence, Logit, LogitsLoss, LogitsReduction,
    };

    let mut next = uniform(0x9e3779b97f4a7c15);
    let s = Array2::from_shape_simple_fn((ROWS, COLS), || (8.0 * next() - 4.0) as f32);
    let t = Array2::from_shape_simple_fn((ROWS, COLS), || (8.0 * next() - 4.0) as f32);
    let divergences = [
        Divergence::Forward,
        Divergence::Reverse,
        Divergence::Jsd(0.5),
    ];
    let threads: &[usize] = if cfg!(miri) { &[3] } else { &[1, 3] };
    for &n in threads {
        kldiv::runtime::set_num_threads(n).unwrap();
        for (d, temperature) in divergences.into_iter().zip([1.0, 0.25, 0.5]) {
            let loss = LogitsLoss::new(d).temperature(temperature);
            let run =
                |s: ArrayView2<'_, f32>, t: ArrayView2<'_, f32>, g: ArrayViewMut2<'_, f32>| {
                    kl_div_logits_and_grad_into(s, t, &loss, LogitsReduction::Mean, g).unwrap()
                };
            let mut want_grad = Array2::<f32>::zeros((ROWS, COLS));
            let want = run(s.view(), t.view(), want_grad.view_mut());
            for (name, a, view) in layouts(&s) {
                for (gname, mut g, _) in layouts(&Array2::<f32>::zeros((ROWS, COLS))) {
                    // Under Miri (minutes a case), every gradient layout once.
                    if cfg!(miri) && d != Divergence::Forward && gname != "C" {
                        continue;
                    }
                    let g_view = match gname {
                        "strided" => g.slice_mut(s![..;2, 1..;3]),
                        "reversed" => g.slice_mut(s![..;-1, ..;-1]),
                        _ => g.view_mut(),
                    };
                    let got = run(view(&a), t.view(), g_view);
                    assert_eq!(got.to_bits(), want.to_bits(), "{d:?} {name} {gname}");
                    let back = match gname {
                        "strided" => g.slice(s![..;2, 1..;3]).to_owned(),
                        "reversed" => g.slice(s![..;-1, ..;-1]).to_owned(),
                        _ => g.clone(),
                    };
                    assert!(back == want_grad, "{d:?} {name} {gname}");
                }
            }
            // A teacher row broadcast over the student's rows, and bfloat16 logits (widened
            // as they are read, rounded as the gradient is written).
            let one = t.slice(s![..1, ..]);
            let mut g = Array2::<f32>::zeros((ROWS, COLS));
            let broadcast = run(s.view(), one, g.view_mut());
            let full = one.broadcast((ROWS, COLS)).unwrap().to_owned();
            let mut g2 = Array2::<f32>::zeros((ROWS, COLS));
            assert_eq!(
                broadcast.to_bits(),
                run(s.view(), full.view(), g2.view_mut()).to_bits()
            );
            assert!(g == g2);
            let sb = s.mapv(|v| Bf16::narrow(f64::from(v)));
            let tb = t.mapv(|v| Bf16::narrow(f64::from(v)));
            let mut gb = Array2::from_elem((ROWS, COLS).f(), Bf16::narrow(0.0));
            let lb = kl_div_logits_and_grad_into(
                sb.view(),
                tb.slice(s![..;-1, ..]),
                &loss,
                LogitsReduction::Mean,
                gb.view_mut(),
            )
            .unwrap();
            assert!(lb.is_finite() && gb.iter().all(|v| v.widen().is_finite()));
        }
    }
    kldiv::runtime::set_num_threads(0).unwrap();
}
