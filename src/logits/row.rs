//! One row of a loss from logits: its softmaxes, its loss and its gradient.
//!
//! `f32` rows take a vectorised path in `f32`, with `f64` where `f32` rounding would show: the
//! sums (in `f64` lanes), each element's `d = t - s` (from the logits' difference, exact in
//! `f64`), the largest terms of the softmax sums, and the elements the `f32` path would not get
//! to within a few ulp, which are redone on the exact path: those with a probability above
//! [`BIG`] or below [`TINY`] on either side, and JSD elements with `|d|` above [`JSD_MAX_D`].
//! `f64` rows take the exact path for every element. Each element's place (lane, order) is
//! fixed, so the bits do not depend on the SIMD level.

use std::any::TypeId;

use super::Divergence;
use crate::float::Float;
use crate::math::{
    exp_f32_unit_finish, exp_f32_unit_reduce, exp_f64, exp_f64_unit_in_place, expm1_f32, ln_f64,
    log1p_f32,
};
use crate::reduce::{fold_lanes, Lanes, LANES};
use crate::runs::prefetch_l2_write;
use crate::simd::Kernel;

/// Elements with `e^((z - max) / T)` below this (`2^-80`) on either side are redone exactly:
/// a probability that is tiny or 0 (a masked entry), where a term must be exactly 0 and
/// `P expm1(-d)` could overflow.
const TINY: f32 = f32::from_bits((127 - 80) << 23);

/// Elements with a probability above this (`2^-10`) on either side are redone exactly, and
/// their `e^((z - max) / T)` is summed again in `f64`. Below it the `f32` path's errors (a
/// few ulp of a probability, `|z - max| / T` ulp from rounding the argument of `exp`) stay
/// under `1e-9` in a gradient; above it, they would show in a gradient of 4 ulp or in a
/// log-sum-exp that every element depends on. At most 1024 elements a side are above it.
const BIG: f32 = f32::from_bits((127 - 10) << 23);

/// A row takes the exact path for every element (in loops over the whole row, which
/// vectorise) where more than one element in this many would: gathering them one by one would
/// cost more.
const DENSE: usize = 16;

/// Whether `count` elements of a row of `len` are too many to gather (see [`DENSE`]).
#[inline(always)]
fn dense(count: usize, len: usize) -> bool {
    count * DENSE > len
}

/// Forward KL gradients scaled by at most this (every mean and batchmean, sums at `T >= 1`
/// with weights up to `T`) take `Q - P` in `f32` on the fast path: with `Q` and `P` within 3
/// ulp each and both at most [`BIG`], its error is under `6 * 2^-24 * 2^-10 < 4e-10` times
/// the scale, inside SPEC's `1e-9` absolute. Larger scales take `P expm1(-d)` where `Q - P`
/// cancels, which costs a third of the row's time.
const PLAIN_DIFF_SCALE: f32 = 1.0;

/// JSD elements with `|d|` above this are redone exactly (where `β expm1(d)` leaves `f32`).
const JSD_MAX_D: f32 = 20.0;

/// The largest element of a row (NaNs ignored: they reach the sums).
#[inline(always)]
fn row_max<C: Float>(z: &[C]) -> C {
    let mut m = RowMax::new();
    m.add(z);
    m.get()
}

/// The largest elements of two rows of the same length, read side by side: two streams from
/// memory at once, where one row after the other waits on each in turn.
#[inline(always)]
fn row_max2(a: &[f32], b: &[f32]) -> (f32, f32) {
    let (mut ma, mut mb) = (RowMax::new(), RowMax::new());
    for (ca, cb) in a.chunks(4 * LANES).zip(b.chunks(4 * LANES)) {
        ma.add(ca);
        mb.add(cb);
    }
    (ma.get(), mb.get())
}

/// A row's maximum taken a part at a time (see [`row_max`]), in four vectors of lanes so that
/// the maxima do not wait on each other.
#[derive(Clone, Copy)]
struct RowMax<C> {
    m: [[C; LANES]; 4],
}

impl<C: Float> RowMax<C> {
    #[inline(always)]
    fn new() -> Self {
        RowMax {
            m: [[C::from_f64(f64::NEG_INFINITY); LANES]; 4],
        }
    }

    /// Takes in the elements of `z`.
    #[inline(always)]
    fn add(&mut self, z: &[C]) {
        // `x.max(y)`, not a select: LLVM keeps the maxima in registers (a select becomes
        // masked stores to the stack). NaNs are ignored either way; the sign of a zero maximum
        // does not change a row's results.
        let max = |x: C, y: C| x.max(y);
        let mut chunks = z.chunks_exact(4 * LANES);
        for c in &mut chunks {
            // Four arrays, not one of 4 * LANES: LLVM keeps these in registers.
            let (c0, rest) = c.split_at(LANES);
            let (c1, rest) = rest.split_at(LANES);
            let (c2, c3) = rest.split_at(LANES);
            let [m0, m1, m2, m3] = &mut self.m;
            for j in 0..LANES {
                m0[j] = max(m0[j], c0[j]);
                m1[j] = max(m1[j], c1[j]);
                m2[j] = max(m2[j], c2[j]);
                m3[j] = max(m3[j], c3[j]);
            }
        }
        for (j, &v) in chunks.remainder().iter().enumerate() {
            self.m[0][j % LANES] = max(self.m[0][j % LANES], v);
        }
    }

