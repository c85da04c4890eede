//! `lbfleet-server db copy`: moves a whole site from one database to another (SQLite to PostgreSQL, or back),
//! in one transaction on the destination, then proves the copy: same row count in every table, and the audit
//! chain verifies on the destination.
//!
//! Every table of the fleet is copied, in an order that satisfies its foreign keys, column by column as the
//! destination's schema names them. A table in the source that this version does not know refuses the copy
//! (a newer schema would otherwise lose it silently); tables that describe the running servers rather than
//! the fleet (`RUNTIME_TABLES`) are not copied: servers re-register on the new database.

use std::collections::BTreeMap;

use sqlx::{Row, ValueRef};

use super::{Backend, Conn, Store, StoreError};

/// Fleet tables, parents before children.
pub const FLEET_TABLES: &[&str] = &[
    "fleet_state",
    "users",
    "sessions",
    "api_tokens",
    "images",
    "nodes",
    "clusters",
    "cluster_vips",
    "virtual_services",
    "real_servers",
    "assignments",
    "leases",
    "node_credentials",
    "enrollment_tokens",
    "audit_log",
    "audit_head",
    "events",
    "alerts",
    "boot_expected",
    "dhcp_circuit_pins",
    "boot_credential_key",
    "boot_credentials_redeemed",
    "rollouts",
];

/// Tables about the running servers (registrations, DHCP leadership) and the traffic history (rebuilt from the next
/// reports): not copied.
pub const RUNTIME_TABLES: &[&str] = &["servers", "dhcp_leaders", "traffic_points"];

/// How a column's values are read and written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Int,
    Real,
    Text,
    Bytes,
}

/// One value of a copied row.
#[derive(Debug, Clone)]
enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Bytes(Vec<u8>),
}

/// What `copy` did, table by table.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CopyReport {
    /// Rows copied per table (fleet tables only), as counted on the destination after the copy.
    pub rows: BTreeMap<String, i64>,
    /// Audit rows verified on the destination.
    pub audit_rows: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "the destination already holds a fleet ({what}); copy only into a new, empty database"
    )]
    DestinationNotEmpty { what: String },
    #[error("the source has table {0:?}, which this version of lbfleet does not know: upgrade lbfleet-server first")]
    UnknownTable(String),
    #[error("table {table}: {source_rows} rows in the source, {dest_rows} on the destination after the copy")]
    CountMismatch {
        table: String,
        source_rows: i64,
        dest_rows: i64,
    },
    #[error("the audit chain does not verify on the destination: {0}")]
    AuditChain(String),
    #[error("table {table}, column {column}: a value of a kind the copy does not handle")]
    UnsupportedValue { table: String, column: String },
}

async fn table_names(conn: &mut Conn, backend: Backend) -> Result<Vec<String>, StoreError> {
    let sql = match backend {
        Backend::Sqlite => {
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
             AND name <> '_sqlx_migrations' ORDER BY name"
        }
        Backend::Postgres => {
            "SELECT CAST(table_name AS TEXT) FROM information_schema.tables \
             WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' \
             AND table_name <> '_sqlx_migrations' ORDER BY table_name"
        }
    };
    Ok(sqlx::query_scalar(sql).fetch_all(conn).await?)
}

/// The destination's columns of `table`, in order, with how to bind them.
async fn columns(
    conn: &mut Conn,
    backend: Backend,
    table: &str,
) -> Result<Vec<(String, Kind)>, StoreError> {
    let rows: Vec<(String, String)> = match backend {
        Backend::Sqlite => {
            sqlx::query_as("SELECT name, type FROM pragma_table_info($1) ORDER BY cid")
                .bind(table)
                .fetch_all(conn)
                .await?
        }
        Backend::Postgres => {
            sqlx::query_as(
                "SELECT CAST(column_name AS TEXT), CAST(data_type AS TEXT) FROM information_schema.columns \
                 WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
            )
            .bind(table)
            .fetch_all(conn)
            .await?
        }
    };
    Ok(rows
        .into_iter()
        .map(|(name, ty)| {
            let ty = ty.to_ascii_lowercase();
            let kind = if ty.contains("int") {
                Kind::Int
            } else if ty.contains("blob") || ty.contains("bytea") {
                Kind::Bytes
            } else if ty.contains("real") || ty.contains("double") || ty.contains("float") {
                Kind::Real
            } else {
                Kind::Text
            };
            (name, kind)
        })
        .collect())
}

async fn count(conn: &mut Conn, table: &str) -> Result<i64, StoreError> {
    // Table names come from FLEET_TABLES, never from input.
    Ok(sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
        .fetch_one(conn)
        .await?)
}

fn read_value(row: &sqlx::any::AnyRow, i: usize, kind: Kind) -> Result<Value, sqlx::Error> {
    if row.try_get_raw(i)?.is_null() {
        return Ok(Value::Null);
    }
    Ok(match kind {
        Kind::Int => Value::Int(row.try_get::<i64, _>(i)?),
        Kind::Real => Value::Real(row.try_get::<f64, _>(i)?),
        Kind::Text => Value::Text(row.try_get::<String, _>(i)?),
        Kind::Bytes => Value::Bytes(row.try_get::<Vec<u8>, _>(i)?),
    })
}

