//! A whole virtual site on a [`Site`], built the same way for `make demo` (`lbfleet-lab up`) and for the
//! full-fleet test: lbfleet-server on the boot/external bridge, three real HTTP servers on an internal bridge
//! (each answering with its own name, default gateway = the cluster's internal VIP), a client namespace on the
//! external side, cluster `web` with two pre-registered balancers (active, backup) and a third machine whose
//! MAC nobody registered (it shows up as discovered). Every balancer is a QEMU machine with two NICs: the
//! first on the boot/external bridge, the second on the internal one, where a small DHCP server (busybox
//! udhcpd) gives each balancer an address of its own. The VRRP master holds the VIP on eth0 and the internal
//! VIP on eth1 (NAT: the real servers answer through it); the kernel's connection sync runs on eth0.
//!
//! With [`FleetOptions::second_server`] (`make demo-ha`, the HA site test) a second lbfleet-server runs on the
//! same boot bridge at [`PEER_ADDRESS`], in a namespace of its own, on the first one's database (PostgreSQL):
//! DHCP hot standby between the two, both serving TFTP and HTTP boot, boot scripts naming both. The image is
//! then installed on each with `lbfleet-server image add` (its manifest's digests registered), so either
//! server can also boot a known balancer from its boot cache while the database is down.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::{io_err, Firmware, LabError, Nic, NsProcess, ServerOptions, Site, VmSpec, BOOT_BRIDGE};

/// The second server's address on the boot bridge (a site with [`FleetOptions::second_server`]).
pub const PEER_ADDRESS: &str = "198.18.0.3";
/// The second server's namespace role (`lbsrv2-<suffix>`) and its directory in the site's.
pub const PEER_NAMESPACE_ROLE: &str = "srv2";
pub const PEER_DIR: &str = "server-2";

/// The internal bridge (real servers and the balancers' second NICs).
pub const INTERNAL_BRIDGE: &str = "br1";
pub const CLUSTER: &str = "web";
pub const VIP: &str = "198.18.0.10";
pub const VIP_PORT: u16 = 80;

/// The VIP's socket address (`VIP:VIP_PORT`), as the client asks it.
pub fn vip_addr() -> String {
    format!("{VIP}:{VIP_PORT}")
}
/// The real servers' default gateway, held by the active balancer on its second NIC.
pub const INTERNAL_VIP: &str = "198.18.2.254";
pub const VRID: u32 = 10;
pub const ADVERT_INTERVAL_MS: u32 = 100;
/// The client namespace's address on the external side (outside the VIP range and the DHCP pool).
pub const CLIENT_ADDRESS: &str = "198.18.0.200";
/// The internal network's DHCP server (busybox udhcpd in a namespace of its own): each balancer's second NIC
/// gets an address of its own there, so its health checks reach the real servers while it is a backup and the
/// internal VIP is only ever an extra address.
pub const INTERNAL_DHCP_ADDRESS: &str = "198.18.2.250";
pub const INTERNAL_POOL: (&str, &str) = ("198.18.2.100", "198.18.2.119");
/// Real servers: name (namespace role and what it answers), address, weight.
pub const REAL_SERVERS: [(&str, &str, u32); 3] = [
    ("rs1", "198.18.2.1", 1),
    ("rs2", "198.18.2.2", 2),
    ("rs3", "198.18.2.3", 3),
];
/// Health check of the cluster's service (what the agent's checker polls on each real server).
pub const CHECK_INTERVAL_MS: u32 = 500;
pub const CHECK_FALL: u32 = 2;
pub const CHECK_TIMEOUT_MS: u32 = 400;

/// One balancer machine of the site.
#[derive(Debug, Clone)]
pub struct Balancer {
    /// Hostname registered in lbfleet (empty for the unregistered machine).
    pub hostname: &'static str,
    /// MAC of the boot/external NIC (the one lbfleet knows the node by).
    pub mac: &'static str,
    /// MAC of the internal NIC.
    pub internal_mac: &'static str,
    /// Role in cluster `web`, or `None` for the machine left to discover.
    pub role: Option<&'static str>,
}

