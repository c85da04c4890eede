//! Booting while the database is down (issue 21 item 4): the server keeps a verified boot cache, and when it
//! starts with its database unreachable (here: the SQLite file replaced by a directory, which no one, root
//! included, can open as a database) a known node still gets its boot script, with a boot credential, its image
//! (checked against the cached manifest) and its last role; an unknown MAC gets nothing; the boot credential
//! changes nothing and expires; a tampered cache is refused; once the database is back the credential is
//! exchanged, once, for a node credential.
//!
//! Always on SQLite, also in the PostgreSQL run of the component tier: taking the database away is done to the
//! file. The cache and the credentials do not depend on the backend (the unreachable-error classification of
//! PostgreSQL's is unit-tested in `store::unreachable`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{cluster_spec, TestServer, Tokens};
use lbfleet_server::boot::cache::{BootCache, CACHE_FILE};
use lbfleet_server::config::BootConfig;
use lbfleet_server::fleet::boot_cache::{mint, BootKey};
use lbfleet_server::fleet::Actor;
use lbfleet_server::store::images::ImageRow;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const MAC: &str = "52:54:00:cc:00:01";
const IMAGE: &str = "2026.12.1";

struct Site {
    dir: tempfile::TempDir,
    boot_dir: tempfile::TempDir,
    db_path: PathBuf,
}

impl Site {
    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn boot_config(&self) -> BootConfig {
        BootConfig {
            cache_dir: Some(self.state_dir()),
            ..BootConfig::for_dir(self.boot_dir.path())
        }
    }

    async fn start(&self, tokens: Tokens) -> TestServer {
        let tftp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let url = common::sqlite_url(&self.db_path);
        TestServer::start_boot_url(url, self.db_path.clone(), tokens, self.boot_config(), tftp)
            .await
    }

    /// Takes the database away: the file (and its WAL, if any) moved aside, a directory in its place.
    fn database_down(&self) {
        for suffix in ["", "-wal", "-shm"] {
            let p = PathBuf::from(format!("{}{suffix}", self.db_path.display()));
            if p.exists() {
                std::fs::rename(&p, format!("{}.away", p.display())).unwrap();
            }
        }
        std::fs::create_dir(&self.db_path).unwrap();
    }

    fn database_back(&self) {
        std::fs::remove_dir(&self.db_path).unwrap();
        for suffix in ["", "-wal", "-shm"] {
            let p = PathBuf::from(format!("{}{suffix}", self.db_path.display()));
            let away = PathBuf::from(format!("{}.away", p.display()));
            if away.exists() {
                std::fs::rename(&away, &p).unwrap();
            }
        }
    }

