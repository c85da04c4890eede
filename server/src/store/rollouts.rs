//! Rollouts (`rollouts` table): one row per rollout, its request and the engine's progress as JSON, and the
//! lease that says which server drives it now.

use serde::Serialize;

use super::{now_ms, Conn, StoreError};

/// One rollout as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct RolloutRow {
    pub id: i64,
    pub image: String,
    pub state: String,
    pub spec: String,
    pub progress: String,
    pub reason: Option<String>,
    pub created_by: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub lease_owner: Option<String>,
    pub lease_until: Option<i64>,
}

const COLUMNS: &str =
    "id, image, state, spec, progress, reason, created_by, created_at, updated_at, \
                       lease_owner, lease_until";

pub async fn insert(
    conn: &mut Conn,
    image: &str,
    spec: &str,
    progress: &str,
    created_by: &str,
) -> Result<i64, StoreError> {
    let now = now_ms();
    Ok(sqlx::query_scalar(
        "INSERT INTO rollouts (image, state, spec, progress, created_by, created_at, updated_at) \
         VALUES ($1, 'running', $2, $3, $4, $5, $5) RETURNING id",
    )
    .bind(image)
    .bind(spec)
    .bind(progress)
    .bind(created_by)
    .bind(now)
    .fetch_one(conn)
    .await?)
}

pub async fn get(conn: &mut Conn, id: i64) -> Result<Option<RolloutRow>, StoreError> {
    Ok(
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM rollouts WHERE id = $1"))
            .bind(id)
            .fetch_optional(conn)
            .await?,
    )
}

/// The newest `limit` rollouts, newest first.
pub async fn list(conn: &mut Conn, limit: i64) -> Result<Vec<RolloutRow>, StoreError> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM rollouts ORDER BY id DESC LIMIT $1"
    ))
    .bind(limit)
    .fetch_all(conn)
    .await?)
}

/// Rollouts not finished (running or paused), oldest first.
pub async fn unfinished(conn: &mut Conn) -> Result<Vec<RolloutRow>, StoreError> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM rollouts WHERE state IN ('running', 'paused') ORDER BY id"
    ))
    .fetch_all(conn)
    .await?)
}

/// Claims (or renews) the lease on a rollout for `owner` until `until`: true when `owner` holds it now. A
/// lease held by another server is taken only once it expired, so one server drives a rollout at a time.
pub async fn claim(
    conn: &mut Conn,
    id: i64,
    owner: &str,
    now: i64,
    until: i64,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE rollouts SET lease_owner = $1, lease_until = $2 WHERE id = $3 \
         AND state IN ('running', 'paused') \
         AND (lease_owner IS NULL OR lease_owner = $1 OR lease_until IS NULL OR lease_until < $4)",
    )
    .bind(owner)
    .bind(until)
    .bind(id)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// What `save` writes, and under which conditions.
#[derive(Debug, Clone, Copy)]
pub struct Save<'a> {
    /// Only while this server holds the lease (`None`: an operator's change, whoever drives it).
    pub owner: Option<&'a str>,
    /// Only while the rollout is still in this state (the engine must not undo an operator's pause or
    /// abort that came in while it worked).
    pub expected_state: Option<&'a str>,
    pub state: &'a str,
    pub reason: Option<&'a str>,
    pub progress: &'a str,
}

/// Writes a rollout's state, reason and progress. False when a condition did not hold (nothing written).
pub async fn save(conn: &mut Conn, id: i64, s: Save<'_>) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE rollouts SET state = $1, reason = $2, progress = $3, updated_at = $4 WHERE id = $5 \
         AND ($6 IS NULL OR lease_owner = $6) AND ($7 IS NULL OR state = $7)",
    )
    .bind(s.state)
    .bind(s.reason)
    .bind(s.progress)
    .bind(now_ms())
    .bind(id)
    .bind(s.owner)
    .bind(s.expected_state)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Releases the lease (a server that stops, a finished rollout).
pub async fn release(conn: &mut Conn, id: i64, owner: &str) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE rollouts SET lease_owner = NULL, lease_until = NULL WHERE id = $1 AND lease_owner = $2",
    )
    .bind(id)
    .bind(owner)
    .execute(conn)
    .await?;
    Ok(())
}
