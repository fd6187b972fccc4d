//! Where parallelism lives: kldiv's thread pool, fixed blocks, and the fixed combining tree.
//!
//! Work is cut into blocks of [`BLOCK`] consecutive logical indices; block `b` always covers
//! `b * BLOCK .. (b + 1) * BLOCK`, whatever the thread count. The calling thread and the pool's
//! workers claim chunks of blocks from a shared counter (so the caller starts at once and the
//! workers join as soon as they wake), each block's sum is stored in its own slot, and the
//! slots are combined by a fixed pairwise tree over block indices: who computed a block never
//! changes the bits. Inputs smaller than [`PARALLEL_MIN`] run on the calling thread alone.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Logical elements per block (a multiple of [`crate::reduce::LANES`]).
pub(crate) const BLOCK: usize = 4096;
/// Below this many elements a kernel stays on the calling thread.
pub(crate) const PARALLEL_MIN: usize = 1 << 16;
/// Blocks claimed at a time.
const CHUNK_BLOCKS: usize = 4;

/// kldiv's threads: the caller plus `n - 1` pool workers (no pool for `n == 1`).
#[derive(Clone)]
struct Threads {
    n: usize,
    workers: Option<Arc<rayon::ThreadPool>>,
}

static THREADS: Mutex<Option<Threads>> = Mutex::new(None);

fn default_threads() -> usize {
    std::env::var("KLDIV_NUM_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

fn build(n: usize) -> Threads {
    let workers = (n > 1).then(|| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(n - 1)
            .thread_name(|i| format!("kldiv-{i}"))
            .build()
            .expect("kldiv: cannot start worker threads");
        Arc::new(pool)
    });
    Threads { n, workers }
}

fn threads() -> Threads {
    let mut guard = THREADS.lock().unwrap_or_else(|e| e.into_inner());
    guard
        .get_or_insert_with(|| build(default_threads()))
        .clone()
}

/// Sets the number of threads kldiv's kernels use: the calling thread plus `n - 1` workers of
/// kldiv's own pool, shared by all callers.
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
    let mut guard = THREADS.lock().unwrap_or_else(|e| e.into_inner());
    if guard.as_ref().map(|t| t.n) != Some(n) {
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
    threads().n
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

/// Runs `each(b)` once for every block of a walk of `len` elements: on the calling thread
/// alone for small inputs, else on the caller and the workers, chunks claimed dynamically.
pub(crate) fn for_each_block(len: usize, each: impl Fn(usize) + Sync) {
    let n = blocks(len);
    let workers = if len < PARALLEL_MIN {
        None
    } else {
        threads().workers
    };
    let Some(pool) = workers else {
        return (0..n).for_each(each);
    };
    let next = AtomicUsize::new(0);
    let claim = || loop {
        let first = next.fetch_add(CHUNK_BLOCKS, Ordering::Relaxed);
        if first >= n {
            break;
        }
        (first..(first + CHUNK_BLOCKS).min(n)).for_each(&each);
    };
    pool.in_place_scope(|scope| {
        for _ in 0..pool.current_num_threads() {
            scope.spawn(|_| claim());
        }
        claim();
    });
}

/// The sum over blocks `0..blocks(len)` of `leaf(b)`, combined in a fixed pairwise tree.
pub(crate) fn tree_sum(len: usize, leaf: impl Fn(usize) -> f64 + Sync) -> f64 {
    let n = blocks(len);
    if len < PARALLEL_MIN || threads().workers.is_none() {
        return tree(0, n, &leaf);
    }
    let sums: Vec<AtomicU64> = (0..n).map(|_| AtomicU64::new(0)).collect();
    for_each_block(len, |b| sums[b].store(leaf(b).to_bits(), Ordering::Relaxed));
    // `for_each_block` has joined every worker: all stores are visible here.
    tree(0, n, &|b| f64::from_bits(sums[b].load(Ordering::Relaxed)))
}

/// The fixed pairwise tree: the sum over `lo..hi` is the sum over the first half plus the sum
/// over the second.
fn tree(lo: usize, hi: usize, leaf: &impl Fn(usize) -> f64) -> f64 {
    match hi - lo {
        0 => 0.0,
        1 => leaf(lo),
        n => {
            let mid = lo + n / 2;
            tree(lo, mid, leaf) + tree(mid, hi, leaf)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tree_is_fixed() {
        assert_eq!(tree(0, 3, &|b| [1.0, 2.0, 3.0][b]), 1.0 + (2.0 + 3.0));
        assert_eq!(tree(0, 0, &|_| 1.0), 0.0);
    }

    #[test]
    fn every_block_once_whatever_the_threads() {
        let len = 100 * BLOCK + 7;
        for n in [1, 2, 3] {
            set_num_threads(n);
            let seen: Vec<AtomicUsize> = (0..blocks(len)).map(|_| AtomicUsize::new(0)).collect();
            for_each_block(len, |b| {
                seen[b].fetch_add(1, Ordering::Relaxed);
            });
            assert!(seen.iter().all(|c| c.load(Ordering::Relaxed) == 1));
            let leaf = |b: usize| 1.0 / (b as f64 + 1.0);
            assert_eq!(
                tree_sum(len, leaf).to_bits(),
                tree(0, blocks(len), &leaf).to_bits()
            );
        }
        set_num_threads(0);
    }

    #[test]
    fn blocks_cover_exactly() {
        assert_eq!(blocks(0), 0);
        assert_eq!(blocks(BLOCK), 1);
        assert_eq!(block_range(1, BLOCK + 3), (BLOCK, BLOCK + 3));
    }
}
