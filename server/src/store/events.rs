//! Operational events (enrollments, VRRP transitions, health flaps, state changes).

use lbfleet_proto::wire_enum;
use serde::Serialize;

use super::{now_ms, Conn, StoreError};

wire_enum!(
    /// What an event is about (the feed's filter).
    EventKind {
        Discovered => "discovered", Enrolled => "enrolled", Serving => "serving", Switchover => "switchover",
        Vrrp => "vrrp", Health => "health", AgentError => "agent_error", BootScript => "boot_script",
        ReenrolledWhileAlive => "reenrolled_while_alive", BootNotExpected => "boot_not_expected",
        Server => "server", Reboot => "reboot", Rollout => "rollout",
    }
);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct EventRow {
    pub id: i64,
    pub at: i64,
    #[sqlx(try_from = "String")]
    pub kind: EventKind,
    pub node_id: Option<i64>,
    pub node: Option<String>,
    pub cluster: Option<String>,
    /// At most `MAX_LISTED_MESSAGE_CHARS` characters of the stored message (see `message_cut`).
    pub message: String,
    /// The stored message was longer and is cut here (rows written before reports were bounded).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    #[sqlx(try_from = "super::Flag")]
    pub message_cut: bool,
}

/// Longest message a listing returns, in characters; longer ones are cut and marked (`message_cut`).
pub const MAX_LISTED_MESSAGE_CHARS: i64 = 2048;

pub async fn insert(
    conn: &mut Conn,
    kind: EventKind,
    node_id: Option<i64>,
    cluster: Option<&str>,
    message: &str,
) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar("INSERT INTO events (at, kind, node_id, cluster, message) VALUES ($1, $2, $3, $4, $5) RETURNING id")
        .bind(now_ms())
        .bind(kind.as_str())
        .bind(node_id)
        .bind(cluster)
        .bind(message)
        .fetch_one(conn)
        .await?)
}

/// What one event row is counted as, besides its message, for the byte bound (time, kind, node, cluster, id
/// and SQLite's own overhead, roughly).
pub const ROW_OVERHEAD_BYTES: i64 = 64;

/// The bytes an event with this message counts for.
pub fn event_bytes(message: &str) -> i64 {
    i64::try_from(message.len())
        .unwrap_or(i64::MAX)
        .saturating_add(ROW_OVERHEAD_BYTES)
}

/// Deletes events older than `before` (ms), all but the newest `keep`, and the oldest past `keep_bytes`
/// (messages plus `ROW_OVERHEAD_BYTES` a row, counted from the newest); the number deleted.
pub async fn prune(
    conn: &mut Conn,
    before: i64,
    keep: i64,
    keep_bytes: i64,
) -> Result<u64, StoreError> {
    let old = sqlx::query("DELETE FROM events WHERE at < $1")
        .bind(before)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    let over = sqlx::query(
        "DELETE FROM events WHERE id <= (SELECT id FROM events ORDER BY id DESC LIMIT 1 OFFSET $1)",
    )
    .bind(keep.max(0))
    .execute(&mut *conn)
    .await?
    .rows_affected();
    // The newest row whose running total (newest first) passes the budget, and everything older, goes.
    let heavy = sqlx::query(
        "DELETE FROM events WHERE id <= (SELECT id FROM (SELECT id, SUM(octet_length(message) + $1) \
         OVER (ORDER BY id DESC ROWS UNBOUNDED PRECEDING) AS total FROM events) AS running WHERE total > $2 \
         ORDER BY id DESC LIMIT 1)",
    )
    .bind(ROW_OVERHEAD_BYTES)
    .bind(keep_bytes.max(0))
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(old + over + heavy)
}

/// The events' size as the byte bound counts it.
pub async fn total_bytes(conn: &mut Conn) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT CAST(COALESCE(SUM(octet_length(message) + $1), 0) AS BIGINT) FROM events",
    )
    .bind(ROW_OVERHEAD_BYTES)
    .fetch_one(conn)
    .await?)
}

#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub since: Option<i64>,
    pub kind: Option<EventKind>,
    pub node_id: Option<i64>,
    pub cluster: Option<String>,
    pub before_id: Option<i64>,
    pub limit: i64,
}

pub async fn list(conn: &mut Conn, f: &EventFilter) -> Result<Vec<EventRow>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT e.id, e.at, e.kind, e.node_id, COALESCE(n.hostname, n.mac) AS node, e.cluster, \
         substr(e.message, 1, CAST($7 AS INTEGER)) AS message, \
         CASE WHEN length(e.message) > $7 THEN 1 ELSE 0 END AS message_cut \
         FROM events e LEFT JOIN nodes n ON n.id = e.node_id \
         WHERE ($1 IS NULL OR e.at >= $1) AND ($2 IS NULL OR e.kind = $2) AND ($3 IS NULL OR e.node_id = $3) \
         AND ($4 IS NULL OR e.cluster = $4) AND ($5 IS NULL OR e.id < $5) ORDER BY e.id DESC LIMIT $6",
    )
    .bind(f.since)
    .bind(f.kind.map(EventKind::as_str))
    .bind(f.node_id)
    .bind(&f.cluster)
    .bind(f.before_id)
    .bind(f.limit)
    .bind(MAX_LISTED_MESSAGE_CHARS)
    .fetch_all(conn)
    .await?)
}
