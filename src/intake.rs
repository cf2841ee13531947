//! The webhook use case: a payload in, durable deliveries out. Admission
//! (spool healthy and not full), parsing, counting, routing, committing. The
//! HTTP layer only reads the request and maps `IntakeError` to a status.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use crate::alert::{Notification, PayloadError, Status};
use crate::clock::now_ms;
use crate::conditions::first_failing;
use crate::delivery::{Dispatcher, NewDelivery};
use crate::metrics::Metrics;
use crate::notify_log::{alert_hash, NotifyLog, Seen};
use crate::reasons::FilterReason;
use crate::route::{route, Routed};
use crate::spool::{Op, Spool, SpoolError};

/// Why a payload was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// The payload is not one the relay reads (400, not retried by Alertmanager).
    #[error("invalid payload: {0}")]
    Invalid(#[from] PayloadError),
    /// The spool holds `max_pending` deliveries (503: Alertmanager retries).
    #[error("spool full: {0} deliveries pending")]
    Full(usize),
    /// The spool cannot write now (503: Alertmanager retries).
    #[error("spool cannot write (disk full or I/O error); retry later")]
    Storage(#[source] Option<SpoolError>),
}

/// The last notification each receiver with a template got, as routed to it
/// (before rendering): what the console's live preview renders by default.
#[derive(Debug, Default)]
pub struct LastSeen(std::sync::Mutex<HashMap<String, Arc<Vec<u8>>>>);

/// Larger notifications are not kept for previews.
const LAST_SEEN_MAX_BYTES: usize = 256 * 1024;

impl LastSeen {
    fn remember(&self, receiver: &str, routed: Vec<u8>) {
        if routed.len() <= LAST_SEEN_MAX_BYTES {
            crate::sync::lock(&self.0).insert(receiver.to_string(), Arc::new(routed));
        }
    }

    pub fn forget(&self, receiver: &str) {
        crate::sync::lock(&self.0).remove(receiver);
    }

    pub fn get(&self, receiver: &str) -> Option<Arc<Vec<u8>>> {
        crate::sync::lock(&self.0).get(receiver).cloned()
    }
}

/// Accepts one webhook body: returns the number of deliveries made durable.
pub async fn accept(
    body: &[u8],
    max_pending: usize,
    spool: &Spool,
    dispatcher: &Dispatcher,
    metrics: &Metrics,
    log: &NotifyLog,
    last: &LastSeen,
) -> Result<usize, IntakeError> {
    if spool.problem().is_some() {
        return Err(IntakeError::Storage(None));
    }
    if dispatcher.pending() >= max_pending {
        return Err(IntakeError::Full(max_pending));
    }
    let notification = Notification::parse(body)?;
    let firing = notification.alerts.iter().filter(|a| a.status == Status::Firing).count();
    let received = &metrics.alerts_received;
    received.with_label_values(&[Status::Firing.as_str()]).inc_by(firing as u64);
    received.with_label_values(&[Status::Resolved.as_str()]).inc_by((notification.alerts.len() - firing) as u64);
    let receivers = dispatcher.receivers();
    let mut routed = route(&notification, &receivers);
    let logged = withhold_repeats(&notification, &mut routed, log);
    let mut deliveries = Vec::new();
    for routed in routed {
        let name = routed.receiver.name.as_str();
        if let Some(m) = dispatcher.metrics(name) {
            m.alerts_matched.inc_by(routed.matched as u64);
            for reason in FilterReason::ALL {
                m.alerts_filtered(reason).inc_by(routed.filtered[reason as usize] as u64);
            }
        }
        if let Some(forwarded) = routed.body {
            // The body the target gets is made now, so that every attempt (and
            // a retried dead letter) sends the same bytes.
            let (body, template_error) = match routed.receiver.payload.render(&forwarded, name) {
                Ok(Cow::Borrowed(_)) => (forwarded, None),
                Ok(Cow::Owned(rendered)) => {
                    // Rendered: the notification itself is needed no more, but
                    // by the live preview.
                    last.remember(name, forwarded);
                    (rendered, None)
                }
                Err(e) => {
                    last.remember(name, forwarded.clone());
                    (forwarded, Some(e.to_string()))
                }
            };
            deliveries.push(NewDelivery {
                receiver: name.to_string(),
                alerts: u32::try_from(routed.matched).unwrap_or(u32::MAX),
                body,
                template_error,
            });
        }
    }
    dispatcher.accept(notification.group_key.as_deref().unwrap_or_default(), deliveries, logged).await.map_err(|e| {
        log::error!("webhook: {e}; answered 503 so that Alertmanager retries");
        IntakeError::Storage(Some(e))
    })
}

/// For `send_resolved: false` receivers, withholds what Alertmanager's own
/// notification log would not send again (see `notify_log`): their alerts are
/// counted as filtered for `resolved`. Returns the log's updates, to be
/// committed with the deliveries.
fn withhold_repeats(notification: &Notification, routed: &mut [Routed], log: &NotifyLog) -> Vec<Op> {
    let Some(group_key) = notification.group_key.as_deref().filter(|k| !k.is_empty()) else {
        return Vec::new();
    };
    let mut seen = Vec::new();
    let mut which = Vec::new();
    for (i, r) in routed.iter().enumerate() {
        let receiver = &r.receiver;
        if receiver.send_resolved || !receiver.enabled {
            continue;
        }
        let selected = notification.alerts.iter().filter(|a| first_failing(&receiver.conditions, &a.labels).is_none());
        let (mut firing, mut resolved) = (BTreeSet::new(), false);
        for alert in selected {
            match alert.status {
                Status::Firing => {
                    firing.insert(alert_hash(&alert.labels));
                }
                Status::Resolved => resolved = true,
            }
        }
        seen.push(Seen { receiver: &receiver.name, firing, resolved });
        which.push(i);
    }
    if seen.is_empty() {
        return Vec::new();
    }
    let group_firing =
        notification.alerts.iter().filter(|a| a.status == Status::Firing).map(|a| alert_hash(&a.labels)).collect();
    let (decisions, ops) = log.decide(group_key, group_firing, &seen, now_ms());
    for (i, send) in which.into_iter().zip(decisions) {
        let r = &mut routed[i];
        if !send && r.body.is_some() {
            log::debug!("receiver {}: nothing new for send_resolved: false; not sent again", r.receiver.name);
            r.body = None;
            r.filtered[FilterReason::Resolved as usize] += r.matched;
            r.matched = 0;
        }
    }
    ops
}
