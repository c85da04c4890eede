//! DHCP leadership per boot network (`boot::dhcp::leader`): the compare-and-set statements of the election,
//! and the fence every lease write runs in its own transaction.
//!
//! Every statement that decides is one `UPDATE`/`INSERT` with its condition in `WHERE`: on SQLite the writer
//! lock serializes them; on PostgreSQL the row lock does (a concurrent `UPDATE` waits and re-checks its `WHERE`
//! against the committed row), so two servers never both win.

use crate::store::{Conn, StoreError};

/// One boot network's leadership row. `holder` is empty after a graceful release.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct LeaderRow {
    pub network: String,
    pub holder: String,
    pub holder_address: String,
    pub epoch: i64,
    pub seq: i64,
    pub ttl_ms: i64,
    pub renewed_at: i64,
}

/// Who holds `network`, if anyone ever did.
pub async fn get(conn: &mut Conn, network: &str) -> Result<Option<LeaderRow>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT network, holder, holder_address, epoch, seq, ttl_ms, renewed_at FROM dhcp_leaders \
         WHERE network = $1",
    )
    .bind(network)
    .fetch_optional(conn)
    .await?)
}

/// Every network's row (for `/metrics` and the dashboard).
pub async fn all(conn: &mut Conn) -> Result<Vec<LeaderRow>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT network, holder, holder_address, epoch, seq, ttl_ms, renewed_at FROM dhcp_leaders \
         ORDER BY network",
    )
    .fetch_all(conn)
    .await?)
}

/// Claims a network nobody ever held: the new epoch (1), or `None` when a row exists already.
pub async fn claim_vacant(
    conn: &mut Conn,
    network: &str,
    holder: &str,
    holder_address: &str,
    ttl_ms: i64,
    now: i64,
) -> Result<Option<i64>, StoreError> {
    Ok(sqlx::query_scalar(
        "INSERT INTO dhcp_leaders (network, holder, holder_address, epoch, seq, ttl_ms, renewed_at) \
         VALUES ($1, $2, $3, 1, 1, $4, $5) ON CONFLICT (network) DO NOTHING RETURNING epoch",
    )
    .bind(network)
    .bind(holder)
    .bind(holder_address)
    .bind(ttl_ms)
    .bind(now)
    .fetch_optional(conn)
    .await?)
}

/// Takes `network` over from `(expected_holder, expected_seq)`, the row as the caller last saw it: the new
/// epoch, or `None` when the row moved on meanwhile (the holder renewed, or another server took it).
#[allow(clippy::too_many_arguments)]
pub async fn take_over(
    conn: &mut Conn,
    network: &str,
    holder: &str,
    holder_address: &str,
    expected_holder: &str,
    expected_seq: i64,
    ttl_ms: i64,
    now: i64,
) -> Result<Option<i64>, StoreError> {
    Ok(sqlx::query_scalar(
        "UPDATE dhcp_leaders SET holder = $2, holder_address = $3, epoch = epoch + 1, seq = seq + 1, \
         ttl_ms = $6, renewed_at = $7 WHERE network = $1 AND holder = $4 AND seq = $5 RETURNING epoch",
    )
    .bind(network)
    .bind(holder)
    .bind(holder_address)
    .bind(expected_holder)
    .bind(expected_seq)
    .bind(ttl_ms)
    .bind(now)
    .fetch_optional(conn)
    .await?)
}

/// Renews the holder's term: false when `(holder, epoch)` no longer holds `network` (it was taken over).
pub async fn renew(
    conn: &mut Conn,
    network: &str,
    holder: &str,
    epoch: i64,
    now: i64,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE dhcp_leaders SET seq = seq + 1, renewed_at = $4 \
         WHERE network = $1 AND holder = $2 AND epoch = $3",
    )
    .bind(network)
    .bind(holder)
    .bind(epoch)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Gives `network` up at once (graceful shutdown): a standby takes it over without waiting for a TTL.
pub async fn release(
    conn: &mut Conn,
    network: &str,
    holder: &str,
    epoch: i64,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE dhcp_leaders SET holder = '', holder_address = '', seq = seq + 1 \
         WHERE network = $1 AND holder = $2 AND epoch = $3",
    )
    .bind(network)
    .bind(holder)
    .bind(epoch)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The fence of a lease write: run first in the write's transaction, true while `(holder, epoch)` still holds
/// `network`. It locks the row until the transaction ends (an `UPDATE` that keeps the values), so a takeover
/// either commits before it (and the fence fails) or waits for the lease write (and then reloads it).
pub async fn fence(
    conn: &mut Conn,
    network: &str,
    holder: &str,
    epoch: i64,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE dhcp_leaders SET epoch = epoch WHERE network = $1 AND holder = $2 AND epoch = $3",
    )
    .bind(network)
    .bind(holder)
    .bind(epoch)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}
