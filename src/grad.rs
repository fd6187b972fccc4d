//! Gradients: PyTorch's autograd results for both arguments, and the loss with its input
//! gradient fused in one pass (the training step's hot path).
//!
//! The elementwise derivatives are [`crate::grad_input`] and [`crate::grad_target`] beside
//! the formula in `terms.rs`. A reduced loss's gradient is known before the pass
//! (`1 / divisor` for every element), so [`kl_div_and_grad_into`] reads each element once,
//! adds its term to the sum and writes its gradient in the same loop.

use ndarray::{ArrayD, ArrayView, ArrayViewMut, Dimension};

use crate::error::Error;
use crate::float::Float;
use crate::loss::{common_shape, settle, zeros, Reduction};
use crate::parallel::{for_each_block, for_each_task, tree_sum};
use crate::reduce::{fold_lanes, sum_terms, Lanes, LANES};
use crate::simd::{dispatch, Kernel};
use crate::terms::{
    factored_term, grad_input_with, grad_target_with, term_with, transcendental_slice,
};
use crate::walk::{for_runs, operands, Dst, In, Out, Src, Tile, Walk, TILE};

/// The gradients of the loss for an incoming gradient `grad_output`, as PyTorch's autograd
/// computes them: `grad_input = d/dx`, `grad_target = d/dt`, each `grad_output / divisor`
/// times the elementwise derivative (see [`crate::grad_input`], [`crate::grad_target`]), the
/// divisor that of `reduction` ([`Reduction::divisor`]; for the unreduced loss pass
/// [`Reduction::Sum`], whose divisor is 1). Either output may be `None`: that gradient is not
/// computed.
///
/// `grad_output` broadcasts to the loss's shape (a 0-d view for a reduced loss). Both outputs
/// have the loss's (broadcast) shape; when `input` or `target` was broadcast, summing the
/// gradient over the broadcast axes gives the gradient of the original.
///
/// # Errors
/// [`Error::Broadcast`] for inputs that do not broadcast, [`Error::NotBroadcastable`] for a
/// `grad_output` that does not fit the loss's shape, [`Error::OutputShape`] for an output of
/// another shape, and as [`crate::kl_div_terms_into`].
///
/// # Example
/// ```
/// use kldiv::ndarray::{arr0, array, Array1, ArrayViewMut1};
/// use kldiv::Reduction;
/// let x = array![[-1.0_f64, -2.0]];
/// let t = array![[0.25_f64, 0.75]];
/// let (mut gx, mut gt) = (x.clone(), x.clone());
/// let g = arr0(1.0); // d(loss)/d(loss)
/// kldiv::kl_div_backward_into(g.view(), x.view(), t.view(), Reduction::Sum, Some(gx.view_mut()),
///     Some(gt.view_mut()), false).unwrap();
/// assert_eq!(gx, array![[-0.25, -0.75]]);
/// // the input's gradient alone
/// kldiv::kl_div_backward_into(g.view(), x.view(), t.view(), Reduction::Sum, Some(gx.view_mut()),
///     None::<kldiv::ndarray::ArrayViewMut2<f64>>, false).unwrap();
/// ```
#[allow(clippy::too_many_arguments)]
pub fn kl_div_backward_into<T, D0, D1, D2, D3, D4>(
    grad_output: ArrayView<'_, T, D0>,
    input: ArrayView<'_, T, D1>,
    target: ArrayView<'_, T, D2>,
    reduction: Reduction,
    grad_input: Option<ArrayViewMut<'_, T, D3>>,
    grad_target: Option<ArrayViewMut<'_, T, D4>>,
    log_target: bool,
) -> Result<(), Error>
where
    T: Float,
    D0: Dimension,
    D1: Dimension,
    D2: Dimension,
    D3: Dimension,
    D4: Dimension,
{
    let divisor = reduction.divisor(input.shape(), target.shape())?;
    backward_into(
        grad_output,
        divisor,
        input,
        target,
        grad_input,
        grad_target,
        log_target,
    )
}

