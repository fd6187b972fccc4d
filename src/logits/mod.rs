//! Losses from logits (distillation): the forward and reverse KL divergence and the generalized
//! Jensen-Shannon divergence between a teacher's and a student's softmax, row by row, with a
//! temperature, row weights and the gradient with respect to the student's logits.
//!
//! Per row of `V` logits, with `a = z / T` in the compute type `C` (`f32`, or `f64` for `f64`
//! logits): `s = a_s - lse(a_s)`, `t = a_t - lse(a_t)` (log-probabilities; `lse` in `f64`),
//! `Q = e^s` (student), `P = e^t` (teacher), `d = t - s`, and
//!
//! | divergence | row loss `L` | `dL/dz_s` |
//! | --- | --- | --- |
//! | forward `KL(P‖Q)` | `Σ P d` | `(Q - P) / T` |
//! | reverse `KL(Q‖P)` | `-Σ Q d` | `Q (-d - L) / T` |
//! | JSD(β), `M = βP + (1-β)Q`, `m = ln M` | `β Σ P (t - m) + (1-β) Σ Q (s - m)` | `(1-β) Q (s - m - K) / T`, `K = Σ Q (s - m)` |
//!
//! JSD at β = 0 is the forward KL and at β = 1 the reverse KL, exactly (as TRL defines it). A
//! term whose weighting probability is 0 is 0, whatever the other side's logit (masked
//! vocabulary entries, logits of -inf, give no NaN); a forward KL with `P > 0` where `Q = 0` is
//! +inf. A row whose logits are all -inf, or hold a NaN, has a NaN loss.
//!
//! Each row is one task of the pool: its logits are read once into two scratch rows of `C`,
//! which the row's passes (maxima, sums of exponentials, loss and gradient) then read from the
//! cache. Row sums are `f64`, in fixed lanes, and the rows' losses are combined in a fixed
//! tree: the bits do not depend on the thread count, the SIMD level or the layout.

use std::sync::atomic::{AtomicU64, Ordering};

use ndarray::{ArrayView, ArrayViewD, ArrayViewMut, Dimension};

mod row;

use row::{Gathered, GradRow, RowKernel, Sums};

use crate::error::Error;
use crate::float::Float;
use crate::parallel::{for_each_task, tree};
use crate::simd::{dispatch, Kernel};
use crate::walk::{broadcast_shape, check_outputs, Span};

/// The divergence between the teacher's distribution `P` and the student's `Q`.
///
/// # Example
/// ```
/// use kldiv::Divergence;
/// assert_eq!(Divergence::Jsd(0.0).normalized(), Divergence::Forward);
/// assert_eq!(Divergence::Jsd(1.0).normalized(), Divergence::Reverse);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Divergence {
    /// `KL(P‖Q)`: the teacher's distribution against the student's (distillation's usual loss).
    Forward,
    /// `KL(Q‖P)`: mode-seeking.
    Reverse,
    /// `β KL(P‖M) + (1-β) KL(Q‖M)` with `M = βP + (1-β)Q`, `β` in `[0, 1]`.
    Jsd(f64),
    /// The cross-entropy `H(P, Q) = -Σ P ln Q`: the forward KL plus the teacher's entropy, with
    /// the forward KL's gradient (torchtune's `ForwardKLLoss` computes this).
    CrossEntropy,
}

impl Divergence {
    /// The JSD at β = 0 and β = 1 as the forward and reverse KL they are defined to be.
    ///
    /// # Example
    /// ```
    /// assert_eq!(kldiv::Divergence::Jsd(0.5).normalized(), kldiv::Divergence::Jsd(0.5));
    /// ```
    pub fn normalized(self) -> Divergence {
        match self {
            Divergence::Jsd(0.0) => Divergence::Forward,
            Divergence::Jsd(1.0) => Divergence::Reverse,
            d => d,
        }
    }
}

/// A loss from logits: which divergence, at which temperature, and which rows count.
///
/// Row `i` counts with weight `w_i = weights[i]` (1 without weights), times 0 where
/// `labels[i] == ignore_index`. `labels` and `weights` have the rows' shape (the logits' shape
/// without its last axis).
///
/// # Example
/// ```
/// use kldiv::{Divergence, LogitsLoss};
/// let loss = LogitsLoss::new(Divergence::Forward).temperature(2.0);
/// assert_eq!(loss.divergence, Divergence::Forward);
/// ```
#[derive(Clone, Debug)]
pub struct LogitsLoss<'a> {
    /// The divergence.
    pub divergence: Divergence,
    /// The temperature `T` (positive and finite): the logits are divided by it.
    pub temperature: f64,
    /// Per-row labels and the label of rows that do not count (PyTorch's `ignore_index`).
    pub labels: Option<(ArrayViewD<'a, i64>, i64)>,
    /// Per-row weights.
    pub weights: Option<ArrayViewD<'a, f64>>,
}

