//! The spool's storage: an append-only log of checksummed frames in numbered
//! segment files, and the index in memory that a start rebuilds from it.
//!
//! A commit is one frame: the writer appends it and, for a durable commit,
//! calls `fdatasync` once. A frame is all or nothing. One whose length or
//! CRC-32 does not check out after the newest segment's last fsync is a write
//! torn by a crash and ends the log; anywhere else (a closed segment, or
//! before a frame that says the disk held more) it is damage, and the start
//! fails.
//!
//! Each segment (`spool-<n>.log`) begins with a frame naming its number and
//! the spool's instance, with a snapshot of the small state (the next id, the
//! API-managed receivers, the notification log). So an older segment is only
//! needed for the deliveries whose payloads it holds. Once the log holds more
//! garbage than live data, each durable commit also copies a bounded share of
//! the oldest segment's live payloads, with their deliveries' current state,
//! into the newest; a segment nothing lives in any more is deleted. Only the
//! oldest is ever compacted, so a removal never has to outlive the records
//! it removes.
//!
//! Frames reach the newest segment with direct writes where the file system
//! has them (`direct.rs`), over blocks written before: a segment nothing
//! lives in any more is kept as the spare (`spool-spare.log`) and becomes the
//! next one; if there is none once the newest segment is half full, a
//! thread writes one of zeros. Its old frames name the segment they belonged
//! to and their offset in their checksum, so they never check out as the new
//! segment's. Where there are no direct writes, frames are appended through
//! the page cache and segments are deleted.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use super::direct::{self, Direct};
use super::{DeliveryMeta, Op};
use crate::sync::{read, write};

const MAGIC: &[u8; 8] = b"ARSPOOL1";
/// Before a frame's records: its `Head`.
const FRAME_HEAD: usize = 24;
/// A segment nothing lives in, kept to be written over as the next one.
const SPARE: &str = "spool-spare.log";
/// A segment is closed and a new one begun once it passes this size.
pub(super) const SEGMENT_BYTES: u64 = 16 * 1024 * 1024;
/// How the log lays out its files.
#[derive(Debug, Clone, Copy)]
pub(super) struct Layout {
    /// A segment is closed and a new one begun once it passes this size.
    pub segment_bytes: u64,
    /// Direct writes over spare segments where the file system takes them
    /// (tests turn them off to cover the other way).
    pub direct: bool,
}

impl Layout {
    pub const DEFAULT: Layout = Layout { segment_bytes: SEGMENT_BYTES, direct: true };
}

/// Payload bytes one commit copies out of the oldest segment at most.
const COPY_BYTES: u64 = 1024 * 1024;
/// How long after a failed rotation or deletion it is tried again.
const TIDY_RETRY: Duration = Duration::from_secs(1);
/// What a delivery's state counts for in the live bytes (its JSON is about
/// this size).
const META_BYTES: u64 = 256;

mod tag {
    pub const HEADER: u8 = 0;
    pub const SNAPSHOT: u8 = 1;
    pub const PAYLOAD: u8 = 2;
    pub const UPDATE: u8 = 3;
    pub const REMOVE: u8 = 4;
    pub const RECEIVER: u8 = 5;
    pub const RECEIVER_GONE: u8 = 6;
    pub const NOTIFIED: u8 = 7;
    pub const NOTIFIED_GONE: u8 = 8;
}

/// Where a payload's stored bytes are.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Place {
    pub seg: u64,
    pub offset: u64,
    pub len: u32,
}

/// A change of state, as a frame records it: applied alike by a commit and by
/// a start reading the log.
#[derive(Debug)]
pub(super) enum Change {
    Header {
        seq: u64,
        instance: String,
    },
    Snapshot {
        next_id: u64,
        receivers: BTreeMap<String, Vec<u8>>,
        notified: BTreeMap<String, Vec<u8>>,
    },
    /// A payload with the deliveries that share it (ids in `key..key + span`).
    Payload {
        key: u64,
        span: u32,
        deliveries: Vec<(u64, DeliveryMeta)>,
        at: Place,
    },
    Update {
        id: u64,
        meta: DeliveryMeta,
    },
    Remove {
        id: u64,
    },
    Receiver {
        name: String,
        spec: Option<Vec<u8>>,
    },
    Notified {
        key: String,
        entry: Option<Vec<u8>>,
    },
}

/// A frame being written: its records after room for the head.
pub(super) struct Frame {
    buf: Vec<u8>,
}

impl Frame {
    pub fn new() -> Frame {
        Frame { buf: vec![0; FRAME_HEAD] }
    }

    fn is_empty(&self) -> bool {
        self.buf.len() == FRAME_HEAD
    }

    fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    /// Length-prefixed bytes; returns where they start in the frame.
    fn bytes(&mut self, v: &[u8]) -> Result<usize, String> {
        let len = u32::try_from(v.len()).map_err(|_| format!("a record of {} bytes is too large", v.len()))?;
        self.u32(len);
        let at = self.buf.len();
        self.buf.extend_from_slice(v);
        Ok(at)
    }

    fn meta(&mut self, meta: &DeliveryMeta) -> Result<(), String> {
        let json = serde_json::to_vec(meta).map_err(|e| e.to_string())?;
        self.bytes(&json).map(|_| ())
    }

