//! Configuration: the YAML file plus `ALERT_RELAY__…` environment overrides,
//! parsed once into validated types. Nothing past this module re-checks it.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};

use crate::conditions::{Condition, ConditionSpec};
use crate::retry::RetryPolicy;
use crate::tls::{self, TlsMaterial};

/// Where the config file is looked for when none is named.
pub const DEFAULT_PATH: &str = "config/alert-relay.yaml";
/// The shipped `config/alert-relay.yaml`, used when that file is not on disk.
pub const EMBEDDED: &str = include_str!("../config/alert-relay.yaml");
const ENV_PREFIX: &str = "ALERT_RELAY";

// ---------------------------------------------------------------------------
// The file as written.

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    spool: RawSpool,
    #[serde(default)]
    delivery: RawDelivery,
    #[serde(default)]
    receivers: Vec<ReceiverSpec>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    /// Address to listen on, `host:port`.
    listen: Option<String>,
    /// Largest accepted `/webhook` body in bytes.
    max_body_bytes: Option<u64>,
    /// What Alertmanager's `http_config` must send.
    webhook_auth: Option<AuthSpec>,
    /// Longest a client may take to send a request's head.
    request_head_timeout: Option<String>,
    /// Longest a client may take to send a request's body once its head is in.
    request_body_timeout: Option<String>,
    /// Open connections at most; past it new ones wait in the listen backlog.
    max_connections: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    /// Admin API bearer token, inline.
    token: Option<String>,
    /// Admin API bearer token, read from this file.
    token_file: Option<PathBuf>,
    /// The only directory whose files API-managed receivers may name in
    /// `*_file` settings; unset, they may name none.
    secret_dir: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpool {
    /// Directory of the redb spool file.
    dir: Option<PathBuf>,
    /// Pending deliveries at which `/webhook` answers 503.
    max_pending: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDelivery {
    /// Per-attempt timeout.
    timeout: Option<String>,
    /// Attempts in flight at once per receiver.
    concurrency: Option<u64>,
    retry: Option<RetrySpec>,
}

/// Retry settings; every field optional so a receiver can override a few.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multiplier: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_elapsed: Option<String>,
    /// 0: bounded by `max_elapsed` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Fraction of the delay drawn at random either way, 0.0 to 1.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<f64>,
}

impl RetrySpec {
    fn or(&self, base: &RetrySpec) -> RetrySpec {
        RetrySpec {
            initial_interval: self.initial_interval.clone().or_else(|| base.initial_interval.clone()),
            multiplier: self.multiplier.or(base.multiplier),
            max_interval: self.max_interval.clone().or_else(|| base.max_interval.clone()),
            max_elapsed: self.max_elapsed.clone().or_else(|| base.max_elapsed.clone()),
            max_attempts: self.max_attempts.or(base.max_attempts),
            jitter: self.jitter.or(base.jitter),
        }
    }

