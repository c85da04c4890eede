//! Enrollment windows: until when an operator expects a node to boot (and so to be given an enrollment token).

use super::{Conn, StoreError};

/// Arms (or re-arms, or with `until_ms` in the past disarms) the node's window.
pub async fn set(
    conn: &mut Conn,
    node_id: i64,
    until_ms: i64,
    armed_by: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO boot_expected (node_id, until_ms, armed_by) VALUES ($1, $2, $3) \
         ON CONFLICT (node_id) DO UPDATE SET until_ms = excluded.until_ms, armed_by = excluded.armed_by",
    )
    .bind(node_id)
    .bind(until_ms)
    .bind(armed_by)
    .execute(conn)
    .await?;
    Ok(())
}

/// The end of the node's window, if it has one (past or not).
pub async fn until(conn: &mut Conn, node_id: i64) -> Result<Option<i64>, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT until_ms FROM boot_expected WHERE node_id = $1")
            .bind(node_id)
            .fetch_optional(conn)
            .await?,
    )
}
