//! The public kernels: the loss reduced (sum, mean, batchmean) or unreduced, over `ndarray`
//! views of any dimension and strides.

use ndarray::{ArrayD, ArrayView, ArrayViewMut, Dimension, IxDyn};

use crate::error::Error;
use crate::float::Float;
use crate::parallel::{for_each_block, tree_sum};
#[cfg(feature = "python")]
use crate::reduce::ReadSum;
use crate::reduce::{fold_lanes, Sum, SumPrecomputed, LANES, SCALE};
use crate::simd::{dispatch, with_default_fp};
use crate::terms::{TargetFactor, Terms};
use crate::transposed::sum_transposed;
use crate::walk::{
    broadcast_shape, broadcast_strides, for_runs, operands, Dst, In, Out, Src, Tile, Walk,
};

/// How the loss terms are reduced to one number (PyTorch's `reduction` argument, less `"none"`,
/// which is [`kl_div_terms`]).
///
/// # Example
/// ```
/// use kldiv::Reduction;
/// let r: Reduction = "batchmean".parse().unwrap();
/// assert_eq!(r, Reduction::BatchMean);
/// assert_eq!(r.divisor(&[4, 10], &[4, 10]).unwrap(), 4.0);
/// assert_eq!(Reduction::Mean.divisor(&[4, 10], &[10]).unwrap(), 40.0);
/// assert!("avg".parse::<Reduction>().is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reduction {
    /// The sum of the terms (0 for no terms).
    Sum,
    /// The sum divided by the number of terms (NaN for no terms). Not the KL divergence of
    /// the rows: PyTorch's default, kept for parity.
    Mean,
    /// The sum divided by `input.shape()[0]`, PyTorch's `"batchmean"`: the mathematical KL
    /// divergence averaged over the batch. A 0-d input gives the sum.
    BatchMean,
}

impl Reduction {
    /// Every reduction, in PyTorch's order.
    pub const ALL: [Reduction; 3] = [Reduction::Sum, Reduction::Mean, Reduction::BatchMean];

    /// What this reduction divides the sum of the terms by, for an `input` and a `target` of
    /// these shapes: 1, the number of terms (of the broadcast shape), or `input`'s first
    /// dimension, as PyTorch does even when broadcasting made the loss larger (1 for a 0-d
    /// input). The one statement of this rule: the kernels, the gradients and the bindings use
    /// it.
    ///
    /// # Errors
    /// [`Error::Broadcast`], or [`Error::TooLarge`] when the number of terms does not fit in
    /// `isize` (as for the kernels).
    ///
    /// # Example
    /// ```
    /// use kldiv::Reduction;
    /// assert_eq!(Reduction::BatchMean.divisor(&[1, 5], &[8, 5]).unwrap(), 1.0);
    /// assert_eq!(Reduction::BatchMean.divisor(&[], &[8, 5]).unwrap(), 1.0);
    /// ```
    pub fn divisor(self, input: &[usize], target: &[usize]) -> Result<f64, Error> {
        Ok(match self {
            Reduction::Sum => 1.0,
            Reduction::Mean => checked_len(&common_shape(input, target)?)? as f64,
            Reduction::BatchMean => input.first().map_or(1.0, |&n| n as f64),
        })
    }

    /// The name PyTorch gives it: `"sum"`, `"mean"` or `"batchmean"`.
    ///
    /// # Example
    /// ```
    /// assert_eq!(kldiv::Reduction::BatchMean.name(), "batchmean");
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            Reduction::Sum => "sum",
            Reduction::Mean => "mean",
            Reduction::BatchMean => "batchmean",
        }
    }
}

impl std::str::FromStr for Reduction {
    type Err = Error;

    /// `"sum"`, `"mean"` or `"batchmean"`; anything else is [`Error::Reduction`] (`"none"`
    /// included: the unreduced loss is [`kl_div_terms`]).
    fn from_str(s: &str) -> Result<Reduction, Error> {
        match s {
            "sum" => Ok(Reduction::Sum),
            "mean" => Ok(Reduction::Mean),
            "batchmean" => Ok(Reduction::BatchMean),
            _ => Err(Error::Reduction(s.to_string())),
        }
    }
}

