//! The Python boundary (feature `python`): the extension module `kldiv._kldiv`.
//!
//! Thin on purpose: the Python package (`python/kldiv/`) converts arguments (`asarray`,
//! dtypes, float16) and checks `out=` arrays; the rules live here, in the crate, and are
//! exposed to it ([`divisor`], [`broadcast_shape`], [`check_reduction`], [`is_plain_pair`],
//! [`check_outputs`], `MAX_DIMS`, `MAX_THREADS`). The kernels take same-dtype (float32 or
//! float64, chosen here: `by_dtype!`), aligned, native-order arrays of any strides, release
//! the GIL and run (see [`run`]: Ctrl-C stops them, and interpreter exit waits for them);
//! `empty` allocates their results (see [`pool`]).

use std::ffi::c_void;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use numpy::ndarray::{ArrayViewD, ArrayViewMutD, IxDyn};
use numpy::npyffi::{get_type_object, NpyTypes, PY_ARRAY_API};
use numpy::{
    Element, PyArrayDescr, PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn,
    PyReadwriteArrayDyn, PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyMemoryError, PyRuntimeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyString};

use crate::{Error, Float, Reduction};

type In<'py, T> = PyReadonlyArrayDyn<'py, T>;
type Out<'py, T> = PyReadwriteArrayDyn<'py, T>;

/// The Python exception for a kernel's error: `MemoryError`, `RuntimeError` (threads that
/// would not start, a call cancelled at shutdown), `ValueError` (the arguments).
fn py_error(e: Error) -> PyErr {
    match e {
        Error::OutOfMemory { .. } => PyMemoryError::new_err(e.to_string()),
        Error::ThreadStart(_) => PyRuntimeError::new_err(e.to_string()),
        Error::Interrupted => PyRuntimeError::new_err("kldiv: the call was interrupted"),
        _ => PyValueError::new_err(e.to_string()),
    }
}

/// Set by [`shutdown`]: kernel calls of other threads than the main one stop and never return.
static CLOSED: AtomicBool = AtomicBool::new(false);
/// Calls between their start in [`run`] and their return to Python (the GIL taken back).
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
/// `threading.main_thread().ident`: the one thread whose signal handlers Python runs.
static MAIN_THREAD: AtomicUsize = AtomicUsize::new(0);

/// Runs a kernel with the GIL released: every kernel call of the module goes through here.
///
/// On the main thread the kernel checks for signals (Ctrl-C) about every 100 ms (see
/// [`crate::runtime::with_interrupt`]) and stops with the exception their handlers raise.
///
/// Interpreter exit: once Python finalizes, a thread that takes the GIL back is ended by
/// `pthread_exit`, whose unwinding through these Rust frames aborts the process. So
/// [`shutdown`] (at `atexit`, before finalization) waits until no call is between here and its
/// return to Python; calls of other threads (daemon threads) still running then stop at their
/// next check, and those and any later ones park for good with the GIL released, as daemon
/// threads do in Python 3.14: the process exits around them. This is enough because no other
/// code of the module lets the GIL go: results never come from NumPy's zeroed allocation
/// ([`empty_of`]), and the lazy set-ups that run Python code are made at import (in `_kldiv`).
fn run<R: Send>(py: Python<'_>, kernel: impl FnOnce() -> Result<R, Error> + Send) -> PyResult<R> {
    // SAFETY: `PyThread_get_thread_ident` only reads the calling thread's id.
    let main = unsafe { pyo3::ffi::PyThread_get_thread_ident() } as usize
        == MAIN_THREAD.load(Ordering::Relaxed);
    if main {
        // The thread that finalizes: never in a call when `shutdown` runs.
        let raised: Mutex<Option<PyErr>> = Mutex::new(None);
        let interrupted = || match Python::attach(|py| py.check_signals()) {
            Ok(()) => false,
            Err(e) => {
                *raised.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                true
            }
        };
        let result = py.detach(|| crate::runtime::with_interrupt(interrupted, kernel));
        return result.map_err(|e| match raised.into_inner() {
            Ok(Some(raised)) if e == Error::Interrupted => raised,
            _ => py_error(e),
        });
    }
    struct Done;
    impl Drop for Done {
        fn drop(&mut self) {
            IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
        }
    }
    fn park_forever() -> ! {
        loop {
            std::thread::park();
        }
    }
    // Under the GIL, as `shutdown` sets CLOSED: a call either counts itself in first (and
    // `shutdown` waits for it), or sees CLOSED.
    if CLOSED.load(Ordering::SeqCst) {
        py.detach(park_forever);
    }
    IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
    let _done = Done; // dropped once the GIL is held again
    let result = py.detach(|| {
        let result = crate::runtime::with_interrupt(|| CLOSED.load(Ordering::Relaxed), kernel);
        if CLOSED.load(Ordering::SeqCst) {
            IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
            park_forever();
        }
        result
    });
    result.map_err(py_error)
}

/// Readies kernel calls for interpreter exit (Python's `atexit`; see [`run`]): calls of other
/// threads stop, and this returns once none is left between its start and its return to
/// Python. The main thread's later calls (in other `atexit` functions) run as before.
#[pyfunction]
fn shutdown(py: Python<'_>) {
    CLOSED.store(true, Ordering::SeqCst);
    py.detach(|| {
        while IN_FLIGHT.load(Ordering::SeqCst) > 0 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    })
}

/// The float64 sum of the loss terms of two arrays of `T`, not rounded.
fn sum_of<T: Float + Element>(
    py: Python<'_>,
    x: In<'_, T>,
    t: In<'_, T>,
    log_target: bool,
) -> PyResult<f64> {
    let (x, t) = (x.as_array(), t.as_array());
    run(py, || crate::kl_div_sum(x, t, log_target))
}

/// The most dimensions rust-numpy takes (it panics beyond; NumPy 2 allows 64). The Python side
/// drops axes of length 1 to get there (`_Prepared.view`); exposed to it as `MAX_DIMS`.
const MAX_DIMS: usize = 32;

