//! The SQLite store: connection pools, migrations, and every SQL statement of the server.
//!
//! One writer connection serialises all write transactions (SQLite allows one writer; queueing in the pool is
//! cheaper and clearer than retrying `SQLITE_BUSY`), a pool of readers serves queries concurrently under WAL.
//! Statements use `$N` placeholders and portable SQL so a PostgreSQL backend can share them.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;

pub mod alerts;
pub mod audit;
pub mod auth;
pub mod boot_trust;
pub mod clusters;
pub mod events;
pub mod images;
pub mod leases;
pub mod nodes;
pub mod servers;

/// A failure of the database layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("invalid database URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// True when the error is a UNIQUE or CHECK constraint violation (a conflict the caller may explain).
    pub fn is_constraint(&self) -> bool {
        match self {
            StoreError::Db(sqlx::Error::Database(e)) => {
                matches!(
                    e.kind(),
                    sqlx::error::ErrorKind::UniqueViolation
                        | sqlx::error::ErrorKind::CheckViolation
                )
            }
            _ => false,
        }
    }
}

/// A connection as the store's functions take it (inside a transaction or not). The fleet names only this alias
/// and `WriteTx`, never the backend's types, so another database changes `store/` alone.
pub type Conn = sqlx::SqliteConnection;

/// A write transaction on the single writer connection; finish it with `commit`.
pub type WriteTx = sqlx::Transaction<'static, sqlx::Sqlite>;

/// A pooled read connection (derefs to `Conn`).
pub type ReadConn = sqlx::pool::PoolConnection<sqlx::Sqlite>;

/// Commits a write transaction.
pub async fn commit(tx: WriteTx) -> Result<(), StoreError> {
    Ok(tx.commit().await?)
}

/// Handle to the database; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    writer: SqlitePool,
    reader: SqlitePool,
    /// Connections of their own for long audit exports, so slow exports never hold the readers everything
    /// else needs (the callers cap exports at `EXPORT_CONNECTIONS`).
    export: SqlitePool,
}

/// Connections the audit exports may hold at once.
pub const EXPORT_CONNECTIONS: u32 = 2;

impl Store {
    /// Opens (creating if missing) the database at `url` (`sqlite://path`, `sqlite:path` or a plain path),
    /// turns on WAL and foreign keys, and runs pending migrations.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        let path_url = if url.starts_with("sqlite:") {
            url.to_owned()
        } else {
            format!("sqlite://{url}")
        };
        create_private(&path_url)?;
        let options = SqliteConnectOptions::from_str(&path_url)
            .map_err(|e| StoreError::Url {
                url: url.to_owned(),
                reason: e.to_string(),
            })?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: every commit is fsynced, so an ACKed lease or an acknowledged change survives power loss,
            // not only a process crash. Group commit (DHCP) keeps the fsync count low under load.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("../migrations").run(&writer).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.clone().read_only(true))
            .await?;
        let export = SqlitePoolOptions::new()
            .max_connections(EXPORT_CONNECTIONS)
            .min_connections(0)
            .acquire_timeout(Duration::from_secs(5))
            .idle_timeout(Duration::from_secs(60))
            .connect_lazy_with(options.read_only(true));
        Ok(Store {
            writer,
            reader,
            export,
        })
    }

    /// Starts a write transaction (waits for the writer connection). `BEGIN IMMEDIATE` takes SQLite's write
    /// lock at once (waiting up to the busy timeout): with two server processes on one file, a deferred
    /// transaction that read first fails with SQLITE_BUSY when the other process wrote meanwhile.
    pub async fn begin(&self) -> Result<WriteTx, StoreError> {
        Ok(self.writer.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// A read connection for queries outside a write transaction.
    pub async fn read(&self) -> Result<ReadConn, StoreError> {
        Ok(self.reader.acquire().await?)
    }

    /// A read connection of the exports' own pool (never one of the readers).
    pub async fn export_read(&self) -> Result<ReadConn, StoreError> {
        Ok(self.export.acquire().await?)
    }

    /// Proves the database takes a write: a one-page change committed (and so synced to disk) on the writer
    /// connection. Fails when the disk is full or read-only, or the database cannot be locked for writing.
    ///
    /// SQLite writes nothing for an update that leaves a row's bytes as they were, so the probe flips the low
    /// bit of the header's `user_version`, which lbfleet uses for nothing else (migrations are tracked in
    /// `_sqlx_migrations`).
    pub async fn probe_write(&self) -> Result<(), StoreError> {
        let mut tx = self.writer.begin().await?;
        let version: i64 = sqlx::query_scalar("PRAGMA user_version")
            .fetch_one(&mut *tx)
            .await?;
        // A PRAGMA takes no bound parameter; the value is a number this function computed.
        sqlx::query(&format!(
            "PRAGMA user_version = {}",
            (version ^ 1) & 0x7fff_ffff
        ))
        .execute(&mut *tx)
        .await?;
        Ok(tx.commit().await?)
    }

    /// Closes the pools, waiting for connections to be returned.
    pub async fn close(&self) {
        self.export.close().await;
        self.reader.close().await;
        self.writer.close().await;
    }
}

/// Creates the SQLite file of `url` readable and writable only by its owner, before SQLite creates it with the
/// process's umask (often world-readable). SQLite gives its WAL and shared-memory files the database file's
/// permissions. An existing file is left as it is; in-memory databases have no file.
fn create_private(url: &str) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .map(|p| p.split('?').next().unwrap_or(p))
        .filter(|p| !p.is_empty() && !p.starts_with(':'));
    let Some(path) = path else {
        return Ok(());
    };
    let path = std::path::Path::new(path);
    if path.exists() {
        return Ok(());
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::create_dir_all(dir);
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StoreError::Url {
            url: url.to_owned(),
            reason: format!("cannot create {}: {e}", path.display()),
        }),
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Takes the next fleet generation. Every node whose role changes in this transaction gets it.
pub async fn next_generation(conn: &mut Conn) -> Result<u64, StoreError> {
    let g: i64 = sqlx::query_scalar(
        "UPDATE fleet_state SET generation = generation + 1 WHERE id = 1 RETURNING generation",
    )
    .fetch_one(conn)
    .await?;
    u64::try_from(g).map_err(|_| StoreError::Corrupt(format!("negative fleet generation {g}")))
}
