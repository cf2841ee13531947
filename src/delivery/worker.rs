//! A receiver's queue at run time, and the workers that make its attempts:
//! take the next due delivery, send it, record the outcome durably, tell the
//! queue. One worker, one attempt at a time; a receiver has `concurrency` of
//! them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use super::queue::{Finish, QueueState, Step};
use super::sender::Target;
use crate::clock::now_ms;
use crate::metrics::ReceiverMetrics;
use crate::reasons::FilterReason;
use crate::retry::{Next, Outcome};
use crate::spool::{DeliveryMeta, Op, Spool};
use crate::sync::{lock, read, write};

/// One receiver's pending deliveries, its target and its workers.
pub struct Queue {
    pub target: RwLock<Arc<Target>>,
    pub state: Mutex<QueueState>,
    pub wake: Notify,
    /// Worker `i` runs while `i` is below the receiver's concurrency.
    pub workers: Mutex<Vec<JoinHandle<()>>>,
    /// Set when the receiver leaves: its workers end.
    pub removed: AtomicBool,
    pub metrics: Arc<ReceiverMetrics>,
    /// The `filtered{reason="disabled"}` count when the receiver was last
    /// turned off: what it skipped since is the counter minus this.
    pub disabled_at: AtomicU64,
}

impl Queue {
    pub fn new(target: Arc<Target>, metrics: ReceiverMetrics) -> Queue {
        Queue {
            target: RwLock::new(target),
            state: Mutex::new(QueueState::default()),
            wake: Notify::new(),
            workers: Mutex::new(Vec::new()),
            removed: AtomicBool::new(false),
            metrics: Arc::new(metrics),
            disabled_at: AtomicU64::new(0),
        }
    }

    /// Puts new settings in force for every attempt from now on.
    pub fn set_target(&self, target: Arc<Target>) {
        let was_enabled = self.target().receiver.enabled;
        if was_enabled && !target.receiver.enabled {
            let now = self.metrics.alerts_filtered(FilterReason::Disabled).get();
            self.disabled_at.store(now, Ordering::Relaxed);
        }
        *write(&self.target) = target;
    }

    /// Alerts dropped for this receiver since it was turned off; None while on.
    pub fn skipped_while_disabled(&self) -> Option<u64> {
        if self.target().receiver.enabled {
            return None;
        }
        let now = self.metrics.alerts_filtered(FilterReason::Disabled).get();
        Some(now.saturating_sub(self.disabled_at.load(Ordering::Relaxed)))
    }

    /// Shows the state's counts in the receiver's gauges (not once removed).
    pub fn show(&self, state: &QueueState) {
        if !self.removed.load(Ordering::Relaxed) {
            self.metrics.spool_pending.set(state.pending() as i64);
            self.metrics.dead_letters.set(state.dead() as i64);
        }
    }

    pub fn target(&self) -> Arc<Target> {
        read(&self.target).clone()
    }

    /// Wakes every worker: one stored permit covers a worker about to wait.
    pub fn wake_all(&self) {
        self.wake.notify_waiters();
        self.wake.notify_one();
    }

    /// Starts workers up to the receiver's concurrency; workers past it end on
    /// their own once idle.
    pub fn spawn_workers(self: &Arc<Self>, spool: &Arc<Spool>, stop: &watch::Sender<bool>) {
        let concurrency = self.target().receiver.concurrency;
        let mut workers = lock(&self.workers);
        workers.truncate(concurrency);
        for index in workers.len()..concurrency {
            let worker = Worker { spool: spool.clone(), queue: self.clone(), index };
            workers.push(tokio::spawn(worker.run(stop.subscribe())));
        }
    }
}

struct Worker {
    spool: Arc<Spool>,
    queue: Arc<Queue>,
    index: usize,
}

