//! Retry timing, and attempts while a commit stalls (the spool's test
//! hooks hold its writer), through the real dispatcher, queue, worker and spool, on
//! Tokio's paused clock: each attempt is answered by a script instead of a
//! socket, so virtual time moves only to the workers' own timers and the
//! schedule can be checked to the millisecond in no real time.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use std::sync::atomic::Ordering;

use super::dispatcher::EARLY_START;
use super::sender::{Attempt, Target};
use super::{Dispatcher, NewDelivery};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::reasons::{DeadReason, FailureReason};
use crate::retry::Outcome;
use crate::spool::{Spool, SpoolGauges};

/// Runs `test` on a current-thread runtime whose clock starts paused, in a
/// thread of its own, and fails after 60 real seconds instead of hanging.
fn on_paused_clock<F: Future<Output = ()> + 'static>(test: impl FnOnce() -> F + Send + 'static) {
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| runtime.block_on(test())));
        let _ = done.send(result);
    });
    match finished.recv_timeout(Duration::from_secs(60)) {
        Ok(Ok(())) => {}
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => panic!("the test did not finish in 60 real seconds"),
    }
}

fn failing(status: u16, retry_after: Option<Duration>) -> Attempt {
    let reason = if status == 429 { FailureReason::RateLimited } else { FailureReason::ServerError };
    Attempt {
        outcome: Outcome::Retryable { reason, retry_after },
        status: Some(status),
        error: Some(format!("HTTP {status}")),
        latency: Duration::ZERO,
    }
}

fn delivered() -> Attempt {
    Attempt { outcome: Outcome::Delivered, status: Some(204), error: None, latency: Duration::ZERO }
}

struct Run {
    dispatcher: Arc<Dispatcher>,
    spool: Arc<Spool>,
    metrics: Arc<Metrics>,
    /// When each attempt was made, as the script saw it.
    attempts: mpsc::UnboundedReceiver<Instant>,
    _dir: tempfile::TempDir,
}

/// A dispatcher with one receiver `r` (settings `fields`) whose attempts get
/// `answers` in turn, then `after`.
async fn start(fields: &str, answers: Vec<Attempt>, after: Attempt) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let spool = Arc::new(Spool::open(dir.path(), false, SpoolGauges::unregistered()).unwrap());
    let metrics = Arc::new(Metrics::new());
    let config =
        Config::from_yaml(&format!("receivers: [{{ name: r, url: 'http://127.0.0.1:9/', concurrency: 2, {fields} }}]"))
            .unwrap();
    let (seen, attempts) = mpsc::unbounded_channel();
    let answers = Arc::new(Mutex::new(answers.into_iter()));
    let connect = Arc::new(move |receiver| {
        let (seen, answers, after) = (seen.clone(), answers.clone(), after.clone());
        let script = move |_key: &str, _body: &[u8]| {
            let _ = seen.send(Instant::now());
            answers.lock().unwrap().next().unwrap_or_else(|| after.clone())
        };
        Target::scripted(receiver, Arc::new(script))
    });
    let dispatcher =
        Dispatcher::start_connecting(spool.clone(), metrics.clone(), config.receivers.clone(), connect).await.unwrap();
    Run { dispatcher, spool, metrics, attempts, _dir: dir }
}

impl Run {
    async fn accept(&self) -> Instant {
        let delivery = NewDelivery { receiver: "r".into(), alerts: 1, body: b"{}".to_vec(), template_error: None };
        let at = Instant::now();
        assert_eq!(self.dispatcher.accept("group", vec![delivery], Vec::new()).await.unwrap(), 1);
        at
    }

    /// When the next `n` attempts came, in milliseconds after `t0`.
    async fn next_attempts(&mut self, t0: Instant, n: usize) -> Vec<u64> {
        let mut at = Vec::new();
        for _ in 0..n {
            let seen = self.attempts.recv().await.expect("an attempt");
            at.push(u64::try_from(seen.duration_since(t0).as_millis()).unwrap());
        }
        at
    }

    /// Lets the worker finish what it does after the last attempt (no timer
    /// involved, so the clock stands still meanwhile).
    async fn settle(&self, done: impl Fn(&Run) -> bool) {
        // A real-time deadline: the paused clock does not move meanwhile.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !done(self) {
            assert!(std::time::Instant::now() < deadline, "the worker did not settle in 10 real seconds");
            tokio::task::yield_now().await;
        }
    }
}

