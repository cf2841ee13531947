//! A receiver validated into the form the relay uses: every value checked and
//! bounded, every file read (API receivers only under `admin.secret_dir`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use super::*;
use crate::conditions::Condition;
use crate::format::{Answer, FormatName, Payload};
use crate::retry::RetryPolicy;
use crate::tls::{self, TlsMaterial};

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
    /// Standard Webhooks keys: the current one, then the previous one.
    pub signing: Vec<SigningKey>,
    /// The body format.
    pub payload: Arc<Payload>,
    pub tls: Arc<rustls::ClientConfig>,
    pub proxy: Option<reqwest::Url>,
    pub conditions: Vec<Condition>,
    pub retry: RetryPolicy,
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

/// Validates a `payload` given to the admin API (the console's live
/// preview): errors as `payload.field: message`.
pub fn validate_payload(spec: &PayloadSpec, config: &Config) -> Result<Arc<Payload>, Vec<String>> {
    let mut list = Vec::new();
    let files = FileAccess::Under(config.admin.secret_dir.clone());
    if let Some(path) = &spec.template_file {
        if let Err(e) = files.allows(path) {
            return Err(vec![format!("payload.template_file: {e}")]);
        }
    }
    let built = payload(spec, &mut Errors { list: &mut list, prefix: "payload".into() });
    match built {
        Some(p) if list.is_empty() => Ok(p),
        _ => Err(list),
    }
}

