//! Time as the spool stores it: milliseconds since the Unix epoch.
//!
//! `now_ms` is the wall clock read once, at the first call, carried forward
//! by the monotonic clock of Tokio: retry schedules do not jump when the
//! system clock is stepped, and tests that pause Tokio's clock (the retry
//! timing tests) move the relay's notion of now along with their timers.

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    static ANCHOR: OnceLock<(u64, tokio::time::Instant)> = OnceLock::new();
    let (wall, at) = ANCHOR.get_or_init(|| (wall_ms(), tokio::time::Instant::now()));
    wall.saturating_add(
        u64::try_from(tokio::time::Instant::now().saturating_duration_since(*at).as_millis()).unwrap_or(0),
    )
}

fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)).unwrap_or(0)
}

/// Seconds since the Unix epoch, as Prometheus timestamps are.
pub fn unix_secs() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64()
}
