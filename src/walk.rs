//! Walking broadcast operands of any strides in logical (C) order, without copying them.
//!
//! The operands (inputs and, for the elementwise kernels, the outputs) are described by one
//! logical shape and, per operand, element strides over that shape (0 on broadcast axes,
//! negative for reversed views). [`Walk`] merges axes that are contiguous for every operand
//! and cuts a range of logical indices into runs along the last axis; [`Src`] and [`Dst`] turn a
//! run into a slice: the memory itself when its stride is 1, a small stack tile otherwise.
//! All pointer arithmetic lives here (the kernels above work on slices), and [`operands`] is
//! the one place that makes a [`Src`] or [`Dst`]: it checks every kernel call's operands
//! (shapes, outputs whose elements are distinct and apart from every other operand) first. The
//! other `unsafe` of the crate is the SIMD dispatch and the floating-point environment
//! (`simd.rs`), and the thread pool's erased closures (`parallel.rs`).

use std::marker::PhantomData;

use ndarray::{ArrayView, ArrayViewMut, Dimension};

use crate::error::Error;
use crate::parallel::Blocks;
use crate::runs::prefetch;

/// Elements per stack tile: room for the longest run of any element type (see [`run_len`]).
pub(crate) const TILE: usize = 1024;

/// The longest run of `T`s a walk hands out: 4 KiB, so 1024 `f32` or 512 `f64`. Each run pays
/// once for filling and draining its `ln` and summing loops, so runs are as long as they can
/// be while a run's `x`, `t` and tile still fit in L1 together (`docs/performance.md`).
pub(crate) fn run_len<T>() -> usize {
    (4096 / std::mem::size_of::<T>().max(1)).clamp(1, TILE)
}

/// A tile of scratch space, made once per thread and call (see
/// [`crate::parallel::for_each_task`]), not once per block.
pub(crate) struct Tile<T>(pub [T; TILE]);

impl<T: Copy + Default> Default for Tile<T> {
    fn default() -> Self {
        Tile([T::default(); TILE])
    }
}

/// The broadcast shape of two shapes under NumPy rules, or `None` if they do not broadcast.
pub(crate) fn broadcast_shape(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let nd = a.len().max(b.len());
    let dim = |s: &[usize], i: usize| {
        if i + s.len() >= nd {
            s[i + s.len() - nd]
        } else {
            1
        }
    };
    (0..nd)
        .map(|i| match (dim(a, i), dim(b, i)) {
            (p, q) if p == q => Some(p),
            (1, q) => Some(q),
            (p, 1) => Some(p),
            _ => None,
        })
        .collect()
}

/// Whether `shape` broadcasts to `to` itself (NumPy rules: `broadcast_shape(shape, to)` is
/// `to`), without allocating.
pub(crate) fn broadcasts_to(shape: &[usize], to: &[usize]) -> bool {
    let Some(lead) = to.len().checked_sub(shape.len()) else {
        return false;
    };
    shape
        .iter()
        .zip(&to[lead..])
        .all(|(&n, &m)| n == m || n == 1)
}

/// Strides of an operand of `shape`/`strides` broadcast to `to` (0 on broadcast axes).
/// `shape` must broadcast to `to`.
pub(crate) fn broadcast_strides(shape: &[usize], strides: &[isize], to: &[usize]) -> Vec<isize> {
    let lead = to.len() - shape.len();
    (0..to.len())
        .map(|i| {
            if i < lead || shape[i - lead] == 1 {
                0
            } else {
                strides[i - lead]
            }
        })
        .collect()
}

/// A run of consecutive logical indices along the last axis.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Run<const K: usize> {
    /// Logical index of the first element.
    pub(crate) first: usize,
    /// Number of elements.
    pub(crate) len: usize,
    /// Element offset of the first element, per operand.
    pub(crate) offsets: [isize; K],
}

/// `K` operands laid over one logical shape, with axes merged where all are contiguous.
#[derive(Clone, Debug)]
pub(crate) struct Walk<const K: usize> {
    shape: Vec<usize>,
    strides: Vec<[isize; K]>,
    blocks: Blocks,
}

