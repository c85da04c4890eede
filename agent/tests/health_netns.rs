//! Health checks against real servers in a network namespace of the test's own: a TCP listener, an HTTP
//! server answering 200 or 500, one that accepts and never answers, an HTTPS server with a self-signed
//! certificate, dnsmasq as DNS responder, and check scripts. Each checker goes up -> down -> up.
//!
//! Every test creates its own namespace with the kit (`lbfleet_tests::netns::Netns`, a unique name, deleted on
//! drop, also on failure) and runs on a thread inside it. Addresses are 198.18.2.x on that namespace's
//! loopback. Needs root, iproute2 and dnsmasq: a missing one fails the test (`netns::require`: only outside CI
//! may `LBFLEET_SKIP=netns` skip it).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lbfleet_agent::health::{HealthConfig, HealthMonitor, Probe};
use lbfleet_agent::ipvs::{DestKey, IpProto, ServiceKey};
use lbfleet_proto::{
    CheckKind, DnsType, ForwardMethod, HealthCheck, HealthState, Protocol, RealServer,
    RoleDocument, Scheduler, VirtualService,
};
use lbfleet_tests::netns::{self, Netns};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Runs `body` on a thread inside a fresh network namespace with 198.18.2.1-.9 on its loopback.
fn in_netns<F, Fut>(body: F)
where
    F: FnOnce() -> Fut + Send,
    Fut: Future<Output = ()>,
{
    if !netns::require(&[]) {
        return;
    }
    let ns = Netns::unique("lbh").unwrap();
    for i in 1..=9 {
        ns.addr_add(&format!("198.18.2.{i}/32"), "lo").unwrap();
    }
    ns.run_inside(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(body());
    })
    .unwrap();
}

/// Polls `cond` every 10 ms until it holds; panics with `what` after `limit` (the kit's helper).
async fn wait_for(what: &str, limit: Duration, cond: impl FnMut() -> bool) -> Duration {
    lbfleet_tests::wait::wait_for_async(what, limit, Duration::from_millis(10), cond).await
}

fn fast(kind: CheckKind) -> HealthCheck {
    HealthCheck {
        interval_ms: 200,
        timeout_ms: 100,
        rise: 2,
        fall: 3,
        jitter_ms: Some(0),
        ..HealthCheck::of_kind(kind)
    }
}

fn role_with(services: Vec<(u16, HealthCheck, &str, u16)>) -> RoleDocument {
    RoleDocument {
        reboot_generation: 0,
        generation: 1,
        node: "lb-test".into(),
        cluster: None,
        role: None,
        vrrp: None,
        services: services
            .into_iter()
            .map(|(vport, check, addr, port)| VirtualService {
                vip: "198.18.0.10".parse().unwrap(),
                port: vport,
                protocol: Protocol::Tcp,
                scheduler: Scheduler::Wrr,
                forward: ForwardMethod::Nat,
                persistence_s: 0,
                persistence_prefix: None,
                check,
                real_servers: vec![RealServer {
                    address: addr.parse().unwrap(),
                    port,
                    weight: 1,
                    enabled: true,
                }],
            })
            .collect(),
    }
}

/// Health of the real server of the service on VIP port `vport`.
fn health(m: &HealthMonitor, vport: u16, addr: &str, port: u16) -> (HealthState, Option<String>) {
    let svc = ServiceKey::Addr {
        protocol: IpProto::Tcp,
        addr: "198.18.0.10".parse().unwrap(),
        port: vport,
    };
    let dest = DestKey {
        addr: addr.parse().unwrap(),
        port,
    };
    m.snapshot()
        .health_of(&svc, &dest)
        .map_or((HealthState::NotChecked, None), |h| {
            (h.state, h.last_error.clone())
        })
}

async fn wait_state(
    m: &HealthMonitor,
    vport: u16,
    addr: &str,
    port: u16,
    want: HealthState,
) -> Option<String> {
    wait_for(
        &format!("{addr}:{port} {want}"),
        Duration::from_secs(10),
        || health(m, vport, addr, port).0 == want,
    )
    .await;
    health(m, vport, addr, port).1
}

