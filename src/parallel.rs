//! Where parallelism lives: kldiv's thread pool, fixed blocks, and the fixed combining tree.
//!
//! Work is cut into blocks of at most [`BLOCK`] consecutive logical indices that never cross a
//! canonical row (see [`Blocks`]); which indices a block covers depends on the logical shape
//! alone, never on the thread count or the memory layout. The calling thread and the pool's
//! workers claim chunks of blocks from a shared counter (so the caller starts at once and the
//! workers join as soon as they wake; the caller never waits for a worker that has not
//! started, see [`run_with_helpers`]), each block's sum is stored in its own slot, and the
//! slots are combined by a fixed pairwise tree over block indices: who computed a block never
//! changes the bits. Inputs smaller than [`PARALLEL_MIN`] run on the calling thread alone.
//!
//! Every thread runs its share in the caller's context (the floating-point environment the
//! kernels assume, and a level forced by `with_simd_level`: [`crate::simd::Context`]), and
//! the calling thread polls the check that
//! [`with_interrupt`] installs between its claims, so that a long call can be stopped.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::simd::{with_default_fp, Context};

/// Logical elements per block (a multiple of [`crate::reduce::LANES`]). These sizes are
/// smaller under Miri, so that its tests reach several blocks, rows and threads (and the
/// transposed path) with arrays small enough to interpret.
pub(crate) const BLOCK: usize = if cfg!(miri) { 32 } else { 4096 };
/// Below this many elements a kernel stays on the calling thread.
pub(crate) const PARALLEL_MIN: usize = if cfg!(miri) { 128 } else { 1 << 16 };
/// Canonical rows are at least this long (unless the whole shape is shorter).
pub(crate) const ROW_MIN: usize = if cfg!(miri) { 16 } else { 256 };
/// The most elements a thread claims at a time (in whole tasks; fewer for small inputs, so
/// that each thread gets about [`CLAIMS_PER_THREAD`] claims or more). Each claim is an atomic
/// add on a counter all threads share, and sharing the counter costs: fewer, larger claims are
/// faster (`docs/performance.md`).
const CHUNK: usize = if cfg!(miri) { 128 } else { 1 << 16 };
/// See [`CHUNK`].
const CLAIMS_PER_THREAD: usize = 8;
/// How often the calling thread of a long call runs the check of [`with_interrupt`].
const POLL: Duration = Duration::from_millis(100);

/// The most threads kldiv runs on: [`set_num_threads`] refuses more, and a larger
/// `KLDIV_NUM_THREADS` is ignored.
///
/// # Example
/// ```
/// assert!(kldiv::runtime::set_num_threads(kldiv::runtime::MAX_THREADS + 1).is_err());
/// ```
pub const MAX_THREADS: usize = 1024;

/// kldiv's threads: the caller plus `n - 1` pool workers (no pool for `n == 1`), started by
/// process `pid`.
#[derive(Clone)]
struct Threads {
    n: usize,
    workers: Option<Arc<rayon::ThreadPool>>,
    pid: u32,
}

static THREADS: Mutex<Option<Threads>> = Mutex::new(None);

/// The lock on [`THREADS`]. A `fork` never copies it locked (see [`fork`]).
fn lock() -> MutexGuard<'static, Option<Threads>> {
    fork::register();
    THREADS.lock().unwrap_or_else(|e| e.into_inner())
}

/// `KLDIV_NUM_THREADS` if it holds an integer from 1 to [`MAX_THREADS`], else the number of
/// CPUs (at most [`MAX_THREADS`]).
fn default_threads() -> usize {
    std::env::var("KLDIV_NUM_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|n| (1..=MAX_THREADS).contains(n))
        .unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_THREADS))
        })
}

fn build(n: usize) -> Result<Threads, Error> {
    let workers = if n > 1 {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(n - 1)
            .thread_name(|i| format!("kldiv-{i}"))
            .build()
            .map_err(|e| Error::ThreadStart(e.to_string()))?;
        Some(Arc::new(pool))
    } else {
        None
    };
    Ok(Threads {
        n,
        workers,
        pid: std::process::id(),
    })
}

