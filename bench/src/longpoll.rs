//! Long-poll wake latency: N enrolled nodes long-poll their role while the benchmark makes M changes through the
//! admin API; each sample is the time from sending the change to a poller holding the new role document.
//!
//! Every node is a member of the one cluster being changed, so each change wakes all N pollers at once (the
//! worst case for a herd of agents). Traffic stays on loopback. The run is bounded: M changes, each with a
//! 10 s deadline.
//!
//! No peer exists for this figure (keepalived has no central role server); it is compared with the 100 ms
//! target of the foundation issue.
//!
//! `--database postgres` runs on a PostgreSQL cluster the benchmark starts itself (initdb in a temporary
//! directory, removed afterwards); `--across-servers` starts a second lbfleet-server on the same database: the
//! pollers wait on server B while the changes go through server A (the wake crosses servers by PostgreSQL
//! NOTIFY), and the same run is made with pollers and changes on one server, for the ratio.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use clap::Parser;
use lbfleet_agent::client::ServerClient;
use lbfleet_proto::{EnrollRequest, UserRole};
use lbfleet_server::fleet::Actor;
use lbfleet_server::ServerConfig;
use serde_json::json;
use tokio::sync::mpsc;

#[derive(Debug, Parser)]
#[command(about = "Measure role long-poll wake latency (p50/p99) with many waiting agents")]
struct Args {
    /// Waiting pollers (enrolled nodes)
    #[arg(long, default_value_t = 200)]
    pollers: usize,
    /// Changes to make
    #[arg(long, default_value_t = 1000)]
    changes: usize,
    /// The database: the embedded SQLite file, or a PostgreSQL cluster started for the run
    #[arg(long, value_parser = ["sqlite", "postgres"], default_value = "sqlite")]
    database: String,
    /// Pollers on a second server, changes on the first (implies --database postgres); also runs the
    /// one-server case on the same database for the ratio
    #[arg(long)]
    across_servers: bool,
    /// After the wake run, every poller also reports like an agent, once per --report-interval-s, for this
    /// many seconds: the server's CPU share and the database's write rate are printed (0: no report run)
    #[arg(long, default_value_t = 0)]
    report_seconds: u64,
    /// Seconds between two reports of one agent (the agent's default is 10)
    #[arg(long, default_value_t = 10)]
    report_interval_s: u64,
}

/// A server on `db`, listening on a port-0 loopback listener. It runs on a runtime of its own, on threads
/// named `lbfleet-srv` (with SQLite, its database threads are sqlx's `sqlx-sqlite-worker-N`), so its CPU time
/// can be told apart from the benchmark's clients (`server_cpu`).
async fn start_server(
    db: &str,
    state_dir: &std::path::Path,
    clients: usize,
) -> anyhow::Result<(
    String,
    tokio::sync::oneshot::Sender<()>,
    tokio::sync::oneshot::Receiver<anyhow::Result<()>>,
)> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let mut config = ServerConfig::with_database(db.to_owned());
    config.state_dir = state_dir.to_owned();
    // Every poller connects from 127.0.0.1, where a real fleet has one address per agent: the per-address
    // cap (256 by default) would refuse the herd, so it is raised to twice the herd (a long-poll and a
    // report each) plus the admin client.
    config.max_connections_per_address = config.max_connections_per_address.max(2 * clients + 64);
    config.max_connections = config.max_connections.max(2 * clients + 64);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("lbfleet-srv")
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("lbfleet-srv-main".into())
        .spawn(move || {
            let result = runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                lbfleet_server::run(config, listener, async move {
                    let _ = stop_rx.await;
                })
                .await
            });
            let _ = done_tx.send(result);
        })?;
    Ok((base, stop_tx, done_rx))
}

/// CPU time (user + system) of this process's threads whose name starts with one of `prefixes`, from
/// /proc/self/task/*/stat, in clock ticks (100 per second on Linux).
fn threads_cpu_ticks(prefixes: &[&str]) -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    let mut total = 0;
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ... : comm may hold spaces, so split after the last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        if !prefixes.iter().any(|p| comm.starts_with(p)) {
            continue;
        }
        let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        // After the comm: state is field 3 of stat(5); utime and stime are fields 14 and 15.
        let tick = |i: usize| {
            fields
                .get(i - 3)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        total += tick(14) + tick(15);
    }
    total
}

/// The server's threads: its runtime and SQLite's connection threads.
const SERVER_THREADS: &[&str] = &["lbfleet-srv", "sqlx-sqlite-wor"];

/// Bytes this process caused to be written to storage so far (/proc/self/io `write_bytes`): the database file
/// and its WAL (the benchmark writes nothing else).
fn process_write_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("write_bytes: "))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Wake samples and admin-API call times of one run.
struct Run {
    samples: Vec<Duration>,
    api_times: Vec<Duration>,
}

