//! Gradients: PyTorch's autograd results for both arguments, and the loss with its input
//! gradient fused in one pass (the training step's hot path).
//!
//! The elementwise derivatives are [`grad_input`] and [`grad_target`] beside the formula in
//! `terms.rs`. A reduced loss's gradient is known before the pass (`1 / divisor` for every
//! element), so [`kl_div_and_grad_into`] reads each element once, adds its term to the sum and
//! writes its gradient in the same loop.

use ndarray::{ArrayD, ArrayView, ArrayViewMut, Dimension, IxDyn};

use crate::error::Error;
use crate::float::Float;
use crate::loss::{common_shape, divisor, Reduction};
use crate::parallel::{block_range, for_each_block, tree_sum};
use crate::reduce::{fold_lanes, sum_lanes, LANES};
use crate::terms::{grad_input, grad_target, term};
use crate::walk::{broadcast_shape, broadcast_strides, for_runs, Dst, Src, Walk};

/// Both gradients of the loss for an incoming gradient `grad_output`, as PyTorch's autograd
/// computes them: `grad_input = d/dx`, `grad_target = d/dt`, each `grad_output / divisor`
/// times the elementwise derivative (see [`grad_input`], [`grad_target`]).
///
/// `grad_output` broadcasts to the loss's shape (a 0-d view for a reduced loss), and `divisor`
/// is the reduction's (1 for sum and none, the element count for mean, `input.shape()[0]` for
/// batchmean). Both outputs have the loss's (broadcast) shape; when `input` or `target` was
/// broadcast, summing the gradient over the broadcast axes gives the gradient of the original.
///
/// # Errors
/// [`Error::Broadcast`] for inputs that do not broadcast, [`Error::OutputShape`] for an output
/// or a `grad_output` that does not fit the loss's shape.
///
/// # Example
/// ```
/// use ndarray::{arr0, array, Array1};
/// let x = array![-1.0_f64, -2.0];
/// let t = array![0.25_f64, 0.75];
/// let (mut gx, mut gt) = (Array1::zeros(2), Array1::zeros(2));
/// // batchmean over 2 rows, d(loss)/d(loss) = 1
/// kldiv::kl_div_backward_into(arr0(1.0).view(), 2.0, x.view(), t.view(), gx.view_mut(), gt.view_mut(), false)
///     .unwrap();
/// assert_eq!(gx, array![-0.125, -0.375]);
/// ```
#[allow(clippy::too_many_arguments)]
pub fn kl_div_backward_into<T, D0, D1, D2, D3, D4>(
    grad_output: ArrayView<'_, T, D0>,
    divisor: f64,
    input: ArrayView<'_, T, D1>,
    target: ArrayView<'_, T, D2>,
    mut grad_input: ArrayViewMut<'_, T, D3>,
    mut grad_target: ArrayViewMut<'_, T, D4>,
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
    if broadcast_shape(grad_output.shape(), &shape).as_deref() != Some(shape.as_slice()) {
        return Err(Error::OutputShape {
            expected: shape,
            actual: grad_output.shape().to_vec(),
        });
    }
    check_output(&shape, grad_input.shape())?;
    check_output(&shape, grad_target.shape())?;
    let walk = Walk::new(
        &shape,
        [
            &broadcast_strides(grad_output.shape(), grad_output.strides(), &shape),
            &broadcast_strides(input.shape(), input.strides(), &shape),
            &broadcast_strides(target.shape(), target.strides(), &shape),
            grad_input.strides(),
            grad_target.strides(),
        ],
    )?;
    // SAFETY: the pointers address logical index 0 of views borrowed for this call, `walk` was
    // built from their (broadcast) shapes and strides, and each block owns its logical indices.
    let (srcs, dsts) = unsafe {
        (
            [
                Src::new(grad_output.as_ptr()),
                Src::new(input.as_ptr()),
                Src::new(target.as_ptr()),
            ],
            [
                Dst::new(grad_input.as_mut_ptr()),
                Dst::new(grad_target.as_mut_ptr()),
            ],
        )
    };
    let len = walk.len();
    let each = |b: usize| {
        for_runs(
            &walk,
            block_range(b, len),
            &srcs,
            &dsts,
            |_, [g, x, t], [gx, gt]| {
                if log_target {
                    backward_slice::<T, true>(g, divisor, x, t, gx, gt)
                } else {
                    backward_slice::<T, false>(g, divisor, x, t, gx, gt)
                }
            },
        )
    };
    for_each_block(len, each);
    Ok(())
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
    let div = divisor(reduction, input.shape(), target.shape())?;
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
    let shape = common_shape(input.shape(), target.shape())?;
    let mut grad = ArrayD::from_elem(IxDyn(&shape), T::default());
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
/// assert_eq!(loss[0], kldiv::term::<false>(-1.0, 0.5));
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
    check_output(&shape, loss.shape())?;
    check_output(&shape, grad_input.shape())?;
    let walk = Walk::new(
        &shape,
        [
            &broadcast_strides(input.shape(), input.strides(), &shape),
            &broadcast_strides(target.shape(), target.strides(), &shape),
            loss.strides(),
            grad_input.strides(),
        ],
    )?;
    // SAFETY: as in `kl_div_backward_into`.
    let (srcs, dsts) = unsafe {
        (
            [Src::new(input.as_ptr()), Src::new(target.as_ptr())],
            [
                Dst::new(loss.as_mut_ptr()),
                Dst::new(grad_input.as_mut_ptr()),
            ],
        )
    };
    let len = walk.len();
    for_each_block(len, |b| {
        for_runs(
            &walk,
            block_range(b, len),
            &srcs,
            &dsts,
            |_, [x, t], [l, gx]| {
                if log_target {
                    terms_and_grad_slice::<T, true>(x, t, l, gx)
                } else {
                    terms_and_grad_slice::<T, false>(x, t, l, gx)
                }
            },
        )
    });
    Ok(())
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
    check_output(&shape, grad_input.shape())?;
    let walk = Walk::new(
        &shape,
        [
            &broadcast_strides(input.shape(), input.strides(), &shape),
            &broadcast_strides(target.shape(), target.strides(), &shape),
            grad_input.strides(),
        ],
    )?;
    // SAFETY: as in `kl_div_backward_into`.
    let (srcs, dsts) = unsafe {
        (
            [Src::new(input.as_ptr()), Src::new(target.as_ptr())],
            [Dst::new(grad_input.as_mut_ptr())],
        )
    };
    let g = 1.0 / divisor;
    let len = walk.len();
    Ok(tree_sum(len, |b| {
        let mut acc = [0.0; LANES];
        for_runs(
            &walk,
            block_range(b, len),
            &srcs,
            &dsts,
            |first, [x, t], [gx]| {
                if log_target {
                    fused_sum_slice::<T, true>(&mut acc, first, g, x, t, gx)
                } else {
                    fused_sum_slice::<T, false>(&mut acc, first, g, x, t, gx)
                }
            },
        );
        fold_lanes(&acc)
    }))
}