pub const BALANCERS: [Balancer; 3] = [
    Balancer {
        hostname: "lb-01",
        mac: "52:54:00:11:00:01",
        internal_mac: "52:54:00:11:01:01",
        role: Some("active"),
    },
    Balancer {
        hostname: "lb-02",
        mac: "52:54:00:11:00:02",
        internal_mac: "52:54:00:11:01:02",
        role: Some("backup"),
    },
    Balancer {
        hostname: "",
        mac: "52:54:00:11:00:03",
        internal_mac: "52:54:00:11:01:03",
        role: None,
    },
];

/// How the fleet site is built.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// A boot image directory (`vmlinuz`, `initrd.img`), registered as the default image.
    pub image_dir: PathBuf,
    /// Extra kernel arguments for the image (besides `console=ttyS0`).
    pub cmdline: String,
    pub server: ServerOptions,
    /// Start the unregistered third machine too.
    pub discovered_machine: bool,
    /// Run a second server at [`PEER_ADDRESS`] on `server.database` (which must be PostgreSQL).
    pub second_server: bool,
}

impl FleetOptions {
    /// The demo's site on `image_dir`: one server with the default options, no extra kernel arguments, no
    /// unregistered machine, no second server.
    pub fn new(image_dir: PathBuf) -> FleetOptions {
        FleetOptions {
            image_dir,
            cmdline: String::new(),
            server: ServerOptions::default(),
            discovered_machine: false,
            second_server: false,
        }
    }
}

/// The cluster `web` as the API takes it.
pub fn cluster_spec() -> Value {
    let real_servers: Vec<Value> = REAL_SERVERS
        .iter()
        .map(|(_, address, weight)| json!({"address": address, "port": 80, "weight": weight}))
        .collect();
    // One VRRP group moves both VIPs: the external one on eth0 and the internal one (the real servers' default
    // gateway) on eth1. The kernel's connection sync runs on eth0, where both balancers have a leased address.
    json!({
        "vrid": VRID, "interface": "eth0", "vrrp_version": 3, "advert_interval_ms": ADVERT_INTERVAL_MS,
        "vips": [format!("{VIP}/32"), {"address": format!("{INTERNAL_VIP}/24"), "interface": "eth1"}],
        "conn_sync": {"interface": "eth0", "sync_id": VRID},
        "services": [{
            "vip": VIP, "port": VIP_PORT, "protocol": "tcp", "scheduler": "wrr", "forward": "nat",
            "check": {"kind": "http", "path": "/healthz", "expect_status": 200,
                      "interval_ms": CHECK_INTERVAL_MS, "timeout_ms": CHECK_TIMEOUT_MS, "rise": 2, "fall": CHECK_FALL},
            "real_servers": real_servers
        }]
    })
}

/// Indexes into the site's namespaces and processes for the parts a caller drives.
#[derive(Debug, Clone, Default)]
pub struct FleetLayout {
    /// `site.extra` index of the client namespace.
    pub client: usize,
    /// `site.extra` index of each real server's namespace (in [`REAL_SERVERS`] order).
    pub real_server_ns: Vec<usize>,
    /// `site.processes` index of each real server's HTTP server.
    pub real_server_process: Vec<usize>,
    /// `site.vms` index of each started machine (in [`BALANCERS`] order).
    pub vms: Vec<usize>,
    /// Each started machine's taps (boot/external, internal), in `vms` order: `ip link set TAP down` in the
    /// site namespace cuts that link.
    pub taps: Vec<(String, String)>,
    /// `site.extra` index of the second server's namespace and its index in `site.peers`.
    pub peer: Option<(usize, usize)>,
}

