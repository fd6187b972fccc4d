//! What the kernels refuse, and what they never do: outputs whose elements share memory or
//! overlap another operand, sizes that do not fit, too many threads, calls that cannot be
//! stopped, results that depend on the caller's floating-point mode, sums that overflow
//! halfway, scratch memory that cannot exist.

use kldiv::{
    kl_div, kl_div_and_grad_into, kl_div_backward_into, kl_div_sum, kl_div_terms_and_grad_into,
    kl_div_terms_into, runtime::with_interrupt, Error, Reduction,
};
use ndarray::{arr0, Array1, Array2, ArrayView, ArrayViewMut, ArrayViewMut2};

/// A mutable view of `shape` with element `strides` over `data`, whose elements may share
/// memory: what NumPy's `as_strided(..., writeable=True)` hands the bindings.
///
/// # Safety
/// Every element must lie inside `data`; nothing may be written through the view.
#[cfg(not(debug_assertions))]
unsafe fn aliased<'a>(
    data: &'a mut [f64],
    shape: &[usize],
    strides: &[usize],
) -> ArrayViewMut<'a, f64, ndarray::IxDyn> {
    use ndarray::{IxDyn, ShapeBuilder};
    unsafe { ArrayViewMut::from_shape_ptr(IxDyn(shape).strides(IxDyn(strides)), data.as_mut_ptr()) }
}

fn pair(rows: usize, cols: usize) -> (Array2<f64>, Array2<f64>) {
    let x = Array2::from_shape_fn((rows, cols), |(i, j)| -1.0 - ((i * 7 + j * 3) % 11) as f64);
    let t = Array2::from_shape_fn((rows, cols), |(i, j)| ((i + 2 * j) % 5 + 1) as f64 / 10.0);
    (x, t)
}

/// ndarray's debug builds refuse to make such views (so do NumPy's arrays reach the bindings:
/// `make test-rust` runs this file in release mode too).
#[cfg(not(debug_assertions))]
#[test]
fn outputs_whose_elements_share_memory_are_refused() {
    let (x, t) = pair(30, 100);
    let g = arr0(1.0);
    // A zero stride on an axis longer than 1, and strides that overlap (4 and 1 over 100).
    for strides in [[0, 1], [4, 1], [1, 1]] {
        let mut d = vec![0.0; 30 * 100 * 4];
        let before = d.clone();
        let is_self_overlap = |e: Error| matches!(e, Error::SelfOverlap { .. });
        // SAFETY (each view below): the strides reach at most 29 * 4 + 99 of 12,000 elements;
        // every kernel refuses the view before writing (checked: the data is unchanged).
        let v = unsafe { aliased(&mut d, &[30, 100], &strides) };
        assert!(is_self_overlap(
            kl_div_terms_into(x.view(), t.view(), v, false).unwrap_err()
        ));
        let v = unsafe { aliased(&mut d, &[30, 100], &strides) };
        let err = kl_div_and_grad_into(x.view(), t.view(), Reduction::Sum, v, false).unwrap_err();
        assert!(is_self_overlap(err));
        let mut loss = Array2::<f64>::zeros((30, 100));
        let v = unsafe { aliased(&mut d, &[30, 100], &strides) };
        let err = kl_div_terms_and_grad_into(x.view(), t.view(), loss.view_mut(), v, false);
        assert!(is_self_overlap(err.unwrap_err()));
        let v = unsafe { aliased(&mut d, &[30, 100], &strides) };
        let none = None::<ArrayViewMut2<f64>>;
        let err = kl_div_backward_into(
            g.view(),
            x.view(),
            t.view(),
            Reduction::Sum,
            Some(v),
            none,
            false,
        );
        assert!(is_self_overlap(err.unwrap_err()));
        assert_eq!(d, before, "nothing was written");
    }
}

