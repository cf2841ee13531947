//! The webhook use case: a payload in, durable deliveries out. Admission
//! (spool healthy and not full), parsing, counting, routing, committing. The
//! HTTP layer only reads the request and maps `IntakeError` to a status.

use crate::alert::{Notification, PayloadError, Status};
use crate::delivery::{Dispatcher, NewDelivery};
use crate::metrics::Metrics;
use crate::route::route;
use crate::spool::{Spool, SpoolError};

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

/// Accepts one webhook body: returns the number of deliveries made durable.
pub async fn accept(
    body: &[u8],
    max_pending: usize,
    spool: &Spool,
    dispatcher: &Dispatcher,
    metrics: &Metrics,
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
    let mut deliveries = Vec::new();
    for routed in route(&notification, &receivers) {
        let name = routed.receiver.name.as_str();
        if let Some(m) = dispatcher.metrics(name) {
            m.alerts_matched.inc_by(routed.matched as u64);
            for reason in crate::reasons::FilterReason::ALL {
                m.alerts_filtered(reason).inc_by(routed.filtered[reason as usize] as u64);
            }
        }
        if let Some(forwarded) = routed.body {
            deliveries.push(NewDelivery {
                receiver: name.to_string(),
                alerts: u32::try_from(routed.matched).unwrap_or(u32::MAX),
                body: forwarded,
            });
        }
    }
    dispatcher.accept(notification.group_key.as_deref().unwrap_or_default(), deliveries).await.map_err(|e| {
        log::error!("webhook: {e}; answered 503 so that Alertmanager retries");
        IntakeError::Storage(Some(e))
    })
}