impl<'a> LogitsLoss<'a> {
    /// `divergence` at temperature 1, every row counting with weight 1.
    ///
    /// # Example
    /// ```
    /// let loss = kldiv::LogitsLoss::new(kldiv::Divergence::Reverse);
    /// assert_eq!(loss.temperature, 1.0);
    /// ```
    pub fn new(divergence: Divergence) -> Self {
        LogitsLoss {
            divergence,
            temperature: 1.0,
            labels: None,
            weights: None,
        }
    }

    /// With temperature `temperature`.
    ///
    /// # Example
    /// ```
    /// let loss = kldiv::LogitsLoss::new(kldiv::Divergence::Forward).temperature(2.0);
    /// assert_eq!(loss.temperature, 2.0);
    /// ```
    pub fn temperature(mut self, temperature: f64) -> Self {
        self.temperature = temperature;
        self
    }

    /// With `labels`, rows labelled `ignore_index` not counting.
    ///
    /// # Example
    /// ```
    /// use ndarray::array;
    /// let labels = array![3_i64, -100, 7];
    /// let loss = kldiv::LogitsLoss::new(kldiv::Divergence::Forward).labels(labels.view().into_dyn(), -100);
    /// assert!(loss.labels.is_some());
    /// ```
    pub fn labels(mut self, labels: ArrayViewD<'a, i64>, ignore_index: i64) -> Self {
        self.labels = Some((labels, ignore_index));
        self
    }

    /// With per-row `weights`.
    ///
    /// # Example
    /// ```
    /// use ndarray::array;
    /// let w = array![1.0, 0.5];
    /// let loss = kldiv::LogitsLoss::new(kldiv::Divergence::Forward).weights(w.view().into_dyn());
    /// assert!(loss.weights.is_some());
    /// ```
    pub fn weights(mut self, weights: ArrayViewD<'a, f64>) -> Self {
        self.weights = Some(weights);
        self
    }
}

/// How the rows' weighted losses `w_i L_i` are reduced to one number.
///
/// # Example
/// ```
/// assert_ne!(kldiv::LogitsReduction::Mean, kldiv::LogitsReduction::BatchMean);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LogitsReduction {
    /// `Σ w_i L_i`.
    Sum,
    /// `Σ w_i L_i / Σ w_i`: the mean over the rows that count (0 when none counts).
    Mean,
    /// `Σ w_i L_i / student_logits.shape()[0]` (PyTorch's `kl_div` convention).
    BatchMean,
}

/// An element type of logits: `f32`, `f64`, [`Bf16`] or [`F16`], computed in `f32` (`f64` for
/// `f64`). Sealed.
///
/// # Example
/// ```
/// use kldiv::{Logit, F16};
/// assert_eq!(F16::narrow(0.5).widen(), 0.5_f32); // 0.5 is a float16
/// assert_eq!(<f64 as Logit>::narrow(0.1), 0.1);
/// ```
pub trait Logit: Copy + Send + Sync + 'static + sealed::Sealed {
    /// The type the kernels compute in.
    type C: Float;
    /// The value in the compute type (exact).
    fn widen(self) -> Self::C;
    /// `v` rounded to this type (for gradients).
    fn narrow(v: f64) -> Self;
    /// The row as the compute type, where this type is it (`f32`, `f64`): read in place.
    fn as_compute(row: &[Self]) -> Option<&[Self::C]>;
    /// The row as the compute type, where this type is it: written in place.
    fn as_compute_mut(row: &mut [Self]) -> Option<&mut [Self::C]>;
}

/// A bfloat16 value, as its bits (PyTorch's `torch.bfloat16`).
///
/// # Example
/// ```
/// use kldiv::{Bf16, Logit};
/// assert_eq!(Bf16(0x3f80).widen(), 1.0_f32);
/// assert_eq!(Bf16::narrow(1.0).0, 0x3f80);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(transparent)]
pub struct Bf16(pub u16);

/// An IEEE half-precision value, as its bits (NumPy's `float16`, PyTorch's `torch.float16`).
///
/// # Example
/// ```
/// use kldiv::{F16, Logit};
/// assert_eq!(F16(0x3c00).widen(), 1.0_f32);
/// assert_eq!(F16::narrow(-2.0).0, 0xc000);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(transparent)]
pub struct F16(pub u16);

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
    impl Sealed for super::Bf16 {}
    impl Sealed for super::F16 {}
}

/// The compute types are their own logits: read and written in place.
macro_rules! compute_logit {
    ($t:ty) => {
        impl Logit for $t {
            type C = $t;
            #[inline(always)]
            fn widen(self) -> $t {
                self
            }
            #[inline(always)]
            fn narrow(v: f64) -> $t {
                <$t as Float>::from_f64(v)
            }
            fn as_compute(row: &[$t]) -> Option<&[$t]> {
                Some(row)
            }
            fn as_compute_mut(row: &mut [$t]) -> Option<&mut [$t]> {
                Some(row)
            }
        }
    };
}
compute_logit!(f32);
compute_logit!(f64);