#[test]
fn outputs_that_overlap_another_operand_are_refused() {
    let (x, t) = pair(10, 20);
    let mut memory = vec![0.0f64; 400];
    let base = memory.as_mut_ptr();
    // Two outputs over the same memory, and an output over grad_output (a view of it).
    // SAFETY: both views lie inside `memory`; the kernels refuse them before any write.
    let (a, b) = unsafe {
        (
            ArrayViewMut::from_shape_ptr((10, 20), base),
            ArrayViewMut::from_shape_ptr((10, 20), base.add(100)),
        )
    };
    let g = arr0(1.0);
    let err = kl_div_backward_into(
        g.view(),
        x.view(),
        t.view(),
        Reduction::Sum,
        Some(a),
        Some(b),
        false,
    );
    assert_eq!(
        err.unwrap_err(),
        Error::Overlap {
            output: "grad_target".into(),
            other: "grad_input".into()
        }
    );
    // SAFETY: as above; the input is read-only and aliases the output.
    let (go, out) = unsafe {
        (
            ArrayView::from_shape_ptr((10, 20), base as *const f64),
            ArrayViewMut::from_shape_ptr((10, 20), base.add(50)),
        )
    };
    let err = kl_div_backward_into(
        go,
        x.view(),
        t.view(),
        Reduction::Sum,
        Some(out),
        None::<ArrayViewMut2<f64>>,
        false,
    );
    assert_eq!(
        err.unwrap_err(),
        Error::Overlap {
            output: "grad_input".into(),
            other: "grad_output".into()
        }
    );
    // SAFETY: as above.
    let (input, out) = unsafe {
        (
            ArrayView::from_shape_ptr((10, 20), base as *const f64),
            ArrayViewMut::from_shape_ptr((10, 20), base.add(199)),
        )
    };
    let err = kl_div_terms_into(input, t.view(), out, false).unwrap_err();
    assert!(matches!(err, Error::Overlap { .. }), "{err}");
    assert!(memory.iter().all(|&v| v == 0.0), "nothing was written");
    // Memory that merely lies next to an input is fine.
    let (left, right) = memory.split_at_mut(200);
    let input = ArrayView::from_shape((10, 20), &*left).unwrap();
    let out = ArrayViewMut::from_shape((10, 20), right).unwrap();
    kl_div_terms_into(input, t.view(), out, false).unwrap();
}

#[test]
fn sizes_that_do_not_fit_are_errors_in_every_reduction() {
    // Each view fits, their broadcast shape (2^40 x 2^40) does not.
    let one = Array2::from_elem((1, 1), -1.0f32);
    let x = one.broadcast((1usize << 40, 1)).unwrap();
    let t = one.broadcast((1, 1usize << 40)).unwrap();
    for reduction in [Reduction::Sum, Reduction::Mean, Reduction::BatchMean] {
        assert_eq!(kl_div(x, t, reduction, false), Err(Error::TooLarge));
    }
    assert_eq!(kl_div_sum(x, t, false), Err(Error::TooLarge));
}

#[test]
fn scratch_memory_that_cannot_exist_is_an_error() {
    // 2^62 logical elements (stride 0): 2^50 block sums would need 8 PiB.
    kldiv::runtime::set_num_threads(2).unwrap();
    let one = Array1::from_elem(1, -1.0f32);
    let t = arr0(0.5f32);
    let huge = one.broadcast((1usize << 31, 1usize << 31)).unwrap();
    let err = kl_div_sum(huge.view(), t.view(), false).unwrap_err();
    assert!(
        matches!(err, Error::OutOfMemory { bytes } if bytes == 8 << 50),
        "{err:?}"
    );
}

#[test]
fn too_many_threads_is_an_error_and_changes_nothing() {
    let before = kldiv::runtime::get_num_threads();
    let err = kldiv::runtime::set_num_threads(kldiv::runtime::MAX_THREADS + 1).unwrap_err();
    assert_eq!(
        err,
        Error::TooManyThreads {
            requested: kldiv::runtime::MAX_THREADS + 1
        }
    );
    assert!(err.to_string().contains("at most 1024"));
    assert_eq!(kldiv::runtime::get_num_threads(), before);
}

#[test]
fn concurrent_callers_resize_the_pool_and_get_the_same_bits() {
    let (x, t) = pair(300, 1000);
    let want = kl_div_sum(x.view(), t.view(), false).unwrap();
    std::thread::scope(|s| {
        for k in 0..6 {
            let (x, t) = (&x, &t);
            s.spawn(move || {
                for i in 0..20 {
                    kldiv::runtime::set_num_threads(1 + (i + k) % 4).unwrap();
                    let n = kldiv::runtime::get_num_threads();
                    assert!((1..=4).contains(&n));
                    let got = kl_div_sum(x.view(), t.view(), false).unwrap();
                    assert_eq!(got.to_bits(), want.to_bits());
                }
            });
        }
    });
    kldiv::runtime::set_num_threads(0).unwrap();
}

