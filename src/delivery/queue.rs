//! The pending deliveries of one receiver, as a pure state machine: due-time
//! order, one delivery in flight per alert group, and supersession (a newer
//! notification of a group replaces an older one still waiting; an older one
//! that fails while a newer one waits is dropped, not retried). No I/O, no
//! clock: the caller passes `now` and acts on what comes back.

use std::collections::{BTreeSet, HashMap};

use crate::spool::DeliveryMeta;

struct Entry {
    meta: DeliveryMeta,
    /// A newer notification of the group arrived while this one was in flight:
    /// if the attempt fails it is dropped rather than retried.
    obsolete: bool,
    /// Taken back while in flight (its commit failed): forgotten when the
    /// attempt ends, whatever its outcome.
    retracted: bool,
}

#[derive(Default)]
struct Group {
    in_flight: Option<u64>,
    pending: Option<u64>,
}

/// What a worker should do next.
#[derive(Debug, PartialEq)]
pub enum Step {
    Attempt(u64, DeliveryMeta),
    WaitUntil(u64),
    Idle,
}

/// How an attempt ended, as far as the queue cares.
pub enum Finish {
    /// Delivered, dropped or dead-lettered: no longer pending.
    Gone { dead: bool },
    /// To be tried again, with this state.
    Retry(DeliveryMeta),
}

/// Deliveries with a group key are serialised per group: at most one in
/// flight, and only the newest waits.
#[derive(Default)]
pub struct QueueState {
    entries: HashMap<u64, Entry>,
    due: BTreeSet<(u64, u64)>,
    groups: HashMap<String, Group>,
    dead: usize,
    /// Deliveries added before their commit was durable (`add_tentative`),
    /// with the ids they superseded meanwhile: those leave the spool only
    /// once that commit is durable (`confirm`), and come back if it fails
    /// (`retract`). Kept after the delivery itself is gone (delivered, or
    /// superseded by a newer one).
    tentative: HashMap<u64, Vec<u64>>,
}

impl QueueState {
    /// Pending deliveries (waiting or in flight).
    pub fn pending(&self) -> usize {
        self.entries.len()
    }

    /// Dead letters of this receiver.
    pub fn dead(&self) -> usize {
        self.dead
    }

    /// One more or one fewer dead letter (loaded, requeued or deleted).
    pub fn count_dead(&mut self, more: bool) {
        self.dead = if more { self.dead + 1 } else { self.dead.saturating_sub(1) };
    }

    /// Adds a pending delivery; returns the ids it supersedes (possibly its own,
    /// when a newer one of its group is already here) for the caller to
    /// remove from the spool. Those a tentative delivery supersedes are not
    /// returned: they wait for its commit (`confirm`, `retract`).
    pub fn add(&mut self, id: u64, meta: DeliveryMeta) -> Vec<u64> {
        self.insert(id, meta, false)
    }

    /// Adds a pending delivery whose commit is not durable yet; as `add`.
    pub fn add_tentative(&mut self, id: u64, meta: DeliveryMeta) -> Vec<u64> {
        self.insert(id, meta, true)
    }

    /// A tentative delivery's commit is durable: what it superseded, for
    /// the caller to remove from the spool.
    pub fn confirm(&mut self, id: u64) -> Vec<u64> {
        self.tentative.remove(&id).unwrap_or_default()
    }

    /// `old` is superseded by `by`: returned for removal, or kept with `by`
    /// while `by` is tentative.
    fn supersede(tentative: &mut HashMap<u64, Vec<u64>>, old: u64, by: u64) -> Vec<u64> {
        match tentative.get_mut(&by) {
            Some(kept) => {
                kept.push(old);
                Vec::new()
            }
            None => vec![old],
        }
    }