/// What the report run measured.
struct ReportRun {
    reports: usize,
    refused: usize,
    seconds: f64,
    server_cpu_s: f64,
    write_bytes: u64,
    latencies: Vec<Duration>,
}

const TARGET: Duration = Duration::from_millis(100);

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(
        args.pollers >= 1 && args.changes >= 1,
        "need at least one poller and one change"
    );
    let postgres = args.across_servers || args.database == "postgres";
    let cluster = postgres.then(lbfleet_tests::postgres::Cluster::start);
    let mut runs = Vec::new();
    for across in if args.across_servers {
        vec![false, true]
    } else {
        vec![false]
    } {
        let dir = tempfile::tempdir()?;
        let db = match &cluster {
            Some(c) => c.database(if across { "bench_across" } else { "bench_one" }),
            None => format!("sqlite://{}", dir.path().join("bench.db").display()),
        };
        let run = run(&args, &db, dir.path(), across).await?;
        report(&args, postgres, across, &run);
        runs.push(run);
    }
    if let [one, across] = runs.as_slice() {
        let p99 = |r: &Run| percentile(&r.samples, 0.99).as_secs_f64();
        println!(
            "  ratio p99 across servers / one server: {:.2}",
            p99(across) / p99(one)
        );
    }
    Ok(())
}

async fn run(args: &Args, db: &str, dir: &std::path::Path, across: bool) -> anyhow::Result<Run> {
    let db = db.to_owned();

    // Seed an operator token, then start the real server on a port-0 listener.
    let fleet = lbfleet_server::open_fleet(&ServerConfig::with_database(db.clone())).await?;
    fleet
        .create_user(
            &Actor::system(),
            "bench",
            UserRole::Operator,
            Some("bench-password-123".into()),
        )
        .await?;
    let (_, token) = fleet
        .create_token(&Actor::system(), "bench", "bench", None)
        .await?;
    fleet.close().await;
    let (base, stop_tx, server) = start_server(&db, &dir.join("a"), args.pollers).await?;
    // Where the pollers wait: the same server, or a second one on the same database.
    let second = if across {
        Some(start_server(&db, &dir.join("b"), args.pollers).await?)
    } else {
        None
    };
    let poll_base = second.as_ref().map_or(base.clone(), |(b, _, _)| b.clone());

    let http = reqwest::Client::new();
    let api = |path: &str| format!("{base}/api/v1{path}");
    let spec = json!({
        "vrid": 51, "interface": "eth0", "advert_interval_ms": 100, "vips": ["198.18.0.10/32"],
        "services": [{"vip": "198.18.0.10", "port": 80, "protocol": "tcp", "scheduler": "wrr", "forward": "nat",
                      "real_servers": [{"address": "198.18.2.1", "port": 80}, {"address": "198.18.2.2", "port": 80}]}]
    });
    let r = http
        .put(api("/clusters/ext"))
        .bearer_auth(&token)
        .json(&spec)
        .send()
        .await?;
    ensure!(
        r.status().is_success(),
        "create cluster: {}",
        r.text().await?
    );

    // Register, enroll and assign every node: one active, the rest backups.
    eprintln!("enrolling {} nodes...", args.pollers);
    let mut clients = Vec::with_capacity(args.pollers);
    let mut reporters = Vec::with_capacity(args.pollers);
    for i in 0..args.pollers {
        let mac = format!("52:54:00:00:{:02x}:{:02x}", i / 256, i % 256);
        let name = format!("lb-{i:04}");
        let r = http
            .post(api("/nodes"))
            .bearer_auth(&token)
            .json(&json!({"mac": mac, "hostname": name}))
            .send()
            .await?;
        ensure!(
            r.status().is_success(),
            "register {name}: {}",
            r.text().await?
        );
        let role = if i == 0 { "active" } else { "backup" };
        let r = http
            .post(api(&format!("/nodes/{name}/assign")))
            .bearer_auth(&token)
            .json(&json!({"cluster": "ext", "role": role}))
            .send()
            .await?;
        ensure!(
            r.status().is_success(),
            "assign {name}: {}",
            r.text().await?
        );
        let t: serde_json::Value = http
            .post(api(&format!("/nodes/{name}/enrollment-token")))
            .bearer_auth(&token)
            .send()
            .await?
            .json()
            .await?;
        let mut client = ServerClient::new(&poll_base, None)?;
        client
            .enroll(&EnrollRequest {
                token: t["token"].as_str().context("enrollment token")?.to_owned(),
                mac,
                agent_version: None,
                image_version: None,
            })
            .await?;
        reporters.push(client.clone());
        clients.push(client);
    }

    // Pollers: each holds its newest generation and reports every new document it receives.
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, u64, Instant)>();
    let mut pollers = Vec::new();
    for (id, client) in clients.into_iter().enumerate() {
        let first = client
            .poll_role(0, Duration::from_secs(5))
            .await?
            .context("initial role")?;
        let tx = tx.clone();
        pollers.push(tokio::spawn(async move {
            let mut after = first.generation;
            loop {
                match client.poll_role(after, Duration::from_secs(30)).await {
                    Ok(Some(doc)) => {
                        after = doc.generation;
                        if tx.send((id, after, Instant::now())).is_err() {
                            return;
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        eprintln!("poller {id}: {e}");
                        return;
                    }
                }
            }
        }));
    }
    drop(tx);
    tokio::time::sleep(Duration::from_millis(500)).await; // let every poll reach the server and wait

    eprintln!(
        "making {} changes with {} pollers waiting...",
        args.changes, args.pollers
    );
    let mut samples = Vec::with_capacity(args.pollers * args.changes);
    let mut api_times = Vec::with_capacity(args.changes);
    let rs = api("/clusters/ext/services/tcp:198.18.0.10:80/real-servers/198.18.2.1:80/weight");
    for change in 0..args.changes {
        let t0 = Instant::now();
        let r = http
            .put(&rs)
            .bearer_auth(&token)
            .json(&json!({"weight": 2 + change % 2}))
            .send()
            .await?;
        api_times.push(t0.elapsed());
        ensure!(
            r.status().is_success(),
            "change {change}: {}",
            r.text().await?
        );
        let mut seen = vec![false; args.pollers];
        let mut got = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while got < args.pollers {
            let (id, _generation, at) = tokio::time::timeout_at(deadline, rx.recv())
                .await
                .context("a poller did not see a change within 10 s")?
                .context("pollers stopped")?;
            if !seen[id] {
                seen[id] = true;
                got += 1;
                samples.push(at.duration_since(t0));
            }
        }
    }
    for p in &pollers {
        p.abort();
    }
    let reports = if args.report_seconds > 0 && !across {
        Some(report_run(args, &poll_base, &http, &token, &mut reporters).await?)
    } else {
        None
    };
    if let Some((_, stop, done)) = second {
        let _ = stop.send(());
        done.await??;
    }
    let _ = stop_tx.send(());
    server.await??;
    if let Some(r) = &reports {
        print_reports(args, r);
    }
    samples.sort();
    api_times.sort();
    Ok(Run { samples, api_times })
}