impl<const K: usize> Walk<K> {
    /// Describes `K` operands of logical `shape`; `strides[k]` has one entry per axis.
    pub(crate) fn new(shape: &[usize], strides: [&[isize]; K]) -> Result<Self, Error> {
        let len = shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .filter(|&n| n <= isize::MAX as usize)
            .ok_or(Error::TooLarge)?;
        let mut dims: Vec<usize> = Vec::new();
        let mut strs: Vec<[isize; K]> = Vec::new();
        for (axis, &d) in shape.iter().enumerate() {
            if d == 1 {
                continue; // a length-1 axis never moves
            }
            let s: [isize; K] = std::array::from_fn(|k| strides[k][axis]);
            if let (Some(&pd), Some(ps)) = (dims.last(), strs.last_mut()) {
                // Merge with the previous axis when stepping it equals a full sweep of this one.
                if (0..K).all(|k| ps[k] == s[k] * d as isize) {
                    *dims.last_mut().unwrap() = pd * d;
                    *ps = s;
                    continue;
                }
            }
            dims.push(d);
            strs.push(s);
        }
        if dims.is_empty() {
            dims.push(if len == 0 { 0 } else { 1 });
            strs.push([0; K]);
        }
        Ok(Walk {
            shape: dims,
            strides: strs,
            blocks: Blocks::new(shape),
        })
    }

    /// The fixed blocks of the logical shape (the same for every layout).
    pub(crate) fn blocks(&self) -> &Blocks {
        &self.blocks
    }

    /// `Some((rows, row_steps, column_steps))` when the walk is a transposed matrix: `rows`
    /// canonical rows (one axis each), every operand 0 or 1 element apart from one row to the
    /// next, and some operand not contiguous along a row (Fortran order, `.T` views). Reading
    /// such a walk row by row touches a new cache line at every element; reading a group of
    /// rows column by column uses whole lines.
    pub(crate) fn transposed(&self) -> Option<(usize, [isize; K], [isize; K])> {
        if self.shape.len() != 2 || self.shape[1] != self.blocks.row() {
            return None;
        }
        let (rows, cols) = (self.strides[0], self.strides[1]);
        let near = rows.iter().all(|s| s.unsigned_abs() <= 1);
        let strided = cols.iter().any(|&s| s != 1);
        (near && strided).then_some((self.shape[0], rows, cols))
    }

    /// Element strides of each operand along the (merged) last axis.
    pub(crate) fn inner_strides(&self) -> [isize; K] {
        *self.strides.last().unwrap()
    }

    /// Calls `f` on the runs covering logical indices `start..end`, in order; a run never
    /// crosses the end of the last axis and holds at most `max` elements (at most [`TILE`]).
    pub(crate) fn runs(&self, start: usize, end: usize, max: usize, mut f: impl FnMut(Run<K>)) {
        debug_assert!((1..=TILE).contains(&max));
        debug_assert!(start <= end && end <= self.blocks.len());
        if start == end {
            return;
        }
        let nd = self.shape.len();
        // Multi-index and offsets of `start` (on the stack for up to 16 merged axes: this runs
        // once per block).
        let (mut small, mut large) = ([0usize; 16], Vec::new());
        let idx: &mut [usize] = if nd <= small.len() {
            &mut small[..nd]
        } else {
            large.resize(nd, 0);
            &mut large
        };
        let mut offsets = [0isize; K];
        let mut rest = start;
        for a in (0..nd).rev() {
            idx[a] = rest % self.shape[a];
            rest /= self.shape[a];
            for (o, s) in offsets.iter_mut().zip(self.strides[a]) {
                *o += idx[a] as isize * s;
            }
        }
        let last = nd - 1;
        let inner = self.strides[last];
        let mut pos = start;
        while pos < end {
            let len = (self.shape[last] - idx[last]).min(end - pos).min(max);
            f(Run {
                first: pos,
                len,
                offsets,
            });
            pos += len;
            idx[last] += len;
            for (o, s) in offsets.iter_mut().zip(inner) {
                *o += len as isize * s;
            }
            if idx[last] < self.shape[last] || pos == end {
                continue;
            }
            // The last axis is done: carry into the outer axes.
            for (o, s) in offsets.iter_mut().zip(inner) {
                *o -= self.shape[last] as isize * s;
            }
            idx[last] = 0;
            for a in (0..last).rev() {
                idx[a] += 1;
                for (o, s) in offsets.iter_mut().zip(self.strides[a]) {
                    *o += s;
                }
                if idx[a] < self.shape[a] {
                    break;
                }
                for (o, s) in offsets.iter_mut().zip(self.strides[a]) {
                    *o -= self.shape[a] as isize * s;
                }
                idx[a] = 0;
            }
        }
    }
}