    /// The maximum: across the vectors and, halving, across the lanes: a few vector steps, not
    /// 64 dependent scalar ones (which cost short rows more than their elements).
    #[inline(always)]
    fn get(self) -> C {
        let max = |x: C, y: C| x.max(y);
        let [m0, m1, m2, m3] = self.m;
        let mut v = m0;
        for j in 0..LANES {
            v[j] = max(max(m0[j], m1[j]), max(m2[j], m3[j]));
        }
        let mut width = LANES / 2;
        while width > 0 {
            for j in 0..width {
                v[j] = max(v[j], v[j + width]);
            }
            width /= 2;
        }
        v[0]
    }
}

/// A row's sum in `f64`: element `i` into lane `i % LANES`, each lane in order, then the lanes
/// folded (see `crate::reduce`), over whole chunks so that it vectorises.
#[inline(always)]
fn sum_row<C: Float>(v: &[C]) -> f64 {
    let mut acc = [0.0; LANES];
    add_lanes(&mut acc, v);
    fold_lanes(&acc)
}

/// The fast path's terms are summed a tile at a time, from a buffer that stays in L1 (a
/// multiple of [`LANES`], so that element `i` still goes to lane `i % LANES`).
pub(super) const TILE: usize = 1024;

/// Adds `v` into the lanes `acc` (element `j` into lane `j % LANES`, in order, in `f64`),
/// continuing earlier tiles; `v` holds a whole number of lanes but at the row's end.
#[inline(always)]
fn add_lanes<C: Float>(acc: &mut Lanes, v: &[C]) {
    let mut a = *acc; // a local copy stays in registers: the loop vectorises
    let mut chunks = v.chunks_exact(LANES);
    for c in &mut chunks {
        for j in 0..LANES {
            a[j] += c[j].to_f64();
        }
    }
    // The rest as one more whole chunk, padded with zeros (adding +0 to a lane changes
    // nothing: a lane that starts at +0 is never -0): an unrolled scalar tail would keep
    // LLVM from putting the lanes in vector registers.
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut c = [C::from_f64(0.0); LANES];
        c[..rest.len()].copy_from_slice(rest);
        for j in 0..LANES {
            a[j] += c[j].to_f64();
        }
    }
    *acc = a;
}

/// The elements of a piece of a softmax row (see [`softmax_f32`]).
const PIECE: usize = 128;

/// The largest and the smallest `u` of a piece, as their bits (the same order for the
/// non-negative `u`: integer maxima vectorise as one instruction).
pub(super) type Bounds = [u32; 2];

/// Pushes the indices of the nonzero bytes of `flags` (0 or 1 each), in order: eight bytes
/// at a time as one word, then one step per flag (most words have none). Pushes none, and
/// returns false, where more than one in [`DENSE`] is flagged (the row goes dense).
#[inline(always)]
fn flagged(idx: &mut Vec<u32>, flags: &[u8]) -> bool {
    idx.clear();
    let words = flags.chunks_exact(8);
    let rest = words.remainder().iter().map(|&f| f as usize).sum::<usize>();
    let count = words.fold(rest, |n, w| {
        n + u64::from_le_bytes(w.try_into().expect("8 bytes")).count_ones() as usize
    });
    if dense(count, flags.len()) {
        return false;
    }
    let mut chunks = flags.chunks_exact(8);
    for (c, w) in (&mut chunks).enumerate() {
        let mut word = u64::from_le_bytes(w.try_into().expect("8 bytes"));
        while word != 0 {
            idx.push((c * 8 + word.trailing_zeros() as usize / 8) as u32);
            word &= word - 1;
        }
    }
    let base = flags.len() - chunks.remainder().len();
    for (j, &f) in chunks.remainder().iter().enumerate() {
        if f != 0 {
            idx.push((base + j) as u32);
        }
    }
    true
}

/// One side of a row: `lse = ln Σ e^(z/T)` and, on the `f32` path, `1 / Σ u` with each
/// `u = e^((z - max)/T)` written out, so that an element's probability is `u / Σ u`, and the
/// `u` above which an element is [`exact`] (`Σ u` times [`BIG`]).
struct Side {
    lse: f64,
    inv_sum: f32,
    big: f32,
}

/// Whether an element takes the exact path, by its `u` on one side of the row: a probability
/// above [`BIG`] (`u` above that side's `big`) or a `u` below [`TINY`] (either side decides).
/// The rule's one test: the softmax passes list these elements (forward KL), the reverse KL and
/// JSD loops flag them.
#[inline(always)]
fn exact(u: f32, big: f32) -> bool {
    u > big || u < TINY
}

