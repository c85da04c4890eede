//! Component tests (issue 21): the agent with several servers on one database. It moves to another server when
//! the one it uses stops answering and takes a change made there; it pins each server's certificate on its own
//! and moves past a server that answers with another certificate.
//!
//! The servers share one database, named by one URL (`shared_database`): an SQLite file in WAL mode here (two
//! server processes on one host may share it), PostgreSQL once the test kit starts one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lbfleet_agent::daemon::{self as run, AgentError, Endpoint, RunConfig};
use lbfleet_agent::ipvs::{DestKey, IpProto, ServiceKey};
use lbfleet_agent::pin::CertPin;
use lbfleet_agent::reconcile::RecordingApplier;
use lbfleet_server::tls::TlsSetting;
use lbfleet_tests::server::{self as kit, TestServer, Tokens};
use lbfleet_tests::wait;
use reqwest::StatusCode;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde_json::json;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const MAC: &str = "52:54:00:21:00:01";

/// The one database every server of a test uses (its path, for the fixture, and its URL).
fn shared_database(dir: &Path) -> PathBuf {
    dir.join("fleet.db")
}

/// A server on the shared database with a state directory of its own (`dir/name`), plain HTTP or TLS with a
/// self-signed certificate kept there.
async fn server(dir: &Path, name: &str, tokens: &Tokens, tls: bool) -> TestServer {
    let state = dir.join(name);
    std::fs::create_dir_all(&state).unwrap();
    TestServer::start_with(shared_database(dir), tokens.clone(), |c| {
        c.state_dir = state.clone();
        c.heartbeat_interval = Duration::from_millis(200);
        if tls {
            c.tls = TlsSetting::SelfSigned { dir: state.clone() };
        }
    })
    .await
}

/// The pin of the self-signed certificate a TLS server keeps in `dir/name`, once the server answers over
/// HTTPS (the certificate is complete by then).
async fn pin_of(srv: &TestServer, dir: &Path, name: &str) -> CertPin {
    let http = insecure();
    let deadline = Instant::now() + Duration::from_secs(30);
    while http
        .get(format!("{}/healthz", https(srv)))
        .send()
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "{name} does not answer over HTTPS"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (cert, _) = lbfleet_server::tls::self_signed_paths(&dir.join(name));
    CertPin::of(CertificateDer::from_pem_file(&cert).unwrap().as_ref())
}

fn https(srv: &TestServer) -> String {
    srv.base.replace("http://", "https://")
}

/// A client for the tests' own calls to a TLS server (the agent under test never skips the check).
fn insecure() -> reqwest::Client {
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap()
}

