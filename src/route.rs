//! Payload × receivers → one forwarded notification per receiver that has
//! anything left after its conditions, `send_resolved` and `max_alerts`.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use crate::alert::{Alert, Extra, Label, LabelSet, Notification, Status};
use crate::conditions::first_failing;
use crate::config::Receiver;

pub use crate::reasons::FilterReason;

/// What becomes of one alert at one receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    Forwarded,
    Disabled,
    /// Index of the first condition the alert fails.
    Condition(usize),
    Resolved,
    MaxAlerts,
}

impl Fate {
    pub fn filter_reason(self) -> Option<FilterReason> {
        match self {
            Fate::Forwarded => None,
            Fate::Disabled => Some(FilterReason::Disabled),
            Fate::Condition(_) => Some(FilterReason::Conditions),
            Fate::Resolved => Some(FilterReason::Resolved),
            Fate::MaxAlerts => Some(FilterReason::MaxAlerts),
        }
    }
}

/// The receiver's settings on one alert, `max_alerts` aside.
pub fn verdict(receiver: &Receiver, alert: &Alert) -> Fate {
    if !receiver.enabled {
        return Fate::Disabled;
    }
    if let Some(i) = first_failing(&receiver.conditions, &alert.labels) {
        return Fate::Condition(i);
    }
    if alert.status == Status::Resolved && !receiver.send_resolved {
        return Fate::Resolved;
    }
    Fate::Forwarded
}

/// Every alert's fate at one receiver, in order: the first `max_alerts` that
/// pass are forwarded, the rest are cut.
pub fn fates(notification: &Notification, receiver: &Receiver) -> Vec<Fate> {
    let mut forwarded = 0;
    notification
        .alerts
        .iter()
        .map(|alert| match verdict(receiver, alert) {
            Fate::Forwarded if receiver.max_alerts > 0 && forwarded >= receiver.max_alerts => Fate::MaxAlerts,
            Fate::Forwarded => {
                forwarded += 1;
                Fate::Forwarded
            }
            other => other,
        })
        .collect()
}

/// The outcome of routing one payload to one receiver.
#[derive(Debug)]
pub struct Routed {
    pub receiver: Arc<Receiver>,
    /// The body to forward; `None` when no alert is left.
    pub body: Option<Vec<u8>>,
    pub matched: usize,
    /// Alerts filtered, indexed like `FilterReason::ALL`.
    pub filtered: [usize; 4],
}

pub fn route(notification: &Notification, receivers: &[Arc<Receiver>]) -> Vec<Routed> {
    // Receivers that keep the same alerts get the same bytes: serialized once.
    let mut made: Vec<(Vec<usize>, usize)> = Vec::new();
    let mut out: Vec<Routed> = Vec::with_capacity(receivers.len());
    for receiver in receivers {
        let (kept, filtered) = select(notification, receiver);
        let truncated = filtered[FilterReason::MaxAlerts as usize];
        let matched = kept.len();
        // `made[i]` is what `out[i]` kept.
        let body = if kept.is_empty() {
            None
        } else {
            match made.iter().position(|(k, t)| *k == kept && *t == truncated) {
                Some(i) => out[i].body.clone(),
                None => Some(forward(notification, &kept, truncated)),
            }
        };
        made.push((kept, truncated));
        out.push(Routed { receiver: receiver.clone(), body, matched, filtered });
    }
    out
}

/// The indices of the alerts a receiver keeps, and how many it filtered for
/// each reason.
fn select(notification: &Notification, receiver: &Receiver) -> (Vec<usize>, [usize; 4]) {
    let mut filtered = [0usize; 4];
    let mut kept = Vec::with_capacity(notification.alerts.len());
    for (i, fate) in fates(notification, receiver).into_iter().enumerate() {
        match fate.filter_reason() {
            None => kept.push(i),
            Some(reason) => filtered[reason as usize] += 1,
        }
    }
    (kept, filtered)
}

/// The forwarded notification of the alerts at `kept`.
fn forward(notification: &Notification, kept: &[usize], truncated: usize) -> Vec<u8> {
    Forward::new(notification, kept, truncated).write()
}