/// Each figure within 2 ms of the expected one (the stored clock counts
/// whole milliseconds; Tokio's timer rounds up to the next one).
fn assert_close(actual: &[u64], expected: &[u64]) {
    let close = actual.len() == expected.len() && actual.iter().zip(expected).all(|(a, e)| a.abs_diff(*e) <= 2);
    assert!(close, "attempts at {actual:?} ms, expected {expected:?}");
}

#[test]
fn failed_attempts_are_retried_on_the_backoff_schedule() {
    on_paused_clock(|| async {
        let retry = "retry: { initial_interval: 500ms, multiplier: 2, max_interval: 4s, jitter: 0 }";
        let mut run = start(retry, vec![failing(503, None); 5], delivered()).await;
        let t0 = run.accept().await;
        // 500 ms, doubling, capped at 4 s.
        assert_close(&run.next_attempts(t0, 6).await, &[0, 500, 1500, 3500, 7500, 11500]);
        run.settle(|r| r.metrics.receiver("r").delivered.get() == 1).await;
        assert_eq!(run.dispatcher.pending(), 0);
        assert_eq!(run.metrics.receiver("r").requests_failed(FailureReason::ServerError).get(), 5);
    });
}

#[test]
fn retry_after_is_honoured_up_to_max_interval_then_backoff_resumes() {
    on_paused_clock(|| async {
        let retry = "retry: { initial_interval: 500ms, multiplier: 2, max_interval: 10s, jitter: 0 }";
        let answers = vec![
            failing(429, Some(Duration::from_secs(2))),
            failing(429, Some(Duration::from_secs(30))),
            failing(503, None),
        ];
        let mut run = start(retry, answers, delivered()).await;
        let t0 = run.accept().await;
        // 2 s as asked; 30 s asked, 10 s allowed; then the third retry's backoff, 2 s.
        assert_close(&run.next_attempts(t0, 4).await, &[0, 2000, 12000, 14000]);
        run.settle(|r| r.metrics.receiver("r").delivered.get() == 1).await;
    });
}

#[test]
fn a_delivery_that_keeps_failing_gets_one_last_try_at_max_elapsed_then_is_dead_lettered() {
    on_paused_clock(|| async {
        let retry = "retry: { initial_interval: 1s, multiplier: 2, max_interval: 1m, max_elapsed: 10s, jitter: 0 }";
        let mut run = start(retry, Vec::new(), failing(503, None)).await;
        let t0 = run.accept().await;
        // 1 s, 2 s, 4 s; the next (8 s) would pass the deadline: the last try is at it.
        assert_close(&run.next_attempts(t0, 5).await, &[0, 1000, 3000, 7000, 10000]);
        run.settle(|r| r.metrics.receiver("r").failed(DeadReason::Expired).get() == 1).await;
        let (pending, dead) = run.dispatcher.counts("r");
        assert_eq!((pending, dead), (0, 1));
        let rows = run.spool.load_all().unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].1.attempts, rows[0].1.dead), (5, Some(DeadReason::Expired)));
        // No attempt after the dead letter, however long one waits.
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(run.attempts.try_recv().is_err());
    });
}

#[test]
fn a_newer_notification_supersedes_one_waiting_for_its_retry_and_goes_at_once() {
    on_paused_clock(|| async {
        let retry = "retry: { initial_interval: 5s, multiplier: 2, max_interval: 1m, jitter: 0 }";
        let mut run = start(retry, vec![failing(503, None)], delivered()).await;
        let t0 = run.accept().await;
        assert_close(&run.next_attempts(t0, 1).await, &[0]);
        // The first failed and waits 5 s; a newer one of the group arrives at 1 s.
        tokio::time::sleep(Duration::from_secs(1)).await;
        run.accept().await;
        // It goes at once, not after the older one's backoff; the older is dropped.
        assert_close(&run.next_attempts(t0, 1).await, &[1000]);
        run.settle(|r| r.metrics.receiver("r").delivered.get() == 1).await;
        assert_eq!(run.metrics.receiver("r").superseded.get(), 1);
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(run.attempts.try_recv().is_err(), "the superseded one is never sent again");
        assert_eq!(run.dispatcher.pending(), 0);
    });
}