impl Logit for Bf16 {
    type C = f32;
    fn as_compute(_: &[Bf16]) -> Option<&[f32]> {
        None
    }
    fn as_compute_mut(_: &mut [Bf16]) -> Option<&mut [f32]> {
        None
    }
    #[inline(always)]
    fn widen(self) -> f32 {
        f32::from_bits((self.0 as u32) << 16)
    }
    /// Rounded to nearest even from the `f32` nearest `v` (NaN stays NaN).
    #[inline(always)]
    fn narrow(v: f64) -> Bf16 {
        let bits = (v as f32).to_bits();
        if (v as f32).is_nan() {
            return Bf16(0x7fc0);
        }
        let round = 0x7fff + ((bits >> 16) & 1);
        Bf16((bits.wrapping_add(round) >> 16) as u16)
    }
}

impl Logit for F16 {
    type C = f32;
    fn as_compute(_: &[F16]) -> Option<&[f32]> {
        None
    }
    fn as_compute_mut(_: &mut [F16]) -> Option<&mut [f32]> {
        None
    }
    #[inline(always)]
    fn widen(self) -> f32 {
        let h = self.0 as u32;
        let sign = (h & 0x8000) << 16;
        let exp = (h >> 10) & 0x1f;
        let mant = h & 0x3ff;
        let bits = if exp == 0x1f {
            sign | 0x7f80_0000 | (mant << 13) // inf, NaN
        } else if exp != 0 {
            sign | ((exp + 112) << 23) | (mant << 13) // normal: rebias 15 -> 127
        } else {
            // zero or subnormal: mant * 2^-24, exact in f32
            let v = (mant as f32) * f32::from_bits(0x3380_0000);
            return if sign != 0 { -v } else { v };
        };
        f32::from_bits(bits)
    }
    /// Rounded to nearest even from the `f32` nearest `v`.
    #[inline(always)]
    fn narrow(v: f64) -> F16 {
        let f = v as f32;
        let bits = f.to_bits();
        let sign = ((bits >> 16) & 0x8000) as u16;
        let a = f.abs();
        if a.is_nan() {
            return F16(sign | 0x7e00);
        }
        if a >= 65520.0 {
            return F16(sign | 0x7c00); // beyond the largest half after rounding: inf
        }
        if a < f32::from_bits(0x3880_0000) {
            // below 2^-14: a subnormal half, a multiple of 2^-24 (rounded to nearest even)
            let m = (a * f32::from_bits(0x4b80_0000)).round_ties_even() as u16; // a * 2^24
            return F16(sign | m);
        }
        let abits = a.to_bits();
        let round = 0xfff + ((abits >> 13) & 1);
        let r = abits.wrapping_add(round);
        F16(sign | (((r >> 13) - ((127 - 15) << 10)) as u16))
    }
}

/// One row's logits widened to the compute type, as a [`Kernel`] (a strided row is gathered).
struct Load<'a, T: Logit> {
    ptr: *const T,
    stride: isize,
    out: &'a mut [T::C],
}

impl<T: Logit> Kernel for Load<'_, T> {
    type Output = ();
    fn log_target(&self) -> bool {
        false
    }
    #[inline(always)]
    fn run<const LOG_TARGET: bool>(self) {
        let n = self.out.len();
        if self.stride == 1 {
            // SAFETY: `ptr` and `stride` describe a row of a view borrowed for the call (see
            // `Operand::row`), `n` elements long and contiguous here.
            let src = unsafe { std::slice::from_raw_parts(self.ptr, n) };
            for (o, &v) in self.out.iter_mut().zip(src) {
                *o = v.widen();
            }
        } else {
            for (i, o) in self.out.iter_mut().enumerate() {
                // SAFETY: as above: element `i` of the row lies in the view.
                *o = unsafe { *self.ptr.offset(i as isize * self.stride) }.widen();
            }
        }
    }
}

/// One row of a gradient rounded to its type and stored, as a [`Kernel`].
struct Store<'a, G: Logit> {
    src: &'a [G::C],
    ptr: *mut G,
    stride: isize,
}

impl<G: Logit> Kernel for Store<'_, G> {
    type Output = ();
    fn log_target(&self) -> bool {
        false
    }
    #[inline(always)]
    fn run<const LOG_TARGET: bool>(self) {
        let n = self.src.len();
        if self.stride == 1 {
            // SAFETY: `ptr` and `stride` describe a row of the output, written by this task
            // alone (see `Operand::row` and `logits_call`), contiguous here.
            let dst = unsafe { std::slice::from_raw_parts_mut(self.ptr, n) };
            for (o, &v) in dst.iter_mut().zip(self.src) {
                *o = G::narrow(v.to_f64());
            }
        } else {
            for (i, &v) in self.src.iter().enumerate() {
                // SAFETY: as above, element `i` of this task's row.
                unsafe { *self.ptr.offset(i as isize * self.stride) = G::narrow(v.to_f64()) };
            }
        }
    }
}

