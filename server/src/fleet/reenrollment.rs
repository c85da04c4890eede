//! Re-enrollment while the node's agent is alive: the sign of a takeover (someone else redeemed a token for
//! the node) or of a node that booted twice. Either way an operator should look, so it becomes an event of
//! kind `REENROLLED_ALIVE`, which the dashboard shows as an alert.

use sqlx::SqliteConnection;

use crate::store::{self, nodes::NodeRow, now_ms, StoreError};

/// Event kind recorded (and alerted on) when a node re-enrolls while its previous credential was in use.
pub const REENROLLED_ALIVE: &str = "reenrolled_while_alive";

/// How recently the previous credential must have been used for a re-enrollment to be suspicious.
pub const ALIVE_WINDOW_MS: i64 = 2 * 60 * 1000;

/// Records the event when `row` (the node, before its credential is replaced) still has a credential that was
/// used within `ALIVE_WINDOW_MS`. True when it did.
pub async fn note_if_alive(conn: &mut SqliteConnection, row: &NodeRow) -> Result<bool, StoreError> {
    let recently = row
        .last_seen_at
        .is_some_and(|t| now_ms().saturating_sub(t) <= ALIVE_WINDOW_MS);
    if !recently || !store::auth::has_node_credential(conn, row.id).await? {
        return Ok(false);
    }
    store::events::insert(
        conn,
        REENROLLED_ALIVE,
        Some(row.id),
        row.cluster.as_deref(),
        &format!(
            "node {} re-enrolled while its agent was alive (previous credential used {} s ago)",
            row.name(),
            row.last_seen_at
                .map_or(0, |t| now_ms().saturating_sub(t) / 1000)
        ),
    )
    .await?;
    tracing::warn!(
        node = row.name(),
        "node re-enrolled while its agent was alive"
    );
    Ok(true)
}

/// How long a re-enrollment alert stays on the dashboard.
pub const ALERT_FOR_MS: i64 = 24 * 3600 * 1000;

impl super::Fleet {
    /// Re-enrollments of live nodes within `ALERT_FOR_MS`, newest first (the dashboard's alerts).
    pub async fn recent_takeover_alerts(&self) -> Result<Vec<store::events::EventRow>, StoreError> {
        let mut conn = self.store().read().await?;
        store::events::list(
            &mut conn,
            &store::events::EventFilter {
                since: Some(now_ms().saturating_sub(ALERT_FOR_MS)),
                kind: Some(REENROLLED_ALIVE.into()),
                limit: 20,
                ..Default::default()
            },
        )
        .await
    }
}
