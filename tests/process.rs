//! The real `alert-relay` binary as a child process: CLI, crash recovery,
//! graceful stop, embedded defaults.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use common::*;
use serde_json::Value;
use wiremock::matchers::method;
use wiremock::{Mock, ResponseTemplate};

fn group_keys(requests: &[wiremock::Request]) -> BTreeSet<String> {
    requests
        .iter()
        .map(|r| serde_json::from_slice::<Value>(&r.body).unwrap()["groupKey"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_accepted_delivery_and_keeps_each_schedule() {
    let dir = tempfile::tempdir().unwrap();
    let target = target(503).await;
    let port = closed_port();
    let cfg = config(
        dir.path(),
        port,
        &format!(
            "{ADMIN_CONFIG}receivers: [{{ name: r, url: '{}', concurrency: 2, retry: {{ initial_interval: 100ms, max_interval: 300ms, max_elapsed: 1h }} }}]",
            target.uri()
        ),
    );
    let mut relay = Process::start(dir.path(), &["--config", &cfg], port, &[]).await;
    // Thirty concurrent requests, each answered 200.
    let sent: BTreeSet<String> = (0..30).map(|i| format!("group-{i}")).collect();
    let posts = sent.iter().map(|key| {
        let url = format!("{}/webhook", relay.base);
        let body = payload(key, &[("firing", &[("alertname", "Crash")])]);
        async move { post_json(&url, body, None).await.0 }
    });
    let statuses = futures_join(posts).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    eventually("attempts against the failing target", || async {
        target.received_requests().await.unwrap_or_default().len() >= 30
    })
    .await;
    let (_, before) = admin_call(&relay.base, Some(ADMIN_TOKEN), "GET", "/api/v1/deliveries?limit=100", None).await;
    relay.child.kill().unwrap(); // SIGKILL
    relay.child.wait().unwrap();
    let keys_before = keys_by_group(&target.received_requests().await.unwrap());

    // The stored schedule survived: same deliveries, first attempt unchanged
    // (so max_elapsed still counts from it), attempt counts not reset.
    let relay = Process::start(dir.path(), &["--config", &cfg], port, &[]).await;
    let (_, after) = admin_call(&relay.base, Some(ADMIN_TOKEN), "GET", "/api/v1/deliveries?limit=100", None).await;
    let rows = |v: &Value| -> Vec<(u64, String, u64)> {
        v["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| (d["id"].as_u64().unwrap(), d["first_attempt"].to_string(), d["attempts"].as_u64().unwrap()))
            .collect()
    };
    let (before, after) = (rows(&before), rows(&after));
    assert_eq!(before.len(), 30);
    assert_eq!(
        before.iter().map(|r| (r.0, r.1.clone())).collect::<Vec<_>>(),
        after.iter().map(|r| (r.0, r.1.clone())).collect::<Vec<_>>()
    );
    assert!(before.iter().zip(&after).all(|(b, a)| a.2 >= b.2 && b.2 >= 1), "{before:?} {after:?}");
    drop(relay);

    target.reset().await;
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(200)).mount(&target).await;
    let relay = Process::start(dir.path(), &["serve", "--config", &cfg], port, &[]).await;
    eventually("every accepted delivery after restart", || async {
        group_keys(&target.received_requests().await.unwrap_or_default()) == sent
    })
    .await;
    eventually("the spool to drain", || async {
        metric(&relay.base, r#"alert_relay_spool_pending{receiver="r"}"#).await == 0.0
    })
    .await;
    // Each group arrives under the Idempotency-Key it had before the kill.
    let keys_after = keys_by_group(&target.received_requests().await.unwrap());
    for (group, key) in &keys_after {
        assert_eq!(keys_before.get(group), Some(key), "group {group}");
    }
    let log = std::fs::read_to_string(dir.path().join("relay.log")).unwrap();
    assert!(!log.contains(ADMIN_TOKEN), "the admin token is never logged");
}

/// Runs the futures concurrently; their outputs in order.
async fn futures_join<F: std::future::Future<Output = u16> + Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<u16> {
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

/// Each group's Idempotency-Key (one per group, or the test fails).
fn keys_by_group(requests: &[wiremock::Request]) -> std::collections::BTreeMap<String, String> {
    let mut keys = std::collections::BTreeMap::new();
    for r in requests {
        let group = serde_json::from_slice::<Value>(&r.body).unwrap()["groupKey"].as_str().unwrap().to_string();
        let key = header(r, "idempotency-key");
        let previous = keys.insert(group.clone(), key.clone());
        assert!(previous.is_none_or(|p| p == key), "group {group} under two keys");
    }
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_zero_and_keeps_pending_deliveries() {
    let dir = tempfile::tempdir().unwrap();
    let port = closed_port();
    let cfg = config(
        dir.path(),
        port,
        &format!("receivers: [{{ name: r, url: 'http://127.0.0.1:{}/', timeout: 1s }}]", closed_port()),
    );
    let mut relay = Process::start(dir.path(), &["--config", &cfg], port, &[]).await;
    let (status, _) = post_json(&format!("{}/webhook", relay.base), FIRING.into(), None).await;
    assert_eq!(status, 200);
    relay.signal("TERM");
    assert!(relay.wait_exit().await.success());
    let gauges = alert_relay::spool::SpoolGauges::unregistered();
    let spool = alert_relay::spool::Spool::open(&dir.path().join("spool"), false, gauges).unwrap();
    let left = spool.load_all().unwrap();
    assert_eq!(left.len(), 1);
    assert!(left[0].1.dead.is_none(), "still pending, not dead");
    let log = std::fs::read_to_string(dir.path().join("relay.log")).unwrap();
    assert!(log.contains("1 deliveries left pending"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_on_embedded_defaults_with_env_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let port = closed_port();
    let listen = format!("127.0.0.1:{port}");
    let mut relay = Process::start(dir.path(), &[], port, &[("ALERT_RELAY__SERVER__LISTEN", &listen)]).await;
    assert!(dir.path().join("data/spool-00000001.log").exists(), "spool in ./data");
    let text = client().get(format!("{}/metrics", relay.base)).send().await.unwrap().text().await.unwrap();
    assert!(text.contains(r#"alert_relay_spool_pending{receiver="example"} 0"#));
    // The container health check, as the Dockerfile runs it.
    let healthy = Command::new(BIN)
        .arg("healthcheck")
        .current_dir(dir.path())
        .env("ALERT_RELAY__SERVER__LISTEN", format!("0.0.0.0:{port}"))
        .output()
        .unwrap();
    assert!(healthy.status.success(), "{}", String::from_utf8_lossy(&healthy.stderr));
    relay.signal("INT");
    assert!(relay.wait_exit().await.success());
    let down = Command::new(BIN)
        .arg("healthcheck")
        .current_dir(dir.path())
        .env("ALERT_RELAY__SERVER__LISTEN", &listen)
        .output()
        .unwrap();
    assert!(!down.status.success());
    assert!(String::from_utf8_lossy(&down.stderr).starts_with("unhealthy: "));
}

#[test]
fn check_config_prints_every_error_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "receivers:\n  - { name: a, url: 'nope', conditions: [{ label: x, operator: Matches, values: ['('] }] }\n  - { name: a, url: 'http://x', timeout: soon }\n",
    )
    .unwrap();
    let out = Command::new(BIN).args(["check-config", "--config"]).arg(&bad).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 4, "{stderr}");
    assert!(lines[0].starts_with("receivers[0] (a).url:"), "{stderr}");
    assert!(
        lines[1].starts_with("receivers[0] (a).conditions[0]: x Regex match: values[0]: invalid regex"),
        "{stderr}"
    );
    assert!(lines[2].starts_with("receivers[1] (a).name: duplicate"), "{stderr}");
    assert!(lines[3].starts_with("receivers[1] (a).timeout: invalid duration \"soon\""), "{stderr}");

    let unknown = dir.path().join("unknown.yaml");
    std::fs::write(&unknown, "spool: { dri: x }\n").unwrap();
    let out = Command::new(BIN).args(["check-config", "--config"]).arg(&unknown).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field `dri`"));

    let good = dir.path().join("good.yaml");
    std::fs::write(&good, "receivers: [{ name: a, url: 'http://127.0.0.1:1/' }]\n").unwrap();
    let out = Command::new(BIN).args(["check-config", "--config"]).arg(&good).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK (1 receivers)"));

    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("alert-relay {}", env!("CARGO_PKG_VERSION")));
}

/// The README's check-config example: its bad.yaml, its command, its output.
#[test]
fn the_readme_check_config_example_prints_what_the_readme_shows() {
    let readme = std::fs::read_to_string(repo("README.md")).unwrap();
    let yaml_at = readme.find("```yaml\n# bad.yaml\n").expect("the bad.yaml block") + "```yaml\n".len();
    let yaml = &readme[yaml_at..yaml_at + readme[yaml_at..].find("```").unwrap()];
    let command_at = readme.find("`alert-relay check-config --config bad.yaml`").expect("the command") + 1;
    let command = &readme[command_at..command_at + readme[command_at..].find('`').unwrap()];
    let out_at = command_at + readme[command_at..].find("```\n").unwrap() + "```\n".len();
    let expected = &readme[out_at..out_at + readme[out_at..].find("```").unwrap()];
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.yaml"), yaml).unwrap();
    let args: Vec<&str> = command.split_whitespace().skip(1).collect();
    let out = Command::new(BIN).args(&args).current_dir(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stderr), expected);
}

#[test]
fn shipped_config_passes_check_config() {
    let out = Command::new(BIN)
        .args(["check-config", "--config", concat!(env!("CARGO_MANIFEST_DIR"), "/config/alert-relay.yaml")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_receivers_survive_a_restart_and_sighup_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let target = target(204).await;
    let port = closed_port();
    let cfg = config(dir.path(), port, &format!("{ADMIN_CONFIG}receivers: []\n"));
    let mut relay = Process::start(dir.path(), &["--config", &cfg], port, &[]).await;
    let spec = serde_json::json!({"url": target.uri(), "auth": {"type": "bearer", "token": "kept-across-restarts"}});
    let (status, _) = admin_call(&relay.base, Some(ADMIN_TOKEN), "PUT", "/api/v1/receivers/api-made", Some(spec)).await;
    assert_eq!(status, 201);
    relay.signal("TERM");
    assert!(relay.wait_exit().await.success());

    let relay = Process::start(dir.path(), &["--config", &cfg], port, &[]).await;
    let (status, got) = admin_call(&relay.base, Some(ADMIN_TOKEN), "GET", "/api/v1/receivers/api-made", None).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["provisioned"], false);
    let (status, _) = post_json(&format!("{}/webhook", relay.base), FIRING.into(), None).await;
    assert_eq!(status, 200);
    eventually("delivery with the stored token", || async {
        target
            .received_requests()
            .await
            .unwrap_or_default()
            .iter()
            .any(|r| r.headers.get("authorization").is_some_and(|v| v == "Bearer kept-across-restarts"))
    })
    .await;

    // SIGHUP re-reads the file.
    config(dir.path(), port, &format!("{ADMIN_CONFIG}receivers: [{{ name: from-hup, url: 'http://127.0.0.1:1/' }}]\n"));
    relay.signal("HUP");
    let log = dir.path().join("relay.log");
    eventually("SIGHUP to be handled", || {
        let seen = std::fs::read_to_string(&log).unwrap_or_default().contains("SIGHUP: reloading the configuration");
        async move { seen }
    })
    .await;
    eventually("the reloaded receiver", || async {
        admin_call(&relay.base, Some(ADMIN_TOKEN), "GET", "/api/v1/receivers/from-hup", None).await.0 == 200
    })
    .await;
}
