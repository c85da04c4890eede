//! Audit exports that crawl (issue 20, item 4): eight exports whose clients read nothing must not starve the
//! database. Before, each export held one of the eight reader connections until it finished, so eight slow
//! exports made every API call, the dashboard, agents and `/healthz` wait 30 s and fail. Now exports read on
//! connections of their own, one per user and two in all at once (the others get 429 at once).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Audit rows added before the server starts, ~1 KiB each: an export far larger than the socket buffers.
const ROWS: usize = 40_000;

/// Appends `ROWS` large rows to the audit log straight in the database (the export does not check the chain).
async fn grow_audit_log(db_path: &std::path::Path) {
    let pool = common::raw_pool(db_path).await;
    let mut tx = pool.begin().await.unwrap();
    let first: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) + 1 FROM audit_log")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    let after = format!("{{\"note\":\"{}\"}}", "x".repeat(900));
    for i in 0..ROWS {
        sqlx::query(
            "INSERT INTO audit_log (seq, at, actor, action, target, before_json, after_json, prev_hash, hash) \
             VALUES ($1, $2, 'test', 'test.bulk', $3, NULL, $4, 'x', 'y')",
        )
        .bind(first + i64::try_from(i).unwrap())
        .bind(i64::try_from(i).unwrap())
        .bind(format!("node:bulk-{i}"))
        .bind(&after)
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    // The chain's head follows, so the server's next append numbers its row after these.
    sqlx::query("UPDATE audit_head SET seq = (SELECT MAX(seq) FROM audit_log) WHERE id = 1")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    pool.close().await;
}

/// Starts an export as `cookie` from `from` and reads only its response head: the status code.
async fn crawling_export(
    to: SocketAddr,
    from: IpAddr,
    cookie: &str,
) -> (u16, tokio::net::TcpStream) {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.bind(SocketAddr::new(from, 0)).unwrap();
    let mut s = sock.connect(to).await.unwrap();
    s.write_all(
        format!("GET /audit/export.csv HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(40), s.read(&mut buf))
            .await
            .expect("export answered within 40 s")
            .unwrap();
        assert!(n > 0, "export connection closed before its head");
        head.extend_from_slice(&buf[..n]);
    }
    let status = String::from_utf8_lossy(&head)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    (status, s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_api_and_agents_answer_while_eight_exports_crawl() {
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("lbfleet.db");
    let tokens = common::seed(&db_path).await;
    grow_audit_log(&db_path).await;
    let srv = common::TestServer::start_with(db_path, tokens, |_| {}).await;
    let cred = srv.enrolled_node("52:54:00:ee:00:01", "lb-01").await;
    let addr: SocketAddr = srv.base.trim_start_matches("http://").parse().unwrap();

    // Eight exports that crawl: four by the viewer, four by the operator, from eight addresses.
    let cookies = [
        srv.session_cookie("view").await,
        srv.session_cookie("oper").await,
    ];
    let mut crawling = Vec::new();
    let mut statuses = Vec::new();
    for i in 0..8u8 {
        let (status, s) = crawling_export(
            addr,
            IpAddr::from([127, 0, 0, 10 + i]),
            &cookies[usize::from(i % 2)],
        )
        .await;
        statuses.push(status);
        crawling.push(s);
    }
    eprintln!("export statuses: {statuses:?}");
    let running = statuses.iter().filter(|s| **s == 200).count();
    assert!(running >= 1, "at least one export runs: {statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );

    // Meanwhile /healthz, an API call and an agent's role request answer promptly.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    for round in 0..5 {
        let t = Instant::now();
        let h = client.get(srv.url("/healthz")).send().await;
        let healthz_took = t.elapsed();
        let t = Instant::now();
        let api = client
            .get(srv.url("/api/v1/nodes"))
            .bearer_auth(&srv.tokens.viewer)
            .send()
            .await;
        let api_took = t.elapsed();
        let t = Instant::now();
        let role = client
            .get(srv.url("/api/v1/agent/role?after=0"))
            .bearer_auth(&cred)
            .send()
            .await;
        let role_took = t.elapsed();
        eprintln!(
            "round {round}: /healthz {healthz_took:?}, /api/v1/nodes {api_took:?}, agent role {role_took:?}"
        );
        assert_eq!(h.expect("/healthz answered").status(), StatusCode::OK);
        assert_eq!(api.expect("API answered").status(), StatusCode::OK);
        assert_eq!(role.expect("agent answered").status(), StatusCode::OK);
        for took in [healthz_took, api_took, role_took] {
            assert!(
                took < Duration::from_secs(2),
                "round {round}: took {took:?}"
            );
        }
    }
    drop(crawling);
    drop(srv);
}
