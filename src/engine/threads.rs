//! The invocation threads every pipeline of a process shares.
//!
//! A Wasm call holds its thread until it returns or its epoch deadline
//! interrupts it, so invocations run off the async workers. tokio's blocking
//! pool, which they used before, starts a thread whenever no idle one is
//! counted at the moment of a call, and a thread that has just finished is
//! not counted yet: with 64 events in flight it went past 100 threads in a
//! long run, and each thread keeps its allocator heap and its stack pages
//! (benchmark #7's leak check: RSS followed the thread count). Here a
//! thread is started only when a call finds every thread busy or spoken
//! for by calls already queued, is kept while the process runs, and there
//! are never more than `max` (`functions.max_threads`). A thread counts
//! itself idle before it hands its result back, so the caller's next call
//! finds it.
//!
//! Threads beyond one per core start only for calls that would otherwise
//! wait behind a thread held by one call for longer than [`STUCK_AFTER`]
//! (a function waiting on a request, or computing long): short calls in a
//! burst are taken one after another by the threads there are, rather than
//! each waking a thread of its own (benchmark #4: 64 threads for 64 events
//! in flight cost 15–20 % more CPU per event than 2, in context switches).
//! So the threads follow the events in flight, not the number of
//! pipelines: a thousand idle pipelines start none (benchmark #10), and
//! each pipeline's `concurrency` still bounds its own events in flight.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long a thread runs one call before it counts as held (waiting or
/// computing long), so that a queued call may start a thread beyond one
/// per core.
pub const STUCK_AFTER: Duration = Duration::from_millis(5);

/// A call, which returns the hand-over of its result.
type Job = Box<dyn FnOnce() -> Deliver + Send>;
type Deliver = Box<dyn FnOnce() + Send>;

/// Threads running jobs in the order they came, started as jobs need them;
/// they stop once this is dropped and the queue is empty.
pub struct Threads {
    shared: Arc<Shared>,
}

struct Shared {
    name: String,
    max: usize,
    /// Threads started as soon as calls need them: one per core.
    eager: usize,
    state: Mutex<State>,
    work: Condvar,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Job>,
    /// Jobs queued and taken so far: a job numbered `n` (from 0) is still
    /// queued while `taken <= n`.
    queued: u64,
    taken: u64,
    /// Threads running.
    threads: usize,
    /// Threads running a job.
    busy: usize,
    /// When each thread (by its number) took the job it runs.
    running_since: Vec<Option<Instant>>,
    closed: bool,
}