/// An HTTP server whose status can be switched; counts the requests it answers.
#[derive(Clone, Default)]
struct HttpBehaviour {
    status: Arc<AtomicU16>,
    requests: Arc<AtomicUsize>,
}

async fn answer_http<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut s: S,
    b: HttpBehaviour,
) {
    let mut buf = vec![0u8; 2048];
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    b.requests.fetch_add(1, Ordering::SeqCst);
    let status = b.status.load(Ordering::SeqCst);
    let body = if status == 200 {
        "status: ok\n"
    } else {
        "status: failing\n"
    };
    let resp = format!(
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(resp.as_bytes()).await;
    let _ = s.shutdown().await;
}

async fn http_server(addr: &str, b: HttpBehaviour) -> tokio::task::JoinHandle<()> {
    let l = TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(answer_http(s, b.clone()));
        }
    })
}

#[test]
fn tcp_and_http_checks_go_down_and_up_with_real_servers() {
    in_netns(|| async {
        let http = HttpBehaviour::default();
        http.status.store(200, Ordering::SeqCst);
        let m = HealthMonitor::new(HealthConfig::default());
        let mut http_check = fast(CheckKind::Http);
        http_check.path = Some("/healthz".into());
        http_check.body_contains = Some("ok".into());
        m.set_role(&role_with(vec![
            (80, fast(CheckKind::Tcp), "198.18.2.1", 8080),
            (81, http_check, "198.18.2.2", 8080),
        ]));
        // TCP: a listener, then none (refused), then a listener again.
        let tcp = TcpListener::bind("198.18.2.1:8080").await.unwrap();
        let accept = tokio::spawn(async move { while tcp.accept().await.is_ok() {} });
        let server = http_server("198.18.2.2:8080", http.clone()).await;
        wait_state(&m, 80, "198.18.2.1", 8080, HealthState::Up).await;
        wait_state(&m, 81, "198.18.2.2", 8080, HealthState::Up).await;
        accept.abort();
        let _ = accept.await;
        let e = wait_state(&m, 80, "198.18.2.1", 8080, HealthState::Down).await;
        assert_eq!(e.as_deref(), Some("connect: refused"));
        let tcp = TcpListener::bind("198.18.2.1:8080").await.unwrap();
        let accept = tokio::spawn(async move { while tcp.accept().await.is_ok() {} });
        wait_state(&m, 80, "198.18.2.1", 8080, HealthState::Up).await;
        accept.abort();
        // HTTP: 500 takes it down with the reason, 200 brings it back.
        http.status.store(500, Ordering::SeqCst);
        let e = wait_state(&m, 81, "198.18.2.2", 8080, HealthState::Down).await;
        assert_eq!(e.as_deref(), Some("HTTP 500 from /healthz"));
        http.status.store(200, Ordering::SeqCst);
        wait_state(&m, 81, "198.18.2.2", 8080, HealthState::Up).await;
        server.abort();
    });
}

#[test]
fn a_server_that_accepts_and_never_answers_is_caught_by_the_timeout() {
    in_netns(|| async {
        let mut c = fast(CheckKind::Http);
        c.path = Some("/".into());
        let m = HealthMonitor::new(HealthConfig::default());
        m.set_role(&role_with(vec![(80, c, "198.18.2.3", 80)]));
        let l = TcpListener::bind("198.18.2.3:80").await.unwrap();
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        let e = wait_state(&m, 80, "198.18.2.3", 80, HealthState::Down).await;
        assert_eq!(e.as_deref(), Some("timeout after 100 ms"));
        hold.abort();
    });
}

