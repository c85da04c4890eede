//! Direct server return against NAT through the same guest balancer (issue 23): a download-heavy HTTP load
//! (every request fetches a `--size-kib` body, one request per connection) through the VIP, first with the
//! service forwarding by NAT, then by DR, alternating `--rounds` times, in one QEMU guest (Debian kernel, TCG).
//!
//! The lab inside the guest: a server LAN bridge with the balancer `lb` (198.18.0.2, lbfleet-agent with VRRP
//! holding the VIP 198.18.0.10 and one wrr service VIP:80 over three real servers, TCP checks), a router `gw`
//! (198.18.0.1) and the real servers `rs1`-`rs3` (198.18.0.51-.53, `guest-tcp blob-server`, each configured
//! by the script `lbfleet-server realserver` prints); the client `cl` (198.18.1.200) sits behind `gw` on its own
//! link. NAT: the real servers' default route is the balancer, so the replies come back through it and IPVS
//! rewrites them. DR: the default route is `gw`, so the replies go to the client without touching the
//! balancer. The switch is a new role generation for the running agent (`forward` nat -> dr) plus the real
//! servers' route (odd rounds NAT first, even rounds DR first, so neither always runs on a warmer or
//! fuller guest); each phase waits until `ipvsadm -Ln` shows all three destinations with the phase's
//! forwarding method (Masq or Route) and a weight.
//!
//! The load: `guest-tcp download` in `cl`, `--requests` requests over `--workers` parallel connections, at most
//! `--seconds` per phase. Prints requests/s and bytes/s per method and the DR/NAT ratios, and checks each phase's
//! path by the bytes the balancer's LAN interface sent: at least the client's body bytes in NAT, under a tenth
//! of them in DR. Under TCG every
//! namespace shares one emulated CPU, so the absolute figures are low; the ratio in one run is the figure.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use anyhow::{ensure, Context};
use clap::Parser;
use lbfleet_server::fleet::real_server_setup::plan;
use lbfleet_tests::guest::{self, GuestOutput, Initramfs};
use serde_json::json;

