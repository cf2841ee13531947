//! Secrets: the type that never prints them, auth built from them, reading
//! them from files, and redaction for API answers (with the rule for when a
//! `<redacted>` sent back keeps the stored secret).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;

use super::*;

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
    Basic {
        username: String,
        password: Secret,
    },
    /// A bearer token fetched from `token_url`; see `delivery::oauth`.
    OAuth2(Arc<OAuth2>),
}

/// OAuth 2.0 client credentials, as Alertmanager's `oauth2`.
#[derive(Debug, Clone, PartialEq)]
pub struct OAuth2 {
    pub client_id: String,
    pub client_secret: Secret,
    pub token_url: reqwest::Url,
    pub scopes: Vec<String>,
    pub endpoint_params: Vec<(String, String)>,
}

/// A Standard Webhooks signing key (the bytes after `whsec_`, decoded).
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey(Vec<u8>);

impl SigningKey {
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The Standard Webhooks specification's recommended key sizes.
const SIGNING_KEY_BYTES: std::ops::RangeInclusive<usize> = 24..=64;

/// `whsec_` followed by the base64 key, as Standard Webhooks libraries print
/// and read it. The prefix is required: it tells the value is a signing key
/// and not, say, a bearer token pasted into the wrong field.
fn signing_key(secret: &Secret) -> Result<SigningKey, String> {
    let Some(encoded) = secret.expose().strip_prefix("whsec_") else {
        return Err("must start with whsec_ followed by the base64 key".into());
    };
    // Padded or not: Standard Webhooks libraries print either.
    let key = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(encoded.trim().trim_end_matches('='))
        .map_err(|_| "the part after whsec_ is not base64".to_string())?;
    if !SIGNING_KEY_BYTES.contains(&key.len()) {
        return Err(format!(
            "the key is {} bytes; Standard Webhooks keys are {} to {} bytes",
            key.len(),
            SIGNING_KEY_BYTES.start(),
            SIGNING_KEY_BYTES.end()
        ));
    }
    Ok(SigningKey(key))
}

/// The keys every attempt is signed with: the current one first, then the
/// previous one during a rotation. Empty: no signing.
pub(super) fn signing(spec: &SigningSpec, errors: &mut Errors<'_>) -> Vec<SigningKey> {
    let mut keys = Vec::new();
    let current = secret(spec.secret.clone(), spec.secret_file.clone(), "secret", errors);
    let previous = secret(spec.previous_secret.clone(), spec.previous_secret_file.clone(), "previous_secret", errors);
    if current.is_none() && previous.is_some() {
        errors.push("secret", "previous_secret is only used beside secret (or secret_file)");
    }
    for (field, value) in [("secret", current), ("previous_secret", previous)] {
        if let Some(value) = value {
            match signing_key(&value) {
                Ok(key) => keys.push(key),
                Err(e) => errors.push(field, e),
            }
        }
    }
    keys
}

impl Auth {
    /// The whole `Authorization` header value this auth sends, if any.
    pub fn header_value(&self) -> Option<Secret> {
        match self {
            Auth::None => None,
            Auth::Bearer(token) => Some(Secret(format!("Bearer {}", token.expose()))),
            Auth::Basic { username, password } => Some(basic(username, password.expose())),
            // Fetched per attempt, not fixed.
            Auth::OAuth2(_) => None,
        }
    }
}

/// An `Authorization: Basic` value.
pub fn basic(username: &str, password: &str) -> Secret {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
    Secret(format!("Basic {encoded}"))
}

pub(super) fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// An inline secret or one read from a file (trailing newline dropped).
pub(super) fn secret(
    inline: Option<String>,
    file: Option<PathBuf>,
    field: &str,
    errors: &mut Errors<'_>,
) -> Option<Secret> {
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

pub(super) fn auth(spec: &AuthSpec, errors: &mut Errors<'_>) -> Auth {
    let forbid = |errors: &mut Errors<'_>, present: bool, field: &str| {
        if present {
            errors.push(field, format!("not used with type {:?}", spec.kind));
        }
    };
    if spec.kind != AuthType::OAuth2 {
        forbid(errors, spec.client_id.is_some(), "client_id");
        forbid(errors, spec.client_secret.is_some() || spec.client_secret_file.is_some(), "client_secret");
        forbid(errors, spec.token_url.is_some(), "token_url");
        forbid(errors, !spec.scopes.is_empty(), "scopes");
        forbid(errors, !spec.endpoint_params.is_empty(), "endpoint_params");
    }
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
        AuthType::OAuth2 => {
            forbid(errors, spec.token.is_some() || spec.token_file.is_some(), "token");
            forbid(errors, spec.username.is_some(), "username");
            forbid(errors, spec.password.is_some() || spec.password_file.is_some(), "password");
            let client_id = spec.client_id.clone().unwrap_or_default();
            if client_id.is_empty() {
                errors.push("client_id", "oauth2 needs a client_id");
            }
            let client_secret =
                secret(spec.client_secret.clone(), spec.client_secret_file.clone(), "client_secret", errors);
            if client_secret.is_none() && spec.client_secret.is_none() && spec.client_secret_file.is_none() {
                errors.push("client_secret", "oauth2 needs client_secret or client_secret_file");
            }
            let token_url = match spec.token_url.as_deref().map(reqwest::Url::parse) {
                Some(Ok(u)) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Some(u),
                // Not echoed: a URL may carry credentials.
                Some(_) => {
                    errors.push("token_url", "is not an http(s) URL with a host");
                    None
                }
                None => {
                    errors.push("token_url", "oauth2 needs a token_url");
                    None
                }
            };
            for reserved in ["grant_type", "client_id", "client_secret", "scope"] {
                if spec.endpoint_params.contains_key(reserved) {
                    errors.push(
                        &format!("endpoint_params.{reserved}"),
                        "is set by the relay; use client_id, client_secret and scopes",
                    );
                }
            }
            match (token_url, client_secret) {
                (Some(token_url), Some(client_secret)) if !client_id.is_empty() => Auth::OAuth2(Arc::new(OAuth2 {
                    client_id,
                    client_secret,
                    token_url,
                    scopes: spec.scopes.clone(),
                    endpoint_params: spec.endpoint_params.clone().into_iter().collect(),
                })),
                _ => Auth::None,
            }
        }
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
        hide(&mut spec.auth.client_secret);
        hide(&mut spec.signing.secret);
        hide(&mut spec.signing.previous_secret);
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
        keep("auth.client_secret", &mut self.auth.client_secret, &stored.auth.client_secret);
        keep("signing.secret", &mut self.signing.secret, &stored.signing.secret);
        keep("signing.previous_secret", &mut self.signing.previous_secret, &stored.signing.previous_secret);
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
pub(super) fn origin(text: &str) -> Option<(String, String, u16)> {
    let url = reqwest::Url::parse(text).ok()?;
    Some((url.scheme().to_string(), url.host_str()?.to_string(), url.port_or_known_default()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(text: &str) -> Result<SigningKey, String> {
        signing_key(&Secret::new(text.into()))
    }

    #[test]
    fn signing_keys_are_whsec_base64_of_24_to_64_bytes() {
        // The Standard Webhooks specification's example key, 24 bytes.
        assert_eq!(key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap().expose().len(), 24);
        let padded = format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode([7u8; 32]));
        assert!(padded.ends_with('='));
        assert_eq!(key(&padded).unwrap().expose(), &[7u8; 32]);
        assert_eq!(key(padded.trim_end_matches('=')).unwrap().expose(), &[7u8; 32]);
        assert!(key("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap_err().contains("whsec_"));
        assert!(key("whsec_not base64!").unwrap_err().contains("not base64"));
        let short = format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode([1u8; 16]));
        assert!(key(&short).unwrap_err().contains("16 bytes"));
        let long = format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode([1u8; 65]));
        assert!(key(&long).unwrap_err().contains("65 bytes"));
    }
}
