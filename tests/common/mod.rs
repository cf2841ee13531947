//! Helpers shared by the integration tests: a relay on a loopback port, an HTTP
//! client, metric reads, waiting on conditions, payloads, certificates and a
//! small TLS target.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use std::collections::HashMap;

use alert_relay::config::{Config, Source};
use alert_relay::Relay;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const FIRING: &str = include_str!("../fixtures/alertmanager-0.25/firing.json");
pub const MIXED: &str = include_str!("../fixtures/alertmanager-0.25/mixed-resolved.json");

/// How long any condition may take before a test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

pub fn client() -> reqwest::Client {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder().no_proxy().build().expect("test client")
}

/// A relay on 127.0.0.1 with its spool in a temporary directory.
pub struct TestRelay {
    pub relay: Option<Relay>,
    pub base: String,
    pub dir: tempfile::TempDir,
}

impl TestRelay {
    /// `yaml` is the config; `spool.dir` is a temporary one (written `SPOOL_DIR` if
    /// `spool` is given) and `server.listen` defaults to a free port.
    pub async fn start(yaml: &str) -> TestRelay {
        let dir = tempfile::tempdir().expect("temp dir");
        let spool = dir.path().join("spool").display().to_string();
        let mut text = String::new();
        if !yaml.contains("SPOOL_DIR") {
            text.push_str(&format!("spool: {{ dir: '{spool}' }}\n"));
        }
        if !yaml.contains("server:") {
            text.push_str("server: { listen: '127.0.0.1:0' }\n");
        }
        text.push_str(&yaml.replace("SPOOL_DIR", &spool));
        let path = dir.path().join("relay.yaml");
        std::fs::write(&path, text).expect("write config");
        let source = Source::File(path);
        let config = Config::load_with_env(&source, Some(HashMap::new()))
            .unwrap_or_else(|e| panic!("test config invalid:\n{e}"));
        let relay = Relay::start_from(source, config).await.expect("relay starts");
        let base = format!("http://{}", relay.local_addr());
        TestRelay { relay: Some(relay), base, dir }
    }

    /// The config file the relay reloads from.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("relay.yaml")
    }

    /// An admin API call with `ADMIN_TOKEN`; `body` is JSON if given.
    pub async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        admin_call(&self.base, Some(ADMIN_TOKEN), method, path, body).await
    }

    pub async fn post(&self, body: impl Into<Vec<u8>>) -> (u16, Value) {
        post_json(&format!("{}/webhook", self.base), body.into(), None).await
    }

    pub async fn metric(&self, series: &str) -> f64 {
        metric(&self.base, series).await
    }

    pub async fn shutdown(&mut self) {
        if let Some(r) = self.relay.take() {
            r.shutdown().await;
        }
    }
}

/// The admin token of `ADMIN_CONFIG`.
pub const ADMIN_TOKEN: &str = "admin-secret-token";
/// Config lines that turn the admin API on with `ADMIN_TOKEN`.
pub const ADMIN_CONFIG: &str = "admin: { token: admin-secret-token }\n";

pub async fn admin_call(
    base: &str,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut req = client().request(method, format!("{base}{path}"));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(serde_json::to_vec(&b).expect("json"));
    }
    let resp = req.send().await.expect("request sent");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

