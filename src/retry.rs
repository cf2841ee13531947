//! Retry timing and attempt classification, kept apart: `classify` says whether an
//! attempt's outcome is worth retrying, `RetryPolicy` says when.

use std::time::{Duration, SystemTime};

pub use crate::reasons::{DeadReason, FailureReason};

/// What one attempt came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    Retryable { reason: FailureReason, retry_after: Option<Duration> },
    Permanent { reason: FailureReason },
}

/// Classifies an HTTP answer. Any 2xx is success; 408, 429 and 5xx but 501 are
/// worth another try; everything else will not get better by retrying.
pub fn classify(status: u16, retry_after: Option<Duration>) -> Outcome {
    match status {
        200..=299 => Outcome::Delivered,
        408 => Outcome::Retryable { reason: FailureReason::Timeout, retry_after: None },
        429 => Outcome::Retryable { reason: FailureReason::RateLimited, retry_after },
        501 => Outcome::Permanent { reason: FailureReason::ServerError },
        500..=599 => Outcome::Retryable { reason: FailureReason::ServerError, retry_after },
        401 | 403 => Outcome::Permanent { reason: FailureReason::AuthError },
        _ => Outcome::Permanent { reason: FailureReason::ClientError },
    }
}

/// `Retry-After` as delay-seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RetryPolicyError {
    #[error("initial_interval: must be more than 0")]
    ZeroInitial,
    #[error("multiplier: must be at least 1.0, got {0}")]
    Multiplier(f64),
    #[error("max_interval: {max:?} is less than initial_interval {initial:?}")]
    MaxBelowInitial { max: Duration, initial: Duration },
    #[error("max_elapsed: must be more than 0")]
    ZeroElapsed,
    #[error("jitter: must be between 0.0 and 1.0, got {0}")]
    Jitter(f64),
}

/// Exponential backoff, capped and jittered. Checked at construction, so a
/// policy that exists is a sane one.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    initial_interval: Duration,
    multiplier: f64,
    max_interval: Duration,
    max_elapsed: Duration,
    max_attempts: u32,
    jitter: f64,
}

/// What to do with a delivery after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Try again at this wall-clock time (milliseconds since the epoch).
    RetryAt(u64),
    Dead(DeadReason),
}

impl RetryPolicy {
    pub fn try_new(
        initial_interval: Duration,
        multiplier: f64,
        max_interval: Duration,
        max_elapsed: Duration,
        max_attempts: u32,
        jitter: f64,
    ) -> Result<RetryPolicy, RetryPolicyError> {
        if initial_interval.is_zero() {
            return Err(RetryPolicyError::ZeroInitial);
        }
        if !(multiplier >= 1.0 && multiplier.is_finite()) {
            return Err(RetryPolicyError::Multiplier(multiplier));
        }
        if max_interval < initial_interval {
            return Err(RetryPolicyError::MaxBelowInitial { max: max_interval, initial: initial_interval });
        }
        if max_elapsed.is_zero() {
            return Err(RetryPolicyError::ZeroElapsed);
        }
        if !(0.0..=1.0).contains(&jitter) {
            return Err(RetryPolicyError::Jitter(jitter));
        }
        Ok(RetryPolicy { initial_interval, multiplier, max_interval, max_elapsed, max_attempts, jitter })
    }

    pub fn max_elapsed(&self) -> Duration {
        self.max_elapsed
    }

    /// The delay before retry number `retry` (1 after the first failed attempt).
    /// `unit` in [0, 1) chooses where in the jitter band the delay falls.
    pub fn delay(&self, retry: u32, unit: f64) -> Duration {
        let exponent = retry.saturating_sub(1).min(1024) as i32;
        let max = self.max_interval.as_secs_f64();
        let base = (self.initial_interval.as_secs_f64() * self.multiplier.powi(exponent)).min(max);
        let factor = 1.0 - self.jitter + 2.0 * self.jitter * unit.clamp(0.0, 1.0);
        Duration::from_secs_f64((base * factor).min(max))
    }

