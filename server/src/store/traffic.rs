//! Traffic history (`traffic_points`): counter deltas per node, service and real server, summed into buckets.

use super::{Conn, StoreError};

/// One bucket's worth of counter movement of one series, as written and as read back.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct TrafficPoint {
    pub cluster: String,
    pub node_id: i64,
    /// `tcp/198.18.0.10:80`.
    pub service: String,
    /// `198.18.2.1:80`, or empty for the service's own counters.
    pub real_server: String,
    pub step_s: i64,
    pub bucket_ms: i64,
    /// Milliseconds of counting the deltas cover (a bucket's rate is delta * 1000 / span_ms).
    pub span_ms: i64,
    pub connections: i64,
    pub bytes_in: i64,
    pub bytes_out: i64,
}

/// Rows in one INSERT: 10 parameters a row stays far below SQLite's 32,766 and PostgreSQL's 65,535.
const ROWS_PER_STATEMENT: usize = 500;

/// Adds `points` to their buckets (one statement per 500 rows; a report usually needs one). Points of one call
/// must not repeat a key (PostgreSQL refuses to update one row twice in a statement); `fleet::traffic` merges
/// them first.
pub async fn add(conn: &mut Conn, points: &[TrafficPoint]) -> Result<(), StoreError> {
    for chunk in points.chunks(ROWS_PER_STATEMENT) {
        let mut sql = String::from(
            "INSERT INTO traffic_points (cluster, node_id, service, real_server, step_s, bucket_ms, span_ms, \
             connections, bytes_in, bytes_out) VALUES ",
        );
        for i in 0..chunk.len() {
            let b = i * 10;
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!(
                "(${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${})",
                b + 1,
                b + 2,
                b + 3,
                b + 4,
                b + 5,
                b + 6,
                b + 7,
                b + 8,
                b + 9,
                b + 10
            ));
        }
        sql.push_str(
            " ON CONFLICT (node_id, step_s, bucket_ms, service, real_server) DO UPDATE SET \
             cluster = excluded.cluster, span_ms = traffic_points.span_ms + excluded.span_ms, \
             connections = traffic_points.connections + excluded.connections, \
             bytes_in = traffic_points.bytes_in + excluded.bytes_in, \
             bytes_out = traffic_points.bytes_out + excluded.bytes_out",
        );
        let mut q = sqlx::query(&sql);
        for p in chunk {
            q = q
                .bind(p.cluster.as_str())
                .bind(p.node_id)
                .bind(p.service.as_str())
                .bind(p.real_server.as_str())
                .bind(p.step_s)
                .bind(p.bucket_ms)
                .bind(p.span_ms)
                .bind(p.connections)
                .bind(p.bytes_in)
                .bind(p.bytes_out);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

const COLUMNS: &str =
    "cluster, node_id, service, real_server, step_s, bucket_ms, span_ms, connections, bytes_in, bytes_out";

/// A cluster's service rows (`real_server` = '') of one step from `since_ms` on, oldest first; of the services
/// in `only` when given (an empty list: none).
pub async fn cluster_services(
    conn: &mut Conn,
    cluster: &str,
    step_s: i64,
    since_ms: i64,
    only: Option<&[String]>,
) -> Result<Vec<TrafficPoint>, StoreError> {
    let mut sql = format!(
        "SELECT {COLUMNS} FROM traffic_points WHERE cluster = $1 AND step_s = $2 AND bucket_ms >= $3 \
         AND real_server = ''"
    );
    if let Some(only) = only {
        if only.is_empty() {
            return Ok(Vec::new());
        }
        let marks: Vec<String> = (0..only.len()).map(|i| format!("${}", i + 4)).collect();
        sql.push_str(&format!(" AND service IN ({})", marks.join(", ")));
    }
    sql.push_str(" ORDER BY bucket_ms");
    let mut q = sqlx::query_as(&sql)
        .bind(cluster)
        .bind(step_s)
        .bind(since_ms);
    for s in only.unwrap_or_default() {
        q = q.bind(s.as_str());
    }
    Ok(q.fetch_all(conn).await?)
}

/// The `limit` services of a cluster that moved the most connections (then bytes) in one step from `since_ms`
/// on, busiest first.
pub async fn busiest_services(
    conn: &mut Conn,
    cluster: &str,
    step_s: i64,
    since_ms: i64,
    limit: i64,
) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT service FROM traffic_points WHERE cluster = $1 AND step_s = $2 AND bucket_ms >= $3 \
         AND real_server = '' GROUP BY service \
         ORDER BY CAST(SUM(connections) AS BIGINT) DESC, CAST(SUM(bytes_in + bytes_out) AS BIGINT) DESC, service \
         LIMIT $4",
    )
    .bind(cluster)
    .bind(step_s)
    .bind(since_ms)
    .bind(limit)
    .fetch_all(conn)
    .await?)
}

