//! VM tier: real IPVS in a QEMU guest (Debian kernel, TCG). One guest boot runs every scenario and prints
//! marked sections on the serial console; each test checks its sections. Needs QEMU, the Debian kernel,
//! busybox-static and ipvsadm (`make deps`); fails without them (see `guest::require`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use lbfleet_agent::ipvs::codec::{self, IpvsRequest};
use lbfleet_agent::ipvs::{
    DestKey, Destination, Family, Forward, IpProto, Service, ServiceKey, SVC_F_PERSISTENT,
};
use lbfleet_agent::netlink::{self, genl};
use lbfleet_agent::reconcile::{desired_state, HealthResults};
use lbfleet_proto::{
    ForwardMethod, HealthCheck, Protocol, RealServer, RoleDocument, Scheduler, VirtualService,
};
use lbfleet_tests::guest::{self, Initramfs, Section, SharedGuest};
use lbfleet_tests::ipvsadm::{normalize_ipvsadm, normalize_state};
use lbfleet_tests::strace;

fn rs(addr: &str, port: u16, weight: u32) -> RealServer {
    RealServer {
        address: addr.parse().unwrap(),
        port,
        weight,
        enabled: true,
    }
}

#[allow(clippy::too_many_arguments)]
fn vs(
    vip: &str,
    port: u16,
    protocol: Protocol,
    scheduler: Scheduler,
    forward: ForwardMethod,
    persistence: Option<(u32, u8)>,
    real_servers: Vec<RealServer>,
) -> VirtualService {
    VirtualService {
        vip: vip.parse().unwrap(),
        port,
        protocol,
        scheduler,
        forward,
        persistence_s: persistence.map_or(0, |p| p.0),
        persistence_prefix: persistence.map(|p| p.1),
        // No probes: these real servers are not what this test is about (health checks: guest_health.rs).
        check: HealthCheck::of_kind(lbfleet_proto::CheckKind::None),
        real_servers,
    }
}

/// Several services: NAT and DR, rr/wrr/mh/sh, persistence with a netmask, a tunnel.
fn role1() -> RoleDocument {
    RoleDocument {
        reboot_generation: 0,
        generation: 1,
        node: "lb-01".into(),
        cluster: Some("ext".into()),
        role: None,
        vrrp: None,
        services: vec![
            vs(
                "198.18.0.10",
                80,
                Protocol::Tcp,
                Scheduler::Wrr,
                ForwardMethod::Nat,
                None,
                vec![
                    rs("198.18.2.1", 8080, 1),
                    rs("198.18.2.2", 8080, 2),
                    rs("198.18.2.3", 8080, 3),
                ],
            ),
            vs(
                "198.18.0.10",
                53,
                Protocol::Udp,
                Scheduler::Rr,
                ForwardMethod::Dr,
                None,
                vec![rs("198.18.2.4", 53, 1), rs("198.18.2.5", 53, 1)],
            ),
            vs(
                "198.18.0.11",
                443,
                Protocol::Tcp,
                Scheduler::Mh,
                ForwardMethod::Dr,
                Some((300, 24)),
                vec![rs("198.18.2.6", 443, 1), rs("198.18.2.7", 443, 1)],
            ),
            vs(
                "198.18.0.12",
                8443,
                Protocol::Tcp,
                Scheduler::Sh,
                ForwardMethod::Tun,
                None,
                vec![rs("198.18.2.8", 8443, 5)],
            ),
        ],
    }
}

/// role1 with one weight changed.
fn role2() -> RoleDocument {
    let mut r = role1();
    r.generation = 2;
    r.services[0].real_servers[1].weight = 7;
    r
}

