//! VM tier: direct server return end to end (issue 23 item 1) in a QEMU guest with Debian's kernel and IPVS.
//!
//! Inside the guest, on one bridge: a balancer namespace `lb` (198.18.0.2) running lbfleet-agent with VRRP
//! (the VIP 198.18.0.10) and a DR service VIP:80 over three real servers (198.18.0.51-.53, weights 1, 2, 3,
//! TCP checks), a client `cl` (198.18.0.200), and the real servers `rs1`-`rs3`, each a TCP echo server
//! configured by the script `lbfleet-server realserver` prints (`fleet::real_server_setup`), run as is with
//! the guest's `sh`. The client's requests to the VIP are answered by the real servers directly: the
//! balancer's IPVS counters show the inbound half only (no outbound packets), the connections follow the
//! weights, and a stopped real server is drained by its check on its own address. A backup balancer `lb2`
//! (198.18.0.3) takes over when `lb`'s link goes down, and DR goes on working through it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use lbfleet_server::fleet::real_server_setup::plan;
use lbfleet_tests::dsr_lab;
use lbfleet_tests::guest::{self, Initramfs, Section, SharedGuest};
use serde_json::json;

const REQUESTS: u64 = 60;

/// The real servers (address, weight).
const REAL_SERVERS: [(&str, u32); 3] = [("198.18.0.51", 1), ("198.18.0.52", 2), ("198.18.0.53", 3)];

/// The same cluster as the operator declares it: what `lbfleet-server realserver` reads.
fn realserver_script() -> String {
    let spec: lbfleet_proto::ClusterSpec = serde_json::from_value(json!({
        "vrid": 51, "interface": "eth0", "vips": ["198.18.0.10/24"],
        "services": [{"vip": "198.18.0.10", "port": 80, "protocol": "tcp", "scheduler": "wrr",
                      "forward": "dr", "real_servers": [
                          {"address": "198.18.0.51", "port": 80, "weight": 1},
                          {"address": "198.18.0.52", "port": 80, "weight": 2},
                          {"address": "198.18.0.53", "port": 80, "weight": 3}]}]
    }))
    .unwrap();
    plan("ext", &spec).script()
}

const SCRIPT: &str = r#"
# Busybox's shell runs its own applets before anything on PATH; iproute2's ip by path here (the real
# servers' script runs with whatever `ip` its shell finds, as on a real server).
ip() { /usr/local/sbin/ip "$@"; }
. /lib/guest-lib.sh
export RUST_LOG=info
mount -t tmpfs tmpfs /run
lbipvs() { ip netns exec lb ipvsadm "$@"; }

ip link add br0 type bridge
ip link set br0 up
n=0
for ns in lb lb2 cl rs1 rs2 rs3; do
  ip netns add $ns
  ip link add v$ns type veth peer name eth0 netns $ns
  ip link set v$ns master br0 up
  ip -n $ns link set lo up
  ip -n $ns link set eth0 up
done
ip -n lb addr add 198.18.0.2/24 dev eth0
ip -n lb2 addr add 198.18.0.3/24 dev eth0
ip -n cl addr add 198.18.0.200/24 dev eth0
for i in 1 2 3; do
  ip -n rs$i addr add 198.18.0.5$i/24 dev eth0
  ip netns exec rs$i guest-tcp echo-server 0.0.0.0:80 > /tmp/rs$i.log 2>&1 &
  waitfor /tmp/rs$i.log listening
done
# One connection through the VIP, one line echoed: prints "exchange 0: ok".
request() { ip netns exec cl guest-tcp hold 198.18.0.10:80 2>&1; }

# The real servers: `lbfleet-server realserver`'s script, as is, on each.
for i in 1 2 3; do run rs_setup$i ip netns exec rs$i sh /rs.sh up; done
run rs_lo ip -n rs1 -4 addr show dev lo
run rs_sysctl ip netns exec rs1 sysctl net.ipv4.conf.all.arp_ignore net.ipv4.conf.all.arp_announce

ip netns exec lb lbfleet-agent apply --role /lb.json --watch --resync 1s --state-dir /tmp/slb > /tmp/lb.log 2>&1 &
waitfor /tmp/lb.log "to=Master"
# The backup, started once lb is master (so it never holds the VIP for a moment at startup).
ip netns exec lb2 lbfleet-agent apply --role /lb2.json --watch --resync 1s --state-dir /tmp/slb2 > /tmp/lb2.log 2>&1 &
waitfor /tmp/lb2.log "to=Backup"
# Every real server in the table with its weight (checks passed).
i=0
while [ "$(lbipvs -Ln | awk '$3 == "Route" && $4 > 0' | wc -l)" -lt 3 ]; do
  i=$((i+1)); if [ $i -gt 300 ]; then echo "TIMEOUT waiting for three weighted real servers"; break; fi
  sleep 0.1
done
run ipvs_before lbipvs -Ln
run lb_addr ip -n lb -4 addr show dev eth0
run first_request request

run requests count_answers 60
wait_conns lb 60
run ipvs_stats lbipvs -Ln --stats
run client_neigh ip -n cl neigh show 198.18.0.10

# A stopped real server: its check (on its own address) fails and the balancer drains it.
kill $(ip netns pids rs3)
i=0
while ! lbipvs -Ln | grep -q '198.18.0.53:80 *Route *0 '; do
  i=$((i+1)); if [ $i -gt 300 ]; then echo "TIMEOUT waiting for the drain"; break; fi
  sleep 0.1