impl Worker {
    async fn run(self, mut stop: watch::Receiver<bool>) {
        let queue = &self.queue;
        loop {
            let target = queue.target();
            if *stop.borrow() || queue.removed.load(Ordering::Relaxed) || self.index >= target.receiver.concurrency {
                // A wake-up this worker may have taken goes to another.
                queue.wake.notify_one();
                return;
            }
            let (step, more) = if target.receiver.enabled {
                let mut state = lock(&queue.state);
                let step = state.take(now_ms());
                (step, state.waiting())
            } else {
                (Step::Idle, false)
            };
            match step {
                Step::Attempt(id, meta) => {
                    // Another delivery waits (due now, or later: someone must
                    // keep its time while this attempt runs): pass the wake-up
                    // on. Not otherwise: a wake-up with nothing to take costs a
                    // futex wake and a context switch on a busy machine.
                    if more {
                        queue.wake.notify_one();
                    }
                    let finish = self.attempt(&target, id, meta).await;
                    self.finish(&target.receiver.name, id, finish).await;
                }
                Step::WaitUntil(due) => {
                    let wait = Duration::from_millis(due.saturating_sub(now_ms()));
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = queue.wake.notified() => {}
                        _ = stop.changed() => {}
                    }
                }
                Step::Idle => {
                    tokio::select! {
                        _ = queue.wake.notified() => {}
                        _ = stop.changed() => {}
                    }
                }
            }
        }
    }

    /// One attempt, its outcome recorded in the spool (removal of a delivered
    /// one rides the next commit).
    async fn attempt(&self, target: &Target, id: u64, mut meta: DeliveryMeta) -> Finish {
        let name = target.receiver.name.as_str();
        let body = match self.spool.body(id) {
            Ok(Some(body)) => body,
            Ok(None) => {
                log::error!("receiver {name}: delivery {id} has no payload in the spool; dropped");
                return Finish::Gone { dead: false };
            }
            Err(e) => {
                log::error!("receiver {name}: delivery {id}: {e}; retrying in 1s");
                meta.next_due_ms = now_ms() + 1000;
                return Finish::Retry(meta);
            }
        };
        let started = now_ms();
        let key = format!("{}-{id}", self.spool.instance());
        let attempt = target.send(&key, body).await;
        let m = &self.queue.metrics;
        m.requests.inc();
        m.request_duration.observe(attempt.latency.as_secs_f64());
        meta.attempts += 1;
        let first = *meta.first_attempt_ms.get_or_insert(started);
        meta.last_error = attempt.error.clone();
        let error = attempt.error.as_deref().unwrap_or("");
        let dead = match attempt.outcome {
            Outcome::Delivered => {
                m.delivered.inc();
                m.delivery_latency.observe(now_ms().saturating_sub(meta.created_ms) as f64 / 1000.0);
                log::debug!("receiver {name}: delivery {id} delivered after {} attempts", meta.attempts);
                // Not waited for: if the process dies before this is on disk, the
                // delivery is sent again, with the same Idempotency-Key. Waiting
                // would cost every worker an fsync per delivery.
                self.spool.commit_later(vec![Op::Remove { id }]);
                return Finish::Gone { dead: false };
            }
            Outcome::Retryable { reason, retry_after } => {
                m.requests_failed(reason).inc();
                let policy = &target.receiver.retry;
                match policy.after_failure(meta.attempts, first, now_ms(), retry_after, fastrand::f64()) {
                    Next::RetryAt(at) => {
                        log::warn!(
                            "receiver {name}: delivery {id} attempt {} failed: {error}; next in {}ms",
                            meta.attempts,
                            at.saturating_sub(now_ms())
                        );
                        meta.next_due_ms = at;
                        self.record(name, id, &meta).await;
                        return Finish::Retry(meta);
                    }
                    Next::Dead(dead) => dead,
                }
            }
            Outcome::Permanent { reason } => {
                m.requests_failed(reason).inc();
                reason.dead_reason()
            }
        };
        log::warn!(
            "receiver {name}: delivery {id} dead-lettered ({}) after {} attempts: {error}",
            dead.as_str(),
            meta.attempts
        );
        meta.dead = Some(dead);
        self.record(name, id, &meta).await;
        // Counted once the dead letter is on disk, so that whoever sees the
        // counter move also finds the dead letter in the deliveries list.
        m.failed(dead).inc();
        Finish::Gone { dead: true }
    }

    async fn record(&self, name: &str, id: u64, meta: &DeliveryMeta) {
        if let Err(e) = self.spool.commit(vec![Op::Update { id, meta: meta.clone() }]).await {
            log::error!("receiver {name}: recording delivery {id} failed: {e}");
        }
    }

    async fn finish(&self, name: &str, id: u64, how: Finish) {
        let queue = &self.queue;
        let superseded = {
            let mut state = lock(&queue.state);
            let superseded = state.finish(id, how);
            queue.show(&state);
            superseded
        };
        if superseded {
            log::info!("receiver {name}: failed delivery {id} superseded by a newer notification of its group");
            queue.metrics.superseded.inc();
            if let Err(e) = self.spool.commit(vec![Op::Remove { id }]).await {
                log::error!("receiver {name}: removing superseded delivery {id} failed: {e}");
            }
        }
        // No wake-up here: this worker loops and takes what this attempt's end
        // made due (a retry, the group's next notification), and passes a
        // wake-up on if anything else waits.
    }
}
