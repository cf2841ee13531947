//! The relay in-process on a loopback port against real HTTP(S) targets.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const FAST_RETRY: &str = "retry: { initial_interval: 50ms, max_interval: 200ms, jitter: 0.0 }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixtures_forward_with_unknown_fields_intact() {
    let t = target(200).await;
    let relay = TestRelay::start(&format!("receivers: [{{ name: all, url: '{}/hook' }}]", t.uri())).await;
    for fixture in [FIRING, MIXED] {
        let mut sent: Value = serde_json::from_str(fixture).unwrap();
        sent["someFutureField"] = serde_json::json!({"nested": [1, 2, 3]});
        sent["alerts"][0]["futureAlertField"] = serde_json::json!("kept");
        let (status, answer) = relay.post(serde_json::to_vec(&sent).unwrap()).await;
        assert_eq!((status, answer), (200, serde_json::json!({"deliveries": 1})));
        eventually("the target to receive it", || async { bodies(&t).await.contains(&sent) }).await;
    }
    // Recomputed over the same alerts, every field is as Alertmanager sent it.
    assert_eq!(count(&t).await, 2);
}

/// Grafana Alerting's webhook payload (version "1"), built after the example in
/// Grafana's documentation: routed like Alertmanager's, its own fields kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafana_alerting_payloads_are_relayed_with_their_fields() {
    const GRAFANA: &str = include_str!("fixtures/grafana-11/firing.json");
    let t = target(200).await;
    let relay = TestRelay::start(&format!(
        "receivers: [{{ name: crit, url: '{}', conditions: [{{ label: severity, operator: In, values: [critical] }}] }}]",
        t.uri()
    ))
    .await;
    let (status, answer) = relay.post(GRAFANA).await;
    assert_eq!((status, answer["deliveries"].clone()), (200, serde_json::json!(1)));
    eventually("delivery", || async { count(&t).await == 1 }).await;
    let sent = &bodies(&t).await[0];
    assert_eq!(sent["version"], "1");
    assert_eq!(sent["orgId"], 1);
    assert_eq!(sent["state"], "alerting");
    assert_eq!(sent["title"], "[FIRING:2] QueueBacklog payments (payments)");
    assert!(sent["message"].as_str().unwrap().starts_with("**Firing**"));
    let alerts = sent["alerts"].as_array().unwrap();
    assert_eq!(alerts.len(), 1, "only the critical one");
    assert_eq!(alerts[0]["values"]["A"], 12873.5);
    assert!(alerts[0]["valueString"].as_str().unwrap().contains("settlement"));
    for field in ["silenceURL", "dashboardURL", "panelURL", "imageURL"] {
        assert!(alerts[0].get(field).is_some(), "{field}");
    }
    assert_eq!(sent["commonLabels"]["severity"], "critical", "recomputed over what was forwarded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_fields_reach_the_target_byte_for_byte() {
    let t = target(200).await;
    let relay = TestRelay::start(&format!("receivers: [{{ name: r, url: '{}' }}]", t.uri())).await;
    let body = r#"{"version":"4","status":"firing","alerts":[{"status":"firing","labels":{"a":"b"},"x":1.50}],"big":12345678901234567890123,"exp":1E+2,"esc":"\u00e9","huge":1e400,"nested":{"k":[{"v":null}]}}"#;
    assert_eq!(relay.post(body.as_bytes().to_vec()).await.0, 200);
    eventually("delivery", || async { count(&t).await == 1 }).await;
    let sent = String::from_utf8(t.received_requests().await.unwrap()[0].body.clone()).unwrap();
    for field in [
        r#""big":12345678901234567890123"#,
        r#""exp":1E+2"#,
        r#""esc":"\u00e9""#,
        r#""huge":1e400"#,
        r#""nested":{"k":[{"v":null}]}"#,
        r#""x":1.50"#,
    ] {
        assert!(sent.contains(field), "{field} not in {sent}");
    }
    assert!(!sent.contains("groupKey"), "an absent groupKey stays absent: {sent}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_target_gets_exactly_its_alerts_with_its_auth() {
    let (bearer, basic, none) = (target(200).await, target(204).await, target(202).await);
    let relay = TestRelay::start(&format!(
        r#"
receivers:
  - name: crit-bearer
    url: '{}/b'
    auth: {{ type: bearer, token: tok-123 }}
    headers: {{ X-Team: ops }}
    conditions: [{{ label: severity, operator: In, values: [critical] }}]
  - name: web-basic
    url: '{}/basic'
    auth: {{ type: basic, username: relay, password: pw }}
    conditions:
      - {{ label: service, operator: Matches, values: ['web|www'] }}
      - {{ label: team, operator: DoesNotExist }}
  - name: prod-none
    url: '{}/none'
    send_resolved: false
    conditions: [{{ label: namespace, operator: NotIn, values: [dev] }}]
"#,
        bearer.uri(),
        basic.uri(),
        none.uri()
    ))
    .await;
    let (status, answer) = relay.post(MIXED).await;
    assert_eq!((status, answer["deliveries"].as_u64()), (200, Some(3)));
    eventually("all three deliveries", || async {
        count(&bearer).await == 1 && count(&basic).await == 1 && count(&none).await == 1
    })
    .await;

    let r = &bearer.received_requests().await.unwrap()[0];
    assert_eq!(header(r, "authorization"), "Bearer tok-123");
    assert_eq!(header(r, "x-team"), "ops");
    assert_eq!(header(r, "content-type"), "application/json");
    assert_eq!(header(r, "x-alert-relay-receiver"), "crit-bearer");
    assert!(header(r, "user-agent").starts_with("alert-relay/"));
    assert!(!header(r, "idempotency-key").is_empty());
    let b: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(b["alerts"].as_array().unwrap().len(), 1);
    assert_eq!(b["alerts"][0]["labels"]["service"], "api");
    assert_eq!(b["status"], "resolved", "the only critical alert is resolved");
    assert_eq!(b["commonLabels"]["severity"], "critical");
    assert_eq!(b["commonAnnotations"]["description"], "API p99 latency is 1.7s");

    let r = &basic.received_requests().await.unwrap()[0];
    assert_eq!(header(r, "authorization"), "Basic cmVsYXk6cHc=");
    let b: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(b["alerts"][0]["labels"]["service"], "web");
    assert_eq!(b["status"], "firing");
    assert_eq!(b["commonLabels"]["severity"], "warning");

    let r = &none.received_requests().await.unwrap()[0];
    assert_eq!(header(r, "authorization"), "");
    let b: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(b["alerts"].as_array().unwrap().len(), 1, "resolved alert not sent");
    assert_eq!(b["alerts"][0]["status"], "firing");

    assert_eq!(relay.metric(r#"alert_relay_alerts_matched_total{receiver="crit-bearer"}"#).await, 1.0);
    assert_eq!(
        relay.metric(r#"alert_relay_alerts_filtered_total{reason="conditions",receiver="crit-bearer"}"#).await,
        1.0
    );
    assert_eq!(relay.metric(r#"alert_relay_alerts_filtered_total{reason="resolved",receiver="prod-none"}"#).await, 1.0);
    assert_eq!(relay.metric(r#"alert_relay_alerts_received_total{status="resolved"}"#).await, 1.0);
    assert_eq!(relay.metric(r#"alert_relay_alerts_received_total{status="firing"}"#).await, 1.0);
    for name in ["crit-bearer", "web-basic", "prod-none"] {
        eventually("delivered counters", || async {
            relay.metric(&format!(r#"alert_relay_notifications_delivered_total{{receiver="{name}"}}"#)).await == 1.0
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_left_means_no_delivery() {
    let t = target(200).await;
    let relay = TestRelay::start(&format!(
        "receivers: [{{ name: teams, url: '{}', conditions: [{{ label: team, operator: Exists }}] }}]",
        t.uri()
    ))
    .await;
    let (status, answer) = relay.post(FIRING).await;
    assert_eq!((status, answer["deliveries"].as_u64()), (200, Some(0)));
    assert_eq!(relay.metric(r#"alert_relay_alerts_filtered_total{reason="conditions",receiver="teams"}"#).await, 2.0);
    assert_eq!(relay.metric(r#"alert_relay_notifications_total{receiver="teams"}"#).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_until_delivered() {
    let t = failing_then(503, 2).await;
    let relay = TestRelay::start(&format!("receivers: [{{ name: flaky, url: '{}', {FAST_RETRY} }}]", t.uri())).await;
    assert_eq!(relay.post(FIRING).await.0, 200);
    eventually("delivery", || async {
        relay.metric(r#"alert_relay_notifications_delivered_total{receiver="flaky"}"#).await == 1.0
    })
    .await;
    let requests = t.received_requests().await.unwrap();
    assert_eq!(requests.len(), 3, "503, 503, 200");
    let key = header(&requests[0], "idempotency-key");
    assert!(requests.iter().all(|r| header(r, "idempotency-key") == key), "one key for every retry");
    // <spool instance, 16 hex digits>-<delivery id>
    let (instance, id) = key.split_once('-').unwrap_or_else(|| panic!("{key}"));
    assert!(instance.len() == 16 && instance.chars().all(|c| c.is_ascii_hexdigit()), "{key}");
    assert!(id.parse::<u64>().is_ok_and(|n| n > 0), "{key}");
    assert_eq!(relay.metric(r#"alert_relay_notification_requests_total{receiver="flaky"}"#).await, 3.0);
    assert_eq!(
        relay.metric(r#"alert_relay_notification_requests_failed_total{reason="serverError",receiver="flaky"}"#).await,
        2.0
    );
    assert_eq!(relay.metric(r#"alert_relay_spool_pending{receiver="flaky"}"#).await, 0.0);
    assert_eq!(relay.metric(r#"alert_relay_notification_delivery_latency_seconds_count{receiver="flaky"}"#).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receivers_sharing_one_stored_body_each_get_it_whole_whatever_the_others_do() {
    // Two receivers get the same bytes (one stored payload between them), a
    // third its own: the first delivered at once, the second after two
    // failures, the shared body must outlive its first delivery.
    let at_once = target(200).await;
    let flaky = failing_then(503, 2).await;
    let other = target(200).await;
    let relay = TestRelay::start(&format!(
        "receivers:\n  - {{ name: at-once, url: '{}' }}\n  - {{ name: flaky, url: '{}', {FAST_RETRY} }}\n  \
         - {{ name: critical, url: '{}', conditions: [{{ label: severity, operator: In, values: [critical] }}] }}\n",
        at_once.uri(),
        flaky.uri(),
        other.uri()
    ))
    .await;
    assert_eq!(relay.post(MIXED).await.0, 200);
    eventually("every delivery", || async {
        let mut delivered = 0.0;
        for name in ["at-once", "flaky", "critical"] {
            let series = format!(r#"alert_relay_notifications_delivered_total{{receiver="{name}"}}"#);
            delivered += relay.metric(&series).await;
        }
        delivered == 3.0
    })
    .await;
    let first = at_once.received_requests().await.unwrap();
    let retried = flaky.received_requests().await.unwrap();
    assert_eq!((first.len(), retried.len()), (1, 3));
    assert!(retried.iter().all(|r| r.body == first[0].body), "the same bytes on every attempt");
    let whole: serde_json::Value = serde_json::from_str(MIXED).unwrap();
    let sent: serde_json::Value = serde_json::from_slice(&first[0].body).unwrap();
    assert_eq!(sent["alerts"], whole["alerts"]);
    let own: serde_json::Value = serde_json::from_slice(&other.received_requests().await.unwrap()[0].body).unwrap();
    assert!(own["alerts"].as_array().unwrap().len() < whole["alerts"].as_array().unwrap().len());
    assert!(own["alerts"].as_array().unwrap().iter().all(|a| a["labels"]["severity"] == "critical"));
    assert_eq!(relay.metric(r#"alert_relay_spool_pending{receiver="flaky"}"#).await, 0.0);
}

/// A target that answers from a list, then 200, and notes when each request came.
fn scripted(answers: Vec<ResponseTemplate>, seen: Arc<Mutex<Vec<Instant>>>) -> impl Fn(&Request) -> ResponseTemplate {
    move |_: &Request| {
        let mut seen = seen.lock().unwrap();
        seen.push(Instant::now());
        answers.get(seen.len() - 1).cloned().unwrap_or_else(|| ResponseTemplate::new(200))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_honour_retry_after_up_to_max_interval() {
    let honoured = MockServer::start().await;
    let honoured_seen = Arc::new(Mutex::new(Vec::new()));
    Mock::given(method("POST"))
        .respond_with(scripted(
            vec![ResponseTemplate::new(429).insert_header("Retry-After", "1")],
            honoured_seen.clone(),
        ))
        .mount(&honoured)
        .await;
    let capped = MockServer::start().await;
    let capped_seen = Arc::new(Mutex::new(Vec::new()));
    Mock::given(method("POST"))
        .respond_with(scripted(
            vec![ResponseTemplate::new(429).insert_header("Retry-After", "3600")],
            capped_seen.clone(),
        ))
        .mount(&capped)
        .await;
    let relay = TestRelay::start(&format!(
        r#"
receivers:
  - {{ name: honoured, url: '{}', retry: {{ initial_interval: 10ms, max_interval: 5s, jitter: 0.0 }} }}
  - {{ name: capped, url: '{}', retry: {{ initial_interval: 10ms, max_interval: 300ms, jitter: 0.0 }} }}
"#,
        honoured.uri(),
        capped.uri()
    ))
    .await;
    assert_eq!(relay.post(FIRING).await.0, 200);
    eventually("both delivered", || async {
        honoured_seen.lock().unwrap().len() == 2 && capped_seen.lock().unwrap().len() == 2
    })
    .await;
    let gap = |seen: &Arc<Mutex<Vec<Instant>>>| {
        let s = seen.lock().unwrap();
        s[1] - s[0]
    };
    // Without Retry-After the retry would come after 10ms.
    assert!(gap(&honoured_seen) >= Duration::from_millis(950), "{:?}", gap(&honoured_seen));
    assert_eq!(
        relay.metric(r#"alert_relay_notification_requests_failed_total{reason="rateLimited",receiver="capped"}"#).await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_on_a_server_error_and_as_an_http_date_is_honoured() {
    let dated = MockServer::start().await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let at = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(3));
    Mock::given(method("POST"))
        .respond_with(scripted(
            vec![ResponseTemplate::new(503).insert_header("Retry-After", at.as_str())],
            seen.clone(),
        ))
        .mount(&dated)
        .await;
    let relay = TestRelay::start(&format!(
        "receivers: [{{ name: dated, url: '{}', retry: {{ initial_interval: 10ms, max_interval: 10s, jitter: 0.0 }} }}]",
        dated.uri()
    ))
    .await;
    assert_eq!(relay.post(FIRING).await.0, 200);
    eventually("the retry", || async { seen.lock().unwrap().len() == 2 }).await;
    let s = seen.lock().unwrap().clone();
    // The date has whole seconds: at least 2 s after the first attempt, where
    // the policy alone would have retried after 10 ms.
    assert!(s[1] - s[0] >= Duration::from_millis(1900), "{:?}", s[1] - s[0]);
    assert_eq!(
        relay.metric(r#"alert_relay_notification_requests_failed_total{reason="serverError",receiver="dated"}"#).await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_slower_than_the_timeout_is_a_retried_timeout() {
    let slow = delayed(200, Duration::from_secs(30)).await;
    let relay = TestRelay::start(&format!(
        "receivers: [{{ name: slow, url: '{}', timeout: 200ms, retry: {{ initial_interval: 10ms, max_interval: 20ms, max_attempts: 2 }} }}]",
        slow.uri()
    ))
    .await;
    assert_eq!(relay.post(FIRING).await.0, 200);
    eventually("expiry after two timed-out attempts", || async {
        relay.metric(r#"alert_relay_notifications_failed_total{reason="expired",receiver="slow"}"#).await == 1.0
    })
    .await;
    assert_eq!(
        relay.metric(r#"alert_relay_notification_requests_failed_total{reason="timeout",receiver="slow"}"#).await,
        2.0,
        "both attempts timed out, and the first was retried"
    );
    assert_eq!(relay.metric(r#"alert_relay_notifications_delivered_total{receiver="slow"}"#).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_not_followed() {
    let elsewhere = target(200).await;
    let moved = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(302).insert_header("Location", elsewhere.uri().as_str()))
        .mount(&moved)
        .await;
    let relay =
        TestRelay::start(&format!("receivers: [{{ name: moved, url: '{}', {FAST_RETRY} }}]", moved.uri())).await;
    assert_eq!(relay.post(FIRING).await.0, 200);
    eventually("a dead letter", || async {
        relay.metric(r#"alert_relay_notifications_failed_total{reason="clientError",receiver="moved"}"#).await == 1.0
    })
    .await;
    assert_eq!((count(&moved).await, count(&elsewhere).await), (1, 0), "the Location was never requested");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_alerts_adds_what_it_cuts_to_the_incoming_truncated_alerts() {
    let t = target(200).await;
    let relay = TestRelay::start(&format!("receivers: [{{ name: one, url: '{}', max_alerts: 1 }}]", t.uri())).await;
    let mut body: serde_json::Value = serde_json::from_slice(&payload(
        "g",
        &[
            ("firing", &[("alertname", "A"), ("n", "1")]),
            ("firing", &[("alertname", "A"), ("n", "2")]),
            ("firing", &[("alertname", "A"), ("n", "3")]),
        ],
    ))
    .unwrap();
    body["truncatedAlerts"] = serde_json::json!(5);
    assert_eq!(relay.post(serde_json::to_vec(&body).unwrap()).await.0, 200);
    eventually("delivery", || async { count(&t).await == 1 }).await;
    let sent = &bodies(&t).await[0];
    assert_eq!(sent["alerts"].as_array().unwrap().len(), 1);
    assert_eq!(sent["alerts"][0]["labels"]["n"], "1", "the first alert is kept");
    assert_eq!(sent["truncatedAlerts"], 7, "5 cut by Alertmanager + 2 by max_alerts");
    assert_eq!(relay.metric(r#"alert_relay_alerts_filtered_total{reason="max_alerts",receiver="one"}"#).await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_dead_letter_after_one_attempt() {
    let (bad, denied) = (target(400).await, target(403).await);
    let relay = TestRelay::start(&format!(
        "receivers:\n  - {{ name: bad, url: '{}', {FAST_RETRY} }}\n  - {{ name: denied, url: '{}', {FAST_RETRY} }}\n",
        bad.uri(),
        denied.uri()
    ))
    .await;
    assert_eq!(relay.post(FIRING).await.0, 200);
    eventually("dead letters", || async {
        relay.metric(r#"alert_relay_dead_letters{receiver="bad"}"#).await == 1.0
            && relay.metric(r#"alert_relay_dead_letters{receiver="denied"}"#).await == 1.0
    })
    .await;
    assert_eq!(
        relay.metric(r#"alert_relay_notifications_failed_total{reason="clientError",receiver="bad"}"#).await,
        1.0
    );
    assert_eq!(
        relay.metric(r#"alert_relay_notifications_failed_total{reason="authError",receiver="denied"}"#).await,
        1.0
    );
    assert_eq!(relay.metric(r#"alert_relay_spool_pending{receiver="bad"}"#).await, 0.0);
    assert_eq!((count(&bad).await, count(&denied).await), (1, 1), "no retry of a permanent failure");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn created_and_no_content_are_success() {
    let (created, empty) = (target(201).await, target(204).await);
    let relay = TestRelay::start(&format!(
        "receivers:\n  - {{ name: created, url: '{}', {FAST_RETRY} }}\n  - {{ name: empty, url: '{}', {FAST_RETRY} }}\n",
        created.uri(),
        empty.uri()
    ))
    .await;
    assert_eq!(relay.post(FIRING).await.0, 200);
    for name in ["created", "empty"] {
        eventually("delivered", || async {
            relay.metric(&format!(r#"alert_relay_notifications_delivered_total{{receiver="{name}"}}"#)).await == 1.0
        })
        .await;
        assert_eq!(
            relay.metric(&format!(r#"alert_relay_notification_requests_total{{receiver="{name}"}}"#)).await,
            1.0
        );
    }
    assert_eq!((count(&created).await, count(&empty).await), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_target_retries_until_max_elapsed_then_dead_letters() {
    let relay = TestRelay::start(&format!(
        "receivers: [{{ name: gone, url: 'http://127.0.0.1:{}/x', retry: {{ initial_interval: 50ms, max_interval: 100ms, max_elapsed: 700ms, jitter: 0.0 }} }}]",
        closed_port()
    ))
    .await;
    assert_eq!(relay.post(FIRING).await.0, 200);
    eventually("expiry", || async {
        relay.metric(r#"alert_relay_notifications_failed_total{reason="expired",receiver="gone"}"#).await == 1.0
    })
    .await;
    let failures =
        relay.metric(r#"alert_relay_notification_requests_failed_total{reason="connection",receiver="gone"}"#).await;
    // The first retry is due 50 ms after the first attempt, 14 times inside
    // max_elapsed: a retry happened however slow the machine.
    assert!(failures >= 2.0, "retried before giving up: {failures}");
    assert_eq!(relay.metric(r#"alert_relay_dead_letters{receiver="gone"}"#).await, 1.0);
    assert_eq!(relay.metric(r#"alert_relay_spool_pending{receiver="gone"}"#).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_attempts_bounds_retries() {
    let t = target(500).await;
    let relay = TestRelay::start(&format!(
        "receivers: [{{ name: r, url: '{}', retry: {{ initial_interval: 10ms, max_interval: 20ms, max_attempts: 3 }} }}]",
        t.uri()
    ))
    .await;
    assert_eq!(relay.post(FIRING).await.0, 200);
    eventually("expiry", || async {
        relay.metric(r#"alert_relay_notifications_failed_total{reason="expired",receiver="r"}"#).await == 1.0
    })
    .await;
    assert_eq!(count(&t).await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_notification_supersedes_pending_one() {
    let t = failing_then(503, 1).await;
    // After the first failure the older notification waits 5s: long enough that
    // only supersession can explain it never arriving.
    let relay = TestRelay::start(&format!(
        "receivers: [{{ name: r, url: '{}', retry: {{ initial_interval: 5s, max_interval: 5s, jitter: 0.0 }} }}]",
        t.uri()
    ))
    .await;
    let firing = payload("{}:{alertname=\"Disk\"}", &[("firing", &[("alertname", "Disk")])]);
    let resolved = payload("{}:{alertname=\"Disk\"}", &[("resolved", &[("alertname", "Disk")])]);
    assert_eq!(relay.post(firing).await.0, 200);
    eventually("the first attempt", || async { count(&t).await == 1 }).await;
    assert_eq!(relay.post(resolved).await.0, 200);
    eventually("the newer one delivered", || async {
        relay.metric(r#"alert_relay_notifications_delivered_total{receiver="r"}"#).await == 1.0
    })
    .await;
    assert_eq!(relay.metric(r#"alert_relay_notifications_superseded_total{receiver="r"}"#).await, 1.0);
    assert_eq!(relay.metric(r#"alert_relay_spool_pending{receiver="r"}"#).await, 0.0, "the older one is gone");
    let got = bodies(&t).await;
    assert_eq!(got.len(), 2);
    assert_eq!((got[0]["status"].as_str(), got[1]["status"].as_str()), (Some("firing"), Some("resolved")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_target_does_not_delay_a_healthy_receiver() {
    let hanging = delayed(200, Duration::from_secs(120)).await;
    let healthy = target(200).await;
    // The hanging receiver's timeout is longer than the test's deadline: if it
    // could hold up the healthy one, the test would time out.
    let relay = TestRelay::start(&format!(
        "receivers:\n  - {{ name: hanging, url: '{}', timeout: 60s, concurrency: 2 }}\n  - {{ name: healthy, url: '{}', concurrency: 1 }}\n",
        hanging.uri(),
        healthy.uri()
    ))
    .await;
    for i in 0..10 {
        let body = payload(&format!("group-{i}"), &[("firing", &[("alertname", "A")])]);
        assert_eq!(relay.post(body).await.0, 200);
    }
    eventually("the healthy receiver to get all ten", || async { count(&healthy).await == 10 }).await;
    eventually("both of the hanging receiver's workers stuck", || async { count(&hanging).await == 2 }).await;
    assert_eq!(relay.metric(r#"alert_relay_spool_pending{receiver="hanging"}"#).await, 10.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_answered_counted_and_survived() {
    let t = target(200).await;
    let relay = TestRelay::start(&format!(
        "server: {{ listen: '127.0.0.1:0', max_body_bytes: 2048 }}\nreceivers: [{{ name: r, url: '{}' }}]",
        t.uri()
    ))
    .await;
    let url = format!("{}/webhook", relay.base);

    let (s, e) = relay.post(&b"{not json"[..]).await;
    assert_eq!(s, 400);
    assert!(e["error"].as_str().unwrap().contains("invalid payload"), "{e}");

    let (s, e) =
        relay.post(&br#"{"status":"firing","alerts":[{"status":"firing","labels":{"severity":3}}]}"#[..]).await;
    assert_eq!(s, 400);
    assert_eq!(e["details"], serde_json::json!(["alerts[0].labels.severity"]));
    assert!(e["error"].as_str().unwrap().contains("invalid type: integer"), "{e}");

    let (s, e) = relay.post(&br#"{"status":"firing"}"#[..]).await;
    assert_eq!(s, 400);
    assert!(e["error"].as_str().unwrap().contains("missing field `alerts`"), "{e}");

    let (s, e) = relay.post(&br#"{"version":"3","status":"firing","alerts":[]}"#[..]).await;
    assert_eq!((s, e["details"].clone()), (400, serde_json::json!(["version"])));

    let huge = payload("g", &[("firing", &[("alertname", &"x".repeat(4096))])]);
    let (s, e) = relay.post(huge.clone()).await;
    assert_eq!(s, 413);
    assert!(e["error"].as_str().unwrap().contains("max_body_bytes"), "{e}");
    // Chunked, with no Content-Length to check up front.
    assert_eq!(post_chunked(relay.base.trim_start_matches("http://"), &huge).await, 413);

    let resp = client().post(&url).header("content-type", "text/plain").body(FIRING).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 415);
    let e: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    assert!(e["error"].as_str().unwrap().contains("application/json"), "{e}");
    let resp = client().post(&url).body(FIRING).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 415);

    let resp = client().get(format!("{}/nowhere", relay.base)).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    assert!(serde_json::from_str::<Value>(&resp.text().await.unwrap()).unwrap()["error"].is_string());

    // Still serving, and every answer counted.
    assert_eq!(relay.post(FIRING).await.0, 200);
    assert_eq!(relay.metric(r#"alert_relay_webhook_requests_total{code="400"}"#).await, 4.0);
    assert_eq!(relay.metric(r#"alert_relay_webhook_requests_total{code="413"}"#).await, 2.0);
    assert_eq!(relay.metric(r#"alert_relay_webhook_requests_total{code="415"}"#).await, 2.0);
    assert_eq!(relay.metric(r#"alert_relay_webhook_requests_total{code="200"}"#).await, 1.0);
}

/// Posts `body` with chunked transfer encoding over a raw socket; the status code.
async fn post_chunked(addr: &str, body: &[u8]) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request = format!(
        "POST /webhook HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for chunk in body.chunks(512) {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    // The relay may answer and close before reading everything.
    let _ = tcp.write_all(&request).await;
    let mut answer = vec![0u8; 12];
    tcp.read_exact(&mut answer).await.unwrap();
    String::from_utf8_lossy(&answer[9..12]).parse().unwrap()
}

/// Sends `GET path` on a kept-alive connection and reads one answer; its status,
/// or `None` if the relay had closed the connection.
async fn get_on(tcp: &mut tokio::net::TcpStream, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: relay\r\n\r\n").as_bytes()).await.ok()?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = tokio::time::timeout(DEADLINE, tcp.read(&mut buf)).await.expect("an answer or a close").ok()?;
        if n == 0 {
            return None;
        }
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer).to_ascii_lowercase();
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().expect("a length"));
            if answer.len() >= end + 4 + length {
                return text[9..12].parse().ok();
            }
        }
    }
}

/// Alertmanager's HTTP client keeps an idle connection for 5 minutes. The
/// relay keeps it longer (`server.idle_timeout`, 6 minutes), so the client is
/// the side that closes it, and never writes a notification into a connection
/// the relay is closing (Go does not resend a POST that was written).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_alive_connections_stay_open_until_idle_timeout() {
    use tokio::io::AsyncReadExt;
    let default = TestRelay::start("receivers: []").await;
    let short = TestRelay::start("server: { listen: '127.0.0.1:0', idle_timeout: 1s }\nreceivers: []").await;
    let connect = |base: &str| tokio::net::TcpStream::connect(base.trim_start_matches("http://").to_string());
    let (mut kept, mut closed) = (connect(&default.base).await.unwrap(), connect(&short.base).await.unwrap());
    assert_eq!(get_on(&mut kept, "/-/healthy").await, Some(200));
    assert_eq!(get_on(&mut closed, "/-/healthy").await, Some(200));
    let mut rest = Vec::new();
    let read = tokio::time::timeout(DEADLINE, closed.read_to_end(&mut rest)).await;
    assert!(matches!(read, Ok(Ok(0))), "idle_timeout: 1s closes an idle connection: {read:?}");
    // Idle past actix-web's own default of 5 s, the connection still answers.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(get_on(&mut kept, "/-/healthy").await, Some(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_auth_is_required_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let token = write(dir.path(), "token", "s3cret\n");
    let relay = TestRelay::start(&format!(
        "server: {{ listen: '127.0.0.1:0', webhook_auth: {{ type: bearer, token_file: '{}' }} }}\nreceivers: []",
        token.display()
    ))
    .await;
    let url = format!("{}/webhook", relay.base);
    let (s, e) = post_json(&url, FIRING.into(), None).await;
    assert_eq!(s, 401);
    assert!(!e.to_string().contains("s3cret"));
    assert_eq!(post_json(&url, FIRING.into(), Some("Bearer wrong")).await.0, 401);
    assert_eq!(post_json(&url, FIRING.into(), Some("Bearer s3cret")).await.0, 200);
    assert_eq!(relay.metric(r#"alert_relay_webhook_requests_total{code="401"}"#).await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_spool_answers_503_with_retry_after() {
    let relay = TestRelay::start(&format!(
        "spool: {{ dir: 'SPOOL_DIR', max_pending: 2 }}\nreceivers: [{{ name: r, url: 'http://127.0.0.1:{}', retry: {{ initial_interval: 1h, max_interval: 1h }} }}]",
        closed_port()
    ))
    .await;
    for group in ["a", "b"] {
        let body = payload(group, &[("firing", &[("alertname", "A")])]);
        assert_eq!(relay.post(body).await.0, 200);
    }
    let url = format!("{}/webhook", relay.base);
    let resp = client().post(&url).header("content-type", "application/json").body(FIRING).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    assert_eq!(resp.headers().get("retry-after").unwrap(), "5");
    let e: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    assert!(e["error"].as_str().unwrap().contains("spool full"), "{e}");
    assert_eq!(relay.metric(r#"alert_relay_webhook_requests_total{code="503"}"#).await, 1.0);
    assert_eq!(relay.metric(r#"alert_relay_spool_pending{receiver="r"}"#).await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_readiness_from_start() {
    let relay = TestRelay::start(
        "receivers:\n  - { name: one, url: 'http://127.0.0.1:1' }\n  - { name: two, url: 'http://127.0.0.1:1' }\n",
    )
    .await;
    let text = client().get(format!("{}/metrics", relay.base)).send().await.unwrap().text().await.unwrap();
    for r in ["one", "two"] {
        for reason in ["conditions", "resolved", "disabled", "max_alerts"] {
            assert!(
                text.contains(&format!(r#"alert_relay_alerts_filtered_total{{reason="{reason}",receiver="{r}"}} 0"#))
            );
        }
        for reason in ["clientError", "authError", "expired"] {
            assert!(text
                .contains(&format!(r#"alert_relay_notifications_failed_total{{reason="{reason}",receiver="{r}"}} 0"#)));
        }
        for reason in ["serverError", "clientError", "authError", "rateLimited", "timeout", "connection"] {
            assert!(text.contains(&format!(
                r#"alert_relay_notification_requests_failed_total{{reason="{reason}",receiver="{r}"}} 0"#
            )));
        }
        for series in [
            "alerts_matched_total",
            "notifications_total",
            "notifications_delivered_total",
            "notifications_superseded_total",
            "notification_requests_total",
            "spool_pending",
            "dead_letters",
            "notification_request_duration_seconds_count",
            "notification_delivery_latency_seconds_count",
        ] {
            assert!(text.contains(&format!(r#"alert_relay_{series}{{receiver="{r}"}} 0"#)), "{series} {r}");
        }
    }
    assert!(text.contains("alert_relay_build_info{version=\""));
    assert!(text.contains("alert_relay_config_last_reload_successful 1"));
    assert!(text.contains("alert_relay_spool_commit_duration_seconds_bucket"));
    assert!(text.contains("alert_relay_spool_early_starts_total 0"));
    assert!(text.contains("process_resident_memory_bytes"));
    for path in ["/-/healthy", "/-/ready"] {
        assert_eq!(client().get(format!("{}{path}", relay.base)).send().await.unwrap().status().as_u16(), 200);
    }
}

async fn delivered(relay: &TestRelay, name: &str) -> bool {
    relay.metric(&format!(r#"alert_relay_notifications_delivered_total{{receiver="{name}"}}"#)).await == 1.0
}

async fn expired(relay: &TestRelay, name: &str) -> bool {
    relay.metric(&format!(r#"alert_relay_notifications_failed_total{{reason="expired",receiver="{name}"}}"#)).await
        == 1.0
}

const GIVE_UP_SOON: &str = "retry: { initial_interval: 50ms, max_interval: 100ms, max_elapsed: 500ms }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_needs_a_trusted_ca_or_insecure_and_honours_server_name() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("alert-relay test CA");
    let ca_file = write(dir.path(), "ca.pem", &ca.pem());
    let target = TlsTarget::start(&ca.leaf(&["localhost", "127.0.0.1"]), None).await;
    let named = TlsTarget::start(&ca.leaf(&["hooks.internal.test"]), None).await;
    let (url, named_url) = (format!("https://{}/hook", target.addr), format!("https://{}/hook", named.addr));
    let relay = TestRelay::start(&format!(
        r#"
receivers:
  - {{ name: untrusted, url: '{url}', {GIVE_UP_SOON} }}
  - {{ name: with-ca, url: '{url}', tls: {{ ca_file: '{ca}' }} }}
  - {{ name: insecure, url: '{url}', tls: {{ insecure_skip_verify: true }} }}
  - {{ name: pinned, url: '{named_url}', tls: {{ ca_file: '{ca}', server_name: hooks.internal.test }} }}
  - {{ name: wrong-name, url: '{named_url}', tls: {{ ca_file: '{ca}' }}, {GIVE_UP_SOON} }}
"#,
        ca = ca_file.display()
    ))
    .await;
    assert_eq!(relay.post(FIRING).await.0, 200);
    for name in ["with-ca", "insecure", "pinned"] {
        eventually(&format!("{name} delivered"), || delivered(&relay, name)).await;
    }
    for name in ["untrusted", "wrong-name"] {
        eventually(&format!("{name} to give up"), || expired(&relay, name)).await;
        let failures = relay
            .metric(&format!(
                r#"alert_relay_notification_requests_failed_total{{reason="connection",receiver="{name}"}}"#
            ))
            .await;
        assert!(failures >= 1.0, "{name}: handshake failures are connection failures");
    }
    assert_eq!((target.hits(), named.hits()), (2, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_self_signed_server_certificate_given_as_ca_file_is_pinned() {
    let dir = tempfile::tempdir().unwrap();
    let own = Leaf::self_signed(&["localhost"]);
    let other = Leaf::self_signed(&["localhost"]);
    let target = TlsTarget::start(&own, None).await;
    let own_file = write(dir.path(), "own.pem", &own.cert_pem);
    let other_file = write(dir.path(), "other.pem", &other.cert_pem);
    let url = format!("https://localhost:{}/hook", target.addr.port());
    let relay = TestRelay::start(&format!(
        r#"
{ADMIN_CONFIG}receivers:
  - {{ name: pinned, url: '{url}', tls: {{ ca_file: '{}' }} }}
  - {{ name: other, url: '{url}', tls: {{ ca_file: '{}' }}, {GIVE_UP_SOON} }}
  - {{ name: wrong-name, url: '{url}', tls: {{ ca_file: '{}', server_name: elsewhere.test }}, {GIVE_UP_SOON} }}
"#,
        own_file.display(),
        other_file.display(),
        own_file.display()
    ))
    .await;
    assert_eq!(relay.post(FIRING).await.0, 200);
    eventually("the pinned receiver delivered", || delivered(&relay, "pinned")).await;
    for (name, words) in [
        ("other", "the server's certificate is not issued by a CA in ca_file"),
        ("wrong-name", "the server's certificate is not valid for the name elsewhere.test"),
    ] {
        eventually(&format!("{name} to give up"), || expired(&relay, name)).await;
        let (_, dead) = relay.admin("GET", &format!("/api/v1/deliveries?receiver={name}&state=dead"), None).await;
        let error = dead["deliveries"][0]["last_error"].as_str().unwrap().to_string();
        assert!(error.contains(words), "{name}: {error}");
        assert!(!error.contains("OtherError"), "{error}");
    }
    assert_eq!(target.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_target_accepts_only_the_configured_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (server_ca, client_ca, rogue_ca) = (Ca::new("server CA"), Ca::new("client CA"), Ca::new("rogue CA"));
    let target = TlsTarget::start(&server_ca.leaf(&["127.0.0.1"]), Some(&client_ca)).await;
    let ca = write(dir.path(), "server-ca.pem", &server_ca.pem());
    let good = client_ca.leaf(&["alert-relay"]);
    let rogue = rogue_ca.leaf(&["alert-relay"]);
    let (good_cert, good_key) =
        (write(dir.path(), "good.pem", &good.cert_pem), write(dir.path(), "good-key.pem", &good.key_pem));
    let (rogue_cert, rogue_key) =
        (write(dir.path(), "rogue.pem", &rogue.cert_pem), write(dir.path(), "rogue-key.pem", &rogue.key_pem));
    let url = format!("https://{}/hook", target.addr);
    let relay = TestRelay::start(&format!(
        r#"
receivers:
  - {{ name: client-cert, url: '{url}', tls: {{ ca_file: '{ca}', cert_file: '{gc}', key_file: '{gk}' }} }}
  - {{ name: rogue-cert, url: '{url}', tls: {{ ca_file: '{ca}', cert_file: '{rc}', key_file: '{rk}' }}, {GIVE_UP_SOON} }}
  - {{ name: no-cert, url: '{url}', tls: {{ ca_file: '{ca}' }}, {GIVE_UP_SOON} }}
"#,
        ca = ca.display(),
        gc = good_cert.display(),
        gk = good_key.display(),
        rc = rogue_cert.display(),
        rk = rogue_key.display()
    ))
    .await;
    assert_eq!(relay.post(FIRING).await.0, 200);
    eventually("delivery with the client certificate", || delivered(&relay, "client-cert")).await;
    for name in ["rogue-cert", "no-cert"] {
        eventually(&format!("{name} to give up"), || expired(&relay, name)).await;
    }
    assert_eq!(target.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_attempts_in_flight_and_refuses_new_work() {
    let slow = GatedTarget::start(200, 0).await;
    let mut relay =
        TestRelay::start(&format!("receivers: [{{ name: slow, url: '{}', timeout: 10s }}]", slow.url)).await;
    let url = format!("{}/webhook", relay.base);
    let ready = format!("{}/-/ready", relay.base);
    assert_eq!(relay.post(FIRING).await.0, 200);
    eventually("the attempt to be in flight", || async { slow.hits() == 1 }).await;
    let running = relay.relay.take().unwrap();
    let stopping = tokio::spawn(running.shutdown());
    // The target holds the attempt until released: the stop is under way for
    // as long as the test needs.
    eventually("503 while shutting down", || async {
        let resp = client().post(&url).header("content-type", "application/json").body(FIRING).send().await;
        matches!(resp, Ok(r) if r.status().as_u16() == 503 && r.headers().contains_key("retry-after"))
    })
    .await;
    let not_ready = client().get(&ready).send().await.unwrap();
    assert_eq!(not_ready.status().as_u16(), 503, "/-/ready fails while stopping");
    assert!(!stopping.is_finished(), "the stop waits for the attempt in flight");
    slow.release(1);
    stopping.await.unwrap();
    // The attempt in flight was allowed to finish: nothing is left in the spool.
    let spool_dir = relay.dir.path().join("spool");
    let mut reopened = None;
    eventually("the spool to be released", || {
        let gauges = alert_relay::spool::SpoolGauges::unregistered();
        let attempt = alert_relay::spool::Spool::open(&spool_dir, false, gauges);
        let ok = attempt.is_ok();
        reopened = attempt.ok();
        async move { ok }
    })
    .await;
    assert!(reopened.unwrap().load_all().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_check_metrics() {
    if !needs(&["promtool"]) {
        return;
    }
    let t = target(500).await;
    let relay = TestRelay::start(&format!(
        "receivers:\n  - {{ name: r, url: '{}', {GIVE_UP_SOON} }}\n  - {{ name: off, url: '{}', enabled: false }}\n",
        t.uri(),
        t.uri()
    ))
    .await;
    assert_eq!(relay.post(MIXED).await.0, 200);
    eventually("a dead letter", || expired(&relay, "r")).await;
    let text = client().get(format!("{}/metrics", relay.base)).send().await.unwrap().text().await.unwrap();
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; scripts/test installs it)");
    use std::io::Write;
    promtool.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(relay.metric(r#"alert_relay_alerts_filtered_total{reason="disabled",receiver="off"}"#).await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_url_sends_deliveries_through_the_proxy() {
    // An HTTP proxy gets the request in absolute form; a mock server stands in
    // for it and answers as the target would. Nothing listens at the target's
    // own address, so only the proxy can have delivered it.
    let proxy = target(200).await;
    let relay = TestRelay::start(&format!(
        "receivers: [{{ name: proxied, url: 'http://127.0.0.1:{}/hook', proxy_url: '{}' }}]",
        closed_port(),
        proxy.uri()
    ))
    .await;
    assert_eq!(relay.post(FIRING).await.0, 200);
    eventually("delivery through the proxy", || delivered(&relay, "proxied")).await;
    let requests = proxy.received_requests().await.unwrap();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].url.path(), "/hook");
    assert_eq!(header(&requests[0], "x-alert-relay-receiver"), "proxied");
}

// ---------------------------------------------------------------------------
// OAuth 2.0 client credentials against a loopback token endpoint.

/// A token endpoint answering `tokens` in turn (the last one again after
/// that), each living `expires_in` seconds.
async fn token_endpoint(tokens: &[&str], expires_in: u64) -> MockServer {
    let answers = tokens
        .iter()
        .map(|t| serde_json::json!({"access_token": t, "token_type": "Bearer", "expires_in": expires_in}).to_string());
    answering(answers.collect()).await
}

/// A server answering every POST 200 with the JSON bodies given, in turn (the
/// last one again after that).
async fn answering(bodies: Vec<String>) -> MockServer {
    let server = MockServer::start().await;
    let n = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    Mock::given(method("POST"))
        .respond_with(move |_: &Request| {
            let i = n.fetch_add(1, std::sync::atomic::Ordering::SeqCst).min(bodies.len() - 1);
            ResponseTemplate::new(200).set_body_raw(bodies[i].clone(), "application/json")
        })
        .mount(&server)
        .await;
    server
}

fn oauth_receiver(name: &str, url: &str, token_url: &str) -> String {
    format!(
        "{{ name: {name}, url: '{url}', {FAST_RETRY}, auth: {{ type: oauth2, client_id: relay, \
         client_secret: 's3cret/+', token_url: '{token_url}', scopes: [alerts.write, alerts.read], \
         endpoint_params: {{ audience: alerts }} }} }}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth2_token_is_fetched_once_and_shared_by_many_deliveries() {
    let idp = token_endpoint(&["tok-1"], 3600).await;
    let t = target(200).await;
    let relay = TestRelay::start(&format!("receivers: [{}]", oauth_receiver("o", &t.uri(), &idp.uri()))).await;
    for g in 0..5 {
        assert_eq!(relay.post(payload(&format!("g{g}"), &[("firing", &[("alertname", "A")])])).await.0, 200);
    }
    eventually("five deliveries", || async { count(&t).await == 5 }).await;
    for r in t.received_requests().await.unwrap() {
        assert_eq!(header(&r, "authorization"), "Bearer tok-1");
    }
    let asked = idp.received_requests().await.unwrap();
    assert_eq!(asked.len(), 1, "one token request for five deliveries");
    // RFC 6749 4.4.2, with the client authenticated by HTTP Basic (2.3.1:
    // form-encoded first, so "/" and "+" become %2F and %2B).
    let basic = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "relay:s3cret%2F%2B");
    assert_eq!(header(&asked[0], "authorization"), format!("Basic {basic}"));
    assert_eq!(header(&asked[0], "content-type"), "application/x-www-form-urlencoded");
    let form = String::from_utf8(asked[0].body.clone()).unwrap();
    assert_eq!(form, "grant_type=client_credentials&scope=alerts.write+alerts.read&audience=alerts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth2_token_is_renewed_when_it_expires_and_once_on_a_401() {
    // Expiry: a token that lives 1 s is renewed half way (the unit test of
    // `renew_at` pins the rule; here the real path is taken).
    let idp = token_endpoint(&["short-1", "short-2"], 1).await;
    let t = target(200).await;
    let relay = TestRelay::start(&format!("receivers: [{}]", oauth_receiver("o", &t.uri(), &idp.uri()))).await;
    let authorizations = || async {
        t.received_requests().await.unwrap().iter().map(|r| header(r, "authorization")).collect::<Vec<_>>()
    };
    assert_eq!(relay.post(payload("a", &[("firing", &[("alertname", "A")])])).await.0, 200);
    eventually("the first delivery", || async { count(&t).await == 1 }).await;
    assert_eq!(authorizations().await, ["Bearer short-1"]);
    // Notified again and again until a delivery carries the renewed token
    // (due half way through the first one's second of life).
    let sent = std::sync::atomic::AtomicUsize::new(0);
    eventually("a delivery with the renewed token", || async {
        let n = sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(relay.post(payload(&format!("b{n}"), &[("firing", &[("alertname", "A")])])).await.0, 200);
        // One at a time, so the target sees the tokens in the order they were used.
        eventually("that delivery", || async { count(&t).await == n + 2 }).await;
        authorizations().await.contains(&"Bearer short-2".to_string())
    })
    .await;
    let seen = authorizations().await;
    let renewed = seen.iter().position(|a| a == "Bearer short-2").unwrap();
    assert!(seen[..renewed].iter().all(|a| a == "Bearer short-1"), "{seen:?}");
    assert!(seen[renewed..].iter().all(|a| a == "Bearer short-2"), "the last token, served again: {seen:?}");

    // 401: the cached token is dropped, a new one fetched, the request sent again.
    let idp = token_endpoint(&["revoked", "fresh"], 3600).await;
    let t = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(|r: &Request| {
            ResponseTemplate::new(if header(r, "authorization") == "Bearer fresh" { 204 } else { 401 })
        })
        .mount(&t)
        .await;
    let relay = TestRelay::start(&format!("receivers: [{}]", oauth_receiver("o", &t.uri(), &idp.uri()))).await;
    assert_eq!(relay.post(FIRING).await.0, 200);
    eventually("delivered with the fresh token", || delivered(&relay, "o")).await;
    assert_eq!(idp.received_requests().await.unwrap().len(), 2);
    assert_eq!(relay.metric(r#"alert_relay_notification_requests_total{receiver="o"}"#).await, 1.0, "one attempt");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth2_endpoint_failures_are_retried_and_counted_and_a_target_401_after_a_fresh_token_dead_letters() {
    let idp = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503).set_body_string("idp down"))
        .up_to_n_times(2)
        .mount(&idp)
        .await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(serde_json::json!({"access_token": "ok", "expires_in": 60})),
        )
        .mount(&idp)
        .await;
    let t = target(200).await;
    let relay = TestRelay::start(&format!("receivers: [{}]", oauth_receiver("o", &t.uri(), &idp.uri()))).await;
    assert_eq!(relay.post(FIRING).await.0, 200);
    eventually("delivered once the endpoint is back", || delivered(&relay, "o")).await;
    let auth_errors = r#"alert_relay_notification_requests_failed_total{reason="authError",receiver="o"}"#;
    assert_eq!(relay.metric(auth_errors).await, 2.0);
    assert_eq!(count(&t).await, 1, "the target saw only the attempt that had a token");

    // A target that refuses even a freshly fetched token: a permanent auth
    // error, the token never in what the API shows.
    let idp = token_endpoint(&["tok-secret-value"], 3600).await;
    let t = target(401).await;
    let relay = TestRelay::start(&format!(
        "{ADMIN_CONFIG}receivers: [{}]",
        oauth_receiver("o", &format!("{}/", t.uri()), &idp.uri())
    ))
    .await;
    assert_eq!(relay.post(FIRING).await.0, 200);
    eventually("dead-lettered", || async {
        relay.metric(r#"alert_relay_notifications_failed_total{reason="authError",receiver="o"}"#).await == 1.0
    })
    .await;
    assert_eq!(idp.received_requests().await.unwrap().len(), 2, "one refresh on the 401, no more");
    let (_, dead) = relay.admin("GET", "/api/v1/deliveries?receiver=o&state=dead", None).await;
    let (_, shown) = relay.admin("GET", "/api/v1/receivers/o", None).await;
    for text in [dead.to_string(), shown.to_string()] {
        assert!(!text.contains("tok-secret-value") && !text.contains("s3cret"), "{text}");
    }
    assert_eq!(shown["auth"]["client_secret"], "<redacted>");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth2_token_endpoint_gets_the_receivers_tls_settings() {
    // Both the token endpoint and the target present certificates of a CA
    // only the receiver's ca_file knows (not the built-in roots).
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("private CA");
    let ca_file = write(dir.path(), "ca.pem", &ca.pem());
    let idp = TlsTarget::answering(
        &ca.leaf(&["127.0.0.1"]),
        None,
        r#"{"access_token":"over-tls","token_type":"bearer","expires_in":3600}"#,
    )
    .await;
    let t = TlsTarget::start(&ca.leaf(&["127.0.0.1"]), None).await;
    let receiver = |name: &str, tls: &str| {
        format!(
            "{{ name: {name}, url: 'https://{}/hook', {GIVE_UP_SOON}, tls: {tls}, auth: {{ type: oauth2, client_id: c, \
             client_secret: s, token_url: 'https://{}/token' }} }}",
            t.addr, idp.addr
        )
    };
    let relay = TestRelay::start(&format!(
        "{ADMIN_CONFIG}receivers:\n  - {}\n  - {}\n",
        receiver("pinned", &format!("{{ ca_file: '{}' }}", ca_file.display())),
        receiver("default-roots", "{}")
    ))
    .await;
    assert_eq!(relay.post(FIRING).await.0, 200);
    eventually("delivered through the TLS token endpoint", || delivered(&relay, "pinned")).await;
    eventually("the receiver without the CA to give up", || expired(&relay, "default-roots")).await;
    let (_, dead) = relay.admin("GET", "/api/v1/deliveries?receiver=default-roots&state=dead", None).await;
    let error = dead["deliveries"][0]["last_error"].as_str().unwrap().to_string();
    assert!(error.starts_with("OAuth 2.0 token endpoint:") && error.contains("certificate"), "{error}");
    assert_eq!((idp.hits(), t.hits()), (1, 1));
}

// ---------------------------------------------------------------------------
// TLS on the relay's own listener.

fn https_base(relay: &TestRelay) -> String {
    let port = relay.relay.as_ref().unwrap().local_addr().port();
    format!("https://127.0.0.1:{port}")
}

async fn status_of(client: &reqwest::Client, url: &str) -> Result<u16, String> {
    client.get(url).send().await.map(|r| r.status().as_u16()).map_err(|e| format!("{e:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_serves_https_and_requires_client_certificates_where_configured() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, clients, rogue) = (Ca::new("listener CA"), Ca::new("client CA"), Ca::new("rogue CA"));
    let cert = write(dir.path(), "tls.crt", &ca.leaf(&["127.0.0.1"]).cert_pem);
    let leaf = ca.leaf(&["127.0.0.1"]);
    std::fs::write(&cert, &leaf.cert_pem).unwrap();
    let key = write(dir.path(), "tls.key", &leaf.key_pem);
    let client_ca = write(dir.path(), "ca.crt", &clients.pem());
    let t = target(200).await;

    // Plain TLS: HTTPS works, plain HTTP on the same port does not.
    let relay = TestRelay::start(&format!(
        "server: {{ listen: '127.0.0.1:0', tls: {{ cert_file: '{}', key_file: '{}' }} }}\nreceivers: [{{ name: r, url: '{}' }}]",
        cert.display(),
        key.display(),
        t.uri()
    ))
    .await;
    let base = https_base(&relay);
    let https = https_client(&ca, None);
    let answer = https.post(format!("{base}/webhook")).body(FIRING).header("content-type", "application/json");
    assert_eq!(answer.send().await.unwrap().status(), 200);
    eventually("delivered", || async { count(&t).await == 1 }).await;
    assert!(status_of(&client(), &format!("{}/-/healthy", base.replace("https", "http"))).await.is_err());

    // mTLS on every path: no certificate or a rogue one fails the handshake.
    let relay = TestRelay::start(&format!(
        "server: {{ listen: '127.0.0.1:0', tls: {{ cert_file: '{}', key_file: '{}', client_ca_file: '{}' }} }}",
        cert.display(),
        key.display(),
        client_ca.display()
    ))
    .await;
    let base = https_base(&relay);
    let good = clients.leaf(&["alertmanager"]);
    let bad = rogue.leaf(&["alertmanager"]);
    assert_eq!(status_of(&https_client(&ca, Some(&good)), &format!("{base}/-/healthy")).await, Ok(200));
    for (who, client) in
        [("no certificate", https_client(&ca, None)), ("a rogue certificate", https_client(&ca, Some(&bad)))]
    {
        // Refused in the handshake (TLS 1.3 clients learn it on their first read).
        let answer = status_of(&client, &format!("{base}/-/healthy")).await;
        assert!(answer.is_err(), "{who}: {answer:?}");
    }

    // Exempt paths: /metrics and health without a certificate; the rest 403.
    let relay = TestRelay::start(&format!(
        "{ADMIN_CONFIG}server: {{ listen: '127.0.0.1:0', tls: {{ cert_file: '{}', key_file: '{}', client_ca_file: '{}', \
         client_cert_exempt_paths: [/metrics, /-/healthy, /-/ready] }} }}",
        cert.display(),
        key.display(),
        client_ca.display()
    ))
    .await;
    let base = https_base(&relay);
    let anonymous = https_client(&ca, None);
    for path in ["/metrics", "/-/healthy", "/-/ready"] {
        assert_eq!(status_of(&anonymous, &format!("{base}{path}")).await, Ok(200), "{path}");
    }
    for path in ["/api/v1/receivers", "/"] {
        assert_eq!(status_of(&anonymous, &format!("{base}{path}")).await, Ok(403), "{path}");
    }
    let refused = anonymous.post(format!("{base}/webhook")).body(FIRING).send().await.unwrap();
    assert_eq!(refused.status(), 403);
    assert!(refused.text().await.unwrap().contains("needs a client certificate"));
    let with_cert = https_client(&ca, Some(&good));
    let listed = with_cert.get(format!("{base}/api/v1/receivers")).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    assert_eq!(listed.status(), 200);
    // A presented certificate is still verified on exempt paths.
    assert!(status_of(&https_client(&ca, Some(&bad)), &format!("{base}/metrics")).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_certificates_are_reread_on_change_and_a_bad_pair_is_kept_out() {
    let dir = tempfile::tempdir().unwrap();
    let (old_ca, new_ca) = (Ca::new("old CA"), Ca::new("new CA"));
    let old = old_ca.leaf(&["127.0.0.1"]);
    let cert = write(dir.path(), "tls.crt", &old.cert_pem);
    let key = write(dir.path(), "tls.key", &old.key_pem);
    let relay = TestRelay::start(&format!(
        "server: {{ listen: '127.0.0.1:0', tls: {{ cert_file: '{}', key_file: '{}' }} }}",
        cert.display(),
        key.display()
    ))
    .await;
    let base = https_base(&relay);
    let metrics = format!("{base}/metrics");
    let (old_client, new_client) = (https_client(&old_ca, None), https_client(&new_ca, None));
    // A connection opened now, kept alive across the rotation.
    assert_eq!(status_of(&old_client, &metrics).await, Ok(200));

    // A bad pair (a certificate with the old key) is refused; the old one stays.
    let new = new_ca.leaf(&["127.0.0.1"]);
    std::fs::write(&cert, &new.cert_pem).unwrap();
    let tls_ok = |client: reqwest::Client, url: String| async move {
        let text = client.get(&url).send().await.unwrap().text().await.unwrap();
        text.lines().find_map(|l| l.strip_prefix("alert_relay_tls_last_reload_successful ")).map(|v| v.to_string())
    };
    eventually("the bad pair to be reported", || {
        let (client, url) = (old_client.clone(), metrics.clone());
        async move { tls_ok(client, url).await.as_deref() == Some("0") }
    })
    .await;
    assert_eq!(status_of(&https_client(&old_ca, None), &metrics).await, Ok(200), "new handshakes: the old pair");

    // The matching key arrives: new handshakes get the new certificate; the
    // connection opened before is not dropped.
    std::fs::write(&key, &new.key_pem).unwrap();
    eventually("new handshakes to use the new certificate", || {
        let (url, fresh) = (metrics.clone(), https_client(&new_ca, None));
        async move { status_of(&fresh, &url).await == Ok(200) }
    })
    .await;
    assert!(status_of(&https_client(&old_ca, None), &metrics).await.is_err(), "the old certificate is gone");
    assert_eq!(tls_ok(new_client.clone(), metrics.clone()).await.as_deref(), Some("1"));
    assert_eq!(status_of(&old_client, &metrics).await, Ok(200), "the kept-alive connection still works");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attempt_is_signed_with_its_own_timestamp_and_the_same_webhook_id() {
    let t = failing_then(503, 1).await;
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    // Attempts more than a second apart: their Unix-second timestamps differ.
    let relay = TestRelay::start(&format!(
        "receivers: [{{ name: s, url: '{}', signing: {{ secret: '{secret}' }}, \
         retry: {{ initial_interval: 1100ms, jitter: 0.0 }} }}]",
        t.uri()
    ))
    .await;
    assert_eq!(relay.post(FIRING).await.0, 200);
    eventually("delivered on the second attempt", || delivered(&relay, "s")).await;
    let attempts = t.received_requests().await.unwrap();
    assert_eq!(attempts.len(), 2);
    let (a, b) = (&attempts[0], &attempts[1]);
    assert_eq!(header(a, "webhook-id"), header(b, "webhook-id"));
    assert_eq!(header(a, "webhook-id"), header(a, "idempotency-key"));
    let (ta, tb): (u64, u64) =
        (header(a, "webhook-timestamp").parse().unwrap(), header(b, "webhook-timestamp").parse().unwrap());
    assert!(tb > ta, "a fresh timestamp per attempt: {ta} then {tb}");
    assert_ne!(header(a, "webhook-signature"), header(b, "webhook-signature"));
    assert_eq!(a.body, b.body, "the same bytes, signed again");
}

// ---------------------------------------------------------------------------
// Body formats.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presets_and_templates_shape_the_body_with_its_content_type_and_signature() {
    let (chat, plain, am) = (target(200).await, target(200).await, target(200).await);
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let yaml = format!(
        r#"receivers:
  - {{ name: chat, url: '{chat}', payload: {{ format: slack }}, signing: {{ secret: '{secret}' }} }}
  - name: plain
    url: '{plain}'
    payload:
      format: template
      content_type: text/plain; charset=utf-8
      template: |
        {{{{ status | upper }}}} {{{{ commonLabels.alertname }}}} ({{{{ alerts | length }}}}) for {{{{ receiver_name }}}}
  - {{ name: am, url: '{am}' }}
"#,
        chat = chat.uri(),
        plain = plain.uri(),
        am = am.uri()
    );
    let relay = TestRelay::start(&yaml).await;
    assert_eq!(relay.post(FIRING).await.0, 200);
    for t in [&chat, &plain, &am] {
        eventually("every receiver's delivery", || async { count(t).await == 1 }).await;
    }
    let got = &chat.received_requests().await.unwrap()[0];
    assert_eq!(header(got, "content-type"), "application/json");
    let body: Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(body["text"], "[FIRING:2] HighLatency");
    assert!(body["attachments"][0]["text"].as_str().unwrap().contains("p99 latency above 1s"));
    // The signature covers the bytes sent: the rendered body.
    let keys = alert_relay::config::Config::from_yaml(&format!(
        "receivers: [{{ name: k, url: 'http://127.0.0.1:1/', signing: {{ secret: '{secret}' }} }}]"
    ))
    .unwrap()
    .receivers[0]
        .signing
        .clone();
    let timestamp: u64 = header(got, "webhook-timestamp").parse().unwrap();
    let expected = alert_relay::delivery::sender::signature(&keys, &header(got, "webhook-id"), timestamp, &got.body);
    assert_eq!(header(got, "webhook-signature"), expected);

    let got = &plain.received_requests().await.unwrap()[0];
    assert_eq!(header(got, "content-type"), "text/plain; charset=utf-8");
    assert_eq!(
        String::from_utf8_lossy(&got.body),
        "FIRING HighLatency (2) for plain",
        "one trailing newline dropped, as Jinja does"
    );
    // format: alertmanager is what it always was.
    let got = &am.received_requests().await.unwrap()[0];
    assert_eq!(serde_json::from_slice::<Value>(&got.body).unwrap(), serde_json::from_str::<Value>(FIRING).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_that_answer_200_with_an_error_code_are_read_as_they_mean_it() {
    // Per preset: a rate-limit code (retried, then taken) and an error code (dead letter).
    let cases: [(&str, &'static [&'static str], &'static [&'static str], &str); 3] = [
        (
            "dingtalk",
            &[
                r#"{"errcode":410100,"errmsg":"send too fast, exceed 20 times per minute"}"#,
                r#"{"errcode":0,"errmsg":"ok"}"#,
            ],
            &[r#"{"errcode":310000,"errmsg":"keywords not in content"}"#],
            "errcode 310000: keywords not in content",
        ),
        (
            "feishu",
            &[r#"{"code":11232,"msg":"frequency limited"}"#, r#"{"code":0,"msg":"success","data":{}}"#],
            &[r#"{"code":19021,"msg":"sign match fail or timestamp is not within one hour from current time"}"#],
            "code 19021: sign match fail",
        ),
        (
            "wecom",
            &[r#"{"errcode":45009,"errmsg":"api freq out of limit"}"#, r#"{"errcode":0,"errmsg":"ok"}"#],
            &[r#"{"errcode":93000,"errmsg":"invalid webhook url"}"#],
            "errcode 93000: invalid webhook url",
        ),
    ];
    for (preset, limited, refused, words) in cases {
        let owned = |bodies: &[&str]| bodies.iter().map(|b| b.to_string()).collect();
        let (slow, bad) = (answering(owned(limited)).await, answering(owned(refused)).await);
        let relay = TestRelay::start(&format!(
            "{ADMIN_CONFIG}receivers:\n\
             - {{ name: limited, url: '{}', payload: {{ format: {preset} }}, {FAST_RETRY} }}\n\
             - {{ name: refused, url: '{}', payload: {{ format: {preset} }}, {FAST_RETRY} }}\n",
            slow.uri(),
            bad.uri()
        ))
        .await;
        assert_eq!(relay.post(FIRING).await.0, 200);
        eventually(&format!("{preset}: delivered after the rate limit"), || delivered(&relay, "limited")).await;
        let limited_series =
            r#"alert_relay_notification_requests_failed_total{reason="rateLimited",receiver="limited"}"#;
        assert_eq!(relay.metric(limited_series).await, 1.0, "{preset}");
        eventually(&format!("{preset}: the error code dead-letters"), || async {
            relay.metric(r#"alert_relay_notifications_failed_total{reason="clientError",receiver="refused"}"#).await
                == 1.0
        })
        .await;
        assert_eq!(count(&bad).await, 1, "{preset}: an error code is not retried");
        let (_, dead) = relay.admin("GET", "/api/v1/deliveries?receiver=refused&state=dead", None).await;
        let error = dead["deliveries"][0]["last_error"].as_str().unwrap();
        assert!(error.starts_with("HTTP 200 with an error code: ") && error.contains(words), "{preset}: {error}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_that_fails_on_a_notification_dead_letters_it_and_a_retry_after_the_fix_renders_it() {
    let t = target(200).await;
    // Renders every sample; fails on a notification whose team is "boom".
    let broken = "{% if commonLabels.team == \"boom\" %}{{ no_such_function() }}{% endif %}{{ status }}";
    let config = |template: &str| {
        format!(
            "{ADMIN_CONFIG}receivers:\n- name: t\n  url: '{}'\n  payload:\n    format: template\n    content_type: text/plain\n    template: '{}'\n",
            t.uri(),
            template.replace('\'', "''")
        )
    };
    let mut relay = TestRelay::start(&config(broken)).await;
    let boom = payload("g", &[("firing", &[("alertname", "A"), ("team", "boom")])]);
    assert_eq!(relay.post(boom).await.0, 200, "accepted: the failure is the receiver's, not Alertmanager's");
    eventually("a templateError dead letter", || async {
        relay.metric(r#"alert_relay_notifications_failed_total{reason="templateError",receiver="t"}"#).await == 1.0
    })
    .await;
    assert_eq!(count(&t).await, 0, "nothing was sent");
    let (_, dead) = relay.admin("GET", "/api/v1/deliveries?receiver=t&state=dead", None).await;
    let letter = &dead["deliveries"][0];
    assert_eq!(letter["dead_reason"], "templateError");
    let error = letter["last_error"].as_str().unwrap();
    assert!(error.starts_with("template: line 1: ") && error.contains("no_such_function"), "{error}");
    let id = letter["id"].as_u64().unwrap();
    // Retried with the template still broken: refused, the letter kept.
    let (status, answer) = relay.admin("POST", &format!("/api/v1/deliveries/{id}/retry"), None).await;
    assert_eq!(status, 409, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("still fails"), "{answer}");
    // Fixed and reloaded: the retry renders it and it is delivered.
    std::fs::write(relay.config_path(), config("{{ status }} {{ commonLabels.team }}")).unwrap();
    relay.relay.as_ref().unwrap().reload().await.unwrap();
    assert_eq!(relay.admin("POST", &format!("/api/v1/deliveries/{id}/retry"), None).await.0, 200);
    eventually("delivered after the fix", || async { count(&t).await == 1 }).await;
    assert_eq!(String::from_utf8_lossy(&t.received_requests().await.unwrap()[0].body), "firing boom");
    let (_, left) = relay.admin("GET", "/api/v1/deliveries?receiver=t", None).await;
    assert_eq!(left["deliveries"].as_array().unwrap().len(), 0, "{left}");
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_templates_are_refused_at_load_with_receiver_field_and_line() {
    let cases = [
        ("{% for a in alerts %}", &["receivers[0] (t).payload.template: line 1: syntax error"][..]),
        (
            "{\"text\": {{ status | shout }}}",
            &["receivers[0] (t).payload.template: rendering the sample notification", "line 1", "shout"][..],
        ),
        ("{\"text\": \"{{ commonAnnotations.summary }}\", }", &["the output is not valid JSON", "tojson"][..]),
    ];
    for (template, words) in cases {
        let yaml = format!(
            "receivers:\n- name: t\n  url: 'http://127.0.0.1:9/'\n  payload:\n    format: template\n    template: '{}'\n",
            template.replace('\'', "''")
        );
        let errors = alert_relay::config::Config::from_yaml(&yaml).unwrap_err().to_string();
        for word in words {
            assert!(errors.contains(word), "{template}: {word:?} not in {errors}");
        }
    }
    let errors = alert_relay::config::Config::from_yaml(
        "receivers: [{ name: p, url: 'http://127.0.0.1:9/', payload: { format: slack, template: 'x' } }]",
    )
    .unwrap_err()
    .to_string();
    assert!(errors.contains("receivers[0] (p).payload.format: template, template_file and content_type are only used with format: template"), "{errors}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn formats_preview_explain_deliveries_and_test_messages_show_the_rendered_body() {
    let t = target(200).await;
    let relay = TestRelay::start(&format!(
        "{ADMIN_CONFIG}receivers:\n- {{ name: chat, url: '{}', payload: {{ format: discord }} }}\n",
        t.uri()
    ))
    .await;
    let (status, formats) = relay.admin("GET", "/api/v1/formats", None).await;
    assert_eq!(status, 200);
    let names: Vec<&str> = formats["formats"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["alertmanager", "template", "slack", "msteams", "discord", "googlechat", "dingtalk", "feishu", "wecom"]
    );
    let (status, slack) = relay.admin("GET", "/api/v1/formats/slack", None).await;
    assert_eq!(status, 200);
    assert!(slack["template"].as_str().unwrap().contains("attachments"));
    assert_eq!(relay.admin("GET", "/api/v1/formats/telegram", None).await.0, 404);

    // Preview of a form's template against a sample; a bad one names its line.
    let form = serde_json::json!({"payload": {"format": "template", "template": "{\"n\": {{ alerts | length }}}"}, "sample": "large"});
    let (status, preview) = relay.admin("POST", "/api/v1/preview", Some(form)).await;
    assert_eq!((status, preview["body"].as_str()), (200, Some("{\"n\": 300}")), "{preview}");
    assert_eq!(preview["content_type"], "application/json");
    let bad = serde_json::json!({"payload": {"format": "template", "template": "{\"n\": {{ alerts | length }"}});
    let (status, refused) = relay.admin("POST", "/api/v1/preview", Some(bad)).await;
    assert_eq!(status, 400);
    assert!(refused["details"][0].as_str().unwrap().starts_with("payload.template: line 1: syntax error"), "{refused}");
    // A saved receiver: the sample first, then its last real notification.
    let (_, before) = relay.admin("POST", "/api/v1/preview", Some(serde_json::json!({"receiver": "chat"}))).await;
    assert_eq!(before["sample"], "firing");
    let real = payload("g", &[("firing", &[("alertname", "RealOne")])]);
    assert_eq!(relay.post(real).await.0, 200);
    let (_, after) = relay.admin("POST", "/api/v1/preview", Some(serde_json::json!({"receiver": "chat"}))).await;
    assert_eq!(after["sample"], "last");
    assert!(after["body"].as_str().unwrap().contains("RealOne"), "{after}");

    // The delivery records the rendered size; explain gives it too.
    eventually("delivered", || async { count(&t).await == 1 }).await;
    let sent = t.received_requests().await.unwrap()[0].body.len() as u64;
    let (_, explained) =
        relay.admin("POST", "/api/v1/explain", Some(serde_json::json!({"labels": {"alertname": "X"}}))).await;
    assert!(explained["receivers"][0]["body_bytes"].as_u64().unwrap() > 100, "{explained}");
    let (_, tested) = relay.admin("POST", "/api/v1/receivers/chat/test", None).await;
    assert_eq!(tested["format"], "discord");
    let shown: Value = serde_json::from_str(tested["body"].as_str().unwrap()).unwrap();
    assert!(shown["embeds"][0]["title"].as_str().unwrap().contains("AlertRelayTestMessage"), "{tested}");
    let arrived: Value = serde_json::from_slice(&t.received_requests().await.unwrap()[1].body).unwrap();
    assert_eq!(arrived, shown, "the answer shows the body the target got");
    assert!(sent > 100);
}
