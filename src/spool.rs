//! The durable spool: deliveries and their payloads in one redb file.
//!
//! Every change goes through one writer thread that gathers whatever requests
//! are waiting into a single transaction and one fsync (group commit). Readers
//! use their own snapshots and never wait for the writer.
//!
//! Two rules keep a commit near the cost of one fsync of the disk:
//! - A payload routed to several receivers with the same bytes is stored once
//!   (`Op::Insert` with several deliveries), with a count of the deliveries
//!   that share it; the last one removed takes it along.
//! - Changes nobody waits for (`commit_later`: removals of delivered
//!   deliveries) wait up to `HOLD` for a commit that is fsynced anyway and go
//!   with it; failing that they are committed without an fsync of their own.
//!   Either way they become durable with the next fsynced commit, or after
//!   `FLUSH_INTERVAL` at the latest. A crash loses at most that much of them:
//!   those deliveries are sent again, under the same `Idempotency-Key`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prometheus::{Histogram, IntCounter, IntGauge};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::reasons::DeadReason;
use crate::sync::lock;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const DELIVERIES: TableDefinition<u64, &[u8]> = TableDefinition::new("deliveries");
const PAYLOADS: TableDefinition<u64, &[u8]> = TableDefinition::new("payloads");
/// Receivers created through the admin API: name → JSON spec.
const RECEIVERS: TableDefinition<&str, &[u8]> = TableDefinition::new("receivers");
/// What `send_resolved: false` receivers were last sent, per group (notify_log).
const NOTIFIED: TableDefinition<&str, &[u8]> = TableDefinition::new("notified");
/// Payloads shared by more than one delivery: payload key → deliveries left.
const SHARED: TableDefinition<u64, u32> = TableDefinition::new("shared_payloads");

const NEXT_ID: &str = "next_id";
const INSTANCE: &str = "instance";
/// redb's page cache. Its default (1 GiB) would hold the whole spool in memory;
/// payloads are read once per attempt, so the OS page cache serves them as well.
const CACHE_BYTES: usize = 16 * 1024 * 1024;
/// Requests folded into one transaction at most.
const MAX_BATCH: usize = 1024;
/// A commit that takes longer is logged.
const SLOW_COMMIT: Duration = Duration::from_millis(100);
/// How long changes nobody waits for wait for a commit that is fsynced
/// anyway, before they are committed without one.
const HOLD: Duration = Duration::from_millis(5);
/// Changes committed without an fsync are made durable within this time.
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

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

/// The part of a stored delivery the writer needs to find its payload.
#[derive(Deserialize)]
struct PayloadRef {
    #[serde(default)]
    payload: Option<u64>,
}

/// The payload key of a stored delivery.
fn payload_key(id: u64, stored: &[u8]) -> u64 {
    serde_json::from_slice::<PayloadRef>(stored).ok().and_then(|r| r.payload).unwrap_or(id)
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
        "{path} is missing but the spool existed (instance {instance}, recorded in {marker}); restore it, \
         or start with --reset-spool to begin with an empty queue"
    )]
    Vanished { path: String, marker: String, instance: String },
    #[error(
        "{path} is 0 bytes but the spool existed (instance {instance}); restore it, or start with --reset-spool \
         to begin with an empty queue"
    )]
    Emptied { path: String, instance: String },
    #[error(
        "{path} cannot be opened: {message}; restore it from a backup, or start with --reset-spool (the broken \
         file is then kept beside it)"
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
    /// None for `commit_later`: nobody waits, and a failed commit is carried
    /// into the next one instead of being lost.
    reply: Option<oneshot::Sender<Answer>>,
}

