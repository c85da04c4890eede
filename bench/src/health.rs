//! Health-check drain: time from a real server failing its check to its weight reaching 0 in the kernel,
//! `lbfleet-agent apply --watch` against keepalived's `HTTP_GET` checker (`keepalived -C`, checkers only) with
//! the same interval, timeout and retries, in the same QEMU guest (Debian kernel, TCG), trials alternating
//! in blocks. Then the CPU share and RSS of each with 1,000 real servers checked every second.
//!
//! Equal settings: lbfleet `interval_ms` 1000, `timeout_ms` 500, `fall` 3 is keepalived `delay_loop 1`,
//! `connect_timeout 0.5`, `retry 2`, `delay_before_retry 1` (three failed GETs one second apart), both
//! draining (`inhibit_on_failure`: weight 0, not removal). The real servers are `guest-http` on the guest's
//! loopback; "failing" is its health file removed (HTTP 503), at a random point of the probe cycle. Times
//! are measured in the guest from `/proc/uptime` (10 ms), polling `ipvsadm -Ln`.
//!
//! Goal (issue 10): at most 1.0x keepalived at equal settings; at most 3.5 s with lbfleet's defaults.

#![allow(clippy::unwrap_used)]

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{ensure, Context};
use clap::Parser;
use lbfleet_proto::{
    CheckKind, ForwardMethod, HealthCheck, Protocol, RealServer, RoleDocument, Scheduler,
    VirtualService,
};
use lbfleet_tests::guest::{self, GuestOutput, Initramfs};

#[derive(Debug, Parser)]
#[command(
    about = "Health-check drain time and CPU: lbfleet-agent vs keepalived HTTP_GET in one QEMU guest"
)]
struct Args {
    /// Drain trials per checker
    #[arg(long, default_value_t = 20)]
    trials: usize,
    /// Real servers for the CPU measurement (multiple of 4, at most 1000)
    #[arg(long, default_value_t = 1000)]
    servers: usize,
    /// Seconds of CPU measurement per checker (after 5 s of warm-up)
    #[arg(long, default_value_t = 20)]
    cpu_seconds: u32,
    /// Check interval of the CPU measurement, seconds (keepalived's `delay_loop`; the drain trials use 1 s)
    #[arg(long, default_value_t = 1)]
    interval_s: u32,
    /// lbfleet-agent binary to put in the guest (default: built with this bench's profile)
    #[arg(long)]
    agent: Option<std::path::PathBuf>,
    /// After each CPU measurement, profile the checker for 10 s: system calls by count (`strace -c`, run
    /// apart from the sampling) and where the CPU goes (`perf record -e cpu-clock`, by DSO and symbol). Needs
    /// the host's strace and perf (linux-perf); the profiles are printed, the CPU figures are unaffected.
    #[arg(long)]
    profile: bool,
}

fn http_check(interval_s: u32) -> HealthCheck {
    HealthCheck {
        path: Some("/healthz".into()),
        expect_status: Some(200),
        interval_ms: interval_s.saturating_mul(1000),
        timeout_ms: 500,
        rise: 1,
        fall: 3,
        ..HealthCheck::of_kind(CheckKind::Http)
    }
}

/// The real server `i` of `n`: addresses 198.18.2.1.. , four ports 8081-8084 each.
fn server(i: usize) -> (String, u16) {
    (format!("198.18.2.{}", 1 + i / 4), 8081 + (i % 4) as u16)
}