/// Builds the whole site on `site` (fresh, from `Site::new` or `Site::named`). Machines are started, not
/// waited for.
pub fn build(site: &mut Site, opts: &FleetOptions) -> Result<FleetLayout, LabError> {
    let mut layout = FleetLayout::default();
    site.start_server(opts.server.clone())?;
    if opts.second_server {
        let ns = site.attach_namespace(
            PEER_NAMESPACE_ROLE,
            BOOT_BRIDGE,
            &format!("{PEER_ADDRESS}/15"),
            None,
        )?;
        let peer = site.start_peer(
            ns,
            PEER_DIR,
            ServerOptions {
                address: PEER_ADDRESS.into(),
                boot_interface: "eth0".into(),
                name: Some("server-2".into()),
                ..opts.server.clone()
            },
        )?;
        layout.peer = Some((ns, peer));
    }
    site.bridge(INTERNAL_BRIDGE)?;
    for (name, address, _) in REAL_SERVERS {
        let (ns, process) = add_real_server(site, name, address, INTERNAL_BRIDGE)?;
        layout.real_server_ns.push(ns);
        layout.real_server_process.push(process);
    }
    layout.client =
        site.attach_namespace("client", BOOT_BRIDGE, &format!("{CLIENT_ADDRESS}/15"), None)?;
    let dhcp = site.attach_namespace(
        "idhcp",
        INTERNAL_BRIDGE,
        &format!("{INTERNAL_DHCP_ADDRESS}/24"),
        None,
    )?;
    let process = internal_dhcp(site, dhcp)?;
    site.processes.push(process);

    let server = site.server();
    let cmdline = format!("console=ttyS0 {}", opts.cmdline);
    if opts.second_server {
        for s in std::iter::once(server).chain(&site.peers) {
            s.install_image(&opts.image_dir, cmdline.trim_end(), true)?;
        }
    } else {
        server.add_image_dir(&opts.image_dir, cmdline.trim_end(), true)?;
    }
    server.api_ok(
        "PUT",
        &format!("/clusters/{CLUSTER}"),
        Some(&cluster_spec()),
    )?;
    for b in BALANCERS.iter().filter(|b| b.role.is_some()) {
        server.api_ok(
            "POST",
            "/nodes",
            Some(&json!({"mac": b.mac, "hostname": b.hostname})),
        )?;
        server.api_ok(
            "POST",
            &format!("/nodes/{}/assign", b.hostname),
            Some(&json!({"cluster": CLUSTER, "role": b.role})),
        )?;
    }

    for (i, b) in BALANCERS.iter().enumerate() {
        if b.role.is_none() && !opts.discovered_machine {
            continue;
        }
        let boot_tap = site.tap(BOOT_BRIDGE)?;
        let boot_tap_name = boot_tap.clone();
        let internal_tap = site.tap(INTERNAL_BRIDGE)?;
        let name = if b.hostname.is_empty() {
            format!("unknown-{i}")
        } else {
            b.hostname.to_owned()
        };
        let mut spec = VmSpec::new(
            &name,
            Firmware::BiosIpxe,
            vec![
                Nic {
                    tap: boot_tap,
                    mac: b.mac.to_owned(),
                    boot: true,
                },
                Nic {
                    tap: internal_tap.clone(),
                    mac: b.internal_mac.to_owned(),
                    boot: false,
                },
            ],
        );
        spec.memory_mib = 384;
        layout.vms.push(site.start_vm(spec)?);
        layout.taps.push((boot_tap_name, internal_tap));
    }
    Ok(layout)
}

/// How many lines `/cgi-bin/slow` streams, one every [`SLOW_LINE_MS`]: a TCP session long enough to live
/// through a failover.
pub const SLOW_LINES: u32 = 30;
pub const SLOW_LINE_MS: u32 = 300;

