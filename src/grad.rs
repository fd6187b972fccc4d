//! Gradients: PyTorch's autograd results for both arguments, and the loss with its input
//! gradient fused in one pass (the training step's hot path).
//!
//! The elementwise derivatives are [`crate::grad_input`] and [`crate::grad_target`] beside
//! the formula in `terms.rs`. A reduced loss's gradient is known before the pass
//! (`1 / divisor` for every element), so [`kl_div_and_grad_into`] reads each element once,
//! adds its term to the sum and writes its gradient in the same loop.

use ndarray::{ArrayD, ArrayView, ArrayViewMut, Dimension, IxDyn};

use crate::error::Error;
use crate::float::Float;
use crate::loss::{common_shape, divisor, Reduction};
use crate::parallel::{for_each_block, tree_sum};
use crate::reduce::{fold_lanes, sum_terms, Lanes, LANES};
use crate::simd::{dispatch, Kernel};
use crate::terms::{fast_term, grad_input_with, grad_target_with, term_with, transcendental_slice};
use crate::walk::{broadcast_shape, broadcast_strides, for_runs, Dst, Src, Tile, Walk, TILE};

/// Both gradients of the loss for an incoming gradient `grad_output`, as PyTorch's autograd
/// computes them: `grad_input = d/dx`, `grad_target = d/dt`, each `grad_output / divisor`
/// times the elementwise derivative (see [`crate::grad_input`], [`crate::grad_target`]).
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
    let blocks = walk.blocks();
    let each = |b: usize| {
        for_runs(
            &walk,
            blocks.range(b),
            &srcs,
            &dsts,
            |_, [g, x, t], [gx, gt]| {
                dispatch(Backward {
                    g,
                    divisor,
                    x,
                    t,
                    gx,
                    gt,
                    log_target,
                })
            },
        )
    };
    for_each_block(blocks, each);
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
    let blocks = walk.blocks();
    Ok(f64::from_f64(tree_sum(blocks, |b, tr: &mut Tile<T>| {
        let mut acc = [0.0; LANES];
        for_runs(
            &walk,
            blocks.range(b),
            &srcs,
            &dsts,
            |first, [x, t], [gx]| {
                dispatch(FusedSum {
                    tr: &mut tr.0,
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
    })))
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

#[inline(always)]
fn backward_slice<const LOG_TARGET: bool, T: Float>(k: Backward<'_, T>) {
    // The transcendentals first, in place in `gt` (T's full SIMD width), then the rest.
    transcendental_slice::<LOG_TARGET, T>(k.t, k.gt, &[k.x, k.t, k.g]);
    let it =
        k.x.iter()
            .zip(k.t)
            .zip(k.g)
            .zip(k.gx.iter_mut().zip(k.gt.iter_mut()));
    for (((&x, &t), &g), (gx, gt)) in it {
        let (g, tr) = (g.to_f64() / k.divisor, *gt);
        *gx = T::from_f64(grad_input_with::<LOG_TARGET, T>(g, t, tr));
        *gt = T::from_f64(grad_target_with::<LOG_TARGET, T>(g, x, t, tr));
    }
}

/// Both gradients of a run, for `grad_output / divisor`.
struct Backward<'a, T> {
    g: &'a [T],
    divisor: f64,
    x: &'a [T],
    t: &'a [T],
    gx: &'a mut [T],
    gt: &'a mut [T],
    log_target: bool,
}

impl<T: Float> Kernel for Backward<'_, T> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        if self.log_target {
            backward_slice::<true, T>(self)
        } else {
            backward_slice::<false, T>(self)
        }
    }
}

#[inline(always)]
fn fused_sum_slice<const LOG_TARGET: bool, T: Float>(k: FusedSum<'_, T>) {
    let tr = &mut k.tr[..k.x.len()];
    let fast = transcendental_slice::<LOG_TARGET, T>(k.t, tr, &[k.x, k.t]);
    sum_terms::<LOG_TARGET, true, T>(k.acc, k.first, k.x, k.t, tr, fast, k.g, k.gx);
}

/// The terms of a run added to the lanes, and the input gradient for `g` written.
struct FusedSum<'a, T> {
    tr: &'a mut [T; TILE],
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
    #[inline(always)]
    fn run(self) {
        if self.log_target {
            fused_sum_slice::<true, T>(self)
        } else {
            fused_sum_slice::<false, T>(self)
        }
    }
}

#[inline(always)]
fn terms_and_grad_slice<const LOG_TARGET: bool, T: Float>(k: TermsAndGrad<'_, T>) {
    if transcendental_slice::<LOG_TARGET, T>(k.t, k.gx, &[k.x, k.t]) {
        terms_and_grad_given::<LOG_TARGET, T>(k, fast_term::<LOG_TARGET, T>)
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
        let tr = *gx;
        *l = T::from_f64(term(x, t, tr));
        *gx = T::from_f64(grad_input_with::<LOG_TARGET, T>(1.0, t, tr));
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
    #[inline(always)]
    fn run(self) {
        if self.log_target {
            terms_and_grad_slice::<true, T>(self)
        } else {
            terms_and_grad_slice::<false, T>(self)
        }
    }
}
