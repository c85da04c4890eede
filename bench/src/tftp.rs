//! TFTP boot-transfer throughput of lbfleet-server against its peers (dnsmasq TFTP, tftpd-hpa), in one run.
//!
//! dnsmasq can only serve TFTP on port 69, so the benchmark creates its own network namespace
//! `lbbench-<pid>` (only `lo`, with 198.18.0.1-3/32), re-runs itself inside it, and deletes it on exit, on
//! failure, on SIGINT/SIGTERM and after `--max-seconds`. Inside, every server has its own address and port 69:
//! lbfleet-server (this process, the whole server started with `run_with`: TFTP :69, HTTP :8080) on
//! 198.18.0.1, dnsmasq on 198.18.0.2, tftpd-hpa on 198.18.0.3. All serve the same file from the same directory.
//!
//! Cases, each with 1 and N parallel streams:
//! - `curl tftp://` (lock-step, one ACK per block as RFC 1350 asks) at blksize 512 and 1468;
//! - a windowsize-8 client (RFC 7440: ACK every 8th block) built on lbfleet's packet codec, at blksize 1468;
//!   the peers do not implement windowsize, leave it out of their OACK, and the client then runs lock-step;
//! - lbfleet's HTTP boot (`curl http://.../images/...`) for the same file, to show what HTTP boot buys.
//!
//! Every cell runs `--runs` times, interleaved across peers, and the median MiB/s is printed with the ratio
//! lbfleet/peer. Every download is checked (size; the codec client also compares every byte).
//! Bounds: a fixed number of downloads, each with a deadline; the whole run ends after `--max-seconds`.

#![allow(clippy::unwrap_used)]

#[path = "tftp/client.rs"]
mod client;
#[path = "tftp/report.rs"]
mod report;

use client::fetch_windowed;
use report::report;

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use clap::Parser;
use lbfleet_server::boot::tftp::packet::Packet;
use lbfleet_server::config::BootConfig;
use lbfleet_server::{BootSockets, ServerConfig};
use lbfleet_tests::netns::Netns;
use tokio::process::Command;
use tokio::signal::unix::{signal, SignalKind};

#[derive(Debug, Parser)]
#[command(
    about = "TFTP (and HTTP boot) throughput of lbfleet vs dnsmasq and tftpd-hpa, in a private netns"
)]
struct Args {
    /// Size of the served file, MiB
    #[arg(long, default_value_t = 32)]
    size_mib: u64,
    /// Parallel streams in the "many" cases
    #[arg(long, default_value_t = 20)]
    streams: usize,
    /// Runs per cell; the median is reported
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Deadline of one case (all its parallel downloads), seconds
    #[arg(long, default_value_t = 120)]
    deadline_secs: u64,
    /// Deadline of the whole benchmark, seconds
    #[arg(long, default_value_t = 1800)]
    max_seconds: u64,
    /// Internal: set when the benchmark re-runs itself inside its namespace
    #[arg(long, hide = true)]
    inside_netns: Option<String>,
}