/// Whether `input` and `target` are two arrays the kernels take as they are: exactly
/// `numpy.ndarray`, of one native float32 or float64 dtype, one shape of at most [`MAX_DIMS`]
/// dimensions, aligned (the test [`reduce_plain`] makes).
#[pyfunction]
fn is_plain_pair(input: &Bound<'_, PyAny>, target: &Bound<'_, PyAny>) -> bool {
    fn pair<T: Element>(x: &Bound<'_, PyAny>, t: &Bound<'_, PyAny>) -> bool {
        matches!((plain::<T>(x), plain::<T>(t)), (Some(x), Some(t)) if x.shape() == t.shape())
    }
    pair::<f32>(input, target) || pair::<f64>(input, target)
}

/// `kl_div`'s common case in one call: "sum" or "batchmean" of two arrays as the kernels take
/// them, without the Python checks (W4, 1000 float32 elements: about half the time of a call).
///
/// Returns the loss as a NumPy scalar of the arrays' dtype, or `None` unless `input` and
/// `target` are both exactly `numpy.ndarray`, aligned, of one native float32 or float64 dtype
/// and one shape of at most [`MAX_DIMS`] dimensions, `reduction` is the str "sum" or
/// "batchmean", and `log_target` a bool. On `None` the Python side checks, converts and
/// broadcasts as usual and raises its errors: this path adds no behaviour of its own, and
/// gives the bits of [`sum`] divided by the reduction's [`divisor`], rounded.
#[pyfunction]
fn reduce_plain<'py>(
    py: Python<'py>,
    input: &Bound<'py, PyAny>,
    target: &Bound<'py, PyAny>,
    reduction: &Bound<'py, PyAny>,
    log_target: &Bound<'py, PyAny>,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    let Ok(log_target) = log_target.cast_exact::<PyBool>() else {
        return Ok(None);
    };
    let Ok(reduction) = reduction.cast_exact::<PyString>() else {
        return Ok(None);
    };
    // (`str::to_str` is not in the limited API of Python 3.9; these compare interned strings.)
    let reduction = if PyAnyMethods::eq(reduction.as_any(), intern!(py, "batchmean"))? {
        Reduction::BatchMean
    } else if PyAnyMethods::eq(reduction.as_any(), intern!(py, "sum"))? {
        Reduction::Sum
    } else {
        return Ok(None);
    };
    let log_target = log_target.is_true();
    if let (Some(x), Some(t)) = (plain::<f32>(input), plain::<f32>(target)) {
        reduce_pair(py, x, t, reduction, log_target)
    } else if let (Some(x), Some(t)) = (plain::<f64>(input), plain::<f64>(target)) {
        reduce_pair(py, x, t, reduction, log_target)
    } else {
        Ok(None)
    }
}

/// `a` as an array of `T` if it is exactly a `numpy.ndarray` of native `T`, aligned, of at most
/// [`MAX_DIMS`] dimensions (see [`reduce_plain`]).
fn plain<'a, 'py, T: Element>(a: &'a Bound<'py, PyAny>) -> Option<&'a Bound<'py, PyArrayDyn<T>>> {
    // SAFETY: reads a pointer from NumPy's C-API table, loaded (or loading) under the GIL.
    let ndarray = unsafe { get_type_object(a.py(), NpyTypes::PyArray_Type) };
    if a.get_type().as_type_ptr() != ndarray {
        return None; // subclasses (masked arrays, matrices, ...) go the long way
    }
    let a = a.cast::<PyArrayDyn<T>>().ok()?;
    (a.is_aligned() && a.ndim() <= MAX_DIMS).then_some(a)
}

/// [`reduce_plain`] for two plain arrays of `T`: `None` if their shapes differ or one is
/// borrowed mutably by a kernel now running.
fn reduce_pair<'py, T: Float + Element>(
    py: Python<'py>,
    x: &Bound<'py, PyArrayDyn<T>>,
    t: &Bound<'py, PyArrayDyn<T>>,
    reduction: Reduction,
    log_target: bool,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    if x.shape() != t.shape() {
        return Ok(None);
    }
    let divisor = reduction.divisor(x.shape(), t.shape()).map_err(py_error)?;
    let (Ok(x), Ok(t)) = (x.try_readonly(), t.try_readonly()) else {
        return Ok(None);
    };
    let value = T::from_f64(sum_of(py, x, t, log_target)? / divisor);
    numpy_scalar(py, value).map(Some)
}

