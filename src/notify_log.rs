//! What each `send_resolved: false` receiver was last sent, per alert group,
//! so that the relay re-sends no more than Alertmanager itself would (its
//! notification log, `DedupStage.needsUpdate`): a notification is forwarded
//! to such a receiver when it has firing alerts the receiver was not sent
//! yet, or when nothing at all changed in the group (Alertmanager's
//! `repeat_interval`); not when the only change is that some alerts resolved,
//! or that alerts the receiver's conditions do not select came or went.
//!
//! The state is durable (in the spool, written in the same commit as the
//! deliveries it decided) and bounded: entries not updated for `RETENTION`
//! (Alertmanager's default `--data.retention`, 120h) are forgotten, and at
//! most `MAX_ENTRIES` are kept (the oldest go first).

use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::alert::LabelSet;
use crate::spool::Op;
use crate::sync::lock;

/// How long an entry is kept without an update.
pub const RETENTION_MS: u64 = 120 * 3600 * 1000;
/// Entries kept at most.
pub const MAX_ENTRIES: usize = 100_000;

/// An alert's identity: its label set, as Alertmanager's fingerprint.
pub fn alert_hash(labels: &LabelSet) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    for (name, value) in labels {
        name.hash(&mut hasher);
        value.hash(&mut hasher);
    }
    hasher.finish()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Firing alerts last sent (per receiver), or last seen in the group (the
    /// group's own entry).
    pub firing: BTreeSet<u64>,
    pub at_ms: u64,
}

/// The group's own entry has no receiver.
fn key(receiver: &str, group_key: &str) -> String {
    format!("{receiver}\u{0}{group_key}")
}

/// What one notification brings to one `send_resolved: false` receiver.
pub struct Seen<'a> {
    pub receiver: &'a str,
    /// Firing alerts its conditions select.
    pub firing: BTreeSet<u64>,
    /// Whether alerts its conditions select resolved in this notification.
    pub resolved: bool,
}

#[derive(Default)]
pub struct NotifyLog {
    entries: Mutex<HashMap<String, Entry>>,
}

/// Whether to forward: Alertmanager's rule, with the group's previous firing
/// set (`group_before`) standing in for its repeat timer.
pub fn should_send(
    before: Option<&Entry>,
    firing: &BTreeSet<u64>,
    resolved: bool,
    group_before: Option<&BTreeSet<u64>>,
    group_now: &BTreeSet<u64>,
) -> bool {
    let Some(before) = before else { return !firing.is_empty() };
    if !firing.is_subset(&before.firing) {
        return true;
    }
    if firing.is_empty() || resolved {
        return false;
    }
    // Nothing changed for this receiver; forward only if nothing changed in the
    // whole group either: then Alertmanager sent it as a repeat.
    group_before == Some(group_now)
}

impl NotifyLog {
    /// The log as stored, less what expired (whose removal is returned).
    pub fn load(stored: Vec<(String, Vec<u8>)>, now_ms: u64) -> (NotifyLog, Vec<Op>) {
        let mut entries = HashMap::new();
        let mut expired = Vec::new();
        for (key, value) in stored {
            match serde_json::from_slice::<Entry>(&value) {
                Ok(e) if now_ms.saturating_sub(e.at_ms) <= RETENTION_MS => {
                    entries.insert(key, e);
                }
                _ => expired.push(Op::ForgetNotified { key }),
            }
        }
        (NotifyLog { entries: Mutex::new(entries) }, expired)
    }

