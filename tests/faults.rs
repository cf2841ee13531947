//! The fault suite, over the real binary: operator slips (empty and
//! half-written config files, a receiver removed and restored), storage faults
//! (disk full, a spool emptied or gone), hostile clients (stalled bodies, slow
//! heads, reserved headers, secret exfiltration through the admin API,
//! duplicate label keys) and a kill -9 loop under load.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wiremock::matchers::method;
use wiremock::{Mock, ResponseTemplate};

const ADMIN: &str = "admin: { token: admin-secret-token }\n";

async fn admin(base: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    admin_call(base, Some(ADMIN_TOKEN), method, path, body).await
}

fn log_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("relay.log")).unwrap_or_default()
}

/// The value of a series that must exist (a missing one fails the test).
async fn series(base: &str, name: &str) -> f64 {
    metric_present(base, name).await.unwrap_or_else(|| panic!("series {name} is absent from /metrics"))
}

// ---------------------------------------------------------------------------
// Operator slips.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_and_half_written_config_files_are_refused_on_every_path() {
    let dir = tempfile::tempdir().unwrap();
    let port = closed_port();
    let receivers = format!(
        "{ADMIN}server: {{ listen: '127.0.0.1:{port}', webhook_auth: {{ type: bearer, token: hook-token }} }}\n\
         receivers: [{{ name: r, url: 'http://127.0.0.1:{}/' }}]\n",
        closed_port()
    );
    // `config` writes its own server line; this file has the full one.
    let path = dir.path().join("relay.yaml");
    let good = format!("spool: {{ dir: '{}' }}\n{receivers}", dir.path().join("spool").display());
    std::fs::write(&path, &good).unwrap();
    let cfg = path.display().to_string();
    let relay = Process::start(dir.path(), &["--config", &cfg], port, &[]).await;
    let refusals = || log_of(dir.path()).matches("is empty: refusing it").count();
    let still_guarded = || async {
        let hook = format!("{}/webhook", relay.base);
        assert_eq!(post_json(&hook, FIRING.into(), None).await.0, 401, "webhook auth stays on");
        assert_eq!(post_json(&hook, FIRING.into(), Some("Bearer hook-token")).await.0, 200);
        let (status, list) = admin(&relay.base, "GET", "/api/v1/receivers", None).await;
        assert_eq!(status, 200, "the admin API stays on");
        assert_eq!(list["receivers"][0]["name"], "r", "receivers stay");
    };

    // The file watch.
    std::fs::write(&path, "").unwrap();
    eventually("the file watch to refuse the empty file", || async { refusals() >= 1 }).await;
    assert_eq!(series(&relay.base, "alert_relay_config_last_reload_successful").await, 0.0);
    still_guarded().await;
    // SIGHUP (the content did not change, so the watch stays quiet).
    std::fs::write(&path, " \n\t\n").unwrap();
    eventually("the watch to see the whitespace-only file", || async { refusals() >= 2 }).await;
    relay.signal("HUP");
    eventually("SIGHUP to refuse it", || async { refusals() >= 3 }).await;
    still_guarded().await;
    // POST /-/reload.
    let (status, body) = admin(&relay.base, "POST", "/-/reload", None).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["details"][0].as_str().unwrap().contains("is empty"), "{body}");
    // Half-written: cut in the middle of a line.
    std::fs::write(&path, &good[..good.len() - 25]).unwrap();
    let failures = || log_of(dir.path()).matches("failed, keeping the running configuration").count();
    let before = failures();
    relay.signal("HUP");
    eventually("the half-written file to be refused", || async { failures() > before }).await;
    still_guarded().await;
    // The whole file again: the watch applies it.
    std::fs::write(&path, &good).unwrap();
    eventually("a good reload", || async {
        metric_present(&relay.base, "alert_relay_config_last_reload_successful").await == Some(1.0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_removed_from_the_file_keeps_its_deliveries_until_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let target = target(503).await;
    let port = closed_port();
    let with = format!(
        "{ADMIN}receivers:\n  - {{ name: keep, url: '{0}/k' }}\n  - {{ name: r, url: '{0}/r', retry: {{ initial_interval: 100ms, max_interval: 200ms }} }}\n",
        target.uri()
    );
    let without = format!("{ADMIN}receivers:\n  - {{ name: keep, url: '{}/k' }}\n", target.uri());
    let cfg = config(dir.path(), port, &with);
    let relay = Process::start(dir.path(), &["--config", &cfg], port, &[]).await;
    for g in ["a", "b", "c"] {
        let body = payload(g, &[("firing", &[("alertname", "Orphan")])]);
        assert_eq!(post_json(&format!("{}/webhook", relay.base), body, None).await.0, 200);
    }
    eventually("three pending for r", || async {
        metric_present(&relay.base, r#"alert_relay_spool_pending{receiver="r"}"#).await == Some(3.0)
    })
    .await;
    config(dir.path(), port, &without);
    assert_eq!(admin(&relay.base, "POST", "/-/reload", None).await.0, 200);
    assert_eq!(series(&relay.base, "alert_relay_orphaned_deliveries").await, 3.0);
    let (_, list) = admin(&relay.base, "GET", "/api/v1/receivers", None).await;
    assert_eq!(list["orphaned"], json!({"r": 3}));
    let (_, deliveries) = admin(&relay.base, "GET", "/api/v1/deliveries?receiver=r", None).await;
    let rows = deliveries["deliveries"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|d| d["orphaned"] == true && d["state"] == "pending"), "{deliveries}");
    // The series of a receiver not in force are gone.
    assert_eq!(metric_present(&relay.base, r#"alert_relay_spool_pending{receiver="r"}"#).await, None);
    // A webhook while it is away: kept too (it is routed to nobody, so nothing new).
    // Back, with its target healthy: everything arrives.
    target.reset().await;
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(200)).mount(&target).await;
    config(dir.path(), port, &with);
    assert_eq!(admin(&relay.base, "POST", "/-/reload", None).await.0, 200);
    eventually("the orphans delivered once r is back", || async {
        let groups: BTreeSet<String> = target
            .received_requests()
            .await
            .unwrap_or_default()
            .iter()
            .filter(|r| r.url.path() == "/r")
            .map(|r| serde_json::from_slice::<Value>(&r.body).unwrap()["groupKey"].as_str().unwrap().to_string())
            .collect();
        groups == BTreeSet::from(["a".to_string(), "b".to_string(), "c".to_string()])
    })
    .await;
    assert_eq!(series(&relay.base, "alert_relay_orphaned_deliveries").await, 0.0);
}

// ---------------------------------------------------------------------------
// Storage faults.

/// A small tmpfs, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// None (with a message saying why) where mounting is not allowed.
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).unwrap();
        let uid = std::process::Command::new("id").arg("-u").output().ok()?;
        if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
            eprintln!("SKIPPED disk-full test: needs root to mount a tmpfs");
            return None;
        }
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!("SKIPPED disk-full test: mount failed: {}", String::from_utf8_lossy(&out.stderr));
            return None;
        }
        Some(Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes `path` until the disk is full; returns the bytes written.
fn fill(path: &Path) -> usize {
    use std::io::Write;
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0xa5u8; 16 * 1024];
    let mut written = 0;
    while file.write_all(&chunk).is_ok() {
        written += chunk.len();
    }
    while file.write_all(&chunk[..512]).is_ok() {
        written += 512;
    }
    let _ = file.sync_all();
    written
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_503_and_the_relay_recovers_by_itself_losing_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = Tmpfs::mount(&dir.path().join("disk"), "24m") else { return };
    let target = target(200).await;
    let port = closed_port();
    let path = dir.path().join("relay.yaml");
    std::fs::write(
        &path,
        format!(
            "server: {{ listen: '127.0.0.1:{port}' }}\nspool: {{ dir: '{}' }}\nreceivers: [{{ name: r, url: '{}' }}]\n",
            disk.0.join("spool").display(),
            target.uri()
        ),
    )
    .unwrap();
    let cfg = path.display().to_string();
    let relay = Process::start(dir.path(), &["--config", &cfg], port, &[]).await;
    let hook = format!("{}/webhook", relay.base);
    assert_eq!(series(&relay.base, "alert_relay_spool_healthy").await, 1.0);
    let filler = disk.0.join("filler");
    assert!(fill(&filler) > 0);
    // Payloads that do not compress, so that the spool's segment (written
    // over zeros made at start) fills and the next needs the disk; every 200
    // is remembered.
    let mut acked = BTreeSet::new();
    let mut refused = 0;
    let mut rng = fastrand::Rng::with_seed(5);
    for i in 0..400 {
        let key = format!("full-{i}");
        let mut body: Value = serde_json::from_slice(&payload(&key, &[("firing", &[("alertname", "Full")])])).unwrap();
        body["alerts"][0]["annotations"]["big"] = json!((0..96 * 1024).map(|_| rng.alphanumeric()).collect::<String>());
        match post_json(&hook, serde_json::to_vec(&body).unwrap(), None).await.0 {
            200 => {
                acked.insert(key);
            }
            503 => {
                refused += 1;
                if refused >= 3 {
                    break;
                }
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(refused >= 3, "the disk never filled up ({} accepted)", acked.len());
    eventually("readiness to fail while the disk is full", || async {
        client().get(format!("{}/-/ready", relay.base)).send().await.map(|r| r.status().as_u16()).ok() == Some(503)
    })
    .await;
    assert_eq!(series(&relay.base, "alert_relay_spool_healthy").await, 0.0);
    // Space again: no restart, the relay takes writes by itself.
    std::fs::remove_file(&filler).unwrap();
    eventually("the spool to recover", || async {
        metric_present(&relay.base, "alert_relay_spool_healthy").await == Some(1.0)
    })
    .await;
    let (status, body) = post_json(&hook, payload("after", &[("firing", &[("alertname", "Full")])]), None).await;
    assert_eq!(status, 200, "{body}");
    acked.insert("after".into());
    assert_eq!(client().get(format!("{}/-/ready", relay.base)).send().await.unwrap().status().as_u16(), 200);
    eventually("every acknowledged delivery delivered", || async {
        let got: BTreeSet<String> = target
            .received_requests()
            .await
            .unwrap_or_default()
            .iter()
            .map(|r| serde_json::from_slice::<Value>(&r.body).unwrap()["groupKey"].as_str().unwrap().to_string())
            .collect();
        acked.is_subset(&got)
    })
    .await;
    assert!(log_of(dir.path()).contains("reopened after a storage error"));
    drop(relay);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spool_that_existed_but_is_empty_or_missing_stops_the_start_unless_reset() {
    let dir = tempfile::tempdir().unwrap();
    let port = closed_port();
    let cfg =
        config(dir.path(), port, &format!("receivers: [{{ name: r, url: 'http://127.0.0.1:{}/' }}]", closed_port()));
    let mut relay = Process::start(dir.path(), &["--config", &cfg], port, &[]).await;
    assert_eq!(post_json(&format!("{}/webhook", relay.base), FIRING.into(), None).await.0, 200);
    relay.child.kill().unwrap();
    relay.child.wait().unwrap();
    let file = dir.path().join("spool/spool-00000001.log");
    let start = |extra: &[&str]| {
        std::process::Command::new(BIN).args(["--config", &cfg]).args(extra).current_dir(dir.path()).output().unwrap()
    };
    std::fs::File::create(&file).unwrap(); // truncated to 0 bytes
    let out = start(&[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("spool-00000001.log is 0 bytes but the spool existed (instance "), "{stderr}");
    assert!(stderr.contains("restore it, or start with --reset-spool"), "{stderr}");
    std::fs::remove_file(&file).unwrap();
    let out = start(&[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("holds no spool segment (spool-*.log) but the spool existed"));
    // The operator says so: a new, empty spool.
    let relay = Process::start(dir.path(), &["--config", &cfg, "--reset-spool"], port, &[]).await;
    assert_eq!(series(&relay.base, r#"alert_relay_spool_pending{receiver="r"}"#).await, 0.0);
    assert!(log_of(dir.path()).contains("--reset-spool"));
}

// ---------------------------------------------------------------------------
// Hostile clients.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_bodies_and_slow_heads_do_not_starve_alertmanager() {
    let dir = tempfile::tempdir().unwrap();
    let target = target(200).await;
    let port = closed_port();
    let cfg = config(dir.path(), port, &format!("receivers: [{{ name: r, url: '{}' }}]", target.uri()));
    // Short limits, so that the test sees them act.
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        &format!("listen: '127.0.0.1:{port}'"),
        &format!(
            "listen: '127.0.0.1:{port}', request_head_timeout: 1s, request_body_timeout: 1s, max_connections: 200"
        ),
    );
    std::fs::write(&cfg, text).unwrap();
    let relay = Process::start(dir.path(), &["--config", &cfg], port, &[]).await;
    let addr = format!("127.0.0.1:{port}");
    let mut stalled = Vec::new();
    for i in 0..150 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let head = if i % 2 == 0 {
            // Head complete, body promised and never sent.
            "POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 4096\r\n\r\n{\"st"
        } else {
            // A head that never ends.
            "POST /webhook HTTP/1.1\r\nHost: x\r\nX-Slow: "
        };
        s.write_all(head.as_bytes()).await.unwrap();
        stalled.push(s);
    }
    // An Alertmanager-shaped sender keeps getting answers meanwhile.
    let hook = format!("{}/webhook", relay.base);
    for i in 0..20 {
        let body = payload(&format!("normal-{i}"), &[("firing", &[("alertname", "Normal")])]);
        assert_eq!(post_json(&hook, body, None).await.0, 200);
    }
    // Each stalled connection is answered or closed by the relay within its limits.
    for mut s in stalled {
        let mut buf = Vec::new();
        let read = tokio::time::timeout(DEADLINE, s.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "a stalled connection was never closed");
        let text = String::from_utf8_lossy(&buf);
        assert!(text.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
    }
    assert!(series(&relay.base, r#"alert_relay_webhook_requests_total{code="408"}"#).await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_headers_and_unbounded_settings_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "receivers:\n  - { name: a, url: 'http://x', headers: { Content-Length: '3', Transfer-Encoding: chunked, webhook-id: x }, concurrency: 1000000, timeout: 1h, max_alerts: 99999999 }\n  - { name: '..', url: 'http://x' }\n",
    )
    .unwrap();
    let out = std::process::Command::new(BIN).args(["check-config", "--config"]).arg(&bad).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "receivers[0] (a).headers.Content-Length: is set by the relay (reserved)",
        "receivers[0] (a).headers.Transfer-Encoding: is set by the relay (reserved)",
        "receivers[0] (a).headers.webhook-id: is set by the relay (reserved)",
        "receivers[0] (a).concurrency: 1000000 is not between 1 and 64",
        "receivers[0] (a).timeout: 1h is more than the most allowed, 5m",
        "receivers[0] (a).max_alerts: 99999999 is more than the most allowed",
        "receivers[1] (..).name:",
    ] {
        assert!(stderr.contains(needle), "{needle:?} not in:\n{stderr}");
    }
    // The same rules through the admin API.
    let port = closed_port();
    let cfg = config(dir.path(), port, ADMIN);
    let relay = Process::start(dir.path(), &["--config", &cfg], port, &[]).await;
    let (status, body) = admin(
        &relay.base,
        "PUT",
        "/api/v1/receivers/x",
        Some(json!({"url": "http://127.0.0.1:1/", "headers": {"Host": "evil"}})),
    )
    .await;
    assert_eq!(status, 400);
    assert!(body["details"][0].as_str().unwrap().contains("headers.Host: is set by the relay"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_leave_for_another_server_or_from_host_files() {
    let dir = tempfile::tempdir().unwrap();
    let home = target(200).await;
    let thief = target(200).await;
    let secrets_dir = dir.path().join("secrets");
    std::fs::create_dir(&secrets_dir).unwrap();
    std::fs::write(secrets_dir.join("token"), "file-token-in-secret-dir\n").unwrap();
    std::fs::write(dir.path().join("outside"), "host-file-content\n").unwrap();
    std::os::unix::fs::symlink(dir.path().join("outside"), secrets_dir.join("link")).unwrap();
    let port = closed_port();
    let cfg = config(
        dir.path(),
        port,
        &format!("admin: {{ token: admin-secret-token, secret_dir: '{}' }}\n", secrets_dir.display()),
    );
    let relay = Process::start(dir.path(), &["--config", &cfg], port, &[]).await;
    let base = &relay.base;
    let home_url = format!("{}/hook?key=query-secret", home.uri());
    let spec = json!({"url": home_url, "auth": {"type": "bearer", "token": "stored-bearer-secret"}});
    assert_eq!(admin(base, "PUT", "/api/v1/receivers/ops", Some(spec)).await.0, 201);
    let (_, shown) = admin(base, "GET", "/api/v1/receivers/ops", None).await;
    assert_eq!(shown["auth"]["token"], "<redacted>");
    assert!(shown["url"].as_str().unwrap().ends_with("/hook?key=<redacted>"), "{shown}");

    // A redacted secret with a new server: refused, on PUT and on test.
    let stolen = json!({"url": format!("{}/steal", thief.uri()), "auth": {"type": "bearer", "token": "<redacted>"}});
    let (status, body) = admin(base, "PUT", "/api/v1/receivers/ops", Some(stolen.clone())).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["details"][0].as_str().unwrap().contains("auth.token: the stored secret is kept only"), "{body}");
    let mut unsaved = stolen.clone();
    unsaved["name"] = json!("ops");
    let (status, _) = admin(base, "POST", "/api/v1/test", Some(json!({"receiver": unsaved}))).await;
    assert_eq!(status, 400);
    assert_eq!(count(&thief).await, 0, "the other server never saw a request");
    // The same server, the shown form sent back as is: the secrets are kept.
    let mut form = shown.clone();
    for view_only in ["provisioned", "source", "pending", "dead_letters", "delivered", "failed"] {
        form.as_object_mut().unwrap().remove(view_only);
    }
    let (status, body) = admin(base, "PUT", "/api/v1/receivers/ops", Some(form)).await;
    assert_eq!(status, 200, "{body}");
    let (status, answer) = admin(base, "POST", "/api/v1/receivers/ops/test", None).await;
    assert_eq!((status, answer["delivered"].clone()), (200, json!(true)), "{answer}");
    let requests = home.received_requests().await.unwrap();
    let last = requests.last().unwrap();
    assert_eq!(header(last, "authorization"), "Bearer stored-bearer-secret");
    assert_eq!(last.url.query(), Some("key=query-secret"));

    // Host files: refused the same way whether or not they exist; only the
    // secret directory is readable, and links out of it are not.
    let with_file = |path: &str| json!({"url": home.uri(), "auth": {"type": "bearer", "token_file": path}});
    let mut answers = Vec::new();
    for path in ["/etc/hostname", "/nonexistent/x", "../outside"] {
        let (status, body) = admin(base, "PUT", "/api/v1/receivers/f", Some(with_file(path))).await;
        assert_eq!(status, 400, "{path}: {body}");
        answers.push(body["details"].clone());
    }
    assert_eq!(answers[0], answers[1], "an answer must not tell whether a host path exists");
    let link = secrets_dir.join("link").display().to_string();
    assert_eq!(admin(base, "PUT", "/api/v1/receivers/f", Some(with_file(&link))).await.0, 400);
    let inside = secrets_dir.join("token").display().to_string();
    assert_eq!(admin(base, "PUT", "/api/v1/receivers/f", Some(with_file(&inside))).await.0, 201);

    let log = log_of(dir.path());
    for secret in ["stored-bearer-secret", "query-secret", "file-token-in-secret-dir", "host-file-content", ADMIN_TOKEN]
    {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_label_keys_are_a_400_naming_the_key() {
    let relay = TestRelay::start("receivers: []").await;
    let body = br#"{"version":"4","status":"firing","groupKey":"g","alerts":[{"status":"firing","labels":{"severity":"info","team":"a","severity":"critical"}}]}"#;
    let (status, answer) = relay.post(body.to_vec()).await;
    assert_eq!(status, 400);
    assert!(answer["error"].as_str().unwrap().contains("alerts[0].labels: duplicate key \"severity\""), "{answer}");
    assert_eq!(answer["details"], json!(["alerts[0].labels"]));
    assert_eq!(relay.metric(r#"alert_relay_webhook_requests_total{code="400"}"#).await, 1.0);
}

// ---------------------------------------------------------------------------
// kill -9 under load.

/// A target that answers 200 or 503 as `up` says, and records what it got.
struct Toggle(Arc<AtomicBool>);

impl wiremock::Respond for Toggle {
    fn respond(&self, _: &wiremock::Request) -> ResponseTemplate {
        ResponseTemplate::new(if self.0.load(Ordering::SeqCst) { 200 } else { 503 })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_under_load_loses_nothing_acknowledged() {
    const KILLS: usize = 10;
    let dir = tempfile::tempdir().unwrap();
    let up = Arc::new(AtomicBool::new(true));
    let target = wiremock::MockServer::start().await;
    Mock::given(method("POST")).respond_with(Toggle(up.clone())).mount(&target).await;
    let port = closed_port();
    let cfg = config(
        dir.path(),
        port,
        &format!(
            "receivers: [{{ name: r, url: '{}', concurrency: 4, retry: {{ initial_interval: 50ms, max_interval: 200ms }} }}]",
            target.uri()
        ),
    );
    let mut rng = fastrand::Rng::with_seed(9);
    let mut acked = BTreeSet::new();
    let mut next = 0usize;
    for kill in 0..KILLS {
        up.store(rng.bool(), Ordering::SeqCst);
        let relay = Process::start(dir.path(), &["--config", &cfg], port, &[]).await;
        let hook = format!("{}/webhook", relay.base);
        let stop_at = tokio::time::Instant::now() + Duration::from_millis(rng.u64(300..1500));
        // Eight concurrent senders until the kill.
        let mut senders = tokio::task::JoinSet::new();
        for lane in 0..8 {
            let hook = hook.clone();
            let start = next + lane * 10_000;
            senders.spawn(async move {
                let mut ok = Vec::new();
                let mut i = start;
                while tokio::time::Instant::now() < stop_at {
                    let key = format!("k{i}");
                    let body = payload(&key, &[("firing", &[("alertname", "Kill")])]);
                    let sent = client().post(&hook).header("content-type", "application/json").body(body).send().await;
                    if matches!(sent, Ok(r) if r.status().as_u16() == 200) {
                        ok.push(key);
                    }
                    i += 1;
                }
                ok
            });
        }
        tokio::time::sleep_until(stop_at).await;
        let mut relay = relay;
        relay.child.kill().unwrap(); // SIGKILL, while senders may be mid-request
        relay.child.wait().unwrap();
        while let Some(done) = senders.join_next().await {
            acked.extend(done.unwrap());
        }
        next += 80_000;
        eprintln!("kill {}: {} acknowledged so far", kill + 1, acked.len());
    }
    up.store(true, Ordering::SeqCst);
    let relay = Process::start(dir.path(), &["--config", &cfg], port, &[]).await;
    let delivered = || async {
        let mut keys: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for r in target.received_requests().await.unwrap_or_default() {
            if header(&r, "content-type").is_empty() {
                continue;
            }
            let group = serde_json::from_slice::<Value>(&r.body).unwrap()["groupKey"].as_str().unwrap().to_string();
            keys.entry(group).or_default().insert(header(&r, "idempotency-key"));
        }
        keys
    };
    eventually("every acknowledged delivery at the target", || async {
        let got = delivered().await;
        acked.iter().all(|k| got.contains_key(k))
    })
    .await;
    assert!(acked.len() >= 10 * KILLS, "too little load to mean anything: {}", acked.len());
    // A group seen more than once was a retry of one delivery: one key.
    let got = delivered().await;
    for (group, keys) in &got {
        assert_eq!(keys.len(), 1, "group {group} arrived under different Idempotency-Keys: {keys:?}");
    }
    eprintln!("kill -9 loop: {KILLS} kills, {} acknowledged, 0 lost", acked.len());
    drop(relay);
}