    fn builtin() -> RetrySpec {
        RetrySpec {
            initial_interval: Some("500ms".into()),
            multiplier: Some(2.0),
            max_interval: Some("1m".into()),
            max_elapsed: Some("24h".into()),
            max_attempts: Some(0),
            jitter: Some(0.2),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthType {
    #[default]
    None,
    Bearer,
    Basic,
}

/// `auth` of a receiver, or `server.webhook_auth`.
#[derive(Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSpec {
    #[serde(rename = "type", default)]
    pub kind: AuthType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
}

impl fmt::Debug for AuthSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = |v: &Option<String>| v.as_ref().map(|_| REDACTED);
        f.debug_struct("AuthSpec")
            .field("kind", &self.kind)
            .field("token", &shown(&self.token))
            .field("token_file", &self.token_file)
            .field("username", &self.username)
            .field("password", &shown(&self.password))
            .field("password_file", &self.password_file)
            .finish()
    }
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSpec {
    #[serde(default)]
    pub insecure_skip_verify: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

/// A receiver as written in the file (and, later, as sent to the admin API).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverSpec {
    /// `[a-zA-Z0-9_.-]+`, unique.
    pub name: String,
    /// Webhook URL, http or https.
    pub url: String,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Forward resolved alerts too.
    #[serde(default = "yes")]
    pub send_resolved: bool,
    /// Most alerts per notification; 0 for no limit.
    #[serde(default)]
    pub max_alerts: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub auth: AuthSpec,
    #[serde(default)]
    pub tls: TlsSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_url: Option<String>,
    #[serde(default)]
    pub conditions: Vec<ConditionSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
}

fn yes() -> bool {
    true
}

// ---------------------------------------------------------------------------
// Validated configuration.

/// A secret string: never printed, never serialized.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Compares in time independent of where the inputs differ.
    pub fn matches(&self, given: &[u8]) -> bool {
        let expected = self.0.as_bytes();
        let mut diff = expected.len() ^ given.len();
        for (i, b) in given.iter().enumerate() {
            diff |= usize::from(expected.get(i).copied().unwrap_or(0) ^ b);
        }
        diff == 0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Auth {
    None,
    Bearer(Secret),
    Basic { username: String, password: Secret },
}

impl Auth {
    /// The whole `Authorization` header value this auth sends, if any.
    pub fn header_value(&self) -> Option<Secret> {
        match self {
            Auth::None => None,
            Auth::Bearer(token) => Some(Secret(format!("Bearer {}", token.expose()))),
            Auth::Basic { username, password } => {
                let raw = format!("{username}:{}", password.expose());
                let encoded = base64::engine::general_purpose::STANDARD.encode(raw);
                Some(Secret(format!("Basic {encoded}")))
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct Server {
    pub listen: String,
    pub max_body_bytes: usize,
    /// The expected `Authorization` header value on `/webhook`.
    pub webhook_auth: Option<Secret>,
    pub request_head_timeout: Duration,
    pub request_body_timeout: Duration,
    pub max_connections: usize,
}

#[derive(Debug, Clone)]
pub struct Admin {
    /// The `Authorization` header value the admin API expects, if enabled.
    pub authorization: Option<Secret>,
    /// Where API-managed receivers may read files from (canonical), if anywhere.
    pub secret_dir: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Spool {
    pub dir: PathBuf,
    pub max_pending: usize,
}

/// A receiver ready to use: every value checked, every file read.
#[derive(Debug, Clone)]
pub struct Receiver {
    /// As written (with secrets): what the admin API shows, redacted.
    pub spec: ReceiverSpec,
    pub name: String,
    pub url: reqwest::Url,
    pub enabled: bool,
    pub send_resolved: bool,
    /// 0: no limit.
    pub max_alerts: usize,
    pub timeout: Duration,
    pub concurrency: usize,
    pub headers: HeaderMap,
    pub auth: Auth,
    pub tls: Arc<rustls::ClientConfig>,
    pub proxy: Option<reqwest::Url>,
    pub conditions: Vec<Condition>,
    pub retry: RetryPolicy,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub server: Server,
    pub admin: Admin,
    pub spool: Spool,
    pub delivery: DeliveryDefaults,
    /// The receivers of the file (provisioned).
    pub receivers: Vec<Arc<Receiver>>,
    /// The file it came from; `None` for the embedded default.
    pub source: Option<PathBuf>,
}

/// Every problem found, each naming where it is.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigErrors(pub Vec<String>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("\n"))
    }
}

impl std::error::Error for ConfigErrors {}

/// Where to read the configuration from.
#[derive(Debug, Clone)]
pub enum Source {
    File(PathBuf),
    Embedded,
}

impl Source {
    /// The named path, else the default path if it exists, else the embedded copy.
    pub fn resolve(path: Option<PathBuf>) -> Source {
        match path {
            Some(p) => Source::File(p),
            None if Path::new(DEFAULT_PATH).exists() => Source::File(PathBuf::from(DEFAULT_PATH)),
            None => Source::Embedded,
        }
    }
}

impl Config {
    /// Reads the source, applies the process environment's overrides, validates.
    pub fn load(source: &Source) -> Result<Config, ConfigErrors> {
        Config::load_with_env(source, None)
    }

    /// As `load`, with the environment given instead of read from the process.
    pub fn load_with_env(
        source: &Source,
        env: Option<std::collections::HashMap<String, String>>,
    ) -> Result<Config, ConfigErrors> {
        let text = match source {
            Source::File(path) => {
                std::fs::read_to_string(path).map_err(|e| ConfigErrors(vec![format!("{}: {e}", path.display())]))?
            }
            Source::Embedded => EMBEDDED.to_string(),
        };
        if text.trim().is_empty() {
            let name = match source {
                Source::File(path) => path.display().to_string(),
                Source::Embedded => "the embedded configuration".into(),
            };
            return Err(ConfigErrors(vec![format!(
                "{name} is empty: refusing it (it would turn authentication off and remove every receiver); \
                 write the whole file again"
            )]));
        }
        let file = config::File::from_str(&text, config::FileFormat::Yaml);
        let environment = config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .source(env.map(|m| m.into_iter().collect()));
        let raw: RawConfig = config::Config::builder()
            .add_source(file)
            .add_source(environment)
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigErrors(vec![e.to_string()]))?;
        let source_path = match source {
            Source::File(p) => Some(p.clone()),
            Source::Embedded => None,
        };
        validate(raw, source_path)
    }

    /// Parses YAML text with no environment overrides (tests, examples).
    pub fn from_yaml(text: &str) -> Result<Config, ConfigErrors> {
        let raw: RawConfig = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Yaml))
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigErrors(vec![e.to_string()]))?;
        validate(raw, None)
    }
}

/// Collects errors under a path prefix such as `receivers[2] (ops)`.
struct Errors<'a> {
    list: &'a mut Vec<String>,
    prefix: String,
}

