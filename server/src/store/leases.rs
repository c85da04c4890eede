//! DHCP leases: the durable copy of the DHCP server's in-memory lease table.

pub mod leaders;

use super::{now_ms, Conn, StoreError};

/// One stored lease row.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct LeaseRow {
    pub address: String,
    pub mac: String,
    pub state: String,
    pub expires_at: i64,
}

/// Leases still worth restoring (bound or declined, not yet expired).
pub async fn active(conn: &mut Conn, now: i64) -> Result<Vec<LeaseRow>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT address, mac, state, expires_at FROM leases WHERE expires_at > $1 AND state IN ('bound', 'declined')",
    )
    .bind(now)
    .fetch_all(conn)
    .await?)
}

/// Rows per statement in `upsert_many`: 5 parameters each, far below SQLite's parameter limit.
const UPSERT_CHUNK: usize = 200;

/// `upsert` of many rows with one statement per `UPSERT_CHUNK` rows. Rows apply in order, so when one address
/// appears twice the later row wins, exactly as with one `upsert` per row.
pub async fn upsert_many(conn: &mut Conn, rows: &[LeaseRow]) -> Result<(), StoreError> {
    let now = now_ms();
    for chunk in rows.chunks(UPSERT_CHUNK) {
        let mut sql = String::with_capacity(160 + chunk.len() * 32);
        sql.push_str("INSERT INTO leases (address, mac, state, expires_at, updated_at) VALUES ");
        for i in 0..chunk.len() {
            let p = i * 5;
            if i > 0 {
                sql.push(',');
            }
            sql.push_str(&format!(
                "(${}, ${}, ${}, ${}, ${})",
                p + 1,
                p + 2,
                p + 3,
                p + 4,
                p + 5
            ));
        }
        sql.push_str(
            " ON CONFLICT (address) DO UPDATE SET mac = excluded.mac, state = excluded.state, \
             expires_at = excluded.expires_at, updated_at = excluded.updated_at",
        );
        let mut q = sqlx::query(&sql);
        for row in chunk {
            q = q
                .bind(&row.address)
                .bind(&row.mac)
                .bind(&row.state)
                .bind(row.expires_at)
                .bind(now);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

pub async fn remove(conn: &mut Conn, address: &str, mac: &str) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM leases WHERE address = $1 AND mac = $2")
        .bind(address)
        .bind(mac)
        .execute(conn)
        .await?;
    Ok(())
}

/// Registered nodes with a fixed address: (mac, address, hostname).
pub async fn reservations(
    conn: &mut Conn,
) -> Result<Vec<(String, String, Option<String>)>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT mac, reserved_address, hostname FROM nodes WHERE reserved_address IS NOT NULL \
         AND state NOT IN ('retired', 'rejected')",
    )
    .fetch_all(conn)
    .await?)
}

/// MACs of registered (approved) nodes: they boot outside the DHCP discovery budget.
pub async fn registered_macs(conn: &mut Conn) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT mac FROM nodes WHERE state NOT IN ('discovered', 'retired', 'rejected')",
    )
    .fetch_all(conn)
    .await?)
}

/// Whether a MAC is a node that must not be served (retired or rejected).
pub async fn refused_macs(conn: &mut Conn) -> Result<Vec<String>, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT mac FROM nodes WHERE state IN ('retired', 'rejected')")
            .fetch_all(conn)
            .await?,
    )
}

/// True when `mac` holds a bound, unexpired lease on `address` (the boot-trust check for enrollment tokens).
pub async fn bound_to(
    conn: &mut Conn,
    mac: &str,
    address: &str,
    now: i64,
) -> Result<bool, StoreError> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM leases WHERE mac = $1 AND address = $2 AND state = 'bound' AND expires_at > $3",
    )
    .bind(mac)
    .bind(address)
    .bind(now)
    .fetch_one(conn)
    .await?;
    Ok(n > 0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn row(address: &str, mac: &str, expires_at: i64) -> LeaseRow {
        LeaseRow {
            address: address.into(),
            mac: mac.into(),
            state: "bound".into(),
            expires_at,
        }
    }

    #[tokio::test]
    async fn upsert_many_writes_every_row_and_the_later_of_two_wins() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            super::super::Store::open(&format!("sqlite://{}", dir.path().join("t.db").display()))
                .await
                .unwrap();
        // More rows than one statement holds, an address twice (in different statements and in one).
        let mut rows: Vec<LeaseRow> = (0..450)
            .map(|i| {
                row(
                    &format!("198.18.1.{}", i % 250),
                    &format!("52:54:00:00:{:02x}:{:02x}", i / 256, i % 256),
                    1_000 + i,
                )
            })
            .collect();
        rows.push(row("198.18.1.7", "52:54:00:aa:aa:aa", 9_999));
        let mut tx = store.begin().await.unwrap();
        upsert_many(&mut tx, &rows).await.unwrap();
        upsert_many(&mut tx, &[]).await.unwrap();
        tx.commit().await.unwrap();
        let mut conn = store.read().await.unwrap();
        let stored = active(&mut conn, 0).await.unwrap();
        assert_eq!(stored.len(), 250);
        let seven = stored.iter().find(|r| r.address == "198.18.1.7").unwrap();
        assert_eq!(
            (seven.mac.as_str(), seven.expires_at),
            ("52:54:00:aa:aa:aa", 9_999)
        );
        // The last of the generated rows for .10 is i = 260 (i % 250 == 10, i < 450).
        let ten = stored.iter().find(|r| r.address == "198.18.1.10").unwrap();
        assert_eq!(ten.expires_at, 1_260);
    }
}