/// The current threads, started if need be. A child made by `fork` (Python's multiprocessing)
/// inherits the pool but not its worker threads: waiting on them would hang forever, so a
/// child starts its own pool (and leaks the parent's, whose threads do not exist here). A
/// default pool that cannot start runs kernels on the calling thread alone.
fn current(guard: &mut Option<Threads>) -> &Threads {
    let inherited = guard.as_ref().filter(|t| t.pid != std::process::id());
    if let Some(n) = inherited.map(|t| t.n) {
        std::mem::forget(guard.take());
        *guard = Some(build(n).unwrap_or_else(|_| alone()));
    }
    guard.get_or_insert_with(|| build(default_threads()).unwrap_or_else(|_| alone()))
}

/// The calling thread alone.
fn alone() -> Threads {
    Threads {
        n: 1,
        workers: None,
        pid: std::process::id(),
    }
}

fn threads() -> Threads {
    current(&mut lock()).clone()
}

/// Sets the number of threads kldiv's kernels use: the calling thread plus `n - 1` workers of
/// kldiv's own pool, shared by all callers.
///
/// The default is the `KLDIV_NUM_THREADS` environment variable if it holds an integer from 1
/// to [`MAX_THREADS`], else the number of CPUs. `n = 0` restores that default. Results do not
/// depend on it.
///
/// # Errors
/// [`Error::TooManyThreads`] above [`MAX_THREADS`]; [`Error::ThreadStart`] if the operating
/// system does not start the threads (the pool is then left as it was).
///
/// # Example
/// ```
/// kldiv::runtime::set_num_threads(2).unwrap();
/// assert_eq!(kldiv::runtime::get_num_threads(), 2);
/// kldiv::runtime::set_num_threads(0).unwrap(); // back to the default
/// ```
pub fn set_num_threads(n: usize) -> Result<(), Error> {
    if n > MAX_THREADS {
        return Err(Error::TooManyThreads { requested: n });
    }
    let n = if n == 0 { default_threads() } else { n };
    // One lock for the read and the write: concurrent callers each see the other's pool.
    let mut guard = lock();
    if current(&mut guard).n != n {
        *guard = Some(build(n)?);
    }
    Ok(())
}

/// The number of threads kldiv's kernels use.
///
/// # Example
/// ```
/// assert!(kldiv::runtime::get_num_threads() >= 1);
/// ```
pub fn get_num_threads() -> usize {
    threads().n
}

/// Keeps [`THREADS`] consistent across `fork`: the forking thread takes the lock before the
/// fork and releases it after, in the parent and in the child, so that the child never
/// inherits it locked by a thread that does not exist there (its next kernel call would wait
/// forever).
#[cfg(all(unix, not(miri)))]
mod fork {
    use std::cell::RefCell;
    use std::ffi::c_int;
    use std::sync::{MutexGuard, Once};

    use super::{Threads, THREADS};

    thread_local! {
        /// The lock held by the forking thread across `fork`.
        static HELD: RefCell<Option<MutexGuard<'static, Option<Threads>>>> =
            const { RefCell::new(None) };
    }

    extern "C" {
        fn pthread_atfork(
            prepare: Option<extern "C" fn()>,
            parent: Option<extern "C" fn()>,
            child: Option<extern "C" fn()>,
        ) -> c_int;
    }

    extern "C" fn prepare() {
        let guard = THREADS.lock().unwrap_or_else(|e| e.into_inner());
        HELD.with(|h| *h.borrow_mut() = Some(guard));
    }

    extern "C" fn release() {
        HELD.with(|h| drop(h.borrow_mut().take()));
    }

