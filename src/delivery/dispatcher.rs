//! The dispatcher: per-receiver queues in due-time order, worked by each
//! receiver's own set of workers, with every state change made durable in the
//! spool before it is acted on.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use super::retry::{DeadReason, Next, Outcome};
use super::sender::Target;
use crate::config::Receiver;
use crate::metrics::{Metrics, ReceiverMetrics};
use crate::spool::{DeliveryMeta, Op, Spool, SpoolError};

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)).unwrap_or(0)
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

/// What became of a delivery at the end of its attempt.
#[derive(Debug, PartialEq)]
enum Ended {
    /// It was dropped meanwhile (its receiver deleted).
    Unknown,
    /// Delivered, gone or dead: no longer pending.
    Left,
    /// Pending again, for a retry.
    Stays,
    /// A newer notification of its group arrived: drop it.
    Superseded,
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
        self.entries.insert(id, Entry { meta, obsolete: false });
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

    /// Records the end of an attempt.
    fn finish(&mut self, id: u64, how: Finish) -> Ended {
        let Some(entry) = self.entries.remove(&id) else {
            return Ended::Unknown;
        };
        let key = entry.meta.group_key.clone();
        let ended = match how {
            Finish::Gone => Ended::Left,
            Finish::Dead => {
                self.dead += 1;
                Ended::Left
            }
            Finish::Retry(_) if entry.obsolete => Ended::Superseded,
            Finish::Retry(meta) => {
                self.due.insert((meta.next_due_ms, id));
                if let Some(group) = self.groups.get_mut(&key) {
                    group.pending = Some(id);
                }
                self.entries.insert(id, Entry { meta, obsolete: false });
                Ended::Stays
            }
        };
        if let Some(group) = self.groups.get_mut(&key) {
            if group.in_flight == Some(id) {
                group.in_flight = None;
            }
            if group.in_flight.is_none() && group.pending.is_none() {
                self.groups.remove(&key);
            }
        }
        ended
    }

    /// Forgets every pending delivery; their ids.
    fn clear(&mut self) -> Vec<u64> {
        self.due.clear();
        self.groups.clear();
        self.entries.drain().map(|(id, _)| id).collect()
    }
}

struct Queue {
    target: RwLock<Arc<Target>>,
    state: Mutex<QueueState>,
    wake: Notify,
    /// Worker `i` runs while `i` is below the receiver's concurrency.
    workers: Mutex<Vec<JoinHandle<()>>>,
    removed: AtomicBool,
    metrics: Arc<ReceiverMetrics>,
}

impl Queue {
    /// Shows the state's counts in the receiver's gauges (not once removed).
    fn show(&self, state: &QueueState) {
        if !self.removed.load(Ordering::Relaxed) {
            self.metrics.spool_pending.set(state.entries.len() as i64);
            self.metrics.dead_letters.set(state.dead as i64);
        }
    }

    fn target(&self) -> Arc<Target> {
        self.target.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Wakes every worker: one stored permit covers a worker about to wait.
    fn wake_all(&self) {
        self.wake.notify_waiters();
        self.wake.notify_one();
    }
}

/// What `Dispatcher::discard` dropped of a deleted receiver.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub pending: usize,
    pub dead: usize,
}

/// Why a dead letter could not be retried or deleted.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("no delivery {0}")]
    NotFound(u64),
    #[error("delivery {0} is pending, not dead-lettered")]
    Pending(u64),
    #[error("receiver {0} of this delivery is not configured")]
    NoReceiver(String),
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

pub struct Dispatcher {
    spool: Arc<Spool>,
    metrics: Arc<Metrics>,
    receivers: RwLock<Arc<Vec<Arc<Receiver>>>>,
    queues: RwLock<HashMap<String, Arc<Queue>>>,
    /// Pending deliveries in the spool, every receiver's (orphans included).
    pending: AtomicUsize,
    /// Pending deliveries of receivers not in force, by receiver: kept in the
    /// spool until the receiver is back or explicitly deleted.
    orphans: Mutex<BTreeMap<String, usize>>,
    stop: watch::Sender<bool>,
}

