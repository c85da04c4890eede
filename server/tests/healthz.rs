//! `/healthz` and a database that cannot write (issue 20, item 6): before, `/healthz` only read, so it said
//! 200 while every write failed (a full disk). Now it proves a write, bounded in time, and answers 503 with the
//! reason when the write does not go through: with the server's disk full (its database on a tiny tmpfs in a
//! mount namespace of its own, no root needed), and with another connection holding the database's write lock.

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
    // SQLite's write lock (one writer per file); PostgreSQL writers do not lock the probe out.
    let srv = common::TestServer::start_sqlite(dir.path()).await;
    let (s, _, _) = healthz_until(&srv, StatusCode::OK).await;
    assert_eq!(s, StatusCode::OK);

    // Another process's connection takes the write lock and keeps it.
    let mut locker = sqlx::SqliteConnection::connect(&common::sqlite_url(&srv.db_path))
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

/// The server binary with its database on a tmpfs of `size` of its own (a private mount namespace made with
/// `unshare -Urm`, which needs no root where unprivileged user namespaces are allowed); killed on drop.
struct OnTinyDisk {
    child: std::process::Child,
    base: String,
    db_dir: std::path::PathBuf,
}

impl Drop for OnTinyDisk {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl OnTinyDisk {
    fn start(dir: &std::path::Path, size: &str) -> OnTinyDisk {
        use std::io::{BufRead, BufReader};
        use std::process::{Command, Stdio};
        let probe = Command::new("unshare")
            .args(["-Urm", "true"])
            .status()
            .map(|s| s.success());
        assert!(
            matches!(probe, Ok(true)),
            "this test needs `unshare -Urm` (util-linux, unprivileged user namespaces): {probe:?}"
        );
        let db_dir = dir.join("db");
        std::fs::create_dir_all(&db_dir).unwrap();
        let mut child = Command::new("unshare")
            .args(["-Urm", "sh", "-c"])
            .arg(format!(
                "mount -t tmpfs -o size={size} lbfleet-healthz \"$0\" && exec \"$@\""
            ))
            .arg(&db_dir)
            .arg(env!("CARGO_BIN_EXE_lbfleet-server"))
            .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
            .arg("--database")
            .arg(common::sqlite_url(&db_dir.join("lbfleet.db")))
            .env("RUST_LOG", "info,sqlx=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let addr = loop {
            let Some(Ok(line)) = lines.next() else {
                let _ = child.kill();
                panic!("server exited before listening");
            };
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if v["fields"]["message"] == "lbfleet-server listening" {
                break v["fields"]["addr"].as_str().unwrap().to_owned();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        OnTinyDisk {
            base: format!("http://{addr}"),
            db_dir,
            child,
        }
    }

    /// The database directory as the server sees it (inside its mount namespace).
    fn inside(&self) -> std::path::PathBuf {
        std::path::Path::new(&format!("/proc/{}/root", self.child.id()))
            .join(self.db_dir.strip_prefix("/").unwrap())
    }

    async fn healthz_until(&self, want: StatusCode) -> (StatusCode, Value) {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let resp = http
                .get(format!("{}/healthz", self.base))
                .timeout(Duration::from_secs(10))
                .send()
                .await
                .unwrap();
            let status = resp.status();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            if status == want || Instant::now() > deadline {
                return (status, body);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_is_503_while_the_disk_is_full() {
    let dir = tempfile::tempdir().unwrap();
    let srv = OnTinyDisk::start(dir.path(), "8m");
    let (s, body) = srv.healthz_until(StatusCode::OK).await;
    assert_eq!(s, StatusCode::OK, "{body}");

    // Fill the server's disk (bounded: the tmpfs is 8 MiB).
    let fill = srv.inside().join("fill");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&fill).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        let mut written = 0usize;
        while f.write_all(&chunk).is_ok() {
            written += chunk.len();
            assert!(written <= 16 * 1024 * 1024, "the tmpfs never filled");
        }
        let _ = f.sync_all();
    }
    let (s, body) = srv.healthz_until(StatusCode::SERVICE_UNAVAILABLE).await;
    eprintln!("healthz on a full disk: {s} {body}");
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body["reason"].as_str().unwrap().contains("write"), "{body}");

    // Room again: healthy again.
    std::fs::remove_file(&fill).unwrap();
    let (s, body) = srv.healthz_until(StatusCode::OK).await;
    assert_eq!(s, StatusCode::OK, "{body}");
}
