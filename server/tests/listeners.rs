//! Separate listeners (issue 13): with `boot_listen`, HTTP boot and the agent API are served on the boot
//! network's listener only, and the admin API and dashboard on the main (management) listener only. Each side
//! is probed with requests that would succeed on the other, so a 404 here means "not served on this listener",
//! not "bad request".

#![allow(clippy::unwrap_used)]

mod common;
mod process;

use lbfleet_server::config::BootConfig;
use lbfleet_server::ServerConfig;
use reqwest::StatusCode;
use serde_json::{json, Value};

const MAC: &str = "52:54:00:cc:00:01";

struct Split {
    main: String,
    boot: String,
    tokens: common::Tokens,
    http: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
    _boot_dir: tempfile::TempDir,
}

async fn start_split(dir: &std::path::Path) -> Split {
    let db_path = dir.join("lbfleet.db");
    let tokens = common::seed(&db_path).await;
    let boot_dir = tempfile::tempdir().unwrap();
    let img = boot_dir.path().join("images/2026.11.1");
    std::fs::create_dir_all(&img).unwrap();
    std::fs::write(img.join("vmlinuz"), b"kernel").unwrap();
    std::fs::write(img.join("initrd.img"), b"initrd").unwrap();
    let mut config = ServerConfig::with_database(common::db_url(&db_path));
    let mut boot = BootConfig::for_dir(boot_dir.path());
    boot.allow_token_without_lease = true;
    config.boot = Some(boot);
    let main = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let boot = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    config.boot_listen = Some(boot.local_addr().unwrap());
    let (main_url, boot_url) = (
        format!("http://{}", main.local_addr().unwrap()),
        format!("http://{}", boot.local_addr().unwrap()),
    );
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(lbfleet_server::run_listeners(
        config,
        lbfleet_server::Listeners {
            main,
            boot: Some(boot),
        },
        lbfleet_server::BootSockets::default(),
        async move {
            let _ = rx.await;
        },
    ));
    Split {
        main: main_url,
        boot: boot_url,
        tokens,
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        stop: Some(tx),
        handle,
        _boot_dir: boot_dir,
    }
}

impl Split {
    async fn send(&self, req: reqwest::RequestBuilder) -> (StatusCode, String) {
        let resp = req.send().await.unwrap();
        (resp.status(), resp.text().await.unwrap())
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.handle.await.unwrap().unwrap();
    }
}

fn not_here(status: StatusCode, body: &str, what: &str) {
    assert_eq!(status, StatusCode::NOT_FOUND, "{what}: {body}");
    assert!(
        body.contains("not served on this listener"),
        "{what}: {body}"
    );
}

