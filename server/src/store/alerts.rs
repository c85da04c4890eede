//! Alerts kept in rows of their own (`alerts` table): raised by a fleet rule, open until acknowledged or
//! expired, never touched by event retention. The kind is the fleet's `AlertKind` wire name.

use serde::Serialize;

use super::{Conn, StoreError};

/// One stored alert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct AlertRow {
    pub id: i64,
    pub kind: String,
    pub node_id: Option<i64>,
    /// The node's hostname, else its MAC.
    pub node: Option<String>,
    pub cluster: Option<String>,
    pub message: String,
    pub first_at: i64,
    pub raised_at: i64,
    pub expires_at: i64,
    pub count: i64,
}

/// Raises an alert at `now`, open until `expires_at`: a new row, or, when one of the same kind for the same
/// node is still open, that row with the new message and expiry and its count bumped. The row's id.
pub async fn raise(
    conn: &mut Conn,
    kind: &str,
    node_id: Option<i64>,
    cluster: Option<&str>,
    message: &str,
    now: i64,
    expires_at: i64,
) -> Result<i64, StoreError> {
    let open: Option<i64> = sqlx::query_scalar(
        "SELECT id FROM alerts WHERE kind = $1 AND node_id IS NOT DISTINCT FROM $2 AND acked_at IS NULL AND expires_at > $3 \
         ORDER BY id DESC LIMIT 1",
    )
    .bind(kind)
    .bind(node_id)
    .bind(now)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(id) = open {
        sqlx::query(
            "UPDATE alerts SET message = $1, cluster = $2, raised_at = $3, expires_at = $4, count = count + 1 \
             WHERE id = $5",
        )
        .bind(message)
        .bind(cluster)
        .bind(now)
        .bind(expires_at)
        .bind(id)
        .execute(&mut *conn)
        .await?;
        return Ok(id);
    }
    Ok(sqlx::query_scalar(
        "INSERT INTO alerts (kind, node_id, cluster, message, first_at, raised_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $5, $6) RETURNING id",
    )
    .bind(kind)
    .bind(node_id)
    .bind(cluster)
    .bind(message)
    .bind(now)
    .bind(expires_at)
    .fetch_one(conn)
    .await?)
}

/// Open alerts at `now` (not acknowledged, not expired), oldest first, at most `limit`.
pub async fn open(conn: &mut Conn, now: i64, limit: i64) -> Result<Vec<AlertRow>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT a.id, a.kind, a.node_id, COALESCE(n.hostname, n.mac) AS node, a.cluster, a.message, \
         a.first_at, a.raised_at, a.expires_at, a.count \
         FROM alerts a LEFT JOIN nodes n ON n.id = a.node_id \
         WHERE a.acked_at IS NULL AND a.expires_at > $1 ORDER BY a.id LIMIT $2",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(conn)
    .await?)
}

/// Acknowledges an open alert; the row as it was, `None` when there is no open alert with that id.
pub async fn acknowledge(
    conn: &mut Conn,
    id: i64,
    by: &str,
    now: i64,
) -> Result<Option<AlertRow>, StoreError> {
    let row: Option<AlertRow> = sqlx::query_as(
        "SELECT a.id, a.kind, a.node_id, COALESCE(n.hostname, n.mac) AS node, a.cluster, a.message, \
         a.first_at, a.raised_at, a.expires_at, a.count \
         FROM alerts a LEFT JOIN nodes n ON n.id = a.node_id \
         WHERE a.id = $1 AND a.acked_at IS NULL AND a.expires_at > $2",
    )
    .bind(id)
    .bind(now)
    .fetch_optional(&mut *conn)
    .await?;
    if row.is_some() {
        sqlx::query("UPDATE alerts SET acked_at = $1, acked_by = $2 WHERE id = $3")
            .bind(now)
            .bind(by)
            .bind(id)
            .execute(conn)
            .await?;
    }
    Ok(row)
}

/// Deletes alerts that were closed (acknowledged or expired) before `before`; the number deleted. Open alerts
/// are never deleted.
pub async fn prune(conn: &mut Conn, before: i64) -> Result<u64, StoreError> {
    Ok(sqlx::query(
        "DELETE FROM alerts WHERE (acked_at IS NOT NULL AND acked_at < $1) OR expires_at < $1",
    )
    .bind(before)
    .execute(conn)
    .await?
    .rows_affected())
}