/// The forwarded payload: borrowed alerts and pass-through fields, recomputed
/// rest. Written by hand (`write`); the derived `Serialize` is the reference
/// the tests hold that to, field order included.
#[derive(Serialize)]
struct Forward<'a> {
    status: Status,
    alerts: Vec<&'a Alert>,
    #[serde(rename = "commonLabels")]
    common_labels: BTreeMap<&'a str, &'a str>,
    #[serde(rename = "commonAnnotations")]
    common_annotations: BTreeMap<&'a str, &'a str>,
    #[serde(rename = "truncatedAlerts")]
    truncated_alerts: u64,
    #[serde(rename = "groupKey", skip_serializing_if = "Option::is_none")]
    group_key: Option<&'a str>,
    #[serde(flatten)]
    extra: &'a Extra,
}

impl<'a> Forward<'a> {
    fn new(notification: &'a Notification, kept: &[usize], truncated: usize) -> Forward<'a> {
        let alerts: Vec<&Alert> = kept.iter().map(|&i| &notification.alerts[i]).collect();
        Forward {
            status: if alerts.iter().any(|a| a.status == Status::Firing) { Status::Firing } else { Status::Resolved },
            common_labels: common(alerts.iter().map(|a| &a.labels)),
            common_annotations: common(alerts.iter().map(|a| &a.annotations)),
            truncated_alerts: notification.truncated_alerts + truncated as u64,
            group_key: notification.group_key.as_deref(),
            extra: &notification.extra,
            alerts,
        }
    }

    /// The JSON serde would write, each alert's text copied as it came
    /// (serde would check it again first).
    fn write(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.alerts.iter().map(|a| a.raw().len() + 1).sum::<usize>() + 512);
        out.extend_from_slice(b"{\"status\":\"");
        out.extend_from_slice(self.status.as_str().as_bytes());
        out.extend_from_slice(b"\",\"alerts\":[");
        for (i, alert) in self.alerts.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(alert.raw().as_bytes());
        }
        out.extend_from_slice(b"],\"commonLabels\":");
        json(&mut out, &self.common_labels);
        out.extend_from_slice(b",\"commonAnnotations\":");
        json(&mut out, &self.common_annotations);
        out.extend_from_slice(b",\"truncatedAlerts\":");
        json(&mut out, &self.truncated_alerts);
        if let Some(key) = self.group_key {
            out.extend_from_slice(b",\"groupKey\":");
            json(&mut out, key);
        }
        for (key, value) in self.extra.fields() {
            out.push(b',');
            json(&mut out, key);
            out.push(b':');
            out.extend_from_slice(value.get().as_bytes());
        }
        out.push(b'}');
        out
    }
}

/// Appends `value` as JSON. Serializing strings, numbers and maps of strings
/// into a Vec cannot fail.
fn json<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    let _ = serde_json::to_writer(out, value);
}

