//! Process-wide controls: kldiv's threads, the SIMD level its kernels run at, and the check
//! that stops long calls. None of them changes a result's bits.
//!
//! ```
//! use kldiv::runtime;
//! runtime::set_num_threads(2).unwrap();
//! assert_eq!(runtime::get_num_threads(), 2);
//! println!("{} threads at {}", runtime::get_num_threads(), runtime::simd_level().name());
//! runtime::set_num_threads(0).unwrap(); // back to the default
//! ```

pub use crate::parallel::{get_num_threads, set_num_threads, with_interrupt, MAX_THREADS};
pub use crate::simd::{
    detected_simd_level, set_simd_level, simd_level, with_simd_level, SimdLevel,
};