impl Dispatcher {
    /// Resumes what the spool holds and starts every receiver's workers on the
    /// current Tokio runtime.
    pub async fn start(
        spool: Arc<Spool>,
        metrics: Arc<Metrics>,
        receivers: Vec<Arc<Receiver>>,
    ) -> Result<Arc<Dispatcher>, String> {
        // One read of the spool serves the count, the queues and the warnings.
        let rows = spool.load_all().map_err(|e| e.to_string())?;
        let pending = rows.iter().filter(|(_, m)| m.dead.is_none()).count();
        let (stop, _) = watch::channel(false);
        let dispatcher = Arc::new(Dispatcher {
            spool,
            metrics,
            receivers: RwLock::new(Arc::new(Vec::new())),
            queues: RwLock::new(HashMap::new()),
            pending: AtomicUsize::new(pending),
            orphans: Mutex::new(BTreeMap::new()),
            stop,
        });
        {
            let mut orphans = lock(&dispatcher.orphans);
            for (_, meta) in rows.iter().filter(|(_, m)| m.dead.is_none()) {
                *orphans.entry(meta.receiver.clone()).or_default() += 1;
            }
        }
        dispatcher.apply_with(receivers, Some(rows)).await?;
        for (name, count) in dispatcher.orphans() {
            log::warn!(
                "spool holds {count} pending deliveries for receiver {name}, which is not in force; kept until it is \
                 back (or deleted through the admin API)"
            );
        }
        if pending > 0 {
            log::info!("spool: resuming {} pending deliveries", dispatcher.pending());
        }
        Ok(dispatcher)
    }

    /// Puts a new set of receivers in force at once: new ones get a queue (and
    /// whatever the spool holds for them), kept ones take their new settings for
    /// every attempt from now on, removed ones are stopped and their
    /// deliveries kept in the spool as orphans. Nothing changes if a receiver's
    /// client cannot be built.
    pub async fn apply(self: &Arc<Self>, receivers: Vec<Arc<Receiver>>) -> Result<(), String> {
        self.apply_with(receivers, None).await
    }

    /// As `apply`; `rows` is the spool's content when the caller has just read it.
    async fn apply_with(
        self: &Arc<Self>,
        receivers: Vec<Arc<Receiver>>,
        rows: Option<Vec<(u64, DeliveryMeta)>>,
    ) -> Result<(), String> {
        // A receiver that did not change keeps its client and its connections.
        let mut targets = Vec::with_capacity(receivers.len());
        for r in &receivers {
            let kept = read(&self.queues).get(&r.name).map(|q| q.target()).filter(|t| Arc::ptr_eq(&t.receiver, r));
            match kept {
                Some(target) => targets.push(target),
                None => {
                    targets.push(Arc::new(Target::new(r.clone()).map_err(|e| format!("receiver {}: {e}", r.name))?))
                }
            }
        }
        let (created, removed) = {
            let mut queues = write(&self.queues);
            let mut created = Vec::new();
            for target in targets {
                let name = target.receiver.name.clone();
                match queues.get(&name) {
                    Some(q) => *q.target.write().unwrap_or_else(|p| p.into_inner()) = target,
                    None => {
                        let q = Arc::new(Queue {
                            target: RwLock::new(target),
                            state: Mutex::new(QueueState::default()),
                            wake: Notify::new(),
                            workers: Mutex::new(Vec::new()),
                            removed: AtomicBool::new(false),
                            metrics: Arc::new(self.metrics.receiver(&name)),
                        });
                        queues.insert(name.clone(), q.clone());
                        created.push((name, q));
                    }
                }
            }
            let gone: Vec<String> =
                queues.keys().filter(|n| !receivers.iter().any(|r| &r.name == *n)).cloned().collect();
            let removed: Vec<(String, Arc<Queue>)> =
                gone.into_iter().filter_map(|n| queues.remove(&n).map(|q| (n, q))).collect();
            *self.receivers.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(receivers);
            (created, removed)
        };
        self.retire(removed);
        if !created.is_empty() {
            self.adopt(&created, rows).await.map_err(|e| e.to_string())?;
        }
        for queue in read(&self.queues).values() {
            self.spawn_workers(queue);
            queue.wake_all();
        }
        Ok(())
    }

