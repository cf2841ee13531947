//! Configuration: the YAML file plus `ALERT_RELAY__…` environment overrides,
//! parsed once into validated types. Nothing past this module re-checks it.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use crate::tls::server::ListenerFiles;

mod file;
mod receiver;
mod secret;

use file::*;
pub use file::{AuthSpec, AuthType, PayloadSpec, ReceiverSpec, RetrySpec, SigningSpec, TlsSpec};
use receiver::*;
pub use receiver::{validate_payload, validate_receiver, Receiver};
use secret::*;
pub use secret::{basic, redact_url, Auth, OAuth2, Secret, SigningKey, REDACTED};

/// Where the config file is looked for when none is named.
pub const DEFAULT_PATH: &str = "config/alert-relay.yaml";
/// The shipped `config/alert-relay.yaml`, used when that file is not on disk.
pub const EMBEDDED: &str = include_str!("../../config/alert-relay.yaml");
const ENV_PREFIX: &str = "ALERT_RELAY";

#[derive(Debug, Clone)]
pub struct Server {
    pub listen: String,
    pub max_body_bytes: usize,
    /// The expected `Authorization` header value on `/webhook`.
    pub webhook_auth: Option<Secret>,
    pub request_head_timeout: Duration,
    pub request_body_timeout: Duration,
    /// How long a kept-alive connection may sit idle between requests.
    pub idle_timeout: Duration,
    pub max_connections: usize,
    /// HTTPS: the files, read and checked once at load.
    pub tls: Option<ListenerFiles>,
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

#[derive(Debug, Clone)]
pub struct Config {
    pub server: Server,
    pub admin: Admin,
    pub spool: Spool,
    pub delivery: DeliveryDefaults,
    /// The receivers of the file (provisioned).
    pub receivers: Vec<Arc<Receiver>>,
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
        validate(raw)
    }

    /// Parses YAML text with no environment overrides (tests, examples).
    pub fn from_yaml(text: &str) -> Result<Config, ConfigErrors> {
        let raw: RawConfig = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Yaml))
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigErrors(vec![e.to_string()]))?;
        validate(raw)
    }
}

/// `server.tls`, with its files read and checked so that `check-config` and a
/// reload report a bad pair.
fn listener_tls(raw: RawListenerTls, errors: &mut Errors<'_>) -> Option<ListenerFiles> {
    let (Some(cert_file), Some(key_file)) = (raw.cert_file, raw.key_file) else {
        errors.push("", "needs both cert_file and key_file");
        return None;
    };
    for path in &raw.client_cert_exempt_paths {
        if !path.starts_with('/') {
            errors.push("client_cert_exempt_paths", format!("{path:?} is not a path (starts with /)"));
        }
    }
    if raw.client_ca_file.is_none() && !raw.client_cert_exempt_paths.is_empty() {
        errors.push("client_cert_exempt_paths", "only used with client_ca_file");
    }
    let files = ListenerFiles {
        cert_file,
        key_file,
        client_ca_file: raw.client_ca_file,
        exempt_paths: raw.client_cert_exempt_paths,
    };
    match crate::tls::server::ListenerTls::load(files.clone()) {
        Ok(_) => Some(files),
        Err(e) => {
            errors.push("", e);
            None
        }
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
        let prefix = if self.prefix.is_empty() { prefix.to_string() } else { format!("{}.{prefix}", self.prefix) };
        Errors { list: self.list, prefix }
    }
}

fn validate(raw: RawConfig) -> Result<Config, ConfigErrors> {
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
            Some(spec) if spec.kind == AuthType::OAuth2 => {
                errors.push("webhook_auth.type", "oauth2 is for receivers; Alertmanager sends bearer or basic here");
                None
            }
            Some(spec) => auth(&spec, &mut errors.sub("webhook_auth")).header_value(),
            None => None,
        };
        let mut request_timeout = |text: Option<String>, default, field| {
            bounded_duration(text.as_deref(), default, MAX_TIMEOUT, field, &mut errors)
        };
        let request_head_timeout = request_timeout(raw.server.request_head_timeout, "5s", "request_head_timeout");
        let request_body_timeout = request_timeout(raw.server.request_body_timeout, "10s", "request_body_timeout");
        // Longer than the 5 minutes Alertmanager's HTTP client (prometheus/common)
        // keeps an idle connection: the client closes first, so a POST is never
        // written into a connection the relay is closing at that moment.
        let idle_timeout =
            bounded_duration(raw.server.idle_timeout.as_deref(), "6m", MAX_IDLE_TIMEOUT, "idle_timeout", &mut errors);
        let max_connections = raw.server.max_connections.unwrap_or(1024);
        if !(1..=MAX_CONNECTIONS).contains(&max_connections) {
            errors.push("max_connections", format!("{max_connections} is not between 1 and {MAX_CONNECTIONS}"));
        }
        let tls = raw.server.tls.and_then(|t| listener_tls(t, &mut errors.sub("tls")));
        Server {
            tls,
            listen,
            max_body_bytes: usize::try_from(max_body_bytes).unwrap_or(usize::MAX),
            webhook_auth,
            request_head_timeout,
            request_body_timeout,
            idle_timeout,
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
        Ok(Config { server, admin, spool, delivery: defaults, receivers })
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

fn looks_like_host_port(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok(),
        None => false,
    }
}

