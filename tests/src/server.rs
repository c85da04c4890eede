//! The server fixture of the component tests: the real server (the `lbfleet-server` library) on
//! 127.0.0.1:0 against a real SQLite file, with users and API tokens for each role created through the library
//! before the server starts. Used by `server/tests`, `agent/tests/server_mode.rs` and the guest tests that run
//! an agent against a real server.
//!
//! A test fixture: a failure to set up is a test failure, so it unwraps.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use lbfleet_proto::UserRole;
use lbfleet_server::fleet::Actor;
use lbfleet_server::ServerConfig;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const PASSWORD: &str = "test-password-123";

#[derive(Debug, Clone)]
pub struct Tokens {
    pub admin: String,
    pub operator: String,
    pub viewer: String,
}

#[derive(Debug)]
pub struct TestServer {
    pub base: String,
    pub db_path: PathBuf,
    pub tokens: Tokens,
    pub http: reqwest::Client,
    /// With HTTPS (browser tests): base64 of the SHA-256 of the certificate's SubjectPublicKeyInfo (what
    /// Chromium's `--ignore-certificate-errors-spki-list` takes).
    pub spki_sha256: Option<String>,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

/// The database of a test, named by a path in the test's directory: that SQLite file, or, when the component
/// tests run on PostgreSQL (`LBFLEET_TEST_DATABASE=postgres`), a database of the process's shared test cluster
/// named after the path (created on first use; the same path names the same database, so restarts find it).
pub fn db_url(path: &Path) -> String {
    if crate::postgres::test_backend_is_postgres() {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        path.hash(&mut h);
        crate::postgres::shared().database(&format!("t_{:016x}", h.finish()))
    } else {
        sqlite_url(path)
    }
}

/// The state directory (server id, self-signed TLS pair) of a test server whose database `db_path` names: the
/// test's directory, on either backend (a PostgreSQL URL has no directory; the default would be the working
/// directory, shared by every test of the process).
fn state_dir_of(db_path: &Path) -> PathBuf {
    db_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// The SQLite URL of `path`, whatever backend the tests run on (tests of the SQLite file itself).
pub fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

/// A pool straight on the test's database (either backend), for tests that read or edit it behind the
/// server's back.
pub async fn raw_pool(db_path: &Path) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    sqlx::AnyPool::connect(&db_url(db_path)).await.unwrap()
}

/// Creates the three users and their tokens in a fresh database.
pub async fn seed(db_path: &Path) -> Tokens {
    seed_url(&db_url(db_path)).await
}

/// `seed` on the database at `url`.
pub async fn seed_url(url: &str) -> Tokens {
    let fleet = lbfleet_server::open_fleet(&ServerConfig::with_database(url.to_owned()))
        .await
        .unwrap();
    let sys = Actor::system();
    let mut out = Vec::new();
    for (name, role) in [
        ("admin", UserRole::Admin),
        ("oper", UserRole::Operator),
        ("view", UserRole::Viewer),
    ] {
        fleet
            .create_user(&sys, name, role, Some(PASSWORD.into()))
            .await
            .unwrap();
        out.push(
            fleet
                .create_token(&sys, name, "test", None)
                .await
                .unwrap()
                .1,
        );
    }
    fleet.close().await;
    Tokens {
        viewer: out.pop().unwrap(),
        operator: out.pop().unwrap(),
        admin: out.pop().unwrap(),
    }
}

impl TestServer {
    /// A server on a new database in `dir`.
    pub async fn start(dir: &Path) -> TestServer {
        let db_path = dir.join("lbfleet.db");
        let tokens = seed(&db_path).await;
        Self::start_with(db_path, tokens, |_| {}).await
    }

    /// A server on a new SQLite database in `dir`, whatever backend the other tests run on (tests of the
    /// SQLite file itself).
    pub async fn start_sqlite(dir: &Path) -> TestServer {
        let db_path = dir.join("lbfleet.db");
        let url = sqlite_url(&db_path);
        let tokens = seed_url(&url).await;
        let config = ServerConfig::with_database(url);
        Self::start_config(db_path, tokens, config).await
    }

