//! VRRP failover as a client sees it: lbfleet-agent vs keepalived with the same settings, in network
//! namespaces on the host kernel (root). Per trial: a fresh lab (switch, master 150, backup 100, prober), the
//! pair elects, the prober pings the VIP every 10 ms, the master's link goes down (`ip link set eth0 down` in its
//! namespace: a dead node, not a killed process), and the prober's longest run of unanswered probes is the
//! outage. Settings: VRRPv2 at 1 s adverts, VRRPv3 at 100 ms, and VRRPv3 at 100 ms over IPv6 (the IPv6 VIP
//! alone, pinged over ICMPv6; `v6`), `--trials` each (default 20), contenders
//! interleaved trial by trial. Prints median and worst per contender and their ratios lbfleet/keepalived.
//!
//! `--soak SECONDS`: the CPU-saturation false-failover soak instead: one agent pair and one keepalived pair (v3,
//! 100 ms) run side by side while `--burners` busy loops (default 2 per CPU) spin; counts each pair's master
//! changes after the initial election (any is a false failover) and the prober's outages.
//!
//! Bounds: every wait has a deadline; probes are bounded in count; labs are removed on drop.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::ensure;
use clap::Parser;
use lbfleet_tests::vrrp_lab::{
    self, agent_state, holds, ip, start_agent, start_keepalived, start_prober, start_prober_to,
    status, stop_prober, wait_for, wait_prober_ready, wait_prober_recovered, Lab, Vrrp, A, B, VIP,
    VIP6,
};

#[derive(Debug, Parser)]
#[command(
    about = "VRRP failover outage: lbfleet-agent vs keepalived, same settings, netns lab (root)"
)]
struct Args {
    /// Trials per contender and setting
    #[arg(long, default_value_t = 20)]
    trials: usize,
    /// Only this setting: v2 (1 s adverts), v3 (100 ms) or v6 (v3 over IPv6, 100 ms)
    #[arg(long)]
    only: Option<String>,
    /// Run the CPU-saturation soak for this many seconds instead
    #[arg(long)]
    soak: Option<u64>,
    /// Busy loops during the soak (default: 2 per CPU)
    #[arg(long)]
    burners: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Contender {
    Lbfleet,
    Keepalived,
}

impl Contender {
    fn name(self) -> &'static str {
        match self {
            Contender::Lbfleet => "lbfleet",
            Contender::Keepalived => "keepalived",
        }
    }

    fn start(self, lab: &mut Lab, ns: &str, name: &str, v: &Vrrp) {
        match self {
            Contender::Lbfleet => {
                start_agent(lab, ns, name, v);
            }
            Contender::Keepalived => start_keepalived(lab, ns, name, v),
        }
    }

    /// Whether the node `name` (started in `ns`) is in BACKUP now.
    fn is_backup(self, lab: &Lab, name: &str) -> bool {
        match self {
            Contender::Lbfleet => agent_state(&lab.path(&format!("{name}.state"))) == "backup",
            Contender::Keepalived => lab.log(name).contains("Entering BACKUP STATE"),
        }
    }

    /// How many times the node `name` entered MASTER.
    fn masters(self, lab: &Lab, name: &str) -> usize {
        match self {
            Contender::Lbfleet => status(&lab.path(&format!("{name}.state")))["vrrp_transitions"]
                .as_array()
                .map_or(0, |t| t.iter().filter(|t| t["to"] == "master").count()),
            Contender::Keepalived => lab.log(name).matches("Entering MASTER STATE").count(),
        }
    }
}

/// The settings of one pair; `version` 6 is VRRPv3 over IPv6.
fn setting(version: u8) -> (Vrrp, Vrrp) {
    if version == 6 {
        return (Vrrp::v6(150), Vrrp::v6(100));
    }
    let interval_ms = if version == 2 { 1000 } else { 100 };
    let v = |priority| Vrrp {
        version,
        interval_ms,
        ..Vrrp::v3(priority)
    };
    (v(150), v(100))
}

