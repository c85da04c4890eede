//! The netns lab: a virtual boot site built per test out of network namespaces, bridges, veth pairs and tap
//! devices, with lbfleet-server serving DHCP, TFTP and HTTP boot on the bridge and QEMU machines PXE-booting
//! from it (BIOS with QEMU's iPXE ROM, UEFI/OVMF with the iPXE EFI ROM or with EDK2's own PXE client).
//!
//! Everything a lab creates lives inside namespaces whose names carry a per-process, per-lab suffix, so tests
//! running at the same time never collide; interface names inside a namespace need no suffix. Dropping a
//! [`Site`] kills its QEMU machines and the server by PID, then deletes its namespaces (which removes every
//! bridge, tap and veth inside), also when the test panics; on a panic it first prints every console and the
//! server log. Addresses are 198.18.0.0/15 only (server 198.18.0.1, DHCP pool from 198.18.1.0).
//!
//! Layers: namespaces and links come from the kit's [`crate::netns`]; [`server`] (lbfleet-server in a namespace, its API through curl),
//! [`vm`] (QEMU machines, consoles), [`wait`] (deadline polling), [`initrd`] (a minimal marker initramfs),
//! [`traffic`] (client requests through a VIP), [`fleet`] (the whole demo site), [`state`] (a detached site),
//! [`database`] (the detached PostgreSQL cluster of `make demo-ha`).

pub mod database;
pub mod fleet;
pub mod image;
pub mod initrd;
pub mod server;
pub mod state;
pub mod traffic;
pub mod vm;
pub mod wait;

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::netns::{self, NetnsError};
pub use crate::netns::{unique_suffix, Netns, NsProcess};
pub use server::{LabServer, ServerOptions};
pub use vm::{Firmware, Nic, Vm, VmSpec};

/// The boot network: the server's address on the bridge and the prefix of the boot subnet.
pub const SERVER_ADDRESS: &str = "198.18.0.1";
pub const BOOT_SUBNET: &str = "198.18.0.0/15";
pub const BOOT_POOL: &str = "198.18.1.0-198.18.1.255";
/// The HTTP port of the lab server (API, agent API and HTTP boot).
pub const HTTP_PORT: u16 = 8080;
/// Kernel arguments every lab image gets: the serial console, and no IO-APIC timer check, which fails under
/// TCG on a busy host ("IO-APIC + timer doesn't work!" panics) and proves nothing about lbfleet.
pub const KERNEL_ARGS: &str = "console=ttyS0 no_timer_check";
/// The boot bridge inside the site namespace.
pub const BOOT_BRIDGE: &str = "br0";

/// Why the lab could not be built or a condition was not met.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("lab prerequisites missing: {}; install them with `make deps` (scripts/install-deps.sh)", .0.join(", "))]
    Missing(Vec<String>),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("timed out after {seconds:.1} s waiting for {what}")]
    Timeout { what: String, seconds: f64 },
    #[error("{0}")]
    Other(String),
}

