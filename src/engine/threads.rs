//! A pipeline's invocation threads.
//!
//! A Wasm call holds its thread until it returns or its epoch deadline
//! interrupts it, so invocations run off the async workers. tokio's blocking
//! pool, which they used before, starts a thread whenever no idle one is
//! counted at the moment of a call, and a thread that has just finished is
//! not counted yet: with 64 events in flight it went past 100 threads in a
//! long run, and each thread keeps its allocator heap and its stack pages
//! (benchmark #7's leak check: RSS followed the thread count). A pipeline
//! has at most one invocation per permit in flight, so here it has
//! `concurrency` threads, started with it and kept while it runs: no call
//! waits for a thread, and none is started and stopped again. (Started
//! when first needed, their number still crept up through a long run, as
//! ever larger bursts of calls came at once.)

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

type Job = Box<dyn FnOnce() + Send>;

/// Threads running jobs in the order they came; they stop once this is
/// dropped and the queue is empty.
pub struct Threads {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    work: Condvar,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Job>,
    /// Threads running.
    threads: usize,
    closed: bool,
}

impl Threads {
    /// Starts `count` threads (at least one) named `name`, for `top -H` and
    /// profiles.
    pub fn start(name: &str, count: usize) -> std::io::Result<Self> {
        let threads = Self {
            shared: Arc::new(Shared {
                state: Mutex::default(),
                work: Condvar::new(),
            }),
        };
        for _ in 0..count.max(1) {
            let shared = Arc::clone(&threads.shared);
            std::thread::Builder::new()
                .name(name.to_owned())
                .spawn(move || shared.work())?;
            threads.shared.lock().threads += 1;
        }
        Ok(threads)
    }

    /// Runs `f` on one of the threads. A panic in `f` resumes in the caller,
    /// and the thread goes on.
    pub async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (done, result) = tokio::sync::oneshot::channel();
        self.shared.lock().queue.push_back(Box::new(move || {
            let _ = done.send(std::panic::catch_unwind(AssertUnwindSafe(f)));
        }));
        self.shared.work.notify_one();
        match result
            .await
            .expect("an invocation thread ran every job it took")
        {
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

    fn work(&self) {
        let mut state = self.lock();
        loop {
            if let Some(job) = state.queue.pop_front() {
                drop(state);
                job();
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runs_calls_side_by_side_on_its_threads_and_queues_the_rest() {
        let threads = Arc::new(Threads::start("test-invoke", 4).unwrap());
        assert_eq!(threads.shared.lock().threads, 4);
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
                            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                            most.fetch_max(now, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(20));
                            running.fetch_sub(1, Ordering::SeqCst);
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

    #[tokio::test]
    async fn a_panicking_call_resumes_in_the_caller_and_the_thread_goes_on() {
        let threads = Arc::new(Threads::start("test-invoke", 1).unwrap());
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

    #[tokio::test]
    async fn threads_stop_when_dropped() {
        let threads = Threads::start("test-invoke", 2).unwrap();
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
