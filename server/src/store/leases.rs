//! DHCP leases: the durable copy of the DHCP server's in-memory lease table.

use sqlx::SqliteConnection;

use super::{now_ms, StoreError};

/// One stored lease row.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct LeaseRow {
    pub address: String,
    pub mac: String,
    pub state: String,
    pub expires_at: i64,
}

/// Leases still worth restoring (bound or declined, not yet expired).
pub async fn active(conn: &mut SqliteConnection, now: i64) -> Result<Vec<LeaseRow>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT address, mac, state, expires_at FROM leases WHERE expires_at > $1 AND state IN ('bound', 'declined')",
    )
    .bind(now)
    .fetch_all(conn)
    .await?)
}

pub async fn upsert(conn: &mut SqliteConnection, row: &LeaseRow) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO leases (address, mac, state, expires_at, updated_at) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (address) DO UPDATE SET mac = excluded.mac, state = excluded.state, \
         expires_at = excluded.expires_at, updated_at = excluded.updated_at",
    )
    .bind(&row.address)
    .bind(&row.mac)
    .bind(&row.state)
    .bind(row.expires_at)
    .bind(now_ms())
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn remove(
    conn: &mut SqliteConnection,
    address: &str,
    mac: &str,
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM leases WHERE address = $1 AND mac = $2")
        .bind(address)
        .bind(mac)
        .execute(conn)
        .await?;
    Ok(())
}

/// Registered nodes with a fixed address: (mac, address, hostname).
pub async fn reservations(
    conn: &mut SqliteConnection,
) -> Result<Vec<(String, String, Option<String>)>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT mac, reserved_address, hostname FROM nodes WHERE reserved_address IS NOT NULL \
         AND state NOT IN ('retired', 'rejected')",
    )
    .fetch_all(conn)
    .await?)
}

/// Whether a MAC is a node that must not be served (retired or rejected).
pub async fn refused_macs(conn: &mut SqliteConnection) -> Result<Vec<String>, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT mac FROM nodes WHERE state IN ('retired', 'rejected')")
            .fetch_all(conn)
            .await?,
    )
}