impl Threads {
    /// Threads named `name` (for `top -H` and profiles), at most `max` (at
    /// least one), none started yet.
    pub fn new(name: &str, max: usize) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::with_eager(name, max, cores)
    }

    /// [`new`](Self::new), with `eager` threads started as soon as calls
    /// need them instead of one per core.
    fn with_eager(name: &str, max: usize, eager: usize) -> Self {
        let max = max.max(1);
        Self {
            shared: Arc::new(Shared {
                name: name.to_owned(),
                max,
                eager: eager.clamp(1, max),
                state: Mutex::default(),
                work: Condvar::new(),
            }),
        }
    }

    /// Runs `f` on one of the threads. A panic in `f` resumes in the caller,
    /// and the thread goes on.
    pub async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let result = std::panic::catch_unwind(AssertUnwindSafe(f));
            Box::new(move || {
                let _ = done.send(result);
            })
        });
        let number = match self.shared.submit(job) {
            Ok(number) => Some(number),
            Err(job) => {
                // Not one thread could be started: the blocking pool runs it.
                tokio::task::spawn_blocking(move || job()());
                None
            }
        };
        tokio::pin!(result);
        let result = loop {
            tokio::select! {
                result = &mut result => break result,
                // Still queued behind threads held by long calls?
                _ = tokio::time::sleep(STUCK_AFTER), if number.is_some() => {
                    self.shared.grow_for(number.expect("checked"));
                }
            }
        };
        match result.expect("an invocation thread ran every job it took") {
            Ok(value) => value,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl Drop for Threads {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.work.notify_all();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Jobs run outside the lock and catch their panics: it is never
        // poisoned by one.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues `job` and returns its number, starting a thread when
    /// [`needs_thread`](Self::needs_thread) says so; gives the job back when
    /// there is no thread at all to run it.
    fn submit(self: &Arc<Self>, job: Job) -> Result<u64, Job> {
        let mut state = self.lock();
        if self.needs_thread(&state, 1) {
            self.start_thread(&mut state);
        }
        if state.threads == 0 {
            return Err(job);
        }
        state.queue.push_back(job);
        let number = state.queued;
        state.queued += 1;
        drop(state);
        self.work.notify_one();
        Ok(number)
    }

    /// For the call whose job is `number`: starts a thread if the job is
    /// still queued and [`needs_thread`](Self::needs_thread) says so now.
    fn grow_for(self: &Arc<Self>, number: u64) {
        let mut state = self.lock();
        if state.taken <= number && self.needs_thread(&state, 0) {
            self.start_thread(&mut state);
        }
    }

    /// Whether another thread should start, with `coming` more jobs about
    /// to be queued: when no idle thread is left for the queued jobs, fewer
    /// than `max` run, and fewer than one per core are free of a call held
    /// longer than [`STUCK_AFTER`].
    fn needs_thread(&self, state: &State, coming: usize) -> bool {
        let waiting = state.queue.len() + coming;
        if state.threads >= self.max || state.busy + waiting <= state.threads {
            return false;
        }
        let held = (state.running_since.iter().flatten())
            .filter(|since| since.elapsed() >= STUCK_AFTER)
            .count();
        state.threads - held < self.eager
    }

    fn start_thread(self: &Arc<Self>, state: &mut State) {
        let shared = Arc::clone(self);
        let number = state.running_since.len();
        match std::thread::Builder::new()
            .name(self.name.clone())
            .spawn(move || shared.work(number))
        {
            Ok(_) => {
                state.threads += 1;
                state.running_since.push(None);
            }
            Err(error) => {
                tracing::warn!(%error, threads = state.threads, "could not start an invocation thread")
            }
        }
    }

    /// Thread `number`'s loop.
    fn work(&self, number: usize) {
        let mut state = self.lock();
        loop {
            if let Some(job) = state.queue.pop_front() {
                state.busy += 1;
                state.taken += 1;
                state.running_since[number] = Some(Instant::now());
                drop(state);
                let deliver = job();
                {
                    let mut state = self.lock();
                    state.busy -= 1;
                    state.running_since[number] = None;
                }
                deliver();
                state = self.lock();
            } else if state.closed {
                state.threads -= 1;
                return;
            } else {
                state = self
                    .work
                    .wait(state)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// A call that takes `long`, counted in `running` while it runs, with
    /// the most seen at once in `most`.
    fn counted(running: &AtomicUsize, most: &AtomicUsize, long: Duration) {
        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
        most.fetch_max(now, Ordering::SeqCst);
        std::thread::sleep(long);
        running.fetch_sub(1, Ordering::SeqCst);
    }

    /// Threads start as calls need them, never more than `max`; calls
    /// beyond wait their turn.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runs_calls_side_by_side_on_its_threads_and_queues_the_rest() {
        let threads = Arc::new(Threads::new("test-invoke", 4));
        assert_eq!(threads.shared.lock().threads, 0, "none before a call");
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let mut calls = tokio::task::JoinSet::new();
        // Rounds of 8 calls at once for 4 threads.
        for round in 0..5 {
            for i in 0..8 {
                let (threads, running, most) = (threads.clone(), running.clone(), most.clone());
                calls.spawn(async move {
                    threads
                        .run(move || {
                            counted(&running, &most, Duration::from_millis(20));
                            round * 8 + i
                        })
                        .await
                });
            }
            let mut got = Vec::new();
            while let Some(value) = calls.join_next().await {
                got.push(value.unwrap());
            }
            got.sort();
            assert_eq!(got, (round * 8..round * 8 + 8).collect::<Vec<_>>());
        }
        // Four ran side by side, never more.
        assert_eq!(most.load(Ordering::SeqCst), 4);
        assert_eq!(threads.shared.lock().threads, 4);
    }

    /// Short calls in bursts keep to the eager threads, however many are
    /// in flight; calls that hold their threads (waiting) start more, up
    /// to `max`, and run side by side.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn short_calls_keep_to_the_eager_threads_and_held_ones_start_more() {
        let threads = Arc::new(Threads::with_eager("test-invoke", 16, 2));
        for _ in 0..50 {
            let mut calls = tokio::task::JoinSet::new();
            for i in 0..16u64 {
                let threads = threads.clone();
                calls.spawn(async move { threads.run(move || i * 2).await });
            }
            let mut sum = 0;
            while let Some(value) = calls.join_next().await {
                sum += value.unwrap();
            }
            assert_eq!(sum, (0..16).map(|i| i * 2).sum::<u64>());
        }
        assert_eq!(
            threads.shared.lock().threads,
            2,
            "short calls started threads"
        );

        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let started = std::time::Instant::now();
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..16 {
            let (threads, running, most) = (threads.clone(), running.clone(), most.clone());
            calls.spawn(async move {
                threads
                    .run(move || counted(&running, &most, Duration::from_millis(100)))
                    .await
            });
        }
        while calls.join_next().await.is_some() {}
        assert_eq!(threads.shared.lock().threads, 16);
        assert_eq!(
            most.load(Ordering::SeqCst),
            16,
            "held calls ran side by side"
        );
        // Side by side, not eight rounds of two.
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_panicking_call_resumes_in_the_caller_and_the_thread_goes_on() {
        let threads = Arc::new(Threads::new("test-invoke", 1));
        let call = tokio::spawn({
            let threads = threads.clone();
            async move {
                threads
                    .run(|| -> u32 { panic!("the function's host code") })
                    .await
            }
        });
        let error = call.await.expect_err("the panic resumed in the caller");
        assert!(error.is_panic());
        assert_eq!(threads.run(|| 7).await, 7);
        assert_eq!(threads.shared.lock().threads, 1);
    }

    /// Calls one after another reuse one thread: a thread is started only
    /// when none is idle.
    #[tokio::test]
    async fn sequential_calls_keep_to_one_thread() {
        let threads = Threads::new("test-invoke", 8);
        for i in 0..50 {
            assert_eq!(threads.run(move || i).await, i);
        }
        assert_eq!(threads.shared.lock().threads, 1);
    }

    #[tokio::test]
    async fn threads_stop_when_dropped() {
        let threads = Threads::new("test-invoke", 2);
        assert_eq!(threads.run(|| 1).await, 1);
        let shared = Arc::clone(&threads.shared);
        drop(threads);
        for _ in 0..200 {
            if shared.lock().threads == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("{} threads still running", shared.lock().threads);
    }
}