/// Where an operand's elements lie: the address of its first element, its shape and element
/// strides, the size of an element, and its name in error messages.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Span<'a> {
    pub(crate) addr: usize,
    pub(crate) shape: &'a [usize],
    pub(crate) strides: &'a [isize],
    pub(crate) size: usize,
    pub(crate) name: &'a str,
}

impl Span<'_> {
    /// The bytes between the operand's lowest and highest element, ends included (`None` for no
    /// elements).
    fn bytes(&self) -> Option<(usize, usize)> {
        if self.shape.contains(&0) {
            return None;
        }
        let (mut lo, mut hi) = (0isize, 0isize);
        for (&n, &s) in self.shape.iter().zip(self.strides) {
            let reach = s.saturating_mul(n as isize - 1);
            if reach < 0 {
                lo = lo.saturating_add(reach);
            } else {
                hi = hi.saturating_add(reach);
            }
        }
        let at = |i: isize| {
            self.addr
                .wrapping_add_signed(i.saturating_mul(self.size as isize))
        };
        Some((at(lo), at(hi).wrapping_add(self.size)))
    }

    /// Whether every element has memory of its own: ordered by stride, each axis longer than 1
    /// steps past all the elements the shorter-strided axes reach. (A few layouts whose axes
    /// interleave without sharing an element fail this too: they are refused with the rest.)
    fn distinct(&self) -> bool {
        let mut axes: Vec<(usize, usize)> = (self.shape.iter().zip(self.strides))
            .filter(|(&n, _)| n > 1)
            .map(|(&n, &s)| (s.unsigned_abs(), n))
            .collect();
        axes.sort_unstable();
        let mut reach = 0usize;
        for (stride, n) in axes {
            if stride <= reach {
                return false;
            }
            reach = reach.saturating_add(stride.saturating_mul(n - 1));
        }
        true
    }
}

/// Checks that each of `outputs` has distinct elements and shares no memory with another output
/// or with any of `inputs` (judged on the memory ranges they span, as
/// `numpy.may_share_memory` does): threads write outputs in parallel while others read.
pub(crate) fn check_outputs(inputs: &[Span<'_>], outputs: &[Span<'_>]) -> Result<(), Error> {
    for (i, out) in outputs.iter().enumerate() {
        if out.bytes().is_none() {
            continue;
        }
        if !out.distinct() {
            return Err(Error::SelfOverlap {
                name: out.name.to_string(),
                shape: out.shape.to_vec(),
                strides: out.strides.to_vec(),
            });
        }
        let (lo, hi) = out.bytes().unwrap_or_default();
        let others = outputs[..i].iter().chain(inputs);
        for other in others {
            if other.bytes().is_some_and(|(a, b)| a < hi && lo < b) {
                return Err(Error::Overlap {
                    output: out.name.to_string(),
                    other: other.name.to_string(),
                });
            }
        }
    }
    Ok(())
}

/// A view a kernel reads, named for error messages.
pub(crate) struct In<'a, T> {
    ptr: *const T,
    shape: &'a [usize],
    strides: &'a [isize],
    name: &'static str,
}

impl<'a, T> In<'a, T> {
    pub(crate) fn new<D: Dimension>(view: &'a ArrayView<'_, T, D>, name: &'static str) -> Self {
        In {
            ptr: view.as_ptr(),
            shape: view.shape(),
            strides: view.strides(),
            name,
        }
    }

