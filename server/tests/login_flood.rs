//! Login flood (issue 13): 2,000 failed logins with random user names, 200 at a time, from one address, against
//! the real `lbfleet-server` binary. Its RSS must stay under 256 MiB and a login from another address must
//! succeed within 2 s meanwhile. Before the login gate, argon2 ran unbounded (19 MiB per check) and the server
//! grew to gigabytes; the watchdog here stops the flood as soon as RSS passes the bound, so a regression fails
//! fast instead of exhausting the machine.
//!
//! Lockout (issue 20, item 5): wrong passwords for `admin` from 20 addresses used to lock the real admin out
//! (429 for 5 minutes, renewable) through the per-user-name count. That count now only delays checks of the
//! name (bounded), so the admin logs in from a fresh address in the middle of the guessing run.

#![allow(clippy::unwrap_used)]

mod common;
mod process;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::distributions::{Alphanumeric, DistString};

const RSS_LIMIT_KIB: u64 = 256 * 1024;
const FLOOD: usize = 2_000;
const CONCURRENCY: usize = 200;

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn login_flood_keeps_memory_bounded_and_other_addresses_served() {
    let dir = tempfile::tempdir().unwrap();
    // The flood's client can hold more than 256 connections at once although only 200 requests are in
    // flight (hyper's pool races a new connect against a connection coming back and keeps both), and at
    // the default bound of 256 per address the server then closes the least recently used idle one, which
    // the client may be reusing at that very moment (a reset, seen as a transport error). The bound is what
    // tests/held_connections.rs proves; here it is raised so that only the login gate answers the flood.
    let per_address = (4 * CONCURRENCY).to_string();
    let server = process::ServerProcess::start(
        dir.path(),
        None,
        &[("LBFLEET_MAX_CONNECTIONS_PER_ADDRESS", per_address.as_str())],
    );
    let (pid, addr, password) = (
        server.pid(),
        server.addr.clone(),
        server.admin_password.clone(),
    );
    let url = format!("http://{addr}/api/v1/login");

    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(rss_kib(pid).unwrap()));
    let watchdog = {
        let (stop, peak) = (stop.clone(), peak.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Some(kib) = rss_kib(pid) {
                    peak.fetch_max(kib, Ordering::Relaxed);
                    if kib > RSS_LIMIT_KIB {
                        stop.store(true, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    let flood_client = reqwest::Client::builder()
        .pool_max_idle_per_host(CONCURRENCY)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let statuses = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::new()));
    let errors = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let flood_started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..CONCURRENCY {
        let (client, url, next, done, stop, statuses, errors) = (
            flood_client.clone(),
            url.clone(),
            next.clone(),
            done.clone(),
            stop.clone(),
            statuses.clone(),
            errors.clone(),
        );
        workers.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < FLOOD && !stop.load(Ordering::Relaxed) {
                let name = Alphanumeric.sample_string(&mut rand::thread_rng(), 12);
                let status = match client
                    .post(&url)
                    .json(&serde_json::json!({"username": name, "password": "wrong-password"}))
                    .send()
                    .await
                {
                    Ok(r) => r.status().as_u16(),
                    Err(e) => {
                        errors.lock().unwrap().push(format!("{e:?}"));
                        0
                    }
                };
                *statuses.lock().unwrap().entry(status).or_insert(0usize) += 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    // While the flood runs: the real admin logs in from another loopback address.
    let t = Instant::now();
    while done.load(Ordering::Relaxed) < 100 && t.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let other = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let t = Instant::now();
    let resp = other
        .post(&url)
        .json(&serde_json::json!({"username": "admin", "password": password}))
        .send()
        .await;
    let legit_elapsed = t.elapsed();
    let in_flood = done.load(Ordering::Relaxed) < FLOOD;

    for w in workers {
        w.await.unwrap();
    }
    let flood_elapsed = flood_started.elapsed();
    stop.store(true, Ordering::Relaxed);
    watchdog.await.unwrap();
    let peak_kib = peak.load(Ordering::Relaxed);
    let statuses = statuses.lock().unwrap().clone();
    eprintln!(
        "flood: {} requests in {flood_elapsed:?}, statuses {statuses:?}, peak RSS {} MiB; \
         other address logged in after {legit_elapsed:?} (during the flood: {in_flood})",
        done.load(Ordering::Relaxed),
        peak_kib / 1024
    );
    assert!(
        peak_kib <= RSS_LIMIT_KIB,
        "server RSS reached {} MiB (limit 256 MiB)",
        peak_kib / 1024
    );
    assert_eq!(done.load(Ordering::Relaxed), FLOOD, "the whole flood ran");
    assert!(
        statuses.keys().all(|s| *s == 401 || *s == 429),
        "flood answers must be 401 or 429: {statuses:?}; transport errors: {:?}",
        errors.lock().unwrap()
    );
    let resp = resp.expect("login from another address answered");
    assert_eq!(resp.status().as_u16(), 200, "login from another address");
    assert!(
        legit_elapsed < Duration::from_secs(2),
        "login from another address took {legit_elapsed:?}"
    );
    // The server is still healthy afterwards.
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_logs_in_from_a_fresh_address_during_a_guessing_run() {
    const ADDRESSES: u8 = 20;
    const PER_ADDRESS: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let srv = common::TestServer::start(dir.path()).await;
    let url = srv.url("/api/v1/login");

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let mut guessers = Vec::new();
    for a in 0..ADDRESSES {
        let (url, stop, failures, refused) =
            (url.clone(), stop.clone(), failures.clone(), refused.clone());
        guessers.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .local_address(std::net::IpAddr::from([127, 0, 0, 10 + a]))
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap();
            for i in 0..PER_ADDRESS {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let r = client
                    .post(&url)
                    .json(&serde_json::json!({"username": "admin", "password": format!("guess-{a}-{i}")}))
                    .send()
                    .await;
                match r.map(|r| r.status().as_u16()) {
                    Ok(401) => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(429) => {
                        refused.fetch_add(1, Ordering::Relaxed);
                        // Refused at once: keep the run going at a bounded pace.
                        tokio::time::sleep(Duration::from_millis(25)).await;
                    }
                    other => panic!("guess answered {other:?}"),
                }
            }
        }));
    }
    // Wait until the guessers have had their wrong passwords counted: 5 per address (the (user, address)
    // bound), 100 in all, as many as used to lock the user name.
    let t = Instant::now();
    while failures.load(Ordering::Relaxed) < 5 * usize::from(ADDRESSES) {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "guessing run stalled at {} failures",
            failures.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let owner = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 99]))
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let t = Instant::now();
    let resp = owner
        .post(&url)
        .json(&serde_json::json!({"username": "admin", "password": common::PASSWORD}))
        .send()
        .await
        .unwrap();
    let took = t.elapsed();
    let during = !stop.load(Ordering::Relaxed) && guessers.iter().any(|g| !g.is_finished());
    stop.store(true, Ordering::Relaxed);
    for g in guessers {
        g.await.unwrap();
    }
    eprintln!(
        "admin logged in from a fresh address: {} after {took:?} (guessing still running: {during}; \
         {} wrong passwords checked, {} refused)",
        resp.status(),
        failures.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed)
    );
    assert_eq!(resp.status().as_u16(), 200, "the owner is not locked out");
    assert!(during, "the login happened during the guessing run");
    assert!(took < Duration::from_secs(4), "delay bounded: {took:?}");
    // The guessers themselves stay refused: 5 tries per address, then 429.
    assert_eq!(failures.load(Ordering::Relaxed), 5 * usize::from(ADDRESSES));
    drop(srv);
}
