//! VRRPv3 over IPv6 (RFC 5798) and dual-stack clusters on the host kernel, in the VRRP lab's network
//! namespaces (`vrrp_lab`): two agents failing over an IPv6 VIP, the agent against keepalived's IPv6 VRRPv3 in
//! both directions, and a dual-stack cluster whose IPv4 and IPv6 VIPs move together; a prober namespace pings
//! the IPv6 VIP every 10 ms (ICMPv6), and the outages are held to the IPv4 tests' bounds (takeover after a lost
//! link under 5 s, failback under 200 ms). Addresses from 2001:2::/64 and 198.18.0.0/24 only. Needs root,
//! iproute2 and keepalived; fails without them (`vrrp_lab::require`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use lbfleet_tests::vrrp_lab::{
    self, agent_state, holds, ip, prober_outages, start_agent, start_keepalived, start_prober_to,
    status, stop_prober, unix_us, wait_for, wait_prober_ready, wait_prober_recovered, Lab, Vrrp, A,
    B, ELECTION, VIP, VIP6,
};

/// The IPv4 tests' bounds: a lost link's takeover (keepalived_takes_over_when_the_agents_node_loses_its_link)
/// and a failback (failback_after_link_flaps_*).
const TAKEOVER_LIMIT_MS: f64 = 5_000.0;
const FAILBACK_LIMIT_MS: f64 = 200.0;

/// The link-local address of `eth0` in `ns`: the source of its IPv6 adverts.
fn link_local(ns: &str) -> String {
    let out = Command::new("ip")
        .args([
            "-n", ns, "-6", "-o", "addr", "show", "dev", "eth0", "scope", "link",
        ])
        .output()
        .expect("ip");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    words
        .find(|w| *w == "inet6")
        .and_then(|_| words.next())
        .and_then(|a| a.split('/').next())
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("{ns}: no link-local address on eth0: {text}"))
}

fn mac_of(ns: &str) -> String {
    let out = Command::new("ip")
        .args(["-n", ns, "-o", "link", "show", "dev", "eth0"])
        .output()
        .expect("ip");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    words
        .find(|w| *w == "link/ether")
        .and_then(|_| words.next())
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("{ns}: no MAC: {text}"))
}

/// The MAC the prober's neighbour cache gives the IPv6 VIP ("" when none).
fn prober_vip6_mac(prober: &str) -> String {
    let out = Command::new("ip")
        .args(["-n", prober, "-6", "neigh", "show", VIP6])
        .output()
        .expect("ip");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    words
        .find(|w| *w == "lladdr")
        .and_then(|_| words.next())
        .unwrap_or("")
        .to_owned()
}

/// `a` (master, state in `sa`, or keepalived when `sa` is `None`) loses its link: `peer` takes every one of
/// `vips` over and the prober reaches the IPv6 VIP there; the link returns: `a` takes them back and the
/// prober's neighbour cache follows (unsolicited NA). Asserts the outages against the IPv4 bounds and returns
/// (takeover ms, failback ms).
fn fail_over_and_back(
    lab: &mut Lab,
    a: &str,
    sa: Option<&Path>,
    peer: &str,
    vips: &[&str],
) -> (f64, f64) {
    let prober = start_prober_to(lab, 3000, VIP6);
    wait_prober_ready(lab);
    let (mac_a, mac_peer) = (mac_of(a), mac_of(peer));
    wait_for(ELECTION, "the prober reaches a", || {
        prober_vip6_mac(&prober) == mac_a
    });
    let down = unix_us();
    ip(&["-n", a, "link", "set", "eth0", "down"]);
    let took = wait_for(ELECTION, "the peer takes every VIP over", || {
        vips.iter().all(|v| holds(peer, v))
    });
    eprintln!("peer holds {vips:?} {took:?} after a's link went down");
    wait_prober_recovered(lab);
    assert_eq!(
        prober_vip6_mac(&prober),
        mac_peer,
        "the prober follows the peer"
    );
    let up = unix_us();
    ip(&["-n", a, "link", "set", "eth0", "up"]);
    wait_for(ELECTION, "a holds every VIP again, the peer none", || {
        vips.iter().all(|v| holds(a, v) && !holds(peer, v))
            && sa.is_none_or(|s| agent_state(s) == "master")
    });
    wait_for(
        ELECTION,
        "the prober's neighbour cache points at a again",
        || prober_vip6_mac(&prober) == mac_a,
    );
    let (_, answered, _, _) = stop_prober(lab);
    assert!(answered > 0, "the IPv6 VIP answered");
    let outages = prober_outages(&lab.log("prober"));
    let worst = |from: u64, to: u64| {
        outages
            .iter()
            .filter(|o| o.begins_unix_us + 50_000 >= from && o.begins_unix_us + 50_000 < to)
            .map(|o| o.ms)
            .fold(0.0, f64::max)
    };
    let (takeover, failback) = (worst(down, up), worst(up, u64::MAX));
    eprintln!("IPv6 VIP: takeover outage {takeover:.0} ms, failback outage {failback:.0} ms");
    assert!(takeover > 0.0, "the lost link cost the prober something");
    assert!(
        takeover < TAKEOVER_LIMIT_MS,
        "takeover outage {takeover} ms"
    );
    assert!(
        failback < FAILBACK_LIMIT_MS,
        "failback outage {failback} ms"
    );
    (takeover, failback)
}