/// [`Side`] of a row of `f32` logits whose maximum is `max` (see [`row_max2`]): `u` in `f32`
/// and its sum in `f64` lanes, then the `u` above [`BIG`] times that sum summed again in
/// `f64`. `list` gets the elements of this side that take the exact path: those `u` and the
/// ones below [`TINY`]. NaN for a row holding a NaN or only -inf. `None` where they are too
/// many (see [`DENSE`]): the row takes the exact path. `out` is prefetched along the way (see
/// [`GradRow`]).
#[inline(always)]
fn softmax_f32(
    z: &[f32],
    k: f64,
    u: &mut [f32],
    list: &mut Vec<u32>,
    g: &mut Gathered<'_>,
    out: GradRow,
    max: f32,
) -> Option<Side> {
    let k32 = k as f32;
    let u = &mut u[..z.len()];
    // In pieces of 8 cache lines, each after the prefetches of its share of `out` (each line
    // once, and no division in the loop: slow on some CPUs), each with the piece's largest and
    // smallest `u`.
    let per = out.lines_per_piece(z.len().div_ceil(PIECE));
    let bounds = &mut *g.bounds;
    bounds.clear();
    for (p, (uc, zc)) in u.chunks_mut(PIECE).zip(z.chunks(PIECE)).enumerate() {
        for l in 0..per {
            out.line_write(p * per + l);
        }
        // `exp_f32_unit` in its two halves, a loop each (see `exp_f32_unit_reduce`).
        let mut scales = [0.0; PIECE];
        for ((e, s), &v) in uc.iter_mut().zip(&mut scales).zip(zc) {
            (*e, *s) = exp_f32_unit_reduce((v - max) * k32);
        }
        let (mut hi, mut lo) = (0, u32::MAX);
        for (e, &s) in uc.iter_mut().zip(&scales) {
            *e = exp_f32_unit_finish(*e, s);
            hi = hi.max(e.to_bits());
            lo = lo.min(e.to_bits());
        }
        bounds.push([hi, lo]);
    }
    // (Summed in a pass of its own: summed in each piece, LLVM made the f64 lanes pairs.)
    let mut sum = sum_row(u);
    // The elements for the exact path, listed in order: the largest (summed again in f64
    // below) and the tiny ones, looked for in the pieces that hold any. Where they are many
    // (small vocabularies, flat rows, many masked entries), the row takes the exact path.
    let big = (sum * BIG as f64) as f32;
    list.clear();
    let (big_bits, tiny_bits) = (big.to_bits(), TINY.to_bits());
    for (p, &[hi, lo]) in bounds.iter().enumerate() {
        if hi > big_bits || lo < tiny_bits {
            let start = p * PIECE;
            let piece = &u[start..(start + PIECE).min(z.len())];
            let mut groups = piece.chunks_exact(LANES);
            for (c, e) in (&mut groups).enumerate() {
                // A mask of the group (one compare of a vector), then its set bits.
                let e: &[f32; LANES] = e.try_into().expect("LANES elements");
                let mut bits = 0u32;
                for (j, &x) in e.iter().enumerate() {
                    bits |= (exact(x, big) as u32) << j;
                }
                while bits != 0 {
                    list.push((start + c * LANES + bits.trailing_zeros() as usize) as u32);
                    bits &= bits - 1;
                }
            }
            let rest = piece.len() - groups.remainder().len();
            for (j, &e) in groups.remainder().iter().enumerate() {
                if exact(e, big) {
                    list.push((start + rest + j) as u32);
                }
            }
            if dense(list.len(), z.len()) {
                return None;
            }
        }
    }
    let (idx, x) = (&*list, &mut *g.a);
    x.clear();
    x.extend(idx.iter().map(|&v| (z[v as usize] as f64 - max as f64) * k)); // exact difference
    exp_f64_unit_in_place(x);
    let fix: f64 = idx
        .iter()
        .zip(x.iter())
        .map(|(&v, &e)| e - u[v as usize] as f64)
        .sum();
    sum += fix;
    Some(Side {
        lse: max as f64 * k + ln_f64(sum),
        inv_sum: (1.0 / sum) as f32,
        big,
    })
}

/// A row of the gradient (or part of it), fetched into L2 to be written while the softmaxes
/// compute, half during each side's, so that the gradient's stores do not wait for memory. The
/// next rows' logits are left to the hardware's prefetcher: fetched here too, in bursts, they
/// made the kernel slower (docs/performance.md).
#[derive(Clone, Copy)]
pub(super) struct GradRow {
    pub(super) ptr: *const u8,
    pub(super) bytes: usize,
}

impl GradRow {
    /// Nothing to prefetch.
    pub(super) const NONE: GradRow = GradRow {
        ptr: std::ptr::null(),
        bytes: 0,
    };

    /// Its two halves.
    fn halves(self) -> [GradRow; 2] {
        let half = self.bytes / 2;
        [
            GradRow {
                ptr: self.ptr,
                bytes: half,
            },
            GradRow {
                ptr: self.ptr.wrapping_add(half),
                bytes: self.bytes - half,
            },
        ]
    }

    /// How many of its cache lines to prefetch with each of `pieces` pieces to cover it.
    fn lines_per_piece(self, pieces: usize) -> usize {
        self.bytes.div_ceil(64).div_ceil(pieces.max(1))
    }

    /// Prefetches its cache line `i` to be written (none beyond its end).
    #[inline(always)]
    fn line_write(self, i: usize) {
        if i * 64 < self.bytes {
            prefetch_l2_write(self.ptr.wrapping_add(i * 64));
        }
    }
}

