//! A small network-namespace lab for the VRRP tests and benchmark, on the host kernel: one switch namespace
//! with a bridge, load-balancer namespaces each with `eth0` on it and `int0` on a second bridge (the internal
//! network, for internal VIPs), and a prober namespace. Names carry a per-lab suffix
//! (`netns::unique_suffix`), addresses come from 198.18.0.0/24 (and, for the IPv6 tests, 2001:2::/64: a host
//! `198.18.0.x` also has `2001:2::x/64` on `eth0`; duplicate address detection is off in the lab, so
//! link-local addresses are usable at once, and addresses survive a link flap), and everything the lab started or created
//! (processes by PID, namespaces: the kit's `netns::Netns`) is removed on drop, also when a test panics. The
//! contenders (`start_agent`, `start_keepalived`) and the prober are shared by the tests
//! (`tests/vrrp_netns.rs`) and the benchmark (`bench/src/vrrp.rs`). Setup failures panic: they are test
//! failures.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::guest::workspace_binary;
pub use crate::netns::holds;
use crate::netns::{self, Netns, NetnsError};

/// Fails (or, outside CI with `LBFLEET_SKIP=netns`, skips: `prereq::missing`) when the lab cannot run here: it
/// needs root, `ip` and, for the interop tests, keepalived. Returns `false` to skip.
pub fn require(keepalived: bool) -> bool {
    netns::require(if keepalived {
        &["/usr/sbin/keepalived"]
    } else {
        &[]
    })
}

/// Runs `ip` with `args`; panics with its stderr on failure (lab setup errors are test failures).
pub fn ip(args: &[&str]) {
    must(netns::run(Command::new("ip").args(args)));
}

fn must<T>(r: Result<T, NetnsError>) -> T {
    r.unwrap_or_else(|e| panic!("lab: {e}"))
}

/// One lab: its namespaces, processes and scratch directory.
#[derive(Debug)]
pub struct Lab {
    pub suffix: String,
    pub switch: String,
    pub dir: tempfile::TempDir,
    /// The switch first; deleted last.
    namespaces: Vec<Netns>,
    children: Vec<(String, Child)>,
    ports: u32,
}

impl Lab {
    /// A switch namespace with bridge `br0` (multicast snooping off, so 224.0.0.18 floods like on a plain
    /// switch).
    pub fn new(tag: &str) -> Lab {
        let suffix = format!("{tag}{}", netns::unique_suffix());
        let mut lab = Lab {
            switch: format!("sw-{suffix}"),
            suffix,
            dir: tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}")),
            namespaces: Vec::new(),
            children: Vec::new(),
            ports: 0,
        };
        let sw = lab.switch.clone();
        let sw = lab.add_ns(&sw);
        for br in ["br0", "br1"] {
            must(sw.ip(&["link", "add", br, "type", "bridge", "mcast_snooping", "0"]));
            must(sw.link_up(br));
        }
        lab
    }

    fn add_ns(&mut self, name: &str) -> &Netns {
        let ns = must(Netns::create(name));
        must(ns.link_up("lo"));
        // Before any interface exists, so every one inherits it: no DAD wait for link-local addresses.
        must(netns::run(Command::new("ip").args([
            "netns",
            "exec",
            name,
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
            // A link flap keeps the IPv6 addresses, as it keeps the IPv4 ones (the kernel's default flushes
            // them; a host's network manager would put them back).
            "net.ipv6.conf.all.keep_addr_on_down=1",
            "net.ipv6.conf.default.keep_addr_on_down=1",
        ])));
        self.namespaces.push(ns);
        &self.namespaces[self.namespaces.len() - 1]
    }

    /// A host namespace `<role>-<suffix>` with `eth0` = `address`/24 on the switch and `int0` on the internal
    /// bridge.
    pub fn host(&mut self, role: &str, address: &str) -> String {
        let name = format!("{role}-{}", self.suffix);
        self.ports += 1;
        let (port, iport) = (format!("p{}", self.ports), format!("i{}", self.ports));
        // The internal network (real servers, internal VIP 198.18.2.254) on the second bridge.
        let internal = format!("198.18.2.{}/24", 240 + self.ports);
        self.add_ns(&name);
        let (sw, ns) = (
            &self.namespaces[0],
            &self.namespaces[self.namespaces.len() - 1],
        );
        for (sw_end, host_end, bridge, cidr) in [
            (&port, "eth0", "br0", format!("{address}/24")),
            (&iport, "int0", "br1", internal),
        ] {
            must(netns::veth(sw, sw_end, ns, host_end));
            must(sw.ip(&["link", "set", sw_end, "master", bridge, "up"]));
            must(ns.addr_add(&cidr, host_end));
            must(ns.link_up(host_end));
        }
        if let Some(v6) = lab_ipv6(address) {
            must(ns.ip(&["addr", "add", &format!("{v6}/64"), "dev", "eth0", "nodad"]));
        }
        name
    }

    /// The namespace `name` of this lab (for `Netns::run_inside`: in-process servers and clients there).
    pub fn netns(&self, name: &str) -> &Netns {
        match self.namespaces.iter().find(|n| n.name() == name) {
            Some(n) => n,
            None => panic!("lab: no namespace {name}"),
        }
    }

    /// Starts `program args` inside `ns`, output to `<dir>/<name>.log`.
    pub fn spawn(&mut self, ns: &str, name: &str, program: &Path, args: &[&str]) -> PathBuf {
        let log = self.dir.path().join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        let err = file.try_clone().unwrap_or_else(|e| panic!("log: {e}"));
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
        self.children.push((name.to_owned(), child));
        log
    }

    /// SIGTERM to the process `name` started (graceful stop) and waits for it (up to `limit`).
    pub fn stop(&mut self, name: &str, limit: Duration) -> bool {
        let Some(i) = self.children.iter().position(|(n, _)| n == name) else {
            return false;
        };
        let (_, mut child) = self.children.remove(i);
        signal(&child, "TERM");
        wait_child(&mut child, limit)
    }

    /// SIGKILL to the process `name` (no cleanup by it).
    pub fn kill(&mut self, name: &str) {
        if let Some(i) = self.children.iter().position(|(n, _)| n == name) {
            let (_, mut child) = self.children.remove(i);
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn signal(child: &Child, sig: &str) {
    // `ip netns exec` execs the program, so the child's PID is the program's.
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &child.id().to_string()])
        .status();
}

