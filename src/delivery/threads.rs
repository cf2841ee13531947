//! Where delivery workers run: on the HTTP server's worker threads.
//!
//! A request's handler commits the payload and hands the deliveries to their
//! queues; a worker on the same thread takes one without a wake-up across
//! threads, and the connection its attempt uses is driven there too. With the
//! workers on a runtime of their own, every payload cost wake-ups and context
//! switches between four busy threads on two cores: a third of the relay's CPU
//! per payload (BENCHMARKS.md, session 9).
//!
//! The server's threads start after the dispatcher (which resumes the spool's
//! deliveries before the server listens), and one may stop (the server's stop,
//! or a thread that died and was replaced). So a worker is supervised from the
//! runtime that spawns it: the supervisor waits for the threads, puts the
//! worker on one (round robin), and puts it on another if that thread's
//! runtime goes away under it. With no thread expected (unit tests) or none
//! left, workers run on the spawning runtime.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;

use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio::task::{AbortHandle, JoinHandle};

use crate::sync::lock;

#[derive(Default)]
pub struct WorkerThreads {
    /// How many server threads there will be; 0: run workers where spawned.
    expected: usize,
    live: Mutex<Live>,
    changed: Notify,
    next: AtomicUsize,
}

#[derive(Default)]
struct Live {
    threads: Vec<(ThreadId, Handle)>,
    /// Every expected thread has registered once: from now on a thread
    /// missing is one that stopped, not one still starting.
    started: bool,
}

impl WorkerThreads {
    /// Workers run on the runtime that spawns them.
    pub fn here() -> Arc<WorkerThreads> {
        Arc::new(WorkerThreads::default())
    }

    /// Workers run on the `expected` threads that `register` once each.
    pub fn expecting(expected: usize) -> Arc<WorkerThreads> {
        Arc::new(WorkerThreads { expected, ..WorkerThreads::default() })
    }

    /// Offers the calling thread's runtime to the workers (a server thread
    /// building its app: once per thread counts). It is withdrawn when that
    /// runtime shuts down.
    pub fn register(self: &Arc<Self>) {
        let Ok(handle) = Handle::try_current() else { return };
        let id = std::thread::current().id();
        {
            let mut live = lock(&self.live);
            if live.threads.iter().any(|(t, _)| *t == id) {
                return;
            }
            live.threads.push((id, handle.clone()));
            if live.threads.len() >= self.expected {
                live.started = true;
            }
        }
        // Dropped, with the guard, when the runtime shuts down.
        let guard = Withdraw { threads: Arc::downgrade(self), id };
        handle.spawn(async move {
            let _guard = guard;
            std::future::pending::<()>().await
        });
        self.changed.notify_waiters();
    }

    fn withdraw(&self, id: ThreadId) {
        lock(&self.live).threads.retain(|(t, _)| *t != id);
        self.changed.notify_waiters();
    }

    /// The runtime for the next worker; None to run it where it is.
    async fn pick(&self) -> Option<Handle> {
        loop {
            let changed = self.changed.notified();
            {
                let live = lock(&self.live);
                if live.started || self.expected == 0 {
                    if live.threads.is_empty() {
                        return None;
                    }
                    let at = self.next.fetch_add(1, Ordering::Relaxed) % live.threads.len();
                    return Some(live.threads[at].1.clone());
                }
            }
            changed.await;
        }
    }

    /// Runs the worker that `make` builds on a server thread: its handle ends
    /// when the worker does, and aborting it aborts the worker. A worker
    /// whose thread's runtime went away is made again on another (or here).
    pub fn spawn<F, W>(self: &Arc<Self>, make: F) -> JoinHandle<()>
    where
        F: Fn() -> W + Send + 'static,
        W: Future<Output = ()> + Send + 'static,
    {
        if self.expected == 0 {
            return tokio::spawn(make());
        }
        let threads = self.clone();
        tokio::spawn(async move {
            loop {
                let Some(handle) = threads.pick().await else {
                    make().await;
                    return;
                };
                let worker = handle.spawn(make());
                let _abort = AbortOnDrop(worker.abort_handle());
                match worker.await {
                    // Its runtime shut down (not an abort: that drops this
                    // supervisor first). Another thread takes the worker.
                    Err(e) if e.is_cancelled() => {
                        log::debug!("a delivery worker's thread stopped; the worker moves to another");
                        tokio::task::yield_now().await;
                    }
                    // Ended, or panicked: as a worker spawned directly.
                    _ => return,
                }
            }
        })
    }
}