impl From<NetnsError> for LabError {
    fn from(e: NetnsError) -> LabError {
        match e {
            NetnsError::Command { command, stderr } => LabError::Command { command, stderr },
            other => LabError::Other(other.to_string()),
        }
    }
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LabError + '_ {
    move |source| LabError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Host files and programs a lab needs.
#[derive(Debug, Clone)]
pub struct LabPrereqs {
    pub qemu: PathBuf,
    pub ovmf_code: PathBuf,
    pub ovmf_vars: PathBuf,
    /// `undionly.kpxe` and `ipxe.efi` (Debian `ipxe`), served over TFTP to non-iPXE firmware.
    pub ipxe_dir: PathBuf,
    pub kernel: PathBuf,
    pub busybox: PathBuf,
}

/// Finds what a lab needs; `Missing` names the packages.
pub fn prereqs() -> Result<LabPrereqs, LabError> {
    let mut missing = Vec::new();
    let file = |p: &str| Path::new(p).is_file().then(|| PathBuf::from(p));
    let uid = Command::new("id").arg("-u").output().ok();
    if uid.is_none_or(|o| String::from_utf8_lossy(&o.stdout).trim() != "0") {
        missing.push("root (network namespaces, bridges, taps)".to_owned());
    }
    for tool in ["ip", "curl"] {
        if !Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success())
        {
            missing.push(format!("{tool} (packages iproute2, curl)"));
        }
    }
    if !Path::new("/dev/net/tun").exists() {
        missing.push("/dev/net/tun (tap devices)".to_owned());
    }
    let qemu = file("/usr/bin/qemu-system-x86_64");
    if qemu.is_none() {
        missing.push("qemu-system-x86_64 (package qemu-system-x86)".into());
    }
    let ovmf_code = file("/usr/share/OVMF/OVMF_CODE.fd");
    let ovmf_vars = file("/usr/share/OVMF/OVMF_VARS.fd");
    if ovmf_code.is_none() || ovmf_vars.is_none() {
        missing.push("OVMF_CODE.fd/OVMF_VARS.fd (package ovmf)".into());
    }
    let ipxe_dir = PathBuf::from("/usr/lib/ipxe");
    if !ipxe_dir.join("undionly.kpxe").is_file() || !ipxe_dir.join("ipxe.efi").is_file() {
        missing.push("undionly.kpxe, ipxe.efi (package ipxe)".into());
    }
    // QEMU's NIC option ROMs (BIOS and EFI iPXE in one file).
    if !Path::new("/usr/share/qemu/efi-virtio.rom").exists()
        && !Path::new("/usr/lib/ipxe/qemu/efi-virtio.rom").exists()
    {
        missing.push("efi-virtio.rom (package ipxe-qemu)".into());
    }
    let kernel = newest_kernel();
    if kernel.is_none() {
        missing.push("/boot/vmlinuz-* (package linux-image-amd64)".into());
    }
    let busybox = file("/bin/busybox").or_else(|| file("/usr/bin/busybox"));
    if busybox.is_none() {
        missing.push("busybox (package busybox-static)".into());
    }
    match (qemu, ovmf_code, ovmf_vars, kernel, busybox) {
        (Some(qemu), Some(ovmf_code), Some(ovmf_vars), Some(kernel), Some(busybox))
            if missing.is_empty() =>
        {
            Ok(LabPrereqs {
                qemu,
                ovmf_code,
                ovmf_vars,
                ipxe_dir,
                kernel,
                busybox,
            })
        }
        _ => Err(LabError::Missing(missing)),
    }
}

fn newest_kernel() -> Option<PathBuf> {
    let mut kernels: Vec<PathBuf> = std::fs::read_dir("/boot")
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .collect();
    kernels.sort();
    kernels.pop()
}

/// The PXE lab's prerequisites, or the rule of `prereq::missing` (fail; `None` only when `LBFLEET_SKIP`
/// names `vm` outside CI).
pub fn require() -> Option<LabPrereqs> {
    match prereqs() {
        Ok(p) => Some(p),
        Err(e) => {
            crate::prereq::missing(crate::prereq::Tier::Vm, e);
            None
        }
    }
}

/// One boot site: the site namespace `lbs-<suffix>` holds the boot bridge (198.18.0.1/15), the taps of the
/// machines and lbfleet-server. More namespaces (clients, real servers) join through veth pairs.
///
/// Field order is drop order: machines first, then the server, then the namespaces.
#[allow(missing_debug_implementations)] // holds child processes; `report()` is the readable form
pub struct Site {
    pub vms: Vec<Vm>,
    pub server: Option<LabServer>,
    /// More servers on the first one's database, each in a namespace of its own ([`Site::start_peer`]).
    pub peers: Vec<LabServer>,
    /// Background processes in the namespaces (real servers), killed before the namespaces go.
    pub processes: Vec<NsProcess>,
    /// Extra namespaces (clients, real servers), deleted before the site namespace.
    pub extra: Vec<Netns>,
    pub ns: Netns,
    pub prereqs: LabPrereqs,
    pub dir: LabDir,
    suffix: String,
    next_tap: u32,
}

impl Site {
    /// Builds the site namespace with the boot bridge up and addressed. Does not start the server.
    pub fn new(prereqs: LabPrereqs) -> Result<Site, LabError> {
        let dir = tempfile::tempdir().map_err(io_err(Path::new("tempdir")))?;
        Site::build(prereqs, unique_suffix(), LabDir::Temp(dir))
    }