/// An operand of shape `(*rows, V)`, its rows broadcast to the call's rows.
struct Operand<'a, T> {
    ptr: *mut T,
    lead_shape: &'a [usize],
    lead_strides: Vec<isize>,
    stride: isize,
}

// SAFETY: an `Operand` is a view's address and strides; reads through it happen only as the
// view allows (`T: Sync`), writes only to rows that one task owns (see `logits_call`).
unsafe impl<T: Sync> Sync for Operand<'_, T> {}
// SAFETY: as above.
unsafe impl<T: Sync> Send for Operand<'_, T> {}

impl<'a, T> Operand<'a, T> {
    /// `shape`/`strides` of a view whose last axis is the vocabulary, its leading axes
    /// broadcast to `rows` (which they must broadcast to).
    fn new(ptr: *mut T, shape: &[usize], strides: &[isize], rows: &'a [usize]) -> Self {
        let lead = shape.len() - 1;
        let lead_strides = crate::walk::broadcast_strides(&shape[..lead], &strides[..lead], rows);
        Operand {
            ptr,
            lead_shape: rows,
            lead_strides,
            stride: strides[lead],
        }
    }

    /// The address of row `r` (C order over the rows).
    fn row(&self, mut r: usize) -> *mut T {
        let mut off = 0isize;
        for (&n, &s) in self.lead_shape.iter().zip(&self.lead_strides).rev() {
            off += (r % n) as isize * s;
            r /= n;
        }
        self.ptr.wrapping_offset(off)
    }
}

/// A thread's scratch rows: the logits where they are not read in place, the `u` of both
/// sides, a temporary row and the gradient where it is not written in place.
struct Scratch<C> {
    s: Vec<C>,
    t: Vec<C>,
    us: Vec<C>,
    ut: Vec<C>,
    tmp: Vec<C>,
    g: Vec<C>,
    terms: Vec<f64>,
    kterms: Vec<f64>,
    flags: Vec<u8>,
    idx: Vec<u32>,
    ls: Vec<u32>,
    lt: Vec<u32>,
    bounds: Vec<row::Bounds>,
    ga: Vec<f64>,
    gb: Vec<f64>,
    gc: Vec<f64>,
    gd: Vec<f64>,
    es: Vec<f64>,
    et: Vec<f64>,
}

impl<C> Default for Scratch<C> {
    fn default() -> Self {
        Scratch {
            s: Vec::new(),
            t: Vec::new(),
            us: Vec::new(),
            ut: Vec::new(),
            tmp: Vec::new(),
            g: Vec::new(),
            terms: Vec::new(),
            kterms: Vec::new(),
            flags: Vec::new(),
            idx: Vec::new(),
            ls: Vec::new(),
            lt: Vec::new(),
            bounds: Vec::new(),
            ga: Vec::new(),
            gb: Vec::new(),
            gc: Vec::new(),
            gd: Vec::new(),
            es: Vec::new(),
            et: Vec::new(),
        }
    }
}

/// Row `r` of `op` in the compute type: in place where it is contiguous in that type, else
/// widened into `buf`.
fn load_row<'b, T: Logit>(
    op: &'b Operand<'_, T>,
    r: usize,
    vocab: usize,
    buf: &'b mut Vec<T::C>,
) -> &'b [T::C] {
    let ptr = op.row(r);
    if op.stride == 1 {
        // SAFETY: row `r` of a view borrowed for the call (see `Operand::row`), `vocab`
        // elements, contiguous; nothing writes to it (outputs do not overlap inputs:
        // `check_outputs`).
        let row = unsafe { std::slice::from_raw_parts(ptr as *const T, vocab) };
        if let Some(c) = T::as_compute(row) {
            return c;
        }
    }
    buf.resize(vocab, Default::default());
    dispatch(Load::<T> {
        ptr,
        stride: op.stride,
        out: buf,
    });
    buf
}

/// The rows' weights `w_i` (see [`LogitsLoss`]), in C order over `rows` (checked by
/// [`check_call`]); `None` when all are 1.
fn row_weights(loss: &LogitsLoss<'_>, rows: &[usize]) -> Option<Vec<f64>> {
    let n: usize = rows.iter().product();
    if loss.labels.is_none() && loss.weights.is_none() {
        return None;
    }
    let mut w = vec![1.0; n];
    if let Some(weights) = &loss.weights {
        let b = weights.broadcast(rows).expect("checked by check_call");
        for (wi, &v) in w.iter_mut().zip(b.iter()) {
            *wi = v;
        }
    }
    if let Some((labels, ignore)) = &loss.labels {
        let b = labels.broadcast(rows).expect("checked by check_call");
        for (wi, &l) in w.iter_mut().zip(b.iter()) {
            if l == *ignore {
                *wi = 0.0;
            }
        }
    }
    Some(w)
}