    /// A keyed record (a receiver's spec, a notification-log entry): its
    /// tag, key and, unless it says the key is gone, value.
    fn entry(&mut self, tag: u8, key: &str, value: Option<&[u8]>) -> Result<(), String> {
        self.u8(tag);
        self.bytes(key.as_bytes())?;
        if let Some(value) = value {
            self.bytes(value)?;
        }
        Ok(())
    }

    fn map(&mut self, map: &BTreeMap<String, Vec<u8>>) -> Result<(), String> {
        self.u32(u32::try_from(map.len()).map_err(|_| "too many entries".to_string())?);
        for (k, v) in map {
            self.bytes(k.as_bytes())?;
            self.bytes(v)?;
        }
        Ok(())
    }

    /// A segment's first frame: its number, the instance, the small state.
    pub fn opening(seq: u64, instance: &str, state: &State) -> Result<Frame, String> {
        let mut frame = Frame::new();
        frame.u8(tag::HEADER);
        frame.buf.extend_from_slice(MAGIC);
        frame.u64(seq);
        frame.bytes(instance.as_bytes())?;
        frame.u8(tag::SNAPSHOT);
        frame.u64(state.next_id);
        frame.map(&state.receivers)?;
        frame.map(&state.notified)?;
        Ok(frame)
    }

    /// A payload record; returns where the body starts in the frame.
    pub fn payload(
        &mut self,
        key: u64,
        span: u32,
        deliveries: &[(u64, DeliveryMeta)],
        body: &[u8],
    ) -> Result<usize, String> {
        self.u8(tag::PAYLOAD);
        self.u64(key);
        self.u32(span);
        self.u32(u32::try_from(deliveries.len()).map_err(|_| "too many deliveries".to_string())?);
        for (id, meta) in deliveries {
            self.u64(*id);
            self.meta(meta)?;
        }
        self.bytes(body)
    }

    /// Fills in the head for a frame at `offset` of segment `seq`, written
    /// when the segment was on disk up to `synced`; the frame as it is
    /// written.
    fn seal(&mut self, seq: u64, offset: u64, synced: u64) -> &[u8] {
        let len = u32::try_from(self.buf.len() - FRAME_HEAD).unwrap_or(u32::MAX);
        let crc = checksum(seq, offset, synced, &self.buf[FRAME_HEAD..]);
        Head { len, crc, seq, synced }.write(&mut self.buf);
        &self.buf
    }
}

/// A frame's head, little-endian: the records' length (u32), their CRC-32
/// (u32, over segment number, the frame's offset, the synced end and the
/// records: a frame copied to another offset or segment does not check
/// out), the segment number (u64), and where the segment was known to be on
/// disk when the frame was written (u64: the end of the last fsynced frame).
struct Head {
    len: u32,
    crc: u32,
    seq: u64,
    synced: u64,
}

impl Head {
    fn read(bytes: &[u8; FRAME_HEAD]) -> Head {
        let u32_at = |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let u64_at = |i: usize| u64::from(u32_at(i)) | u64::from(u32_at(i + 4)) << 32;
        Head { len: u32_at(0), crc: u32_at(4), seq: u64_at(8), synced: u64_at(16) }
    }

    fn write(&self, bytes: &mut [u8]) {
        bytes[..4].copy_from_slice(&self.len.to_le_bytes());
        bytes[4..8].copy_from_slice(&self.crc.to_le_bytes());
        bytes[8..16].copy_from_slice(&self.seq.to_le_bytes());
        bytes[16..24].copy_from_slice(&self.synced.to_le_bytes());
    }
}

/// Reads a frame's records.
struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len()).ok_or("a record runs past its frame")?;
        let out = &self.data[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().map_err(|_| "short")?))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().map_err(|_| "short")?))
    }

    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    fn string(&mut self) -> Result<String, String> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| "a name is not UTF-8".to_string())
    }

    fn meta(&mut self) -> Result<DeliveryMeta, String> {
        serde_json::from_slice(self.bytes()?).map_err(|e| format!("a delivery's state: {e}"))
    }

    fn map(&mut self) -> Result<BTreeMap<String, Vec<u8>>, String> {
        let n = self.u32()?;
        let mut map = BTreeMap::new();
        for _ in 0..n {
            let k = self.string()?;
            map.insert(k, self.bytes()?.to_vec());
        }
        Ok(map)
    }
}