/// `value` as a NumPy scalar (`numpy.float32` or `numpy.float64`), made by NumPy's C API
/// without a call back into Python.
fn numpy_scalar<T: Element>(py: Python<'_>, mut value: T) -> PyResult<Bound<'_, PyAny>> {
    let descr = PyArrayDescr::of::<T>(py);
    let data = (&mut value as *mut T).cast::<c_void>();
    // SAFETY: `data` points to one `T`, which `descr` describes; PyArray_Scalar copies it (no
    // base object), borrows `descr`, and returns a new reference or NULL with an exception set.
    unsafe {
        let scalar = PY_ARRAY_API.PyArray_Scalar(py, data, descr.as_dtype_ptr(), ptr::null_mut());
        Bound::from_owned_ptr_or_err(py, scalar)
    }
}

/// Runs `$body` with `$t` the element type of the float32 or float64 array `$array` (a
/// `TypeError` for any other): the one place the bindings choose a kernel's dtype. The other
/// arrays of the call are extracted as arrays of `$t` (a `TypeError` if they are not).
macro_rules! by_dtype {
    ($array:expr, $t:ident => $body:expr) => {{
        let dtype = $array.dtype();
        if dtype.is_equiv_to(&numpy::dtype::<f32>($array.py())) {
            type $t = f32;
            $body
        } else if dtype.is_equiv_to(&numpy::dtype::<f64>($array.py())) {
            type $t = f64;
            $body
        } else {
            Err(pyo3::exceptions::PyTypeError::new_err(format!(
                "the kernels take float32 or float64 arrays, not {dtype}"
            )))
        }
    }};
}

/// The float64 sum of the loss terms, not rounded (for sums over several calls).
#[pyfunction]
fn sum(
    input: &Bound<'_, PyUntypedArray>,
    target: &Bound<'_, PyAny>,
    log_target: bool,
) -> PyResult<f64> {
    by_dtype!(input, T => sum_of::<T>(input.py(), input.extract()?, target.extract()?, log_target))
}

/// The sum of both arrays' values with kldiv's threads: the benchmarks' read floor (see
/// `kldiv bench`), no kernel over these arrays can be faster.
#[pyfunction]
fn read_sum(input: &Bound<'_, PyUntypedArray>, target: &Bound<'_, PyAny>) -> PyResult<f64> {
    by_dtype!(input, T => {
        let (x, t): (In<'_, T>, In<'_, T>) = (input.extract()?, target.extract()?);
        let (x, t) = (x.as_array(), t.as_array());
        run(input.py(), || crate::loss::read_sum(x, t))
    })
}

/// The loss terms written into `out`.
#[pyfunction]
fn terms(
    input: &Bound<'_, PyUntypedArray>,
    target: &Bound<'_, PyAny>,
    out: &Bound<'_, PyAny>,
    log_target: bool,
) -> PyResult<()> {
    by_dtype!(input, T => {
        let (x, t): (In<'_, T>, In<'_, T>) = (input.extract()?, target.extract()?);
        let mut out: Out<'_, T> = out.extract()?;
        let (x, t, o) = (x.as_array(), t.as_array(), out.as_array_mut());
        run(input.py(), || crate::kl_div_terms_into(x, t, o, log_target))
    })
}

/// The gradients for `grad_output / divisor` that are asked for (outputs that are not None),
/// written into `grad_input` and `grad_target`.
#[pyfunction]
#[pyo3(signature = (grad_output, divisor, input, target, grad_input, grad_target, log_target))]
fn backward(
    grad_output: &Bound<'_, PyAny>,
    divisor: f64,
    input: &Bound<'_, PyUntypedArray>,
    target: &Bound<'_, PyAny>,
    grad_input: Option<&Bound<'_, PyAny>>,
    grad_target: Option<&Bound<'_, PyAny>>,
    log_target: bool,
) -> PyResult<()> {
    by_dtype!(input, T => {
        let (g, x, t): (In<'_, T>, In<'_, T>, In<'_, T>) =
            (grad_output.extract()?, input.extract()?, target.extract()?);
        let mut gx: Option<Out<'_, T>> = grad_input.map(|a| a.extract()).transpose()?;
        let mut gt: Option<Out<'_, T>> = grad_target.map(|a| a.extract()).transpose()?;
        let (g, x, t) = (g.as_array(), x.as_array(), t.as_array());
        let (gx, gt) = (gx.as_mut().map(|a| a.as_array_mut()), gt.as_mut().map(|a| a.as_array_mut()));
        run(input.py(), || {
            crate::grad::backward_into(g, divisor, x, t, gx, gt, log_target)
        })
    })
}

/// The float64 sum of the terms (not rounded), with the input gradient for `1 / divisor`
/// written in the same pass.
#[pyfunction]
fn sum_and_grad(
    input: &Bound<'_, PyUntypedArray>,
    target: &Bound<'_, PyAny>,
    divisor: f64,
    grad_input: &Bound<'_, PyAny>,
    log_target: bool,
) -> PyResult<f64> {
    by_dtype!(input, T => {
        let (x, t): (In<'_, T>, In<'_, T>) = (input.extract()?, target.extract()?);
        let mut gx: Out<'_, T> = grad_input.extract()?;
        let (x, t, gx) = (x.as_array(), t.as_array(), gx.as_array_mut());
        run(input.py(), || crate::grad::fused_sum(x, t, divisor, gx, log_target))
    })
}

/// The loss terms and the input gradient (for ones) in one pass.
#[pyfunction]
fn terms_and_grad(
    input: &Bound<'_, PyUntypedArray>,
    target: &Bound<'_, PyAny>,
    loss: &Bound<'_, PyAny>,
    grad_input: &Bound<'_, PyAny>,
    log_target: bool,
) -> PyResult<()> {
    by_dtype!(input, T => {
        let (x, t): (In<'_, T>, In<'_, T>) = (input.extract()?, target.extract()?);
        let (mut l, mut gx): (Out<'_, T>, Out<'_, T>) = (loss.extract()?, grad_input.extract()?);
        let (x, t) = (x.as_array(), t.as_array());
        let (l, gx) = (l.as_array_mut(), gx.as_array_mut());
        run(input.py(), || crate::kl_div_terms_and_grad_into(x, t, l, gx, log_target))
    })
}

/// An element type of logits as NumPy holds it: `f32`, `f64`, or the `uint16` bits of a
/// bfloat16 or float16 value.
trait PyLogit: crate::Logit {
    /// The NumPy element type of its arrays.
    type Np: Element;
    /// A view of those arrays as this type (the same memory).
    fn view(v: ArrayViewD<'_, Self::Np>) -> ArrayViewD<'_, Self>;
    /// A mutable view likewise.
    fn view_mut(v: ArrayViewMutD<'_, Self::Np>) -> ArrayViewMutD<'_, Self>;
}

macro_rules! py_logit {
    ($t:ty, $np:ty, $how:literal) => {
        impl PyLogit for $t {
            type Np = $np;
            fn view(v: ArrayViewD<'_, $np>) -> ArrayViewD<'_, $t> {
                // SAFETY: `$t` is `$np` itself or a `repr(transparent)` wrapper of it ($how):
                // the same size, alignment and valid bit patterns; the view keeps the borrow.
                unsafe { v.raw_view().cast::<$t>().deref_into_view() }
            }
            fn view_mut(mut v: ArrayViewMutD<'_, $np>) -> ArrayViewMutD<'_, $t> {
                // SAFETY: as above, and the mutable borrow moves into the new view.
                unsafe { v.raw_view_mut().cast::<$t>().deref_into_view_mut() }
            }
        }
    };
}
py_logit!(f32, f32, "itself");
py_logit!(f64, f64, "itself");
py_logit!(crate::Bf16, u16, "a wrapper");
py_logit!(crate::F16, u16, "a wrapper");

/// `$go!(A, B)` for the element types of two logit kinds ("float32", "float64", "bfloat16",
/// "float16") that compute in one type; a `TypeError` for others.
macro_rules! by_logit_kinds {
    ($a:expr, $b:expr, $go:ident) => {{
        use crate::{Bf16, F16};
        match ($a, $b) {
            ("float64", "float64") => $go!(f64, f64),
            ("float32", "float32") => $go!(f32, f32),
            ("float32", "bfloat16") => $go!(f32, Bf16),
            ("float32", "float16") => $go!(f32, F16),
            ("bfloat16", "float32") => $go!(Bf16, f32),
            ("bfloat16", "bfloat16") => $go!(Bf16, Bf16),
            ("bfloat16", "float16") => $go!(Bf16, F16),
            ("float16", "float32") => $go!(F16, f32),
            ("float16", "bfloat16") => $go!(F16, Bf16),
            ("float16", "float16") => $go!(F16, F16),
            (a, b) => Err(pyo3::exceptions::PyTypeError::new_err(format!(
                "logits of kinds {a} and {b} do not compute in one type (float64 goes with \
                 float64)"
            ))),
        }
    }};
}

/// What a call of [`logits`] asks for, less the arrays.
struct LogitsCall<'a> {
    loss: crate::LogitsLoss<'a>,
    reduction: Option<crate::LogitsReduction>,
    grad_output: f64,
}

/// [`logits`] for student logits of `S` and teacher logits of `T`.
#[allow(clippy::too_many_arguments)]
fn logits_of<S: PyLogit, T: PyLogit<C = S::C>>(
    py: Python<'_>,
    student: &Bound<'_, PyAny>,
    teacher: &Bound<'_, PyAny>,
    call: LogitsCall<'_>,
    rows_out: Option<&Bound<'_, PyAny>>,
    grad: Option<&Bound<'_, PyAny>>,
    grad_rows: Option<&Bound<'_, PyAny>>,
) -> PyResult<(f64, f64)> {
    let (s, t): (In<'_, S::Np>, In<'_, T::Np>) = (student.extract()?, teacher.extract()?);
    let mut rows: Option<Out<'_, f64>> = rows_out.map(|a| a.extract()).transpose()?;
    let mut g: Option<Out<'_, S::Np>> = grad.map(|a| a.extract()).transpose()?;
    let go: Option<In<'_, f64>> = grad_rows.map(|a| a.extract()).transpose()?;
    let (s, t) = (S::view(s.as_array()), T::view(t.as_array()));
    let rows = match rows.as_mut() {
        Some(r) => Some(r.as_slice_mut().map_err(|_| {
            PyValueError::new_err("kldiv: the rows' losses go to a contiguous array")
        })?),
        None => None,
    };
    let incoming = match &go {
        Some(a) => crate::logits::GradOutput::Rows(a.as_array()),
        None => crate::logits::GradOutput::Scalar(call.grad_output),
    };
    let grad = g
        .as_mut()
        .map(|g| (S::view_mut(g.as_array_mut()), incoming));
    run(py, || {
        crate::logits::logits_loss(s, t, &call.loss, call.reduction, rows, grad)
    })
}

/// A loss from logits (see the crate's `logits` module), in float64, not rounded: the reduced
/// loss, or for `reduction="none"` the rows' `w_i L_i` written into `rows_out` (and their
/// sum returned); and the rows' weight `Σ w_i` (see [`logits_reduce`]). With `grad`, the gradient with respect to the student's logits for an
/// incoming gradient of `grad_output` (`grad_rows`, one a row, for "none") is written into
/// it. Kinds are "float32", "float64", "bfloat16" or "float16" (the last two as `uint16`
/// arrays of their bits); the student's and the teacher's must compute in one type.
#[pyfunction]
#[pyo3(signature = (student, student_kind, teacher, teacher_kind, divergence, beta,
    temperature, labels, ignore_index, weights, reduction, rows_out, grad, grad_output,
    grad_rows))]
#[allow(clippy::too_many_arguments)]
fn logits(
    py: Python<'_>,
    student: &Bound<'_, PyAny>,
    student_kind: &str,
    teacher: &Bound<'_, PyAny>,
    teacher_kind: &str,
    divergence: &str,
    beta: f64,
    temperature: f64,
    labels: Option<&Bound<'_, PyAny>>,
    ignore_index: i64,
    weights: Option<&Bound<'_, PyAny>>,
    reduction: &str,
    rows_out: Option<&Bound<'_, PyAny>>,
    grad: Option<&Bound<'_, PyAny>>,
    grad_output: f64,
    grad_rows: Option<&Bound<'_, PyAny>>,
) -> PyResult<(f64, f64)> {
    let divergence = divergence_of(divergence, beta)?;
    let reduction = logits_reduction(reduction)?;
    let labels: Option<In<'_, i64>> = labels.map(|a| a.extract()).transpose()?;
    let weights: Option<In<'_, f64>> = weights.map(|a| a.extract()).transpose()?;
    let mut loss = crate::LogitsLoss::new(divergence).temperature(temperature);
    if let Some(l) = &labels {
        loss = loss.labels(l.as_array(), ignore_index);
    }
    if let Some(w) = &weights {
        loss = loss.weights(w.as_array());
    }
    let call = LogitsCall {
        loss,
        reduction,
        grad_output,
    };
    let (s, t) = (student, teacher);
    macro_rules! go {
        ($s:ty, $t:ty) => {
            logits_of::<$s, $t>(py, s, t, call, rows_out, grad, grad_rows)
        };
    }
    by_logit_kinds!(student_kind, teacher_kind, go)
}

/// The fields of a llama.cpp `.kld` header (see [`crate::KldHeader`]): `(n_ctx, n_vocab,
/// n_chunk, row_len, first, scored, rows_offset)` of a file of `file_len` bytes starting
/// with `head`.
#[pyfunction]
fn kld_header(
    head: &[u8],
    file_len: u64,
) -> PyResult<(usize, usize, usize, usize, usize, usize, u64)> {
    let h = crate::KldHeader::parse(head, file_len).map_err(py_error)?;
    Ok((
        h.n_ctx,
        h.n_vocab,
        h.n_chunk,
        h.row_len(),
        h.first(),
        h.scored(),
        h.rows_offset(),
    ))
}

/// The header bytes of a `.kld` file for these sizes (checked), and its total length.
#[pyfunction]
fn kld_header_bytes(n_ctx: usize, n_vocab: usize, n_chunk: usize) -> PyResult<(Vec<u8>, u64)> {
    let h = crate::KldHeader::new(n_ctx, n_vocab, n_chunk).map_err(py_error)?;
    Ok((h.to_bytes().to_vec(), h.file_len()))
}

/// `.kld` rows (see [`crate::kld_base_row`]) of float32 logits `(rows, V)` into `out`
/// `(rows, row_len)`, `uint16`.
#[pyfunction]
fn kld_base_rows(logits: In<'_, f32>, out: Out<'_, u16>) -> PyResult<()> {
    let what = "kld_base_rows";
    let [vocab, row_len] = kld_sizes(what, logits.shape(), out.shape())?;
    row_pairs(what, logits, out, [vocab, row_len], crate::kld_base_row)
}

/// The log-probabilities of `.kld` rows `stored` (`(rows, row_len)`, `uint16`) into `out`
/// (`(rows, V)`, float32; see [`crate::kld_log_probs`]).
#[pyfunction]
fn kld_log_probs(stored: In<'_, u16>, out: Out<'_, f32>) -> PyResult<()> {
    let what = "kld_log_probs";
    let [vocab, row_len] = kld_sizes(what, out.shape(), stored.shape())?;
    row_pairs(what, stored, out, [row_len, vocab], crate::kld_log_probs)
}

/// `[V, row_len]` of logits of shape `(rows, V)` that go with `.kld` rows of shape `(rows,
/// row_len)`, or a `ValueError` naming `what`.
fn kld_sizes(what: &str, logits: &[usize], stored: &[usize]) -> PyResult<[usize; 2]> {
    match (logits, stored) {
        ([r, v], [r2, w]) if r == r2 && *v > 0 && *w == crate::KldHeader::row_len_of(*v) => {
            Ok([*v, *w])
        }
        _ => Err(PyValueError::new_err(format!(
            "{what}: logits of shape {logits:?} do not fit .kld rows of shape {stored:?}"
        ))),
    }
}

/// `f` on each row of `input` and the same row of `out` (contiguous arrays of rows of `lens`
/// elements, their shapes checked by the caller), or a `ValueError` naming `what`.
fn row_pairs<A: Element, B: Element>(
    what: &str,
    input: In<'_, A>,
    mut out: Out<'_, B>,
    lens: [usize; 2],
    f: impl Fn(&[A], &mut [B]),
) -> PyResult<()> {
    let bad = || PyValueError::new_err(format!("{what}: the arrays must be contiguous"));
    let a = input.as_slice().map_err(|_| bad())?;
    let b = out.as_slice_mut().map_err(|_| bad())?;
    for (a, b) in a.chunks_exact(lens[0]).zip(b.chunks_exact_mut(lens[1])) {
        f(a, b);
    }
    Ok(())
}

/// The per-token outputs of a comparison, as contiguous NumPy arrays.
type PerTokenOut<'py> = (
    Out<'py, f64>,
    Out<'py, f64>,
    Out<'py, u8>,
    Out<'py, f64>,
    Out<'py, f64>,
);

/// Runs `f` on [`crate::PerToken`] views of `outs`.
fn with_per_token<R: Send>(
    py: Python<'_>,
    outs: &mut PerTokenOut<'_>,
    f: impl FnOnce(&mut crate::PerToken<'_>) -> Result<R, Error> + Send,
) -> PyResult<R> {
    let (a, b, c, d, e) = outs;
    fn one(x: ArrayViewMutD<'_, f64>) -> Option<numpy::ndarray::ArrayViewMut1<'_, f64>> {
        x.into_dimensionality().ok()
    }
    let bad = || PyValueError::new_err("kldiv: the per-token outputs are one-dimensional");
    let (a, b, d, e) = (
        one(a.as_array_mut()).ok_or_else(bad)?,
        one(b.as_array_mut()).ok_or_else(bad)?,
        one(d.as_array_mut()).ok_or_else(bad)?,
        one(e.as_array_mut()).ok_or_else(bad)?,
    );
    let c = c
        .as_array_mut()
        .into_dimensionality::<numpy::ndarray::Ix1>()
        .map_err(|_| bad())?;
    let mut out = crate::PerToken::from_views(a, b, c, d, e).map_err(py_error)?;
    run(py, || f(&mut out))
}

/// Scores logits `other` (`(rows, V)` of `kind` "float32", "bfloat16" or "float16") against
/// a `.kld` base's rows `base` (`uint16`) with the next tokens `next`, into the per-token
/// outputs (see [`crate::compare_kld_rows`]).
#[pyfunction]
fn compare_kld(
    py: Python<'_>,
    other: &Bound<'_, PyAny>,
    kind: &str,
    base: In<'_, u16>,
    next: In<'_, i64>,
    mut outs: PerTokenOut<'_>,
) -> PyResult<()> {
    use numpy::ndarray::{Ix1, Ix2};
    let two = |e| PyValueError::new_err(format!("kldiv.compare: {e}"));
    let b = base.as_array().into_dimensionality::<Ix2>().map_err(two)?;
    let n = next.as_array().into_dimensionality::<Ix1>().map_err(two)?;
    macro_rules! go {
        ($t:ty) => {{
            let o: In<'_, <$t as PyLogit>::Np> = other.extract()?;
            let o = <$t>::view(o.as_array())
                .into_dimensionality::<Ix2>()
                .map_err(two)?;
            with_per_token(py, &mut outs, |out| crate::compare_kld_rows(o, b, n, out))
        }};
    }
    match kind {
        "float32" => go!(f32),
        "bfloat16" => go!(crate::Bf16),
        "float16" => go!(crate::F16),
        k => Err(PyValueError::new_err(format!(
            "kldiv.compare: logits of kind {k}"
        ))),
    }
}

/// Scores logits `other` against a base's logits `base` exactly (see
/// [`crate::compare_logits_rows`]); both of one compute type.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn compare_logits(
    py: Python<'_>,
    base: &Bound<'_, PyAny>,
    base_kind: &str,
    other: &Bound<'_, PyAny>,
    other_kind: &str,
    next: In<'_, i64>,
    mut outs: PerTokenOut<'_>,
) -> PyResult<()> {
    use numpy::ndarray::{Ix1, Ix2};
    let two = |e| PyValueError::new_err(format!("kldiv.compare: {e}"));
    let n = next.as_array().into_dimensionality::<Ix1>().map_err(two)?;
    macro_rules! go {
        ($b:ty, $o:ty) => {{
            let (bb, oo): (In<'_, <$b as PyLogit>::Np>, In<'_, <$o as PyLogit>::Np>) =
                (base.extract()?, other.extract()?);
            let b = <$b>::view(bb.as_array())
                .into_dimensionality::<Ix2>()
                .map_err(two)?;
            let o = <$o>::view(oo.as_array())
                .into_dimensionality::<Ix2>()
                .map_err(two)?;
            with_per_token(py, &mut outs, |out| {
                crate::compare_logits_rows(b, o, n, out)
            })
        }};
    }
    by_logit_kinds!(base_kind, other_kind, go)
}

/// The summary of per-token values (see [`crate::Summary`]) as a dict.
#[pyfunction]
fn compare_summary<'py>(
    py: Python<'py>,
    kld: In<'_, f64>,
    delta_p: In<'_, f64>,
    top: In<'_, u8>,
    nll: In<'_, f64>,
    nll_base: In<'_, f64>,
    llama: bool,
) -> PyResult<Bound<'py, pyo3::types::PyDict>> {
    let sl = |a: &In<'_, f64>| a.as_slice().map(|s| s.to_vec());
    let bad = |_| PyValueError::new_err("kldiv: the per-token values must be contiguous");
    let (k, d, n, b) = (
        sl(&kld).map_err(bad)?,
        sl(&delta_p).map_err(bad)?,
        sl(&nll).map_err(bad)?,
        sl(&nll_base).map_err(bad)?,
    );
    let t = top.as_slice().map_err(bad)?;
    if [d.len(), t.len(), n.len(), b.len()]
        .iter()
        .any(|&m| m != k.len())
    {
        return Err(PyValueError::new_err(
            "kldiv: the per-token values have one length",
        ));
    }
    let s = crate::Summary::new(&k, &d, t, &n, &b, llama);
    let out = pyo3::types::PyDict::new(py);
    out.set_item("count", s.count)?;
    out.set_item("ppl", s.ppl)?;
    out.set_item("ppl_base", s.ppl_base)?;
    out.set_item("cor", s.cor)?;
    out.set_item("log_ppl_ratio", s.log_ppl_ratio)?;
    out.set_item("ppl_ratio", s.ppl_ratio)?;
    out.set_item("ppl_diff", s.ppl_diff)?;
    out.set_item("kld", s.kld)?;
    out.set_item("kld_quantiles", s.kld_quantiles)?;
    out.set_item("delta_p", s.delta_p)?;
    out.set_item("delta_p_quantiles", s.delta_p_quantiles)?;
    out.set_item("delta_p_rms", s.delta_p_rms)?;
    out.set_item("same_top", s.same_top)?;
    out.set_item("top5", s.top5)?;
    out.set_item("top10", s.top10)?;
    Ok(out)
}

