//! `/healthz` and a database that cannot write (issue 20, item 6): before, `/healthz` only read, so it said
//! 200 while every write failed (a full disk). Now it proves a write, bounded in time, and answers 503 with the
//! reason when the write does not go through. Here another connection holds the database's write lock, which
//! the test can do without root (a full or read-only disk takes the same path: the probe's commit fails).

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use sqlx::Connection;

/// Polls `/healthz` until its status is `want` (or the deadline passes); returns the last status and body.
async fn healthz_until(
    srv: &common::TestServer,
    want: StatusCode,
) -> (StatusCode, Value, Duration) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let t = Instant::now();
        let resp = srv
            .http
            .get(srv.url("/healthz"))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .unwrap();
        let took = t.elapsed();
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if status == want || Instant::now() > deadline {
            return (status, body, took);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_is_503_while_the_database_cannot_write() {
    let dir = tempfile::tempdir().unwrap();
    let srv = common::TestServer::start(dir.path()).await;
    let (s, _, _) = healthz_until(&srv, StatusCode::OK).await;
    assert_eq!(s, StatusCode::OK);

    // Another process's connection takes the write lock and keeps it.
    let mut locker = sqlx::SqliteConnection::connect(&common::db_url(&srv.db_path))
        .await
        .unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut locker)
        .await
        .unwrap();
    sqlx::query("UPDATE fleet_state SET generation = generation WHERE id = 1")
        .execute(&mut locker)
        .await
        .unwrap();

    let (s, body, took) = healthz_until(&srv, StatusCode::SERVICE_UNAVAILABLE).await;
    eprintln!("healthz while writes are blocked: {s} {body} after {took:?}");
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["status"], "unavailable");
    assert!(body["reason"].as_str().unwrap().contains("write"), "{body}");
    assert!(took < Duration::from_secs(5), "bounded in time: {took:?}");

    // The lock goes: healthy again.
    sqlx::query("ROLLBACK").execute(&mut locker).await.unwrap();
    let (s, body, _) = healthz_until(&srv, StatusCode::OK).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    locker.close().await.unwrap();
    drop(srv);
}