    fn span(&self) -> Span<'_> {
        Span {
            addr: self.ptr as usize,
            shape: self.shape,
            strides: self.strides,
            size: std::mem::size_of::<T>(),
            name: self.name,
        }
    }
}

/// A view a kernel writes, named for error messages.
pub(crate) struct Out<'a, T> {
    ptr: *mut T,
    shape: &'a [usize],
    strides: &'a [isize],
    name: &'static str,
}

impl<'a, T> Out<'a, T> {
    pub(crate) fn new<D: Dimension>(
        view: &'a mut ArrayViewMut<'_, T, D>,
        name: &'static str,
    ) -> Self {
        let ptr = view.as_mut_ptr();
        let view = &*view;
        Out {
            ptr,
            shape: view.shape(),
            strides: view.strides(),
            name,
        }
    }

    fn span(&self) -> Span<'_> {
        Span {
            addr: self.ptr as usize,
            shape: self.shape,
            strides: self.strides,
            size: std::mem::size_of::<T>(),
            name: self.name,
        }
    }
}

/// Every kernel call's operands, checked, with the walk over them: the `R` inputs broadcast to
/// the logical `shape`, the `W` outputs have exactly that shape, distinct elements, and no
/// memory in common with any other operand ([`check_outputs`]); the walk's operands are the
/// inputs, then the outputs (`K == R + W`).
///
/// # Errors
/// [`Error::NotBroadcastable`] for an input that does not broadcast to `shape`,
/// [`Error::OutputShape`] for an output not of `shape`, [`Error::TooLarge`],
/// [`Error::SelfOverlap`], [`Error::Overlap`].
#[allow(clippy::type_complexity)]
pub(crate) fn operands<'a, T: Copy, const K: usize, const R: usize, const W: usize>(
    shape: &[usize],
    ins: [In<'a, T>; R],
    outs: [Out<'a, T>; W],
) -> Result<(Walk<K>, [Src<'a, T>; R], [Dst<'a, T>; W]), Error> {
    assert_eq!(K, R + W, "one stride per operand");
    if let Some(i) = ins.iter().find(|i| !broadcasts_to(i.shape, shape)) {
        return Err(Error::NotBroadcastable {
            name: i.name.to_string(),
            shape: i.shape.to_vec(),
            to: shape.to_vec(),
        });
    }
    if let Some(o) = outs.iter().find(|o| o.shape != shape) {
        return Err(Error::OutputShape {
            expected: shape.to_vec(),
            actual: o.shape.to_vec(),
        });
    }
    let strides: [Vec<isize>; K] = std::array::from_fn(|k| match k.checked_sub(R) {
        None => broadcast_strides(ins[k].shape, ins[k].strides, shape),
        Some(o) => outs[o].strides.to_vec(),
    });
    let walk = Walk::new(shape, std::array::from_fn(|k| strides[k].as_slice()))?;
    check_outputs(
        &ins.each_ref().map(In::span),
        &outs.each_ref().map(Out::span),
    )?;
    // SAFETY: each pointer is the address of logical index 0 of a view borrowed for `'a`, and
    // `walk` was built from those views' shapes and strides (broadcast to `shape`), so every
    // run it hands out lies inside them. The outputs' elements are distinct and lie apart from
    // every other operand's, and a walk's blocks hand each logical index to one thread: no
    // element is written by two threads, nor written while read.
    let srcs = ins.map(|i| unsafe { Src::new(i.ptr) });
    // SAFETY: as above.
    let dsts = outs.map(|o| unsafe { Dst::new(o.ptr) });
    Ok((walk, srcs, dsts))
}

/// A read-only operand: the address of logical index 0 of a view.
pub(crate) struct Src<'a, T> {
    ptr: *const T,
    _view: PhantomData<&'a T>,
}

impl<T> Clone for Src<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Src<'_, T> {}

