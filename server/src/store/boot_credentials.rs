//! Boot credentials (booting while the database is down): the fleet-wide signing key and the credentials
//! already exchanged for a node credential.

use super::{now_ms, Conn, StoreError};

/// The fleet's boot-credential key (hex), if one was made.
pub async fn key(conn: &mut Conn) -> Result<Option<String>, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT key_hex FROM boot_credential_key WHERE id = 1")
            .fetch_optional(conn)
            .await?,
    )
}

/// Stores `candidate_hex` as the key unless another server stored one first; returns the key in force.
pub async fn ensure_key(conn: &mut Conn, candidate_hex: &str) -> Result<String, StoreError> {
    sqlx::query(
        "INSERT INTO boot_credential_key (id, key_hex, created_at) VALUES (1, $1, $2) ON CONFLICT (id) DO NOTHING",
    )
    .bind(candidate_hex)
    .bind(now_ms())
    .execute(&mut *conn)
    .await?;
    Ok(
        sqlx::query_scalar("SELECT key_hex FROM boot_credential_key WHERE id = 1")
            .fetch_one(conn)
            .await?,
    )
}

/// Records the exchange of the credential with this nonce; false when it was exchanged before. Expired rows
/// are pruned first (an expired credential is refused before it gets here, so its row is no longer needed).
pub async fn redeem(
    conn: &mut Conn,
    nonce_hex: &str,
    node_id: i64,
    expires_at: i64,
) -> Result<bool, StoreError> {
    sqlx::query("DELETE FROM boot_credentials_redeemed WHERE expires_at < $1")
        .bind(now_ms())
        .execute(&mut *conn)
        .await?;
    let inserted = sqlx::query(
        "INSERT INTO boot_credentials_redeemed (nonce_hex, node_id, expires_at) VALUES ($1, $2, $3) \
         ON CONFLICT (nonce_hex) DO NOTHING",
    )
    .bind(nonce_hex)
    .bind(node_id)
    .bind(expires_at)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}