    pub(super) fn register() {
        static ONCE: Once = Once::new();
        ONCE.call_once(|| {
            // SAFETY: the handlers are `extern "C"` functions that live as long as the
            // process, do not unwind (taking a lock and storing or dropping its guard), and
            // run in the forking thread, before and after `fork`, as POSIX says.
            unsafe { pthread_atfork(Some(prepare), Some(release), Some(release)) };
        });
    }
}

#[cfg(not(all(unix, not(miri))))]
mod fork {
    pub(super) fn register() {}
}

/// The check installed by [`with_interrupt`] on this thread: `call(data)`.
#[derive(Clone, Copy)]
struct Hook {
    data: *const (),
    call: unsafe fn(*const ()) -> bool,
}

thread_local! {
    static HOOK: Cell<Option<Hook>> = const { Cell::new(None) };
}

/// Runs `f` with `interrupted` as this thread's interrupt check: kernels that `f` starts on
/// this thread over 65,536 elements or more call it when they start and then about every
/// 100 ms, between pieces of work, and stop with [`Error::Interrupted`] when it returns `true`
/// (their outputs then hold partial results). The check runs on this thread only.
///
/// # Example
/// ```
/// use ndarray::Array1;
/// let x = Array1::from_elem(1 << 20, -2.0_f32);
/// let t = Array1::from_elem(1 << 20, 0.5_f32);
/// let stopped = kldiv::runtime::with_interrupt(|| true, || kldiv::kl_div_sum(x.view(), t.view(), false));
/// assert_eq!(stopped, Err(kldiv::Error::Interrupted));
/// let done = kldiv::runtime::with_interrupt(|| false, || kldiv::kl_div_sum(x.view(), t.view(), false));
/// assert!(done.is_ok());
/// ```
pub fn with_interrupt<F: Fn() -> bool, R>(interrupted: F, f: impl FnOnce() -> R) -> R {
    /// # Safety
    /// `data` must point to a live `F`.
    unsafe fn call<F: Fn() -> bool>(data: *const ()) -> bool {
        // SAFETY: by the contract above.
        unsafe { (*data.cast::<F>())() }
    }
    struct Reset(Option<Hook>);
    impl Drop for Reset {
        fn drop(&mut self) {
            HOOK.with(|h| h.set(self.0));
        }
    }
    let hook = Hook {
        data: (&interrupted as *const F).cast(),
        call: call::<F>,
    };
    let _reset = Reset(HOOK.with(|h| h.replace(Some(hook))));
    f()
}

/// When the calling thread next runs its interrupt check.
struct Poll {
    hook: Option<Hook>,
    next: Instant,
}

impl Poll {
    /// The first check comes at once, the next ones [`POLL`] apart; none without a hook.
    fn new() -> Poll {
        Poll {
            hook: HOOK.with(|h| h.get()),
            next: Instant::now(),
        }
    }

    /// Whether the call is to stop.
    fn interrupted(&mut self) -> bool {
        let Some(hook) = self.hook else {
            return false;
        };
        let now = Instant::now();
        if now < self.next {
            return false;
        }
        self.next = now + POLL;
        // SAFETY: `HOOK` holds a hook only while the `with_interrupt` that set it, on this
        // thread, runs, and with it the check that `data` points to; this `Poll` lives within
        // one kernel call on this thread.
        unsafe { (hook.call)(hook.data) }
    }
}

/// The fixed blocks of a logical shape.
///
/// The shape is seen as rows of `row` elements: `row` is the product of the trailing axes,
/// taken until it reaches [`ROW_MIN`] (all of them for small shapes). Each row is cut into
/// blocks of [`BLOCK`] elements (the last one shorter), so a block never spans two rows: a
/// traversal may then visit several rows at once (see the transposed path of the sums)
/// without changing any block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Blocks {
    len: usize,
    row: usize,
    per_row: usize,
}

impl Blocks {
    /// The blocks of a logical `shape` (not merged: the same for every layout), whose number
    /// of elements fits in `usize` (see [`crate::walk::Walk::new`]).
    pub(crate) fn new(shape: &[usize]) -> Blocks {
        let len: usize = shape.iter().product();
        let mut row = 1usize;
        for &d in shape.iter().rev() {
            if row >= ROW_MIN {
                break;
            }
            row = row.saturating_mul(d);
        }
        let row = row.max(1);
        Blocks {
            len,
            row,
            per_row: row.div_ceil(BLOCK),
        }
    }

