//! Sums over transposed walks (Fortran-order arrays, `.T` views): a group of rows is read column
//! by column, each column contiguous in memory, so that a task's reads are one stream through
//! memory, as on the row-by-row path. Every block's lanes see their terms in logical order, so
//! the bits are those of the row-by-row path (`loss.rs`).

use std::ops::Range;

use crate::error::Error;
use crate::float::Float;
use crate::parallel::{threads_for, tree_sum_of_tasks, Blocks, BLOCK};
use crate::reduce::{fold_lanes, LANES};
use crate::runs::AHEAD;
use crate::simd::{dispatch, Kernel};
use crate::terms::{add_factored_term, add_term, transcendental_slice_with};
use crate::walk::{run_len, Src, Tile, TILE};

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
/// that the task skips (W8's figures for both in `docs/performance.md`).
fn group_rows(rows: usize, blocks_per_row: usize, threads: usize) -> usize {
    let groups = rows
        .div_ceil(GROUP_ROWS_MAX)
        .max(threads.div_ceil(blocks_per_row.max(1)));
    rows.div_ceil(groups.max(1)).next_multiple_of(16).max(16)
}

/// `loss::sum_walk` for a transposed walk: a group of rows (see [`group_rows`]) is read column by
/// column (each column contiguous in memory) over one block of columns, and the terms of a
/// column are added to lane `column % LANES` of each row's accumulators. Every lane of every
/// block still sees its elements in logical order, and the lanes are folded in canonical order
/// at the block's end, so every block has the same bits as on the row-by-row path.
pub(crate) fn sum_transposed<T: Float>(
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
    tree_sum_of_tasks(
        blocks,
        tasks,
        |task, (tx, tt, ft, acc): &mut Scratch<T>, store| {
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
                tiles: (&mut tx.0, &mut tt.0, &mut ft.0),
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
    fn log_target(&self) -> bool {
        self.log_target
    }
    #[inline(always)]
    fn run<const LOG_TARGET: bool>(self) {
        self.add::<LOG_TARGET>()
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
            tiles: (tx, tt, ft),
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
                column_sum::<LOG_TARGET, T>(ft, acc, (nr, r, len), c, xs, ts, prefetch);
            }
            c += m;
        }
    }
}

/// Adds the terms of a span of a transposed walk's columns to their rows' accumulators. `x` and
/// `t` hold `len` rows (from row `r` of a group of `nr` rows) of each of the columns `c..`,
/// column after column: whole columns (`len == nr`) or a part of one column. `acc[k * nr + i]`
/// is the lane of row `i` of the group that the columns `c` with `c % LANES == k` add to, so
/// the accumulators of whole columns that take consecutive lanes lie one after another, as the
/// columns do: they are added in one loop. `ahead(i)` is called at the first element `i` of
/// each cache line (see [`transcendental_slice_with`]).
#[inline(always)]
fn column_sum<const LOG_TARGET: bool, T: Float>(
    ft: &mut [T; TILE],
    acc: &mut [f64],
    (nr, r, len): (usize, usize, usize),
    c: usize,
    x: &[T],
    t: &[T],
    ahead: impl Fn(usize),
) {
    debug_assert!(x.len() == t.len() && x.len() % len == 0);
    debug_assert!(len == nr || x.len() == len);
    let ft = &mut ft[..x.len()];
    let span = (nr, r, len, c);
    if transcendental_slice_with::<LOG_TARGET, T>(t, ft, ahead) {
        column_sum_with(acc, span, x, t, ft, add_factored_term::<LOG_TARGET, T>)
    } else {
        column_sum_with(acc, span, x, t, ft, add_term::<LOG_TARGET, T>)
    }
}

/// [`column_sum`] given `ft`, with the function that adds a term given.
#[inline(always)]
fn column_sum_with<T: Float>(
    acc: &mut [f64],
    (nr, r, len, c): (usize, usize, usize, usize),
    x: &[T],
    t: &[T],
    ft: &[T],
    add: impl Fn(f64, T, T, T) -> f64,
) {
    let (mut done, mut col) = (0, c);
    while done < x.len() {
        // The columns from `col` up to the end of the lanes (or of the span).
        let lane = col % LANES;
        let cols = (LANES - lane).min((x.len() - done) / len);
        let part = done..done + cols * len;
        let acc = &mut acc[lane * nr + r..][..part.len()];
        let terms = x[part.clone()].iter().zip(&t[part.clone()]).zip(&ft[part]);
        for (a, ((&x, &t), &ft)) in acc.iter_mut().zip(terms) {
            *a = add(*a, x, t, ft);
        }
        done += cols * len;
        col += cols;
    }
}
