//! The durable spool: deliveries and their payloads in one redb file.
//!
//! Every change goes through one writer thread that gathers whatever requests
//! are waiting into a single transaction and one fsync (group commit). Readers
//! use their own snapshots and never wait for the writer.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use prometheus::Histogram;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::delivery::retry::DeadReason;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const DELIVERIES: TableDefinition<u64, &[u8]> = TableDefinition::new("deliveries");
const PAYLOADS: TableDefinition<u64, &[u8]> = TableDefinition::new("payloads");
/// Receivers created through the admin API: name → JSON spec.
const RECEIVERS: TableDefinition<&str, &[u8]> = TableDefinition::new("receivers");

const NEXT_ID: &str = "next_id";
const INSTANCE: &str = "instance";
/// redb's page cache. Its default (1 GiB) would hold the whole spool in memory;
/// payloads are read once per attempt, so the OS page cache serves them as well.
const CACHE_BYTES: usize = 16 * 1024 * 1024;
/// Requests folded into one transaction at most.
const MAX_BATCH: usize = 1024;

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
        }
    }
}

#[derive(Debug)]
pub enum Op {
    Insert {
        meta: DeliveryMeta,
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
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {message}")]
    Storage { path: String, message: String },
    #[error("spool writer has stopped")]
    Closed,
}

struct Batch {
    ops: Vec<Op>,
    reply: oneshot::Sender<Result<Vec<u64>, SpoolError>>,
}

pub struct Spool {
    db: Arc<Database>,
    path: PathBuf,
    writer: mpsc::UnboundedSender<Batch>,
    instance: String,
}

impl Spool {
    /// Opens (or creates) `dir/spool.redb` and starts its writer thread.
    pub fn open(dir: &Path, commit_duration: Histogram) -> Result<Spool, SpoolError> {
        let path = dir.join("spool.redb");
        let err = |message: String| SpoolError::Storage { path: path.display().to_string(), message };
        std::fs::create_dir_all(dir).map_err(|e| err(format!("cannot create {}: {e}", dir.display())))?;
        let db = Database::builder().set_cache_size(CACHE_BYTES).create(&path).map_err(|e| err(e.to_string()))?;
        let instance = {
            let txn = db.begin_write().map_err(|e| err(e.to_string()))?;
            let instance = {
                let mut meta = txn.open_table(META).map_err(|e| err(e.to_string()))?;
                txn.open_table(DELIVERIES).map_err(|e| err(e.to_string()))?;
                txn.open_table(PAYLOADS).map_err(|e| err(e.to_string()))?;
                txn.open_table(RECEIVERS).map_err(|e| err(e.to_string()))?;
                let existing = meta
                    .get(INSTANCE)
                    .map_err(|e| err(e.to_string()))?
                    .map(|v| String::from_utf8_lossy(v.value()).into_owned());
                match existing {
                    Some(id) => id,
                    None => {
                        let id = format!("{:016x}", fastrand::u64(..));
                        meta.insert(INSTANCE, id.as_bytes()).map_err(|e| err(e.to_string()))?;
                        id
                    }
                }
            };
            txn.commit().map_err(|e| err(e.to_string()))?;
            instance
        };
        let db = Arc::new(db);
        let (tx, rx) = mpsc::unbounded_channel();
        let writer_db = db.clone();
        let writer_path = path.clone();
        std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || write_loop(&writer_db, &writer_path, rx, &commit_duration))
            .map_err(|e| err(format!("cannot start writer thread: {e}")))?;
        Ok(Spool { db, path, writer: tx, instance })
    }