    fn insert(&mut self, id: u64, meta: DeliveryMeta, tentative: bool) -> Vec<u64> {
        if tentative {
            self.tentative.entry(id).or_default();
        }
        let mut superseded = Vec::new();
        if !meta.group_key.is_empty() {
            let group = self.groups.entry(meta.group_key.clone()).or_default();
            // One taken back (`retract`) is no newer notification.
            let newer_flying = group.in_flight.filter(|f| *f > id && self.entries.get(f).is_some_and(|e| !e.retracted));
            if let Some(newer) = group.pending.filter(|p| *p > id).or(newer_flying) {
                return Self::supersede(&mut self.tentative, id, newer);
            }
            if let Some(older) = group.pending.replace(id) {
                if let Some(old) = self.entries.remove(&older) {
                    self.due.remove(&(old.meta.next_due_ms, older));
                }
                superseded.extend(Self::supersede(&mut self.tentative, older, id));
            }
            if let Some(flying) = group.in_flight {
                if let Some(e) = self.entries.get_mut(&flying) {
                    e.obsolete = true;
                }
            }
        }
        self.due.insert((meta.next_due_ms, id));
        self.entries.insert(id, Entry { meta, obsolete: false, retracted: false });
        superseded
    }

    /// Whether any delivery waits for an attempt, due now or later (or
    /// behind its group's one in flight): then another worker should look.
    pub fn waiting(&self) -> bool {
        !self.due.is_empty()
    }