/// [`Error::NotBroadcastable`] unless an operand of one value a row (`name`: labels, weights,
/// grad_output) of `shape` broadcasts to the rows' shape.
fn spreads_over_rows(name: &str, shape: &[usize], rows: &[usize]) -> Result<(), Error> {
    if crate::walk::broadcasts_to(shape, rows) {
        Ok(())
    } else {
        Err(Error::NotBroadcastable {
            name: name.to_string(),
            shape: shape.to_vec(),
            to: rows.to_vec(),
        })
    }
}

/// Every check of a call that does not read the data: the logits' shapes, the labels' and the
/// weights' shapes, the temperature and β. Returns the rows' shape. Whoever computes a loss
/// from logits by other means (PyTorch's operations on another device) checks with this.
pub(crate) fn check_call(
    student: &[usize],
    teacher: &[usize],
    labels: Option<&[usize]>,
    weights: Option<&[usize]>,
    temperature: f64,
    divergence: Divergence,
) -> Result<Vec<usize>, Error> {
    check_options(temperature, divergence)?;
    let (rows, _) = rows_of(student, teacher)?;
    if let Some(shape) = weights {
        spreads_over_rows("weights", shape, &rows)?;
    }
    if let Some(shape) = labels {
        spreads_over_rows("labels", shape, &rows)?;
    }
    Ok(rows)
}

/// [`check_call`] for a loss and its logits' shapes.
fn checked(
    loss: &LogitsLoss<'_>,
    student: &[usize],
    teacher: &[usize],
) -> Result<Vec<usize>, Error> {
    check_call(
        student,
        teacher,
        loss.labels.as_ref().map(|(l, _)| l.shape()),
        loss.weights.as_ref().map(|w| w.shape()),
        loss.temperature,
        loss.divergence,
    )
}

/// The rows' shape and the vocabulary of a call, after checking the operands' shapes.
pub(crate) fn rows_of(student: &[usize], teacher: &[usize]) -> Result<(Vec<usize>, usize), Error> {
    let mismatch = || Error::LogitsShape {
        student: student.to_vec(),
        teacher: teacher.to_vec(),
    };
    let (Some((&v, s_lead)), Some((&vt, t_lead))) = (student.split_last(), teacher.split_last())
    else {
        return Err(mismatch());
    };
    if v != vt {
        return Err(mismatch());
    }
    let rows = broadcast_shape(s_lead, t_lead).ok_or_else(mismatch)?;
    crate::loss::checked_len(&[rows.iter().product::<usize>(), v])?;
    Ok((rows, v))
}

/// The checks of a loss's options.
fn check_options(temperature: f64, divergence: Divergence) -> Result<(), Error> {
    if !(temperature > 0.0 && temperature.is_finite()) {
        return Err(Error::Argument(format!(
            "temperature must be positive and finite, got {temperature}"
        )));
    }
    if let Divergence::Jsd(b) = divergence {
        if !(0.0..=1.0).contains(&b) {
            return Err(Error::Argument(format!("beta must be in [0, 1], got {b}")));
        }
    }
    Ok(())
}

/// Where a view's elements lie (for [`check_outputs`]).
fn span<'a, T>(ptr: *const T, shape: &'a [usize], strides: &'a [isize], name: &'a str) -> Span<'a> {
    Span {
        addr: ptr as usize,
        shape,
        strides,
        size: std::mem::size_of::<T>(),
        name,
    }
}

/// The gradient of a call: its output and each row's scale (the incoming gradient over the
/// divisor; the row's weight is applied here).
pub(crate) struct GradOut<'a, G> {
    view: ArrayViewMut<'a, G, ndarray::IxDyn>,
    scale: &'a (dyn Fn(usize) -> f64 + Sync),
}