    /// A server on an existing database (for restarts), with a config tweak.
    pub async fn start_with(
        db_path: PathBuf,
        tokens: Tokens,
        tweak: impl FnOnce(&mut ServerConfig),
    ) -> TestServer {
        let mut config = ServerConfig::with_database(db_url(&db_path));
        config.state_dir = state_dir_of(&db_path);
        tweak(&mut config);
        Self::start_config(db_path, tokens, config).await
    }

    /// A server with this configuration (its database already seeded; `db_path` names it as in `db_url`).
    pub async fn start_config(
        db_path: PathBuf,
        tokens: Tokens,
        config: ServerConfig,
    ) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(lbfleet_server::run(config, listener, async move {
            let _ = rx.await;
        }));
        TestServer::running(base, db_path, tokens, tx, handle)
    }

    /// The fixture around a server task already started on `base`, stopped through `stop`.
    fn running(
        base: String,
        db_path: PathBuf,
        tokens: Tokens,
        stop: oneshot::Sender<()>,
        handle: JoinHandle<anyhow::Result<()>>,
    ) -> TestServer {
        TestServer {
            base,
            db_path,
            tokens,
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(256)
                .build()
                .unwrap(),
            spki_sha256: None,
            stop: Some(stop),
            handle: Some(handle),
        }
    }

    /// A server with boot services: HTTP boot from `boot.boot_dir` and TFTP on the given socket.
    pub async fn start_boot(
        db_path: PathBuf,
        tokens: Tokens,
        boot: lbfleet_server::config::BootConfig,
        tftp: tokio::net::UdpSocket,
    ) -> TestServer {
        let url = db_url(&db_path);
        Self::start_boot_url(url, db_path, tokens, boot, tftp).await
    }

    /// `start_boot` on the database at `url` (`db_path` names the test's database as in `db_url`).
    pub async fn start_boot_url(
        url: String,
        db_path: PathBuf,
        tokens: Tokens,
        boot: lbfleet_server::config::BootConfig,
        tftp: tokio::net::UdpSocket,
    ) -> TestServer {
        let mut config = ServerConfig::with_database(url);
        config.state_dir = state_dir_of(&db_path);
        config.boot = Some(boot);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let sockets = lbfleet_server::BootSockets {
            tftp: Some(tftp),
            ..Default::default()
        };
        let handle = tokio::spawn(lbfleet_server::run_with(
            config,
            listener,
            sockets,
            async move {
                let _ = rx.await;
            },
        ));
        TestServer::running(base, db_path, tokens, tx, handle)
    }

    /// Stops the server and waits until it has closed the database.
    pub async fn stop(mut self) -> (PathBuf, Tokens) {
        self.shutdown().await;
        (
            self.db_path.clone(),
            std::mem::replace(
                &mut self.tokens,
                Tokens {
                    admin: String::new(),
                    operator: String::new(),
                    viewer: String::new(),
                },
            ),
        )
    }

