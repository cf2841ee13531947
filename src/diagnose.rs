//! Diagnosis: Send Test Message and explain. Both answer, besides what they
//! did, whether real alerts would reach a receiver and what would stop them,
//! so that "the test works but no alerts arrive" is explained in one answer.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::alert::{Alert, Extra, LabelSet, Notification, Status};
use crate::conditions::failing;
use crate::conditions::Operator;
use crate::config::Receiver;
use crate::delivery::sender::Target;
use crate::retry::Outcome;
use crate::route::{fates, route, verdict, Fate};

/// What a test message carries beyond the built-in test alert.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestAlert {
    /// Labels added to (or overriding) the test alert's own.
    #[serde(default)]
    pub labels: LabelSet,
    #[serde(default)]
    pub annotations: LabelSet,
    /// `resolved` tests what `send_resolved` does.
    #[serde(default)]
    pub status: Option<Status>,
}

/// The condition that stopped an alert, as configured.
#[derive(Debug, Serialize)]
pub struct ConditionRef {
    /// Position in the receiver's list, from 0 (as in the config file).
    pub index: usize,
    /// As the console numbers it: condition 1 is the first.
    pub number: usize,
    /// The console's wording of the operator ("Includes values").
    pub wording: &'static str,
    pub label: String,
    pub operator: Operator,
    pub values: Option<Vec<String>>,
}

/// The setting that stops an alert at a receiver, in words and as data.
#[derive(Debug, Serialize)]
pub struct StopReason {
    /// `enabled`, `conditions`, `send_resolved` or `max_alerts`.
    pub setting: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub condition: Option<ConditionRef>,
    /// The label's value the condition saw (null: missing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<Option<String>>,
    pub detail: String,
}

/// The answer of Send Test Message.
#[derive(Debug, Serialize)]
pub struct TestReport {
    pub receiver: String,
    pub delivered: bool,
    pub status: Option<u16>,
    pub latency_ms: f64,
    pub error: Option<String>,
    pub enabled: bool,
    pub conditions_pass: bool,
    pub would_deliver: bool,
    /// The first setting that stops real alerts with these labels.
    pub stopped_by: Option<StopReason>,
    /// Every setting that does: a disabled receiver whose conditions also fail
    /// names both.
    pub blocked_by: Vec<StopReason>,
    pub labels: LabelSet,
    pub explanation: String,
    /// The receiver's body format and the body the target got (its first
    /// 64 KiB as text), so the form shows what a real alert would look like.
    pub format: &'static str,
    pub content_type: String,
    pub body: String,
    pub body_bytes: usize,
}

/// How much of a rendered body an answer shows.
const SHOWN_BODY_BYTES: usize = 64 * 1024;

/// A body as text for an answer, cut at `SHOWN_BODY_BYTES`.
pub fn shown_body(body: &[u8]) -> String {
    let mut text = String::from_utf8_lossy(&body[..body.len().min(SHOWN_BODY_BYTES)]).into_owned();
    if body.len() > SHOWN_BODY_BYTES {
        text.push('…');
    }
    text
}

/// One alert at one receiver.
#[derive(Debug, Serialize)]
pub struct AlertFate {
    pub index: usize,
    pub delivered: bool,
    pub stopped_by: Option<StopReason>,
}

/// One receiver's verdict on a notification.
#[derive(Debug, Serialize)]
pub struct ReceiverFate {
    pub receiver: String,
    pub enabled: bool,
    pub delivered: bool,
    pub alerts: Vec<AlertFate>,
    /// Size of the body this receiver would be sent, after its format; absent
    /// when nothing would be sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_bytes: Option<usize>,
    /// The template's error, when it cannot render this notification.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template_error: Option<String>,
}

/// The answer of explain.
#[derive(Debug, Serialize)]
pub struct Explanation {
    pub receivers: Vec<ReceiverFate>,
}

/// What explain is asked about.
pub enum ExplainInput {
    /// A whole webhook payload.
    Payload(Notification),
    /// Alerts by their labels (and status): one given by hand, or the list
    /// Alertmanager's API v2 answers (`amtool alert query -o json`).
    Alerts(Vec<(LabelSet, Option<Status>)>),
}