/// Every enrolled node reports once per interval (their start times spread evenly over the first interval)
/// for `--report-seconds`; the server's CPU time and the bytes written to storage are taken around it.
async fn report_run(
    args: &Args,
    base: &str,
    http: &reqwest::Client,
    token: &str,
    reporters: &mut [ServerClient],
) -> anyhow::Result<ReportRun> {
    // What each node applied: its current generation (a report newer than that is refused).
    let nodes: serde_json::Value = http
        .get(format!("{base}/api/v1/nodes"))
        .bearer_auth(token)
        .send()
        .await?
        .json()
        .await?;
    let mut applied = std::collections::HashMap::new();
    for n in nodes["nodes"].as_array().into_iter().flatten() {
        if let (Some(name), Some(g)) = (n["hostname"].as_str(), n["role_generation"].as_u64()) {
            applied.insert(name.to_owned(), g);
        }
    }
    eprintln!(
        "{} agents reporting every {} s for {} s...",
        reporters.len(),
        args.report_interval_s,
        args.report_seconds
    );
    let interval = Duration::from_secs(args.report_interval_s.max(1));
    let run_for = Duration::from_secs(args.report_seconds);
    let n = reporters.len().max(1);
    let cpu0 = threads_cpu_ticks(SERVER_THREADS);
    let io0 = process_write_bytes();
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for (i, client) in reporters.iter().enumerate() {
        let client = client.clone();
        let generation = applied.get(&format!("lb-{i:04}")).copied().unwrap_or(0);
        let offset = interval.mul_f64(i as f64 / n as f64);
        tasks.push(tokio::spawn(async move {
            let mut sent = 0usize;
            let mut refused = 0usize;
            let mut latencies = Vec::new();
            let start = tokio::time::Instant::from_std(t0) + offset;
            let end = tokio::time::Instant::from_std(t0) + run_for;
            let mut tick = tokio::time::interval_at(start, interval);
            let mut counter = 0u64;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = tokio::time::sleep_until(end) => break,
                }
                if t0.elapsed() >= run_for {
                    break;
                }
                counter += 1;
                let report = sample_report(generation, counter);
                let at = Instant::now();
                match client.report(&report).await {
                    Ok(()) => {
                        sent += 1;
                        latencies.push(at.elapsed());
                    }
                    Err(e) => {
                        refused += 1;
                        if refused == 1 {
                            eprintln!("report of lb-{i:04}: {e}");
                        }
                    }
                }
            }
            (sent, refused, latencies)
        }));
    }
    let mut run = ReportRun {
        reports: 0,
        refused: 0,
        seconds: 0.0,
        server_cpu_s: 0.0,
        write_bytes: 0,
        latencies: Vec::new(),
    };
    for t in tasks {
        let (sent, refused, latencies) = t.await?;
        run.reports += sent;
        run.refused += refused;
        run.latencies.extend(latencies);
    }
    run.seconds = t0.elapsed().as_secs_f64();
    run.server_cpu_s = (threads_cpu_ticks(SERVER_THREADS).saturating_sub(cpu0)) as f64 / 100.0;
    run.write_bytes = process_write_bytes().saturating_sub(io0);
    run.latencies.sort();
    Ok(run)
}