/// Parses `500ms`, `10s`, `1m`, `1h`, `1h30m`.
pub fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("invalid duration {text:?}: {e}"))
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
        let c = Config::from_yaml(include_str!("../../config/example-full.yaml")).unwrap();
        assert_eq!(c.receivers.len(), 3);
        assert_eq!(c.receivers[0].conditions.len(), 3);
        assert_eq!(c.receivers[0].signing.len(), 1);
        assert!(matches!(c.receivers[2].auth, Auth::OAuth2(_)));
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
        // Above the 5 minutes Alertmanager keeps an idle connection.
        assert_eq!(c.server.idle_timeout, Duration::from_secs(360));
    }

    #[test]
    fn server_timeouts_are_bounded() {
        let e = errors_of("server: { idle_timeout: 2h, request_head_timeout: 0s, request_body_timeout: 6m }");
        assert_eq!(
            e,
            [
                "server.request_head_timeout: must be more than 0 and at most 5m",
                "server.request_body_timeout: must be more than 0 and at most 5m",
                "server.idle_timeout: must be more than 0 and at most 1h",
            ],
        );
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
        has("receivers[0] (ops).conditions[0]: severity Regex match: values[0]: invalid regex \"(bad\"");
        has("receivers[0] (ops).conditions[1]: ns Exists: values: \"Exists\" takes no values");
        has("receivers[1] (ops).name: duplicate receiver name \"ops\"");
        has("receivers[1] (ops).auth.token: bearer auth needs token or token_file");
        has("receivers[2] (bad name).name: \"bad name\" must match");
        has("receivers[2] (bad name).tls.ca_file: cannot read /nonexistent/ca.pem");
    }

    #[test]
    fn transport_security_settings_are_checked_with_their_paths() {
        let e = errors_of(
            r#"
server:
  webhook_auth: { type: oauth2, client_id: x, client_secret: y, token_url: 'http://idp/t' }
  tls: { cert_file: /nonexistent/tls.crt, client_cert_exempt_paths: [metrics] }
receivers:
  - name: o
    url: 'http://x'
    auth: { type: oauth2, client_secret: s, token: t, endpoint_params: { grant_type: password } }
  - { name: b, url: 'http://x', auth: { type: bearer, token: t, client_id: c, scopes: [a] } }
  - { name: s, url: 'http://x', signing: { previous_secret: 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw' } }
  - { name: k, url: 'http://x', signing: { secret: 'hunter2-not-a-key', secret_file: /nonexistent/key } }
"#,
        );
        let has = |needle: &str| assert!(e.iter().any(|l| l.contains(needle)), "{needle:?} not in {e:#?}");
        has("server.webhook_auth.type: oauth2 is for receivers");
        has("server.tls: needs both cert_file and key_file");
        has("receivers[0] (o).auth.client_id: oauth2 needs a client_id");
        has("receivers[0] (o).auth.token_url: oauth2 needs a token_url");
        has("receivers[0] (o).auth.token: not used with type OAuth2");
        has("receivers[0] (o).auth.endpoint_params.grant_type: is set by the relay");
        has("receivers[1] (b).auth.client_id: not used with type Bearer");
        has("receivers[1] (b).auth.scopes: not used with type Bearer");
        has("receivers[2] (s).signing.secret: previous_secret is only used beside secret");
        has("receivers[3] (k).signing.secret: set either secret or secret_file, not both");
        assert!(!e.iter().any(|l| l.contains("hunter2")), "a secret echoed: {e:#?}");

        let e = errors_of("server: { tls: { cert_file: /nonexistent/c, key_file: /nonexistent/k, client_cert_exempt_paths: [metrics] } }");
        let has = |needle: &str| assert!(e.iter().any(|l| l.contains(needle)), "{needle:?} not in {e:#?}");
        has("server.tls.client_cert_exempt_paths: \"metrics\" is not a path");
        has("server.tls.client_cert_exempt_paths: only used with client_ca_file");
        has("server.tls: cert_file: cannot read /nonexistent/c");
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
        std::fs::write(
            &path,
            "server: { listen: '127.0.0.1:1' }\nspool: { max_pending: 5 }\nreceivers: [{ name: r, url: 'http://x' }]\n",
        )
        .unwrap();
        let env = HashMap::from([
            ("ALERT_RELAY__SERVER__LISTEN".to_string(), "0.0.0.0:9097".to_string()),
            ("ALERT_RELAY__SPOOL__MAX_PENDING".to_string(), "7".to_string()),
            ("ALERT_RELAY__DELIVERY__TIMEOUT".to_string(), "2s".to_string()),
        ]);
        let c = Config::load_with_env(&Source::File(path), Some(env)).unwrap();
        assert_eq!(c.server.listen, "0.0.0.0:9097");
        assert_eq!(c.spool.max_pending, 7);
        assert_eq!(c.receivers[0].timeout, Duration::from_secs(2), "delivery.timeout from the environment");
    }

    #[test]
    fn missing_file_is_an_error() {
        let e = Config::load_with_env(&Source::File("/nonexistent/x.yaml".into()), Some(HashMap::new())).unwrap_err();
        assert!(e.0[0].contains("/nonexistent/x.yaml"), "{e}");
    }
}