    /// Decides after failed attempt number `attempts` (counting it), given when the
    /// first attempt was made and now, both in epoch milliseconds.
    pub fn after_failure(
        &self,
        attempts: u32,
        first_attempt_ms: u64,
        now_ms: u64,
        retry_after: Option<Duration>,
        unit: f64,
    ) -> Next {
        if self.max_attempts > 0 && attempts >= self.max_attempts {
            return Next::Dead(DeadReason::Expired);
        }
        let deadline = first_attempt_ms.saturating_add(millis(self.max_elapsed));
        if now_ms >= deadline {
            return Next::Dead(DeadReason::Expired);
        }
        let delay = match retry_after {
            Some(asked) => asked.min(self.max_interval),
            None => self.delay(attempts, unit),
        };
        // One last try at the deadline rather than giving up early.
        Next::RetryAt(now_ms.saturating_add(millis(delay)).min(deadline))
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy(jitter: f64) -> RetryPolicy {
        RetryPolicy::try_new(
            Duration::from_millis(500),
            2.0,
            Duration::from_secs(60),
            Duration::from_secs(3600),
            0,
            jitter,
        )
        .unwrap()
    }

    #[test]
    fn classification_follows_the_contract() {
        for s in [200, 201, 202, 204, 299] {
            assert_eq!(classify(s, None), Outcome::Delivered, "{s}");
        }
        for s in [500, 502, 503, 504, 599] {
            assert!(matches!(classify(s, None), Outcome::Retryable { reason: FailureReason::ServerError, .. }), "{s}");
        }
        assert!(matches!(classify(408, None), Outcome::Retryable { reason: FailureReason::Timeout, .. }));
        let ra = Some(Duration::from_secs(3));
        assert_eq!(classify(429, ra), Outcome::Retryable { reason: FailureReason::RateLimited, retry_after: ra });
        assert_eq!(classify(501, None), Outcome::Permanent { reason: FailureReason::ServerError });
        assert_eq!(classify(401, None), Outcome::Permanent { reason: FailureReason::AuthError });
        assert_eq!(classify(403, None), Outcome::Permanent { reason: FailureReason::AuthError });
        for s in [301, 400, 404, 410, 422] {
            assert_eq!(classify(s, None), Outcome::Permanent { reason: FailureReason::ClientError }, "{s}");
        }
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after(" 7 ", now), Some(Duration::from_secs(7)));
        let date = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(parse_retry_after(&date, now), Some(Duration::from_secs(30)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn delay_grows_exponentially_without_jitter() {
        let p = policy(0.0);
        let ms: Vec<u128> = (1..=9).map(|n| p.delay(n, 0.5).as_millis()).collect();
        assert_eq!(ms, [500, 1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000]);
        assert_eq!(p.delay(u32::MAX, 0.5), Duration::from_secs(60));
    }

    #[test]
    fn retry_after_is_capped_by_max_interval() {
        let p = policy(0.0);
        let next = p.after_failure(1, 0, 1000, Some(Duration::from_secs(3600)), 0.5);
        assert_eq!(next, Next::RetryAt(61_000));
        let next = p.after_failure(1, 0, 1000, Some(Duration::from_secs(2)), 0.5);
        assert_eq!(next, Next::RetryAt(3000));
    }

    #[test]
    fn expiry_by_elapsed_and_attempts() {
        let p = policy(0.0);
        // Last try lands on the deadline, not past it.
        assert_eq!(p.after_failure(3, 0, 3_599_900, None, 0.5), Next::RetryAt(3_600_000));
        assert_eq!(p.after_failure(3, 0, 3_600_000, None, 0.5), Next::Dead(DeadReason::Expired));
        let p = RetryPolicy::try_new(
            Duration::from_millis(10),
            2.0,
            Duration::from_secs(1),
            Duration::from_secs(60),
            3,
            0.0,
        )
        .unwrap();
        assert_eq!(p.after_failure(2, 0, 100, None, 0.5), Next::RetryAt(120));
        assert_eq!(p.after_failure(3, 0, 100, None, 0.5), Next::Dead(DeadReason::Expired));
    }

    #[test]
    fn invalid_policies_are_refused() {
        let d = Duration::from_secs;
        assert_eq!(RetryPolicy::try_new(d(0), 2.0, d(1), d(1), 0, 0.0), Err(RetryPolicyError::ZeroInitial));
        assert_eq!(RetryPolicy::try_new(d(1), 0.5, d(1), d(1), 0, 0.0), Err(RetryPolicyError::Multiplier(0.5)));
        assert!(matches!(
            RetryPolicy::try_new(d(2), 2.0, d(1), d(1), 0, 0.0),
            Err(RetryPolicyError::MaxBelowInitial { .. })
        ));
        assert_eq!(RetryPolicy::try_new(d(1), 2.0, d(1), d(0), 0, 0.0), Err(RetryPolicyError::ZeroElapsed));
        assert_eq!(RetryPolicy::try_new(d(1), 2.0, d(1), d(1), 0, 1.5), Err(RetryPolicyError::Jitter(1.5)));
    }

    proptest! {
        #[test]
        fn delay_stays_between_its_bounds(
            initial_ms in 1u64..10_000,
            multiplier in 1.0f64..10.0,
            extra_ms in 0u64..600_000,
            jitter in 0.0f64..=1.0,
            retry in 1u32..200,
            unit in 0.0f64..1.0,
        ) {
            let initial = Duration::from_millis(initial_ms);
            let max = initial + Duration::from_millis(extra_ms);
            let p = RetryPolicy::try_new(initial, multiplier, max, Duration::from_secs(60), 0, jitter).unwrap();
            let d = p.delay(retry, unit).as_secs_f64();
            let base = (initial.as_secs_f64() * multiplier.powi(retry as i32 - 1)).min(max.as_secs_f64());
            prop_assert!(d <= max.as_secs_f64() + 1e-9);
            prop_assert!(d >= base * (1.0 - jitter) - 1e-6);
            prop_assert!(d <= base * (1.0 + jitter) + 1e-6);
            prop_assert!(d >= initial.as_secs_f64() * (1.0 - jitter) - 1e-6);
        }

        #[test]
        fn next_attempt_never_passes_the_deadline(
            attempts in 1u32..100,
            first in 0u64..1_000_000,
            since in 0u64..4_000_000,
            unit in 0.0f64..1.0,
        ) {
            let p = policy(0.2);
            match p.after_failure(attempts, first, first + since, None, unit) {
                Next::RetryAt(at) => {
                    prop_assert!(at <= first + 3_600_000);
                    prop_assert!(at >= first + since);
                }
                Next::Dead(reason) => {
                    prop_assert_eq!(reason, DeadReason::Expired);
                    prop_assert!(since >= 3_600_000);
                }
            }
        }
    }
}