/// Runs a loss from logits over every row: returns `(Σ_i w_i L_i, Σ_i w_i)`, writes `w_i L_i`
/// into `rows_out` (if given, in C order over the rows) and the gradient (if asked).
pub(crate) fn logits_call<S, Tt, G>(
    student: ArrayViewD<'_, S>,
    teacher: ArrayViewD<'_, Tt>,
    loss: &LogitsLoss<'_>,
    rows_out: Option<&mut [f64]>,
    grad: Option<GradOut<'_, G>>,
) -> Result<(f64, f64), Error>
where
    S: Logit,
    Tt: Logit<C = S::C>,
    G: Logit<C = S::C>,
{
    let rows = checked(loss, student.shape(), teacher.shape())?;
    let vocab = student.shape()[student.ndim() - 1];
    let n_rows: usize = rows.iter().product();
    let weights = row_weights(loss, &rows);
    let weight = |r: usize| weights.as_ref().map_or(1.0, |w| w[r]);
    if let Some(out) = &rows_out {
        if out.len() != n_rows {
            return Err(Error::OutputShape {
                expected: rows.clone(),
                actual: vec![out.len()],
            });
        }
    }
    let mut full = rows.clone();
    full.push(vocab);
    let mut grad = grad;
    if let Some(g) = &grad {
        if g.view.shape() != full.as_slice() {
            return Err(Error::OutputShape {
                expected: full.clone(),
                actual: g.view.shape().to_vec(),
            });
        }
        check_outputs(
            &[
                span(
                    student.as_ptr(),
                    student.shape(),
                    student.strides(),
                    "student_logits",
                ),
                span(
                    teacher.as_ptr(),
                    teacher.shape(),
                    teacher.strides(),
                    "teacher_logits",
                ),
            ],
            &[span(
                g.view.as_ptr(),
                g.view.shape(),
                g.view.strides(),
                "grad",
            )],
        )?;
    }
    let s_op = Operand::new(
        student.as_ptr() as *mut S,
        student.shape(),
        student.strides(),
        &rows,
    );
    let t_op = Operand::new(
        teacher.as_ptr() as *mut Tt,
        teacher.shape(),
        teacher.strides(),
        &rows,
    );
    let g_op = grad.as_mut().map(|g| {
        let ptr = g.view.as_mut_ptr();
        let (shape, strides) = (g.view.shape().to_vec(), g.view.strides().to_vec());
        (Operand::new(ptr, &shape, &strides, &rows), g.scale)
    });
    let losses: Vec<AtomicU64> = (0..n_rows).map(|_| AtomicU64::new(0)).collect();
    let inv_t = 1.0 / loss.temperature;
    let divergence = loss.divergence;
    for_each_task(
        n_rows.saturating_mul(vocab),
        n_rows,
        |r, scratch: &mut Scratch<S::C>| {
            let w = weight(r);
            let Scratch {
                s,
                t,
                us,
                ut,
                tmp,
                g,
                terms,
                kterms,
                flags,
                idx,
                ls,
                lt,
                bounds,
                ga,
                gb,
                gc,
                gd,
                es,
                et,
            } = scratch;
            // The gradient's row: in place where it is contiguous in the compute type.
            let mut direct = None;
            if let Some((op, _)) = &g_op {
                if op.stride == 1 {
                    // SAFETY: row `r` of the gradient, `vocab` elements, contiguous, written by
                    // this task alone (rows are tasks; the output does not overlap itself or
                    // the inputs: `check_outputs`).
                    let row = unsafe { std::slice::from_raw_parts_mut(op.row(r), vocab) };
                    direct = G::as_compute_mut(row);
                }
            }
            let in_place = direct.is_some();
            // Its memory, fetched to be written while the row's softmaxes compute.
            let out_row = match &g_op {
                Some((op, _)) if op.stride == 1 => GradRow {
                    ptr: op.row(r) as *const u8,
                    bytes: vocab * std::mem::size_of::<G>(),
                },
                _ => GradRow::NONE,
            };
            let out: &mut [S::C] = match direct {
                Some(row) => row,
                None => {
                    g.resize(vocab, S::C::default());
                    g
                }
            };
            let row_loss = if w == 0.0 {
                // A row that does not count: no loss, a gradient of exact zeros.
                out.fill(S::C::default());
                0.0
            } else {
                let s = load_row(&s_op, r, vocab, s);
                let t = load_row(&t_op, r, vocab, t);
                for b in [&mut *us, &mut *ut, &mut *tmp] {
                    b.resize(vocab, S::C::default());
                }
                terms.resize(vocab.min(row::TILE), 0.0);
                kterms.resize(vocab.min(row::TILE), 0.0);
                flags.resize(vocab, 0);
                dispatch(RowKernel {
                    s,
                    t,
                    us,
                    ut,
                    tmp,
                    out: &mut *out,
                    es,
                    et,
                    sums: Sums {
                        terms,
                        kterms,
                        flags,
                    },
                    gathered: Gathered {
                        idx,
                        bounds,
                        a: ga,
                        b: gb,
                        c: gc,
                        d: gd,
                    },
                    inv_t,
                    divergence,
                    grad_scale: g_op.as_ref().map(|(_, scale)| w * scale(r)),
                    out_row,
                    lists: [ls, lt],
                })
            };
            if let Some((op, _)) = &g_op {
                if !in_place {
                    dispatch(Store::<G> {
                        src: out,
                        ptr: op.row(r),
                        stride: op.stride,
                    });
                }
            }
            losses[r].store((w * row_loss).to_bits(), Ordering::Relaxed);
        },
    )?;
    let wl = |r: usize| f64::from_bits(losses[r].load(Ordering::Relaxed));
    if let Some(out) = rows_out {
        for (r, o) in out.iter_mut().enumerate() {
            *o = wl(r);
        }
    }
    let total = tree(0, n_rows, &mut |r| wl(r));
    let wsum = match &weights {
        None => n_rows as f64,
        Some(w) => tree(0, n_rows, &mut |r| w[r]),
    };
    Ok((total, wsum))
}

