//! Boot services over loopback: TFTP against real clients (tftp-hpa, curl) and HTTP boot scripts and files.
//! The TFTP clients are prerequisites: under CI=true a missing one fails the test.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::UdpSocket;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::TestServer;
use lbfleet_server::boot::tftp::packet::{ErrorCode, Packet};
use lbfleet_server::config::BootConfig;
use reqwest::{Method, StatusCode};
use serde_json::json;

/// Writes `len` bytes of a deterministic pattern.
fn pattern_file(path: &Path, len: usize) -> Vec<u8> {
    let data: Vec<u8> = (0..len)
        .map(|i| (i.wrapping_mul(31) ^ (i >> 11)) as u8)
        .collect();
    std::fs::write(path, &data).unwrap();
    data
}

/// Writes a bound DHCP lease of `mac` on `address` (as lbfleet's DHCP would) into the server's database.
async fn bind_lease(db_path: &Path, mac: &str, address: &str, expires_in_ms: i64) {
    let store = lbfleet_server::store::Store::open(&common::db_url(db_path))
        .await
        .unwrap();
    let mut tx = store.begin().await.unwrap();
    lbfleet_server::store::leases::upsert_many(
        &mut tx,
        &[lbfleet_server::store::leases::LeaseRow {
            address: address.into(),
            mac: mac.into(),
            state: "bound".into(),
            expires_at: lbfleet_server::store::now_ms() + expires_in_ms,
        }],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    store.close().await;
}

/// The token argument of a boot script, if any.
fn script_token(body: &str) -> Option<String> {
    body.split("lbfleet.token=")
        .nth(1)
        .map(|t| t.split([' ', '\n']).next().unwrap().to_owned())
}

/// Returns true if `tool` is installed and fails the test otherwise: a missing client is never a silent skip.
fn have(tool: &str) -> bool {
    let ok = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "{tool} is required (scripts/install-deps.sh installs it)"
    );
    ok
}

struct BootLab {
    srv: TestServer,
    boot_dir: tempfile::TempDir,
    tftp_port: u16,
    _dir: tempfile::TempDir,
}

async fn boot_lab() -> BootLab {
    let dir = tempfile::tempdir().unwrap();
    let boot_dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("lbfleet.db");
    let tokens = common::seed(&db_path).await;
    let tftp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let tftp_port = tftp.local_addr().unwrap().port();
    let boot = BootConfig::for_dir(boot_dir.path());
    let srv = TestServer::start_boot(db_path, tokens, boot, tftp).await;
    BootLab {
        srv,
        boot_dir,
        tftp_port,
        _dir: dir,
    }
}

