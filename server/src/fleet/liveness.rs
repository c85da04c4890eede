//! Node liveness within seconds: agents call `POST /api/v1/agent/heartbeat` every `node_heartbeat_interval`
//! (1 s); a node silent for `node_silent_after` (3 s) is unreachable. A heartbeat costs the server a credential
//! check (cached, `credentials`) and a map insert, nothing else: no audit row, no event, no write of its own. The beats are kept in
//! memory (`Liveness`) and written to `nodes.last_seen_at` once per interval for every node heard since, in one
//! statement per `FLUSH_BATCH` nodes, so 1,000 agents cost one small write transaction a second, and every
//! server on the same PostgreSQL sees a node's liveness at most one interval late. Each server reads liveness as
//! the newer of the database's value and its own beats, and its `run` task wakes the dashboards when a node goes
//! silent or comes back (that changes what the overview says, yet no request changed anything).

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;

use super::{Fleet, NodeView};
use crate::store::{self, now_ms};

/// Default interval between an agent's heartbeats.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// Default silence after which a node counts as unreachable.
pub const DEFAULT_SILENT_AFTER: Duration = Duration::from_secs(3);
/// Nodes written per statement when the beats are flushed (two bound values each).
const FLUSH_BATCH: usize = 500;

/// A node's last beat as this server heard it.
#[derive(Debug, Clone, Copy)]
struct Beat {
    at: i64,
    /// Already in the database.
    flushed: bool,
}

/// The heartbeats this server received, and how they are judged.
#[derive(Debug)]
pub struct Liveness {
    interval: Duration,
    silent_after_ms: i64,
    beats: Mutex<HashMap<i64, Beat>>,
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness::new(DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_SILENT_AFTER)
    }
}

impl Liveness {
    pub fn new(interval: Duration, silent_after: Duration) -> Self {
        Liveness {
            interval,
            silent_after_ms: i64::try_from(silent_after.as_millis()).unwrap_or(i64::MAX),
            beats: Mutex::new(HashMap::new()),
        }
    }

    /// How often agents should beat (told to them in each answer).
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Silence (ms) after which a node counts as unreachable.
    pub fn silent_after_ms(&self) -> i64 {
        self.silent_after_ms
    }