/// A reduction's name as the logits' losses take it (`None`: "none").
fn logits_reduction(name: &str) -> PyResult<Option<crate::LogitsReduction>> {
    use crate::LogitsReduction;
    Ok(match name {
        "none" => None,
        "sum" => Some(LogitsReduction::Sum),
        "mean" => Some(LogitsReduction::Mean),
        "batchmean" => Some(LogitsReduction::BatchMean),
        other => return Err(py_error(Error::Reduction(other.to_string()))),
    })
}

/// The reduced loss from the sums `Σ w_i L_i` and `Σ w_i` of several calls of [`logits`] with
/// `reduction="sum"` (the command line's blocks of rows), for a student of `student_shape`.
#[pyfunction]
fn logits_reduce(
    reduction: &str,
    total: f64,
    wsum: f64,
    student_shape: Vec<usize>,
) -> PyResult<f64> {
    Ok(match logits_reduction(reduction)? {
        Some(r) => crate::logits::reduce_sums(r, total, wsum, &student_shape),
        None => total,
    })
}

/// The divergence a name and β mean (the names `kldiv._logits` passes).
fn divergence_of(name: &str, beta: f64) -> PyResult<crate::Divergence> {
    use crate::Divergence;
    Ok(match name {
        "forward" => Divergence::Forward,
        "reverse" => Divergence::Reverse,
        "jsd" => Divergence::Jsd(beta),
        "cross_entropy" => Divergence::CrossEntropy,
        other => {
            return Err(PyValueError::new_err(format!(
                "unknown divergence {other:?}"
            )))
        }
    })
}