#[derive(Debug, Parser)]
#[command(about = "DR vs NAT throughput through the same lbfleet-agent balancer in one QEMU guest")]
struct Args {
    /// Requests per phase (the load stops at this count or at --seconds, whichever comes first)
    #[arg(long, default_value_t = 1000)]
    requests: u64,
    /// Time limit of one phase, seconds
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Parallel client connections
    #[arg(long, default_value_t = 4)]
    workers: u64,
    /// Body size of every reply, KiB
    #[arg(long, default_value_t = 1024)]
    size_kib: u64,
    /// Rounds, each a NAT phase then a DR phase
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

const VIP: &str = "198.18.0.10";

fn role(generation: u64, forward: &str) -> Vec<u8> {
    let rs = |a: &str| json!({"address": a, "port": 80, "weight": 1, "enabled": true});
    serde_json::to_vec(&json!({
        "generation": generation, "node": "lb", "cluster": "ext", "role": "active",
        "vrrp": {"version": 3, "vrid": 51, "interface": "eth0", "priority": 150,
                 "advert_interval_ms": 100, "preempt": true, "vips": ["198.18.0.10/24"],
                 "unicast_peers": [], "garp": {"count": 2, "spacing_ms": 50, "refresh_ms": 0}},
        "services": [{
            "vip": VIP, "port": 80, "protocol": "tcp", "scheduler": "wrr", "forward": forward,
            "persistence_s": 0,
            "check": {"kind": "tcp", "interval_ms": 500, "timeout_ms": 500, "rise": 1, "fall": 3,
                      "jitter_ms": 0},
            "real_servers": [rs("198.18.0.51"), rs("198.18.0.52"), rs("198.18.0.53")]
        }]
    }))
    .unwrap()
}

/// The DR cluster as the operator declares it: what `lbfleet-server realserver` reads.
fn realserver_script() -> anyhow::Result<String> {
    let spec: lbfleet_proto::ClusterSpec = serde_json::from_value(json!({
        "vrid": 51, "interface": "eth0", "vips": ["198.18.0.10/24"],
        "services": [{"vip": VIP, "port": 80, "protocol": "tcp", "scheduler": "wrr",
                      "forward": "dr", "real_servers": [
                          {"address": "198.18.0.51", "port": 80, "weight": 1},
                          {"address": "198.18.0.52", "port": 80, "weight": 1},
                          {"address": "198.18.0.53", "port": 80, "weight": 1}]}]
    }))?;
    Ok(plan("ext", &spec).script())
}

fn script(args: &Args) -> String {
    let bytes = args.size_kib * 1024;
    let (count, secs, workers) = (args.requests, args.seconds, args.workers);
    let mut phases = String::new();
    let mut generation = 1;
    for k in 1..=args.rounds {
        let mut order = [("nat", "Masq", "198.18.0.2"), ("dr", "Route", "198.18.0.1")];
        if k % 2 == 0 {
            order.reverse();
        }
        for (mode, method, gw) in order {
            generation += 1;
            let ports = 10000 + 5000 * (generation - 2);
            phases.push_str(&format!(
                "phase {mode}_{k} {mode} {generation} {method} {gw} {ports}\n"
            ));
        }
    }
    format!(
        r#"
ip() {{ /usr/local/sbin/ip "$@"; }}
. /lib/guest-lib.sh
export RUST_LOG=info
mount -t tmpfs tmpfs /run
lbipvs() {{ ip netns exec lb ipvsadm "$@"; }}

ip link add br0 type bridge
ip link set br0 up
for ns in lb gw rs1 rs2 rs3; do
  ip netns add $ns
  ip link add v$ns type veth peer name eth0 netns $ns
  ip link set v$ns master br0 up
  ip -n $ns link set lo up
  ip -n $ns link set eth0 up
done
ip netns add cl
ip link add vcl type veth peer name eth0 netns cl
ip link set vcl netns gw
ip -n gw link set vcl name eth1
ip -n cl link set lo up
ip -n cl link set eth0 up
ip -n gw link set eth1 up
ip -n gw addr add 198.18.0.1/24 dev eth0
ip -n gw addr add 198.18.1.1/24 dev eth1
ip netns exec gw sysctl -qw net.ipv4.ip_forward=1
ip -n cl addr add 198.18.1.200/24 dev eth0
ip -n cl route add default via 198.18.1.1
ip -n lb addr add 198.18.0.2/24 dev eth0
ip -n lb route add 198.18.1.0/24 via 198.18.0.1
# NAT: the balancer routes the replies back out of the interface they came in on; no redirects to the real
# servers (they would send the replies around the balancer).
ip netns exec lb sysctl -qw net.ipv4.ip_forward=1
ip netns exec lb sysctl -qw net.ipv4.conf.all.send_redirects=0
ip netns exec lb sysctl -qw net.ipv4.conf.eth0.send_redirects=0
for i in 1 2 3; do
  ip -n rs$i addr add 198.18.0.5$i/24 dev eth0
  ip netns exec rs$i sysctl -qw net.ipv4.conf.all.accept_redirects=0
  run rs_setup$i ip netns exec rs$i sh /rs.sh up
  ip netns exec rs$i guest-tcp blob-server 0.0.0.0:80 {bytes} > /tmp/rs$i.log 2>&1 &
  waitfor /tmp/rs$i.log listening
done
run lab ip -all netns exec ip -br addr

cp /nat1.json /tmp/role.json
ip netns exec lb lbfleet-agent apply --role /tmp/role.json --watch --resync 1s --state-dir /tmp/slb > /tmp/lb.log 2>&1 &
waitfor /tmp/lb.log "to=Master"

# phase NAME MODE GENERATION METHOD ROUTER PORTS: the role with MODE (generation GENERATION), the real servers'
# default route via ROUTER, a bounded wait for three METHOD destinations with a weight, then the load from
# client ports PORTS..PORTS+4999.
phase() {{
  cp /$2$3.json /tmp/role.next && mv /tmp/role.next /tmp/role.json
  for i in 1 2 3; do ip -n rs$i route replace default via $5; done
  i=0
  while [ "$(lbipvs -Ln | awk -v m=$4 '$3 == m && $4 > 0' | wc -l)" -lt 3 ]; do
    i=$((i+1)); if [ $i -gt 600 ]; then echo "TIMEOUT waiting for three $4 destinations"; break; fi
    sleep 0.1
  done
  run table_$1 lbipvs -Ln
  # A source port range of its own per phase: IPVS keeps the previous phase's connection entries (with their
  # forwarding method: a DR entry reused by a NAT connection sends the SYN-ACK from the VIP to the balancer,
  # which drops it) until they expire.
  ip netns exec cl sysctl -qw net.ipv4.ip_local_port_range="$6 $(($6 + 4999))"
  tx0=$(ip netns exec lb cat /sys/class/net/eth0/statistics/tx_bytes)
  run $1 ip netns exec cl guest-tcp download {VIP}:80 {count} {secs} {workers} {bytes}
  tx1=$(ip netns exec lb cat /sys/class/net/eth0/statistics/tx_bytes)
  run tx_$1 echo "BALANCER tx_bytes=$((tx1 - tx0))"
  run stats_$1 lbipvs -Ln --stats --exact
}}
{phases}
run lb_log cat /tmp/lb.log
"#
    )
}

/// The agent's log (the last lines), for a failed phase.
fn agent_log(out: &GuestOutput) -> String {
    let log = out.section("lb_log").map(|s| s.text).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Bytes the balancer's LAN interface sent during phase `name`: the replies (and the forwarded requests) in NAT,
/// the forwarded requests alone in DR.
fn balancer_tx(out: &GuestOutput, name: &str) -> anyhow::Result<u64> {
    let s = out
        .section(&format!("tx_{name}"))
        .with_context(|| format!("no section tx_{name}"))?;
    s.text
        .trim()
        .strip_prefix("BALANCER tx_bytes=")
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("tx_{name}: {}", s.text))
}

/// `(requests, failed, bytes, ms)` of a phase's `BENCH` line.
fn phase(out: &GuestOutput, name: &str) -> anyhow::Result<(u64, u64, u64, f64)> {
    let s = out
        .section(name)
        .with_context(|| format!("no section {name}"))?;
    let table = out
        .section(&format!("table_{name}"))
        .map(|t| t.text)
        .unwrap_or_default();
    let method = if name.starts_with("dr") {
        "Route"
    } else {
        "Masq"
    };
    let dests = table
        .lines()
        .filter(|l| l.split_whitespace().nth(2) == Some(method))
        .count();
    ensure!(
        dests == 3,
        "{name}: the table does not forward by {method} to three real servers:\n{table}"
    );
    let line = s
        .text
        .lines()
        .find_map(|l| l.strip_prefix("BENCH "))
        .with_context(|| format!("no BENCH line in {name}: {}\n{table}", s.text))?;
    let field = |key: &str| -> anyhow::Result<&str> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .with_context(|| format!("no {key} in {line}"))
    };
    let r = (
        field("requests=")?.parse()?,
        field("failed=")?.parse()?,
        field("bytes=")?.parse()?,
        field("ms=")?.parse()?,
    );
    ensure!(
        s.rc == 0 && r.1 == 0,
        "{name}: failed requests: {}\n{table}\nagent log (end):\n{}",
        s.text,
        agent_log(out)
    );
    Ok(r)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(
        args.rounds > 0 && args.requests > 0 && args.seconds > 0 && args.size_kib > 0,
        "nothing to measure"
    );
    ensure!(
        args.requests <= 4000 && args.rounds <= 5,
        "at most 4000 requests and 5 rounds (each phase has 5000 client ports of its own)"
    );
    lbfleet_bench::cleanup_on_signal("bench-dr");
    let load_start = loadavg();
    let prereqs = guest::prereqs()?;
    let agent = guest::workspace_binary("lbfleet-agent", "lbfleet-agent")?;
    let tcp = guest::workspace_binary("lbfleet-tests", "guest-tcp")?;