/// `ln Σ e^(z/T)` of a row and `1 / Σ e^((z - max)/T)`, in `f64` throughout (the exact
/// path), with each `e^((z - max)/T)` left in `e`.
#[inline(always)]
fn lse_exact<C: Float>(z: &[C], k: f64, e: &mut Vec<f64>) -> (f64, f64) {
    let max = row_max(z).to_f64();
    e.clear();
    e.extend(z.iter().map(|&v| v.to_f64()));
    for x in e.iter_mut() {
        *x = (*x - max) * k; // the difference is exact for f32 logits
    }
    exp_f64_unit_in_place(e);
    let sum = sum_row(e);
    (max * k + ln_f64(sum), 1.0 / sum)
}

/// `d = t - s = (z_t - z_s) / T - (lse_t - lse_s)`: the logits' difference is exact in `f64`.
#[inline(always)]
fn d_of(zs: f64, zt: f64, k: f64, c: f64) -> f64 {
    (zt - zs).mul_add(k, -c)
}

/// The exact path's constants of a row: element by element in `f64`.
#[derive(Clone, Copy)]
struct Exact<'a> {
    k: f64,
    lse_s: f64,
    lse_t: f64,
    /// Where the row took the exact path from the start: each element's `e^((z - max)/T)`
    /// (see [`lse_exact`]) and `1 / Σ` of both sides, so that `Q` and `P` are products, not
    /// exponentials again.
    probs: Option<(&'a [f64], f64, &'a [f64], f64)>,
}

impl Exact<'_> {
    /// `Q` (`side` 0) or `P` (1) of the gathered elements with logits `z` (every element of
    /// the row, in order, where `probs` are known) into `out`: products where the row took the
    /// exact path from the start, else exponentials. The choice is made once, outside the
    /// loops, so that each vectorises.
    #[inline(always)]
    fn probs_into(self, side: usize, z: &[f64], out: &mut [f64]) {
        match self.probs {
            Some((es, is, et, it)) => {
                let (e, inv_sum) = [(es, is), (et, it)][side];
                for (o, &e) in out.iter_mut().zip(e) {
                    *o = e * inv_sum;
                }
            }
            None => {
                let lse = [self.lse_s, self.lse_t][side];
                for (o, &z) in out.iter_mut().zip(z) {
                    *o = z.mul_add(self.k, -lse);
                }
                exp_f64_unit_in_place(out);
            }
        }
    }

    /// `d = t - s` of an element with logits `zs`, `zt`.
    #[inline(always)]
    fn d(self, zs: f64, zt: f64) -> f64 {
        d_of(zs, zt, self.k, self.lse_t - self.lse_s)
    }

    /// `(term, Q (s - m), Q, s - m)` of a JSD element with `Q`, `P` and `d` (see the table of
    /// `super`). `s - m` and `t - m` come from the ratio `P/Q = e^d`, so that they are exact
    /// where `P` or `Q` underflows: `-ln(β e^d + 1 - β)` and `d` more for `d <= 0`, `-ln(β +
    /// (1 - β) e^-d)` and `d` less above.
    #[inline(always)]
    fn jsd(q: f64, p: f64, d: f64, beta: f64) -> (f64, f64, f64, f64) {
        let e = exp_f64(-d.abs());
        let up = d > 0.0;
        let l = -ln_f64(if up {
            beta + (1.0 - beta) * e
        } else {
            beta * e + (1.0 - beta)
        });
        let (sm, tm) = if up { (l - d, l) } else { (l, d + l) };
        let tp = if p == 0.0 { 0.0 } else { beta * p * tm };
        let kq = if q == 0.0 { 0.0 } else { q * sm };
        (tp + (1.0 - beta) * kq, kq, q, sm)
    }
}

/// The elements of a row on the exact path, gathered: their indices and their logits, then
/// what each divergence computes of them (in loops over the gathered values, which
/// vectorise). Scratch of the thread.
pub(super) struct Gathered<'a> {
    pub(super) idx: &'a mut Vec<u32>,
    /// The [`Bounds`] of each piece of a softmax row (see [`softmax_f32`]).
    pub(super) bounds: &'a mut Vec<Bounds>,
    pub(super) a: &'a mut Vec<f64>,
    pub(super) b: &'a mut Vec<f64>,
    pub(super) c: &'a mut Vec<f64>,
    pub(super) d: &'a mut Vec<f64>,
}

