//! The demo site measured by its client (`lbfleet_tests::lab::fleet`, the site `make demo` builds, without the
//! unregistered machine): two PXE-booted QEMU balancers (TCG) in cluster `web`, three real servers, a client
//! namespace.
//!
//! - boot to serving: from the first machine's start to both balancers `serving` in the API, against the PXE
//!   goal (0.6 x dnsmasq's 24 s to `/init` measured in issue 14 = 14.4 s per machine);
//! - failover outage: a request every `--interval-ms` from the client; the master's links are cut; the
//!   longest run of failed requests, against the VRRP goal (a default cluster fails over in under 0.4 s);
//!   the links come back and the master returns before the next trial;
//! - drain time: a real server's HTTP server is killed under the same traffic; the time from the kill to the
//!   last failed request, against the health goal (3.5 s with lbfleet's defaults) and against this cluster's
//!   own check bound (interval x fall + timeout). The real server is started again before the next trial.
//!
//! Every run is bounded (trials, requests, deadlines); everything is removed on exit, failure or a signal.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use lbfleet_tests::lab::fleet::{self, FleetOptions, REAL_SERVERS};
use lbfleet_tests::lab::traffic::{self, Background};
use lbfleet_tests::lab::{self, wait, Site};

/// The goals the figures are compared with.
const PXE_GOAL_S: f64 = 0.6 * 24.0;
const VRRP_GOAL_S: f64 = 0.4;
const HEALTH_GOAL_S: f64 = 3.5;

#[derive(Debug, Parser)]
#[command(
    about = "The demo site measured by its client: boot to serving, failover outage, drain time (QEMU TCG, netns)"
)]
struct Args {
    /// A built lbfleet image directory (`make image`); default: build one with this workspace's agent
    #[arg(long)]
    image: Option<PathBuf>,
    /// Failover trials
    #[arg(long, default_value_t = 5)]
    failovers: usize,
    /// Drain trials (needs health checks in the agent)
    #[arg(long, default_value_t = 5)]
    drains: usize,
    /// The client's request interval, ms
    #[arg(long, default_value_t = 20)]
    interval_ms: u64,
}

fn worst(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NAN, f64::max)
}

fn vrrp_state(site: &Site, host: &str) -> Option<String> {
    let n = site
        .server()
        .api_ok("GET", &format!("/nodes/{host}"), None)
        .ok()?;
    n["vrrp_state"].as_str().map(str::to_owned)
}

fn wait_states(site: &Site, master: &str, backup: &str) -> anyhow::Result<()> {
    wait::until(
        &format!("{master} master and {backup} backup"),
        Duration::from_secs(120),
        || {
            (vrrp_state(site, master).as_deref() == Some("master")
                && vrrp_state(site, backup).as_deref() == Some("backup"))
            .then_some(())
        },
    )?;
    Ok(())
}

/// Waits until `n` requests in a row are answered (by every real server when `all` is set).
fn wait_answers(site: &Site, client: usize, all: bool) -> anyhow::Result<()> {
    let addr = fleet::vip_addr();
    let mut last = String::new();
    wait::until("the VIP answering", Duration::from_secs(120), || {
        let r = traffic::probe(&site.extra[client], &addr, "/", 20, 12, 2000).ok()?;
        let by = traffic::answers_by_body(&r);
        last = format!("answers {by:?}, failures {:?}", traffic::failures(&r));
        let ok = traffic::failures(&r).is_empty() && (!all || by.len() == REAL_SERVERS.len());
        ok.then_some(())
    })
    .with_context(|| format!("last probe: {last}"))?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    lbfleet_bench::cleanup_on_signal("bench-site");
    let prereqs = lab::prereqs()?;
    let mut site = Site::new(prereqs)?;
    let image = match &args.image {
        Some(dir) => dir.clone(),
        None => lab::image::balancer_image(&site.dir.path().join("images"))?,
    };
    let opts = FleetOptions::new(image);
    let layout = fleet::build(&mut site, &opts)?;
    let result = measure(&mut site, &layout, &args);
    if result.is_err() {
        // What the machines and the server said, before the site is removed.
        eprintln!("{}", site.report());
        for n in ["lb-01", "lb-02"] {
            if let Ok(node) = site.server().api_ok("GET", &format!("/nodes/{n}"), None) {
                eprintln!("===== {n} in the API =====\n{node}");
            }
        }
    }
    result
}