const SCRIPT: &str = r#"
. /lib/guest-lib.sh
export RUST_LOG=info
run empty ipvsadm -Ln
run apply1 lbfleet-agent apply --role /role1.json
run ipvsadm1 ipvsadm -Ln
run status1 lbfleet-agent status
run reapply1 lbfleet-agent apply --role /role1.json
run apply2 lbfleet-agent apply --role /role2.json
run ipvsadm2 ipvsadm -Ln
lbfleet-agent apply --role /role2.json --watch --resync 2s > /tmp/watch.log 2>&1 &
WPID=$!
waitfor /tmp/watch.log "role file applied"
ipvsadm -C
run flushed ipvsadm -Ln
# The next resync pass finds the flushed table and re-adds everything (planned > 0).
waitfor /tmp/watch.log "role file applied.*planned=[1-9]"
run repaired ipvsadm -Ln
kill $WPID
wait $WPID
run watchlog cat /tmp/watch.log
ipvsadm -C
run probe_setup guest-ipvs-probe setup
run probe_ipvsadm ipvsadm -Ln
run probe_teardown guest-ipvs-probe teardown
run probe_after ipvsadm -Ln
ipvsadm -C
run sync_master guest-ipvs-probe sync master
run sync_master_list ipvsadm -L --daemon
run sync_backup guest-ipvs-probe sync backup
run sync_backup_list ipvsadm -L --daemon
run sync_again guest-ipvs-probe sync backup
run sync_none guest-ipvs-probe sync none
run sync_none_list ipvsadm -L --daemon
cap() { name=$1; shift; echo "=== BEGIN $name ==="; strace -e trace=sendmsg,recvmsg -e write=all -e read=all "$@" 2>&1; echo "=== END $name rc=$? ==="; }
cap cap_add_svc ipvsadm -A -t 198.18.0.10:80 -s wrr
cap cap_add_dest ipvsadm -a -t 198.18.0.10:80 -r 198.18.2.1:8080 -m -w 3
cap cap_edit_dest ipvsadm -e -t 198.18.0.10:80 -r 198.18.2.1:8080 -m -w 5
cap cap_add_dest_dr ipvsadm -a -t 198.18.0.10:80 -r 198.18.2.2:80 -g -w 1
cap cap_add_dest_tun ipvsadm -a -t 198.18.0.10:80 -r 198.18.2.3:80 -i -w 2
cap cap_edit_svc ipvsadm -E -t 198.18.0.10:80 -s rr -p 300 -M 255.255.255.0
cap cap_add_fwm ipvsadm -A -f 7 -s mh
cap cap_add_fwm6 ipvsadm -A -f 2 -6 -s lc
cap cap_add_udp ipvsadm -A -u 198.18.0.10:53 -s sh
cap cap_list ipvsadm -Ln
cap cap_del_dest ipvsadm -d -t 198.18.0.10:80 -r 198.18.2.1:8080
cap cap_del_svc ipvsadm -D -t 198.18.0.10:80
# IPv6 after the listing (cap_list's services are the IPv4 ones and the fwmarks).
cap cap_add_svc6 ipvsadm -A -t [2001:2::10]:80 -s wrr
cap cap_add_dest6 ipvsadm -a -t [2001:2::10]:80 -r [2001:2::2:1]:8080 -m -w 3
cap cap_add_dest6_dr ipvsadm -a -t [2001:2::10]:80 -r [2001:2::51]:80 -g -w 1
cap cap_edit_svc6 ipvsadm -E -t [2001:2::10]:80 -s rr -p 300 -M 64
ipvsadm -C
cap cap_start_daemon ipvsadm --start-daemon master --mcast-interface lo --syncid 7
ipvsadm --stop-daemon master
"#;

static GUEST: SharedGuest = SharedGuest::new();

/// The named section of the one guest run of this file; `None` when guest tests are skipped explicitly.
fn section(name: &str) -> Option<Section> {
    let out = GUEST.output(
        |prereqs| {
            let agent = guest::workspace_binary("lbfleet-agent", "lbfleet-agent")?;
            let probe = std::path::PathBuf::from(env!("CARGO_BIN_EXE_guest-ipvs-probe"));
            let mut img = Initramfs::new(prereqs)?;
            img.binary(&agent, "/usr/bin/lbfleet-agent")?;
            img.binary(&probe, "/usr/bin/guest-ipvs-probe")?;
            img.file("/role1.json", &serde_json::to_vec(&role1()).unwrap());
            img.file("/role2.json", &serde_json::to_vec(&role2()).unwrap());
            img.script(SCRIPT);
            Ok(img)
        },
        "lbfleet-guest-ipvs-console.log",
    )?;
    Some(out.require_section(name))
}