impl Errors<'_> {
    fn push(&mut self, field: &str, message: impl fmt::Display) {
        if self.prefix.is_empty() {
            self.list.push(format!("{field}: {message}"));
        } else if field.is_empty() {
            self.list.push(format!("{}: {message}", self.prefix));
        } else {
            self.list.push(format!("{}.{field}: {message}", self.prefix));
        }
    }

    fn sub(&mut self, prefix: &str) -> Errors<'_> {
        Errors { list: self.list, prefix: format!("{}.{prefix}", self.prefix) }
    }
}

fn validate(raw: RawConfig, source: Option<PathBuf>) -> Result<Config, ConfigErrors> {
    let mut list = Vec::new();

    let server = {
        let mut errors = Errors { list: &mut list, prefix: "server".into() };
        let listen = raw.server.listen.unwrap_or_else(|| "0.0.0.0:9097".into());
        if listen.parse::<SocketAddr>().is_err() && !looks_like_host_port(&listen) {
            errors.push("listen", format!("{listen:?} is not host:port"));
        }
        let max_body_bytes = raw.server.max_body_bytes.unwrap_or(4 * 1024 * 1024);
        if max_body_bytes == 0 {
            errors.push("max_body_bytes", "must be more than 0");
        }
        if max_body_bytes > MAX_BODY_BYTES {
            errors.push("max_body_bytes", format!("{max_body_bytes} is more than the most allowed, {MAX_BODY_BYTES}"));
        }
        let webhook_auth = match raw.server.webhook_auth {
            Some(spec) => auth(&spec, &mut errors.sub("webhook_auth")).header_value(),
            None => None,
        };
        let request_head_timeout =
            bounded_duration(raw.server.request_head_timeout.as_deref(), "5s", "request_head_timeout", &mut errors);
        let request_body_timeout =
            bounded_duration(raw.server.request_body_timeout.as_deref(), "10s", "request_body_timeout", &mut errors);
        let max_connections = raw.server.max_connections.unwrap_or(1024);
        if !(1..=MAX_CONNECTIONS).contains(&max_connections) {
            errors.push("max_connections", format!("{max_connections} is not between 1 and {MAX_CONNECTIONS}"));
        }
        Server {
            listen,
            max_body_bytes: usize::try_from(max_body_bytes).unwrap_or(usize::MAX),
            webhook_auth,
            request_head_timeout,
            request_body_timeout,
            max_connections: usize::try_from(max_connections).unwrap_or(1),
        }
    };

    let admin = {
        let mut errors = Errors { list: &mut list, prefix: "admin".into() };
        let token = secret(raw.admin.token, raw.admin.token_file, "token", &mut errors);
        if token.as_ref().is_some_and(|t| t.expose().is_empty()) {
            errors.push("token", "is empty");
        }
        let secret_dir = raw.admin.secret_dir.and_then(|dir| match dir.canonicalize() {
            Ok(canonical) if canonical.is_dir() => Some(canonical),
            Ok(_) => {
                errors.push("secret_dir", format!("{} is not a directory", dir.display()));
                None
            }
            Err(e) => {
                errors.push("secret_dir", format!("{}: {e}", dir.display()));
                None
            }
        });
        Admin { authorization: token.and_then(|t| Auth::Bearer(t).header_value()), secret_dir }
    };

    let spool = {
        let mut errors = Errors { list: &mut list, prefix: "spool".into() };
        let max_pending = raw.spool.max_pending.unwrap_or(100_000);
        if max_pending == 0 {
            errors.push("max_pending", "must be more than 0");
        }
        Spool {
            dir: raw.spool.dir.unwrap_or_else(|| PathBuf::from("data")),
            max_pending: usize::try_from(max_pending).unwrap_or(usize::MAX),
        }
    };

    let defaults = {
        let mut errors = Errors { list: &mut list, prefix: "delivery".into() };
        let timeout = raw.delivery.timeout.unwrap_or_else(|| "10s".into());
        if let Err(e) = duration(&timeout) {
            errors.push("timeout", e);
        }
        if let Ok(t) = duration(&timeout) {
            check_timeout(t, &mut errors);
        }
        let concurrency = raw.delivery.concurrency.unwrap_or(4);
        check_concurrency(concurrency, &mut errors);
        let retry = raw.delivery.retry.unwrap_or_default().or(&RetrySpec::builtin());
        if let Err(e) = retry_policy(&retry) {
            errors.push("retry", e);
        }
        DeliveryDefaults { timeout, concurrency, retry }
    };

    let mut receivers = Vec::new();
    let mut names = HashSet::new();
    for (i, spec) in raw.receivers.iter().enumerate() {
        let mut errors = Errors { list: &mut list, prefix: format!("receivers[{i}] ({})", spec.name) };
        if !names.insert(spec.name.clone()) {
            errors.push("name", format!("duplicate receiver name {:?}", spec.name));
        }
        if let Some(r) = receiver(spec, &defaults, &FileAccess::Any, &mut errors) {
            receivers.push(Arc::new(r));
        }
    }

    if list.is_empty() {
        Ok(Config { server, admin, spool, delivery: defaults, receivers, source })
    } else {
        Err(ConfigErrors(list))
    }
}

