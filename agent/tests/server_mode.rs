//! Component tests: the agent's server mode against a real lbfleet-server on 127.0.0.1 (real SQLite file),
//! with the recording applier standing in for the kernel (the guest tests cover real IPVS).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use lbfleet_tests::server as common;
use lbfleet_tests::wait;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lbfleet_agent::daemon::{self as run, AgentError, RunConfig};
use lbfleet_agent::ipvs::{DestKey, IpProto, ServiceKey};
use lbfleet_agent::reconcile::{Op, RecordingApplier, ServiceState};
use lbfleet_server::ServerConfig;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const MAC: &str = "52:54:00:12:34:56";

/// A server on a fixed or fresh port that can be stopped and started again on the same port.
struct Server {
    addr: SocketAddr,
    db: PathBuf,
    operator: String,
    http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Server {
    async fn start(dir: &Path) -> Server {
        let db = dir.join("lbfleet.db");
        let tokens = common::seed(&db).await;
        let mut s = Server {
            addr: ([127, 0, 0, 1], 0).into(),
            db,
            operator: tokens.operator,
            http: reqwest::Client::new(),
            stop: None,
            handle: None,
        };
        s.up().await;
        s
    }

    async fn up(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let config = ServerConfig::with_database(common::db_url(&self.db));
        self.handle = Some(tokio::spawn(lbfleet_server::run(
            config,
            listener,
            async move {
                let _ = rx.await;
            },
        )));
        self.stop = Some(tx);
    }

    async fn down(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.unwrap().unwrap();
        }
    }

    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> (StatusCode, Value) {
        let resp = self
            .http
            .request(method, format!("{}{path}", self.base()))
            .bearer_auth(&self.operator)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Cluster `ext`, node lb-01 assigned active; returns a one-time enrollment token.
    async fn node_with_role(&self) -> String {
        let (s, v) = self
            .call(
                reqwest::Method::PUT,
                "/api/v1/clusters/ext",
                unchecked(cluster_spec()),
            )
            .await;
        assert!(s.is_success(), "{s} {v}");
        self.node_with_role_keeping_spec().await
    }

    /// Node lb-01 assigned active in the existing cluster `ext`; returns a one-time enrollment token.
    async fn node_with_role_keeping_spec(&self) -> String {
        let (s, v) = self
            .call(
                reqwest::Method::POST,
                "/api/v1/nodes",
                json!({"mac": MAC, "hostname": "lb-01"}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let (s, v) = self
            .call(
                reqwest::Method::POST,
                "/api/v1/nodes/lb-01/assign",
                json!({"cluster": "ext", "role": "active"}),
            )
            .await;
        assert!(s.is_success(), "{s} {v}");
        self.token().await
    }

    async fn token(&self) -> String {
        let (s, v) = self
            .call(
                reqwest::Method::POST,
                "/api/v1/nodes/lb-01/enrollment-token",
                json!({}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["token"].as_str().unwrap().to_owned()
    }

    /// Replaces the cluster spec with the 198.18.2.2 weight set to `weight`.
    async fn set_weight(&self, weight: u32) {
        let mut spec = unchecked(cluster_spec());
        spec["services"][0]["real_servers"][1]["weight"] = json!(weight);
        let (s, v) = self
            .call(reqwest::Method::PUT, "/api/v1/clusters/ext", spec)
            .await;
        assert!(s.is_success(), "{s} {v}");
    }
}

fn config(server: &Server, state: &Path, token: Option<String>) -> RunConfig {
    let mut c = RunConfig::new(&server.base(), state);
    c.token = token;
    c.mac = Some(MAC.into());
    c.resync = Duration::from_millis(100);
    c.backoff_initial = Duration::from_millis(20);
    c.backoff_max = Duration::from_millis(200);
    c
}

struct Agent {
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<Result<(), AgentError>>,
}

fn spawn_agent(config: RunConfig, applier: &RecordingApplier) -> Agent {
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(run::run(config, Box::new(applier.clone()), async move {
        let _ = rx.await;
    }));
    Agent {
        stop: Some(tx),
        handle,
    }
}

impl Agent {
    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.handle.await.unwrap().unwrap();
    }
}

/// Polls `cond` every millisecond until it holds; panics with `what` after `limit` (the kit's helper).
async fn wait_for(limit: Duration, what: &str, cond: impl FnMut() -> bool) -> Duration {
    wait::wait_for_async(what, limit, Duration::from_millis(1), cond).await
}

fn tcp80() -> ServiceKey {
    ServiceKey::Addr {
        protocol: IpProto::Tcp,
        addr: "198.18.0.10".parse().unwrap(),
        port: 80,
    }
}

fn weight_of(a: &RecordingApplier, addr: &str) -> Option<u32> {
    let dk = DestKey {
        addr: addr.parse().unwrap(),
        port: 8080,
    };
    a.state()
        .services
        .get(&tcp80())
        .and_then(|s| s.dest(&dk))
        .map(|d| d.weight)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolls_applies_reports_and_follows_changes_within_100ms() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let token = server.node_with_role().await;
    let kernel = RecordingApplier::new();
    let mut cfg = config(&server, &dir.path().join("state"), Some(token));
    cfg.image_version = Some("2026.11.1".into());
    let agent = spawn_agent(cfg, &kernel);

    wait_for(Duration::from_secs(10), "role applied", || {
        kernel.state().services.len() == 2
    })
    .await;
    assert_eq!(weight_of(&kernel, "198.18.2.2"), Some(2));

    // The report makes the node `serving`, and tells the server what the node runs and where it is.
    let start = Instant::now();
    loop {
        let (_, v) = server
            .call(reqwest::Method::GET, "/api/v1/nodes/lb-01", Value::Null)
            .await;
        if v["state"] == "serving" {
            assert_eq!(v["address"], "127.0.0.1", "{v}");
            assert_eq!(v["image_version"], "2026.11.1", "{v}");
            assert_eq!(v["agent_version"], env!("CARGO_PKG_VERSION"), "{v}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "not serving: {v}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // A weight change reaches the kernel as one operation, promptly: the bound has a margin a loaded CI machine
    // meets; the real latency is measured by `make bench-longpoll` (docs/benchmarks.md).
    kernel.clear_log();
    let t0 = Instant::now();
    server.set_weight(7).await;
    wait_for(Duration::from_secs(5), "weight 7", || {
        weight_of(&kernel, "198.18.2.2") == Some(7)
    })
    .await;
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(2), "role change took {took:?}");
    let log = kernel.log();
    assert_eq!(log.len(), 1, "{log:?}");
    assert!(matches!(&log[0], Op::EditDest(k, d) if *k == tcp80() && d.weight == 7));

    // Someone flushes the table behind the agent's back: the next resync repairs it.
    let want = kernel.state();
    kernel.tamper(|s| s.services.clear());
    wait_for(Duration::from_secs(2), "flush repaired", || {
        kernel.state() == want
    })
    .await;

    agent.stop().await;
    // The role was saved for a restart without the server.
    let saved = std::fs::read_to_string(dir.path().join("state/role.json")).unwrap();
    assert!(saved.contains("198.18.0.10"), "{saved}");
}

/// Issue 24, item 4: between reports (none for a minute here) the agent's heartbeats keep its node reporting on
/// a server that calls a node silent for 3 s unreachable; once the agent stops, the node is unreachable within
/// 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_a_quiet_node_reporting_and_stop_with_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let token = server.node_with_role().await;
    let kernel = RecordingApplier::new();
    let mut cfg = config(&server, &dir.path().join("state"), Some(token));
    cfg.resync = Duration::from_secs(60);
    let agent = spawn_agent(cfg, &kernel);
    let node = || async {
        server
            .call(reqwest::Method::GET, "/api/v1/nodes/lb-01", Value::Null)
            .await
            .1
    };
    let start = Instant::now();
    let first = loop {
        let v = node().await;
        if v["state"] == "serving" && v["reporting"] == true {
            break v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "not serving: {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Longer than the server's 3 s silence limit, with no report in between: the last report stays the one
    // that made it serving, the heartbeats move last_seen_at on.
    let quiet = Instant::now();
    let mut last = first.clone();
    while quiet.elapsed() < Duration::from_secs(5) {
        last = node().await;
        assert_eq!(last["reporting"], true, "{last}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        last["last_report"], first["last_report"],
        "a report came meanwhile"
    );
    assert!(
        last["last_seen_at"].as_i64().unwrap() >= first["last_seen_at"].as_i64().unwrap() + 3_000,
        "{first} {last}"
    );
    agent.stop().await;
    let stopped = Instant::now();
    loop {
        let v = node().await;
        if v["reporting"] == false {
            break;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(5),
            "still reporting 5 s after the agent stopped: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    server.node_with_role().await;
    let kernel = RecordingApplier::new();
    let agent = spawn_agent(
        config(
            &server,
            &dir.path().join("state"),
            Some("lbf_enr_not-a-real-token".into()),
        ),
        &kernel,
    );
    let result = tokio::time::timeout(Duration::from_secs(10), agent.handle)
        .await
        .expect("the agent must give up on a refused token")
        .unwrap();
    assert!(
        matches!(result, Err(AgentError::EnrollRefused(_))),
        "{result:?}"
    );
    assert!(kernel.log().is_empty());
    assert!(!dir.path().join("state/credential").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_down_keeps_the_role_and_reconnects() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut server = Server::start(dir.path()).await;
    let token = server.node_with_role().await;
    let kernel = RecordingApplier::new();
    let agent = spawn_agent(config(&server, &state, Some(token)), &kernel);
    wait_for(Duration::from_secs(10), "role applied", || {
        kernel.state().services.len() == 2
    })
    .await;
    let want = kernel.state();

    server.down().await;
    // Still serving, and still repairing, with the server gone.
    kernel.tamper(|s| {
        for svc in s.services.values_mut() {
            *svc = ServiceState::new(svc.service().clone(), Vec::new());
        }
    });
    wait_for(Duration::from_secs(2), "repaired while server down", || {
        kernel.state() == want
    })
    .await;

    // A restarted agent (fresh kernel, same state dir, no token) applies the saved role without the server.
    let kernel2 = RecordingApplier::new();
    let agent2 = spawn_agent(config(&server, &state, None), &kernel2);
    wait_for(Duration::from_secs(2), "saved role applied", || {
        kernel2.state() == want
    })
    .await;

    // The server returns on the same address; a change made there reaches both agents.
    server.up().await;
    server.set_weight(9).await;
    wait_for(Duration::from_secs(5), "reconnected (agent 1)", || {
        weight_of(&kernel, "198.18.2.2") == Some(9)
    })
    .await;
    wait_for(Duration::from_secs(5), "reconnected (agent 2)", || {
        weight_of(&kernel2, "198.18.2.2") == Some(9)
    })
    .await;
    agent.stop().await;
    agent2.stop().await;
    server.down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_operation_is_retried_before_the_next_resync() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let token = server.node_with_role().await;
    let kernel = RecordingApplier::new();
    let mut cfg = config(&server, &dir.path().join("state"), Some(token));
    // A resync far away: only the retry can repair the failed operation within the test's limit.
    cfg.resync = Duration::from_secs(60);
    let agent = spawn_agent(cfg, &kernel);
    wait_for(Duration::from_secs(10), "role applied", || {
        kernel.state().services.len() == 2
    })
    .await;

    kernel.fail_next("injected failure");
    server.set_weight(9).await;
    // The first attempt fails; the retry (after 0.5 s) applies it.
    let took = wait_for(Duration::from_secs(5), "weight 9 after a retry", || {
        weight_of(&kernel, "198.18.2.2") == Some(9)
    })
    .await;
    assert!(
        took >= Duration::from_millis(300),
        "applied without the injected failure? {took:?}"
    );
    // The failure was reported as an agent error event.
    let (_, events) = server
        .call(
            reqwest::Method::GET,
            "/api/v1/events?kind=agent_error",
            Value::Null,
        )
        .await;
    assert!(events.to_string().contains("injected failure"), "{events}");
    agent.stop().await;
}

/// The common cluster spec with its VRRP interface renamed to one that does not exist: the daemon's VRRP
/// instance then reports Fault and retries, instead of advertising and adding the VIP on the host's `eth0`
/// (these tests run in the host's namespace; VRRP has its own netns tests).
fn cluster_spec() -> serde_json::Value {
    let mut spec = common::cluster_spec(51, "198.18.0.10");
    spec["interface"] = serde_json::json!("lbf-absent0");
    spec
}

/// The common spec without health checks: its real servers do not exist, and probes must not leave the
/// test's own network (health checks have their own tests).
fn unchecked(mut spec: serde_json::Value) -> serde_json::Value {
    if let Some(services) = spec["services"].as_array_mut() {
        for s in services {
            s["check"] = serde_json::json!({"kind": "none"});
        }
    }
    spec
}

/// An HTTP real server on loopback whose status can be switched.
async fn real_server(
    status: std::sync::Arc<std::sync::atomic::AtomicU16>,
) -> (u16, JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let h = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let status = status.load(std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let resp = format!(
                    "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    (port, h)
}

/// Health checks inside the daemon: a failing real server (HTTP 500, on loopback) gets weight 0 in the
/// kernel and the report says why; the service drops below its quorum and the VRRP priority goes down by
/// the configured amount; it comes back by itself. The other server stays untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_real_server_is_drained_reported_and_restored_and_quorum_lowers_the_priority() {
    use std::sync::atomic::{AtomicU16, Ordering};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let (a, b) = (Arc::new(AtomicU16::new(200)), Arc::new(AtomicU16::new(200)));
    let (pa, _ha) = real_server(a.clone()).await;
    let (pb, _hb) = real_server(b.clone()).await;
    let mut spec = cluster_spec();
    spec["services"] = json!([{
        "vip": "198.18.0.10", "port": 80, "protocol": "tcp", "scheduler": "wrr", "forward": "nat",
        "check": {"kind": "http", "path": "/healthz", "expect_status": 200, "interval_ms": 200,
                  "timeout_ms": 100, "rise": 2, "fall": 2, "jitter_ms": 0,
                  "quorum": {"min_healthy": 2, "priority_drop": 60}},
        "real_servers": [{"address": "127.0.0.1", "port": pa, "weight": 3},
                         {"address": "127.0.0.1", "port": pb, "weight": 2}]}]);
    let (s, v) = server
        .call(reqwest::Method::PUT, "/api/v1/clusters/ext", spec)
        .await;
    assert!(s.is_success(), "{s} {v}");
    let token = server.node_with_role_keeping_spec().await;
    let kernel = RecordingApplier::new();
    let (prio_tx, mut prio_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut cfg = config(&server, &dir.path().join("state"), Some(token));
    cfg.priority_observer = Some(Arc::new(lbfleet_agent::health::ChannelPrioritySink(
        prio_tx,
    )));
    let agent = spawn_agent(cfg, &kernel);
    let weight = |port: u16| {
        let dk = DestKey {
            addr: "127.0.0.1".parse().unwrap(),
            port,
        };
        kernel
            .state()
            .services
            .get(&tcp80())
            .and_then(|s| s.dest(&dk))
            .map(|d| d.weight)
    };
    wait_for(Duration::from_secs(10), "role applied", || {
        weight(pa) == Some(3)
    })
    .await;
    assert_eq!(prio_rx.recv().await, Some(150));
    // Both checked and up (the first success marks a server up), as saved for `status`.
    let state = lbfleet_agent::state::StateDir::new(dir.path().join("state"));
    let saved_health = || {
        state
            .load_status()
            .ok()
            .flatten()
            .map(|r| lbfleet_agent::status::health_by_dest(&r))
            .unwrap_or_default()
    };
    wait_for(Duration::from_secs(10), "both servers up", || {
        let by_dest = saved_health();
        by_dest.len() == 2
            && by_dest
                .values()
                .all(|h| h.state == lbfleet_proto::HealthState::Up)
    })
    .await;

    a.store(500, Ordering::SeqCst);
    wait_for(Duration::from_secs(10), "failing server drained", || {
        weight(pa) == Some(0)
    })
    .await;
    assert_eq!(weight(pb), Some(2));
    assert_eq!(prio_rx.recv().await, Some(90));
    // The report carries the state and the reason; the server keeps it.
    let start = Instant::now();
    loop {
        let (_, v) = server
            .call(reqwest::Method::GET, "/api/v1/nodes/lb-01", Value::Null)
            .await;
        let servers = &v["last_report"]["services"][0]["real_servers"];
        let down = servers
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["port"] == pa && r["health"]["state"] == "down");
        if let Some(r) = down {
            assert_eq!(r["health"]["last_error"], "HTTP 500 from /healthz", "{r}");
            assert_eq!(r["healthy"], false, "{r}");
            assert_eq!(r["health"]["flaps"], 1, "{r}");
            // It came as a delta on the report the server acknowledged, not as a full report.
            let m = server
                .http
                .get(format!("{}/metrics", server.base()))
                .bearer_auth(&server.operator)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let merged = m
                .lines()
                .find_map(|l| l.strip_prefix("lbfleet_agent_reports_total{kind=\"delta\"} "))
                .and_then(|n| n.parse::<u64>().ok());
            assert!(merged.is_some_and(|n| n >= 1), "no merged delta: {m}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no down report: {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The transition became a node event with its reason.
    let want =
        format!("real server 127.0.0.1:{pa} of 198.18.0.10:80/tcp is down: HTTP 500 from /healthz");
    let start = Instant::now();
    loop {
        let (_, v) = server
            .call(
                reqwest::Method::GET,
                "/api/v1/events?kind=health",
                Value::Null,
            )
            .await;
        let found = v["events"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["message"] == want.as_str());
        if found {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no event {want:?}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // `lbfleet-agent status` reads what the daemon saved.
    let by_dest = saved_health();
    let h = &by_dest[&("TCP 198.18.0.10:80".to_owned(), format!("127.0.0.1:{pa}"))];
    assert_eq!(h.last_error.as_deref(), Some("HTTP 500 from /healthz"));

    a.store(200, Ordering::SeqCst);
    wait_for(Duration::from_secs(10), "server restored", || {
        weight(pa) == Some(3)
    })
    .await;
    assert_eq!(prio_rx.recv().await, Some(150));
    agent.stop().await;
}
