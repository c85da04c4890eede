//! Boot trust settings per node: enrollment windows (until when an operator expects the node to boot, and so
//! to be given an enrollment token) and relay circuit-id pins (option 82).

use super::{Conn, StoreError};

/// Arms (or re-arms, or with `until_ms` in the past disarms) the node's window.
pub async fn set_expected(
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
pub async fn expected_until(conn: &mut Conn, node_id: i64) -> Result<Option<i64>, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT until_ms FROM boot_expected WHERE node_id = $1")
            .bind(node_id)
            .fetch_optional(conn)
            .await?,
    )
}

/// Pins the node's DHCP requests to a relay circuit-id, or with `None` unpins them.
pub async fn set_circuit_pin(
    conn: &mut Conn,
    node_id: i64,
    circuit_id: Option<&[u8]>,
) -> Result<(), StoreError> {
    match circuit_id {
        Some(id) => {
            sqlx::query(
                "INSERT INTO dhcp_circuit_pins (node_id, circuit_id) VALUES ($1, $2) \
                 ON CONFLICT (node_id) DO UPDATE SET circuit_id = excluded.circuit_id",
            )
            .bind(node_id)
            .bind(id)
            .execute(conn)
            .await?;
        }
        None => {
            sqlx::query("DELETE FROM dhcp_circuit_pins WHERE node_id = $1")
                .bind(node_id)
                .execute(conn)
                .await?;
        }
    }
    Ok(())
}

/// The node's pinned circuit-id, if any.
pub async fn circuit_pin(conn: &mut Conn, node_id: i64) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT circuit_id FROM dhcp_circuit_pins WHERE node_id = $1")
            .bind(node_id)
            .fetch_optional(conn)
            .await?,
    )
}

/// (MAC, circuit-id) of every pinned node that is not retired or rejected.
pub async fn circuit_pins(conn: &mut Conn) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT n.mac, p.circuit_id FROM dhcp_circuit_pins p JOIN nodes n ON n.id = p.node_id \
         WHERE n.state NOT IN ('retired', 'rejected') ORDER BY n.mac",
    )
    .fetch_all(conn)
    .await?)
}