/// Default timings (1 s x 3 + 0.5 s): a stopped server is marked down within interval x fall + timeout,
/// a hung one too; both come back after `rise` successes.
#[test]
fn a_stopped_server_is_drained_within_interval_times_fall_plus_timeout() {
    in_netns(|| async {
        let http = HttpBehaviour::default();
        http.status.store(200, Ordering::SeqCst);
        let mut c = HealthCheck::of_kind(CheckKind::Http);
        c.path = Some("/healthz".into());
        let m = HealthMonitor::new(HealthConfig::default());
        m.set_role(&role_with(vec![(80, c, "198.18.2.4", 80)]));
        let server = http_server("198.18.2.4:80", http.clone()).await;
        wait_state(&m, 80, "198.18.2.4", 80, HealthState::Up).await;
        server.abort();
        let _ = server.await;
        let took = wait_for("down", Duration::from_secs(10), || {
            health(&m, 80, "198.18.2.4", 80).0 == HealthState::Down
        })
        .await;
        eprintln!("stopped server marked down after {took:?} (bound 3.5 s)");
        // 3.5 s is the bound on an idle machine; the margin is for a loaded one (bench/health measures).
        assert!(took <= Duration::from_millis(4500), "took {took:?}");
        let server = http_server("198.18.2.4:80", http.clone()).await;
        let took = wait_for("up", Duration::from_secs(10), || {
            health(&m, 80, "198.18.2.4", 80).0 == HealthState::Up
        })
        .await;
        eprintln!("back up after {took:?} (rise 2 at 1 s)");
        assert!(
            took >= Duration::from_millis(900),
            "rise 2 needs two probes a second apart: {took:?}"
        );
        server.abort();
    });
}

#[test]
fn two_services_with_the_same_check_on_one_server_make_one_probe_per_interval() {
    in_netns(|| async {
        let http = HttpBehaviour::default();
        http.status.store(200, Ordering::SeqCst);
        let server = http_server("198.18.2.5:8080", http.clone()).await;
        let mut c = fast(CheckKind::Http);
        c.path = Some("/healthz".into());
        let mut other_timing = c.clone();
        other_timing.interval_ms = 300;
        let m = HealthMonitor::new(HealthConfig::default());
        m.set_role(&role_with(vec![
            (80, c.clone(), "198.18.2.5", 8080),
            (81, c.clone(), "198.18.2.5", 8080),
        ]));
        assert_eq!(m.probe_count(), 1);
        let start = Instant::now();
        wait_for("10 requests", Duration::from_secs(10), || {
            http.requests.load(Ordering::SeqCst) >= 10
        })
        .await;
        let elapsed = start.elapsed();
        let n = http.requests.load(Ordering::SeqCst);
        // One probe per 200 ms: 10 requests take at least 1.8 s (two probes per interval would take 0.8 s).
        assert!(
            elapsed >= Duration::from_millis(1700),
            "{n} requests in {elapsed:?}"
        );
        assert_eq!(health(&m, 80, "198.18.2.5", 8080).0, HealthState::Up);
        assert_eq!(health(&m, 81, "198.18.2.5", 8080).0, HealthState::Up);
        // A different interval is a different check: two probes.
        m.set_role(&role_with(vec![
            (80, c, "198.18.2.5", 8080),
            (81, other_timing, "198.18.2.5", 8080),
        ]));
        assert_eq!(m.probe_count(), 2);
        server.abort();
    });
}

fn self_signed() -> (Vec<u8>, Vec<u8>, String) {
    let ck = rcgen::generate_simple_self_signed(vec!["rs.lbfleet.test".into()]).unwrap();
    (
        ck.cert.der().to_vec(),
        ck.key_pair.serialize_der(),
        ck.cert.pem(),
    )
}