/// The sum of the loss terms of `input` (log-probabilities) and `target` (probabilities, or
/// log-probabilities if `log_target`), broadcast together, accumulated in `f64`.
///
/// The result is bit-identical for every thread count and memory layout. Where the terms are
/// all finite, it is their sum whatever the order (an `f64` sum of `f64` terms near ±1e308
/// does not overflow halfway); otherwise it is NaN if a term is NaN or terms of both infinite
/// signs occur, else that infinity.
///
/// # Errors
/// [`Error::Broadcast`] if the shapes do not broadcast; [`Error::TooLarge`] if the broadcast
/// shape has more than `isize::MAX` elements; [`Error::OutOfMemory`] or
/// [`Error::Interrupted`] (see [`crate::runtime::with_interrupt`]).
///
/// # Example
/// ```
/// use ndarray::array;
/// let x = array![[0.25_f32, 0.75]].mapv(f32::ln);
/// let t = array![[0.5_f32, 0.5]];
/// let s = kldiv::kl_div_sum(x.view(), t.view(), false).unwrap();
/// let want = 0.5 * (0.5f64 / 0.25).ln() + 0.5 * (0.5f64 / 0.75).ln();
/// assert!((s - want).abs() < 1e-7);
/// ```
pub fn kl_div_sum<T: Float, D1: Dimension, D2: Dimension>(
    input: ArrayView<'_, T, D1>,
    target: ArrayView<'_, T, D2>,
    log_target: bool,
) -> Result<f64, Error> {
    let shape = common_shape(input.shape(), target.shape())?;
    let (walk, [x, t], []) = operands::<T, 2, 2, 0>(
        &shape,
        [In::new(&input, "input"), In::new(&target, "target")],
        [],
    )?;
    let len = walk.blocks().len();
    let broadcast = target.len() <= BROADCAST_MAX && target.len() * BROADCAST_REUSE <= len;
    let sum = match broadcast {
        true => sum_broadcast_target(&shape, &input, &target, log_target)?,
        false => None,
    };
    let sum = match sum {
        Some(sum) => sum,
        None => sum_walk(&walk, x, t, log_target)?,
    };
    settle(sum, &walk, x, t, log_target)
}

/// `sum` if it is finite, else the sum again with every term scaled by [`SCALE`] (exactly, by a
/// power of 2), so that no partial sum of finite terms overflows: then only NaN or infinite
/// terms make the result NaN or infinite, as in an exact sum. One NaN for every NaN sum (see
/// `Float::from_f64`).
pub(crate) fn settle<T: Float>(
    sum: f64,
    walk: &Walk<2>,
    x: Src<'_, T>,
    t: Src<'_, T>,
    log_target: bool,
) -> Result<f64, Error> {
    if sum.is_finite() {
        return Ok(sum);
    }
    let blocks = walk.blocks();
    let scaled = tree_sum(blocks, |b, ft: &mut Tile<T>| {
        let mut acc = [0.0; LANES];
        for_runs(walk, blocks.range(b), &[x, t], &[], |first, [x, t], []| {
            dispatch(Sum {
                ft: &mut ft.0,
                acc: &mut acc,
                first,
                x,
                t,
                log_target,
                scaled: true,
            })
        });
        fold_lanes(&acc)
    })?;
    Ok(f64::from_f64(scaled / SCALE))
}

/// The sum of the values of `input` and `target` (broadcast together) with kldiv's threads and
/// traversal: the benchmarks' read floor, the time to read both inputs once, which no kernel
/// over them can beat. Only the bindings call it (`kldiv bench`).
#[cfg(feature = "python")]
pub(crate) fn read_sum<T, D1, D2>(
    input: ArrayView<'_, T, D1>,
    target: ArrayView<'_, T, D2>,
) -> Result<f64, Error>
where
    T: Float + std::ops::Add<Output = T>,
    D1: Dimension,
    D2: Dimension,
{
    let shape = common_shape(input.shape(), target.shape())?;
    let (walk, [x, t], []) = operands::<T, 2, 2, 0>(
        &shape,
        [In::new(&input, "input"), In::new(&target, "target")],
        [],
    )?;
    let blocks = walk.blocks();
    tree_sum(blocks, |b, _: &mut ()| {
        let mut acc = [T::default(); LANES];
        for_runs(&walk, blocks.range(b), &[x, t], &[], |_, [x, t], []| {
            dispatch(ReadSum {
                acc: &mut acc,
                x,
                t,
            })
        });
        acc.iter().map(|v| v.to_f64()).sum()
    })
}

/// A target with at most this many elements, broadcast over at least [`BROADCAST_REUSE`]
/// times as many loss terms, has its `ln` (or `exp`) computed once per element, not per term.
const BROADCAST_MAX: usize = 1 << 20;
/// See [`BROADCAST_MAX`].
const BROADCAST_REUSE: usize = 4;