    /// The number of logical elements.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The length of a canonical row.
    pub(crate) fn row(&self) -> usize {
        self.row
    }

    /// The number of blocks.
    pub(crate) fn count(&self) -> usize {
        self.len / self.row * self.per_row
    }

    /// The index of block `j` of row `r`.
    pub(crate) fn index(&self, r: usize, j: usize) -> usize {
        r * self.per_row + j
    }

    /// The logical index range of block `b`.
    #[inline]
    pub(crate) fn range(&self, b: usize) -> (usize, usize) {
        let (r, j) = (b / self.per_row, b % self.per_row);
        let start = r * self.row + j * BLOCK;
        (start, (start + BLOCK).min((r + 1) * self.row))
    }
}

/// The number of threads a kernel over `len` elements runs on: 1 below [`PARALLEL_MIN`], else
/// [`get_num_threads`].
pub(crate) fn threads_for(len: usize) -> usize {
    if len < PARALLEL_MIN {
        1
    } else {
        threads().n
    }
}

/// Runs `each(i, scratch)` once for every `i in 0..tasks`: on the calling thread alone for
/// small inputs (`len` elements in all, in tasks of about equal size), else on the caller and
/// the workers, claimed in chunks (see [`CHUNK`]). Each thread makes one `S::default()` scratch
/// (a tile, say) and hands it to all its tasks.
///
/// # Errors
/// [`Error::Interrupted`] when the caller's interrupt check says so (some tasks then never
/// ran).
pub(crate) fn for_each_task<S: Default>(
    len: usize,
    tasks: usize,
    each: impl Fn(usize, &mut S) + Sync,
) -> Result<(), Error> {
    if len < PARALLEL_MIN {
        // Short: no claims, no checks.
        return with_default_fp(|| {
            let mut scratch = S::default();
            (0..tasks).for_each(|i| each(i, &mut scratch));
            Ok(())
        });
    }
    let workers = threads().workers;
    let threads = workers.as_ref().map_or(1, |p| p.current_num_threads() + 1);
    let chunk_len = CHUNK.min(len / (CLAIMS_PER_THREAD * threads));
    let chunk = (chunk_len / (len / tasks.max(1)).max(1)).max(1);
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let context = Context::current();
    // Claims chunks of tasks until none is left, or until the call is stopped (by the
    // caller's `poll`), in the caller's context (SIMD level, floating-point mode).
    let claim = |poll: &mut dyn FnMut() -> bool| {
        context.enter(|| {
            let mut scratch = S::default();
            while !stop.load(Ordering::Relaxed) {
                if poll() {
                    stop.store(true, Ordering::Relaxed);
                    break;
                }
                let first = next.fetch_add(chunk, Ordering::Relaxed);
                if first >= tasks {
                    break;
                }
                (first..(first + chunk).min(tasks)).for_each(|i| each(i, &mut scratch));
            }
        })
    };
    let mut poll = Poll::new();
    let mut caller = || claim(&mut || poll.interrupted());
    match workers {
        Some(pool) => run_with_helpers(&pool, &|| claim(&mut || false), caller),
        None => caller(),
    }
    if stop.load(Ordering::Relaxed) {
        Err(Error::Interrupted)
    } else {
        Ok(())
    }
}

