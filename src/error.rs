//! The error type of every fallible kernel and control.

use std::fmt;

/// What is wrong with the arguments of a kldiv kernel, or why a call could not finish.
///
/// # Example
/// ```
/// use ndarray::{array, Array1};
/// let x = array![-1.0_f64, -2.0, -3.0];
/// let t = array![0.5_f64, 0.5];
/// let err = kldiv::kl_div_sum(x.view(), t.view(), false).unwrap_err();
/// assert!(matches!(err, kldiv::Error::Broadcast { .. }));
/// assert_eq!(
///     err.to_string(),
///     "input of shape (3,) and target of shape (2,) do not broadcast together"
/// );
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
    /// Student and teacher logits whose vocabularies (last axes) differ or whose rows (the
    /// other axes) do not broadcast, or logits without an axis.
    LogitsShape {
        /// The shape of the student's logits.
        student: Vec<usize>,
        /// The shape of the teacher's logits.
        teacher: Vec<usize>,
    },
    /// An output view does not have the shape the result needs.
    OutputShape {
        /// The shape the result has.
        expected: Vec<usize>,
        /// The shape of the output view that was given.
        actual: Vec<usize>,
    },
    /// The logical number of elements does not fit in `isize`.
    TooLarge,
    /// Not the name of a reduction (see [`crate::Reduction`]'s `FromStr`).
    Reduction(String),
    /// An argument (`grad_output`) does not broadcast to the loss's shape.
    NotBroadcastable {
        /// The argument's name.
        name: String,
        /// Its shape.
        shape: Vec<usize>,
        /// The loss's shape.
        to: Vec<usize>,
    },
    /// Some elements of an output share memory (a stride of 0 on an axis longer than 1, or
    /// axes whose strides overlap): threads would write them at once.
    SelfOverlap {
        /// The output's name (`out`, `grad_input`, ...).
        name: String,
        /// Its shape.
        shape: Vec<usize>,
        /// Its strides, in elements.
        strides: Vec<isize>,
    },
    /// An output shares memory with another operand (judged on the memory ranges they span).
    Overlap {
        /// The output's name.
        output: String,
        /// The other operand's name.
        other: String,
    },
    /// A kernel needs more scratch memory than could be allocated.
    OutOfMemory {
        /// How many bytes it asked for.
        bytes: usize,
    },
    /// More threads were asked for than [`crate::runtime::MAX_THREADS`].
    TooManyThreads {
        /// The number asked for.
        requested: usize,
    },
    /// The operating system would not start the pool's threads.
    ThreadStart(String),
    /// An argument out of its range (a temperature, a β, ...), said in words.
    Argument(String),
    /// The call was stopped by its interrupt check (see [`crate::runtime::with_interrupt`]); outputs
    /// written so far hold partial results.
    Interrupted,
}

/// A shape (or strides) as NumPy and PyTorch users write it: `(3, 4)`, `(5,)`, `()`.
struct Shape<'a, T>(&'a [T]);

impl<T: fmt::Display> fmt::Display for Shape<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            [n] => write!(f, "({n},)"),
            dims => {
                write!(f, "(")?;
                for (i, n) in dims.iter().enumerate() {
                    write!(f, "{}{n}", if i > 0 { ", " } else { "" })?;
                }
                write!(f, ")")
            }
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Broadcast { input, target } => write!(
                f,
                "input of shape {} and target of shape {} do not broadcast together",
                Shape(input),
                Shape(target)
            ),
            Error::LogitsShape { student, teacher } => write!(
                f,
                "student_logits of shape {} and teacher_logits of shape {} do not match: the \
                 last axes (the vocabulary) must be equal, and the others (the rows) broadcast",
                Shape(student),
                Shape(teacher)
            ),
            Error::OutputShape { expected, actual } => write!(
                f,
                "output has shape {} but the result has shape {}",
                Shape(actual),
                Shape(expected)
            ),
            Error::TooLarge => write!(f, "the broadcast shape has more elements than fit in isize"),
            Error::Reduction(name) => {
                write!(f, "reduction must be one of 'none'")?;
                for r in crate::Reduction::ALL {
                    write!(f, ", '{}'", r.name())?;
                }
                write!(f, "; got '{name}'")
            }
            Error::NotBroadcastable { name, shape, to } => write!(
                f,
                "{name} of shape {} does not broadcast to the loss's shape {}",
                Shape(shape),
                Shape(to)
            ),
            Error::SelfOverlap {
                name,
                shape,
                strides,
            } => write!(
                f,
                "{name} (shape {}, strides {} in elements) has elements that \
                 share memory, or axes whose strides interleave; write to an array whose \
                 elements are distinct (a new or contiguous one)",
                Shape(shape),
                Shape(strides)
            ),
            Error::Overlap { output, other } => write!(
                f,
                "{output} overlaps {other} in memory; pass a separate array"
            ),
            Error::OutOfMemory { bytes } => write!(
                f,
                "kldiv needs {bytes} bytes of scratch memory for this call, more than could be \
                 allocated"
            ),
            Error::TooManyThreads { requested } => write!(
                f,
                "{requested} threads asked for; kldiv runs on at most {} threads",
                crate::runtime::MAX_THREADS
            ),
            Error::ThreadStart(why) => write!(f, "kldiv could not start its threads: {why}"),
            Error::Argument(why) => write!(f, "{why}"),
            Error::Interrupted => write!(f, "the kldiv call was interrupted"),
        }
    }
}

impl std::error::Error for Error {}
