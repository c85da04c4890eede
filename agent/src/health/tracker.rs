//! The health of one probed target as a pure state machine: probe results in, state changes out.
//!
//! ```text
//! not_checked --success--> up                  (it already had traffic; no rise needed)
//! not_checked --fall failures (after warm-up)--> down
//! up          --fall consecutive failures-->    down   (flaps + 1)
//! down        --rise consecutive successes-->   up
//! ```
//! Failures during the warm-up of a target never seen before do not count: a server that is still starting
//! stays `not_checked` (and keeps its weight) until it answers or the warm-up ends.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lbfleet_proto::HealthState;
use tokio::time::Instant;

/// How a probe ended.
pub type ProbeOutcome = Result<Duration, String>;

/// rise/fall/warm-up settings of a tracker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    pub rise: u32,
    pub fall: u32,
    pub warmup: Duration,
}

/// A state change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub from: HealthState,
    pub to: HealthState,
    /// Unix seconds.
    pub at: u64,
    pub reason: Option<String>,
}

/// Counters and the last result of one target.
#[derive(Debug, Clone)]
pub struct Tracker {
    pub state: HealthState,
    /// Unix seconds of the last state change (or of the tracker's creation).
    pub since: u64,
    pub successes: u32,
    pub failures: u32,
    pub flaps: u32,
    pub last_error: Option<String>,
    pub last_latency: Option<Duration>,
    pub probes: u64,
    warmup_until: Instant,
    thresholds: Thresholds,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Tracker {
    pub fn new(now: Instant, thresholds: Thresholds) -> Tracker {
        Tracker {
            state: HealthState::NotChecked,
            since: unix_now(),
            successes: 0,
            failures: 0,
            flaps: 0,
            last_error: None,
            last_latency: None,
            probes: 0,
            warmup_until: now + thresholds.warmup,
            thresholds,
        }
    }

    /// Records one probe; returns the state change it caused, if any.
    pub fn record(&mut self, now: Instant, outcome: ProbeOutcome) -> Option<Change> {
        self.probes += 1;
        let from = self.state;
        let to = match outcome {
            Ok(latency) => {
                self.last_latency = Some(latency);
                self.failures = 0;
                self.successes = self.successes.saturating_add(1);
                match self.state {
                    HealthState::NotChecked => HealthState::Up,
                    HealthState::Down if self.successes >= self.thresholds.rise => HealthState::Up,
                    s => s,
                }
            }
            Err(error) => {
                self.last_error = Some(error);
                self.successes = 0;
                if self.state == HealthState::NotChecked && now < self.warmup_until {
                    return None;
                }
                self.failures = self.failures.saturating_add(1);
                match self.state {
                    HealthState::Up | HealthState::NotChecked
                        if self.failures >= self.thresholds.fall =>
                    {
                        HealthState::Down
                    }
                    s => s,
                }
            }
        };
        if to == from {
            return None;
        }
        if from == HealthState::Up && to == HealthState::Down {
            self.flaps += 1;
        }
        self.state = to;
        self.since = unix_now();
        Some(Change {
            from,
            to,
            at: self.since,
            reason: (to == HealthState::Down)
                .then(|| self.last_error.clone())
                .flatten(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(rise: u32, fall: u32, warmup_ms: u64) -> (Tracker, Instant) {
        let now = Instant::now();
        (
            Tracker::new(
                now,
                Thresholds {
                    rise,
                    fall,
                    warmup: Duration::from_millis(warmup_ms),
                },
            ),
            now,
        )
    }

    fn fail() -> ProbeOutcome {
        Err("connect: refused".into())
    }

    fn ok() -> ProbeOutcome {
        Ok(Duration::from_millis(1))
    }

    #[test]
    fn rise_and_fall_exactly() {
        let (mut tr, now) = t(2, 3, 0);
        assert_eq!(tr.record(now, ok()).map(|c| c.to), Some(HealthState::Up));
        assert_eq!(tr.record(now, fail()), None);
        assert_eq!(tr.record(now, fail()), None);
        let c = tr.record(now, fail());
        assert_eq!(
            c.map(|c| (c.from, c.to, c.reason)),
            Some((
                HealthState::Up,
                HealthState::Down,
                Some("connect: refused".into())
            ))
        );
        assert_eq!(tr.flaps, 1);
        // One success is not enough; a failure in between restarts the count.
        assert_eq!(tr.record(now, ok()), None);
        assert_eq!(tr.record(now, fail()), None);
        assert_eq!(tr.record(now, ok()), None);
        assert_eq!(tr.record(now, ok()).map(|c| c.to), Some(HealthState::Up));
        assert_eq!(tr.state, HealthState::Up);
        assert_eq!(tr.probes, 8);
    }

    #[test]
    fn warmup_ignores_early_failures_of_a_new_target() {
        let (mut tr, now) = t(1, 1, 5000);
        assert_eq!(tr.record(now, fail()), None);
        assert_eq!(tr.record(now + Duration::from_millis(4999), fail()), None);
        assert_eq!(tr.state, HealthState::NotChecked);
        assert_eq!(
            tr.record(now + Duration::from_millis(5000), fail())
                .map(|c| c.to),
            Some(HealthState::Down)
        );
        // A target never up is not a flap.
        assert_eq!(tr.flaps, 0);
    }
}
