//! The Prometheus registry and every metric of the contract.

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::reasons::{DeadReason, FailureReason, FilterReason};

pub struct Metrics {
    registry: Registry,
    pub webhook_requests: IntCounterVec,
    pub alerts_received: IntCounterVec,
    pub alerts_matched: IntCounterVec,
    pub alerts_filtered: IntCounterVec,
    pub notifications: IntCounterVec,
    pub delivered: IntCounterVec,
    pub failed: IntCounterVec,
    pub superseded: IntCounterVec,
    pub requests: IntCounterVec,
    pub requests_failed: IntCounterVec,
    pub request_duration: HistogramVec,
    pub delivery_latency: HistogramVec,
    pub spool_pending: IntGaugeVec,
    pub dead_letters: IntGaugeVec,
    pub spool_commit_duration: Histogram,
    pub spool_commit_requests: Histogram,
    pub spool_deferred_commits: IntCounter,
    pub spool_early_starts: IntCounter,
    pub reload_successful: IntGauge,
    /// 1 while the listener's certificate files last read well (or no TLS).
    pub tls_reload_successful: IntGauge,
    pub reload_timestamp: Gauge,
    pub spool_healthy: IntGauge,
    pub orphaned: IntGauge,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition");
    registry.register(Box::new(c.clone())).expect("metric registered once");
    c
}

fn histogram(registry: &Registry, name: &str, help: &str, labels: &[&str], buckets: Vec<f64>) -> HistogramVec {
    let h =
        HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels).expect("static metric definition");
    registry.register(Box::new(h.clone())).expect("metric registered once");
    h
}

fn plain_histogram(registry: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("static metric definition");
    registry.register(Box::new(h.clone())).expect("metric registered once");
    h
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition");
    registry.register(Box::new(g.clone())).expect("metric registered once");
    g
}

fn int_gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("static metric definition");
    registry.register(Box::new(g.clone())).expect("metric registered once");
    g
}

