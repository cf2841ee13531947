//! One HTTP attempt to a receiver's target: auth, TLS, headers, timeout, and
//! the answer classified. Knows nothing of spools, queues or retry timing.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};

use crate::config::{Auth, Receiver, Secret, SigningKey};
use crate::format::presets::Verdict;
use crate::format::Answer;
use crate::retry::{classify, parse_retry_after, FailureReason, Outcome};

use super::oauth::TokenSource;

const USER_AGENT: &str = concat!("alert-relay/", env!("CARGO_PKG_VERSION"));
/// How much of an error answer's body is kept for the delivery's last error.
const ERROR_BODY_BYTES: usize = 512;
/// How much of a 2xx answer is read from targets that put an error code in it.
const ANSWER_BYTES: usize = 16 * 1024;

/// A receiver with its HTTP client, built once per configuration.
pub struct Target {
    pub receiver: Arc<Receiver>,
    client: reqwest::Client,
    /// `auth.type: oauth2`: where the bearer token comes from.
    tokens: Option<TokenSource>,
    /// Tests of retry timing on Tokio's paused clock answer attempts here
    /// instead of over a socket (a socket's wait would let the paused clock
    /// run ahead to the next timer).
    #[cfg(test)]
    script: Option<Script>,
}

/// Answers an attempt (key, body) in tests, instead of a target.
#[cfg(test)]
pub type Script = Arc<dyn Fn(&str, &[u8]) -> Attempt + Send + Sync>;

/// What one attempt came to.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub outcome: Outcome,
    pub status: Option<u16>,
    /// What went wrong, for logs and the deliveries API; never holds a secret.
    pub error: Option<String>,
    pub latency: Duration,
}

/// Why a receiver's HTTP client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("name: not valid in a header")]
    Name,
    #[error("payload.content_type: not valid in a header")]
    ContentType,
    #[error("auth: credentials hold characters not allowed in a header")]
    Credentials,
    #[error("proxy_url: {0}")]
    Proxy(String),
    #[error("cannot build HTTP client: {0}")]
    Client(String),
}

