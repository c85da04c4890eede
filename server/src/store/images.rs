//! Boot images: a named kernel + initrd pair under the boot directory.

use serde::{Deserialize, Serialize};

use super::{now_ms, Conn, StoreError};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct ImageRow {
    pub name: String,
    pub kernel: String,
    pub initrd: String,
    pub cmdline: String,
    #[sqlx(try_from = "super::Flag")]
    pub is_default: bool,
    pub created_at: i64,
    /// From the manifest `image add` verified; `None` for an image registered by hand.
    #[serde(default)]
    pub kernel_version: Option<String>,
    #[serde(default)]
    pub agent_version: Option<String>,
    #[serde(default)]
    pub kernel_sha256: Option<String>,
    #[serde(default)]
    pub initrd_sha256: Option<String>,
}

const COLUMNS: &str =
    "name, kernel, initrd, cmdline, is_default, created_at, kernel_version, agent_version, \
                       kernel_sha256, initrd_sha256";

pub async fn list(conn: &mut Conn) -> Result<Vec<ImageRow>, StoreError> {
    Ok(
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM images ORDER BY name"))
            .fetch_all(conn)
            .await?,
    )
}

pub async fn get(conn: &mut Conn, name: &str) -> Result<Option<ImageRow>, StoreError> {
    Ok(
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM images WHERE name = $1"))
            .bind(name)
            .fetch_optional(conn)
            .await?,
    )
}

pub async fn default_image(conn: &mut Conn) -> Result<Option<ImageRow>, StoreError> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM images WHERE is_default = 1"
    ))
    .fetch_optional(conn)
    .await?)
}

/// Creates or replaces an image; a new default clears the old default's flag.
pub async fn upsert(conn: &mut Conn, img: &ImageRow) -> Result<(), StoreError> {
    if img.is_default {
        sqlx::query("UPDATE images SET is_default = 0 WHERE name != $1")
            .bind(&img.name)
            .execute(&mut *conn)
            .await?;
    }
    sqlx::query(
        "INSERT INTO images (name, kernel, initrd, cmdline, is_default, created_at, kernel_version, agent_version, \
         kernel_sha256, initrd_sha256) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
         ON CONFLICT (name) DO UPDATE SET kernel = excluded.kernel, initrd = excluded.initrd, \
         cmdline = excluded.cmdline, is_default = excluded.is_default, kernel_version = excluded.kernel_version, \
         agent_version = excluded.agent_version, kernel_sha256 = excluded.kernel_sha256, \
         initrd_sha256 = excluded.initrd_sha256",
    )
    .bind(&img.name)
    .bind(&img.kernel)
    .bind(&img.initrd)
    .bind(&img.cmdline)
    .bind(i64::from(img.is_default))
    .bind(now_ms())
    .bind(&img.kernel_version)
    .bind(&img.agent_version)
    .bind(&img.kernel_sha256)
    .bind(&img.initrd_sha256)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn users_of(conn: &mut Conn, name: &str) -> Result<i64, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT COUNT(*) FROM nodes WHERE image = $1 AND state != 'retired'")
            .bind(name)
            .fetch_one(conn)
            .await?,
    )
}

/// Nodes (not retired) that boot `name`: named on the node, or, for the default image, nodes that name none.
pub async fn users_with_default(conn: &mut Conn, name: &str) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT COUNT(*) FROM nodes WHERE state != 'retired' AND (image = $1 OR (image IS NULL AND \
         EXISTS (SELECT 1 FROM images WHERE name = $1 AND is_default = 1)))",
    )
    .bind(name)
    .fetch_one(conn)
    .await?)
}

/// Deletes an image; retired nodes that named it forget it (they boot nothing, and the audit log keeps the
/// history). Callers check first that no other node uses it.
pub async fn delete(conn: &mut Conn, name: &str) -> Result<u64, StoreError> {
    sqlx::query("UPDATE nodes SET image = NULL WHERE image = $1 AND state = 'retired'")
        .bind(name)
        .execute(&mut *conn)
        .await?;
    Ok(sqlx::query("DELETE FROM images WHERE name = $1")
        .bind(name)
        .execute(conn)
        .await?
        .rows_affected())
}
