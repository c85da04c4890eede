//! A whole virtual site on a [`Site`], built the same way for `make demo` (`lbfleet-lab up`) and for the
//! full-fleet test: lbfleet-server on the boot/external bridge, three real HTTP servers on an internal bridge
//! (each answering with its own name, default gateway = the cluster's internal VIP), a client namespace on the
//! external side, cluster `web` with two pre-registered balancers (active, backup) and a third machine whose
//! MAC nobody registered (it shows up as discovered). Every balancer is a QEMU machine with two NICs: the
//! first on the boot/external bridge, the second on the internal one.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::{
    io_err, net::NsProcess, Firmware, LabError, Nic, ServerOptions, Site, VmSpec, BOOT_BRIDGE,
};

/// The internal bridge (real servers and the balancers' second NICs).
pub const INTERNAL_BRIDGE: &str = "br1";
pub const CLUSTER: &str = "web";
pub const VIP: &str = "198.18.0.10";
pub const VIP_PORT: u16 = 80;
/// The real servers' default gateway, held by the active balancer on its second NIC.
pub const INTERNAL_VIP: &str = "198.18.2.254";
pub const VRID: u32 = 10;
pub const ADVERT_INTERVAL_MS: u32 = 100;
/// The client namespace's address on the external side (outside the VIP range and the DHCP pool).
pub const CLIENT_ADDRESS: &str = "198.18.0.200";
/// Real servers: name (namespace role and what it answers), address, weight.
pub const REAL_SERVERS: [(&str, &str, u32); 3] = [
    ("rs1", "198.18.2.1", 1),
    ("rs2", "198.18.2.2", 2),
    ("rs3", "198.18.2.3", 3),
];
/// Health check of the cluster's service (what the agent's checker polls on each real server).
pub const CHECK_INTERVAL_MS: u32 = 500;
pub const CHECK_FALL: u32 = 2;

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
}

/// The cluster `web` as the API takes it.
pub fn cluster_spec() -> Value {
    let real_servers: Vec<Value> = REAL_SERVERS
        .iter()
        .map(|(_, address, weight)| json!({"address": address, "port": 80, "weight": weight}))
        .collect();
    // TODO(issue-12a): once VIPs may name their own interface and connection sync is in the spec, add the
    // internal VIP {"address": "198.18.2.254/24", "interface": "eth1"} and sync on eth1.
    json!({
        "vrid": VRID, "interface": "eth0", "vrrp_version": 3, "advert_interval_ms": ADVERT_INTERVAL_MS,
        "preempt": false,
        "vips": [format!("{VIP}/32")],
        "services": [{
            "vip": VIP, "port": VIP_PORT, "protocol": "tcp", "scheduler": "wrr", "forward": "nat",
            "check": {"kind": "http", "path": "/healthz", "expect_status": 200,
                      "interval_ms": CHECK_INTERVAL_MS, "timeout_ms": 400, "rise": 2, "fall": CHECK_FALL},
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
}

/// Builds the whole site on `site` (fresh, from `Site::new` or `Site::named`). Machines are started, not
/// waited for.
pub fn build(site: &mut Site, opts: &FleetOptions) -> Result<FleetLayout, LabError> {
    let mut layout = FleetLayout::default();
    site.start_server(opts.server.clone())?;
    site.bridge(INTERNAL_BRIDGE)?;
    for (name, address, _) in REAL_SERVERS {
        let ns = site.attach_namespace(
            name,
            INTERNAL_BRIDGE,
            &format!("{address}/24"),
            Some(INTERNAL_VIP),
        )?;
        layout.real_server_ns.push(ns);
        let process = real_server(site, ns, name)?;
        site.processes.push(process);
        layout.real_server_process.push(site.processes.len() - 1);
    }
    layout.client =
        site.attach_namespace("client", BOOT_BRIDGE, &format!("{CLIENT_ADDRESS}/15"), None)?;

    let server = site.server();
    server.add_image_dir(
        &opts.image_dir,
        format!("console=ttyS0 {}", opts.cmdline).trim_end(),
        true,
    )?;
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
                    tap: internal_tap,
                    mac: b.internal_mac.to_owned(),
                    boot: false,
                },
            ],
        );
        spec.memory_mib = 384;
        layout.vms.push(site.start_vm(spec)?);
    }
    Ok(layout)
}

/// Serves `name` as `/` (its own name), `/healthz`, and `/cgi-bin/slow` (ten lines, one every 300 ms: a long
/// TCP session) with busybox httpd in the real server's namespace.
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
             for i in 1 2 3 4 5 6 7 8 9 10; do echo \"{name} $i\"; {busybox} sleep 0.3; done\n"
        ),
        0o755,
    )?;
    let root_text = root.display().to_string();
    site.extra[ns].spawn(&[&busybox, "httpd", "-f", "-p", "80", "-h", &root_text])
}

fn write(path: &Path, text: &str, mode: u32) -> Result<(), LabError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).map_err(io_err(path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io_err(path))
}
