//! A calling thread and spinning pool helpers that run a sequence of small
//! parallel steps without waking a thread for each.
//!
//! A text query is ~60 steps of a few to a hundred microseconds (products,
//! attention heads), each split between the threads. As rayon parallel
//! loops every step handed its work to the other thread, which had to find
//! it (or be woken) each time, and the activation and residual sums were
//! passes of their own. In a [`Team`] the helpers stay in a spin loop for a
//! whole block (one `rayon::scope`), and each step is a number of chunks
//! that every thread claims from one atomic counter; the chunk that
//! computes values also finishes them. On a 2-core Cascade Lake Xeon a
//! query's encode went from 3.96–4.12 to 3.52–3.66 ms p50 (the two paths
//! alternating query by query in one process).
//!
//! No thread ever waits for a helper to *arrive*: the calling thread claims
//! chunks too and only waits for chunks a helper has claimed to finish. A
//! helper that starts late (its pool thread busy) joins at the step in
//! progress; one that never starts changes nothing but the speed. So a
//! team cannot deadlock on a busy pool, and its results do not depend on
//! how many threads took part (each chunk is one fixed piece of work).
//!
//! What this does not do: balance uneven chunks (callers make them
//! similar), or run steps of different teams concurrently.

use std::any::Any;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::Mutex;

/// The chunk index in [`Team::word`] while a step is being set up: above
/// any chunk count, so nothing is claimable.
const CLOSED: u64 = u32::MAX as u64;

/// One step's work: `chunk(i)` for `i` in `0..chunks`.
type Job<'a> = &'a (dyn Fn(usize) + Sync);

/// A sequence of parallel steps (see the module documentation); made by
/// [`with_team`], stepped by [`Team::run`] from the thread that made it.
pub(crate) struct Team {
    /// `step << 32 | next chunk to claim` (`CLOSED` while a step is set up),
    /// on a cache line of its own with what is read beside it.
    word: Aligned<AtomicU64>,
    /// The current step's `Job`, as a thin pointer to the fat reference on
    /// the stack of [`Team::run`].
    job: AtomicPtr<()>,
    /// The current step's chunk count.
    chunks: AtomicUsize,
    /// Chunks of the current step finished (on a line of its own: the
    /// helpers' spinning reads of `word` do not slow its updates).
    done: Aligned<AtomicUsize>,
    /// Set when the sequence is over: helpers return.
    finished: AtomicBool,
    /// A helper's panic, re-raised by [`Team::run`] on the calling thread.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
    /// Helpers asked for (threads beyond the caller; 0 runs everything in
    /// place).
    helpers: usize,
}

/// Runs `f` with a [`Team`] of the calling thread and every other thread of
/// rayon's pool (none in a one-thread pool), which spin between `f`'s
/// steps until `f` returns.
pub(crate) fn with_team<R: Send>(f: impl FnOnce(&Team) -> R + Send) -> R {
    crate::kernels::on_pool(|| {
        let helpers = rayon::current_num_threads().saturating_sub(1);
        let team = Team::new(helpers);
        if helpers == 0 {
            return f(&team);
        }
        rayon::scope(|scope| {
            for _ in 0..helpers {
                scope.spawn(|_| team.help());
            }
            // Helpers return when `finished` is set, also if `f` unwinds.
            let _finish = Finish(&team.finished);
            f(&team)
        })
    })
}

/// A value alone on its cache lines (two: the adjacent-line prefetcher
/// fetches pairs).
#[repr(align(128))]
struct Aligned<T>(T);

impl<T> std::ops::Deref for Aligned<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// Sets the flag when dropped.
struct Finish<'a>(&'a AtomicBool);

impl Drop for Finish<'_> {
    fn drop(&mut self) {
        self.0.store(true, SeqCst);
    }
}

impl Team {
    fn new(helpers: usize) -> Self {
        Self {
            word: Aligned(AtomicU64::new(CLOSED)),
            job: AtomicPtr::new(std::ptr::null_mut()),
            chunks: AtomicUsize::new(0),
            done: Aligned(AtomicUsize::new(0)),
            finished: AtomicBool::new(false),
            panic: Mutex::new(None),
            helpers,
        }
    }

