//! The fleet's records for readers: the audit log (pages, facets, chain verification), the event feed, and the
//! counts `/metrics` exports, and the pruning of old events (`retention`). Writes to both logs happen inside each
//! mutation's own transaction, elsewhere.

use super::{Fleet, Result};
use crate::audit::{AuditRow, Verification};
use crate::store::audit::AuditFilter;
use crate::store::events::{EventFilter, EventRow};
use crate::store::{self, StoreError};

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

    /// Events (VRRP changes, health flips, enrollments, ...), newest first.
    pub async fn events(&self, filter: &EventFilter) -> Result<Vec<EventRow>> {
        let mut conn = self.store.read().await?;
        Ok(store::events::list(&mut conn, filter).await?)
    }

    /// Deletes events older than `before` (ms since the epoch) and all but the newest `keep`; the number
    /// deleted. The audit log is never pruned.
    pub async fn prune_events(&self, before: i64, keep: i64) -> Result<u64, StoreError> {
        let mut tx = self.store.begin().await?;
        let n = store::events::prune(&mut tx, before, keep).await?;
        store::commit(tx).await?;
        Ok(n)
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