// SAFETY: a `Src` only reads through `ptr`, like the `&'a [T]` it stands for; `T: Sync` makes
// shared reads from several threads sound.
unsafe impl<T: Sync> Send for Src<'_, T> {}
// SAFETY: as above.
unsafe impl<T: Sync> Sync for Src<'_, T> {}

impl<'a, T: Copy> Src<'a, T> {
    /// # Safety
    /// `ptr` must be the address of logical index 0 of a view that stays borrowed for `'a`, and
    /// every run later passed to [`Src::run`] must come from a [`Walk`] built from that view's
    /// shape and strides (after broadcasting), so that every offset lies inside the view; no
    /// thread may write the view's elements while a run of them is read.
    unsafe fn new(ptr: *const T) -> Self {
        Src {
            ptr,
            _view: PhantomData,
        }
    }

    /// The `len` elements of a run starting at element `offset` with `stride`, `len <= TILE`:
    /// the memory itself when `stride == 1`, else gathered into `tile`.
    #[inline]
    pub(crate) fn run<'b>(
        &self,
        offset: isize,
        stride: isize,
        len: usize,
        tile: &'b mut [T],
    ) -> &'b [T]
    where
        'a: 'b,
    {
        if stride == 1 {
            // SAFETY: by the contract of `new`, the elements `offset..offset + len` lie inside
            // the borrowed view, which is contiguous along this run (stride 1).
            unsafe { std::slice::from_raw_parts(self.ptr.offset(offset), len) }
        } else if stride == 0 {
            // SAFETY: `offset` is the offset of a logical index in the view (contract of `new`).
            tile[..len].fill(unsafe { *self.ptr.offset(offset) });
            &tile[..len]
        } else {
            for (i, v) in tile[..len].iter_mut().enumerate() {
                // SAFETY: `offset + i * stride` is the offset of a logical index in the view
                // (contract of `new`); a stride of 0 re-reads one valid element.
                *v = unsafe { *self.ptr.offset(offset + i as isize * stride) };
            }
            &tile[..len]
        }
    }
}

impl<T> Src<'_, T> {
    /// Asks the CPU to start loading the cache line of the element at `offset` into L1 (a hint:
    /// `offset` need not lie inside the view).
    #[inline(always)]
    pub(crate) fn prefetch(&self, offset: isize) {
        prefetch(self.ptr.wrapping_offset(offset))
    }
}

/// A writable operand: the address of logical index 0 of a mutable view.
pub(crate) struct Dst<'a, T> {
    ptr: *mut T,
    _view: PhantomData<&'a mut T>,
}

impl<T> Clone for Dst<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Dst<'_, T> {}

// SAFETY: several threads write through one `Dst` only at distinct logical indices (disjoint
// blocks), which a mutable view maps to distinct elements; `T: Send` lets values cross threads.
unsafe impl<T: Send> Send for Dst<'_, T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for Dst<'_, T> {}

impl<'a, T: Copy> Dst<'a, T> {
    /// # Safety
    /// As [`Src::new`], for a mutable view whose elements are distinct and apart from every
    /// other operand's, and callers must never pass the same logical index to [`Dst::tile`]
    /// from two threads at once.
    unsafe fn new(ptr: *mut T) -> Self {
        Dst {
            ptr,
            _view: PhantomData,
        }
    }

    /// Where to write the `len <= TILE` elements of a run: the memory itself when
    /// `stride == 1`, else `tile`, to be stored by [`Dst::flush`].
    #[inline]
    fn tile<'b>(&self, offset: isize, stride: isize, len: usize, tile: &'b mut [T]) -> &'b mut [T]
    where
        'a: 'b,
    {
        if stride == 1 {
            // SAFETY: the run lies inside the mutable view and is contiguous (contract of
            // `new`); no other thread touches these logical indices, so the slice is unique.
            unsafe { std::slice::from_raw_parts_mut(self.ptr.offset(offset), len) }
        } else {
            &mut tile[..len]
        }
    }

    /// Stores a tile filled through [`Dst::tile`] (nothing to do when `stride == 1`).
    #[inline]
    fn flush(&self, offset: isize, stride: isize, tile: &[T]) {
        if stride == 1 {
            return;
        }
        for (i, &v) in tile.iter().enumerate() {
            // SAFETY: each `offset + i * stride` is a distinct element of the view (checked by
            // `operands`), owned by this run alone.
            unsafe { *self.ptr.offset(offset + i as isize * stride) = v };
        }
    }
}