/// Services of 100 real servers each on 198.18.0.10, ports 80...
fn role(servers: &[(String, u16, u32)], per_service: usize, interval_s: u32) -> RoleDocument {
    RoleDocument {
        reboot_generation: 0,
        generation: 1,
        node: "bench".into(),
        cluster: None,
        role: None,
        vrrp: None,
        services: servers
            .chunks(per_service)
            .enumerate()
            .map(|(k, chunk)| VirtualService {
                vip: "198.18.0.10".parse().unwrap(),
                port: 80 + k as u16,
                protocol: Protocol::Tcp,
                scheduler: Scheduler::Wrr,
                forward: ForwardMethod::Nat,
                persistence_s: 0,
                persistence_prefix: None,
                check: http_check(interval_s),
                real_servers: chunk
                    .iter()
                    .map(|(a, p, w)| RealServer {
                        address: a.parse().unwrap(),
                        port: *p,
                        weight: *w,
                        enabled: true,
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// keepalived's configuration of the same services and checks.
fn keepalived_conf(servers: &[(String, u16, u32)], per_service: usize, interval_s: u32) -> String {
    let mut c = String::from("global_defs {\n  router_id bench\n}\n");
    for (k, chunk) in servers.chunks(per_service).enumerate() {
        let _ = writeln!(
            c,
            "virtual_server 198.18.0.10 {} {{\n  delay_loop {interval_s}\n  lb_algo wrr\n  lb_kind NAT\n  protocol TCP",
            80 + k
        );
        for (a, p, w) in chunk {
            let _ = writeln!(
                c,
                "  real_server {a} {p} {{\n    weight {w}\n    inhibit_on_failure\n    HTTP_GET {{\n      url {{\n        path /healthz\n        status_code 200\n      }}\n      connect_timeout 0.5\n      retry 2\n      delay_before_retry 1\n    }}\n  }}"
            );
        }
        c.push_str("}\n");
    }
    c
}

fn script(trials: usize, servers: usize, cpu_seconds: u32, profile: bool) -> String {
    format!(
        r#"
. /lib/guest-lib.sh
export RUST_LOG=warn
mount -t tmpfs tmpfs /run
mkdir -p /run/keepalived
ip link set lo up
i=1
while [ $i -le {hosts} ]; do ip addr add 198.18.2.$i/32 dev lo; i=$((i+1)); done
touch /tmp/ok /tmp/ok1
# The drain trials' server (.1:8080 has its own health file), and the rest.
guest-http /tmp/ok1 198.18.2.1:8080 > /tmp/h1.log 2>&1 &
guest-http /tmp/ok 0.0.0.0:8081 0.0.0.0:8082 0.0.0.0:8083 0.0.0.0:8084 > /tmp/h.log 2>&1 &
waitfor /tmp/h1.log listening
waitfor /tmp/h.log listening
cs() {{ read u _ < /proc/uptime; echo "${{u%.*}}${{u#*.}}"; }}
# weight W of 198.18.2.1:8080 in the table
hasw() {{ ipvsadm -Ln | grep -Eq "198.18.2.1:8080 +Masq +$1 "; }}
waitw() {{ n=0; while ! hasw $1; do n=$((n+1)); [ $n -gt 3000 ] && {{ echo "TIMEOUT weight $1"; return 1; }}; sleep 0.01; done; }}
trials() {{
  k=1
  while [ $k -le {trials} ]; do
    waitw 3 || return 1
    # A random point of the probe cycle.
    sleep 0.$(printf %03d $((RANDOM % 1000)))
    t0=$(cs); rm /tmp/ok1
    waitw 0 || return 1
    t1=$(cs)
    echo "TRIAL $1 $k $(( (t1 - t0) * 10 ))"
    touch /tmp/ok1
    k=$((k+1))
  done
}}
# TCP connections this guest opened so far (only the checker opens any): the checks made.
opens() {{ awk '/^Tcp: [0-9]/ {{ print $6 }}' /proc/net/snmp; }}
cpu() {{
  sleep 5
  read -r s < /proc/$2/stat; set -- $1 $2 $(echo "$s" | sed 's/^.*) //')
  a=$((${{14}} + ${{15}})); t0=$(cs); o0=$(opens)
  fdmax=0; n=0
  while [ $n -lt {cpu_seconds} ]; do
    f=$(ls /proc/$2/fd | wc -l); [ $f -gt $fdmax ] && fdmax=$f
    sleep 1; n=$((n+1))
  done
  read -r s < /proc/$2/stat; set -- $1 $2 $(echo "$s" | sed 's/^.*) //')
  b=$((${{14}} + ${{15}})); t1=$(cs); o1=$(opens)
  rss=$(grep VmRSS /proc/$2/status | tr -s ' ' | cut -d' ' -f2)
  echo "CPU $1 ticks=$((b - a)) cs=$((t1 - t0)) rss_kb=$rss max_fds=$fdmax checks=$((o1 - o0))"
}}
# NAME PID: 10 s of system calls by count, then 10 s of CPU samples by DSO and symbol.
prof() {{
  [ {profile} = 1 ] || return 0
  timeout -s INT 10 strace -c -f -p $2 -o /tmp/st-$1.txt > /dev/null 2>&1
  head -40 /tmp/st-$1.txt
  perf record -e cpu-clock -F 499 -p $2 -o /tmp/p-$1.data -- sleep 10 > /dev/null 2>&1
  echo "--- by DSO"
  perf report --stdio --no-children -i /tmp/p-$1.data --sort dso 2>/dev/null | grep -v '^#' | grep -v '^$' | head -12
  echo "--- by symbol"
  perf report --stdio --no-children -i /tmp/p-$1.data --sort dso,sym 2>/dev/null | grep -v '^#' | grep -v '^$' | head -60
}}

# lbfleet, drain trials
lbfleet-agent apply --role /bench/drain.json --watch --resync 10s > /tmp/agent.log 2>&1 &
P=$!
[ {trials} -gt 0 ] && run lbfleet_trials trials lbfleet
kill $P; wait $P
ipvsadm -C
# keepalived, drain trials
keepalived -n -C -f /bench/drain.conf -p /run/keepalived/k.pid -c /run/keepalived/c.pid > /tmp/ka.log 2>&1 &
P=$!
[ {trials} -gt 0 ] && run keepalived_trials trials keepalived
kill $P; wait $P
ipvsadm -C
# CPU with {servers} real servers
lbfleet-agent apply --role /bench/scale.json --watch --resync 10s > /tmp/agent2.log 2>&1 &
P=$!
run lbfleet_cpu cpu lbfleet $P
run lbfleet_profile prof lbfleet $P
run lbfleet_table sh -c 'ipvsadm -Ln | grep -c "Masq *1 "'
kill $P; wait $P
ipvsadm -C
keepalived -n -C -f /bench/scale.conf -p /run/keepalived/k.pid -c /run/keepalived/c.pid > /tmp/ka2.log 2>&1 &
P=$!
# keepalived forks a checker child; measure that one (the parent only supervises).
waitfor /run/keepalived/c.pid .
C=$(cat /run/keepalived/c.pid)
echo "keepalived checker pid $C"
run keepalived_cpu cpu keepalived $C
run keepalived_profile prof keepalived $C
run keepalived_table sh -c 'ipvsadm -Ln | grep -c "Masq *1 "'
kill $P; wait $P
ipvsadm -C
run logs sh -c 'tail -5 /tmp/agent.log; tail -5 /tmp/agent2.log'
"#,
        hosts = servers.div_ceil(4),
        profile = u8::from(profile),
    )
}

fn trials(out: &GuestOutput, name: &str, who: &str) -> anyhow::Result<Vec<f64>> {
    let s = out
        .section(name)
        .with_context(|| format!("no section {name}"))?;
    ensure!(s.rc == 0, "{name} failed: {}", s.text);
    let v: Vec<f64> = s
        .text
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("TRIAL {who} ")))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .collect();
    ensure!(!v.is_empty(), "no trials in {name}: {}", s.text);
    Ok(v)
}

/// One checker's CPU measurement.
struct Cpu {
    /// Share of one core, %.
    share: f64,
    rss_kb: u64,
    max_fds: u64,
    /// Checks made per second (TCP connections the guest opened in the window).
    checks_per_s: f64,
}

impl Cpu {
    /// CPU time per check, microseconds.
    fn us_per_check(&self) -> f64 {
        self.share * 10_000.0 / self.checks_per_s.max(0.001)
    }
}

fn cpu(out: &GuestOutput, name: &str) -> anyhow::Result<Cpu> {
    let s = out
        .section(name)
        .with_context(|| format!("no section {name}"))?;
    let line = s
        .text
        .lines()
        .find(|l| l.starts_with("CPU "))
        .with_context(|| format!("no CPU line in {name}: {}", s.text))?;
    let field = |k: &str| -> Option<u64> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .and_then(|v| v.parse().ok())
    };
    let (ticks, cs, rss, fds, checks) = (
        field("ticks=").context("ticks")?,
        field("cs=").context("cs")?,
        field("rss_kb=").context("rss")?,
        field("max_fds=").context("fds")?,
        field("checks=").context("checks")?,
    );
    ensure!(cs > 0, "no time measured: {line}");
    // USER_HZ is 100: ticks and centiseconds are the same unit.
    Ok(Cpu {
        share: 100.0 * ticks as f64 / cs as f64,
        rss_kb: rss,
        max_fds: fds,
        checks_per_s: checks as f64 * 100.0 / cs as f64,
    })
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::MIN, f64::max)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(
        args.servers >= 4 && args.servers <= 1000 && args.servers % 4 == 0,
        "--servers must be a multiple of 4 from 4 to 1000"
    );
    let prereqs = guest::prereqs()?;
    let agent = match &args.agent {
        Some(a) => a.clone(),
        None => guest::workspace_binary("lbfleet-agent", "lbfleet-agent")?,
    };
    let http = guest::workspace_binary("lbfleet-tests", "guest-http")?;
    let keepalived =
        which("keepalived").context("keepalived is required (scripts/install-deps.sh)")?;

    let drain: Vec<(String, u16, u32)> = vec![
        ("198.18.2.1".into(), 8080, 3),
        ("198.18.2.1".into(), 8081, 2),
    ];
    // The scale run: every server answers 200.
    let scale: Vec<(String, u16, u32)> = (0..args.servers)
        .map(|i| {
            let (a, p) = server(i);
            (a, p, 1)
        })
        .collect();

    let mut img = Initramfs::new(&prereqs)?;
    img.binary(&agent, "/usr/bin/lbfleet-agent")?;
    img.binary(&http, "/usr/bin/guest-http")?;
    img.binary(&keepalived, "/usr/sbin/keepalived")?;
    img.file(
        "/bench/drain.json",
        &serde_json::to_vec(&role(&drain, 100, 1))?,
    );
    img.file(
        "/bench/drain.conf",
        keepalived_conf(&drain, 100, 1).as_bytes(),
    );
    img.file(
        "/bench/scale.json",
        &serde_json::to_vec(&role(&scale, 100, args.interval_s.max(1)))?,
    );
    img.file(
        "/bench/scale.conf",
        keepalived_conf(&scale, 100, args.interval_s.max(1)).as_bytes(),
    );
    if args.profile {
        for tool in ["strace", "perf"] {
            let path =
                which(tool).with_context(|| format!("--profile needs {tool} on the host"))?;
            img.binary(&path, &format!("/usr/bin/{tool}"))?;
        }
    }
    img.script(&script(
        args.trials,
        args.servers,
        args.cpu_seconds,
        args.profile,
    ));
    let (initrd, _scratch) = img.write()?;
    eprintln!(
        "booting the guest: {} drain trials per checker, {} servers for CPU",
        args.trials, args.servers
    );
    let out = guest::boot(&prereqs, &initrd, Duration::from_secs(3600))?;
    let console = std::env::temp_dir().join("lbfleet-bench-health-console.log");
    if std::fs::write(&console, &out.console).is_ok() {
        eprintln!("guest console: {}", console.display());
    }

    if args.trials > 0 {
        drain_report(&out)?;
    }
    cpu_report(&out, &args)?;
    if args.profile {
        for name in ["lbfleet_profile", "keepalived_profile"] {
            let s = out
                .section(name)
                .with_context(|| format!("no section {name}"))?;
            println!("== {name}\n{}", s.text);
        }
    }
    Ok(())
}

fn drain_report(out: &GuestOutput) -> anyhow::Result<()> {
    let lb = trials(out, "lbfleet_trials", "lbfleet")?;
    let ka = trials(out, "keepalived_trials", "keepalived")?;
    let (lb_med, ka_med) = (median(&lb), median(&ka));
    println!("drain time, real server failing -> weight 0 in the kernel (interval 1 s, timeout 0.5 s, 3 failures), ms:");
    println!(
        "  lbfleet    median {lb_med:7.0}  worst {:7.0}  ({} trials)",
        max(&lb),
        lb.len()
    );
    println!(
        "  keepalived median {ka_med:7.0}  worst {:7.0}  ({} trials)",
        max(&ka),
        ka.len()
    );
    println!(
        "  ratio lbfleet/keepalived: median {:.2}x, worst {:.2}x (goal <= 1.0x; lbfleet worst <= 3500 ms)",
        lb_med / ka_med,
        max(&lb) / max(&ka)
    );
    Ok(())
}

fn cpu_report(out: &GuestOutput, args: &Args) -> anyhow::Result<()> {
    let l = cpu(out, "lbfleet_cpu")?;
    let k = cpu(out, "keepalived_cpu")?;
    let wanted = args.servers as f64 / f64::from(args.interval_s.max(1));
    println!(
        "{} real servers, HTTP GET every {} s ({wanted:.0} checks/s wanted), {} s:",
        args.servers,
        args.interval_s.max(1),
        args.cpu_seconds
    );
    for (who, c, tail) in [
        ("lbfleet   ", &l, ""),
        ("keepalived", &k, " (checker process)"),
    ] {
        println!(
            "  {who} CPU {:5.1}% of one core  {:6.1} checks/s  {:5.0} us CPU per check  RSS {} KiB  most open fds {}{tail}",
            c.share,
            c.checks_per_s,
            c.us_per_check(),
            c.rss_kb,
            c.max_fds
        );
    }
    println!(
        "  ratio lbfleet/keepalived CPU: {:.2}x at the rates each kept; per check {:.2}x (goal <= 0.8x)",
        l.share / k.share.max(0.01),
        l.us_per_check() / k.us_per_check().max(0.001)
    );
    for t in ["lbfleet_table", "keepalived_table"] {
        if let Some(s) = out.section(t) {
            println!("  {t}: {} destinations at weight 1", s.text.trim());
        }
    }
    Ok(())
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .chain(["/usr/sbin".into(), "/sbin".into()])
            .map(|d| d.join(name))
            .find(|f| f.is_file())
    })
}