/// Runs `own` on the calling thread, and `help` on each of `pool`'s workers that gets to it
/// before the caller is done with `own`; returns once the caller has run `own` and no worker
/// is in `help`.
///
/// Unlike a rayon scope, the caller never waits for a worker that has not started: a worker
/// still asleep (or busy with another call) finds the call closed when it gets to its job, and
/// does nothing. Waking a sleeping worker can take as long as the whole call.
fn run_with_helpers<H: Fn() + Sync>(pool: &rayon::ThreadPool, help: &H, own: impl FnOnce()) {
    /// `help`, its type erased, for the workers' jobs (which must be `'static`).
    struct Job {
        help: *const (),
        run: unsafe fn(*const ()),
    }
    // SAFETY: `help` points to an `H: Sync`, which may be called from any thread through a
    // shared reference; when it may be called is said where `run` is.
    unsafe impl Send for Job {}
    impl Job {
        /// # Safety
        /// The `H` that `help` points to must be alive.
        unsafe fn call(&self) {
            // SAFETY: by the contract above (and `run` is `run::<H>`).
            unsafe { (self.run)(self.help) }
        }
    }
    /// # Safety
    /// `help` must point to a live `H`.
    unsafe fn run<H: Fn()>(help: *const ()) {
        // SAFETY: by the contract above.
        unsafe { (*help.cast::<H>())() }
    }

    let call = Arc::new(Call::default());
    for _ in 0..pool.current_num_threads() {
        let call = Arc::clone(&call);
        let job = Job {
            help: (help as *const H).cast(),
            run: run::<H>,
        };
        pool.spawn(move || {
            if call.enter() {
                let _leave = Leave(&call);
                // SAFETY: the worker is in the call (between `enter` and the `Leave` drop),
                // and `run_with_helpers` neither returns nor unwinds before `Close` has waited
                // until no worker is in it and barred new ones: `help` is alive here.
                let help = || unsafe { job.call() };
                if std::panic::catch_unwind(help).is_err() {
                    call.panicked.store(true, Ordering::Relaxed);
                }
            }
        });
    }
    let close = Close(&call);
    own();
    drop(close);
    if call.panicked.load(Ordering::Relaxed) {
        panic!("kldiv: a kernel panicked on a worker thread");
    }
}

/// The workers in one call of [`run_with_helpers`]: bit 0 of `state` says the call is closed,
/// the rest count the workers in it (by twos).
#[derive(Default)]
struct Call {
    state: AtomicUsize,
    panicked: AtomicBool,
}

const CLOSED: usize = 1;

impl Call {
    /// Counts a worker in, unless the call is closed.
    fn enter(&self) -> bool {
        let mut state = self.state.load(Ordering::Acquire);
        while state & CLOSED == 0 {
            match self.state.compare_exchange_weak(
                state,
                state + 2,
                Ordering::Acquire,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(now) => state = now,
            }
        }
        false
    }
}

/// Counts a worker out of a [`Call`] when dropped (after its work, or while it unwinds).
struct Leave<'a>(&'a Call);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        // Release: the worker's writes happen before the caller sees it gone.
        self.0.state.fetch_sub(2, Ordering::Release);
    }
}

/// Closes a [`Call`] when dropped and waits until every worker in it has left (workers finish
/// the chunk of tasks they hold, at most [`CHUNK`] elements).
struct Close<'a>(&'a Call);

impl Drop for Close<'_> {
    fn drop(&mut self) {
        let mut state = self.0.state.fetch_or(CLOSED, Ordering::Acquire) | CLOSED;
        let mut spins = 0u32;
        while state != CLOSED {
            if spins < 1000 {
                std::hint::spin_loop();
                spins += 1;
            } else {
                std::thread::yield_now();
            }
            state = self.0.state.load(Ordering::Acquire);
        }
    }
}

/// Runs `each(b)` once for every block (in parallel when large).
pub(crate) fn for_each_block(blocks: &Blocks, each: impl Fn(usize) + Sync) -> Result<(), Error> {
    for_each_task(blocks.len(), blocks.count(), |b, _: &mut ()| each(b))
}

