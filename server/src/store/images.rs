//! Boot images: a named kernel + initrd pair under the boot directory.

use serde::{Deserialize, Serialize};
use sqlx::SqliteConnection;

use super::{now_ms, StoreError};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct ImageRow {
    pub name: String,
    pub kernel: String,
    pub initrd: String,
    pub cmdline: String,
    pub is_default: bool,
    pub created_at: i64,
}

pub async fn list(conn: &mut SqliteConnection) -> Result<Vec<ImageRow>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT name, kernel, initrd, cmdline, is_default, created_at FROM images ORDER BY name",
    )
    .fetch_all(conn)
    .await?)
}

pub async fn get(conn: &mut SqliteConnection, name: &str) -> Result<Option<ImageRow>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT name, kernel, initrd, cmdline, is_default, created_at FROM images WHERE name = $1",
    )
    .bind(name)
    .fetch_optional(conn)
    .await?)
}

pub async fn default_image(conn: &mut SqliteConnection) -> Result<Option<ImageRow>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT name, kernel, initrd, cmdline, is_default, created_at FROM images WHERE is_default = 1",
    )
    .fetch_optional(conn)
    .await?)
}

/// Creates or replaces an image; a new default clears the old default's flag.
pub async fn upsert(conn: &mut SqliteConnection, img: &ImageRow) -> Result<(), StoreError> {
    if img.is_default {
        sqlx::query("UPDATE images SET is_default = 0 WHERE name != $1")
            .bind(&img.name)
            .execute(&mut *conn)
            .await?;
    }
    sqlx::query(
        "INSERT INTO images (name, kernel, initrd, cmdline, is_default, created_at) VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (name) DO UPDATE SET kernel = excluded.kernel, initrd = excluded.initrd, \
         cmdline = excluded.cmdline, is_default = excluded.is_default",
    )
    .bind(&img.name)
    .bind(&img.kernel)
    .bind(&img.initrd)
    .bind(&img.cmdline)
    .bind(img.is_default)
    .bind(now_ms())
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn users_of(conn: &mut SqliteConnection, name: &str) -> Result<i64, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT COUNT(*) FROM nodes WHERE image = $1 AND state != 'retired'")
            .bind(name)
            .fetch_one(conn)
            .await?,
    )
}

pub async fn delete(conn: &mut SqliteConnection, name: &str) -> Result<u64, StoreError> {
    Ok(sqlx::query("DELETE FROM images WHERE name = $1")
        .bind(name)
        .execute(conn)
        .await?
        .rows_affected())
}