fn wait_child(child: &mut Child, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (name, child) in &mut self.children {
            signal(child, "TERM");
            if !wait_child(child, Duration::from_secs(3)) {
                eprintln!("lab: {name} did not stop on SIGTERM; killed");
            }
        }
        // Hosts first, the switch last (each kills what still runs inside by PID, then is deleted).
        while let Some(ns) = self.namespaces.pop() {
            drop(ns);
        }
    }
}

/// Polls `cond` every 10 ms until it holds; panics with `what` after `limit` (`crate::wait::wait_for`).
pub fn wait_for(limit: Duration, what: &str, cond: impl FnMut() -> bool) -> Duration {
    crate::wait::wait_for(what, limit, Duration::from_millis(10), cond)
}

/// The prober's summary line: (sent, answered, longest outage in ms, outages).
pub fn prober_summary(log: &str) -> Option<(u64, u64, f64, u64)> {
    let line = log.lines().rev().find(|l| l.starts_with("summary "))?;
    let w: Vec<&str> = line.split_whitespace().collect();
    Some((
        w.get(2)?.parse().ok()?,
        w.get(4)?.parse().ok()?,
        w.get(6)?.parse().ok()?,
        w.get(8)?.parse().ok()?,
    ))
}

/// One run of unanswered probes between answered ones, from the prober's per-probe lines.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outage {
    /// Wall-clock time (µs since the Unix epoch) the first unanswered probe was sent.
    pub begins_unix_us: u64,
    /// From the last answered probe before it to the first answered one after it, as the summary counts.
    pub ms: f64,
}

/// Every outage in a finished prober log (`start_unix_us` line, then `seq N sent_us T reply_us T|-` lines),
/// in order; empty when the log has no start line.
pub fn prober_outages(log: &str) -> Vec<Outage> {
    let Some(origin) = log
        .lines()
        .find_map(|l| l.strip_prefix("start_unix_us "))
        .and_then(|t| t.trim().parse::<u64>().ok())
    else {
        return Vec::new();
    };
    let probes: Vec<(u64, bool)> = log
        .lines()
        .filter(|l| l.starts_with("seq "))
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            Some((w.get(3)?.parse().ok()?, *w.get(5)? != "-"))
        })
        .collect();
    let mut out = Vec::new();
    let mut last_ok: Option<usize> = None;
    for (i, &(sent, answered)) in probes.iter().enumerate() {
        if !answered {
            continue;
        }
        if let Some(prev) = last_ok {
            if i > prev + 1 {
                out.push(Outage {
                    begins_unix_us: origin + probes[prev + 1].0,
                    ms: (sent - probes[prev].0) as f64 / 1000.0,
                });
            }
        }
        last_ok = Some(i);
    }
    out
}

/// Now, in µs since the Unix epoch (the clock of [`Outage::begins_unix_us`]).
pub fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

// ---------------------------------------------------------------------------------------------------------
// Contenders: lbfleet-agent (`apply --watch`) and keepalived, and the prober.

