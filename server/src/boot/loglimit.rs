//! Rate-limited protocol warnings: a flood of malformed or refused packets writes a few log lines per interval,
//! not one per packet (issue 20 item 6: 3,000 WARN lines in 0.7 s). The packets are still counted in `/metrics`;
//! the limiter only says whether this one may be logged, and how many were left unlogged since the last line.
//! No clock of its own: the caller passes `now`, so tests drive it.

use std::time::{Duration, Instant};

/// Lines allowed per interval, for every protocol warning of the boot services.
pub const LINES_PER_INTERVAL: u32 = 5;
/// The interval.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// A fixed-window budget of log lines.
#[derive(Debug)]
pub struct LogLimit {
    per_interval: u32,
    interval: Duration,
    window: Option<Instant>,
    used: u32,
    suppressed: u64,
}

impl Default for LogLimit {
    fn default() -> Self {
        LogLimit::new(LINES_PER_INTERVAL, INTERVAL)
    }
}

impl LogLimit {
    pub fn new(per_interval: u32, interval: Duration) -> Self {
        LogLimit {
            per_interval,
            interval,
            window: None,
            used: 0,
            suppressed: 0,
        }
    }

    /// `Some(n)` when this event may be logged, `n` being the events left unlogged before it (log it with the
    /// line, e.g. `suppressed = n`); `None` when it must not be logged.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        let fresh = self
            .window
            .is_none_or(|w| now.saturating_duration_since(w) >= self.interval);
        if fresh {
            self.window = Some(now);
            self.used = 0;
        }
        if self.used < self.per_interval {
            self.used += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed = self.suppressed.saturating_add(1);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_logs_a_few_lines_per_interval_and_counts_the_rest() {
        let mut limit = LogLimit::new(5, Duration::from_secs(10));
        let t0 = Instant::now();
        let logged: Vec<u64> = (0..3000).filter_map(|_| limit.allow(t0)).collect();
        assert_eq!(
            logged,
            vec![0; 5],
            "5 lines, nothing suppressed before them"
        );
        // Still inside the window: nothing.
        assert_eq!(limit.allow(t0 + Duration::from_secs(9)), None);
        // Next window: the first line reports what was left out (2,995 + 1).
        assert_eq!(limit.allow(t0 + Duration::from_secs(10)), Some(2996));
        assert_eq!(limit.allow(t0 + Duration::from_secs(10)), Some(0));
    }
}
