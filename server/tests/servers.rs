//! Component tests (issue 21): several lbfleet-servers on one database. Each registers and heartbeats; one
//! killed with SIGKILL raises a `server_down` alert on the others (API, `/metrics`, the control-plane page)
//! that closes when it comes back with the same id; an admin removes a dead server's entry (audited); the boot
//! script names every live server with aligned certificate pins, and only itself (the single form) once it is
//! alone.
//!
//! The servers share one database, named by one URL (`shared_database`): an SQLite file in WAL mode (server
//! processes on one host may share it), PostgreSQL once the test kit starts one.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{TestServer, Tokens};
use lbfleet_proto::KernelArgs;
use lbfleet_server::config::BootConfig;
use lbfleet_server::tls::TlsSetting;
use reqwest::StatusCode;
use serde_json::{json, Value};

const HEARTBEAT: &str = "200ms";

fn shared_database(dir: &Path) -> PathBuf {
    dir.join("fleet.db")
}

/// An in-process server on the shared database, state in `dir/name`, heartbeating every 200 ms.
async fn in_process(
    dir: &Path,
    name: &str,
    tokens: &Tokens,
    tweak: impl FnOnce(&mut lbfleet_server::ServerConfig),
) -> TestServer {
    let state = dir.join(name);
    TestServer::start_with(shared_database(dir), tokens.clone(), |c| {
        c.state_dir = state;
        c.server_name = Some(name.into());
        c.heartbeat_interval = humantime::parse_duration(HEARTBEAT).unwrap();
        tweak(c);
    })
    .await
}