    let mut img = Initramfs::with_modules(&prereqs, &["veth", "bridge", "af_packet"])?;
    img.iproute2()?;
    img.binary(&agent, "/usr/bin/lbfleet-agent")?;
    img.binary(&tcp, "/usr/bin/guest-tcp")?;
    img.file("/rs.sh", realserver_script()?.as_bytes());
    img.file("/nat1.json", &role(1, "nat"));
    // Generation g (2..) is phase g-2 of the script's sequence; both methods per generation keep it simple.
    for generation in 2..2 + 2 * args.rounds as u64 {
        for mode in ["nat", "dr"] {
            img.file(
                &format!("/{mode}{generation}.json"),
                &role(generation, mode),
            );
        }
    }
    img.script(&script(&args));
    let (initrd, _scratch) = img.write()?;
    eprintln!(
        "booting the guest: {} rounds of NAT and DR (alternating which goes first), {} requests of {} KiB over {} connections, at most {} s each",
        args.rounds, args.requests, args.size_kib, args.workers, args.seconds
    );
    let timeout = Duration::from_secs(600 + 2 * args.rounds as u64 * (args.seconds + 120));
    let out = guest::boot(&prereqs, &initrd, timeout)?;
    let console = std::env::temp_dir().join("lbfleet-bench-dr-console.log");
    std::fs::write(&console, &out.console)
        .with_context(|| format!("writing {}", console.display()))?;
    eprintln!("guest console: {}", console.display());
    for i in 1..=3 {
        let s = out
            .section(&format!("rs_setup{i}"))
            .with_context(|| format!("no rs_setup{i}:\n{}", out.console))?;
        ensure!(s.rc == 0, "rs{i}'s realserver script failed: {}", s.text);
    }