/// The sum over all blocks of `leaf(b, scratch)`, combined in the fixed pairwise tree (scratch
/// as in [`for_each_task`]).
pub(crate) fn tree_sum<S: Default>(
    blocks: &Blocks,
    leaf: impl Fn(usize, &mut S) -> f64 + Sync,
) -> Result<f64, Error> {
    let n = blocks.count();
    if blocks.len() < PARALLEL_MIN {
        return Ok(with_default_fp(|| {
            let mut scratch = S::default();
            tree(0, n, &mut |b| leaf(b, &mut scratch))
        }));
    }
    tree_sum_of_tasks(blocks, n, |b, scratch, store| store(b, leaf(b, scratch)))
}

/// The sum over all blocks, combined in the fixed pairwise tree, where
/// `task(i, scratch, store)` for `i in 0..tasks` computes some blocks' sums and hands each to
/// `store(block, sum)`; every block must be stored by exactly one task.
///
/// # Errors
/// [`Error::OutOfMemory`] if the blocks' sums (8 bytes each) do not fit in memory;
/// [`Error::Interrupted`] as [`for_each_task`].
pub(crate) fn tree_sum_of_tasks<S: Default>(
    blocks: &Blocks,
    tasks: usize,
    task: impl Fn(usize, &mut S, &dyn Fn(usize, f64)) + Sync,
) -> Result<f64, Error> {
    let n = blocks.count();
    let mut sums: Vec<AtomicU64> = Vec::new();
    sums.try_reserve_exact(n).map_err(|_| Error::OutOfMemory {
        bytes: n.saturating_mul(8),
    })?;
    sums.extend((0..n).map(|_| AtomicU64::new(0)));
    let store = |b: usize, v: f64| sums[b].store(v.to_bits(), Ordering::Relaxed);
    for_each_task(blocks.len(), tasks, |i, scratch| task(i, scratch, &store))?;
    // `for_each_task` has waited for every worker that took tasks: all stores are visible here.
    Ok(tree(0, n, &mut |b| {
        f64::from_bits(sums[b].load(Ordering::Relaxed))
    }))
}