/// A report as an agent of the benchmark's cluster sends it: the role applied, VRRP backup, one service with
/// its two real servers and counters that move.
fn sample_report(generation: u64, counter: u64) -> lbfleet_proto::AgentReport {
    use lbfleet_proto::{AgentReport, Protocol, RealServerReport, ServiceReport, VrrpState};
    let rs = |address: &str| RealServerReport {
        address: address.into(),
        port: 80,
        healthy: true,
        weight: 1,
        active_conns: counter % 7,
        inactive_conns: counter % 3,
        connections: counter * 10,
        packets_in: counter * 100,
        packets_out: counter * 90,
        bytes_in: counter * 10_000,
        bytes_out: counter * 90_000,
        health: None,
    };
    AgentReport {
        applied_generation: generation,
        vrrp_state: Some(VrrpState::Backup),
        services: vec![ServiceReport {
            vip: "198.18.0.10".into(),
            port: 80,
            protocol: Protocol::Tcp,
            connections: counter * 20,
            packets_in: counter * 200,
            packets_out: counter * 180,
            bytes_in: counter * 20_000,
            bytes_out: counter * 180_000,
            real_servers: vec![rs("198.18.2.1"), rs("198.18.2.2")],
        }],
        agent_version: Some("bench".into()),
        uptime_s: counter * 10,
        ..AgentReport::default()
    }
}

fn print_reports(args: &Args, r: &ReportRun) {
    let rate = r.reports as f64 / r.seconds.max(0.001);
    println!(
        "reports: {} agents every {} s for {:.1} s: {} accepted ({:.1}/s), {} failed",
        args.pollers, args.report_interval_s, r.seconds, r.reports, rate, r.refused
    );
    println!(
        "  server CPU (its runtime and SQLite threads): {:.2} s = {:.1}% of one core",
        r.server_cpu_s,
        100.0 * r.server_cpu_s / r.seconds.max(0.001)
    );
    println!(
        "  database writes: {:.1} write transactions/s, {:.1} KiB/s to storage ({} bytes, /proc/self/io)",
        rate,
        r.write_bytes as f64 / 1024.0 / r.seconds.max(0.001),
        r.write_bytes
    );
    if !r.latencies.is_empty() {
        println!(
            "  report call: p50 {:.2} ms  p99 {:.2} ms",
            ms(percentile(&r.latencies, 0.50)),
            ms(percentile(&r.latencies, 0.99))
        );
    }
}

fn report(args: &Args, postgres: bool, across: bool, run: &Run) {
    let (samples, api_times) = (&run.samples, &run.api_times);
    let p50 = percentile(samples, 0.50);
    let p99 = percentile(samples, 0.99);
    println!(
        "long-poll wake latency ({}, {}): {} pollers, {} changes, {} samples",
        if postgres { "PostgreSQL" } else { "SQLite" },
        if across {
            "pollers on server B, changes through server A"
        } else {
            "one server"
        },
        args.pollers,
        args.changes,
        samples.len()
    );
    println!(
        "  wake (change sent -> poller holds new role): p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        ms(p50),
        ms(p99),
        ms(*samples.last().unwrap())
    );
    println!(
        "  admin API change call:                       p50 {:.2} ms  p99 {:.2} ms",
        ms(percentile(api_times, 0.50)),
        ms(percentile(api_times, 0.99))
    );
    println!(
        "  ratio p99 / target ({} ms): {:.3}  ({})",
        TARGET.as_millis(),
        p99.as_secs_f64() / TARGET.as_secs_f64(),
        if p99 <= TARGET {
            "within target"
        } else {
            "OVER target"
        }
    );
}
