//! `lbfleet-server db copy` (issue 21): a site on the embedded SQLite file moves to PostgreSQL and back. After
//! each copy a server on the destination has the same fleet: users log in with their passwords, API tokens and
//! node credentials work, clusters and nodes are the same, and the audit chain verifies with every row. A copy
//! into a database that already holds a fleet is refused and changes nothing.
//!
//! Needs PostgreSQL (the kit starts a cluster), whatever backend the rest of the component tier runs on.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::{cluster_spec, seed_url, sqlite_url, TestServer, Tokens};
use lbfleet_server::ServerConfig;
use reqwest::StatusCode;
use serde_json::{json, Value};

const SERVER_BIN: &str = env!("CARGO_BIN_EXE_lbfleet-server");

async fn start_on(url: &str, dir: &Path, tokens: Tokens) -> TestServer {
    let mut config = ServerConfig::with_database(url.to_owned());
    config.state_dir = dir.to_owned();
    TestServer::start_config(dir.join("unused.db"), tokens, config).await
}

/// What must survive a copy, read through a server's API.
async fn fleet_view(srv: &TestServer, credential: &str) -> Value {
    let v = &srv.tokens.viewer;
    let (s, cluster) = srv.get("/api/v1/clusters/ext", v).await;
    assert_eq!(s, StatusCode::OK, "{cluster}");
    let (_, nodes) = srv.get("/api/v1/nodes", v).await;
    let nodes: Vec<Value> = nodes["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| json!([n["name"], n["mac"], n["state"], n["cluster"], n["role"]]))
        .collect();
    let (s, verify) = srv.get("/api/v1/audit/verify", v).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(verify["ok"], true, "{verify}");
    let (s, role) = srv.get("/api/v1/agent/role?after=0", credential).await;
    assert_eq!(s, StatusCode::OK, "the node credential: {role}");
    // A password login (argon2 hash copied as is).
    let login = srv
        .http
        .post(srv.url("/api/v1/login"))
        .json(&json!({"username": "oper", "password": common::PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), StatusCode::OK, "password login");
    json!({
        "cluster": cluster["spec"],
        "nodes": nodes,
        "audit_rows": verify["rows"],
        "audit_head": verify["head_hash"],
        "role_generation": role["generation"],
    })
}

fn db_copy(from: &str, to: &str) -> std::process::Output {
    Command::new(SERVER_BIN)
        .args(["db", "copy", "--from", from, "--to", to])
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_site_moves_to_postgres_and_back_with_its_audit_chain() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = sqlite_url(&dir.path().join("old.db"));
    let tokens = seed_url(&sqlite).await;

    // The site on SQLite: a cluster, two nodes (one enrolled and active), some audit history.
    let srv = start_on(&sqlite, &dir.path().join("s1"), tokens.clone()).await;
    let op = srv.tokens.operator.clone();
    let (s, v) = srv
        .put("/api/v1/clusters/ext", &op, cluster_spec(51, "198.18.0.10"))
        .await;
    assert!(s.is_success(), "{v}");
    let credential = srv.enrolled_node("52:54:00:21:00:01", "lb-01").await;
    srv.post(
        "/api/v1/nodes",
        &op,
        json!({"mac": "52:54:00:21:00:02", "hostname": "lb-02"}),
    )
    .await;
    let (s, v) = srv
        .post(
            "/api/v1/nodes/lb-01/assign",
            &op,
            json!({"cluster": "ext", "role": "active"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let before = fleet_view(&srv, &credential).await;
    srv.stop().await;

    // SQLite -> PostgreSQL.
    let pg = lbfleet_tests::postgres::shared().database("copy_dest");
    let out = db_copy(&sqlite, &pg);
    assert!(
        out.status.success(),
        "db copy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("audit chain verified"), "{text}");
    let on_pg = start_on(&pg, &dir.path().join("s2"), tokens.clone()).await;
    assert_eq!(fleet_view(&on_pg, &credential).await, before);
    // New rows after the copy get fresh ids (identity columns moved past the copied ones).
    let (s, v) = on_pg
        .post(
            "/api/v1/nodes",
            &op,
            json!({"mac": "52:54:00:21:00:03", "hostname": "lb-03"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let moved = fleet_view(&on_pg, &credential).await;
    on_pg.stop().await;

    // Into a database that holds a fleet: refused, nothing changed.
    let out = db_copy(&sqlite, &pg);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already holds a fleet"), "{err}");
    let again = start_on(&pg, &dir.path().join("s3"), tokens.clone()).await;
    assert_eq!(fleet_view(&again, &credential).await, moved);
    again.stop().await;

    // And back: PostgreSQL -> a new SQLite file.
    let back = sqlite_url(&dir.path().join("back.db"));
    let out = db_copy(&pg, &back);
    assert!(
        out.status.success(),
        "db copy back failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let on_sqlite = start_on(&back, &dir.path().join("s4"), tokens).await;
    assert_eq!(fleet_view(&on_sqlite, &credential).await, moved);
    on_sqlite.stop().await;
}

#[test]
fn a_missing_source_file_is_an_error_not_a_new_database() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.db");
    let out = db_copy(
        &sqlite_url(&missing),
        &sqlite_url(&dir.path().join("to.db")),
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no such SQLite database file"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!missing.exists());
}