/// Refuses a destination that already holds anything beyond a new database's own rows.
async fn check_empty(conn: &mut Conn) -> Result<(), CopyError> {
    for table in [
        "users",
        "nodes",
        "clusters",
        "images",
        "audit_log",
        "events",
    ] {
        let n = count(conn, table).await?;
        if n > 0 {
            return Err(CopyError::DestinationNotEmpty {
                what: format!("{n} rows in {table}"),
            });
        }
    }
    Ok(())
}

impl From<sqlx::Error> for CopyError {
    fn from(e: sqlx::Error) -> Self {
        CopyError::Store(StoreError::Db(e))
    }
}

/// Copies every fleet table of `from` into `to` (which must be new and empty) in one transaction on `to`, then
/// checks the counts and the audit chain on `to`.
pub async fn copy(from: &Store, to: &Store) -> Result<CopyReport, CopyError> {
    let mut src = from.read().await?;
    // One snapshot of the source for every table read.
    let begin = match from.backend() {
        Backend::Sqlite => "BEGIN",
        Backend::Postgres => "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
    };
    sqlx::query(begin).execute(&mut *src).await?;
    let copied = copy_from(&mut src, from.backend(), to).await;
    let _ = sqlx::query("ROLLBACK").execute(&mut *src).await;
    copied
}

async fn copy_from(
    src: &mut Conn,
    from_backend: Backend,
    to: &Store,
) -> Result<CopyReport, CopyError> {
    let source_tables = table_names(&mut *src, from_backend).await?;
    if let Some(t) = source_tables
        .iter()
        .find(|t| !FLEET_TABLES.contains(&t.as_str()) && !RUNTIME_TABLES.contains(&t.as_str()))
    {
        return Err(CopyError::UnknownTable(t.clone()));
    }
    let mut tx = to.begin().await?;
    check_empty(&mut tx).await?;
    // The singletons (generation counter, audit head) exist in a new database: the source's rows replace them.
    for table in ["fleet_state", "audit_head"] {
        sqlx::query(&format!("DELETE FROM {table}"))
            .execute(&mut *tx)
            .await?;
    }
    let mut report = CopyReport::default();
    for &table in FLEET_TABLES {
        if !source_tables.iter().any(|t| t == table) {
            continue;
        }
        let cols = columns(&mut tx, to.backend(), table).await?;
        let src_cols = columns(&mut *src, from_backend, table).await?;
        // Columns the source lacks (an older schema) keep the destination's defaults.
        let cols: Vec<(String, Kind)> = cols
            .into_iter()
            .filter(|(c, _)| src_cols.iter().any(|(s, _)| s == c))
            .collect();
        if cols.is_empty() {
            continue;
        }
        let names: Vec<&str> = cols.iter().map(|(c, _)| c.as_str()).collect();
        let select = format!("SELECT {} FROM {table}", names.join(", "));
        let placeholders: Vec<String> = (1..=cols.len()).map(|i| format!("${i}")).collect();
        let insert = format!(
            "INSERT INTO {table} ({}) VALUES ({})",
            names.join(", "),
            placeholders.join(", ")
        );
        let rows = sqlx::query(&select).fetch_all(&mut *src).await?;
        for row in &rows {
            let mut q = sqlx::query(&insert);
            for (i, (name, kind)) in cols.iter().enumerate() {
                let value = read_value(row, i, *kind).map_err(|_| CopyError::UnsupportedValue {
                    table: table.to_owned(),
                    column: name.clone(),
                })?;
                q = match (value, kind) {
                    (Value::Null, Kind::Int) => q.bind(None::<i64>),
                    (Value::Null, Kind::Real) => q.bind(None::<f64>),
                    (Value::Null, Kind::Text) => q.bind(None::<String>),
                    (Value::Null, Kind::Bytes) => q.bind(None::<Vec<u8>>),
                    (Value::Int(v), _) => q.bind(v),
                    (Value::Real(v), _) => q.bind(v),
                    (Value::Text(v), _) => q.bind(v),
                    (Value::Bytes(v), _) => q.bind(v),
                };
            }
            q.execute(&mut *tx).await.map_err(StoreError::from)?;
        }
        let source_rows = i64::try_from(rows.len()).unwrap_or(i64::MAX);
        let dest_rows = count(&mut tx, table).await?;
        if dest_rows != source_rows {
            return Err(CopyError::CountMismatch {
                table: table.to_owned(),
                source_rows,
                dest_rows,
            });
        }
        if to.backend() == Backend::Postgres && names.contains(&"id") {
            // Identity columns do not advance for explicit ids: start them after the copied ones.
            let identity: Option<String> =
                sqlx::query_scalar("SELECT pg_get_serial_sequence($1, 'id')")
                    .bind(table)
                    .fetch_one(&mut *tx)
                    .await?;
            if identity.is_some() {
                sqlx::query(&format!(
                    "SELECT setval(pg_get_serial_sequence('{table}', 'id'), \
                     COALESCE((SELECT MAX(id) FROM {table}), 0) + 1, false)"
                ))
                .execute(&mut *tx)
                .await?;
            }
        }
        report.rows.insert(table.to_owned(), dest_rows);
    }
    let verification = super::audit::verify(&mut tx).await?;
    if !verification.ok {
        return Err(CopyError::AuditChain(
            verification
                .problem
                .unwrap_or_else(|| "unknown problem".to_owned()),
        ));
    }
    report.audit_rows = verification.rows;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(report)
}
