//! The audit log table: append (inside the caller's transaction) and queries.

use serde_json::Value;

use super::{now_ms, Conn, StoreError};
use crate::audit::{row_hash, AuditAction, AuditRow, Verification, Verifier};

/// Appends one row, chained to the current head, and moves the head. Call inside the mutation's transaction.
pub async fn append(
    conn: &mut Conn,
    actor: &str,
    action: AuditAction,
    target: &str,
    before: Option<&Value>,
    after: Option<&Value>,
) -> Result<i64, StoreError> {
    let (head_seq, head_hash): (i64, String) =
        sqlx::query_as("SELECT seq, hash FROM audit_head WHERE id = 1")
            .fetch_one(&mut *conn)
            .await?;
    let seq = head_seq + 1;
    let at = now_ms();
    let before = before.map(Value::to_string);
    let after = after.map(Value::to_string);
    let hash = row_hash(
        seq,
        at,
        actor,
        action.as_str(),
        target,
        before.as_deref(),
        after.as_deref(),
        &head_hash,
    );
    sqlx::query(
        "INSERT INTO audit_log (seq, at, actor, action, target, before_json, after_json, prev_hash, hash) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(seq)
    .bind(at)
    .bind(actor)
    .bind(action.as_str())
    .bind(target)
    .bind(before)
    .bind(after)
    .bind(&head_hash)
    .bind(&hash)
    .execute(&mut *conn)
    .await?;
    sqlx::query("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1")
        .bind(seq)
        .bind(hash)
        .execute(conn)
        .await?;
    Ok(seq)
}

/// Filters for `GET /api/v1/audit`; `None` matches everything. `target` matches a prefix (`node:` or `cluster:ext`).
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub actor: Option<String>,
    pub target: Option<String>,
    pub action: Option<String>,
    pub before_seq: Option<i64>,
    pub limit: i64,
}

/// `target` as a `LIKE` prefix pattern, with the pattern's own metacharacters escaped.
fn target_pattern(target: Option<&String>) -> Option<String> {
    target.map(|t| {
        format!(
            "{}%",
            t.replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        )
    })
}

/// Every row matching `f` (its `limit` ignored), newest first, straight from one database cursor (sqlx
/// `fetch`): rows are decoded one at a time as the stream is polled, so memory does not grow with the log, and
/// the rows come from one read snapshot.
pub fn stream<'c>(
    conn: &'c mut Conn,
    f: &AuditFilter,
) -> impl futures::Stream<Item = Result<AuditRow, StoreError>> + Send + 'c {
    use futures::StreamExt;
    sqlx::query_as::<_, AuditRow>(
        "SELECT seq, at, actor, action, target, before_json, after_json, prev_hash, hash FROM audit_log \
         WHERE ($1 IS NULL OR at >= $1) AND ($2 IS NULL OR at < $2) AND ($3 IS NULL OR actor = $3) \
         AND ($4 IS NULL OR target LIKE $4 ESCAPE '\\') AND ($5 IS NULL OR action = $5) AND ($6 IS NULL OR seq < $6) \
         ORDER BY seq DESC",
    )
    .bind(f.since)
    .bind(f.until)
    .bind(f.actor.clone())
    .bind(target_pattern(f.target.as_ref()))
    .bind(f.action.clone())
    .bind(f.before_seq)
    .fetch(conn)
    .map(|r| r.map_err(StoreError::from))
}

pub async fn list(conn: &mut Conn, f: &AuditFilter) -> Result<Vec<AuditRow>, StoreError> {
    let target_prefix = target_pattern(f.target.as_ref());
    Ok(sqlx::query_as(
        "SELECT seq, at, actor, action, target, before_json, after_json, prev_hash, hash FROM audit_log \
         WHERE ($1 IS NULL OR at >= $1) AND ($2 IS NULL OR at < $2) AND ($3 IS NULL OR actor = $3) \
         AND ($4 IS NULL OR target LIKE $4 ESCAPE '\\') AND ($5 IS NULL OR action = $5) AND ($6 IS NULL OR seq < $6) \
         ORDER BY seq DESC LIMIT $7",
    )
    .bind(f.since)
    .bind(f.until)
    .bind(&f.actor)
    .bind(target_prefix)
    .bind(&f.action)
    .bind(f.before_seq)
    .bind(f.limit)
    .fetch_all(conn)
    .await?)
}

/// Walks the whole chain in pages and checks every link and the stored head.
pub async fn verify(conn: &mut Conn) -> Result<Verification, StoreError> {
    let mut verifier = Verifier::default();
    let mut after = 0i64;
    loop {
        let page: Vec<AuditRow> = sqlx::query_as(
            "SELECT seq, at, actor, action, target, before_json, after_json, prev_hash, hash FROM audit_log \
             WHERE seq > $1 ORDER BY seq LIMIT 1000",
        )
        .bind(after)
        .fetch_all(&mut *conn)
        .await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        page.iter().for_each(|r| verifier.push(r));
    }
    let (head_seq, head_hash): (i64, String) =
        sqlx::query_as("SELECT seq, hash FROM audit_head WHERE id = 1")
            .fetch_one(conn)
            .await?;
    Ok(verifier.finish(head_seq, &head_hash))
}

pub async fn count(conn: &mut Conn) -> Result<i64, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT seq FROM audit_head WHERE id = 1")
            .fetch_one(conn)
            .await?,
    )
}

/// The distinct actors and actions in the log (for the dashboard's filter suggestions).
pub async fn actors_and_actions(conn: &mut Conn) -> Result<(Vec<String>, Vec<String>), StoreError> {
    let actors: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT actor FROM audit_log ORDER BY actor LIMIT 500")
            .fetch_all(&mut *conn)
            .await?;
    let actions: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT action FROM audit_log ORDER BY action LIMIT 500")
            .fetch_all(conn)
            .await?;
    Ok((actors, actions))
}

/// The chain head: sequence number and hash of the newest row.
pub async fn head(conn: &mut Conn) -> Result<(i64, String), StoreError> {
    Ok(
        sqlx::query_as("SELECT seq, hash FROM audit_head WHERE id = 1")
            .fetch_one(conn)
            .await?,
    )
}