    /// A random id of this spool, stable across restarts: with the delivery id it
    /// makes an `Idempotency-Key` unique across replicas.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Applies the ops durably, together with whatever else is waiting; returns the
    /// ids given to the inserts, in order.
    pub async fn commit(&self, ops: Vec<Op>) -> Result<Vec<u64>, SpoolError> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let ops = ops.into_iter().map(compress).collect();
        let (reply, answer) = oneshot::channel();
        self.writer.send(Batch { ops, reply }).map_err(|_| SpoolError::Closed)?;
        answer.await.map_err(|_| SpoolError::Closed)?
    }

    /// Queues the ops for the next commit without waiting for it; a failure is
    /// logged by the writer.
    pub fn commit_later(&self, ops: Vec<Op>) {
        if ops.is_empty() {
            return;
        }
        let ops = ops.into_iter().map(compress).collect();
        let (reply, _) = oneshot::channel();
        if self.writer.send(Batch { ops, reply }).is_err() {
            log::error!("spool {}: writer has stopped; a removal is lost until restart", self.path.display());
        }
    }

    fn err(&self, e: impl std::fmt::Display) -> SpoolError {
        SpoolError::Storage { path: self.path.display().to_string(), message: e.to_string() }
    }

    /// Every delivery's state, oldest first.
    pub fn load_all(&self) -> Result<Vec<(u64, DeliveryMeta)>, SpoolError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(DELIVERIES).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in table.iter().map_err(|e| self.err(e))? {
            let (id, value) = row.map_err(|e| self.err(e))?;
            let id = id.value();
            match serde_json::from_slice(value.value()) {
                Ok(meta) => out.push((id, meta)),
                Err(e) => log::error!("spool: delivery {id} is unreadable and skipped: {e}"),
            }
        }
        Ok(out)
    }

    /// One delivery's state.
    pub fn get(&self, id: u64) -> Result<Option<DeliveryMeta>, SpoolError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(DELIVERIES).map_err(|e| self.err(e))?;
        let value = table.get(id).map_err(|e| self.err(e))?;
        match value {
            Some(v) => serde_json::from_slice(v.value()).map(Some).map_err(|e| self.err(e)),
            None => Ok(None),
        }
    }

    /// Deliveries newest first, those with ids below `before` that `keep`
    /// accepts, at most `limit`.
    pub fn list(
        &self,
        before: Option<u64>,
        limit: usize,
        keep: impl Fn(&DeliveryMeta) -> bool,
    ) -> Result<Vec<(u64, DeliveryMeta)>, SpoolError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(DELIVERIES).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in table.range(..before.unwrap_or(u64::MAX)).map_err(|e| self.err(e))?.rev() {
            let (id, value) = row.map_err(|e| self.err(e))?;
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
    }

    /// The API-managed receivers' specs (JSON), by name.
    pub fn receivers(&self) -> Result<Vec<(String, Vec<u8>)>, SpoolError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(RECEIVERS).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in table.iter().map_err(|e| self.err(e))? {
            let (name, spec) = row.map_err(|e| self.err(e))?;
            out.push((name.value().to_string(), spec.value().to_vec()));
        }
        Ok(out)
    }

    pub fn payload(&self, id: u64) -> Result<Option<Vec<u8>>, SpoolError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(PAYLOADS).map_err(|e| self.err(e))?;
        let Some(value) = table.get(id).map_err(|e| self.err(e))? else { return Ok(None) };
        decode_payload(value.value()).map(Some).map_err(|e| self.err(format!("payload of delivery {id}: {e}")))
    }
}

/// Payloads are stored LZ4-compressed behind a one-byte tag: Alertmanager's
/// JSON repeats itself, and every byte saved is a byte the commit need not
/// write and fsync. Done by the caller, not the single writer thread.
const TAG_LZ4: u8 = 1;

fn compress(op: Op) -> Op {
    match op {
        Op::Insert { meta, body } => {
            let mut stored = Vec::with_capacity(body.len() / 2 + 8);
            stored.push(TAG_LZ4);
            stored.extend_from_slice(&lz4_flex::compress_prepend_size(&body));
            Op::Insert { meta, body: stored }
        }
        other => other,
    }
}

fn decode_payload(stored: &[u8]) -> Result<Vec<u8>, String> {
    match stored.split_first() {
        Some((&TAG_LZ4, rest)) => lz4_flex::decompress_size_prepended(rest).map_err(|e| e.to_string()),
        Some((tag, _)) => Err(format!("unknown payload encoding {tag}")),
        None => Err("empty payload".into()),
    }
}

fn write_loop(db: &Database, path: &Path, mut rx: mpsc::UnboundedReceiver<Batch>, commit_duration: &Histogram) {
    while let Some(first) = rx.blocking_recv() {
        let mut batches = vec![first];
        while batches.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(b) => batches.push(b),
                Err(_) => break,
            }
        }
        let started = Instant::now();
        let result = apply(db, &mut batches);
        commit_duration.observe(started.elapsed().as_secs_f64());
        match result {
            Ok(ids) => {
                for (batch, ids) in batches.into_iter().zip(ids) {
                    let _ = batch.reply.send(Ok(ids));
                }
            }
            Err(message) => {
                log::error!("spool {}: commit of {} requests failed: {message}", path.display(), batches.len());
                let error = SpoolError::Storage { path: path.display().to_string(), message };
                for batch in batches {
                    let _ = batch.reply.send(Err(error.clone()));
                }
            }
        }
    }
}

