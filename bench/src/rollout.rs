//! A rollout of the demo pair measured (`lbfleet_tests::lab::fleet`, the site `make demo` builds, without the
//! unregistered machine: two PXE-booted QEMU balancers (TCG) in cluster `web`, connection sync on).
//!
//! Each round:
//! - the node's own boot-to-serving: a plain remote reboot of the cluster's backup (`POST
//!   /nodes/{node}/reboot`), timed from the request to the moment the node passes what a rollout's gate asks
//!   (a report after the reboot, state `serving`, its role in sync, every real server up);
//! - a rollout of a new image name (the same files registered as `r1`, `r2`, ...) over the pair, with a
//!   client sending a request every `--interval-ms` through the VIP: each node's time from its step's start
//!   to its gate passed, against the boot-to-serving time (goal <= 1.3x), and the requests lost (goal <= 1).
//!
//! Every run is bounded (rounds, requests, deadlines); everything is removed on exit, failure or a signal.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use lbfleet_tests::lab::fleet::{self, FleetOptions};
use lbfleet_tests::lab::traffic::{self, Background};
use lbfleet_tests::lab::{self, wait, LabServer, Site};
use serde_json::json;

/// The goals the figures are compared with (issue 24).
const OVERHEAD_GOAL: f64 = 1.3;
const LOST_GOAL: usize = 1;

#[derive(Debug, Parser)]
#[command(
    about = "A rollout of the demo pair (QEMU TCG, netns): wall time per node against the node's own boot-to-serving time, and requests lost"
)]
struct Args {
    /// A built lbfleet image directory (`make image`); default: build one with this workspace's agent
    #[arg(long)]
    image: Option<PathBuf>,
    /// Rounds (each: one plain reboot of the backup, then one rollout of the pair)
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// The client's request interval, ms
    #[arg(long, default_value_t = 50)]
    interval_ms: u64,
}

/// Whether `host` passes a rollout's gate for a reboot requested at `since` (ms): reported after the reboot,
/// serving, in sync, every real server healthy.
fn rebooted_and_serving(server: &LabServer, host: &str, since: i64) -> bool {
    let Some(n) = server.node(host) else {
        return false;
    };
    let now = wait::now_ms();
    let fresh = n["last_seen_at"].as_i64().is_some_and(|t| t > since);
    let report = &n["last_report"];
    let rebooted = report["uptime_s"]
        .as_i64()
        .is_some_and(|up| up * 1000 <= now - since);
    let checks_up = report["services"].as_array().is_some_and(|services| {
        services.iter().all(|s| {
            s["real_servers"]
                .as_array()
                .is_some_and(|rs| rs.iter().all(|r| r["healthy"] == true))
        })
    });
    fresh && rebooted && checks_up && n["state"] == "serving" && n["in_sync"] == true
}

fn vrrp_pair(server: &LabServer) -> Option<(String, String)> {
    let state = |h: &str| {
        server
            .node(h)
            .and_then(|n| n["vrrp_state"].as_str().map(str::to_owned))
    };
    match (state("lb-01")?.as_str(), state("lb-02")?.as_str()) {
        ("master", "backup") => Some(("lb-01".into(), "lb-02".into())),
        ("backup", "master") => Some(("lb-02".into(), "lb-01".into())),
        _ => None,
    }
}

/// How many kernels a machine's console shows booting.
fn boots(site: &Site, vm: usize) -> usize {
    site.vms[vm]
        .console()
        .matches("Kernel command line:")
        .count()
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    lbfleet_bench::cleanup_on_signal("bench-rollout");
    let prereqs = lab::prereqs()?;
    let mut site = Site::new(prereqs)?;
    let image = match &args.image {
        Some(dir) => dir.clone(),
        None => lab::image::balancer_image(&site.dir.path().join("images"))?,
    };
    let opts = FleetOptions::new(image.clone());
    let layout = fleet::build(&mut site, &opts)?;
    let result = measure(&site, &layout, &args, &image);
    if result.is_err() {
        eprintln!("{}", site.report());
    }
    result
}