#[tokio::test]
async fn tftp_serves_files_to_tftp_hpa_and_curl_with_any_blksize() {
    let lab = boot_lab().await;
    let data = pattern_file(&lab.boot_dir.path().join("undionly.kpxe"), 100_000);
    let out = tempfile::tempdir().unwrap();
    let port = lab.tftp_port;

    if have("curl") {
        for blksize in [512, 1024, 1468, 8192] {
            let dest = out.path().join(format!("curl-{blksize}"));
            let status = tokio::process::Command::new("curl")
                .args([
                    "-sS",
                    "--max-time",
                    "20",
                    "--tftp-blksize",
                    &blksize.to_string(),
                    "-o",
                ])
                .arg(&dest)
                .arg(format!("tftp://127.0.0.1:{port}/undionly.kpxe"))
                .status()
                .await
                .unwrap();
            assert!(status.success(), "curl blksize {blksize}");
            assert_eq!(
                std::fs::read(&dest).unwrap(),
                data,
                "curl blksize {blksize}"
            );
        }
    }
    if have("tftp") {
        // tftp-hpa's client negotiates no options: plain RFC 1350, 512-byte lock-step.
        let dest = out.path().join("hpa");
        let output = tokio::process::Command::new("tftp")
            .args([
                "-m",
                "binary",
                "127.0.0.1",
                &port.to_string(),
                "-c",
                "get",
                "undionly.kpxe",
            ])
            .arg(&dest)
            .output()
            .await
            .unwrap();
        assert!(
            output.status.success(),
            "tftp-hpa: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(std::fs::read(&dest).unwrap(), data, "tftp-hpa");
    }
}

#[tokio::test]
async fn tftp_rolls_block_numbers_over_for_files_over_65535_blocks() {
    let lab = boot_lab().await;
    // 70,000 blocks of 512 bytes (+1 byte): curl's default block size, so the block number wraps.
    let data = pattern_file(&lab.boot_dir.path().join("big.img"), 512 * 70_000 + 1);
    if have("curl") {
        let out = tempfile::tempdir().unwrap();
        let dest = out.path().join("big");
        let status = tokio::process::Command::new("curl")
            .args(["-sS", "--max-time", "120", "-o"])
            .arg(&dest)
            .arg(format!("tftp://127.0.0.1:{}/big.img", lab.tftp_port))
            .status()
            .await
            .unwrap();
        assert!(status.success());
        let got = std::fs::read(&dest).unwrap();
        assert_eq!(got.len(), data.len());
        assert!(got == data, "content differs");
    }
}

/// A minimal client over our own codec: sends one request, returns the first reply.
fn request(port: u16, packet: &[u8]) -> Packet {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    sock.send_to(packet, ("127.0.0.1", port)).unwrap();
    let mut buf = [0u8; 2048];
    let (n, _) = sock.recv_from(&mut buf).unwrap();
    Packet::decode(&buf[..n]).unwrap()
}

fn rrq(name: &str) -> Vec<u8> {
    Packet::ReadRequest {
        filename: name.into(),
        mode: "octet".into(),
        options: vec![],
    }
    .encode()
}

#[tokio::test]
async fn tftp_refuses_traversal_absolute_paths_symlinks_and_writes() {
    let lab = boot_lab().await;
    pattern_file(&lab.boot_dir.path().join("ok"), 10);
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), b"secret").unwrap();
    std::os::unix::fs::symlink(secret.path(), lab.boot_dir.path().join("escape")).unwrap();
    let port = lab.tftp_port;
    tokio::task::spawn_blocking(move || {
        for name in [
            "../etc/passwd",
            "/etc/passwd",
            "a/../../etc/passwd",
            "escape",
            "..",
            "sub\\..\\x",
        ] {
            match request(port, &rrq(name)) {
                Packet::Error { code, message } => {
                    assert_eq!(code, ErrorCode::AccessViolation, "{name}");
                    assert!(!message.contains('/'), "error leaks a path: {message}");
                }
                other => panic!("{name}: expected an error, got {other:?}"),
            }
        }
        assert!(matches!(
            request(port, &rrq("missing")),
            Packet::Error {
                code: ErrorCode::FileNotFound,
                ..
            }
        ));
        let wrq = Packet::WriteRequest {
            filename: "ok".into(),
        }
        .encode();
        assert!(matches!(
            request(port, &wrq),
            Packet::Error {
                code: ErrorCode::AccessViolation,
                ..
            }
        ));
        // Malformed packets are dropped (no reply), and the server keeps serving.
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        for junk in [
            &b"\x00"[..],
            b"\x00\x01abc",
            b"\x00\x01f\x00octet\x00blksize\x00",
            b"\x00\x63\x00\x00",
        ] {
            sock.send_to(junk, ("127.0.0.1", port)).unwrap();
        }
        let mut buf = [0u8; 64];
        assert!(
            sock.recv_from(&mut buf).is_err(),
            "malformed packets must get no reply"
        );
        assert!(matches!(
            request(port, &rrq("ok")),
            Packet::Data { block: 1, .. }
        ));
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn tftp_windowsize_transfer_with_our_codec() {
    let lab = boot_lab().await;
    let data = pattern_file(&lab.boot_dir.path().join("kernel"), 300_000);
    let port = lab.tftp_port;
    let got = tokio::task::spawn_blocking(move || {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let req = Packet::ReadRequest {
            filename: "kernel".into(),
            mode: "octet".into(),
            options: vec![
                ("blksize".into(), "1468".into()),
                ("windowsize".into(), "8".into()),
                ("tsize".into(), "0".into()),
            ],
        };
        sock.send_to(&req.encode(), ("127.0.0.1", port)).unwrap();
        let mut buf = [0u8; 2048];
        let (n, peer) = sock.recv_from(&mut buf).unwrap();
        let oack = Packet::decode(&buf[..n]).unwrap();
        assert_eq!(
            oack,
            Packet::OptionAck {
                options: vec![
                    ("blksize".into(), "1468".into()),
                    ("windowsize".into(), "8".into()),
                    ("tsize".into(), "300000".into())
                ]
            }
        );
        sock.send_to(&Packet::Ack { block: 0 }.encode(), peer)
            .unwrap();
        let mut out = Vec::new();
        let mut expect: u16 = 1;
        let mut in_window = 0;
        loop {
            let (n, from) = sock.recv_from(&mut buf).unwrap();
            assert_eq!(from, peer, "data comes from the transfer's own port");
            let Packet::Data { block, data } = Packet::decode(&buf[..n]).unwrap() else {
                panic!("not data")
            };
            assert_eq!(block, expect);
            let last = data.len() < 1468;
            out.extend_from_slice(&data);
            in_window += 1;
            if in_window == 8 || last {
                sock.send_to(&Packet::Ack { block }.encode(), peer).unwrap();
                in_window = 0;
            }
            if last {
                return out;
            }
            expect = expect.wrapping_add(1);
        }
    })
    .await
    .unwrap();
    assert_eq!(got, data);

    // The transfer shows in /metrics (the server counts it once the last ACK is in).
    let mut text = String::new();
    for _ in 0..50 {
        let (_, body) = lab.srv.get("/metrics", &lab.srv.tokens.viewer).await;
        text = body.as_str().unwrap_or_default().to_owned();
        if text.contains("lbfleet_tftp_requests_total{outcome=\"completed\"} 1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        text.contains("lbfleet_tftp_requests_total{outcome=\"completed\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("lbfleet_tftp_bytes_sent_total 300000"),
        "{text}"
    );
    assert!(
        !text.contains("lbfleet_dhcp_packets_total"),
        "DHCP is not running here: {text}"
    );
}

#[tokio::test]
async fn http_boot_scripts_follow_node_state_and_files_support_ranges() {
    let lab = boot_lab().await;
    let srv = &lab.srv;
    let op = srv.tokens.operator.clone();
    let img_dir = lab.boot_dir.path().join("images/2026.11.1");
    std::fs::create_dir_all(&img_dir).unwrap();
    let kernel = pattern_file(&img_dir.join("vmlinuz"), 10_000);
    pattern_file(&img_dir.join("initrd.img"), 1000);
    let get = |path: String| {
        let http = srv.http.clone();
        let url = srv.url(&path);
        async move {
            let r = http.get(url).send().await.unwrap();
            (r.status(), r.text().await.unwrap())
        }
    };

    // No image yet: a script that waits and retries, and the MAC is now a discovered node.
    let (s, body) = get("/boot/52:54:00:aa:00:01.ipxe".into()).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        body.starts_with("#!ipxe\n") && body.contains("no boot image") && body.contains("chain"),
        "{body}"
    );
    let (_, nodes) = srv.get("/api/v1/nodes?state=discovered", &op).await;
    assert_eq!(nodes["nodes"][0]["mac"], "52:54:00:aa:00:01");

    srv.put("/api/v1/images/2026.11.1", &op, json!({"kernel": "vmlinuz", "initrd": "initrd.img", "cmdline": "console=ttyS0", "default": true})).await;
    // The script carries a token only for the MAC's own lease address (here: this client's, 127.0.0.1).
    bind_lease(&srv.db_path, "52:54:00:aa:00:01", "127.0.0.1", 60_000).await;
    let (s, body) = get("/boot/52-54-00-AA-00-01.ipxe".into()).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        body.contains("/images/2026.11.1/vmlinuz initrd=initrd.img BOOTIF=01-52-54-00-aa-00-01 lbfleet.server=http://127.0.0.1:"),
        "{body}"
    );
    assert!(
        body.contains("console=ttyS0")
            && body.contains(" lbfleet.image=2026.11.1 ")
            && body.contains("\ninitrd ")
            && body.ends_with("boot\n"),
        "{body}"
    );
    // The node reads the kernel line with the one parser of the contract: every argument the script wrote
    // comes back, and nothing the node would not read (the old `lbfleet.node=`) is written.
    assert!(!body.contains("lbfleet.node="), "{body}");
    let kernel_line = body.lines().find(|l| l.starts_with("kernel ")).unwrap();
    let args = lbfleet_proto::KernelArgs::parse(kernel_line).unwrap();
    assert_eq!(args.bootif.unwrap().to_string(), "52:54:00:aa:00:01");
    assert_eq!(args.image.as_deref(), Some("2026.11.1"));
    assert!(args
        .server
        .as_deref()
        .unwrap()
        .starts_with("http://127.0.0.1:"));
    let token = args.token.clone().unwrap();
    // The token in the script enrolls the node, once.
    let enroll = json!({"token": token, "mac": "52:54:00:aa:00:01"});
    assert_eq!(
        srv.call(
            Method::POST,
            "/api/v1/agent/enroll",
            None,
            Some(enroll.clone())
        )
        .await
        .0,
        StatusCode::OK
    );
    assert_eq!(
        srv.call(Method::POST, "/api/v1/agent/enroll", None, Some(enroll))
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );

    // Retired nodes get nothing; bad MACs are refused.
    srv.post("/api/v1/nodes/52:54:00:aa:00:01/retire", &op, json!({}))
        .await;
    assert_eq!(
        get("/boot/52:54:00:aa:00:01.ipxe".into()).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        get("/boot/not-a-mac.ipxe".into()).await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );

    // Image files: whole, ranged, and nothing outside the image directory.
    let r = srv
        .http
        .get(srv.url("/images/2026.11.1/vmlinuz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-length"], "10000");
    assert_eq!(r.bytes().await.unwrap().to_vec(), kernel);
    let r = srv
        .http
        .get(srv.url("/images/2026.11.1/vmlinuz"))
        .header("range", "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.headers()["content-range"], "bytes 100-199/10000");
    assert_eq!(r.bytes().await.unwrap().to_vec(), kernel[100..200].to_vec());
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::os::unix::fs::symlink(secret.path(), img_dir.join("leak")).unwrap();
    for path in [
        "/images/2026.11.1/leak",
        "/images/2026.11.1/..%2F..%2Fetc%2Fpasswd",
        "/images/..%2F..%2Fetc/passwd",
    ] {
        let s = get(path.into()).await.0;
        assert!(
            s == StatusCode::FORBIDDEN || s == StatusCode::NOT_FOUND,
            "{path}: {s}"
        );
    }
    assert_eq!(
        get("/images/2026.11.1/missing".into()).await.0,
        StatusCode::NOT_FOUND
    );

    // Script requests are bounded per MAC (each mints a token and an audit row).
    bind_lease(&srv.db_path, "52:54:00:aa:00:02", "127.0.0.1", 60_000).await;
    let audit_before = srv.audit_len().await;
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(get("/boot/52:54:00:aa:00:02.ipxe".into()).await.0);
    }
    assert!(
        statuses[..10].iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    assert_eq!(
        &statuses[10..],
        &[StatusCode::TOO_MANY_REQUESTS, StatusCode::TOO_MANY_REQUESTS]
    );
    // Discovery of the MAC is audited; the 10 scripts with tokens are events, not audit rows (issue 13); the
    // refused requests wrote nothing.
    assert_eq!(srv.audit_len().await, audit_before + 1);
    let (_, events) = srv
        .get(
            "/api/v1/events?kind=boot_script&limit=100",
            &srv.tokens.viewer,
        )
        .await;
    let for_mac = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["node"] == "52:54:00:aa:00:02")
        .count();
    assert_eq!(for_mac, 10, "{events}");
}

#[tokio::test]
async fn boot_routes_are_off_without_boot_config() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path()).await;
    let r = srv
        .http
        .get(srv.url("/boot/52:54:00:aa:00:01.ipxe"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let (_, nodes) = srv.get("/api/v1/nodes", &srv.tokens.viewer).await;
    assert_eq!(
        nodes["nodes"].as_array().unwrap().len(),
        0,
        "no discovery without boot services"
    );
}

/// Issue 13, node takeover: an assigned, serving node's boot script asked for from an address that is not the
/// node's lease gets the image but no enrollment token; from the lease address (while the lease is bound) it
/// gets one; after the lease expired, none. With `allow_token_without_lease` the old behaviour returns.
#[tokio::test]
async fn boot_script_tokens_only_for_the_macs_lease_address() {
    let lab = boot_lab().await;
    let srv = &lab.srv;
    let op = srv.tokens.operator.clone();
    let img_dir = lab.boot_dir.path().join("images/2026.11.1");
    std::fs::create_dir_all(&img_dir).unwrap();
    pattern_file(&img_dir.join("vmlinuz"), 100);
    pattern_file(&img_dir.join("initrd.img"), 100);
    srv.put(
        "/api/v1/images/2026.11.1",
        &op,
        json!({"kernel": "vmlinuz", "initrd": "initrd.img", "default": true}),
    )
    .await;
    let mac = "52:54:00:aa:00:31";
    // The real node booted and enrolled; its lease is 127.0.0.31.
    let credential = srv.enrolled_node(mac, "lb-31").await;
    bind_lease(&srv.db_path, mac, "127.0.0.31", 60_000).await;
    let from = |last: u8| {
        reqwest::Client::builder()
            .local_address(std::net::IpAddr::from([127, 0, 0, last]))
            .build()
            .unwrap()
    };
    let script = |client: reqwest::Client| {
        let url = srv.url(&format!("/boot/{mac}.ipxe"));
        async move {
            let r = client.get(url).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            r.text().await.unwrap()
        }
    };

    // The attacker, elsewhere on the boot network: the image, no token.
    let body = script(from(66)).await;
    assert!(body.contains("/images/2026.11.1/vmlinuz"), "{body}");
    assert_eq!(script_token(&body), None, "takeover got a token: {body}");
    // The real agent keeps its credential.
    let (s, _) = srv
        .call(Method::GET, "/api/v1/agent/role", Some(&credential), None)
        .await;
    assert_eq!(s, StatusCode::OK);

    // The node itself, from its lease address: a token.
    let body = script(from(31)).await;
    assert!(script_token(&body).is_some(), "{body}");

    // Lease expired: no token, even from that address.
    bind_lease(&srv.db_path, mac, "127.0.0.31", -1).await;
    let body = script(from(31)).await;
    assert_eq!(script_token(&body), None, "{body}");
}

/// Issue 20 item 1, relayed networks: with `boot.require_armed_enrollment`, a known node's script carries a
/// token only while an operator has opened its enrollment window (audited); outside it, no token and an event,
/// even from the node's own lease address.
#[tokio::test]
async fn armed_enrollment_gives_tokens_only_inside_an_operator_window() {
    let dir = tempfile::tempdir().unwrap();
    let boot_dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("lbfleet.db");
    let tokens = common::seed(&db_path).await;
    let tftp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut boot = BootConfig::for_dir(boot_dir.path());
    boot.require_armed_enrollment = true;
    let srv = TestServer::start_boot(db_path, tokens, boot, tftp).await;
    let img_dir = boot_dir.path().join("images/2026.11.1");
    std::fs::create_dir_all(&img_dir).unwrap();
    pattern_file(&img_dir.join("vmlinuz"), 100);
    pattern_file(&img_dir.join("initrd.img"), 100);
    let op = srv.tokens.operator.clone();
    srv.put(
        "/api/v1/images/2026.11.1",
        &op,
        json!({"kernel": "vmlinuz", "initrd": "initrd.img", "default": true}),
    )
    .await;
    let mac = "52:54:00:aa:00:35";
    srv.enrolled_node(mac, "lb-35").await;
    bind_lease(&srv.db_path, mac, "127.0.0.35", 60_000).await;
    let client = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 35]))
        .build()
        .unwrap();
    let script = || {
        let url = srv.url(&format!("/boot/{mac}.ipxe"));
        let client = client.clone();
        async move { client.get(url).send().await.unwrap().text().await.unwrap() }
    };

    // Lease and address match, but nobody expects lb-35 to boot: no token, an event.
    let body = script().await;
    assert!(body.contains("/images/2026.11.1/vmlinuz"), "{body}");
    assert_eq!(script_token(&body), None, "{body}");
    let (_, events) = srv
        .get("/api/v1/events?kind=boot_not_expected", &srv.tokens.viewer)
        .await;
    assert!(events.to_string().contains("lb-35"), "{events}");

    // A viewer cannot open a window; an operator can, and it is audited.
    let (s, _) = srv
        .post(
            "/api/v1/nodes/lb-35/expect-boot",
            &srv.tokens.viewer,
            json!({"for": "10m"}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, v) = srv
        .post(
            "/api/v1/nodes/lb-35/expect-boot",
            &op,
            json!({"for": "10m"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = srv
        .post(
            "/api/v1/nodes/lb-35/expect-boot",
            &op,
            json!({"for": "25h"}),
        )
        .await;
    assert!(s.is_client_error(), "{s} {v}");
    let body = script().await;
    assert!(script_token(&body).is_some(), "{body}");
    let (_, audit) = srv.get("/api/v1/audit", &srv.tokens.admin).await;
    assert!(audit.to_string().contains("node.expect_boot"), "{audit}");

    // Closed again: no token.
    let (s, _) = srv
        .post("/api/v1/nodes/lb-35/expect-boot", &op, json!({"for": "0s"}))
        .await;
    assert_eq!(s, StatusCode::OK);
    let body = script().await;
    assert_eq!(script_token(&body), None, "{body}");
}

#[tokio::test]
async fn allow_token_without_lease_restores_tokens_for_any_address() {
    let dir = tempfile::tempdir().unwrap();
    let boot_dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("lbfleet.db");
    let tokens = common::seed(&db_path).await;
    let tftp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut boot = BootConfig::for_dir(boot_dir.path());
    boot.allow_token_without_lease = true;
    let srv = TestServer::start_boot(db_path, tokens, boot, tftp).await;
    let img_dir = boot_dir.path().join("images/2026.11.1");
    std::fs::create_dir_all(&img_dir).unwrap();
    pattern_file(&img_dir.join("vmlinuz"), 100);
    pattern_file(&img_dir.join("initrd.img"), 100);
    srv.put(
        "/api/v1/images/2026.11.1",
        &srv.tokens.operator,
        json!({"kernel": "vmlinuz", "initrd": "initrd.img", "default": true}),
    )
    .await;
    let body = srv
        .http
        .get(srv.url("/boot/52:54:00:aa:00:32.ipxe"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(script_token(&body).is_some(), "{body}");
}

/// A node re-enrolling while its previous credential was in use in the last two minutes is an event and a
/// dashboard alert (the sign of a takeover).
#[tokio::test]
async fn reenrollment_while_alive_is_an_event_and_an_alert() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path()).await;
    let mac = "52:54:00:aa:00:41";
    let credential = srv.enrolled_node(mac, "lb-41").await;
    // The agent reports: its credential is in use.
    let (s, v) = srv
        .call(
            Method::POST,
            "/api/v1/agent/report",
            Some(&credential),
            Some(json!({"applied_generation": 0})),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    let (_, events) = srv
        .get(
            "/api/v1/events?kind=reenrolled_while_alive",
            &srv.tokens.viewer,
        )
        .await;
    assert_eq!(
        events["events"].as_array().map(Vec::len),
        Some(0),
        "{events}"
    );
    // Someone redeems a fresh token for the same node.
    let (s, v) = srv
        .post(
            "/api/v1/nodes/lb-41/enrollment-token",
            &srv.tokens.operator,
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, _) = srv
        .call(
            Method::POST,
            "/api/v1/agent/enroll",
            None,
            Some(json!({"token": v["token"], "mac": mac})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, events) = srv
        .get(
            "/api/v1/events?kind=reenrolled_while_alive",
            &srv.tokens.viewer,
        )
        .await;
    let msg = events["events"][0]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("node lb-41 re-enrolled while its agent was alive"),
        "{events}"
    );
    let overview = srv.page_as("view", "/").await;
    assert!(
        overview.contains("Re-enrolled")
            && overview.contains("node lb-41 re-enrolled while its agent was alive"),
        "{overview}"
    );
}

/// Issue 13, TFTP slot hogging: one client address gets at most `DEFAULT_MAX_PER_CLIENT` transfers at once
/// (the next is refused with an error), while another address is still served.
#[tokio::test]
async fn tftp_limits_concurrent_transfers_per_client_address() {
    let lab = boot_lab().await;
    pattern_file(&lab.boot_dir.path().join("undionly.kpxe"), 100_000);
    let port = lab.tftp_port;
    let max = lbfleet_server::boot::tftp::DEFAULT_MAX_PER_CLIENT;
    let answers = tokio::task::spawn_blocking(move || {
        let request = Packet::ReadRequest {
            filename: "undionly.kpxe".into(),
            mode: "octet".into(),
            options: vec![("tsize".into(), "0".into())],
        }
        .encode();
        let mut held = Vec::new();
        let mut answers = Vec::new();
        for i in 0..=max + 1 {
            // The last request comes from another loopback address.
            let from = if i == max + 1 {
                "127.0.0.2:0"
            } else {
                "127.0.0.1:0"
            };
            let sock = UdpSocket::bind(from).unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            sock.send_to(&request, ("127.0.0.1", port)).unwrap();
            let mut buf = [0u8; 2048];
            let (n, _) = sock.recv_from(&mut buf).unwrap();
            answers.push(Packet::decode(&buf[..n]).unwrap());
            // Never acknowledged: the transfer keeps its slot until it times out.
            held.push(sock);
        }
        answers
    })
    .await
    .unwrap();
    for (i, a) in answers.iter().enumerate() {
        let refused = matches!(a, Packet::Error { message, .. } if message.contains("too many transfers from your address"));
        let accepted = matches!(a, Packet::OptionAck { .. });
        if i == max {
            assert!(refused, "request {i}: {a:?}");
        } else {
            assert!(accepted, "request {i}: {a:?}");
        }
    }
}

/// Issue 13, slow TFTP clients: a transfer that a client drags out (acknowledging just before each
/// retransmission) ends with an error once it has held its slot for `max_duration`.
#[tokio::test]
async fn tftp_transfer_time_is_bounded() {
    use lbfleet_server::boot::tftp::{self, transfer::Limits, TftpConfig};
    let root = tempfile::tempdir().unwrap();
    pattern_file(&root.path().join("big"), 200_000);
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = sock.local_addr().unwrap().port();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let config = TftpConfig {
        root: root.path().to_owned(),
        limits: Limits {
            max_duration: Duration::from_secs(1),
            ..Limits::default()
        },
        max_transfers: 4,
        max_per_client: 4,
    };
    let server = tokio::spawn(tftp::run(sock, config, Default::default(), stop_rx));
    let outcome = tokio::task::spawn_blocking(move || {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let request = Packet::ReadRequest {
            filename: "big".into(),
            mode: "octet".into(),
            options: vec![],
        };
        sock.send_to(&request.encode(), ("127.0.0.1", port))
            .unwrap();
        let started = std::time::Instant::now();
        let mut buf = [0u8; 2048];
        loop {
            let (n, peer) = sock.recv_from(&mut buf).unwrap();
            match Packet::decode(&buf[..n]).unwrap() {
                Packet::Data { block, .. } => {
                    assert!(
                        started.elapsed() < Duration::from_secs(10),
                        "still sending after 10 s"
                    );
                    // 512-byte lock-step at ~3 blocks a second: 200 kB would take two minutes.
                    std::thread::sleep(Duration::from_millis(300));
                    sock.send_to(&Packet::Ack { block }.encode(), peer).unwrap();
                }
                Packet::Error { message, .. } => return (message, started.elapsed()),
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(outcome.0, "transfer took too long");
    assert!(outcome.1 < Duration::from_secs(5), "{:?}", outcome.1);
    let _ = stop_tx.send(true);
    server.await.unwrap().unwrap();
}