    fn beats(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Beat>> {
        self.beats.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a beat of `node` at `at` (ms since the epoch).
    pub fn beat(&self, node: i64, at: i64) {
        self.beats().insert(node, Beat { at, flushed: false });
    }

    /// When `node` was last heard: the newer of the database's `stored` value and this server's beats.
    pub fn last_seen(&self, node: i64, stored: Option<i64>) -> Option<i64> {
        let mine = self.beats().get(&node).map(|b| b.at);
        stored.max(mine)
    }

    /// Whether a node last heard at `last_seen` counts as reporting at `now`.
    pub fn reporting(&self, now: i64, last_seen: Option<i64>) -> bool {
        last_seen.is_some_and(|t| now.saturating_sub(t) <= self.silent_after_ms)
    }

    /// The beats not yet in the database, marked as written (put back with `unflushed` if the write fails).
    fn take_unflushed(&self) -> Vec<(i64, i64)> {
        let mut beats = self.beats();
        let mut out = Vec::new();
        for (id, b) in beats.iter_mut().filter(|(_, b)| !b.flushed) {
            b.flushed = true;
            out.push((*id, b.at));
        }
        out
    }

    /// Marks beats as not written again (a failed flush), unless a newer beat came meanwhile.
    fn unflushed(&self, failed: &[(i64, i64)]) {
        let mut beats = self.beats();
        for (id, at) in failed {
            if let Some(b) = beats.get_mut(id).filter(|b| b.at == *at) {
                b.flushed = false;
            }
        }
    }

    /// Forgets beats far older than the silence limit (already written; a node deleted since leaves no entry).
    fn prune(&self, now: i64) {
        let keep = self.silent_after_ms.saturating_mul(10).max(60_000);
        self.beats()
            .retain(|_, b| !b.flushed || now.saturating_sub(b.at) <= keep);
    }
}

impl Fleet {
    /// Liveness settings and this server's beats.
    pub fn liveness(&self) -> &Liveness {
        &self.liveness
    }

    /// The heartbeat of whoever holds node credential `credential` (remembered in memory, written with the
    /// others at the next flush): its node, or `None` for a credential that is unknown or revoked. The
    /// credential is checked like every agent call's (`authenticate_node`: cached, forgotten on revocation).
    pub async fn heartbeat_with(&self, credential: &str) -> super::Result<Option<i64>> {
        let Some(node) = self.authenticate_node(credential).await? else {
            return Ok(None);
        };
        self.liveness.beat(node, now_ms());
        Ok(Some(node))
    }

    /// A node view with this server's beats folded in: `last_seen_at` the newest known, `reporting` set.
    pub(super) fn with_liveness(&self, mut v: NodeView, now: i64) -> NodeView {
        v.last_seen_at = self.liveness.last_seen(v.id, v.last_seen_at);
        v.reporting = self.liveness.reporting(now, v.last_seen_at);
        v
    }

    /// Writes the beats heard since the last flush to `nodes.last_seen_at` (never moving it back); the number
    /// of nodes written.
    pub async fn flush_heartbeats(&self) -> Result<usize, store::StoreError> {
        let beats = self.liveness.take_unflushed();
        if beats.is_empty() {
            return Ok(0);
        }
        let written = async {
            let mut tx = self.store.begin().await?;
            for chunk in beats.chunks(FLUSH_BATCH) {
                store::nodes::record_heartbeats(&mut tx, chunk).await?;
            }
            store::commit(tx).await
        }
        .await;
        match written {
            Ok(()) => Ok(beats.len()),
            Err(e) => {
                self.liveness.unflushed(&beats);
                Err(e)
            }
        }
    }

    /// The assigned nodes that are not reporting now (by id), as this server judges them.
    async fn silent_nodes(&self, now: i64) -> Result<BTreeSet<i64>, store::StoreError> {
        let mut conn = self.store.read().await?;
        let seen = store::nodes::assigned_last_seen(&mut conn).await?;
        drop(conn);
        Ok(seen
            .into_iter()
            .filter(|(id, at)| {
                !self
                    .liveness
                    .reporting(now, self.liveness.last_seen(*id, *at))
            })
            .map(|(id, _)| id)
            .collect())
    }
}

/// Every heartbeat interval until `stop`: writes the beats heard since the last round, and wakes the dashboards
/// here when the set of silent nodes changed (a node went silent or came back).
pub async fn run(
    fleet: std::sync::Arc<Fleet>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let every = fleet.liveness.interval();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut silent: Option<BTreeSet<i64>> = None;
    let mut flush_failing = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        match fleet.flush_heartbeats().await {
            Ok(_) if flush_failing => {
                tracing::info!("node heartbeats written again");
                flush_failing = false;
            }
            Ok(_) => {}
            // Once per outage (the database down would make it every interval).
            Err(e) if !flush_failing => {
                tracing::warn!(error = %e, "cannot write node heartbeats; retrying every interval");
                flush_failing = true;
            }
            Err(e) => tracing::debug!(error = %e, "cannot write node heartbeats"),
        }
        let now = now_ms();
        fleet.liveness.prune(now);
        fleet.credentials.prune(now);
        match fleet.silent_nodes(now).await {
            Ok(now_silent) => {
                if let Some(before) = &silent {
                    if *before != now_silent {
                        for id in now_silent.difference(before) {
                            tracing::info!(node_id = id, "node stopped reporting");
                        }
                        for id in before.difference(&now_silent) {
                            tracing::info!(node_id = id, "node reporting again");
                        }
                        fleet.notifier.fleet_changed_from_peer();
                    }
                }
                silent = Some(now_silent);
            }
            Err(e) => tracing::debug!(error = %e, "cannot read node liveness"),
        }
    }
    // Beats heard since the last round are not lost to a restart.
    if let Err(e) = fleet.flush_heartbeats().await {
        tracing::debug!(error = %e, "cannot write the last node heartbeats");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beats_are_the_newer_of_memory_and_database_and_flush_once() {
        let l = Liveness::new(Duration::from_secs(1), Duration::from_secs(3));
        assert_eq!(l.last_seen(1, Some(5_000)), Some(5_000));
        l.beat(1, 7_000);
        assert_eq!(l.last_seen(1, Some(5_000)), Some(7_000));
        assert_eq!(l.last_seen(1, Some(9_000)), Some(9_000));
        assert!(l.reporting(10_000, Some(7_000)));
        assert!(!l.reporting(10_001, Some(7_000)));
        assert!(!l.reporting(10_000, None));
        assert_eq!(l.take_unflushed(), vec![(1, 7_000)]);
        assert!(l.take_unflushed().is_empty());
        // A failed write puts the beat back, unless a newer one came meanwhile.
        l.unflushed(&[(1, 7_000)]);
        assert_eq!(l.take_unflushed(), vec![(1, 7_000)]);
        l.beat(1, 8_000);
        l.unflushed(&[(1, 7_000)]);
        assert_eq!(l.take_unflushed(), vec![(1, 8_000)]);
        // Written beats are forgotten once long past.
        l.prune(8_000 + 60_001);
        assert_eq!(l.last_seen(1, None), None);
    }
}
