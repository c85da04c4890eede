//! VM tier: IPVS connection sync. A TCP session opened through the VIP via the VRRP master keeps working
//! after the master's links are cut and the backup takes the VIP, because the kernel's sync daemon (run by
//! the agent, master on the MASTER and backup on the BACKUP) copied the connection to the backup. The
//! negative control runs the same scenario with `conn_sync` off: the backup never heard of the session, so
//! the client's next segment reaches a node with no connection entry and the session breaks.
//!
//! Lab (one per scenario, `lab::Site` namespaces, all names with a per-lab suffix):
//! ```text
//!   client ns 198.18.0.100 --br0 (external)-- eth0 guest A 198.18.0.2  (priority 150)
//!                                        \--- eth0 guest B 198.18.0.3  (priority 100)
//!   real server ns 198.18.2.1:8080 --br1 (internal)-- eth1 of A (198.18.2.250) and B (198.18.2.251)
//! ```
//! Both guests boot Debian's kernel under TCG with a test initramfs (ip_vs, virtio-net, the agent) and run
//! `lbfleet-agent apply --role ... --watch` standalone: VRRPv3 on eth0 with VIP 198.18.0.10 and the internal
//! VIP 198.18.2.254 on eth1 (the real server's default gateway), one NAT service 198.18.0.10:80 -> 198.18.2.1:8080,
//! and with `conn_sync` the sync daemon on eth1. Each guest prints its VRRP state, its sync daemons and its
//! number of ESTABLISHED connections through the VIP on the console whenever they change; the test reads
//! those lines. A client in its namespace chats with an echo server through the VIP, a line every 100 ms.
//! "Cutting the master's links" sets both of A's taps down on the host side: the node is gone from both
//! networks (its agent still believes it is master, as a node behind a dead switch port would).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use lbfleet_proto::{
    CheckKind, ConnSyncSpec, ForwardMethod, GarpSpec, HealthCheck, Protocol, RealServer, Role,
    RoleDocument, Scheduler, VipSpec, VirtualService, VrrpConfig,
};
use lbfleet_tests::guest::{self, Initramfs, RunningGuest};
use lbfleet_tests::lab::{self, wait, Netns, Site};
use lbfleet_tests::vrrp_lab::{INTERNAL_VIP, VIP};

const CLIENT: &str = "198.18.0.100";
const REAL_SERVER: &str = "198.18.2.1";
const ECHO_PORT: u16 = 8080;
const SYNC_ID: u8 = 12;
/// 1 s adverts: a TCG guest on a loaded host can stall for a fraction of a second; with 100 ms adverts that
/// could look like a dead master and fail over falsely. The sync behaviour does not depend on the interval.
const ADVERT_MS: u32 = 1000;
/// Exchanges that must succeed through the new master after the failover.
const AFTER_FAILOVER: usize = 20;

fn role(node: &str, priority: u8, sync: bool) -> RoleDocument {
    RoleDocument {
        reboot_generation: 0,
        generation: 1,
        node: node.into(),
        cluster: Some("ext".into()),
        role: Some(if priority > 100 {
            Role::Active
        } else {
            Role::Backup
        }),
        vrrp: Some(VrrpConfig {
            version: 3,
            vrid: 51,
            interface: "eth0".into(),
            priority,
            advert_interval_ms: ADVERT_MS,
            preempt: true,
            preempt_delay_ms: 0,
            vips: vec![
                VipSpec::new(format!("{VIP}/32")),
                VipSpec {
                    address: format!("{INTERNAL_VIP}/24"),
                    interface: Some("eth1".into()),
                },
            ],
            unicast_peers: vec![],
            garp: GarpSpec::default(),
            conn_sync: sync.then(|| ConnSyncSpec {
                interface: "eth1".into(),
                sync_id: SYNC_ID,
            }),
        }),
        services: vec![VirtualService {
            vip: VIP.parse().unwrap(),
            port: 80,
            protocol: Protocol::Tcp,
            scheduler: Scheduler::Wrr,
            forward: ForwardMethod::Nat,
            persistence_s: 0,
            persistence_prefix: None,
            // No checks: the scenario is about sync, not health (one real server, always up).
            check: HealthCheck {
                kind: CheckKind::None,
                ..HealthCheck::tcp()
            },
            real_servers: vec![RealServer {
                address: REAL_SERVER.parse().unwrap(),
                port: ECHO_PORT,
                weight: 1,
                enabled: true,
            }],
        }],
    }
}