#[tokio::test]
async fn boot_and_agent_paths_and_admin_paths_live_on_separate_listeners() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start_split(dir.path()).await;
    let (http, admin) = (&srv.http, srv.tokens.admin.clone());
    let op = srv.tokens.operator.clone();

    // The management listener: admin API and dashboard work.
    let (s, b) = srv
        .send(
            http.put(format!("{}/api/v1/images/2026.11.1", srv.main))
                .bearer_auth(&admin)
                .json(&json!({"kernel": "vmlinuz", "initrd": "initrd.img", "default": true})),
        )
        .await;
    assert!(s.is_success(), "{s} {b}");
    let (s, b) = srv
        .send(
            http.post(format!("{}/api/v1/nodes", srv.main))
                .bearer_auth(&op)
                .json(&json!({"mac": MAC, "hostname": "lb-01"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let (s, b) = srv
        .send(
            http.post(format!("{}/api/v1/nodes/lb-01/enrollment-token", srv.main))
                .bearer_auth(&op)
                .json(&json!({})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let token = serde_json::from_str::<Value>(&b).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (s, b) = srv.send(http.get(format!("{}/login", srv.main))).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert!(b.contains("login-form"));
    let (s, _) = srv.send(http.get(format!("{}/healthz", srv.main))).await;
    assert_eq!(s, StatusCode::OK);

    // ... and none of the boot network's paths, not even with a valid enrollment token.
    let (s, b) = srv
        .send(http.get(format!("{}/boot/{MAC}.ipxe", srv.main)))
        .await;
    not_here(s, &b, "boot script on the management listener");
    let (s, b) = srv
        .send(http.get(format!("{}/images/2026.11.1/vmlinuz", srv.main)))
        .await;
    not_here(s, &b, "image file on the management listener");
    let enroll = json!({"token": token, "mac": MAC, "agent_version": "test"});
    let (s, b) = srv
        .send(
            http.post(format!("{}/api/v1/agent/enroll", srv.main))
                .json(&enroll),
        )
        .await;
    not_here(s, &b, "agent enroll on the management listener");

    // The boot listener: HTTP boot and the agent API work; the script names the boot listener.
    let (s, b) = srv
        .send(http.get(format!("{}/boot/{MAC}.ipxe", srv.boot)))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert!(
        b.contains(&format!("kernel {}/images/2026.11.1/vmlinuz", srv.boot))
            && b.contains(&format!("lbfleet.server={} ", srv.boot)),
        "{b}"
    );
    let (s, b) = srv
        .send(http.get(format!("{}/images/2026.11.1/vmlinuz", srv.boot)))
        .await;
    assert_eq!((s, b.as_str()), (StatusCode::OK, "kernel"));
    // The token refused above was not spent there: it enrolls here.
    let (s, b) = srv
        .send(
            http.post(format!("{}/api/v1/agent/enroll", srv.boot))
                .json(&enroll),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let credential = serde_json::from_str::<Value>(&b).unwrap()["credential"]
        .as_str()
        .unwrap()
        .to_owned();
    let (s, b) = srv
        .send(
            http.post(format!("{}/api/v1/agent/report", srv.boot))
                .bearer_auth(&credential)
                .json(&json!({"applied_generation": 0})),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{b}");
    let (s, _) = srv.send(http.get(format!("{}/healthz", srv.boot))).await;
    assert_eq!(s, StatusCode::OK);

    // ... and nothing of the admin API or the dashboard, even with valid credentials.
    for path in [
        "/",
        "/login",
        "/nodes",
        "/images",
        "/static/app.css",
        "/live",
        "/metrics",
    ] {
        let (s, b) = srv.send(http.get(format!("{}{path}", srv.boot))).await;
        not_here(s, &b, &format!("GET {path} on the boot listener"));
    }
    for path in ["/api/v1/nodes", "/api/v1/whoami", "/api/v1/audit"] {
        let (s, b) = srv
            .send(http.get(format!("{}{path}", srv.boot)).bearer_auth(&admin))
            .await;
        not_here(s, &b, &format!("GET {path} on the boot listener"));
    }
    let (s, b) = srv
        .send(
            http.post(format!("{}/api/v1/login", srv.boot))
                .json(&json!({"username": "admin", "password": common::PASSWORD})),
        )
        .await;
    not_here(s, &b, "API login on the boot listener");
    let (s, b) = srv
        .send(
            http.get(format!("{}/api/v1/agent/role", srv.main))
                .bearer_auth(&credential),
        )
        .await;
    not_here(s, &b, "agent role on the management listener");

    // The agent's report went through: the node is seen on the management side.
    let (s, b) = srv
        .send(
            http.get(format!("{}/api/v1/nodes/lb-01", srv.main))
                .bearer_auth(&admin),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(
        serde_json::from_str::<Value>(&b).unwrap()["agent_version"],
        "test"
    );
    srv.stop().await;
}

/// The binary: `LBFLEET_BOOT_LISTEN` (the `--boot-listen` flag's variable) opens the second listener and splits
/// the paths the same way.
#[tokio::test]
async fn the_binary_opens_the_boot_listener_from_its_setting() {
    let dir = tempfile::tempdir().unwrap();
    let server =
        process::ServerProcess::start(dir.path(), None, &[("LBFLEET_BOOT_LISTEN", "127.0.0.1:0")]);
    let boot = server
        .boot_addr
        .clone()
        .expect("the server logs its boot listener");
    assert_ne!(boot, server.addr);
    let http = reqwest::Client::new();
    let get = |url: String| {
        let http = http.clone();
        async move {
            let r = http.get(url).send().await.unwrap();
            (r.status(), r.text().await.unwrap())
        }
    };
    let (s, b) = get(format!("http://{}/login", server.addr)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b) = get(format!("http://{boot}/login")).await;
    not_here(s, &b, "dashboard on the boot listener");
    // The agent API answers on the boot listener (401: no credential) and not on the main one.
    let (s, b) = get(format!("http://{boot}/api/v1/agent/role")).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{b}");
    let (s, b) = get(format!("http://{}/api/v1/agent/role", server.addr)).await;
    not_here(s, &b, "agent API on the main listener");
    drop(server);
}