/// Every check of a loss from logits that does not read the data (shapes, temperature, β), for
/// the PyTorch composite that computes where the kernels do not; returns the rows' shape.
#[pyfunction]
#[pyo3(signature = (student, teacher, labels, weights, temperature, divergence, beta))]
fn logits_check(
    student: Vec<usize>,
    teacher: Vec<usize>,
    labels: Option<Vec<usize>>,
    weights: Option<Vec<usize>>,
    temperature: f64,
    divergence: &str,
    beta: f64,
) -> PyResult<Vec<usize>> {
    crate::logits::check_call(
        &student,
        &teacher,
        labels.as_deref(),
        weights.as_deref(),
        temperature,
        divergence_of(divergence, beta)?,
    )
    .map_err(py_error)
}

/// The shape of a loss from logits' gradient for logits of these shapes (the rows broadcast,
/// then the vocabulary), or the crate's `ValueError`.
#[pyfunction]
fn logits_shape(student: Vec<usize>, teacher: Vec<usize>) -> PyResult<Vec<usize>> {
    let (mut shape, vocab) = crate::logits::rows_of(&student, &teacher).map_err(py_error)?;
    shape.push(vocab);
    Ok(shape)
}

/// What `reduction` divides the sum by for an input and a target of these shapes
/// ([`Reduction::divisor`]; 1 for "none"). Raises the error of an unknown reduction.
#[pyfunction]
fn divisor(reduction: &str, input_shape: Vec<usize>, target_shape: Vec<usize>) -> PyResult<f64> {
    if reduction == "none" {
        return Ok(1.0);
    }
    let reduction: Reduction = reduction.parse().map_err(py_error)?;
    reduction
        .divisor(&input_shape, &target_shape)
        .map_err(py_error)
}