struct Withdraw {
    threads: std::sync::Weak<WorkerThreads>,
    id: ThreadId,
}

impl Drop for Withdraw {
    fn drop(&mut self) {
        if let Some(threads) = self.threads.upgrade() {
            threads.withdraw(self.id);
        }
    }
}

struct AbortOnDrop(AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::sync::mpsc;

    /// A server thread stand-in: a current-thread runtime on its own thread
    /// that registers, then runs until `stop` is dropped.
    fn server_thread(threads: Arc<WorkerThreads>, name: &str) -> std::sync::mpsc::SyncSender<()> {
        let (stop, stopped) = std::sync::mpsc::sync_channel::<()>(0);
        let (ready, registered) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                runtime.block_on(async {
                    threads.register();
                    ready.send(()).unwrap();
                    // Blocking this runtime's only thread would starve its
                    // tasks: wait for the stop on a blocking thread.
                    let _ = tokio::task::spawn_blocking(move || stopped.recv()).await;
                });
                // Dropping the runtime drops its tasks: the worker's too.
            })
            .unwrap();
        registered.recv().unwrap();
        stop
    }

    /// A worker that reports the name of the thread it runs on each time it
    /// is made, then runs until aborted.
    fn reporting(
        seen: mpsc::UnboundedSender<String>,
    ) -> impl Fn() -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send + 'static {
        move || {
            let seen = seen.clone();
            Box::pin(async move {
                let _ = seen.send(std::thread::current().name().unwrap_or("?").to_string());
                std::future::pending::<()>().await
            })
        }
    }

    async fn next(seen: &mut mpsc::UnboundedReceiver<String>) -> String {
        tokio::time::timeout(Duration::from_secs(10), seen.recv()).await.expect("no worker started").unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn workers_wait_for_the_server_threads_spread_over_them_and_move_when_one_stops() {
        let threads = WorkerThreads::expecting(2);
        let (tx, mut seen) = mpsc::unbounded_channel();
        // Spawned before any server thread exists: it waits for both.
        let first = threads.spawn(reporting(tx.clone()));
        let second = threads.spawn(reporting(tx.clone()));
        let stop_a = server_thread(threads.clone(), "server-a");
        tokio::task::yield_now().await;
        assert!(seen.try_recv().is_err(), "a worker started before every server thread had registered");
        let stop_b = server_thread(threads.clone(), "server-b");
        let mut names = vec![next(&mut seen).await, next(&mut seen).await];
        names.sort();
        assert_eq!(names, ["server-a", "server-b"], "one worker per thread, round robin");

        // Thread a stops: its worker is made again on b.
        drop(stop_a);
        assert_eq!(next(&mut seen).await, "server-b");
        // b stops too: the worker it held runs on the spawning runtime.
        drop(stop_b);
        let moved = [next(&mut seen).await, next(&mut seen).await];
        let here = tokio::spawn(async { std::thread::current().name().unwrap_or("?").to_string() }).await.unwrap();
        assert_eq!(moved, [here.clone(), here]);

        // Aborting the handles ends the workers (the channel's senders go
        // with them, and the test's own).
        first.abort();
        second.abort();
        assert!(first.await.unwrap_err().is_cancelled());
        assert!(second.await.unwrap_err().is_cancelled());
        drop(tx);
        assert!(tokio::time::timeout(Duration::from_secs(10), seen.recv()).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn with_no_thread_expected_workers_run_where_spawned_and_end_with_their_handle() {
        let threads = WorkerThreads::here();
        let (tx, mut seen) = mpsc::unbounded_channel();
        let worker = threads.spawn(reporting(tx));
        let name = next(&mut seen).await;
        assert_eq!(Some(name.as_str()), std::thread::current().name());
        worker.abort();
        assert!(worker.await.unwrap_err().is_cancelled());
        assert!(seen.recv().await.is_none(), "the aborted worker still holds its channel");
    }
}
