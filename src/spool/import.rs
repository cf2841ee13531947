//! A `spool.redb` left by an earlier version, read into a new log.
//!
//! Until 0.1's second round the spool was one redb file with the tables
//! below. A start that finds it and no segment writes everything it holds
//! (deliveries, payloads, receivers, the notification log, the next id, the
//! instance) into the first segment, all or nothing; the caller then renames
//! the file aside.

use std::collections::BTreeMap;
use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::store::{Frame, Log, State};
use super::DeliveryMeta;

pub(super) const FILE: &str = "spool.redb";

pub(super) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
pub(super) const DELIVERIES: TableDefinition<u64, &[u8]> = TableDefinition::new("deliveries");
pub(super) const PAYLOADS: TableDefinition<u64, &[u8]> = TableDefinition::new("payloads");
pub(super) const RECEIVERS: TableDefinition<&str, &[u8]> = TableDefinition::new("receivers");
pub(super) const NOTIFIED: TableDefinition<&str, &[u8]> = TableDefinition::new("notified");

/// Payload records per frame of the import, in bytes at most (one payload
/// may pass it).
const FRAME_BYTES: usize = 4 * 1024 * 1024;

/// Writes the redb spool at `path` into a new log in `dir`, under its
/// instance; returns how many deliveries came over.
pub(super) fn import(dir: &Path, path: &Path) -> Result<usize, String> {
    let s = |e: &dyn std::fmt::Display| e.to_string();
    let db = Database::open(path).map_err(|e| s(&e))?;
    let txn = db.begin_read().map_err(|e| s(&e))?;
    let mut state = State::new();
    let mut instance = None;
    if let Ok(meta) = txn.open_table(META) {
        if let Some(v) = meta.get("instance").map_err(|e| s(&e))? {
            instance = Some(String::from_utf8_lossy(v.value()).into_owned());
        }
        if let Some(v) = meta.get("next_id").map_err(|e| s(&e))? {
            state.next_id = u64::from_le_bytes(v.value().try_into().map_err(|_| "corrupt next_id".to_string())?);
        }
    }
    let strings = |def: TableDefinition<&str, &[u8]>| -> Result<BTreeMap<String, Vec<u8>>, String> {
        let Ok(table) = txn.open_table(def) else { return Ok(BTreeMap::new()) };
        let mut out = BTreeMap::new();
        for row in table.iter().map_err(|e| s(&e))? {
            let (k, v) = row.map_err(|e| s(&e))?;
            out.insert(k.value().to_string(), v.value().to_vec());
        }
        Ok(out)
    };
    state.receivers = strings(RECEIVERS)?;
    state.notified = strings(NOTIFIED)?;
    // Deliveries by the payload they use.
    let mut by_payload: BTreeMap<u64, Vec<(u64, DeliveryMeta)>> = BTreeMap::new();
    if let Ok(table) = txn.open_table(DELIVERIES) {
        for row in table.iter().map_err(|e| s(&e))? {
            let (id, value) = row.map_err(|e| s(&e))?;
            let id = id.value();
            match serde_json::from_slice::<DeliveryMeta>(value.value()) {
                Ok(meta) => by_payload.entry(meta.payload.unwrap_or(id)).or_default().push((id, meta)),
                Err(e) => log::error!("spool import: delivery {id} is unreadable and skipped: {e}"),
            }
        }
    }
    let payloads = txn.open_table(PAYLOADS).ok();
    let mut frames = vec![Frame::new()];
    let mut in_frame = 0;
    let mut imported = 0;
    for (key, deliveries) in by_payload {
        let stored = match &payloads {
            Some(table) => table.get(key).map_err(|e| s(&e))?.map(|v| v.value().to_vec()),
            None => None,
        };
        let Some(stored) = stored else {
            log::error!("spool import: the payload of deliveries {:?} is missing; they are skipped", ids(&deliveries));
            continue;
        };
        let last = deliveries.iter().map(|(id, _)| *id).max().unwrap_or(key);
        let span =
            u32::try_from(last.saturating_sub(key) + 1).map_err(|_| format!("payload {key}: ids too far apart"))?;
        state.next_id = state.next_id.max(last + 1);
        if in_frame >= FRAME_BYTES {
            frames.push(Frame::new());
            in_frame = 0;
        }
        in_frame += stored.len();
        imported += deliveries.len();
        frames.last_mut().expect("one frame at least").payload(key, span, &deliveries, &stored)?;
    }
    let instance = instance.unwrap_or_else(|| format!("{:016x}", fastrand::u64(..)));
    Log::create(dir, &instance, &state, frames)?;
    Ok(imported)
}

fn ids(deliveries: &[(u64, DeliveryMeta)]) -> Vec<u64> {
    deliveries.iter().map(|(id, _)| *id).collect()
}