/// [`kl_div_backward_into`] with new C-ordered gradients of the loss's (broadcast) shape.
///
/// # Errors
/// As [`kl_div_backward_into`].
///
/// # Example
/// ```
/// use kldiv::ndarray::{arr0, array};
/// use kldiv::Reduction;
/// let x = array![[-1.0_f64, -2.0], [-0.5, -1.5]];
/// let t = array![[0.25_f64, 0.75], [0.5, 0.5]];
/// let (gx, gt) = kldiv::kl_div_backward(arr0(1.0).view(), x.view(), t.view(),
///     Reduction::BatchMean, false).unwrap();
/// assert_eq!(gx[[0, 1]], -0.375); // -t / 2
/// assert_eq!(gt.shape(), &[2, 2]);
/// ```
pub fn kl_div_backward<T, D0, D1, D2>(
    grad_output: ArrayView<'_, T, D0>,
    input: ArrayView<'_, T, D1>,
    target: ArrayView<'_, T, D2>,
    reduction: Reduction,
    log_target: bool,
) -> Result<(ArrayD<T>, ArrayD<T>), Error>
where
    T: Float,
    D0: Dimension,
    D1: Dimension,
    D2: Dimension,
{
    let shape = common_shape(input.shape(), target.shape())?;
    let (mut gx, mut gt) = (zeros(&shape)?, zeros(&shape)?);
    let (ox, ot) = (Some(gx.view_mut()), Some(gt.view_mut()));
    kl_div_backward_into(grad_output, input, target, reduction, ox, ot, log_target)?;
    Ok((gx, gt))
}

/// [`kl_div_backward_into`] for a divisor given as a number (the bindings' chunks of larger
/// arrays divide by the whole's).
pub(crate) fn backward_into<T, D0, D1, D2, D3, D4>(
    grad_output: ArrayView<'_, T, D0>,
    divisor: f64,
    input: ArrayView<'_, T, D1>,
    target: ArrayView<'_, T, D2>,
    grad_input: Option<ArrayViewMut<'_, T, D3>>,
    grad_target: Option<ArrayViewMut<'_, T, D4>>,
    log_target: bool,
) -> Result<(), Error>
where
    T: Float,
    D0: Dimension,
    D1: Dimension,
    D2: Dimension,
    D3: Dimension,
    D4: Dimension,
{
    let shape = common_shape(input.shape(), target.shape())?;
    let ins = || {
        [
            In::new(&grad_output, "grad_output"),
            In::new(&input, "input"),
            In::new(&target, "target"),
        ]
    };
    let each = |walk: &Walk<_>, srcs, dsts, which| {
        backward_walk(walk, srcs, dsts, which, divisor, log_target)
    };
    match (grad_input, grad_target) {
        (Some(mut gx), Some(mut gt)) => {
            let outs = [
                Out::new(&mut gx, "grad_input"),
                Out::new(&mut gt, "grad_target"),
            ];
            let (walk, srcs, dsts) = operands::<T, 5, 3, 2>(&shape, ins(), outs)?;
            backward_walk(&walk, srcs, dsts, (true, true), divisor, log_target)
        }
        (Some(mut gx), None) => {
            let outs = [Out::new(&mut gx, "grad_input")];
            let (walk, srcs, dsts) = operands::<T, 4, 3, 1>(&shape, ins(), outs)?;
            each(&walk, srcs, dsts, (true, false))
        }
        (None, Some(mut gt)) => {
            let outs = [Out::new(&mut gt, "grad_target")];
            let (walk, srcs, dsts) = operands::<T, 4, 3, 1>(&shape, ins(), outs)?;
            each(&walk, srcs, dsts, (false, true))
        }
        (None, None) => operands::<T, 3, 3, 0>(&shape, ins(), []).map(|_| ()),
    }
}