impl Gathered<'_> {
    /// After the fast path, gathers the elements it leaves to the exact path (the nonzero
    /// `flags`): all of them, and nothing of the fast path counted (false), where they are
    /// many or there was no fast path (`None`).
    #[inline(always)]
    fn gather_flagged<C: Float>(&mut self, s: &[C], t: &[C], flags: Option<&[u8]>) -> bool {
        let dense = match flags {
            Some(f) => !flagged(self.idx, f),
            None => true,
        };
        self.gather(s, t, dense);
        !dense
    }

    /// Gathers the elements `idx` of `s` and `t` into `a` and `b` (every element, in order,
    /// with `idx` empty, if `dense`).
    #[inline(always)]
    fn gather<C: Float>(&mut self, s: &[C], t: &[C], dense: bool) {
        let m = if dense { s.len() } else { self.idx.len() };
        for v in [&mut *self.a, &mut *self.b, &mut *self.c, &mut *self.d] {
            v.resize(m, 0.0);
        }
        if dense {
            self.idx.clear();
            for (a, &v) in self.a.iter_mut().zip(s) {
                *a = v.to_f64();
            }
            for (b, &v) in self.b.iter_mut().zip(t) {
                *b = v.to_f64();
            }
        } else {
            for (i, &v) in self.idx.iter().enumerate() {
                self.a[i] = s[v as usize].to_f64();
                self.b[i] = t[v as usize].to_f64();
            }
        }
    }
}

/// Writes the gathered gradient values `v` into their places in the row `out` (see
/// [`Gathered::gather`]: every element in order where `idx` is empty).
#[inline(always)]
fn scatter<C: Float>(out: &mut [C], idx: &[u32], v: &[f64]) {
    if idx.is_empty() {
        for (o, &x) in out.iter_mut().zip(v) {
            *o = C::from_f64(x);
        }
    } else {
        for (&i, &x) in idx.iter().zip(v) {
            out[i as usize] = C::from_f64(x);
        }
    }
}

/// The sorted union of the sorted lists `a` and `b` into `out`.
#[inline(always)]
fn union(out: &mut Vec<u32>, a: &[u32], b: &[u32]) {
    out.clear();
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        let (x, y) = (a[i], b[j]);
        out.push(x.min(y));
        i += (x <= y) as usize;
        j += (y <= x) as usize;
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
}

/// `s` as `f32`s where `C` is `f32` (the vectorised path's rows).
fn as_f32<C: Float>(s: &[C]) -> Option<&[f32]> {
    // SAFETY: `C` is `f32` itself: the same slice, retyped to what it is.
    (TypeId::of::<C>() == TypeId::of::<f32>())
        .then(|| unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<f32>(), s.len()) })
}

/// `s` as mutable `f32`s where `C` is `f32`.
fn as_f32_mut<C: Float>(s: &mut [C]) -> Option<&mut [f32]> {
    // SAFETY: as in `as_f32`; the mutable borrow moves into the result.
    (TypeId::of::<C>() == TypeId::of::<f32>())
        .then(|| unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr().cast::<f32>(), s.len()) })
}

/// The vectorised path over a row of `f32` logits, after both softmax sides.
#[derive(Clone, Copy)]
struct Fast<'a> {
    s: &'a [f32],
    t: &'a [f32],
    us: &'a [f32],
    ut: &'a [f32],
    k: f64,
    /// `lse_t - lse_s`.
    c: f64,
    lse_s: f64,
    is_s: f32,
    is_t: f32,
    /// Each side's `big` (see [`exact`]).
    big_s: f32,
    big_t: f32,
}

impl<'a> Fast<'a> {
    /// `(Q, P)` of element `i` on this path.
    #[inline(always)]
    fn probs(&self, i: usize) -> (f32, f32) {
        (self.us[i] * self.is_s, self.ut[i] * self.is_t)
    }

    /// `(Q, P)` of element `i` on this path, and whether it stays on it.
    #[inline(always)]
    fn qp(&self, i: usize) -> (f32, f32, bool) {
        // Both `u` read before the `||`: a read after it would be conditional (its bounds
        // check a branch), and the loops would not vectorise (reverse KL 1.5 -> 2.6 ns).
        let (q, p) = self.probs(i);
        let (a, b) = (self.us[i], self.ut[i]);
        (q, p, !(exact(a, self.big_s) || exact(b, self.big_t)))
    }

    /// `(Q, P, d)` of element `i` on this path, and whether it stays on it.
    #[inline(always)]
    fn at(&self, i: usize) -> (f32, f32, f64, bool) {
        let (q, p, ok) = self.qp(i);
        let d = d_of(self.s[i] as f64, self.t[i] as f64, self.k, self.c);
        (q, p, d, ok)
    }

