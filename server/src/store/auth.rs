//! Users, sessions, API tokens, node credentials and enrollment tokens. Secrets are stored only as hashes.

use super::{now_ms, Conn, StoreError};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UserRow {
    pub id: i64,
    pub name: String,
    pub role: String,
    pub password_hash: String,
    #[sqlx(try_from = "super::Flag")]
    pub disabled: bool,
    pub created_at: i64,
}

const SELECT_USER: &str = "SELECT id, name, role, password_hash, disabled, created_at FROM users";

pub async fn user_by_name(conn: &mut Conn, name: &str) -> Result<Option<UserRow>, StoreError> {
    Ok(sqlx::query_as(&format!("{SELECT_USER} WHERE name = $1"))
        .bind(name)
        .fetch_optional(conn)
        .await?)
}

pub async fn users(conn: &mut Conn) -> Result<Vec<UserRow>, StoreError> {
    Ok(sqlx::query_as(&format!("{SELECT_USER} ORDER BY name"))
        .fetch_all(conn)
        .await?)
}

pub async fn user_count(conn: &mut Conn) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar("SELECT COUNT(*) FROM users")
        .fetch_one(conn)
        .await?)
}

pub async fn insert_user(
    conn: &mut Conn,
    name: &str,
    role: &str,
    password_hash: &str,
) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar(
        "INSERT INTO users (name, role, password_hash, created_at) VALUES ($1, $2, $3, $4) RETURNING id",
    )
    .bind(name)
    .bind(role)
    .bind(password_hash)
    .bind(now_ms())
    .fetch_one(conn)
    .await?)
}

pub async fn set_password(
    conn: &mut Conn,
    user_id: i64,
    password_hash: &str,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE users SET password_hash = $1 WHERE id = $2")
        .bind(password_hash)
        .bind(user_id)
        .execute(&mut *conn)
        .await?;
    // A new password ends every session of the user.
    sqlx::query("DELETE FROM sessions WHERE user_id = $1")
        .bind(user_id)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn delete_user(conn: &mut Conn, user_id: i64) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM users WHERE id = $1")
        .bind(user_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Who a session or API token belongs to.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Principal {
    pub user_id: i64,
    pub name: String,
    pub role: String,
    /// The session's CSRF token (sessions only).
    pub csrf_token: Option<String>,
}

pub async fn insert_session(
    conn: &mut Conn,
    token_hash: &str,
    csrf_token: &str,
    user_id: i64,
    expires_at: i64,
) -> Result<(), StoreError> {
    let now = now_ms();
    // Expired sessions are swept on each login, so the table stays small without a timer.
    sqlx::query("DELETE FROM sessions WHERE expires_at < $1")
        .bind(now)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "INSERT INTO sessions (token_hash, csrf_token, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(token_hash)
    .bind(csrf_token)
    .bind(user_id)
    .bind(now)
    .bind(expires_at)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn session(conn: &mut Conn, token_hash: &str) -> Result<Option<Principal>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT u.id AS user_id, u.name, u.role, s.csrf_token FROM sessions s JOIN users u ON u.id = s.user_id \
         WHERE s.token_hash = $1 AND s.expires_at > $2 AND u.disabled = 0",
    )
    .bind(token_hash)
    .bind(now_ms())
    .fetch_optional(conn)
    .await?)
}

pub async fn delete_session(conn: &mut Conn, token_hash: &str) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM sessions WHERE token_hash = $1")
        .bind(token_hash)
        .execute(conn)
        .await?;
    Ok(())
}

#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct TokenRow {
    pub id: i64,
    pub user: String,
    pub name: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub last_used_at: Option<i64>,
}

pub async fn insert_token(
    conn: &mut Conn,
    user_id: i64,
    name: &str,
    token_hash: &str,
    expires_at: Option<i64>,
) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar(
        "INSERT INTO api_tokens (user_id, name, token_hash, created_at, expires_at) VALUES ($1, $2, $3, $4, $5) RETURNING id",
    )
    .bind(user_id)
    .bind(name)
    .bind(token_hash)
    .bind(now_ms())
    .bind(expires_at)
    .fetch_one(conn)
    .await?)
}

pub async fn tokens(conn: &mut Conn) -> Result<Vec<TokenRow>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT t.id, u.name AS user, t.name, t.created_at, t.expires_at, t.last_used_at FROM api_tokens t \
         JOIN users u ON u.id = t.user_id ORDER BY t.id",
    )
    .fetch_all(conn)
    .await?)
}

