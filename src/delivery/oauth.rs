//! OAuth 2.0 client credentials (RFC 6749 section 4.4), as Alertmanager's
//! `oauth2`: a token fetched from the token endpoint, cached until shortly
//! before it expires, dropped when the target answers 401. The token is a
//! `Secret`: never logged, never in an error.

use std::time::{Duration, Instant};

use crate::config::{basic, OAuth2, Secret};

/// How long before its `expires_in` a token is renewed, at most (Go's
/// golang.org/x/oauth2, which Alertmanager uses, renews 10 s early).
const EARLY: Duration = Duration::from_secs(10);
/// How much of a token endpoint's error answer is kept.
const ERROR_BODY_BYTES: usize = 256;

/// A token in the cache.
#[derive(Debug, Clone)]
struct Cached {
    /// The whole `Authorization` value, `Bearer …`.
    header: Secret,
    /// Renew at or after this instant; `None`: the endpoint gave no lifetime,
    /// kept until a 401.
    renew_at: Option<Instant>,
}

/// When a token that lives `expires_in` from `fetched` is renewed: 10 s before
/// it expires, or half way for tokens that live less than 20 s.
pub fn renew_at(fetched: Instant, expires_in: Option<Duration>) -> Option<Instant> {
    expires_in.map(|life| fetched + life.saturating_sub(EARLY.min(life / 2)))
}

/// One receiver's tokens.
pub struct TokenSource {
    settings: std::sync::Arc<OAuth2>,
    /// No default headers: the receiver's own headers are for its target.
    client: reqwest::Client,
    cache: tokio::sync::Mutex<Option<Cached>>,
}

/// Why no token could be had; the text never holds a secret.
#[derive(Debug, thiserror::Error)]
#[error("OAuth 2.0 token endpoint: {0}")]
pub struct TokenError(String);

#[derive(serde::Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    token_type: Option<String>,
    #[serde(default)]
    expires_in: Option<f64>,
}

impl TokenSource {
    pub fn new(settings: std::sync::Arc<OAuth2>, client: reqwest::Client) -> TokenSource {
        TokenSource { settings, client, cache: tokio::sync::Mutex::new(None) }
    }

    /// The `Authorization` value to send: the cached token while it is fresh,
    /// else a new one. Callers wait for one fetch at a time, so many
    /// deliveries share one token request.
    pub async fn header(&self) -> Result<Secret, TokenError> {
        let mut cache = self.cache.lock().await;
        if let Some(cached) = cache.as_ref() {
            if cached.renew_at.is_none_or(|at| Instant::now() < at) {
                return Ok(cached.header.clone());
            }
        }
        let fresh = self.fetch().await?;
        let header = fresh.header.clone();
        *cache = Some(fresh);
        Ok(header)
    }

    /// Forgets `rejected` (the target answered 401 to it), unless another
    /// attempt already replaced it.
    pub async fn reject(&self, rejected: &Secret) {
        let mut cache = self.cache.lock().await;
        if cache.as_ref().is_some_and(|c| &c.header == rejected) {
            *cache = None;
        }
    }

    async fn fetch(&self) -> Result<Cached, TokenError> {
        let s = &self.settings;
        let mut form: Vec<(&str, &str)> = vec![("grant_type", "client_credentials")];
        let scope = s.scopes.join(" ");
        if !scope.is_empty() {
            form.push(("scope", &scope));
        }
        form.extend(s.endpoint_params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        // RFC 6749 2.3.1: the client id and secret form-encoded, then as HTTP
        // Basic credentials (every server must take this way).
        let id = form_encode(&s.client_id);
        let secret = form_encode(s.client_secret.expose());
        let mut authorization = reqwest::header::HeaderValue::from_str(basic(&id, &secret).expose())
            .map_err(|_| TokenError("client credentials hold characters not allowed in a header".into()))?;
        authorization.set_sensitive(true);
        let fetched = Instant::now();
        let response = self
            .client
            .post(s.token_url.clone())
            .header(reqwest::header::AUTHORIZATION, authorization)
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&form)
            .send()
            .await
            .map_err(|e| TokenError(super::sender::describe(e)))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| TokenError(super::sender::describe(e)))?;
        if !status.is_success() {
            // RFC 6749 5.2 error answers say what is wrong (invalid_client, …);
            // they hold no token.
            let text = String::from_utf8_lossy(&body[..body.len().min(ERROR_BODY_BYTES)]).trim().to_string();
            return Err(TokenError(if text.is_empty() {
                format!("HTTP {}", status.as_u16())
            } else {
                format!("HTTP {}: {text}", status.as_u16())
            }));
        }
        let answer: TokenAnswer = serde_json::from_slice(&body)
            .map_err(|e| TokenError(format!("HTTP {}: not a token answer ({e})", status.as_u16())))?;
        if let Some(kind) = answer.token_type.as_deref() {
            if !kind.eq_ignore_ascii_case("bearer") {
                return Err(TokenError(format!("token_type {kind:?} is not bearer")));
            }
        }
        if answer.access_token.is_empty() {
            return Err(TokenError("the answer's access_token is empty".into()));
        }
        let expires_in = answer.expires_in.filter(|s| s.is_finite() && *s > 0.0).map(Duration::from_secs_f64);
        Ok(Cached {
            header: Secret::new(format!("Bearer {}", answer.access_token)),
            renew_at: renew_at(fetched, expires_in),
        })
    }
}

/// application/x-www-form-urlencoded, as RFC 6749 appendix B asks of the
/// client id and secret before they go into Basic credentials.
fn form_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => out.push(char::from(b)),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_renewed_ten_seconds_early_or_half_way_when_short_lived() {
        let t = Instant::now();
        assert_eq!(renew_at(t, Some(Duration::from_secs(3600))), Some(t + Duration::from_secs(3590)));
        assert_eq!(renew_at(t, Some(Duration::from_secs(20))), Some(t + Duration::from_secs(10)));
        assert_eq!(renew_at(t, Some(Duration::from_secs(4))), Some(t + Duration::from_secs(2)));
        assert_eq!(renew_at(t, None), None, "no lifetime given: kept until a 401");
    }

    #[test]
    fn client_credentials_are_form_encoded_before_basic() {
        assert_eq!(form_encode("relay"), "relay");
        assert_eq!(form_encode("a b:c/d+é"), "a+b%3Ac%2Fd%2B%C3%A9");
    }
}