    fn cached_key(&self) -> BootKey {
        BootCache::open(&self.state_dir(), Duration::from_secs(60))
            .unwrap()
            .boot_key()
            .expect("the cache holds the boot key")
    }
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Writes a bound DHCP lease of `mac` on `address` (as lbfleet's DHCP would) into the database.
async fn bind_lease(db_path: &Path, mac: &str, address: &str) {
    let store = lbfleet_server::store::Store::open(&common::sqlite_url(db_path))
        .await
        .unwrap();
    let mut tx = store.begin().await.unwrap();
    lbfleet_server::store::leases::upsert_many(
        &mut tx,
        &[lbfleet_server::store::leases::LeaseRow {
            address: address.into(),
            mac: mac.into(),
            state: "bound".into(),
            expires_at: lbfleet_server::store::now_ms() + 3_600_000,
        }],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    store.close().await;
}

/// The site's cluster, without health checks (nothing answers at the real servers' addresses, and a check would
/// drain them), with `weight` for its first real server.
fn spec(weight: u32) -> Value {
    let mut spec = cluster_spec(51, "198.18.0.10");
    for s in spec["services"].as_array_mut().unwrap() {
        s.as_object_mut().unwrap().remove("check");
    }
    spec["services"][0]["real_servers"][0]["weight"] = json!(weight);
    spec
}

fn script_token(body: &str) -> Option<String> {
    body.split("lbfleet.token=")
        .nth(1)
        .map(|t| t.split([' ', '\n']).next().unwrap().to_owned())
}

/// A site whose known node `lb-1` (MAC `MAC`, lease 127.0.0.1, assigned active in cluster `ext`) boots image
/// `IMAGE` (registered with its manifest digests), with the boot cache written; the server is stopped again.
/// Returns the site, the tokens, the role generation the cache holds, the node's credential (from before the
/// outage) and an admin's dashboard session cookie.
async fn site_with_a_known_node() -> (Site, Tokens, u64, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let site = Site {
        db_path: dir.path().join("lbfleet.db"),
        dir,
        boot_dir: tempfile::tempdir().unwrap(),
    };
    let tokens = common::seed_url(&common::sqlite_url(&site.db_path)).await;
    let img_dir = site.boot_dir.path().join("images").join(IMAGE);
    std::fs::create_dir_all(&img_dir).unwrap();
    std::fs::write(img_dir.join("vmlinuz"), b"kernel bytes").unwrap();
    std::fs::write(img_dir.join("initrd.img"), b"initrd bytes").unwrap();
    {
        let fleet = lbfleet_server::open_fleet(&lbfleet_server::ServerConfig::with_database(
            common::sqlite_url(&site.db_path),
        ))
        .await
        .unwrap();
        fleet
            .put_image(
                &Actor::system(),
                ImageRow {
                    name: IMAGE.into(),
                    kernel: "vmlinuz".into(),
                    initrd: "initrd.img".into(),
                    cmdline: String::new(),
                    is_default: true,
                    created_at: 0,
                    kernel_version: None,
                    agent_version: None,
                    kernel_sha256: Some(sha256_hex(b"kernel bytes")),
                    initrd_sha256: Some(sha256_hex(b"initrd bytes")),
                },
            )
            .await
            .unwrap();
        fleet.close().await;
    }
    bind_lease(&site.db_path, MAC, "127.0.0.1").await;
    let srv = site.start(tokens).await;
    let op = srv.tokens.operator.clone();
    assert_eq!(
        srv.put("/api/v1/clusters/ext", &op, spec(1)).await.0,
        StatusCode::CREATED
    );
    let node_credential = srv.enrolled_node(MAC, "lb-1").await;
    let cookie = srv.session_cookie("admin").await;
    let (s, v) = srv
        .post(
            "/api/v1/nodes/lb-1/assign",
            &op,
            json!({"cluster": "ext", "role": "active"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, node) = srv.get("/api/v1/nodes/lb-1", &op).await;
    let generation = node["role_generation"].as_u64().unwrap();
    // The cache follows the change: wait for the node's role of that generation in the file.
    let cache = BootCache::open(&site.state_dir(), Duration::from_secs(60)).unwrap();
    lbfleet_tests::wait::until_async(
        "the boot cache to hold lb-1's role",
        Duration::from_secs(20),
        Duration::from_millis(50),
        || {
            let snap = cache.read_file().ok().flatten();
            async move {
                let n = snap?.nodes.into_iter().find(|n| n.mac == MAC)?;
                (n.role?.generation == generation
                    && n.lease_address.as_deref() == Some("127.0.0.1"))
                .then_some(())
            }
        },
    )
    .await
    .unwrap();
    let (_, tokens) = srv.stop().await;
    (site, tokens, generation, node_credential, cookie)
}

async fn get(srv: &TestServer, path: &str, bearer: Option<&str>) -> (StatusCode, String) {
    let mut req = srv.http.get(srv.url(path));
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    let r = req.send().await.unwrap();
    (r.status(), r.text().await.unwrap())
}

fn from_address(last: u8) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, last]))
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_known_node_boots_from_the_cache_while_the_database_is_down() {
    let (site, tokens, generation, old_credential, cookie) = site_with_a_known_node().await;
    site.database_down();
    let srv = site.start(tokens).await;
    let admin = srv.tokens.admin.clone();

    // The known node, from its lease address: its image and a boot credential.
    let (s, body) = get(&srv, &format!("/boot/{MAC}.ipxe"), None).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert!(
        body.contains(&format!(
            "/images/{IMAGE}/vmlinuz initrd=initrd.img BOOTIF=01-52-54-00-cc-00-01"
        )),
        "{body}"
    );
    let credential = script_token(&body).expect("a boot credential in the script");
    assert!(credential.starts_with("lbf_boot_"), "{credential}");
    // Someone else asking for the node's script from another address: the image, no credential.
    let r = from_address(66)
        .get(srv.url(&format!("/boot/{MAC}.ipxe")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(script_token(&r.text().await.unwrap()), None);
    // An unknown MAC gets nothing (and nothing is recorded: there is no database to record it in).
    let (s, body) = get(&srv, "/boot/52:54:00:cc:00:99.ipxe", None).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(!body.contains("#!ipxe"), "{body}");

    // Image files are served when they match the cached manifest, refused when they do not.
    let (s, body) = get(&srv, &format!("/images/{IMAGE}/vmlinuz"), None).await;
    assert_eq!((s, body.as_str()), (StatusCode::OK, "kernel bytes"));
    let initrd = site
        .boot_dir
        .path()
        .join("images")
        .join(IMAGE)
        .join("initrd.img");
    std::fs::write(&initrd, b"initrd bytes, changed").unwrap();
    let (s, _) = get(&srv, &format!("/images/{IMAGE}/initrd.img"), None).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    std::fs::write(&initrd, b"initrd bytes").unwrap();
    let (s, body) = get(&srv, &format!("/images/{IMAGE}/initrd.img"), None).await;
    assert_eq!((s, body.as_str()), (StatusCode::OK, "initrd bytes"));

    // The boot credential reads the node's last role, and long-polls it.
    let (s, body) = get(&srv, "/api/v1/agent/role", Some(&credential)).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let role: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(role["generation"].as_u64(), Some(generation));
    assert_eq!(role["node"], "lb-1");
    assert_eq!(role["role"], "active");
    assert_eq!(role["vrrp"]["vips"][0], "198.18.0.10/32");
    let (s, _) = get(
        &srv,
        &format!("/api/v1/agent/role?after={generation}&wait=1"),
        Some(&credential),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    // A copy of the credential used from another address reads nothing.
    let r = from_address(66)
        .get(srv.url("/api/v1/agent/role"))
        .bearer_auth(&credential)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // It changes nothing: a report is dropped with 503 (the agent keeps its role), the admin API refuses it,
    // and it cannot be exchanged while the database is down.
    let (s, v) = srv
        .call(
            Method::POST,
            "/api/v1/agent/report",
            Some(&credential),
            Some(json!({"applied_generation": generation})),
        )
        .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(v["error"]["code"], "database_unreachable");
    for (method, path, body) in [
        (Method::GET, "/api/v1/nodes", None),
        (Method::POST, "/api/v1/nodes/lb-1/unassign", Some(json!({}))),
        (
            Method::PUT,
            "/api/v1/clusters/ext",
            Some(cluster_spec(51, "198.18.0.11")),
        ),
    ] {
        let (s, v) = srv.call(method, path, Some(&credential), body).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{path}: {v}");
    }
    let enroll = json!({"token": credential, "mac": MAC});
    let (s, v) = srv
        .call(
            Method::POST,
            "/api/v1/agent/enroll",
            None,
            Some(enroll.clone()),
        )
        .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    // People's changes wait too, with a clear error.
    let (s, v) = srv
        .post(
            "/api/v1/nodes",
            &admin,
            json!({"mac": "52:54:00:cc:00:02", "hostname": "lb-2"}),
        )
        .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(v["error"]["code"], "database_unreachable");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("database unreachable"),
        "{v}"
    );

    // An agent that did not reboot (it has its node credential): 503 on its role poll and its reports, which it
    // understands as "keep your role and retry".
    let (s, body) = get(&srv, "/api/v1/agent/role", Some(&old_credential)).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let (s, v) = srv
        .call(
            Method::POST,
            "/api/v1/agent/report",
            Some(&old_credential),
            Some(json!({"applied_generation": generation})),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Some("database_unreachable")
        ),
        "{v}"
    );
    // The dashboard says why it cannot show or change anything.
    let r = srv
        .http
        .get(srv.url("/nodes"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let page = r.text().await.unwrap();
    assert!(page.contains("database unreachable"), "{page}");

    // Expired, forged or another node's: refused.
    let key = site.cached_key();
    let addr = std::net::Ipv4Addr::LOCALHOST;
    let expired = mint(&key, MAC, addr, lbfleet_server::store::now_ms() - 1).unwrap();
    let forged = mint(&BootKey::random(), MAC, addr, i64::MAX).unwrap();
    let stranger = mint(&key, "52:54:00:cc:00:99", addr, i64::MAX).unwrap();
    for bad in [&expired, &forged, &stranger] {
        let (s, body) = get(&srv, "/api/v1/agent/role", Some(bad)).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{body}");
    }

    // The database comes back: the credential is exchanged for a node credential, once.
    site.database_back();
    let exchanged = lbfleet_tests::wait::until_async(
        "the boot credential to be exchanged",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let srv = &srv;
            let enroll = enroll.clone();
            async move {
                let (s, v) = srv
                    .call(Method::POST, "/api/v1/agent/enroll", None, Some(enroll))
                    .await;
                match s {
                    StatusCode::OK => Some(v),
                    StatusCode::SERVICE_UNAVAILABLE => None,
                    other => panic!("exchange refused: {other} {v}"),
                }
            }
        },
    )
    .await
    .unwrap();
    let node_credential = exchanged["credential"].as_str().unwrap().to_owned();
    assert!(node_credential.starts_with("lbf_node_"));
    let (s, v) = srv
        .call(Method::POST, "/api/v1/agent/enroll", None, Some(enroll))
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "a second exchange: {v}");
    let (s, body) = get(&srv, "/api/v1/agent/role", Some(&node_credential)).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (s, v) = srv
        .call(
            Method::POST,
            "/api/v1/agent/report",
            Some(&node_credential),
            Some(json!({"applied_generation": generation})),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    let (_, node) = srv.get("/api/v1/nodes/lb-1", &admin).await;
    assert_eq!(node["state"], "serving");
    // An expired credential does not exchange either.
    let (s, _) = srv
        .call(
            Method::POST,
            "/api/v1/agent/enroll",
            None,
            Some(json!({"token": expired, "mac": MAC})),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_tampered_cache_is_refused() {
    let (site, tokens, ..) = site_with_a_known_node().await;
    // Someone with write access to the state directory points the node at another address.
    let path = site.state_dir().join(CACHE_FILE);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("\"127.0.0.1\""));
    std::fs::write(&path, text.replace("\"127.0.0.1\"", "\"127.0.0.66\"")).unwrap();
    site.database_down();
    let srv = site.start(tokens).await;
    for client in [from_address(1), from_address(66)] {
        let r = client
            .get(srv.url(&format!("/boot/{MAC}.ipxe")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(script_token(&r.text().await.unwrap()), None);
    }
    let (s, _) = get(&srv, &format!("/images/{IMAGE}/vmlinuz"), None).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
}

/// The agent's side: a node rebooted (no saved credential, no saved role) while the database is down boots with
/// a boot credential, applies its last role from the cache and keeps it, and once the database is back trades
/// the credential for a node credential, reports (the node becomes `serving`) and follows changes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebooted_agent_serves_its_last_role_and_enrolls_when_the_database_returns() {
    use lbfleet_agent::daemon::{self as agent, RunConfig};
    use lbfleet_agent::reconcile::RecordingApplier;

    let (site, tokens, ..) = site_with_a_known_node().await;
    site.database_down();
    let srv = site.start(tokens).await;
    let (s, body) = get(&srv, &format!("/boot/{MAC}.ipxe"), None).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let credential = script_token(&body).expect("a boot credential");

    let state = tempfile::tempdir().unwrap();
    let mut config = RunConfig::new(&srv.base, state.path());
    config.token = Some(credential);
    config.mac = Some(MAC.into());
    config.resync = Duration::from_millis(200);
    config.backoff_initial = Duration::from_millis(50);
    config.backoff_max = Duration::from_millis(300);
    config.poll_wait = Duration::from_secs(2);
    let kernel = RecordingApplier::new();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(agent::run(config, Box::new(kernel.clone()), async move {
        let _ = stop_rx.await;
    }));

    lbfleet_tests::wait::wait_for_async(
        "the role from the boot cache applied",
        Duration::from_secs(20),
        Duration::from_millis(20),
        || kernel.state().services.len() == 2,
    )
    .await;
    assert!(
        !state.path().join("credential").exists(),
        "no node credential while the database is down"
    );

    site.database_back();
    lbfleet_tests::wait::wait_for_async(
        "the boot credential exchanged for a node credential",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || state.path().join("credential").exists(),
    )
    .await;
    let admin = srv.tokens.admin.clone();
    lbfleet_tests::wait::until_async(
        "the node to serve again",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            let (srv, admin) = (&srv, admin.clone());
            async move {
                let (_, n) = srv.get("/api/v1/nodes/lb-1", &admin).await;
                (n["state"] == "serving").then_some(())
            }
        },
    )
    .await
    .unwrap();
    // A change made now reaches the agent through its normal long-poll.
    let (s, v) = srv.put("/api/v1/clusters/ext", &admin, spec(7)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    lbfleet_tests::wait::wait_for_async(
        "the new weight applied",
        Duration::from_secs(20),
        Duration::from_millis(20),
        || {
            kernel
                .state()
                .services
                .values()
                .any(|s| s.dests().iter().any(|d| d.weight == 7))
        },
    )
    .await;
    let _ = stop_tx.send(());
    handle.await.unwrap().unwrap();
}
