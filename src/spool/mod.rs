//! The durable spool: deliveries and their payloads in an append-only log
//! (`store.rs`), with the whole state indexed in memory.
//!
//! Every change goes through one writer thread that gathers whatever requests
//! are waiting into one frame and one `fdatasync` (group commit). Readers
//! read the index in memory and payloads from the files, and never wait for
//! the writer's disk.
//!
//! Two rules keep a commit near the cost of one fsync of the disk:
//! - A payload routed to several receivers with the same bytes is stored once
//!   (`Op::Insert` with several deliveries); the last delivery removed takes
//!   it along.
//! - Changes nobody waits for (`commit_later`: removals of delivered
//!   deliveries) wait up to `HOLD` for a commit that is fsynced anyway and go
//!   with it; failing that they are written without an fsync of their own.
//!   Either way they become durable with the next fsynced commit, or after
//!   `FLUSH_INTERVAL` at the latest. A crash loses at most that much of them:
//!   those deliveries are sent again, under the same `Idempotency-Key`.
//!   They wait in a buffer the writer empties into each commit, and only
//!   the first after a commit wakes the writer (under load, one wake-up per
//!   commit instead of one per delivery).
//!
//! A commit's ids are given when it is queued (`Spool::begin`), so that its
//! deliveries can be attempted while a slow `fdatasync` is still in flight
//! (`Pending::expose`; the dispatcher decides when). The removals nobody
//! waits for therefore go after the queued batches in a frame: one of them
//! may remove a delivery whose insert is in the same frame.

mod direct;
mod import;
mod store;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prometheus::{Histogram, IntCounter, IntGauge};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use self::store::{Layout, Log, ReplayError, State};
use crate::reasons::DeadReason;
use crate::sync::lock;

/// Requests folded into one commit at most.
const MAX_BATCH: usize = 1024;
/// A commit that takes longer is logged.
const SLOW_COMMIT: Duration = Duration::from_millis(100);
/// How long changes nobody waits for wait for a commit that is fsynced
/// anyway, before they are committed without one.
const HOLD: Duration = Duration::from_millis(5);
/// Changes committed without an fsync are made durable within this time.
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Ids a start skips past the last one in the log. Ids are handed out
/// before their commit is durable, and a delivery may be attempted while
/// its commit is in flight (`Pending::expose`): its id has then gone out in
/// an `Idempotency-Key`. Only ids less than this far past the durable ones
/// are exposed, so that a start after a crash never gives one out again.
const ID_MARGIN: u64 = 1 << 16;

/// The state of one delivery, without its payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryMeta {
    pub receiver: String,
    pub group_key: String,
    /// Alerts in the payload.
    pub alerts: u32,
    /// When `/webhook` accepted it, epoch milliseconds.
    pub created_ms: u64,
    pub attempts: u32,
    pub first_attempt_ms: Option<u64>,
    pub next_due_ms: u64,
    pub last_error: Option<String>,
    /// Set once dead-lettered.
    pub dead: Option<DeadReason>,
    /// Size of the body as sent (after the receiver's format). Absent in
    /// deliveries stored before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_bytes: Option<u64>,
    /// Where the payload is stored when deliveries share it: the key of the
    /// first of them. Absent: under the delivery's own id. Kept by the spool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) payload: Option<u64>,
}

impl DeliveryMeta {
    /// A delivery just accepted: due now, not attempted yet.
    pub fn new(receiver: String, group_key: String, alerts: u32, now_ms: u64) -> DeliveryMeta {
        DeliveryMeta {
            receiver,
            group_key,
            alerts,
            created_ms: now_ms,
            attempts: 0,
            first_attempt_ms: None,
            next_due_ms: now_ms,
            last_error: None,
            dead: None,
            body_bytes: None,
            payload: None,
        }
    }
}

#[derive(Debug)]
pub enum Op {
    /// New deliveries with one body between them, stored once: a payload
    /// routed to several receivers as the same bytes. Each gets an id.
    Insert {
        metas: Vec<DeliveryMeta>,
        body: Vec<u8>,
    },
    /// Replaces the state of an existing delivery; a missing one stays missing.
    Update {
        id: u64,
        meta: DeliveryMeta,
    },
    Remove {
        id: u64,
    },
    /// Stores an API-managed receiver's spec (JSON).
    PutReceiver {
        name: String,
        spec: Vec<u8>,
    },
    DeleteReceiver {
        name: String,
    },
    /// Stores a notification-log entry (JSON).
    Notified {
        key: String,
        entry: Vec<u8>,
    },
    ForgetNotified {
        key: String,
    },
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum SpoolError {
    /// The spool cannot be read or written now (disk full, I/O error); the
    /// writer keeps trying to recover. The message names no path.
    #[error("spool unavailable: {0}")]
    Unavailable(String),
    #[error("spool writer has stopped")]
    Closed,
}

/// Why the spool could not be opened at start: for the operator, with the path
/// and what to do.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(
        "{path} holds no spool segment (spool-*.log) but the spool existed (instance {instance}, recorded in \
         {marker}); restore them, or start with --reset-spool to begin with an empty queue"
    )]
    Vanished { path: String, marker: String, instance: String },
    #[error(
        "{path} is 0 bytes but the spool existed (instance {instance}); restore it, or start with --reset-spool \
         to begin with an empty queue"
    )]
    Emptied { path: String, instance: String },
    #[error(
        "{path} cannot be read: {message}; restore the spool directory from a backup, or start with \
         --reset-spool (the spool's files are then kept beside it, renamed .broken-<time>)"
    )]
    Unreadable { path: String, message: String },
    #[error("spool directory {path}: {message}")]
    Directory { path: String, message: String },
}

/// What the spool reports about itself.
#[derive(Clone)]
pub struct SpoolGauges {
    /// Durable commits only.
    pub commit_duration: Histogram,
    /// Waiting requests per durable commit.
    pub commit_requests: Histogram,
    /// Commits without an fsync of their own.
    pub deferred_commits: IntCounter,
    /// 1 while the spool accepts writes.
    pub healthy: IntGauge,
}

impl SpoolGauges {
    /// Gauges in no registry: for tools and tests that open a spool by hand.
    pub fn unregistered() -> SpoolGauges {
        SpoolGauges {
            commit_duration: Histogram::with_opts(prometheus::HistogramOpts::new("commit", "commit"))
                .expect("static metric definition"),
            commit_requests: Histogram::with_opts(prometheus::HistogramOpts::new("requests", "requests"))
                .expect("static metric definition"),
            deferred_commits: IntCounter::new("deferred", "deferred").expect("static metric definition"),
            healthy: IntGauge::new("healthy", "healthy").expect("static metric definition"),
        }
    }
}

struct Batch {
    ops: Vec<Op>,
    /// The first id of each insert in `ops` (with deliveries), in order.
    keys: Vec<u64>,
    /// None for changes nobody waits for (`commit_later`'s, or the empty
    /// batch that wakes the writer for them): if their commit fails, they
    /// go with the next one instead of being lost.
    reply: Option<oneshot::Sender<Answer>>,
}

/// The writer's answer to a waiting batch, with the batch's ops handed back:
/// they were allocated on the waiter's thread and are freed there. (glibc's
/// free of another thread's memory takes that thread's arena lock; the
/// writer freeing every request's body contended with the HTTP workers.)
struct Answer {
    result: Result<(), SpoolError>,
    _ops: Vec<Op>,
}

/// Whether the spool accepts writes, and why not.
struct Health {
    healthy: AtomicBool,
    problem: Mutex<Option<String>>,
    gauge: IntGauge,
}

impl Health {
    fn set(&self, problem: Option<String>) {
        self.healthy.store(problem.is_none(), Ordering::SeqCst);
        self.gauge.set(i64::from(problem.is_none()));
        *lock(&self.problem) = problem;
    }

    fn problem(&self) -> Option<String> {
        lock(&self.problem).clone()
    }
}

pub struct Spool {
    /// Every delivery and where its payload is; the writer changes it after
    /// each commit.
    state: Arc<RwLock<State>>,
    /// Bodies of deliveries just made durable, until their first attempt
    /// reads them: most are sent within milliseconds, and a read from the
    /// cache costs no read of the file and no decompression. Bounded in bytes.
    recent: Mutex<Recent>,
    /// Taken on drop, so that the writer thread ends and closes the file.
    writer: Option<std::sync::mpsc::Sender<Batch>>,
    /// Changes nobody waits for (`commit_later`), until the writer's next
    /// commit takes them all: the writer is woken once for a commit's worth,
    /// not once per delivered delivery. Those of a commit that failed are
    /// put back in front.
    later: Arc<Mutex<Vec<Op>>>,
    thread: Option<std::thread::JoinHandle<()>>,
    instance: String,
    health: Arc<Health>,
    /// The next id to hand out: ids are given when a commit is queued, so
    /// that they are known before it is durable.
    next_key: AtomicU64,
    #[cfg(test)]
    faults: Arc<Faults>,
}

/// Test hooks of the writer: its commits stall while `stalled`, and fail
/// while `failing` is above zero (one fewer each).
#[cfg(test)]
#[derive(Default)]
pub(crate) struct Faults {
    stalled: Mutex<bool>,
    changed: std::sync::Condvar,
    /// The writer waits in a stalled commit.
    pub waiting: AtomicBool,
    pub failing: std::sync::atomic::AtomicUsize,
}

#[cfg(test)]
impl Faults {
    pub fn stall(&self, stalled: bool) {
        *lock(&self.stalled) = stalled;
        self.changed.notify_all();
    }