/// `lbfleet-server serve` as a child process on the shared database (SIGKILLed on drop), state in `dir/name`.
struct ServerProcess {
    child: Child,
    base: String,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServerProcess {
    fn start(dir: &Path, name: &str) -> ServerProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_lbfleet-server"))
            .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
            .arg("--database")
            .arg(common::db_url(&shared_database(dir)))
            .arg("--state-dir")
            .arg(dir.join(name))
            .args(["--server-name", name, "--heartbeat-interval", HEARTBEAT])
            .env("RUST_LOG", "info,sqlx=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let addr = loop {
            let Some(Ok(line)) = lines.next() else {
                let _ = child.kill();
                panic!("server {name} exited before listening");
            };
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if v["fields"]["message"] == "lbfleet-server listening" {
                break v["fields"]["addr"].as_str().unwrap().to_owned();
            }
        };
        // Keep draining the log so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        ServerProcess {
            child,
            base: format!("http://{addr}"),
        }
    }

    /// SIGKILL: no clean stop, no last word in the database.
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `GET path` on `srv` (as viewer) until `cond` holds; the body that satisfied it.
async fn until(srv: &TestServer, path: &str, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (s, v) = srv.get(path, &srv.tokens.viewer).await;
        if s == StatusCode::OK && cond(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: last answer {s} {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn named<'a>(servers: &'a Value, name: &str) -> Option<&'a Value> {
    servers["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
}

fn state_of(servers: &Value, name: &str) -> Option<String> {
    named(servers, name).map(|s| s["state"].as_str().unwrap().to_owned())
}

fn down_alerts(alerts: &Value) -> Vec<String> {
    alerts["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["kind"] == "server_down")
        .map(|a| a["message"].as_str().unwrap().to_owned())
        .collect()
}

async fn metrics(srv: &TestServer) -> String {
    srv.http
        .get(srv.url("/metrics"))
        .bearer_auth(&srv.tokens.viewer)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn metric_line<'a>(text: &'a str, name: &str, server: &str) -> Option<&'a str> {
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{server=\"{server}\",")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_raises_an_alert_everywhere_and_its_return_closes_it() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = common::seed(&shared_database(dir.path())).await;
    let b = in_process(dir.path(), "b", &tokens, |_| {}).await;
    let a = ServerProcess::start(dir.path(), "a");

    let both = until(&b, "/api/v1/servers", "both servers up", |v| {
        state_of(v, "a").as_deref() == Some("up") && state_of(v, "b").as_deref() == Some("up")
    })
    .await;
    let a_entry = named(&both, "a").unwrap().clone();
    let b_entry = named(&both, "b").unwrap().clone();
    assert_eq!(both["this"], b_entry["id"], "{both}");
    assert_eq!(a_entry["management_url"], a.base.as_str(), "{a_entry}");
    assert_eq!(a_entry["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(a_entry["heartbeat_interval_ms"], 200);
    assert!(
        a_entry["heartbeat_age_ms"].as_i64().unwrap() < 5000,
        "{a_entry}"
    );
    // The id is the one kept in the server's state directory.
    let a_id = std::fs::read_to_string(dir.path().join("a/server-id")).unwrap();
    assert_eq!(a_entry["id"], a_id.trim());
    let text = metrics(&b).await;
    assert!(
        metric_line(&text, "lbfleet_server_up", "a").is_some_and(|l| l.ends_with(" 1")),
        "{text}"
    );
    assert!(metric_line(&text, "lbfleet_server_heartbeat_age_seconds", "b").is_some());
    let page = b.page_as("view", "/servers").await;
    assert!(
        page.contains("href=\"/servers\"")
            && page.contains("<h1>Control plane</h1>")
            && page.contains(&format!(
                "data-server=\"{}\" data-state=\"up\"",
                a_id.trim()
            ))
            && page.contains("this server"),
        "{page}"
    );

    // SIGKILL A: B notices within its misses (3 x 200 ms) plus a heartbeat or two.
    let killed = Instant::now();
    a.kill();
    let alerts = until(&b, "/api/v1/alerts", "a server_down alert", |v| {
        !down_alerts(v).is_empty()
    })
    .await;
    eprintln!(
        "server_down alert raised {:?} after SIGKILL",
        killed.elapsed()
    );
    let messages = down_alerts(&alerts);
    assert_eq!(messages.len(), 1, "{alerts}");
    assert!(messages[0].contains("server a"), "{messages:?}");
    let servers = b.get("/api/v1/servers", &tokens.viewer).await.1;
    assert_eq!(
        state_of(&servers, "a").as_deref(),
        Some("down"),
        "{servers}"
    );
    let text = metrics(&b).await;
    assert!(
        metric_line(&text, "lbfleet_server_up", "a").is_some_and(|l| l.ends_with(" 0")),
        "{text}"
    );
    assert!(text.contains("lbfleet_alerts{kind=\"server_down\",level=\"crit\"} 1"));
    let (_, events) = b.get("/api/v1/events?kind=server", &tokens.viewer).await;
    assert!(
        events.to_string().contains("stopped heartbeating"),
        "{events}"
    );

    // A comes back with its id: one entry, up again, the alert closed.
    let a = ServerProcess::start(dir.path(), "a");
    let back = until(&b, "/api/v1/alerts", "the alert closed", |v| {
        down_alerts(v).is_empty()
    })
    .await;
    assert!(down_alerts(&back).is_empty());
    let servers = until(&b, "/api/v1/servers", "a up again", |v| {
        state_of(v, "a").as_deref() == Some("up")
    })
    .await;
    assert_eq!(servers["servers"].as_array().unwrap().len(), 2, "{servers}");

    // Killed for good: an admin removes its entry (audited); not an operator, not while a server is up.
    a.kill();
    until(&b, "/api/v1/servers", "a down", |v| {
        state_of(v, "a").as_deref() == Some("down")
    })
    .await;
    let path = format!("/api/v1/servers/{}", a_id.trim());
    assert_eq!(
        b.delete(&path, &tokens.operator).await.0,
        StatusCode::FORBIDDEN
    );
    let (s, v) = b
        .delete(
            &format!("/api/v1/servers/{}", b_entry["id"].as_str().unwrap()),
            &tokens.admin,
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(
        b.delete(&path, &tokens.admin).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        b.delete(&path, &tokens.admin).await.0,
        StatusCode::NOT_FOUND
    );
    let servers = b.get("/api/v1/servers", &tokens.viewer).await.1;
    assert!(named(&servers, "a").is_none(), "{servers}");
    assert!(down_alerts(&b.get("/api/v1/alerts", &tokens.viewer).await.1).is_empty());
    let (_, audit) = b.get("/api/v1/audit?limit=10", &tokens.admin).await;
    assert!(audit.to_string().contains("server.remove"), "{audit}");
    b.stop().await;
}

/// A boot directory with one default image, registered through `srv`.
async fn default_image(srv: &TestServer, boot_dir: &Path) {
    let img = boot_dir.join("images/2026.11.1");
    std::fs::create_dir_all(&img).unwrap();
    std::fs::write(img.join("vmlinuz"), b"k").unwrap();
    std::fs::write(img.join("initrd.img"), b"i").unwrap();
    let (s, v) = srv
        .put(
            "/api/v1/images/2026.11.1",
            &srv.tokens.operator,
            json!({"kernel": "vmlinuz", "initrd": "initrd.img", "default": true}),
        )
        .await;
    assert!(s.is_success(), "{s} {v}");
}

/// The kernel arguments of the boot script `srv` writes for `mac`.
async fn kernel_args(srv: &TestServer, mac: &str) -> KernelArgs {
    let body = srv
        .http
        .get(srv.url(&format!("/boot/{mac}.ipxe")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = body
        .lines()
        .find(|l| l.starts_with("kernel "))
        .unwrap_or_else(|| panic!("no kernel line: {body}"));
    KernelArgs::parse(line).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_boot_script_names_every_live_server_with_its_pin() {
    let dir = tempfile::tempdir().unwrap();
    let boot_dir = tempfile::tempdir().unwrap();
    let tokens = common::seed(&shared_database(dir.path())).await;
    let boot = BootConfig::for_dir(boot_dir.path());
    // A speaks HTTPS with its own self-signed certificate; B plain HTTP.
    let a_state = dir.path().join("a");
    let a = in_process(dir.path(), "a", &tokens, |c| {
        c.boot = Some(boot.clone());
        c.tls = TlsSetting::SelfSigned { dir: a_state };
    })
    .await;
    let b = in_process(dir.path(), "b", &tokens, |c| c.boot = Some(boot.clone())).await;
    default_image(&b, boot_dir.path()).await;
    let servers = until(&b, "/api/v1/servers", "both servers up", |v| {
        state_of(v, "a").as_deref() == Some("up") && state_of(v, "b").as_deref() == Some("up")
    })
    .await;
    let a_entry = named(&servers, "a").unwrap();
    let a_pin = a_entry["tls_pin"].as_str().unwrap().to_owned();
    let a_url = a.base.replace("http://", "https://");
    assert_eq!(a_entry["boot_url"], a_url.as_str(), "{a_entry}");

    // B's script: B first (as the node reached it), then A, pins aligned (none for B, which has no TLS).
    let args = kernel_args(&b, "52:54:00:21:00:02").await;
    assert_eq!(args.servers(), [b.base.as_str(), a_url.as_str()]);
    assert_eq!(args.server_certs(), [None, Some(a_pin.as_str())]);

    // A stops: B names itself alone, in the single form older images read (no pins: B has none).
    a.stop().await;
    until(&b, "/api/v1/servers", "a stopped", |v| {
        state_of(v, "a").as_deref() == Some("stopped")
    })
    .await;
    let args = kernel_args(&b, "52:54:00:21:00:02").await;
    assert_eq!(args.server.as_deref(), Some(b.base.as_str()));
    assert_eq!(args.server_cert, None);
    b.stop().await;
}

/// The control-plane page names, per boot network, the server answering DHCP (from the leadership row the
/// election keeps), by name when its boot address is a registered server's, and flags a row not renewed within
/// its TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_page_says_who_answers_dhcp_on_each_network() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = common::seed(&shared_database(dir.path())).await;
    let a = in_process(dir.path(), "a", &tokens, |_| {}).await;
    until(&a, "/api/v1/servers", "a up", |v| {
        state_of(v, "a").as_deref() == Some("up")
    })
    .await;
    let page = a.page_as("view", "/servers").await;
    assert!(page.contains("No server answers DHCP"), "{page}");
    // What a's election would write, and a stale row of a server nobody knows.
    let host = a
        .base
        .trim_start_matches("http://")
        .split(':')
        .next()
        .unwrap()
        .to_owned();
    let pool = common::raw_pool(&shared_database(dir.path())).await;
    let now = lbfleet_server::store::now_ms();
    for (network, address, renewed) in [
        ("198.18.0.0/16", host.as_str(), now),
        ("198.19.0.0/16", "198.19.0.1", now - 60_000),
    ] {
        sqlx::query(
            "INSERT INTO dhcp_leaders (network, holder, holder_address, epoch, seq, ttl_ms, renewed_at) \
             VALUES ($1, $2, $3, 3, 1, 1000, $4)",
        )
        .bind(network)
        .bind(format!("{address}/1/0"))
        .bind(address)
        .bind(renewed)
        .execute(&pool)
        .await
        .unwrap();
    }
    pool.close().await;
    let page = a.page_as("view", "/servers").await;
    let row = |network: &str| {
        let start = page
            .find(&format!("data-network=\"{network}\""))
            .unwrap_or_else(|| panic!("no row for {network}: {page}"));
        page[start..start + page[start..].find("</tr>").unwrap()].to_owned()
    };
    let answered = row("198.18.0.0/16");
    assert!(answered.contains("<strong>a</strong>"), "{answered}");
    assert!(!answered.contains("not renewed"), "{answered}");
    let stale = row("198.19.0.0/16");
    assert!(
        stale.contains("<strong>198.19.0.1</strong>")
            && stale.contains("not renewed within its TTL"),
        "{stale}"
    );
    a.stop().await;
}