/// What `reduction` divides `Σ w_i L_i` by: 1, `Σ w_i` (the mean over the rows that count; the
/// result is 0 when none counts), or the student's first dimension.
fn divisor(reduction: LogitsReduction, wsum: f64, student_shape: &[usize]) -> f64 {
    match reduction {
        LogitsReduction::Sum => 1.0,
        LogitsReduction::Mean => wsum,
        LogitsReduction::BatchMean => student_shape.first().map_or(1.0, |&n| n as f64),
    }
}

/// The reduced loss of a sum `Σ w_i L_i` and a weight `Σ w_i` gathered over several calls (a
/// file streamed a block of rows at a time), for logits whose student has `student_shape`.
#[cfg_attr(not(feature = "python"), allow(dead_code))] // for the command line
pub(crate) fn reduce_sums(
    reduction: LogitsReduction,
    total: f64,
    wsum: f64,
    student_shape: &[usize],
) -> f64 {
    reduced(reduction, total, divisor(reduction, wsum, student_shape))
}

/// `total / divisor`, 0 for a mean over no row.
fn reduced(reduction: LogitsReduction, total: f64, divisor: f64) -> f64 {
    if reduction == LogitsReduction::Mean && divisor == 0.0 {
        0.0
    } else {
        total / divisor
    }
}

/// The reduced loss from logits (see the module docs), in `f64`: round it to the logits' type.
///
/// # Errors
/// [`Error::LogitsShape`] for logits of different vocabularies or rows that do not broadcast,
/// [`Error::NotBroadcastable`] for labels or weights, [`Error::Argument`] for a temperature
/// that is not positive and finite or a β outside `[0, 1]`, and as [`crate::kl_div_sum`].
///
/// # Example
/// ```
/// use kldiv::{kl_div_logits, Divergence, LogitsLoss, LogitsReduction};
/// use ndarray::array;
/// let student = array![[1.0_f32, 2.0, 3.0], [0.0, 0.0, 0.0]];
/// let teacher = array![[1.0_f32, 2.0, 3.0], [3.0, 0.0, 0.0]];
/// let loss = LogitsLoss::new(Divergence::Forward);
/// let l = kl_div_logits(student.view(), teacher.view(), &loss, LogitsReduction::Mean).unwrap();
/// assert!(l > 0.0); // the second row differs
/// ```
pub fn kl_div_logits<S, Tt, D1, D2>(
    student: ArrayView<'_, S, D1>,
    teacher: ArrayView<'_, Tt, D2>,
    loss: &LogitsLoss<'_>,
    reduction: LogitsReduction,
) -> Result<f64, Error>
where
    S: Logit,
    Tt: Logit<C = S::C>,
    D1: Dimension,
    D2: Dimension,
{
    let shape = student.shape().to_vec();
    let (total, wsum) =
        logits_call::<S, Tt, S>(student.into_dyn(), teacher.into_dyn(), loss, None, None)?;
    Ok(reduced(reduction, total, divisor(reduction, wsum, &shape)))
}

/// The rows' weighted losses `w_i L_i` (`reduction="none"`), into `out`, in C order over the
/// rows (the logits' shape without its last axis).
///
/// # Errors
/// As [`kl_div_logits`], and [`Error::OutputShape`] if `out` does not hold one value a row.
///
/// # Example
/// ```
/// use kldiv::{kl_div_logits_rows_into, Divergence, LogitsLoss};
/// use ndarray::array;
/// let s = array![[0.0_f64, 0.0], [0.0, 0.0]];
/// let t = array![[0.0_f64, 0.0], [5.0, 0.0]];
/// let mut rows = [0.0; 2];
/// kl_div_logits_rows_into(s.view(), t.view(), &LogitsLoss::new(Divergence::Reverse), &mut rows)
///     .unwrap();
/// assert_eq!(rows[0], 0.0);
/// assert!(rows[1] > 0.0);
/// ```
pub fn kl_div_logits_rows_into<S, Tt, D1, D2>(
    student: ArrayView<'_, S, D1>,
    teacher: ArrayView<'_, Tt, D2>,
    loss: &LogitsLoss<'_>,
    out: &mut [f64],
) -> Result<(), Error>
where
    S: Logit,
    Tt: Logit<C = S::C>,
    D1: Dimension,
    D2: Dimension,
{
    logits_call::<S, Tt, S>(
        student.into_dyn(),
        teacher.into_dyn(),
        loss,
        Some(out),
        None,
    )
    .map(|_| ())
}