/// One failover trial; returns the prober's longest outage in ms.
fn trial(c: Contender, version: u8) -> f64 {
    let mut lab = Lab::new("bv");
    let m = lab.host("m", A);
    let b = lab.host("b", B);
    let (vm, vb) = setting(version);
    let vip = if version == 6 { VIP6 } else { VIP };
    c.start(&mut lab, &m, "master", &vm);
    wait_for(Duration::from_secs(20), "master holds the VIP", || {
        holds(&m, vip)
    });
    c.start(&mut lab, &b, "backup", &vb);
    wait_for(Duration::from_secs(20), "backup in BACKUP", || {
        c.is_backup(&lab, "backup")
    });
    start_prober_to(&mut lab, 6000, vip);
    wait_prober_ready(&lab);
    // Let the prober run a few probes and the backup hear a few adverts in steady state.
    wait_for(Duration::from_secs(10), "steady state", || {
        lab.log("prober").lines().any(|l| l == "ready") && holds(&m, vip) && !holds(&b, vip)
    });
    ip(&["-n", &m, "link", "set", "eth0", "down"]);
    wait_for(Duration::from_secs(20), "backup takes the VIP", || {
        holds(&b, vip)
    });
    wait_prober_recovered(&lab);
    let (_, _, longest_ms, _) = stop_prober(&mut lab);
    longest_ms
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn failover(args: &Args) -> anyhow::Result<()> {
    let versions: Vec<u8> = match args.only.as_deref() {
        Some("v2") => vec![2],
        Some("v3") => vec![3],
        Some("v6") => vec![6],
        None => vec![3, 6, 2],
        Some(o) => anyhow::bail!("--only v2, v3 or v6, not {o}"),
    };
    let mut table = String::new();
    for version in versions {
        let mut results = [Vec::new(), Vec::new()];
        for t in 0..args.trials {
            for (i, c) in [Contender::Lbfleet, Contender::Keepalived]
                .into_iter()
                .enumerate()
            {
                let ms = trial(c, version);
                eprintln!("v{version} trial {t} {}: outage {ms:.1} ms", c.name());
                results[i].push(ms);
            }
        }
        let worst = |v: &[f64]| v.iter().copied().fold(f64::NAN, f64::max);
        let (lw, kw) = (worst(&results[0]), worst(&results[1]));
        let (lm, km) = (median(&mut results[0]), median(&mut results[1]));
        let line = format!(
            "| {}, {} adverts | {} | {lm:.0} ms | {lw:.0} ms | {km:.0} ms | {kw:.0} ms | {:.2}x | {:.2}x |\n",
            if version == 6 { "v3 over IPv6".to_owned() } else { format!("v{version}") },
            if version == 2 { "1 s" } else { "100 ms" },
            args.trials,
            lm / km,
            lw / kw
        );
        print!("{line}");
        table.push_str(&line);
    }
    println!("\n| setting | trials | lbfleet median | lbfleet worst | keepalived median | keepalived worst | median ratio | worst ratio |");
    println!("|---|---|---|---|---|---|---|---|");
    print!("{table}");
    Ok(())
}

/// Spins one CPU until killed (bounded by `timeout`).
fn burner(seconds: u64) -> Child {
    Command::new("timeout")
        .args([&seconds.to_string(), "sh", "-c", "while :; do :; done"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn busy loop")
}

fn soak(args: &Args, seconds: u64) -> anyhow::Result<()> {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let burners = args.burners.unwrap_or(2 * cpus);
    let mut labs = Vec::new();
    for c in [Contender::Lbfleet, Contender::Keepalived] {
        let mut lab = Lab::new("sk");
        let m = lab.host("m", A);
        let b = lab.host("b", B);
        let (vm, vb) = setting(3);
        c.start(&mut lab, &m, "master", &vm);
        wait_for(Duration::from_secs(20), "master holds the VIP", || {
            holds(&m, VIP)
        });
        c.start(&mut lab, &b, "backup", &vb);
        wait_for(Duration::from_secs(20), "backup in BACKUP", || {
            c.is_backup(&lab, "backup")
        });
        start_prober(&mut lab, (seconds * 100 + 1000) as u32);
        wait_prober_ready(&lab);
        labs.push((c, lab, m, b));
    }
    let before: Vec<(usize, usize)> = labs
        .iter()
        .map(|(c, lab, _, _)| (c.masters(lab, "master"), c.masters(lab, "backup")))
        .collect();
    eprintln!("soak: {seconds} s with {burners} busy loops on {cpus} CPUs");
    let mut spinning: Vec<Child> = (0..burners).map(|_| burner(seconds)).collect();
    let start = Instant::now();
    let mut split = vec![0usize; labs.len()];
    while start.elapsed() < Duration::from_secs(seconds) {
        for (i, (_, _, m, b)) in labs.iter().enumerate() {
            if holds(m, VIP) && holds(b, VIP) {
                split[i] += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    for c in &mut spinning {
        let _ = c.kill();
        let _ = c.wait();
    }
    println!("| contender | soak | busy loops | master changes after election | samples with two holders | prober outages | longest outage |");
    println!("|---|---|---|---|---|---|---|");
    for (i, (c, lab, _, _)) in labs.iter_mut().enumerate() {
        let (m0, b0) = before[i];
        let changes = c.masters(lab, "master") - m0 + c.masters(lab, "backup") - b0;
        let (_, _, longest, outages) = stop_prober(lab);
        println!(
            "| {} | {seconds} s | {burners} | {changes} | {} | {outages} | {longest:.0} ms |",
            c.name(),
            split[i]
        );
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(
        vrrp_lab::require(true),
        "the VRRP benchmark needs root, iproute2 and keepalived"
    );
    match args.soak {
        Some(s) => soak(&args, s),
        None => failover(&args),
    }
}