    /// A site whose names carry `suffix` (e.g. `demo`) and whose files live in `dir` (kept after the site
    /// goes), for a site that outlives the process that built it (see [`Site::detach`]).
    pub fn named(prereqs: LabPrereqs, suffix: &str, dir: &Path) -> Result<Site, LabError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        Site::build(prereqs, suffix.to_owned(), LabDir::Kept(dir.to_owned()))
    }

    /// The site namespace's name for `suffix`.
    pub fn namespace_name(suffix: &str) -> String {
        format!("lbs-{suffix}")
    }

    /// The name of an extra namespace `role` (see [`Site::attach_namespace`]).
    pub fn extra_namespace_name(role: &str, suffix: &str) -> String {
        format!("lb{role}-{suffix}")
    }

    fn build(prereqs: LabPrereqs, suffix: String, dir: LabDir) -> Result<Site, LabError> {
        let ns = Netns::create(&Site::namespace_name(&suffix))?;
        ns.ip(&["link", "set", "lo", "up"])?;
        ns.ip(&["link", "add", BOOT_BRIDGE, "type", "bridge"])?;
        // No STP listening/learning delay: a new tap forwards at once.
        ns.ip(&[
            "link",
            "set",
            BOOT_BRIDGE,
            "type",
            "bridge",
            "forward_delay",
            "0",
        ])?;
        ns.ip(&[
            "addr",
            "add",
            &format!("{SERVER_ADDRESS}/15"),
            "dev",
            BOOT_BRIDGE,
        ])?;
        ns.ip(&["link", "set", BOOT_BRIDGE, "up"])?;
        Ok(Site {
            vms: Vec::new(),
            server: None,
            peers: Vec::new(),
            processes: Vec::new(),
            extra: Vec::new(),
            ns,
            prereqs,
            dir,
            suffix,
            next_tap: 0,
        })
    }

    pub fn suffix(&self) -> &str {
        &self.suffix
    }

    /// Starts lbfleet-server in the site namespace with `[boot]` on the bridge.
    pub fn start_server(&mut self, opts: ServerOptions) -> Result<&LabServer, LabError> {
        let server = LabServer::start(&self.ns, self.dir.path(), &self.prereqs, opts)?;
        Ok(self.server.insert(server))
    }

    /// Starts another lbfleet-server on the first one's database, in extra namespace `ns` (see
    /// [`Site::attach_namespace`]), its files in `<site dir>/<name>/`; `opts` give its address and interface
    /// there. Returns its index in `peers`.
    pub fn start_peer(
        &mut self,
        ns: usize,
        name: &str,
        opts: ServerOptions,
    ) -> Result<usize, LabError> {
        let dir = self.dir.path().join(name);
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let Some(first) = self.server.as_ref() else {
            return Err(LabError::Other(
                "Site::start_peer before start_server".into(),
            ));
        };
        let peer = LabServer::start_peer(&self.extra[ns], &dir, &self.prereqs, first, opts)?;
        self.peers.push(peer);
        Ok(self.peers.len() - 1)
    }

    pub fn server(&self) -> &LabServer {
        match &self.server {
            Some(s) => s,
            None => panic!("Site::start_server was not called"),
        }
    }

    /// A new tap device on `bridge` in the site namespace (created persistent, so QEMU opens it as is).
    pub fn tap(&mut self, bridge: &str) -> Result<String, LabError> {
        let name = format!("tap{}", self.next_tap);
        self.next_tap += 1;
        self.ns
            .ip(&["tuntap", "add", "dev", &name, "mode", "tap"])?;
        self.ns.ip(&["link", "set", &name, "master", bridge])?;
        self.ns.ip(&["link", "set", &name, "up"])?;
        Ok(name)
    }

    /// A further bridge in the site namespace (e.g. an internal network), up, without an address.
    pub fn bridge(&self, name: &str) -> Result<(), LabError> {
        self.ns.ip(&["link", "add", name, "type", "bridge"])?;
        self.ns
            .ip(&["link", "set", name, "type", "bridge", "forward_delay", "0"])?;
        Ok(self.ns.link_up(name)?)
    }

    /// A namespace `lb<role>-<suffix>` joined to `bridge` by a veth pair, its end `eth0` with `address`
    /// (CIDR) and, when given, a default route via `gateway`.
    pub fn attach_namespace(
        &mut self,
        role: &str,
        bridge: &str,
        address: &str,
        gateway: Option<&str>,
    ) -> Result<usize, LabError> {
        let ns = Netns::create(&Site::extra_namespace_name(role, &self.suffix))?;
        let host_end = format!("v{role}");
        netns::veth(&self.ns, &host_end, &ns, "eth0")?;
        self.ns.ip(&["link", "set", &host_end, "master", bridge])?;
        self.ns.ip(&["link", "set", &host_end, "up"])?;
        ns.ip(&["link", "set", "lo", "up"])?;
        ns.ip(&["addr", "add", address, "dev", "eth0"])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        if let Some(gw) = gateway {
            ns.ip(&["route", "add", "default", "via", gw])?;
        }
        self.extra.push(ns);
        Ok(self.extra.len() - 1)
    }

    /// Starts a machine; its taps must exist already (see [`Site::tap`]).
    pub fn start_vm(&mut self, spec: VmSpec) -> Result<usize, LabError> {
        let vm = Vm::start(&self.ns, self.dir.path(), &self.prereqs, spec)?;
        self.vms.push(vm);
        Ok(self.vms.len() - 1)
    }

    /// Every process and namespace of the site, for a state file; then forgets them, so they outlive this
    /// process (nothing is killed or deleted on drop). `lab::state` tears such a site down.
    pub fn detach(self) -> state::SiteRecord {
        let record = state::SiteRecord {
            suffix: self.suffix.clone(),
            dir: self.dir.path().to_owned(),
            pids: self
                .vms
                .iter()
                .map(|v| state::ProcessRecord::new(v.pid(), v.name()))
                .chain(
                    self.server
                        .iter()
                        .map(|s| state::ProcessRecord::new(s.pid(), "lbfleet-server")),
                )
                .chain(self.peers.iter().enumerate().map(|(i, s)| {
                    state::ProcessRecord::new(s.pid(), &format!("lbfleet-server {}", i + 2))
                }))
                .chain(
                    self.processes
                        .iter()
                        .map(|p| state::ProcessRecord::new(p.pid(), "namespace process")),
                )
                .collect(),
            namespaces: self
                .extra
                .iter()
                .map(|n| n.name().to_owned())
                .chain([self.ns.name().to_owned()])
                .collect(),
            notes: Default::default(),
        };
        std::mem::forget(self);
        record
    }

    /// Every console and the server log, for a failure message.
    pub fn report(&self) -> String {
        let mut out = String::new();
        for vm in &self.vms {
            out.push_str(&format!(
                "\n===== console of {} =====\n{}\n",
                vm.name(),
                vm.console()
            ));
        }
        if let Some(s) = &self.server {
            out.push_str(&format!("\n===== server log =====\n{}\n", s.log()));
        }
        for (i, s) in self.peers.iter().enumerate() {
            out.push_str(&format!(
                "\n===== log of server {} ({}) =====\n{}\n",
                i + 2,
                s.address(),
                s.log()
            ));
        }
        out
    }
}

/// Where a site keeps its files: a temporary directory (tests) or a kept one (the demo, under `var/`).
#[derive(Debug)]
pub enum LabDir {
    Temp(tempfile::TempDir),
    Kept(PathBuf),
}

impl LabDir {
    pub fn path(&self) -> &Path {
        match self {
            LabDir::Temp(t) => t.path(),
            LabDir::Kept(p) => p,
        }
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.report());
        }
        // Fields then drop in order: VMs (killed), server (killed), namespaces (deleted).
    }
}

/// For a benchmark's signal handler (Drop does not run on SIGINT/SIGTERM): kills every process inside the
/// namespaces this process created (names ending in `-<pid>x<n>`, see [`unique_suffix`]) by PID and deletes
/// those namespaces. Tests need not call it: their failures unwind and drop.
pub fn cleanup_this_process() {
    let mine = format!("-{}x", std::process::id() % 100_000);
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let ours = name
            .rsplit_once(&mine)
            .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if !ours {
            continue;
        }
        if let Ok(pids) = Command::new("ip").args(["netns", "pids", name]).output() {
            for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        let _ = Command::new("ip").args(["netns", "del", name]).status();
    }
}
