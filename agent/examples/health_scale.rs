//! The health monitor alone at scale, natively on loopback: N real servers (127.0.1.x, four ports each,
//! answered by one in-process HTTP server per port on 127.0.0.0/8) checked with HTTP GET every second.
//! Prints the process's CPU share (getrusage, which includes the HTTP servers' own work) and RSS after a
//! warm-up, and the most probes seen in flight. `cargo run --release -p lbfleet-agent --example
//! health_scale -- [SERVERS] [SECONDS]`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lbfleet_agent::health::{HealthConfig, HealthMonitor};
use lbfleet_proto::{
    CheckKind, ForwardMethod, HealthCheck, HealthState, Protocol, RealServer, RoleDocument,
    Scheduler, VirtualService,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn cpu_time() -> Duration {
    let ru = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = ru.rsplit(')').next().unwrap_or("");
    // Fields after "pid (comm)": state, ppid, ... utime is the 12th, stime the 13th.
    let f: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Duration::from_millis((field(11) + field(12)) * 10)
}

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let servers: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let seconds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(20);
    let requests = Arc::new(AtomicUsize::new(0));
    for port in 18081..18085u16 {
        let l = tokio::net::TcpListener::bind(("0.0.0.0", port))
            .await
            .unwrap();
        let requests = requests.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let requests = requests.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    requests.fetch_add(1, Ordering::Relaxed);
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
                        .await;
                });
            }
        });
    }
    let check = HealthCheck {
        path: Some("/healthz".into()),
        ..HealthCheck::of_kind(CheckKind::Http)
    };
    let role = RoleDocument {
        reboot_generation: 0,
        generation: 1,
        node: "scale".into(),
        cluster: None,
        role: None,
        vrrp: None,
        services: (0..servers.div_ceil(100))
            .map(|k| VirtualService {
                vip: "198.18.0.10".parse().unwrap(),
                port: 80 + k as u16,
                protocol: Protocol::Tcp,
                scheduler: Scheduler::Wrr,
                forward: ForwardMethod::Nat,
                persistence_s: 0,
                persistence_prefix: None,
                check: check.clone(),
                real_servers: (k * 100..((k + 1) * 100).min(servers))
                    .map(|i| RealServer {
                        address: format!("127.0.{}.{}", 1 + i / 1000, 1 + (i / 4) % 250)
                            .parse()
                            .unwrap(),
                        port: 18081 + (i % 4) as u16,
                        weight: 1,
                        enabled: true,
                    })
                    .collect(),
            })
            .collect(),
    };
    let m = HealthMonitor::new(HealthConfig::default());
    m.set_role(&role);
    println!("{} probes for {servers} real servers", m.probe_count());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (c0, t0, r0) = (cpu_time(), Instant::now(), requests.load(Ordering::Relaxed));
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let (c1, t1, r1) = (cpu_time(), Instant::now(), requests.load(Ordering::Relaxed));
    let snap = m.snapshot();
    let up = snap
        .servers
        .values()
        .filter(|h| h.state == HealthState::Up)
        .count();
    println!(
        "CPU {:.1}% of one core (monitor + HTTP servers), RSS {} KiB, {:.0} probes/s, {up}/{servers} up",
        100.0 * (c1 - c0).as_secs_f64() / (t1 - t0).as_secs_f64(),
        rss_kb(),
        (r1 - r0) as f64 / (t1 - t0).as_secs_f64()
    );
}