pub async fn post_json(url: &str, body: Vec<u8>, auth: Option<&str>) -> (u16, Value) {
    let mut req = client().post(url).header("content-type", "application/json").body(body);
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let resp = req.send().await.expect("request sent");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// The value of one series of `/metrics` (labels in alphabetical order). A
/// series that does not exist fails the test: absent is not 0.
pub async fn metric(base: &str, series: &str) -> f64 {
    metric_present(base, series).await.unwrap_or_else(|| panic!("series {series} is absent from /metrics"))
}

/// The value of one series of `/metrics`, or None when it does not exist.
pub async fn metric_present(base: &str, series: &str) -> Option<f64> {
    let text =
        client().get(format!("{base}/metrics")).send().await.expect("metrics").text().await.expect("metrics body");
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map(|v| v.trim().parse().expect("metric value"))
}

/// Polls `check` until it holds; fails the test after `DEADLINE`.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An Alertmanager v4 payload; `alerts` are (status, labels).
pub fn payload(group_key: &str, alerts: &[(&str, &[(&str, &str)])]) -> Vec<u8> {
    let alerts: Vec<Value> = alerts
        .iter()
        .map(|(status, labels)| {
            let labels: serde_json::Map<String, Value> =
                labels.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
            json!({
                "status": status,
                "labels": labels,
                "annotations": {"summary": "test"},
                "startsAt": "2026-11-27T03:59:40Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "",
                "fingerprint": "0000000000000000"
            })
        })
        .collect();
    let any_firing = alerts.iter().any(|a| a["status"] == "firing");
    serde_json::to_vec(&json!({
        "receiver": "relay",
        "status": if any_firing { "firing" } else { "resolved" },
        "alerts": alerts,
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "version": "4",
        "groupKey": group_key,
        "truncatedAlerts": 0
    }))
    .expect("payload")
}

/// A port nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

// ---------------------------------------------------------------------------
// Webhook targets (wiremock).

/// A target answering every POST with `status`.
pub async fn target(status: u16) -> wiremock::MockServer {
    failing_then(status, 0).await
}

/// A target answering `status` to the first `times` POSTs, then 200.
pub async fn failing_then(status: u16, times: u64) -> wiremock::MockServer {
    use wiremock::matchers::method;
    use wiremock::{Mock, ResponseTemplate};
    let server = wiremock::MockServer::start().await;
    if times > 0 {
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(status))
            .up_to_n_times(times)
            .with_priority(1)
            .mount(&server)
            .await;
    }
    let rest = if times > 0 { 200 } else { status };
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(rest)).mount(&server).await;
    server
}

/// A target answering `status` after `delay` (a slow or hung one).
pub async fn delayed(status: u16, delay: Duration) -> wiremock::MockServer {
    use wiremock::matchers::method;
    use wiremock::{Mock, ResponseTemplate};
    let server = wiremock::MockServer::start().await;
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(status).set_delay(delay)).mount(&server).await;
    server
}

pub async fn count(server: &wiremock::MockServer) -> usize {
    server.received_requests().await.unwrap_or_default().len()
}

/// The JSON bodies a target received, in order.
pub async fn bodies(server: &wiremock::MockServer) -> Vec<Value> {
    server
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .map(|r| serde_json::from_slice(&r.body).expect("forwarded body is JSON"))
        .collect()
}

pub fn header(r: &wiremock::Request, name: &str) -> String {
    r.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string()
}

/// Dashboard panels that must show data once traffic has flowed.
pub const CORE_PANELS: [&str; 18] = [
    "Webhook requests by code",
    "Alerts received",
    "Alerts matched per receiver",
    "Alerts filtered by reason",
    "Deliveries",
    "Dead-lettered and superseded",
    "Request failures by reason",
    "Delivery success ratio",
    "Request duration",
    "Delivery latency (accepted → delivered)",
    "Pending per receiver",
    "Dead letters per receiver",
    "Spool commit latency",
    "Requests per commit",
    "Slow commits: early starts and removals",
    "Config reloads",
    "CPU",
    "Memory",
];

// ---------------------------------------------------------------------------
// Certificates and a TLS target.

pub struct Ca {
    pub issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let key = rcgen::KeyPair::generate().expect("key");
        Ca { issuer: rcgen::CertifiedIssuer::self_signed(params, key).expect("ca") }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    pub fn leaf(&self, names: &[&str]) -> Leaf {
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("params");
        params.extended_key_usages =
            vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf");
        Leaf { cert_pem: cert.pem(), key_pem: key.serialize_pem() }
    }
}

impl Leaf {
    /// A self-signed server certificate for `names`, as internal webhook
    /// servers often have.
    pub fn self_signed(names: &[&str]) -> Leaf {
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("params");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("self-signed");
        Leaf { cert_pem: cert.pem(), key_pem: key.serialize_pem() }
    }
}

pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write file");
    path
}

fn chain_and_key(
    leaf: &Leaf,
) -> (Vec<rustls::pki_types::CertificateDer<'static>>, rustls::pki_types::PrivateKeyDer<'static>) {
    use rustls::pki_types::pem::PemObject;
    let chain = rustls::pki_types::CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("cert pem");
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("key pem");
    (chain, key)
}

