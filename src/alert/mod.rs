//! Alertmanager webhook payload (version "4").
//!
//! Only the fields alert-relay reads or rewrites are typed; everything else,
//! known or not, is kept (in `extra`, or as each alert's raw JSON) and
//! forwarded unchanged.

use serde::de::{Error as _, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

mod labels;
mod scan;

pub use labels::LabelSet;

/// A label name or value (or an annotation's): short ones are kept inline.
pub type Label = smol_str::SmolStr;

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

/// One alert: what routing reads, parsed; the rest kept as the exact JSON text
/// Alertmanager sent, and forwarded as it came, unknown fields included.
#[derive(Debug, Clone)]
pub struct Alert {
    pub status: Status,
    pub labels: LabelSet,
    pub annotations: LabelSet,
    /// The alert's JSON text (checked JSON: parsed, or serialized here).
    raw: Box<str>,
}

/// The fields of an alert that routing reads; the others are skipped unparsed.
#[derive(Deserialize)]
#[serde(expecting = "an alert (a JSON object with status, labels and annotations)")]
struct AlertFields {
    status: Status,
    #[serde(default)]
    labels: UniqueKeys,
    #[serde(default)]
    annotations: UniqueKeys,
}

/// A label or annotation set in which every key appears once: with a key
/// twice the relay would match one value while a target may read the other.
#[derive(Default)]
struct UniqueKeys(LabelSet);

impl<'de> Deserialize<'de> for UniqueKeys {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<UniqueKeys, D::Error> {
        struct Keys;
        impl<'de> Visitor<'de> for Keys {
            type Value = UniqueKeys;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object of string values")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<UniqueKeys, A::Error> {
                let mut set = LabelSet::new();
                while let Some(key) = map.next_key::<Label>()? {
                    let value: Label = map.next_value()?;
                    if set.contains_key(&key) {
                        return Err(A::Error::custom(format!("duplicate key {key:?}: each key may appear once")));
                    }
                    set.insert_new(key, value);
                }
                Ok(UniqueKeys(set))
            }
        }
        deserializer.deserialize_map(Keys)
    }
}

impl Alert {
    /// An alert made here (test messages, explain), with `extra` fields such as
    /// startsAt beside status, labels and annotations.
    pub fn new(status: Status, labels: LabelSet, annotations: LabelSet, extra: Map<String, Value>) -> Alert {
        let mut object = extra;
        object.insert("status".into(), Value::String(status.as_str().into()));
        object.insert("labels".into(), serde_json::to_value(&labels).unwrap_or_default());
        object.insert("annotations".into(), serde_json::to_value(&annotations).unwrap_or_default());
        let raw = Value::Object(object).to_string().into_boxed_str();
        Alert { status, labels, annotations, raw }
    }

    /// The alert's JSON text, as it came.
    pub fn raw(&self) -> &str {
        &self.raw
    }
}

fn empty_object() -> Box<RawValue> {
    RawValue::from_string("{}".into()).unwrap_or_else(|_| unreachable!("{{}} is JSON"))
}

impl PartialEq for Alert {
    fn eq(&self, other: &Alert) -> bool {
        self.raw == other.raw
    }
}

impl<'de> Deserialize<'de> for Alert {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Alert, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        let fields: AlertFields = serde_json::from_str(raw.get()).map_err(D::Error::custom)?;
        Ok(Alert { status: fields.status, labels: fields.labels.0, annotations: fields.annotations.0, raw: raw.into() })
    }
}