    fn pass(&self) -> Result<(), String> {
        let mut stalled = lock(&self.stalled);
        while *stalled {
            self.waiting.store(true, Ordering::SeqCst);
            stalled = self.changed.wait(stalled).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        self.waiting.store(false, Ordering::SeqCst);
        let failing = self.failing.load(Ordering::SeqCst);
        if failing > 0 {
            self.failing.store(failing - 1, Ordering::SeqCst);
            return Err("injected failure".into());
        }
        Ok(())
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        self.writer.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What the cache of recent bodies may hold.
const RECENT_BYTES: usize = 8 * 1024 * 1024;

/// Full, it keeps the newest: ids grow with time, so the oldest bodies are
/// those of deliveries still waiting (behind a target that hangs, or for a
/// retry) and go first; fresh ones, attempted within milliseconds by
/// healthy receivers, stay served from memory.
#[derive(Default)]
struct Recent {
    bodies: BTreeMap<u64, Bytes>,
    bytes: usize,
    /// Bodies of deliveries attempted before their commit is durable
    /// (`Pending::expose`), until it is: not bounded, not evicted, as the
    /// file does not have them yet; and whether they were read. Empty
    /// unless a commit is slow.
    uncommitted: BTreeMap<u64, (Bytes, bool)>,
}

impl Recent {
    fn take(&mut self, id: u64) -> Option<Bytes> {
        if let Some((body, read)) = self.uncommitted.get_mut(&id) {
            // Kept until the commit is over: a retry may need it again.
            *read = true;
            return Some(body.clone());
        }
        let body = self.bodies.remove(&id)?;
        self.bytes -= body.len();
        Some(body)
    }

    /// Drops a cached body (its delivery is being removed).
    fn forget(&mut self, id: u64) {
        if let Some(body) = self.bodies.remove(&id) {
            self.bytes -= body.len();
        }
    }

    fn put(&mut self, id: u64, body: &Bytes) {
        if body.len() > RECENT_BYTES {
            return;
        }
        while self.bytes + body.len() > RECENT_BYTES {
            let Some(oldest) = self.bodies.first_entry() else { break };
            if *oldest.key() > id {
                // Older than all it holds: not cached.
                return;
            }
            self.bytes -= oldest.remove().len();
        }
        self.bytes += body.len();
        if let Some(old) = self.bodies.insert(id, body.clone()) {
            self.bytes -= old.len();
        }
    }
}

/// Beside the segments: the instance id of the spool that lives there, so
/// that a spool that vanished or was emptied is told apart from one never made.
const MARKER: &str = "spool.id";
/// Locked while a process has the spool open.
const LOCK: &str = "spool.lock";
/// How often a failed spool tries to reopen, with nothing to write.
const RECOVERY_INTERVAL: Duration = Duration::from_secs(1);

fn new_instance() -> String {
    format!("{:016x}", fastrand::u64(..))
}

/// Renames `path` to `path.<what>-<time>`; the new path.
fn set_aside(path: &Path, what: &str) -> std::io::Result<PathBuf> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{what}-{}", now_secs()));
    let aside = path.with_file_name(name);
    std::fs::rename(path, &aside)?;
    Ok(aside)
}

impl Spool {
    /// Opens (or creates) the spool in `dir` and starts its writer thread. A
    /// spool that existed (its `spool.id` is there) but whose segments are
    /// now missing, empty or unreadable is an error unless `reset`. A
    /// `spool.redb` of an earlier version is imported.
    pub fn open(dir: &Path, reset: bool, gauges: SpoolGauges) -> Result<Spool, OpenError> {
        Spool::open_with(dir, reset, gauges, Layout::DEFAULT)
    }

    fn open_with(dir: &Path, reset: bool, gauges: SpoolGauges, layout: Layout) -> Result<Spool, OpenError> {
        let shown = dir.display().to_string();
        let dir_error = |message: String| OpenError::Directory { path: shown.clone(), message };
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(|e| dir_error(e.to_string()))?;
            set_mode(dir, 0o700).map_err(|e| dir_error(e.to_string()))?;
        }
        // One process per spool: held by the writer thread until it ends.
        let held = lock_dir(dir).map_err(dir_error)?;
        let marker = dir.join(MARKER);
        let recorded = std::fs::read_to_string(&marker).ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty());
        let legacy = dir.join(import::FILE);
        let legacy_len = std::fs::metadata(&legacy).ok().map(|m| m.len());
        let found = store::segments(dir).map_err(|e| dir_error(e.to_string()))?;
        if !found.is_empty() {
            if legacy_len.is_some() {
                // Imported, and the process stopped before it was renamed.
                let aside = set_aside(&legacy, "imported").map_err(|e| dir_error(e.to_string()))?;
                log::info!("{} was imported before; kept as {}", legacy.display(), aside.display());
            }
        } else if legacy_len.is_some_and(|len| len > 0) {
            match import::import(dir, &legacy) {
                Ok(count) => {
                    let aside = set_aside(&legacy, "imported").map_err(|e| dir_error(e.to_string()))?;
                    log::info!(
                        "imported {count} deliveries from {} (an earlier version's spool); kept as {}, which may be \
                         deleted",
                        legacy.display(),
                        aside.display()
                    );
                }
                Err(message) if reset => {
                    let aside = set_aside(&legacy, "broken").map_err(|e| dir_error(e.to_string()))?;
                    log::warn!(
                        "--reset-spool: {} cannot be imported ({message}); kept as {}",
                        legacy.display(),
                        aside.display()
                    );
                    fresh(dir).map_err(dir_error)?;
                }
                Err(message) => return Err(OpenError::Unreadable { path: legacy.display().to_string(), message }),
            }
        } else {
            let lost = recorded.clone().map(|instance| match legacy_len {
                Some(_) => OpenError::Emptied { path: legacy.display().to_string(), instance },
                None => OpenError::Vanished { path: shown.clone(), marker: marker.display().to_string(), instance },
            });
            match lost {
                Some(e) if !reset => return Err(e),
                Some(e) => log::warn!("--reset-spool: {e}; starting with an empty queue"),
                None => {}
            }
            fresh(dir).map_err(dir_error)?;
        }
        let (log, state) = match Log::open(dir, layout) {
            Ok(opened) => opened,
            Err(e) if reset => {
                let (path, message) = e.parts();
                for (_, segment) in store::segments(dir).map_err(|e| dir_error(e.to_string()))? {
                    set_aside(&segment, "broken")
                        .map_err(|e| dir_error(format!("cannot move {}: {e}", segment.display())))?;
                }
                log::warn!(
                    "--reset-spool: {} cannot be read ({message}); the segments are kept as *.broken-<time>",
                    path.display()
                );
                fresh(dir).map_err(dir_error)?;
                Log::open(dir, layout).map_err(|e| {
                    let (path, message) = e.parts();
                    OpenError::Unreadable { path: path.display().to_string(), message }
                })?
            }
            Err(ReplayError::Emptied(path)) => {
                let instance = recorded.unwrap_or_else(|| "unknown".into());
                return Err(OpenError::Emptied { path: path.display().to_string(), instance });
            }
            Err(ReplayError::Damaged { path, message }) => {
                return Err(OpenError::Unreadable { path: path.display().to_string(), message })
            }
        };
        let instance = log.instance().to_string();
        let written = std::fs::write(&marker, format!("{instance}\n"))
            .and_then(|()| std::fs::File::open(&marker)?.sync_all())
            .and_then(|()| set_mode(&marker, 0o600));
        if let Err(e) = written {
            return Err(dir_error(format!("cannot write {}: {e}", marker.display())));
        }
        let health = Arc::new(Health {
            healthy: AtomicBool::new(true),
            problem: Mutex::new(None),
            gauge: gauges.healthy.clone(),
        });
        health.set(None);
        #[cfg(test)]
        let faults = Arc::new(Faults::default());
        let next_key = AtomicU64::new(state.next_id + ID_MARGIN);
        let state = Arc::new(RwLock::new(state));
        let (tx, rx) = std::sync::mpsc::channel();
        let later = Arc::new(Mutex::new(Vec::new()));
        let writer = Writer {
            log,
            state: state.clone(),
            later: later.clone(),
            health: health.clone(),
            stats: gauges,
            #[cfg(test)]
            faults: faults.clone(),
            _held: held,
        };
        let thread = std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || writer.run(&rx))
            .map_err(|e| dir_error(format!("cannot start the spool writer thread: {e}")))?;
        Ok(Spool {
            state,
            recent: Mutex::default(),
            writer: Some(tx),
            later,
            thread: Some(thread),
            instance,
            health,
            next_key,
            #[cfg(test)]
            faults,
        })
    }

    /// The writer's test hooks.
    #[cfg(test)]
    pub(crate) fn faults(&self) -> &Faults {
        &self.faults
    }

    /// A random id of this spool, stable across restarts: with the delivery id it
    /// makes an `Idempotency-Key` unique across replicas.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Whether the spool accepts writes now; if not, why.
    pub fn problem(&self) -> Option<String> {
        if self.health.healthy.load(Ordering::SeqCst) {
            None
        } else {
            self.health.problem().or_else(|| Some("unknown storage error".into()))
        }
    }

    /// Applies the ops durably, together with whatever else is waiting; returns the
    /// ids given to the inserts, in order.
    pub async fn commit(&self, ops: Vec<Op>) -> Result<Vec<u64>, SpoolError> {
        let mut pending = self.begin(ops)?;
        pending.durable().await?;
        Ok(std::mem::take(&mut pending.ids))
    }

    /// Queues the ops for the next commit and returns at once, with the ids
    /// its inserts get: `Pending::durable` waits for it.
    pub fn begin(&self, ops: Vec<Op>) -> Result<Pending<'_>, SpoolError> {
        let (ops, keys, fresh) = self.prepare(ops);
        let ids = fresh.iter().flat_map(|f| (f.key..).take(f.attempted.len())).collect();
        let writer = self.writer.as_ref().ok_or(SpoolError::Closed)?;
        let answer = if ops.is_empty() {
            None
        } else {
            let (reply, answer) = oneshot::channel();
            writer.send(Batch { ops, keys, reply: Some(reply) }).map_err(|_| SpoolError::Closed)?;
            Some(answer)
        };
        Ok(Pending { spool: self, ids, fresh, answer, exposed: false })
    }

    /// Readies ops for the writer, off its thread: gives the inserts their
    /// ids, drops the cached bodies of deliveries being removed, compresses
    /// payloads. Returns the ops, the first id of each insert, and each
    /// insert's `Fresh`.
    fn prepare(&self, ops: Vec<Op>) -> (Vec<Op>, Vec<u64>, Vec<Fresh>) {
        let mut fresh = Vec::new();
        let mut keys = Vec::new();
        let mut recent = None;
        let ops = ops
            .into_iter()
            .map(|op| match op {
                Op::Insert { metas, body } => {
                    let stored = compress(&body);
                    if !metas.is_empty() {
                        let key = self.next_key.fetch_add(metas.len() as u64, Ordering::SeqCst);
                        keys.push(key);
                        let attempted = metas.iter().map(|m| m.dead.is_none()).collect();
                        fresh.push(Fresh { key, attempted, body: Bytes::from(body) });
                    }
                    Op::Insert { metas, body: stored }
                }
                Op::Remove { id } => {
                    recent.get_or_insert_with(|| lock(&self.recent)).forget(id);
                    Op::Remove { id }
                }
                other => other,
            })
            .collect();
        (ops, keys, fresh)
    }

    /// Queues the ops for the next commit without waiting for it. If that
    /// commit fails they go with the next one that succeeds.
    pub fn commit_later(&self, ops: Vec<Op>) {
        if ops.is_empty() {
            return;
        }
        let (ops, _, _) = self.prepare(ops);
        let first = {
            let mut later = lock(&self.later);
            let first = later.is_empty();
            later.extend(ops);
            first
        };
        // The first since the writer last took them wakes it (an empty
        // batch); the others ride along.
        if first
            && self
                .writer
                .as_ref()
                .is_none_or(|w| w.send(Batch { ops: Vec::new(), keys: Vec::new(), reply: None }).is_err())
        {
            // Not kept for a writer that is gone: the deliveries are sent
            // again after a restart.
            lock(&self.later).clear();
            log::error!(
                "spool writer has stopped; removals are not recorded: their deliveries are sent again after a restart"
            );
        }
    }

    fn state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        crate::sync::read(&self.state)
    }

    /// Every delivery's state, oldest first.
    pub fn load_all(&self) -> Result<Vec<(u64, DeliveryMeta)>, SpoolError> {
        Ok(self.state().deliveries.iter().map(|(id, meta)| (*id, meta.clone())).collect())
    }

    /// One delivery's state.
    pub fn get(&self, id: u64) -> Result<Option<DeliveryMeta>, SpoolError> {
        Ok(self.state().deliveries.get(&id).cloned())
    }

    /// Deliveries newest first, those with ids below `before` that `keep`
    /// accepts, at most `limit`.
    pub fn list(
        &self,
        before: Option<u64>,
        limit: usize,
        keep: impl Fn(&DeliveryMeta) -> bool,
    ) -> Result<Vec<(u64, DeliveryMeta)>, SpoolError> {
        let state = self.state();
        Ok(state
            .deliveries
            .range(..before.unwrap_or(u64::MAX))
            .rev()
            .filter(|(_, meta)| keep(meta))
            .take(limit)
            .map(|(id, meta)| (*id, meta.clone()))
            .collect())
    }

    /// The API-managed receivers' specs (JSON), by name.
    pub fn receivers(&self) -> Result<Vec<(String, Vec<u8>)>, SpoolError> {
        Ok(self.state().receivers.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    }

    /// The notification log's entries (JSON), by key.
    pub fn notified(&self) -> Result<Vec<(String, Vec<u8>)>, SpoolError> {
        Ok(self.state().notified.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    }

    /// The body of a delivery for an attempt: from the cache of recent
    /// bodies the first time (and then no longer cached), else as `payload`.
    pub fn body(&self, id: u64) -> Result<Option<Bytes>, SpoolError> {
        if let Some(body) = lock(&self.recent).take(id) {
            return Ok(Some(body));
        }
        Ok(self.payload(id)?.map(Bytes::from))
    }

    /// The body of a delivery (None once it is gone), read from the file.
    pub fn payload(&self, id: u64) -> Result<Option<Vec<u8>>, SpoolError> {
        let Some((file, at)) = self.state().payload_of(id) else { return Ok(None) };
        let stored = store::read_at(&file, at).map_err(|e| SpoolError::Unavailable(e.to_string()))?;
        decode_payload(&stored).map(Some).map_err(|e| SpoolError::Unavailable(format!("payload of delivery {id}: {e}")))
    }
}

/// An insert of a queued commit, for the cache of bodies.
struct Fresh {
    /// The first id of the deliveries sharing the body.
    key: u64,
    /// Per delivery, whether it will be attempted (dead letters are not).
    attempted: Vec<bool>,
    /// The body as given.
    body: Bytes,
}

impl Fresh {
    fn attempted_ids(&self) -> impl Iterator<Item = u64> + '_ {
        (self.key..).zip(&self.attempted).filter(|(_, a)| **a).map(|(id, _)| id)
    }
}