/// The changes a frame's records make; `base` is where the records start in
/// segment `seg`.
fn decode(records: &[u8], seg: u64, base: u64) -> Result<Vec<Change>, String> {
    let mut c = Cursor { data: records, pos: 0 };
    let mut out = Vec::new();
    while c.pos < records.len() {
        let change = match c.u8()? {
            tag::HEADER => {
                if c.take(MAGIC.len())? != MAGIC {
                    return Err("not a spool segment (wrong magic)".into());
                }
                let seq = c.u64()?;
                Change::Header { seq, instance: c.string()? }
            }
            tag::SNAPSHOT => Change::Snapshot { next_id: c.u64()?, receivers: c.map()?, notified: c.map()? },
            tag::PAYLOAD => {
                let key = c.u64()?;
                let span = c.u32()?;
                let n = c.u32()?;
                let mut deliveries = Vec::new();
                for _ in 0..n {
                    let id = c.u64()?;
                    deliveries.push((id, c.meta()?));
                }
                let body = c.bytes()?;
                let offset = base + (c.pos - body.len()) as u64;
                let len = u32::try_from(body.len()).map_err(|_| "payload too large")?;
                Change::Payload { key, span, deliveries, at: Place { seg, offset, len } }
            }
            tag::UPDATE => Change::Update { id: c.u64()?, meta: c.meta()? },
            tag::REMOVE => Change::Remove { id: c.u64()? },
            tag::RECEIVER => Change::Receiver { name: c.string()?, spec: Some(c.bytes()?.to_vec()) },
            tag::RECEIVER_GONE => Change::Receiver { name: c.string()?, spec: None },
            tag::NOTIFIED => Change::Notified { key: c.string()?, entry: Some(c.bytes()?.to_vec()) },
            tag::NOTIFIED_GONE => Change::Notified { key: c.string()?, entry: None },
            other => return Err(format!("unknown record type {other}")),
        };
        out.push(change);
    }
    Ok(out)
}

struct Placed {
    at: Place,
    span: u32,
    /// Deliveries that still use it.
    refs: u32,
}

/// The spool's state in memory: every delivery, where each payload is, the
/// small tables; and the segment files, for reads. Changed by the writer
/// only, after the frame that records the change is written.
#[derive(Default)]
pub(super) struct State {
    pub deliveries: BTreeMap<u64, DeliveryMeta>,
    payloads: HashMap<u64, Placed>,
    /// (segment, payload key): what compacting a segment must copy.
    by_segment: BTreeSet<(u64, u64)>,
    pub receivers: BTreeMap<String, Vec<u8>>,
    pub notified: BTreeMap<String, Vec<u8>>,
    pub next_id: u64,
    pub files: BTreeMap<u64, Arc<File>>,
    live_bytes: u64,
}

/// The payload key of a delivery: the first id of those sharing it.
fn key_of(id: u64, meta: &DeliveryMeta) -> u64 {
    meta.payload.unwrap_or(id)
}

impl State {
    pub fn new() -> State {
        State { next_id: 1, ..State::default() }
    }

    pub fn apply(&mut self, change: Change) {
        match change {
            Change::Header { .. } => {}
            Change::Snapshot { next_id, receivers, notified } => {
                self.next_id = self.next_id.max(next_id);
                self.receivers = receivers;
                self.notified = notified;
            }
            Change::Payload { key, span, deliveries, at } => {
                if let Some(old) = self.payloads.remove(&key) {
                    self.by_segment.remove(&(old.at.seg, key));
                    self.live_bytes = self.live_bytes.saturating_sub(u64::from(old.at.len));
                }
                let refs = u32::try_from(deliveries.len()).unwrap_or(u32::MAX);
                for (id, meta) in deliveries {
                    self.next_id = self.next_id.max(id + 1);
                    if self.deliveries.insert(id, meta).is_none() {
                        self.live_bytes += META_BYTES;
                    }
                }
                if refs > 0 {
                    self.payloads.insert(key, Placed { at, span, refs });
                    self.by_segment.insert((at.seg, key));
                    self.live_bytes += u64::from(at.len);
                }
            }
            Change::Update { id, meta } => {
                if let Some(stored) = self.deliveries.get_mut(&id) {
                    // Where its payload is stays as stored: the update may
                    // come from a copy that does not know.
                    let payload = stored.payload;
                    *stored = DeliveryMeta { payload, ..meta };
                }
            }
            Change::Remove { id } => {
                let Some(meta) = self.deliveries.remove(&id) else { return };
                self.live_bytes = self.live_bytes.saturating_sub(META_BYTES);
                let key = key_of(id, &meta);
                let Some(placed) = self.payloads.get_mut(&key) else { return };
                placed.refs = placed.refs.saturating_sub(1);
                if placed.refs == 0 {
                    let at = placed.at;
                    self.payloads.remove(&key);
                    self.by_segment.remove(&(at.seg, key));
                    self.live_bytes = self.live_bytes.saturating_sub(u64::from(at.len));
                }
            }
            Change::Receiver { name, spec: Some(spec) } => {
                self.receivers.insert(name, spec);
            }
            Change::Receiver { name, spec: None } => {
                self.receivers.remove(&name);
            }
            Change::Notified { key, entry: Some(entry) } => {
                self.notified.insert(key, entry);
            }
            Change::Notified { key, entry: None } => {
                self.notified.remove(&key);
            }
        }
    }

    /// Where a delivery's payload is, and the file to read it from.
    pub fn payload_of(&self, id: u64) -> Option<(Arc<File>, Place)> {
        let meta = self.deliveries.get(&id)?;
        let placed = self.payloads.get(&key_of(id, meta))?;
        Some((self.files.get(&placed.at.seg)?.clone(), placed.at))
    }

    /// What is live, in bytes (payloads as stored, `META_BYTES` per delivery).
    #[cfg(test)]
    pub fn live_bytes(&self) -> u64 {
        self.live_bytes
    }

