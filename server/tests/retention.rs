//! Event retention (issue 13): events are pruned by age and by count; the audit log is untouched.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use lbfleet_server::retention::{self, Retention};
use lbfleet_server::store::{self, Store};

#[tokio::test]
async fn events_are_pruned_by_age_and_count() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("lbfleet.db");
    let store = Store::open(&common::db_url(&db)).await.unwrap();
    let mut tx = store.begin().await.unwrap();
    for i in 0..30 {
        store::events::insert(&mut tx, "test", None, None, &format!("event {i}"))
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

    let deleted = retention::prune(
        &store,
        Retention {
            max_age: Duration::from_secs(3600),
            max_rows: 10,
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