fn measure(
    site: &Site,
    layout: &fleet::FleetLayout,
    args: &Args,
    image: &std::path::Path,
) -> anyhow::Result<()> {
    let server = site.server();
    wait::until("both balancers serving", Duration::from_secs(600), || {
        ["lb-01", "lb-02"]
            .iter()
            .all(|h| server.node(h).is_some_and(|n| n["state"] == "serving"))
            .then_some(())
    })
    .with_context(|| site.report())?;
    let addr = fleet::vip_addr();
    let interval = args.interval_ms.max(5);
    let (mut ratios, mut lost) = (Vec::new(), Vec::new());
    for round in 1..=args.rounds {
        let (_, backup) = wait::until("one master, one backup", Duration::from_secs(120), || {
            vrrp_pair(server)
        })?;
        // The node's own boot-to-serving: a plain reboot of the backup.
        let since = wait::now_ms();
        let asked = Instant::now();
        let vm_of = |host: &str| {
            if host == "lb-01" {
                layout.vms[0]
            } else {
                layout.vms[1]
            }
        };
        let booted = boots(site, vm_of(&backup));
        server.api_ok("POST", &format!("/nodes/{backup}/reboot"), Some(&json!({})))?;
        let mut kernel_s = None;
        wait::until(
            &format!("{backup} serving after its reboot"),
            Duration::from_secs(600),
            || {
                if kernel_s.is_none() && boots(site, vm_of(&backup)) > booted {
                    kernel_s = Some(asked.elapsed().as_secs_f64());
                }
                rebooted_and_serving(server, &backup, since).then_some(())
            },
        )?;
        let boot_s = asked.elapsed().as_secs_f64();
        println!(
            "round {round}: {backup} reboot to serving (its gate's conditions): {boot_s:.1} s (kernel booting after {:.1} s)",
            kernel_s.unwrap_or(f64::NAN)
        );

        // The rollout of a new name for the same image, under traffic.
        let name = format!("r{round}");
        server.add_image(
            &name,
            &image.join("vmlinuz"),
            &image.join("initrd.img"),
            "console=ttyS0",
            false,
        )?;
        let out = site.dir.path().join(format!("rollout-{round}.txt"));
        let probe = Background::probe(
            &site.extra[layout.client],
            &addr,
            "/",
            interval,
            (900_000 / interval) as u32,
            900,
            &out,
        )?;
        wait::until("traffic flowing", Duration::from_secs(30), || {
            (probe.done() >= 20).then_some(())
        })?;
        let r = server.api_ok(
            "POST",
            "/rollouts",
            Some(&json!({"image": name, "clusters": ["web"], "gate": {"timeout": "10m"}})),
        )?;
        let id = r["id"].as_i64().context("rollout id")?;
        let started = Instant::now();
        let before = [boots(site, layout.vms[0]), boots(site, layout.vms[1])];
        let mut kernels: [Option<f64>; 2] = [None, None];
        let done = wait::until("the rollout ending", Duration::from_secs(1800), || {
            for (i, k) in kernels.iter_mut().enumerate() {
                if k.is_none() && boots(site, layout.vms[i]) > before[i] {
                    *k = Some(started.elapsed().as_secs_f64());
                }
            }
            let r = server
                .api_ok("GET", &format!("/rollouts/{id}"), None)
                .ok()?;
            (r["state"] != "running").then_some(r)
        })?;
        println!(
            "round {round}: kernels booting {:.1} s (lb-01) and {:.1} s (lb-02) after the rollout's start",
            kernels[0].unwrap_or(f64::NAN),
            kernels[1].unwrap_or(f64::NAN)
        );
        let took = started.elapsed().as_secs_f64();
        // A few more requests after the end, then the client's count.
        let n = probe.done();
        wait::until("20 more requests", Duration::from_secs(30), || {
            (probe.done() >= n + 20).then_some(())
        })?;
        let results = traffic::parse_probe(&probe.stop());
        if done["state"] != "succeeded" {
            bail!("rollout {id} ended {}: {}", done["state"], done["reason"]);
        }
        let failed = traffic::failures(&results).len();
        let steps = done["steps"].as_array().cloned().unwrap_or_default();
        let mut parts = Vec::new();
        for s in &steps {
            let (Some(from), Some(to)) = (s["since"].as_i64(), s["finished_at"].as_i64()) else {
                continue;
            };
            let node_s = (to - from) as f64 / 1000.0;
            let ratio = node_s / boot_s;
            ratios.push(ratio);
            parts.push(format!(
                "{} {node_s:.1} s ({ratio:.2}x)",
                s["node"].as_str().unwrap_or("?")
            ));
        }
        lost.push(failed);
        // Where the time went: each audited step, from the rollout's creation.
        let audit = server.api_ok(
            "GET",
            &format!("/audit?target=rollout:{id}&limit=100"),
            None,
        )?;
        let mut entries: Vec<(i64, String)> = audit["entries"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|e| {
                let what = match e["after"]["step"].as_str() {
                    Some(step) => format!(
                        "{step} {}",
                        e["after"]["detail"]["node"].as_str().unwrap_or("")
                    ),
                    None => e["action"].as_str().unwrap_or("?").to_owned(),
                };
                (e["at"].as_i64().unwrap_or(0), what)
            })
            .collect();
        entries.sort();
        if let Some(t0) = entries.first().map(|e| e.0) {
            let line: Vec<String> = entries
                .iter()
                .map(|(at, what)| format!("{:.1} s {}", (at - t0) as f64 / 1000.0, what.trim_end()))
                .collect();
            println!("round {round}: steps: {}", line.join(", "));
        }
        println!(
            "round {round}: rollout to {name} in {took:.1} s: {}; {failed} of {} requests lost",
            parts.join(", "),
            results.len()
        );
    }
    let worst_ratio = ratios.iter().copied().fold(f64::NAN, f64::max);
    let worst_lost = lost.iter().copied().max().unwrap_or(0);
    println!(
        "rollout per node vs the node's own reboot to serving, {} nodes: median {:.2}x, worst {worst_ratio:.2}x (goal <= {OVERHEAD_GOAL}x); \
         requests lost per rollout (client every {interval} ms, connection sync on): worst {worst_lost} (goal <= {LOST_GOAL})",
        ratios.len(),
        lbfleet_bench::median(&mut ratios.clone()),
    );
    Ok(())
}