/// The guest's `/test.sh`: addresses, forwarding, the agent, then a bounded watch loop that prints what the
/// test waits for (`lbtest: state|daemon|conns ...`) whenever it changes.
const SCRIPT: &str = r#"
node=a
case " $(cat /proc/cmdline) " in *" lbtest.node=b "*) node=b ;; esac
if [ $node = a ]; then ext=198.18.0.2; int=198.18.2.250; else ext=198.18.0.3; int=198.18.2.251; fi
mount -t tmpfs tmpfs /run
ip link set eth0 up
ip link set eth1 up
ip addr add $ext/24 dev eth0
ip addr add $int/24 dev eth1
sysctl -w net.ipv4.ip_forward=1 > /dev/null
echo "lbtest: node $node up"
export RUST_LOG=info NO_COLOR=1
lbfleet-agent apply --role /role-$node.json --watch --resync 2s --state-dir /run/lbfleet > /tmp/agent.log 2>&1 &
# The agent's log on the console, for a failure report.
tail -f /tmp/agent.log | grep -v "role file applied" &
state=x; daemon=x; conns=x; i=0
while [ $i -lt 3000 ]; do
  s=$(grep -o '"vrrp_state": *"[a-z]*"' /run/lbfleet/status.json 2>/dev/null | cut -d'"' -f4)
  d=$(ipvsadm -L --daemon 2>/dev/null | tr '\n' ' ')
  c=$(ipvsadm -Lnc 2>/dev/null | grep ESTABLISHED | grep -c '198.18.0.10:80')
  if [ "$s" != "$state" ]; then state=$s; echo "lbtest: state ${s:-none}"; fi
  if [ "$d" != "$daemon" ]; then daemon=$d; echo "lbtest: daemon ${d:-none}"; fi
  if [ "$c" != "$conns" ]; then conns=$c; echo "lbtest: conns $c"; ipvsadm -Lnc; fi
  i=$((i+1))
  sleep 0.2
done
echo "lbtest: watch loop ended"
"#;

/// One booted pair and its lab; dropping it kills the guests and the processes, then deletes the namespaces.
struct Pair {
    // Drop order: guests and processes before the site's namespaces.
    a: RunningGuest,
    b: RunningGuest,
    client: Option<lbfleet_tests::netns::NsProcess>,
    /// A's taps (external, internal) in the site namespace.
    a_taps: Vec<String>,
    site: Site,
    _initrd: tempfile::TempDir,
}

impl Pair {
    fn report(&self) -> String {
        format!(
            "===== console of A =====\n{}\n===== console of B =====\n{}\n===== client =====\n{}",
            self.a.console(),
            self.b.console(),
            self.client_log()
        )
    }

    fn client_log(&self) -> String {
        std::fs::read_to_string(self.site.dir.path().join("client.log")).unwrap_or_default()
    }

    fn client_ok(&self) -> usize {
        self.client_log()
            .lines()
            .filter(|l| l.ends_with(": ok"))
            .count()
    }

    fn client_failed(&self) -> Option<String> {
        self.client_log()
            .lines()
            .find(|l| l.contains("FAILED"))
            .map(str::to_owned)
    }

    /// Waits for `what`, failing with both consoles and the client's log.
    fn wait(&self, what: &str, timeout: Duration, mut cond: impl FnMut(&Pair) -> bool) {
        if let Err(e) = wait::until(what, wait::scaled(timeout), || cond(self).then_some(())) {
            panic!("{e}\n{}", self.report());
        }
    }

    fn ns(&self, index: usize) -> &Netns {
        &self.site.extra[index]
    }
}

/// The last value the guest printed as `lbtest: KEY VALUE` (the watch loop prints on change).
fn last(console: &str, key: &str) -> Option<String> {
    let prefix = format!("lbtest: {key} ");
    console
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix(prefix.as_str()))
        .map(str::to_owned)
}

fn mac(guest: u8, nic: u8) -> String {
    format!("52:54:00:12:c{guest}:0{nic}")
}