/// The `delivery` section, which a receiver's own settings override.
#[derive(Debug, Clone)]
pub struct DeliveryDefaults {
    timeout: String,
    concurrency: u64,
    retry: RetrySpec,
}

/// Validates a receiver given to the admin API, with the file's delivery
/// defaults: the same checks as the file's, errors as `field: message`. It
/// may name files only under `admin.secret_dir`.
pub fn validate_receiver(spec: &ReceiverSpec, config: &Config) -> Result<Receiver, Vec<String>> {
    let mut list = Vec::new();
    let files = FileAccess::Under(config.admin.secret_dir.clone());
    let received = receiver(spec, &config.delivery, &files, &mut Errors { list: &mut list, prefix: String::new() });
    match received {
        Some(r) if list.is_empty() => Ok(r),
        _ => Err(list),
    }
}

/// Stands in for a secret in API answers; sent back in a `PUT`, it keeps the
/// stored secret.
pub const REDACTED: &str = "<redacted>";

impl ReceiverSpec {
    /// A copy fit to show: inline secrets, URL passwords and URL query values
    /// replaced by `REDACTED`.
    pub fn redacted(&self) -> ReceiverSpec {
        let mut spec = self.clone();
        let hide = |v: &mut Option<String>| {
            if v.is_some() {
                *v = Some(REDACTED.into());
            }
        };
        hide(&mut spec.auth.token);
        hide(&mut spec.auth.password);
        spec.url = redact_url(&self.url);
        if spec.proxy_url.as_deref().and_then(|u| reqwest::Url::parse(u).ok()).is_some_and(|u| u.password().is_some()) {
            spec.proxy_url = Some(REDACTED.into());
        }
        spec
    }

