//! The Python boundary (feature `python`): the extension module `kldiv._kldiv`.
//!
//! Thin on purpose: the Python package (`python/kldiv/`) checks arguments, promotes dtypes,
//! broadcasts and allocates; these functions take same-dtype, aligned, native-order arrays of
//! any strides, release the GIL, and run the kernels.

use numpy::{Element, PyReadonlyArrayDyn, PyReadwriteArrayDyn};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::{Error, Float};

fn value_error(e: Error) -> PyErr {
    PyValueError::new_err(e.to_string())
}

fn sum<T: Float + Element>(
    py: Python<'_>,
    input: PyReadonlyArrayDyn<'_, T>,
    target: PyReadonlyArrayDyn<'_, T>,
    log_target: bool,
) -> PyResult<f64> {
    let (x, t) = (input.as_array(), target.as_array());
    py.detach(|| crate::kl_div_sum(x, t, log_target))
        .map_err(value_error)
}

fn terms<T: Float + Element>(
    py: Python<'_>,
    input: PyReadonlyArrayDyn<'_, T>,
    target: PyReadonlyArrayDyn<'_, T>,
    mut out: PyReadwriteArrayDyn<'_, T>,
    log_target: bool,
) -> PyResult<()> {
    let (x, t, o) = (input.as_array(), target.as_array(), out.as_array_mut());
    py.detach(|| crate::kl_div_terms_into(x, t, o, log_target))
        .map_err(value_error)
}

/// Sum of the float32 loss terms, accumulated in float64.
#[pyfunction]
fn sum_f32(
    py: Python<'_>,
    input: PyReadonlyArrayDyn<'_, f32>,
    target: PyReadonlyArrayDyn<'_, f32>,
    log_target: bool,
) -> PyResult<f64> {
    sum(py, input, target, log_target)
}

/// Sum of the float64 loss terms.
#[pyfunction]
fn sum_f64(
    py: Python<'_>,
    input: PyReadonlyArrayDyn<'_, f64>,
    target: PyReadonlyArrayDyn<'_, f64>,
    log_target: bool,
) -> PyResult<f64> {
    sum(py, input, target, log_target)
}

/// Writes the float32 loss terms into `out`.
#[pyfunction]
fn terms_f32(
    py: Python<'_>,
    input: PyReadonlyArrayDyn<'_, f32>,
    target: PyReadonlyArrayDyn<'_, f32>,
    out: PyReadwriteArrayDyn<'_, f32>,
    log_target: bool,
) -> PyResult<()> {
    terms(py, input, target, out, log_target)
}

/// Writes the float64 loss terms into `out`.
#[pyfunction]
fn terms_f64(
    py: Python<'_>,
    input: PyReadonlyArrayDyn<'_, f64>,
    target: PyReadonlyArrayDyn<'_, f64>,
    out: PyReadwriteArrayDyn<'_, f64>,
    log_target: bool,
) -> PyResult<()> {
    terms(py, input, target, out, log_target)
}

/// Sets the size of kldiv's thread pool (0: the default).
#[pyfunction]
fn set_num_threads(n: usize) {
    crate::set_num_threads(n)
}

/// The size of kldiv's thread pool.
#[pyfunction]
fn get_num_threads() -> usize {
    crate::get_num_threads()
}

#[pymodule]
fn _kldiv(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(sum_f32, m)?)?;
    m.add_function(wrap_pyfunction!(sum_f64, m)?)?;
    m.add_function(wrap_pyfunction!(terms_f32, m)?)?;
    m.add_function(wrap_pyfunction!(terms_f64, m)?)?;
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(get_num_threads, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