    /// Forward KL: `Σ P d` (with `CE`, the cross-entropy `-Σ P s`) over the elements it keeps:
    /// all but the exact path's, `listed` (sorted), whose terms are set to 0 after each tile
    /// (a masked logit's `d` is infinite) and whose gradient the exact path writes over; with
    /// `GRAD`, `(Q - P) scale` into `out`: for a `|scale|` up to [`PLAIN_DIFF_SCALE`] as
    /// `Q - P`, else as `Q - P` where `Q > 2P` and as `P expm1(-d)` below, where `Q - P`
    /// cancels (its error is then that of `P` and `expm1`).
    #[inline(always)]
    fn forward<const GRAD: bool, const CE: bool>(
        &self,
        out: &mut [f32],
        terms: &mut [f64],
        listed: &[u32],
        scale: f32,
    ) -> f64 {
        if GRAD && scale.abs() <= PLAIN_DIFF_SCALE {
            // `Q - P` in f32, vectorised at f32's width; the loss in its own loop.
            let n = self.s.len();
            for (i, o) in out[..n].iter_mut().enumerate() {
                let (q, p) = self.probs(i);
                *o = (q - p) * scale;
            }
            return self.forward::<false, CE>(out, terms, listed, scale);
        }
        let n = self.s.len();
        let out = &mut out[..n];
        let mut acc = [0.0; LANES];
        let mut listed = listed.iter().map(|&i| i as usize).peekable();
        for start in (0..n).step_by(TILE) {
            let end = (start + TILE).min(n);
            let terms = &mut terms[..end - start];
            for (j, term_j) in terms.iter_mut().enumerate() {
                let i = start + j;
                let (q, p) = self.probs(i);
                let d = d_of(self.s[i] as f64, self.t[i] as f64, self.k, self.c);
                if GRAD {
                    let diff = if q > 2.0 * p {
                        q - p
                    } else {
                        p * expm1_f32(-d as f32)
                    };
                    out[i] = diff * scale;
                }
                // The cross-entropy's term is -P s, s = z_s / T - lse_s.
                let term = if CE {
                    -(p as f64) * (self.s[i] as f64).mul_add(self.k, -self.lse_s)
                } else {
                    p as f64 * d
                };
                *term_j = term;
            }
            // The listed elements' terms are 0 (their `d` may be infinite: a masked logit).
            while let Some(i) = listed.next_if(|&i| i < end) {
                terms[i - start] = 0.0;
            }
            add_lanes(&mut acc, terms);
        }
        fold_lanes(&acc)
    }

    /// Reverse KL: `-Σ Q d` over the elements it keeps.
    #[inline(always)]
    fn reverse(&self, sums: &mut Sums<'_>) -> f64 {
        let n = self.s.len();
        let flags = &mut sums.flags[..n];
        let mut acc = [0.0; LANES];
        for start in (0..n).step_by(TILE) {
            let terms = &mut sums.terms[..(start + TILE).min(n) - start];
            for (j, term) in terms.iter_mut().enumerate() {
                let (q, _, d, ok) = self.at(start + j);
                *term = if ok { -(q as f64 * d) } else { 0.0 };
                flags[start + j] = !ok as u8;
            }
            add_lanes(&mut acc, terms);
        }
        fold_lanes(&acc)
    }

    /// Reverse KL's gradient, `Q (-d - L) scale`, into `out`.
    #[inline(always)]
    fn reverse_grad(&self, out: &mut [f32], loss: f64, scale: f32) {
        let n = self.s.len();
        let out = &mut out[..n];
        for (i, o) in out.iter_mut().enumerate() {
            let d = d_of(self.s[i] as f64, self.t[i] as f64, self.k, self.c);
            *o = self.us[i] * self.is_s * (-d - loss) as f32 * scale;
        }
    }

    /// JSD: the loss and `K = -Σ Q φ` over the elements it keeps, with `φ = m - s =
    /// log1p(β expm1(d))` written into `phi`.
    #[inline(always)]
    fn jsd(&self, phi: &mut [f32], sums: &mut Sums<'_>, beta: f64) -> (f64, f64) {
        let n = self.s.len();
        let b32 = beta as f32;
        let (phi, flags) = (&mut phi[..n], &mut sums.flags[..n]);
        let (mut acc, mut kacc) = ([0.0; LANES], [0.0; LANES]);
        for start in (0..n).step_by(TILE) {
            let len = (start + TILE).min(n) - start;
            let (terms, kterms) = (&mut sums.terms[..len], &mut sums.kterms[..len]);
            // φ in loops over the tile (in L1): `d` (in `terms`, in f64, for the terms) and
            // rounded to f32 (in `phi`), then `β expm1(d)` and its `log1p` in loops of f32
            // alone (at f32's vector width: the costly part; two loops, not one, as for
            // `exp_f32_unit_reduce`), then the f64 terms.
            let phi_tile = &mut phi[start..start + len];
            for (j, (f, dj)) in phi_tile.iter_mut().zip(terms.iter_mut()).enumerate() {
                let i = start + j;
                *dj = d_of(self.s[i] as f64, self.t[i] as f64, self.k, self.c);
                *f = *dj as f32;
            }
            for f in phi_tile.iter_mut() {
                *f = b32 * expm1_f32(*f);
            }
            for f in phi_tile.iter_mut() {
                *f = log1p_f32(*f);
            }
            for j in 0..len {
                let i = start + j;
                let ((q, p, ok), d) = (self.qp(i), terms[j]);
                let d32 = d as f32;
                let ok = ok && d32.abs() <= JSD_MAX_D;
                let f = phi[i];
                let (q, p, f64_) = (q as f64, p as f64, f as f64);
                let term = beta * p * (d - f64_) - (1.0 - beta) * q * f64_;
                terms[j] = if ok { term } else { 0.0 };
                kterms[j] = if ok { -(q * f64_) } else { 0.0 };
                flags[i] = !ok as u8;
            }
            add_lanes(&mut acc, terms);
            add_lanes(&mut kacc, kterms);
        }
        (fold_lanes(&acc), fold_lanes(&kacc))
    }

