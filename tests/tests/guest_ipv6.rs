//! VM tier: a dual-stack cluster's IPv6 services end to end (issue 23 item 3) in a QEMU guest with Debian's
//! kernel and IPVS.
//!
//! Inside the guest: a balancer namespace `lb` running lbfleet-agent with a dual-stack cluster (VRRP over
//! IPv4, the VIPs 198.18.0.10/24 and 2001:2::10/64 both held) and three IPv6 services on 2001:2::10: DR on
//! port 80 over `rs1`/`rs2` (2001:2::51, ::52 on the balancer's segment, weights 1 and 2, TCP checks, each
//! configured by `lbfleet-server realserver`'s script run as is), and NAT on ports 9000 (TCP echo, TCP check)
//! and 8080 (HTTP, HTTP check) over `rs3` (2001:2:1::1) on an internal segment routed through the balancer
//! (2001:2:1::254, IPv6 forwarding on). A client `cl` (2001:2::200) connects to the VIP: DR replies come
//! from the real servers directly (IPVS OutPkts 0), NAT replies through the balancer; a failing HTTP check
//! over IPv6 drains its real server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use lbfleet_server::fleet::real_server_setup::plan;
use lbfleet_tests::guest::{self, Initramfs, Section, SharedGuest};
use serde_json::json;

const REQUESTS: u64 = 30;

fn services() -> serde_json::Value {
    let rs = |a: &str, port: u16, w: u32| json!({"address": a, "port": port, "weight": w, "enabled": true});
    let check = |kind: &str| {
        json!({"kind": kind, "interval_ms": 200, "timeout_ms": 200, "rise": 1, "fall": 2,
               "jitter_ms": 0, "path": "/healthz", "expect_status": 200})
    };
    let svc = |port: u16, forward: &str, check, servers| {
        json!({"vip": "2001:2::10", "port": port, "protocol": "tcp", "scheduler": "wrr",
               "forward": forward, "persistence_s": 0, "check": check, "real_servers": servers})
    };
    json!([
        svc(
            80,
            "dr",
            check("tcp"),
            json!([rs("2001:2::51", 80, 1), rs("2001:2::52", 80, 2)])
        ),
        svc(
            9000,
            "nat",
            check("tcp"),
            json!([rs("2001:2:1::1", 9000, 1)])
        ),
        svc(
            8080,
            "nat",
            check("http"),
            json!([rs("2001:2:1::1", 8080, 1)])
        ),
    ])
}

fn role() -> Vec<u8> {
    serde_json::to_vec(&json!({
        "generation": 1, "node": "lb", "cluster": "ext", "role": "active",
        "vrrp": {"version": 3, "vrid": 51, "interface": "eth0", "priority": 150,
                 "advert_interval_ms": 100, "preempt": true,
                 "vips": ["198.18.0.10/24", "2001:2::10/64"],
                 "unicast_peers": [], "garp": {"count": 2, "spacing_ms": 50, "refresh_ms": 0}},
        "services": services()
    }))
    .unwrap()
}

/// The cluster as the operator declares it (the rules accept it: checked here), for `realserver`.
fn realserver_script() -> String {
    let mut services = services();
    for s in services.as_array_mut().unwrap() {
        s.as_object_mut().unwrap().remove("check");
        s.as_object_mut().unwrap().remove("persistence_s");
        for r in s["real_servers"].as_array_mut().unwrap() {
            r.as_object_mut().unwrap().remove("enabled");
        }
    }
    let spec: lbfleet_proto::ClusterSpec = serde_json::from_value(json!({
        "vrid": 51, "interface": "eth0", "vips": ["198.18.0.10/24", "2001:2::10/64"],
        "services": services
    }))
    .unwrap();
    lbfleet_server::fleet::rules::cluster_spec(&spec).expect("a valid dual-stack cluster");
    plan("ext", &spec).script()
}

const SCRIPT: &str = r#"
ip() { /usr/local/sbin/ip "$@"; }
. /lib/guest-lib.sh
export RUST_LOG=info
mount -t tmpfs tmpfs /run
lbipvs() { ip netns exec lb ipvsadm "$@"; }

ip link add br0 type bridge
ip link add br1 type bridge
ip link set br0 up
ip link set br1 up
for ns in lb cl rs1 rs2 rs3; do
  ip netns add $ns
  # No duplicate address detection: addresses usable at once (and inherited by the links made next).
  ip netns exec $ns sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
  br=br0; [ $ns = rs3 ] && br=br1
  ip link add v$ns type veth peer name eth0 netns $ns
  ip link set v$ns master $br up
  ip -n $ns link set lo up
  ip -n $ns link set eth0 up