pub const VIP: &str = "198.18.0.10";
/// The IPv6 VIP of the IPv6 and dual-stack tests.
pub const VIP6: &str = "2001:2::10";
pub const INTERNAL_VIP: &str = "198.18.2.254";
pub const A: &str = "198.18.0.2";
pub const B: &str = "198.18.0.3";
pub const PROBER: &str = "198.18.0.200";
/// The IPv6 twin of a lab address: `198.18.0.x` -> `2001:2::x` (hex digits of x's decimal text, as written).
pub fn lab_ipv6(v4: &str) -> Option<String> {
    v4.strip_prefix("198.18.0.").map(|x| format!("2001:2::{x}"))
}

/// Generous bounds: the machine is shared; precise figures are in bench/vrrp.
pub const ELECTION: Duration = Duration::from_secs(15);

/// The agent binary, built before the tests (`workspace_binary`).
pub fn agent_bin() -> PathBuf {
    workspace_binary("lbfleet-agent", "lbfleet-agent").expect("the lbfleet-agent binary")
}

/// A binary of this crate (prober, injector), built before the tests.
pub fn tool(name: &str) -> PathBuf {
    workspace_binary("lbfleet-tests", name).expect("a test tool binary")
}

/// VRRP settings of one contender (the agent's role or keepalived's config).
#[derive(Debug, Clone)]
pub struct Vrrp {
    pub version: u8,
    pub interval_ms: u32,
    pub priority: u8,
    pub preempt: bool,
    pub peers: Vec<&'static str>,
    pub internal: bool,
    /// The VIPs (address/prefix) on `eth0`: `198.18.0.10/32` unless a test says otherwise (IPv6, dual-stack).
    pub vips: Vec<&'static str>,
}

impl Vrrp {
    pub fn v3(priority: u8) -> Vrrp {
        Vrrp {
            version: 3,
            interval_ms: 100,
            priority,
            preempt: true,
            peers: vec![],
            internal: false,
            vips: vec!["198.18.0.10/32"],
        }
    }

    /// VRRPv3 with the IPv6 VIP alone (VRRP over IPv6).
    pub fn v6(priority: u8) -> Vrrp {
        Vrrp {
            vips: vec!["2001:2::10/128"],
            ..Vrrp::v3(priority)
        }
    }
}

/// Starts an agent named `name` in `ns`; returns its state directory.
pub fn start_agent(lab: &mut Lab, ns: &str, name: &str, v: &Vrrp) -> PathBuf {
    let mut vips: Vec<serde_json::Value> = v.vips.iter().map(|a| json!(a)).collect();
    if v.internal {
        vips.push(json!({"address": format!("{INTERNAL_VIP}/24"), "interface": "int0"}));
    }
    let role = json!({
        "generation": 1, "node": name, "cluster": "ext", "role": "active",
        "vrrp": {"version": v.version, "vrid": 51, "interface": "eth0", "priority": v.priority,
                 "advert_interval_ms": v.interval_ms, "preempt": v.preempt, "vips": vips,
                 "unicast_peers": v.peers, "garp": {"count": 2, "spacing_ms": 50, "refresh_ms": 0}},
        "services": []
    });
    let role_file = lab.path(&format!("{name}.role.json"));
    std::fs::write(&role_file, serde_json::to_vec(&role).unwrap()).unwrap();
    let state = lab.path(&format!("{name}.state"));
    let bin = agent_bin();
    lab.spawn(
        ns,
        name,
        &bin,
        &[
            "apply",
            "--role",
            role_file.to_str().unwrap(),
            "--watch",
            "--resync",
            "200ms",
            "--state-dir",
            state.to_str().unwrap(),
        ],
    );
    state
}