/// Boot to serving, then the failover and drain trials, printing each figure as it comes.
fn measure(site: &mut Site, layout: &fleet::FleetLayout, args: &Args) -> anyhow::Result<()> {
    let first_start = site.vms[layout.vms[0]].started();
    wait::until("both balancers serving", Duration::from_secs(600), || {
        ["lb-01", "lb-02"]
            .iter()
            .all(|h| {
                site.server()
                    .api_ok("GET", &format!("/nodes/{h}"), None)
                    .is_ok_and(|n| n["state"] == "serving")
            })
            .then_some(())
    })
    .with_context(|| site.report())?;
    let boot_s = first_start.elapsed().as_secs_f64();
    println!(
        "boot to serving (both balancers, booting together): {boot_s:.1} s; goal {PXE_GOAL_S:.1} s per machine: ratio {:.2}",
        boot_s / PXE_GOAL_S
    );
    wait_states(site, "lb-01", "lb-02")?;
    wait_answers(site, layout.client, true)?;

    let addr = fleet::vip_addr();
    let interval = args.interval_ms.max(5);
    // 3 s of traffic per trial: the disturbance comes after the first second.
    let count = (3000 / interval) as u32;
    let mut outages = Vec::new();
    for trial in 0..args.failovers {
        let out = site.dir.path().join(format!("failover-{trial}.txt"));
        let probe = Background::probe(
            &site.extra[layout.client],
            &addr,
            "/",
            interval,
            count,
            900,
            &out,
        )?;
        wait::until("traffic flowing", Duration::from_secs(30), || {
            (probe.done() as u64 * interval >= 1000).then_some(())
        })?;
        let (boot_tap, internal_tap) = layout.taps[0].clone();
        for tap in [&boot_tap, &internal_tap] {
            site.ns.ip(&["link", "set", tap, "down"])?;
        }
        let results = traffic::parse_probe(&probe.finish(Duration::from_secs(60))?);
        for tap in [&boot_tap, &internal_tap] {
            site.ns.ip(&["link", "set", tap, "up"])?;
        }
        let outage_s = traffic::longest_outage(&results)
            .map_or(0.0, |(_, n)| (n as u64 * interval) as f64 / 1000.0);
        println!(
            "failover {trial}: outage {outage_s:.3} s ({} of {} requests failed)",
            traffic::failures(&results).len(),
            results.len()
        );
        outages.push(outage_s);
        // lb-01 (priority 150) takes the VIPs back once its links are up; the next trial starts from there.
        wait_states(site, "lb-01", "lb-02")?;
        wait_answers(site, layout.client, false)?;
    }
    if !outages.is_empty() {
        let m = lbfleet_bench::median(&mut outages.clone());
        println!(
            "failover outage (VRRP v3, 100 ms adverts, client every {interval} ms), {} trials: median {m:.3} s, worst {:.3} s; goal {VRRP_GOAL_S} s: ratio {:.2} (median), {:.2} (worst)",
            outages.len(),
            worst(&outages),
            m / VRRP_GOAL_S,
            worst(&outages) / VRRP_GOAL_S
        );
    }

    let check_bound_s =
        f64::from(fleet::CHECK_INTERVAL_MS * fleet::CHECK_FALL + fleet::CHECK_TIMEOUT_MS) / 1000.0;
    let mut drains = Vec::new();
    // The real server with the highest weight: the most requests go to it.
    let victim = REAL_SERVERS.len() - 1;
    let count = (6000 / interval) as u32;
    for trial in 0..args.drains {
        let out = site.dir.path().join(format!("drain-{trial}.txt"));
        let probe = Background::probe(
            &site.extra[layout.client],
            &addr,
            "/",
            interval,
            count,
            900,
            &out,
        )?;
        let probe_start = Instant::now();
        wait::until("traffic flowing", Duration::from_secs(30), || {
            (probe.done() as u64 * interval >= 1000).then_some(())
        })?;
        let killed_ms = probe_start.elapsed().as_millis() as u64;
        site.processes[layout.real_server_process[victim]].kill();
        let results = traffic::parse_probe(&probe.finish(Duration::from_secs(60))?);
        let last_failure = traffic::failures(&results).iter().map(|r| r.slot_ms).max();
        let Some(last) = last_failure else {
            bail!(
                "drain {trial}: no request failed after the kill: did the probe reach the victim?"
            );
        };
        if results.last().is_some_and(|r| r.answer.is_err()) {
            bail!(
                "drain {trial}: requests still failing at the end of the run (not drained in 5 s)"
            );
        }
        let drain_s = last.saturating_sub(killed_ms) as f64 / 1000.0;
        println!(
            "drain {trial}: {drain_s:.3} s ({} of {} requests failed)",
            traffic::failures(&results).len(),
            results.len()
        );
        drains.push(drain_s);
        fleet::restart_real_server(site, layout, victim)?;
        wait_answers(site, layout.client, true)?;
    }
    if !drains.is_empty() {
        let m = lbfleet_bench::median(&mut drains.clone());
        println!(
            "drain time (HTTP check every {} ms, timeout {} ms, fall {}), {} trials: median {m:.3} s, worst {:.3} s; \
             goal {HEALTH_GOAL_S} s (defaults): ratio {:.2}; this cluster's check bound {check_bound_s:.1} s: ratio {:.2}",
            fleet::CHECK_INTERVAL_MS,
            fleet::CHECK_TIMEOUT_MS,
            fleet::CHECK_FALL,
            drains.len(),
            worst(&drains),
            m / HEALTH_GOAL_S,
            m / check_bound_s
        );
    }
    Ok(())
}