done
ip link add vlb1 type veth peer name eth1 netns lb
ip link set vlb1 master br1 up
ip -n lb link set eth1 up
ip -n lb addr add 198.18.0.2/24 dev eth0
ip -n lb addr add 2001:2::2/64 dev eth0 nodad
ip -n lb addr add 2001:2:1::254/64 dev eth1 nodad
ip netns exec lb sysctl -qw net.ipv6.conf.all.forwarding=1
ip -n cl addr add 2001:2::200/64 dev eth0 nodad
for i in 1 2; do
  ip -n rs$i addr add 2001:2::5$i/64 dev eth0 nodad
  ip netns exec rs$i guest-tcp echo-server [::]:80 > /tmp/rs$i.log 2>&1 &
  waitfor /tmp/rs$i.log listening
done
ip -n rs3 addr add 2001:2:1::1/64 dev eth0 nodad
ip -n rs3 route add default via 2001:2:1::254
touch /tmp/h3
ip netns exec rs3 guest-tcp echo-server [::]:9000 > /tmp/rs3.log 2>&1 &
waitfor /tmp/rs3.log listening
ip netns exec rs3 guest-http /tmp/h3 [::]:8080 > /tmp/rs3http.log 2>&1 &
waitfor /tmp/rs3http.log listening
request() { ip netns exec cl guest-tcp hold "$1" 2>&1; }

# The DR real servers: `lbfleet-server realserver`'s script, as is.
for i in 1 2; do run rs_setup$i ip netns exec rs$i sh /rs.sh up; done
run rs_lo ip -n rs1 -6 addr show dev lo

ip netns exec lb lbfleet-agent apply --role /lb.json --watch --resync 1s --state-dir /tmp/slb > /tmp/lb.log 2>&1 &
waitfor /tmp/lb.log "to=Master"
i=0
while [ "$(lbipvs -Ln | awk '($3 == "Route" || $3 == "Masq") && $4 > 0' | wc -l)" -lt 4 ]; do
  i=$((i+1)); if [ $i -gt 300 ]; then echo "TIMEOUT waiting for four weighted real servers"; break; fi
  sleep 0.1
done
run lb_addr ip -n lb addr show dev eth0
run ipvs_before lbipvs -Ln
run first_request request [2001:2::10]:80

ok=0; i=0
while [ $i -lt 30 ]; do
  request [2001:2::10]:80 | grep -q "exchange 0: ok" && ok=$((ok+1))
  i=$((i+1))
done
run requests_dr echo "answered $ok of 30"
ok=0; i=0
while [ $i -lt 10 ]; do
  request [2001:2::10]:9000 | grep -q "exchange 0: ok" && ok=$((ok+1))
  i=$((i+1))
done
run requests_nat echo "answered $ok of 10"
# IPVS folds its per-CPU counters into the totals every 2 s: wait (bounded) until both services show every
# connection (31 on port 80 with the first request, 10 on port 9000).
conns() { lbipvs -Ln --stats | awk -v k="$1" '$2 == k { print $3; exit }'; }
i=0
while c=$(conns "[2001:2::10]:80"); n=$(conns "[2001:2::10]:9000"); [ "${c:-0}" -lt 31 ] || [ "${n:-0}" -lt 10 ]; do
  i=$((i+1)); if [ $i -gt 80 ]; then echo "TIMEOUT waiting for the IPVS counters"; break; fi
  sleep 0.1
done
run ipvs_stats lbipvs -Ln --stats

# The HTTP check over IPv6: rs3 answers 503, the balancer drains it.
rm /tmp/h3
i=0
while ! lbipvs -Ln | grep -q '\[2001:2:1::1\]:8080 *Masq *0 '; do
  i=$((i+1)); if [ $i -gt 300 ]; then echo "TIMEOUT waiting for the drain"; break; fi
  sleep 0.1
done
run ipvs_drained lbipvs -Ln
run lb_log cat /tmp/lb.log
"#;

static GUEST: SharedGuest = SharedGuest::new();