fn check_output(shape: &[usize], actual: &[usize]) -> Result<(), Error> {
    if actual == shape {
        Ok(())
    } else {
        Err(Error::OutputShape {
            expected: shape.to_vec(),
            actual: actual.to_vec(),
        })
    }
}

#[inline]
fn backward_slice<T: Float, const LOG_TARGET: bool>(
    g: &[T],
    divisor: f64,
    x: &[T],
    t: &[T],
    gx: &mut [T],
    gt: &mut [T],
) {
    for i in 0..x.len() {
        let gi = g[i].to_f64() / divisor;
        let (xi, ti) = (x[i].to_f64(), t[i].to_f64());
        gx[i] = T::from_f64(grad_input::<LOG_TARGET>(gi, ti));
        gt[i] = T::from_f64(grad_target::<LOG_TARGET>(gi, xi, ti));
    }
}

#[inline]
fn fused_sum_slice<T: Float, const LOG_TARGET: bool>(
    acc: &mut [f64; LANES],
    first: usize,
    g: f64,
    x: &[T],
    t: &[T],
    gx: &mut [T],
) {
    sum_lanes(acc, first, x.len(), |i| {
        let (xi, ti) = (x[i].to_f64(), t[i].to_f64());
        gx[i] = T::from_f64(grad_input::<LOG_TARGET>(g, ti));
        term::<LOG_TARGET>(xi, ti)
    });
}

#[inline]
fn terms_and_grad_slice<T: Float, const LOG_TARGET: bool>(
    x: &[T],
    t: &[T],
    loss: &mut [T],
    gx: &mut [T],
) {
    for i in 0..x.len() {
        let (xi, ti) = (x[i].to_f64(), t[i].to_f64());
        loss[i] = T::from_f64(term::<LOG_TARGET>(xi, ti));
        gx[i] = T::from_f64(grad_input::<LOG_TARGET>(1.0, ti));
    }
}
