//! The control plane's registry (`servers` table): each `lbfleet-server serve` process on this database, what
//! it serves and when it last heartbeat, and the alert raised while it is down (a row of `alerts`, kind
//! `server_down`).

use serde::Serialize;

use super::{Conn, StoreError};

/// One registered server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct ServerRow {
    pub id: String,
    pub name: String,
    pub version: String,
    pub management_url: String,
    pub boot_url: Option<String>,
    pub tls_pin: Option<String>,
    /// JSON array of the networks its DHCP answers on (`["198.18.0.0/24"]`).
    pub dhcp_networks: String,
    pub started_at: i64,
    pub heartbeat_at: i64,
    pub heartbeat_interval_ms: i64,
    pub stopped_at: Option<i64>,
    pub down_since: Option<i64>,
    pub alert_id: Option<i64>,
}

/// What a server says about itself when it registers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub version: &'a str,
    pub management_url: &'a str,
    pub boot_url: Option<&'a str>,
    pub tls_pin: Option<&'a str>,
    pub dhcp_networks: &'a str,
    pub heartbeat_interval_ms: i64,
}

const COLUMNS: &str =
    "id, name, version, management_url, boot_url, tls_pin, dhcp_networks, started_at, \
                       heartbeat_at, heartbeat_interval_ms, stopped_at, down_since, alert_id";

/// Every registered server, by name then id.
pub async fn list(conn: &mut Conn) -> Result<Vec<ServerRow>, StoreError> {
    Ok(
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM servers ORDER BY name, id"))
            .fetch_all(conn)
            .await?,
    )
}

pub async fn get(conn: &mut Conn, id: &str) -> Result<Option<ServerRow>, StoreError> {
    Ok(
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM servers WHERE id = $1"))
            .bind(id)
            .fetch_optional(conn)
            .await?,
    )
}

/// Registers a server starting at `now` (a new row, or the row of the same id with everything renewed: it is
/// up, not stopped, not down, with no alert).
pub async fn register(conn: &mut Conn, r: &Registration<'_>, now: i64) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO servers (id, name, version, management_url, boot_url, tls_pin, dhcp_networks, started_at, \
         heartbeat_at, heartbeat_interval_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9) \
         ON CONFLICT (id) DO UPDATE SET name = excluded.name, version = excluded.version, \
         management_url = excluded.management_url, boot_url = excluded.boot_url, tls_pin = excluded.tls_pin, \
         dhcp_networks = excluded.dhcp_networks, started_at = excluded.started_at, \
         heartbeat_at = excluded.heartbeat_at, heartbeat_interval_ms = excluded.heartbeat_interval_ms, \
         stopped_at = NULL, down_since = NULL, alert_id = NULL",
    )
    .bind(r.id)
    .bind(r.name)
    .bind(r.version)
    .bind(r.management_url)
    .bind(r.boot_url)
    .bind(r.tls_pin)
    .bind(r.dhcp_networks)
    .bind(now)
    .bind(r.heartbeat_interval_ms)
    .execute(conn)
    .await?;
    Ok(())
}

/// A heartbeat at `now`: the row with the state it had (`down_since`, `alert_id`, `stopped_at`), `None` when
/// it is gone (removed by an admin or by retention, so the server registers again). Clears those three; the
/// caller closes the alert. The row is updated first, so on PostgreSQL its lock orders this against a
/// concurrent `mark_down` and the state read after it is the latest.
pub async fn heartbeat(
    conn: &mut Conn,
    id: &str,
    now: i64,
) -> Result<Option<ServerRow>, StoreError> {
    let touched = sqlx::query("UPDATE servers SET heartbeat_at = $2 WHERE id = $1")
        .bind(id)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    if touched.rows_affected() == 0 {
        return Ok(None);
    }
    let row = get(&mut *conn, id).await?;
    if row
        .as_ref()
        .is_some_and(|r| r.down_since.is_some() || r.alert_id.is_some() || r.stopped_at.is_some())
    {
        sqlx::query(
            "UPDATE servers SET down_since = NULL, alert_id = NULL, stopped_at = NULL WHERE id = $1",
        )
        .bind(id)
        .execute(conn)
        .await?;
    }
    Ok(row)
}

/// A clean stop at `now`.
pub async fn stopped(conn: &mut Conn, id: &str, now: i64) -> Result<(), StoreError> {
    sqlx::query("UPDATE servers SET stopped_at = $2 WHERE id = $1")
        .bind(id)
        .bind(now)
        .execute(conn)
        .await?;
    Ok(())
}

/// Marks server `id` down at `now` if it still is silent (heartbeat before `silent_before`), did not stop
/// cleanly and is not marked yet. True when this call marked it: the caller (one server, whichever got here
/// first) raises the alert.
pub async fn mark_down(
    conn: &mut Conn,
    id: &str,
    silent_before: i64,
    now: i64,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE servers SET down_since = $2 WHERE id = $1 AND down_since IS NULL AND stopped_at IS NULL \
         AND heartbeat_at < $3",
    )
    .bind(id)
    .bind(now)
    .bind(silent_before)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Raises the `server_down` alert for server `id` (a row of its own, open until closed) and remembers it.
pub async fn raise_down_alert(
    conn: &mut Conn,
    id: &str,
    message: &str,
    now: i64,
) -> Result<i64, StoreError> {
    let alert: i64 = sqlx::query_scalar(
        "INSERT INTO alerts (kind, node_id, cluster, message, first_at, raised_at, expires_at) \
         VALUES ('server_down', NULL, NULL, $1, $2, $2, $3) RETURNING id",
    )
    .bind(message)
    .bind(now)
    .bind(i64::MAX)
    .fetch_one(&mut *conn)
    .await?;
    sqlx::query("UPDATE servers SET alert_id = $2 WHERE id = $1")
        .bind(id)
        .bind(alert)
        .execute(conn)
        .await?;
    Ok(alert)
}

/// Closes an alert at `now` (it ends as if expired; an acknowledged one stays as it is).
pub async fn close_alert(conn: &mut Conn, alert: i64, now: i64) -> Result<(), StoreError> {
    sqlx::query("UPDATE alerts SET expires_at = $2 WHERE id = $1 AND expires_at > $2")
        .bind(alert)
        .bind(now)
        .execute(conn)
        .await?;
    Ok(())
}

/// Deletes server `id`; the row as it was.
pub async fn delete(conn: &mut Conn, id: &str) -> Result<Option<ServerRow>, StoreError> {
    Ok(sqlx::query_as(&format!(
        "DELETE FROM servers WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await?)
}

/// Deletes every server not heard from since `before`; the rows deleted.
pub async fn prune(conn: &mut Conn, before: i64) -> Result<Vec<ServerRow>, StoreError> {
    Ok(sqlx::query_as(&format!(
        "DELETE FROM servers WHERE heartbeat_at < $1 RETURNING {COLUMNS}"
    ))
    .bind(before)
    .fetch_all(conn)
    .await?)
}