pub async fn delete_token(conn: &mut Conn, id: i64) -> Result<u64, StoreError> {
    Ok(sqlx::query("DELETE FROM api_tokens WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await?
        .rows_affected())
}

pub async fn token_principal(
    conn: &mut Conn,
    token_hash: &str,
) -> Result<Option<Principal>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT u.id AS user_id, u.name, u.role, NULL AS csrf_token FROM api_tokens t JOIN users u ON u.id = t.user_id \
         WHERE t.token_hash = $1 AND (t.expires_at IS NULL OR t.expires_at > $2) AND u.disabled = 0",
    )
    .bind(token_hash)
    .bind(now_ms())
    .fetch_optional(conn)
    .await?)
}

/// How often a token's `last_used_at` is written at most (a write per request would serialise every API call
/// on the one writer connection).
pub const TOKEN_TOUCH_INTERVAL_MS: i64 = 60_000;

/// Records that the token with `token_hash` was used now, unless that was recorded within
/// `TOKEN_TOUCH_INTERVAL_MS`.
pub async fn touch_token(conn: &mut Conn, token_hash: &str) -> Result<(), StoreError> {
    let now = now_ms();
    sqlx::query(
        "UPDATE api_tokens SET last_used_at = $2 WHERE token_hash = $1          AND (last_used_at IS NULL OR last_used_at < $3)",
    )
    .bind(token_hash)
    .bind(now)
    .bind(now - TOKEN_TOUCH_INTERVAL_MS)
    .execute(conn)
    .await?;
    Ok(())
}

/// Replaces the node's credential (re-enrollment rotates it).
pub async fn set_node_credential(
    conn: &mut Conn,
    node_id: i64,
    secret_hash: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO node_credentials (node_id, secret_hash, created_at) VALUES ($1, $2, $3) \
         ON CONFLICT (node_id) DO UPDATE SET secret_hash = excluded.secret_hash, created_at = excluded.created_at, \
         last_used_at = NULL",
    )
    .bind(node_id)
    .bind(secret_hash)
    .bind(now_ms())
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn node_by_credential(
    conn: &mut Conn,
    secret_hash: &str,
) -> Result<Option<i64>, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT node_id FROM node_credentials WHERE secret_hash = $1")
            .bind(secret_hash)
            .fetch_optional(conn)
            .await?,
    )
}

pub async fn revoke_node(conn: &mut Conn, node_id: i64) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM node_credentials WHERE node_id = $1")
        .bind(node_id)
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM enrollment_tokens WHERE node_id = $1")
        .bind(node_id)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn insert_enrollment_token(
    conn: &mut Conn,
    token_hash: &str,
    node_id: i64,
    expires_at: i64,
) -> Result<(), StoreError> {
    let now = now_ms();
    sqlx::query("DELETE FROM enrollment_tokens WHERE expires_at < $1 OR used_at IS NOT NULL")
        .bind(now)
        .execute(&mut *conn)
        .await?;
    sqlx::query("INSERT INTO enrollment_tokens (token_hash, node_id, created_at, expires_at) VALUES ($1, $2, $3, $4)")
        .bind(token_hash)
        .bind(node_id)
        .bind(now)
        .bind(expires_at)
        .execute(conn)
        .await?;
    Ok(())
}

/// Marks an unused, unexpired enrollment token used and returns its node; `None` if it is not redeemable.
pub async fn redeem_enrollment_token(
    conn: &mut Conn,
    token_hash: &str,
) -> Result<Option<i64>, StoreError> {
    let now = now_ms();
    Ok(sqlx::query_scalar(
        "UPDATE enrollment_tokens SET used_at = $1 WHERE token_hash = $2 AND used_at IS NULL AND expires_at > $1 \
         RETURNING node_id",
    )
    .bind(now)
    .bind(token_hash)
    .fetch_optional(conn)
    .await?)
}

/// True when the node has a live credential (it enrolled and was not revoked since).
pub async fn has_node_credential(conn: &mut Conn, node_id: i64) -> Result<bool, StoreError> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM node_credentials WHERE node_id = $1")
        .bind(node_id)
        .fetch_one(conn)
        .await?;
    Ok(n > 0)
}
