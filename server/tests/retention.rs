//! Event retention (issue 13): events are pruned by age and by count; the audit log is untouched. Issue 20:
//! by bytes too, and open alerts (rows of their own) are never pruned.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use lbfleet_server::fleet::Fleet;
use lbfleet_server::retention::{self, Retention};
use lbfleet_server::store::{self, Store};

#[tokio::test]
async fn events_are_pruned_by_age_and_count() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("lbfleet.db");
    let store = Store::open(&common::db_url(&db)).await.unwrap();
    let mut tx = store.begin().await.unwrap();
    for i in 0..30 {
        store::events::insert(
            &mut tx,
            store::events::EventKind::AgentError,
            None,
            None,
            &format!("event {i}"),
        )
        .await
        .unwrap();
    }
    // Five of them happened long ago.
    sqlx::query("UPDATE events SET at = 1000 WHERE id <= 5")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let audit_before = {
        let mut conn = store.read().await.unwrap();
        store::audit::verify(&mut conn).await.unwrap()
    };

    let fleet = Fleet::new(store.clone(), Duration::from_secs(60));
    let deleted = retention::prune(
        &fleet,
        Retention {
            max_age: Duration::from_secs(3600),
            max_rows: 10,
            ..Retention::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(deleted, 20, "5 by age, 15 over the count");
    let mut conn = store.read().await.unwrap();
    let left = store::events::list(
        &mut conn,
        &store::events::EventFilter {
            limit: 100,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(left.len(), 10);
    assert_eq!(left[0].message, "event 29", "the newest are kept");
    assert_eq!(left[9].message, "event 20");
    let audit_after = store::audit::verify(&mut conn).await.unwrap();
    assert_eq!(
        serde_json::to_value(&audit_before).unwrap(),
        serde_json::to_value(&audit_after).unwrap()
    );
    drop(conn);
    store.close().await;
}

#[tokio::test]
async fn events_are_pruned_by_bytes_and_open_alerts_stay() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("lbfleet.db");
    let store = Store::open(&common::db_url(&db)).await.unwrap();
    let mut tx = store.begin().await.unwrap();
    let now = store::now_ms();
    let open = store::alerts::raise(&mut tx, "reenrolled", None, None, "open", now, now + 60_000)
        .await
        .unwrap();
    // Raised again while open: the same row.
    assert_eq!(
        store::alerts::raise(
            &mut tx,
            "reenrolled",
            None,
            None,
            "again",
            now,
            now + 60_000
        )
        .await
        .unwrap(),
        open
    );
    let expired = store::alerts::raise(&mut tx, "drained", None, None, "old", 1_000, 2_000)
        .await
        .unwrap();
    assert_ne!(open, expired);
    for i in 0..30 {
        store::events::insert(
            &mut tx,
            store::events::EventKind::AgentError,
            None,
            None,
            &format!("{i:03}{}", "x".repeat(997)),
        )
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
    let fleet = Fleet::new(store.clone(), Duration::from_secs(60));
    assert_eq!(fleet.event_bytes().await.unwrap(), 30 * (1000 + 64));
    let deleted = retention::prune(
        &fleet,
        Retention {
            max_bytes: 10 * (1000 + 64) + 500,
            ..Retention::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(deleted, 20, "the 20 oldest are over the byte bound");
    let mut conn = store.read().await.unwrap();
    let left = store::events::list(
        &mut conn,
        &store::events::EventFilter {
            limit: 100,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(left.len(), 10);
    assert!(left[0].message.starts_with("029") && left[9].message.starts_with("020"));
    let alerts = store::alerts::open(&mut conn, store::now_ms(), 100)
        .await
        .unwrap();
    assert_eq!(
        alerts.iter().map(|a| (a.id, a.count)).collect::<Vec<_>>(),
        vec![(open, 2)]
    );
    let all: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM alerts")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(
        all, 1,
        "the long-expired alert is pruned, the open one kept"
    );
    drop(conn);
    store.close().await;
}