    /// Threads that may take part in a step (the caller and its helpers):
    /// how many chunks are worth making.
    pub(crate) fn threads(&self) -> usize {
        self.helpers + 1
    }

    /// Runs `chunk(i)` for every `i` in `0..chunks`, each exactly once, on
    /// whichever threads of the team claim it; returns when all are done.
    /// A panic in a chunk is raised here once every chunk has finished.
    pub(crate) fn run(&self, chunks: usize, chunk: &(dyn Fn(usize) + Sync)) {
        if chunks == 0 {
            return;
        }
        assert!((chunks as u64) < CLOSED, "team step of {chunks} chunks");
        if self.helpers == 0 || chunks == 1 {
            (0..chunks).for_each(chunk);
            return;
        }
        let step = (self.word.load(SeqCst) >> 32) + 1;
        let job: Job = chunk;
        // Set up behind a closed word: a helper that read the previous
        // step's word cannot claim (its compare-exchange fails), so it
        // never runs this job with that step's index, or the reverse.
        self.word.store(step << 32 | CLOSED, SeqCst);
        self.job.store(&job as *const Job as *mut (), SeqCst);
        self.chunks.store(chunks, SeqCst);
        self.done.store(0, SeqCst);
        self.word.store(step << 32, SeqCst);
        let mut panic = None;
        while let Some(i) = self.claim(chunks as u64) {
            if let Err(payload) = catch_unwind(AssertUnwindSafe(|| chunk(i))) {
                panic.get_or_insert(payload);
            }
            self.done.fetch_add(1, SeqCst);
        }
        // Chunks a helper claimed reference `job` and what it borrows:
        // wait for them before returning (also when a chunk panicked).
        while self.done.load(SeqCst) < chunks {
            std::hint::spin_loop();
        }
        let helper_panic = self.panic.lock().map(|mut p| p.take()).unwrap_or(None);
        if let Some(payload) = panic.or(helper_panic) {
            resume_unwind(payload);
        }
    }

    /// The next chunk of the current step, if any is left.
    fn claim(&self, chunks: u64) -> Option<usize> {
        let mut word = self.word.load(SeqCst);
        loop {
            let next = word & CLOSED;
            if next >= chunks {
                return None;
            }
            match self
                .word
                .compare_exchange_weak(word, word + 1, SeqCst, SeqCst)
            {
                Ok(_) => return Some(next as usize),
                Err(now) => word = now,
            }
        }
    }

    /// A helper's loop: claim chunks of whatever step is open until the
    /// sequence is finished.
    fn help(&self) {
        while !self.finished.load(SeqCst) {
            let word = self.word.load(SeqCst);
            let next = word & CLOSED;
            let chunks = self.chunks.load(SeqCst) as u64;
            if next >= chunks {
                std::hint::spin_loop();
                continue;
            }
            let job = self.job.load(SeqCst) as *const Job;
            // Claimed only if the word has not moved since it was read, so
            // `job` and `chunks` (stored before the word opened the step, and
            // replaced only after it closes) are this step's.
            if self
                .word
                .compare_exchange(word, word + 1, SeqCst, SeqCst)
                .is_err()
            {
                continue;
            }
            // SAFETY: the step is open (claimed above), so `run` is still
            // waiting for this chunk and its `job` lives on its stack.
            let job = unsafe { *job };
            if let Err(payload) = catch_unwind(AssertUnwindSafe(|| job(next as usize))) {
                if let Ok(mut slot) = self.panic.lock() {
                    slot.get_or_insert(payload);
                }
            }
            self.done.fetch_add(1, SeqCst);
        }
    }
}

/// A mutable slice that chunks of one [`Team::run`] step write in disjoint
/// parts (rows' column ranges, whole rows) from several threads.
pub(crate) struct SharedSlice<'a, T> {
    ptr: *mut T,
    len: usize,
    _slice: std::marker::PhantomData<&'a mut [T]>,
}

// SAFETY: callers of `range` guarantee that ranges used at the same time
// are disjoint, and the values may move between threads.
unsafe impl<T: Send> Send for SharedSlice<'_, T> {}
unsafe impl<T: Send> Sync for SharedSlice<'_, T> {}

