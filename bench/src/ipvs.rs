//! IPVS apply: 1,000 services x 10 destinations programmed from an empty table, and one destination's weight
//! changed in that full table, by `lbfleet-agent apply` and by `ipvsadm -R` / `ipvsadm -e` fed the same rules,
//! in the same QEMU guest (Debian kernel, TCG), alternating, several rounds. Times are wall times of the whole
//! command (process start, reading the kernel, applying), measured in the guest.
//!
//! Targets (issue 4): full apply at most 0.5x ipvsadm's time; a one-destination change under 10 ms that
//! touches nothing else (the agent's plan must be exactly one operation).

#![allow(clippy::unwrap_used)]

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{ensure, Context};
use clap::Parser;
use lbfleet_proto::{
    ForwardMethod, HealthCheck, Protocol, RealServer, RoleDocument, Scheduler, VirtualService,
};
use lbfleet_tests::guest::{self, GuestOutput, Initramfs};

#[derive(Debug, Parser)]
#[command(about = "Measure IPVS programming time: lbfleet-agent vs ipvsadm -R in one QEMU guest")]
struct Args {
    /// Virtual services
    #[arg(long, default_value_t = 1000)]
    services: usize,
    /// Destinations per service
    #[arg(long, default_value_t = 10)]
    dests: usize,
    /// Rounds (each runs both tools)
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

/// Service `i`: VIP 198.18.0.10-.59, port 80.. ; destinations 198.18.2.1.. with a per-service port.
fn role(services: usize, dests: usize, generation: u64) -> RoleDocument {
    RoleDocument {
        reboot_generation: 0,
        generation,
        node: "bench".into(),
        cluster: None,
        role: None,
        vrrp: None,
        services: (0..services)
            .map(|i| VirtualService {
                vip: format!("198.18.0.{}", 10 + i % 50).parse().unwrap(),
                port: 80 + (i / 50) as u16,
                protocol: Protocol::Tcp,
                scheduler: Scheduler::Wrr,
                forward: ForwardMethod::Nat,
                persistence_s: 0,
                persistence_prefix: None,
                check: HealthCheck::tcp(),
                real_servers: (0..dests)
                    .map(|j| RealServer {
                        address: format!("198.18.2.{}", 1 + j).parse().unwrap(),
                        port: 10000 + i as u16,
                        weight: 1 + j as u32,
                        enabled: true,
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// The same table as `ipvsadm -R` input.
fn rules(role: &RoleDocument) -> String {
    let mut out = String::new();
    for s in &role.services {
        let _ = writeln!(out, "-A -t {}:{} -s {}", s.vip, s.port, s.scheduler);
        for r in &s.real_servers {
            let _ = writeln!(
                out,
                "-a -t {}:{} -r {}:{} -m -w {}",
                s.vip, s.port, r.address, r.port, r.weight
            );
        }
    }
    out
}

fn script(rounds: usize, changed: &str) -> String {
    format!(
        r#"
. /lib/guest-lib.sh
T=guest-ipvs-probe
for k in $(seq 1 {rounds}); do
  ipvsadm -C
  run ipvsadm_full_$k $T time sh -c 'ipvsadm -R < /bench/rules'
  run ipvsadm_one_$k $T time ipvsadm -e {changed}
  run count_ipvsadm_$k sh -c 'ipvsadm -Ln | wc -l'
  ipvsadm -C
  run lbfleet_full_$k $T time lbfleet-agent apply --role /bench/role1.json
  run lbfleet_one_$k $T time lbfleet-agent apply --role /bench/role2.json
  run lbfleet_fast_$k $T change /bench/role2.json /bench/role1.json
  run count_lbfleet_$k sh -c 'ipvsadm -Ln | wc -l'
done
ipvsadm -C
"#
    )
}

fn ms(out: &GuestOutput, name: &str) -> anyhow::Result<f64> {
    let s = out
        .section(name)
        .with_context(|| format!("no section {name}"))?;
    ensure!(s.rc == 0, "{name} failed: {}", s.text);
    s.text
        .lines()
        .find_map(|l| l.strip_prefix("BENCH ms="))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no timing in {name}: {}", s.text))
}

/// The agent's own account of a pass: (read ms, apply ms) from "applied: ... (read X ms, apply Y ms)".
fn agent_times(out: &GuestOutput, name: &str) -> anyhow::Result<(f64, f64)> {
    let s = out
        .section(name)
        .with_context(|| format!("no section {name}"))?;
    let line = s
        .text
        .lines()
        .find(|l| l.starts_with("applied:"))
        .with_context(|| format!("no summary in {name}: {}", s.text))?;
    let num = |key: &str| -> Option<f64> {
        let at = line.find(key)? + key.len();
        line[at..].split_whitespace().next()?.parse().ok()
    };
    Ok((
        num("(read ").with_context(|| format!("no read time: {line}"))?,
        num(", apply ").with_context(|| format!("no apply time: {line}"))?,
    ))
}

/// One timed role change of the running agent, from the probe's `LABEL: N change(s) planned, ... (netlink X ms
/// of Y ms; plan .., bookkeeping ..; desired_state .., clone .. before it; total with them .. ms)` line.
#[derive(Debug)]
struct Split {
    ops: String,
    fast: f64,
    plan: f64,
    netlink: f64,
    bookkeeping: f64,
    desired: f64,
    clone: f64,
    total: f64,
}

impl Split {
    fn parse(text: &str, label: &str) -> anyhow::Result<Split> {
        let prefix = format!("{label}: ");
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .with_context(|| format!("no {label:?} line: {text}"))?;
        let field = |key: &str| -> anyhow::Result<f64> {
            line.split(key)
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|v| v.parse::<f64>().ok())
                .with_context(|| format!("no {key:?} in {line}"))
        };
        Ok(Split {
            ops: line.split(" (").next().unwrap_or_default().to_owned(),
            fast: field(" ms of ")?,
            plan: field("; plan ")?,
            netlink: field("(netlink ")?,
            bookkeeping: field(", bookkeeping ")?,
            desired: field("; desired_state ")?,
            clone: field(", clone ")?,
            total: field("total with them ")?,
        })
    }
}

/// The host's load average (`/proc/loadavg`, first three fields): the guest's CPU is emulated on it.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(
        args.rounds > 0 && args.services > 0 && args.dests > 0,
        "nothing to measure"
    );
    let load_start = loadavg();
    let prereqs = guest::prereqs()?;
    let agent = guest::workspace_binary("lbfleet-agent", "lbfleet-agent")?;
    let probe = guest::workspace_binary("lbfleet-tests", "guest-ipvs-probe")?;

    let role1 = role(args.services, args.dests, 1);
    let mut role2 = role1.clone();
    role2.generation = 2;
    role2.services[0].real_servers[0].weight = 99;
    let first = &role1.services[0];
    let changed = format!(
        "-t {}:{} -r {}:{} -m -w 99",
        first.vip, first.port, first.real_servers[0].address, first.real_servers[0].port
    );

    let mut img = Initramfs::new(&prereqs)?;
    img.binary(&agent, "/usr/bin/lbfleet-agent")?;
    img.binary(&probe, "/usr/bin/guest-ipvs-probe")?;
    img.file("/bench/role1.json", &serde_json::to_vec(&role1)?);
    img.file("/bench/role2.json", &serde_json::to_vec(&role2)?);
    img.file("/bench/rules", rules(&role1).as_bytes());
    img.script(&script(args.rounds, &changed));
    let (initrd, _scratch) = img.write()?;
    eprintln!(
        "booting the guest: {} services x {} destinations, {} rounds",
        args.services, args.dests, args.rounds
    );
    let out = guest::boot(&prereqs, &initrd, Duration::from_secs(1800))?;

    let lines = 3 + args.services * (1 + args.dests);
    let mut ipvsadm_full = Vec::new();
    let mut ipvsadm_one = Vec::new();
    let mut lbfleet_full = Vec::new();
    let mut lbfleet_one = Vec::new();
    // The running agent's change, first in the process (cold) and again later (warm).
    let mut cold: Vec<Split> = Vec::new();
    let mut warm: Vec<Split> = Vec::new();
    let mut full_inproc = (Vec::new(), Vec::new());
    let mut one_inproc = (Vec::new(), Vec::new());
    for k in 1..=args.rounds {
        let (r, a) = agent_times(&out, &format!("lbfleet_full_{k}"))?;
        full_inproc.0.push(r);
        full_inproc.1.push(a);
        let (r, a) = agent_times(&out, &format!("lbfleet_one_{k}"))?;
        one_inproc.0.push(r);
        one_inproc.1.push(a);
        ipvsadm_full.push(ms(&out, &format!("ipvsadm_full_{k}"))?);
        ipvsadm_one.push(ms(&out, &format!("ipvsadm_one_{k}"))?);
        lbfleet_full.push(ms(&out, &format!("lbfleet_full_{k}"))?);
        lbfleet_one.push(ms(&out, &format!("lbfleet_one_{k}"))?);
        let f = out
            .section(&format!("lbfleet_fast_{k}"))
            .context("no lbfleet_fast")?;
        ensure!(f.rc == 0, "lbfleet_fast_{k} failed: {}", f.text);
        for (label, into) in [("fast pass", &mut cold), ("warm pass", &mut warm)] {
            let split = Split::parse(&f.text, label)?;
            ensure!(
                split.ops == "1 change(s) planned, 1 applied, 0 failed",
                "the daemon's one-destination change was not exactly one operation: {}",
                f.text
            );
            into.push(split);
        }
        for tool in ["ipvsadm", "lbfleet"] {
            let c = out
                .section(&format!("count_{tool}_{k}"))
                .context("no count")?;
            ensure!(
                c.text.trim() == lines.to_string(),
                "{tool} round {k}: ipvsadm -Ln printed {} lines, expected {lines}",
                c.text.trim()
            );
        }
        let one = out
            .section(&format!("lbfleet_one_{k}"))
            .context("no lbfleet_one")?;
        ensure!(
            one.text.contains("applied: 1 change(s) planned, 1 applied"),
            "the one-destination change was not exactly one operation: {}",
            one.text
        );
    }
    let (iff, io, lf, lo) = (
        median(ipvsadm_full),
        median(ipvsadm_one),
        median(lbfleet_full),
        median(lbfleet_one),
    );
    println!(
        "IPVS apply, {} services x {} destinations, QEMU TCG guest, median of {} rounds",
        args.services, args.dests, args.rounds
    );
    println!("| operation | lbfleet-agent apply (wall) | of which: read table / apply plan | ipvsadm (wall) | ratio (wall) | target |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| full table from empty | {lf:.1} ms | {:.1} ms / {:.1} ms | {iff:.1} ms (`-R`) | {:.2}x | <= 0.5x |",
        median(full_inproc.0),
        median(full_inproc.1),
        lf / iff
    );
    println!(
        "| one destination's weight | {lo:.1} ms | {:.1} ms / {:.1} ms (1 operation) | {io:.1} ms (`-e`) | {:.2}x | < 10 ms, 1 operation |",
        median(one_inproc.0),
        median(one_inproc.1),
        lo / io
    );
    for (name, splits) in [("", &cold), (", warm", &warm)] {
        let med = |f: fn(&Split) -> f64| median(splits.iter().map(f).collect());
        println!(
            "| one destination's weight, running agent{name} (new role generation; no re-read before applying) | {:.2} ms | plan {:.2} ms / netlink {:.2} ms / bookkeeping {:.2} ms (1 operation) | {io:.1} ms (`-e`, a new process) | | < 10 ms, 1 operation |",
            med(|s| s.fast),
            med(|s| s.plan),
            med(|s| s.netlink),
            med(|s| s.bookkeeping),
        );
        println!(
            "| the same{name}, plus building the desired state from the role document (`desired_state`) and the daemon's clone of it | {:.2} ms | desired_state {:.2} ms / clone {:.2} ms | | | |",
            med(|s| s.total),
            med(|s| s.desired),
            med(|s| s.clone),
        );
    }
    println!("running agent, per round (ms): fast pass = plan + netlink + bookkeeping; desired_state; clone; total of all");
    for (k, (c, w)) in cold.iter().zip(&warm).enumerate() {
        for (name, s) in [("first", c), ("warm", w)] {
            println!(
                "  round {} {name:5}: {:.2} = {:.2} + {:.2} + {:.2}; {:.2}; {:.2}; {:.2}",
                k + 1,
                s.fast,
                s.plan,
                s.netlink,
                s.bookkeeping,
                s.desired,
                s.clone,
                s.total
            );
        }
    }
    println!(
        "host load average (1/5/15 min) at start: {load_start}, at end: {}",
        loadavg()
    );
    println!("guest run: {:?}", out.elapsed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_probe_lines() {
        let text = "fast pass: 1 change(s) planned, 1 applied, 0 failed (netlink 2.100 ms of 3.730 ms; plan 0.550 ms, bookkeeping 0.760 ms; desired_state 8.180 ms, clone 2.390 ms before it; total with them 14.300 ms)
BENCH ms=3.730
back: 1 change(s) planned, 1 applied, 0 failed (netlink 9 ms of 9 ms; plan 9 ms, bookkeeping 9 ms; desired_state 9 ms, clone 9 ms before it; total with them 9 ms)
warm pass: 1 change(s) planned, 1 applied, 0 failed (netlink 2.000 ms of 3.000 ms; plan 0.500 ms, bookkeeping 0.100 ms; desired_state 7.000 ms, clone 1.000 ms before it; total with them 11.000 ms)";
        let c = Split::parse(text, "fast pass").unwrap();
        assert_eq!(c.ops, "1 change(s) planned, 1 applied, 0 failed");
        assert_eq!(
            (
                c.fast,
                c.plan,
                c.netlink,
                c.bookkeeping,
                c.desired,
                c.clone,
                c.total
            ),
            (3.73, 0.55, 2.1, 0.76, 8.18, 2.39, 14.3)
        );
        let w = Split::parse(text, "warm pass").unwrap();
        assert_eq!((w.fast, w.bookkeeping, w.total), (3.0, 0.1, 11.0));
        assert!(Split::parse(text, "nothing").is_err());
    }
}
