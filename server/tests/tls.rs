//! HTTPS (issue 13): the server with a self-signed certificate kept next to the database; the agent pins it
//! and enrolls, and refuses a server whose certificate is not the pinned one; plain HTTP serves only what iPXE
//! fetches; the session cookie is Secure; boot scripts name the HTTPS URL and the pin.

#![allow(clippy::unwrap_used)]

mod common;

use lbfleet_agent::client::{ClientError, ServerClient};
use lbfleet_agent::pin::CertPin;
use lbfleet_proto::EnrollRequest;
use lbfleet_server::config::BootConfig;
use lbfleet_server::tls::TlsSetting;
use lbfleet_server::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde_json::{json, Value};

struct TlsServer {
    port: u16,
    pin: CertPin,
    admin_token: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
    _boot_dir: tempfile::TempDir,
}

async fn start(dir: &std::path::Path) -> TlsServer {
    let db_path = dir.join("lbfleet.db");
    let tokens = common::seed(&db_path).await;
    let boot_dir = tempfile::tempdir().unwrap();
    let img = boot_dir.path().join("images/2026.11.1");
    std::fs::create_dir_all(&img).unwrap();
    std::fs::write(img.join("vmlinuz"), b"k").unwrap();
    std::fs::write(img.join("initrd.img"), b"i").unwrap();
    let mut config = ServerConfig::with_database(common::db_url(&db_path));
    config.tls = TlsSetting::SelfSigned {
        dir: dir.to_owned(),
    };
    let mut boot = BootConfig::for_dir(boot_dir.path());
    boot.allow_token_without_lease = true;
    config.boot = Some(boot);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(lbfleet_server::run_with(
        config,
        listener,
        lbfleet_server::BootSockets::default(),
        async move {
            let _ = rx.await;
        },
    ));
    // The certificate exists once the server answers.
    let http = insecure_client();
    let t = std::time::Instant::now();
    while http
        .get(format!("https://127.0.0.1:{port}/healthz"))
        .send()
        .await
        .is_err()
    {
        assert!(t.elapsed() < std::time::Duration::from_secs(30), "no HTTPS");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (cert_path, key_path) = lbfleet_server::tls::self_signed_paths(dir);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777,
        0o600,
        "TLS key is private"
    );
    let der = CertificateDer::from_pem_file(&cert_path).unwrap();
    TlsServer {
        port,
        pin: CertPin::of(der.as_ref()),
        admin_token: tokens.admin,
        stop: Some(tx),
        handle,
        _boot_dir: boot_dir,
    }
}

/// A client for test set-up calls that skips certificate checks (the agent under test never does).
fn insecure_client() -> reqwest::Client {
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

impl TlsServer {
    fn https(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }
    fn http(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    async fn new_token(&self, mac: &str, name: &str) -> String {
        let http = insecure_client();
        let r = http
            .post(self.https("/api/v1/nodes"))
            .bearer_auth(&self.admin_token)
            .json(&json!({"mac": mac, "hostname": name}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201);
        let v: Value = http
            .post(self.https(&format!("/api/v1/nodes/{name}/enrollment-token")))
            .bearer_auth(&self.admin_token)
            .json(&json!({}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["token"].as_str().unwrap().to_owned()
    }

    async fn stop(mut self) {
        let _ = self.stop.take().map(|tx| tx.send(()));
        self.handle.await.unwrap().unwrap();
    }
}

fn enroll_request(token: String, mac: &str) -> EnrollRequest {
    EnrollRequest {
        token,
        mac: mac.into(),
        agent_version: Some("test".into()),
        image_version: None,
    }
}

#[tokio::test]
async fn agent_enrolls_with_the_right_pin_and_refuses_any_other_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path()).await;

    // Right pin: enrolls and reads its role over HTTPS.
    let token = srv.new_token("52:54:00:bb:00:01", "lb-t1").await;
    let mut agent = ServerClient::pinned(&srv.https(""), None, Some(srv.pin)).unwrap();
    agent
        .enroll(&enroll_request(token, "52:54:00:bb:00:01"))
        .await
        .expect("enrolls with the pinned certificate");
    let role = agent
        .poll_role(0, std::time::Duration::from_secs(1))
        .await
        .unwrap();
    assert!(role.is_some());

    // Wrong pin: refuses to talk, with an error that says why; the token is not spent.
    let token = srv.new_token("52:54:00:bb:00:02", "lb-t2").await;
    let wrong: CertPin = format!("sha256:{}", "00".repeat(32)).parse().unwrap();
    let mut impostor_check = ServerClient::pinned(&srv.https(""), None, Some(wrong)).unwrap();
    let err = impostor_check
        .enroll(&enroll_request(token.clone(), "52:54:00:bb:00:02"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::CertificateMismatch { .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains(&srv.pin.to_string()) && text.contains("is not the pinned"),
        "{text}"
    );
    assert!(!err.is_transient());
    let mut agent = ServerClient::pinned(&srv.https(""), None, Some(srv.pin)).unwrap();
    agent
        .enroll(&enroll_request(token, "52:54:00:bb:00:02"))
        .await
        .expect("the token was never sent to the wrong server");
    srv.stop().await;
}

#[tokio::test]
async fn plain_http_serves_only_boot_paths_and_cookies_are_secure() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path()).await;
    let http = insecure_client();

    // Plain HTTP: health and boot yes; API no (redirect for GET, refusal otherwise).
    let r = http.get(srv.http("/healthz")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = http.get(srv.http("/api/v1/whoami")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 308);
    assert_eq!(
        r.headers()["location"],
        format!("https://127.0.0.1:{}/api/v1/whoami", srv.port).as_str()
    );
    let r = http
        .post(srv.http("/api/v1/login"))
        .json(&json!({"username": "admin", "password": common::PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403, "no password over plain HTTP");

    // HTTPS login: the session cookie is Secure.
    let r = http
        .post(srv.https("/api/v1/login"))
        .json(&json!({"username": "admin", "password": common::PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.contains("; Secure"), "{cookie}");

    // The boot script (plain HTTP, as iPXE fetches it) names the HTTPS URL and the pin; files stay on HTTP.
    let r = http
        .put(srv.https("/api/v1/images/2026.11.1"))
        .bearer_auth(&srv.admin_token)
        .json(&json!({"kernel": "vmlinuz", "initrd": "initrd.img", "default": true}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let body = http
        .get(srv.http("/boot/52:54:00:bb:00:03.ipxe"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let port = srv.port;
    assert!(
        body.contains(&format!(
            "kernel http://127.0.0.1:{port}/images/2026.11.1/vmlinuz"
        )) && body.contains(&format!("lbfleet.server=https://127.0.0.1:{port} "))
            && body.contains(&format!("lbfleet.server_cert={} ", srv.pin)),
        "{body}"
    );
    srv.stop().await;
}

#[tokio::test]
async fn https_responses_carry_hsts_and_plain_http_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path()).await;
    let http = insecure_client();
    for path in ["/healthz", "/api/v1/whoami", "/login"] {
        let r = http.get(srv.https(path)).send().await.unwrap();
        let hsts = r
            .headers()
            .get("strict-transport-security")
            .unwrap_or_else(|| panic!("no HSTS on https {path} ({})", r.status()));
        assert!(
            hsts.to_str().unwrap().starts_with("max-age=31536000"),
            "{hsts:?}"
        );
    }
    // Over plain HTTP the header means nothing to browsers and is not sent.
    let r = http.get(srv.http("/healthz")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.headers().get("strict-transport-security").is_none());
    srv.stop().await;
}