fn section(name: &str) -> Option<Section> {
    let out = GUEST.output(
        |prereqs| {
            let agent = guest::workspace_binary("lbfleet-agent", "lbfleet-agent")?;
            let tcp = std::path::PathBuf::from(env!("CARGO_BIN_EXE_guest-tcp"));
            let http = std::path::PathBuf::from(env!("CARGO_BIN_EXE_guest-http"));
            let mut img = Initramfs::with_modules(prereqs, &["veth", "bridge", "af_packet"])?;
            img.iproute2()?;
            img.binary(&agent, "/usr/bin/lbfleet-agent")?;
            img.binary(&tcp, "/usr/bin/guest-tcp")?;
            img.binary(&http, "/usr/bin/guest-http")?;
            img.file("/lb.json", &role());
            img.file("/rs.sh", realserver_script().as_bytes());
            img.script(SCRIPT);
            Ok(img)
        },
        "lbfleet-guest-ipv6-console.log",
    )?;
    Some(out.require_section(name))
}

fn log() -> String {
    section("lb_log").map(|s| s.text).unwrap_or_default()
}

/// `(conns, out_pkts)` of the line naming `key` in `ipvsadm -Ln --stats`.
fn stats_of(stats: &str, key: &str) -> (u64, u64) {
    let line = stats
        .lines()
        .find(|l| l.contains(key))
        .unwrap_or_else(|| panic!("no {key} in\n{stats}"));
    let w: Vec<&str> = line.split_whitespace().collect();
    let at = w.iter().position(|x| x.contains(key)).unwrap();
    let num = |i: usize| -> u64 {
        let t = w[at + i];
        t.parse().unwrap_or_else(|_| panic!("{t:?} in {line}"))
    };
    (num(1), num(3))
}

#[test]
fn dual_stack_vips_and_ipv6_dr_on_the_real_servers() {
    let Some(addr) = section("lb_addr") else {
        return;
    };
    assert!(
        addr.text.contains("198.18.0.10/24") && addr.text.contains("2001:2::10/64"),
        "{}\n{}",
        addr.text,
        log()
    );
    for i in 1..=2 {
        let s = section(&format!("rs_setup{i}")).unwrap();
        assert_eq!(s.rc, 0, "rs{i}: {}", s.text);
    }
    let lo = section("rs_lo").unwrap();
    assert!(lo.text.contains("2001:2::10/128"), "{}", lo.text);
}

#[test]
fn ipv6_dr_answers_directly_by_weight_and_nat_through_the_balancer() {
    let Some(first) = section("first_request") else {
        return;
    };
    assert!(
        first.text.contains("exchange 0: ok"),
        "{}\n{}\n{}",
        first.text,
        section("ipvs_before").unwrap().text,
        log()
    );
    let dr = section("requests_dr").unwrap();
    assert_eq!(dr.text.trim(), "answered 30 of 30", "{}", log());
    let nat = section("requests_nat").unwrap();
    assert_eq!(nat.text.trim(), "answered 10 of 10", "{}", log());
    let stats = section("ipvs_stats").unwrap().text;
    let (conns, out_pkts) = stats_of(&stats, "[2001:2::10]:80");
    assert!(conns > REQUESTS, "{stats}");
    assert_eq!(out_pkts, 0, "DR replies passed the balancer:\n{stats}");
    let (c1, c2) = (
        stats_of(&stats, "[2001:2::51]:80").0,
        stats_of(&stats, "[2001:2::52]:80").0,
    );
    assert_eq!(c1 + c2, conns, "{stats}");
    assert!(c1 < c2, "weights 1:2, got {c1}/{c2}\n{stats}");
    // NAT: the replies come back through the balancer.
    let (nconns, nout) = stats_of(&stats, "[2001:2::10]:9000");
    assert!(nconns >= 10 && nout > 0, "{stats}");
}

#[test]
fn a_failing_ipv6_http_check_drains_its_real_server() {
    let Some(before) = section("ipvs_before") else {
        return;
    };
    let weight = |text: &str| -> Option<String> {
        text.lines()
            .find(|l| l.contains("[2001:2:1::1]:8080"))
            .and_then(|l| l.split_whitespace().nth(3))
            .map(str::to_owned)
    };
    assert_eq!(
        weight(&before.text).as_deref(),
        Some("1"),
        "{}",
        before.text
    );
    let drained = section("ipvs_drained").unwrap();
    assert_eq!(
        weight(&drained.text).as_deref(),
        Some("0"),
        "{}\n{}",
        drained.text,
        log()
    );
}