impl Target {
    pub fn new(receiver: Arc<Receiver>) -> Result<Target, TargetError> {
        // Every header but the Idempotency-Key is the same on every attempt:
        // set once on the client.
        let mut headers = receiver.headers.clone();
        let content_type =
            HeaderValue::from_str(&receiver.payload.content_type).map_err(|_| TargetError::ContentType)?;
        headers.insert(CONTENT_TYPE, content_type);
        let name = HeaderValue::from_str(&receiver.name).map_err(|_| TargetError::Name)?;
        headers.insert("X-Alert-Relay-Receiver", name);
        if let Some(secret) = receiver.auth.header_value() {
            let mut value = HeaderValue::from_str(secret.expose()).map_err(|_| TargetError::Credentials)?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        // The token endpoint gets the receiver's TLS settings and proxy, and
        // none of the headers meant for the target.
        let client = |headers| -> Result<reqwest::Client, TargetError> {
            let builder = reqwest::Client::builder()
                .use_preconfigured_tls((*receiver.tls).clone())
                .timeout(receiver.timeout)
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(USER_AGENT)
                .default_headers(headers)
                .pool_max_idle_per_host(receiver.concurrency);
            let builder = match &receiver.proxy {
                Some(url) => {
                    builder.proxy(reqwest::Proxy::all(url.clone()).map_err(|e| TargetError::Proxy(e.to_string()))?)
                }
                None => builder.no_proxy(),
            };
            builder.build().map_err(|e| TargetError::Client(e.to_string()))
        };
        let tokens = match &receiver.auth {
            Auth::OAuth2(settings) => Some(TokenSource::new(settings.clone(), client(Default::default())?)),
            _ => None,
        };
        let client = client(headers)?;
        Ok(Target {
            receiver,
            client,
            tokens,
            #[cfg(test)]
            script: None,
        })
    }

    /// A target whose attempts `script` answers, with no socket.
    #[cfg(test)]
    pub fn scripted(receiver: Arc<Receiver>, script: Script) -> Result<Target, TargetError> {
        Ok(Target { script: Some(script), ..Target::new(receiver)? })
    }

    /// Posts `body` once (twice with OAuth 2.0, when the target answers 401 to
    /// a cached token). `key` is the delivery's `Idempotency-Key` and, when
    /// signing, its `webhook-id`.
    pub async fn send(&self, key: &str, body: bytes::Bytes) -> Attempt {
        #[cfg(test)]
        if let Some(script) = &self.script {
            return script(key, &body);
        }
        let started = Instant::now();
        let mut refreshed = false;
        loop {
            let token = match &self.tokens {
                Some(tokens) => match tokens.header().await {
                    Ok(token) => Some(token),
                    Err(e) => {
                        return Attempt {
                            outcome: Outcome::Retryable { reason: FailureReason::AuthError, retry_after: None },
                            status: None,
                            error: Some(e.to_string()),
                            latency: started.elapsed(),
                        }
                    }
                },
                None => None,
            };
            let attempt = self.post(key, body.clone(), token.as_ref(), started).await;
            match (&self.tokens, token) {
                (Some(tokens), Some(token)) if attempt.status == Some(401) && !refreshed => {
                    log::info!("receiver {}: target answered 401; fetching a new OAuth 2.0 token", self.receiver.name);
                    tokens.reject(&token).await;
                    refreshed = true;
                }
                _ => return attempt,
            }
        }
    }

    async fn post(&self, key: &str, body: bytes::Bytes, token: Option<&Secret>, started: Instant) -> Attempt {
        let mut request = self.client.post(self.receiver.url.clone()).header("Idempotency-Key", key);
        if let Some(token) = token {
            match HeaderValue::from_str(token.expose()) {
                Ok(mut value) => {
                    value.set_sensitive(true);
                    request = request.header(AUTHORIZATION, value);
                }
                Err(_) => {
                    return Attempt {
                        outcome: Outcome::Retryable { reason: FailureReason::AuthError, retry_after: None },
                        status: None,
                        error: Some("OAuth 2.0 token endpoint: the token is not valid in a header".into()),
                        latency: started.elapsed(),
                    }
                }
            }
        }
        if !self.receiver.signing.is_empty() {
            let timestamp = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let signature = signature(&self.receiver.signing, key, timestamp, &body);
            request = request
                .header("webhook-id", key)
                .header("webhook-timestamp", timestamp.to_string())
                .header("webhook-signature", signature);
        }
        match request.body(body).send().await {
            Ok(mut response) => {
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, SystemTime::now()));
                let mut outcome = classify(status, retry_after);
                let answer = &self.receiver.payload.answer;
                // Read a little of the body: it explains errors, a read answer
                // lets the connection be reused, and some targets answer 200
                // with an error code in it.
                let wanted = if *answer == Answer::Status { ERROR_BODY_BYTES } else { ANSWER_BYTES };
                let mut snippet = Vec::new();
                while snippet.len() < wanted {
                    match response.chunk().await {
                        Ok(Some(chunk)) => snippet.extend_from_slice(&chunk),
                        Ok(None) | Err(_) => break,
                    }
                }
                if outcome == Outcome::Delivered {
                    let said = match answer.read(&snippet) {
                        Verdict::Taken => None,
                        Verdict::RateLimited(said) => {
                            outcome = Outcome::Retryable { reason: FailureReason::RateLimited, retry_after: None };
                            Some(said)
                        }
                        Verdict::Busy(said) => {
                            outcome = Outcome::Retryable { reason: FailureReason::ServerError, retry_after: None };
                            Some(said)
                        }
                        Verdict::Refused(said) => {
                            outcome = Outcome::Permanent { reason: FailureReason::ClientError };
                            Some(said)
                        }
                    };
                    if let Some(said) = said {
                        return Attempt {
                            outcome,
                            status: Some(status),
                            error: Some(format!("HTTP {status} with an error code: {said}")),
                            latency: started.elapsed(),
                        };
                    }
                }
                let error = (outcome != Outcome::Delivered).then(|| {
                    snippet.truncate(ERROR_BODY_BYTES);
                    let text = String::from_utf8_lossy(&snippet);
                    let text = text.trim();
                    if text.is_empty() {
                        format!("HTTP {status}")
                    } else {
                        format!("HTTP {status}: {text}")
                    }
                });
                Attempt { outcome, status: Some(status), error, latency: started.elapsed() }
            }
            Err(e) => {
                let reason = if e.is_timeout() { FailureReason::Timeout } else { FailureReason::Connection };
                Attempt {
                    outcome: Outcome::Retryable { reason, retry_after: None },
                    status: None,
                    error: Some(describe(e)),
                    latency: started.elapsed(),
                }
            }
        }
    }
}

/// The Standard Webhooks `webhook-signature` value: `v1,<base64 HMAC-SHA256
/// of "{id}.{timestamp}.{body}">` per key, space-separated.
pub fn signature(keys: &[SigningKey], id: &str, timestamp: u64, body: &[u8]) -> String {
    use base64::Engine;
    let signed_prefix = format!("{id}.{timestamp}.");
    let mut out = String::new();
    for key in keys {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.expose());
        let mut context = ring::hmac::Context::with_key(&key);
        context.update(signed_prefix.as_bytes());
        context.update(body);
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str("v1,");
        out.push_str(&base64::engine::general_purpose::STANDARD.encode(context.sign().as_ref()));
    }
    out
}

/// The error and its causes, without the URL (it may carry a token).
pub(super) fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    // rustls shows our readable certificate errors (`tls::readable`) as
    // "unexpected error: ..."; they are not unexpected.
    text.replace("unexpected error: the server's certificate", "TLS: the server's certificate")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(text: &str) -> SigningKey {
        let config = format!("receivers: [{{ name: r, url: 'http://127.0.0.1:1/', signing: {{ secret: '{text}' }} }}]");
        crate::config::Config::from_yaml(&config).unwrap().receivers[0].signing[0].clone()
    }

    #[test]
    fn signature_matches_the_standard_webhooks_example() {
        // The example of the Standard Webhooks specification (and what its
        // Python library's Webhook.sign prints for it).
        let k = key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            signature(std::slice::from_ref(&k), "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        // Two keys during a rotation: both signatures, space-separated, current first.
        let other = key("whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
        let both = signature(&[k, other], "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        let parts: Vec<&str> = both.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert!(parts[1].starts_with("v1,") && parts[1] != parts[0]);
    }
}