    /// The next delivery due at `now` whose group has nothing in flight.
    pub fn take(&mut self, now: u64) -> Step {
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

    /// Takes back a tentative delivery whose commit failed: one waiting is
    /// gone at once, one in flight when its attempt ends, and a delivery of
    /// its group in flight that it made obsolete is no longer. Returns what
    /// it superseded, for the caller to add back from the spool.
    pub fn retract(&mut self, id: u64) -> Vec<u64> {
        let superseded = self.tentative.remove(&id).unwrap_or_default();
        let Some(entry) = self.entries.get_mut(&id) else { return superseded };
        let key = entry.meta.group_key.clone();
        let due = entry.meta.next_due_ms;
        let group = self.groups.get_mut(&key);
        if group.as_ref().is_some_and(|g| g.in_flight == Some(id)) {
            entry.retracted = true;
            return superseded;
        }
        self.entries.remove(&id);
        self.due.remove(&(due, id));
        if let Some(group) = group {
            if group.pending == Some(id) {
                group.pending = None;
                if let Some(flying) = group.in_flight.and_then(|f| self.entries.get_mut(&f)) {
                    flying.obsolete = false;
                }
            }
            if group.in_flight.is_none() && group.pending.is_none() {
                self.groups.remove(&key);
            }
        }
        superseded
    }

    /// Records the end of an attempt. True when the delivery was superseded
    /// meanwhile: the caller removes it from the spool instead of retrying.
    pub fn finish(&mut self, id: u64, how: Finish) -> bool {
        let Some(entry) = self.entries.remove(&id) else {
            // Dropped meanwhile (its receiver left).
            return false;
        };
        let key = entry.meta.group_key.clone();
        let superseded = match how {
            _ if entry.retracted => false,
            Finish::Gone { dead } => {
                if dead {
                    self.dead += 1;
                }
                false
            }
            Finish::Retry(_) if entry.obsolete => {
                // Superseded by the group's newer one waiting: kept with it
                // while that one is tentative.
                let newer = self.groups.get(&key).and_then(|g| g.pending);
                newer.is_none_or(|newer| !Self::supersede(&mut self.tentative, id, newer).is_empty())
            }
            Finish::Retry(meta) => {
                self.due.insert((meta.next_due_ms, id));
                if let Some(group) = self.groups.get_mut(&key) {
                    group.pending = Some(id);
                }
                self.entries.insert(id, Entry { meta, obsolete: false, retracted: false });
                false
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
        superseded
    }

    /// Forgets every pending delivery; their ids.
    pub fn clear(&mut self) -> Vec<u64> {
        self.due.clear();
        self.groups.clear();
        self.tentative.clear();
        self.entries.drain().map(|(id, _)| id).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(group: &str, due: u64) -> DeliveryMeta {
        DeliveryMeta { next_due_ms: due, ..DeliveryMeta::new("r".into(), group.into(), 1, 0) }
    }

    /// A queue whose delivery 1, of group `g`, is in flight.
    fn one_in_flight() -> QueueState {
        let mut q = QueueState::default();
        q.add(1, meta("g", 0));
        assert!(matches!(q.take(0), Step::Attempt(1, _)));
        q
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
        assert_eq!(q.pending(), 2, "in flight still counts as pending");
    }

    #[test]
    fn a_due_time_equal_to_now_is_due() {
        let mut q = QueueState::default();
        q.add(1, meta("", 10));
        assert!(matches!(q.take(10), Step::Attempt(1, _)));
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
        assert_eq!(q.pending(), 1);
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
        assert!(q.finish(1, Finish::Retry(meta("g", 100))));
        assert!(matches!(q.take(0), Step::Attempt(2, _)));
        assert!(!q.finish(2, Finish::Gone { dead: false }));
        assert!(!q.finish(10, Finish::Gone { dead: true }));
        assert!(!q.finish(10, Finish::Gone { dead: true }), "unknown: nothing happens");
        assert_eq!(q.dead(), 1);
        assert!(q.entries.is_empty() && q.due.is_empty() && q.groups.is_empty());
    }

    #[test]
    fn a_delivered_older_one_leaves_the_newer_pending() {
        let mut q = one_in_flight();
        q.add(2, meta("g", 0));
        assert!(!q.finish(1, Finish::Gone { dead: false }));
        assert!(matches!(q.take(0), Step::Attempt(2, _)));
    }

    #[test]
    fn an_older_notification_arriving_while_a_newer_one_flies_is_superseded_at_once() {
        let mut q = QueueState::default();
        q.add(2, meta("g", 0));
        assert!(matches!(q.take(0), Step::Attempt(2, _)));
        assert_eq!(q.add(1, meta("g", 0)), vec![1], "older than the one in flight");
        assert_eq!(q.take(0), Step::Idle);
        assert_eq!(q.pending(), 1);
    }

    #[test]
    fn the_group_is_kept_while_its_next_delivery_waits() {
        let mut q = one_in_flight();
        q.add(2, meta("g", 0));
        // 1 delivered: 2 still waits in the group, which must not be forgotten...
        assert!(!q.finish(1, Finish::Gone { dead: false }));
        assert!(matches!(q.take(0), Step::Attempt(2, _)));
        // ...so a third one waits for 2 instead of flying beside it, and 2,
        // failing now, is superseded rather than retried.
        assert!(q.add(3, meta("g", 0)).is_empty());
        assert_eq!(q.take(0), Step::Idle, "one in flight per group");
        assert!(q.finish(2, Finish::Retry(meta("g", 0))));
        assert!(matches!(q.take(0), Step::Attempt(3, _)));
    }

    #[test]
    fn a_waiting_delivery_taken_back_leaves_its_group_as_it_was() {
        let mut q = one_in_flight();
        assert!(q.add_tentative(2, meta("g", 0)).is_empty());
        assert!(q.retract(2).is_empty());
        assert!(q.retract(2).is_empty());
        assert_eq!(q.pending(), 1);
        // 1 is no longer obsolete: failing, it is retried, not dropped.
        assert!(!q.finish(1, Finish::Retry(meta("g", 5))));
        assert!(matches!(q.take(5), Step::Attempt(1, _)));
        assert!(!q.finish(1, Finish::Gone { dead: false }));
        assert!(q.entries.is_empty() && q.due.is_empty() && q.groups.is_empty() && q.tentative.is_empty());
    }

    #[test]
    fn a_delivery_taken_back_in_flight_ends_with_its_attempt_and_supersedes_nothing() {
        let mut q = QueueState::default();
        q.add(1, meta("g", 0));
        assert!(q.add_tentative(2, meta("g", 0)).is_empty(), "1 waits for 2's commit");
        assert!(matches!(q.take(0), Step::Attempt(2, _)));
        assert_eq!(q.retract(2), vec![1]);
        assert_eq!(q.pending(), 1, "in flight until its attempt ends");
        // What 2 superseded comes back, and waits for 2's attempt.
        assert!(q.add(1, meta("g", 0)).is_empty());
        assert_eq!(q.take(0), Step::Idle, "one in flight per group");
        assert!(!q.finish(2, Finish::Retry(meta("g", 0))), "dropped, not retried nor superseded");
        assert!(matches!(q.take(0), Step::Attempt(1, _)));
        assert!(!q.finish(1, Finish::Gone { dead: false }));
        assert_eq!(q.dead(), 0);
        assert!(q.entries.is_empty() && q.due.is_empty() && q.groups.is_empty());
        // A dead-lettered attempt of one taken back is not counted.
        q.add_tentative(3, meta("g", 0));
        assert!(matches!(q.take(0), Step::Attempt(3, _)));
        q.retract(3);
        assert!(!q.finish(3, Finish::Gone { dead: true }));
        assert_eq!(q.dead(), 0);
        assert!(q.tentative.is_empty());
    }

    /// What a tentative delivery supersedes (waiting, failing in flight, or
    /// arriving late) is kept with it until its commit is durable or has
    /// failed, and passed on along a chain of tentative ones.
    #[test]
    fn what_a_tentative_delivery_supersedes_waits_for_its_commit() {
        let mut q = one_in_flight();
        q.add(5, meta("g", 0));
        assert!(q.add_tentative(10, meta("g", 0)).is_empty());
        assert!(q.add(4, meta("g", 0)).is_empty(), "older than a tentative one: kept with it");
        // 1 fails in flight, obsolete: kept with 10, not removed.
        assert!(!q.finish(1, Finish::Retry(meta("g", 0))));
        assert!(q.add_tentative(11, meta("g", 0)).is_empty());
        assert_eq!(q.pending(), 1);
        // 10's commit fails: what it kept comes back, and 11 (newer,
        // tentative too) keeps it in turn.
        let mut back = q.retract(10);
        back.sort_unstable();
        assert_eq!(back, [1, 4, 5]);
        for old in back {
            assert!(q.add(old, meta("g", 0)).is_empty());
        }
        // 11's commit is durable: all of them go, 10 too (never written).
        let mut gone = q.confirm(11);
        gone.sort_unstable();
        assert_eq!(gone, [1, 4, 5, 10]);
        assert!(q.tentative.is_empty());
        assert!(matches!(q.take(0), Step::Attempt(11, _)));
        assert_eq!(q.take(0), Step::Idle);
        // A durable delivery superseded at once by a newer durable one is
        // returned, as ever; a tentative one that a durable newer one
        // supersedes goes at once too.
        assert_eq!(q.add(7, meta("g", 0)), vec![7]);
        assert_eq!(q.add_tentative(8, meta("g", 0)), vec![8]);
        assert!(q.confirm(8).is_empty());
    }

    #[test]
    fn retried_delivery_comes_back_at_its_due_time() {
        let mut q = one_in_flight();
        assert!(!q.finish(1, Finish::Retry(meta("g", 500))));
        assert_eq!(q.take(100), Step::WaitUntil(500));
        assert!(matches!(q.take(500), Step::Attempt(1, _)));
    }

    #[test]
    fn deliveries_without_a_group_are_never_superseded() {
        let mut q = QueueState::default();
        assert!(q.add(1, meta("", 0)).is_empty());
        assert!(q.add(2, meta("", 0)).is_empty());
        assert!(matches!(q.take(0), Step::Attempt(1, _)));
        assert!(matches!(q.take(0), Step::Attempt(2, _)), "no group: both may fly at once");
        assert!(!q.finish(1, Finish::Retry(meta("", 5))));
        assert_eq!(q.pending(), 2);
    }

    #[test]
    fn clear_forgets_everything_but_dead_letters() {
        let mut q = QueueState::default();
        q.add(1, meta("g", 0));
        q.add(2, meta("h", 0));
        q.count_dead(true);
        let mut ids = q.clear();
        ids.sort_unstable();
        assert_eq!(ids, [1, 2]);
        assert_eq!((q.pending(), q.dead()), (0, 1));
        assert_eq!(q.take(0), Step::Idle);
        q.count_dead(false);
        q.count_dead(false);
        assert_eq!(q.dead(), 0);
    }
}