#[test]
fn https_with_a_self_signed_certificate_sni_and_verification() {
    in_netns(|| async {
        let (cert, key, pem) = self_signed();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![rustls::pki_types::CertificateDer::from(cert)],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.into()),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let http = HttpBehaviour::default();
        http.status.store(200, Ordering::SeqCst);
        let sni_seen = Arc::new(std::sync::Mutex::new(None::<String>));
        let l = TcpListener::bind("198.18.2.6:443").await.unwrap();
        let (h, seen) = (http.clone(), sni_seen.clone());
        let server = tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let (acceptor, h, seen) = (acceptor.clone(), h.clone(), seen.clone());
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(s).await {
                        *seen.lock().unwrap() = tls.get_ref().1.server_name().map(str::to_owned);
                        answer_http(tls, h).await;
                    }
                });
            }
        });
        let base = HealthCheck {
            path: Some("/healthz".into()),
            sni: Some("rs.lbfleet.test".into()),
            ..fast(CheckKind::Https)
        };
        let pinned = HealthCheck {
            tls_verify: true,
            tls_ca: Some(pem),
            ..base.clone()
        };
        let strict = HealthCheck {
            tls_verify: true,
            ..base.clone()
        };
        let m = HealthMonitor::new(HealthConfig::default());
        m.set_role(&role_with(vec![
            (80, base, "198.18.2.6", 443),
            (81, pinned, "198.18.2.6", 443),
            (82, strict, "198.18.2.6", 443),
        ]));
        wait_state(&m, 80, "198.18.2.6", 443, HealthState::Up).await;
        wait_state(&m, 81, "198.18.2.6", 443, HealthState::Up).await;
        let e = wait_state(&m, 82, "198.18.2.6", 443, HealthState::Down).await;
        assert!(
            e.as_deref()
                .is_some_and(|e| e.starts_with("TLS: invalid certificate")),
            "{e:?}"
        );
        assert_eq!(sni_seen.lock().unwrap().as_deref(), Some("rs.lbfleet.test"));
        http.status.store(500, Ordering::SeqCst);
        let e = wait_state(&m, 80, "198.18.2.6", 443, HealthState::Down).await;
        assert_eq!(e.as_deref(), Some("HTTP 500 from /healthz"));
        http.status.store(200, Ordering::SeqCst);
        wait_state(&m, 80, "198.18.2.6", 443, HealthState::Up).await;
        server.abort();
    });
}

/// dnsmasq, killed by its PID when dropped.
struct Dnsmasq(Child);