#[test]
fn two_agents_fail_over_an_ipv6_vip() {
    if !vrrp_lab::require(false) {
        return;
    }
    let mut lab = Lab::new("6a");
    let a = lab.host("a", A);
    let b = lab.host("b", B);
    let sa = start_agent(&mut lab, &a, "agent-a", &Vrrp::v6(150));
    let sb = start_agent(&mut lab, &b, "agent-b", &Vrrp::v6(100));
    let ll_a = link_local(&a);
    wait_for(ELECTION, "a master of VIP6, b its backup", || {
        let s = status(&sb);
        agent_state(&sa) == "master"
            && s["vrrp_state"] == "backup"
            && s["vrrp_master"] == ll_a.as_str()
            && holds(&a, VIP6)
            && !holds(&b, VIP6)
    });
    fail_over_and_back(&mut lab, &a, Some(&sa), &b, &[VIP6]);
    // The adverts' drop counters stayed clean: every IPv6 advert decoded (checksum, hop limit).
    let drops = &status(&sb)["vrrp_dropped"];
    for reason in ["bad_checksum", "bad_ttl", "count_mismatch", "bad_version"] {
        assert!(drops.get(reason).is_none(), "{reason}: {drops}");
    }
}

/// Unicast adverts over IPv6 to peers named by their global addresses: each agent sends from its own global
/// address (the one its peer lists), and the pair elects and fails over as with multicast.
#[test]
fn two_agents_with_ipv6_unicast_peers() {
    if !vrrp_lab::require(false) {
        return;
    }
    let mut lab = Lab::new("6u");
    let a = lab.host("a", A);
    let b = lab.host("b", B);
    let peer = |priority, to: &'static str| Vrrp {
        peers: vec![to],
        ..Vrrp::v6(priority)
    };
    let sa = start_agent(&mut lab, &a, "agent-a", &peer(150, "2001:2::3"));
    let sb = start_agent(&mut lab, &b, "agent-b", &peer(100, "2001:2::2"));
    wait_for(ELECTION, "a master of VIP6, b its backup", || {
        let s = status(&sb);
        agent_state(&sa) == "master"
            && s["vrrp_state"] == "backup"
            && s["vrrp_master"] == "2001:2::2"
            && holds(&a, VIP6)
            && !holds(&b, VIP6)
    });
    fail_over_and_back(&mut lab, &a, Some(&sa), &b, &[VIP6]);
    assert!(
        status(&sb)["vrrp_dropped"].get("not_a_peer").is_none(),
        "{}",
        status(&sb)
    );
}