/// Raises `ValueError` with the error of an unknown reduction unless `reduction` is one of
/// "none", "sum", "mean", "batchmean".
#[pyfunction]
fn check_reduction(reduction: &Bound<'_, PyAny>) -> PyResult<()> {
    match reduction.extract::<String>() {
        Ok(name) if name == "none" || name.parse::<Reduction>().is_ok() => Ok(()),
        Ok(name) => Err(py_error(Error::Reduction(name))),
        Err(_) => Err(py_error(Error::Reduction(reduction.repr()?.to_string()))),
    }
}

/// The broadcast shape of `input` and `target` (NumPy rules, any number of dimensions), or the
/// `ValueError` that names both shapes.
#[pyfunction]
fn broadcast_shape(input: Vec<usize>, target: Vec<usize>) -> PyResult<Vec<usize>> {
    crate::loss::common_shape(&input, &target).map_err(py_error)
}

/// Raises `ValueError` if an output (`(name, array)`) has elements that share memory, or shares
/// memory with another output or with one of `inputs` (judged on the memory ranges they span):
/// the check every kernel makes of its operands, with the caller's names for them.
#[pyfunction]
fn check_outputs(
    inputs: Vec<(String, Bound<'_, PyUntypedArray>)>,
    outputs: Vec<(String, Bound<'_, PyUntypedArray>)>,
) -> PyResult<()> {
    struct Layout {
        addr: usize,
        shape: Vec<usize>,
        strides: Vec<isize>,
        size: usize,
        name: String,
    }
    impl Layout {
        fn of((name, a): (String, Bound<'_, PyUntypedArray>)) -> Layout {
            let size = a.dtype().itemsize().max(1);
            Layout {
                // SAFETY: reads the data pointer of a live array object, under the GIL.
                addr: unsafe { (*a.as_array_ptr()).fields.data } as usize,
                shape: a.shape().to_vec(),
                strides: a.strides().iter().map(|&s| s / size as isize).collect(),
                size,
                name,
            }
        }
        fn span(&self) -> crate::walk::Span<'_> {
            crate::walk::Span {
                addr: self.addr,
                shape: &self.shape,
                strides: &self.strides,
                size: self.size,
                name: &self.name,
            }
        }
    }
    let ins: Vec<Layout> = inputs.into_iter().map(Layout::of).collect();
    let outs: Vec<Layout> = outputs.into_iter().map(Layout::of).collect();
    let ins: Vec<_> = ins.iter().map(Layout::span).collect();
    let outs: Vec<_> = outs.iter().map(Layout::span).collect();
    crate::walk::check_outputs(&ins, &outs).map_err(py_error)
}

/// The memory of large results, kept for the next result once NumPy has freed the array.
///
/// A fresh large array costs a page fault per page on first write (the kernel zeroes each page:
/// about 0.35 ns per float32 element here, as much as computing the loss). Results of at least
/// [`MIN_BYTES`](pool::MIN_BYTES) therefore live in [`Buffer`]s: when NumPy frees such an
/// array, its memory waits here (at most [`MAX_BYTES`](pool::MAX_BYTES) in all, the oldest
/// freed first) and the next result of a similar size reuses it, as a loop that computes a
/// loss and its gradient step after step does.
mod pool {
    use std::sync::Mutex;

    /// Results smaller than this are NumPy's own arrays (malloc recycles them already).
    pub(super) const MIN_BYTES: usize = 1 << 20;
    /// The most memory the pool keeps.
    pub(super) const MAX_BYTES: usize = 256 << 20;

    static FREE: Mutex<Vec<Box<[u64]>>> = Mutex::new(Vec::new());

    fn free() -> std::sync::MutexGuard<'static, Vec<Box<[u64]>>> {
        FREE.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Memory for `words` words: the smallest kept buffer that holds them and is at most twice
    /// as large, else new zeroed memory (whose pages cost nothing until written).
    pub(super) fn take(words: usize) -> Box<[u64]> {
        let kept = {
            let mut free = free();
            let best = (0..free.len())
                .filter(|&i| free[i].len() >= words && free[i].len() / 2 <= words)
                .min_by_key(|&i| free[i].len());
            best.map(|i| free.remove(i))
        };
        kept.unwrap_or_else(|| vec![0u64; words].into_boxed_slice())
    }

    /// Keeps `buffer` for a later [`take`], dropping the oldest kept buffers beyond
    /// [`MAX_BYTES`].
    pub(super) fn give_back(buffer: Box<[u64]>) {
        let dropped: Vec<Box<[u64]>> = {
            let mut free = free();
            free.push(buffer);
            let mut bytes: usize = free.iter().map(|b| b.len() * 8).sum();
            let mut n = 0;
            while bytes > MAX_BYTES {
                bytes -= free[n].len() * 8;
                n += 1;
            }
            free.drain(..n).collect()
        };
        drop(dropped); // freed outside the lock
    }
}

/// The owner of a large result's memory: the NumPy array's base object. Dropped by Python
/// after the array, when it hands the memory back to the [`pool`].
#[pyclass(frozen, module = "kldiv._kldiv")]
struct Buffer {
    /// From `Box::into_raw`; freed (handed back) once, in `drop`.
    memory: *mut [u64],
}

// SAFETY: a `Buffer` owns its memory alone, as a `Box` would; Rust never touches the memory
// through it, only NumPy does, through the array whose base it is, until Python drops it.
unsafe impl Send for Buffer {}
// SAFETY: as above; `Buffer` has no methods that read or write the memory.
unsafe impl Sync for Buffer {}

impl Drop for Buffer {
    fn drop(&mut self) {
        // SAFETY: `memory` came from `Box::into_raw` and `drop` runs once.
        pool::give_back(unsafe { Box::from_raw(self.memory) })
    }
}

/// An array of `shape` for a result (C order, contents unspecified: the kernels overwrite it).
///
/// Never NumPy's zeroed allocation (`zeros`): it lets the GIL go around `calloc` (above 1 KiB),
/// and a daemon thread that takes the GIL back once Python finalizes is ended inside this
/// function, which aborts the process (see [`run`]). Small results are NumPy's plain arrays,
/// zeroed here; large ones come from the [`pool`].
fn empty_of<'py, T: Element + Copy>(
    py: Python<'py>,
    shape: Vec<usize>,
) -> PyResult<Bound<'py, PyArrayDyn<T>>> {
    let too_large =
        || PyMemoryError::new_err(format!("cannot allocate an array of shape {shape:?}"));
    let len = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(too_large)?;
    let bytes = len
        .checked_mul(std::mem::size_of::<T>())
        .filter(|&b| b <= isize::MAX as usize)
        .ok_or_else(too_large)?;
    if bytes < pool::MIN_BYTES {
        // SAFETY: a new C-order array of `len` elements of `T` (NumPy's malloc, which keeps the
        // GIL), each set to zero before anything reads it: every bit pattern is a valid f32,
        // f64 or u16.
        unsafe {
            let array = PyArrayDyn::<T>::new(py, IxDyn(&shape), false);
            ptr::write_bytes(array.data(), 0, len);
            return Ok(array);
        }
    }
    // rust-numpy takes at most MAX_DIMS dimensions (NumPy 2 allows 64): beyond, NumPy reshapes
    // a flat array.
    let flat = [len];
    let dims: &[usize] = if shape.len() <= MAX_DIMS {
        &shape
    } else {
        &flat
    };
    let memory = Box::into_raw(pool::take(bytes.div_ceil(8)));
    let data = memory as *mut T;
    let buffer = Bound::new(py, Buffer { memory })?;
    // SAFETY: `data` is 8-byte aligned (it holds u64s), so aligned for f32, f64 and u16; the
    // memory holds at least `len` elements, all initialised (zeros or an earlier result's
    // values), and every bit pattern is a valid f32, f64 or u16.
    let view = unsafe { ArrayViewD::from_shape_ptr(IxDyn(dims), data) };
    // SAFETY: `buffer` owns the memory and becomes the array's base: NumPy keeps it alive as
    // long as the array, and nothing reallocates the memory meanwhile.
    let array = unsafe { PyArrayDyn::borrow_from_array(&view, buffer.into_any()) };
    if dims.len() == shape.len() {
        return Ok(array);
    }
    let shaped = array.call_method1(intern!(py, "reshape"), (shape,))?; // a view, by NumPy
    Ok(shaped.cast_into()?)
}

