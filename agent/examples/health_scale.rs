//! The health monitor alone at scale, natively on loopback: N real servers (127.0.x.y, four ports each,
//! answered by in-process HTTP servers on four ports of this host, reached only over loopback) checked with
//! HTTP GET every INTERVAL_MS. After a warm-up it measures for SECONDS and prints:
//! - CPU share of one core of the monitor's runtime (the agent's part) and of the HTTP servers' runtime (the
//!   real servers' part, on threads of their own), and of the whole process (getrusage-like, /proc);
//! - schedule jitter: for every probe, how much later than one interval after its previous start it started
//!   (p50, p99, max), as a share of the interval;
//! - probes per second (against N / interval), RSS, and the most file descriptors (and sockets) open at once.
//!
//! `cargo run --release -p lbfleet-agent --example health_scale -- [SERVERS] [SECONDS] [INTERVAL_MS]`
//! (defaults 1000, 20, 1000). 30,000 servers at 5 s (keepalived's `delay_loop 5`):
//! `health_scale 30000 60 5000`. The run is bounded by SECONDS plus the warm-up; the file-descriptor limit is
//! raised to the hard limit if the soft one is lower.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lbfleet_agent::health::monitor::{NetworkProber, ProbeFn};
use lbfleet_agent::health::{HealthConfig, HealthMonitor, ProbeKey, Prober};
use lbfleet_proto::{
    CheckKind, ForwardMethod, HealthCheck, HealthState, Protocol, RealServer, RoleDocument,
    Scheduler, VirtualService,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// CPU time (user + system) of this process's threads whose name starts with `prefix` ("" for all), from
/// /proc/self/task/*/stat, in clock ticks of 10 ms.
fn threads_cpu(prefix: &str) -> Duration {
    let mut ticks = 0u64;
    for task in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if !stat[open + 1..close].starts_with(prefix) {
            continue;
        }
        let f: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        // After the comm, state is field 3 of stat(5); utime and stime are fields 14 and 15.
        let field = |i: usize| {
            f.get(i - 3)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        ticks += field(14) + field(15);
    }
    Duration::from_millis(ticks * 10)
}

fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let f: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
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

/// Open file descriptors, and how many of them are sockets.
fn open_fds() -> (usize, usize) {
    let mut fds = 0;
    let mut sockets = 0;
    for e in std::fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .flatten()
    {
        fds += 1;
        if std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().starts_with("socket:")) {
            sockets += 1;
        }
    }
    (fds, sockets)
}

/// Raises the soft limit on open files to the hard limit (the HTTP servers' accepted connections and the
/// probes' sockets share it).
fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit struct owned by this frame.
    #[allow(unsafe_code)]
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    lim.rlim_cur
}

/// The real probes, with the start time of every probe recorded per key (for the schedule jitter).
#[derive(Debug)]
struct TimedProber {
    inner: NetworkProber,
    starts: Arc<Mutex<HashMap<ProbeKey, Vec<Instant>>>>,
}

impl Prober for TimedProber {
    fn prepare(&self, key: &ProbeKey) -> ProbeFn {
        let probe = self.inner.prepare(key);
        let starts = self.starts.clone();
        let key = key.clone();
        Box::new(move || {
            starts
                .lock()
                .unwrap()
                .entry(key.clone())
                .or_default()
                .push(Instant::now());
            probe()
        })
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[(((sorted.len() - 1) as f64) * p).round() as usize]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let servers: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let seconds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(20);
    let interval_ms: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let nofile = raise_nofile();
    let requests = Arc::new(AtomicUsize::new(0));

    // The real servers: their own runtime, on threads named `http-srv`, so their CPU time is told apart.
    let http = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("http-srv")
        .enable_all()
        .build()
        .unwrap();
    for port in 18081..18085u16 {
        let l = http
            .block_on(tokio::net::TcpListener::bind(("0.0.0.0", port)))
            .unwrap();
        let requests = requests.clone();
        http.spawn(async move {
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

    // The monitor: the agent's runtime (a multi-thread runtime, as lbfleet-agent's), threads `monitor`.
    let monitor_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("monitor")
        .enable_all()
        .build()
        .unwrap();
    let check = HealthCheck {
        path: Some("/healthz".into()),
        interval_ms,
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
                        // 1,000 servers per /24 (250 addresses x 4 ports), up to 127.0.254.x.
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
    let starts = Arc::new(Mutex::new(HashMap::new()));
    let prober = Arc::new(TimedProber {
        inner: NetworkProber {
            checks_dir: HealthConfig::default().checks_dir,
        },
        starts: starts.clone(),
    });
    let m = HealthMonitor::with_prober(HealthConfig::default(), prober);
    monitor_rt.block_on(async { m.set_role(&role) });
    println!(
        "{} probes for {servers} real servers every {interval_ms} ms (RLIMIT_NOFILE {nofile})",
        m.probe_count()
    );
    // Warm-up: every probe has started at least once (first probes are spread over one interval).
    let interval = Duration::from_millis(u64::from(interval_ms));
    std::thread::sleep(interval + Duration::from_secs(2));
    let cpu = || {
        (
            threads_cpu("monitor"),
            threads_cpu("http-srv"),
            process_cpu(),
        )
    };
    let (c0, t0, r0) = (cpu(), Instant::now(), requests.load(Ordering::Relaxed));
    let mut most = (0, 0);
    let end = t0 + Duration::from_secs(seconds);
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(500));
        let (f, s) = open_fds();
        most = (most.0.max(f), most.1.max(s));
    }
    let (c1, t1, r1) = (cpu(), Instant::now(), requests.load(Ordering::Relaxed));
    let window = (t1 - t0).as_secs_f64();
    let share = |a: Duration, b: Duration| 100.0 * (b - a).as_secs_f64() / window;
    // Lateness of every probe start within the window: its start minus (previous start + interval).
    let mut late: Vec<f64> = Vec::new();
    for times in starts.lock().unwrap().values() {
        for w in times.windows(2) {
            if w[1] >= t0 && w[1] <= t1 {
                let gap = w[1].duration_since(w[0]).as_secs_f64();
                late.push(gap - interval.as_secs_f64());
            }
        }
    }
    late.sort_by(f64::total_cmp);
    let snap = m.snapshot();
    let up = snap
        .servers
        .values()
        .filter(|h| h.state == HealthState::Up)
        .count();
    let iv = interval.as_secs_f64();
    println!(
        "CPU of one core: monitor {:.1}%, HTTP servers {:.1}%, whole process {:.1}% ({window:.0} s window)",
        share(c0.0, c1.0),
        share(c0.1, c1.1),
        share(c0.2, c1.2),
    );
    println!(
        "schedule: {} probe starts in the window, lateness p50 {:.1} ms, p99 {:.1} ms ({:.2}% of the interval), max {:.1} ms",
        late.len(),
        1000.0 * percentile(&late, 0.5),
        1000.0 * percentile(&late, 0.99),
        100.0 * percentile(&late, 0.99) / iv,
        1000.0 * late.last().copied().unwrap_or(f64::NAN),
    );
    println!(
        "{:.0} probes/s (expected {:.0}), {up}/{servers} up, RSS {} KiB, most open fds {} ({} sockets)",
        (r1 - r0) as f64 / window,
        servers as f64 / iv,
        rss_kb(),
        most.0,
        most.1
    );
    drop(m);
    monitor_rt.shutdown_timeout(Duration::from_secs(1));
    http.shutdown_timeout(Duration::from_secs(1));
}
