//! End to end with the real tools: Alertmanager posting to the relay, and
//! Prometheus scraping it and evaluating the dashboard's and rules' PromQL.

mod common;

use std::path::Path;
use std::time::{Duration, SystemTime};

use common::*;
use serde_json::{json, Value};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

const WEBHOOK_TOKEN: &str = "e2e-webhook-token";

/// Alertmanager on loopback, no clustering, notifying the relay at `relay`.
async fn alertmanager(dir: &Path, relay: &str) -> (Child, String) {
    start_alertmanager(
        dir,
        &format!(
            r#"
route:
  receiver: relay
  group_by: [alertname]
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: relay
    webhook_configs:
      - url: {relay}/webhook
        send_resolved: true
        http_config:
          authorization: {{ type: Bearer, credentials: {WEBHOOK_TOKEN} }}
"#
        ),
    )
    .await
}

/// Alertmanager with `config`, on loopback, no clustering; once it is ready.
async fn start_alertmanager(dir: &Path, config: &str) -> (Child, String) {
    let port = closed_port();
    let config = write(dir, "alertmanager.yml", config);
    let args = vec![
        format!("--config.file={}", config.display()),
        format!("--storage.path={}", dir.join("am-data").display()),
        format!("--web.listen-address=127.0.0.1:{port}"),
        "--cluster.listen-address=".to_string(),
        "--log.level=debug".to_string(),
    ];
    let child = spawn("prometheus-alertmanager", &args, &dir.join("alertmanager.log"));
    let base = format!("http://127.0.0.1:{port}");
    let ready = format!("{base}/-/ready");
    eventually("Alertmanager to be ready", || async {
        matches!(client().get(&ready).send().await, Ok(r) if r.status().is_success())
    })
    .await;
    (child, base)
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Posts alerts to Alertmanager's API; `ends_in` negative means resolved.
async fn fire(am: &str, alerts: &[&[(&str, &str)]], resolved: bool) {
    let now = SystemTime::now();
    let (starts, ends) = if resolved {
        (now - Duration::from_secs(60), now - Duration::from_secs(1))
    } else {
        (now - Duration::from_secs(1), now + Duration::from_secs(3600))
    };
    let body: Vec<Value> = alerts
        .iter()
        .map(|labels| {
            let labels: serde_json::Map<String, Value> =
                labels.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
            json!({
                "labels": labels,
                "annotations": {"summary": "end-to-end test"},
                "startsAt": rfc3339(starts),
                "endsAt": rfc3339(ends),
                "generatorURL": "http://prometheus.test/graph",
            })
        })
        .collect();
    let resp = client().post(format!("{am}/api/v2/alerts")).json_body(&body).send().await.unwrap();
    assert!(resp.status().is_success(), "Alertmanager refused the alerts: {}", resp.status());
}

trait JsonBody {
    fn json_body(self, v: &impl serde::Serialize) -> Self;
}

impl JsonBody for reqwest::RequestBuilder {
    fn json_body(self, v: &impl serde::Serialize) -> Self {
        self.header("content-type", "application/json").body(serde_json::to_vec(v).unwrap())
    }
}

async fn notifications(server: &MockServer) -> Vec<Value> {
    server
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect()
}

fn alert_names(n: &Value) -> Vec<String> {
    let mut names: Vec<String> = n["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            format!(
                "{}/{}/{}",
                a["labels"]["alertname"].as_str().unwrap(),
                a["labels"]["severity"].as_str().unwrap(),
                a["status"].as_str().unwrap()
            )
        })
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alertmanager_notifications_reach_exactly_the_selected_targets_firing_then_resolved() {
    if !needs(&["prometheus-alertmanager"]) {
        return;
    }
    let (crit, all, quiet) = (MockServer::start().await, MockServer::start().await, MockServer::start().await);
    let relay = TestRelay::start(&format!(
        r#"
server: {{ listen: '127.0.0.1:0', webhook_auth: {{ type: bearer, token: {WEBHOOK_TOKEN} }} }}
receivers:
  - {{ name: crit, url: '{}', conditions: [{{ label: severity, operator: In, values: [critical] }}] }}
  - {{ name: all, url: '{}' }}
  - {{ name: quiet, url: '{}', send_resolved: false, conditions: [{{ label: team, operator: DoesNotExist }}] }}
"#,
        crit.uri(),
        all.uri(),
        quiet.uri()
    ))
    .await;
    for t in [&crit, &all, &quiet] {
        Mock::given(method("POST")).respond_with(ResponseTemplate::new(200)).mount(t).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_am, am) = alertmanager(dir.path(), &relay.base).await;

    let disk_crit: &[(&str, &str)] = &[("alertname", "DiskFull"), ("severity", "critical"), ("instance", "db-1")];
    let disk_warn: &[(&str, &str)] =
        &[("alertname", "DiskFull"), ("severity", "warning"), ("instance", "db-2"), ("team", "dba")];
    fire(&am, &[disk_crit, disk_warn], false).await;
    eventually("firing notifications at every target", || async {
        !notifications(&crit).await.is_empty()
            && !notifications(&all).await.is_empty()
            && !notifications(&quiet).await.is_empty()
    })
    .await;
    let first = &notifications(&crit).await[0];
    assert_eq!(alert_names(first), ["DiskFull/critical/firing"]);
    assert_eq!(first["status"], "firing");
    assert_eq!(first["commonLabels"]["severity"], "critical", "recomputed over the forwarded alert");
    assert_eq!(first["commonLabels"]["instance"], "db-1");
    assert_eq!(first["receiver"], "relay", "Alertmanager's fields pass through");
    assert_eq!(first["groupKey"], "{}:{alertname=\"DiskFull\"}");
    // Alertmanager may flush a group before its second alert is in: wait for the
    // notification that holds both.
    let both = ["DiskFull/critical/firing", "DiskFull/warning/firing"];
    eventually("both firing alerts at the unconditional target", || async {
        notifications(&all).await.iter().any(|n| alert_names(n) == both)
    })
    .await;
    let all_firing = notifications(&all).await;
    let with_both = all_firing.iter().find(|n| alert_names(n) == both).unwrap();
    assert!(with_both["commonLabels"].get("severity").is_none(), "{with_both}");
    assert_eq!(alert_names(&notifications(&quiet).await[0]), ["DiskFull/critical/firing"]);

    fire(&am, &[disk_crit, disk_warn], true).await;
    eventually("resolved notifications", || async {
        notifications(&crit).await.last().is_some_and(|n| n["status"] == "resolved")
            && notifications(&all).await.last().is_some_and(|n| n["status"] == "resolved")
    })
    .await;
    let crit_seen = notifications(&crit).await;
    assert_eq!(alert_names(crit_seen.last().unwrap()), ["DiskFull/critical/resolved"]);
    assert!(crit_seen.iter().all(|n| alert_names(n).iter().all(|a| a.contains("/critical/"))), "only critical alerts");
    let all_seen = notifications(&all).await;
    assert_eq!(alert_names(all_seen.last().unwrap()), ["DiskFull/critical/resolved", "DiskFull/warning/resolved"]);
    // No stale firing after its resolved: once a target has the resolved
    // notification, nothing firing follows it.
    for seen in [&crit_seen, &all_seen] {
        let first_resolved = seen.iter().position(|n| n["status"] == "resolved").unwrap();
        assert!(first_resolved > 0, "a firing notification came first");
        assert!(seen[first_resolved..].iter().all(|n| n["status"] == "resolved"), "{seen:#?}");
    }
    // send_resolved: false never forwards a resolved alert. Checked once the
    // relay has seen the resolved one and filtered it for `quiet`.
    eventually("the resolved alert filtered for quiet", || async {
        relay.metric(r#"alert_relay_alerts_filtered_total{reason="resolved",receiver="quiet"}"#).await >= 1.0
    })
    .await;
    assert!(notifications(&quiet).await.iter().all(|n| alert_names(n).iter().all(|a| a.ends_with("/firing"))));
    // Alertmanager always authenticated: no 401 was ever answered.
    assert_eq!(metric_present(&relay.base, r#"alert_relay_webhook_requests_total{code="401"}"#).await, None);
    assert!(relay.metric(r#"alert_relay_webhook_requests_total{code="200"}"#).await >= 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_makes_alertmanager_retry_and_nothing_is_lost() {
    if !needs(&["prometheus-alertmanager"]) {
        return;
    }
    let target = MockServer::start().await;
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(503)).mount(&target).await;
    let relay = TestRelay::start(&format!(
        r#"
server: {{ listen: '127.0.0.1:0', webhook_auth: {{ type: bearer, token: {WEBHOOK_TOKEN} }} }}
spool: {{ dir: 'SPOOL_DIR', max_pending: 1 }}
receivers:
  - {{ name: r, url: '{}', retry: {{ initial_interval: 100ms, max_interval: 200ms }} }}
"#,
        target.uri()
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (_am, am) = alertmanager(dir.path(), &relay.base).await;

    fire(&am, &[&[("alertname", "First"), ("severity", "critical")]], false).await;
    eventually("the first notification pending", || async {
        relay.metric(r#"alert_relay_spool_pending{receiver="r"}"#).await == 1.0
    })
    .await;
    fire(&am, &[&[("alertname", "Second"), ("severity", "critical")]], false).await;
    eventually("the relay to refuse the second with 503", || async {
        relay.metric(r#"alert_relay_webhook_requests_total{code="503"}"#).await >= 2.0
    })
    .await;

    target.reset().await;
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(200)).mount(&target).await;
    eventually("both notifications delivered", || async {
        let names: Vec<String> = notifications(&target)
            .await
            .iter()
            .flat_map(|n| {
                n["alerts"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a["labels"]["alertname"].as_str().unwrap().to_string())
                    .collect::<Vec<_>>()
            })
            .collect();
        names.contains(&"First".to_string()) && names.contains(&"Second".to_string())
    })
    .await;
}

/// Grafana's variables, as the dashboard's defaults (All) would fill them.
fn grafana_to_promql(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m").replace("$receiver", ".*").replace("$job", ".*")
}

/// A query's answer; `Null` while Prometheus does not answer yet.
async fn query(prom: &str, expr: &str) -> Value {
    match client().get(format!("{prom}/api/v1/query")).query_pairs(&[("query", expr)]).send().await {
        Ok(resp) => serde_json::from_str(&resp.text().await.unwrap_or_default()).unwrap_or(Value::Null),
        Err(_) => Value::Null,
    }
}

trait Query {
    fn query_pairs(self, pairs: &[(&str, &str)]) -> Self;
}

impl Query for reqwest::RequestBuilder {
    fn query_pairs(self, pairs: &[(&str, &str)]) -> Self {
        let encoded: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={}", percent(v))).collect();
        let (client, request) = self.build_split();
        let mut request = request.unwrap();
        request.url_mut().set_query(Some(&encoded.join("&")));
        reqwest::RequestBuilder::from_parts(client, request)
    }
}

fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The data points of a query answer that are numbers (not NaN).
fn numbers(answer: &Value) -> usize {
    answer["data"]["result"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter(|s| s["value"][1].as_str().is_some_and(|v| v.parse::<f64>().is_ok_and(|f| !f.is_nan())))
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_relay_and_every_dashboard_and_rule_expression_runs() {
    if !needs(&["prometheus"]) {
        return;
    }
    let flaky = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500))
        .up_to_n_times(3)
        .with_priority(1)
        .mount(&flaky)
        .await;
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(200)).mount(&flaky).await;
    let rejecting = MockServer::start().await;
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(400)).mount(&rejecting).await;
    let relay = TestRelay::start(&format!(
        r#"
receivers:
  - {{ name: flaky, url: '{}', retry: {{ initial_interval: 50ms, max_interval: 100ms }} }}
  - {{ name: rejecting, url: '{}', conditions: [{{ label: severity, operator: In, values: [critical] }}] }}
"#,
        flaky.uri(),
        rejecting.uri()
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let port = closed_port();
    let rules = repo("deploy/prometheus/alert-relay-rules.yaml");
    let config = write(
        dir.path(),
        "prometheus.yml",
        &format!(
            r#"
global: {{ scrape_interval: 1s, evaluation_interval: 1s }}
rule_files: ['{}']
scrape_configs:
  - job_name: alert-relay
    static_configs: [{{ targets: ['{}'] }}]
"#,
            rules.display(),
            relay.base.trim_start_matches("http://")
        ),
    );
    let args = vec![
        format!("--config.file={}", config.display()),
        format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()),
        format!("--web.listen-address=127.0.0.1:{port}"),
    ];
    let _prometheus = spawn("prometheus", &args, &dir.path().join("prometheus.log"));
    let prom = format!("http://127.0.0.1:{port}");
    eventually("Prometheus to scrape the relay", || async {
        numbers(&query(&prom, r#"up{job="alert-relay"} == 1"#).await) == 1
    })
    .await;

    // Traffic while Prometheus watches: deliveries, retries, dead letters, refusals.
    let base = relay.base.clone();
    let traffic = tokio::spawn(async move {
        for i in 0.. {
            let body = payload(&format!("g{i}"), &[("firing", &[("alertname", "Load"), ("severity", "critical")])]);
            post_json(&format!("{base}/webhook"), body, None).await;
            if i % 5 == 0 {
                post_json(&format!("{base}/webhook"), b"{oops".to_vec(), None).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });

    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(repo("dashboards/alert-relay.json")).unwrap()).unwrap();
    let mut panel_exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            panel_exprs.push((
                panel["title"].as_str().unwrap().to_string(),
                grafana_to_promql(target["expr"].as_str().unwrap()),
            ));
        }
    }
    for var in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(def) = var["definition"].as_str() {
            // label_values(metric, label): the metric selector must select something.
            let selector = def.trim_start_matches("label_values(").rsplit_once(',').unwrap().0;
            panel_exprs.push((format!("variable {}", var["name"].as_str().unwrap()), grafana_to_promql(selector)));
        }
    }
    let rules_file = yaml_file(&rules);
    let rule_exprs: Vec<String> = rules_file["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["expr"].as_str().unwrap().to_string())
        .collect();
    for (title, expr) in &panel_exprs {
        let answer = query(&prom, expr).await;
        assert_eq!(answer["status"], "success", "panel {title:?}: {expr}\n{answer}");
    }
    for expr in &rule_exprs {
        let answer = query(&prom, expr).await;
        assert_eq!(answer["status"], "success", "rule {expr}\n{answer}");
    }

    // The core panels show numbers once traffic has flowed.
    let variables = ["variable job", "variable receiver"];
    for title in CORE_PANELS.iter().chain(variables.iter()).copied() {
        let exprs: Vec<&String> = panel_exprs.iter().filter(|(t, _)| t == title).map(|(_, e)| e).collect();
        assert!(!exprs.is_empty(), "no panel {title:?}");
        eventually(&format!("data in panel {title:?}"), || async {
            let mut any = false;
            for e in &exprs {
                any |= numbers(&query(&prom, e).await) > 0;
            }
            any
        })
        .await;
    }
    // Every rule loaded and evaluated without error.
    eventually("the rules to be evaluated", || async {
        let answer: Value = serde_json::from_str(
            &client().get(format!("{prom}/api/v1/rules")).send().await.unwrap().text().await.unwrap(),
        )
        .unwrap();
        let rules = answer["data"]["groups"][0]["rules"].as_array().cloned().unwrap_or_default();
        rules.len() == rule_exprs.len() && rules.iter().all(|r| r["health"] == "ok")
    })
    .await;
    traffic.abort();
}

/// The README's troubleshooting pipeline, exactly as written there, against a
/// real Alertmanager holding real alerts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_explain_pipeline_runs_as_written() {
    if !needs(&["prometheus-alertmanager", "amtool", "curl"]) {
        return;
    }
    let readme = std::fs::read_to_string(repo("README.md")).unwrap();
    let start = readme.find("amtool alert query -o json").expect("the pipeline in the README");
    let block_start = readme[..start].rfind("```sh\n").unwrap() + "```sh\n".len();
    let block_end = block_start + readme[block_start..].find("```").unwrap();
    let command: String = readme[block_start..block_end].lines().map(str::trim_start).collect::<Vec<_>>().join("\n");

    let relay = TestRelay::start(&format!(
        "{ADMIN_CONFIG}server: {{ listen: '127.0.0.1:0', webhook_auth: {{ type: bearer, token: {WEBHOOK_TOKEN} }} }}\n\
         receivers: [{{ name: ops, url: 'http://127.0.0.1:{}/', conditions: [{{ label: severity, operator: In, values: [critical] }}] }}]\n",
        closed_port()
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (_am, am) = alertmanager(dir.path(), &relay.base).await;
    fire(
        &am,
        &[&[("alertname", "Disk"), ("severity", "info")], &[("alertname", "Cpu"), ("severity", "critical")]],
        false,
    )
    .await;
    eventually("Alertmanager to list both alerts", || async {
        let text = client().get(format!("{am}/api/v2/alerts")).send().await.unwrap().text().await.unwrap();
        let list: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        list.as_array().is_some_and(|a| a.len() == 2)
    })
    .await;
    let out = std::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", &command])
        .env("AM", &am)
        .env("RELAY", &relay.base)
        .env("ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let answer: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    let ops = &answer["receivers"][0];
    assert_eq!(ops["receiver"], "ops");
    let alerts = ops["alerts"].as_array().unwrap();
    assert_eq!(alerts.len(), 2, "{answer}");
    assert_eq!(alerts.iter().filter(|a| a["delivered"] == true).count(), 1, "the critical one");
    let stopped = alerts.iter().find(|a| a["delivered"] == false).unwrap();
    assert!(
        stopped["stopped_by"]["detail"]
            .as_str()
            .unwrap()
            .starts_with("condition 1 (severity Includes values critical)"),
        "{stopped}"
    );
}

/// Alertmanager with two receivers for every alert: the relay (send_resolved:
/// true, as the README says) and a recorder of its own with send_resolved:
/// false, the reference for what a send_resolved: false receiver should get.
async fn alertmanager_beside(dir: &Path, relay: &str, recorder: &str) -> (Child, String) {
    start_alertmanager(
        dir,
        &format!(
            r#"
route:
  receiver: relay
  group_by: [alertname]
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
  routes:
    - {{ receiver: relay, continue: true }}
    - {{ receiver: direct }}
receivers:
  - name: relay
    webhook_configs: [{{ url: '{relay}/webhook', send_resolved: true }}]
  - name: direct
    webhook_configs: [{{ url: '{recorder}', send_resolved: false }}]
"#
        ),
    )
    .await
}

/// Each notification's alerts as "instance/status", sorted.
async fn sequence(server: &MockServer) -> Vec<Vec<String>> {
    notifications(server)
        .await
        .iter()
        .map(|n| {
            let mut a: Vec<String> = n["alerts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| format!("{}/{}", a["labels"]["instance"].as_str().unwrap(), a["status"].as_str().unwrap()))
                .collect();
            a.sort();
            a
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_resolved_false_gets_what_alertmanager_itself_sends_also_across_a_restart() {
    if !needs(&["prometheus-alertmanager"]) {
        return;
    }
    let (quiet, direct) = (MockServer::start().await, MockServer::start().await);
    for t in [&quiet, &direct] {
        Mock::given(method("POST")).respond_with(ResponseTemplate::new(200)).mount(t).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = closed_port();
    let cfg = config(
        dir.path(),
        port,
        &format!("receivers: [{{ name: quiet, url: '{}', send_resolved: false }}]", quiet.uri()),
    );
    let relay = Process::start(dir.path(), &["--config", &cfg], port, &[]).await;
    let (_am, am) = alertmanager_beside(dir.path(), &relay.base, &direct.uri()).await;
    let a: &[(&str, &str)] = &[("alertname", "Grp"), ("instance", "a")];
    let b: &[(&str, &str)] = &[("alertname", "Grp"), ("instance", "b")];
    let c: &[(&str, &str)] = &[("alertname", "Grp"), ("instance", "c")];

    // A fires, then B once both have A: both get [A], then [A, B]. (Fired
    // together, the two aggregation groups could each see B join before or
    // after their own group_wait on a loaded machine, and differ.) Each new
    // state is printed, shown if a wait times out: which of the two got what.
    let shown = std::sync::Mutex::new(String::new());
    let both_at = |want: Vec<Vec<String>>| {
        let shown = &shown;
        let (direct, quiet) = (&direct, &quiet);
        move || {
            let want = want.clone();
            async move {
                let reference = sequence(direct).await;
                let relayed = sequence(quiet).await;
                let state = format!("Alertmanager's own receiver: {reference:?}; the relay's: {relayed:?}");
                if *shown.lock().unwrap() != state {
                    eprintln!("{state}");
                    *shown.lock().unwrap() = state;
                }
                reference == want && relayed == want
            }
        }
    };
    fire(&am, &[a], false).await;
    let only_a = vec!["a/firing".to_string()];
    eventually("A at both", both_at(vec![only_a.clone()])).await;
    fire(&am, &[a, b], false).await;
    let both = vec!["a/firing".to_string(), "b/firing".to_string()];
    eventually("A and B at both", both_at(vec![only_a, both])).await;
    let first = sequence(&direct).await.len();

    // A resolves, B still fires: Alertmanager tells the relay (send_resolved:
    // true there) but sends its own send_resolved: false receiver nothing.
    fire(&am, &[a], true).await;
    eventually("the relay to see A resolved", || async {
        metric(&relay.base, r#"alert_relay_alerts_filtered_total{reason="resolved",receiver="quiet"}"#).await >= 1.0
    })
    .await;

    // The relay restarts; its log of what quiet was sent survives.
    let mut relay = relay;
    relay.signal("TERM");
    relay.wait_exit().await;
    let relay = Process::start(dir.path(), &["--config", &cfg], port, &[]).await;

    // C fires: a new alert, so both get the firing set B, C.
    fire(&am, &[c], false).await;
    let then = [vec!["b/firing".to_string(), "c/firing".to_string()]];
    eventually("B and C at the reference", || async { sequence(&direct).await[first..] == then[..] }).await;
    eventually("B and C at the relay's receiver", || async {
        let got = sequence(&quiet).await;
        got.len() > first && got[first..] == then[..]
    })
    .await;
    // B resolves: nothing for either. Once the relay has answered that
    // notification, no delivery for quiet may have been made of it.
    fire(&am, &[b], true).await;
    eventually("the relay to have answered B's resolve", || async {
        metric(&relay.base, r#"alert_relay_alerts_received_total{status="resolved"}"#).await >= 1.0
            && metric(&relay.base, r#"alert_relay_webhook_requests_total{code="200"}"#).await >= 2.0
    })
    .await;
    assert_eq!(metric(&relay.base, r#"alert_relay_notifications_total{receiver="quiet"}"#).await, 1.0, "only B, C");
    assert_eq!(metric(&relay.base, r#"alert_relay_spool_pending{receiver="quiet"}"#).await, 0.0);
    assert_eq!(sequence(&quiet).await, sequence(&direct).await, "exactly what Alertmanager sent its own receiver");
}

/// Every shell block of the README's "Admin API" section, in order, exactly as
/// written, against the real binary and the example webhook the section names
/// (127.0.0.1:9099, answering 422). Between the Explain and the Deliveries
/// blocks the test posts one alert, so that there is a dead letter to list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_admin_api_session_runs_as_written() {
    if !needs(&["curl", "bash", "pidof"]) {
        return;
    }
    let readme = std::fs::read_to_string(repo("README.md")).unwrap();
    let section = &readme[readme.find("## Admin API").unwrap()..readme.find("## Web console").unwrap()];
    let blocks: Vec<&str> = section.split("```sh\n").skip(1).map(|b| &b[..b.find("```").unwrap()]).collect();
    assert!(blocks.len() >= 7, "{} blocks", blocks.len());

    // The example webhook: 422 with a reason, as the section says.
    let hook = std::net::TcpListener::bind("127.0.0.1:9099").expect("port 9099 free for the README's example webhook");
    hook.set_nonblocking(true).unwrap();
    let hook = tokio::net::TcpListener::from_std(hook).unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = hook.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(b"HTTP/1.1 422 Unprocessable Entity\r\ncontent-length: 11\r\nconnection: close\r\n\r\nbad field x").await;
            });
        }
    });

    let dir = tempfile::tempdir().unwrap();
    let port = closed_port();
    let cfg = config(dir.path(), port, &format!("{ADMIN_CONFIG}receivers: []"));
    let relay = Process::start(dir.path(), &["--config", &cfg], port, &[]).await;
    let alert = dir.path().join("alert.json");
    std::fs::write(&alert, payload("g", &[("firing", &[("severity", "critical"), ("namespace", "prod")])])).unwrap();
    let dead_letter = format!(
        "curl -s -H 'Content-Type: application/json' -d @{} $R/webhook >/dev/null\n\
         for i in $(seq 200); do curl -s -H \"$AUTH\" \"$R/api/v1/deliveries?receiver=chat&state=dead\" | grep -q '\"id\"' && break; sleep 0.1; done\n",
        alert.display()
    );
    let mut script = String::new();
    for block in &blocks {
        if block.starts_with("curl -s -H \"$AUTH\" \"$R/api/v1/deliveries") {
            script.push_str(&dead_letter);
        }
        script.push_str(block);
        script.push_str("\necho\n");
    }
    let out = std::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(repo(""))
        .env("R", &relay.base)
        .env("ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    for expected in [
        r#""name":"chat""#,
        r#""token":"<redacted>""#,
        "was changed meanwhile",
        r#""status":422"#,
        r#""error":"HTTP 422: bad field x""#,
        "condition 1 (severity Includes values critical) fails",
        r#""dead_reason":"clientError""#,
        r#""requeued":"#,
        r#""deleted":"chat""#,
        r#""reloaded":true"#,
    ] {
        assert!(stdout.contains(expected), "{expected} not in the session's output:\n{stdout}");
    }
    assert!(!stdout.contains("s3cret"), "the token is never shown");
}

// ---------------------------------------------------------------------------
// Transport security with real peers.

/// The venv scripts/test makes, with PyPI's `standardwebhooks`.
fn venv_python() -> std::path::PathBuf {
    venv_bin("python")
}

/// The Python target of tests/verifier, verifying with `secret`; its port and
/// the file it logs every request's verdicts to.
fn standard_webhooks_target(dir: &Path, secret: &str) -> (Child, u16, std::path::PathBuf) {
    use std::io::BufRead;
    let log = dir.join(format!("verdicts-{}.jsonl", &secret[6..12]));
    let mut child = std::process::Command::new(venv_python())
        .arg(repo("tests/verifier/standard_webhooks_target.py"))
        .arg(secret)
        .arg(&log)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python target starts");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).expect("port line");
    let port = line.trim().parse().unwrap_or_else(|_| panic!("the Python target printed {line:?}, not a port"));
    (Child(child), port, log)
}

fn verdicts(log: &Path) -> Vec<Value> {
    // A line still being written is read on the next look.
    std::fs::read_to_string(log).unwrap_or_default().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_verify_with_pypi_standardwebhooks_also_during_a_key_rotation() {
    if !needs(&[venv_python().to_str().unwrap()]) {
        return;
    }
    use base64::Engine;
    let key = |b: u8| format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode([b; 32]));
    let (old, new) = (key(1), key(2));
    let dir = tempfile::tempdir().unwrap();
    // The target still knows only the old key; the relay is mid-rotation for
    // one receiver and already past it for another.
    let (_python, port, log) = standard_webhooks_target(dir.path(), &old);
    let url = format!("http://127.0.0.1:{port}/hook");
    let relay = TestRelay::start(&format!(
        "{ADMIN_CONFIG}receivers:\n\
         - {{ name: rotating, url: '{url}', signing: {{ secret: '{new}', previous_secret: '{old}' }} }}\n\
         - {{ name: old-key, url: '{url}', signing: {{ secret: '{old}' }} }}\n\
         - {{ name: new-key-only, url: '{url}', signing: {{ secret: '{new}' }} }}\n"
    ))
    .await;
    assert_eq!(relay.post(FIRING).await.0, 200);
    assert_eq!(relay.post(MIXED).await.0, 200);
    eventually("six verdicts", || async { verdicts(&log).len() == 6 }).await;
    for v in verdicts(&log) {
        let receiver = v["receiver"].as_str().unwrap();
        let expect_valid = receiver != "new-key-only";
        assert_eq!(v["valid"], expect_valid, "{v}");
        assert_eq!(v["tampered_rejected"], true, "a changed body fails: {v}");
        assert_eq!(v["stale_rejected"], true, "a timestamp 10 minutes old fails: {v}");
        assert!(v["id"].as_str().unwrap().ends_with(|c: char| c.is_ascii_digit()), "{v}");
    }
    // The target's 400 is a client error: the unverifiable deliveries dead-letter.
    eventually("the new-key-only receiver to dead-letter", || async {
        relay.metric(r#"alert_relay_notifications_failed_total{reason="clientError",receiver="new-key-only"}"#).await
            == 2.0
    })
    .await;
    let (_, shown) = relay.admin("GET", "/api/v1/receivers/rotating", None).await;
    assert_eq!(shown["signing"], json!({"secret": "<redacted>", "previous_secret": "<redacted>"}));
}

/// The certificate a TLS handshake with `addr` is given, trusting `ca` and
/// presenting `identity`.
async fn served_certificate(addr: std::net::SocketAddr, ca: &Ca, identity: &Leaf) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.issuer.der().clone()).unwrap();
    let chain = vec![rustls::pki_types::CertificateDer::from_pem_slice(identity.cert_pem.as_bytes()).unwrap()];
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes()).unwrap();
    let config =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    match connector.connect(name, tcp).await {
        Ok(tls) => tls.get_ref().1.peer_certificates().unwrap()[0].to_vec(),
        Err(e) => panic!("handshake: {e}"),
    }
}

fn der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alertmanager_posts_over_mutual_tls_and_a_certificate_rotation_refuses_nothing() {
    if !needs(&["prometheus-alertmanager", "curl"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (server_ca, client_ca) = (Ca::new("relay listener CA"), Ca::new("Alertmanager client CA"));
    let first = server_ca.leaf(&["127.0.0.1"]);
    let (cert, key) = (write(d, "tls.crt", &first.cert_pem), write(d, "tls.key", &first.key_pem));
    let ca_file = write(d, "ca.crt", &server_ca.pem());
    let clients_file = write(d, "clients.crt", &client_ca.pem());
    let am_leaf = client_ca.leaf(&["alertmanager"]);
    let (am_cert, am_key) = (write(d, "am.crt", &am_leaf.cert_pem), write(d, "am.key", &am_leaf.key_pem));
    let t = target(200).await;
    let relay = TestRelay::start(&format!(
        "server: {{ listen: '127.0.0.1:0', tls: {{ cert_file: '{}', key_file: '{}', client_ca_file: '{}' }} }}\n\
         receivers: [{{ name: chat, url: '{}' }}]",
        cert.display(),
        key.display(),
        clients_file.display(),
        t.uri()
    ))
    .await;
    let addr = relay.relay.as_ref().unwrap().local_addr();
    let (_am, am) = start_alertmanager(
        d,
        &format!(
            r#"
route: {{ receiver: relay, group_by: [alertname], group_wait: 1s, group_interval: 1s, repeat_interval: 1h }}
receivers:
  - name: relay
    webhook_configs:
      - url: https://127.0.0.1:{port}/webhook
        http_config:
          tls_config: {{ ca_file: '{ca}', cert_file: '{c}', key_file: '{k}' }}
"#,
            port = addr.port(),
            ca = ca_file.display(),
            c = am_cert.display(),
            k = am_key.display()
        ),
    )
    .await;
    // A client without a certificate is refused in the handshake.
    let curl = std::process::Command::new("curl")
        .args(["-sS", "--cacert", ca_file.to_str().unwrap(), "-X", "POST", "--data", FIRING])
        .arg(format!("https://127.0.0.1:{}/webhook", addr.port()))
        .output()
        .unwrap();
    assert!(!curl.status.success(), "curl without a certificate got in");

    // Alerts keep coming while the pair is replaced (cert-manager renews with
    // the same CA): every one of them arrives, none is refused.
    let second = server_ca.leaf(&["127.0.0.1"]);
    assert_eq!(served_certificate(addr, &server_ca, &am_leaf).await, der(&first.cert_pem));
    for i in 0..6 {
        fire(&am, &[&[("alertname", &format!("Rotation{i}")), ("severity", "warning")]], false).await;
        if i == 2 {
            std::fs::write(&key, &second.key_pem).unwrap();
            std::fs::write(&cert, &second.cert_pem).unwrap();
            eventually("new handshakes to get the new certificate", || async {
                served_certificate(addr, &server_ca, &am_leaf).await == der(&second.cert_pem)
            })
            .await;
        }
        eventually(&format!("alert {i} through the relay"), || async { count(&t).await == i + 1 }).await;
    }
    let am_metrics = client().get(format!("{am}/metrics")).send().await.unwrap().text().await.unwrap();
    let failed: f64 = am_metrics
        .lines()
        .filter(|l| l.starts_with("alertmanager_notifications_failed_total{") && l.contains("integration=\"webhook\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(failed, 0.0, "Alertmanager saw a failed notification:\n{am_metrics}");
    let metrics = https_client(&server_ca, Some(&am_leaf))
        .get(format!("https://127.0.0.1:{}/metrics", addr.port()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("\nalert_relay_tls_last_reload_successful 1\n"), "{metrics}");
}