/// Starts keepalived named `name` in `ns` with the same VRID and VIP.
pub fn start_keepalived(lab: &mut Lab, ns: &str, name: &str, v: &Vrrp) {
    let interval = if v.version == 2 {
        format!("{}", v.interval_ms / 1000)
    } else {
        format!("{:.2}", f64::from(v.interval_ms) / 1000.0)
    };
    let peers = if v.peers.is_empty() {
        String::new()
    } else {
        format!("unicast_peer {{ {} }}", v.peers.join(" "))
    };
    // keepalived's instance runs over the family of its first address; addresses of the other family go in
    // virtual_ipaddress_excluded (moved with the state, not advertised), which is what lbfleet does too.
    let v4_first = v.vips.iter().any(|a| !a.contains(':'));
    let (advertised, excluded): (Vec<&str>, Vec<&str>) =
        v.vips.iter().partition(|a| a.contains(':') != v4_first);
    let conf = format!(
        "global_defs {{\n  router_id {name}\n  vrrp_version {}\n  script_user root\n  enable_script_security\n}}\n\
         vrrp_instance VI_51 {{\n  state BACKUP\n  interface eth0\n  virtual_router_id 51\n  priority {}\n  \
         advert_int {interval}\n  {}\n  {peers}\n  virtual_ipaddress {{\n    {}\n  }}\n{}}}\n",
        v.version,
        v.priority,
        if v.preempt { "" } else { "nopreempt" },
        advertised.join("\n    "),
        if excluded.is_empty() {
            String::new()
        } else {
            format!(
                "  virtual_ipaddress_excluded {{\n    {}\n  }}\n",
                excluded.join("\n    ")
            )
        },
    );
    let conf_file = lab.path(&format!("{name}.conf"));
    std::fs::write(&conf_file, conf).unwrap();
    let pid = |k: &str| {
        lab.path(&format!("{name}.{k}.pid"))
            .to_str()
            .unwrap()
            .to_owned()
    };
    let (p, r, c) = (pid("main"), pid("vrrp"), pid("checkers"));
    lab.spawn(
        ns,
        name,
        &PathBuf::from("/usr/sbin/keepalived"),
        &[
            "--dont-fork",
            "--log-console",
            "--log-detail",
            "--vrrp",
            "--use-file",
            conf_file.to_str().unwrap(),
            "--pid",
            &p,
            "--vrrp_pid",
            &r,
            "--checkers_pid",
            &c,
        ],
    );
}

pub fn status(state: &Path) -> serde_json::Value {
    std::fs::read(state.join("status.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(serde_json::Value::Null)
}

pub fn agent_state(state: &Path) -> String {
    status(state)["vrrp_state"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

/// Starts the prober in its own namespace; stop it with `stop_prober`.
pub fn start_prober(lab: &mut Lab, count: u32) -> String {
    start_prober_to(lab, count, VIP)
}

/// Starts the prober pinging `target` (IPv4 or IPv6) in its own namespace.
pub fn start_prober_to(lab: &mut Lab, count: u32, target: &str) -> String {
    let ns = lab.host("pr", PROBER);
    let stop = lab.path("prober.stop");
    let bin = tool("vrrp-prober");
    lab.spawn(
        &ns,
        "prober",
        &bin,
        &[
            target,
            "--interval-ms",
            "10",
            "--count",
            &count.to_string(),
            "--stop-file",
            stop.to_str().unwrap(),
        ],
    );
    ns
}

/// Waits until the prober's probes are answered.
pub fn wait_prober_ready(lab: &Lab) {
    wait_for(ELECTION, "prober gets answers", || {
        lab.log("prober").lines().any(|l| l == "ready")
    });
}

/// Waits until an answer follows unanswered probes (the outage is over).
pub fn wait_prober_recovered(lab: &Lab) {
    wait_for(ELECTION, "prober answered again after the outage", || {
        lab.log("prober")
            .lines()
            .any(|l| l.starts_with("recovered"))
    });
}

/// Stops the prober and returns (sent, answered, longest outage ms, outages).
pub fn stop_prober(lab: &mut Lab) -> (u64, u64, f64, u64) {
    std::fs::write(lab.path("prober.stop"), b"").unwrap();
    wait_for(Duration::from_secs(10), "prober summary", || {
        prober_summary(&lab.log("prober")).is_some()
    });
    let s = prober_summary(&lab.log("prober")).unwrap();
    eprintln!(
        "prober: sent {} answered {} longest outage {} ms, outages {}",
        s.0, s.1, s.2, s.3
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outages_are_runs_of_unanswered_probes_on_the_wall_clock() {
        let log = "start_unix_us 1000000\nready\nseq 0 sent_us 0 reply_us 100\n\
                   seq 1 sent_us 10000 reply_us -\nseq 2 sent_us 20000 reply_us -\n\
                   seq 3 sent_us 30000 reply_us 30100\nseq 4 sent_us 40000 reply_us -\n\
                   seq 5 sent_us 50000 reply_us 50100\nsummary sent 6 answered 3 longest_outage_ms 30.0 outages 2\n";
        assert_eq!(
            prober_outages(log),
            vec![
                Outage {
                    begins_unix_us: 1_010_000,
                    ms: 30.0
                },
                Outage {
                    begins_unix_us: 1_040_000,
                    ms: 20.0
                }
            ]
        );
        // Unanswered probes at the end are no outage (nothing answered after them), nor is a log without
        // its start line.
        assert!(prober_outages(
            "start_unix_us 5\nseq 0 sent_us 0 reply_us 1\nseq 1 sent_us 10 reply_us -\n"
        )
        .is_empty());
        assert!(prober_outages("seq 0 sent_us 0 reply_us 1\nseq 1 sent_us 10 reply_us -\nseq 2 sent_us 20 reply_us 21\n").is_empty());
    }
}