/// The reduced loss from logits and its gradient with respect to `student` (for an incoming
/// gradient of 1), in one pass over each row; the gradient has the broadcast shape of the two
/// logits and the student's type, exactly 0 on rows that do not count.
///
/// # Errors
/// As [`kl_div_logits`], and [`Error::OutputShape`], [`Error::SelfOverlap`] or
/// [`Error::Overlap`] for `grad`.
///
/// # Example
/// ```
/// use kldiv::{kl_div_logits_and_grad_into, Divergence, LogitsLoss, LogitsReduction};
/// use ndarray::{array, Array2};
/// let s = array![[1.0_f32, 0.0, -1.0]];
/// let t = array![[0.0_f32, 0.0, 0.0]];
/// let mut g = Array2::zeros((1, 3));
/// let loss = LogitsLoss::new(Divergence::Forward).temperature(2.0);
/// let l = kl_div_logits_and_grad_into(s.view(), t.view(), &loss, LogitsReduction::Sum,
///     g.view_mut()).unwrap();
/// assert!(l > 0.0);
/// assert!(g[[0, 0]] > 0.0 && g[[0, 2]] < 0.0); // (Q - P) / T
/// ```
pub fn kl_div_logits_and_grad_into<S, Tt, D1, D2, D3>(
    student: ArrayView<'_, S, D1>,
    teacher: ArrayView<'_, Tt, D2>,
    loss: &LogitsLoss<'_>,
    reduction: LogitsReduction,
    grad: ArrayViewMut<'_, S, D3>,
) -> Result<f64, Error>
where
    S: Logit,
    Tt: Logit<C = S::C>,
    D1: Dimension,
    D2: Dimension,
    D3: Dimension,
{
    let g = (grad.into_dyn(), GradOutput::Scalar(1.0));
    Ok(logits_loss(student, teacher, loss, Some(reduction), None, Some(g))?.0)
}

/// The incoming gradient of a loss from logits: a number for a reduced loss, one a row for the
/// rows' losses.
pub(crate) enum GradOutput<'a> {
    Scalar(f64),
    #[cfg_attr(not(feature = "python"), allow(dead_code))] // for reduction="none" in Python
    Rows(ArrayViewD<'a, f64>),
}

/// The loss from logits `reduction` gives (`None`: the rows' losses, into `rows_out`, and their
/// sum is returned), with the gradient for `grad`'s incoming gradient written into it; and
/// `Σ w_i` (for whoever reduces sums of several calls: see [`reduce_sums`]).
pub(crate) fn logits_loss<S, Tt, D1, D2>(
    student: ArrayView<'_, S, D1>,
    teacher: ArrayView<'_, Tt, D2>,
    loss: &LogitsLoss<'_>,
    reduction: Option<LogitsReduction>,
    rows_out: Option<&mut [f64]>,
    grad: Option<(ArrayViewMut<'_, S, ndarray::IxDyn>, GradOutput<'_>)>,
) -> Result<(f64, f64), Error>
where
    S: Logit,
    Tt: Logit<C = S::C>,
    D1: Dimension,
    D2: Dimension,
{
    let shape = student.shape().to_vec();
    // Σ w_i must be known before the gradient is scaled: the weights alone give it.
    let rows = checked(loss, student.shape(), teacher.shape())?;
    let n_rows: usize = rows.iter().product();
    let wsum = row_weights(loss, &rows).map_or(n_rows as f64, |w| tree(0, w.len(), &mut |r| w[r]));
    let div = reduction.map_or(1.0, |r| divisor(r, wsum, &shape));
    let inv = if reduction == Some(LogitsReduction::Mean) && div == 0.0 {
        0.0
    } else {
        1.0 / div
    };
    let (grad, per_row) = match grad {
        None => (None, None),
        Some((view, GradOutput::Scalar(g))) => (Some(view), Some(Err(g * inv))),
        Some((view, GradOutput::Rows(g))) => {
            spreads_over_rows("grad_output", g.shape(), &rows)?;
            let g: Vec<f64> = g
                .broadcast(rows.as_slice())
                .expect("checked")
                .iter()
                .copied()
                .collect();
            (Some(view), Some(Ok(g)))
        }
    };
    let scale = |r: usize| match &per_row {
        Some(Ok(g)) => g[r] * inv,
        Some(Err(g)) => *g,
        None => 0.0,
    };
    let g = grad.map(|view| GradOut {
        view,
        scale: &scale,
    });
    let (total, _) =
        logits_call::<S, Tt, S>(student.into_dyn(), teacher.into_dyn(), loss, rows_out, g)?;
    let value = match reduction {
        Some(r) => reduced(r, total, div),
        None => total,
    };
    Ok((value, wsum))
}