#[test]
fn agent_master_keepalived_backup_over_ipv6() {
    if !vrrp_lab::require(true) {
        return;
    }
    let mut lab = Lab::new("6k");
    let a = lab.host("a", A);
    let k = lab.host("k", B);
    let sa = start_agent(&mut lab, &a, "agent", &Vrrp::v6(150));
    wait_for(ELECTION, "agent holds VIP6", || holds(&a, VIP6));
    start_keepalived(&mut lab, &k, "ka", &Vrrp::v6(100));
    wait_for(ELECTION, "keepalived is backup of the agent", || {
        lab.log("ka").contains("Entering BACKUP STATE")
    });
    wait_for(ELECTION, "agent master, keepalived without VIP6", || {
        agent_state(&sa) == "master" && holds(&a, VIP6) && !holds(&k, VIP6)
    });
    // keepalived did not take over meanwhile: it hears the agent's IPv6 adverts.
    assert!(
        !lab.log("ka").contains("Entering MASTER STATE"),
        "{}",
        lab.log("ka")
    );
    fail_over_and_back(&mut lab, &a, Some(&sa), &k, &[VIP6]);
}

#[test]
fn keepalived_master_agent_backup_over_ipv6() {
    if !vrrp_lab::require(true) {
        return;
    }
    let mut lab = Lab::new("6r");
    let k = lab.host("k", A);
    let b = lab.host("b", B);
    start_keepalived(&mut lab, &k, "ka", &Vrrp::v6(150));
    wait_for(ELECTION, "keepalived holds VIP6", || holds(&k, VIP6));
    let sb = start_agent(&mut lab, &b, "agent", &Vrrp::v6(100));
    let ll_k = link_local(&k);
    wait_for(ELECTION, "agent is backup of keepalived", || {
        let s = status(&sb);
        s["vrrp_state"] == "backup" && s["vrrp_master"] == ll_k.as_str()
    });
    assert!(!holds(&b, VIP6));
    fail_over_and_back(&mut lab, &k, None, &b, &[VIP6]);
    wait_for(ELECTION, "agent backup again", || {
        agent_state(&sb) == "backup"
    });
}

/// A dual-stack cluster: VRRP runs over IPv4 and the IPv6 VIP moves with the IPv4 one, both ways.
#[test]
fn dual_stack_vips_move_together() {
    if !vrrp_lab::require(false) {
        return;
    }
    let mut lab = Lab::new("6d");
    let a = lab.host("a", A);
    let b = lab.host("b", B);
    let dual = |priority| Vrrp {
        vips: vec!["198.18.0.10/32", "2001:2::10/128"],
        ..Vrrp::v3(priority)
    };
    let sa = start_agent(&mut lab, &a, "agent-a", &dual(150));
    let sb = start_agent(&mut lab, &b, "agent-b", &dual(100));
    wait_for(ELECTION, "a holds both VIPs, b none", || {
        agent_state(&sa) == "master"
            && agent_state(&sb) == "backup"
            && holds(&a, VIP)
            && holds(&a, VIP6)
            && !holds(&b, VIP)
            && !holds(&b, VIP6)
    });
    // Over IPv4: b follows a's IPv4 address.
    assert_eq!(status(&sb)["vrrp_master"], A);
    fail_over_and_back(&mut lab, &a, Some(&sa), &b, &[VIP, VIP6]);
}

/// The same dual-stack cluster against keepalived with the IPv6 VIP in `virtual_ipaddress_excluded` (how a
/// keepalived user writes it): keepalived takes both over when the agent's link goes, and hands both back.
#[test]
fn dual_stack_with_keepalived() {
    if !vrrp_lab::require(true) {
        return;
    }
    let mut lab = Lab::new("6x");
    let a = lab.host("a", A);
    let k = lab.host("k", B);
    let dual = |priority| Vrrp {
        vips: vec!["198.18.0.10/32", "2001:2::10/128"],
        ..Vrrp::v3(priority)
    };
    let sa = start_agent(&mut lab, &a, "agent", &dual(150));
    wait_for(ELECTION, "agent holds both VIPs", || {
        holds(&a, VIP) && holds(&a, VIP6)
    });
    start_keepalived(&mut lab, &k, "ka", &dual(100));
    wait_for(ELECTION, "keepalived is backup", || {
        lab.log("ka").contains("Entering BACKUP STATE")
    });
    fail_over_and_back(&mut lab, &a, Some(&sa), &k, &[VIP, VIP6]);
}
