//! The configuration as written: the serde shapes of the file (and of a
//! receiver sent to the admin API). Unknown keys are errors.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::*;
use crate::conditions::ConditionSpec;

// ---------------------------------------------------------------------------
// The file as written.

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) server: RawServer,
    #[serde(default)]
    pub(super) admin: RawAdmin,
    #[serde(default)]
    pub(super) spool: RawSpool,
    #[serde(default)]
    pub(super) delivery: RawDelivery,
    #[serde(default)]
    pub(super) receivers: Vec<ReceiverSpec>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    /// Address to listen on, `host:port`.
    pub(super) listen: Option<String>,
    /// Largest accepted `/webhook` body in bytes.
    pub(super) max_body_bytes: Option<u64>,
    /// What Alertmanager's `http_config` must send.
    pub(super) webhook_auth: Option<AuthSpec>,
    /// Longest a client may take to send a request's head.
    pub(super) request_head_timeout: Option<String>,
    /// Longest a client may take to send a request's body once its head is in.
    pub(super) request_body_timeout: Option<String>,
    /// Longest a kept-alive connection may sit idle between requests.
    pub(super) idle_timeout: Option<String>,
    /// Open connections at most; past it new ones wait in the listen backlog.
    pub(super) max_connections: Option<u64>,
    /// Serve HTTPS instead of HTTP.
    pub(super) tls: Option<RawListenerTls>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListenerTls {
    pub(super) cert_file: Option<PathBuf>,
    pub(super) key_file: Option<PathBuf>,
    /// Require client certificates issued by a CA in this file (mTLS).
    pub(super) client_ca_file: Option<PathBuf>,
    /// Paths served to clients without a certificate when `client_ca_file`
    /// is set (a presented certificate is still verified).
    #[serde(default)]
    pub(super) client_cert_exempt_paths: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    /// Admin API bearer token, inline.
    pub(super) token: Option<String>,
    /// Admin API bearer token, read from this file.
    pub(super) token_file: Option<PathBuf>,
    /// The only directory whose files API-managed receivers may name in
    /// `*_file` settings; unset, they may name none.
    pub(super) secret_dir: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSpool {
    /// Directory of the spool's segment files.
    pub(super) dir: Option<PathBuf>,
    /// Pending deliveries at which `/webhook` answers 503.
    pub(super) max_pending: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDelivery {
    /// Per-attempt timeout.
    pub(super) timeout: Option<String>,
    /// Attempts in flight at once per receiver.
    pub(super) concurrency: Option<u64>,
    pub(super) retry: Option<RetrySpec>,
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
    pub(super) fn or(&self, base: &RetrySpec) -> RetrySpec {
        RetrySpec {
            initial_interval: self.initial_interval.clone().or_else(|| base.initial_interval.clone()),
            multiplier: self.multiplier.or(base.multiplier),
            max_interval: self.max_interval.clone().or_else(|| base.max_interval.clone()),
            max_elapsed: self.max_elapsed.clone().or_else(|| base.max_elapsed.clone()),
            max_attempts: self.max_attempts.or(base.max_attempts),
            jitter: self.jitter.or(base.jitter),
        }
    }

    pub(super) fn builtin() -> RetrySpec {
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
    /// OAuth 2.0 client credentials grant, as Alertmanager's `oauth2`.
    #[serde(rename = "oauth2")]
    OAuth2,
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
    /// `oauth2` only, from here on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_url: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub endpoint_params: BTreeMap<String, String>,
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
            .field("client_id", &self.client_id)
            .field("client_secret", &shown(&self.client_secret))
            .field("client_secret_file", &self.client_secret_file)
            .field("token_url", &self.token_url)
            .field("scopes", &self.scopes)
            .field("endpoint_params", &self.endpoint_params.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// `signing` of a receiver: Standard Webhooks signatures on every attempt.
#[derive(Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningSpec {
    /// `whsec_` and the base64 key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
    /// During a rotation: signed with this key too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_secret_file: Option<PathBuf>,
}

impl SigningSpec {
    pub fn is_empty(&self) -> bool {
        *self == SigningSpec::default()
    }
}

impl fmt::Debug for SigningSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = |v: &Option<String>| v.as_ref().map(|_| REDACTED);
        f.debug_struct("SigningSpec")
            .field("secret", &shown(&self.secret))
            .field("secret_file", &self.secret_file)
            .field("previous_secret", &shown(&self.previous_secret))
            .field("previous_secret_file", &self.previous_secret_file)
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

/// `payload` of a receiver: the body its target gets.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayloadSpec {
    #[serde(default)]
    pub format: crate::format::FormatName,
    /// `format: template` only: MiniJinja source, inline or from a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_file: Option<PathBuf>,
    /// `format: template` only; `application/json` when not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
}

impl PayloadSpec {
    pub fn is_default(&self) -> bool {
        *self == PayloadSpec::default()
    }
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
    #[serde(default, skip_serializing_if = "SigningSpec::is_empty")]
    pub signing: SigningSpec,
    #[serde(default, skip_serializing_if = "PayloadSpec::is_default")]
    pub payload: PayloadSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_url: Option<String>,
    #[serde(default)]
    pub conditions: Vec<ConditionSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
}

pub(super) fn yes() -> bool {
    true
}
