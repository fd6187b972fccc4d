//! The public kernels: the loss reduced (sum, mean, batchmean) or unreduced, over `ndarray`
//! views of any dimension and strides.

use std::ops::Range;

use ndarray::{ArrayD, ArrayView, ArrayViewMut, Dimension, IxDyn};

use crate::error::Error;
use crate::float::Float;
use crate::parallel::{for_each_block, threads_for, tree_sum, tree_sum_by, Blocks, BLOCK};
use crate::reduce::{column_sum, fold_lanes, ScaledSum, Sum, SumGiven, LANES, SCALE};
use crate::simd::{dispatch, with_default_fp, Kernel};
use crate::terms::{TargetFactor, Terms};
use crate::walk::{
    broadcast_shape, broadcast_strides, for_runs, operands, run_len, Dst, In, Out, Src, Tile, Walk,
    AHEAD, TILE,
};

/// How the loss terms are reduced to one number (PyTorch's `reduction` argument, less `"none"`,
/// which is [`kl_div_terms`]).
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
/// [`Error::Interrupted`] (see [`crate::with_interrupt`]).
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
    let scaled = tree_sum(blocks, |b, tr: &mut Tile<T>| {
        let mut acc = [0.0; LANES];
        for_runs(walk, blocks.range(b), &[x, t], &[], |first, [x, t], []| {
            dispatch(ScaledSum {
                tr: &mut tr.0,
                acc: &mut acc,
                first,
                x,
                t,
                log_target,
            })
        });
        fold_lanes(&acc)
    })?;
    Ok(f64::from_f64(scaled / SCALE))
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
    let (walk, [x, t, tr], []) = operands::<T, 3, 3, 0>(
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
            &[x, t, tr],
            &[],
            |first, [x, t, tr], []| {
                dispatch(SumGiven {
                    acc: &mut acc,
                    first,
                    x,
                    t,
                    tr,
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
    let divisor = divisor(reduction, input.shape(), target.shape())?;
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

/// What a reduction divides the sum by: 1, the number of terms, or `input`'s first dimension
/// (1 for a 0-d input).
///
/// # Errors
/// [`Error::Broadcast`], or [`Error::TooLarge`] when the number of terms does not fit in
/// `isize` (as for the kernels).
pub(crate) fn divisor(
    reduction: Reduction,
    input: &[usize],
    target: &[usize],
) -> Result<f64, Error> {
    Ok(match reduction {
        Reduction::Sum => 1.0,
        Reduction::Mean => checked_len(&common_shape(input, target)?)? as f64,
        Reduction::BatchMean => input.first().map_or(1.0, |&n| n as f64),
    })
}

/// The number of elements of `shape`, if it fits in `isize` (as the kernels need).
pub(crate) fn checked_len(shape: &[usize]) -> Result<usize, Error> {
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .filter(|&n| n <= isize::MAX as usize)
        .ok_or(Error::TooLarge)
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
    tree_sum(blocks, |b, tr: &mut Tile<T>| {
        let mut acc = [0.0; LANES];
        for_runs(walk, blocks.range(b), &[x, t], &[], |first, [x, t], []| {
            dispatch(Sum {
                tr: &mut tr.0,
                acc: &mut acc,
                first,
                x,
                t,
                log_target,
            })
        });
        fold_lanes(&acc)
    })
}

/// The most rows that one task of [`sum_transposed`] reads down each column: its accumulators,
/// 16 `f64` lanes of each row, then take 2 MiB (in L2 and L3).
const GROUP_ROWS_MAX: usize = 16384;

/// The rows of each group of [`sum_transposed`] (the last may have fewer): all of them where
/// the blocks of a row give each of `threads` threads a block of its own, else the rows split
/// evenly into enough groups for that; more groups only where a group would exceed
/// [`GROUP_ROWS_MAX`]. Rounded up to a multiple of 16 rows (a cache line of f32, so that groups
/// share no lines when a column starts on one).
///
/// Whole columns make a task's reads of a Fortran-order array one stream through memory, as on
/// the row-by-row path; a part of each column makes the hardware fetch lines beyond each part
/// that the task skips. Measured on an AVX-512 machine (AMD EPYC, Zen 4), W8's time over W1's,
/// medians of a throwaway Rust example taking turns (1000 x 10000 f32: 3 blocks a row; 4000 x
/// 2500 and 1000 x 1000: 1): 1000 x 10000 one thread, 1 group 1.15x, 2 groups 2.07x, 8 2.09x
/// (the earlier groups of 128 rows: 1.9-2.1x); two threads 1 group 1.12x, 2 1.39x, 8 1.89x;
/// 4000 x 2500 two threads 1 group 1.94x (one task), 2 1.43x, 8 1.55x; 1000 x 1000 (in
/// cache), one thread 1 group 1.25-1.33x, 2 1.31-1.43x (groups of 128 rows 1.53-1.58x); two
/// threads 2 groups 1.46-1.54x (groups of 128 rows 1.45-1.51x).
fn group_rows(rows: usize, blocks_per_row: usize, threads: usize) -> usize {
    let groups = rows
        .div_ceil(GROUP_ROWS_MAX)
        .max(threads.div_ceil(blocks_per_row.max(1)));
    rows.div_ceil(groups.max(1)).next_multiple_of(16).max(16)
}

/// [`sum_walk`] for a transposed walk: a group of rows (see [`group_rows`]) is read column by
/// column (each column contiguous in memory) over one block of columns, and the terms of a
/// column are added to lane `column % LANES` of each row's accumulators. Every lane of every
/// block still sees its elements in logical order, and the lanes are folded in canonical order
/// at the block's end, so every block has the same bits as on the row-by-row path.
fn sum_transposed<T: Float>(
    blocks: &Blocks,
    rows: usize,
    (row_steps, col_steps): ([isize; 2], [isize; 2]),
    [x, t]: [Src<'_, T>; 2],
    log_target: bool,
) -> Result<f64, Error> {
    let row = blocks.row();
    let per_row = row.div_ceil(BLOCK);
    let group = group_rows(rows, per_row, threads_for(blocks.len()));
    // One task per group of rows and block of columns, block by block, group after group: the
    // threads read the groups of the same columns at the same time.
    let groups = rows.div_ceil(group);
    let tasks = groups * per_row;
    // Each thread's three tiles (x, t, ln t) and accumulators, made once per call.
    type Scratch<T> = (Tile<T>, Tile<T>, Tile<T>, Vec<f64>);
    tree_sum_by(
        blocks,
        tasks,
        |task, (tx, tt, tr, acc): &mut Scratch<T>, store| {
            let (g, j) = (task % groups, task / groups);
            let (r0, nr) = (g * group, group.min(rows - g * group));
            let (c0, c1) = (j * BLOCK, ((j + 1) * BLOCK).min(row));
            // acc[k * nr + r]: the lane of row r0 + r that columns c with c % LANES == k add to.
            acc.clear();
            acc.resize(LANES * nr, 0.0);
            // The whole loop over the columns in one dispatched call (not one call per column):
            // the SIMD constants are set up once per task.
            dispatch(Columns {
                x,
                t,
                tiles: (&mut tx.0, &mut tt.0, &mut tr.0),
                acc,
                rows: r0..r0 + nr,
                cols: c0..c1,
                row_steps,
                col_steps,
                log_target,
            });
            for r in 0..nr {
                // Element (r, c) has logical index (r0 + r) * row + c: its lane is that mod LANES,
                // i.e. column lane k shifted by the row's start.
                let shift = (r0 + r) * row % LANES;
                let mut lanes = [0.0; LANES];
                for (k, acc_k) in acc.chunks_exact(nr).enumerate() {
                    lanes[(shift + k) % LANES] = acc_k[r];
                }
                store(blocks.index(r0 + r, j), fold_lanes(&lanes));
            }
        },
    )
}

/// The columns `cols` of the rows `rows` of a transposed walk, as a [`Kernel`]: the loop of
/// [`sum_transposed`]'s tasks.
struct Columns<'a, 'b, T> {
    x: Src<'a, T>,
    t: Src<'a, T>,
    tiles: (&'b mut [T; TILE], &'b mut [T; TILE], &'b mut [T; TILE]),
    /// `rows.len()` accumulators for each lane, lane after lane.
    acc: &'b mut [f64],
    rows: Range<usize>,
    cols: Range<usize>,
    row_steps: [isize; 2],
    col_steps: [isize; 2],
    log_target: bool,
}

impl<T: Float> Kernel for Columns<'_, '_, T> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        if self.log_target {
            self.add::<true>()
        } else {
            self.add::<false>()
        }
    }
}

impl<T: Float> Columns<'_, '_, T> {
    /// Adds the terms of column `c` to the accumulators of lane `c % LANES`, for each column in
    /// order, in runs of at most [`run_len`] elements: a part of a column, or as many whole
    /// columns as fit where they lie next to each other in memory (a Fortran-order array, all
    /// of whose rows the group holds).
    #[inline(always)]
    fn add<const LOG_TARGET: bool>(self) {
        let Columns {
            x,
            t,
            tiles: (tx, tt, tr),
            acc,
            rows,
            cols,
            row_steps,
            col_steps,
            ..
        } = self;
        let (r0, nr) = (rows.start, rows.len());
        // The offset of the element of row r0 + r and column c in operand k.
        let at = |k: usize, c: usize, r: usize| {
            (r0 + r) as isize * row_steps[k] + c as isize * col_steps[k]
        };
        let adjacent = (0..2).all(|k| row_steps[k] == 1 && col_steps[k] == nr as isize);
        let run = run_len::<T>();
        let (cols_per_run, rows_per_run) = if adjacent && nr <= run {
            (run / nr, nr)
        } else {
            (1, run)
        };
        // While an element is read, the one AHEAD bytes further on in this task's order (down
        // the column, then down the next) is asked for: `q` columns and `rem` rows on. Where
        // the columns lie next to each other, that is the next AHEAD bytes of memory, as on
        // the row-by-row path (row nr + i of column c is row i of column c + 1).
        let ahead = AHEAD / std::mem::size_of::<T>();
        let (q, rem) = (ahead / nr, ahead % nr);
        let mut c = cols.start;
        while c < cols.end {
            let m = cols_per_run.min(cols.end - c);
            for r in (0..nr).step_by(rows_per_run) {
                let len = rows_per_run.min(nr - r);
                let xs = x.run(at(0, c, r), row_steps[0], m * len, tx);
                let ts = t.run(at(1, c, r), row_steps[1], m * len, tt);
                let prefetch = |i: usize| {
                    let (pc, pr) = match r + i + rem {
                        _ if adjacent => (c, r + i + ahead),
                        i if i < nr => (c + q, i),
                        i => (c + q + 1, i - nr),
                    };
                    if pc < cols.end {
                        x.prefetch(at(0, pc, pr));
                        t.prefetch(at(1, pc, pr));
                    }
                };
                column_sum::<LOG_TARGET, T>(tr, acc, (nr, r, len), c, xs, ts, prefetch);
            }
            c += m;
        }
    }
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
