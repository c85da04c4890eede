//! Deadline polling: wait for an observable condition (a console line, an API state), never a fixed sleep.

use std::time::{Duration, Instant};

use super::LabError;

/// How often conditions are polled.
pub const POLL: Duration = Duration::from_millis(100);

/// Polls `check` every [`POLL`] until it returns `Some`, or fails with `Timeout` after `timeout`.
pub fn until<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Result<T, LabError> {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        if start.elapsed() >= timeout {
            return Err(LabError::Timeout {
                what: what.to_owned(),
                seconds: start.elapsed().as_secs_f64(),
            });
        }
        std::thread::sleep(POLL);
    }
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