/// A synthetic Alertmanager v4 notification with one alert.
pub fn test_notification(receiver: &str, test: &TestAlert) -> Notification {
    let mut labels: LabelSet =
        [("alertname".into(), "AlertRelayTestMessage".into()), ("severity".into(), "info".into())].into();
    labels.extend(test.labels.clone());
    let mut annotations: LabelSet = [
        ("summary".into(), "Test message from alert-relay".into()),
        ("description".into(), "Sent by Send Test Message; no alert is firing.".into()),
    ]
    .into();
    annotations.extend(test.annotations.clone());
    let status = test.status.unwrap_or(Status::Firing);
    let now = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    let ends = if status == Status::Resolved { now.clone() } else { "0001-01-01T00:00:00Z".to_string() };
    let alert = Alert::new(
        status,
        labels.clone(),
        annotations.clone(),
        object(json!({
            "startsAt": now,
            "endsAt": ends,
            "generatorURL": "",
            "fingerprint": format!("{:016x}", fastrand::u64(..)),
        })),
    );
    Notification {
        status,
        alerts: vec![alert],
        common_labels: labels,
        common_annotations: annotations,
        truncated_alerts: 0,
        group_key: Some("{}:{alertname=\"AlertRelayTestMessage\"}".into()),
        extra: Extra::from_object(object(json!({
            "receiver": receiver,
            "groupLabels": { "alertname": "AlertRelayTestMessage" },
            "externalURL": "",
            "version": "4",
        }))),
    }
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// What stopped an alert, if anything.
pub fn stop_reason(receiver: &Receiver, labels: &LabelSet, fate: Fate) -> Option<StopReason> {
    let plain = |setting, detail: String| StopReason { setting, condition: None, value: None, detail };
    match fate {
        Fate::Forwarded => None,
        Fate::Disabled => {
            Some(plain("enabled", "the receiver is disabled: no alert is delivered until it is enabled".into()))
        }
        Fate::Resolved => Some(plain("send_resolved", "the alert is resolved and send_resolved is false".into())),
        Fate::MaxAlerts => Some(plain(
            "max_alerts",
            format!("more than max_alerts ({}) alerts passed; this one was cut", receiver.max_alerts),
        )),
        Fate::Condition(i) => Some(condition_stop(receiver, labels, i)),
    }
}

fn condition_stop(receiver: &Receiver, labels: &LabelSet, i: usize) -> StopReason {
    let condition = &receiver.conditions[i];
    let spec = condition.spec();
    let value = labels.get(spec.label.as_str()).map(|v| v.to_string());
    let seen = match &value {
        Some(v) => format!("label {} is {v:?}", spec.label),
        None => format!("label {} is missing", spec.label),
    };
    StopReason {
        setting: "conditions",
        condition: Some(ConditionRef {
            index: i,
            number: i + 1,
            wording: spec.operator.wording(),
            label: spec.label.clone(),
            operator: spec.operator,
            values: spec.values.clone(),
        }),
        value: Some(value),
        detail: format!("condition {} ({condition}) fails: {seen}", i + 1),
    }
}

/// Every setting that stops `alert` at `receiver`, not only the first.
pub fn every_stop(receiver: &Receiver, alert: &Alert) -> Vec<StopReason> {
    let mut stops = Vec::new();
    if !receiver.enabled {
        stops.extend(stop_reason(receiver, &alert.labels, Fate::Disabled));
    }
    for i in failing(&receiver.conditions, &alert.labels) {
        stops.push(condition_stop(receiver, &alert.labels, i));
    }
    if alert.status == Status::Resolved && !receiver.send_resolved {
        stops.extend(stop_reason(receiver, &alert.labels, Fate::Resolved));
    }
    stops
}

/// Sends a test message through `target` now, and says whether real alerts
/// with the same labels would arrive.
pub async fn send_test(target: &Target, test: &TestAlert) -> TestReport {
    let receiver = &target.receiver;
    let notification = test_notification(&receiver.name, test);
    let alert = &notification.alerts[0];
    let fate = verdict(receiver, alert);
    let routed = serde_json::to_vec(&notification).unwrap_or_default();
    let key = format!("test-{:016x}", fastrand::u64(..));
    let payload = &receiver.payload;
    let (attempt, body) = match payload.render(&routed, &receiver.name) {
        Ok(body) => {
            // Shared, not copied, between the attempt and the report.
            let body = bytes::Bytes::from(body.into_owned());
            (target.send(&key, body.clone()).await, body)
        }
        Err(e) => {
            let error = format!("template: {e}; nothing was sent");
            let attempt = crate::delivery::sender::Attempt {
                outcome: Outcome::Permanent { reason: crate::reasons::FailureReason::ClientError },
                status: None,
                error: Some(error),
                latency: std::time::Duration::ZERO,
            };
            (attempt, bytes::Bytes::new())
        }
    };
    let delivered = attempt.outcome == Outcome::Delivered;
    let would_deliver = fate == Fate::Forwarded;
    let stopped_by = stop_reason(receiver, &alert.labels, fate);
    let blocked_by = every_stop(receiver, alert);
    let explanation = if blocked_by.is_empty() {
        "Real alerts with these labels would be delivered to this receiver.".to_string()
    } else {
        let details: Vec<&str> = blocked_by.iter().map(|s| s.detail.as_str()).collect();
        format!(
            "The test message bypasses the receiver's settings, but real alerts with these labels would NOT be \
             delivered: {}.",
            details.join("; and ")
        )
    };
    log::info!(
        "test message to receiver {}: {}",
        receiver.name,
        attempt.error.as_deref().unwrap_or(if delivered { "delivered" } else { "failed" })
    );
    TestReport {
        receiver: receiver.name.clone(),
        delivered,
        status: attempt.status,
        latency_ms: (attempt.latency.as_secs_f64() * 1000.0 * 10.0).round() / 10.0,
        error: attempt.error,
        enabled: receiver.enabled,
        conditions_pass: !blocked_by.iter().any(|s| s.setting == "conditions"),
        would_deliver,
        stopped_by,
        blocked_by,
        labels: alert.labels.clone(),
        explanation,
        format: payload.format.as_str(),
        content_type: payload.content_type.clone(),
        body: shown_body(&body),
        body_bytes: body.len(),
    }
}

/// Every receiver's verdict on every alert of the input.
pub fn explain(input: ExplainInput, receivers: &[std::sync::Arc<Receiver>]) -> Explanation {
    let notification = match input {
        ExplainInput::Payload(n) => n,
        ExplainInput::Alerts(alerts) => {
            let mut n = test_notification("explain", &TestAlert::default());
            n.alerts = alerts
                .into_iter()
                .map(|(labels, status)| {
                    Alert::new(status.unwrap_or(Status::Firing), labels, LabelSet::new(), Map::new())
                })
                .collect();
            n
        }
    };
    let receivers = receivers
        .iter()
        .map(|r| {
            let alerts: Vec<AlertFate> = notification
                .alerts
                .iter()
                .zip(fates(&notification, r))
                .enumerate()
                .map(|(index, (alert, fate))| AlertFate {
                    index,
                    delivered: fate == Fate::Forwarded,
                    stopped_by: stop_reason(r, &alert.labels, fate),
                })
                .collect();
            let delivered = alerts.iter().any(|a| a.delivered);
            let (mut body_bytes, mut template_error) = (None, None);
            if delivered {
                let routed = route(&notification, std::slice::from_ref(r)).into_iter().next().and_then(|x| x.body);
                if let Some(routed) = routed {
                    match r.payload.render(&routed, &r.name) {
                        Ok(body) => body_bytes = Some(body.len()),
                        Err(e) => template_error = Some(e.to_string()),
                    }
                }
            }
            ReceiverFate { receiver: r.name.clone(), enabled: r.enabled, delivered, alerts, body_bytes, template_error }
        })
        .collect();
    Explanation { receivers }
}
