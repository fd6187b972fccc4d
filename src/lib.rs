//! # kldiv
//!
//! PyTorch's Kullback-Leibler divergence loss (`torch.nn.functional.kl_div`, R torch's
//! `nn_kl_div_loss`) on the CPU: exact, deterministic and fast.
//!
//! `input` holds log-probabilities `x`, `target` holds probabilities `t` (or log-probabilities
//! with `log_target`), and the loss term is `t * (log t - x)`, written as PyTorch writes it
//! (see [`term`]). The kernels take `ndarray` views of any dimension and strides (C, Fortran,
//! strided, negative, broadcast), broadcast them together under NumPy rules, and make one
//! fused pass over the data in parallel, without temporary arrays.
//!
//! Sums are accumulated in `f64` over fixed blocks combined in a fixed tree: the result has the
//! same bits whatever the thread count, the memory layout or the SIMD level, which is chosen at
//! run time (AVX-512, AVX2 or the baseline; see [`simd_level`]).
//!
//! ```
//! use kldiv::{kl_div, Reduction};
//! use ndarray::array;
//!
//! let target = array![[0.7_f32, 0.2, 0.1], [0.1, 0.1, 0.8]];
//! let input = array![[0.6_f32, 0.3, 0.1], [0.2, 0.2, 0.6]].mapv(f32::ln);
//! let loss = kl_div(input.view(), target.view(), Reduction::BatchMean, false).unwrap();
//! assert!(loss > 0.0);
//! ```
//!
//! Layout: `terms.rs` holds the formula and its derivatives (see [`term`]), [`math`] the `ln`
//! and `exp` they use, `reduce.rs` the fused sums, `grad.rs` the gradient kernels, `walk.rs`
//! the strided traversal, `parallel.rs` the thread pool and the fixed blocks, `simd.rs` the
//! run-time dispatch. The Python bindings (feature `python`) live in `py.rs`.

#![warn(missing_docs)]

mod error;
mod float;
mod grad;
mod loss;
pub mod math;
mod parallel;
mod reduce;
mod simd;
mod terms;
mod walk;

#[cfg(feature = "python")]
mod py;

pub use error::Error;
pub use float::Float;
pub use grad::{
    kl_div_and_grad, kl_div_and_grad_into, kl_div_backward_into, kl_div_terms_and_grad_into,
};
pub use loss::{kl_div, kl_div_sum, kl_div_terms, kl_div_terms_into, Reduction};
pub use parallel::{get_num_threads, set_num_threads, with_interrupt, MAX_THREADS};
pub use simd::{detected_simd_level, set_simd_level, simd_level, SimdLevel};
pub use terms::{grad_input, grad_target, term};