done
run ipvs_drained lbipvs -Ln
run requests_drained count_answers 10

# A VRRP failover keeps DR working: lb's link goes down, lb2 takes the VIP (and announces it), and the real
# servers go on answering the client directly, now for lb2.
failover

run rs_down ip netns exec rs1 sh /rs.sh down
run rs_lo_after ip -n rs1 -4 addr show dev lo
run lb_log cat /tmp/lb.log
run lb2_log cat /tmp/lb2.log
"#;

static GUEST: SharedGuest = SharedGuest::new();

fn section(name: &str) -> Option<Section> {
    let out = GUEST.output(
        |prereqs| {
            let agent = guest::workspace_binary("lbfleet-agent", "lbfleet-agent")?;
            let tcp = std::path::PathBuf::from(env!("CARGO_BIN_EXE_guest-tcp"));
            let mut img = Initramfs::with_modules(prereqs, &["veth", "bridge", "af_packet"])?;
            img.iproute2()?;
            img.binary(&agent, "/usr/bin/lbfleet-agent")?;
            img.binary(&tcp, "/usr/bin/guest-tcp")?;
            img.file(
                "/lb.json",
                &dsr_lab::balancer_role("lb", 150, "dr", &REAL_SERVERS),
            );
            img.file(
                "/lb2.json",
                &dsr_lab::balancer_role("lb2", 100, "dr", &REAL_SERVERS),
            );
            img.file("/rs.sh", realserver_script().as_bytes());
            img.script(&format!("{}{SCRIPT}", dsr_lab::SHELL));
            Ok(img)
        },
        "lbfleet-guest-dr-console.log",
    )?;
    Some(out.require_section(name))
}

fn log() -> String {
    section("lb_log").map(|s| s.text).unwrap_or_default()
}

fn log2() -> String {
    section("lb2_log").map(|s| s.text).unwrap_or_default()
}

#[test]
fn the_realserver_script_runs_as_is_on_the_real_servers() {
    let Some(s) = section("rs_setup1") else {
        return;
    };
    for i in 1..=3 {
        let s = section(&format!("rs_setup{i}")).unwrap();
        assert_eq!(s.rc, 0, "rs{i}: {}", s.text);
    }
    assert_eq!(s.rc, 0);
    let lo = section("rs_lo").unwrap();
    assert!(lo.text.contains("198.18.0.10/32"), "{}", lo.text);
    let sysctl = section("rs_sysctl").unwrap();
    assert!(
        sysctl.text.contains("arp_ignore = 1") && sysctl.text.contains("arp_announce = 2"),
        "{}",
        sysctl.text
    );
    let down = section("rs_down").unwrap();
    assert_eq!(down.rc, 0, "{}", down.text);
    let after = section("rs_lo_after").unwrap();
    assert!(!after.text.contains("198.18.0.10"), "{}", after.text);
}

#[test]
fn requests_through_the_vip_are_answered_directly_by_the_real_servers_by_weight() {
    let Some(first) = section("first_request") else {
        return;
    };
    assert!(
        first.text.contains("exchange 0: ok"),
        "{}\n{}",
        first.text,
        log()
    );
    let req = section("requests").unwrap();
    assert_eq!(
        req.text.trim(),
        format!("answered {REQUESTS} of {REQUESTS}"),
        "{}\n{}",
        section("ipvs_before").unwrap().text,
        log()
    );
    let stats = section("ipvs_stats").unwrap().text;
    let (conns, out_pkts) = dsr_lab::stats_of(&stats, "198.18.0.10:80");
    assert!(conns >= REQUESTS, "{stats}");
    // DR: the replies never pass the balancer.
    assert_eq!(out_pkts, 0, "the balancer saw outbound packets:\n{stats}");
    let per: Vec<u64> = ["198.18.0.51:80", "198.18.0.52:80", "198.18.0.53:80"]
        .iter()
        .map(|k| dsr_lab::stats_of(&stats, k).0)
        .collect();
    // wrr 1:2:3 over 61 new connections (the first request and 60 more): about 10, 20, 30.
    assert_eq!(per.iter().sum::<u64>(), conns, "{stats}");
    assert!(
        per[0] < per[1] && per[1] < per[2],
        "weights 1:2:3, got {per:?}\n{stats}"
    );
    assert!(
        per[0].abs_diff(REQUESTS / 6) <= 2 && per[2].abs_diff(REQUESTS / 2) <= 2,
        "{per:?}"
    );
}

#[test]
fn a_stopped_real_server_is_drained_by_its_own_check() {
    let Some(drained) = section("ipvs_drained") else {
        return;
    };
    let line = drained
        .text
        .lines()
        .find(|l| l.contains("198.18.0.53:80"))
        .unwrap_or_else(|| panic!("{}", drained.text));
    assert_eq!(
        line.split_whitespace().nth(3),
        Some("0"),
        "{}\n{}",
        drained.text,
        log()
    );
    let req = section("requests_drained").unwrap();
    assert_eq!(req.text.trim(), "answered 10 of 10", "{}", req.text);
}

#[test]
fn a_vrrp_failover_keeps_dr_working() {
    let Some(req) = section("requests_failover") else {
        return;
    };
    let stats = section("ipvs2_stats").unwrap().text;
    dsr_lab::assert_failover_kept_working(&req.text, &stats, &format!("{}\n{}", log(), log2()));
}