#[test]
fn every_kernel_stops_when_its_interrupt_check_says_so() {
    let (x, t) = pair(400, 1000);
    let xf = x.t().as_standard_layout().into_owned().reversed_axes(); // Fortran order
    let row = t.row(0).insert_axis(ndarray::Axis(0)); // a broadcast target
    let stop = || true;
    let stopped = |r: Result<f64, Error>| assert_eq!(r, Err(Error::Interrupted));
    for threads in [1, 2] {
        kldiv::runtime::set_num_threads(threads).unwrap();
        stopped(with_interrupt(stop, || {
            kl_div_sum(x.view(), t.view(), false)
        }));
        stopped(with_interrupt(stop, || {
            kl_div_sum(xf.view(), t.view(), false)
        }));
        stopped(with_interrupt(stop, || {
            kl_div_sum(x.view(), row.view(), true)
        }));
        let mut out = Array2::<f64>::zeros((400, 1000));
        let mut out2 = Array2::<f64>::zeros((400, 1000));
        let r = with_interrupt(stop, || {
            kl_div_terms_into(x.view(), t.view(), out.view_mut(), false)
        });
        assert_eq!(r, Err(Error::Interrupted));
        let r = with_interrupt(stop, || {
            kl_div_and_grad_into(x.view(), t.view(), Reduction::Mean, out.view_mut(), false)
        });
        assert_eq!(r, Err(Error::Interrupted));
        let r = with_interrupt(stop, || {
            kl_div_terms_and_grad_into(x.view(), t.view(), out.view_mut(), out2.view_mut(), false)
        });
        assert_eq!(r, Err(Error::Interrupted));
        let g = arr0(1.0);
        let r = with_interrupt(stop, || {
            kl_div_backward_into(
                g.view(),
                x.view(),
                t.view(),
                Reduction::Sum,
                Some(out.view_mut()),
                Some(out2.view_mut()),
                false,
            )
        });
        assert_eq!(r, Err(Error::Interrupted));
        // A check that never fires changes nothing; outside `with_interrupt`, no check runs.
        let want = kl_div_sum(x.view(), t.view(), false).unwrap();
        let got = with_interrupt(|| false, || kl_div_sum(x.view(), t.view(), false)).unwrap();
        assert_eq!(got.to_bits(), want.to_bits());
    }
    kldiv::runtime::set_num_threads(0).unwrap();
}

/// Terms `1 * (ln 1 - x) = -x`: 1e308 twice, 16 apart, so that both land in lane 0 (their sum
/// overflows to inf), and -1e308 and -5e307 in lane 1 (-inf): the lanes fold to NaN, while
/// the sum of the terms is 5e307. The other terms are 0 (t = 0).
fn overflowing_pair() -> (Array1<f64>, Array1<f64>) {
    let mut x = Array1::<f64>::zeros(48);
    let mut t = Array1::<f64>::zeros(48);
    for (i, v) in [(0, -1e308), (16, -1e308), (1, 1e308), (17, 5e307)] {
        x[i] = v;
        t[i] = 1.0;
    }
    (x, t)
}

#[test]
fn sums_whose_partial_sums_overflow_do_not() {
    let close = |r: Result<f64, Error>, want: f64| {
        let v = r.unwrap();
        assert!((v - want).abs() <= 1e-15 * want, "{v} vs {want}");
    };
    let (mut x, mut t) = overflowing_pair();
    close(kl_div_sum(x.view(), t.view(), false), 5e307);
    close(
        kl_div(x.view(), t.view(), Reduction::Mean, false),
        5e307 / 48.0,
    );
    let mut gx = Array1::<f64>::zeros(48);
    let fused = kl_div_and_grad_into(x.view(), t.view(), Reduction::Sum, gx.view_mut(), false);
    close(fused, 5e307);
    // With an infinite term: that infinity, whatever the lanes did.
    x[40] = f64::NEG_INFINITY;
    t[40] = 1.0;
    assert_eq!(kl_div_sum(x.view(), t.view(), false), Ok(f64::INFINITY));
    // Terms of both infinite signs: NaN.
    x[41] = f64::INFINITY;
    t[41] = 1.0;
    assert!(kl_div_sum(x.view(), t.view(), false).unwrap().is_nan());
    // A sum that really overflows: +inf, as IEEE rounds it.
    let x = Array1::from_elem(32, -1e308);
    let t = Array1::from_elem(32, 1.0);
    assert_eq!(kl_div_sum(x.view(), t.view(), false), Ok(f64::INFINITY));
}