impl Serialize for Alert {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Checked again here (off the webhook path: the forwarded body is
        // written by `route` from `raw()`).
        let raw: &RawValue = serde_json::from_str(&self.raw).map_err(serde::ser::Error::custom)?;
        raw.serialize(serializer)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Notification {
    pub status: Status,
    pub alerts: Vec<Alert>,
    #[serde(rename = "commonLabels")]
    pub common_labels: LabelSet,
    #[serde(rename = "commonAnnotations")]
    pub common_annotations: LabelSet,
    #[serde(rename = "truncatedAlerts")]
    pub truncated_alerts: u64,
    /// Absent on input, absent on output.
    #[serde(rename = "groupKey", skip_serializing_if = "Option::is_none")]
    pub group_key: Option<String>,
    /// version, receiver, groupLabels, externalURL and anything newer.
    #[serde(flatten)]
    pub extra: Extra,
}

/// The fields the relay does not read, in the order they came, each kept as
/// its exact JSON text: numbers of any size or spelling (`1.50`, `1E+2`,
/// `1e400`), escapes and nesting reach the target byte for byte.
#[derive(Debug, Clone, Default)]
pub struct Extra(Vec<(String, Box<RawValue>)>);

impl Extra {
    /// A field's JSON text.
    pub fn get(&self, key: &str) -> Option<&RawValue> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_ref())
    }

    /// Every field and its JSON text, in the order they came.
    pub fn fields(&self) -> impl Iterator<Item = (&str, &RawValue)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_ref()))
    }

    /// Adds (or replaces) a field made here, for synthetic notifications.
    pub fn set(&mut self, key: &str, value: &Value) {
        let raw = RawValue::from_string(value.to_string()).unwrap_or_else(|_| empty_object());
        match self.0.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = raw,
            None => self.0.push((key.to_string(), raw)),
        }
    }

    /// Fields made here from a JSON object.
    pub fn from_object(object: Map<String, Value>) -> Extra {
        let mut extra = Extra::default();
        for (key, value) in &object {
            extra.set(key, value);
        }
        extra
    }
}

impl PartialEq for Extra {
    fn eq(&self, other: &Extra) -> bool {
        self.0.len() == other.0.len() && self.0.iter().zip(&other.0).all(|(a, b)| a.0 == b.0 && a.1.get() == b.1.get())
    }
}

impl Serialize for Extra {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

/// By hand rather than derived: a derived `flatten` buffers the whole payload,
/// alerts included, before reading it a second time.
impl<'de> Deserialize<'de> for Notification {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Notification, D::Error> {
        deserializer.deserialize_map(NotificationVisitor)
    }
}

struct NotificationVisitor;

impl<'de> Visitor<'de> for NotificationVisitor {
    type Value = Notification;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an Alertmanager webhook payload")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Notification, A::Error> {
        let (mut status, mut alerts) = (None, None);
        let mut n = Notification {
            status: Status::Firing,
            alerts: Vec::new(),
            common_labels: LabelSet::new(),
            common_annotations: LabelSet::new(),
            truncated_alerts: 0,
            group_key: None,
            extra: Extra::default(),
        };
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match key.as_ref() {
                "status" => status = Some(map.next_value()?),
                "alerts" => alerts = Some(map.next_value()?),
                "commonLabels" => n.common_labels = map.next_value::<UniqueKeys>()?.0,
                "commonAnnotations" => n.common_annotations = map.next_value::<UniqueKeys>()?.0,
                "truncatedAlerts" => n.truncated_alerts = map.next_value()?,
                "groupKey" => n.group_key = Some(map.next_value()?),
                _ => {
                    let value: Box<RawValue> = map.next_value()?;
                    n.extra.0.push((key.into_owned(), value));
                }
            }
        }
        n.status = status.ok_or_else(|| A::Error::missing_field("status"))?;
        n.alerts = alerts.ok_or_else(|| A::Error::missing_field("alerts"))?;
        Ok(n)
    }
}

/// The same shape fully typed, read only to name the field of an error.
#[derive(Deserialize)]
#[serde(expecting = "a webhook payload (a JSON object with status and alerts)")]
#[allow(dead_code)]
struct PayloadShape {
    status: Status,
    alerts: Vec<AlertFields>,
    #[serde(rename = "commonLabels", default)]
    common_labels: UniqueKeys,
    #[serde(rename = "commonAnnotations", default)]
    common_annotations: UniqueKeys,
    #[serde(rename = "truncatedAlerts", default)]
    truncated_alerts: u64,
    #[serde(rename = "groupKey", default)]
    group_key: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("{path}: {message}")]
    Json { path: String, message: String },
    #[error(
        "version: unsupported payload version {0}; alert-relay reads Alertmanager's \"4\" and Grafana Alerting's \"1\""
    )]
    Version(String),
    #[error("body: JSON nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
}

