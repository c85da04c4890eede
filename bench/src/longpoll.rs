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
}

/// A server on `db`, listening on a port-0 loopback listener.
async fn start_server(
    db: &str,
    state_dir: &std::path::Path,
    clients: usize,
) -> anyhow::Result<(
    String,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut config = ServerConfig::with_database(db.to_owned());
    config.state_dir = state_dir.to_owned();
    // Every poller connects from 127.0.0.1, where a real fleet has one address per agent: the per-address
    // cap (256 by default) would refuse the herd, so it is raised to the herd's size plus the admin client.
    config.max_connections_per_address = config.max_connections_per_address.max(clients + 64);
    config.max_connections = config.max_connections.max(clients + 64);
    let server = tokio::spawn(lbfleet_server::run(config, listener, async move {
        let _ = stop_rx.await;
    }));
    Ok((base, stop_tx, server))
}

/// Wake samples and admin-API call times of one run.
struct Run {
    samples: Vec<Duration>,
    api_times: Vec<Duration>,
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
    if let Some((_, stop, handle)) = second {
        let _ = stop.send(());
        handle.await??;
    }
    let _ = stop_tx.send(());
    server.await??;
    samples.sort();
    api_times.sort();
    Ok(Run { samples, api_times })
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