/// A commit queued for the writer (`Spool::begin`): the ids of its inserts
/// are known before it is durable.
pub struct Pending<'a> {
    spool: &'a Spool,
    ids: Vec<u64>,
    fresh: Vec<Fresh>,
    /// None once answered (or when there was nothing to write).
    answer: Option<oneshot::Receiver<Answer>>,
    /// The bodies are in `Recent::uncommitted`.
    exposed: bool,
}

impl Pending<'_> {
    /// The ids given to the inserts, in order.
    pub fn ids(&self) -> &[u64] {
        &self.ids
    }

    /// Makes the bodies of the deliveries to be attempted readable by
    /// `Spool::body` before the commit is durable, so that they can be
    /// attempted while it is in flight. False, and nothing exposed, when
    /// the ids run too far ahead of the durable ones (see `ID_MARGIN`): the
    /// deliveries then wait for the commit.
    pub fn expose(&mut self) -> bool {
        // The state's next id is the durable one: inserts are only ever
        // committed with an fsync, and the state changes once they are.
        let limit = self.spool.state().next_id + ID_MARGIN;
        if self.exposed || self.answer.is_none() || self.ids.iter().any(|id| *id >= limit) {
            return self.exposed;
        }
        let mut recent = lock(&self.spool.recent);
        for fresh in &self.fresh {
            for id in fresh.attempted_ids() {
                recent.uncommitted.insert(id, (fresh.body.clone(), false));
            }
        }
        self.exposed = true;
        true
    }

    /// Waits until the commit is durable (or has failed). Cancel-safe: a
    /// wait given up can be taken up again.
    pub async fn durable(&mut self) -> Result<(), SpoolError> {
        let Some(answer) = self.answer.as_mut() else { return Ok(()) };
        #[cfg(test)]
        let _held = HoldPausedClock::new();
        let result = answer.await.map_err(|_| SpoolError::Closed).and_then(|a| a.result);
        self.answer = None;
        let mut recent = lock(&self.spool.recent);
        let read = self.unexpose(&mut recent);
        if result.is_ok() {
            // Cached for the first attempt, unless it was made from memory
            // already: one not made yet must not wait for a read of the file
            // (written past the page cache) on a disk that may stall again.
            for fresh in &self.fresh {
                for id in fresh.attempted_ids().filter(|id| !read.contains(id)) {
                    recent.put(id, &fresh.body);
                }
            }
        }
        result
    }

    /// Takes the exposed bodies back; the ids of those read meanwhile.
    fn unexpose(&mut self, recent: &mut Recent) -> Vec<u64> {
        if !std::mem::take(&mut self.exposed) {
            return Vec::new();
        }
        self.ids.iter().filter(|id| matches!(recent.uncommitted.remove(id), Some((_, true)))).copied().collect()
    }
}

impl Drop for Pending<'_> {
    /// A wait given up for good: exposed bodies are not kept for it.
    fn drop(&mut self) {
        if self.exposed {
            let spool = self.spool;
            self.unexpose(&mut lock(&spool.recent));
        }
    }
}

/// While a unit test on Tokio's paused clock waits for the writer thread, the
/// runtime looks idle and would move the clock on to its next timer. A
/// blocking task held for the wait keeps it still (Tokio does not advance
/// a paused clock while one runs).
#[cfg(test)]
struct HoldPausedClock {
    _release: Option<std::sync::mpsc::Sender<()>>,
}

#[cfg(test)]
impl HoldPausedClock {
    fn new() -> HoldPausedClock {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return HoldPausedClock { _release: None } };
        let (release, held) = std::sync::mpsc::channel::<()>();
        runtime.spawn_blocking(move || {
            let _ = held.recv();
        });
        HoldPausedClock { _release: Some(release) }
    }
}

/// Takes `dir`'s lock file. On a file system without locks (some network
/// ones) the start goes on, unguarded, with a warning.
fn lock_dir(dir: &Path) -> Result<std::fs::File, String> {
    let path = dir.join(LOCK);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let _ = set_mode(&path, 0o600);
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(format!("in use by another process ({} is locked)", path.display()));
        }
        Err(std::fs::TryLockError::Error(e)) => {
            log::warn!("spool {}: cannot lock {}: {e}; make sure no other relay uses it", dir.display(), path.display())
        }
    }
    Ok(file)
}

