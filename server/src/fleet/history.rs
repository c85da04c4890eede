//! The fleet's records for readers: the audit log (pages, facets, chain verification), the event feed, and the
//! counts `/metrics` exports, and the pruning of old events (`retention`). Writes to both logs happen inside each
//! mutation's own transaction, elsewhere.

use std::sync::atomic::{AtomicI64, Ordering};

use serde::Serialize;

use super::{Fleet, Result};
use crate::audit::{AuditRow, Verification};
use crate::store::audit::AuditFilter;
use crate::store::events::{EventFilter, EventRow};
use crate::store::{self, StoreError};

/// Most bytes of event messages one listing returns (API and dashboard): a few hundred large rows at most.
pub const MAX_EVENTS_BYTES: i64 = 1024 * 1024;

/// One page of events.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EventPage {
    pub events: Vec<EventRow>,
    /// Rows were left out to keep the answer under `MAX_EVENTS_BYTES`; ask again with `before` = the last id.
    pub truncated: bool,
}

/// Events written since the last prune, so a flood triggers retention early (see `prune_early_after`).
#[derive(Debug, Default)]
pub(super) struct EventWrites {
    rows: AtomicI64,
    bytes: AtomicI64,
    early_rows: AtomicI64,
    early_bytes: AtomicI64,
    wake: tokio::sync::Notify,
}

impl EventWrites {
    /// Counts committed events; wakes retention when past a threshold.
    pub(super) fn add<'a>(&self, messages: impl IntoIterator<Item = &'a str>) {
        let (mut rows, mut bytes) = (0i64, 0i64);
        for m in messages {
            rows += 1;
            bytes = bytes.saturating_add(store::events::event_bytes(m));
        }
        if rows == 0 {
            return;
        }
        let rows = self.rows.fetch_add(rows, Ordering::Relaxed) + rows;
        let bytes = self.bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        let (er, eb) = (
            self.early_rows.load(Ordering::Relaxed),
            self.early_bytes.load(Ordering::Relaxed),
        );
        if (er > 0 && rows >= er) || (eb > 0 && bytes >= eb) {
            self.wake.notify_one();
        }
    }

    fn reset(&self) {
        self.rows.store(0, Ordering::Relaxed);
        self.bytes.store(0, Ordering::Relaxed);
    }
}

/// Sizes of the fleet, for `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetCounts {
    /// Nodes by lifecycle state (wire name, count); states without nodes are absent.
    pub nodes_by_state: Vec<(String, i64)>,
    pub clusters: i64,
    pub audit_rows: i64,
}

impl Fleet {
    /// One page of the audit log, newest first.
    pub async fn audit_page(&self, filter: &AuditFilter) -> Result<Vec<AuditRow>> {
        let mut conn = self.store.read().await?;
        Ok(store::audit::list(&mut conn, filter).await?)
    }

    /// Walks the whole audit chain and checks every link and the stored head.
    pub async fn verify_audit(&self) -> Result<Verification> {
        let mut conn = self.store.read().await?;
        Ok(store::audit::verify(&mut conn).await?)
    }

    /// The hash of the newest audit row (it changes with every appended row).
    pub async fn audit_head_hash(&self) -> Result<String> {
        let mut conn = self.store.read().await?;
        Ok(store::audit::head(&mut conn).await?.1)
    }

    /// Every actor and every action that occur in the audit log (for filter menus).
    pub async fn audit_facets(&self) -> Result<(Vec<String>, Vec<String>)> {
        let mut conn = self.store.read().await?;
        Ok(store::audit::actors_and_actions(&mut conn).await?)
    }

    /// A read connection held by one streamed audit export (`audit_export`), which reads the rows through
    /// `store::audit::stream` from one snapshot.
    pub async fn audit_export_reader(&self) -> Result<store::ReadConn> {
        Ok(self.store.export_read().await?)
    }

    /// Events (VRRP changes, health flips, enrollments, ...), newest first, within `MAX_EVENTS_BYTES`.
    pub async fn events(&self, filter: &EventFilter) -> Result<Vec<EventRow>> {
        Ok(self.events_page(filter).await?.events)
    }

