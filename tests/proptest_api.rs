//! Property tests of the crate's public API (proptest; cargo-fuzz needs a nightly toolchain,
//! which this project does not use): random shapes, broadcasting, strides (negative too),
//! Fortran order and special values. No input makes a kernel panic; every result equals a
//! naive evaluation of the same formula, and every layout gives the same bits.

use kldiv::{
    grad_input, grad_target, kl_div_and_grad, kl_div_backward_into, kl_div_sum, kl_div_terms, term,
    Reduction,
};
use ndarray::{arr0, Array, ArrayD, IxDyn, ShapeBuilder, Slice};
use proptest::prelude::*;

/// A value from a mix of log-probabilities, probabilities and special values.
fn value() -> impl Strategy<Value = f64> {
    prop_oneof![
        4 => -30.0..1.0f64,
        4 => 0.0..1.0f64,
        1 => prop::sample::select(vec![
            0.0, -0.0, f64::INFINITY, f64::NEG_INFINITY, f64::NAN, -1.0, 1e-310, 1e30
        ]),
    ]
}

/// A logical shape, and for each of two operands: its own (broadcastable) shape, a step per
/// axis (the view is every `step`-th element of a larger array, reversed when negative) and
/// whether the larger array is in Fortran order.
type Layout = (Vec<usize>, Vec<i32>, bool);

fn case() -> impl Strategy<Value = (Vec<usize>, Layout, Layout, Vec<f64>, Vec<f64>)> {
    prop::collection::vec(0usize..5, 0..4).prop_flat_map(|shape| {
        let n = shape.len();
        let layout = (
            prop::collection::vec(any::<bool>(), n),
            prop::collection::vec(prop::sample::select(vec![1, 2, -1, -3]), n),
            any::<bool>(),
            0..=n,
        )
            .prop_map({
                let shape = shape.clone();
                move |(ones, steps, fortran, drop)| {
                    let own: Vec<usize> = shape
                        .iter()
                        .zip(&ones)
                        .map(|(&d, &one)| if one { 1 } else { d })
                        .collect();
                    (own[drop..].to_vec(), steps[drop..].to_vec(), fortran)
                }
            });
        (
            Just(shape),
            layout.clone(),
            layout,
            prop::collection::vec(value(), 64),
            prop::collection::vec(value(), 64),
        )
    })
}

/// The operand of `layout`, filled from `values`, as a view of a larger array.
fn operand(layout: &Layout, values: &[f64]) -> (Array<f64, IxDyn>, Vec<Slice>) {
    let (shape, steps, fortran) = layout;
    let big: Vec<usize> = shape
        .iter()
        .zip(steps)
        .map(|(&d, &s)| (d * s.unsigned_abs() as usize).max(1))
        .collect();
    let mut i = 0;
    let fill = |_: IxDyn| {
        i += 1;
        values[i % values.len()]
    };
    let base = if *fortran {
        ArrayD::from_shape_fn(IxDyn(&big).f(), fill)
    } else {
        ArrayD::from_shape_fn(IxDyn(&big), fill)
    };
    let slices = shape
        .iter()
        .zip(steps)
        .map(|(&d, &s)| {
            let s = s as isize;
            if s > 0 {
                Slice::new(0, Some((d as isize) * s), s)
            } else {
                Slice::new(0, Some((d as isize) * -s), s)
            }
        })
        .collect();
    (base, slices)
}

/// NumPy's broadcasting of two shapes that do broadcast (the strategy makes sure).
fn broadcast(a: &[usize], b: &[usize]) -> Vec<usize> {
    let n = a.len().max(b.len());
    let at = |s: &[usize], i: usize| {
        if i + s.len() >= n {
            s[i + s.len() - n]
        } else {
            1
        }
    };
    (0..n)
        .map(|i| if at(a, i) == 1 { at(b, i) } else { at(a, i) })
        .collect()
}

fn same(a: f64, b: f64) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

proptest! {
    // 2,000 cases by default; `PROPTEST_CASES=200000` for a long run.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000),
        ..ProptestConfig::default()
    })]

    #[test]
    fn kernels_equal_a_naive_evaluation((_, lx, lt, vx, vt) in case()) {
        let (bx, sx) = operand(&lx, &vx);
        let (bt, st) = operand(&lt, &vt);
        let mut x = bx.view();
        for (ax, s) in sx.iter().enumerate() { x.slice_axis_inplace(ndarray::Axis(ax), *s); }
        let mut t = bt.view();
        for (ax, s) in st.iter().enumerate() { t.slice_axis_inplace(ndarray::Axis(ax), *s); }
        prop_assert_eq!(x.shape(), lx.0.as_slice());
        prop_assert_eq!(t.shape(), lt.0.as_slice());
        let shape = broadcast(x.shape(), t.shape());
        let xb = x.broadcast(IxDyn(&shape)).unwrap();
        let tb = t.broadcast(IxDyn(&shape)).unwrap();
        for log_target in [false, true] {
            // none: every element is the formula, bit for bit
            let terms = kl_div_terms(x.view(), t.view(), log_target).unwrap();
            prop_assert_eq!(terms.shape(), shape.as_slice());
            for ((&l, &xi), &ti) in terms.iter().zip(xb.iter()).zip(tb.iter()) {
                let want = if log_target { term::<true, f64>(xi, ti) } else { term::<false, f64>(xi, ti) };
                prop_assert!(same(l, want), "{} vs {}", l, want);
            }
            // sum: the same bits as on C-ordered copies, and close to a naive sum
            let s = kl_div_sum(x.view(), t.view(), log_target).unwrap();
            let sc = kl_div_sum(xb.to_owned().view(), tb.to_owned().view(), log_target).unwrap();
            prop_assert!(same(s, sc));
            let naive: f64 = terms.iter().sum();
            if naive.is_finite() {
                let scale: f64 = terms.iter().map(|v| v.abs()).sum();
                prop_assert!((s - naive).abs() <= 1e-12 * scale);
            } else {
                prop_assert_eq!(s.is_nan(), naive.is_nan());
            }
            // gradients: elementwise formula, and the fused kernel agrees with backward
            let (mut gx, mut gt) = (ArrayD::zeros(IxDyn(&shape)), ArrayD::zeros(IxDyn(&shape)));
            kl_div_backward_into(arr0(1.0).view(), x.view(), t.view(), Reduction::Sum, Some(gx.view_mut()), Some(gt.view_mut()), log_target).unwrap();
            for (((&a, &b), &xi), &ti) in gx.iter().zip(gt.iter()).zip(xb.iter()).zip(tb.iter()) {
                let (wa, wb) = if log_target {
                    (grad_input::<true, f64>(1.0, ti), grad_target::<true, f64>(1.0, xi, ti))
                } else {
                    (grad_input::<false, f64>(1.0, ti), grad_target::<false, f64>(1.0, xi, ti))
                };
                prop_assert!(same(a, wa) && same(b, wb));
            }
            let (loss, g) = kl_div_and_grad(x.view(), t.view(), Reduction::Sum, log_target).unwrap();
            prop_assert!(same(loss, s));
            prop_assert!(g.iter().zip(gx.iter()).all(|(&a, &b)| same(a, b)));
        }
    }
}