/// [`sum_walk`] for a target broadcast over many terms (one distribution against a batch):
/// the target's transcendental is computed once, into an array of the target's shape, and the
/// terms read it like a third operand. The terms, and so the bits, are those of [`sum_walk`].
/// `None` for a transposed walk (left to [`sum_walk`]).
fn sum_broadcast_target<T: Float, D1: Dimension, D2: Dimension>(
    shape: &[usize],
    input: &ArrayView<'_, T, D1>,
    target: &ArrayView<'_, T, D2>,
    log_target: bool,
) -> Result<Option<f64>, Error> {
    let target = target.as_standard_layout();
    let target = target.view();
    // The factors are laid out as the standard-layout target: the walk over all three would be
    // transposed exactly when this one is.
    let t_strides = broadcast_strides(target.shape(), target.strides(), shape);
    let x_strides = broadcast_strides(input.shape(), input.strides(), shape);
    if Walk::<3>::new(shape, [&x_strides, &t_strides, &t_strides])?
        .transposed()
        .is_some()
    {
        return Ok(None);
    }
    let t_slice = target
        .as_slice()
        .expect("a standard-layout array is contiguous");
    let mut factors = vec![T::default(); t_slice.len()];
    // Whether the shortcut term applies to the whole target, so to every run of it.
    let fast = with_default_fp(|| {
        dispatch(TargetFactor {
            t: t_slice,
            out: &mut factors,
            log_target,
        })
    });
    let factors = ArrayView::from_shape(target.raw_dim(), &factors)
        .expect("the factors have the target's shape");
    let (walk, [x, t, ft], []) = operands::<T, 3, 3, 0>(
        shape,
        [
            In::new(input, "input"),
            In::new(&target, "target"),
            In::new(&factors, "target"),
        ],
        [],
    )?;
    let blocks = walk.blocks();
    let sum = tree_sum(blocks, |b, _: &mut ()| {
        let mut acc = [0.0; LANES];
        for_runs(
            &walk,
            blocks.range(b),
            &[x, t, ft],
            &[],
            |first, [x, t, ft], []| {
                dispatch(SumPrecomputed {
                    acc: &mut acc,
                    first,
                    x,
                    t,
                    ft,
                    fast,
                    log_target,
                })
            },
        );
        fold_lanes(&acc)
    })?;
    Ok(Some(sum))
}

/// The reduced loss, PyTorch's `kl_div(input, target, reduction, log_target)`, rounded once to
/// `T` from an `f64` accumulator.
///
/// # Errors
/// As [`kl_div_sum`].
///
/// # Example
/// ```
/// use kldiv::{kl_div, Reduction};
/// use ndarray::Array2;
/// let x = Array2::from_elem((4, 3), (1.0f64 / 3.0).ln());
/// let t = Array2::from_elem((4, 3), 1.0 / 3.0);
/// // identical distributions: zero divergence
/// assert!(kl_div(x.view(), t.view(), Reduction::BatchMean, false).unwrap().abs() < 1e-15);
/// ```
pub fn kl_div<T: Float, D1: Dimension, D2: Dimension>(
    input: ArrayView<'_, T, D1>,
    target: ArrayView<'_, T, D2>,
    reduction: Reduction,
    log_target: bool,
) -> Result<T, Error> {
    let divisor = reduction.divisor(input.shape(), target.shape())?;
    let sum = kl_div_sum(input, target, log_target)?;
    Ok(T::from_f64(sum / divisor))
}

/// Writes the unreduced loss terms (PyTorch's `reduction="none"`) into `out`, whose shape must
/// be the broadcast shape of `input` and `target`; `out` may have any strides that keep its
/// elements distinct.
///
/// # Errors
/// [`Error::Broadcast`], [`Error::OutputShape`] if `out` has another shape, and as
/// [`kl_div_sum`].
///
/// # Example
/// ```
/// use ndarray::{array, Array1};
/// let x = array![-1.0_f64, -2.0];
/// let t = array![0.5_f64];
/// let mut out = Array1::zeros(2);
/// kldiv::kl_div_terms_into(x.view(), t.view(), out.view_mut(), false).unwrap();
/// assert_eq!(out[1], kldiv::term::<false, f64>(-2.0, 0.5));
/// ```
pub fn kl_div_terms_into<T: Float, D1: Dimension, D2: Dimension, D3: Dimension>(
    input: ArrayView<'_, T, D1>,
    target: ArrayView<'_, T, D2>,
    mut out: ArrayViewMut<'_, T, D3>,
    log_target: bool,
) -> Result<(), Error> {
    let shape = common_shape(input.shape(), target.shape())?;
    let (walk, [x, t], [o]) = operands::<T, 3, 2, 1>(
        &shape,
        [In::new(&input, "input"), In::new(&target, "target")],
        [Out::new(&mut out, "out")],
    )?;
    terms_walk(&walk, x, t, o, log_target)
}