/// One write transaction for all batches; the inserted ids per batch.
fn apply(db: &Database, batches: &mut [Batch]) -> Result<Vec<Vec<u64>>, String> {
    let s = |e: &dyn std::fmt::Display| e.to_string();
    let txn = db.begin_write().map_err(|e| s(&e))?;
    let mut all_ids = Vec::with_capacity(batches.len());
    {
        let mut meta = txn.open_table(META).map_err(|e| s(&e))?;
        let mut deliveries = txn.open_table(DELIVERIES).map_err(|e| s(&e))?;
        let mut payloads = txn.open_table(PAYLOADS).map_err(|e| s(&e))?;
        let mut receivers = txn.open_table(RECEIVERS).map_err(|e| s(&e))?;
        let mut next_id = match meta.get(NEXT_ID).map_err(|e| s(&e))? {
            Some(v) => u64::from_le_bytes(v.value().try_into().map_err(|_| "corrupt next_id".to_string())?),
            None => 1,
        };
        for batch in batches.iter_mut() {
            let mut ids = Vec::new();
            for op in batch.ops.drain(..) {
                match op {
                    Op::Insert { meta, body } => {
                        let id = next_id;
                        next_id += 1;
                        let encoded = serde_json::to_vec(&meta).map_err(|e| s(&e))?;
                        deliveries.insert(id, encoded.as_slice()).map_err(|e| s(&e))?;
                        payloads.insert(id, body.as_slice()).map_err(|e| s(&e))?;
                        ids.push(id);
                    }
                    Op::Update { id, meta } => {
                        if deliveries.get(id).map_err(|e| s(&e))?.is_some() {
                            let encoded = serde_json::to_vec(&meta).map_err(|e| s(&e))?;
                            deliveries.insert(id, encoded.as_slice()).map_err(|e| s(&e))?;
                        }
                    }
                    Op::Remove { id } => {
                        deliveries.remove(id).map_err(|e| s(&e))?;
                        payloads.remove(id).map_err(|e| s(&e))?;
                    }
                    Op::PutReceiver { name, spec } => {
                        receivers.insert(name.as_str(), spec.as_slice()).map_err(|e| s(&e))?;
                    }
                    Op::DeleteReceiver { name } => {
                        receivers.remove(name.as_str()).map_err(|e| s(&e))?;
                    }
                }
            }
            all_ids.push(ids);
        }
        meta.insert(NEXT_ID, next_id.to_le_bytes().as_slice()).map_err(|e| s(&e))?;
    }
    txn.commit().map_err(|e| s(&e))?;
    Ok(all_ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(receiver: &str) -> DeliveryMeta {
        DeliveryMeta::new(receiver.into(), "g".into(), 1, 1)
    }

    fn hist() -> Histogram {
        Histogram::with_opts(prometheus::HistogramOpts::new("h", "h")).unwrap()
    }

    #[tokio::test]
    async fn deliveries_survive_reopen_and_ids_keep_growing() {
        let dir = tempfile::tempdir().unwrap();
        let (instance, first_ids) = {
            let spool = Spool::open(dir.path(), hist()).unwrap();
            let ids = spool
                .commit(vec![
                    Op::Insert { meta: meta("a"), body: b"one".to_vec() },
                    Op::Insert { meta: meta("b"), body: b"two".to_vec() },
                ])
                .await
                .unwrap();
            let mut dead = meta("b");
            dead.dead = Some(DeadReason::Expired);
            spool.commit(vec![Op::Update { id: ids[1], meta: dead }, Op::Remove { id: 999 }]).await.unwrap();
            (spool.instance().to_string(), ids)
        };
        // The writer thread owns a handle too; wait until the file can be reopened.
        let spool = loop {
            match Spool::open(dir.path(), hist()) {
                Ok(s) => break s,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
            }
        };
        assert_eq!(spool.instance(), instance);
        let all = spool.load_all().unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[1].1.dead, Some(DeadReason::Expired));
        assert_eq!(spool.payload(first_ids[0]).unwrap().as_deref(), Some(&b"one"[..]));
        let more = spool.commit(vec![Op::Insert { meta: meta("a"), body: vec![] }]).await.unwrap();
        assert!(more[0] > first_ids[1]);
        spool.commit(vec![Op::Remove { id: first_ids[0] }]).await.unwrap();
        assert_eq!(spool.payload(first_ids[0]).unwrap(), None);
    }

    #[test]
    fn payloads_are_compressed_and_come_back_whole() {
        let body: Vec<u8> =
            br#"{"alerts":["#.iter().chain(b"{\"labels\":{\"a\":\"b\"}},".repeat(100).iter()).copied().collect();
        let Op::Insert { body: stored, .. } = compress(Op::Insert { meta: meta("a"), body: body.clone() }) else {
            unreachable!()
        };
        assert!(stored.len() * 4 < body.len(), "{} of {}", stored.len(), body.len());
        assert_eq!(decode_payload(&stored).unwrap(), body);
        assert!(decode_payload(&[9, 1, 2]).is_err());
        assert!(decode_payload(&[]).is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_commits_all_land_with_distinct_ids() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::open(dir.path(), hist()).unwrap());
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let spool = spool.clone();
                tokio::spawn(async move {
                    spool.commit(vec![Op::Insert { meta: meta("a"), body: vec![1] }]).await.unwrap()[0]
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
}
