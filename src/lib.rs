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
//! run time (AVX-512, AVX2 or the baseline; see [`runtime::simd_level`]).
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
//! Layout, one concern a file: `terms.rs` the formula and its derivatives (see [`term`]),
//! `math.rs` the scalar `ln` and `exp`, `runs.rs` the loops over runs of values that use them,
//! `reduce.rs` the fused sums, `transposed.rs` the sums over transposed inputs, `grad.rs` the
//! gradient kernels, `loss.rs` the public reductions, `walk.rs` the checked operands and the
//! strided traversal, `parallel.rs` the thread pool and the fixed blocks, `simd.rs` the
//! run-time dispatch, [`runtime`] the process-wide controls, `logits/` the losses from logits,
//! `compare.rs` the comparison of two models (llama.cpp's `--kl-divergence`). The Python bindings (feature
//! `python`) live in `py.rs`. `ndarray` is re-exported, so that the views a caller makes are
//! the ones the kernels take.

#![warn(missing_docs)]

mod compare;
mod error;
mod float;
mod grad;
mod logits;
mod loss;
pub mod math;
mod parallel;
mod reduce;
mod runs;
pub mod runtime;
mod simd;
mod terms;
mod transposed;
mod walk;

#[cfg(feature = "python")]
mod py;

pub use compare::{
    compare_kld_rows, compare_logits_rows, kld_base_row, kld_log_probs, Estimate, KldHeader,
    PerToken, Summary,
};
pub use error::Error;
pub use float::Float;
pub use grad::{
    kl_div_and_grad, kl_div_and_grad_into, kl_div_backward, kl_div_backward_into,
    kl_div_terms_and_grad, kl_div_terms_and_grad_into,
};
pub use logits::{
    kl_div_logits, kl_div_logits_and_grad_into, kl_div_logits_rows_into, Bf16, Divergence, Logit,
    LogitsLoss, LogitsReduction, F16,
};
pub use loss::{kl_div, kl_div_sum, kl_div_terms, kl_div_terms_into, Reduction};
pub use ndarray;
pub use terms::{grad_input, grad_target, term};

/// The README's Rust snippets, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