impl<'a, T> SharedSlice<'a, T> {
    /// Shares `values` for one step.
    pub(crate) fn new(values: &'a mut [T]) -> Self {
        Self {
            ptr: values.as_mut_ptr(),
            len: values.len(),
            _slice: std::marker::PhantomData,
        }
    }

    /// `values[start..start + len]`.
    ///
    /// # Safety
    /// No other live reference (from this or another thread) may overlap
    /// the range while the returned one is used.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn range(&self, start: usize, len: usize) -> &mut [T] {
        assert!(start <= self.len && len <= self.len - start);
        std::slice::from_raw_parts_mut(self.ptr.add(start), len)
    }
}

/// Runs `f` on this thread's buffer in `slot`, grown to at least `len`
/// values and cut to `len`; its values are whatever an earlier use left
/// (callers write every value before reading it). A query's steps reuse
/// their buffers instead of allocating ~150 per block.
pub(crate) fn with_scratch<R>(
    slot: &'static std::thread::LocalKey<std::cell::RefCell<Vec<f32>>>,
    len: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    // Taken out of the slot, so that a nested use of the same slot (none
    // today) would allocate rather than fail a borrow.
    let mut buffer = slot.with(|s| std::mem::take(&mut *s.borrow_mut()));
    if buffer.len() < len {
        buffer.resize(len, 0.0);
    }
    let result = f(&mut buffer[..len]);
    slot.with(|s| *s.borrow_mut() = buffer);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_chunk_runs_once_in_every_step() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        pool.install(|| {
            with_team(|team| {
                assert_eq!(team.threads(), 3);
                for chunks in [0usize, 1, 2, 3, 7, 64, 1000] {
                    for _ in 0..20 {
                        let counts: Vec<AtomicUsize> =
                            (0..chunks).map(|_| AtomicUsize::new(0)).collect();
                        team.run(chunks, &|i| {
                            counts[i].fetch_add(1, SeqCst);
                        });
                        assert!(counts.iter().all(|c| c.load(SeqCst) == 1), "{chunks}");
                    }
                }
            })
        });
    }

    #[test]
    fn steps_do_not_wait_for_a_helper_that_never_starts() {
        // Both pool threads are taken by the two teams' callers, so
        // neither's helper runs until the other team has finished; each
        // must still go through all its steps on its own.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let sums = pool.install(|| {
            let (a, b) = rayon::join(
                || {
                    with_team(|team| {
                        let sum = AtomicUsize::new(0);
                        for _ in 0..200 {
                            team.run(8, &|i| {
                                sum.fetch_add(i, SeqCst);
                            });
                        }
                        sum.into_inner()
                    })
                },
                || {
                    with_team(|team| {
                        let sum = AtomicUsize::new(0);
                        for _ in 0..200 {
                            team.run(4, &|i| {
                                sum.fetch_add(i, SeqCst);
                            });
                        }
                        sum.into_inner()
                    })
                },
            );
            (a, b)
        });
        assert_eq!(sums, (200 * 28, 200 * 6));
    }

    #[test]
    fn a_chunks_panic_reaches_the_caller_after_the_step() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let ran = AtomicUsize::new(0);
        let result = pool.install(|| {
            catch_unwind(AssertUnwindSafe(|| {
                with_team(|team| {
                    team.run(16, &|i| {
                        ran.fetch_add(1, SeqCst);
                        assert!(i != 5, "chunk five");
                    })
                })
            }))
        });
        assert!(result.is_err());
        assert_eq!(ran.load(SeqCst), 16, "every chunk still ran");
        // The pool is usable afterwards: the helper returned.
        assert_eq!(pool.install(|| with_team(|t| t.threads())), 2);
    }

    #[test]
    fn a_one_thread_pool_runs_in_place() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let order = Mutex::new(Vec::new());
        pool.install(|| {
            with_team(|team| {
                assert_eq!(team.threads(), 1);
                team.run(5, &|i| order.lock().unwrap().push(i));
            })
        });
        assert_eq!(order.into_inner().unwrap(), vec![0, 1, 2, 3, 4]);
    }
}