/// The fixed pairwise tree: the sum over `lo..hi` is the sum over the first half plus the sum
/// over the second.
pub(crate) fn tree(lo: usize, hi: usize, leaf: &mut impl FnMut(usize) -> f64) -> f64 {
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
        assert_eq!(tree(0, 3, &mut |b| [1.0, 2.0, 3.0][b]), 1.0 + (2.0 + 3.0));
        assert_eq!(tree(0, 0, &mut |_| 1.0), 0.0);
    }

    #[test]
    fn every_block_once_whatever_the_threads() {
        let blocks = Blocks::new(&[100 * BLOCK + 7]);
        for n in [1, 2, 3] {
            set_num_threads(n).unwrap();
            let seen: Vec<AtomicUsize> = (0..blocks.count()).map(|_| AtomicUsize::new(0)).collect();
            for_each_block(&blocks, |b| {
                seen[b].fetch_add(1, Ordering::Relaxed);
            })
            .unwrap();
            assert!(seen.iter().all(|c| c.load(Ordering::Relaxed) == 1));
            let leaf = |b: usize| 1.0 / (b as f64 + 1.0);
            assert_eq!(
                tree_sum(&blocks, |b, _: &mut ()| leaf(b))
                    .unwrap()
                    .to_bits(),
                tree(0, blocks.count(), &mut { leaf }).to_bits()
            );
        }
        set_num_threads(0).unwrap();
    }

    #[test]
    fn workers_run_in_the_callers_context() {
        // A level forced on the caller holds on every thread that runs a share of its call.
        use crate::simd::{simd_level, with_simd_level, SimdLevel};
        set_num_threads(3).unwrap();
        let levels: Vec<AtomicUsize> = (0..64).map(|_| AtomicUsize::new(0)).collect();
        let threads = Mutex::new(std::collections::HashSet::new());
        with_simd_level(SimdLevel::Scalar, || {
            for_each_task(PARALLEL_MIN * 4, 64, |i, _: &mut ()| {
                levels[i].store(simd_level() as usize, Ordering::Relaxed);
                threads.lock().unwrap().insert(std::thread::current().id());
                std::thread::sleep(std::time::Duration::from_millis(2)); // let the workers join
            })
        })
        .unwrap();
        assert!(levels
            .iter()
            .all(|l| l.load(Ordering::Relaxed) == SimdLevel::Scalar as usize));
        assert!(threads.lock().unwrap().len() > 1, "the workers took part");
        set_num_threads(0).unwrap();
    }

    #[test]
    fn the_caller_does_not_wait_for_a_busy_worker() {
        // The only worker is held until the call is over: the caller runs all the work alone
        // and returns (a rayon scope would wait for the worker forever here).
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let (hold, held) = std::sync::mpsc::channel::<()>();
        let (started, wait_started) = std::sync::mpsc::channel::<()>();
        pool.spawn(move || {
            started.send(()).unwrap();
            held.recv().unwrap();
        });
        wait_started.recv().unwrap();
        let runs = AtomicUsize::new(0);
        let work = || {
            runs.fetch_add(1, Ordering::Relaxed);
        };
        run_with_helpers(&pool, &work, work);
        assert_eq!(runs.load(Ordering::Relaxed), 1);
        hold.send(()).unwrap(); // the worker now finds the call closed, and does nothing
        pool.install(|| {}); // (runs after the stale job: the queue is first in, first out)
        assert_eq!(runs.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_free_worker_joins_in() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<std::thread::ThreadId>();
        let tx = std::sync::Mutex::new(tx);
        // The caller waits (a bounded time) for the worker to arrive before it finishes.
        let arrived = AtomicUsize::new(0);
        let work = || {
            tx.lock()
                .unwrap()
                .send(std::thread::current().id())
                .unwrap();
            arrived.fetch_add(1, Ordering::AcqRel);
            let t0 = std::time::Instant::now();
            while arrived.load(Ordering::Acquire) < 2 && t0.elapsed().as_secs() < 10 {
                std::thread::yield_now();
            }
        };
        run_with_helpers(&pool, &work, work);
        let ids: Vec<_> = rx.try_iter().collect();
        assert_eq!(ids.len(), 2);
        assert_ne!(ids[0], ids[1]);
    }

    #[test]
    #[should_panic(expected = "panicked on a worker thread")]
    fn a_worker_panic_reaches_the_caller() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let main = std::thread::current().id();
        let arrived = AtomicUsize::new(0);
        let work = || {
            arrived.fetch_add(1, Ordering::AcqRel);
            if std::thread::current().id() != main {
                panic!("on the worker");
            }
            let t0 = std::time::Instant::now();
            while arrived.load(Ordering::Acquire) < 2 && t0.elapsed().as_secs() < 10 {
                std::thread::yield_now();
            }
        };
        run_with_helpers(&pool, &work, work);
    }

    #[test]
    #[cfg_attr(miri, ignore = "written for the real BLOCK")]
    fn blocks_never_cross_a_row() {
        let b = Blocks::new(&[0]);
        assert_eq!(b.count(), 0);
        let b = Blocks::new(&[]); // 0-d: one element
        assert_eq!((b.count(), b.range(0)), (1, (0, 1)));
        let b = Blocks::new(&[3, 10_000]); // rows of 10,000: 3 blocks each
        assert_eq!((b.row(), b.count()), (10_000, 9));
        assert_eq!(b.range(2), (8192, 10_000));
        assert_eq!(b.range(3), (10_000, 10_000 + BLOCK));
        let b = Blocks::new(&[1_000_000, 2, 3]); // short rows: all axes make one row
        assert_eq!(
            (b.row(), b.count()),
            (6_000_000, 6_000_000usize.div_ceil(BLOCK))
        );
        let b = Blocks::new(&[7, 16, 64]); // 16 * 64 = 1024 >= ROW_MIN
        assert_eq!((b.row(), b.count()), (1024, 7));
        let b = Blocks::new(&[301, 997]);
        assert_eq!((b.row(), b.count(), b.range(1)), (997, 301, (997, 1994)));
    }
}
