//! The store: connection pools, migrations, and every SQL statement of the server, on SQLite (the default, one
//! server) or PostgreSQL (several servers on one database).
//!
//! Both backends go through sqlx's `Any` driver, so every statement is written once: `$N` placeholders, SQL that
//! SQLite 3.46 and PostgreSQL 15 both accept, integers read as `i64`, flags as integers 0/1. Only the schema
//! (`migrations/sqlite`, `migrations/postgres`), the connection set-up and the write probe differ per backend.
//!
//! Writes are serialised fleet-wide, as SQLite does by nature: one writer connection per server, and on
//! PostgreSQL every write transaction first takes one transaction-scoped advisory lock, so write transactions of
//! several servers run one after another. Every domain rule that reads and then writes (one active per
//! cluster, the audit chain's head, fleet generations) therefore holds across servers without retries.
//! Readers never wait for it.

use std::sync::Once;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor};

pub mod alerts;
pub mod audit;
pub mod auth;
pub mod boot_credentials;
pub mod boot_trust;
pub mod clusters;
pub mod copy;
pub mod events;
pub mod images;
pub mod leases;
pub mod nodes;
pub mod rollouts;
pub mod servers;
pub mod traffic;
mod unreachable;

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
/// and `WriteTx`, never the backend's types.
pub type Conn = sqlx::AnyConnection;

/// A write transaction on the writer connection, holding the fleet-wide write lock; finish it with `commit`.
pub type WriteTx = sqlx::Transaction<'static, sqlx::Any>;

/// A pooled read connection (derefs to `Conn`).
pub type ReadConn = sqlx::pool::PoolConnection<sqlx::Any>;

/// Commits a write transaction.
pub async fn commit(tx: WriteTx) -> Result<(), StoreError> {
    Ok(tx.commit().await?)
}

/// A flag stored as an integer 0/1 (both backends), read into a `bool` field with
/// `#[sqlx(try_from = "super::Flag")]`: sqlx's `Any` driver reads integers, not booleans, from such columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flag(pub bool);

impl From<Flag> for bool {
    fn from(f: Flag) -> bool {
        f.0
    }
}

impl sqlx::Type<sqlx::Any> for Flag {
    fn type_info() -> sqlx::any::AnyTypeInfo {
        <i64 as sqlx::Type<sqlx::Any>>::type_info()
    }

    fn compatible(ty: &sqlx::any::AnyTypeInfo) -> bool {
        <i64 as sqlx::Type<sqlx::Any>>::compatible(ty)
    }
}

impl<'r> sqlx::Decode<'r, sqlx::Any> for Flag {
    fn decode(value: sqlx::any::AnyValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        Ok(Flag(<i64 as sqlx::Decode<sqlx::Any>>::decode(value)? != 0))
    }
}

/// Which database engine a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// `postgres://` and `postgresql://` URLs are PostgreSQL; `sqlite:` URLs and plain paths are SQLite.
    pub fn of(url: &str) -> Backend {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            Backend::Sqlite
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// The advisory lock every PostgreSQL write transaction takes first (an arbitrary constant: "lbfleet" in ASCII).
const WRITE_LOCK_KEY: i64 = 0x006c_6266_6c65_6574;

/// Handle to the database; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    backend: Backend,
    writer: AnyPool,
    reader: AnyPool,
    /// Connections of their own for long audit exports, so slow exports never hold the readers everything
    /// else needs (the callers cap exports at `EXPORT_CONNECTIONS`).
    export: AnyPool,
    /// The URL without its password, for logs and the control-plane page.
    display_url: String,
}

/// Connections the audit exports may hold at once.
pub const EXPORT_CONNECTIONS: u32 = 2;

/// Registers sqlx's SQLite and PostgreSQL drivers for the `Any` driver (once per process).
fn install_drivers() {
    static DRIVERS: Once = Once::new();
    DRIVERS.call_once(sqlx::any::install_default_drivers);
}

/// `url` with any password replaced by `***`, for logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            if userinfo.contains(':') {
                format!("{scheme}://{user}:***@{host}{tail}")
            } else {
                format!("{scheme}://{user}@{host}{tail}")
            }
        }
        None => url.to_owned(),
    }
}