    /// Decides, for each receiver, whether this notification goes to it, and
    /// returns the log's updates to commit with the deliveries.
    pub fn decide(
        &self,
        group_key: &str,
        group_firing: BTreeSet<u64>,
        seen: &[Seen<'_>],
        now_ms: u64,
    ) -> (Vec<bool>, Vec<Op>) {
        let mut entries = lock(&self.entries);
        let group = key("", group_key);
        let group_before = entries.get(&group).map(|e| e.firing.clone());
        let mut ops = Vec::new();
        let mut decisions = Vec::with_capacity(seen.len());
        for s in seen {
            let k = key(s.receiver, group_key);
            let before = entries.get(&k);
            let send = should_send(before, &s.firing, s.resolved, group_before.as_ref(), &group_firing);
            // Alertmanager logs what it notified, and an all-resolved group.
            let log = send || (s.firing.is_empty() && before.is_some_and(|b| !b.firing.is_empty()));
            if log {
                let entry = Entry { firing: s.firing.clone(), at_ms: now_ms };
                ops.push(Op::Notified { key: k.clone(), entry: serde_json::to_vec(&entry).unwrap_or_default() });
                entries.insert(k, entry);
            }
            decisions.push(send);
        }
        let entry = Entry { firing: group_firing, at_ms: now_ms };
        ops.push(Op::Notified { key: group.clone(), entry: serde_json::to_vec(&entry).unwrap_or_default() });
        entries.insert(group, entry);
        if entries.len() > MAX_ENTRIES {
            // Evicted in one batch down to 90% of the cap, so that the sort is
            // paid once per tenth of the cap, not on every notification.
            let mut by_age: Vec<(u64, String)> = entries.iter().map(|(k, e)| (e.at_ms, k.clone())).collect();
            by_age.sort_unstable();
            let excess = entries.len() - MAX_ENTRIES * 9 / 10;
            for (_, k) in by_age.into_iter().take(excess) {
                entries.remove(&k);
                ops.push(Op::ForgetNotified { key: k });
            }
        }
        (decisions, ops)
    }

    pub fn len(&self) -> usize {
        lock(&self.entries).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[u64]) -> BTreeSet<u64> {
        v.iter().copied().collect()
    }

    fn entry(v: &[u64]) -> Entry {
        Entry { firing: set(v), at_ms: 0 }
    }

    #[test]
    fn alertmanagers_rule() {
        let g = set(&[1, 2]);
        // First notification: only with something firing.
        assert!(should_send(None, &set(&[1]), false, None, &g));
        assert!(!should_send(None, &set(&[]), true, None, &g));
        // A new firing alert: sent.
        assert!(should_send(Some(&entry(&[1])), &set(&[1, 2]), false, Some(&set(&[1])), &g));
        // One of two resolved, the other still firing: not sent again.
        assert!(!should_send(Some(&entry(&[1, 2])), &set(&[1]), true, Some(&set(&[1, 2])), &set(&[1])));
        // All resolved: nothing to send.
        assert!(!should_send(Some(&entry(&[1, 2])), &set(&[]), true, Some(&set(&[1, 2])), &set(&[])));
        // Only alerts this receiver does not select changed: not sent.
        assert!(!should_send(Some(&entry(&[1])), &set(&[1]), false, Some(&set(&[1])), &set(&[1, 9])));
        // Nothing changed at all: Alertmanager's repeat, sent.
        assert!(should_send(Some(&entry(&[1])), &set(&[1]), false, Some(&set(&[1, 9])), &set(&[1, 9])));
        // After all resolved, the group firing again is a first notification.
        assert!(should_send(Some(&entry(&[])), &set(&[1]), false, Some(&set(&[])), &set(&[1])));
    }

    #[test]
    fn past_the_cap_the_oldest_go_in_one_batch() {
        let stored: Vec<(String, Vec<u8>)> = (0..MAX_ENTRIES as u64)
            .map(|i| (format!("r\u{0}g{i}"), serde_json::to_vec(&Entry { firing: set(&[1]), at_ms: i }).unwrap()))
            .collect();
        let (log, _) = NotifyLog::load(stored, 0);
        let seen = [Seen { receiver: "r", firing: set(&[1]), resolved: false }];
        let (_, ops) = log.decide("new", set(&[1]), &seen, MAX_ENTRIES as u64);
        let forgotten: Vec<&str> = ops
            .iter()
            .filter_map(|op| match op {
                Op::ForgetNotified { key } => Some(key.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(log.len(), MAX_ENTRIES * 9 / 10);
        assert_eq!(forgotten.len(), MAX_ENTRIES + 2 - MAX_ENTRIES * 9 / 10);
        assert_eq!(forgotten[0], "r\u{0}g0", "the oldest first");
        // The next notification evicts nothing.
        let (_, ops) = log.decide("newer", set(&[1]), &seen, MAX_ENTRIES as u64 + 1);
        assert!(ops.iter().all(|op| !matches!(op, Op::ForgetNotified { .. })));
    }

    #[test]
    fn decisions_are_logged_and_survive_a_reload() {
        let log = NotifyLog::default();
        let seen = |firing: &[u64], resolved| vec![Seen { receiver: "q", firing: set(firing), resolved }];
        let (d, ops) = log.decide("g", set(&[1, 2]), &seen(&[1, 2], false), 10);
        assert_eq!(d, [true]);
        assert_eq!(ops.len(), 2, "the receiver's entry and the group's");
        let stored: Vec<(String, Vec<u8>)> = ops
            .into_iter()
            .filter_map(|op| match op {
                Op::Notified { key, entry } => Some((key, entry)),
                _ => None,
            })
            .collect();
        // A restart: the same decision as without one.
        let (reloaded, expired) = NotifyLog::load(stored.clone(), 20);
        assert!(expired.is_empty());
        let (d, _) = reloaded.decide("g", set(&[1]), &seen(&[1], true), 30);
        assert_eq!(d, [false], "one resolved, the other still firing: nothing new to send");
        // Expired entries are forgotten at load, and their removal returned.
        let (old, expired) = NotifyLog::load(stored, 10 + RETENTION_MS + 1);
        assert!(old.is_empty());
        assert_eq!(expired.len(), 2);
    }
}