/// The unreduced loss terms in a new C-ordered array of the broadcast shape.
///
/// # Errors
/// As [`kl_div_sum`].
///
/// # Example
/// ```
/// use ndarray::array;
/// let x = array![[-1.0_f32], [-2.0]];
/// let t = array![0.25_f32, 0.75];
/// let l = kldiv::kl_div_terms(x.view(), t.view(), false).unwrap();
/// assert_eq!(l.shape(), &[2, 2]);
/// ```
pub fn kl_div_terms<T: Float, D1: Dimension, D2: Dimension>(
    input: ArrayView<'_, T, D1>,
    target: ArrayView<'_, T, D2>,
    log_target: bool,
) -> Result<ArrayD<T>, Error> {
    let shape = common_shape(input.shape(), target.shape())?;
    let len = checked_len(&shape)?;
    let mut data = Vec::new();
    data.try_reserve_exact(len)
        .map_err(|_| Error::OutOfMemory {
            bytes: len.saturating_mul(std::mem::size_of::<T>()),
        })?;
    data.resize(len, T::default());
    let mut out = ArrayD::from_shape_vec(IxDyn(&shape), data).expect("len elements");
    kl_div_terms_into(input, target, out.view_mut(), log_target)?;
    Ok(out)
}

/// The number of elements of `shape`, if it fits in `isize` (as the kernels need).
pub(crate) fn checked_len(shape: &[usize]) -> Result<usize, Error> {
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .filter(|&n| n <= isize::MAX as usize)
        .ok_or(Error::TooLarge)
}

/// A new C-ordered array of `shape` for a kernel's output (its contents are overwritten).
pub(crate) fn zeros<T: Float>(shape: &[usize]) -> Result<ArrayD<T>, Error> {
    let len = checked_len(shape)?;
    let mut data = Vec::new();
    data.try_reserve_exact(len)
        .map_err(|_| Error::OutOfMemory {
            bytes: len.saturating_mul(std::mem::size_of::<T>()),
        })?;
    data.resize(len, T::default());
    Ok(ArrayD::from_shape_vec(IxDyn(shape), data).expect("len elements"))
}

/// The broadcast shape, or the error naming both shapes.
pub(crate) fn common_shape(input: &[usize], target: &[usize]) -> Result<Vec<usize>, Error> {
    broadcast_shape(input, target).ok_or_else(|| Error::Broadcast {
        input: input.to_vec(),
        target: target.to_vec(),
    })
}

fn sum_walk<T: Float>(
    walk: &Walk<2>,
    x: Src<'_, T>,
    t: Src<'_, T>,
    log_target: bool,
) -> Result<f64, Error> {
    let blocks = walk.blocks();
    if let Some((rows, row_steps, col_steps)) = walk.transposed() {
        return sum_transposed(blocks, rows, (row_steps, col_steps), [x, t], log_target);
    }
    tree_sum(blocks, |b, ft: &mut Tile<T>| {
        let mut acc = [0.0; LANES];
        for_runs(walk, blocks.range(b), &[x, t], &[], |first, [x, t], []| {
            dispatch(Sum {
                ft: &mut ft.0,
                acc: &mut acc,
                first,
                x,
                t,
                log_target,
                scaled: false,
            })
        });
        fold_lanes(&acc)
    })
}

fn terms_walk<T: Float>(
    walk: &Walk<3>,
    x: Src<'_, T>,
    t: Src<'_, T>,
    out: Dst<'_, T>,
    log_target: bool,
) -> Result<(), Error> {
    let blocks = walk.blocks();
    for_each_block(blocks, |b| {
        for_runs(
            walk,
            blocks.range(b),
            &[x, t],
            &[out],
            |_, [x, t], [out]| {
                dispatch(Terms {
                    x,
                    t,
                    out,
                    log_target,
                })
            },
        );
    })
}
