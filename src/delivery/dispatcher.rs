//! The dispatcher: per-receiver queues in due-time order, worked by each
//! receiver's own set of workers, with every state change made durable in the
//! spool before it is acted on.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use super::retry::{DeadReason, Next, Outcome};
use super::sender::Target;
use crate::config::Receiver;
use crate::metrics::Metrics;
use crate::spool::{DeliveryMeta, Op, Spool, SpoolError};

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A new delivery for one receiver, as routing made it.
pub struct NewDelivery {
    pub receiver: String,
    pub alerts: u32,
    pub body: Vec<u8>,
}

struct Entry {
    meta: DeliveryMeta,
    /// A newer notification of the group arrived while this one was in flight:
    /// if the attempt fails it is dropped rather than retried.
    obsolete: bool,
}

#[derive(Default)]
struct Group {
    in_flight: Option<u64>,
    pending: Option<u64>,
}

/// What a worker should do next.
#[derive(Debug, PartialEq)]
enum Step {
    Attempt(u64, DeliveryMeta),
    WaitUntil(u64),
    Idle,
}

/// How an attempt ended, for the in-memory queue.
enum Finish {
    Gone,
    Dead,
    Retry(DeliveryMeta),
}

/// The pending deliveries of one receiver. Deliveries with a group key are
/// serialised per group: at most one in flight, and only the newest waits.
#[derive(Default)]
struct QueueState {
    entries: HashMap<u64, Entry>,
    due: BTreeSet<(u64, u64)>,
    groups: HashMap<String, Group>,
    dead: usize,
}

impl QueueState {
    /// Adds a pending delivery; returns the ids it supersedes (possibly its own,
    /// when a newer one of its group is already here).
    fn add(&mut self, id: u64, meta: DeliveryMeta) -> Vec<u64> {
        let mut superseded = Vec::new();
        if !meta.group_key.is_empty() {
            let group = self.groups.entry(meta.group_key.clone()).or_default();
            if group.in_flight.is_some_and(|f| f > id) || group.pending.is_some_and(|p| p > id) {
                return vec![id];
            }
            if let Some(older) = group.pending.replace(id) {
                if let Some(old) = self.entries.remove(&older) {
                    self.due.remove(&(old.meta.next_due_ms, older));
                }
                superseded.push(older);
            }
            if let Some(flying) = group.in_flight {
                if let Some(e) = self.entries.get_mut(&flying) {
                    e.obsolete = true;
                }
            }
        }
        self.due.insert((meta.next_due_ms, id));
        self.entries.insert(
            id,
            Entry {
                meta,
                obsolete: false,
            },
        );
        superseded
    }

    fn take(&mut self, now: u64) -> Step {
        let mut chosen = None;
        for &(due, id) in &self.due {
            if due > now {
                return Step::WaitUntil(due);
            }
            let Some(entry) = self.entries.get(&id) else {
                continue;
            };
            let key = &entry.meta.group_key;
            if !key.is_empty() && self.groups.get(key).is_some_and(|g| g.in_flight.is_some()) {
                continue;
            }
            chosen = Some((due, id));
            break;
        }
        let Some((due, id)) = chosen else {
            return Step::Idle;
        };
        self.due.remove(&(due, id));
        let Some(entry) = self.entries.get(&id) else {
            return Step::Idle;
        };
        let meta = entry.meta.clone();
        if let Some(group) = self.groups.get_mut(&meta.group_key) {
            group.pending = None;
            group.in_flight = Some(id);
        }
        Step::Attempt(id, meta)
    }

