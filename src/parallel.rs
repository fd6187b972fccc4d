//! Where parallelism lives: kldiv's thread pool, fixed blocks, and the fixed combining tree.
//!
//! Work is cut into blocks of [`BLOCK`] consecutive logical indices; block `b` always covers
//! `b * BLOCK .. (b + 1) * BLOCK`, whatever the thread count. Block sums are combined by a
//! fixed pairwise tree over block indices; rayon only decides *which thread* evaluates a
//! subtree, never its shape, so the bits do not depend on the number of threads. Inputs
//! smaller than [`PARALLEL_MIN`] run the same tree on the calling thread.

use std::sync::{Arc, Mutex};

use rayon::prelude::*;

/// Logical elements per block (a multiple of [`crate::reduce::LANES`]).
pub(crate) const BLOCK: usize = 4096;
/// Below this many elements a kernel stays on the calling thread.
pub(crate) const PARALLEL_MIN: usize = 1 << 16;
/// Subtrees of at most this many blocks are evaluated on one thread.
const SERIAL_BLOCKS: usize = 4;

/// The pool and the thread count it was built with.
static POOL: Mutex<Option<Arc<rayon::ThreadPool>>> = Mutex::new(None);

fn default_threads() -> usize {
    std::env::var("KLDIV_NUM_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

fn build(n: usize) -> Arc<rayon::ThreadPool> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("kldiv-{i}"))
        .build()
        .expect("kldiv: cannot start worker threads");
    Arc::new(pool)
}

fn pool() -> Arc<rayon::ThreadPool> {
    let mut guard = POOL.lock().unwrap_or_else(|e| e.into_inner());
    guard
        .get_or_insert_with(|| build(default_threads()))
        .clone()
}

/// Sets the number of threads kldiv's kernels use (its own pool, shared by all callers).
///
/// The default is the `KLDIV_NUM_THREADS` environment variable if it holds a positive integer,
/// else the number of CPUs. `n = 0` restores that default. Results do not depend on it.
///
/// # Example
/// ```
/// kldiv::set_num_threads(2);
/// assert_eq!(kldiv::get_num_threads(), 2);
/// kldiv::set_num_threads(0); // back to the default
/// ```
pub fn set_num_threads(n: usize) {
    let n = if n == 0 { default_threads() } else { n };
    let mut guard = POOL.lock().unwrap_or_else(|e| e.into_inner());
    if guard.as_ref().map(|p| p.current_num_threads()) != Some(n) {
        *guard = Some(build(n));
    }
}

/// The number of threads kldiv's kernels use.
///
/// # Example
/// ```
/// assert!(kldiv::get_num_threads() >= 1);
/// ```
pub fn get_num_threads() -> usize {
    pool().current_num_threads()
}

/// The pool to run `len` elements on, or `None` to stay on the calling thread.
fn pool_for(len: usize) -> Option<Arc<rayon::ThreadPool>> {
    if len < PARALLEL_MIN {
        return None;
    }
    let p = pool();
    (p.current_num_threads() > 1).then_some(p)
}

/// Logical index range of block `b` of a walk of `len` elements.
#[inline]
pub(crate) fn block_range(b: usize, len: usize) -> (usize, usize) {
    (b * BLOCK, ((b + 1) * BLOCK).min(len))
}

/// Number of blocks covering `len` elements.
#[inline]
pub(crate) fn blocks(len: usize) -> usize {
    len.div_ceil(BLOCK)
}

/// The sum over blocks `0..blocks(len)` of `leaf(b)`, combined in a fixed pairwise tree.
pub(crate) fn tree_sum(len: usize, leaf: impl Fn(usize) -> f64 + Sync) -> f64 {
    let n = blocks(len);
    match pool_for(len) {
        Some(p) => p.install(|| tree(0, n, &leaf, true)),
        None => tree(0, n, &leaf, false),
    }
}

fn tree(lo: usize, hi: usize, leaf: &(impl Fn(usize) -> f64 + Sync), parallel: bool) -> f64 {
    match hi - lo {
        0 => 0.0,
        1 => leaf(lo),
        n => {
            let mid = lo + n / 2;
            if parallel && n > SERIAL_BLOCKS {
                let (a, b) =
                    rayon::join(|| tree(lo, mid, leaf, true), || tree(mid, hi, leaf, true));
                a + b
            } else {
                tree(lo, mid, leaf, false) + tree(mid, hi, leaf, false)
            }
        }
    }
}

/// Runs `each(b)` for every block of a walk of `len` elements (in parallel when large).
pub(crate) fn for_each_block(len: usize, each: impl Fn(usize) + Sync + Send) {
    let n = blocks(len);
    match pool_for(len) {
        Some(p) => p.install(|| (0..n).into_par_iter().for_each(each)),
        None => (0..n).for_each(each),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_is_the_same_serial_and_parallel() {
        let leaf = |b: usize| 1.0 / (b as f64 + 1.0);
        let serial = tree(0, 1000, &leaf, false);
        let parallel = tree(0, 1000, &leaf, true);
        assert_eq!(serial.to_bits(), parallel.to_bits());
    }

    #[test]
    fn blocks_cover_exactly() {
        assert_eq!(blocks(0), 0);
        assert_eq!(blocks(BLOCK), 1);
        assert_eq!(block_range(1, BLOCK + 3), (BLOCK, BLOCK + 3));
    }
}