    async fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.unwrap().unwrap();
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Sends a request with a bearer token (or none) and returns status and JSON body (Null if empty).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, value)
    }

    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, Some(token), None).await
    }
    pub async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }
    pub async fn put(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::PUT, path, Some(token), Some(body)).await
    }
    pub async fn delete(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(Method::DELETE, path, Some(token), None).await
    }

    /// The value of an unlabelled metric in `/metrics` (read as the viewer), e.g. `lbfleet_role_pollers`.
    pub async fn metric(&self, name: &str) -> u64 {
        let (_, body) = self.get("/metrics", &self.tokens.viewer).await;
        let prefix = format!("{name} ");
        body.as_str()
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {name} in /metrics"))
            .trim()
            .parse()
            .unwrap()
    }

    /// `POST /api/v1/agent/heartbeat` with a node credential: its status.
    pub async fn heartbeat(&self, credential: &str) -> StatusCode {
        self.call(
            Method::POST,
            "/api/v1/agent/heartbeat",
            Some(credential),
            None,
        )
        .await
        .0
    }

    /// A role long-poll of `credential` after generation `after` (`wait=20`), spawned, returned once the server
    /// counts it as waiting (`lbfleet_role_pollers` 1: no other poll may wait on this server meanwhile).
    pub async fn waiting_role_poll(
        &self,
        credential: &str,
        after: u64,
    ) -> JoinHandle<reqwest::Result<reqwest::Response>> {
        let poll = tokio::spawn(
            self.http
                .get(self.url(&format!("/api/v1/agent/role?after={after}&wait=20")))
                .bearer_auth(credential)
                .send(),
        );
        crate::wait::until_async(
            "the role poll waits",
            std::time::Duration::from_secs(5),
            std::time::Duration::from_millis(5),
            || async { (self.metric("lbfleet_role_pollers").await == 1).then_some(()) },
        )
        .await
        .unwrap();
        poll
    }

    /// Number of rows in the audit log.
    pub async fn audit_len(&self) -> usize {
        let (s, v) = self
            .get("/api/v1/audit?limit=1000", &self.tokens.admin)
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v["entries"].as_array().unwrap().len()
    }

    /// Logs in as `user` (password `PASSWORD`) through the API and returns the session cookie
    /// (`lbfleet_session=...`).
    pub async fn session_cookie(&self, user: &str) -> String {
        let resp = self
            .http
            .post(self.url("/api/v1/login"))
            .json(&json!({"username": user, "password": PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        resp.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned()
    }

    /// Logs in as `user` and returns the dashboard page at `path`.
    pub async fn page_as(&self, user: &str, path: &str) -> String {
        let cookie = self.session_cookie(user).await;
        self.http
            .get(self.url(path))
            .header("cookie", cookie)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Registers a node, issues an enrollment token and enrolls it; returns the node credential.
    pub async fn enrolled_node(&self, mac: &str, hostname: &str) -> String {
        let op = &self.tokens.operator;
        let (s, v) = self
            .post(
                "/api/v1/nodes",
                op,
                json!({"mac": mac, "hostname": hostname}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let (s, v) = self
            .post(
                &format!("/api/v1/nodes/{hostname}/enrollment-token"),
                op,
                json!({}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let token = v["token"].as_str().unwrap().to_owned();
        let (s, v) = self
            .call(
                Method::POST,
                "/api/v1/agent/enroll",
                None,
                Some(json!({"token": token, "mac": mac, "agent_version": "test"})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v["credential"].as_str().unwrap().to_owned()
    }

    /// `enrolled_node`, then assigned `role` in `cluster`; returns the node credential.
    pub async fn assigned_node(
        &self,
        mac: &str,
        hostname: &str,
        cluster: &str,
        role: &str,
    ) -> String {
        let credential = self.enrolled_node(mac, hostname).await;
        let (s, v) = self
            .post(
                &format!("/api/v1/nodes/{hostname}/assign"),
                &self.tokens.operator,
                json!({"cluster": cluster, "role": role}),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        credential
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// A valid cluster spec with two services and three real servers.
pub fn cluster_spec(vrid: u32, vip: &str) -> Value {
    json!({
        "vrid": vrid, "interface": "eth0", "vrrp_version": 3, "advert_interval_ms": 100,
        "vips": [format!("{vip}/32")],
        "services": [
            {"vip": vip, "port": 80, "protocol": "tcp", "scheduler": "wrr", "forward": "nat",
             "check": {"kind": "http", "path": "/healthz", "expect_status": 200},
             "real_servers": [{"address": "198.18.2.1", "port": 8080, "weight": 1},
                              {"address": "198.18.2.2", "port": 8080, "weight": 2}]},
            {"vip": vip, "port": 53, "protocol": "udp", "scheduler": "rr", "forward": "dr",
             "real_servers": [{"address": "198.18.2.3", "port": 53}]}
        ]
    })
}