/// An HTTPS target on 127.0.0.1 answering 200 to every request it reads whole;
/// `client_ca` makes it demand a client certificate issued by that CA.
pub struct TlsTarget {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
}

impl TlsTarget {
    pub async fn start(server: &Leaf, client_ca: Option<&Ca>) -> TlsTarget {
        TlsTarget::answering(server, client_ca, "").await
    }

    /// As `start`, answering `body` as JSON.
    pub async fn answering(server: &Leaf, client_ca: Option<&Ca>, body: &'static str) -> TlsTarget {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("versions");
        let builder = match client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                roots.add(ca.issuer.der().clone()).expect("client ca");
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .expect("client verifier");
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let (chain, key) = chain_and_key(server);
        let config = builder.with_single_cert(chain, key).expect("server cert");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let counter = counter.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    if read_request(&mut tls).await {
                        counter.fetch_add(1, Ordering::SeqCst);
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = tls.write_all(answer.as_bytes()).await;
                        let _ = tls.shutdown().await;
                    }
                });
            }
        });
        TlsTarget { addr, hits }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// Reads one HTTP/1.1 request with a Content-Length body; false if it ends early.
async fn read_request<S: AsyncReadExt + Unpin>(stream: &mut S) -> bool {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let Ok(n) = stream.read(&mut chunk).await else {
            return false;
        };
        if n == 0 {
            return false;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return true;
            }
        }
    }
}

// ---------------------------------------------------------------------------
// YAML files as JSON values, and child processes.

/// Every document of a YAML text, as JSON.
pub fn yaml_docs(text: &str) -> Vec<Value> {
    yaml_rust2::YamlLoader::load_from_str(text).expect("valid YAML").iter().map(yaml_to_json).collect()
}

pub fn yaml_file(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    yaml_docs(&text).into_iter().next().unwrap_or(Value::Null)
}

fn yaml_to_json(y: &yaml_rust2::Yaml) -> Value {
    use yaml_rust2::Yaml;
    match y {
        Yaml::Real(r) => r.parse::<f64>().map(|f| json!(f)).unwrap_or(Value::String(r.clone())),
        Yaml::Integer(i) => json!(i),
        Yaml::String(s) => json!(s),
        Yaml::Boolean(b) => json!(b),
        Yaml::Array(a) => Value::Array(a.iter().map(yaml_to_json).collect()),
        Yaml::Hash(h) => Value::Object(
            h.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Yaml::String(s) => s.clone(),
                        other => yaml_to_json(other).to_string(),
                    };
                    (key, yaml_to_json(v))
                })
                .collect(),
        ),
        _ => Value::Null,
    }
}

/// The repository root.
pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Whether the external tools a test needs are here. Under the test command
/// (`ALERT_RELAY_FULL_TESTS=1`, set by scripts/test) a missing one fails the
/// test; under a plain `cargo test` the test says what it needs and returns
/// without running.
pub fn needs(tools: &[&str]) -> bool {
    let found = |tool: &str| {
        let path = Path::new(tool);
        if path.is_absolute() {
            return path.exists();
        }
        std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(tool).is_file()))
    };
    let missing: Vec<&str> = tools.iter().copied().filter(|t| !found(t)).collect();
    if missing.is_empty() {
        return true;
    }
    let message = format!("needs {} (scripts/test installs it)", missing.join(", "));
    assert!(std::env::var_os("ALERT_RELAY_FULL_TESTS").is_none(), "{message}");
    eprintln!("SKIPPED: {message}");
    false
}

/// A program of the Python virtualenv scripts/test makes (`ALERT_RELAY_VENV`,
/// else ~/.cache/alert-relay/venv): kubernetes-validate, and python with
/// standardwebhooks.
pub fn venv_bin(program: &str) -> PathBuf {
    let venv = std::env::var("ALERT_RELAY_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/alert-relay/venv"));
    venv.join("bin").join(program)
}