/// Starts an empty spool in `dir`, under a new instance id.
fn fresh(dir: &Path) -> Result<(), String> {
    Log::create(dir, &new_instance(), &State::new(), Vec::new())
}

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Payloads are stored LZ4-compressed behind a one-byte tag: Alertmanager's
/// JSON repeats itself, and every byte saved is a byte the commit need not
/// write and fsync. Done by the caller, not the single writer thread.
const TAG_LZ4: u8 = 1;

/// The tag, the body's length (u32, little-endian: lz4_flex's
/// size-prepended format), the compressed block. Each thread keeps its
/// compressor's hash table (8 KiB) instead of allocating one per payload.
fn compress(body: &[u8]) -> Vec<u8> {
    use lz4_flex::block::{compress_into_with_table, get_maximum_output_size, CompressTable};
    thread_local! {
        static TABLE: std::cell::RefCell<CompressTable> = std::cell::RefCell::new(CompressTable::default());
    }
    let by_the_crate = || [&[TAG_LZ4], lz4_flex::compress_prepend_size(body).as_slice()].concat();
    // Past 4 GiB (never: bodies are limited to max_body_bytes).
    let Ok(len) = u32::try_from(body.len()) else { return by_the_crate() };
    let mut stored = vec![0u8; 5 + get_maximum_output_size(body.len())];
    stored[0] = TAG_LZ4;
    stored[1..5].copy_from_slice(&len.to_le_bytes());
    match TABLE.with(|table| compress_into_with_table(body, &mut stored[5..], &mut table.borrow_mut())) {
        Ok(written) => {
            stored.truncate(5 + written);
            stored
        }
        // Not with room for the worst case; the crate's own way if ever.
        Err(_) => by_the_crate(),
    }
}

fn decode_payload(stored: &[u8]) -> Result<Vec<u8>, String> {
    match stored.split_first() {
        Some((&TAG_LZ4, rest)) => lz4_flex::decompress_size_prepended(rest).map_err(|e| e.to_string()),
        Some((tag, _)) => Err(format!("unknown payload encoding {tag}")),
        None => Err("empty payload".into()),
    }
}

/// Whether a batch's commit must be fsynced: somebody waits for it, or it
/// creates deliveries.
fn needs_fsync(batch: &Batch) -> bool {
    batch.reply.is_some() || batch.ops.iter().any(|op| matches!(op, Op::Insert { .. }))
}

/// The one thread that writes: group commits, and recovery after an error.
struct Writer {
    /// The spool's lock file, locked: released when the writer ends.
    _held: std::fs::File,
    log: Log,
    state: Arc<RwLock<State>>,
    /// `Spool::later`'s changes.
    later: Arc<Mutex<Vec<Op>>>,
    health: Arc<Health>,
    stats: SpoolGauges,
    #[cfg(test)]
    faults: Arc<Faults>,
}

impl Writer {
    /// The changes nobody waits for (`commit_later`'s, and those of a
    /// commit that failed), as one batch.
    fn take_later(&self) -> Option<Batch> {
        let ops = std::mem::take(&mut *lock(&self.later));
        (!ops.is_empty()).then_some(Batch { ops, keys: Vec::new(), reply: None })
    }