    /// Loads the spool's deliveries of newly created queues.
    async fn adopt(
        &self,
        created: &[(String, Arc<Queue>)],
        rows: Option<Vec<(u64, DeliveryMeta)>>,
    ) -> Result<(), SpoolError> {
        let rows = match rows {
            Some(rows) => rows,
            None => self.spool.load_all()?,
        };
        {
            let mut orphans = lock(&self.orphans);
            for (name, _) in created {
                orphans.remove(name);
            }
            self.metrics.orphaned.set(orphans.values().sum::<usize>() as i64);
        }
        let mut stale = Vec::new();
        for (id, meta) in rows {
            let Some((_, queue)) = created.iter().find(|(n, _)| *n == meta.receiver) else {
                continue;
            };
            let mut state = lock(&queue.state);
            if meta.dead.is_some() {
                state.dead += 1;
            } else {
                stale.extend(state.add(id, meta));
            }
        }
        for (_, queue) in created {
            queue.show(&lock(&queue.state));
        }
        if !stale.is_empty() {
            log::info!("spool: {} older notifications superseded by newer ones of their groups", stale.len());
            self.pending.fetch_sub(stale.len(), Ordering::Relaxed);
            self.spool.commit(stale.into_iter().map(|id| Op::Remove { id }).collect()).await?;
        }
        Ok(())
    }

    /// Stops removed queues. Their deliveries stay in the spool, counted as
    /// orphans, and their metric series go.
    fn retire(&self, removed: Vec<(String, Arc<Queue>)>) {
        if removed.is_empty() {
            return;
        }
        let mut orphans = lock(&self.orphans);
        for (name, queue) in removed {
            queue.removed.store(true, Ordering::Relaxed);
            queue.wake_all();
            let kept = lock(&queue.state).clear().len();
            if kept > 0 {
                *orphans.entry(name.clone()).or_default() += kept;
                log::warn!(
                    "receiver {name} is no longer in force: its {kept} pending deliveries stay in the spool and \
                     resume when it is back"
                );
            }
            self.metrics.forget_receiver(&name);
        }
        self.metrics.orphaned.set(orphans.values().sum::<usize>() as i64);
    }

    /// Deletes from the spool every delivery of a receiver that is not in
    /// force, dead letters included: the explicit request (deleting an API
    /// receiver) that is the only way deliveries are dropped.
    pub async fn discard(&self, name: &str) -> Result<Dropped, SpoolError> {
        if read(&self.queues).contains_key(name) {
            return Ok(Dropped::default());
        }
        let rows = self.spool.list(None, usize::MAX, |m| m.receiver == name)?;
        let pending = rows.iter().filter(|(_, m)| m.dead.is_none()).count();
        let dropped = Dropped { pending, dead: rows.len() - pending };
        self.spool.commit(rows.into_iter().map(|(id, _)| Op::Remove { id }).collect()).await?;
        self.pending.fetch_sub(pending.min(self.pending()), Ordering::Relaxed);
        let mut orphans = lock(&self.orphans);
        orphans.remove(name);
        self.metrics.orphaned.set(orphans.values().sum::<usize>() as i64);
        if dropped != Dropped::default() {
            log::warn!(
                "receiver {name} deleted: {} pending deliveries and {} dead letters dropped",
                dropped.pending,
                dropped.dead
            );
        }
        Ok(dropped)
    }

    /// Pending deliveries of receivers not in force, by receiver.
    pub fn orphans(&self) -> BTreeMap<String, usize> {
        lock(&self.orphans).clone()
    }

    fn spawn_workers(self: &Arc<Self>, queue: &Arc<Queue>) {
        let concurrency = queue.target().receiver.concurrency;
        let mut workers = lock(&queue.workers);
        // Workers past the new concurrency end on their own once idle.
        workers.truncate(concurrency);
        for index in workers.len()..concurrency {
            let d = self.clone();
            let q = queue.clone();
            workers.push(tokio::spawn(async move { d.work(q, index).await }));
        }
    }