/// Builds the lab, boots both guests and waits until A is master and B backup (with their sync daemons when
/// `sync`), the echo server listens, and the client has chatted through A for a while.
fn start_pair(guest_prereqs: &guest::Prereqs, lab_prereqs: lab::LabPrereqs, sync: bool) -> Pair {
    let agent = guest::workspace_binary("lbfleet-agent", "lbfleet-agent").unwrap();
    let tcp = PathBuf::from(env!("CARGO_BIN_EXE_guest-tcp"));
    let mut img = Initramfs::with_modules(guest_prereqs, &["virtio_pci", "virtio_net"]).unwrap();
    img.binary(&agent, "/usr/bin/lbfleet-agent").unwrap();
    img.file(
        "/role-a.json",
        &serde_json::to_vec(&role("lb-a", 150, sync)).unwrap(),
    );
    img.file(
        "/role-b.json",
        &serde_json::to_vec(&role("lb-b", 100, sync)).unwrap(),
    );
    img.script(SCRIPT);
    let (initrd, initrd_dir) = img.write().unwrap();

    let mut site = Site::new(lab_prereqs).unwrap();
    site.bridge("br1").unwrap();
    for br in [lab::BOOT_BRIDGE, "br1"] {
        // A plain switch: multicast (VRRP adverts, IPVS sync messages) floods to every port.
        site.ns
            .ip(&["link", "set", br, "type", "bridge", "mcast_snooping", "0"])
            .unwrap();
    }
    let taps: Vec<String> = [lab::BOOT_BRIDGE, "br1", lab::BOOT_BRIDGE, "br1"]
        .iter()
        .map(|br| site.tap(br).unwrap())
        .collect();
    let client_ns = site
        .attach_namespace("cl", lab::BOOT_BRIDGE, &format!("{CLIENT}/24"), None)
        .unwrap();
    let rs_ns = site
        .attach_namespace(
            "rs",
            "br1",
            &format!("{REAL_SERVER}/24"),
            Some(INTERNAL_VIP),
        )
        .unwrap();
    assert_eq!((client_ns, rs_ns), (0, 1));
    let echo = site.extra[rs_ns]
        .spawn(&[
            tcp.to_str().unwrap(),
            "echo-server",
            &format!("0.0.0.0:{ECHO_PORT}"),
        ])
        .unwrap();
    site.processes.push(echo);

    let boot = |node: &str, n: u8| {
        let mut args = Vec::new();
        for (i, tap) in taps[usize::from(n) * 2..usize::from(n) * 2 + 2]
            .iter()
            .enumerate()
        {
            args.extend([
                "-netdev".to_owned(),
                format!("tap,id=n{i},ifname={tap},script=no,downscript=no"),
                "-device".to_owned(),
                format!(
                    "virtio-net-pci,netdev=n{i},mac={},romfile=",
                    mac(n, i as u8)
                ),
            ]);
        }
        RunningGuest::start_in_netns(
            &site.ns,
            guest_prereqs,
            &guest_prereqs.kernel,
            &initrd,
            &format!(
                "{} panic=-1 quiet loglevel=3 lbtest.node={node}",
                lab::KERNEL_ARGS
            ),
            &args,
        )
        .unwrap()
    };
    let a = boot("a", 0);
    let b = boot("b", 1);
    let pair = Pair {
        a,
        b,
        client: None,
        a_taps: taps[..2].to_vec(),
        site,
        _initrd: initrd_dir,
    };
    let started = Instant::now();
    pair.wait("A master and B backup", Duration::from_secs(240), |p| {
        last(&p.a.console(), "state").as_deref() == Some("master")
            && last(&p.b.console(), "state").as_deref() == Some("backup")
    });
    eprintln!("pair elected {:?} after QEMU started", started.elapsed());
    if sync {
        pair.wait("the sync daemons", Duration::from_secs(30), |p| {
            last(&p.a.console(), "daemon").is_some_and(|d| d.contains("master sync daemon"))
                && last(&p.b.console(), "daemon").is_some_and(|d| d.contains("backup sync daemon"))
        });
    }
    pair.wait("the echo server listening", Duration::from_secs(30), |p| {
        p.ns(rs_ns)
            .exec(&["ss", "-ltnH", &format!("sport = :{ECHO_PORT}")])
            .is_ok_and(|o| !o.stdout.is_empty())
    });
    pair
}

/// Starts the client's chat through the VIP and waits until it runs through A.
fn start_client(pair: &mut Pair) {
    let tcp = PathBuf::from(env!("CARGO_BIN_EXE_guest-tcp"));
    let dir = pair.site.dir.path();
    let log = dir.join("client.log");
    let stop = dir.join("client.stop");
    // `sh -c 'exec ...'`: the PID stays the client's own, and its output goes to the log file.
    let cmd = format!(
        "exec {} chat {VIP}:80 100 3000 {} > {} 2>&1",
        tcp.display(),
        stop.display(),
        log.display()
    );
    let client = pair.ns(0).spawn(&["sh", "-c", &cmd]).unwrap();
    pair.client = Some(client);
    pair.wait("10 exchanges through A", Duration::from_secs(30), |p| {
        p.client_ok() >= 10 || p.client_failed().is_some()
    });
    assert_eq!(pair.client_failed(), None, "{}", pair.report());
    pair.wait("the session's entry on A", Duration::from_secs(20), |p| {
        last(&p.a.console(), "conns").as_deref() == Some("1")
    });
}