    /// Puts back the secrets of `stored` where this spec holds `REDACTED`, but
    /// only while the URL's scheme, host and port are those of `stored`: a
    /// redacted secret never follows a receiver to another server.
    pub fn keep_secrets_of(&mut self, stored: &ReceiverSpec) -> Result<(), Vec<String>> {
        if self.url == redact_url(&stored.url) {
            self.url.clone_from(&stored.url);
        }
        let same_origin = origin(&self.url).is_some() && origin(&self.url) == origin(&stored.url);
        let mut errors = Vec::new();
        let mut keep = |field: &str, v: &mut Option<String>, old: &Option<String>| {
            if v.as_deref() != Some(REDACTED) {
                return;
            }
            if same_origin && old.is_some() {
                v.clone_from(old);
            } else {
                errors.push(format!(
                    "{field}: the stored secret is kept only while the URL's scheme, host and port stay the same; \
                     give it again"
                ));
            }
        };
        keep("auth.token", &mut self.auth.token, &stored.auth.token);
        keep("auth.password", &mut self.auth.password, &stored.auth.password);
        keep("proxy_url", &mut self.proxy_url, &stored.proxy_url);
        if self.url.contains(REDACTED) || self.url.contains("%3Credacted%3E") {
            errors.push("url: holds <redacted>; write the URL's password and query values out again".into());
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

/// A URL with its password and query values replaced by `REDACTED`.
pub fn redact_url(text: &str) -> String {
    const MARK: &str = "REDACTEDxMARK";
    let Ok(mut url) = reqwest::Url::parse(text) else { return text.to_string() };
    if url.password().is_some() && url.set_password(Some(MARK)).is_err() {
        return REDACTED.into();
    }
    if url.query().is_some() {
        let pairs: Vec<(String, bool)> = url.query_pairs().map(|(k, v)| (k.into_owned(), !v.is_empty())).collect();
        let mut query = url.query_pairs_mut();
        query.clear();
        for (key, has_value) in pairs {
            query.append_pair(&key, if has_value { MARK } else { "" });
        }
    }
    url.to_string().replace(MARK, REDACTED)
}

/// Scheme, host and port (the scheme's default when not written).
fn origin(text: &str) -> Option<(String, String, u16)> {
    let url = reqwest::Url::parse(text).ok()?;
    Some((url.scheme().to_string(), url.host_str()?.to_string(), url.port_or_known_default()?))
}

fn looks_like_host_port(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok(),
        None => false,
    }
}

fn is_valid_name(name: &str) -> bool {
    // `.` and `..` are path segments, not names: no URL could address them.
    !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= 128
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Bounds on settings: a typo must not become a million workers or an
/// attempt that never times out.
const MAX_CONCURRENCY: u64 = 64;
const MAX_TIMEOUT: Duration = Duration::from_secs(300);
const MAX_ALERTS: u64 = 100_000;
const MAX_HEADERS: usize = 32;
const MAX_BODY_BYTES: u64 = 64 * 1024 * 1024;
const MAX_CONNECTIONS: u64 = 65_536;

/// Headers the relay sets itself, or that would change how the body is framed
/// or the connection handled: a receiver's `headers` may not set them.
const RESERVED_HEADERS: [&str; 14] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "expect",
    "proxy-connection",
    "content-type",
    "idempotency-key",
    "authorization",
    "x-alert-relay-receiver",
];

fn reserved_header(name: &HeaderName) -> Option<&'static str> {
    let n = name.as_str();
    if n == "authorization" {
        return Some("set auth instead of an Authorization header");
    }
    if RESERVED_HEADERS.contains(&n) || n.starts_with("webhook-") {
        return Some("is set by the relay (reserved); remove it from headers");
    }
    None
}

fn check_concurrency(value: u64, errors: &mut Errors<'_>) {
    if !(1..=MAX_CONCURRENCY).contains(&value) {
        errors.push("concurrency", format!("{value} is not between 1 and {MAX_CONCURRENCY}"));
    }
}

fn check_timeout(value: Duration, errors: &mut Errors<'_>) {
    if value.is_zero() {
        errors.push("timeout", "must be more than 0");
    } else if value > MAX_TIMEOUT {
        errors.push("timeout", format!("{} is more than the most allowed, 5m", humantime::format_duration(value)));
    }
}

/// A duration setting with a default, more than 0 and at most 5 minutes.
fn bounded_duration(text: Option<&str>, default: &str, field: &str, errors: &mut Errors<'_>) -> Duration {
    let fallback = duration(default).unwrap_or(Duration::from_secs(5));
    match duration(text.unwrap_or(default)) {
        Ok(d) if d.is_zero() || d > MAX_TIMEOUT => {
            errors.push(field, "must be more than 0 and at most 5m");
            fallback
        }
        Ok(d) => d,
        Err(e) => {
            errors.push(field, e);
            fallback
        }
    }
}

/// Which files a receiver may name.
enum FileAccess {
    /// The file's receivers: whatever the operator wrote.
    Any,
    /// API-managed receivers: only files under this directory (canonical), or
    /// none when it is unset.
    Under(Option<PathBuf>),
}

impl FileAccess {
    /// Whether `path` may be read. Decided without touching the file outside
    /// the directory, so an answer never tells whether some host path exists.
    fn allows(&self, path: &Path) -> Result<(), String> {
        let dir = match self {
            FileAccess::Any => return Ok(()),
            FileAccess::Under(None) => {
                return Err("receivers created through the admin API cannot read files unless admin.secret_dir \
                            is set; give the value inline"
                    .into())
            }
            FileAccess::Under(Some(dir)) => dir,
        };
        let refused = || format!("must name a file under admin.secret_dir ({})", dir.display());
        let lexical_ok = path.is_absolute()
            && path.starts_with(dir)
            && path.components().all(|c| !matches!(c, std::path::Component::ParentDir));
        if !lexical_ok {
            return Err(refused());
        }
        // A link inside the directory may point anywhere.
        match path.canonicalize() {
            Ok(real) if real.starts_with(dir) => Ok(()),
            Ok(_) => Err(refused()),
            Err(_) => Ok(()), // reading it says that it is missing, inside the directory
        }
    }
}

/// Every file a receiver names, with its field.
fn named_files(spec: &ReceiverSpec) -> Vec<(&'static str, &Path)> {
    let fields: [(&'static str, &Option<PathBuf>); 5] = [
        ("auth.token_file", &spec.auth.token_file),
        ("auth.password_file", &spec.auth.password_file),
        ("tls.ca_file", &spec.tls.ca_file),
        ("tls.cert_file", &spec.tls.cert_file),
        ("tls.key_file", &spec.tls.key_file),
    ];
    fields.into_iter().filter_map(|(field, path)| path.as_deref().map(|p| (field, p))).collect()
}

/// Parses `500ms`, `10s`, `1m`, `1h`, `1h30m`.
pub fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("invalid duration {text:?}: {e}"))
}

fn retry_policy(spec: &RetrySpec) -> Result<RetryPolicy, String> {
    let get = |v: &Option<String>, name: &str| -> Result<Duration, String> {
        duration(v.as_deref().unwrap_or_default()).map_err(|e| format!("{name}: {e}"))
    };
    let initial = get(&spec.initial_interval, "initial_interval")?;
    let max_interval = get(&spec.max_interval, "max_interval")?;
    let max_elapsed = get(&spec.max_elapsed, "max_elapsed")?;
    RetryPolicy::try_new(
        initial,
        spec.multiplier.unwrap_or(2.0),
        max_interval,
        max_elapsed,
        spec.max_attempts.unwrap_or(0),
        spec.jitter.unwrap_or(0.0),
    )
    .map_err(|e| e.to_string())
}

fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// An inline secret or one read from a file (trailing newline dropped).
fn secret(inline: Option<String>, file: Option<PathBuf>, field: &str, errors: &mut Errors<'_>) -> Option<Secret> {
    match (inline, file) {
        (Some(_), Some(_)) => {
            errors.push(field, format!("set either {field} or {field}_file, not both"));
            None
        }
        (Some(v), None) => Some(Secret(v)),
        (None, Some(path)) => match read_file(&path) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(text) => Some(Secret(text.trim_end_matches(['\r', '\n']).to_string())),
                Err(_) => {
                    errors.push(&format!("{field}_file"), format!("{} is not UTF-8 text", path.display()));
                    None
                }
            },
            Err(e) => {
                errors.push(&format!("{field}_file"), e);
                None
            }
        },
        (None, None) => None,
    }
}

fn auth(spec: &AuthSpec, errors: &mut Errors<'_>) -> Auth {
    let forbid = |errors: &mut Errors<'_>, present: bool, field: &str| {
        if present {
            errors.push(field, format!("not used with type {:?}", spec.kind));
        }
    };
    match spec.kind {
        AuthType::None => {
            forbid(errors, spec.token.is_some() || spec.token_file.is_some(), "token");
            forbid(errors, spec.username.is_some(), "username");
            forbid(errors, spec.password.is_some() || spec.password_file.is_some(), "password");
            Auth::None
        }
        AuthType::Bearer => {
            forbid(errors, spec.username.is_some(), "username");
            forbid(errors, spec.password.is_some() || spec.password_file.is_some(), "password");
            match secret(spec.token.clone(), spec.token_file.clone(), "token", errors) {
                Some(t) if !t.expose().is_empty() => Auth::Bearer(t),
                Some(_) => {
                    errors.push("token", "is empty");
                    Auth::None
                }
                None => {
                    if spec.token.is_none() && spec.token_file.is_none() {
                        errors.push("token", "bearer auth needs token or token_file");
                    }
                    Auth::None
                }
            }
        }
        AuthType::Basic => {
            forbid(errors, spec.token.is_some() || spec.token_file.is_some(), "token");
            let username = spec.username.clone().unwrap_or_default();
            if username.is_empty() {
                errors.push("username", "basic auth needs a username");
            } else if username.contains(':') {
                errors.push("username", "must not contain ':'");
            }
            let password = secret(spec.password.clone(), spec.password_file.clone(), "password", errors);
            if password.is_none() && spec.password.is_none() && spec.password_file.is_none() {
                errors.push("password", "basic auth needs password or password_file");
            }
            Auth::Basic { username, password: password.unwrap_or(Secret(String::new())) }
        }
    }
}

fn receiver(
    spec: &ReceiverSpec,
    defaults: &DeliveryDefaults,
    files: &FileAccess,
    errors: &mut Errors<'_>,
) -> Option<Receiver> {
    let before = errors.list.len();
    for (field, path) in named_files(spec) {
        if let Err(e) = files.allows(path) {
            errors.push(field, e);
        }
    }
    if errors.list.len() > before {
        // Nothing is read before every path is allowed.
        return None;
    }
    if !is_valid_name(&spec.name) {
        errors.push("name", format!("{:?} must match [a-zA-Z0-9_.-]+ (at most 128, not . or ..)", spec.name));
    }
    let url = match reqwest::Url::parse(&spec.url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Some(u),
        Ok(u) => {
            errors
                .push("url", format!("{:?}: scheme must be http or https with a host, got {:?}", spec.url, u.scheme()));
            None
        }
        Err(e) => {
            errors.push("url", format!("{:?}: {e}", spec.url));
            None
        }
    };
    let timeout = match duration(spec.timeout.as_deref().unwrap_or(&defaults.timeout)) {
        Ok(d) => {
            check_timeout(d, errors);
            d
        }
        Err(e) => {
            errors.push("timeout", e);
            Duration::ZERO
        }
    };
    let concurrency = spec.concurrency.unwrap_or(defaults.concurrency);
    check_concurrency(concurrency, errors);
    if spec.max_alerts > MAX_ALERTS {
        errors.push("max_alerts", format!("{} is more than the most allowed, {MAX_ALERTS}", spec.max_alerts));
    }
    if spec.headers.len() > MAX_HEADERS {
        errors.push("headers", format!("{} headers; at most {MAX_HEADERS}", spec.headers.len()));
    }
    let mut headers = HeaderMap::new();
    for (name, value) in &spec.headers {
        match (HeaderName::try_from(name.as_str()), HeaderValue::try_from(value.as_str())) {
            (Ok(n), Ok(v)) => {
                if let Some(why) = reserved_header(&n) {
                    errors.push(&format!("headers.{name}"), why);
                }
                headers.insert(n, v);
            }
            (Err(_), _) => errors.push(&format!("headers.{name}"), "invalid header name"),
            (_, Err(_)) => errors.push(&format!("headers.{name}"), "invalid header value"),
        }
    }
    let auth = auth(&spec.auth, &mut errors.sub("auth"));
    let tls = tls_config(&spec.tls, &mut errors.sub("tls"));
    let proxy = spec.proxy_url.as_ref().and_then(|p| match reqwest::Url::parse(p) {
        Ok(u) if matches!(u.scheme(), "http" | "https" | "socks5") => Some(u),
        Ok(_) | Err(_) => {
            // Not echoed: a proxy URL may carry a password.
            errors.push("proxy_url", "is not an http(s) or socks5 proxy URL");
            None
        }
    });
    let mut conditions = Vec::new();
    for (i, c) in spec.conditions.iter().enumerate() {
        match Condition::try_new(c.clone()) {
            Ok(c) => conditions.push(c),
            Err(e) => errors.push(&format!("conditions[{i}]"), format!("{} {}: {e}", c.label, c.operator)),
        }
    }
    let retry = match retry_policy(&spec.retry.clone().unwrap_or_default().or(&defaults.retry)) {
        Ok(r) => Some(r),
        Err(e) => {
            errors.push("retry", e);
            None
        }
    };
    if errors.list.len() > before {
        return None;
    }
    Some(Receiver {
        spec: spec.clone(),
        name: spec.name.clone(),
        url: url?,
        enabled: spec.enabled,
        send_resolved: spec.send_resolved,
        max_alerts: usize::try_from(spec.max_alerts).unwrap_or(usize::MAX),
        timeout,
        concurrency: usize::try_from(concurrency).unwrap_or(usize::MAX),
        headers,
        auth,
        tls: tls?,
        proxy,
        conditions,
        retry: retry?,
    })
}

