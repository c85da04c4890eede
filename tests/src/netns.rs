//! Network namespaces for every netns test and lab, through iproute2: [`Netns`] (a namespace this process
//! created, deleted on drop, also when a test panics), [`veth`] pairs between namespaces, address, route and
//! link helpers, commands run inside a namespace ([`Netns::exec`], [`Netns::spawn`]), a closure run on a
//! thread inside one ([`Netns::run_inside`]), and [`require`], the prerequisite check with the kit's one skip
//! rule (`prereq::missing`, tier `netns`: fail; skip only outside CI when `LBFLEET_SKIP` names `netns`).
//!
//! Names carry [`unique_suffix`] (per process and call), so tests running at the same time never collide;
//! interface names inside a namespace need no suffix. Deleting a namespace removes every interface inside it
//! (bridges, taps, veth ends; a veth pair dies with either end). Addresses are the caller's, from
//! 198.18.0.0/15.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::prereq::{self, Tier};

/// Why a namespace operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("empty command")]
    EmptyCommand,
    #[error("no MAC address on {dev} in {ns}")]
    NoMac { ns: String, dev: String },
    #[error("entering {path}: {source}")]
    Enter {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A suffix unique to this process and call: `<pid mod 100000>x<counter>`, short enough for names.
pub fn unique_suffix() -> String {
    format!(
        "{}x{}",
        std::process::id() % 100_000,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Whether a netns test can run here: root, `ip` and every one of `tools` (a name looked up on `PATH`, or an
/// absolute path). When something is missing this follows `prereq::missing` (tier `netns`): it panics (the
/// test fails), or, outside CI with `LBFLEET_SKIP=netns`, says so and returns `false`: the caller returns.
pub fn require(tools: &[&str]) -> bool {
    let mut missing = Vec::new();
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !root {
        missing.push("root".to_owned());
    }
    for tool in std::iter::once(&"ip").chain(tools) {
        let found = if tool.starts_with('/') {
            Path::new(tool).exists()
        } else {
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !found {
            missing.push((*tool).to_owned());
        }
    }
    if missing.is_empty() {
        return true;
    }
    prereq::missing(Tier::Netns, format_args!("missing {}", missing.join(", ")));
    false
}

/// A network namespace this process created. On drop, whatever still runs inside is killed by PID
/// (`ip netns pids`), then the namespace is deleted.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `name` exactly (callers put a unique suffix in it: see [`unique_suffix`]); `lo` stays down.
    pub fn create(name: &str) -> Result<Netns, NetnsError> {
        run(Command::new("ip").args(["netns", "add", name]))?;
        Ok(Netns {
            name: name.to_owned(),
        })
    }

    /// Creates `<prefix>-<unique_suffix>` with `lo` up.
    pub fn unique(prefix: &str) -> Result<Netns, NetnsError> {
        let ns = Netns::create(&format!("{prefix}-{}", unique_suffix()))?;
        ns.link_up("lo")?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`, the handle `ip netns` keeps.
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) -> Result<(), NetnsError> {
        self.ip_output(args).map(|_| ())
    }

    /// `ip -n <ns> <args>`, its standard output.
    pub fn ip_output(&self, args: &[&str]) -> Result<String, NetnsError> {
        let out = run(Command::new("ip").args(["-n", &self.name]).args(args))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn link_up(&self, dev: &str) -> Result<(), NetnsError> {
        self.ip(&["link", "set", dev, "up"])
    }

    /// Adds `cidr` (e.g. `198.18.0.1/16`) to `dev`.
    pub fn addr_add(&self, cidr: &str, dev: &str) -> Result<(), NetnsError> {
        self.ip(&["addr", "add", cidr, "dev", dev])
    }

    pub fn addr_del(&self, cidr: &str, dev: &str) -> Result<(), NetnsError> {
        self.ip(&["addr", "del", cidr, "dev", dev])
    }

    /// A default route via `gateway`.
    pub fn default_route(&self, gateway: &str) -> Result<(), NetnsError> {
        self.ip(&["route", "add", "default", "via", gateway])
    }

    /// Whether any interface in the namespace holds IPv4 `address` now.
    pub fn holds(&self, address: &str) -> bool {
        holds(&self.name, address)
    }

    /// The MAC address of `dev` (lower case, colon-separated).
    pub fn mac(&self, dev: &str) -> Result<String, NetnsError> {
        let out = self.ip_output(&["-o", "link", "show", "dev", dev])?;
        let mut words = out.split_whitespace();
        words
            .find(|w| *w == "link/ether")
            .and_then(|_| words.next())
            .map(str::to_owned)
            .ok_or_else(|| NetnsError::NoMac {
                ns: self.name.clone(),
                dev: dev.to_owned(),
            })
    }

    /// A macvlan `name` (mode `mode`, e.g. `bridge`) on `parent` in this namespace, moved into `into`, down: a
    /// second NIC with its own MAC on `parent`'s link.
    pub fn macvlan(
        &self,
        parent: &str,
        name: &str,
        mode: &str,
        into: &Netns,
    ) -> Result<(), NetnsError> {
        self.ip(&[
            "link", "add", name, "link", parent, "type", "macvlan", "mode", mode,
        ])?;
        self.ip(&["link", "set", name, "netns", &into.name])
    }

    /// A command that runs `program` inside the namespace (`ip netns exec` execs it, so the child's PID is
    /// the program's own).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs `argv` in the namespace and returns its output; a non-zero exit is an error.
    pub fn exec(&self, argv: &[&str]) -> Result<Output, NetnsError> {
        let (program, args) = argv.split_first().ok_or(NetnsError::EmptyCommand)?;
        run(self.command(program).args(args))
    }

    /// Starts `argv` in the namespace in the background, output discarded.
    pub fn spawn(&self, argv: &[&str]) -> Result<NsProcess, NetnsError> {
        let (program, args) = argv.split_first().ok_or(NetnsError::EmptyCommand)?;
        let child = self
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| NetnsError::Command {
                command: argv.join(" "),
                stderr: e.to_string(),
            })?;
        Ok(NsProcess { child })
    }

    /// Runs `f` on a new thread that has entered this namespace (setns), for in-process servers and clients
    /// (a tokio runtime built inside `f` lives in the namespace; processes it starts do too). Returns `f`'s
    /// value; a panic in `f` is resumed on the caller's thread, so the test fails and this `Netns` is dropped.
    pub fn run_inside<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
        let path = self.path();
        let handle = File::open(&path).map_err(|source| NetnsError::Enter {
            path: path.clone(),
            source,
        })?;
        let joined = std::thread::scope(|s| {
            s.spawn(move || {
                enter(&handle).map_err(|source| NetnsError::Enter { path, source })?;
                Ok(f())
            })
            .join()
        });
        match joined {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

/// Moves the calling thread (only it) into the network namespace `handle` refers to.
#[allow(unsafe_code)]
fn enter(handle: &File) -> std::io::Result<()> {
    // SAFETY: setns(2) takes a descriptor, open for the whole call since `handle` is borrowed, and a flag
    // word; with CLONE_NEWNET it changes only the calling thread's network namespace and touches no memory.
    let rc = unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Whatever a test left running inside, by PID (never this process), so nothing keeps the links alive.
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .stderr(Stdio::null())
            .output()
        {
            let me = std::process::id().to_string();
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if pid != me {
                    let _ = Command::new("kill").args(["-KILL", pid]).status();
                }
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// Whether any interface in the namespace named `ns` holds IPv4 `address` now.
pub fn holds(ns: &str, address: &str) -> bool {
    run(Command::new("ip").args(["-n", ns, "-o", "addr", "show"])).is_ok_and(|o| {
        String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .any(|w| w.split('/').next() == Some(address))
    })
}

/// A veth pair: `a_name` in `a`, `b_name` in `b`, both down.
pub fn veth(a: &Netns, a_name: &str, b: &Netns, b_name: &str) -> Result<(), NetnsError> {
    a.ip(&[
        "link", "add", a_name, "type", "veth", "peer", "name", b_name, "netns", &b.name,
    ])
}

/// Runs `cmd`, turning a failure to start or a non-zero exit into `NetnsError::Command`.
pub fn run(cmd: &mut Command) -> Result<Output, NetnsError> {
    let command = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| NetnsError::Command {
            command: command.clone(),
            stderr: e.to_string(),
        })?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(NetnsError::Command {
            command,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

/// A process started in a namespace (a real server, a client load); killed by PID on drop.
#[derive(Debug)]
pub struct NsProcess {
    child: std::process::Child,
}

impl NsProcess {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops it now (SIGKILL) and reaps it, e.g. a real server that must go away in a test.
    pub fn kill(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for NsProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