/// Calls `f(first, sources, destinations)` on every run of logical indices `lo..hi`: the `R`
/// sources as slices to read and the `W` destinations as slices to fill. The walk's operands
/// are the sources, then the destinations (`K == R + W`).
#[inline]
pub(crate) fn for_runs<T: Copy + Default, const K: usize, const R: usize, const W: usize>(
    walk: &Walk<K>,
    (lo, hi): (usize, usize),
    srcs: &[Src<'_, T>; R],
    dsts: &[Dst<'_, T>; W],
    f: impl FnMut(usize, [&[T]; R], [&mut [T]; W]),
) {
    assert_eq!(K, R + W, "one stride per operand");
    // Tiles are only needed for strided runs; contiguous data goes without (and without
    // zeroing them).
    if walk.inner_strides().iter().all(|&s| s == 1) {
        for_runs_with_tiles::<T, K, R, W, 0>(walk, (lo, hi), srcs, dsts, f)
    } else {
        for_runs_with_tiles::<T, K, R, W, TILE>(walk, (lo, hi), srcs, dsts, f)
    }
}

#[inline(always)]
fn for_runs_with_tiles<
    T: Copy + Default,
    const K: usize,
    const R: usize,
    const W: usize,
    const N: usize,
>(
    walk: &Walk<K>,
    (lo, hi): (usize, usize),
    srcs: &[Src<'_, T>; R],
    dsts: &[Dst<'_, T>; W],
    mut f: impl FnMut(usize, [&[T]; R], [&mut [T]; W]),
) {
    let strides = walk.inner_strides();
    let mut src_tiles = [[T::default(); N]; R];
    let mut dst_tiles = [[T::default(); N]; W];
    walk.runs(lo, hi, run_len::<T>(), |r| {
        let mut ins = src_tiles
            .iter_mut()
            .zip(srcs)
            .enumerate()
            .map(|(k, (tile, s))| s.run(r.offsets[k], strides[k], r.len, tile));
        let ins: [&[T]; R] = std::array::from_fn(|_| ins.next().unwrap());
        let mut outs = dst_tiles
            .iter_mut()
            .zip(dsts)
            .enumerate()
            .map(|(k, (tile, d))| d.tile(r.offsets[R + k], strides[R + k], r.len, tile));
        let outs: [&mut [T]; W] = std::array::from_fn(|_| outs.next().unwrap());
        f(r.first, ins, outs);
        for (k, d) in dsts.iter().enumerate() {
            d.flush(
                r.offsets[R + k],
                strides[R + k],
                &dst_tiles[k][..r.len.min(N)],
            );
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasting_follows_numpy() {
        assert_eq!(broadcast_shape(&[3, 1], &[4]), Some(vec![3, 4]));
        assert_eq!(broadcast_shape(&[], &[2, 3]), Some(vec![2, 3]));
        assert_eq!(broadcast_shape(&[0], &[1]), Some(vec![0]));
        assert_eq!(broadcast_shape(&[3], &[4]), None);
        assert!(broadcasts_to(&[3, 1], &[2, 3, 4]) && broadcasts_to(&[], &[2]));
        assert!(!broadcasts_to(&[4], &[4, 3]) && !broadcasts_to(&[2, 3], &[3]));
        assert_eq!(
            broadcast_strides(&[3, 1], &[1, 1], &[2, 3, 4]),
            vec![0, 1, 0]
        );
    }

    #[test]
    fn contiguous_axes_merge_and_runs_cover_the_range() {
        // C-contiguous 2x3x4 for both: one axis of 24.
        let w = Walk::<2>::new(&[2, 3, 4], [&[12, 4, 1], &[12, 4, 1]]).unwrap();
        assert_eq!(w.shape, vec![24]);
        // Fortran-ordered 3x4: no merge; runs of 4 with stride 3.
        let w = Walk::<1>::new(&[3, 4], [&[1, 3]]).unwrap();
        let mut seen = Vec::new();
        w.runs(2, 11, TILE, |r| seen.push((r.first, r.len, r.offsets[0])));
        assert_eq!(seen, vec![(2, 2, 6), (4, 4, 1), (8, 3, 2)]);
        // A long contiguous axis is cut into tiles.
        let w = Walk::<1>::new(&[2 * TILE + 1], [&[1]]).unwrap();
        let mut lens = Vec::new();
        w.runs(0, w.blocks().len(), TILE, |r| {
            lens.push((r.len, r.offsets[0]))
        });
        assert_eq!(
            lens,
            vec![(TILE, 0), (TILE, TILE as isize), (1, 2 * TILE as isize)]
        );
        // Runs of 4 KiB whatever the element type.
        assert_eq!((run_len::<f32>(), run_len::<f64>()), (1024, 512));
        let mut lens = Vec::new();
        w.runs(0, 1100, run_len::<f64>(), |r| lens.push(r.len));
        assert_eq!(lens, vec![512, 512, 76]);
    }

    #[test]
    fn zero_dim_and_empty() {
        let w = Walk::<2>::new(&[], [&[], &[]]).unwrap();
        assert_eq!(w.blocks().len(), 1);
        let w = Walk::<2>::new(&[3, 0], [&[0, 1], &[0, 1]]).unwrap();
        assert_eq!(w.blocks().len(), 0);
        w.runs(0, 0, TILE, |_| panic!("no runs in an empty walk"));
    }

    #[test]
    fn outputs_are_checked_for_shared_memory() {
        fn span<'a>(addr: usize, shape: &'a [usize], strides: &'a [isize]) -> Span<'a> {
            let name = "out";
            Span {
                addr,
                shape,
                strides,
                size: 4,
                name,
            }
        }
        let distinct = |shape: &[usize], strides: &[isize]| span(400, shape, strides).distinct();
        // C and Fortran order, reversed, stepped, broadcast along a length-1 axis.
        assert!(distinct(&[3, 4], &[4, 1]) && distinct(&[3, 4], &[1, 3]));
        assert!(distinct(&[3, 4], &[-4, -1]) && distinct(&[3, 4], &[8, 2]));
        assert!(distinct(&[1, 4], &[0, 1]) && distinct(&[], &[]));
        assert!(check_outputs(&[], &[span(0, &[0, 5], &[0, 0])]).is_ok()); // no elements
                                                                           // Shared elements: a zero stride, strides (4, 4), rows 4 apart of 1000 elements.
        assert!(!distinct(&[300, 1000], &[0, 1]) && !distinct(&[300, 1000], &[1, 1]));
        assert!(!distinct(&[300, 1000], &[4, 1]) && !distinct(&[2, 2], &[1, 1]));
        // Axes that interleave without sharing an element are refused too (documented).
        assert!(!distinct(&[3, 2], &[2, 3]));

        let out = span(1000, &[10], &[1]); // bytes 1000..1040
        let ok = |other: Span<'_>| check_outputs(&[other], &[out]).is_ok();
        assert!(ok(span(1040, &[10], &[1])) && ok(span(960, &[10], &[1])));
        assert!(!ok(span(1036, &[10], &[1])) && !ok(span(964, &[10], &[1])));
        assert!(!ok(span(1000, &[10], &[-1]))); // reversed: bytes 964..1004
        assert!(ok(span(1036, &[0], &[1]))); // no elements, no memory
        assert!(!ok(span(0, &[2], &[500]))); // elements apart, the range overlaps
        let err = check_outputs(&[], &[out, span(1004, &[3], &[1])]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "out overlaps out in memory; pass a separate array"
        );
    }

    #[test]
    fn too_large_is_an_error() {
        let big = usize::MAX / 2;
        assert_eq!(
            Walk::<1>::new(&[big, 4], [&[0, 0]]).unwrap_err(),
            Error::TooLarge
        );
    }
}
