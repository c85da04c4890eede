//! Issue 20, item 2: an agent (any node credential) flooding reports cannot erase an alert, cannot grow the
//! database without bound, and cannot make the events API answer megabytes. Prints the figures it measures
//! (`cargo test -p lbfleet-server --test report_flood -- --nocapture`).

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::TestServer;
use lbfleet_server::retention::{self, Retention};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const MAC: &str = "52:54:00:aa:00:51";
/// Event budget of the server under test: small, so the flood passes it many times over.
const MAX_EVENT_BYTES: i64 = 256 * 1024;
/// Reports in the flood (each within the bounds and as heavy as they allow), and the time they may take.
const FLOOD_REPORTS: u64 = 60;
const FLOOD_DEADLINE: Duration = Duration::from_secs(240);

/// The database's size in bytes: the SQLite file and its WAL, or PostgreSQL's size of the database.
async fn db_bytes(db: &Path) -> u64 {
    if lbfleet_tests::postgres::test_backend_is_postgres() {
        let pool = common::raw_pool(db).await;
        let n: i64 =
            sqlx::query_scalar("SELECT CAST(pg_database_size(current_database()) AS BIGINT)")
                .fetch_one(&pool)
                .await
                .unwrap();
        pool.close().await;
        return u64::try_from(n).unwrap();
    }
    let wal = db.with_extension("db-wal");
    [db.to_path_buf(), wal]
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

fn reenrolled(alerts: &Value) -> Vec<Value> {
    alerts["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["kind"] == "reenrolled")
        .cloned()
        .collect()
}

async fn report(srv: &TestServer, credential: &str, body: &Value) -> (StatusCode, Value) {
    srv.call(
        Method::POST,
        "/api/v1/agent/report",
        Some(credential),
        Some(body.clone()),
    )
    .await
}

/// Events of the node as the database holds them (count, bytes of messages), read on a connection of its own.
async fn stored_events(db: &Path) -> (i64, i64) {
    let pool = common::raw_pool(db).await;
    let row: (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), CAST(COALESCE(SUM(octet_length(message)), 0) AS BIGINT) FROM events",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    pool.close().await;
    row
}

/// A report as heavy as the bounds allow: 64 VRRP transitions with 500-byte reasons (all new), 16 errors and
/// 1,000 health transitions with 500-byte reasons.
fn heavy_report(round: u64) -> Value {
    let text = |tag: &str, i: u64| format!("{tag} {round}/{i} {}", "x".repeat(480));
    let transitions: Vec<Value> = (0..64)
        .map(|i| {
            json!({"from": "backup", "to": "master", "reason": text("vrrp", i),
                   "at_ms": 1_000_000 + round * 100 + i})
        })
        .collect();
    let health: Vec<Value> = (0..1000)
        .map(|i| {
            json!({"service": "198.18.0.10:80/tcp", "address": "198.18.2.1", "port": 80,
                   "from": "up", "to": "down", "at": round, "reason": text("health", i)})
        })
        .collect();
    let errors: Vec<String> = (0..16).map(|i| text("error", i)).collect();
    json!({"applied_generation": 0, "vrrp_transitions": transitions, "health_events": health,
           "errors": errors})
}

#[tokio::test]
async fn an_alert_survives_a_report_flood_and_the_database_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("lbfleet.db");
    let tokens = common::seed(&db).await;
    let bounded = Retention {
        max_rows: 5_000,
        max_bytes: MAX_EVENT_BYTES,
        ..Retention::default()
    };
    let srv = TestServer::start_with(db.clone(), tokens, |c| c.retention = bounded).await;

    // A node enrolls and reports; then its token is redeemed again while it is alive: a crit alert.
    let first = srv.enrolled_node(MAC, "lb-51").await;
    let (s, v) = report(&srv, &first, &json!({"applied_generation": 0})).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    let (s, v) = srv
        .post(
            "/api/v1/nodes/lb-51/enrollment-token",
            &srv.tokens.operator,
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = srv
        .call(
            Method::POST,
            "/api/v1/agent/enroll",
            None,
            Some(json!({"token": v["token"], "mac": MAC})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let credential = v["credential"].as_str().unwrap().to_owned();
    let (_, alerts) = srv.get("/api/v1/alerts", &srv.tokens.viewer).await;
    assert_eq!(reenrolled(&alerts).len(), 1, "{alerts}");
    let (events_before, _) = stored_events(&db).await;
    let size_before = db_bytes(&db).await;

    // Over the bounds: refused whole, naming the field, and nothing of it stored.
    let many: Vec<Value> = (0..10_000u64)
        .map(|i| json!({"from": "backup", "to": "master", "reason": "x", "at_ms": 5_000_000 + i}))
        .collect();
    let control = json!([{"from": "backup", "to": "master", "reason": "ok\u{7}\n\u{1b}[2J",
                          "at_ms": 6_000_000}]);
    for (what, body, field) in [
        (
            "10,000 transitions",
            json!({"applied_generation": 0, "vrrp_state": "master", "vrrp_transitions": many}),
            "vrrp_transitions",
        ),
        (
            "a reason with control characters",
            json!({"applied_generation": 0, "vrrp_state": "master", "vrrp_transitions": control}),
            "vrrp_transitions[0].reason",
        ),
        (
            "a 600-byte error",
            json!({"applied_generation": 0, "vrrp_state": "master", "errors": ["e".repeat(600)]}),
            "errors[0]",
        ),
        (
            "a master that is a claim",
            json!({"applied_generation": 0, "vrrp_state": "master",
                   "vrrp_master": "lb-02 <- trust me"}),
            "vrrp_master",
        ),
        (
            "a drop counter with markup",
            json!({"applied_generation": 0, "vrrp_state": "master",
                   "vrrp_dropped": {"<b>ttl</b>": 1}}),
            "vrrp_dropped[\"<b>ttl</b>\"]",
        ),
    ] {
        let (s, v) = report(&srv, &credential, &body).await;
        assert!(
            s == StatusCode::UNPROCESSABLE_ENTITY || s == StatusCode::PAYLOAD_TOO_LARGE,
            "{what}: {s} {v}"
        );
        let fields: Vec<&str> = v["error"]["fields"]
            .as_array()
            .map(|f| f.iter().filter_map(|e| e["field"].as_str()).collect())
            .unwrap_or_default();
        assert!(
            s == StatusCode::PAYLOAD_TOO_LARGE || fields.contains(&field),
            "{what}: {v}"
        );
    }
    assert_eq!(
        stored_events(&db).await.0,
        events_before,
        "a refused report stored events"
    );
    let (_, node) = srv.get("/api/v1/nodes/lb-51", &srv.tokens.viewer).await;
    assert!(
        node["vrrp_state"].is_null(),
        "a refused report changed the node: {node}"
    );

    // The flood: reports within the bounds, each as heavy as they allow, bounded in count and time.
    let started = Instant::now();
    let mut peak_growth = 0u64;
    let mut written = 0usize;
    for round in 0..FLOOD_REPORTS {
        assert!(
            started.elapsed() < FLOOD_DEADLINE,
            "the flood took too long"
        );
        let body = heavy_report(round);
        written += body.to_string().len();
        let (s, v) = report(&srv, &credential, &body).await;
        assert_eq!(s, StatusCode::NO_CONTENT, "round {round}: {v}");
        peak_growth = peak_growth.max(db_bytes(&db).await.saturating_sub(size_before));
    }
    let flood_time = started.elapsed();

    // Retention catches up on its own (it runs early under a flood): wait for it under a deadline.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (rows, bytes) = loop {
        let (rows, bytes) = stored_events(&db).await;
        if bytes <= MAX_EVENT_BYTES || Instant::now() > deadline {
            break (rows, bytes);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        bytes <= MAX_EVENT_BYTES,
        "events hold {bytes} bytes in {rows} rows, over the {MAX_EVENT_BYTES}-byte bound"
    );
    // The periodic run, as it would run later, from another handle on the same database.
    let fleet = lbfleet_server::open_fleet(&lbfleet_server::ServerConfig::with_database(
        common::db_url(&db),
    ))
    .await
    .unwrap();
    retention::prune(&fleet, bounded).await.unwrap();
    fleet.close().await;
    peak_growth = peak_growth.max(db_bytes(&db).await.saturating_sub(size_before));

    // The alert is still there.
    let (_, alerts) = srv.get("/api/v1/alerts", &srv.tokens.viewer).await;
    let got = reenrolled(&alerts);
    assert_eq!(got.len(), 1, "the re-enrollment alert is gone: {alerts}");
    assert_eq!(got[0]["node"], "lb-51");
    let overview = srv.page_as("view", "/").await;
    assert!(
        overview.contains("node lb-51 re-enrolled while its agent was alive"),
        "the dashboard lost the alert"
    );

    // The database did not follow the flood: it grew by a small part of what was written.
    let bound = 16 * 1024 * 1024;
    println!(
        "report flood: {FLOOD_REPORTS} reports, {written} bytes posted in {:.1} s; events left: {rows} rows, \
         {bytes} bytes; peak database growth (db + wal) {peak_growth} bytes (bound {bound})",
        flood_time.as_secs_f64()
    );
    assert!(
        peak_growth <= bound,
        "the database grew by {peak_growth} bytes (bound {bound}) after {written} bytes of reports"
    );
    assert!((written as u64) > 2 * bound, "the flood is not a flood");
}

/// Rows stored before reports were bounded can hold megabytes each; a listing stays around a megabyte.
#[tokio::test]
async fn the_events_api_answers_a_bounded_number_of_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path()).await;
    let pool = common::raw_pool(&srv.db_path).await;
    // Recent (retention prunes by age at start), in the past (before the server's own events).
    let at = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
        - 3_600_000;
    for i in 0..12 {
        sqlx::query("INSERT INTO events (at, kind, message) VALUES ($1, 'vrrp', $2)")
            .bind(at + i)
            .bind(format!(
                "VRRP backup -> master: {}",
                "r".repeat(1024 * 1024)
            ))
            .execute(&pool)
            .await
            .unwrap();
    }
    for i in 0..2000 {
        sqlx::query("INSERT INTO events (at, kind, message) VALUES ($1, 'health', $2)")
            .bind(at + 100 + i)
            .bind(format!("real server {i} is down: {}", "h".repeat(1000)))
            .execute(&pool)
            .await
            .unwrap();
    }
    pool.close().await;

    // The old big rows: each cut, and marked so.
    let resp = srv
        .http
        .get(srv.url("/api/v1/events?kind=vrrp&limit=40"))
        .bearer_auth(&srv.tokens.viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.bytes().await.unwrap();
    println!(
        "events API: 12 rows of 1 MiB answered in {} bytes",
        body.len()
    );
    assert!(body.len() < 64 * 1024, "answered {} bytes", body.len());
    let v: Value = serde_json::from_slice(&body).unwrap();
    let events = v["events"].as_array().unwrap();
    assert_eq!(events.len(), 12);
    assert!(events.iter().all(|e| e["message_cut"] == true), "{v}");

    // Many rows: they stop at the byte budget, and the answer says so.
    let resp = srv
        .http
        .get(srv.url("/api/v1/events?kind=health&limit=1000"))
        .bearer_auth(&srv.tokens.viewer)
        .send()
        .await
        .unwrap();
    let body = resp.bytes().await.unwrap();
    println!(
        "events API: 1,000 rows of 1 KiB answered in {} bytes",
        body.len()
    );
    assert!(
        body.len() < 2 * 1024 * 1024,
        "answered {} bytes",
        body.len()
    );
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["truncated"], true, "{}", &v.to_string()[..200]);
    let n = v["events"].as_array().unwrap().len();
    assert!(n > 500 && n < 1000, "{n} rows");
}

/// A stored alert leaves the list when an operator acknowledges it (a viewer may not), and the audit log says
/// who did.
#[tokio::test]
async fn an_operator_acknowledges_a_stored_alert_and_it_is_audited() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path()).await;
    let first = srv.enrolled_node(MAC, "lb-51").await;
    let (s, _) = report(&srv, &first, &json!({"applied_generation": 0})).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (_, v) = srv
        .post(
            "/api/v1/nodes/lb-51/enrollment-token",
            &srv.tokens.operator,
            json!({}),
        )
        .await;
    let (s, _) = srv
        .call(
            Method::POST,
            "/api/v1/agent/enroll",
            None,
            Some(json!({"token": v["token"], "mac": MAC})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, alerts) = srv.get("/api/v1/alerts", &srv.tokens.viewer).await;
    let got = reenrolled(&alerts);
    assert_eq!(got.len(), 1, "{alerts}");
    assert_eq!(got[0]["count"], 1, "{alerts}");
    let id = got[0]["id"].as_i64().unwrap();
    let path = format!("/api/v1/alerts/{id}/acknowledge");
    let (s, _) = srv.post(&path, &srv.tokens.viewer, json!({})).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, v) = srv.post(&path, &srv.tokens.operator, json!({})).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    let (_, alerts) = srv.get("/api/v1/alerts", &srv.tokens.viewer).await;
    assert!(reenrolled(&alerts).is_empty(), "{alerts}");
    let (s, _) = srv.post(&path, &srv.tokens.operator, json!({})).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "an alert is acknowledged once");
    let (_, audit) = srv
        .get("/api/v1/audit?action=alert.acknowledge", &srv.tokens.admin)
        .await;
    let entries = audit["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{audit}");
    assert_eq!(entries[0]["actor"], "oper");
    assert_eq!(entries[0]["target"], format!("alert:{id}"));
}