const MIB: f64 = 1024.0 * 1024.0;
const LBFLEET_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const DNSMASQ_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const TFTPD_HPA_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
const HTTP_PORT: u16 = 8080;
const IMAGE: &str = "bench-1";
const FILE: &str = "vmlinuz";
const WINDOW: u16 = 8;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(
        args.size_mib >= 1 && args.streams >= 1 && args.runs >= 1,
        "--size-mib, --streams and --runs must be at least 1"
    );
    match args.inside_netns.clone() {
        None => outside(args).await,
        Some(ns) => {
            let mut int = signal(SignalKind::interrupt())?;
            let mut term = signal(SignalKind::terminate())?;
            // Returning (instead of dying on the signal) drops the children (kill_on_drop) and the temp dirs.
            tokio::select! {
                r = inside(args, ns) => r,
                _ = int.recv() => bail!("interrupted"),
                _ = term.recv() => bail!("terminated"),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Outside: create the namespace, run ourselves in it, always delete it.

fn have(tool: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

async fn outside(args: Args) -> anyhow::Result<()> {
    ensure!(
        is_root(),
        "bench-tftp needs root: it creates a network namespace so that dnsmasq and tftpd-hpa can each have port 69"
    );
    for tool in ["ip", "curl", "dnsmasq", "in.tftpd"] {
        ensure!(
            have(tool),
            "{tool} is missing (scripts/install-deps.sh installs it)"
        );
    }
    // The kit's namespace: deleted on drop, with whatever still runs inside it (by PID).
    let ns = Netns::unique("lbbench")?;
    for addr in [LBFLEET_ADDR, DNSMASQ_ADDR, TFTPD_HPA_ADDR] {
        ns.addr_add(&format!("{addr}/32"), "lo")?;
    }
    let exe = std::env::current_exe()?;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns.name()])
        .arg(&exe)
        .args(["--inside-netns", ns.name()])
        .args(["--size-mib", &args.size_mib.to_string()])
        .args(["--streams", &args.streams.to_string()])
        .args(["--runs", &args.runs.to_string()])
        .args(["--deadline-secs", &args.deadline_secs.to_string()])
        .spawn()
        .context("starting the benchmark inside the netns")?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let why = tokio::select! {
        status = child.wait() => {
            let status = status?;
            drop(ns);
            ensure!(status.success(), "benchmark failed ({status})");
            return Ok(());
        }
        _ = int.recv() => "interrupted",
        _ = term.recv() => "terminated",
        _ = tokio::time::sleep(Duration::from_secs(args.max_seconds)) => "over --max-seconds",
    };
    // Ask the inner run to clean up its temp dirs, then make sure.
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
    if tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
    drop(ns);
    bail!("benchmark stopped: {why}")
}

// ---------------------------------------------------------------------------------------------------------
// Inside: start the three servers, measure, print.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Peer {
    Lbfleet,
    Dnsmasq,
    TftpdHpa,
}

impl Peer {
    const ALL: [Peer; 3] = [Peer::Lbfleet, Peer::Dnsmasq, Peer::TftpdHpa];

    fn name(self) -> &'static str {
        match self {
            Peer::Lbfleet => "lbfleet",
            Peer::Dnsmasq => "dnsmasq",
            Peer::TftpdHpa => "tftpd-hpa",
        }
    }

    fn addr(self) -> Ipv4Addr {
        match self {
            Peer::Lbfleet => LBFLEET_ADDR,
            Peer::Dnsmasq => DNSMASQ_ADDR,
            Peer::TftpdHpa => TFTPD_HPA_ADDR,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Method {
    /// `curl tftp://`; `None` leaves curl's default (512).
    CurlTftp { blksize: Option<u16> },
    /// Our RFC 7440 client.
    Windowed { blksize: u16, window: u16 },
    /// `curl http://` against lbfleet's HTTP boot.
    Http,
}

#[derive(Debug)]
struct Case {
    label: String,
    method: Method,
    streams: usize,
    peers: Vec<Peer>,
    samples: Vec<Vec<f64>>,
    /// Windowsize each peer granted (codec client only).
    granted: Vec<Option<u16>>,
}

struct Lab {
    boot_dir: tempfile::TempDir,
    data: Arc<Vec<u8>>,
    deadline: Duration,
    stop: Arc<AtomicBool>,
}

impl Lab {
    fn rel_path() -> String {
        format!("images/{IMAGE}/{FILE}")
    }
}

async fn inside(args: Args, ns: String) -> anyhow::Result<()> {
    let size = usize::try_from(args.size_mib * 1024 * 1024)?;
    let boot_dir = tempfile::Builder::new().prefix("lbbench-boot").tempdir()?;
    let logs = tempfile::Builder::new().prefix("lbbench-logs").tempdir()?;
    let data = Arc::new(pattern(size));
    write_world_readable(boot_dir.path(), &Lab::rel_path(), &data)?;
    write_world_readable(boot_dir.path(), "ready", b"ready\n")?;
    let lab = Lab {
        boot_dir,
        data,
        deadline: Duration::from_secs(args.deadline_secs),
        stop: Arc::new(AtomicBool::new(false)),
    };

    // lbfleet: the whole server, TFTP on 198.18.0.1:69 and HTTP on :8080, both bound before it starts.
    let db_dir = tempfile::tempdir()?;
    let db = format!("sqlite://{}", db_dir.path().join("bench.db").display());
    let mut config = ServerConfig::with_database(db.clone());
    let fleet = lbfleet_server::open_fleet(&config).await?;
    let _ = fleet.bootstrap_admin().await?; // so the server does not print a password
    fleet.close().await;
    let listener = tokio::net::TcpListener::bind((LBFLEET_ADDR, HTTP_PORT)).await?;
    let tftp = tokio::net::UdpSocket::bind((LBFLEET_ADDR, 69)).await?;
    config.listen = listener.local_addr()?;
    config.boot = Some(BootConfig {
        server_address: LBFLEET_ADDR,
        tftp_port: 69,
        ..BootConfig::for_dir(lab.boot_dir.path())
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(lbfleet_server::run_with(
        config,
        listener,
        BootSockets {
            tftp: Some(tftp),
            ..Default::default()
        },
        async move {
            let _ = stop_rx.await;
        },
    ));

    let root = lab.boot_dir.path().display().to_string();
    let dnsmasq = Command::new("dnsmasq")
        .args([
            "--no-daemon",
            "--conf-file=/dev/null",
            "--port=0",
            "--enable-tftp",
            &format!("--tftp-root={root}"),
            &format!("--listen-address={DNSMASQ_ADDR}"),
            "--bind-interfaces",
            "--pid-file=",
            "--log-facility=-",
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(logs.path().join("dnsmasq.log"))?)
        .kill_on_drop(true)
        .spawn()
        .context("starting dnsmasq")?;
    let tftpd = Command::new("in.tftpd")
        .args([
            "--foreground",
            "--address",
            &format!("{TFTPD_HPA_ADDR}:69"),
            "--secure",
            &root,
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(logs.path().join("tftpd-hpa.log"))?)
        .kill_on_drop(true)
        .spawn()
        .context("starting in.tftpd")?;

    let result = measure_all(&args, &lab, &ns).await;
    lab.stop.store(true, Ordering::Relaxed);
    drop((dnsmasq, tftpd));
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
    if result.is_err() {
        for log in ["dnsmasq.log", "tftpd-hpa.log"] {
            if let Ok(text) = std::fs::read_to_string(logs.path().join(log)) {
                let tail: Vec<&str> = text.lines().rev().take(10).collect();
                eprintln!("--- last lines of {log} ---");
                for line in tail.into_iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
    result
}

async fn measure_all(args: &Args, lab: &Lab, ns: &str) -> anyhow::Result<()> {
    // Wait until each peer answers (bounded), then check one full download from each, byte for byte.
    for peer in Peer::ALL {
        let addr = SocketAddr::from((peer.addr(), 69));
        let mut tries = 0;
        loop {
            let stop = lab.stop.clone();
            let r = tokio::task::spawn_blocking(move || {
                fetch_windowed(
                    addr,
                    "ready",
                    512,
                    1,
                    Instant::now() + Duration::from_millis(500),
                    None,
                    &stop,
                )
            })
            .await?;
            match r {
                Ok(_) => break,
                Err(e) if tries >= 40 => {
                    return Err(e.context(format!("{} does not answer", peer.name())))
                }
                Err(_) => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        verify_with_curl(lab, &format!("tftp://{}/{}", peer.addr(), Lab::rel_path())).await?;
    }
    verify_with_curl(lab, &http_url()).await?;

    let n = args.streams;
    let all = Peer::ALL.to_vec();
    let mut cases = Vec::new();
    let mut case = |label: String, method: Method, streams: usize, peers: &[Peer]| {
        cases.push(Case {
            label,
            method,
            streams,
            peers: peers.to_vec(),
            samples: vec![Vec::new(); peers.len()],
            granted: vec![None; peers.len()],
        })
    };
    for streams in [1, n] {
        let s = if streams == 1 {
            "1 stream".to_owned()
        } else {
            format!("{streams} streams")
        };
        case(
            format!("curl tftp, blksize 512, {s}"),
            Method::CurlTftp { blksize: None },
            streams,
            &all,
        );
        case(
            format!("curl tftp, blksize 1468, {s}"),
            Method::CurlTftp {
                blksize: Some(1468),
            },
            streams,
            &all,
        );
        case(
            format!("windowsize-{WINDOW} client, blksize 1468, {s}"),
            Method::Windowed {
                blksize: 1468,
                window: WINDOW,
            },
            streams,
            &all,
        );
        case(
            format!("HTTP boot (curl http), {s}"),
            Method::Http,
            streams,
            &[Peer::Lbfleet],
        );
    }

    let started = Instant::now();
    for run in 1..=args.runs {
        for c in cases.iter_mut() {
            for (i, peer) in c.peers.clone().into_iter().enumerate() {
                let m = measure(lab, c, peer)
                    .await
                    .with_context(|| format!("{} against {}", c.label, peer.name()))?;
                let client = match m.granted {
                    Some(w) => format!(
                        "  (window {w}; client timeouts {}, out-of-order blocks {})",
                        m.timeouts, m.gaps
                    ),
                    None => String::new(),
                };
                eprintln!(
                    "run {run}/{}: {:<45} {:<10} {:>8.1} MiB/s{client}",
                    args.runs,
                    c.label,
                    peer.name(),
                    m.mibs
                );
                c.samples[i].push(m.mibs);
                c.granted[i] = m.granted;
            }
        }
    }
    let elapsed = started.elapsed();
    print!("{}", report(args, &cases, ns, elapsed, lab.boot_dir.path()));
    Ok(())
}

fn http_url() -> String {
    format!("http://{LBFLEET_ADDR}:{HTTP_PORT}/images/{IMAGE}/{FILE}")
}

/// Downloads once with curl into a file and compares it with the served bytes.
async fn verify_with_curl(lab: &Lab, url: &str) -> anyhow::Result<()> {
    let out = tempfile::NamedTempFile::new()?;
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--fail", "--max-time"])
        .arg(lab.deadline.as_secs().to_string())
        .arg("-o")
        .arg(out.path());
    if url.starts_with("tftp:") {
        cmd.args(["--tftp-blksize", "1468"]);
    }
    let o = cmd.arg(url).kill_on_drop(true).output().await?;
    ensure!(
        o.status.success(),
        "curl {url}: {}",
        String::from_utf8_lossy(&o.stderr).trim()
    );
    let got = std::fs::read(out.path())?;
    ensure!(
        got.as_slice() == lab.data.as_slice(),
        "curl {url}: got {} bytes that differ from the served file",
        got.len()
    );
    Ok(())
}

/// What one cell run measured.
#[derive(Debug, Default)]
struct Measured {
    mibs: f64,
    granted: Option<u16>,
    timeouts: u32,
    gaps: u32,
}

/// One cell run: all streams of `case` against `peer`; MiB/s is all bytes over wall time. For the codec
/// client also the windowsize the peer granted and the client's loss counters.
async fn measure(lab: &Lab, case: &Case, peer: Peer) -> anyhow::Result<Measured> {
    let size = lab.data.len();
    let t0 = Instant::now();
    let mut m = Measured::default();
    match case.method {
        Method::CurlTftp { .. } | Method::Http => {
            let url = match case.method {
                Method::Http => http_url(),
                _ => format!("tftp://{}/{}", peer.addr(), Lab::rel_path()),
            };
            let mut runs = Vec::with_capacity(case.streams);
            for _ in 0..case.streams {
                let mut cmd = Command::new("curl");
                cmd.args(["-sS", "--fail", "-o", "/dev/null", "-w", "%{size_download}"])
                    .arg("--max-time")
                    .arg(lab.deadline.as_secs().to_string());
                if let Method::CurlTftp {
                    blksize: Some(b), ..
                } = case.method
                {
                    cmd.arg("--tftp-blksize").arg(b.to_string());
                }
                cmd.arg(&url).kill_on_drop(true);
                runs.push(cmd.output());
            }
            for out in futures::future::join_all(runs).await {
                let out = out.context("running curl")?;
                ensure!(
                    out.status.success(),
                    "curl {url}: {} {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                let got = String::from_utf8_lossy(&out.stdout);
                ensure!(
                    got.trim() == size.to_string(),
                    "curl {url}: downloaded {got} bytes, expected {size}"
                );
            }
        }
        Method::Windowed { blksize, window } => {
            let addr = SocketAddr::from((peer.addr(), 69));
            let (data, stop, streams) = (lab.data.clone(), lab.stop.clone(), case.streams);
            let deadline = Instant::now() + lab.deadline;
            let results = tokio::task::spawn_blocking(move || {
                std::thread::scope(|s| {
                    let handles: Vec<_> = (0..streams)
                        .map(|_| {
                            s.spawn(|| {
                                fetch_windowed(
                                    addr,
                                    &Lab::rel_path(),
                                    blksize,
                                    window,
                                    deadline,
                                    Some(&data),
                                    &stop,
                                )
                            })
                        })
                        .collect();
                    handles
                        .into_iter()
                        .map(|h| {
                            h.join()
                                .unwrap_or_else(|_| Err(anyhow::anyhow!("client panicked")))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .await?;
            for r in results {
                let fetched = r?;
                ensure!(fetched.bytes == size as u64, "short download");
                m.granted = Some(fetched.window);
                m.timeouts += fetched.timeouts;
                m.gaps += fetched.gaps;
            }
        }
    }
    m.mibs = (size * case.streams) as f64 / MIB / t0.elapsed().as_secs_f64();
    Ok(m)
}

/// Deterministic, incompressible-looking bytes (xorshift), so no layer can shortcut the transfer.
fn pattern(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes `rel` under `root`, readable by the peers' unprivileged users (dnsmasq, nobody).
fn write_world_readable(root: &Path, rel: &str, data: &[u8]) -> anyhow::Result<()> {
    let path = root.join(rel);
    let mut dir = path.parent().map(Path::to_path_buf);
    std::fs::create_dir_all(dir.as_ref().context("no parent")?)?;
    while let Some(d) = dir {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755))?;
        if d == root {
            break;
        }
        dir = d.parent().map(Path::to_path_buf);
    }
    std::fs::write(&path, data)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
    Ok(())
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}
