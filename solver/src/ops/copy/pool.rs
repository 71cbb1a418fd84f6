//! Worker threads that copy regular files while the walk goes on.
//!
//! Copying a large context is mostly waiting: on `sendfile` through the
//! overlay, on path lookups, on the target filesystem creating inodes. One
//! thread doing all of it in turn keeps one core busy and leaves the others
//! idle, so the walk (which stays sequential and decides everything that
//! depends on order: names, directories, hard links) hands each regular
//! file's copy to a few workers.
//!
//! What the walk observes must not depend on timing:
//!
//! - The copy fails with the error of the earliest failing file in walk
//!   order. A job is skipped once a job *before* it failed, never when only a
//!   later one did, so the earliest failure always runs and is the one kept.
//! - [`Pool::wait`] returns once every job handed over so far is done; the
//!   writer calls it before anything that could see a file still being
//!   written (directory times, a path a job writes to, the end of an item).
//! - Dropping the pool stops and joins its threads: none outlives the copy.

use std::collections::VecDeque;
use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use super::CopyError;
use super::tree::FileJob;
use crate::sandbox::CancelHandle;

/// Jobs queued per worker before the walk waits: enough that a worker never
/// idles while the walk stats the next entries, few enough that a failure
/// or a cancellation stops the copy soon.
const QUEUE_PER_WORKER: usize = 16;

/// How many workers copy files: the I/O waits make more threads than cores
/// useful, and past a handful they only contend on the target directory's
/// lock. `BUILDER_COPY_WORKERS` overrides it (0: copy on the walking
/// thread), for measurements.
pub(super) fn worker_count() -> usize {
    if let Some(n) = std::env::var("BUILDER_COPY_WORKERS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        return n.min(64);
    }
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    (cores * 2).clamp(2, 8)
}

/// What the workers wrote, summed.
#[derive(Debug, Default)]
pub(super) struct Done {
    pub(super) files: u64,
    pub(super) bytes: u64,
}

#[derive(Default)]
struct State {
    queue: VecDeque<FileJob>,
    /// Jobs taken from the queue and not finished yet.
    running: usize,
    closed: bool,
    /// The failure of the earliest job (in walk order) that failed so far.
    failed: Option<(u64, CopyError)>,
    done: Done,
}

impl State {
    fn failed_before(&self, seq: u64) -> bool {
        self.failed.as_ref().is_some_and(|(first, _)| *first < seq)
    }

    fn record(&mut self, seq: u64, error: CopyError) {
        if !self.failed_before(seq) {
            self.failed = Some((seq, error));
        }
    }
}

struct Shared {
    state: Mutex<State>,
    /// A job was queued, or the pool is closing.
    queued: Condvar,
    /// A job finished (or was skipped): the walk may queue more, or be done
    /// waiting.
    progressed: Condvar,
    cancel: CancelHandle,
}

impl Shared {
    /// The state, also after a thread panicked while holding it: panics in
    /// jobs are caught outside the lock, so the counters stay consistent.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wait<'s>(&self, cond: &Condvar, guard: MutexGuard<'s, State>) -> MutexGuard<'s, State> {
        cond.wait(guard).unwrap_or_else(PoisonError::into_inner)
    }
}

/// A few threads copying regular files, in the order the walk queued them.
pub(super) struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    capacity: usize,
}

impl Pool {
    /// Starts `workers` threads; `None` when not even one could be started
    /// (the writer then copies on its own thread, as before).
    pub(super) fn start(workers: usize, cancel: &CancelHandle) -> Option<Pool> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            queued: Condvar::new(),
            progressed: Condvar::new(),
            cancel: cancel.clone(),
        });
        let mut handles = Vec::with_capacity(workers);
        for i in 0..workers {
            let shared = Arc::clone(&shared);
            match std::thread::Builder::new()
                .name(format!("copy-{i}"))
                .spawn(move || work(&shared))
            {
                Ok(handle) => handles.push(handle),
                // Fewer workers are still workers; none at all is the
                // caller's fallback.
                Err(_) => break,
            }
        }
        let pool = Pool {
            capacity: handles.len().max(1) * QUEUE_PER_WORKER,
            shared,
            workers: handles,
        };
        if pool.workers.is_empty() {
            None
        } else {
            Some(pool)
        }
    }

    /// Queues a job, waiting while the queue is full. Gives the job back
    /// when an earlier job failed: the walk should stop and
    /// [`wait`](Self::wait) for that error.
    pub(super) fn push(&self, job: FileJob) -> Result<(), FileJob> {
        let mut state = self.shared.lock();
        while state.queue.len() >= self.capacity && state.failed.is_none() {
            state = self.shared.wait(&self.shared.progressed, state);
        }
        if state.failed.is_some() {
            return Err(job);
        }
        state.queue.push_back(job);
        drop(state);
        self.shared.queued.notify_one();
        Ok(())
    }

    /// Waits until every queued job is done (or skipped after an earlier
    /// failure); returns what they wrote since the last call, or the
    /// earliest failure.
    pub(super) fn wait(&self) -> Result<Done, CopyError> {
        let mut state = self.shared.lock();
        while !state.queue.is_empty() || state.running > 0 {
            state = self.shared.wait(&self.shared.progressed, state);
        }
        let done = std::mem::take(&mut state.done);
        match state.failed.take() {
            Some((_, error)) => Err(error),
            None => Ok(done),
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        {
            let mut state = self.shared.lock();
            state.closed = true;
            // Whatever is still queued is not wanted any more: the copy is
            // returning with an error without waiting for it.
            state.queue.clear();
        }
        self.shared.queued.notify_all();
        for handle in self.workers.drain(..) {
            let _ = handle.join();
        }
    }
}

/// A worker: takes jobs in queue order until the pool closes.
fn work(shared: &Shared) {
    let mut state = shared.lock();
    loop {
        let Some(job) = state.queue.pop_front() else {
            if state.closed {
                return;
            }
            state = shared.wait(&shared.queued, state);
            continue;
        };
        if state.failed_before(job.seq) {
            // A file before this one failed: the copy fails with that
            // error whatever happens here.
            shared.progressed.notify_all();
            continue;
        }
        state.running += 1;
        drop(state);
        let result = if shared.cancel.is_cancelled() {
            Err(CopyError::Cancelled)
        } else {
            catch_unwind(AssertUnwindSafe(|| job.run())).unwrap_or_else(|_| {
                Err(CopyError::Io {
                    what: format!("copy {}", job.shown_target()),
                    source: io::Error::other("the copying thread panicked"),
                })
            })
        };
        state = shared.lock();
        state.running -= 1;
        match result {
            Ok(bytes) => {
                state.done.files += 1;
                state.done.bytes += bytes;
            }
            Err(error) => state.record(job.seq, error),
        }
        shared.progressed.notify_all();
    }
}