#[test]
fn target_gradients_are_autograds_at_the_edges() {
    // grad_output 0 with a negative target: xlogy(0, t) is 0, so the gradient is 0, not NaN.
    let x = Array1::from_elem(3, -1.0f64);
    let t = Array1::from_vec(vec![-0.5, 0.25, 2.0]);
    let (mut gx, mut gt) = (Array1::zeros(3), Array1::zeros(3));
    let zero = arr0(0.0);
    kl_div_backward_into(
        zero.view(),
        x.view(),
        t.view(),
        Reduction::Sum,
        Some(gx.view_mut()),
        Some(gt.view_mut()),
        false,
    )
    .unwrap();
    assert!(gt.iter().all(|&g| g == 0.0), "{gt}");
    // A subnormal target broadcast over 1000 rows, batchmean: each term's (g * t) / t is g,
    // exactly (g * t would underflow to 0 at t = 5e-324), so the summed gradient is the
    // exact one: sum of g * ln t + g - g * x over the rows.
    let t = Array1::from_elem(4, 5e-324f64);
    let x = Array2::from_elem((1000, 4), -2.0f64);
    let tb = t.broadcast((1000, 4)).unwrap();
    let mut gt = Array2::zeros((1000, 4));
    let g = 1.0 / 1000.0;
    kl_div_backward_into(
        arr0(1.0).view(),
        x.view(),
        tb,
        Reduction::BatchMean,
        None::<ArrayViewMut2<f64>>,
        Some(gt.view_mut()),
        false,
    )
    .unwrap();
    let summed = gt.sum_axis(ndarray::Axis(0));
    let exact = 1000.0 * (g * (5e-324f64).ln() + g + 2.0 * g);
    for v in summed {
        assert!((v - exact).abs() <= 1e-12 * exact.abs(), "{v} vs {exact}");
    }
}

/// The x86-64 MXCSR: flush-to-zero (bit 15) and denormals-are-zero (bit 6), as
/// `torch.set_flush_denormal(True)` or a library built with fast-math set them.
#[cfg(all(target_arch = "x86_64", not(miri)))]
mod fp {
    pub const FTZ_DAZ: u32 = (1 << 15) | (1 << 6);

    pub fn get() -> u32 {
        let mut csr = 0u32;
        // SAFETY: stores MXCSR into a live u32.
        unsafe { std::arch::asm!("stmxcsr [{}]", in(reg) &mut csr) };
        csr
    }

    pub fn set(csr: u32) {
        // SAFETY: loads MXCSR from a live u32 holding a valid control word.
        unsafe { std::arch::asm!("ldmxcsr [{}]", in(reg) &csr) };
    }
}

#[cfg(all(target_arch = "x86_64", not(miri)))]
#[test]
fn results_do_not_depend_on_the_callers_floating_point_mode() {
    // Subnormal targets: under DAZ their ln would read ln(0) = -inf and the terms NaN.
    let x = Array2::from_elem((300, 1000), -3.0f32);
    let t = Array2::from_shape_fn((300, 1000), |(i, j)| 1e-40f32 * (1 + (i + j) % 7) as f32);
    let want = kl_div_sum(x.view(), t.view(), false).unwrap();
    let mut terms_want = Array2::<f32>::zeros((300, 1000));
    kl_div_terms_into(x.view(), t.view(), terms_want.view_mut(), false).unwrap();
    assert!(want.is_finite());
    // This thread in FTZ/DAZ mode, and the pool's workers started from it (they inherit it).
    std::thread::spawn(move || {
        let normal = fp::get();
        fp::set(normal | fp::FTZ_DAZ);
        kldiv::runtime::set_num_threads(1).unwrap();
        kldiv::runtime::set_num_threads(2).unwrap();
        for _ in 0..20 {
            let got = kl_div_sum(x.view(), t.view(), false).unwrap();
            assert_eq!(got.to_bits(), want.to_bits());
        }
        let mut terms = Array2::<f32>::zeros((300, 1000));
        kl_div_terms_into(x.view(), t.view(), terms.view_mut(), false).unwrap();
        assert_eq!(
            fp::get() & fp::FTZ_DAZ,
            fp::FTZ_DAZ,
            "the caller's mode is restored"
        );
        fp::set(normal);
        kldiv::runtime::set_num_threads(0).unwrap();
        assert!(terms
            .iter()
            .zip(&terms_want)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
    })
    .join()
    .unwrap();
}
