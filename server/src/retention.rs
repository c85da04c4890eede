//! Retention of operational events (enrollments, boot scripts, VRRP transitions, health flaps): they are pruned
//! by age, by count and by bytes, at start-up, every few minutes, and early as soon as an eighth of either
//! bound was written since the last run, so a chatty fleet, an agent flooding reports or a boot-network flood
//! cannot grow the database without bound. The audit log is never pruned (it is hash-chained and is the
//! record of what people changed), nor open alerts (they live in rows of their own, `store::alerts`). The
//! traffic history (`fleet::traffic`) is pruned in the same loop, by age per step and by rows and bytes.

use std::time::Duration;

use std::sync::Arc;

use tokio::sync::watch;

use crate::fleet::Fleet;
use crate::store::{now_ms, StoreError};

/// How often the pruning runs.
const EVERY: Duration = Duration::from_secs(600);

/// What is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Events older than this are deleted.
    pub max_age: Duration,
    /// At most this many events are kept (the newest).
    pub max_rows: i64,
    /// At most this many bytes of events are kept (the newest; messages plus a fixed overhead a row).
    pub max_bytes: i64,
}

/// Default byte bound of the events: 100,000 typical rows take about 20 MiB.
pub const DEFAULT_MAX_BYTES: i64 = 64 * 1024 * 1024;

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_age: Duration::from_secs(30 * 24 * 3600),
            max_rows: 100_000,
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }
}

/// Prunes once; the number of events deleted.
pub async fn prune(fleet: &Fleet, r: Retention) -> Result<u64, StoreError> {
    let age_ms = i64::try_from(r.max_age.as_millis()).unwrap_or(i64::MAX);
    fleet
        .prune_events(now_ms().saturating_sub(age_ms), r.max_rows, r.max_bytes)
        .await
}

/// Bounds of the traffic history (`fleet::traffic`) as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrafficBounds {
    /// At most this many rows are kept (the newest buckets).
    pub max_rows: i64,
    /// At most this many bytes (names plus a fixed overhead a row, `store::traffic::ROW_OVERHEAD_BYTES`).
    pub max_bytes: i64,
}

impl Default for TrafficBounds {
    fn default() -> Self {
        TrafficBounds {
            max_rows: crate::fleet::traffic::DEFAULT_MAX_ROWS,
            max_bytes: crate::fleet::traffic::DEFAULT_MAX_BYTES,
        }
    }
}

/// Prunes the traffic history once (10 s buckets kept an hour, 5 min buckets a week, the table within its row
/// and byte bounds); the number of rows deleted.
pub async fn prune_traffic(fleet: &Fleet, b: TrafficBounds) -> Result<u64, StoreError> {
    fleet.prune_traffic(now_ms(), b.max_rows, b.max_bytes).await
}

/// Prunes now and every `EVERY` until `stop` turns true.
pub async fn run(
    fleet: Arc<Fleet>,
    r: Retention,
    traffic: TrafficBounds,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let early = fleet.prune_early_after(r.max_rows / 8, r.max_bytes / 8);
    loop {
        match prune(&fleet, r).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "old events pruned"),
            Err(e) => tracing::warn!(error = %e, "cannot prune events"),
        }
        match prune_traffic(&fleet, traffic).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(deleted = n, "old traffic history pruned"),
            Err(e) => tracing::warn!(error = %e, "cannot prune the traffic history"),
        }
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = early.notified() => {}
            _ = stop.wait_for(|s| *s) => return Ok(()),
        }
    }
}