/// A real server `name` at `address` (/24) on `bridge` whose default gateway is [`INTERNAL_VIP`] (NAT): a
/// namespace `lb<name>-<suffix>` running busybox httpd (see [`real_server`]). Returns the indexes of its
/// namespace in `site.extra` and of its HTTP server in `site.processes`.
pub fn add_real_server(
    site: &mut Site,
    name: &str,
    address: &str,
    bridge: &str,
) -> Result<(usize, usize), LabError> {
    let ns = site.attach_namespace(name, bridge, &format!("{address}/24"), Some(INTERNAL_VIP))?;
    let process = real_server(site, ns, name)?;
    site.processes.push(process);
    Ok((ns, site.processes.len() - 1))
}

/// Starts real server `i` (in [`REAL_SERVERS`] order) of a built site again, after a test stopped it.
pub fn restart_real_server(
    site: &mut Site,
    layout: &FleetLayout,
    i: usize,
) -> Result<(), LabError> {
    let (Some(name), Some(&ns), Some(&process)) = (
        REAL_SERVERS.get(i).map(|r| r.0),
        layout.real_server_ns.get(i),
        layout.real_server_process.get(i),
    ) else {
        return Err(LabError::Other(format!("no real server {i}")));
    };
    site.processes[process].kill();
    site.processes[process] = real_server(site, ns, name)?;
    Ok(())
}

/// Serves `name` as `/` (its own name), `/healthz`, and `/cgi-bin/slow` ([`SLOW_LINES`] lines `<name> <i>`,
/// one every [`SLOW_LINE_MS`]) with busybox httpd in the real server's namespace.
fn real_server(site: &Site, ns: usize, name: &str) -> Result<NsProcess, LabError> {
    let root = site.dir.path().join(name);
    let cgi = root.join("cgi-bin");
    std::fs::create_dir_all(&cgi).map_err(io_err(&cgi))?;
    write(&root.join("index.html"), &format!("{name}\n"), 0o644)?;
    write(&root.join("healthz"), "ok\n", 0o644)?;
    let busybox = site.prereqs.busybox.display().to_string();
    write(
        &cgi.join("slow"),
        &format!(
            "#!{busybox} sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n'\n\
             i=1; while [ $i -le {SLOW_LINES} ]; do echo \"{name} $i\"; {busybox} sleep {sleep}; \
             i=$((i + 1)); done\n",
            sleep = f64::from(SLOW_LINE_MS) / 1000.0
        ),
        0o755,
    )?;
    let root_text = root.display().to_string();
    Ok(site.extra[ns].spawn(&[&busybox, "httpd", "-f", "-p", "80", "-h", &root_text])?)
}

/// busybox udhcpd on the internal bridge: leases from [`INTERNAL_POOL`], no router (the balancers' default
/// route stays on the boot network).
fn internal_dhcp(site: &Site, ns: usize) -> Result<NsProcess, LabError> {
    let dir = site.dir.path().join("idhcp");
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let conf = dir.join("udhcpd.conf");
    let leases = dir.join("udhcpd.leases");
    write(&leases, "", 0o644)?;
    write(
        &conf,
        &format!(
            "start {}\nend {}\ninterface eth0\nlease_file {}\npidfile {}\noption subnet 255.255.255.0\n\
             option lease 3600\n",
            INTERNAL_POOL.0,
            INTERNAL_POOL.1,
            leases.display(),
            dir.join("udhcpd.pid").display()
        ),
        0o644,
    )?;
    let busybox = site.prereqs.busybox.display().to_string();
    let conf_text = conf.display().to_string();
    // `-a 200`: udhcpd ARP-pings an address before offering it, 2 s by default; on this small lab network a
    // fifth of that finds a conflict just as well, and the balancers' second NICs get their leases at once.
    Ok(site.extra[ns].spawn(&[&busybox, "udhcpd", "-f", "-a", "200", &conf_text])?)
}

fn write(path: &Path, text: &str, mode: u32) -> Result<(), LabError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).map_err(io_err(path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io_err(path))
}
