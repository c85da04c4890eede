//! A small network-namespace lab for the VRRP tests and benchmark, on the host kernel: one switch namespace
//! with a bridge, load-balancer namespaces each with `eth0` on it and `int0` on a second
//! bridge (the internal network, for internal VIPs), and a
//! prober namespace. Names carry a per-lab suffix (pid + counter), addresses come from 198.18.0.0/24, and
//! everything the lab started or created (processes by PID, namespaces by name) is removed on drop, also when
//! a test panics.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Fails (or, outside CI with `LBFLEET_SKIP_NETNS=1`, skips) when the lab cannot run here: it needs root, `ip`
/// and, for the interop tests, keepalived. Returns `false` to skip.
pub fn require(keepalived: bool) -> bool {
    let mut missing = Vec::new();
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    if !root {
        missing.push("root");
    }
    if !Path::new("/usr/sbin/ip").exists() && !Path::new("/sbin/ip").exists() {
        missing.push("iproute2 (ip)");
    }
    if keepalived && !Path::new("/usr/sbin/keepalived").exists() {
        missing.push("keepalived");
    }
    if missing.is_empty() {
        return true;
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let opt_out = std::env::var("LBFLEET_SKIP_NETNS").is_ok_and(|v| v == "1");
    if opt_out && !ci {
        eprintln!("netns test SKIPPED by LBFLEET_SKIP_NETNS=1: missing {missing:?}");
        return false;
    }
    panic!(
        "netns test needs {missing:?} (make deps; run as root) (CI={})",
        if ci { "true" } else { "unset" }
    );
}

/// Runs `ip` with `args`; panics with its stderr on failure (lab setup errors are test failures).
pub fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("ip {args:?}: {e}"));
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One lab: its namespaces, processes and scratch directory.
#[derive(Debug)]
pub struct Lab {
    pub suffix: String,
    pub switch: String,
    pub dir: tempfile::TempDir,
    namespaces: Vec<String>,
    children: Vec<(String, Child)>,
    ports: u32,
}

impl Lab {
    /// A switch namespace with bridge `br0` (multicast snooping off, so 224.0.0.18 floods like on a plain
    /// switch).
    pub fn new(tag: &str) -> Lab {
        let suffix = format!(
            "{tag}{}x{}",
            std::process::id() % 100_000,
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let mut lab = Lab {
            switch: format!("sw-{suffix}"),
            suffix,
            dir: tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}")),
            namespaces: Vec::new(),
            children: Vec::new(),
            ports: 0,
        };
        let sw = lab.switch.clone();
        lab.add_ns(&sw);
        ip(&[
            "-n",
            &sw,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ]);
        ip(&["-n", &sw, "link", "set", "br0", "up"]);
        ip(&[
            "-n",
            &sw,
            "link",
            "add",
            "br1",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ]);
        ip(&["-n", &sw, "link", "set", "br1", "up"]);
        lab
    }

    fn add_ns(&mut self, name: &str) {
        ip(&["netns", "add", name]);
        self.namespaces.push(name.to_owned());
        ip(&["-n", name, "link", "set", "lo", "up"]);
    }

    /// A host namespace `<role>-<suffix>` with `eth0` = `address`/24 on the switch and `int0` on the internal
    /// bridge.
    pub fn host(&mut self, role: &str, address: &str) -> String {
        let ns = format!("{role}-{}", self.suffix);
        self.add_ns(&ns);
        self.ports += 1;
        let port = format!("p{}", self.ports);
        ip(&[
            "-n",
            &self.switch,
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &ns,
        ]);
        ip(&[
            "-n",
            &self.switch,
            "link",
            "set",
            &port,
            "master",
            "br0",
            "up",
        ]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{address}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        // The internal network (real servers, internal VIP 198.18.2.254) on the second bridge.
        let iport = format!("i{}", self.ports);
        ip(&[
            "-n",
            &self.switch,
            "link",
            "add",
            &iport,
            "type",
            "veth",
            "peer",
            "name",
            "int0",
            "netns",
            &ns,
        ]);
        ip(&[
            "-n",
            &self.switch,
            "link",
            "set",
            &iport,
            "master",
            "br1",
            "up",
        ]);
        let internal = format!("198.18.2.{}/24", 240 + self.ports);
        ip(&["-n", &ns, "addr", "add", &internal, "dev", "int0"]);
        ip(&["-n", &ns, "link", "set", "int0", "up"]);
        ns
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
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Whether `ns` holds `address` on any interface now.
pub fn holds(ns: &str, address: &str) -> bool {
    Command::new("ip")
        .args(["-n", ns, "-4", "-o", "addr", "show"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .any(|w| w.split('/').next() == Some(address))
        })
        .unwrap_or(false)
}

/// Polls `cond` every 10 ms until it holds; panics with `what` after `limit`. Returns the time it took.
pub fn wait_for(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out after {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
    start.elapsed()
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