    /// Events, newest first: at most `filter.limit` rows, each message cut to
    /// `store::events::MAX_LISTED_MESSAGE_CHARS`, and no more rows once their messages pass `MAX_EVENTS_BYTES`
    /// (`truncated` then says so; page on with `before`), so an answer stays small whatever was stored.
    pub async fn events_page(&self, filter: &EventFilter) -> Result<EventPage> {
        let mut conn = self.store.read().await?;
        let mut events = store::events::list(&mut conn, filter).await?;
        drop(conn);
        let mut total = 0i64;
        let mut keep = events.len();
        for (i, e) in events.iter().enumerate() {
            total = total.saturating_add(store::events::event_bytes(&e.message));
            if total > MAX_EVENTS_BYTES && i > 0 {
                keep = i;
                break;
            }
        }
        let truncated = keep < events.len();
        events.truncate(keep);
        Ok(EventPage { events, truncated })
    }

    /// Deletes events older than `before` (ms since the epoch), all but the newest `keep`, and the oldest
    /// past `keep_bytes`; the number deleted. The audit log is never pruned, nor open alerts (closed ones
    /// older than `before` go).
    pub async fn prune_events(
        &self,
        before: i64,
        keep: i64,
        keep_bytes: i64,
    ) -> Result<u64, StoreError> {
        self.event_writes.reset();
        let mut tx = self.store.begin().await?;
        let n = store::events::prune(&mut tx, before, keep, keep_bytes).await?;
        store::alerts::prune(&mut tx, before).await?;
        store::commit(tx).await?;
        if n > 0 {
            self.store.reclaim(&["events", "alerts"]).await?;
        }
        Ok(n)
    }

    /// The events' size as the byte bound counts it (messages plus a fixed overhead a row).
    pub async fn event_bytes(&self) -> Result<i64, StoreError> {
        let mut conn = self.store.read().await?;
        store::events::total_bytes(&mut conn).await
    }

    /// Asks for a prune as soon as `rows` events or `bytes` of them were written since the last one (0: never
    /// early), and returns what to wait on: retention runs early under a flood instead of every few minutes.
    pub fn prune_early_after(&self, rows: i64, bytes: i64) -> &tokio::sync::Notify {
        self.event_writes.early_rows.store(rows, Ordering::Relaxed);
        self.event_writes
            .early_bytes
            .store(bytes, Ordering::Relaxed);
        &self.event_writes.wake
    }

    /// Node, cluster and audit-row counts.
    pub async fn counts(&self) -> Result<FleetCounts> {
        let mut conn = self.store.read().await?;
        Ok(FleetCounts {
            nodes_by_state: store::nodes::count_by_state(&mut conn).await?,
            clusters: store::clusters::count(&mut conn).await?,
            audit_rows: store::audit::count(&mut conn).await?,
        })
    }

    /// Answers only if the database answers (liveness).
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.store.read().await?;
        store::clusters::count(&mut conn).await?;
        Ok(())
    }

    /// Answers only if the database takes a write (`Store::probe_write`).
    pub async fn ping_write(&self) -> Result<(), StoreError> {
        self.store.probe_write().await
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{admin, fleet, spec};
    use crate::store::audit::AuditFilter;
    use crate::store::events::EventFilter;

    #[tokio::test]
    async fn records_show_changes_and_the_chain_verifies() {
        let (f, _dir) = fleet().await;
        f.put_cluster(&admin(), "ext", &spec(51, "198.18.0.10"))
            .await
            .expect("put");
        f.discover("52:54:00:00:00:01").await.expect("discover");
        let rows = f
            .audit_page(&AuditFilter {
                limit: 10,
                ..AuditFilter::default()
            })
            .await
            .expect("audit");
        let actions: Vec<&str> = rows.iter().map(|r| r.action.as_str()).collect();
        assert_eq!(actions, ["node.discover", "cluster.create"]);
        assert!(f.verify_audit().await.expect("verify").ok);
        let (actors, _) = f.audit_facets().await.expect("facets");
        assert!(actors.contains(&"admin".to_owned()));
        let events = f
            .events(&EventFilter {
                limit: 10,
                ..EventFilter::default()
            })
            .await
            .expect("events");
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].kind.as_str(), "discovered");
        let c = f.counts().await.expect("counts");
        assert_eq!(c.clusters, 1);
        assert_eq!(c.nodes_by_state, vec![("discovered".to_owned(), 1)]);
        assert_eq!(c.audit_rows, 2);
        f.ping().await.expect("ping");
    }
}