/// Deepest nesting of objects and arrays accepted. Alertmanager's payload is
/// 4 levels deep; a field of unknown content is forwarded, but not a bomb.
pub const MAX_DEPTH: usize = 64;

/// Whether `body` nests objects and arrays deeper than `max`: one pass over
/// the bytes, before any parser recurses.
fn deeper_than(body: &[u8], max: usize) -> bool {
    // Every request pays for this scan, so strings (most of a payload's bytes:
    // label values, annotations) are skipped with memchr, not byte by byte.
    let mut depth = 0usize;
    let mut i = 0;
    while let Some(&b) = body.get(i) {
        i += 1;
        match b {
            b'"' => loop {
                let Some(at) = body.get(i..).and_then(|rest| memchr::memchr2(b'"', b'\\', rest)) else {
                    return false;
                };
                let escape = body[i + at] == b'\\';
                // Past the quote, or past the backslash and the byte it escapes.
                i += at + if escape { 2 } else { 1 };
                if !escape {
                    break;
                }
            },
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

impl PayloadError {
    /// The field the error is about, for the `details` of an error answer.
    pub fn field(&self) -> &str {
        match self {
            PayloadError::Json { path, .. } => path,
            PayloadError::Version(_) => "version",
            PayloadError::TooDeep => "body",
        }
    }
}

impl Notification {
    /// Parses and validates a webhook body; the error names the offending field.
    pub fn parse(body: &[u8]) -> Result<Notification, PayloadError> {
        let notification = match scan::notification(body) {
            Some(notification) => notification,
            None => Notification::parse_with_serde(body)?,
        };
        check_version(&notification)?;
        Ok(notification)
    }

    /// `parse` without the one-pass scan: the reference the scan is held to,
    /// and the path that names the field of an error.
    #[doc(hidden)]
    pub fn parse_with_serde(body: &[u8]) -> Result<Notification, PayloadError> {
        if deeper_than(body, MAX_DEPTH) {
            return Err(PayloadError::TooDeep);
        }
        let notification: Notification = serde_json::from_slice(body).map_err(|e| locate(body, &e))?;
        check_version(&notification)?;
        Ok(notification)
    }
}

/// Alertmanager's version "4", and Grafana Alerting's "1" (the same shape,
/// more fields); no version at all is read as Alertmanager's.
fn check_version(notification: &Notification) -> Result<(), PayloadError> {
    let Some(raw) = notification.extra.get("version") else { return Ok(()) };
    match raw.get() {
        r#""4""# | r#""1""# => Ok(()),
        other => match serde_json::from_str::<Value>(other) {
            Ok(Value::String(v)) if v == "4" || v == "1" => Ok(()),
            Ok(Value::String(v)) => Err(PayloadError::Version(format!("{v:?}"))),
            _ => Err(PayloadError::Version(format!("{other} (not a string)"))),
        },
    }
}

/// Reads a payload that failed again, tracking the path, to say where.
fn locate(body: &[u8], fast: &serde_json::Error) -> PayloadError {
    let de = &mut serde_json::Deserializer::from_slice(body);
    match serde_path_to_error::deserialize::<_, PayloadShape>(de) {
        Err(e) => {
            let path = e.path().to_string();
            let path = if path == "." { "body".to_string() } else { path };
            PayloadError::Json { path, message: strip_position(&e.into_inner().to_string()) }
        }
        Ok(_) => PayloadError::Json { path: "body".into(), message: strip_position(&fast.to_string()) },
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

    const FIRING: &str = include_str!("../../tests/fixtures/alertmanager-0.25/firing.json");

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
    fn duplicate_label_keys_are_refused_by_name() {
        let err = Notification::parse(
            br#"{"status":"firing","alerts":[{"status":"firing","labels":{"severity":"info","severity":"critical"}}]}"#,
        )
        .unwrap_err();
        assert_eq!(err.field(), "alerts[0].labels");
        assert!(err.to_string().contains("duplicate key \"severity\""), "{err}");
        let err = Notification::parse(
            br#"{"status":"firing","alerts":[{"status":"firing","annotations":{"a":"1","a":"2"}}]}"#,
        )
        .unwrap_err();
        assert_eq!(err.field(), "alerts[0].annotations");
    }

    /// The byte-by-byte scan `deeper_than` replaced, as the reference.
    fn deeper_than_slowly(body: &[u8], max: usize) -> bool {
        let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
        for &b in body {
            if in_string {
                match b {
                    _ if escaped => escaped = false,
                    b'\\' => escaped = true,
                    b'"' => in_string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => in_string = true,
                b'{' | b'[' => {
                    depth += 1;
                    if depth > max {
                        return true;
                    }
                }
                b'}' | b']' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        false
    }

    proptest::proptest! {
        #[test]
        fn the_fast_depth_scan_agrees_with_the_byte_by_byte_one(
            body in proptest::collection::vec(proptest::sample::select(b"{}[]\"\\ax".to_vec()), 0..200),
            max in 0usize..8,
        ) {
            proptest::prop_assert_eq!(deeper_than(&body, max), deeper_than_slowly(&body, max));
        }
    }

    #[test]
    fn deep_nesting_is_refused_before_parsing() {
        let deep =
            format!(r#"{{"status":"firing","alerts":[],"x":{}1{}}}"#, "[".repeat(2_000_000), "]".repeat(2_000_000));
        assert!(matches!(Notification::parse(deep.as_bytes()), Err(PayloadError::TooDeep)));
        // Brackets inside strings do not count; 60 levels are fine.
        let ok =
            format!(r#"{{"status":"firing","alerts":[],"s":"[[[[\"{{{{","x":{}1{}}}"#, "[".repeat(60), "]".repeat(60));
        Notification::parse(ok.as_bytes()).unwrap();
    }

    #[test]
    fn messages_name_no_internal_type_and_say_what_is_expected() {
        let err = Notification::parse(br#""just text""#).unwrap_err().to_string();
        assert!(!err.contains("Check") && !err.contains("struct"), "{err}");
        assert!(err.contains("a webhook payload"), "{err}");
        let err = Notification::parse(br#"{"version":4,"status":"firing","alerts":[]}"#).unwrap_err().to_string();
        assert!(err.contains("4 (not a string)"), "{err}");
        let grafana = br#"{"version":"1","orgId":1,"state":"alerting","status":"firing","alerts":[]}"#;
        Notification::parse(grafana).unwrap();
    }

    #[test]
    fn unknown_fields_pass_byte_for_byte_and_absent_ones_stay_absent() {
        let body = r#"{"status":"firing","alerts":[],"big":12345678901234567890123,"dec":1.50,"exp":1E+2,"esc":"\u00e9","huge":1e400,"nested":{"a":[1,{"b":null}],"c":"d"}}"#;
        let n = Notification::parse(body.as_bytes()).unwrap();
        assert_eq!(n.group_key, None);
        let out = String::from_utf8(serde_json::to_vec(&n).unwrap()).unwrap();
        for field in [
            r#""big":12345678901234567890123"#,
            r#""dec":1.50"#,
            r#""exp":1E+2"#,
            r#""esc":"\u00e9""#,
            r#""huge":1e400"#,
            r#""nested":{"a":[1,{"b":null}],"c":"d"}"#,
        ] {
            assert!(out.contains(field), "{field} not in {out}");
        }
        assert!(!out.contains("groupKey"), "{out}");
    }

    #[test]
    fn fixture_round_trips_with_unknown_fields() {
        let mut raw: Value = serde_json::from_str(FIRING).unwrap();
        raw["futureField"] = serde_json::json!({"x": [1, 2]});
        raw["alerts"][0]["futureAlertField"] = serde_json::json!("kept");
        let n = Notification::parse(raw.to_string().as_bytes()).unwrap();
        assert_eq!(n.alerts.len(), 2);
        assert_eq!(n.group_key.as_deref(), Some("{}:{alertname=\"HighLatency\", namespace=\"prod\"}"));
        let back = serde_json::to_value(&n).unwrap();
        assert_eq!(back, raw);
    }
}