/// Cluster `ext` with node lb-01 assigned active, through `base`; a one-time enrollment token.
async fn node_with_role(http: &reqwest::Client, base: &str, operator: &str) -> String {
    let call = |method: reqwest::Method, path: &str, body: serde_json::Value| {
        http.request(method, format!("{base}{path}"))
            .bearer_auth(operator)
            .json(&body)
            .send()
    };
    let r = call(
        reqwest::Method::PUT,
        "/api/v1/clusters/ext",
        kit::cluster_spec(51, "198.18.0.10"),
    )
    .await
    .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let r = call(
        reqwest::Method::POST,
        "/api/v1/nodes",
        json!({"mac": MAC, "hostname": "lb-01"}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = call(
        reqwest::Method::POST,
        "/api/v1/nodes/lb-01/assign",
        json!({"cluster": "ext", "role": "active"}),
    )
    .await
    .unwrap();
    assert!(r.status().is_success());
    let v: serde_json::Value = call(
        reqwest::Method::POST,
        "/api/v1/nodes/lb-01/enrollment-token",
        json!({}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    v["token"].as_str().unwrap().to_owned()
}

fn agent_config(servers: Vec<Endpoint>, state: &Path, token: String) -> RunConfig {
    let mut c = RunConfig::with_servers(servers, state);
    c.token = Some(token);
    c.mac = Some(MAC.into());
    c.resync = Duration::from_millis(200);
    c.backoff_initial = Duration::from_millis(50);
    c.backoff_max = Duration::from_millis(500);
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

/// The weight of real server `addr`:8080 in the VIP's TCP service, as applied.
fn weight_of(a: &RecordingApplier, addr: &str) -> Option<u32> {
    let key = ServiceKey::Addr {
        protocol: IpProto::Tcp,
        addr: "198.18.0.10".parse().unwrap(),
        port: 80,
    };
    let dk = DestKey {
        addr: addr.parse().unwrap(),
        port: 8080,
    };
    a.state()
        .services
        .get(&key)
        .and_then(|s| s.dest(&dk))
        .map(|d| d.weight)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_moves_to_the_other_server_when_one_dies_and_takes_a_change_made_there() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = kit::seed(&shared_database(dir.path())).await;
    let a = server(dir.path(), "a", &tokens, false).await;
    let b = server(dir.path(), "b", &tokens, false).await;
    let token = node_with_role(&a.http, &a.base, &tokens.operator).await;
    let kernel = RecordingApplier::new();
    let agent = spawn_agent(
        agent_config(
            vec![Endpoint::new(&a.base, None), Endpoint::new(&b.base, None)],
            &dir.path().join("agent"),
            token,
        ),
        &kernel,
    );
    wait::wait_for_async(
        "the role applied from A",
        Duration::from_secs(10),
        Duration::from_millis(5),
        || weight_of(&kernel, "198.18.2.2") == Some(2),
    )
    .await;

    // A goes away; the operator changes the weight through B.
    let killed = Instant::now();
    a.stop().await;
    let mut spec = kit::cluster_spec(51, "198.18.0.10");
    spec["services"][0]["real_servers"][1]["weight"] = json!(7);
    let (s, v) = b.put("/api/v1/clusters/ext", &tokens.operator, spec).await;
    assert!(s.is_success(), "{s} {v}");
    wait::wait_for_async(
        "the change made through B applied",
        Duration::from_secs(5),
        Duration::from_millis(5),
        || weight_of(&kernel, "198.18.2.2") == Some(7),
    )
    .await;
    eprintln!(
        "failover: the change made through B was applied {:?} after A was stopped",
        killed.elapsed()
    );
    // The report of the new generation reached B (the only server left).
    let (s, node) = b.get("/api/v1/nodes/lb-01", &tokens.operator).await;
    assert_eq!(s, StatusCode::OK);
    let want = node["role_generation"].as_i64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, node) = b.get("/api/v1/nodes/lb-01", &tokens.operator).await;
        if node["applied_generation"].as_i64() == Some(want) {
            break;
        }
        assert!(Instant::now() < deadline, "no report on B: {node}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    agent.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_server_is_pinned_on_its_own_and_a_server_with_another_certificate_is_passed_over() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = kit::seed(&shared_database(dir.path())).await;
    let a = server(dir.path(), "a", &tokens, true).await;
    let b = server(dir.path(), "b", &tokens, true).await;
    let (pin_a, pin_b) = (
        pin_of(&a, dir.path(), "a").await,
        pin_of(&b, dir.path(), "b").await,
    );
    assert_ne!(pin_a, pin_b);
    let http = insecure();
    let token = node_with_role(&http, &https(&b), &tokens.operator).await;

    // Only A, and A's place taken by a server with another certificate (B's pin stands for the real A): the
    // agent refuses it, and the one-time token never leaves the agent.
    let refused = run::run(
        agent_config(
            vec![Endpoint::new(&https(&a), Some(pin_b))],
            &dir.path().join("agent-refused"),
            token.clone(),
        ),
        Box::new(RecordingApplier::new()),
        std::future::pending(),
    );
    let result = tokio::time::timeout(Duration::from_secs(20), refused)
        .await
        .expect("the agent gives up on a server that is not the pinned one");
    assert!(
        matches!(
            result,
            Err(AgentError::EnrollRefused(
                lbfleet_agent::client::ClientError::CertificateMismatch { .. }
            ))
        ),
        "{result:?}"
    );

    // A first with a pin it does not match, then B with its own: the agent passes A over and enrolls with B,
    // with the same token (it was never sent to A).
    let kernel = RecordingApplier::new();
    let agent = spawn_agent(
        agent_config(
            vec![
                Endpoint::new(&https(&a), Some(pin_b)),
                Endpoint::new(&https(&b), Some(pin_b)),
            ],
            &dir.path().join("agent"),
            token,
        ),
        &kernel,
    );
    wait::wait_for_async(
        "the role applied from B",
        Duration::from_secs(10),
        Duration::from_millis(5),
        || weight_of(&kernel, "198.18.2.2") == Some(2),
    )
    .await;
    agent.stop().await;
    a.stop().await;
    b.stop().await;
}
