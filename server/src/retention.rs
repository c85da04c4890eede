//! Retention of operational events (enrollments, boot scripts, VRRP transitions, health flaps): they are pruned
//! by age and by count, at start-up and every few minutes, so a chatty fleet or a boot-network flood cannot
//! grow the database without bound. The audit log is never pruned (it is hash-chained and is the record of
//! what people changed).

use std::time::Duration;

use tokio::sync::watch;

use crate::store::{self, now_ms, Store, StoreError};

/// How often the pruning runs.
const EVERY: Duration = Duration::from_secs(600);

/// What is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Events older than this are deleted.
    pub max_age: Duration,
    /// At most this many events are kept (the newest).
    pub max_rows: i64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_age: Duration::from_secs(30 * 24 * 3600),
            max_rows: 100_000,
        }
    }
}

/// Prunes once; the number of events deleted.
pub async fn prune(store: &Store, r: Retention) -> Result<u64, StoreError> {
    let age_ms = i64::try_from(r.max_age.as_millis()).unwrap_or(i64::MAX);
    let mut tx = store.begin().await?;
    let n = store::events::prune(&mut tx, now_ms().saturating_sub(age_ms), r.max_rows).await?;
    tx.commit().await?;
    Ok(n)
}

/// Prunes now and every `EVERY` until `stop` turns true.
pub async fn run(
    store: Store,
    r: Retention,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    loop {
        match prune(&store, r).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "old events pruned"),
            Err(e) => tracing::warn!(error = %e, "cannot prune events"),
        }
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = stop.wait_for(|s| *s) => return Ok(()),
        }
    }
}