/// An array of `shape` and `dtype` (float32 or float64; uint16 for the bits of a bfloat16 or
/// float16 gradient) for a result, C order, contents unspecified (see [`pool`]).
#[pyfunction]
fn empty<'py>(
    py: Python<'py>,
    shape: Vec<usize>,
    dtype: &Bound<'py, PyArrayDescr>,
) -> PyResult<Bound<'py, PyAny>> {
    if dtype.is_equiv_to(&numpy::dtype::<f32>(py)) {
        empty_of::<f32>(py, shape).map(Bound::into_any)
    } else if dtype.is_equiv_to(&numpy::dtype::<f64>(py)) {
        empty_of::<f64>(py, shape).map(Bound::into_any)
    } else if dtype.is_equiv_to(&numpy::dtype::<u16>(py)) {
        empty_of::<u16>(py, shape).map(Bound::into_any)
    } else {
        Err(pyo3::exceptions::PyTypeError::new_err(format!(
            "results are float32 or float64 (uint16: 16-bit floats' bits), not {dtype}"
        )))
    }
}

/// Sets the size of kldiv's thread pool (0: the default).
#[pyfunction]
fn set_num_threads(n: usize) -> PyResult<()> {
    crate::runtime::set_num_threads(n).map_err(py_error)
}

/// The size of kldiv's thread pool.
#[pyfunction]
fn get_num_threads() -> usize {
    crate::runtime::get_num_threads()
}

