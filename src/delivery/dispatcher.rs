//! The dispatcher wires receivers to their queues and workers: it puts a set
//! of receivers in force (new queues adopt what the spool holds for them,
//! removed ones leave their deliveries as orphans), takes accepted deliveries
//! into their queues, and handles dead letters. Every state change is made
//! durable in the spool before it is acted on.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::sender::{Target, TargetError};
use super::worker::Queue;
use crate::clock::now_ms;
use crate::config::Receiver;
use crate::metrics::Metrics;
use crate::reasons::DeadReason;
use crate::spool::{DeliveryMeta, Op, Spool, SpoolError};
use crate::sync::{lock, read, write};

/// A new delivery for one receiver, as routing made it.
pub struct NewDelivery {
    pub receiver: String,
    pub alerts: u32,
    /// The body as the target gets it (rendered in the receiver's format), or,
    /// when `template_error` is set, the notification as routed.
    pub body: Vec<u8>,
    /// The receiver's template failed on this notification: stored as a dead
    /// letter (`templateError`) with this message, never attempted.
    pub template_error: Option<String>,
}

/// What `Dispatcher::discard` dropped of a deleted receiver.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub pending: usize,
    pub dead: usize,
}

/// Why a set of receivers could not be put in force.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error("receiver {receiver}: {source}")]
    Target { receiver: String, source: TargetError },
    #[error(transparent)]
    Spool(#[from] SpoolError),
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
    #[error("the receiver's template still fails on this notification: {0}")]
    Template(String),
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

pub struct Dispatcher {
    spool: Arc<Spool>,
    metrics: Arc<Metrics>,
    receivers: RwLock<Arc<Vec<Arc<Receiver>>>>,
    queues: RwLock<HashMap<String, Arc<Queue>>>,
    /// Pending deliveries of receivers not in force, by receiver: kept in the
    /// spool until the receiver is back or explicitly deleted.
    orphans: Mutex<BTreeMap<String, usize>>,
    stop: watch::Sender<bool>,
    /// Builds a receiver's target: `Target::new`, or in tests a scripted one.
    connect: Connect,
}

type Connect = Arc<dyn Fn(Arc<Receiver>) -> Result<Target, TargetError> + Send + Sync>;

/// How long a new delivery waits for its commit before it is queued anyway
/// (`Dispatcher::accept`). Under full load a commit's p50 is 0.2-0.3 ms and
/// its p99 1-2 ms; the stalls this covers take tens of milliseconds to
/// seconds. 2 ms against 5 ms (BENCHMARKS.md, "Session 13"): p99 at
/// 1,000/s 4.4-4.7 ms against 7.4-7.6 on a noisy disk, no loss of
/// throughput; 1 ms started 3-6 % of requests early at full load and cost
/// CPU.
pub(crate) const EARLY_START: Duration = Duration::from_millis(2);

/// A delivery queued before its commit was durable.
struct Early {
    queue: Arc<Queue>,
    /// Itself, when a newer durable one of its group was queued already.
    superseded: Vec<u64>,
}

impl Dispatcher {
    /// Resumes what the spool holds and starts every receiver's workers on the
    /// current Tokio runtime.
    pub async fn start(
        spool: Arc<Spool>,
        metrics: Arc<Metrics>,
        receivers: Vec<Arc<Receiver>>,
    ) -> Result<Arc<Dispatcher>, DispatchError> {
        Dispatcher::start_connecting(spool, metrics, receivers, Arc::new(Target::new)).await
    }

    /// As `start`, with targets built by `connect`.
    pub(crate) async fn start_connecting(
        spool: Arc<Spool>,
        metrics: Arc<Metrics>,
        receivers: Vec<Arc<Receiver>>,
        connect: Connect,
    ) -> Result<Arc<Dispatcher>, DispatchError> {
        // One read of the spool serves the queues, the orphans and the warnings.
        let rows = spool.load_all()?;
        let mut orphans = BTreeMap::new();
        for (_, meta) in rows.iter().filter(|(_, m)| m.dead.is_none()) {
            *orphans.entry(meta.receiver.clone()).or_default() += 1;
        }
        let (stop, _) = watch::channel(false);
        let dispatcher = Arc::new(Dispatcher {
            spool,
            metrics,
            receivers: RwLock::new(Arc::new(Vec::new())),
            queues: RwLock::new(HashMap::new()),
            orphans: Mutex::new(orphans),
            stop,
            connect,
        });
        dispatcher.apply_with(receivers, Some(rows)).await?;
        for (name, count) in dispatcher.orphans() {
            log::warn!(
                "spool holds {count} pending deliveries for receiver {name}, which is not in force; kept until it is \
                 back (or deleted through the admin API)"
            );
        }
        let pending = dispatcher.pending();
        if pending > 0 {
            log::info!("spool: resuming {pending} pending deliveries");
        }
        Ok(dispatcher)
    }

    /// Puts a new set of receivers in force at once: new ones get a queue (and
    /// whatever the spool holds for them), kept ones take their new settings for
    /// every attempt from now on, removed ones are stopped and their
    /// deliveries kept in the spool as orphans. Nothing changes if a receiver's
    /// client cannot be built.
    pub async fn apply(self: &Arc<Self>, receivers: Vec<Arc<Receiver>>) -> Result<(), DispatchError> {
        self.apply_with(receivers, None).await
    }

    /// As `apply`; `rows` is the spool's content when the caller has just read it.
    async fn apply_with(
        self: &Arc<Self>,
        receivers: Vec<Arc<Receiver>>,
        rows: Option<Vec<(u64, DeliveryMeta)>>,
    ) -> Result<(), DispatchError> {
        // A receiver that did not change keeps its client and its connections.
        let mut targets = Vec::with_capacity(receivers.len());
        for r in &receivers {
            let kept = read(&self.queues).get(&r.name).map(|q| q.target()).filter(|t| Arc::ptr_eq(&t.receiver, r));
            match kept {
                Some(target) => targets.push(target),
                None => targets.push(Arc::new(
                    (self.connect)(r.clone())
                        .map_err(|source| DispatchError::Target { receiver: r.name.clone(), source })?,
                )),
            }
        }
        let (created, removed) = {
            let mut queues = write(&self.queues);
            let mut created = Vec::new();
            for target in targets {
                let name = target.receiver.name.clone();
                match queues.get(&name) {
                    Some(q) => q.set_target(target),
                    None => {
                        let q = Arc::new(Queue::new(target, self.metrics.receiver(&name)));
                        queues.insert(name.clone(), q.clone());
                        created.push((name, q));
                    }
                }
            }
            let gone: Vec<String> =
                queues.keys().filter(|n| !receivers.iter().any(|r| &r.name == *n)).cloned().collect();
            let removed: Vec<(String, Arc<Queue>)> =
                gone.into_iter().filter_map(|n| queues.remove(&n).map(|q| (n, q))).collect();
            *write(&self.receivers) = Arc::new(receivers);
            (created, removed)
        };
        self.retire(removed);
        if !created.is_empty() {
            self.adopt(&created, rows).await?;
        }
        for queue in read(&self.queues).values() {
            queue.spawn_workers(&self.spool, &self.stop);
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
                state.count_dead(true);
            } else {
                stale.extend(state.add(id, meta));
            }
        }
        for (_, queue) in created {
            queue.show(&lock(&queue.state));
        }
        if !stale.is_empty() {
            log::info!("spool: {} older notifications superseded by newer ones of their groups", stale.len());
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

    /// The receivers, in configuration order.
    pub fn receivers(&self) -> Arc<Vec<Arc<Receiver>>> {
        read(&self.receivers).clone()
    }

    /// A receiver's target as its workers use it.
    pub fn target(&self, name: &str) -> Option<Arc<Target>> {
        read(&self.queues).get(name).map(|q| q.target())
    }

    /// A receiver's metric handles.
    pub fn metrics(&self, name: &str) -> Option<Arc<crate::metrics::ReceiverMetrics>> {
        read(&self.queues).get(name).map(|q| q.metrics.clone())
    }

    /// Alerts a disabled receiver dropped since it was turned off (None while on).
    pub fn skipped_while_disabled(&self, name: &str) -> Option<u64> {
        read(&self.queues).get(name).and_then(|q| q.skipped_while_disabled())
    }

    /// Pending deliveries and dead letters of one receiver.
    pub fn counts(&self, name: &str) -> (usize, usize) {
        read(&self.queues).get(name).map_or((0, 0), |q| {
            let state = lock(&q.state);
            (state.pending(), state.dead())
        })
    }

    /// Pending deliveries in the spool, all receivers' and the orphans'.
    pub fn pending(&self) -> usize {
        let queued: usize = read(&self.queues).values().map(|q| lock(&q.state).pending()).sum();
        queued + lock(&self.orphans).values().sum::<usize>()
    }

    /// Makes the deliveries (and `also`, in the same commit) durable, then
    /// queues them. Returns once committed.
    ///
    /// A commit still in flight after `EARLY_START` (a disk that stalls) has
    /// its deliveries queued meanwhile, so that a stalled `fdatasync` does
    /// not hold them up; the answer to Alertmanager still waits for it. If
    /// that commit then fails they are taken back (one already sent was
    /// sent; Alertmanager sends its notification again, as for any 503).
    pub async fn accept(
        &self,
        group_key: &str,
        deliveries: Vec<NewDelivery>,
        also: Vec<Op>,
    ) -> Result<usize, SpoolError> {
        let now = now_ms();
        // Deliveries with the same body bytes (receivers that matched the same
        // alerts in the same format) share one stored payload.
        let mut shared: Vec<(Vec<u8>, Vec<DeliveryMeta>)> = Vec::new();
        for d in deliveries {
            let mut meta = DeliveryMeta::new(d.receiver, group_key.to_string(), d.alerts, now);
            if let Some(error) = d.template_error {
                meta.dead = Some(DeadReason::TemplateError);
                meta.last_error = Some(format!("template: {error}"));
            } else {
                meta.body_bytes = Some(d.body.len() as u64);
            }
            match shared.iter_mut().find(|(body, _)| *body == d.body) {
                Some((_, metas)) => metas.push(meta),
                None => shared.push((d.body, vec![meta])),
            }
        }
        let metas: Vec<DeliveryMeta> = shared.iter().flat_map(|(_, metas)| metas.iter().cloned()).collect();
        let mut ops: Vec<Op> = shared.into_iter().map(|(body, metas)| Op::Insert { metas, body }).collect();
        ops.extend(also);
        // Ids come for the inserts only, in order.
        let mut pending = self.spool.begin(ops)?;
        let slow = tokio::select! {
            biased;
            result = pending.durable() => {
                result?;
                false
            }
            () = tokio::time::sleep(EARLY_START) => true,
        };
        let mut early = HashMap::new();
        if slow {
            if pending.expose() {
                early = self.queue_early(pending.ids(), &metas);
            }
            if let Err(e) = pending.durable().await {
                self.take_back(early);
                return Err(e);
            }
        }
        let ids = pending.ids().to_vec();
        drop(pending);
        let count = ids.len();
        let mut stale = Vec::new();
        for (id, meta) in ids.into_iter().zip(metas) {
            let name = meta.receiver.clone();
            if let Some(Early { queue, mut superseded }) = early.remove(&id) {
                queue.metrics.notifications.inc();
                superseded.extend(lock(&queue.state).confirm(id));
                self.superseded(&name, &queue, superseded, &mut stale);
                continue;
            }
            let Some(queue) = read(&self.queues).get(&name).cloned() else {
                // Removed while this request was being routed: kept, as an orphan.
                log::warn!("receiver {name} was removed meanwhile; delivery {id} kept in the spool until it is back");
                let mut orphans = lock(&self.orphans);
                *orphans.entry(name).or_default() += 1;
                self.metrics.orphaned.set(orphans.values().sum::<usize>() as i64);
                continue;
            };
            queue.metrics.notifications.inc();
            if let Some(reason) = meta.dead {
                log::warn!(
                    "receiver {name}: delivery {id} dead-lettered ({}): {}",
                    reason.as_str(),
                    meta.last_error.as_deref().unwrap_or("")
                );
                let mut state = lock(&queue.state);
                state.count_dead(true);
                queue.show(&state);
                queue.metrics.failed(reason).inc();
                continue;
            }
            let superseded = {
                let mut state = lock(&queue.state);
                let superseded = state.add(id, meta);
                queue.show(&state);
                superseded
            };
            self.superseded(&name, &queue, superseded, &mut stale);
            queue.wake.notify_one();
        }
        // Not waited for: a superseded delivery left behind by a crash is
        // superseded again on start.
        self.spool.commit_later(stale);
        Ok(count)
    }

    /// Queues deliveries whose commit is still in flight (their bodies
    /// exposed by the spool), by id. What they supersede leaves the spool
    /// only once the commit is durable (`QueueState::add_tentative`).
    fn queue_early(&self, ids: &[u64], metas: &[DeliveryMeta]) -> HashMap<u64, Early> {
        let mut early = HashMap::new();
        for (id, meta) in ids.iter().zip(metas).filter(|(_, m)| m.dead.is_none()) {
            let Some(queue) = read(&self.queues).get(&meta.receiver).cloned() else { continue };
            let superseded = {
                let mut state = lock(&queue.state);
                let superseded = state.add_tentative(*id, meta.clone());
                queue.show(&state);
                superseded
            };
            queue.wake.notify_one();
            early.insert(*id, Early { queue, superseded });
        }
        if !early.is_empty() {
            self.metrics.spool_early_starts.inc();
        }
        early
    }

    /// Takes back deliveries queued before their commit, which failed, and
    /// puts back what they superseded (as it is in the spool).
    fn take_back(&self, early: HashMap<u64, Early>) {
        let mut stale = Vec::new();
        for (id, Early { queue, .. }) in early {
            let mut state = lock(&queue.state);
            for old in state.retract(id) {
                match self.spool.get(old) {
                    Ok(Some(meta)) => stale.extend(state.add(old, meta)),
                    Ok(None) => {}
                    Err(e) => log::error!("delivery {old}: {e}; it resumes after a restart"),
                }
            }
            queue.show(&state);
            drop(state);
            queue.wake.notify_one();
        }
        self.spool.commit_later(stale.into_iter().map(|id| Op::Remove { id }).collect());
    }

    /// Counts and collects for removal the deliveries a new one superseded.
    fn superseded(&self, name: &str, queue: &Queue, superseded: Vec<u64>, stale: &mut Vec<Op>) {
        for old in superseded {
            log::info!("receiver {name}: delivery {old} superseded by a newer notification of its group");
            queue.metrics.superseded.inc();
            stale.push(Op::Remove { id: old });
        }
    }

    /// Requeues a dead letter as a new first attempt.
    pub async fn retry_dead(&self, id: u64) -> Result<(), DeadLetterError> {
        let mut meta = self.spool.get(id)?.ok_or(DeadLetterError::NotFound(id))?;
        if meta.dead.is_none() {
            return Err(DeadLetterError::Pending(id));
        }
        let name = meta.receiver.clone();
        let queue = read(&self.queues).get(&name).cloned().ok_or(DeadLetterError::NoReceiver(name.clone()))?;
        let id = if meta.dead == Some(DeadReason::TemplateError) {
            // Never rendered: rendered now, with the receiver's template as it
            // is now (fixed, one hopes), and stored as a new delivery.
            let target = self.target(&name).ok_or(DeadLetterError::NoReceiver(name.clone()))?;
            let routed = self.spool.payload(id)?.ok_or(DeadLetterError::NotFound(id))?;
            let body = target
                .receiver
                .payload
                .render(&routed, &name)
                .map_err(|e| DeadLetterError::Template(e.to_string()))?
                .into_owned();
            meta = DeliveryMeta::new(name.clone(), meta.group_key, meta.alerts, now_ms());
            meta.body_bytes = Some(body.len() as u64);
            let ids =
                self.spool.commit(vec![Op::Remove { id }, Op::Insert { metas: vec![meta.clone()], body }]).await?;
            ids.first().copied().ok_or(DeadLetterError::NotFound(id))?
        } else {
            meta.dead = None;
            meta.attempts = 0;
            meta.first_attempt_ms = None;
            meta.next_due_ms = now_ms();
            self.spool.commit(vec![Op::Update { id, meta: meta.clone() }]).await?;
            id
        };
        let superseded = {
            let mut state = lock(&queue.state);
            state.count_dead(false);
            let superseded = state.add(id, meta);
            queue.show(&state);
            superseded
        };
        if !superseded.is_empty() {
            queue.metrics.superseded.inc_by(superseded.len() as u64);
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
            state.count_dead(false);
            queue.show(&state);
        }
        log::info!("receiver {}: dead letter {id} deleted", meta.receiver);
        Ok(())
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