const LATENCY_BUCKETS: [f64; 14] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
const DELIVERY_BUCKETS: [f64; 16] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 1800.0, 7200.0];
/// Fine from 0.1 to 10 ms, where a disk's fsync lies, so that quantiles read
/// off the histogram can be set beside the disk's own (scripts/bench).
const COMMIT_BUCKETS: [f64; 24] = [
    0.0001, 0.0002, 0.0003, 0.0004, 0.0005, 0.0006, 0.0008, 0.001, 0.00125, 0.0015, 0.002, 0.0025, 0.003, 0.004, 0.005,
    0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
const COMMIT_REQUEST_BUCKETS: [f64; 12] = [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new_custom(Some("alert_relay".into()), None).expect("valid prefix");
        let m = Metrics {
            webhook_requests: counter(
                &r,
                "webhook_requests_total",
                "Requests to /webhook by HTTP status code.",
                &["code"],
            ),
            alerts_received: counter(
                &r,
                "alerts_received_total",
                "Alerts received on /webhook by status.",
                &["status"],
            ),
            alerts_matched: counter(&r, "alerts_matched_total", "Alerts forwarded to a receiver.", &["receiver"]),
            alerts_filtered: counter(
                &r,
                "alerts_filtered_total",
                "Alerts not forwarded to a receiver, by reason.",
                &["receiver", "reason"],
            ),
            notifications: counter(&r, "notifications_total", "Deliveries created.", &["receiver"]),
            delivered: counter(&r, "notifications_delivered_total", "Deliveries the target accepted.", &["receiver"]),
            failed: counter(
                &r,
                "notifications_failed_total",
                "Deliveries dead-lettered, by reason.",
                &["receiver", "reason"],
            ),
            superseded: counter(
                &r,
                "notifications_superseded_total",
                "Pending deliveries replaced by a newer notification of their group.",
                &["receiver"],
            ),
            requests: counter(&r, "notification_requests_total", "HTTP attempts to targets.", &["receiver"]),
            requests_failed: counter(
                &r,
                "notification_requests_failed_total",
                "HTTP attempts that failed, by reason.",
                &["receiver", "reason"],
            ),
            request_duration: histogram(
                &r,
                "notification_request_duration_seconds",
                "Duration of one HTTP attempt.",
                &["receiver"],
                LATENCY_BUCKETS.to_vec(),
            ),
            delivery_latency: histogram(
                &r,
                "notification_delivery_latency_seconds",
                "Time from accepting a notification to its delivery.",
                &["receiver"],
                DELIVERY_BUCKETS.to_vec(),
            ),
            spool_pending: gauge_vec(&r, "spool_pending", "Deliveries waiting in the spool.", &["receiver"]),
            dead_letters: gauge_vec(&r, "dead_letters", "Dead-lettered deliveries kept in the spool.", &["receiver"]),
            spool_commit_duration: plain_histogram(
                &r,
                "spool_commit_duration_seconds",
                "Duration of one durable (fsynced) spool commit.",
                COMMIT_BUCKETS.to_vec(),
            ),
            spool_commit_requests: plain_histogram(
                &r,
                "spool_commit_requests",
                "Waiting requests (webhooks, recorded attempts) made durable by one spool commit.",
                COMMIT_REQUEST_BUCKETS.to_vec(),
            ),
            spool_deferred_commits: {
                let c = IntCounter::new(
                    "spool_deferred_commits_total",
                    "Spool commits of removals nobody waits for, made without an fsync of their own.",
                )
                .expect("static metric definition");
                r.register(Box::new(c.clone())).expect("metric registered once");
                c
            },
            spool_early_starts: {
                let c = IntCounter::new(
                    "spool_early_starts_total",
                    "Webhook requests whose deliveries were queued before their commit was durable (it took over 2 ms); \
                     the answer still waited for it.",
                )
                .expect("static metric definition");
                r.register(Box::new(c.clone())).expect("metric registered once");
                c
            },
            reload_successful: {
                let g =
                    IntGauge::new("config_last_reload_successful", "Whether the last configuration load succeeded.")
                        .expect("static metric definition");
                r.register(Box::new(g.clone())).expect("metric registered once");
                g
            },
            reload_timestamp: {
                let g = Gauge::new(
                    "config_last_reload_success_timestamp_seconds",
                    "Time of the last successful configuration load.",
                )
                .expect("static metric definition");
                r.register(Box::new(g.clone())).expect("metric registered once");
                g
            },
            tls_reload_successful: {
                let g = int_gauge(
                    &r,
                    "tls_last_reload_successful",
                    "Whether the listener's certificate files last read well (1 without server.tls).",
                );
                g.set(1);
                g
            },
            spool_healthy: int_gauge(&r, "spool_healthy", "1 while the spool accepts writes; 0 after a storage error until it recovers."),
            orphaned: int_gauge(
                &r,
                "orphaned_deliveries",
                "Pending deliveries kept in the spool for receivers not in force; they resume when the receiver is back.",
            ),
            registry: r,
        };
        let build = IntGaugeVec::new(Opts::new("build_info", "alert-relay build; always 1."), &["version"])
            .expect("static metric definition");
        m.registry.register(Box::new(build.clone())).expect("metric registered once");
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        for status in ["firing", "resolved"] {
            m.alerts_received.with_label_values(&[status]);
        }
        #[cfg(target_os = "linux")]
        {
            // The process collector carries no prefix of ours.
            let process = prometheus::process_collector::ProcessCollector::for_self();
            if let Err(e) = prometheus::default_registry().register(Box::new(process)) {
                log::debug!("process collector already registered: {e}");
            }
        }
        m
    }

    /// A receiver's series, each made to exist at 0, as handles: looked up once
    /// when the receiver is configured, not per alert or delivery.
    pub fn receiver(&self, name: &str) -> ReceiverMetrics {
        let with_reasons = |vec: &IntCounterVec, reasons: &[&str]| -> Vec<IntCounter> {
            reasons.iter().map(|reason| vec.with_label_values(&[name, reason])).collect()
        };
        ReceiverMetrics {
            alerts_matched: self.alerts_matched.with_label_values(&[name]),
            alerts_filtered: with_reasons(&self.alerts_filtered, &FilterReason::ALL.map(FilterReason::as_str)),
            notifications: self.notifications.with_label_values(&[name]),
            delivered: self.delivered.with_label_values(&[name]),
            failed: with_reasons(&self.failed, &DeadReason::ALL.map(DeadReason::as_str)),
            superseded: self.superseded.with_label_values(&[name]),
            requests: self.requests.with_label_values(&[name]),
            requests_failed: with_reasons(&self.requests_failed, &FailureReason::ALL.map(FailureReason::as_str)),
            request_duration: self.request_duration.with_label_values(&[name]),
            delivery_latency: self.delivery_latency.with_label_values(&[name]),
            spool_pending: self.spool_pending.with_label_values(&[name]),
            dead_letters: self.dead_letters.with_label_values(&[name]),
        }
    }

    /// Removes every series of a receiver no longer in force.
    pub fn forget_receiver(&self, name: &str) {
        for vec in [&self.alerts_matched, &self.notifications, &self.delivered, &self.superseded, &self.requests] {
            let _ = vec.remove_label_values(&[name]);
        }
        for reason in FilterReason::ALL {
            let _ = self.alerts_filtered.remove_label_values(&[name, reason.as_str()]);
        }
        for reason in DeadReason::ALL {
            let _ = self.failed.remove_label_values(&[name, reason.as_str()]);
        }
        for reason in FailureReason::ALL {
            let _ = self.requests_failed.remove_label_values(&[name, reason.as_str()]);
        }
        let _ = self.request_duration.remove_label_values(&[name]);
        let _ = self.delivery_latency.remove_label_values(&[name]);
        let _ = self.spool_pending.remove_label_values(&[name]);
        let _ = self.dead_letters.remove_label_values(&[name]);
    }

    /// The text exposition of ours plus the process collector's.
    pub fn render(&self) -> String {
        let mut families = self.registry.gather();
        families.extend(prometheus::default_registry().gather());
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
            log::error!("encoding metrics failed: {e}");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// One receiver's series. Reason-labelled ones are indexed by the reason
/// enum's discriminant (the order of its `ALL`).
pub struct ReceiverMetrics {
    pub alerts_matched: IntCounter,
    alerts_filtered: Vec<IntCounter>,
    pub notifications: IntCounter,
    pub delivered: IntCounter,
    failed: Vec<IntCounter>,
    pub superseded: IntCounter,
    pub requests: IntCounter,
    requests_failed: Vec<IntCounter>,
    pub request_duration: Histogram,
    pub delivery_latency: Histogram,
    pub spool_pending: IntGauge,
    pub dead_letters: IntGauge,
}

impl ReceiverMetrics {
    pub fn alerts_filtered(&self, reason: FilterReason) -> &IntCounter {
        &self.alerts_filtered[reason as usize]
    }

    pub fn failed(&self, reason: DeadReason) -> &IntCounter {
        &self.failed[reason as usize]
    }

    pub fn requests_failed(&self, reason: FailureReason) -> &IntCounter {
        &self.requests_failed[reason as usize]
    }

    /// Dead-lettered deliveries, every reason.
    pub fn failed_total(&self) -> u64 {
        self.failed.iter().map(IntCounter::get).sum()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_arrays_follow_the_enums() {
        for (i, r) in FilterReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        for (i, r) in DeadReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        let m = Metrics::new();
        let r = m.receiver("x");
        r.failed(DeadReason::Expired).inc();
        r.requests_failed(FailureReason::Timeout).inc();
        assert_eq!(m.failed.with_label_values(&["x", "expired"]).get(), 1);
        assert_eq!(m.requests_failed.with_label_values(&["x", "timeout"]).get(), 1);
        assert_eq!(r.failed_total(), 1);
    }
}