    /// Records the end of an attempt; true when the delivery was superseded
    /// meanwhile and must be removed from the spool.
    fn finish(&mut self, id: u64, how: Finish) -> bool {
        let Some(entry) = self.entries.remove(&id) else {
            return false;
        };
        let key = entry.meta.group_key.clone();
        let mut superseded = false;
        match how {
            Finish::Gone => {}
            Finish::Dead => self.dead += 1,
            Finish::Retry(meta) if entry.obsolete => {
                let _ = meta;
                superseded = true;
            }
            Finish::Retry(meta) => {
                self.due.insert((meta.next_due_ms, id));
                if let Some(group) = self.groups.get_mut(&key) {
                    group.pending = Some(id);
                }
                self.entries.insert(
                    id,
                    Entry {
                        meta,
                        obsolete: false,
                    },
                );
            }
        }
        if let Some(group) = self.groups.get_mut(&key) {
            if group.in_flight == Some(id) {
                group.in_flight = None;
            }
            if group.in_flight.is_none() && group.pending.is_none() {
                self.groups.remove(&key);
            }
        }
        superseded
    }
}

struct Queue {
    target: RwLock<Arc<Target>>,
    state: Mutex<QueueState>,
    wake: Notify,
}

impl Queue {
    fn target(&self) -> Arc<Target> {
        self.target
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

pub struct Dispatcher {
    spool: Arc<Spool>,
    metrics: Arc<Metrics>,
    receivers: Arc<Vec<Arc<Receiver>>>,
    queues: HashMap<String, Arc<Queue>>,
    /// Pending deliveries in the spool, every receiver's.
    pending: AtomicUsize,
    stop: watch::Sender<bool>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl Dispatcher {
    /// Builds every receiver's queue, resumes what the spool holds and starts the
    /// workers on the current Tokio runtime.
    pub async fn start(
        spool: Arc<Spool>,
        metrics: Arc<Metrics>,
        receivers: Vec<Arc<Receiver>>,
    ) -> Result<Arc<Dispatcher>, String> {
        let mut queues = HashMap::new();
        for r in &receivers {
            metrics.init_receiver(&r.name);
            let target = Target::new(r.clone()).map_err(|e| format!("receiver {}: {e}", r.name))?;
            queues.insert(
                r.name.clone(),
                Arc::new(Queue {
                    target: RwLock::new(Arc::new(target)),
                    state: Mutex::new(QueueState::default()),
                    wake: Notify::new(),
                }),
            );
        }
        let (stop, _) = watch::channel(false);
        let dispatcher = Arc::new(Dispatcher {
            spool,
            metrics,
            receivers: Arc::new(receivers),
            queues,
            pending: AtomicUsize::new(0),
            stop,
            workers: Mutex::new(Vec::new()),
        });
        dispatcher.resume().await.map_err(|e| e.to_string())?;
        let mut workers = lock(&dispatcher.workers);
        for r in dispatcher.receivers.iter() {
            let Some(queue) = dispatcher.queues.get(&r.name) else {
                continue;
            };
            for _ in 0..r.concurrency {
                let d = dispatcher.clone();
                let q = queue.clone();
                workers.push(tokio::spawn(async move { d.work(q).await }));
            }
        }
        drop(workers);
        Ok(dispatcher)
    }

    /// Loads the spool into the queues; deliveries of receivers no longer
    /// configured stay in the spool untouched.
    async fn resume(&self) -> Result<(), SpoolError> {
        let mut stale = Vec::new();
        let mut orphans: HashMap<String, usize> = HashMap::new();
        let mut pending = 0;
        for (id, meta) in self.spool.load_all()? {
            let Some(queue) = self.queues.get(&meta.receiver) else {
                *orphans.entry(meta.receiver.clone()).or_default() += 1;
                if meta.dead.is_none() {
                    pending += 1;
                }
                continue;
            };
            let mut state = lock(&queue.state);
            if meta.dead.is_some() {
                state.dead += 1;
            } else {
                pending += 1;
                stale.extend(state.add(id, meta));
            }
        }
        for (name, count) in orphans {
            log::warn!("spool holds {count} deliveries for receiver {name}, which is not configured; they are kept");
        }
        for r in self.receivers.iter() {
            if let Some(q) = self.queues.get(&r.name) {
                let state = lock(&q.state);
                self.metrics.superseded.with_label_values(&[&r.name]);
                self.metrics
                    .dead_letters
                    .with_label_values(&[&r.name])
                    .set(state.dead as i64);
                self.metrics
                    .spool_pending
                    .with_label_values(&[&r.name])
                    .set(state.entries.len() as i64);
            }
        }
        self.pending.store(pending - stale.len(), Ordering::Relaxed);
        if !stale.is_empty() {
            log::info!(
                "spool: {} older notifications superseded on start",
                stale.len()
            );
            self.spool
                .commit(stale.into_iter().map(|id| Op::Remove { id }).collect())
                .await?;
        }
        let total = self.pending.load(Ordering::Relaxed);
        if total > 0 {
            log::info!("spool: resuming {total} pending deliveries");
        }
        Ok(())
    }

    /// The receivers, in configuration order.
    pub fn receivers(&self) -> Arc<Vec<Arc<Receiver>>> {
        self.receivers.clone()
    }

    /// Pending deliveries in the spool, all receivers together.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// Makes the deliveries durable, then queues them. Returns once committed.
    pub async fn accept(
        &self,
        group_key: &str,
        deliveries: Vec<NewDelivery>,
    ) -> Result<usize, SpoolError> {
        let now = now_ms();
        let mut metas = Vec::with_capacity(deliveries.len());
        let mut ops = Vec::with_capacity(deliveries.len());
        for d in deliveries {
            let meta = DeliveryMeta {
                receiver: d.receiver,
                group_key: group_key.to_string(),
                alerts: d.alerts,
                created_ms: now,
                attempts: 0,
                first_attempt_ms: None,
                next_due_ms: now,
                last_error: None,
                dead: None,
            };
            ops.push(Op::Insert {
                meta: meta.clone(),
                body: d.body,
            });
            metas.push(meta);
        }
        let ids = self.spool.commit(ops).await?;
        let count = ids.len();
        let mut stale = Vec::new();
        for (id, meta) in ids.into_iter().zip(metas) {
            self.metrics
                .notifications
                .with_label_values(&[&meta.receiver])
                .inc();
            self.pending.fetch_add(1, Ordering::Relaxed);
            let Some(queue) = self.queues.get(&meta.receiver) else {
                continue;
            };
            let name = meta.receiver.clone();
            let superseded = {
                let mut state = lock(&queue.state);
                let superseded = state.add(id, meta);
                self.metrics
                    .spool_pending
                    .with_label_values(&[&name])
                    .set(state.entries.len() as i64);
                superseded
            };
            for old in superseded {
                log::info!("receiver {name}: delivery {old} superseded by a newer notification of its group");
                self.metrics.superseded.with_label_values(&[&name]).inc();
                self.pending.fetch_sub(1, Ordering::Relaxed);
                stale.push(Op::Remove { id: old });
            }
            queue.wake.notify_one();
        }
        if !stale.is_empty() {
            // Not waited for: a superseded delivery left behind by a crash is
            // superseded again on start.
            let spool = self.spool.clone();
            tokio::spawn(async move {
                if let Err(e) = spool.commit(stale).await {
                    log::error!("removing superseded deliveries failed: {e}");
                }
            });
        }
        Ok(count)
    }

    async fn work(self: Arc<Self>, queue: Arc<Queue>) {
        let mut stop = self.stop.subscribe();
        loop {
            if *stop.borrow() {
                return;
            }
            let target = queue.target();
            let step = if target.receiver.enabled {
                lock(&queue.state).take(now_ms())
            } else {
                Step::Idle
            };
            match step {
                Step::Attempt(id, meta) => {
                    // Others may find work too: pass the wake-up on.
                    queue.wake.notify_one();
                    self.attempt(&queue, &target, id, meta).await;
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

    async fn attempt(&self, queue: &Queue, target: &Target, id: u64, mut meta: DeliveryMeta) {
        let name = target.receiver.name.as_str();
        let body = match self.spool.payload(id) {
            Ok(Some(body)) => body,
            Ok(None) => {
                log::error!("receiver {name}: delivery {id} has no payload in the spool; dropped");
                self.finish(queue, name, id, Finish::Gone).await;
                return;
            }
            Err(e) => {
                log::error!("receiver {name}: delivery {id}: {e}; retrying in 1s");
                meta.next_due_ms = now_ms() + 1000;
                self.finish(queue, name, id, Finish::Retry(meta)).await;
                return;
            }
        };
        let started = now_ms();
        let key = format!("{}-{id}", self.spool.instance());
        let attempt = target.send(&key, body).await;
        let m = &self.metrics;
        m.requests.with_label_values(&[name]).inc();
        m.request_duration
            .with_label_values(&[name])
            .observe(attempt.latency.as_secs_f64());
        meta.attempts += 1;
        let first = *meta.first_attempt_ms.get_or_insert(started);
        meta.last_error = attempt.error.clone();
        let error = attempt.error.as_deref().unwrap_or("");
        let (op, finish) = match attempt.outcome {
            Outcome::Delivered => {
                m.delivered.with_label_values(&[name]).inc();
                let latency = now_ms().saturating_sub(meta.created_ms) as f64 / 1000.0;
                m.delivery_latency
                    .with_label_values(&[name])
                    .observe(latency);
                log::debug!(
                    "receiver {name}: delivery {id} delivered after {} attempts",
                    meta.attempts
                );
                (Op::Remove { id }, Finish::Gone)
            }
            Outcome::Retryable {
                reason,
                retry_after,
            } => {
                m.requests_failed
                    .with_label_values(&[name, reason.as_str()])
                    .inc();
                let policy = &target.receiver.retry;
                match policy.after_failure(
                    meta.attempts,
                    first,
                    now_ms(),
                    retry_after,
                    fastrand::f64(),
                ) {
                    Next::RetryAt(at) => {
                        log::warn!(
                            "receiver {name}: delivery {id} attempt {} failed: {error}; next in {}ms",
                            meta.attempts,
                            at.saturating_sub(now_ms())
                        );
                        meta.next_due_ms = at;
                        (
                            Op::Update {
                                id,
                                meta: meta.clone(),
                            },
                            Finish::Retry(meta),
                        )
                    }
                    Next::Dead(dead) => self.dead_letter(name, id, meta, dead, error),
                }
            }
            Outcome::Permanent { reason } => {
                m.requests_failed
                    .with_label_values(&[name, reason.as_str()])
                    .inc();
                self.dead_letter(name, id, meta, reason.dead_reason(), error)
            }
        };
        if let Err(e) = self.spool.commit(vec![op]).await {
            log::error!("receiver {name}: recording delivery {id} failed: {e}");
        }
        self.finish(queue, name, id, finish).await;
    }

    fn dead_letter(
        &self,
        name: &str,
        id: u64,
        mut meta: DeliveryMeta,
        reason: DeadReason,
        error: &str,
    ) -> (Op, Finish) {
        log::warn!(
            "receiver {name}: delivery {id} dead-lettered ({}) after {} attempts: {error}",
            reason.as_str(),
            meta.attempts
        );
        self.metrics
            .failed
            .with_label_values(&[name, reason.as_str()])
            .inc();
        meta.dead = Some(reason);
        (Op::Update { id, meta }, Finish::Dead)
    }

    async fn finish(&self, queue: &Queue, name: &str, id: u64, how: Finish) {
        let stays = matches!(how, Finish::Retry(_));
        let superseded = {
            let mut state = lock(&queue.state);
            let superseded = state.finish(id, how);
            self.metrics
                .spool_pending
                .with_label_values(&[name])
                .set(state.entries.len() as i64);
            self.metrics
                .dead_letters
                .with_label_values(&[name])
                .set(state.dead as i64);
            superseded
        };
        if !stays || superseded {
            self.pending.fetch_sub(1, Ordering::Relaxed);
        }
        if superseded {
            log::info!("receiver {name}: failed delivery {id} superseded by a newer notification of its group");
            self.metrics.superseded.with_label_values(&[name]).inc();
            if let Err(e) = self.spool.commit(vec![Op::Remove { id }]).await {
                log::error!("receiver {name}: removing superseded delivery {id} failed: {e}");
            }
        }
        // The group's next notification may be waiting for this one.
        queue.wake.notify_one();
    }

    /// Stops taking work and waits up to `grace` for attempts in flight; what is
    /// left stays pending in the spool.
    pub async fn shutdown(&self, grace: Duration) {
        let _ = self.stop.send(true);
        let workers: Vec<_> = lock(&self.workers).drain(..).collect();
        let deadline = tokio::time::Instant::now() + grace;
        for mut worker in workers {
            if tokio::time::timeout_at(deadline, &mut worker)
                .await
                .is_err()
            {
                worker.abort();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(group: &str, due: u64) -> DeliveryMeta {
        DeliveryMeta {
            receiver: "r".into(),
            group_key: group.into(),
            alerts: 1,
            created_ms: 0,
            attempts: 0,
            first_attempt_ms: None,
            next_due_ms: due,
            last_error: None,
            dead: None,
        }
    }

    #[test]
    fn due_order_and_waiting() {
        let mut q = QueueState::default();
        q.add(1, meta("", 50));
        q.add(2, meta("", 10));
        assert_eq!(q.take(5), Step::WaitUntil(10));
        assert!(matches!(q.take(60), Step::Attempt(2, _)));
        assert!(matches!(q.take(60), Step::Attempt(1, _)));
        assert_eq!(q.take(60), Step::Idle);
    }

    #[test]
    fn newer_pending_supersedes_older() {
        let mut q = QueueState::default();
        assert!(q.add(1, meta("g", 0)).is_empty());
        assert_eq!(q.add(2, meta("g", 0)), vec![1]);
        // An older one arriving late is superseded at once.
        assert_eq!(q.add(1, meta("g", 0)), vec![1]);
        assert!(matches!(q.take(0), Step::Attempt(2, _)));
        assert_eq!(q.take(0), Step::Idle);
    }

    #[test]
    fn one_in_flight_per_group_and_a_failed_older_one_is_dropped() {
        let mut q = QueueState::default();
        q.add(1, meta("g", 0));
        q.add(10, meta("other", 0));
        assert!(matches!(q.take(0), Step::Attempt(1, _)));
        assert!(
            q.add(2, meta("g", 0)).is_empty(),
            "in flight is not superseded at once"
        );
        // 2 waits for 1; the other group goes ahead.
        assert!(matches!(q.take(0), Step::Attempt(10, _)));
        assert_eq!(q.take(0), Step::Idle);
        // 1 fails: it is not retried, since 2 is newer.
        assert!(q.finish(1, Finish::Retry(meta("g", 100))));
        assert!(matches!(q.take(0), Step::Attempt(2, _)));
        assert!(!q.finish(2, Finish::Gone));
        assert!(!q.finish(10, Finish::Dead));
        assert_eq!(q.dead, 1);
        assert!(q.entries.is_empty() && q.due.is_empty() && q.groups.is_empty());
    }

    #[test]
    fn retried_delivery_comes_back_at_its_due_time() {
        let mut q = QueueState::default();
        q.add(1, meta("g", 0));
        assert!(matches!(q.take(0), Step::Attempt(1, _)));
        assert!(!q.finish(1, Finish::Retry(meta("g", 500))));
        assert_eq!(q.take(100), Step::WaitUntil(500));
        assert!(matches!(q.take(500), Step::Attempt(1, _)));
    }
}