impl Store {
    /// Opens the database at `url` and runs pending migrations. `sqlite://path`, `sqlite:path` or a plain path:
    /// SQLite, created if missing (0600), WAL, foreign keys on, every commit synced. `postgres://...`: an
    /// existing PostgreSQL database the server may create tables in.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        let store = Self::pools(url, true)?;
        // Connect first, so an unreachable database is a connection error (`is_unreachable`), not a failed
        // migration.
        drop(store.writer.acquire().await?);
        store.migrate().await?;
        Ok(store)
    }

    /// Like `open`, for a database that cannot be reached now (the server starts from its boot cache): the pools
    /// connect on first use, and `migrate` runs the migrations once the database answers. A SQLite file is not
    /// created here.
    pub async fn open_lazy(url: &str) -> Result<Store, StoreError> {
        Self::pools(url, false)
    }

    /// Runs pending migrations. On PostgreSQL under a session advisory lock, so two servers starting at once do
    /// not both run them (sqlx's own migration lock covers the runs, this covers the check before them).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match self.backend {
            Backend::Sqlite => Ok(sqlx::migrate!("../migrations/sqlite")
                .run(&self.writer)
                .await?),
            Backend::Postgres => {
                let mut conn = self.writer.acquire().await?;
                sqlx::query("SELECT pg_advisory_lock($1)")
                    .bind(WRITE_LOCK_KEY)
                    .execute(&mut *conn)
                    .await?;
                let migrated = sqlx::migrate!("../migrations/postgres")
                    .run_direct(&mut *conn)
                    .await;
                sqlx::query("SELECT pg_advisory_unlock($1)")
                    .bind(WRITE_LOCK_KEY)
                    .execute(&mut *conn)
                    .await?;
                Ok(migrated?)
            }
        }
    }

    /// The pools of `url`, connecting on first use. `create`: a missing SQLite file is created (0600).
    fn pools(url: &str, create: bool) -> Result<Store, StoreError> {
        install_drivers();
        let bad_url = |e: sqlx::Error| StoreError::Url {
            url: redact_url(url),
            reason: e.to_string(),
        };
        let backend = Backend::of(url);
        let (rw, ro, write_setup, read_setup): (AnyConnectOptions, AnyConnectOptions, &str, &str) =
            match backend {
                Backend::Sqlite => {
                    let path_url = if url.starts_with("sqlite:") {
                        url.to_owned()
                    } else {
                        format!("sqlite://{url}")
                    };
                    if create {
                        create_private(&path_url)?;
                    }
                    let with_mode = |mode: &str| {
                        let sep = if path_url.contains('?') { '&' } else { '?' };
                        format!("{path_url}{sep}mode={mode}")
                    };
                    (
                        with_mode(if create { "rwc" } else { "rw" })
                            .parse()
                            .map_err(bad_url)?,
                        with_mode("ro").parse().map_err(bad_url)?,
                        // FULL: every commit is fsynced, so an ACKed lease or an acknowledged change survives
                        // power loss, not only a process crash. Group commit (DHCP) keeps the fsync count low.
                        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; \
                         PRAGMA busy_timeout = 10000;",
                        "PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;",
                    )
                }
                Backend::Postgres => {
                    let options: AnyConnectOptions = url.parse().map_err(bad_url)?;
                    (options.clone(), options, "", "")
                }
            };
        let pool =
            |max: u32, timeout: Duration, setup: &'static str, options: AnyConnectOptions| {
                let mut p = AnyPoolOptions::new()
                    .max_connections(max)
                    .min_connections(0)
                    .acquire_timeout(timeout);
                if !setup.is_empty() {
                    p = p.after_connect(move |conn, _| {
                        Box::pin(async move {
                            conn.execute(setup).await?;
                            Ok(())
                        })
                    });
                }
                p.connect_lazy_with(options)
            };
        // One writer connection per server: writes of one server queue here, writes of several servers (on
        // PostgreSQL) queue on the advisory lock (`begin`).
        let writer = pool(1, Duration::from_secs(30), write_setup, rw);
        let reader = pool(8, Duration::from_secs(30), read_setup, ro.clone());
        let export = pool(EXPORT_CONNECTIONS, Duration::from_secs(5), read_setup, ro);
        Ok(Store {
            backend,
            writer,
            reader,
            export,
            display_url: redact_url(url),
        })
    }

    /// The database engine behind this store.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The database URL without its password.
    pub fn display_url(&self) -> &str {
        &self.display_url
    }

    /// Starts a write transaction: waits for this server's writer connection, then for the database's write
    /// lock. On SQLite `BEGIN IMMEDIATE` takes it at once (waiting up to the busy timeout): with two server
    /// processes on one file, a deferred transaction that read first fails with SQLITE_BUSY when the other
    /// process wrote meanwhile. On PostgreSQL the fleet-wide advisory lock (released by the commit or rollback).
    pub async fn begin(&self) -> Result<WriteTx, StoreError> {
        match self.backend {
            Backend::Sqlite => Ok(self.writer.begin_with("BEGIN IMMEDIATE").await?),
            Backend::Postgres => {
                let mut tx = self.writer.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(WRITE_LOCK_KEY)
                    .execute(&mut *tx)
                    .await?;
                Ok(tx)
            }
        }
    }

    /// A read connection for queries outside a write transaction.
    pub async fn read(&self) -> Result<ReadConn, StoreError> {
        Ok(self.reader.acquire().await?)
    }

    /// A read connection of the exports' own pool (never one of the readers).
    pub async fn export_read(&self) -> Result<ReadConn, StoreError> {
        Ok(self.export.acquire().await?)
    }

    /// Proves the database takes a write: a change committed (and so synced to disk) on the writer connection.
    /// Fails when the disk is full or read-only, or the database cannot be locked for writing.
    ///
    /// SQLite writes nothing for an update that leaves a row's bytes as they were, so on SQLite the probe flips
    /// the low bit of the header's `user_version`, which lbfleet uses for nothing else (migrations are tracked
    /// in `_sqlx_migrations`). On PostgreSQL a transaction that takes a transaction id writes and flushes a
    /// commit record; it takes no lock any other transaction waits for.
    pub async fn probe_write(&self) -> Result<(), StoreError> {
        let mut tx = self.writer.begin().await?;
        match self.backend {
            Backend::Sqlite => {
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
            }
            Backend::Postgres => {
                sqlx::query("SELECT CAST(txid_current() AS BIGINT)")
                    .execute(&mut *tx)
                    .await?;
            }
        }
        Ok(tx.commit().await?)
    }

    /// Makes the space of rows just deleted reusable at once. On PostgreSQL a plain `VACUUM` of the tables
    /// (it takes no lock writers wait for, and cannot run inside a transaction); without it a flood of
    /// pruned events grows the database until autovacuum comes by. SQLite reuses freed pages by itself.
    pub async fn reclaim(&self, tables: &[&str]) -> Result<(), StoreError> {
        if self.backend != Backend::Postgres {
            return Ok(());
        }
        let mut conn = self.reader.acquire().await?;
        for table in tables {
            // Table names are the caller's constants, never input; VACUUM takes no bound parameter.
            debug_assert!(table.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
            sqlx::query(&format!("VACUUM {table}"))
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
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

/// The fleet generation (the last one taken).
pub async fn fleet_generation(conn: &mut Conn) -> Result<u64, StoreError> {
    let g: i64 = sqlx::query_scalar("SELECT generation FROM fleet_state WHERE id = 1")
        .fetch_one(conn)
        .await?;
    u64::try_from(g).map_err(|_| StoreError::Corrupt(format!("negative fleet generation {g}")))
}

/// PostgreSQL `NOTIFY channel, payload` (delivered to listeners once this statement's transaction commits).
pub async fn notify(conn: &mut Conn, channel: &str, payload: &str) -> Result<(), StoreError> {
    sqlx::query("SELECT CAST(pg_notify($1, $2) AS TEXT)")
        .bind(channel)
        .bind(payload)
        .execute(conn)
        .await?;
    Ok(())
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