    /// The receivers, in configuration order.
    pub fn receivers(&self) -> Arc<Vec<Arc<Receiver>>> {
        self.receivers.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A receiver's target as its workers use it.
    pub fn target(&self, name: &str) -> Option<Arc<Target>> {
        read(&self.queues).get(name).map(|q| q.target())
    }

    /// A receiver's metric handles.
    pub fn metrics(&self, name: &str) -> Option<Arc<ReceiverMetrics>> {
        read(&self.queues).get(name).map(|q| q.metrics.clone())
    }

    /// Pending deliveries and dead letters of one receiver.
    pub fn counts(&self, name: &str) -> (usize, usize) {
        read(&self.queues).get(name).map_or((0, 0), |q| {
            let state = lock(&q.state);
            (state.entries.len(), state.dead)
        })
    }

    /// Pending deliveries in the spool, all receivers together.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// Makes the deliveries durable, then queues them. Returns once committed.
    pub async fn accept(&self, group_key: &str, deliveries: Vec<NewDelivery>) -> Result<usize, SpoolError> {
        let now = now_ms();
        let mut metas = Vec::with_capacity(deliveries.len());
        let mut ops = Vec::with_capacity(deliveries.len());
        for d in deliveries {
            let meta = DeliveryMeta::new(d.receiver, group_key.to_string(), d.alerts, now);
            ops.push(Op::Insert { meta: meta.clone(), body: d.body });
            metas.push(meta);
        }
        let ids = self.spool.commit(ops).await?;
        let count = ids.len();
        let mut stale = Vec::new();
        for (id, meta) in ids.into_iter().zip(metas) {
            let name = meta.receiver.clone();
            self.pending.fetch_add(1, Ordering::Relaxed);
            let Some(queue) = read(&self.queues).get(&name).cloned() else {
                // Removed while this request was being routed: kept, as an orphan.
                log::warn!("receiver {name} was removed meanwhile; delivery {id} kept in the spool until it is back");
                let mut orphans = lock(&self.orphans);
                *orphans.entry(name).or_default() += 1;
                self.metrics.orphaned.set(orphans.values().sum::<usize>() as i64);
                continue;
            };
            queue.metrics.notifications.inc();
            let superseded = {
                let mut state = lock(&queue.state);
                let superseded = state.add(id, meta);
                queue.show(&state);
                superseded
            };
            for old in superseded {
                log::info!("receiver {name}: delivery {old} superseded by a newer notification of its group");
                queue.metrics.superseded.inc();
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

    /// Requeues a dead letter as a new first attempt.
    pub async fn retry_dead(&self, id: u64) -> Result<(), DeadLetterError> {
        let mut meta = self.spool.get(id)?.ok_or(DeadLetterError::NotFound(id))?;
        if meta.dead.is_none() {
            return Err(DeadLetterError::Pending(id));
        }
        let name = meta.receiver.clone();
        let queue = read(&self.queues).get(&name).cloned().ok_or(DeadLetterError::NoReceiver(name.clone()))?;
        meta.dead = None;
        meta.attempts = 0;
        meta.first_attempt_ms = None;
        meta.next_due_ms = now_ms();
        self.spool.commit(vec![Op::Update { id, meta: meta.clone() }]).await?;
        self.pending.fetch_add(1, Ordering::Relaxed);
        let superseded = {
            let mut state = lock(&queue.state);
            state.dead = state.dead.saturating_sub(1);
            let superseded = state.add(id, meta);
            queue.show(&state);
            superseded
        };
        if !superseded.is_empty() {
            queue.metrics.superseded.inc_by(superseded.len() as u64);
            self.pending.fetch_sub(superseded.len(), Ordering::Relaxed);
            self.spool.commit(superseded.into_iter().map(|id| Op::Remove { id }).collect()).await?;
        }
        log::info!("receiver {name}: dead letter {id} requeued");
        queue.wake.notify_one();
        Ok(())
    }

    /// Deletes a dead letter.
    pub async fn delete_dead(&self, id: u64) -> Result<(), DeadLetterError> {
        let meta = self.spool.get(id)?.ok_or(DeadLetterError::NotFound(id))?;
        if meta.dead.is_none() {
            return Err(DeadLetterError::Pending(id));
        }
        self.spool.commit(vec![Op::Remove { id }]).await?;
        if let Some(queue) = read(&self.queues).get(&meta.receiver) {
            let mut state = lock(&queue.state);
            state.dead = state.dead.saturating_sub(1);
            queue.show(&state);
        }
        log::info!("receiver {}: dead letter {id} deleted", meta.receiver);
        Ok(())
    }

    async fn work(self: Arc<Self>, queue: Arc<Queue>, index: usize) {
        let mut stop = self.stop.subscribe();
        loop {
            let target = queue.target();
            if *stop.borrow() || queue.removed.load(Ordering::Relaxed) || index >= target.receiver.concurrency {
                return;
            }
            let step = if target.receiver.enabled { lock(&queue.state).take(now_ms()) } else { Step::Idle };
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
        let m = &queue.metrics;
        m.requests.inc();
        m.request_duration.observe(attempt.latency.as_secs_f64());
        meta.attempts += 1;
        let first = *meta.first_attempt_ms.get_or_insert(started);
        meta.last_error = attempt.error.clone();
        let error = attempt.error.as_deref().unwrap_or("");
        let (op, finish) = match attempt.outcome {
            Outcome::Delivered => {
                m.delivered.inc();
                m.delivery_latency.observe(now_ms().saturating_sub(meta.created_ms) as f64 / 1000.0);
                log::debug!("receiver {name}: delivery {id} delivered after {} attempts", meta.attempts);
                (Op::Remove { id }, Finish::Gone)
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
                        (Op::Update { id, meta: meta.clone() }, Finish::Retry(meta))
                    }
                    Next::Dead(dead) => dead_letter(m, name, id, meta, dead, error),
                }
            }
            Outcome::Permanent { reason } => {
                m.requests_failed(reason).inc();
                dead_letter(m, name, id, meta, reason.dead_reason(), error)
            }
        };
        if matches!(finish, Finish::Gone) {
            // Not waited for: if the process dies before this is on disk, the
            // delivery is sent again, with the same Idempotency-Key. Waiting
            // would cost every worker an fsync per delivery.
            self.spool.commit_later(vec![op]);
        } else if let Err(e) = self.spool.commit(vec![op]).await {
            log::error!("receiver {name}: recording delivery {id} failed: {e}");
        }
        self.finish(queue, name, id, finish).await;
    }

    async fn finish(&self, queue: &Queue, name: &str, id: u64, how: Finish) {
        let ended = {
            let mut state = lock(&queue.state);
            let ended = state.finish(id, how);
            queue.show(&state);
            ended
        };
        match ended {
            Ended::Unknown | Ended::Stays => {}
            Ended::Left => {
                self.pending.fetch_sub(1, Ordering::Relaxed);
            }
            Ended::Superseded => {
                self.pending.fetch_sub(1, Ordering::Relaxed);
                log::info!("receiver {name}: failed delivery {id} superseded by a newer notification of its group");
                queue.metrics.superseded.inc();
                if let Err(e) = self.spool.commit(vec![Op::Remove { id }]).await {
                    log::error!("receiver {name}: removing superseded delivery {id} failed: {e}");
                }
            }
        }
        // The group's next notification may be waiting for this one.
        queue.wake.notify_one();
    }

    /// Stops taking work and waits up to `grace` for attempts in flight; what is
    /// left stays pending in the spool.
    pub async fn shutdown(&self, grace: Duration) {
        let _ = self.stop.send(true);
        let workers: Vec<JoinHandle<()>> =
            read(&self.queues).values().flat_map(|q| lock(&q.workers).drain(..).collect::<Vec<_>>()).collect();
        let deadline = tokio::time::Instant::now() + grace;
        for mut worker in workers {
            if tokio::time::timeout_at(deadline, &mut worker).await.is_err() {
                worker.abort();
            }
        }
    }
}

fn dead_letter(
    metrics: &ReceiverMetrics,
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
    metrics.failed(reason).inc();
    meta.dead = Some(reason);
    (Op::Update { id, meta }, Finish::Dead)
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(group: &str, due: u64) -> DeliveryMeta {
        DeliveryMeta { next_due_ms: due, ..DeliveryMeta::new("r".into(), group.into(), 1, 0) }
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
        assert!(q.add(2, meta("g", 0)).is_empty(), "in flight is not superseded at once");
        // 2 waits for 1; the other group goes ahead.
        assert!(matches!(q.take(0), Step::Attempt(10, _)));
        assert_eq!(q.take(0), Step::Idle);
        // 1 fails: it is not retried, since 2 is newer.
        assert_eq!(q.finish(1, Finish::Retry(meta("g", 100))), Ended::Superseded);
        assert!(matches!(q.take(0), Step::Attempt(2, _)));
        assert_eq!(q.finish(2, Finish::Gone), Ended::Left);
        assert_eq!(q.finish(10, Finish::Dead), Ended::Left);
        assert_eq!(q.finish(10, Finish::Dead), Ended::Unknown);
        assert_eq!(q.dead, 1);
        assert!(q.entries.is_empty() && q.due.is_empty() && q.groups.is_empty());
    }

    #[test]
    fn retried_delivery_comes_back_at_its_due_time() {
        let mut q = QueueState::default();
        q.add(1, meta("g", 0));
        assert!(matches!(q.take(0), Step::Attempt(1, _)));
        assert_eq!(q.finish(1, Finish::Retry(meta("g", 500))), Ended::Stays);
        assert_eq!(q.take(100), Step::WaitUntil(500));
        assert!(matches!(q.take(500), Step::Attempt(1, _)));
    }
}
