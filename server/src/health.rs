//! `/healthz`'s database write probe: a no-op write committed on the writer connection (`Store::probe_write`),
//! so a database that answers reads but takes no write (full or read-only disk, a lock held elsewhere) makes
//! the server unhealthy. One probe runs at a time, its result is reused for `REUSE_FOR` (a flood of health
//! checks costs one commit a second at most), and a check waits `PROBE_TIMEOUT` at most.

use std::time::{Duration, Instant};

use crate::fleet::Fleet;

/// Longest a health check waits for the write probe (a stuck writer is unhealthy).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a probe's result answers later checks.
pub const REUSE_FOR: Duration = Duration::from_secs(1);

/// The last probe's time and outcome (an error is the reason given to the caller).
#[derive(Debug, Default)]
pub struct WriteProbe {
    last: tokio::sync::Mutex<Option<(Instant, Result<(), String>)>>,
}

impl WriteProbe {
    /// `Err(reason)` when the database did not take a write within `PROBE_TIMEOUT`.
    pub async fn check(&self, fleet: &Fleet) -> Result<(), String> {
        let probe = async {
            let mut last = self.last.lock().await;
            if let Some((at, outcome)) = &*last {
                if at.elapsed() < REUSE_FOR {
                    return outcome.clone();
                }
            }
            let outcome = match tokio::time::timeout(PROBE_TIMEOUT, fleet.ping_write()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(format!("the database cannot write: {e}")),
                Err(_) => Err(format!(
                    "the database did not take a write within {} s",
                    PROBE_TIMEOUT.as_secs()
                )),
            };
            if let Err(reason) = &outcome {
                // At most once per REUSE_FOR: later checks reuse this outcome.
                tracing::warn!(reason, "health check failed");
            }
            *last = Some((Instant::now(), outcome.clone()));
            outcome
        };
        match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
            Ok(outcome) => outcome,
            Err(_) => Err(format!(
                "the database did not take a write within {} s",
                PROBE_TIMEOUT.as_secs()
            )),
        }
    }
}