fn expected(role: &RoleDocument) -> Vec<String> {
    let (state, errors) = desired_state(role, &HealthResults::default());
    assert!(errors.is_empty(), "{errors:?}");
    normalize_state(&state)
}

#[test]
fn apply_programs_exactly_the_role() {
    let Some(empty) = section("empty") else {
        return;
    };
    assert_eq!(normalize_ipvsadm(&empty.text), Vec::<String>::new());
    let apply = section("apply1").unwrap();
    assert_eq!(apply.rc, 0, "{}", apply.text);
    let got = section("ipvsadm1").unwrap();
    assert_eq!(
        normalize_ipvsadm(&got.text),
        expected(&role1()),
        "{}",
        got.text
    );
    // `status` reads the same table back over netlink.
    let status = section("status1").unwrap();
    assert_eq!(status.rc, 0, "{}", status.text);
    assert!(
        status
            .text
            .contains("TCP 198.18.0.11:443 mh persistent 300 mask /24"),
        "{}",
        status.text
    );
}

#[test]
fn reapplying_the_same_role_changes_nothing() {
    let Some(again) = section("reapply1") else {
        return;
    };
    assert_eq!(again.rc, 0, "{}", again.text);
    assert!(
        again.text.contains("applied: 0 change(s) planned"),
        "{}",
        again.text
    );
}

#[test]
fn one_weight_change_touches_one_destination() {
    let Some(apply) = section("apply2") else {
        return;
    };
    assert_eq!(apply.rc, 0, "{}", apply.text);
    assert!(
        apply
            .text
            .contains("applied: 1 change(s) planned, 1 applied, 0 failed"),
        "{}",
        apply.text
    );
    let before = normalize_ipvsadm(&section("ipvsadm1").unwrap().text);
    let after = normalize_ipvsadm(&section("ipvsadm2").unwrap().text);
    assert_eq!(after, expected(&role2()));
    let removed: Vec<_> = before.iter().filter(|l| !after.contains(l)).collect();
    let added: Vec<_> = after.iter().filter(|l| !before.contains(l)).collect();
    assert_eq!(
        removed,
        ["D TCP 198.18.0.10:80 wrr -> 198.18.2.2:8080 Masq 2"]
    );
    assert_eq!(
        added,
        ["D TCP 198.18.0.10:80 wrr -> 198.18.2.2:8080 Masq 7"]
    );
}

#[test]
fn ipvsadm_flush_is_repaired_within_one_resync() {
    let Some(flushed) = section("flushed") else {
        return;
    };
    assert_eq!(
        normalize_ipvsadm(&flushed.text),
        Vec::<String>::new(),
        "flush did not happen:\n{}\nagent log:\n{}",
        flushed.text,
        section("watchlog").map(|s| s.text).unwrap_or_default()
    );
    let repaired = section("repaired").unwrap();
    assert_eq!(
        normalize_ipvsadm(&repaired.text),
        expected(&role2()),
        "not repaired 3 s after the flush (resync 2 s); agent log:\n{}",
        section("watchlog").unwrap().text
    );
}

#[test]
fn netlink_codec_matches_ipvsadm_for_every_kind_of_service() {
    let Some(setup) = section("probe_setup") else {
        return;
    };
    assert_eq!(setup.rc, 0, "{}", setup.text);
    assert!(setup.text.contains("PROBE eexist ok"), "{}", setup.text);
    let ours: Vec<String> = setup
        .text
        .lines()
        .filter(|l| l.starts_with("S ") || l.starts_with("D "))
        .map(str::to_owned)
        .collect();
    let theirs = normalize_ipvsadm(&section("probe_ipvsadm").unwrap().text);
    assert_eq!(ours, theirs);
    // Every scheduler, plus the persistent UDP and two firewall-mark services.
    assert_eq!(
        ours.iter().filter(|l| l.starts_with("S ")).count(),
        Scheduler::ALL.len() + 3
    );
    for needle in [
        "Masq",
        "Route",
        "Tunnel",
        "FWM 1 wlc",
        "FWM 2 IPv6 rr persistent 60 mask 64",
        "persistent 600 mask 255.255.255.0",
        "TCP 198.18.0.50:1000 lc",
    ] {
        assert!(
            ours.iter().any(|l| l.contains(needle)),
            "{needle} missing: {ours:#?}"
        );
    }
    let teardown = section("probe_teardown").unwrap();
    assert_eq!(teardown.rc, 0, "{}", teardown.text);
    assert_eq!(
        normalize_ipvsadm(&section("probe_after").unwrap().text),
        Vec::<String>::new()
    );
}

