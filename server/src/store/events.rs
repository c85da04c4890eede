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
    pub message: String,
}

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

/// Deletes events older than `before` (ms) and all but the newest `keep`; the number deleted.
pub async fn prune(conn: &mut Conn, before: i64, keep: i64) -> Result<u64, StoreError> {
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
    Ok(old + over)
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
        "SELECT e.id, e.at, e.kind, e.node_id, COALESCE(n.hostname, n.mac) AS node, e.cluster, e.message \
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
    .fetch_all(conn)
    .await?)
}