/// The pairs every set has, with the same value (borrowed: serialized once,
/// never stored).
fn common<'a>(mut sets: impl Iterator<Item = &'a LabelSet>) -> BTreeMap<&'a str, &'a str> {
    let Some(first) = sets.next() else {
        return BTreeMap::new();
    };
    let mut common: BTreeMap<&str, &str> = first.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    for set in sets {
        common.retain(|k, v| set.get(k).map(Label::as_str) == Some(*v));
        if common.is_empty() {
            break;
        }
    }
    common
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use serde_json::Value;

    const MIXED: &str = include_str!("../tests/fixtures/alertmanager-0.25/mixed-resolved.json");

    fn receivers(yaml: &str) -> Vec<Arc<Receiver>> {
        Config::from_yaml(yaml).unwrap().receivers
    }

    fn forwarded(r: &Routed) -> Value {
        serde_json::from_slice(r.body.as_ref().unwrap()).unwrap()
    }

    #[test]
    fn receivers_that_keep_the_same_alerts_get_the_same_bytes() {
        let n = Notification::parse(MIXED.as_bytes()).unwrap();
        let rs = receivers(
            "receivers:\n\
             - { name: a, url: 'http://x' }\n\
             - { name: crit, url: 'http://x', conditions: [{ label: severity, operator: In, values: [critical] }] }\n\
             - { name: b, url: 'http://y', conditions: [{ label: alertname, operator: Exists }] }\n\
             - { name: one, url: 'http://x', max_alerts: 1 }\n\
             - { name: crit-too, url: 'http://z', conditions: [{ label: service, operator: In, values: [api] }] }\n",
        );
        let out = route(&n, &rs);
        let body = |i: usize| out[i].body.clone().unwrap();
        assert_eq!(body(0), body(2));
        assert_eq!(body(1), body(4));
        assert_ne!(body(0), body(1));
        // The same first alert as crit, but one cut by max_alerts: its own body.
        assert_ne!(body(3), body(1));
        assert_eq!(forwarded(&out[3])["truncatedAlerts"], 1);
        // Each as if routed alone.
        for (i, r) in rs.iter().enumerate() {
            assert_eq!(route(&n, std::slice::from_ref(r))[0].body, out[i].body, "{}", r.name);
        }
    }

    #[test]
    fn each_receiver_gets_its_alerts_with_recomputed_fields() {
        let n = Notification::parse(MIXED.as_bytes()).unwrap();
        let rs = receivers(
            "receivers:\n\
             - { name: crit, url: 'http://x', conditions: [{ label: severity, operator: In, values: [critical] }] }\n\
             - { name: no-resolved, url: 'http://x', send_resolved: false }\n\
             - { name: nobody, url: 'http://x', conditions: [{ label: team, operator: Exists }] }\n\
             - { name: off, url: 'http://x', enabled: false }\n\
             - { name: one, url: 'http://x', max_alerts: 1 }\n",
        );
        let out = route(&n, &rs);

        let crit = forwarded(&out[0]);
        assert_eq!(crit["status"], "resolved", "only the resolved critical alert is left");
        assert_eq!(crit["alerts"].as_array().unwrap().len(), 1);
        assert_eq!(crit["commonLabels"]["service"], "api");
        assert_eq!(crit["commonAnnotations"]["summary"], "p99 latency above 1s");
        assert_eq!(crit["groupKey"].as_str(), n.group_key.as_deref());
        assert_eq!(crit["externalURL"], "http://vm:19093", "pass-through field");
        assert_eq!(out[0].filtered, [1, 0, 0, 0]);

        let nr = forwarded(&out[1]);
        assert_eq!(nr["status"], "firing");
        assert_eq!(nr["alerts"][0]["labels"]["service"], "web");
        assert_eq!(out[1].filtered, [0, 1, 0, 0]);

        assert!(out[2].body.is_none());
        assert_eq!(out[2].filtered, [2, 0, 0, 0]);
        assert!(out[3].body.is_none());
        assert_eq!(out[3].filtered, [0, 0, 2, 0]);

        let one = forwarded(&out[4]);
        assert_eq!(one["alerts"].as_array().unwrap().len(), 1);
        assert_eq!(one["truncatedAlerts"], 1);
        assert_eq!(out[4].filtered, [0, 0, 0, 1]);
        assert_eq!(out[4].matched, 1);
    }

    fn forward_with_serde(notification: &Notification, kept: &[usize], truncated: usize) -> Vec<u8> {
        serde_json::to_vec(&Forward::new(notification, kept, truncated)).unwrap()
    }

    #[test]
    fn the_forwarded_body_is_byte_for_byte_what_serde_writes() {
        let odd = r#"{"receiver":"r\"x","status":"resolved","alerts":[{"status":"resolved","labels":{"a":"\u00e9\n"},"x":[1.5e3,{"y":null}]}],"groupLabels":{},"big":12345678901234567890123,"truncatedAlerts":7}"#;
        let fixtures = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/alertmanager-0.25"))
            .unwrap()
            .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
            .filter(|text| text.trim_start().starts_with('{'));
        let mut seen = 0;
        for text in fixtures.chain([MIXED.to_string(), odd.to_string()]) {
            let Ok(n) = Notification::parse(text.as_bytes()) else { continue };
            let all: Vec<usize> = (0..n.alerts.len()).collect();
            for (kept, truncated) in [(all.clone(), 0), (all.iter().copied().skip(1).collect(), 1), (vec![], 0)] {
                assert_eq!(
                    String::from_utf8(forward(&n, &kept, truncated)).unwrap(),
                    String::from_utf8(forward_with_serde(&n, &kept, truncated)).unwrap()
                );
            }
            seen += 1;
        }
        assert!(seen >= 3, "only {seen} payloads read");
    }

    #[test]
    fn common_labels_of_disjoint_sets_are_empty() {
        let a: LabelSet = [("a".into(), "1".into())].into();
        let b: LabelSet = [("a".into(), "2".into())].into();
        assert!(common([&a, &b].into_iter()).is_empty());
        assert_eq!(common([&a, &a].into_iter()), BTreeMap::from([("a", "1")]));
    }

    mod invariants {
        use super::*;
        use proptest::prelude::*;
        use serde_json::json;

        fn notification(alerts: &[(bool, BTreeMap<String, String>)], truncated: u64) -> Notification {
            let alerts: Vec<Value> = alerts
                .iter()
                .enumerate()
                .map(|(i, (firing, labels))| {
                    json!({"status": if *firing { "firing" } else { "resolved" }, "labels": labels,
                           "annotations": {"n": i.to_string()}, "fingerprint": i.to_string()})
                })
                .collect();
            let body = json!({"version": "4", "status": "firing", "groupKey": "g", "receiver": "am",
                              "truncatedAlerts": truncated, "alerts": alerts});
            Notification::parse(body.to_string().as_bytes()).unwrap()
        }

        proptest! {
            /// For any payload and receiver: every alert is either forwarded or
            /// filtered for one reason; forwarded alerts keep their order; the
            /// recomputed fields equal a recomputation from what was forwarded.
            #[test]
            fn routing_invariants(
                alerts in proptest::collection::vec(
                    (any::<bool>(), proptest::collection::btree_map("[ab]", "[xy]", 0..3)), 0..12),
                truncated in 0u64..5,
                values in proptest::collection::vec("[xy]", 1..3),
                enabled in any::<bool>(),
                send_resolved in any::<bool>(),
                max_alerts in 0usize..4,
                with_condition in any::<bool>(),
            ) {
                let condition = if with_condition {
                    format!("conditions: [{{ label: a, operator: In, values: [{}] }}]", values.join(", "))
                } else {
                    String::new()
                };
                let rs = receivers(&format!(
                    "receivers: [{{ name: r, url: 'http://x', enabled: {enabled}, send_resolved: {send_resolved}, \
                     max_alerts: {max_alerts}, {condition} }}]"
                ));
                let n = notification(&alerts, truncated);
                let out = route(&n, &rs);
                prop_assert_eq!(out.len(), 1);
                let r = &out[0];
                prop_assert_eq!(r.matched + r.filtered.iter().sum::<usize>(), alerts.len());
                prop_assert_eq!(r.body.is_some(), r.matched > 0);
                let Some(body) = &r.body else { return Ok(()) };
                let sent: Value = serde_json::from_slice(body).unwrap();
                let sent_alerts = sent["alerts"].as_array().unwrap();
                prop_assert_eq!(sent_alerts.len(), r.matched);
                // In input order: the annotations carry each alert's index.
                let order: Vec<usize> =
                    sent_alerts.iter().map(|a| a["annotations"]["n"].as_str().unwrap().parse().unwrap()).collect();
                prop_assert!(order.windows(2).all(|w| w[0] < w[1]), "{:?}", order);
                let any_firing = sent_alerts.iter().any(|a| a["status"] == "firing");
                prop_assert_eq!(&sent["status"], if any_firing { "firing" } else { "resolved" });
                let sets: Vec<BTreeMap<String, String>> =
                    order.iter().map(|&i| alerts[i].1.clone()).collect();
                let expected: BTreeMap<String, String> = sets[0]
                    .iter()
                    .filter(|(k, v)| sets.iter().all(|s| s.get(*k) == Some(*v)))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                prop_assert_eq!(&sent["commonLabels"], &json!(expected));
                let cut = r.filtered[FilterReason::MaxAlerts as usize] as u64;
                prop_assert_eq!(&sent["truncatedAlerts"], &json!(truncated + cut));
                prop_assert!(max_alerts == 0 || r.matched <= max_alerts);
                prop_assert_eq!(&sent["receiver"], "am", "pass-through field kept");
                prop_assert_eq!(body, &forward_with_serde(&n, &order, cut as usize));
            }
        }
    }
}