/// The writer's answer to a waiting batch, with the batch's ops handed back:
/// they were allocated on the waiter's thread and are freed there. (glibc's
/// free of another thread's memory takes that thread's arena lock; the
/// writer freeing every request's body contended with the HTTP workers.)
struct Answer {
    ids: Result<Vec<u64>, SpoolError>,
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
        *self.problem.lock().unwrap_or_else(|p| p.into_inner()) = problem;
    }

    fn problem(&self) -> Option<String> {
        self.problem.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The database, reopened in place by the writer after an I/O error (redb
/// refuses every write after one until it is closed and opened again).
type Db = Arc<RwLock<Option<Database>>>;

pub struct Spool {
    db: Db,
    /// Bodies of deliveries just made durable, until their first attempt
    /// reads them: most are sent within milliseconds, and a read from the
    /// cache costs no transaction and no decompression. Bounded in bytes.
    recent: Mutex<Recent>,
    /// Taken on drop, so that the writer thread ends and closes the file.
    writer: Option<std::sync::mpsc::Sender<Batch>>,
    thread: Option<std::thread::JoinHandle<()>>,
    instance: String,
    health: Arc<Health>,
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
}

impl Recent {
    fn take(&mut self, id: u64) -> Option<Bytes> {
        let body = self.bodies.remove(&id)?;
        self.bytes -= body.len();
        Some(body)
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

/// A spool file's name in its directory.
const FILE: &str = "spool.redb";
/// Beside it: the instance id of the spool that lives there, so that a spool
/// that vanished or was emptied is told apart from one never made.
const MARKER: &str = "spool.id";
/// How often a failed spool tries to reopen, with nothing to write.
const RECOVERY_INTERVAL: Duration = Duration::from_secs(1);

impl Spool {
    /// Opens (or creates) `dir/spool.redb` and starts its writer thread. A spool
    /// that existed (its `spool.id` is there) but is now missing, empty or
    /// unreadable is an error unless `reset`.
    pub fn open(dir: &Path, reset: bool, gauges: SpoolGauges) -> Result<Spool, OpenError> {
        let path = dir.join(FILE);
        let shown = path.display().to_string();
        let dir_error = |message: String| OpenError::Directory { path: dir.display().to_string(), message };
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(|e| dir_error(e.to_string()))?;
            set_mode(dir, 0o700).map_err(|e| dir_error(e.to_string()))?;
        }
        let marker = dir.join(MARKER);
        let recorded = std::fs::read_to_string(&marker).ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty());
        if let Some(instance) = recorded {
            let lost = match std::fs::metadata(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Some(OpenError::Vanished { path: shown.clone(), marker: marker.display().to_string(), instance })
                }
                Ok(m) if m.len() == 0 => Some(OpenError::Emptied { path: shown.clone(), instance }),
                _ => None,
            };
            match lost {
                Some(e) if !reset => return Err(e),
                Some(e) => {
                    log::warn!("--reset-spool: {e}; starting with an empty queue");
                    let _ = std::fs::remove_file(&path);
                }
                None => {}
            }
        }
        let db = match open_db(&path) {
            Ok(db) => db,
            Err(message) if reset && path.exists() => {
                let aside = dir.join(format!("{FILE}.broken-{}", now_secs()));
                log::warn!("--reset-spool: {shown} cannot be opened ({message}); kept as {}", aside.display());
                std::fs::rename(&path, &aside).map_err(|e| dir_error(format!("cannot move {shown} aside: {e}")))?;
                open_db(&path).map_err(|message| OpenError::Unreadable { path: shown.clone(), message })?
            }
            Err(message) => return Err(OpenError::Unreadable { path: shown, message }),
        };
        let _ = set_mode(&path, 0o600);
        let instance = instance_of(&db).map_err(|message| OpenError::Unreadable { path: shown.clone(), message })?;
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
        let db: Db = Arc::new(RwLock::new(Some(db)));
        let (tx, rx) = std::sync::mpsc::channel();
        let writer = Writer { db: db.clone(), path, health: health.clone(), stats: gauges };
        let thread = std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || writer.run(&rx))
            .map_err(|e| dir_error(format!("cannot start the spool writer thread: {e}")))?;
        Ok(Spool { db, recent: Mutex::default(), writer: Some(tx), thread: Some(thread), instance, health })
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
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let (ops, fresh) = self.prepare(ops);
        let (reply, answer) = oneshot::channel();
        let writer = self.writer.as_ref().ok_or(SpoolError::Closed)?;
        writer.send(Batch { ops, reply: Some(reply) }).map_err(|_| SpoolError::Closed)?;
        #[cfg(test)]
        let _held = HoldPausedClock::new();
        let ids = answer.await.map_err(|_| SpoolError::Closed)?.ids?;
        let mut recent = lock(&self.recent);
        let mut next = ids.iter();
        for (attempted, body) in fresh {
            // `attempted` first: zip stops on it without taking the next id.
            for (attempted, id) in attempted.into_iter().zip(next.by_ref()) {
                if attempted {
                    recent.put(*id, &body);
                }
            }
        }
        Ok(ids)
    }

    /// Readies ops for the writer, off its thread: drops the cached bodies
    /// of deliveries being removed, compresses payloads. Returns the ops and,
    /// per insert, the body as given and, per delivery sharing it, whether it
    /// will be attempted (dead letters are not): for the cache once the ids
    /// are known.
    fn prepare(&self, ops: Vec<Op>) -> (Vec<Op>, Vec<(Vec<bool>, Bytes)>) {
        let mut fresh = Vec::new();
        let mut recent = None;
        let ops = ops
            .into_iter()
            .map(|op| match op {
                Op::Insert { metas, body } => {
                    let stored = compress(&body);
                    fresh.push((metas.iter().map(|m| m.dead.is_none()).collect(), Bytes::from(body)));
                    Op::Insert { metas, body: stored }
                }
                Op::Remove { id } => {
                    recent.get_or_insert_with(|| lock(&self.recent)).take(id);
                    Op::Remove { id }
                }
                other => other,
            })
            .collect();
        (ops, fresh)
    }

    /// Queues the ops for the next commit without waiting for it. If that
    /// commit fails they go with the next one that succeeds.
    pub fn commit_later(&self, ops: Vec<Op>) {
        if ops.is_empty() {
            return;
        }
        let (ops, _) = self.prepare(ops);
        if self.writer.as_ref().is_none_or(|w| w.send(Batch { ops, reply: None }).is_err()) {
            log::error!("spool writer has stopped; a removal is kept in memory only until restart");
        }
    }

    /// Runs `read` on a read transaction of the database in force.
    fn read<T>(&self, read: impl FnOnce(&redb::ReadTransaction) -> Result<T, String>) -> Result<T, SpoolError> {
        let guard = self.db.read().unwrap_or_else(|p| p.into_inner());
        let db = guard.as_ref().ok_or_else(|| SpoolError::Unavailable(self.problem().unwrap_or_default()))?;
        let txn = db.begin_read().map_err(|e| SpoolError::Unavailable(e.to_string()))?;
        read(&txn).map_err(SpoolError::Unavailable)
    }

    /// Every delivery's state, oldest first.
    pub fn load_all(&self) -> Result<Vec<(u64, DeliveryMeta)>, SpoolError> {
        self.read(|txn| {
            let table = txn.open_table(DELIVERIES).map_err(|e| e.to_string())?;
            let mut out = Vec::new();
            for row in table.iter().map_err(|e| e.to_string())? {
                let (id, value) = row.map_err(|e| e.to_string())?;
                let id = id.value();
                match serde_json::from_slice(value.value()) {
                    Ok(meta) => out.push((id, meta)),
                    Err(e) => log::error!("spool: delivery {id} is unreadable and skipped: {e}"),
                }
            }
            Ok(out)
        })
    }

    /// One delivery's state.
    pub fn get(&self, id: u64) -> Result<Option<DeliveryMeta>, SpoolError> {
        self.read(|txn| {
            let table = txn.open_table(DELIVERIES).map_err(|e| e.to_string())?;
            let value = table.get(id).map_err(|e| e.to_string())?;
            match value {
                Some(v) => serde_json::from_slice(v.value()).map(Some).map_err(|e| format!("delivery {id}: {e}")),
                None => Ok(None),
            }
        })
    }

    /// Deliveries newest first, those with ids below `before` that `keep`
    /// accepts, at most `limit`.
    pub fn list(
        &self,
        before: Option<u64>,
        limit: usize,
        keep: impl Fn(&DeliveryMeta) -> bool,
    ) -> Result<Vec<(u64, DeliveryMeta)>, SpoolError> {
        self.read(|txn| {
            let table = txn.open_table(DELIVERIES).map_err(|e| e.to_string())?;
            let mut out = Vec::new();
            for row in table.range(..before.unwrap_or(u64::MAX)).map_err(|e| e.to_string())?.rev() {
                let (id, value) = row.map_err(|e| e.to_string())?;
                let Ok(meta) = serde_json::from_slice::<DeliveryMeta>(value.value()) else {
                    continue;
                };
                if keep(&meta) {
                    out.push((id.value(), meta));
                    if out.len() >= limit {
                        break;
                    }
                }
            }
            Ok(out)
        })
    }

    /// The API-managed receivers' specs (JSON), by name.
    pub fn receivers(&self) -> Result<Vec<(String, Vec<u8>)>, SpoolError> {
        self.read(|txn| {
            let table = txn.open_table(RECEIVERS).map_err(|e| e.to_string())?;
            let mut out = Vec::new();
            for row in table.iter().map_err(|e| e.to_string())? {
                let (name, spec) = row.map_err(|e| e.to_string())?;
                out.push((name.value().to_string(), spec.value().to_vec()));
            }
            Ok(out)
        })
    }

    /// The notification log's entries (JSON), by key.
    pub fn notified(&self) -> Result<Vec<(String, Vec<u8>)>, SpoolError> {
        self.read(|txn| {
            let table = txn.open_table(NOTIFIED).map_err(|e| e.to_string())?;
            let mut out = Vec::new();
            for row in table.iter().map_err(|e| e.to_string())? {
                let (key, entry) = row.map_err(|e| e.to_string())?;
                out.push((key.value().to_string(), entry.value().to_vec()));
            }
            Ok(out)
        })
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
        self.read(|txn| {
            let deliveries = txn.open_table(DELIVERIES).map_err(|e| e.to_string())?;
            let Some(key) = deliveries.get(id).map_err(|e| e.to_string())?.map(|v| payload_key(id, v.value())) else {
                return Ok(None);
            };
            let table = txn.open_table(PAYLOADS).map_err(|e| e.to_string())?;
            let Some(value) = table.get(key).map_err(|e| e.to_string())? else { return Ok(None) };
            decode_payload(value.value()).map(Some).map_err(|e| format!("payload of delivery {id}: {e}"))
        })
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

fn open_db(path: &Path) -> Result<Database, String> {
    let db = Database::builder().set_cache_size(CACHE_BYTES).create(path).map_err(|e| e.to_string())?;
    let txn = db.begin_write().map_err(|e| e.to_string())?;
    {
        txn.open_table(META).map_err(|e| e.to_string())?;
        txn.open_table(DELIVERIES).map_err(|e| e.to_string())?;
        txn.open_table(PAYLOADS).map_err(|e| e.to_string())?;
        txn.open_table(SHARED).map_err(|e| e.to_string())?;
        txn.open_table(RECEIVERS).map_err(|e| e.to_string())?;
        txn.open_table(NOTIFIED).map_err(|e| e.to_string())?;
    }
    txn.commit().map_err(|e| e.to_string())?;
    Ok(db)
}

/// The spool's instance id, made on first open.
fn instance_of(db: &Database) -> Result<String, String> {
    let txn = db.begin_write().map_err(|e| e.to_string())?;
    let instance = {
        let mut meta = txn.open_table(META).map_err(|e| e.to_string())?;
        let existing =
            meta.get(INSTANCE).map_err(|e| e.to_string())?.map(|v| String::from_utf8_lossy(v.value()).into_owned());
        match existing {
            Some(id) => id,
            None => {
                let id = format!("{:016x}", fastrand::u64(..));
                meta.insert(INSTANCE, id.as_bytes()).map_err(|e| e.to_string())?;
                id
            }
        }
    };
    txn.commit().map_err(|e| e.to_string())?;
    Ok(instance)
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
    db: Db,
    path: PathBuf,
    health: Arc<Health>,
    stats: SpoolGauges,
}

impl Writer {
    fn run(&self, rx: &std::sync::mpsc::Receiver<Batch>) {
        use std::sync::mpsc::RecvTimeoutError;
        // Ops of `commit_later` batches whose commit failed: they go first into
        // the next commit.
        let mut carried: Vec<Batch> = Vec::new();
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
                    self.flush(&mut unflushed);
                    continue;
                }
                Err(RecvTimeoutError::Timeout) => {
                    last_try = Instant::now();
                    self.recover();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.flush(&mut unflushed);
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
                self.fail(batches, &mut carried, &problem);
                continue;
            }
            let mut all: Vec<Batch> = std::mem::take(&mut carried);
            let first_new = all.len();
            all.append(&mut batches);
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
                    self.path.display(),
                    took.as_millis(),
                    all.iter().map(|b| b.ops.len()).sum::<usize>(),
                    if durable { "fsynced" } else { "not fsynced" }
                );
            }
            match result {
                Ok(ids) => {
                    if durable {
                        unflushed = None;
                    } else {
                        self.stats.deferred_commits.inc();
                        unflushed.get_or_insert(started);
                    }
                    for (batch, ids) in all.into_iter().zip(ids).skip(first_new) {
                        if let Some(reply) = batch.reply {
                            let _ = reply.send(Answer { ids: Ok(ids), _ops: batch.ops });
                        }
                    }
                }
                Err(message) => {
                    log::error!(
                        "spool {}: commit of {} requests failed: {message}; answering 503 until the spool \
                         recovers (it retries by itself)",
                        self.path.display(),
                        all.len()
                    );
                    self.health.set(Some(message.clone()));
                    last_try = Instant::now();
                    // What was committed without an fsync is lost with the
                    // handle if the reopen finds it gone: removals only, whose
                    // deliveries are then sent again.
                    unflushed = None;
                    self.fail(all, &mut carried, &message);
                }
            }
        }
    }

    /// Makes the changes committed without an fsync durable.
    fn flush(&self, unflushed: &mut Option<Instant>) {
        if unflushed.is_none() {
            return;
        }
        let started = Instant::now();
        match self.apply(&[], true) {
            Ok(_) => {
                self.stats.commit_duration.observe(started.elapsed().as_secs_f64());
                self.stats.commit_requests.observe(0.0);
                *unflushed = None;
            }
            Err(message) => {
                log::error!("spool {}: flush failed: {message}; retrying", self.path.display());
                self.health.set(Some(message));
                *unflushed = None;
            }
        }
    }

    /// Answers every waiting batch with the error; keeps the others' ops.
    fn fail(&self, batches: Vec<Batch>, carried: &mut Vec<Batch>, problem: &str) {
        for batch in batches {
            match batch.reply {
                Some(reply) => {
                    let ids = Err(SpoolError::Unavailable(problem.to_string()));
                    let _ = reply.send(Answer { ids, _ops: batch.ops });
                }
                None => carried.push(batch),
            }
        }
    }

    /// Closes and reopens the database; healthy again if that works.
    fn recover(&self) {
        let mut guard = self.db.write().unwrap_or_else(|p| p.into_inner());
        // The old handle must be gone before the file can be opened again.
        *guard = None;
        match open_db(&self.path) {
            Ok(db) => {
                *guard = Some(db);
                self.health.set(None);
                log::info!("spool {}: reopened after a storage error; accepting writes again", self.path.display());
            }
            Err(e) => {
                log::debug!("spool {}: still unavailable: {e}", self.path.display());
                self.health.set(Some(e));
            }
        }
    }

    /// One write transaction for all batches; the inserted ids per batch.
    fn apply(&self, batches: &[Batch], durable: bool) -> Result<Vec<Vec<u64>>, String> {
        let guard = self.db.read().unwrap_or_else(|p| p.into_inner());
        let db = guard.as_ref().ok_or("the spool is closed")?;
        apply(db, batches, durable)
    }
}