/// Cuts both of A's links on the host side and waits until B is master.
fn cut_master(pair: &Pair) {
    for tap in &pair.a_taps {
        pair.site.ns.ip(&["link", "set", tap, "down"]).unwrap();
    }
    let cut = Instant::now();
    pair.wait("B takes over as master", Duration::from_secs(60), |p| {
        last(&p.b.console(), "state").as_deref() == Some("master")
    });
    eprintln!("B master {:?} after the cut", cut.elapsed());
}

/// Waits until the chat either made `AFTER_FAILOVER` more exchanges or failed; returns the failure line.
fn chat_after_failover(pair: &Pair) -> Option<String> {
    let ok_at_failover = pair.client_ok();
    pair.wait(
        "the session to go on or break after the failover",
        Duration::from_secs(90),
        |p| p.client_ok() >= ok_at_failover + AFTER_FAILOVER || p.client_failed().is_some(),
    );
    std::fs::write(pair.site.dir.path().join("client.stop"), b"").unwrap();
    pair.wait("the chat summary", Duration::from_secs(40), |p| {
        p.client_log().contains("chat done:")
    });
    eprintln!(
        "client: {}",
        pair.client_log().lines().last().unwrap_or_default()
    );
    pair.client_failed()
}

/// A new connection through the VIP after the failover: B serves the VIP (so a broken old session is
/// about the missing connection entry, not a failed takeover).
fn fresh_connection_works(pair: &Pair) {
    let tcp = PathBuf::from(env!("CARGO_BIN_EXE_guest-tcp"));
    let out = pair
        .ns(0)
        .command(tcp.to_str().unwrap())
        .args(["hold", &format!("{VIP}:80")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("exchange 0: ok"),
        "a new connection through the VIP via B failed: {text}{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        pair.report()
    );
}

fn prerequisites() -> Option<(guest::Prereqs, lab::LabPrereqs)> {
    let g = guest::require()?;
    let l = lab::require()?;
    Some((g, l))
}

#[test]
fn a_session_through_the_vip_survives_failover_with_conn_sync() {
    let Some((g, l)) = prerequisites() else {
        return;
    };
    let start = Instant::now();
    let mut pair = start_pair(&g, l, true);
    start_client(&mut pair);
    // The backup holds a copy of the session before the master goes (the sync daemon sends within ~2 s).
    pair.wait("the session synced to B", Duration::from_secs(30), |p| {
        last(&p.b.console(), "conns").as_deref() == Some("1")
    });
    cut_master(&pair);
    let failed = chat_after_failover(&pair);
    assert_eq!(
        failed,
        None,
        "the session broke although B had its connection entry\n{}",
        pair.report()
    );
    fresh_connection_works(&pair);
    let _ = std::fs::write(
        std::env::temp_dir().join("lbfleet-vrrp-conn-sync.log"),
        pair.report(),
    );
    eprintln!("conn sync scenario took {:?}", start.elapsed());
}

#[test]
fn negative_control_without_conn_sync_the_session_breaks() {
    let Some((g, l)) = prerequisites() else {
        return;
    };
    let start = Instant::now();
    let mut pair = start_pair(&g, l, false);
    start_client(&mut pair);
    // No sync daemon ran on either node, and B has no entry for the session.
    for (name, console) in [("A", pair.a.console()), ("B", pair.b.console())] {
        let daemon = last(&console, "daemon");
        assert!(
            daemon
                .as_deref()
                .is_some_and(|d| !d.contains("sync daemon")),
            "{name} runs a sync daemon without conn_sync: {daemon:?}\n{}",
            pair.report()
        );
    }
    assert_eq!(last(&pair.b.console(), "conns").as_deref(), Some("0"));
    cut_master(&pair);
    let failed = chat_after_failover(&pair);
    assert!(
        failed.is_some(),
        "without conn_sync the session survived the failover, so the sync test proves nothing\n{}",
        pair.report()
    );
    fresh_connection_works(&pair);
    eprintln!(
        "negative control took {:?}: {}",
        start.elapsed(),
        failed.unwrap_or_default()
    );
}

#[test]
fn last_reads_the_latest_watch_line() {
    let console = "lbtest: state backup\r\nnoise\nlbtest: state master\nlbtest: conns 1\n";
    assert_eq!(last(console, "state").as_deref(), Some("master"));
    assert_eq!(last(console, "conns").as_deref(), Some("1"));
    assert_eq!(last(console, "daemon"), None);
}
