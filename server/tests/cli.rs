//! The `lbfleet-server` binary: first start, SIGTERM, and the maintenance subcommands.

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_lbfleet-server");

fn run(args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("LBFLEET_DATABASE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Starts `serve`, waits for the password file (or 30 s), sends SIGTERM, returns (clean exit, stdout, elapsed).
fn serve_once(db: &str, pw_file: &Path) -> (bool, String) {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--database", db])
        .arg("--initial-admin-password-file")
        .arg(pw_file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    // Wait for the "listening" log line: the server is fully up.
    let t = Instant::now();
    let mut log = String::new();
    let mut buf = [0u8; 4096];
    while !log.contains("lbfleet-server listening") && t.elapsed() < Duration::from_secs(30) {
        let n = stderr.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        log.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(
        log.contains("lbfleet-server listening"),
        "server did not start: {log}"
    );
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn first_start_prints_the_admin_password_once_and_sigterm_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("lbfleet.db").display());
    let pw_file = dir.path().join("var/initial-admin-password");

    let (clean, stdout) = serve_once(&db, &pw_file);
    assert!(clean, "SIGTERM must stop the server with exit 0");
    let password = std::fs::read_to_string(&pw_file).unwrap().trim().to_owned();
    assert_eq!(password.len(), 20);
    assert!(stdout.contains(&format!("admin / {password}")), "{stdout}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&pw_file).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let (clean, stdout) = serve_once(&db, &pw_file);
    assert!(clean);
    assert!(
        !stdout.contains("Created the first user"),
        "printed twice: {stdout}"
    );
}

#[test]
fn user_token_and_audit_subcommands() {
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("lbfleet.db");
    let db = format!("sqlite://{}", db_path.display());

    let (ok, out, err) = run(
        &[
            "user",
            "add",
            "alice",
            "--role",
            "operator",
            "--password-stdin",
            "--database",
            &db,
        ],
        Some("a-long-password-1\n"),
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "user alice created");
    let (ok, _, err) = run(
        &[
            "user",
            "add",
            "alice",
            "--role",
            "viewer",
            "--database",
            &db,
        ],
        None,
    );
    assert!(!ok && err.contains("already exists"), "{err}");
    let (ok, out, _) = run(
        &["user", "add", "bob", "--role", "viewer", "--database", &db],
        None,
    );
    assert!(ok && out.contains("password (shown once): "), "{out}");
    let (ok, _, err) = run(
        &["user", "add", "eve", "--role", "root", "--database", &db],
        None,
    );
    assert!(!ok && err.contains("invalid value 'root'"), "{err}");

    let (ok, token, err) = run(
        &[
            "token",
            "create",
            "--user",
            "alice",
            "--name",
            "ci",
            "--database",
            &db,
        ],
        None,
    );
    assert!(ok, "{err}");
    assert!(token.trim().starts_with("lbf_tok_"), "{token}");
    let (ok, list, _) = run(&["token", "list", "--database", &db], None);
    assert!(
        ok && list.contains("alice") && !list.contains(token.trim()),
        "{list}"
    );

    let (ok, out, _) = run(&["audit", "verify", "--database", &db], None);
    assert!(ok && out.contains("\"ok\": true"), "{out}");
    // Tamper with the file directly, as someone with disk access would.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let pool = sqlx::SqlitePool::connect(&db).await.unwrap();
        sqlx::query("UPDATE audit_log SET target = 'user:mallory' WHERE seq = 1")
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    });
    let (ok, out, _) = run(&["audit", "verify", "--database", &db], None);
    assert!(!ok, "verify must exit non-zero after tampering: {out}");
    assert!(out.contains("row 1 was modified"), "{out}");
}

#[test]
fn help_explains_and_bad_config_is_a_clear_error() {
    let (ok, out, _) = run(&["--help"], None);
    assert!(
        ok && out.contains("serve") && out.contains("user") && out.contains("token"),
        "{out}"
    );
    let (ok, out, _) = run(&["serve", "--help"], None);
    assert!(
        ok && out.contains("LBFLEET_LISTEN") && out.contains("127.0.0.1:8080"),
        "{out}"
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "listen = 8080\n").unwrap();
    let (ok, _, err) = run(&["serve", "--config", cfg.to_str().unwrap()], None);
    assert!(!ok && err.contains("bad.toml"), "{err}");
}

/// `realserver CLUSTER`: what the DR and TUN real servers need, as a script (the default) or JSON; an unknown
/// cluster is a clear error.
#[test]
fn realserver_prints_the_dr_and_tun_setup() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("rs.db").display());
    let spec: lbfleet_proto::ClusterSpec = serde_json::from_value(serde_json::json!({
        "vrid": 51, "interface": "eth0", "vips": ["198.18.0.10/24", "198.18.0.11/32"],
        "services": [
            {"vip": "198.18.0.10", "port": 80, "protocol": "tcp", "scheduler": "wrr", "forward": "dr",
             "real_servers": [{"address": "198.18.0.51", "port": 80}, {"address": "198.18.0.52", "port": 80}]},
            {"vip": "198.18.0.11", "port": 53, "protocol": "udp", "scheduler": "rr", "forward": "tun",
             "real_servers": [{"address": "198.18.3.7", "port": 53}]},
            {"vip": "198.18.0.11", "port": 80, "protocol": "tcp", "scheduler": "rr", "forward": "nat",
             "real_servers": [{"address": "198.18.2.1", "port": 8080}]}
        ]
    }))
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let fleet = lbfleet_server::open_fleet(
            &lbfleet_server::config::ServerConfig::with_database(db.clone()),
        )
        .await
        .unwrap();
        fleet
            .put_cluster(&lbfleet_server::fleet::Actor("test".into()), "ext", &spec)
            .await
            .unwrap();
    });
    let (ok, script, err) = run(&["realserver", "ext", "--database", &db], None);
    assert!(ok, "{err}");
    assert!(script.starts_with("#!/bin/sh"), "{script}");
    for want in [
        "if is_local '198.18.0.51'; then",
        "if is_local '198.18.0.52'; then",
        "if is_local '198.18.3.7'; then",
        "ip addr replace 198.18.0.10/32 dev lo",
        "ip addr replace 198.18.0.11/32 dev tunl0",
        "arp_ignore=1",
    ] {
        assert!(script.contains(want), "{want:?} missing from\n{script}");
    }
    assert!(
        !script.contains("198.18.2.1"),
        "a NAT real server needs nothing"
    );
    let (ok, json, err) = run(
        &["realserver", "ext", "--format", "json", "--database", &db],
        None,
    );
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["real_servers"].as_array().map(Vec::len), Some(3));
    assert_eq!(v["real_servers"][2]["tun_vips"][0], "198.18.0.11/32");
    let (ok, _, err) = run(&["realserver", "nope", "--database", &db], None);
    assert!(!ok);
    assert!(err.contains("nope"), "{err}");
}