impl Dnsmasq {
    fn start(addr: &str, answer: &str) -> Dnsmasq {
        let child = Command::new("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                &format!("--listen-address={addr}"),
                "--port=53",
                "--user=root",
                "--pid-file=",
                &format!("--address=/www.lbfleet.test/{answer}"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq starts");
        Dnsmasq(child)
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn dns_check_against_dnsmasq() {
    if !netns::require(&["dnsmasq"]) {
        return;
    }
    in_netns(|| async {
        let dns = |name: &str, expect: Option<&str>| HealthCheck {
            dns_name: Some(name.into()),
            dns_type: Some(DnsType::A),
            dns_expect: expect.map(str::to_owned),
            ..fast(CheckKind::Dns)
        };
        let m = HealthMonitor::new(HealthConfig::default());
        m.set_role(&role_with(vec![
            (
                53,
                dns("www.lbfleet.test", Some("198.18.2.1")),
                "198.18.2.7",
                53,
            ),
            (
                54,
                dns("www.lbfleet.test", Some("198.18.2.9")),
                "198.18.2.7",
                53,
            ),
            (55, dns("nothing.lbfleet.test", None), "198.18.2.7", 53),
        ]));
        let server = Dnsmasq::start("198.18.2.7", "198.18.2.1");
        wait_state(&m, 53, "198.18.2.7", 53, HealthState::Up).await;
        let e = wait_state(&m, 54, "198.18.2.7", 53, HealthState::Down).await;
        assert_eq!(
            e.as_deref(),
            Some("DNS: www.lbfleet.test A is 198.18.2.1, expected 198.18.2.9")
        );
        let e = wait_state(&m, 55, "198.18.2.7", 53, HealthState::Down).await;
        assert!(
            e.as_deref()
                .is_some_and(|e| e.starts_with("DNS: ") && e.contains("nothing.lbfleet.test")),
            "{e:?}"
        );
        drop(server);
        let e = wait_state(&m, 53, "198.18.2.7", 53, HealthState::Down).await;
        assert_eq!(e.as_deref(), Some("connect: refused"));
        let _server = Dnsmasq::start("198.18.2.7", "198.18.2.1");
        wait_state(&m, 53, "198.18.2.7", 53, HealthState::Up).await;
    });
}

fn script_dir(scripts: &[(&str, &str)]) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    for (name, body) in scripts {
        let p = dir.path().join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    dir
}

fn script_probe(dir: &tempfile::TempDir, name: &str, target: &str, timeout_ms: u32) -> Probe {
    let check = HealthCheck {
        script: Some(name.into()),
        timeout_ms,
        ..HealthCheck::of_kind(CheckKind::Script)
    };
    let target: SocketAddr = target.parse().unwrap();
    Probe::new(target, Arc::new(check), dir.path().to_owned()).unwrap()
}

#[test]
fn script_checks_get_the_real_server_are_killed_at_the_timeout_and_their_output_is_bounded() {
    in_netns(|| async {
        let dir = script_dir(&[
            (
                "port-is-8080",
                r#"[ "$LBFLEET_RS_ADDRESS" = 198.18.2.8 ] && [ "$LBFLEET_RS_PORT" = 8080 ] && exit 0
echo "unexpected $LBFLEET_RS_ADDRESS:$LBFLEET_RS_PORT"; exit 2"#,
            ),
            // A child that would outlive the script, then a hang.
            ("hang", r#"sleep 300 & echo $! > "$0.child"; sleep 300"#),
            // 20 MB of output, then failure.
            (
                "noisy",
                "head -c 20000000 /dev/zero | tr '\\0' x; echo; exit 3",
            ),
        ]);
        let ok = script_probe(&dir, "port-is-8080", "198.18.2.8:8080", 2000);
        assert!(ok.run().await.is_ok());
        let wrong = script_probe(&dir, "port-is-8080", "198.18.2.8:9090", 2000);
        assert_eq!(
            wrong.run().await.map_err(|e| e.to_string()),
            Err("script port-is-8080: exited 2: unexpected 198.18.2.8:9090".into())
        );
        // Killed at the timeout, with its child.
        let hang = script_probe(&dir, "hang", "198.18.2.8:8080", 300);
        let start = Instant::now();
        assert_eq!(
            hang.run().await.map_err(|e| e.to_string()),
            Err("timeout after 300 ms".into())
        );
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        let child: i32 = std::fs::read_to_string(dir.path().join("hang.child"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        wait_for(
            "the script's child to be killed",
            Duration::from_secs(5),
            || {
                // Gone, or a zombie waiting for init to reap it.
                std::fs::read_to_string(format!("/proc/{child}/stat")).map_or(true, |s| {
                    s.rsplit(')')
                        .next()
                        .is_some_and(|r| r.trim_start().starts_with('Z'))
                })
            },
        )
        .await;
        // Output is drained but only a bounded piece ends up in the error text.
        let noisy = script_probe(&dir, "noisy", "198.18.2.8:8080", 20_000);
        let e = noisy.run().await.map_err(|e| e.to_string());
        let e = e.expect_err("exit 3 fails");
        assert!(
            e.starts_with("script noisy: exited 3: xxxx"),
            "{}",
            &e[..e.len().min(80)]
        );
        assert!(e.len() < 300, "error text is {} bytes", e.len());
        // Names that are paths never run.
        for bad in ["../hang", "/bin/true", ".."] {
            let p = script_probe(&dir, bad, "198.18.2.8:8080", 300);
            let e = p.run().await.map_err(|e| e.to_string());
            assert_eq!(
                e,
                Err(format!("script {bad}: refused: not a plain file name"))
            );
        }
        let missing = script_probe(&dir, "absent", "198.18.2.8:8080", 300);
        assert!(missing
            .run()
            .await
            .is_err_and(|e| e.to_string().starts_with("script absent: not found in")));
    });
}