fn tls_config(spec: &TlsSpec, errors: &mut Errors<'_>) -> Option<Arc<rustls::ClientConfig>> {
    let mut material = TlsMaterial {
        insecure_skip_verify: spec.insecure_skip_verify,
        server_name: spec.server_name.clone(),
        ..TlsMaterial::default()
    };
    let mut ok = true;
    let mut load = |path: &Path, field: &str| match read_file(path) {
        Ok(bytes) => Some(bytes),
        Err(e) => {
            errors.push(field, e);
            ok = false;
            None
        }
    };
    if let Some(path) = &spec.ca_file {
        material.ca_pem = load(path, "ca_file");
    }
    match (&spec.cert_file, &spec.key_file) {
        (Some(cert), Some(key)) => {
            if let (Some(c), Some(k)) = (load(cert, "cert_file"), load(key, "key_file")) {
                material.client_pem = Some((c, k));
            }
        }
        (Some(_), None) => {
            errors.push("key_file", "cert_file needs key_file");
            ok = false;
        }
        (None, Some(_)) => {
            errors.push("cert_file", "key_file needs cert_file");
            ok = false;
        }
        (None, None) => {}
    }
    if !ok {
        return None;
    }
    match tls::client_config(&material) {
        Ok(c) => Some(c),
        Err(e) => {
            errors.push("", e);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::io::Write;

    fn errors_of(yaml: &str) -> Vec<String> {
        Config::from_yaml(yaml).unwrap_err().0
    }

    #[test]
    fn shipped_config_is_valid() {
        let c = Config::from_yaml(EMBEDDED).unwrap();
        assert_eq!(c.spool.dir, PathBuf::from("data"));
        assert_eq!(c.server.listen, "0.0.0.0:9097");
    }

    #[test]
    fn annotated_example_is_valid() {
        let c = Config::from_yaml(include_str!("../config/example-full.yaml")).unwrap();
        assert_eq!(c.receivers.len(), 2);
        assert_eq!(c.receivers[0].conditions.len(), 3);
    }

    #[test]
    fn defaults_apply_and_receivers_override_them() {
        let c = Config::from_yaml(
            "delivery: { timeout: 3s, concurrency: 2, retry: { initial_interval: 1s, max_elapsed: 2h } }\n\
             receivers:\n\
             - { name: a, url: 'http://127.0.0.1:1/x' }\n\
             - { name: b, url: 'http://127.0.0.1:1/y', timeout: 1s, concurrency: 9, retry: { max_elapsed: 1h } }\n",
        )
        .unwrap();
        let (a, b) = (&c.receivers[0], &c.receivers[1]);
        assert_eq!((a.timeout, a.concurrency), (Duration::from_secs(3), 2));
        assert_eq!((b.timeout, b.concurrency), (Duration::from_secs(1), 9));
        assert_eq!(a.retry.max_elapsed(), Duration::from_secs(7200));
        assert_eq!(b.retry.max_elapsed(), Duration::from_secs(3600));
        assert_eq!(b.retry.delay(1, 0.5), Duration::from_secs(1), "initial_interval inherited");
        assert!(a.enabled && a.send_resolved);
        assert_eq!(c.server.max_body_bytes, 4 * 1024 * 1024);
        assert_eq!(c.spool.max_pending, 100_000);
    }

    #[test]
    fn unknown_keys_are_errors() {
        let e = errors_of("server: { listn: ':1' }");
        assert!(e[0].contains("unknown field `listn`"), "{e:?}");
        let e = errors_of("receivers: [{ name: a, url: 'http://x', colour: red }]");
        assert!(e[0].contains("unknown field `colour`"), "{e:?}");
    }

    #[test]
    fn every_error_is_reported_with_receiver_and_field() {
        let e = errors_of(
            r#"
delivery: { timeout: 10 parsecs }
receivers:
  - name: ops
    url: 'ftp://x'
    timeout: 5x
    conditions:
      - { label: severity, operator: Matches, values: ['(bad'] }
      - { label: ns, operator: Exists, values: [a] }
  - { name: ops, url: 'http://x', auth: { type: bearer } }
  - { name: 'bad name', url: 'http://x', tls: { ca_file: /nonexistent/ca.pem } }
"#,
        );
        let has = |needle: &str| assert!(e.iter().any(|l| l.contains(needle)), "{needle:?} not in {e:#?}");
        has("delivery.timeout: invalid duration \"10 parsecs\"");
        has("receivers[0] (ops).url: \"ftp://x\"");
        has("receivers[0] (ops).timeout: invalid duration \"5x\"");
        has("receivers[0] (ops).conditions[0]: severity Matches: values[0]: invalid regex \"(bad\"");
        has("receivers[0] (ops).conditions[1]: ns Exists: values: operator Exists takes no values");
        has("receivers[1] (ops).name: duplicate receiver name \"ops\"");
        has("receivers[1] (ops).auth.token: bearer auth needs token or token_file");
        has("receivers[2] (bad name).name: \"bad name\" must match");
        has("receivers[2] (bad name).tls.ca_file: cannot read /nonexistent/ca.pem");
    }

    #[test]
    fn secrets_come_from_files_and_are_never_printed() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "hunter2").unwrap();
        let c = Config::from_yaml(&format!(
            "server: {{ webhook_auth: {{ type: bearer, token_file: {} }} }}\n\
             receivers: [{{ name: a, url: 'http://x', auth: {{ type: basic, username: u, password: pw-secret }} }}]",
            f.path().display()
        ))
        .unwrap();
        assert_eq!(c.server.webhook_auth.as_ref().unwrap().expose(), "Bearer hunter2");
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2") && !shown.contains("pw-secret"), "{shown}");
        assert_eq!(errors_of("admin: { token: '' }"), ["admin.token: is empty"]);
        let missing = errors_of("admin: { token_file: /nonexistent/token }");
        assert!(missing[0].starts_with("admin.token_file: cannot read /nonexistent/token"), "{missing:?}");
    }

    #[test]
    fn redaction_hides_secrets_and_a_put_back_keeps_them() {
        let yaml = "receivers: [{ name: a, url: 'http://x', proxy_url: 'http://u:proxy-pw@proxy:3128', auth: { type: bearer, token: tok } }]";
        let stored = Config::from_yaml(yaml).unwrap().receivers[0].spec.clone();
        let shown = stored.redacted();
        let text = serde_json::to_string(&shown).unwrap();
        assert!(!text.contains("proxy-pw") && !text.contains("tok\""), "{text}");
        let mut back = shown.clone();
        back.keep_secrets_of(&stored).unwrap();
        assert_eq!(back, stored);
        let e = errors_of("receivers: [{ name: a, url: 'http://x', proxy_url: 'ftp://u:pw-in-url@p' }]");
        assert!(e[0].starts_with("receivers[0] (a).proxy_url:") && !e[0].contains("pw-in-url"), "{e:?}");
    }

    #[test]
    fn secret_comparison() {
        let s = Secret::new("abc".into());
        assert!(s.matches(b"abc"));
        assert!(!s.matches(b"abd") && !s.matches(b"ab") && !s.matches(b"abcd") && !s.matches(b""));
    }

    #[test]
    fn environment_overrides_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, "server: { listen: '127.0.0.1:1' }\nspool: { max_pending: 5 }\n").unwrap();
        let env = HashMap::from([
            ("ALERT_RELAY__SERVER__LISTEN".to_string(), "0.0.0.0:9097".to_string()),
            ("ALERT_RELAY__SPOOL__MAX_PENDING".to_string(), "7".to_string()),
            ("ALERT_RELAY__DELIVERY__TIMEOUT".to_string(), "2s".to_string()),
        ]);
        let c = Config::load_with_env(&Source::File(path), Some(env)).unwrap();
        assert_eq!(c.server.listen, "0.0.0.0:9097");
        assert_eq!(c.spool.max_pending, 7);
    }

    #[test]
    fn missing_file_is_an_error() {
        let e = Config::load_with_env(&Source::File("/nonexistent/x.yaml".into()), Some(HashMap::new())).unwrap_err();
        assert!(e.0[0].contains("/nonexistent/x.yaml"), "{e}");
    }
}
