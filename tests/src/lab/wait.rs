//! Deadline polling: wait for an observable condition (a console line, an API state), never a fixed sleep.

use std::time::Duration;

use super::LabError;

/// How often conditions are polled.
pub const POLL: Duration = Duration::from_millis(100);

/// Polls `check` every [`POLL`] until it returns `Some`, or fails with `Timeout` after `timeout`
/// ([`crate::wait::until`] with the lab's poll and error type).
pub fn until<T>(
    what: &str,
    timeout: Duration,
    check: impl FnMut() -> Option<T>,
) -> Result<T, LabError> {
    crate::wait::until(what, timeout, POLL, check).map_err(|e| LabError::Timeout {
        what: e.what,
        seconds: e.waited.as_secs_f64(),
    })
}

/// The load factor for deadlines: `LBFLEET_LAB_SLOWDOWN` (default 1) multiplies every timeout, for machines
/// busier than the two-core CI box.
pub fn scaled(d: Duration) -> Duration {
    let factor = std::env::var("LBFLEET_LAB_SLOWDOWN")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|f| *f >= 1.0)
        .unwrap_or(1.0);
    d.mul_f64(factor)
}

/// The wall clock in milliseconds since the epoch, as the API's timestamps (`last_seen_at`, `at`) count.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