/// Runs a tool to completion; panics with its output unless it succeeds.
pub fn run_ok(program: &str, args: &[&str], dir: &Path) -> String {
    let out = std::process::Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{program} could not run ({e}); scripts/test installs it"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{program} {args:?} failed:\n{text}");
    text
}

/// A child process killed when dropped.
pub struct Child(pub std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn spawn(program: &str, args: &[String], log: &Path) -> Child {
    let log = std::fs::File::create(log).expect("log file");
    let child = std::process::Command::new(program)
        .args(args)
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("{program} could not start ({e}); scripts/test installs it"));
    Child(child)
}

// ---------------------------------------------------------------------------
// The real binary as a child process.

/// The process tests' relay writes its log to `dir/relay.log`.
pub const BIN: &str = env!("CARGO_BIN_EXE_alert-relay");

pub struct Process {
    pub child: std::process::Child,
    pub base: String,
}

impl Process {
    /// Starts the binary in `dir` with `args` and waits until it is ready.
    pub async fn start(dir: &Path, args: &[&str], port: u16, env: &[(&str, &str)]) -> Process {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("relay.log")).unwrap();
        let child = std::process::Command::new(BIN)
            .args(args)
            .current_dir(dir)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("binary starts");
        let base = format!("http://127.0.0.1:{port}");
        let ready = format!("{base}/-/ready");
        eventually("the relay to be ready", || async {
            matches!(client().get(&ready).send().await, Ok(r) if r.status().is_success())
        })
        .await;
        Process { child, base }
    }

    pub fn signal(&self, name: &str) {
        let status =
            std::process::Command::new("kill").args(["-s", name, &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
    }

    pub async fn wait_exit(&mut self) -> std::process::ExitStatus {
        let mut status = None;
        eventually("the process to exit", || {
            status = self.child.try_wait().unwrap();
            let done = status.is_some();
            async move { done }
        })
        .await;
        status.unwrap()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn config(dir: &Path, port: u16, receivers: &str) -> String {
    let path = dir.join("relay.yaml");
    std::fs::write(
        &path,
        format!(
            "server: {{ listen: '127.0.0.1:{port}' }}\nspool: {{ dir: '{}' }}\n{receivers}",
            dir.join("spool").display()
        ),
    )
    .unwrap();
    path.display().to_string()
}

// ---------------------------------------------------------------------------
// A target that holds each request until the test lets it go.

/// An HTTP target on 127.0.0.1 that reads each request whole, then waits for
/// `release` before answering: the first `failures` requests get `status`,
/// the rest 200. Lets a test act while an attempt is known to be in flight.
pub struct GatedTarget {
    pub url: String,
    hits: Arc<AtomicUsize>,
    gate: Arc<tokio::sync::Semaphore>,
}

impl GatedTarget {
    pub async fn start(status: u16, failures: usize) -> GatedTarget {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/", listener.local_addr().expect("addr"));
        let hits = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let (h, g) = (hits.clone(), gate.clone());
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let (h, g) = (h.clone(), g.clone());
                tokio::spawn(async move {
                    if !read_request(&mut tcp).await {
                        return;
                    }
                    let n = h.fetch_add(1, Ordering::SeqCst);
                    let Ok(permit) = g.acquire().await else { return };
                    permit.forget();
                    let code = if n < failures { status } else { 200 };
                    let answer = format!("HTTP/1.1 {code} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                    let _ = tcp.write_all(answer.as_bytes()).await;
                    let _ = tcp.shutdown().await;
                });
            }
        });
        GatedTarget { url, hits, gate }
    }

    /// Requests read so far (answered or waiting).
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Lets `n` held or future requests be answered.
    pub fn release(&self, n: usize) {
        self.gate.add_permits(n);
    }
}

/// An HTTPS client trusting only `ca`, presenting `identity` if given.
pub fn https_client(ca: &Ca, identity: Option<&Leaf>) -> reqwest::Client {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.issuer.der().clone()).expect("ca");
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let config = match identity {
        Some(leaf) => {
            let (chain, key) = chain_and_key(leaf);
            builder.with_client_auth_cert(chain, key).expect("client cert")
        }
        None => builder.with_no_client_auth(),
    };
    reqwest::Client::builder().no_proxy().use_preconfigured_tls(config).build().expect("https client")
}