impl Run {
    /// Accepts one delivery of `group` in a task of its own, and returns
    /// once its commit is in the writer's hands and stalled there.
    async fn accept_stalled(&self) -> tokio::task::JoinHandle<Result<usize, crate::spool::SpoolError>> {
        let faults = self.spool.faults();
        faults.stall(true);
        let dispatcher = self.dispatcher.clone();
        let accepting = tokio::spawn(async move {
            let delivery = NewDelivery { receiver: "r".into(), alerts: 1, body: b"{}".to_vec(), template_error: None };
            dispatcher.accept("group", vec![delivery], Vec::new()).await
        });
        self.settle(|r| r.spool.faults().waiting.load(Ordering::SeqCst)).await;
        accepting
    }
}

#[test]
fn a_delivery_whose_commit_stalls_is_attempted_meanwhile_once_and_the_answer_waits() {
    on_paused_clock(|| async {
        let mut run = start("", Vec::new(), delivered()).await;
        // A start's first commit is never attempted early (see `ID_MARGIN`).
        let t0 = run.accept().await;
        run.next_attempts(t0, 1).await;
        run.settle(|r| r.spool.load_all().unwrap().is_empty()).await;
        let accepting = run.accept_stalled().await;
        let t1 = Instant::now();
        tokio::time::advance(EARLY_START).await;
        // Exactly then: the clock is paused, and nothing else is due before it.
        let early = u64::try_from(EARLY_START.as_millis()).unwrap();
        assert_eq!(run.next_attempts(t1, 1).await, [early]);
        assert!(!accepting.is_finished(), "answered before its commit was durable");
        assert!(run.spool.load_all().unwrap().is_empty(), "nothing durable yet");
        run.spool.faults().stall(false);
        assert_eq!(accepting.await.unwrap().unwrap(), 1);
        // Removed once delivered, after its insert (not before: it would come back).
        run.settle(|r| r.spool.load_all().unwrap().is_empty() && r.dispatcher.pending() == 0).await;
        let m = run.metrics.receiver("r");
        assert_eq!((m.delivered.get(), m.notifications.get()), (2, 2));
        assert_eq!(run.metrics.spool_early_starts.get(), 1);
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(run.attempts.try_recv().is_err(), "attempted once, not again once committed");
    });
}

#[test]
fn a_failed_commit_takes_back_what_it_queued_early_and_restores_what_that_superseded() {
    on_paused_clock(|| async {
        let retry = "retry: { initial_interval: 5s, multiplier: 2, max_interval: 1m, jitter: 0 }";
        let mut run = start(retry, vec![failing(503, None); 2], delivered()).await;
        let t0 = run.accept().await;
        run.next_attempts(t0, 1).await;
        run.settle(|r| r.spool.load_all().unwrap().first().is_some_and(|(_, m)| m.attempts == 1)).await;
        let first = run.spool.load_all().unwrap()[0].0;
        // A newer notification of the group, whose commit stalls, then fails.
        run.spool.faults().failing.store(1, Ordering::SeqCst);
        let accepting = run.accept_stalled().await;
        tokio::time::advance(EARLY_START).await;
        // Sent at once (and failing), the first superseded meanwhile.
        run.next_attempts(t0, 1).await;
        run.spool.faults().stall(false);
        let answer = accepting.await.unwrap();
        assert!(matches!(answer, Err(crate::spool::SpoolError::Unavailable(_))), "{answer:?}");
        // The newer one is gone once its attempt is over; the first is back.
        run.settle(|r| r.dispatcher.counts("r") == (1, 0)).await;
        let rows = run.spool.load_all().unwrap();
        assert_eq!(rows.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [first]);
        let m = run.metrics.receiver("r");
        assert_eq!((m.superseded.get(), m.notifications.get()), (0, 1));
        // It is retried on its own schedule, and delivered.
        let times = run.next_attempts(t0, 1).await;
        assert!(times[0] >= 5000, "the first's retry, 5 s after its attempt: {times:?}");
        run.settle(|r| r.metrics.receiver("r").delivered.get() == 1 && r.dispatcher.pending() == 0).await;
    });
}