    fn run(mut self, rx: &std::sync::mpsc::Receiver<Batch>) {
        use std::sync::mpsc::RecvTimeoutError;
        let mut last_try = Instant::now();
        // Since when changes are committed but not yet fsynced.
        let mut unflushed: Option<Instant> = None;
        loop {
            let healthy = self.health.healthy.load(Ordering::SeqCst);
            let wait = if healthy {
                unflushed.map(|since| FLUSH_INTERVAL.saturating_sub(since.elapsed()))
            } else {
                Some(RECOVERY_INTERVAL)
            };
            let first = match wait {
                None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(wait) => rx.recv_timeout(wait),
            };
            let mut batches = match first {
                Ok(b) => vec![b],
                Err(RecvTimeoutError::Timeout) if healthy => {
                    self.flush(&mut unflushed, &[]);
                    continue;
                }
                Err(RecvTimeoutError::Timeout) => {
                    last_try = Instant::now();
                    self.recover();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let later: Vec<Batch> = self.take_later().into_iter().collect();
                    self.flush(&mut unflushed, &later);
                    return;
                }
            };
            while batches.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(b) => batches.push(b),
                    Err(_) => break,
                }
            }
            if healthy && !batches.iter().any(needs_fsync) {
                // Nobody waits for these: a request that does, due any moment
                // under load, takes them along in its commit.
                let until = Instant::now() + HOLD;
                while batches.len() < MAX_BATCH {
                    match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
                        Ok(b) if needs_fsync(&b) => {
                            batches.push(b);
                            while let Ok(b) = rx.try_recv() {
                                batches.push(b);
                            }
                            break;
                        }
                        Ok(b) => batches.push(b),
                        Err(_) => break,
                    }
                }
            }
            if !self.health.healthy.load(Ordering::SeqCst) && last_try.elapsed() >= RECOVERY_INTERVAL {
                last_try = Instant::now();
                self.recover();
            }
            if !self.health.healthy.load(Ordering::SeqCst) {
                let problem = self.health.problem().unwrap_or_default();
                self.fail(batches, &problem);
                continue;
            }
            // The later changes after the batches: a delivery attempted while
            // its insert waited in the queue may be removed already.
            let mut all = batches;
            all.extend(self.take_later());
            // Woken for changes an earlier commit has taken already.
            if all.iter().all(|b| b.ops.is_empty() && b.reply.is_none())
                && unflushed.is_none_or(|since| since.elapsed() < FLUSH_INTERVAL)
            {
                continue;
            }
            // An fsync when somebody waits for this commit (or it creates
            // deliveries), or when unflushed changes have waited long enough.
            let waited = all.iter().filter(|b| b.reply.is_some()).count();
            let durable =
                all.iter().any(needs_fsync) || unflushed.is_some_and(|since| since.elapsed() >= FLUSH_INTERVAL);
            let started = Instant::now();
            let result = self.apply(&all, durable);
            let took = started.elapsed();
            if durable {
                self.stats.commit_duration.observe(took.as_secs_f64());
                self.stats.commit_requests.observe(waited as f64);
            }
            if took >= SLOW_COMMIT {
                log::warn!(
                    "spool {}: commit took {} ms ({waited} requests waiting, {} changes, {})",
                    self.log.dir().display(),
                    took.as_millis(),
                    all.iter().map(|b| b.ops.len()).sum::<usize>(),
                    if durable { "fsynced" } else { "not fsynced" }
                );
            }
            match result {
                Ok(()) => {
                    if durable {
                        unflushed = None;
                    } else {
                        self.stats.deferred_commits.inc();
                        unflushed.get_or_insert(started);
                    }
                    for batch in all {
                        if let Some(reply) = batch.reply {
                            let _ = reply.send(Answer { result: Ok(()), _ops: batch.ops });
                        }
                    }
                }
                Err(message) => {
                    log::error!(
                        "spool {}: commit of {} requests failed: {message}; answering 503 until the spool \
                         recovers (it retries by itself)",
                        self.log.dir().display(),
                        all.len()
                    );
                    self.health.set(Some(message.clone()));
                    last_try = Instant::now();
                    // What was committed without an fsync is lost with the
                    // handle if the reopen finds it gone: removals only, whose
                    // deliveries are then sent again.
                    unflushed = None;
                    self.fail(all, &message);
                }
            }
        }
    }

    /// Makes the changes committed without an fsync durable, with `later`
    /// (what `commit_later` left when the spool closes).
    fn flush(&mut self, unflushed: &mut Option<Instant>, later: &[Batch]) {
        if unflushed.is_none() && later.is_empty() {
            return;
        }
        let started = Instant::now();
        match self.apply(later, true) {
            Ok(_) => {
                self.stats.commit_duration.observe(started.elapsed().as_secs_f64());
                self.stats.commit_requests.observe(0.0);
                *unflushed = None;
            }
            Err(message) => {
                log::error!("spool {}: flush failed: {message}; retrying", self.log.dir().display());
                self.health.set(Some(message));
                *unflushed = None;
            }
        }
    }

    /// Answers every waiting batch with the error; puts the others' ops back
    /// in front of the later changes, for the next commit.
    fn fail(&self, batches: Vec<Batch>, problem: &str) {
        let mut kept = Vec::new();
        for batch in batches {
            match batch.reply {
                Some(reply) => {
                    let result = Err(SpoolError::Unavailable(problem.to_string()));
                    let _ = reply.send(Answer { result, _ops: batch.ops });
                }
                None => kept.extend(batch.ops),
            }
        }
        if !kept.is_empty() {
            let mut later = lock(&self.later);
            kept.append(&mut later);
            *later = kept;
        }
    }

    /// Reopens the newest segment, cut back to its last whole frame;
    /// healthy again if that works.
    fn recover(&mut self) {
        match self.log.reopen(&self.state) {
            Ok(()) => {
                self.health.set(None);
                log::info!(
                    "spool {}: reopened after a storage error; accepting writes again",
                    self.log.dir().display()
                );
            }
            Err(e) => {
                log::debug!("spool {}: still unavailable: {e}", self.log.dir().display());
                self.health.set(Some(e));
            }
        }
    }

    /// One frame for all batches. Not `durable`: written without an fsync.
    fn apply(&mut self, batches: &[Batch], durable: bool) -> Result<(), String> {
        #[cfg(test)]
        self.faults.pass()?;
        self.log.commit(&self.state, batches.iter().map(|b| (b.ops.as_slice(), b.keys.as_slice())), durable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(receiver: &str) -> DeliveryMeta {
        DeliveryMeta::new(receiver.into(), "g".into(), 1, 1)
    }

    fn gauges() -> SpoolGauges {
        SpoolGauges::unregistered()
    }

    #[tokio::test]
    async fn deliveries_survive_reopen_and_ids_keep_growing() {
        let dir = tempfile::tempdir().unwrap();
        let (instance, first_ids) = {
            let spool = Spool::open(dir.path(), false, gauges()).unwrap();
            let ids = spool
                .commit(vec![
                    Op::Insert { metas: vec![meta("a")], body: b"one".to_vec() },
                    Op::Insert { metas: vec![meta("b")], body: b"two".to_vec() },
                ])
                .await
                .unwrap();
            let mut dead = meta("b");
            dead.dead = Some(DeadReason::Expired);
            spool.commit(vec![Op::Update { id: ids[1], meta: dead }, Op::Remove { id: 999 }]).await.unwrap();
            (spool.instance().to_string(), ids)
        };
        // Dropping the spool ended its writer thread, so the file opens again at once.
        let spool = Spool::open(dir.path(), false, gauges()).unwrap();
        assert_eq!(spool.instance(), instance);
        let all = spool.load_all().unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[1].1.dead, Some(DeadReason::Expired));
        assert_eq!(spool.payload(first_ids[0]).unwrap().as_deref(), Some(&b"one"[..]));
        let more = spool.commit(vec![Op::Insert { metas: vec![meta("a")], body: vec![] }]).await.unwrap();
        assert!(more[0] > first_ids[1]);
        spool.commit(vec![Op::Remove { id: first_ids[0] }]).await.unwrap();
        assert_eq!(spool.payload(first_ids[0]).unwrap(), None);
    }

    /// Payloads stored, and (key, deliveries left) of those shared.
    fn stored_payloads(spool: &Spool) -> (usize, Vec<(u64, u32)>) {
        spool.state().payload_counts()
    }

    #[tokio::test]
    async fn a_payload_shared_by_deliveries_is_stored_once_and_goes_with_the_last() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), false, gauges()).unwrap();
        let ids = spool
            .commit(vec![
                Op::Insert { metas: vec![meta("a"), meta("b"), meta("c")], body: b"same".to_vec() },
                Op::Insert { metas: vec![meta("d")], body: b"own".to_vec() },
            ])
            .await
            .unwrap();
        assert_eq!(ids.len(), 4);
        assert_eq!(stored_payloads(&spool), (2, vec![(ids[0], 3)]));
        for id in &ids[..3] {
            assert_eq!(spool.payload(*id).unwrap().as_deref(), Some(&b"same"[..]));
        }
        assert_eq!(spool.payload(ids[3]).unwrap().as_deref(), Some(&b"own"[..]));
        // An update (a failed attempt) from a copy that does not know where
        // the payload is keeps it found.
        let mut failed = meta("b");
        failed.attempts = 1;
        spool.commit(vec![Op::Update { id: ids[1], meta: failed }]).await.unwrap();
        assert_eq!(spool.get(ids[1]).unwrap().unwrap().attempts, 1);
        assert_eq!(spool.payload(ids[1]).unwrap().as_deref(), Some(&b"same"[..]));
        // So does one of the delivery whose id is the payload's key.
        spool.commit(vec![Op::Update { id: ids[0], meta: meta("a") }]).await.unwrap();
        spool.commit(vec![Op::Remove { id: ids[0] }, Op::Remove { id: ids[3] }]).await.unwrap();
        assert_eq!(stored_payloads(&spool), (1, vec![(ids[0], 2)]));
        assert_eq!(spool.payload(ids[0]).unwrap(), None);
        assert_eq!(spool.payload(ids[2]).unwrap().as_deref(), Some(&b"same"[..]));
        // Removing one twice counts it once.
        spool.commit(vec![Op::Remove { id: ids[1] }, Op::Remove { id: ids[1] }]).await.unwrap();
        assert_eq!(stored_payloads(&spool), (1, vec![(ids[0], 1)]));
        drop(spool);
        let spool = Spool::open(dir.path(), false, gauges()).unwrap();
        assert_eq!(spool.payload(ids[2]).unwrap().as_deref(), Some(&b"same"[..]));
        spool.commit(vec![Op::Remove { id: ids[2] }]).await.unwrap();
        assert_eq!(stored_payloads(&spool), (0, vec![]));
    }

    /// Waits up to 10 s for `done`.
    fn eventually(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[tokio::test]
    async fn removals_nobody_waits_for_skip_the_fsync_and_are_made_durable_within_the_flush_interval() {
        let dir = tempfile::tempdir().unwrap();
        let stats = gauges();
        let spool = Spool::open(dir.path(), false, stats.clone()).unwrap();
        let ids = spool
            .commit(vec![
                Op::Insert { metas: vec![meta("a")], body: vec![1] },
                Op::Insert { metas: vec![meta("b")], body: vec![2] },
            ])
            .await
            .unwrap();
        let durable = stats.commit_duration.get_sample_count();
        assert_eq!(stats.commit_requests.get_sample_sum(), 1.0);
        spool.commit_later(vec![Op::Remove { id: ids[0] }]);
        eventually("the deferred commit", || stats.deferred_commits.get() == 1);
        // Seen at once by readers, though not yet fsynced.
        assert_eq!(spool.get(ids[0]).unwrap(), None);
        // Then an fsync of its own, since nobody committed meanwhile.
        eventually("the flush", || stats.commit_duration.get_sample_count() == durable + 1);
        assert_eq!(stats.deferred_commits.get(), 1);
        // A removal still unflushed when the spool closes is flushed then.
        spool.commit_later(vec![Op::Remove { id: ids[1] }]);
        eventually("the second deferred commit", || stats.deferred_commits.get() == 2);
        drop(spool);
        assert_eq!(stats.commit_duration.get_sample_count(), durable + 2);
        let spool = Spool::open(dir.path(), false, gauges()).unwrap();
        assert!(spool.load_all().unwrap().is_empty());
        // Removals queued one by one and the spool closed at once, whether
        // or not the writer took them before: on disk all the same.
        let insert = |n: u8| Op::Insert { metas: vec![meta("c")], body: vec![n] };
        let ids = spool.commit((0..50).map(insert).collect()).await.unwrap();
        for id in &ids {
            spool.commit_later(vec![Op::Remove { id: *id }]);
        }
        drop(spool);
        let spool = Spool::open(dir.path(), false, gauges()).unwrap();
        assert!(spool.load_all().unwrap().is_empty());
    }

    /// Ids are given when a commit is queued; an exposed body is readable
    /// before its commit is durable; a delivery removed (`commit_later`)
    /// while its insert still waits behind a commit in flight stays removed,
    /// across a restart; the first commit after a start is not exposed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_delivery_removed_before_its_insert_is_written_stays_removed() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), false, gauges()).unwrap();
        let faults = spool.faults.clone();
        let mut first = spool.begin(vec![Op::Insert { metas: vec![meta("a")], body: b"one".to_vec() }]).unwrap();
        assert!(!first.expose(), "ids of a start's first commit run ahead of every durable one");
        first.durable().await.unwrap();
        faults.stall(true);
        let mut held = spool.begin(vec![Op::Insert { metas: vec![meta("a")], body: b"held".to_vec() }]).unwrap();
        eventually("the writer to stall", || faults.waiting.load(Ordering::SeqCst));
        let mut queued =
            spool.begin(vec![Op::Insert { metas: vec![meta("a"), meta("b")], body: b"queued".to_vec() }]).unwrap();
        let ids = queued.ids().to_vec();
        assert_eq!(ids, [held.ids()[0] + 1, held.ids()[0] + 2], "ids in the order commits are queued");
        assert_eq!(spool.body(ids[0]).unwrap(), None, "neither written nor exposed");
        assert!(queued.expose());
        assert_eq!(spool.body(ids[0]).unwrap().as_deref(), Some(&b"queued"[..]));
        assert_eq!(spool.body(ids[0]).unwrap().as_deref(), Some(&b"queued"[..]), "kept for a retry");
        assert!(spool.get(ids[0]).unwrap().is_none(), "not durable yet");
        spool.commit_later(vec![Op::Remove { id: ids[0] }]);
        faults.stall(false);
        held.durable().await.unwrap();
        queued.durable().await.unwrap();
        {
            let recent = lock(&spool.recent);
            assert!(recent.uncommitted.is_empty());
            // The one never read is cached for its first attempt, not left
            // to a read of the file; the one read is not kept.
            assert!(recent.bodies.contains_key(&ids[1]) && !recent.bodies.contains_key(&ids[0]));
        }
        eventually("the removal", || spool.get(ids[0]).unwrap().is_none() && spool.get(ids[1]).unwrap().is_some());
        drop((first, held, queued));
        drop(spool);
        let spool = Spool::open(dir.path(), false, gauges()).unwrap();
        let left: Vec<u64> = spool.load_all().unwrap().iter().map(|(id, _)| *id).collect();
        assert_eq!(left.len(), 3);
        assert!(!left.contains(&ids[0]), "{left:?}");
        assert_eq!(spool.payload(ids[1]).unwrap().as_deref(), Some(&b"queued"[..]));
        let next = spool.commit(vec![Op::Insert { metas: vec![meta("c")], body: vec![] }]).await.unwrap()[0];
        assert!(next >= ids[1] + ID_MARGIN, "a start skips the ids that may have gone out: {next}");
    }

    #[test]
    fn the_body_cache_full_keeps_the_newest() {
        let quarter = Bytes::from(vec![b'x'; RECENT_BYTES / 4]);
        let mut recent = Recent::default();
        for id in 1..=6 {
            recent.put(id, &quarter);
        }
        assert_eq!(recent.bodies.keys().copied().collect::<Vec<_>>(), [3, 4, 5, 6]);
        assert_eq!(recent.bytes, RECENT_BYTES);
        recent.put(2, &quarter);
        assert!(!recent.bodies.contains_key(&2), "older than all it holds: not cached");
        assert_eq!(recent.take(4).as_deref(), Some(&quarter[..]));
        recent.put(7, &Bytes::from_static(b"small"));
        assert_eq!(recent.bodies.keys().copied().collect::<Vec<_>>(), [3, 5, 6, 7], "room made by a take");
        recent.put(8, &Bytes::from(vec![b'y'; RECENT_BYTES / 2]));
        assert_eq!(recent.bodies.keys().copied().collect::<Vec<_>>(), [6, 7, 8]);
        assert!(recent.bytes <= RECENT_BYTES);
        assert_eq!(recent.bytes, recent.bodies.values().map(Bytes::len).sum::<usize>());
    }

    #[tokio::test]
    async fn a_fresh_body_is_served_once_from_memory_then_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), false, gauges()).unwrap();
        let mut dead = meta("c");
        dead.dead = Some(DeadReason::TemplateError);
        let ids = spool
            .commit(vec![
                Op::Insert { metas: vec![meta("a"), meta("b")], body: b"shared".to_vec() },
                Op::Insert { metas: vec![dead], body: b"never attempted".to_vec() },
                Op::Insert { metas: vec![meta("d")], body: b"own".to_vec() },
            ])
            .await
            .unwrap();
        let cached = |id: u64| lock(&spool.recent).bodies.contains_key(&id);
        assert!(cached(ids[0]) && cached(ids[1]) && !cached(ids[2]), "dead letters are not attempted: not cached");
        assert_eq!(lock(&spool.recent).bodies.get(&ids[3]).map(|b| b.to_vec()), Some(b"own".to_vec()));
        assert_eq!(spool.body(ids[3]).unwrap().as_deref(), Some(&b"own"[..]));
        assert_eq!(lock(&spool.recent).bytes, 2 * b"shared".len());
        assert_eq!(spool.body(ids[0]).unwrap().as_deref(), Some(&b"shared"[..]));
        assert!(!cached(ids[0]), "taken by its first attempt");
        assert_eq!(spool.body(ids[0]).unwrap().as_deref(), Some(&b"shared"[..]), "then read from the file");
        spool.commit_later(vec![Op::Remove { id: ids[1] }]);
        assert!(!cached(ids[1]), "a removed delivery's body leaves the cache");
        assert_eq!(lock(&spool.recent).bytes, 0);
        assert_eq!(spool.body(ids[2]).unwrap().as_deref(), Some(&b"never attempted"[..]));
        // Bounded: a body that would pass the budget is not cached.
        let big = vec![b'x'; RECENT_BYTES + 1];
        let id = spool.commit(vec![Op::Insert { metas: vec![meta("a")], body: big.clone() }]).await.unwrap()[0];
        assert!(!cached(id));
        assert_eq!(spool.body(id).unwrap().unwrap().len(), big.len());
    }

    #[test]
    fn payloads_are_compressed_and_come_back_whole() {
        let body: Vec<u8> =
            br#"{"alerts":["#.iter().chain(b"{\"labels\":{\"a\":\"b\"}},".repeat(100).iter()).copied().collect();
        let stored = compress(&body);
        assert!(stored.len() * 4 < body.len(), "{} of {}", stored.len(), body.len());
        assert_eq!(decode_payload(&stored).unwrap(), body);
        // The crate's size-prepended format, byte for byte, whatever came before
        // on this thread's table (a large input, then small ones, empty).
        let noise: Vec<u8> = (0..70_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        for input in [&noise[..], &body[..], b"", b"x", &noise[..100], &body[..]] {
            let stored = compress(input);
            assert_eq!(stored[1..], lz4_flex::compress_prepend_size(input)[..]);
            assert_eq!(decode_payload(&stored).unwrap(), input);
        }
        assert!(decode_payload(&[9, 1, 2]).is_err());
        assert!(decode_payload(&[]).is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_commits_all_land_with_distinct_ids() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::open(dir.path(), false, gauges()).unwrap());
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let spool = spool.clone();
                tokio::spawn(async move {
                    spool.commit(vec![Op::Insert { metas: vec![meta("a")], body: vec![1] }]).await.unwrap()[0]
                })
            })
            .collect();
        let mut ids = Vec::new();
        for t in tasks {
            ids.push(t.await.unwrap());
        }
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 50);
        assert_eq!(spool.load_all().unwrap().len(), 50);
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        store::segments(dir).unwrap().into_iter().map(|(_, p)| p).collect()
    }

    fn names_starting(dir: &Path, prefix: &str) -> usize {
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with(prefix))
            .count()
    }

    #[test]
    fn a_spool_that_existed_is_not_silently_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let instance = Spool::open(dir.path(), false, gauges()).unwrap().instance().to_string();
        let [file] = &segment_files(dir.path())[..] else { panic!("one segment") };
        std::fs::write(file, b"").unwrap();
        let e = Spool::open(dir.path(), false, gauges()).err().unwrap().to_string();
        assert!(
            e.contains("is 0 bytes but the spool existed") && e.contains(&instance) && e.contains("--reset-spool"),
            "{e}"
        );
        std::fs::remove_file(file).unwrap();
        let e = Spool::open(dir.path(), false, gauges()).err().unwrap().to_string();
        assert!(e.contains("holds no spool segment (spool-*.log) but the spool existed"), "{e}");
        std::fs::write(file, b"not a spool segment at all, just text").unwrap();
        let e = Spool::open(dir.path(), false, gauges()).err().unwrap().to_string();
        assert!(e.contains("cannot be read: the frame at byte 0 is damaged"), "{e}");
        // With --reset-spool: a new spool, the broken file kept aside.
        let fresh = Spool::open(dir.path(), true, gauges()).unwrap();
        assert_ne!(fresh.instance(), instance);
        assert_eq!(names_starting(dir.path(), "spool-00000001.log.broken-"), 1);
    }

    #[test]
    fn spool_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("spool");
        let _spool = Spool::open(&dir, false, gauges()).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&segment_files(&dir)[0]), 0o600);
        assert_eq!(mode(&dir.join(MARKER)), 0o600);
    }

    #[tokio::test]
    async fn inserted_deliveries_read_back_identical_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        // Random sizes (compressible and not), names and counts; fixed seed.
        let mut rng = fastrand::Rng::with_seed(7);
        let cases: Vec<Vec<(Vec<u8>, String, u32)>> = (0..16)
            .map(|_| {
                (0..rng.usize(1..20))
                    .map(|_| {
                        let len = rng.usize(0..4096);
                        let body = if rng.bool() { vec![b'a'; len] } else { (0..len).map(|_| rng.u8(..)).collect() };
                        let name = (0..rng.usize(1..9)).map(|_| rng.lowercase()).collect();
                        (body, name, rng.u32(0..500))
                    })
                    .collect()
            })
            .collect();
        for case in cases {
            let mut expected = Vec::new();
            {
                let spool = Spool::open(dir.path(), false, gauges()).unwrap();
                let ops = case
                    .iter()
                    .map(|(body, receiver, alerts)| Op::Insert {
                        metas: vec![DeliveryMeta::new(receiver.clone(), "g".into(), *alerts, 7)],
                        body: body.clone(),
                    })
                    .collect();
                let ids = spool.commit(ops).await.unwrap();
                for (id, (body, receiver, alerts)) in ids.into_iter().zip(case) {
                    expected.push((id, DeliveryMeta::new(receiver, "g".into(), alerts, 7), body));
                }
            }
            let spool = Spool::open(dir.path(), false, gauges()).unwrap();
            for (id, meta, body) in &expected {
                assert_eq!(spool.get(*id).unwrap().as_ref(), Some(meta));
                assert_eq!(spool.payload(*id).unwrap().as_ref(), Some(body));
            }
            spool.commit(expected.iter().map(|(id, _, _)| Op::Remove { id: *id }).collect()).await.unwrap();
        }
    }

    /// The spool's deliveries as a model keeps them: state (without where
    /// the payload is) and body.
    fn contents(spool: &Spool) -> BTreeMap<u64, (DeliveryMeta, Vec<u8>)> {
        spool
            .load_all()
            .unwrap()
            .into_iter()
            .map(|(id, meta)| (id, (DeliveryMeta { payload: None, ..meta }, spool.payload(id).unwrap().unwrap())))
            .collect()
    }

    /// Random histories of every op against a model, with segments of 4 KiB
    /// (so that nearly every commit begins one and compaction runs all the
    /// time), reopened at random moments: what the spool reads back is what
    /// the model holds, ids only grow, and the log stays bounded.
    #[tokio::test]
    async fn random_histories_read_back_as_the_model_across_reopens_and_compaction() {
        const SEGMENT: u64 = 4096;
        // Direct writes over spares, and appends through the page cache.
        for (seed, direct) in (0..6).flat_map(|seed| [(seed, true), (seed, false)]) {
            let layout = Layout { segment_bytes: SEGMENT, direct };
            let dir = tempfile::tempdir().unwrap();
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut model: BTreeMap<u64, (DeliveryMeta, Vec<u8>)> = BTreeMap::new();
            let mut receivers = BTreeMap::new();
            let mut notified = BTreeMap::new();
            let mut spool = Spool::open_with(dir.path(), false, gauges(), layout).unwrap();
            let mut highest = 0;
            let mut gone = 0;
            for step in 0..300 {
                let mut ops = Vec::new();
                let mut later = Vec::new();
                let mut inserts = Vec::new();
                for _ in 0..rng.usize(1..5) {
                    let existing = model.keys().nth(rng.usize(..model.len().max(1))).copied();
                    match rng.u8(..10) {
                        0..=2 => {
                            let n = rng.usize(1..4);
                            let len = rng.usize(0..1500);
                            let body: Vec<u8> =
                                if rng.bool() { vec![b'a'; len] } else { (0..len).map(|_| rng.u8(..)).collect() };
                            let metas: Vec<_> = (0..n)
                                .map(|i| DeliveryMeta::new(format!("r{i}"), format!("g{step}"), 1, step))
                                .collect();
                            inserts.push((metas.clone(), body.clone()));
                            ops.push(Op::Insert { metas, body });
                        }
                        3 => {
                            let id = existing.unwrap_or(gone + 1_000_000);
                            let mut meta = DeliveryMeta::new("r0".into(), "u".into(), 2, step);
                            meta.attempts = rng.u32(..9);
                            if let Some((m, _)) = model.get_mut(&id) {
                                *m = meta.clone();
                            }
                            ops.push(Op::Update { id, meta });
                        }
                        4..=7 => {
                            let Some(id) = existing else { continue };
                            model.remove(&id);
                            gone += 1;
                            if rng.bool() {
                                ops.push(Op::Remove { id });
                            } else {
                                later.push(Op::Remove { id });
                            }
                        }
                        8 => {
                            let name = format!("recv{}", rng.u8(..4));
                            if rng.bool() {
                                let spec = vec![rng.u8(..)];
                                receivers.insert(name.clone(), spec.clone());
                                ops.push(Op::PutReceiver { name, spec });
                            } else {
                                receivers.remove(&name);
                                ops.push(Op::DeleteReceiver { name });
                            }
                        }
                        _ => {
                            let key = format!("n{}", rng.u8(..4));
                            if rng.bool() {
                                let entry = vec![rng.u8(..); 3];
                                notified.insert(key.clone(), entry.clone());
                                ops.push(Op::Notified { key, entry });
                            } else {
                                notified.remove(&key);
                                ops.push(Op::ForgetNotified { key });
                            }
                        }
                    }
                }
                let reopen = rng.u8(..10) == 0;
                // Removals nobody waits for only just before a reopen: the
                // spool's drop makes them durable, and until then a read may
                // or may not see them.
                if !reopen {
                    ops.append(&mut later);
                }
                let ids = spool.commit(ops).await.unwrap();
                let mut next = ids.into_iter();
                for (metas, body) in inserts {
                    for meta in metas {
                        let id = next.next().unwrap();
                        assert!(id > highest, "ids only grow");
                        highest = id;
                        model.insert(id, (meta, body.clone()));
                    }
                }
                if reopen {
                    spool.commit_later(later);
                    drop(spool);
                    spool = Spool::open_with(dir.path(), false, gauges(), layout).unwrap();
                }
                if reopen || step % 25 == 0 {
                    assert_eq!(contents(&spool), model, "seed {seed}, direct {direct}, step {step}");
                    assert_eq!(spool.receivers().unwrap(), receivers.clone().into_iter().collect::<Vec<_>>());
                    assert_eq!(spool.notified().unwrap(), notified.clone().into_iter().collect::<Vec<_>>());
                }
                // Compaction keeps the log within a few times what is live.
                let live = spool.state().live_bytes();
                let bytes: u64 = segment_files(dir.path()).iter().map(|p| std::fs::metadata(p).unwrap().len()).sum();
                assert!(
                    bytes <= 2 * live.max(SEGMENT) + 8192,
                    "seed {seed}, direct {direct}, step {step}: {bytes} bytes for {live} live"
                );
            }
            // Bounded: all removed, a few commits later the log is what is
            // live (nothing) and garbage of at most one segment.
            let all: Vec<_> = model.keys().map(|id| Op::Remove { id: *id }).collect();
            spool.commit(all).await.unwrap();
            for _ in 0..4 {
                let id =
                    spool.commit(vec![Op::Insert { metas: vec![meta("x")], body: vec![1; 2000] }]).await.unwrap()[0];
                spool.commit(vec![Op::Remove { id }]).await.unwrap();
            }
            let bytes: u64 = segment_files(dir.path()).iter().map(|p| std::fs::metadata(p).unwrap().len()).sum();
            assert!(
                bytes <= 3 * SEGMENT + 4096,
                "seed {seed}, direct {direct}: {bytes} bytes left in {:?}",
                segment_files(dir.path())
            );
            assert_eq!(stored_payloads(&spool), (0, vec![]));
        }
    }

    /// With direct writes, a segment nothing lives in any more is kept as the
    /// spare and written over as a later segment: its old frames stay in the
    /// file past the new ones and must never read as the new segment's.
    #[tokio::test]
    async fn a_dead_segment_is_written_over_as_a_later_one_and_its_old_frames_stay_dead() {
        const SEGMENT: u64 = 8192;
        let layout = Layout { segment_bytes: SEGMENT, direct: true };
        let dir = tempfile::tempdir().unwrap();
        let spare = dir.path().join("spool-spare.log");
        let mut rng = fastrand::Rng::with_seed(7);
        let mut kept = BTreeMap::new();
        let (mut recycled, mut stale) = (false, false);
        let mut spool = Spool::open_with(dir.path(), false, gauges(), layout).unwrap();
        for i in 0..120 {
            // Incompressible, so that segments fill.
            let body: Vec<u8> = (0..1500).map(|_| rng.u8(..)).collect();
            let id = spool.commit(vec![Op::Insert { metas: vec![meta("a")], body: body.clone() }]).await.unwrap()[0];
            if i % 5 == 0 {
                kept.insert(id, body);
            } else {
                spool.commit(vec![Op::Remove { id }]).await.unwrap();
            }
            // A dead segment as the spare: not the zeros a spare is made of.
            recycled |= std::fs::read(&spare).is_ok_and(|data| data.iter().any(|b| *b != 0));
            // A segment whose file goes on, past its own frames and the
            // zeros after them to the next block, with another's.
            for file in segment_files(dir.path()) {
                let data = std::fs::read(&file).unwrap();
                let past = store::frames_end(&file).div_ceil(direct::BLOCK) * direct::BLOCK;
                stale |= data.get(past..).is_some_and(|rest| rest.iter().any(|b| *b != 0));
            }
            if i % 40 == 39 {
                drop(spool);
                spool = Spool::open_with(dir.path(), false, gauges(), layout).unwrap();
            }
            let all = spool.load_all().unwrap();
            assert_eq!(all.iter().map(|(id, _)| *id).collect::<Vec<_>>(), kept.keys().copied().collect::<Vec<_>>());
            for (id, body) in &kept {
                assert_eq!(spool.payload(*id).unwrap().as_ref(), Some(body), "step {i}, delivery {id}");
            }
        }
        assert!(recycled, "no dead segment was kept as the spare (are direct writes possible in {:?}?)", dir.path());
        assert!(stale, "no segment was written over a dead one");
    }

    /// Spares written by several threads at once (a spool closed and opened
    /// again while its thread still writes one): each writes a file of its
    /// own, one becomes the spare, all zeros, and nothing is left behind.
    #[test]
    fn spares_written_at_once_leave_one_spare_of_zeros() {
        let dir = tempfile::tempdir().unwrap();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| store::make_spare(dir.path(), 1 << 20).unwrap());
            }
        });
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["spool-spare.log"]);
        assert_eq!(std::fs::read(dir.path().join("spool-spare.log")).unwrap(), vec![0; 1 << 20]);
    }

    #[tokio::test]
    async fn a_frame_cut_off_by_a_crash_is_dropped_and_what_came_before_stays() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let kept = {
            let spool = Spool::open(dir.path(), false, gauges()).unwrap();
            let kept = spool.commit(vec![Op::Insert { metas: vec![meta("a")], body: b"kept".to_vec() }]).await.unwrap();
            spool.commit(vec![Op::Insert { metas: vec![meta("b")], body: vec![7; 300] }]).await.unwrap();
            kept[0]
        };
        let [file] = &segment_files(dir.path())[..] else { panic!("one segment") };
        let whole = store::frames_end(file) as u64;
        // Every way the last frame can be cut: in its head, its records; the
        // file cut there, or zeros where the rest should be (blocks a crash left unwritten).
        for (cut, zeros) in [1, 5, 9, 20, 100].into_iter().flat_map(|cut| [(cut, false), (cut, true)]) {
            let copy = tempfile::tempdir().unwrap();
            for entry in std::fs::read_dir(dir.path()).unwrap() {
                let entry = entry.unwrap();
                std::fs::copy(entry.path(), copy.path().join(entry.file_name())).unwrap();
            }
            let torn = copy.path().join(file.file_name().unwrap());
            let torn_file = std::fs::OpenOptions::new().write(true).open(&torn).unwrap();
            if zeros {
                torn_file.write_all_at(&vec![0; cut as usize], whole - cut).unwrap();
            } else {
                torn_file.set_len(whole - cut).unwrap();
            }
            let spool = Spool::open(copy.path(), false, gauges()).unwrap();
            let all = spool.load_all().unwrap();
            assert_eq!(all.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [kept], "cut {cut}");
            assert_eq!(spool.payload(kept).unwrap().as_deref(), Some(&b"kept"[..]));
            // Appended after the cut, read back after another start.
            let id = spool.commit(vec![Op::Insert { metas: vec![meta("c")], body: b"new".to_vec() }]).await.unwrap()[0];
            drop(spool);
            let spool = Spool::open(copy.path(), false, gauges()).unwrap();
            assert_eq!(spool.payload(id).unwrap().as_deref(), Some(&b"new"[..]), "cut {cut}");
        }
        // A flipped byte in a closed segment (cut to its last frame when the
        // next began) is damage, not a torn write: the start fails, naming where.
        let mut data = std::fs::read(file).unwrap();
        data.truncate(whole as usize);
        let at = data.len() - 320;
        data[at] ^= 0x40;
        std::fs::write(file, &data).unwrap();
        std::fs::write(dir.path().join(store::segment_name(2)), b"").unwrap();
        let e = Spool::open(dir.path(), false, gauges()).err().unwrap().to_string();
        assert!(e.contains("spool-00000001.log cannot be read: the frame at byte") && e.contains("is damaged"), "{e}");
    }

    #[tokio::test]
    async fn a_redb_spool_of_the_earlier_version_is_imported_whole() {
        use redb::{Database, TableDefinition};
        let dir = tempfile::tempdir().unwrap();
        let legacy = dir.path().join("spool.redb");
        let shared = DeliveryMeta { payload: Some(5), ..meta("a") };
        {
            let db = Database::create(&legacy).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut m = txn.open_table(import::META).unwrap();
                m.insert("instance", b"0123456789abcdef".as_slice()).unwrap();
                m.insert("next_id", 9u64.to_le_bytes().as_slice()).unwrap();
                let mut d = txn.open_table(import::DELIVERIES).unwrap();
                // As the first round stored it: no payload field.
                d.insert(3, br#"{"receiver":"old","group_key":"g","alerts":1,"created_ms":1,"attempts":2,"first_attempt_ms":1,"next_due_ms":9,"last_error":"503","dead":null}"#.as_slice()).unwrap();
                // Shared by 5 and 7 (6 was delivered); 5 after an update lost the field.
                d.insert(5, serde_json::to_vec(&meta("a")).unwrap().as_slice()).unwrap();
                d.insert(7, serde_json::to_vec(&shared).unwrap().as_slice()).unwrap();
                let mut p = txn.open_table(import::PAYLOADS).unwrap();
                p.insert(3, compress(b"three").as_slice()).unwrap();
                p.insert(5, compress(b"shared").as_slice()).unwrap();
                let shared_counts: TableDefinition<u64, u32> = TableDefinition::new("shared_payloads");
                txn.open_table(shared_counts).unwrap().insert(5, 2).unwrap();
                txn.open_table(import::RECEIVERS).unwrap().insert("api", b"{}".as_slice()).unwrap();
                txn.open_table(import::NOTIFIED).unwrap().insert("k", b"[1]".as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }
        std::fs::write(dir.path().join(MARKER), "0123456789abcdef\n").unwrap();
        let spool = Spool::open(dir.path(), false, gauges()).unwrap();
        assert_eq!(spool.instance(), "0123456789abcdef");
        let all = spool.load_all().unwrap();
        assert_eq!(all.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [3, 5, 7]);
        assert_eq!((all[0].1.attempts, all[0].1.last_error.as_deref()), (2, Some("503")));
        assert_eq!(spool.payload(3).unwrap().as_deref(), Some(&b"three"[..]));
        assert_eq!(spool.payload(5).unwrap().as_deref(), Some(&b"shared"[..]));
        assert_eq!(spool.payload(7).unwrap().as_deref(), Some(&b"shared"[..]));
        assert_eq!(spool.receivers().unwrap(), [("api".to_string(), b"{}".to_vec())]);
        assert_eq!(spool.notified().unwrap(), [("k".to_string(), b"[1]".to_vec())]);
        assert!(!legacy.exists());
        assert_eq!(names_starting(dir.path(), "spool.redb.imported-"), 1);
        let id = spool.commit(vec![Op::Insert { metas: vec![meta("b")], body: vec![] }]).await.unwrap()[0];
        assert_eq!(id, 9 + ID_MARGIN, "ids go on past the imported next id, and the margin a start skips");
        // The shared payload goes with the last of its deliveries.
        spool.commit(vec![Op::Remove { id: 5 }]).await.unwrap();
        assert_eq!(spool.payload(7).unwrap().as_deref(), Some(&b"shared"[..]));
        spool.commit(vec![Op::Remove { id: 7 }, Op::Remove { id: 3 }]).await.unwrap();
        assert_eq!(stored_payloads(&spool).0, 1, "only the new delivery's");
        drop(spool);
        let spool = Spool::open(dir.path(), false, gauges()).unwrap();
        assert_eq!(spool.load_all().unwrap().iter().map(|(id, _)| *id).collect::<Vec<_>>(), [id]);
    }

    #[test]
    fn one_process_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), false, gauges()).unwrap();
        let e = Spool::open(dir.path(), false, gauges()).err().unwrap().to_string();
        assert!(e.contains("in use by another process"), "{e}");
        drop(spool);
        Spool::open(dir.path(), false, gauges()).unwrap();
    }

    /// Damaged segments (bytes flipped, cut, inserted, duplicated) are
    /// refused with an error or read up to a torn tail; never a panic, and
    /// whatever is read back reads whole.
    #[tokio::test]
    async fn damaged_segments_are_refused_or_read_never_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        {
            let spool = Spool::open(dir.path(), false, gauges()).unwrap();
            for i in 0..6u8 {
                let ids = spool
                    .commit(vec![
                        Op::Insert { metas: vec![meta("a"), meta("b")], body: vec![i; 40] },
                        Op::PutReceiver { name: format!("r{i}"), spec: vec![i] },
                        Op::Notified { key: format!("k{i}"), entry: vec![i] },
                    ])
                    .await
                    .unwrap();
                spool
                    .commit(vec![Op::Update { id: ids[0], meta: meta("u") }, Op::Remove { id: ids[1] }])
                    .await
                    .unwrap();
            }
        }
        let [file] = &segment_files(dir.path())[..] else { panic!("one segment") };
        let name = file.file_name().unwrap().to_owned();
        let mut good = std::fs::read(file).unwrap();
        good.truncate(store::frames_end(file));
        let mut rng = fastrand::Rng::with_seed(11);
        let (mut opened, mut refused) = (0, 0);
        for _ in 0..300 {
            let mut bytes = good.clone();
            for _ in 0..rng.usize(1..4) {
                let at = rng.usize(..bytes.len());
                match rng.u8(..4) {
                    0 => bytes[at] ^= 1 << rng.u8(..8),
                    1 => bytes.truncate(at),
                    2 => bytes.insert(at, rng.u8(..)),
                    _ => {
                        let end = (at + rng.usize(1..64)).min(bytes.len());
                        let copy = bytes[at..end].to_vec();
                        bytes.splice(at..at, copy);
                    }
                }
                if bytes.is_empty() {
                    bytes.push(0);
                }
            }
            let copy = tempfile::tempdir().unwrap();
            std::fs::write(copy.path().join(&name), &bytes).unwrap();
            match Spool::open(copy.path(), false, gauges()) {
                Ok(spool) => {
                    opened += 1;
                    for (id, _) in spool.load_all().unwrap() {
                        let _ = spool.payload(id);
                    }
                }
                Err(e) => {
                    refused += 1;
                    assert!(e.to_string().contains("cannot be read"), "{e}");
                }
            }
        }
        assert!(opened > 0 && refused > 0, "{opened} opened, {refused} refused");
    }

    /// Frames written after the last fsync may reach the disk in any order
    /// when the power goes: a hole among them ends the log. A frame that was
    /// fsynced and then does not check out, with frames after it, is damage.
    #[tokio::test]
    async fn a_hole_after_the_last_fsync_ends_the_log_and_one_before_it_is_damage() {
        let dir = tempfile::tempdir().unwrap();
        let stats = gauges();
        let (ids, unsynced) = {
            let spool = Spool::open(dir.path(), false, stats.clone()).unwrap();
            let ids = spool
                .commit(vec![Op::Insert { metas: vec![meta("a"), meta("b"), meta("c")], body: b"abc".to_vec() }])
                .await
                .unwrap();
            let [file] = &segment_files(dir.path())[..] else { panic!("one segment") };
            let synced = store::frames_end(file) as u64;
            // Two frames nobody waits for, each its own.
            spool.commit_later(vec![Op::Remove { id: ids[0] }]);
            eventually("the first deferred frame", || stats.deferred_commits.get() == 1);
            spool.commit_later(vec![Op::Remove { id: ids[1] }]);
            eventually("the second deferred frame", || stats.deferred_commits.get() == 2);
            (ids, synced)
        };
        let [file] = &segment_files(dir.path())[..] else { panic!("one segment") };
        let good = std::fs::read(file).unwrap();
        // The first unsynced frame lost, the second on disk: both dropped.
        let mut holed = good.clone();
        holed[unsynced as usize + 30] ^= 0xff;
        std::fs::write(file, &holed).unwrap();
        {
            let spool = Spool::open(dir.path(), false, gauges()).unwrap();
            assert_eq!(
                spool.load_all().unwrap().iter().map(|(id, _)| *id).collect::<Vec<_>>(),
                ids,
                "both removals gone"
            );
        }
        // The insert's frame, fsynced before the others were written: damage.
        let mut damaged = good.clone();
        damaged[unsynced as usize - 10] ^= 0xff;
        std::fs::write(file, &damaged).unwrap();
        let e = Spool::open(dir.path(), false, gauges()).err().unwrap().to_string();
        assert!(e.contains("is damaged"), "{e}");
    }
}
