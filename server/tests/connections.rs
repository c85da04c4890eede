//! Connection exhaustion (issue 13): 3,000 half-open connections (a partial request head each, never
//! finished) against the real binary running under the common open-file limit of 1,024 must not stop a new
//! request from being served. Before the connection cap, the server accepted until it ran out of file
//! descriptors and then served nobody until the slow clients gave up.

#![allow(clippy::unwrap_used)]

mod process;

use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

const HALF_OPEN: usize = 3_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_connections_do_not_stop_new_requests() {
    let dir = tempfile::tempdir().unwrap();
    // A long header-read timeout, so only the connection cap can keep the server answering here.
    let server = process::ServerProcess::start(
        dir.path(),
        Some(1024),
        &[("LBFLEET_HEADER_READ_TIMEOUT", "5m")],
    );
    let addr = server.addr.clone();

    // Open the slow clients, a few hundred at a time; each sends the start of a request head and stops.
    let mut held = Vec::new();
    let started = Instant::now();
    let mut failed = 0usize;
    for chunk in 0..HALF_OPEN / 250 {
        let mut batch = Vec::new();
        for _ in 0..250 {
            let addr = addr.clone();
            batch.push(tokio::spawn(async move {
                let connect = tokio::net::TcpStream::connect(&addr);
                let mut s = tokio::time::timeout(Duration::from_secs(10), connect)
                    .await
                    .ok()?
                    .ok()?;
                s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                    .await
                    .ok()?;
                Some(s)
            }));
        }
        for b in batch {
            match b.await.unwrap() {
                Some(s) => held.push(s),
                None => failed += 1,
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "opening connections stalled at chunk {chunk}"
        );
    }
    eprintln!(
        "{} half-open connections opened ({failed} failed) in {:?}",
        held.len(),
        started.elapsed()
    );

    // A new client gets its answer while all of them are still open.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let t = Instant::now();
    let resp = client
        .post(format!("http://{addr}/api/v1/login"))
        .json(&serde_json::json!({"username": "admin", "password": server.admin_password}))
        .send()
        .await;
    let elapsed = t.elapsed();
    eprintln!("new request answered after {elapsed:?}");
    let resp = resp.expect("a new request is served despite the half-open connections");
    assert_eq!(resp.status().as_u16(), 200);
    drop(held);
}
