//! The real-server side of direct routing, on the host kernel in network namespaces: the script
//! `lbfleet-server realserver` prints (`fleet::real_server_setup`) is executed as is with `sh` in a real
//! server's namespace. A client namespace plays the balancer's part of DR (it sends frames for the VIP to the
//! real server's MAC, as IPVS's direct routing does) and must get its answers from the VIP straight from the
//! real server, while the real server never answers ARP for the VIP. Needs root and iproute2.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use lbfleet_server::fleet::real_server_setup::plan;
use lbfleet_tests::netns::{self, Netns};
use lbfleet_tests::vrrp_lab::{prober_summary, tool};

const VIP: &str = "198.18.0.10";
const RS: &str = "198.18.0.51";
const CLIENT: &str = "198.18.0.200";

/// Pings `target` from `ns` 20 times, 10 ms apart; returns how many were answered.
fn answered(ns: &Netns, target: &str) -> u64 {
    let out = ns
        .command(tool("vrrp-prober").to_str().unwrap())
        .args([
            target,
            "--count",
            "20",
            "--interval-ms",
            "10",
            "--timeout-ms",
            "300",
        ])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stdout);
    prober_summary(&log)
        .unwrap_or_else(|| panic!("no prober summary: {log}"))
        .1
}

fn sysctl(ns: &Netns, key: &str) -> String {
    let out = ns.exec(&["sysctl", "-n", key]).unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn lo_vips(ns: &Netns) -> usize {
    ns.ip_output(&["-o", "addr", "show", "dev", "lo"])
        .unwrap()
        .matches(&format!("{VIP}/32"))
        .count()
}

#[test]
fn the_realserver_script_sets_up_dr_idempotently_and_undoes_it() {
    if !netns::require(&["sh", "awk", "grep", "sysctl"]) {
        return;
    }
    let client = Netns::unique("dcl").unwrap();
    let rs = Netns::unique("drs").unwrap();
    netns::veth(&client, "c0", &rs, "eth0").unwrap();
    client.addr_add(&format!("{CLIENT}/24"), "c0").unwrap();
    rs.addr_add(&format!("{RS}/24"), "eth0").unwrap();
    client.link_up("c0").unwrap();
    rs.link_up("eth0").unwrap();
    // The VIP is on the segment (the balancer holds it there): the client reaches it on-link.
    client
        .ip(&["route", "add", &format!("{VIP}/32"), "dev", "c0"])
        .unwrap();
    assert!(answered(&client, RS) > 0, "the segment works");

    let spec: lbfleet_proto::ClusterSpec = serde_json::from_value(serde_json::json!({
        "vrid": 51, "interface": "eth0", "vips": ["198.18.0.10/24"],
        "services": [{"vip": VIP, "port": 80, "protocol": "tcp", "scheduler": "wrr", "forward": "dr",
                      "real_servers": [{"address": RS, "port": 80}, {"address": "198.18.0.52", "port": 80}]}]
    }))
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("rs.sh");
    std::fs::write(&script, plan("ext", &spec).script()).unwrap();
    let script = script.to_str().unwrap();

    // Before: frames for the VIP sent to the real server's MAC (what the balancer does) are not answered.
    let rs_mac = rs.mac("eth0").unwrap();
    assert_eq!(answered(&client, VIP), 0, "nobody holds the VIP yet");
    rs.exec(&["sh", script, "up"]).unwrap();
    assert_eq!(lo_vips(&rs), 1, "the VIP is on lo");
    assert_eq!(sysctl(&rs, "net.ipv4.conf.all.arp_ignore"), "1");
    assert_eq!(sysctl(&rs, "net.ipv4.conf.all.arp_announce"), "2");
    // The real server does not answer ARP for the VIP: the balancer stays its only owner on the segment.
    assert_eq!(
        answered(&client, VIP),
        0,
        "the real server answered ARP for the VIP"
    );
    // Idempotent: a second run succeeds and changes nothing.
    rs.exec(&["sh", script]).unwrap();
    assert_eq!(lo_vips(&rs), 1);

    // DR: the frame for the VIP goes to the real server's MAC; it answers from the VIP, directly.
    client
        .ip(&[
            "neigh",
            "replace",
            VIP,
            "lladdr",
            &rs_mac,
            "dev",
            "c0",
            "nud",
            "permanent",
        ])
        .unwrap();
    assert!(
        answered(&client, VIP) >= 15,
        "the real server answers for the VIP"
    );

    // Undo.
    rs.exec(&["sh", script, "down"]).unwrap();
    assert_eq!(lo_vips(&rs), 0);
    assert_eq!(sysctl(&rs, "net.ipv4.conf.all.arp_ignore"), "0");
    assert_eq!(answered(&client, VIP), 0, "after the undo the VIP is gone");

    // A host that is none of the real servers: exit status 1, nothing changed.
    let out = client.command("sh").arg(script).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("none of the DR/TUN real-server addresses")
    );
    assert_eq!(sysctl(&client, "net.ipv4.conf.all.arp_ignore"), "0");
}
