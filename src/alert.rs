//! Alertmanager webhook payload (version "4").
//!
//! Only the fields alert-relay reads or rewrites are typed; everything else,
//! known or not, is kept in `extra` and forwarded unchanged.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Label or annotation set. Alertmanager sends them with sorted keys.
pub type LabelSet = BTreeMap<String, String>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Firing,
    Resolved,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Firing => "firing",
            Status::Resolved => "resolved",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub status: Status,
    #[serde(default)]
    pub labels: LabelSet,
    #[serde(default)]
    pub annotations: LabelSet,
    /// startsAt, endsAt, generatorURL, fingerprint and anything newer.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    pub status: Status,
    pub alerts: Vec<Alert>,
    #[serde(rename = "commonLabels", default)]
    pub common_labels: LabelSet,
    #[serde(rename = "commonAnnotations", default)]
    pub common_annotations: LabelSet,
    #[serde(rename = "truncatedAlerts", default)]
    pub truncated_alerts: u64,
    #[serde(rename = "groupKey", default)]
    pub group_key: String,
    /// version, receiver, groupLabels, externalURL and anything newer.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("{path}: {message}")]
    Json { path: String, message: String },
    #[error("version: unsupported payload version {0:?}, expected \"4\"")]
    Version(String),
}

impl PayloadError {
    /// The field the error is about, for the `details` of an error answer.
    pub fn field(&self) -> &str {
        match self {
            PayloadError::Json { path, .. } => path,
            PayloadError::Version(_) => "version",
        }
    }
}

impl Notification {
    /// Parses and validates a webhook body; the error names the offending field.
    pub fn parse(body: &[u8]) -> Result<Notification, PayloadError> {
        let de = &mut serde_json::Deserializer::from_slice(body);
        let notification: Notification = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." { "body".to_string() } else { path };
            PayloadError::Json { path, message: strip_position(&e.into_inner().to_string()) }
        })?;
        match notification.extra.get("version") {
            None => {}
            Some(Value::String(v)) if v == "4" => {}
            Some(other) => {
                let shown = match other {
                    Value::String(s) => s.clone(),
                    v => v.to_string(),
                };
                return Err(PayloadError::Version(shown));
            }
        }
        Ok(notification)
    }
}

/// serde_json appends " at line L column C"; the path already says where.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) if message[i..].contains(" column ") => message[..i].to_string(),
        _ => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIRING: &str = include_str!("../tests/fixtures/alertmanager-0.25/firing.json");

    #[test]
    fn wrong_type_names_the_field() {
        let err =
            Notification::parse(br#"{"status":"firing","alerts":[{"status":"firing","labels":{"a":1}}]}"#).unwrap_err();
        assert_eq!(err.field(), "alerts[0].labels.a");
        assert!(err.to_string().contains("invalid type"), "{err}");
    }

    #[test]
    fn missing_alerts_is_named() {
        let err = Notification::parse(br#"{"status":"firing"}"#).unwrap_err();
        assert!(err.to_string().contains("missing field `alerts`"), "{err}");
    }

    #[test]
    fn bad_status_is_named() {
        let err = Notification::parse(br#"{"status":"firing","alerts":[{"status":"burning"}]}"#).unwrap_err();
        assert_eq!(err.field(), "alerts[0].status");
    }

    #[test]
    fn other_versions_are_refused() {
        let err = Notification::parse(br#"{"version":"5","status":"firing","alerts":[]}"#).unwrap_err();
        assert_eq!(err.field(), "version");
    }

    #[test]
    fn fixture_round_trips_with_unknown_fields() {
        let mut raw: Value = serde_json::from_str(FIRING).unwrap();
        raw["futureField"] = serde_json::json!({"x": [1, 2]});
        raw["alerts"][0]["futureAlertField"] = serde_json::json!("kept");
        let n = Notification::parse(raw.to_string().as_bytes()).unwrap();
        assert_eq!(n.alerts.len(), 2);
        assert_eq!(n.group_key, "{}:{alertname=\"HighLatency\", namespace=\"prod\"}");
        let back = serde_json::to_value(&n).unwrap();
        assert_eq!(back, raw);
    }
}