    // Totals per method over all rounds: (requests, bytes, ms).
    let mut total = [(0u64, 0u64, 0f64); 2];
    println!(
        "DR vs NAT, {} KiB per request, {} parallel connections, QEMU TCG guest",
        args.size_kib, args.workers
    );
    println!("| round | method | requests | time | requests/s | bytes/s | sent by the balancer |");
    println!("|---|---|---|---|---|---|---|");
    for k in 1..=args.rounds {
        for (i, mode) in ["nat", "dr"].into_iter().enumerate() {
            let (req, _, bytes, ms) = phase(&out, &format!("{mode}_{k}"))?;
            ensure!(req > 0, "{mode}_{k}: no request done");
            // The path: in NAT the replies leave through the balancer, in DR they never touch it.
            let tx = balancer_tx(&out, &format!("{mode}_{k}"))?;
            if mode == "nat" {
                ensure!(tx >= bytes, "{mode}_{k}: the balancer sent {tx} bytes, the client got {bytes}: the replies did not pass it");
            } else {
                ensure!(tx < bytes / 10, "{mode}_{k}: the balancer sent {tx} bytes of the client's {bytes}: the replies passed it");
            }
            total[i].0 += req;
            total[i].1 += bytes;
            total[i].2 += ms;
            println!(
                "| {k} | {} | {req} | {:.1} s | {:.1} | {:.1} MB/s | {:.1} MB |",
                mode.to_uppercase(),
                ms / 1000.0,
                req as f64 * 1000.0 / ms,
                bytes as f64 * 1000.0 / ms / 1e6,
                tx as f64 / 1e6
            );
        }
    }
    let rate = |t: (u64, u64, f64)| (t.0 as f64 * 1000.0 / t.2, t.1 as f64 * 1000.0 / t.2);
    let (nat_rps, nat_bps) = rate(total[0]);
    let (dr_rps, dr_bps) = rate(total[1]);
    println!(
        "| all | NAT | {} | {:.1} s | {nat_rps:.1} | {:.1} MB/s | |",
        total[0].0,
        total[0].2 / 1000.0,
        nat_bps / 1e6
    );
    println!(
        "| all | DR | {} | {:.1} s | {dr_rps:.1} | {:.1} MB/s | |",
        total[1].0,
        total[1].2 / 1000.0,
        dr_bps / 1e6
    );
    println!(
        "DR/NAT: requests/s {:.2}x, bytes/s {:.2}x (target: >= 1.00x)",
        dr_rps / nat_rps,
        dr_bps / nat_bps
    );
    println!(
        "host load average (1/5/15 min) at start: {load_start}, at end: {}",
        loadavg()
    );
    println!("guest run: {:?}", out.elapsed);
    Ok(())
}
