//! The admin API, Send Test Message, explain, deliveries and reload, against a
//! relay on a loopback port.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use common::*;
use serde_json::{json, Value};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_is_off_without_a_token_and_checks_it_otherwise() {
    let off = TestRelay::start("receivers: []").await;
    for (method, path) in [
        ("GET", "/api/v1/receivers"),
        ("PUT", "/api/v1/receivers/x"),
        ("POST", "/api/v1/explain"),
        ("GET", "/api/v1/deliveries"),
        ("POST", "/-/reload"),
    ] {
        let (status, body) = admin_call(&off.base, Some("anything"), method, path, Some(json!({}))).await;
        assert_eq!(status, 403, "{method} {path}");
        assert!(body["error"].as_str().unwrap().contains("admin.token"), "{body}");
    }
    assert_eq!(off.post(FIRING).await.0, 200, "the webhook does not need the admin token");

    let on = TestRelay::start(&format!("{ADMIN_CONFIG}receivers: []")).await;
    assert_eq!(admin_call(&on.base, None, "GET", "/api/v1/receivers", None).await.0, 401);
    let (status, body) = admin_call(&on.base, Some("wrong"), "GET", "/api/v1/receivers", None).await;
    assert_eq!(status, 401);
    assert!(!body.to_string().contains(ADMIN_TOKEN));
    assert_eq!(on.admin("GET", "/api/v1/receivers", None).await, (200, json!({"receivers": [], "orphaned": {}})));
    for path in ["/metrics", "/-/healthy", "/-/ready"] {
        assert_eq!(client().get(format!("{}{path}", on.base)).send().await.unwrap().status().as_u16(), 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receivers_are_created_validated_redacted_and_deleted() {
    let t = target(200).await;
    let relay = TestRelay::start(&format!(
        "{ADMIN_CONFIG}receivers: [{{ name: from-file, url: '{}', auth: {{ type: bearer, token: file-secret }} }}]",
        t.uri()
    ))
    .await;
    let spec = json!({
        "url": format!("{}/api", t.uri()),
        "auth": {"type": "bearer", "token": "api-secret"},
        "headers": {"X-Team": "ops"},
        "conditions": [
            {"label": "severity", "operator": "In", "values": ["critical"]},
            {"label": "namespace", "operator": "Exists"}
        ]
    });
    let (status, created) = relay.admin("PUT", "/api/v1/receivers/ops", Some(spec.clone())).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["name"], "ops");
    assert_eq!(created["provisioned"], false);
    assert_eq!(created["auth"]["token"], "<redacted>");
    assert_eq!((created["pending"].as_u64(), created["dead_letters"].as_u64()), (Some(0), Some(0)));

    let (status, list) = relay.admin("GET", "/api/v1/receivers", None).await;
    assert_eq!(status, 200);
    let names: Vec<&str> = list["receivers"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["from-file", "ops"]);
    let file = &list["receivers"][0];
    assert_eq!(file["provisioned"], true);
    assert!(file["source"].as_str().unwrap().ends_with("relay.yaml"));
    assert!(!list.to_string().contains("api-secret") && !list.to_string().contains("file-secret"));

    // Provisioned receivers cannot be changed through the API.
    let (status, e) = relay.admin("PUT", "/api/v1/receivers/from-file", Some(spec.clone())).await;
    assert_eq!(status, 409);
    assert!(e["error"].as_str().unwrap().contains("relay.yaml"), "{e}");
    assert_eq!(relay.admin("DELETE", "/api/v1/receivers/from-file", None).await.0, 409);
    assert_eq!(relay.admin("POST", "/api/v1/receivers/from-file/disable", None).await.0, 409);
    assert_eq!(relay.admin("POST", "/api/v1/receivers/from-file/enable", None).await.0, 409);

    // Validation: the same errors as the file's, naming the field.
    let mut bad = spec.clone();
    bad["conditions"][1] = json!({"label": "pod", "operator": "Matches", "values": ["(unclosed"]});
    bad["url"] = json!("not a url");
    let (status, e) = relay.admin("PUT", "/api/v1/receivers/bad", Some(bad)).await;
    assert_eq!(status, 400);
    let details: Vec<&str> = e["details"].as_array().unwrap().iter().map(|d| d.as_str().unwrap()).collect();
    assert!(details.iter().any(|d| d.starts_with("url: ")), "{details:?}");
    assert!(
        details.iter().any(|d| d.starts_with("conditions[1]: pod Regex match: values[0]: invalid regex")),
        "{details:?}"
    );
    let (status, e) = relay.admin("PUT", "/api/v1/receivers/bad", Some(json!({"url": "http://x", "colour": 1}))).await;
    assert_eq!(status, 400);
    assert!(e["error"].as_str().unwrap().contains("unknown field `colour`"), "{e}");
    let (status, _) =
        relay.admin("PUT", "/api/v1/receivers/bad", Some(json!({"name": "other", "url": "http://x"}))).await;
    assert_eq!(status, 400, "the body's name must match the path");
    assert_eq!(relay.admin("GET", "/api/v1/receivers/bad", None).await.0, 404);

    // Replacing with the redacted token keeps the stored one.
    let mut again = created.clone();
    for k in ["provisioned", "source", "pending", "dead_letters", "delivered", "failed"] {
        again.as_object_mut().unwrap().remove(k);
    }
    again["headers"]["X-Team"] = json!("sre");
    let (status, replaced) = relay.admin("PUT", "/api/v1/receivers/ops", Some(again)).await;
    assert_eq!(status, 200, "{replaced}");
    let firing = payload("g", &[("firing", &[("severity", "critical"), ("namespace", "prod")])]);
    assert_eq!(relay.post(firing).await.0, 200);
    eventually("delivery to the API receiver", || async {
        t.received_requests().await.unwrap_or_default().iter().any(|r| r.url.path() == "/api")
    })
    .await;
    let requests = t.received_requests().await.unwrap();
    let r = requests.iter().find(|r| r.url.path() == "/api").unwrap();
    assert_eq!(header(r, "authorization"), "Bearer api-secret");
    assert_eq!(header(r, "x-team"), "sre");

    // An API receiver's series exist at 0 from its creation.
    for series in [
        r#"alert_relay_spool_pending{receiver="ops"}"#,
        r#"alert_relay_dead_letters{receiver="ops"}"#,
        r#"alert_relay_notifications_failed_total{reason="expired",receiver="ops"}"#,
        r#"alert_relay_notification_requests_failed_total{reason="timeout",receiver="ops"}"#,
    ] {
        assert_eq!(metric_present(&relay.base, series).await, Some(0.0), "{series}");
    }
    let (status, deleted) = relay.admin("DELETE", "/api/v1/receivers/ops", None).await;
    assert_eq!(status, 200);
    assert_eq!(deleted, json!({"deleted": "ops", "dropped_pending": 0, "dropped_dead_letters": 0}));
    assert_eq!(relay.admin("GET", "/api/v1/receivers/ops", None).await.0, 404);
    assert_eq!(relay.admin("DELETE", "/api/v1/receivers/ops", None).await.0, 404);

    // Basic auth: the password is redacted, and a PUT back keeps it.
    let basic = json!({"url": t.uri(), "auth": {"type": "basic", "username": "bob", "password": "basic-pw-secret"}});
    assert_eq!(relay.admin("PUT", "/api/v1/receivers/basic", Some(basic)).await.0, 201);
    let (_, shown) = relay.admin("GET", "/api/v1/receivers/basic", None).await;
    assert_eq!(
        (shown["auth"]["username"].clone(), shown["auth"]["password"].clone()),
        (json!("bob"), json!("<redacted>"))
    );
    assert!(!shown.to_string().contains("basic-pw-secret"));
    let back = json!({"url": t.uri(), "auth": {"type": "basic", "username": "bob", "password": "<redacted>"}});
    assert_eq!(relay.admin("PUT", "/api/v1/receivers/basic", Some(back)).await.0, 200);
    let (_, tested) = relay.admin("POST", "/api/v1/receivers/basic/test", None).await;
    assert_eq!(tested["delivered"], true, "{tested}");
    let requests = t.received_requests().await.unwrap();
    let expected =
        format!("Basic {}", base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "bob:basic-pw-secret"));
    assert_eq!(header(requests.last().unwrap(), "authorization"), expected);

    // Signing and OAuth 2.0 secrets: redacted, kept on the same origin only.
    let whsec = format!("whsec_{}", base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [5u8; 32]));
    let oauth = |url: String, secret: &str, signing: &str| {
        json!({"url": url, "signing": {"secret": signing},
               "auth": {"type": "oauth2", "client_id": "c", "client_secret": secret, "token_url": "http://127.0.0.1:9/token"}})
    };
    assert_eq!(
        relay.admin("PUT", "/api/v1/receivers/signed", Some(oauth(t.uri(), "oauth-secret-value", &whsec))).await.0,
        201
    );
    let (_, shown) = relay.admin("GET", "/api/v1/receivers/signed", None).await;
    assert_eq!(
        (shown["auth"]["client_secret"].as_str(), shown["signing"]["secret"].as_str()),
        (Some("<redacted>"), Some("<redacted>"))
    );
    assert!(!shown.to_string().contains("oauth-secret-value") && !shown.to_string().contains(&whsec));
    let moved = oauth("http://127.0.0.2:9/elsewhere".into(), "<redacted>", "<redacted>");
    let (status, refused) = relay.admin("PUT", "/api/v1/receivers/signed", Some(moved)).await;
    assert_eq!(status, 400);
    let details = refused["details"].to_string();
    assert!(details.contains("auth.client_secret") && details.contains("signing.secret"), "{refused}");
    let (status, bad) = relay
        .admin("PUT", "/api/v1/receivers/badkey", Some(json!({"url": t.uri(), "signing": {"secret": "not-a-key"}})))
        .await;
    assert_eq!(status, 400);
    assert!(bad["details"][0].as_str().unwrap().starts_with("signing.secret: must start with whsec_"), "{bad}");
    assert!(!bad.to_string().contains("not-a-key"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_match_refuses_changes_made_against_a_stale_version() {
    let relay = TestRelay::start(&format!("{ADMIN_CONFIG}receivers: []")).await;
    let call = |method: &'static str, path: &'static str, if_match: Option<String>, body: Option<Value>| {
        let base = relay.base.clone();
        async move {
            let mut req = client()
                .request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), format!("{base}{path}"))
                .header("authorization", format!("Bearer {ADMIN_TOKEN}"));
            if let Some(v) = if_match {
                req = req.header("if-match", v);
            }
            if let Some(b) = body {
                req = req.header("content-type", "application/json").body(serde_json::to_vec(&b).unwrap());
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let etag = resp.headers().get("etag").map(|v| v.to_str().unwrap().to_string());
            let body: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap_or(Value::Null);
            (status, etag, body)
        }
    };
    let spec = json!({"url": "http://127.0.0.1:9/", "enabled": false});
    // Created disabled, with If-Match naming nothing that exists: refused.
    let (status, _, _) = call("PUT", "/api/v1/receivers/r", Some("\"0000\"".into()), Some(spec.clone())).await;
    assert_eq!(status, 412, "If-Match on a receiver that does not exist");
    let (status, etag, created) = call("PUT", "/api/v1/receivers/r", None, Some(spec.clone())).await;
    assert_eq!((status, created["enabled"].clone()), (201, json!(false)), "a receiver can be created disabled");
    let v1 = etag.unwrap();
    assert_eq!(v1, format!("\"{}\"", created["version"].as_str().unwrap()));
    let (_, got, listed) = call("GET", "/api/v1/receivers/r", None, None).await;
    assert_eq!(got.as_deref(), Some(v1.as_str()));
    assert_eq!(listed["version"], created["version"]);

    // Someone turns it on (with the version they saw)...
    let (status, v2, _) = call("POST", "/api/v1/receivers/r/enable", Some(v1.clone()), None).await;
    assert_eq!(status, 200);
    assert_ne!(v2.as_deref(), Some(v1.as_str()), "the toggle is a change");
    // ...so a form opened before that cannot silently turn it off again.
    let mut stale = spec.clone();
    stale["send_resolved"] = json!(false);
    let (status, _, conflict) = call("PUT", "/api/v1/receivers/r", Some(v1.clone()), Some(stale.clone())).await;
    assert_eq!(status, 412, "{conflict}");
    assert_eq!(conflict["current"]["enabled"], true, "the answer holds the receiver as it is now: {conflict}");
    assert!(conflict["error"].as_str().unwrap().contains("was changed meanwhile"), "{conflict}");
    assert_eq!(call("POST", "/api/v1/receivers/r/disable", Some(v1.clone()), None).await.0, 412);
    assert_eq!(call("DELETE", "/api/v1/receivers/r", Some(v1.clone()), None).await.0, 412);
    // With the current version (or *), the change goes through; a GET body sent back as is, too.
    let (status, _, now) = call("PUT", "/api/v1/receivers/r", v2.clone(), Some(listed.clone())).await;
    assert_eq!(status, 200, "{now}");
    assert_eq!(call("DELETE", "/api/v1/receivers/r", Some("*".into()), None).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_receiver_reports_and_counts_what_it_dropped() {
    let relay = TestRelay::start(&format!("{ADMIN_CONFIG}receivers: []")).await;
    let spec = json!({"url": format!("http://127.0.0.1:{}/", closed_port()), "retry": {"initial_interval": "1h", "max_interval": "1h"}});
    assert_eq!(relay.admin("PUT", "/api/v1/receivers/down", Some(spec)).await.0, 201);
    for g in ["a", "b", "c"] {
        assert_eq!(relay.post(payload(g, &[("firing", &[("alertname", "A")])])).await.0, 200);
    }
    eventually("three pending", || async {
        relay.admin("GET", "/api/v1/receivers/down", None).await.1["pending"] == 3
    })
    .await;
    let (status, deleted) = relay.admin("DELETE", "/api/v1/receivers/down", None).await;
    assert_eq!(status, 200);
    assert_eq!(deleted["dropped_pending"], 3);
    // A deleted receiver's series go with it.
    let text = client().get(format!("{}/metrics", relay.base)).send().await.unwrap().text().await.unwrap();
    assert!(!text.contains(r#"receiver="down""#), "{text}");
    let (_, left) = relay.admin("GET", "/api/v1/deliveries", None).await;
    assert_eq!(left["deliveries"], json!([]));
    // The webhook keeps accepting: the spool has room again.
    assert_eq!(relay.post(FIRING).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_message_reports_the_target_answer_and_why_real_alerts_would_not_arrive() {
    let (ok, failing) = (target(204).await, target(500).await);
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("unknown CA");
    let tls = TlsTarget::start(&ca.leaf(&["127.0.0.1"]), None).await;
    let _ = &dir;
    let relay = TestRelay::start(&format!(
        r#"{ADMIN_CONFIG}
receivers:
  - {{ name: ok, url: '{}', conditions: [{{ label: severity, operator: In, values: [critical] }}] }}
  - {{ name: failing, url: '{}' }}
  - {{ name: bad-tls, url: 'https://{}/' }}
  - {{ name: off, url: '{}', enabled: false }}
  - {{ name: off-and-picky, url: '{}', enabled: false, send_resolved: false, conditions: [{{ label: team, operator: Exists }}, {{ label: severity, operator: NotIn, values: [info] }}] }}
"#,
        ok.uri(),
        failing.uri(),
        tls.addr,
        ok.uri(),
        ok.uri()
    ))
    .await;

    let (status, answer) = relay.admin("POST", "/api/v1/receivers/ok/test", None).await;
    assert_eq!(status, 200);
    assert_eq!(answer["delivered"], true);
    assert_eq!(answer["status"], 204);
    // A real round trip over loopback: measured, and within the receiver's timeout.
    let latency = answer["latency_ms"].as_f64().unwrap();
    assert!(latency > 0.0 && latency < 10_000.0, "{latency}");
    assert_eq!(answer["enabled"], true);
    assert_eq!(answer["conditions_pass"], false, "the test alert is severity=info");
    assert_eq!(answer["would_deliver"], false);
    assert_eq!(answer["stopped_by"]["condition"]["index"], 0);
    assert_eq!(answer["stopped_by"]["condition"]["number"], 1, "numbered as the console numbers it");
    assert_eq!(answer["stopped_by"]["condition"]["wording"], "Includes values");
    assert_eq!(answer["stopped_by"]["condition"]["label"], "severity");
    assert!(answer["explanation"].as_str().unwrap().contains("would NOT be delivered"), "{answer}");
    assert!(answer["stopped_by"]["detail"].as_str().unwrap().contains(r#"label severity is "info""#), "{answer}");
    let sent: Value = serde_json::from_slice(&ok.received_requests().await.unwrap()[0].body).unwrap();
    assert_eq!(sent["version"], "4");
    assert_eq!(sent["alerts"][0]["labels"]["alertname"], "AlertRelayTestMessage");

    let (_, answer) =
        relay.admin("POST", "/api/v1/receivers/ok/test", Some(json!({"labels": {"severity": "critical"}}))).await;
    assert_eq!((answer["conditions_pass"].clone(), answer["would_deliver"].clone()), (json!(true), json!(true)));
    assert_eq!(answer["stopped_by"], Value::Null);

    let (_, answer) = relay.admin("POST", "/api/v1/receivers/failing/test", None).await;
    assert_eq!((answer["delivered"].clone(), answer["status"].clone()), (json!(false), json!(500)));
    assert!(answer["error"].as_str().unwrap().starts_with("HTTP 500"), "{answer}");

    let (_, answer) = relay.admin("POST", "/api/v1/receivers/bad-tls/test", None).await;
    assert_eq!((answer["delivered"].clone(), answer["status"].clone()), (json!(false), Value::Null));
    assert!(answer["error"].as_str().unwrap().to_lowercase().contains("certificate"), "{answer}");
    assert_eq!(tls.hits(), 0);

    let (_, answer) = relay.admin("POST", "/api/v1/receivers/off/test", None).await;
    assert_eq!(answer["delivered"], true, "the test bypasses the toggle");
    assert_eq!(answer["enabled"], false);
    assert_eq!(answer["stopped_by"]["setting"], "enabled");
    assert_eq!(answer["conditions_pass"], true);

    // Disabled, and both conditions fail, and the alert is resolved: every one is named.
    let (_, answer) =
        relay.admin("POST", "/api/v1/receivers/off-and-picky/test", Some(json!({"status": "resolved"}))).await;
    assert_eq!(answer["conditions_pass"], false, "{answer}");
    let blocked: Vec<&str> =
        answer["blocked_by"].as_array().unwrap().iter().map(|b| b["detail"].as_str().unwrap()).collect();
    assert_eq!(blocked.len(), 4, "{blocked:?}");
    assert!(blocked[0].starts_with("the receiver is disabled"), "{blocked:?}");
    assert_eq!(blocked[1], "condition 1 (team Exists) fails: label team is missing");
    assert_eq!(blocked[2], r#"condition 2 (severity Does not include values info) fails: label severity is "info""#);
    assert!(blocked[3].contains("send_resolved is false"), "{blocked:?}");
    let explanation = answer["explanation"].as_str().unwrap();
    assert!(explanation.contains("disabled") && explanation.contains("condition 2"), "{explanation}");

    assert_eq!(relay.admin("POST", "/api/v1/receivers/nobody/test", None).await.0, 404);
    // Nothing of this went through the spool.
    assert_eq!(relay.metric(r#"alert_relay_notifications_total{receiver="ok"}"#).await, 0.0);

    // An unsaved receiver, as the console's form sends it before OK.
    let (status, answer) = relay
        .admin(
            "POST",
            "/api/v1/test",
            Some(json!({"receiver": {"url": ok.uri(), "auth": {"type": "basic", "username": "u", "password": "p"}}})),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["delivered"], true);
    let last = ok.received_requests().await.unwrap().pop().unwrap();
    assert_eq!(header(&last, "authorization"), "Basic dTpw");
    let (status, e) = relay.admin("POST", "/api/v1/test", Some(json!({"receiver": {"url": "ftp://x"}}))).await;
    assert_eq!(status, 400);
    assert!(e["details"][0].as_str().unwrap().starts_with("url: "), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_names_the_condition_or_setting_that_stopped_each_alert() {
    let relay = TestRelay::start(&format!(
        r#"{ADMIN_CONFIG}
receivers:
  - name: crit-prod
    url: 'http://127.0.0.1:1/'
    conditions:
      - {{ label: severity, operator: In, values: [critical] }}
      - {{ label: namespace, operator: NotIn, values: [dev] }}
  - {{ name: quiet, url: 'http://127.0.0.1:1/', send_resolved: false }}
  - {{ name: off, url: 'http://127.0.0.1:1/', enabled: false }}
  - {{ name: one, url: 'http://127.0.0.1:1/', max_alerts: 1 }}
"#
    ))
    .await;
    let (status, answer) = relay
        .admin("POST", "/api/v1/explain", Some(json!({"labels": {"severity": "critical", "namespace": "dev"}})))
        .await;
    assert_eq!(status, 200);
    let by_name = |answer: &Value, name: &str| {
        answer["receivers"].as_array().unwrap().iter().find(|r| r["receiver"] == name).unwrap().clone()
    };
    let crit = by_name(&answer, "crit-prod");
    assert_eq!(crit["delivered"], false);
    assert_eq!(crit["alerts"][0]["stopped_by"]["condition"]["index"], 1);
    assert_eq!(crit["alerts"][0]["stopped_by"]["value"], "dev");
    assert_eq!(by_name(&answer, "quiet")["delivered"], true);
    assert_eq!(by_name(&answer, "off")["alerts"][0]["stopped_by"]["setting"], "enabled");

    let (_, answer) = relay
        .admin("POST", "/api/v1/explain", Some(json!({"labels": {"severity": "warning"}, "status": "resolved"})))
        .await;
    let crit = by_name(&answer, "crit-prod");
    assert!(
        crit["alerts"][0]["stopped_by"]["detail"]
            .as_str()
            .unwrap()
            .contains("condition 1 (severity Includes values critical)"),
        "{crit}"
    );
    assert_eq!(by_name(&answer, "quiet")["alerts"][0]["stopped_by"]["setting"], "send_resolved");

    // A whole payload: per alert.
    let (status, answer) = relay.admin("POST", "/api/v1/explain", Some(serde_json::from_str(MIXED).unwrap())).await;
    assert_eq!(status, 200);
    let one = by_name(&answer, "one");
    assert_eq!(one["alerts"][0]["delivered"], true);
    assert_eq!(one["alerts"][1]["stopped_by"]["setting"], "max_alerts");
    let crit = by_name(&answer, "crit-prod");
    assert_eq!((crit["alerts"][0]["delivered"].clone(), crit["delivered"].clone()), (json!(true), json!(true)));

    let (status, e) = relay.admin("POST", "/api/v1/explain", Some(json!({"labels": {"a": 1}}))).await;
    assert_eq!(status, 400);
    assert!(e["error"].as_str().unwrap().contains("labels.a"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_pauses_pending_deliveries_and_enable_resumes_them() {
    let t = GatedTarget::start(503, 1).await;
    let relay = TestRelay::start(&format!("{ADMIN_CONFIG}receivers: []")).await;
    let spec = json!({"url": t.url, "retry": {"initial_interval": "300ms", "max_interval": "300ms", "jitter": 0.0}});
    assert_eq!(relay.admin("PUT", "/api/v1/receivers/r", Some(spec)).await.0, 201);
    assert_eq!(relay.post(FIRING).await.0, 200);
    // Disabled while the first attempt is held at the target: it cannot have
    // been retried yet, whatever the machine's speed.
    eventually("the first attempt in flight", || async { t.hits() == 1 }).await;
    let (status, off) = relay.admin("POST", "/api/v1/receivers/r/disable", None).await;
    assert_eq!((status, off["enabled"].clone()), (200, json!(false)));
    t.release(1_000_000);
    eventually("the failed attempt recorded", || async {
        relay.metric(r#"alert_relay_notification_requests_failed_total{reason="serverError",receiver="r"}"#).await
            == 1.0
    })
    .await;

    // Let the retry fall due well past its time: a paused receiver does not send it.
    let (_, list) = relay.admin("GET", "/api/v1/deliveries?receiver=r&state=pending", None).await;
    let due = humantime::parse_rfc3339(list["deliveries"][0]["next_attempt"].as_str().unwrap()).unwrap();
    eventually("the retry to be overdue", || async move { SystemTime::now() > due + Duration::from_millis(500) }).await;
    assert_eq!(t.hits(), 1, "nothing sent while disabled");
    assert_eq!(relay.admin("GET", "/api/v1/receivers/r", None).await.1["pending"], 1);
    let (s, answer) = relay.post(FIRING).await;
    assert_eq!((s, answer["deliveries"].clone()), (200, json!(0)), "no new deliveries while disabled");
    assert_eq!(relay.metric(r#"alert_relay_alerts_filtered_total{reason="disabled",receiver="r"}"#).await, 2.0);
    // Off means dropped: the API says how many since it was turned off.
    let (_, r) = relay.admin("GET", "/api/v1/receivers/r", None).await;
    assert_eq!(r["skipped_while_disabled"], 2, "{r}");

    let (status, on) = relay.admin("POST", "/api/v1/receivers/r/enable", None).await;
    assert_eq!(status, 200);
    assert!(on.get("skipped_while_disabled").is_none(), "only while off: {on}");
    eventually("the paused delivery", || async { t.hits() == 2 }).await;
    eventually("an empty queue", || async { relay.admin("GET", "/api/v1/receivers/r", None).await.1["pending"] == 0 })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_retried_and_deleted() {
    let t = MockServer::start().await;
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(422).set_body_string("bad field x")).mount(&t).await;
    let relay = TestRelay::start(&format!("{ADMIN_CONFIG}receivers: [{{ name: r, url: '{}' }}]", t.uri())).await;
    for g in ["a", "b", "c"] {
        assert_eq!(relay.post(payload(g, &[("firing", &[("alertname", "A")])])).await.0, 200);
    }
    eventually("three dead letters", || async {
        relay.metric(r#"alert_relay_dead_letters{receiver="r"}"#).await == 3.0
    })
    .await;
    let (status, page) = relay.admin("GET", "/api/v1/deliveries?state=dead&limit=2", None).await;
    assert_eq!(status, 200);
    let first = page["deliveries"].as_array().unwrap();
    assert_eq!(first.len(), 2);
    assert_eq!(first[0]["group_key"], "c", "newest first");
    assert_eq!(first[0]["state"], "dead");
    assert_eq!(first[0]["dead_reason"], "clientError");
    assert_eq!(first[0]["attempts"], 1);
    assert_eq!(first[0]["last_error"], "HTTP 422: bad field x");
    let next = page["next"].as_u64().unwrap();
    let (_, rest) = relay.admin("GET", &format!("/api/v1/deliveries?state=dead&limit=2&before={next}"), None).await;
    assert_eq!(rest["deliveries"].as_array().unwrap().len(), 1);
    assert_eq!(rest["deliveries"][0]["group_key"], "a");
    assert_eq!(rest["next"], Value::Null);
    assert_eq!(relay.admin("GET", "/api/v1/deliveries?state=lost", None).await.0, 400);

    t.reset().await;
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(200)).mount(&t).await;
    let retry_id = first[0]["id"].as_u64().unwrap();
    assert_eq!(relay.admin("POST", &format!("/api/v1/deliveries/{retry_id}/retry"), None).await.0, 200);
    eventually("the retried dead letter delivered", || async { count(&t).await == 1 }).await;
    let body: Value = serde_json::from_slice(&t.received_requests().await.unwrap()[0].body).unwrap();
    assert_eq!(body["groupKey"], "c");
    assert_eq!(relay.admin("POST", &format!("/api/v1/deliveries/{retry_id}/retry"), None).await.0, 404);

    let delete_id = first[1]["id"].as_u64().unwrap();
    assert_eq!(relay.admin("DELETE", &format!("/api/v1/deliveries/{delete_id}"), None).await.0, 200);
    assert_eq!(relay.admin("DELETE", &format!("/api/v1/deliveries/{delete_id}"), None).await.0, 404);
    assert_eq!(relay.admin("DELETE", "/api/v1/deliveries/x1", None).await.0, 400);
    eventually("one dead letter left", || async {
        relay.metric(r#"alert_relay_dead_letters{receiver="r"}"#).await == 1.0
    })
    .await;
    let (_, left) = relay.admin("GET", "/api/v1/deliveries", None).await;
    assert_eq!(left["deliveries"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retrying_or_deleting_a_pending_delivery_is_a_conflict() {
    let relay = TestRelay::start(&format!(
        "{ADMIN_CONFIG}receivers: [{{ name: r, url: 'http://127.0.0.1:{}/', retry: {{ initial_interval: 1h, max_interval: 1h }} }}]",
        closed_port()
    ))
    .await;
    assert_eq!(relay.post(FIRING).await.0, 200);
    let (_, list) = relay.admin("GET", "/api/v1/deliveries?state=pending", None).await;
    let id = list["deliveries"][0]["id"].as_u64().unwrap();
    assert_eq!(relay.admin("POST", &format!("/api/v1/deliveries/{id}/retry"), None).await.0, 409);
    assert_eq!(relay.admin("DELETE", &format!("/api/v1/deliveries/{id}"), None).await.0, 409);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_with_a_broken_file_keeps_the_running_configuration() {
    let t = target(200).await;
    let good = |name: &str| format!("{ADMIN_CONFIG}receivers: [{{ name: {name}, url: '{}' }}]\n", t.uri());
    let relay = TestRelay::start(&good("first")).await;
    let path = relay.config_path();
    let spool_line = std::fs::read_to_string(&path).unwrap().lines().next().unwrap().to_string();
    let write = |body: &str| {
        std::fs::write(&path, format!("{spool_line}\nserver: {{ listen: '127.0.0.1:0' }}\n{body}")).unwrap()
    };

    write(&format!(
        "{ADMIN_CONFIG}receivers: [{{ name: broken, url: 'http://x', conditions: [{{ label: a, operator: In }}] }}]\n"
    ));
    let (status, e) = relay.admin("POST", "/-/reload", None).await;
    assert_eq!(status, 400);
    assert!(e["details"][0].as_str().unwrap().contains("conditions[0]"), "{e}");
    assert_eq!(relay.metric("alert_relay_config_last_reload_successful").await, 0.0);
    let (_, list) = relay.admin("GET", "/api/v1/receivers", None).await;
    assert_eq!(list["receivers"][0]["name"], "first");
    assert_eq!(relay.post(FIRING).await.1["deliveries"], 1, "still routing with the old config");

    write(&good("second"));
    let (status, answer) = relay.admin("POST", "/-/reload", None).await;
    assert_eq!((status, answer["receivers"].clone()), (200, json!(1)));
    assert_eq!(relay.metric("alert_relay_config_last_reload_successful").await, 1.0);
    let (_, list) = relay.admin("GET", "/api/v1/receivers", None).await;
    assert_eq!(list["receivers"][0]["name"], "second");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_style_symlink_swap_is_picked_up() {
    let relay = TestRelay::start(&format!("{ADMIN_CONFIG}receivers: []")).await;
    // Kubernetes mounts a ConfigMap as file -> ..data/file, ..data -> ..<timestamp>.
    let dir = relay.dir.path().join("configmap");
    let first = std::fs::read_to_string(relay.config_path()).unwrap();
    let install = |version: &str, text: &str| {
        let versioned = dir.join(version);
        std::fs::create_dir_all(&versioned).unwrap();
        std::fs::write(versioned.join("relay.yaml"), text).unwrap();
        let tmp = dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(version, &tmp).unwrap();
        std::fs::rename(&tmp, dir.join("..data")).unwrap();
    };
    install("..v1", &first);
    std::os::unix::fs::symlink("..data/relay.yaml", dir.join("relay.yaml")).unwrap();
    // Point the relay's own path at the mounted file, as a Pod would see it.
    std::fs::remove_file(relay.config_path()).unwrap();
    std::os::unix::fs::symlink(dir.join("relay.yaml"), relay.config_path()).unwrap();

    install(
        "..v2",
        &format!("{first}\nreceivers: [{{ name: swapped-in, url: 'http://127.0.0.1:1/' }}]\n")
            .replace("receivers: []\n", ""),
    );
    eventually("the watcher to reload the swapped file", || async {
        relay.admin("GET", "/api/v1/receivers", None).await.1["receivers"][0]["name"] == "swapped-in"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_while_deliveries_flow_lose_nothing_and_never_mix_configurations() {
    let t = MockServer::start().await;
    let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let record = seen.clone();
    Mock::given(method("POST"))
        .respond_with(move |r: &Request| {
            record.lock().unwrap().push((header(r, "x-config"), header(r, "authorization")));
            ResponseTemplate::new(200)
        })
        .mount(&t)
        .await;
    let file_receiver = |v: u32| {
        format!(
            "{ADMIN_CONFIG}receivers: [{{ name: file, url: '{}', headers: {{ X-Config: 'file-{v}' }}, auth: {{ type: bearer, token: 'file-{v}' }} }}]\n",
            t.uri()
        )
    };
    let relay = TestRelay::start(&file_receiver(0)).await;
    let path = relay.config_path();
    let head: String = std::fs::read_to_string(&path).unwrap().lines().take(2).collect::<Vec<_>>().join("\n");
    let api_spec = |v: u32| json!({"url": t.uri(), "headers": {"X-Config": format!("api-{v}")}, "auth": {"type": "bearer", "token": format!("api-{v}")}});
    assert_eq!(relay.admin("PUT", "/api/v1/receivers/api", Some(api_spec(0))).await.0, 201);

    let base = relay.base.clone();
    let sender = tokio::spawn(async move {
        let mut accepted = 0;
        for i in 0..150 {
            let body = payload(&format!("g{i}"), &[("firing", &[("alertname", "Flow")])]);
            let (status, answer) = post_json(&format!("{base}/webhook"), body, None).await;
            assert_eq!(status, 200);
            accepted += answer["deliveries"].as_u64().unwrap();
        }
        accepted
    });
    for v in 1..=10 {
        assert_eq!(relay.admin("PUT", "/api/v1/receivers/api", Some(api_spec(v))).await.0, 200);
        std::fs::write(&path, format!("{head}\n{}", file_receiver(v))).unwrap();
        assert_eq!(relay.admin("POST", "/-/reload", None).await.0, 200);
    }
    let accepted = sender.await.unwrap();
    assert_eq!(accepted, 300, "both receivers got every notification");
    eventually("every accepted delivery", || async { seen.lock().unwrap().len() >= 300 }).await;
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 300);
    for (config, auth) in seen.iter() {
        assert_eq!(format!("Bearer {config}"), *auth, "header and token of one configuration");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_served_from_the_binary_without_auth() {
    let relay = TestRelay::start("receivers: []").await;
    for (path, kind, needle) in [
        ("/", "text/html", "<title>alert-relay console</title>"),
        ("/console/app.js", "text/javascript", "/api/v1/receivers"),
        ("/console/style.css", "text/css", ".condition"),
    ] {
        let resp = client().get(format!("{}{path}", relay.base)).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{path}");
        let headers = resp.headers().clone();
        assert!(headers["content-type"].to_str().unwrap().starts_with(kind), "{path}");
        assert!(headers["content-security-policy"].to_str().unwrap().contains("script-src 'self'"));
        assert!(resp.text().await.unwrap().contains(needle), "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsaved_test_of_a_saved_receiver_keeps_its_redacted_secret() {
    let t = target(204).await;
    let relay = TestRelay::start(&format!("{ADMIN_CONFIG}receivers: []")).await;
    let spec = json!({"url": t.uri(), "auth": {"type": "bearer", "token": "stored-secret"}});
    assert_eq!(relay.admin("PUT", "/api/v1/receivers/saved", Some(spec)).await.0, 201);
    // The console's form holds what GET showed: the token redacted.
    let (_, shown) = relay.admin("GET", "/api/v1/receivers/saved", None).await;
    let form = json!({"name": "saved", "url": shown["url"], "auth": shown["auth"]});
    let (status, answer) = relay.admin("POST", "/api/v1/test", Some(json!({"receiver": form}))).await;
    assert_eq!((status, answer["delivered"].clone()), (200, json!(true)), "{answer}");
    assert_eq!(header(&t.received_requests().await.unwrap()[0], "authorization"), "Bearer stored-secret");
}