/// A node's real-server rows of one step from `since_ms` on, oldest first.
pub async fn node_real_servers(
    conn: &mut Conn,
    node_id: i64,
    step_s: i64,
    since_ms: i64,
) -> Result<Vec<TrafficPoint>, StoreError> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM traffic_points WHERE node_id = $1 AND step_s = $2 AND bucket_ms >= $3 \
         AND real_server <> '' ORDER BY bucket_ms"
    ))
    .bind(node_id)
    .bind(step_s)
    .bind(since_ms)
    .fetch_all(conn)
    .await?)
}

/// Every service row of one step from the bucket starting at `since_ms` on (for `/metrics`).
pub async fn services_since(
    conn: &mut Conn,
    step_s: i64,
    since_ms: i64,
) -> Result<Vec<TrafficPoint>, StoreError> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM traffic_points WHERE step_s = $1 AND bucket_ms >= $2 AND real_server = '' \
         ORDER BY bucket_ms"
    ))
    .bind(step_s)
    .bind(since_ms)
    .fetch_all(conn)
    .await?)
}

/// Writes the 5 min buckets in [`from_ms`, `to_ms`) (multiples of 5 min) as the sums of their 10 s buckets,
/// replacing what was there; the number of 5 min rows written.
pub async fn downsample(conn: &mut Conn, from_ms: i64, to_ms: i64) -> Result<u64, StoreError> {
    Ok(sqlx::query(
        "INSERT INTO traffic_points (cluster, node_id, service, real_server, step_s, bucket_ms, span_ms, \
         connections, bytes_in, bytes_out) \
         SELECT MAX(cluster), node_id, service, real_server, 300, (bucket_ms / 300000) * 300000, \
         CAST(SUM(span_ms) AS BIGINT), CAST(SUM(connections) AS BIGINT), CAST(SUM(bytes_in) AS BIGINT), \
         CAST(SUM(bytes_out) AS BIGINT) FROM traffic_points \
         WHERE step_s = 10 AND bucket_ms >= $1 AND bucket_ms < $2 \
         GROUP BY node_id, service, real_server, (bucket_ms / 300000) * 300000 \
         ON CONFLICT (node_id, step_s, bucket_ms, service, real_server) DO UPDATE SET \
         cluster = excluded.cluster, span_ms = excluded.span_ms, connections = excluded.connections, \
         bytes_in = excluded.bytes_in, bytes_out = excluded.bytes_out",
    )
    .bind(from_ms)
    .bind(to_ms)
    .execute(conn)
    .await?
    .rows_affected())
}

/// What one row is counted as besides its two names, for the byte bound (eight integers and the key's index
/// entries, roughly).
pub const ROW_OVERHEAD_BYTES: i64 = 96;

/// Deletes rows of step `step_s` older than `before` (ms); the number deleted.
pub async fn prune_older(conn: &mut Conn, step_s: i64, before: i64) -> Result<u64, StoreError> {
    Ok(
        sqlx::query("DELETE FROM traffic_points WHERE step_s = $1 AND bucket_ms < $2")
            .bind(step_s)
            .bind(before)
            .execute(conn)
            .await?
            .rows_affected(),
    )
}

/// Deletes the oldest buckets past `keep_rows` rows or `keep_bytes` bytes (names plus `ROW_OVERHEAD_BYTES` a
/// row, counted from the newest bucket). Whole buckets go, so what stays is at most the bound.
pub async fn prune_over(
    conn: &mut Conn,
    keep_rows: i64,
    keep_bytes: i64,
) -> Result<u64, StoreError> {
    // The bucket of the row just past the bound, and every bucket as old or older, goes.
    let rows = sqlx::query(
        "DELETE FROM traffic_points WHERE bucket_ms <= (SELECT bucket_ms FROM traffic_points \
         ORDER BY bucket_ms DESC LIMIT 1 OFFSET $1)",
    )
    .bind(keep_rows.max(0))
    .execute(&mut *conn)
    .await?
    .rows_affected();
    let bytes = sqlx::query(
        "DELETE FROM traffic_points WHERE bucket_ms <= (SELECT bucket_ms FROM (SELECT bucket_ms, \
         SUM(octet_length(service) + octet_length(real_server) + octet_length(cluster) + $1) \
         OVER (ORDER BY bucket_ms DESC ROWS UNBOUNDED PRECEDING) AS total FROM traffic_points) AS running \
         WHERE total > $2 ORDER BY bucket_ms DESC LIMIT 1)",
    )
    .bind(ROW_OVERHEAD_BYTES)
    .bind(keep_bytes.max(0))
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(rows + bytes)
}

/// The table's rows and size as the bounds count them.
pub async fn totals(conn: &mut Conn) -> Result<(i64, i64), StoreError> {
    let row: (i64, i64) = sqlx::query_as(
        "SELECT CAST(COUNT(*) AS BIGINT), CAST(COALESCE(SUM(octet_length(service) + octet_length(real_server) \
         + octet_length(cluster) + $1), 0) AS BIGINT) FROM traffic_points",
    )
    .bind(ROW_OVERHEAD_BYTES)
    .fetch_one(conn)
    .await?;
    Ok(row)
}
