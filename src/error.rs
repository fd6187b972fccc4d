//! The error type of every fallible kernel.

use std::fmt;

/// What is wrong with the arguments of a kldiv kernel.
///
/// # Example
/// ```
/// use ndarray::{array, Array1};
/// let x = array![-1.0_f64, -2.0, -3.0];
/// let t = array![0.5_f64, 0.5];
/// let err = kldiv::kl_div_sum(x.view(), t.view(), false).unwrap_err();
/// assert!(matches!(err, kldiv::Error::Broadcast { .. }));
/// assert!(err.to_string().contains("[3]") && err.to_string().contains("[2]"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// `input` and `target` do not broadcast to a common shape (NumPy rules).
    Broadcast {
        /// The shape of `input`.
        input: Vec<usize>,
        /// The shape of `target`.
        target: Vec<usize>,
    },
    /// An output view does not have the shape the result needs.
    OutputShape {
        /// The shape the result has.
        expected: Vec<usize>,
        /// The shape of the output view that was given.
        actual: Vec<usize>,
    },
    /// The logical number of elements does not fit in `usize`.
    TooLarge,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Broadcast { input, target } => write!(
                f,
                "input of shape {input:?} and target of shape {target:?} do not broadcast together"
            ),
            Error::OutputShape { expected, actual } => write!(
                f,
                "output has shape {actual:?} but the result has shape {expected:?}"
            ),
            Error::TooLarge => write!(f, "the broadcast shape has more elements than fit in usize"),
        }
    }
}

impl std::error::Error for Error {}