    /// JSD's gradient, `(1-β) Q (-φ - K) scale`, into `out`.
    #[inline(always)]
    fn jsd_grad(&self, out: &mut [f32], phi: &[f32], kk: f64, beta: f64, scale: f32) {
        let n = self.s.len();
        let (out, phi) = (&mut out[..n], &phi[..n]);
        let (k32, w) = (kk as f32, (1.0 - beta) as f32);
        for i in 0..n {
            out[i] = w * (self.us[i] * self.is_s) * (-phi[i] - k32) * scale;
        }
    }
}

/// The fast path's per-element terms (`f64`, a [`TILE`] of them, and a second for JSD's `K`)
/// and the flags of the elements redone on the exact path (a row): scratch of the thread.
pub(super) struct Sums<'a> {
    pub(super) terms: &'a mut [f64],
    pub(super) kterms: &'a mut [f64],
    pub(super) flags: &'a mut [u8],
}

/// One row of a loss from logits, as a [`Kernel`]: its loss `L` (unweighted), and with a
/// `grad_scale` its gradient times that scale (the row's weight times the incoming gradient over
/// the divisor; `1/T` is applied here) into `out`. `us`, `ut`, `tmp`, `sums`, `gathered` (and
/// `out` without a gradient) are scratch.
pub(super) struct RowKernel<'a, C> {
    pub(super) s: &'a [C],
    pub(super) t: &'a [C],
    pub(super) us: &'a mut [C],
    pub(super) ut: &'a mut [C],
    pub(super) tmp: &'a mut [C],
    pub(super) out: &'a mut [C],
    /// Rows of the exact path's `e^((z - max)/T)`, both sides.
    pub(super) es: &'a mut Vec<f64>,
    pub(super) et: &'a mut Vec<f64>,
    pub(super) sums: Sums<'a>,
    pub(super) gathered: Gathered<'a>,
    pub(super) inv_t: f64,
    pub(super) divergence: Divergence,
    pub(super) grad_scale: Option<f64>,
    /// This row of the gradient in memory (prefetched to be written).
    pub(super) out_row: GradRow,
    /// The elements of each side that take the exact path (see [`softmax_f32`]).
    pub(super) lists: [&'a mut Vec<u32>; 2],
}

impl<C: Float> Kernel for RowKernel<'_, C> {
    type Output = f64;
    fn log_target(&self) -> bool {
        false
    }
    #[inline(always)]
    fn run<const LOG_TARGET: bool>(self) -> f64 {
        match self.grad_scale {
            Some(g) => {
                let scale = g * self.inv_t;
                row::<C, true>(self, scale)
            }
            None => row::<C, false>(self, 0.0),
        }
    }
}