/// The gradients of [`kl_div_backward_into`] over a walk whose outputs are `dsts`: the input's,
/// the target's, or both, as `(gx, gt)` says.
fn backward_walk<T: Float, const K: usize, const W: usize>(
    walk: &Walk<K>,
    srcs: [Src<'_, T>; 3],
    dsts: [Dst<'_, T>; W],
    (gx, gt): (bool, bool),
    divisor: f64,
    log_target: bool,
) -> Result<(), Error> {
    let blocks = walk.blocks();
    for_each_task(blocks.len(), blocks.count(), |b, ft: &mut Tile<T>| {
        for_runs(walk, blocks.range(b), &srcs, &dsts, |_, [g, x, t], outs| {
            let mut outs = outs.into_iter();
            dispatch(Backward {
                g,
                divisor,
                x,
                t,
                gx: gx.then(|| outs.next()).flatten(),
                gt: gt.then(|| outs.next()).flatten(),
                ft: &mut ft.0,
                log_target,
            })
        })
    })
}

/// The reduced loss and its gradient with respect to `input` (for an incoming gradient of 1),
/// in one pass: each element is read once, its term summed and its gradient written.
///
/// `grad_input` has the broadcast shape of `input` and `target`. Returns the loss as
/// [`crate::kl_div`] does, with the same bits.
///
/// # Errors
/// As [`kl_div_backward_into`].
///
/// # Example
/// ```
/// use kldiv::Reduction;
/// use ndarray::{array, Array2};
/// let x = array![[0.5_f32, 0.5]].mapv(f32::ln);
/// let t = array![[0.25_f32, 0.75]];
/// let mut gx = Array2::zeros((1, 2));
/// let loss = kldiv::kl_div_and_grad_into(x.view(), t.view(), Reduction::BatchMean, gx.view_mut(), false)
///     .unwrap();
/// assert_eq!(loss, kldiv::kl_div(x.view(), t.view(), Reduction::BatchMean, false).unwrap());
/// assert_eq!(gx, -&t);
/// ```
pub fn kl_div_and_grad_into<T: Float, D1: Dimension, D2: Dimension, D3: Dimension>(
    input: ArrayView<'_, T, D1>,
    target: ArrayView<'_, T, D2>,
    reduction: Reduction,
    grad_input: ArrayViewMut<'_, T, D3>,
    log_target: bool,
) -> Result<T, Error> {
    let div = reduction.divisor(input.shape(), target.shape())?;
    let sum = fused_sum(input, target, div, grad_input, log_target)?;
    Ok(T::from_f64(sum / div))
}

/// [`kl_div_and_grad_into`] with a new C-ordered gradient array.
///
/// # Errors
/// As [`kl_div_backward_into`].
///
/// # Example
/// ```
/// use kldiv::Reduction;
/// use ndarray::array;
/// let x = array![[-1.0_f64, -0.5]];
/// let t = array![[0.5_f64, 0.5]];
/// let (loss, gx) = kldiv::kl_div_and_grad(x.view(), t.view(), Reduction::Sum, false).unwrap();
/// assert_eq!(gx.into_raw_vec_and_offset().0, vec![-0.5, -0.5]);
/// assert!(loss.is_finite());
/// ```
pub fn kl_div_and_grad<T: Float, D1: Dimension, D2: Dimension>(
    input: ArrayView<'_, T, D1>,
    target: ArrayView<'_, T, D2>,
    reduction: Reduction,
    log_target: bool,
) -> Result<(T, ArrayD<T>), Error> {
    let mut grad = zeros(&common_shape(input.shape(), target.shape())?)?;
    let loss = kl_div_and_grad_into(input, target, reduction, grad.view_mut(), log_target)?;
    Ok((loss, grad))
}

/// The unreduced loss terms and the input gradient (for an incoming gradient of ones) in one
/// pass: `reduction="none"` of [`kl_div_and_grad_into`].
///
/// # Errors
/// As [`kl_div_backward_into`].
///
/// # Example
/// ```
/// use ndarray::{array, Array1};
/// let x = array![-1.0_f64, -2.0];
/// let t = array![0.5_f64, 0.25];
/// let (mut loss, mut gx) = (Array1::zeros(2), Array1::zeros(2));
/// kldiv::kl_div_terms_and_grad_into(x.view(), t.view(), loss.view_mut(), gx.view_mut(), false).unwrap();
/// assert_eq!(gx, array![-0.5, -0.25]);
/// assert_eq!(loss[0], kldiv::term::<false, f64>(-1.0, 0.5));
/// ```
pub fn kl_div_terms_and_grad_into<T, D1, D2, D3, D4>(
    input: ArrayView<'_, T, D1>,
    target: ArrayView<'_, T, D2>,
    mut loss: ArrayViewMut<'_, T, D3>,
    mut grad_input: ArrayViewMut<'_, T, D4>,
    log_target: bool,
) -> Result<(), Error>
where
    T: Float,
    D1: Dimension,
    D2: Dimension,
    D3: Dimension,
    D4: Dimension,
{
    let shape = common_shape(input.shape(), target.shape())?;
    let (walk, srcs, dsts) = operands::<T, 4, 2, 2>(
        &shape,
        [In::new(&input, "input"), In::new(&target, "target")],
        [
            Out::new(&mut loss, "loss"),
            Out::new(&mut grad_input, "grad_input"),
        ],
    )?;
    let blocks = walk.blocks();
    for_each_block(blocks, |b| {
        for_runs(
            &walk,
            blocks.range(b),
            &srcs,
            &dsts,
            |_, [x, t], [loss, gx]| {
                dispatch(TermsAndGrad {
                    x,
                    t,
                    loss,
                    gx,
                    log_target,
                })
            },
        )
    })
}

/// [`kl_div_terms_and_grad_into`] with new C-ordered arrays of the broadcast shape:
/// `(terms, grad_input)`.
///
/// # Errors
/// As [`kl_div_backward_into`].
///
/// # Example
/// ```
/// use kldiv::ndarray::array;
/// let x = array![-1.0_f64, -2.0];
/// let t = array![0.5_f64, 0.25];
/// let (loss, gx) = kldiv::kl_div_terms_and_grad(x.view(), t.view(), false).unwrap();
/// assert_eq!(gx, array![-0.5, -0.25].into_dyn());
/// assert_eq!(loss[1], kldiv::term::<false, f64>(-2.0, 0.25));
/// ```
pub fn kl_div_terms_and_grad<T: Float, D1: Dimension, D2: Dimension>(
    input: ArrayView<'_, T, D1>,
    target: ArrayView<'_, T, D2>,
    log_target: bool,
) -> Result<(ArrayD<T>, ArrayD<T>), Error> {
    let shape = common_shape(input.shape(), target.shape())?;
    let (mut loss, mut gx) = (zeros(&shape)?, zeros(&shape)?);
    kl_div_terms_and_grad_into(input, target, loss.view_mut(), gx.view_mut(), log_target)?;
    Ok((loss, gx))
}

/// The `f64` sum of the terms, with `grad_input` written as `grad_input(1 / divisor, t)`.
pub(crate) fn fused_sum<T: Float, D1: Dimension, D2: Dimension, D3: Dimension>(
    input: ArrayView<'_, T, D1>,
    target: ArrayView<'_, T, D2>,
    divisor: f64,
    mut grad_input: ArrayViewMut<'_, T, D3>,
    log_target: bool,
) -> Result<f64, Error> {
    let shape = common_shape(input.shape(), target.shape())?;
    let (walk, srcs, dsts) = operands::<T, 3, 2, 1>(
        &shape,
        [In::new(&input, "input"), In::new(&target, "target")],
        [Out::new(&mut grad_input, "grad_input")],
    )?;
    let g = 1.0 / divisor;
    let blocks = walk.blocks();
    let sum = tree_sum(blocks, |b, ft: &mut Tile<T>| {
        let mut acc = [0.0; LANES];
        for_runs(
            &walk,
            blocks.range(b),
            &srcs,
            &dsts,
            |first, [x, t], [gx]| {
                dispatch(FusedSum {
                    ft: &mut ft.0,
                    acc: &mut acc,
                    first,
                    g,
                    x,
                    t,
                    gx,
                    log_target,
                })
            },
        );
        fold_lanes(&acc)
    })?;
    // The sum again over the inputs alone, if it did not come out finite.
    let [x, t] = srcs;
    let (walk2, ..) = operands::<T, 2, 2, 0>(
        &shape,
        [In::new(&input, "input"), In::new(&target, "target")],
        [],
    )?;
    settle(sum, &walk2, x, t, log_target)
}

#[inline(always)]
fn backward_slice<const LOG_TARGET: bool, T: Float>(k: Backward<'_, T>) {
    let n = k.t.len();
    let ft = &mut k.ft[..n];
    // The transcendentals first (T's full SIMD width), where a gradient needs them.
    if LOG_TARGET || k.gt.is_some() {
        transcendental_slice::<LOG_TARGET, T>(k.t, ft, &[k.x, k.t, k.g]);
    }
    let g = |i: usize| k.g[i].to_f64() / k.divisor;
    let gx = |i: usize| T::from_f64(grad_input_with::<LOG_TARGET, T>(g(i), k.t[i], ft[i]));
    let gt = |i: usize| {
        T::from_f64(grad_target_with::<LOG_TARGET, T>(
            g(i),
            k.x[i],
            k.t[i],
            ft[i],
        ))
    };
    match (k.gx, k.gt) {
        (Some(out_x), Some(out_t)) => {
            for (i, (ox, ot)) in out_x.iter_mut().zip(out_t.iter_mut()).enumerate() {
                (*ox, *ot) = (gx(i), gt(i));
            }
        }
        (Some(out_x), None) => out_x.iter_mut().enumerate().for_each(|(i, o)| *o = gx(i)),
        (None, Some(out_t)) => out_t.iter_mut().enumerate().for_each(|(i, o)| *o = gt(i)),
        (None, None) => {}
    }
}

/// The gradients of a run for `grad_output / divisor`: the input's and/or the target's.
struct Backward<'a, T> {
    g: &'a [T],
    divisor: f64,
    x: &'a [T],
    t: &'a [T],
    gx: Option<&'a mut [T]>,
    gt: Option<&'a mut [T]>,
    ft: &'a mut [T; TILE],
    log_target: bool,
}

impl<T: Float> Kernel for Backward<'_, T> {
    type Output = ();
    fn log_target(&self) -> bool {
        self.log_target
    }
    #[inline(always)]
    fn run<const LOG_TARGET: bool>(self) {
        backward_slice::<LOG_TARGET, T>(self)
    }
}