pub(super) fn is_valid_name(name: &str) -> bool {
    // `.` and `..` are path segments, not names: no URL could address them.
    !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= 128
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Bounds on settings: a typo must not become a million workers or an
/// attempt that never times out.
pub(super) const MAX_CONCURRENCY: u64 = 64;
pub(super) const MAX_TIMEOUT: Duration = Duration::from_secs(300);
pub(super) const MAX_ALERTS: u64 = 100_000;
pub(super) const MAX_HEADERS: usize = 32;
pub(super) const MAX_BODY_BYTES: u64 = 64 * 1024 * 1024;
pub(super) const MAX_CONNECTIONS: u64 = 65_536;
/// The longest `server.idle_timeout`.
pub(super) const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// Headers the relay sets itself, or that would change how the body is framed
/// or the connection handled: a receiver's `headers` may not set them.
pub(super) const RESERVED_HEADERS: [&str; 14] = [
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

pub(super) fn reserved_header(name: &HeaderName) -> Option<&'static str> {
    let n = name.as_str();
    if n == "authorization" {
        return Some("set auth instead of an Authorization header");
    }
    if RESERVED_HEADERS.contains(&n) || n.starts_with("webhook-") {
        return Some("is set by the relay (reserved); remove it from headers");
    }
    None
}

pub(super) fn check_concurrency(value: u64, errors: &mut Errors<'_>) {
    if !(1..=MAX_CONCURRENCY).contains(&value) {
        errors.push("concurrency", format!("{value} is not between 1 and {MAX_CONCURRENCY}"));
    }
}

pub(super) fn check_timeout(value: Duration, errors: &mut Errors<'_>) {
    if value.is_zero() {
        errors.push("timeout", "must be more than 0");
    } else if value > MAX_TIMEOUT {
        errors.push("timeout", format!("{} is more than the most allowed, 5m", humantime::format_duration(value)));
    }
}

/// A duration setting with a default, more than 0 and at most `max`.
pub(super) fn bounded_duration(
    text: Option<&str>,
    default: &str,
    max: Duration,
    field: &str,
    errors: &mut Errors<'_>,
) -> Duration {
    let fallback = duration(default).unwrap_or(Duration::from_secs(5));
    match duration(text.unwrap_or(default)) {
        Ok(d) if d.is_zero() || d > max => {
            errors.push(field, format!("must be more than 0 and at most {}", humantime::format_duration(max)));
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
pub(super) enum FileAccess {
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
pub(super) fn named_files(spec: &ReceiverSpec) -> Vec<(&'static str, &Path)> {
    let fields: [(&'static str, &Option<PathBuf>); 9] = [
        ("payload.template_file", &spec.payload.template_file),
        ("auth.token_file", &spec.auth.token_file),
        ("auth.password_file", &spec.auth.password_file),
        ("auth.client_secret_file", &spec.auth.client_secret_file),
        ("signing.secret_file", &spec.signing.secret_file),
        ("signing.previous_secret_file", &spec.signing.previous_secret_file),
        ("tls.ca_file", &spec.tls.ca_file),
        ("tls.cert_file", &spec.tls.cert_file),
        ("tls.key_file", &spec.tls.key_file),
    ];
    fields.into_iter().filter_map(|(field, path)| path.as_deref().map(|p| (field, p))).collect()
}

pub(super) fn retry_policy(spec: &RetrySpec) -> Result<RetryPolicy, String> {
    // What is not set is the built-in default: one place for every default.
    let spec = &spec.or(&RetrySpec::builtin());
    let get = |v: &Option<String>, name: &str| -> Result<Duration, String> {
        duration(v.as_deref().unwrap_or_default()).map_err(|e| format!("{name}: {e}"))
    };
    let initial = get(&spec.initial_interval, "initial_interval")?;
    let max_interval = get(&spec.max_interval, "max_interval")?;
    let max_elapsed = get(&spec.max_elapsed, "max_elapsed")?;
    RetryPolicy::try_new(
        initial,
        spec.multiplier.unwrap_or_default(),
        max_interval,
        max_elapsed,
        spec.max_attempts.unwrap_or_default(),
        spec.jitter.unwrap_or_default(),
    )
    .map_err(|e| e.to_string())
}

pub(super) fn receiver(
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
    let signing = signing(&spec.signing, &mut errors.sub("signing"));
    let payload = payload(&spec.payload, &mut errors.sub("payload"));
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
            Err(e) => errors.push(&format!("conditions[{i}]"), format!("{} {}: {e}", c.label, c.operator.wording())),
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
        signing,
        payload: payload?,
        tls: tls?,
        proxy,
        conditions,
        retry: retry?,
    })
}

/// `payload`: the alertmanager format, a preset, or a template compiled and
/// rendered against the sample notifications.
fn payload(spec: &PayloadSpec, errors: &mut Errors<'_>) -> Option<Arc<Payload>> {
    let own = spec.template.is_some() || spec.template_file.is_some() || spec.content_type.is_some();
    match spec.format {
        FormatName::Alertmanager if own => {
            errors.push("format", "template, template_file and content_type are only used with format: template");
            None
        }
        FormatName::Alertmanager => Some(Arc::new(Payload::alertmanager())),
        FormatName::Template => {
            let source = match (&spec.template, &spec.template_file) {
                (Some(_), Some(_)) => {
                    errors.push("template", "set either template or template_file, not both");
                    return None;
                }
                (Some(t), None) => t.clone(),
                (None, Some(path)) => match read_file(path).map(String::from_utf8) {
                    Ok(Ok(text)) => text,
                    Ok(Err(_)) => {
                        errors.push("template_file", format!("{} is not UTF-8 text", path.display()));
                        return None;
                    }
                    Err(e) => {
                        errors.push("template_file", e);
                        return None;
                    }
                },
                (None, None) => {
                    errors.push("template", "format: template needs template or template_file");
                    return None;
                }
            };
            let content_type = spec.content_type.as_deref().unwrap_or("application/json");
            if HeaderValue::from_str(content_type).is_err() || content_type.trim().is_empty() {
                errors.push("content_type", format!("{content_type:?} is not a valid header value"));
                return None;
            }
            build_payload(FormatName::Template, &source, content_type, Answer::Status, errors)
        }
        preset_name => {
            if own {
                errors.push(
                    "format",
                    format!(
                        "template, template_file and content_type are only used with format: template (to change \
                         the preset, start from GET /api/v1/formats/{})",
                        preset_name.as_str()
                    ),
                );
                return None;
            }
            let preset = preset_name.preset()?;
            build_payload(preset_name, preset.template, preset.content_type, preset.answer, errors)
        }
    }
}

fn build_payload(
    format: FormatName,
    source: &str,
    content_type: &str,
    answer: Answer,
    errors: &mut Errors<'_>,
) -> Option<Arc<Payload>> {
    match Payload::template(format, source, content_type, answer) {
        Ok(p) => Some(Arc::new(p)),
        Err((field, message)) => {
            errors.push(field, message);
            None
        }
    }
}

pub(super) fn tls_config(spec: &TlsSpec, errors: &mut Errors<'_>) -> Option<Arc<rustls::ClientConfig>> {
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