/// The SIMD level the kernels run at: "scalar", "avx2" or "avx512".
#[pyfunction]
fn simd_level() -> &'static str {
    crate::runtime::simd_level().name()
}

/// The best SIMD level this CPU supports.
#[pyfunction]
fn detected_simd_level() -> &'static str {
    crate::runtime::detected_simd_level().name()
}

#[pymodule]
fn _kldiv(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(sum, m)?)?;
    m.add_function(wrap_pyfunction!(read_sum, m)?)?;
    m.add_function(wrap_pyfunction!(reduce_plain, m)?)?;
    m.add_function(wrap_pyfunction!(terms, m)?)?;
    m.add_function(wrap_pyfunction!(backward, m)?)?;
    m.add_function(wrap_pyfunction!(sum_and_grad, m)?)?;
    m.add_function(wrap_pyfunction!(terms_and_grad, m)?)?;
    m.add_function(wrap_pyfunction!(logits, m)?)?;
    m.add_function(wrap_pyfunction!(logits_shape, m)?)?;
    m.add_function(wrap_pyfunction!(logits_check, m)?)?;
    m.add_function(wrap_pyfunction!(logits_reduce, m)?)?;
    m.add_function(wrap_pyfunction!(empty, m)?)?;
    m.add_function(wrap_pyfunction!(divisor, m)?)?;
    m.add_function(wrap_pyfunction!(check_reduction, m)?)?;
    m.add_function(wrap_pyfunction!(broadcast_shape, m)?)?;
    m.add_function(wrap_pyfunction!(is_plain_pair, m)?)?;
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(get_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(simd_level, m)?)?;
    m.add_function(wrap_pyfunction!(detected_simd_level, m)?)?;
    m.add_function(wrap_pyfunction!(check_outputs, m)?)?;
    m.add_function(wrap_pyfunction!(shutdown, m)?)?;
    m.add_function(wrap_pyfunction!(kld_header, m)?)?;
    m.add_function(wrap_pyfunction!(kld_header_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(kld_base_rows, m)?)?;
    m.add_function(wrap_pyfunction!(kld_log_probs, m)?)?;
    m.add_function(wrap_pyfunction!(compare_kld, m)?)?;
    m.add_function(wrap_pyfunction!(compare_logits, m)?)?;
    m.add_function(wrap_pyfunction!(compare_summary, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("MAX_DIMS", MAX_DIMS)?;
    m.add("MAX_THREADS", crate::runtime::MAX_THREADS)?;
    let names = Reduction::ALL.map(Reduction::name);
    m.add(
        "REDUCTIONS",
        std::iter::once("none").chain(names).collect::<Vec<_>>(),
    )?;
    // NumPy's C API, the type of `Buffer` and rust-numpy's borrow flags are set up on first
    // use, running Python code (which may let the GIL go: see `run`): so here, not in a call.
    drop(empty_of::<f32>(m.py(), vec![1])?.try_readwrite()?);
    m.py().get_type::<Buffer>();
    let main: usize = m
        .py()
        .import("threading")?
        .call_method0("main_thread")?
        .getattr("ident")?
        .extract()?;
    MAIN_THREAD.store(main, Ordering::Relaxed);
    Ok(())
}