#[inline(always)]
fn fused_sum_slice<const LOG_TARGET: bool, T: Float>(k: FusedSum<'_, T>) {
    let ft = &mut k.ft[..k.x.len()];
    let fast = transcendental_slice::<LOG_TARGET, T>(k.t, ft, &[k.x, k.t]);
    sum_terms::<LOG_TARGET, true, T>(k.acc, k.first, k.x, k.t, ft, fast, k.g, k.gx);
}

/// The terms of a run added to the lanes, and the input gradient for `g` written.
struct FusedSum<'a, T> {
    ft: &'a mut [T; TILE],
    acc: &'a mut Lanes,
    first: usize,
    g: f64,
    x: &'a [T],
    t: &'a [T],
    gx: &'a mut [T],
    log_target: bool,
}

impl<T: Float> Kernel for FusedSum<'_, T> {
    type Output = ();
    fn log_target(&self) -> bool {
        self.log_target
    }
    #[inline(always)]
    fn run<const LOG_TARGET: bool>(self) {
        fused_sum_slice::<LOG_TARGET, T>(self)
    }
}

#[inline(always)]
fn terms_and_grad_slice<const LOG_TARGET: bool, T: Float>(k: TermsAndGrad<'_, T>) {
    if transcendental_slice::<LOG_TARGET, T>(k.t, k.gx, &[k.x, k.t]) {
        terms_and_grad_given::<LOG_TARGET, T>(k, factored_term::<LOG_TARGET, T>)
    } else {
        terms_and_grad_given::<LOG_TARGET, T>(k, term_with::<LOG_TARGET, T>)
    }
}

/// [`terms_and_grad_slice`] once `gx` holds the transcendentals, with the term function given.
#[inline(always)]
fn terms_and_grad_given<const LOG_TARGET: bool, T: Float>(
    k: TermsAndGrad<'_, T>,
    term: impl Fn(T, T, T) -> f64,
) {
    for (((l, gx), &x), &t) in k.loss.iter_mut().zip(k.gx.iter_mut()).zip(k.x).zip(k.t) {
        let ft = *gx;
        *l = T::from_f64(term(x, t, ft));
        *gx = T::from_f64(grad_input_with::<LOG_TARGET, T>(1.0, t, ft));
    }
}

/// The terms of a run and the input gradient for ones.
struct TermsAndGrad<'a, T> {
    x: &'a [T],
    t: &'a [T],
    loss: &'a mut [T],
    gx: &'a mut [T],
    log_target: bool,
}

impl<T: Float> Kernel for TermsAndGrad<'_, T> {
    type Output = ();
    fn log_target(&self) -> bool {
        self.log_target
    }
    #[inline(always)]
    fn run<const LOG_TARGET: bool>(self) {
        terms_and_grad_slice::<LOG_TARGET, T>(self)
    }
}