/// [`RowKernel`]'s work; with `GRAD`, the gradient times `scale` goes to `out`.
#[inline(always)]
fn row<C: Float, const GRAD: bool>(kernel: RowKernel<'_, C>, scale: f64) -> f64 {
    let RowKernel {
        s,
        t,
        us,
        ut,
        tmp,
        out,
        es,
        et,
        mut sums,
        gathered: mut g,
        inv_t: k,
        divergence,
        out_row,
        lists: [ls, lt],
        ..
    } = kernel;
    let n = s.len();
    let f32_rows = "the vectorised path's rows are f32";
    // Both sides on the f32 path, or None: the row takes the exact path (the teacher's side
    // is not tried once the student's goes dense). A row shorter than DENSE always would (its
    // maximum alone is a large element): it goes there at once, with the same results.
    let sides = match (as_f32(s), as_f32(t)) {
        // (No closure around the softmaxes: a closure does not take the SIMD level's target
        // features, and would run them at the baseline level, eight times slower.)
        (Some(fs), Some(ft)) if n >= DENSE => {
            // Both sides through one loop: one copy of the code, compiled alike for both.
            let [o1, o2] = out_row.halves();
            let work = [
                (fs, as_f32_mut(us).expect(f32_rows), &mut *ls, o1),
                (ft, as_f32_mut(ut).expect(f32_rows), &mut *lt, o2),
            ];
            let mut sides = [None, None];
            let (ms, mt) = row_max2(fs, ft);
            for (side, ((z, u, list, out), max)) in
                sides.iter_mut().zip(work.into_iter().zip([ms, mt]))
            {
                *side = softmax_f32(z, k, u, list, &mut g, out, max);
                if side.is_none() {
                    break;
                }
            }
            match sides {
                [Some(ss), Some(st)] => Some((ss, st)),
                _ => None,
            }
        }
        _ => None,
    };
    let forward = matches!(
        divergence.normalized(),
        Divergence::Forward | Divergence::CrossEntropy
    );
    if sides.is_some() && forward {
        // The forward KL's exact path takes the elements of both sides' lists (the fast path
        // sets their terms to 0 by this list, without testing every element).
        union(g.idx, ls, lt);
    }
    let (us, ut) = (&*us, &*ut);
    let exact = match &sides {
        Some((ss, st)) => Exact {
            k,
            lse_s: ss.lse,
            lse_t: st.lse,
            probs: None,
        },
        _ => {
            let (lse_s, is) = lse_exact(s, k, es);
            let (lse_t, it) = lse_exact(t, k, et);
            Exact {
                k,
                lse_s,
                lse_t,
                probs: Some((&es[..], is, &et[..], it)),
            }
        }
    };
    let (lse_s, lse_t) = (exact.lse_s, exact.lse_t);
    let fast = match sides {
        Some((ss, st)) => Some(Fast {
            s: as_f32(s).expect(f32_rows),
            t: as_f32(t).expect(f32_rows),
            us: as_f32(us).expect(f32_rows),
            ut: as_f32(ut).expect(f32_rows),
            k,
            c: lse_t - lse_s,
            lse_s,
            is_s: ss.inv_sum,
            is_t: st.inv_sum,
            big_s: ss.big,
            big_t: st.big,
        }),
        _ => None,
    };
    let scale32 = scale as f32;
    match divergence.normalized() {
        div @ (Divergence::Forward | Divergence::CrossEntropy) => {
            let ce = div == Divergence::CrossEntropy;
            let mut lanes = 0.0;
            if let Some(f) = &fast {
                let out = as_f32_mut(out).expect(f32_rows);
                let l = if ce {
                    f.forward::<GRAD, true>(out, sums.terms, g.idx, scale32)
                } else {
                    f.forward::<GRAD, false>(out, sums.terms, g.idx, scale32)
                };
                let all = dense(g.idx.len(), n);
                g.gather(s, t, all);
                if !all {
                    lanes = l;
                }
            } else {
                g.gather_flagged(s, t, None);
            }
            let (a, b, qs, ps) = (&mut g.a[..], &mut g.b[..], &mut g.c[..], &mut g.d[..]);
            exact.probs_into(0, a, qs);
            exact.probs_into(1, b, ps);
            let all = a.iter_mut().zip(b.iter_mut()).zip(qs.iter().zip(ps.iter()));
            for ((x, y), (&q, &p)) in all {
                // The cross-entropy's term is -P s, s = z_s / T - lse_s.
                let term = if ce {
                    -p * x.mul_add(k, -lse_s)
                } else {
                    p * exact.d(*x, *y)
                };
                (*x, *y) = (if p == 0.0 { 0.0 } else { term }, (q - p) * scale);
            }
            if GRAD {
                scatter(out, g.idx, g.b);
            }
            lanes + sum_row(g.a)
        }
        Divergence::Reverse => {
            let mut lanes = 0.0;
            let mut fast = fast;
            if let Some(f) = &fast {
                let l = f.reverse(&mut sums);
                if g.gather_flagged(s, t, Some(&sums.flags[..n])) {
                    lanes = l;
                } else {
                    fast = None; // every element exact
                }
            } else {
                g.gather_flagged(s, t, None);
            }
            let (a, b, c) = (&mut g.a[..], &mut g.b[..], &mut g.c[..]);
            exact.probs_into(0, a, c);
            let all = a.iter_mut().zip(b.iter_mut()).zip(c.iter_mut());
            for ((x, y), z) in all {
                let (q, d) = (*z, exact.d(*x, *y));
                (*x, *y, *z) = (if q == 0.0 { 0.0 } else { -(q * d) }, q, d);
            }
            let loss = lanes + sum_row(a);
            if GRAD {
                if let Some(f) = &fast {
                    f.reverse_grad(as_f32_mut(out).expect(f32_rows), loss, scale32);
                }
                for (q, &d) in b.iter_mut().zip(c.iter()) {
                    let gv = if *q == 0.0 { 0.0 } else { *q * (-d - loss) };
                    *q = gv * scale;
                }
                scatter(out, g.idx, b);
            }
            loss
        }
        Divergence::Jsd(beta) => {
            let (mut lanes, mut klanes) = (0.0, 0.0);
            let mut fast = fast;
            if let Some(f) = &fast {
                let l = f.jsd(as_f32_mut(tmp).expect(f32_rows), &mut sums, beta);
                if g.gather_flagged(s, t, Some(&sums.flags[..n])) {
                    (lanes, klanes) = l;
                } else {
                    fast = None; // every element exact
                }
            } else {
                g.gather_flagged(s, t, None);
            }
            let (a, b, c, e) = (&mut g.a[..], &mut g.b[..], &mut g.c[..], &mut g.d[..]);
            exact.probs_into(0, a, c);
            exact.probs_into(1, b, e);
            let all = a
                .iter_mut()
                .zip(b.iter_mut())
                .zip(c.iter_mut())
                .zip(e.iter_mut());
            for (((x, y), z), w) in all {
                (*x, *y, *z, *w) = Exact::jsd(*z, *w, exact.d(*x, *y), beta);
            }
            let loss = lanes + sum_row(a);
            let kk = klanes + sum_row(b);
            if GRAD {
                if let Some(f) = &fast {
                    let phi = as_f32(tmp).expect(f32_rows);
                    f.jsd_grad(as_f32_mut(out).expect(f32_rows), phi, kk, beta, scale32);
                }
                for (q, &sm) in c.iter_mut().zip(e.iter()) {
                    let gv = if *q == 0.0 {
                        0.0
                    } else {
                        (1.0 - beta) * *q * (sm - kk)
                    };
                    *q = gv * scale;
                }
                scatter(out, g.idx, c);
            }
            loss
        }
    }
}