/// One write transaction for all batches; the inserted ids per batch. Not
/// `durable`: committed without an fsync.
fn apply(db: &Database, batches: &[Batch], durable: bool) -> Result<Vec<Vec<u64>>, String> {
    let s = |e: &dyn std::fmt::Display| e.to_string();
    let mut txn = db.begin_write().map_err(|e| s(&e))?;
    if !durable {
        txn.set_durability(Durability::None).map_err(|e| s(&e))?;
    }
    let mut all_ids = Vec::with_capacity(batches.len());
    if !batches.is_empty() {
        let mut meta = txn.open_table(META).map_err(|e| s(&e))?;
        let mut deliveries = txn.open_table(DELIVERIES).map_err(|e| s(&e))?;
        let mut payloads = txn.open_table(PAYLOADS).map_err(|e| s(&e))?;
        let mut shared = txn.open_table(SHARED).map_err(|e| s(&e))?;
        let mut receivers = txn.open_table(RECEIVERS).map_err(|e| s(&e))?;
        let mut notified = txn.open_table(NOTIFIED).map_err(|e| s(&e))?;
        let first_id = match meta.get(NEXT_ID).map_err(|e| s(&e))? {
            Some(v) => u64::from_le_bytes(v.value().try_into().map_err(|_| "corrupt next_id".to_string())?),
            None => 1,
        };
        let mut next_id = first_id;
        for batch in batches {
            let mut ids = Vec::new();
            for op in &batch.ops {
                match op {
                    Op::Insert { metas, body } => {
                        let key = next_id;
                        let sharing = (metas.len() > 1).then_some(key);
                        for meta in metas {
                            let id = next_id;
                            next_id += 1;
                            let encoded = if sharing.is_some() {
                                serde_json::to_vec(&DeliveryMeta { payload: sharing, ..meta.clone() })
                            } else {
                                serde_json::to_vec(meta)
                            };
                            deliveries.insert(id, encoded.map_err(|e| s(&e))?.as_slice()).map_err(|e| s(&e))?;
                            ids.push(id);
                        }
                        if !metas.is_empty() {
                            payloads.insert(key, body.as_slice()).map_err(|e| s(&e))?;
                        }
                        if let Some(key) = sharing {
                            let count = u32::try_from(metas.len()).unwrap_or(u32::MAX);
                            shared.insert(key, count).map_err(|e| s(&e))?;
                        }
                    }
                    Op::Update { id, meta } => {
                        let stored = deliveries.get(*id).map_err(|e| s(&e))?.map(|v| payload_key(*id, v.value()));
                        if let Some(key) = stored {
                            let payload = (key != *id).then_some(key);
                            let encoded = serde_json::to_vec(&DeliveryMeta { payload, ..meta.clone() });
                            deliveries.insert(*id, encoded.map_err(|e| s(&e))?.as_slice()).map_err(|e| s(&e))?;
                        }
                    }
                    Op::Remove { id } => {
                        let stored = deliveries.remove(*id).map_err(|e| s(&e))?.map(|v| payload_key(*id, v.value()));
                        let Some(key) = stored else { continue };
                        let left = shared.get(key).map_err(|e| s(&e))?.map(|v| v.value());
                        match left {
                            Some(left) if left > 1 => {
                                shared.insert(key, left - 1).map_err(|e| s(&e))?;
                            }
                            Some(_) => {
                                shared.remove(key).map_err(|e| s(&e))?;
                                payloads.remove(key).map_err(|e| s(&e))?;
                            }
                            None => {
                                payloads.remove(key).map_err(|e| s(&e))?;
                            }
                        }
                    }
                    Op::PutReceiver { name, spec } => {
                        receivers.insert(name.as_str(), spec.as_slice()).map_err(|e| s(&e))?;
                    }
                    Op::DeleteReceiver { name } => {
                        receivers.remove(name.as_str()).map_err(|e| s(&e))?;
                    }
                    Op::Notified { key, entry } => {
                        notified.insert(key.as_str(), entry.as_slice()).map_err(|e| s(&e))?;
                    }
                    Op::ForgetNotified { key } => {
                        notified.remove(key.as_str()).map_err(|e| s(&e))?;
                    }
                }
            }
            all_ids.push(ids);
        }
        if next_id != first_id {
            meta.insert(NEXT_ID, next_id.to_le_bytes().as_slice()).map_err(|e| s(&e))?;
        }
    }
    txn.commit().map_err(|e| s(&e))?;
    Ok(all_ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::ReadableTableMetadata;

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

    /// Rows in the payload table and the sharing counts.
    fn stored_payloads(spool: &Spool) -> (usize, Vec<(u64, u32)>) {
        spool
            .read(|txn| {
                let payloads = txn.open_table(PAYLOADS).map_err(|e| e.to_string())?.len().map_err(|e| e.to_string())?;
                let shared = txn.open_table(SHARED).map_err(|e| e.to_string())?;
                let counts = shared
                    .iter()
                    .map_err(|e| e.to_string())?
                    .map(|row| row.map(|(k, v)| (k.value(), v.value())).map_err(|e| e.to_string()))
                    .collect::<Result<_, _>>()?;
                Ok((usize::try_from(payloads).unwrap(), counts))
            })
            .unwrap()
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

    #[tokio::test]
    async fn a_delivery_stored_before_payloads_were_shared_still_finds_its_payload() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), false, gauges()).unwrap();
        let id = spool.commit(vec![Op::Insert { metas: vec![meta("a")], body: b"old".to_vec() }]).await.unwrap()[0];
        // As the first round stored it: JSON without a payload field.
        let stored = spool.read(|txn| {
            let table = txn.open_table(DELIVERIES).map_err(|e| e.to_string())?;
            let value = table.get(id).map_err(|e| e.to_string())?.unwrap().value().to_vec();
            Ok(String::from_utf8(value).unwrap())
        });
        assert!(!stored.unwrap().contains("payload"));
        assert_eq!(spool.payload(id).unwrap().as_deref(), Some(&b"old"[..]));
        spool.commit(vec![Op::Remove { id }]).await.unwrap();
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

    #[test]
    fn a_spool_that_existed_is_not_silently_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let instance = Spool::open(dir.path(), false, gauges()).unwrap().instance().to_string();
        let file = dir.path().join(FILE);
        std::fs::write(&file, b"").unwrap();
        let e = Spool::open(dir.path(), false, gauges()).err().unwrap().to_string();
        assert!(
            e.contains("is 0 bytes but the spool existed") && e.contains(&instance) && e.contains("--reset-spool"),
            "{e}"
        );
        std::fs::remove_file(&file).unwrap();
        let e = Spool::open(dir.path(), false, gauges()).err().unwrap().to_string();
        assert!(e.contains("is missing but the spool existed"), "{e}");
        std::fs::write(&file, b"not a redb file at all, just text").unwrap();
        let e = Spool::open(dir.path(), false, gauges()).err().unwrap().to_string();
        assert!(e.contains("cannot be opened"), "{e}");
        // With --reset-spool: a new spool, the broken file kept aside.
        let fresh = Spool::open(dir.path(), true, gauges()).unwrap();
        assert_ne!(fresh.instance(), instance);
        let aside = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("spool.redb.broken-"));
        assert_eq!(aside.count(), 1);
    }

    #[test]
    fn spool_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("spool");
        let _spool = Spool::open(&dir, false, gauges()).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(FILE)), 0o600);
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
}