fn hexdump(b: &[u8]) -> String {
    b.chunks(16)
        .map(|c| {
            c.iter()
                .map(|x| format!("{x:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The IPVS request ipvsadm sent in section `name` (the one with `cmd`), as raw bytes.
fn sent_by_ipvsadm(name: &str, cmd: u8) -> Option<Vec<u8>> {
    let sec = section(name)?;
    assert_eq!(sec.rc, 0, "{name}: {}", sec.text);
    let caps = strace::parse(&sec.text);
    for c in caps.iter().filter(|c| c.send) {
        let msgs = netlink::decode_messages(&c.bytes).unwrap_or_default();
        if let Some(m) = msgs.first() {
            if m.msg_type != genl::GENL_ID_CTRL && matches!(m.genl(), Some((c2, _)) if c2 == cmd) {
                return Some(c.bytes.clone());
            }
        }
    }
    panic!("{name}: no IPVS command {cmd} sent:\n{}", sec.text);
}

fn header(b: &[u8]) -> (u16, u32, u32) {
    let family = u16::from_ne_bytes([b[4], b[5]]);
    let seq = u32::from_ne_bytes([b[8], b[9], b[10], b[11]]);
    let pid = u32::from_ne_bytes([b[12], b[13], b[14], b[15]]);
    (family, seq, pid)
}

fn tcp80() -> ServiceKey {
    ServiceKey::Addr {
        protocol: IpProto::Tcp,
        addr: "198.18.0.10".parse().unwrap(),
        port: 80,
    }
}

fn tcp6() -> ServiceKey {
    ServiceKey::Addr {
        protocol: IpProto::Tcp,
        addr: "2001:2::10".parse().unwrap(),
        port: 80,
    }
}

fn dest(addr: &str, port: u16, forward: Forward, weight: u32) -> Destination {
    Destination::new(addr.parse().unwrap(), port, forward, weight)
}

#[test]
fn codec_sends_the_same_bytes_as_ipvsadm() {
    let mut persistent = Service::new(tcp80(), "rr");
    persistent.flags = SVC_F_PERSISTENT;
    persistent.timeout_s = 300;
    persistent.netmask_prefix = 24;
    let mut persistent6 = Service::new(tcp6(), "rr");
    persistent6.flags = SVC_F_PERSISTENT;
    persistent6.timeout_s = 300;
    persistent6.netmask_prefix = 64;
    let cases: Vec<(&str, IpvsRequest)> = vec![
        (
            "cap_add_svc",
            IpvsRequest::NewService(Service::new(tcp80(), "wrr")),
        ),
        (
            "cap_add_dest",
            IpvsRequest::NewDest(tcp80(), dest("198.18.2.1", 8080, Forward::Masq, 3)),
        ),
        (
            "cap_edit_dest",
            IpvsRequest::SetDest(tcp80(), dest("198.18.2.1", 8080, Forward::Masq, 5)),
        ),
        (
            "cap_add_dest_dr",
            IpvsRequest::NewDest(tcp80(), dest("198.18.2.2", 80, Forward::Route, 1)),
        ),
        (
            "cap_add_dest_tun",
            IpvsRequest::NewDest(tcp80(), dest("198.18.2.3", 80, Forward::Tunnel, 2)),
        ),
        ("cap_edit_svc", IpvsRequest::SetService(persistent)),
        (
            "cap_add_fwm",
            IpvsRequest::NewService(Service::new(
                ServiceKey::Fwmark {
                    family: Family::V4,
                    mark: 7,
                },
                "mh",
            )),
        ),
        (
            "cap_add_fwm6",
            IpvsRequest::NewService(Service::new(
                ServiceKey::Fwmark {
                    family: Family::V6,
                    mark: 2,
                },
                "lc",
            )),
        ),
        (
            "cap_add_udp",
            IpvsRequest::NewService(Service::new(
                ServiceKey::Addr {
                    protocol: IpProto::Udp,
                    addr: "198.18.0.10".parse().unwrap(),
                    port: 53,
                },
                "sh",
            )),
        ),
        // IPv6 (issue 23 item 3): AF_INET6, 16-byte addresses, the persistence netmask as a prefix length.
        (
            "cap_add_svc6",
            IpvsRequest::NewService(Service::new(tcp6(), "wrr")),
        ),
        (
            "cap_add_dest6",
            IpvsRequest::NewDest(tcp6(), dest("2001:2::2:1", 8080, Forward::Masq, 3)),
        ),
        (
            "cap_add_dest6_dr",
            IpvsRequest::NewDest(tcp6(), dest("2001:2::51", 80, Forward::Route, 1)),
        ),
        ("cap_edit_svc6", IpvsRequest::SetService(persistent6)),
        ("cap_list", IpvsRequest::DumpServices),
    ];
    let mut mismatches = Vec::new();
    for (name, req) in &cases {
        let Some(theirs) = sent_by_ipvsadm(name, req.cmd()) else {
            return;
        };
        let (family, seq, pid) = header(&theirs);
        let ours = req.encode(family, seq, pid);
        let same = match req {
            // ipvsadm repeats the whole service before a destination; lbfleet sends its key. The destination
            // nest must be identical and the service the same one.
            IpvsRequest::NewDest(key, _) | IpvsRequest::SetDest(key, _) => {
                let attrs = |b: &[u8]| b[netlink::NLMSG_HDRLEN + genl::GENL_HDRLEN..].to_vec();
                let (t, o) = (attrs(&theirs), attrs(&ours));
                let (ta, oa) = (
                    netlink::Attrs::parse(&t).unwrap(),
                    netlink::Attrs::parse(&o).unwrap(),
                );
                ta.get(codec::IPVS_CMD_ATTR_DEST) == oa.get(codec::IPVS_CMD_ATTR_DEST)
                    && codec::parse_service(&t).unwrap().service.key == *key
            }
            _ => ours == theirs,
        };
        if !same {
            mismatches.push(format!(
                "{name}:\nipvsadm:\n{}\nlbfleet:\n{}",
                hexdump(&theirs),
                hexdump(&ours)
            ));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n\n"));
}

#[test]
fn deletes_name_the_same_objects_as_ipvsadm() {
    // ipvsadm sends the full service/destination on delete; lbfleet sends only the key, which is all the
    // kernel reads. Both must name the same objects.
    let Some(theirs) = sent_by_ipvsadm("cap_del_svc", codec::IPVS_CMD_DEL_SERVICE) else {
        return;
    };
    let msgs = netlink::decode_messages(&theirs).unwrap();
    let Some((_, attrs)) = msgs[0].genl() else {
        panic!("not genl")
    };
    assert_eq!(codec::parse_service(attrs).unwrap().service.key, tcp80());

    let theirs = sent_by_ipvsadm("cap_del_dest", codec::IPVS_CMD_DEL_DEST).unwrap();
    let msgs = netlink::decode_messages(&theirs).unwrap();
    let Some((_, attrs)) = msgs[0].genl() else {
        panic!("not genl")
    };
    let d = codec::parse_dest(attrs, Family::V4).unwrap();
    assert_eq!(
        d.dest.key,
        DestKey {
            addr: "198.18.2.1".parse().unwrap(),
            port: 8080
        }
    );
}

#[test]
fn codec_parses_the_dump_ipvsadm_received() {
    let Some(list) = section("cap_list") else {
        return;
    };
    let mut services = Vec::new();
    let mut dests = Vec::new();
    for c in strace::parse(&list.text).iter().filter(|c| !c.send) {
        for m in netlink::decode_messages(&c.bytes).unwrap() {
            if let Some((cmd, attrs)) = m.genl() {
                if m.msg_type == genl::GENL_ID_CTRL {
                    continue;
                }
                match cmd {
                    codec::IPVS_CMD_NEW_SERVICE => {
                        services.push(codec::parse_service(attrs).unwrap())
                    }
                    codec::IPVS_CMD_NEW_DEST => {
                        dests.push(codec::parse_dest(attrs, Family::V4).unwrap())
                    }
                    _ => {}
                }
            }
        }
    }
    let mut keys: Vec<ServiceKey> = services.iter().map(|s| s.service.key).collect();
    keys.sort();
    let mut want = vec![
        tcp80(),
        ServiceKey::Addr {
            protocol: IpProto::Udp,
            addr: "198.18.0.10".parse().unwrap(),
            port: 53,
        },
        ServiceKey::Fwmark {
            family: Family::V4,
            mark: 7,
        },
        ServiceKey::Fwmark {
            family: Family::V6,
            mark: 2,
        },
    ];
    want.sort();
    assert_eq!(keys, want, "{}", list.text);
    let tcp = services.iter().find(|s| s.service.key == tcp80()).unwrap();
    assert!(tcp.service.persistent());
    assert_eq!(
        (
            tcp.service.scheduler.as_str(),
            tcp.service.timeout_s,
            tcp.service.netmask_prefix
        ),
        ("rr", 300, 24)
    );
    let mut got: Vec<(String, Forward, u32)> = dests
        .iter()
        .map(|d| (d.dest.key.to_string(), d.dest.forward, d.dest.weight))
        .collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        [
            ("198.18.2.1:8080".to_owned(), Forward::Masq, 5),
            ("198.18.2.2:80".to_owned(), Forward::Route, 1),
            ("198.18.2.3:80".to_owned(), Forward::Tunnel, 2),
        ]
    );
}

#[test]
fn sync_daemon_follows_the_vrrp_state_and_matches_ipvsadm() {
    let Some(master) = section("sync_master") else {
        return;
    };
    assert_eq!(master.rc, 0, "{}", master.text);
    assert!(master.text.contains("changed=true"), "{}", master.text);
    let list = section("sync_master_list").unwrap().text;
    assert!(
        list.contains("master sync daemon (mcast=lo, syncid=7,"),
        "{list}"
    );
    let list = section("sync_backup_list").unwrap().text;
    assert!(
        list.contains("backup sync daemon (mcast=lo, syncid=7,") && !list.contains("master sync"),
        "{list}\n{:?}",
        section("sync_backup").unwrap()
    );
    // Already as wanted: nothing sent.
    let again = section("sync_again").unwrap();
    assert!(again.text.contains("changed=false"), "{}", again.text);
    let none = section("sync_none").unwrap();
    assert_eq!(none.rc, 0, "{}", none.text);
    let list = section("sync_none_list").unwrap().text;
    assert!(!list.contains("sync daemon"), "{list}");
    // ipvsadm's IPVS_CMD_NEW_DAEMON carries the same daemon nest as lbfleet's.
    let theirs = sent_by_ipvsadm("cap_start_daemon", codec::IPVS_CMD_NEW_DAEMON).unwrap();
    let msgs = netlink::decode_messages(&theirs).unwrap();
    let Some((_, attrs)) = msgs[0].genl() else {
        panic!("not genl")
    };
    let ours = codec::SyncDaemon {
        state: codec::SyncState::Master,
        interface: "lo".into(),
        sync_id: 7,
    };
    assert_eq!(codec::parse_daemon(attrs).unwrap(), ours);
    let mine = IpvsRequest::NewDaemon(ours).attributes();
    let a = netlink::Attrs::parse(attrs).unwrap();
    let m = netlink::Attrs::parse(&mine).unwrap();
    let (theirs_nest, mine_nest) = (
        netlink::Attrs::parse(a.get(codec::IPVS_CMD_ATTR_DAEMON).unwrap()).unwrap(),
        netlink::Attrs::parse(m.get(codec::IPVS_CMD_ATTR_DAEMON).unwrap()).unwrap(),
    );
    for ty in [
        codec::IPVS_DAEMON_ATTR_STATE,
        codec::IPVS_DAEMON_ATTR_MCAST_IFN,
        codec::IPVS_DAEMON_ATTR_SYNC_ID,
    ] {
        assert_eq!(theirs_nest.get(ty), mine_nest.get(ty), "attribute {ty}");
    }
}