    /// Stored payloads, and (key, deliveries left) of those made for more
    /// than one delivery.
    #[cfg(test)]
    pub fn payload_counts(&self) -> (usize, Vec<(u64, u32)>) {
        let mut shared: Vec<_> = self.payloads.iter().filter(|(_, p)| p.span > 1).map(|(k, p)| (*k, p.refs)).collect();
        shared.sort_unstable();
        (self.payloads.len(), shared)
    }
}

/// Reads a payload's stored bytes.
pub(super) fn read_at(file: &File, at: Place) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0; at.len as usize];
    file.read_exact_at(&mut buf, at.offset)?;
    Ok(buf)
}

/// Where the frames of a segment file end (its number from the name).
#[cfg(test)]
pub(super) fn frames_end(path: &Path) -> usize {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let seq = name.trim_start_matches("spool-").trim_end_matches(".log").parse().expect("a segment's name");
    let data = std::fs::read(path).expect("a segment");
    let mut pos = 0;
    while let At::Frame(records, _) = frame_at(&data, pos, 0, seq) {
        pos += FRAME_HEAD + records.len();
    }
    pos
}

pub(super) fn segment_name(seq: u64) -> String {
    format!("spool-{seq:08}.log")
}

/// The segment files in `dir`, oldest first. Deletes leftovers of a segment
/// that was being made when the process stopped.
pub(super) fn segments(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with("spool-") && name.ends_with(".log.tmp") {
            let _ = std::fs::remove_file(entry.path());
            continue;
        }
        let seq = name.strip_prefix("spool-").and_then(|n| n.strip_suffix(".log")).and_then(|n| n.parse().ok());
        if let Some(seq) = seq {
            out.push((seq, entry.path()));
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Why the log could not be read at start.
#[derive(Debug)]
pub(super) enum ReplayError {
    /// A segment file is 0 bytes.
    Emptied(PathBuf),
    Damaged {
        path: PathBuf,
        message: String,
    },
}

impl ReplayError {
    /// The file, and what is wrong with it.
    pub fn parts(self) -> (PathBuf, String) {
        match self {
            ReplayError::Emptied(path) => (path, "0 bytes".to_string()),
            ReplayError::Damaged { path, message } => (path, message),
        }
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

fn open_rw(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new().read(true).write(true).open(path)
}

/// The writer's side of the log: the segment being appended to.
pub(super) struct Log {
    dir: PathBuf,
    instance: String,
    head: u64,
    file: Arc<File>,
    /// Where the next frame goes: the end of the last one written whole.
    end: u64,
    /// The end of the last frame fsynced.
    synced: u64,
    /// Every segment's size.
    sizes: BTreeMap<u64, u64>,
    segment_bytes: u64,
    /// After a failed rotation or deletion: not before then again.
    tidy_after: Option<Instant>,
    /// The newest segment, for direct writes; None where the file system
    /// does not take them.
    direct: Option<Direct>,
    /// Whether a thread is writing a spare.
    making_spare: Arc<AtomicBool>,
    /// The segment for which a spare was last asked for.
    spare_asked: u64,
}

impl Log {
    /// Starts a new log in `dir` (which has no segments): its first segment
    /// holds `state` and the payload records in `frames`, all or nothing.
    pub fn create(dir: &Path, instance: &str, state: &State, frames: Vec<Frame>) -> Result<(), String> {
        write_segment(dir, 1, instance, state, frames).map(|_| ())
    }

    /// Reads every segment into a fresh state. What follows the last whole
    /// frame of the newest segment is left to be written over.
    pub fn open(dir: &Path, layout: Layout) -> Result<(Log, State), ReplayError> {
        let damaged = |path: &Path, message: String| ReplayError::Damaged { path: path.to_path_buf(), message };
        let listed = segments(dir).map_err(|e| damaged(dir, e.to_string()))?;
        let mut state = State::new();
        let mut instance: Option<String> = None;
        let mut sizes = BTreeMap::new();
        let mut head = None;
        for (i, (seq, path)) in listed.iter().enumerate() {
            let newest = i + 1 == listed.len();
            let io = |e: std::io::Error| damaged(path, e.to_string());
            let file = open_rw(path).map_err(io)?;
            let len = file.metadata().map_err(io)?.len();
            if len == 0 {
                return Err(ReplayError::Emptied(path.clone()));
            }
            // Frame by frame, into one buffer: a segment is never in memory
            // whole (glibc keeps a freed 16 MiB block as the process's).
            let mut buf = Vec::new();
            let mut pos = 0usize;
            while (pos as u64) < len {
                load_frame(&file, len, pos as u64, *seq, &mut buf).map_err(io)?;
                let torn_at_end = || {
                    let data = std::fs::read(path).unwrap_or_default();
                    !synced_past(&data, pos, *seq)
                };
                let records = match frame_at(&buf, 0, pos as u64, *seq) {
                    At::Frame(records, _) => records,
                    // A closed segment ends with its last frame (it was cut
                    // to it when the next began); the newest may end in
                    // zeros a crash left.
                    At::End if newest && pos > 0 => break,
                    At::Torn if newest && pos > 0 && torn_at_end() => {
                        log::warn!(
                            "spool {}: the frame at byte {pos} was cut off by a crash (never acknowledged); dropped",
                            path.display()
                        );
                        break;
                    }
                    _ => return Err(damaged(path, format!("the frame at byte {pos} is damaged (length or checksum)"))),
                };
                let base = (pos + FRAME_HEAD) as u64;
                let changes =
                    decode(records, *seq, base).map_err(|e| damaged(path, format!("frame at byte {pos}: {e}")))?;
                if pos == 0 {
                    match changes.first() {
                        Some(Change::Header { seq: s, instance: id }) if s == seq => {
                            if instance.as_ref().is_some_and(|known| known != id) {
                                return Err(damaged(path, format!("belongs to another spool (instance {id})")));
                            }
                            instance = Some(id.clone());
                        }
                        _ => return Err(damaged(path, "does not begin with its segment header".into())),
                    }
                }
                for change in changes {
                    state.apply(change);
                }
                pos += FRAME_HEAD + records.len();
            }
            sizes.insert(*seq, pos as u64);
            state.files.insert(*seq, Arc::new(file));
            head = Some((*seq, pos as u64));
        }
        let (Some((head, end)), Some(instance)) = (head, instance) else {
            return Err(damaged(dir, "no spool segment".into()));
        };
        let file = state.files[&head].clone();
        let path = &listed[listed.len() - 1].1;
        // What was read may have been only in the page cache (a kill -9).
        file.sync_data().map_err(|e| damaged(path, e.to_string()))?;
        let direct = if layout.direct { Direct::open(path, &file, end) } else { None };
        if layout.direct && direct.is_none() {
            log::info!("spool {}: no direct writes here; frames are appended through the page cache", dir.display());
        }
        let log = Log {
            dir: dir.to_path_buf(),
            instance,
            head,
            file,
            end,
            synced: end,
            sizes,
            segment_bytes: layout.segment_bytes,
            tidy_after: None,
            direct,
            making_spare: Arc::default(),
            spare_asked: 0,
        };
        Ok((log, state))
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// One frame for all of `batches`' ops (and, if durable, a share of the
    /// oldest segment's live payloads), applied to `state` once written. Each
    /// batch comes with the first id of each of its inserts, in order (the
    /// spool hands them out before the commit). Not `durable`: no fdatasync.
    pub fn commit<'a>(
        &mut self,
        state: &RwLock<State>,
        batches: impl Iterator<Item = (&'a [Op], &'a [u64])>,
        durable: bool,
    ) -> Result<(), String> {
        let mut frame = Frame::new();
        let mut changes = Vec::new();
        if durable {
            self.copy_forward(state, &mut frame, &mut changes)?;
        }
        for (ops, keys) in batches {
            let mut keys = keys.iter().copied();
            for op in ops {
                self.encode(op, &mut frame, &mut changes, &mut keys)?;
            }
        }
        if frame.buf.len() - FRAME_HEAD > u32::MAX as usize {
            return Err(format!("a commit of {} bytes is too large for one frame", frame.buf.len()));
        }
        let written = if frame.is_empty() { 0 } else { frame.buf.len() as u64 };
        if written > 0 {
            let bytes = frame.seal(self.head, self.end, self.synced);
            let wrote = match self.direct.as_mut().map(|direct| direct.write(bytes, self.end)) {
                Some(Err(e)) if direct::unsupported(&e) => {
                    log::warn!(
                        "spool {}: the file system refuses direct writes ({e}); appending through the page cache",
                        self.dir.display()
                    );
                    self.direct = None;
                    self.file.write_all_at(bytes, self.end)
                }
                Some(wrote) => wrote,
                None => self.file.write_all_at(bytes, self.end),
            };
            if let Err(e) = wrote {
                let _ = self.file.set_len(self.end);
                return Err(e.to_string());
            }
        }
        if durable {
            if let Err(e) = self.file.sync_data() {
                let _ = self.file.set_len(self.end);
                return Err(e.to_string());
            }
        }
        self.end += written;
        if durable {
            self.synced = self.end;
        }
        self.sizes.insert(self.head, self.end);
        {
            let mut state = write(state);
            for change in changes {
                state.apply(change);
            }
        }
        if durable {
            self.tidy(state);
        }
        Ok(())
    }

    fn encode(
        &self,
        op: &Op,
        frame: &mut Frame,
        changes: &mut Vec<Change>,
        keys: &mut impl Iterator<Item = u64>,
    ) -> Result<(), String> {
        match op {
            Op::Insert { metas, body } => {
                if metas.is_empty() {
                    return Ok(());
                }
                let key = keys.next().ok_or("an insert without its id")?;
                let shared = (metas.len() > 1).then_some(key);
                let deliveries: Vec<(u64, DeliveryMeta)> = metas
                    .iter()
                    .enumerate()
                    .map(|(i, m)| (key + i as u64, DeliveryMeta { payload: shared, ..m.clone() }))
                    .collect();
                let span = u32::try_from(metas.len()).map_err(|_| "too many deliveries".to_string())?;
                let at = frame.payload(key, span, &deliveries, body)?;
                let at = Place { seg: self.head, offset: self.end + at as u64, len: body.len() as u32 };
                changes.push(Change::Payload { key, span, deliveries, at });
            }
            Op::Update { id, meta } => {
                frame.u8(tag::UPDATE);
                frame.u64(*id);
                frame.meta(meta)?;
                changes.push(Change::Update { id: *id, meta: meta.clone() });
            }
            Op::Remove { id } => {
                frame.u8(tag::REMOVE);
                frame.u64(*id);
                changes.push(Change::Remove { id: *id });
            }
            Op::PutReceiver { name, spec } => {
                frame.entry(tag::RECEIVER, name, Some(spec))?;
                changes.push(Change::Receiver { name: name.clone(), spec: Some(spec.clone()) });
            }
            Op::DeleteReceiver { name } => {
                frame.entry(tag::RECEIVER_GONE, name, None)?;
                changes.push(Change::Receiver { name: name.clone(), spec: None });
            }
            Op::Notified { key, entry } => {
                frame.entry(tag::NOTIFIED, key, Some(entry))?;
                changes.push(Change::Notified { key: key.clone(), entry: Some(entry.clone()) });
            }
            Op::ForgetNotified { key } => {
                frame.entry(tag::NOTIFIED_GONE, key, None)?;
                changes.push(Change::Notified { key: key.clone(), entry: None });
            }
        }
        Ok(())
    }

    /// Copies up to `COPY_BYTES` of the oldest segment's live payloads into
    /// the frame, with their deliveries' current state, if the log holds more
    /// garbage than live data.
    fn copy_forward(&self, state: &RwLock<State>, frame: &mut Frame, changes: &mut Vec<Change>) -> Result<(), String> {
        let Some(&oldest) = self.sizes.keys().next() else { return Ok(()) };
        if oldest == self.head {
            return Ok(());
        }
        let mut picked = Vec::new();
        let file = {
            let state = read(state);
            let total: u64 = self.sizes.values().sum();
            let garbage = total.saturating_sub(state.live_bytes);
            if garbage <= state.live_bytes.max(self.segment_bytes) {
                return Ok(());
            }
            let mut bytes = 0;
            for &(_, key) in state.by_segment.range((oldest, 0)..(oldest + 1, 0)) {
                let placed = &state.payloads[&key];
                let deliveries: Vec<(u64, DeliveryMeta)> = state
                    .deliveries
                    .range(key..key.saturating_add(u64::from(placed.span)))
                    .filter(|(id, meta)| key_of(**id, meta) == key)
                    .map(|(id, meta)| (*id, meta.clone()))
                    .collect();
                bytes += u64::from(placed.at.len);
                picked.push((key, placed.span, deliveries, placed.at));
                if bytes >= COPY_BYTES {
                    break;
                }
            }
            match state.files.get(&oldest) {
                Some(file) => file.clone(),
                None => return Ok(()),
            }
        };
        for (key, span, deliveries, old) in picked {
            let body = match read_at(&file, old) {
                Ok(body) => body,
                Err(e) => {
                    // Left where it is; the oldest segment stays until it reads.
                    log::warn!("spool {}: compaction cannot read {}: {e}", self.dir.display(), segment_name(oldest));
                    break;
                }
            };
            let at = frame.payload(key, span, &deliveries, &body)?;
            let at = Place { seg: self.head, offset: self.end + at as u64, len: old.len };
            changes.push(Change::Payload { key, span, deliveries, at });
        }
        Ok(())
    }

    /// After a durable commit: begins a new segment once the newest is full,
    /// deletes the oldest ones nothing lives in. Failures are logged and
    /// tried again after the next durable commit.
    fn tidy(&mut self, state: &RwLock<State>) {
        if self.tidy_after.is_some_and(|after| Instant::now() < after) {
            return;
        }
        self.tidy_after = None;
        let failed = |what: String| {
            log::warn!("spool {}: {what}; trying again in {} s", self.dir.display(), TIDY_RETRY.as_secs());
            Some(Instant::now() + TIDY_RETRY)
        };
        if self.end >= self.segment_bytes {
            let seq = self.head + 1;
            let made = self.close_head().and_then(|()| {
                let state = read(state);
                let spare = self.direct.as_ref().and_then(|_| reuse_spare(&self.dir, seq, &self.instance, &state));
                match spare {
                    Some(made) => Ok(made),
                    None => write_segment(&self.dir, seq, &self.instance, &state, Vec::new()).map(|(file, end)| {
                        let direct = self.direct_for(seq, &file, end);
                        (file, end, direct)
                    }),
                }
            });
            match made {
                Ok((file, end, direct)) => {
                    write(state).files.insert(seq, file.clone());
                    self.head = seq;
                    self.file = file;
                    self.end = end;
                    self.synced = end;
                    self.sizes.insert(seq, end);
                    self.direct = direct;
                }
                Err(e) => {
                    self.tidy_after = failed(format!("cannot begin segment {seq}: {e}"));
                    return;
                }
            }
        }
        while let Some(&oldest) = self.sizes.keys().next() {
            if oldest == self.head || read(state).by_segment.range((oldest, 0)..(oldest + 1, 0)).next().is_some() {
                break;
            }
            let path = self.dir.join(segment_name(oldest));
            // Kept as the spare if there is none (and direct writes can use it).
            let spare = self.dir.join(SPARE);
            let keep = self.direct.is_some() && !spare.exists();
            let removed = match if keep { std::fs::rename(&path, &spare) } else { std::fs::remove_file(&path) } {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                other => other,
            };
            if let Err(e) = removed.and_then(|()| sync_dir(&self.dir)) {
                self.tidy_after = failed(format!("cannot delete {}: {e}", path.display()));
                return;
            }
            write(state).files.remove(&oldest);
            self.sizes.remove(&oldest);
        }
        // Once the newest segment is half full, its successor's file: a dead
        // segment kept meanwhile, or else zeros written now. (A spool that
        // never fills half a segment never writes a spare.)
        if self.spare_asked != self.head && self.end >= self.segment_bytes / 2 {
            self.spare_asked = self.head;
            self.want_spare();
        }
    }

    /// Cuts the newest segment to its last frame before the next begins: a
    /// closed segment ends with its last frame, so that anything else read
    /// there at start is damage.
    fn close_head(&self) -> Result<(), String> {
        let len = self.file.metadata().map_err(|e| e.to_string())?.len();
        if len != self.end {
            self.file.set_len(self.end).and_then(|()| self.file.sync_data()).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// After a failed write: reopens the newest segment and cuts it back to
    /// the last whole frame.
    pub fn reopen(&mut self, state: &RwLock<State>) -> Result<(), String> {
        let path = self.dir.join(segment_name(self.head));
        let file = open_rw(&path).map_err(|e| e.to_string())?;
        file.set_len(self.end).and_then(|()| file.sync_data()).map_err(|e| e.to_string())?;
        self.direct = self.direct_for(self.head, &file, self.end);
        let file = Arc::new(file);
        write(state).files.insert(self.head, file.clone());
        self.file = file;
        self.synced = self.end;
        Ok(())
    }

    /// Direct writes to segment `seq` (`file`, its frames ending at `end`),
    /// if the log writes directly.
    fn direct_for(&self, seq: u64, file: &File, end: u64) -> Option<Direct> {
        self.direct.as_ref().and_then(|_| Direct::open(&self.dir.join(segment_name(seq)), file, end))
    }

    /// Starts a thread writing a spare of zeros if there is none and direct
    /// writes can use it. A failure only costs the speed of the next
    /// segment's commits.
    fn want_spare(&self) {
        if self.direct.is_none() || self.dir.join(SPARE).exists() || self.making_spare.swap(true, Ordering::SeqCst) {
            return;
        }
        let (dir, bytes, making) = (self.dir.clone(), self.segment_bytes, self.making_spare.clone());
        let spawned = std::thread::Builder::new().name("spool-spare".into()).spawn(move || {
            if let Err(e) = make_spare(&dir, bytes) {
                log::warn!("spool {}: cannot prepare the next segment's file: {e}", dir.display());
            }
            making.store(false, Ordering::SeqCst);
        });
        if spawned.is_err() {
            self.making_spare.store(false, Ordering::SeqCst);
        }
    }
}

/// Writes a spare: `bytes` of zeros, every block allocated and written, then
/// given its name.
pub(super) fn make_spare(dir: &Path, bytes: u64) -> std::io::Result<()> {
    // A name of its own: a thread of a spool closed meanwhile may still be
    // writing another (and a start deletes what a crash left, `segments`).
    static MADE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = MADE.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!("spool-spare-{}-{n}.log.tmp", std::process::id()));
    let made = (|| {
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&tmp)?;
        let _ = super::set_mode(&tmp, 0o600);
        direct::zeros(&tmp, &file, bytes)?;
        // Not over a dead segment kept as the spare meanwhile: that one is
        // as good, and nothing need be written to have it.
        match std::fs::hard_link(&tmp, dir.join(SPARE)) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
        sync_dir(dir)
    })();
    let _ = std::fs::remove_file(&tmp);
    made
}

/// Begins segment `seq` in the spare, if there is one: taken by renaming it
/// (so that a spare written meanwhile is another file), its opening frame
/// written over its start, then given the segment's name. None if there is
/// no spare or it fails (the spare is then dropped).
fn reuse_spare(dir: &Path, seq: u64, instance: &str, state: &State) -> Option<(Arc<File>, u64, Option<Direct>)> {
    let path = dir.join(segment_name(seq));
    let tmp = dir.join(format!("{}.tmp", segment_name(seq)));
    std::fs::rename(dir.join(SPARE), &tmp).ok()?;
    let made = (|| -> Result<(File, u64, Direct), String> {
        let file = open_rw(&tmp).map_err(|e| e.to_string())?;
        let mut direct = Direct::open(&tmp, &file, 0).ok_or("no direct writes")?;
        let mut opening = Frame::opening(seq, instance, state)?;
        // Nothing of it counts before the rename, after its fsync.
        let bytes = opening.seal(seq, 0, 0);
        direct.write(bytes, 0).and_then(|()| file.sync_data()).map_err(|e| e.to_string())?;
        std::fs::rename(&tmp, &path).map_err(|e| e.to_string())?;
        if let Err(e) = sync_dir(dir) {
            let _ = std::fs::remove_file(&path);
            return Err(e.to_string());
        }
        Ok((file, bytes.len() as u64, direct))
    })();
    match made {
        Ok((file, end, direct)) => Some((Arc::new(file), end, Some(direct))),
        Err(e) => {
            log::warn!("spool {}: the spare segment file is not used: {e}", dir.display());
            let _ = std::fs::remove_file(&tmp);
            None
        }
    }
}

fn checksum(seq: u64, offset: u64, synced: u64, records: &[u8]) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&seq.to_le_bytes());
    crc.update(&offset.to_le_bytes());
    crc.update(&synced.to_le_bytes());
    crc.update(records);
    crc.finalize()
}

/// What is at a position of segment `seq`.
enum At<'a> {
    /// A whole frame: its records, and the segment's synced end when it was
    /// written.
    Frame(&'a [u8], u64),
    /// The end of what was written: nothing, zeros (past the last frame's
    /// block, or blocks a crash left unwritten), or a frame of a recycled
    /// file's earlier life as another segment.
    End,
    /// A frame of this segment that does not check out: a write cut off by a
    /// crash, or damage.
    Torn,
}

/// What is at `pos` of `data`, which begins at byte `base` of segment `seq`.
fn frame_at(data: &[u8], pos: usize, base: u64, seq: u64) -> At<'_> {
    let rest = &data[pos.min(data.len())..];
    let Some(head) = rest.first_chunk::<FRAME_HEAD>() else {
        return if rest.iter().all(|b| *b == 0) { At::End } else { At::Torn };
    };
    let head = Head::read(head);
    if head.seq != seq {
        return At::End;
    }
    match rest.get(FRAME_HEAD..FRAME_HEAD + head.len as usize) {
        Some(records) if head.len > 0 && checksum(seq, base + pos as u64, head.synced, records) == head.crc => {
            At::Frame(records, head.synced)
        }
        _ => At::Torn,
    }
}

/// Reads into `buf` what is at `pos` of a segment file `len` bytes long: a
/// frame's head and, if the head names this segment and a length that fits,
/// its records.
fn load_frame(file: &File, len: u64, pos: u64, seq: u64, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let head = (len - pos).min(FRAME_HEAD as u64) as usize;
    buf.resize(head, 0);
    file.read_exact_at(buf, pos)?;
    let Some(head) = buf.first_chunk::<FRAME_HEAD>().map(Head::read) else { return Ok(()) };
    if head.seq == seq && u64::from(head.len) <= len - pos - FRAME_HEAD as u64 {
        buf.resize(FRAME_HEAD + head.len as usize, 0);
        file.read_exact_at(&mut buf[FRAME_HEAD..], pos + FRAME_HEAD as u64)?;
    }
    Ok(())
}

/// Whether a whole frame of segment `seq` after `pos` was written when the
/// segment was already on disk past `pos`: then what stopped the reading at
/// `pos` had been fsynced, and is damage. (Frames written after the last
/// fsync may reach the disk in any order when the power goes: a hole among
/// them is the end of the log.)
fn synced_past(data: &[u8], pos: usize, seq: u64) -> bool {
    // `data` is the whole segment.
    let tag = seq.to_le_bytes();
    let mut from = pos + 1;
    while let Some(found) = data.get(from..).and_then(|rest| memchr::memmem::find(rest, &tag)) {
        let at = from + found;
        if let Some(start) = at.checked_sub(8).filter(|start| *start > pos) {
            if let At::Frame(_, synced) = frame_at(data, start, 0, seq) {
                if synced > pos as u64 {
                    return true;
                }
            }
        }
        from = at + 1;
    }
    false
}

/// Makes segment `seq` whole under a temporary name, then gives it its own:
/// a segment either exists with its opening frame or not at all.
fn write_segment(
    dir: &Path,
    seq: u64,
    instance: &str,
    state: &State,
    frames: Vec<Frame>,
) -> Result<(Arc<File>, u64), String> {
    let path = dir.join(segment_name(seq));
    let tmp = dir.join(format!("{}.tmp", segment_name(seq)));
    let made = (|| -> Result<(File, u64), String> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| e.to_string())?;
        let _ = super::set_mode(&tmp, 0o600);
        let mut end = 0u64;
        for mut frame in std::iter::once(Frame::opening(seq, instance, state)?).chain(frames) {
            if frame.is_empty() {
                continue;
            }
            // Nothing of it counts before the rename, after its fsync.
            let bytes = frame.seal(seq, end, 0);
            file.write_all_at(bytes, end).map_err(|e| e.to_string())?;
            end += bytes.len() as u64;
        }
        file.sync_data().map_err(|e| e.to_string())?;
        std::fs::rename(&tmp, &path).map_err(|e| e.to_string())?;
        if let Err(e) = sync_dir(dir) {
            // Not begun: a segment that might not survive a crash must not
            // follow frames still written to the one before it.
            let _ = std::fs::remove_file(&path);
            return Err(e.to_string());
        }
        Ok((file, end))
    })();
    match made {
        Ok((file, end)) => Ok((Arc::new(file), end)),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}
