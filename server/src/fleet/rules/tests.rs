//! The domain rules field by field: names, addresses, VRRP settings, services, report bounds.

use super::*;
use lbfleet_proto::{CheckKind, DownAction, HealthCheck, Protocol, Scheduler, VipSpec};

fn spec() -> ClusterSpec {
    ClusterSpec {
        vrid: 51,
        interface: "eth0".into(),
        vrrp_version: 3,
        advert_interval_ms: 100,
        preempt: true,
        preempt_delay_ms: 0,
        vips: vec!["198.18.0.10".into()],
        unicast_peers: vec![],
        garp: Default::default(),
        conn_sync: None,
        services: vec![ServiceSpec {
            vip: "198.18.0.10".into(),
            port: 80,
            protocol: Protocol::Tcp,
            scheduler: Scheduler::Wrr,
            forward: ForwardMethod::Nat,
            persistence_s: 0,
            persistence_prefix: None,
            check: HealthCheck::tcp(),
            real_servers: vec![RealServerSpec {
                address: "198.18.2.1".into(),
                port: 8080,
                weight: 1,
                enabled: None,
            }],
        }],
    }
}

fn fields(result: Result<ValidCluster, FieldErrors>) -> Vec<String> {
    match result {
        Ok(_) => vec![],
        Err(e) => e.0.into_iter().map(|f| f.field).collect(),
    }
}

#[test]
fn accepts_a_good_spec_and_normalises_it() {
    let ValidCluster(v) = cluster_spec(&spec()).expect("valid");
    assert_eq!(v.vips, vec!["198.18.0.10/32"]);
}

#[test]
fn ipv6_vips_with_vrrpv3_nat_and_dr() {
    let mut s = spec();
    s.vips = vec!["2001:2:0:0::10/128".into(), "2001:2::fe/64".into()];
    s.services[0].vip = "2001:2:0::10".into();
    s.services[0].real_servers[0].address = "2001:2::2:1".into();
    let ValidCluster(v) = cluster_spec(&s).expect("an IPv6 cluster is valid");
    // Canonical text, as for IPv4.
    assert_eq!(v.vips, vec!["2001:2::10/128", "2001:2::fe/64"]);
    assert_eq!(v.services[0].vip, "2001:2::10");
    // DR: the real server must be on the balancers' IPv6 segment (2001:2::/64), and keep the port.
    s.services[0].forward = ForwardMethod::Dr;
    s.services[0].real_servers[0].port = 80;
    assert!(cluster_spec(&s).is_ok());
    s.services[0].real_servers[0].address = "2001:2:0:9::1".into();
    assert_eq!(
        fields(cluster_spec(&s)),
        vec!["services[0].real_servers[0].address"]
    );
    // An IPv4 real server behind an IPv6 VIP: no.
    s.services[0].real_servers[0].address = "198.18.0.5".into();
    assert_eq!(
        fields(cluster_spec(&s)),
        vec!["services[0].real_servers[0].address"]
    );
    // TUN over IPv6 (ip6ip6) is not set up by the realserver command: refused.
    s.services[0].real_servers[0].address = "2001:2::2:1".into();
    s.services[0].forward = ForwardMethod::Tun;
    assert_eq!(fields(cluster_spec(&s)), vec!["services[0].forward"]);
    // Link-local addresses are the interfaces' own.
    let mut s = spec();
    s.vips.push("fe80::10".into());
    assert_eq!(fields(cluster_spec(&s)), vec!["vips[1]"]);
}

#[test]
fn dual_stack_cluster_runs_vrrp_over_ipv4() {
    let mut s = spec();
    s.vips = vec!["2001:2::10".into(), "198.18.0.10".into()];
    let mut v6 = s.services[0].clone();
    v6.vip = "2001:2::10".into();
    v6.real_servers[0].address = "2001:2::2:1".into();
    s.services.push(v6);
    let ValidCluster(v) = cluster_spec(&s).expect("dual-stack is valid");
    assert_eq!(v.vips, vec!["2001:2::10/128", "198.18.0.10/32"]);
    // Same VIP port on each family: two services.
    assert_eq!(v.services.len(), 2);
    // The election is IPv4 (there is an IPv4 VIP): unicast peers are IPv4.
    s.unicast_peers = vec!["198.18.0.3".into()];
    assert!(cluster_spec(&s).is_ok());
    s.unicast_peers = vec!["2001:2::3".into()];
    assert_eq!(fields(cluster_spec(&s)), vec!["unicast_peers[0]"]);
    // An IPv6-only cluster elects over IPv6: IPv6 peers.
    let mut s = spec();
    s.vips = vec!["2001:2::10".into()];
    s.services.clear();
    s.unicast_peers = vec!["2001:2::3".into()];
    assert!(cluster_spec(&s).is_ok());
    s.unicast_peers = vec!["198.18.0.3".into()];
    assert_eq!(fields(cluster_spec(&s)), vec!["unicast_peers[0]"]);
}

#[test]
fn ipv6_vips_need_vrrpv3() {
    let mut s = spec();
    s.vrrp_version = 2;
    s.advert_interval_ms = 1000;
    s.vips = vec!["2001:2::10".into()];
    s.services.clear();
    let errs = cluster_spec(&s).expect_err("VRRPv2 is IPv4-only");
    assert!(
        errs.0[0].message.contains("VRRPv2 is IPv4-only"),
        "{errs:?}"
    );
    // As an internal VIP on its own interface too.
    let mut s = spec();
    s.vrrp_version = 2;
    s.advert_interval_ms = 1000;
    s.vips.push(VipSpec {
        address: "2001:2::254/64".into(),
        interface: Some("eth1".into()),
    });
    assert_eq!(fields(cluster_spec(&s)), vec!["vips[1]"]);
    s.vrrp_version = 3;
    assert!(cluster_spec(&s).is_ok());
}

#[test]
fn vrid_range() {
    for ok in [1, 255] {
        let mut s = spec();
        s.vrid = ok;
        assert!(cluster_spec(&s).is_ok(), "vrid {ok}");
    }
    for bad in [0, 256] {
        let mut s = spec();
        s.vrid = bad;
        assert_eq!(fields(cluster_spec(&s)), vec!["vrid"], "vrid {bad}");
    }
}

#[test]
fn advert_interval_v3_and_v2() {
    for (version, ms, ok) in [
        (3, 10, true),
        (3, 40_950, true),
        (3, 100, true),
        (3, 0, false),
        (3, 15, false),
        (3, 40_960, false),
        (2, 1000, true),
        (2, 255_000, true),
        (2, 1500, false),
        (2, 100, false),
        (2, 256_000, false),
    ] {
        let mut s = spec();
        s.vrrp_version = version;
        s.advert_interval_ms = ms;
        let got = fields(cluster_spec(&s));
        if ok {
            assert!(got.is_empty(), "v{version} {ms} ms: {got:?}");
        } else {
            assert_eq!(got, vec!["advert_interval_ms"], "v{version} {ms} ms");
        }
    }
    let mut s = spec();
    s.vrrp_version = 4;
    assert_eq!(fields(cluster_spec(&s)), vec!["vrrp_version"]);
}

#[test]
fn vips_must_be_unicast_and_v4_for_v2() {
    let mut s = spec();
    s.vips = vec!["198.18.0.10/33".into()];
    assert!(fields(cluster_spec(&s)).contains(&"vips[0]".to_string()));
    s.vips = vec!["198.18.0.10".into(), "198.18.0.10/32".into()];
    assert_eq!(fields(cluster_spec(&s)), vec!["vips[1]"]);
    s.vips = vec!["198.18.0.10".into(), "ff02::12".into()];
    assert_eq!(fields(cluster_spec(&s)), vec!["vips[1]"]);
    s.vips = vec!["198.18.0.10".into(), "224.0.0.18".into()];
    assert_eq!(fields(cluster_spec(&s)), vec!["vips[1]"]);
    s.vips = vec!["198.18.0.10".into(), "not-an-ip".into()];
    assert_eq!(fields(cluster_spec(&s)), vec!["vips[1]"]);
    s.vips = vec![];
    assert!(fields(cluster_spec(&s)).contains(&"vips".to_string()));
    let mut s = spec();
    s.vrrp_version = 2;
    s.advert_interval_ms = 1000;
    s.vips.push("2001:db8::1".into());
    assert_eq!(fields(cluster_spec(&s)), vec!["vips[1]"]);
}

#[test]
fn services_need_a_cluster_vip_and_unique_keys() {
    let mut s = spec();
    s.services[0].vip = "198.18.0.11".into();
    assert_eq!(fields(cluster_spec(&s)), vec!["services[0].vip"]);
    let mut s = spec();
    s.services.push(s.services[0].clone());
    assert_eq!(fields(cluster_spec(&s)), vec!["services[1].port"]);
    // Same VIP and port, other protocol: allowed.
    s.services[1].protocol = Protocol::Udp;
    assert!(cluster_spec(&s).is_ok());
    let mut s = spec();
    s.services[0].port = 0;
    assert_eq!(fields(cluster_spec(&s)), vec!["services[0].port"]);
}

#[test]
fn schedulers_are_the_kernels() {
    for name in [
        "rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh",
    ] {
        let parsed: Result<Scheduler, _> = name.parse();
        assert!(parsed.is_ok(), "{name}");
    }
    assert!("maglev".parse::<Scheduler>().is_err());
    let body =
        r#"{"vip":"198.18.0.10","port":80,"protocol":"tcp","scheduler":"random","forward":"nat"}"#;
    assert!(serde_json::from_str::<ServiceSpec>(body).is_err());
}

#[test]
fn weights_ports_and_forwarding() {
    let mut s = spec();
    s.services[0].real_servers[0].weight = 65_535;
    assert!(cluster_spec(&s).is_ok());
    s.services[0].real_servers[0].weight = 65_536;
    assert_eq!(
        fields(cluster_spec(&s)),
        vec!["services[0].real_servers[0].weight"]
    );
    assert!(weight(0).is_ok() && weight(65_535).is_ok() && weight(65_536).is_err());

    let mut s = spec();
    s.services[0].forward = ForwardMethod::Dr;
    assert_eq!(
        fields(cluster_spec(&s)),
        vec!["services[0].real_servers[0].port"]
    );
    s.services[0].real_servers[0].port = 80;
    assert!(cluster_spec(&s).is_ok());

    let mut s = spec();
    s.services[0].real_servers[0].address = "2001:db8::1".into();
    assert_eq!(
        fields(cluster_spec(&s)),
        vec!["services[0].real_servers[0].address"]
    );
    s.services[0].real_servers[0].address = "198.18.2.300".into();
    assert_eq!(
        fields(cluster_spec(&s)),
        vec!["services[0].real_servers[0].address"]
    );

    let mut s = spec();
    let copy = s.services[0].real_servers[0].clone();
    s.services[0].real_servers.push(copy);
    assert_eq!(
        fields(cluster_spec(&s)),
        vec!["services[0].real_servers[1].address"]
    );
}

#[test]
fn health_checks() {
    let mut s = spec();
    s.services[0].check = HealthCheck {
        kind: CheckKind::Http,
        path: Some("/healthz".into()),
        expect_status: Some(200),
        ..HealthCheck::tcp()
    };
    assert!(cluster_spec(&s).is_ok());
    s.services[0].check.path = Some("/a b".into());
    assert_eq!(fields(cluster_spec(&s)), vec!["services[0].check.path"]);
    s.services[0].check.path = None;
    assert_eq!(fields(cluster_spec(&s)), vec!["services[0].check.path"]);
    let mut s = spec();
    s.services[0].check.timeout_ms = 2000;
    assert_eq!(
        fields(cluster_spec(&s)),
        vec!["services[0].check.timeout_ms"]
    );
    s.services[0].check.timeout_ms = 500;
    s.services[0].check.fall = 0;
    assert_eq!(fields(cluster_spec(&s)), vec!["services[0].check.fall"]);
    s.services[0].check.fall = 3;
    s.services[0].check.path = Some("/x".into());
    assert_eq!(fields(cluster_spec(&s)), vec!["services[0].check.path"]);
}

#[test]
fn health_check_kinds_and_parameters() {
    use lbfleet_proto::{CheckOverride, DnsType, Quorum, SorryServer};
    let mut s = spec();
    let ok = |s: &ClusterSpec| fields(cluster_spec(s));
    // https with SNI, codes and body; dns; script.
    s.services[0].check = HealthCheck {
        path: Some("/healthz".into()),
        expect_codes: vec![200, 204],
        host: Some("app.example".into()),
        sni: Some("app.example".into()),
        tls_verify: true,
        body_contains: Some("ok".into()),
        ..HealthCheck::of_kind(CheckKind::Https)
    };
    assert_eq!(ok(&s), Vec::<String>::new());
    s.services[0].check.sni = Some("bad name".into());
    s.services[0].check.expect_codes = vec![700];
    assert_eq!(
        ok(&s),
        vec!["services[0].check.expect_codes", "services[0].check.sni"]
    );
    s.services[0].check = HealthCheck {
        dns_name: Some("www.example".into()),
        dns_type: Some(DnsType::Aaaa),
        dns_expect: Some("2001:db8::1".into()),
        ..HealthCheck::of_kind(CheckKind::Dns)
    };
    assert_eq!(ok(&s), Vec::<String>::new());
    s.services[0].check.dns_name = None;
    s.services[0].check.path = Some("/x".into());
    assert_eq!(
        ok(&s),
        vec!["services[0].check.path", "services[0].check.dns_name"]
    );
    // A script is a name in the image's check directory, never a path or a command line.
    s.services[0].check = HealthCheck {
        script: Some("pg-ready".into()),
        ..HealthCheck::of_kind(CheckKind::Script)
    };
    assert_eq!(ok(&s), Vec::<String>::new());
    for bad in ["../../bin/sh", "/bin/sh", "x/y", "sh -c 'id'", "..", ""] {
        s.services[0].check.script = Some(bad.into());
        assert_eq!(ok(&s), vec!["services[0].check.script"], "{bad:?}");
    }
    s.services[0].check.script = None;
    assert_eq!(ok(&s), vec!["services[0].check.script"]);
    // A tcp check takes no script; jitter and warm-up bounds.
    s.services[0].check = HealthCheck {
        script: Some("x".into()),
        jitter_ms: Some(5000),
        warmup_ms: 4_000_000,
        ..HealthCheck::tcp()
    };
    assert_eq!(
        ok(&s),
        vec![
            "services[0].check.warmup_ms",
            "services[0].check.jitter_ms",
            "services[0].check.script"
        ]
    );
    // Sorry server, quorum and overrides.
    s.services[0].check = HealthCheck {
        on_down: DownAction::Remove,
        sorry_server: Some(SorryServer {
            address: "198.18.2.200".into(),
            port: 80,
        }),
        quorum: Some(Quorum {
            min_healthy: 1,
            priority_drop: 60,
        }),
        overrides: vec![CheckOverride {
            address: "198.18.2.1".into(),
            port: 8080,
            check: HealthCheck {
                path: Some("/other".into()),
                ..HealthCheck::of_kind(CheckKind::Http)
            },
        }],
        ..HealthCheck::tcp()
    };
    assert_eq!(ok(&s), Vec::<String>::new());
    let c = &mut s.services[0].check;
    c.sorry_server = Some(SorryServer {
        address: "198.18.2.1".into(),
        port: 8080,
    });
    c.quorum = Some(Quorum {
        min_healthy: 2,
        priority_drop: 0,
    });
    c.overrides[0].port = 9;
    c.overrides[0].check.quorum = Some(Quorum {
        min_healthy: 1,
        priority_drop: 1,
    });
    assert_eq!(
        ok(&s),
        vec![
            "services[0].check.sorry_server.address",
            "services[0].check.quorum.min_healthy",
            "services[0].check.quorum.priority_drop",
            "services[0].check.overrides[0].address",
            "services[0].check.overrides[0].check"
        ]
    );
}

#[test]
fn plain_old_checks_still_validate() {
    let mut s = spec();
    s.services[0].check = serde_json::from_str(
        r#"{"kind":"http","path":"/healthz","expect_status":200,"interval_ms":1000,"timeout_ms":500,"rise":2,"fall":3}"#,
    )
    .unwrap_or_default();
    assert_eq!(s.services[0].check.kind, CheckKind::Http);
    assert!(cluster_spec(&s).is_ok());
    s.services[0].check = serde_json::from_str(r#"{"kind":"none"}"#).unwrap_or_default();
    assert_eq!(s.services[0].check.kind, CheckKind::None);
    assert!(cluster_spec(&s).is_ok());
}

#[test]
fn report_texts_counts_names_and_addresses_are_bounded() {
    use lbfleet_proto::{
        AgentReport, HealthState, HealthTransition, Protocol, RealServerHealth, RealServerReport,
        ServiceReport,
    };
    let health = |e: &str| RealServerHealth {
        state: HealthState::Down,
        since: Some(1),
        last_error: Some(e.into()),
        latency_us: None,
        flaps: 1,
        check: None,
    };
    let rs = |e: &str| RealServerReport {
        address: "198.18.2.1".into(),
        port: 80,
        healthy: false,
        weight: 0,
        active_conns: 0,
        inactive_conns: 0,
        connections: 0,
        packets_in: 0,
        packets_out: 0,
        bytes_in: 0,
        bytes_out: 0,
        health: Some(health(e)),
    };
    let mut r = AgentReport {
        services: vec![ServiceReport {
            vip: "198.18.0.10".into(),
            port: 80,
            protocol: Protocol::Tcp,
            connections: 0,
            packets_in: 0,
            packets_out: 0,
            bytes_in: 0,
            bytes_out: 0,
            real_servers: vec![rs("HTTP 500 from /healthz")],
        }],
        ..Default::default()
    };
    assert!(report(&r).is_ok());
    r.services[0].real_servers.push(rs(&"x".repeat(513)));
    r.services[0].real_servers.push(rs("a\nb"));
    let t = HealthTransition {
        service: "198.18.0.10:80/tcp".into(),
        address: "198.18.2.1".into(),
        port: 80,
        from: HealthState::Up,
        to: HealthState::Down,
        at: 1,
        reason: Some("\u{1b}[31m".into()),
    };
    r.health_events = vec![t.clone()];
    let fields: Vec<String> = report(&r)
        .err()
        .map(|e| e.0.into_iter().map(|f| f.field).collect())
        .unwrap_or_default();
    assert_eq!(
        fields,
        vec![
            "health_events[0].reason",
            "services[0].real_servers[1].health.last_error",
            "services[0].real_servers[2].health.last_error",
        ]
    );
    r.services[0].real_servers.truncate(1);
    r.health_events = vec![
        HealthTransition {
            reason: None,
            ..t.clone()
        };
        lbfleet_proto::bounds::MAX_HEALTH_EVENTS + 1
    ];
    assert!(report(&r).is_err());
    r.health_events.clear();
    assert!(report(&r).is_ok());

    // The agent-sent texts outside health: one rule for all.
    let transition = |reason: &str| lbfleet_proto::VrrpTransition {
        from: lbfleet_proto::VrrpState::Backup,
        to: lbfleet_proto::VrrpState::Master,
        reason: reason.into(),
        at_ms: 1,
    };
    let fields_of = |r: &AgentReport| -> Vec<String> {
        report(r)
            .err()
            .map(|e| e.0.into_iter().map(|f| f.field).collect())
            .unwrap_or_default()
    };
    let mut bad = r.clone();
    bad.vrrp_transitions = vec![
        transition("master down timer expired"),
        transition("a\u{7}b"),
        transition(&"r".repeat(lbfleet_proto::bounds::MAX_TEXT + 1)),
    ];
    bad.errors = vec!["ok".into(), "line\nbreak".into()];
    bad.vrrp_master = Some("lb-02 <- trust me".into());
    bad.vrrp_dropped.insert("ttl".into(), 1);
    bad.vrrp_dropped.insert("<b>x</b>".into(), 1);
    bad.services[0].vip = "198.18.0.10; drop".into();
    bad.services[0].real_servers[0].address = "rs-1".into();
    bad.address = Some("here".into());
    assert_eq!(
        fields_of(&bad),
        vec![
            "address",
            "vrrp_master",
            "vrrp_transitions[1].reason",
            "vrrp_transitions[2].reason",
            "errors[1]",
            "vrrp_dropped[\"<b>x</b>\"]",
            "services[0].vip",
            "services[0].real_servers[0].address",
        ]
    );
    // vrrp_master: an address or a node name.
    for good in ["198.18.0.3", "fe80::1", "lb-02"] {
        let ok = AgentReport {
            vrrp_master: Some(good.into()),
            ..AgentReport::default()
        };
        assert!(report(&ok).is_ok(), "{good}");
    }
    // Counts: over the bound, the list is named and its items are not looked into.
    let flood = AgentReport {
        vrrp_transitions: vec![transition("x\n"); lbfleet_proto::bounds::MAX_VRRP_TRANSITIONS + 1],
        errors: vec![String::new(); lbfleet_proto::bounds::MAX_ERRORS + 1],
        ..AgentReport::default()
    };
    assert_eq!(fields_of(&flood), vec!["vrrp_transitions", "errors"]);
    // Many bad fields: the first twenty are named, then a count.
    let many = AgentReport {
        vrrp_transitions: vec![transition("x\n"); lbfleet_proto::bounds::MAX_VRRP_TRANSITIONS],
        ..AgentReport::default()
    };
    let got = fields_of(&many);
    assert_eq!(
        (got.len(), got.last().map(String::as_str)),
        (21, Some("..."))
    );
    // What the agent fits passes.
    let mut fitted = bad.clone();
    fitted.vrrp_master = None;
    fitted.vrrp_dropped.remove("<b>x</b>");
    fitted.services[0].vip = "198.18.0.10".into();
    fitted.services[0].real_servers[0].address = "198.18.2.1".into();
    fitted.address = None;
    lbfleet_proto::bounds::fit_report(&mut fitted);
    assert!(report(&fitted).is_ok(), "{:?}", report(&fitted));
}

#[test]
fn persistence() {
    let mut s = spec();
    s.services[0].persistence_s = 300;
    s.services[0].persistence_prefix = Some(24);
    assert!(cluster_spec(&s).is_ok());
    s.services[0].persistence_prefix = Some(33);
    assert_eq!(
        fields(cluster_spec(&s)),
        vec!["services[0].persistence_prefix"]
    );
    s.services[0].persistence_prefix = Some(24);
    s.services[0].persistence_s = MAX_PERSISTENCE_S + 1;
    assert_eq!(fields(cluster_spec(&s)), vec!["services[0].persistence_s"]);
    s.services[0].persistence_s = 0;
    assert_eq!(
        fields(cluster_spec(&s)),
        vec!["services[0].persistence_prefix"]
    );
}

#[test]
fn several_errors_are_all_reported() {
    let mut s = spec();
    s.vrid = 0;
    s.interface = "this-name-is-far-too-long".into();
    s.services[0].real_servers[0].weight = 70_000;
    assert_eq!(
        fields(cluster_spec(&s)),
        vec!["vrid", "interface", "services[0].real_servers[0].weight"]
    );
}

#[test]
fn names_macs_priorities() {
    assert!(cluster_name("ext").is_ok());
    assert!(cluster_name("Ext").is_err());
    assert!(cluster_name("-ext").is_err());
    assert!(cluster_name("").is_err());
    assert!(hostname("lb-01").is_ok());
    assert!(hostname("01").is_err());
    assert!(hostname("<script>").is_err());
    for mac_like in [
        "aa-bb-cc-00-00-01",
        "aabbcc000001",
        "aabb-cc00-0001",
        "dead-beef-cafe",
    ] {
        let err = hostname(mac_like).err().map(|e| e.message);
        assert!(
            err.as_deref().is_some_and(|m| m.contains("MAC")),
            "{mac_like}: {err:?}"
        );
    }
    for mac_like in ["aabb.cc00.0001", "aa:bb:cc:00:00:01", "AA_BB_CC_00_00_01"] {
        assert!(looks_like_mac(mac_like), "{mac_like}");
    }
    // Hex-looking names that are not twelve digits stay names.
    for name in ["lb-ext-01", "cafe", "bad-cafe-face-01", "aabbcc00000"] {
        assert!(hostname(name).is_ok(), "{name}");
    }
    assert!(password("correct horse battery").is_ok());
    assert!(password(&"\t".repeat(12)).is_err());
    assert!(password(&" ".repeat(40)).is_err());
    assert!(password("a b c d e f g h i j k").is_err());
    assert!(password("abcdefghijkl").is_ok());
    // Characters, not bytes: six two-byte letters are six.
    assert!(password("éééééé").is_err());
    assert!(password("éééééééééééé").is_ok());
    assert_eq!(
        mac("52-54-00-AB-CD-EF").ok().as_deref(),
        Some("52:54:00:ab:cd:ef")
    );
    assert!(mac("52:54:00:ab:cd").is_err());
    assert!(mac("52:54:00:ab:cd:zz").is_err());
    assert_eq!(priority(254).ok(), Some(254));
    assert!(priority(0).is_err() && priority(255).is_err());
    assert!(image_name("2026.11.1").is_ok());
    assert!(image_name("../x").is_err());
    assert!(image_file("kernel", "vmlinuz").is_ok());
    assert!(image_file("kernel", "../vmlinuz").is_err());
    assert!(image_file("kernel", "a/b").is_err());
}

#[test]
fn image_cmdlines_cannot_replace_init_or_the_boot_interface() {
    assert!(image_cmdline("console=ttyS0,115200n8 quiet panic=10").is_ok());
    // Words that merely contain the keys are fine.
    assert!(image_cmdline("systemd.unit=x initcall_debug").is_ok());
    for bad in [
        "BOOTIF=01-aa-bb-cc-00-00-01",
        "quiet bootif=01-aa-bb-cc-00-00-01",
        "init=/bin/sh",
        "rdinit=/bin/sh",
        "console=ttyS0 RDINIT=/bin/sh",
        "quiet -- init=/bin/sh",
        "lbfleet.console_shell=1",
        "LBFLEET.server=http://198.18.0.66",
    ] {
        let err = image_cmdline(bad).err();
        assert_eq!(
            err.as_ref().map(|e| e.field.as_str()),
            Some("cmdline"),
            "{bad}"
        );
    }
}

#[test]
fn report_fields_accept_addresses_and_versions_and_name_each_bad_field() {
    assert!(report_fields(Some("198.18.1.7"), Some("0.1.0"), Some("lb-2026.11")).is_ok());
    assert!(report_fields(Some("2001:db8::7"), None, None).is_ok());
    assert!(report_fields(None, None, None).is_ok());
    let Err(errs) = report_fields(Some("not-an-ip"), Some(""), Some("a b")) else {
        panic!("a bad address and bad versions were accepted");
    };
    let fields: Vec<&str> = errs.0.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["address", "agent_version", "image_version"]);
    assert!(report_fields(Some("0.0.0.0"), None, None).is_err());
    assert!(report_fields(None, Some(&"x".repeat(65)), None).is_err());
}

#[test]
fn vip_interfaces_garp_sync_and_preempt_delay() {
    let mut s = spec();
    s.vips = vec![
        "198.18.0.10".into(),
        lbfleet_proto::VipSpec {
            address: "198.18.2.254/24".into(),
            interface: Some("eth1".into()),
        },
        lbfleet_proto::VipSpec {
            address: "198.18.0.11".into(),
            interface: Some("eth0".into()),
        },
    ];
    s.conn_sync = Some(lbfleet_proto::ConnSyncSpec {
        interface: "eth1".into(),
        sync_id: 9,
    });
    s.preempt_delay_ms = 5000;
    let ValidCluster(v) = cluster_spec(&s).expect("valid");
    assert_eq!(v.vips[0], "198.18.0.10/32");
    assert_eq!(v.vips[1].interface.as_deref(), Some("eth1"));
    // The cluster's own interface named explicitly is stored the plain way.
    assert_eq!(v.vips[2], "198.18.0.11/32");

    let mut bad = s.clone();
    bad.vips[1].interface = Some("eth 1".into());
    bad.garp.count = 0;
    bad.garp.spacing_ms = 60_000;
    bad.garp.refresh_ms = 10;
    bad.preempt_delay_ms = 4_000_000;
    bad.conn_sync = Some(lbfleet_proto::ConnSyncSpec {
        interface: "".into(),
        sync_id: 0,
    });
    let errs = cluster_spec(&bad).expect_err("invalid").to_string();
    for field in [
        "vips[1].interface",
        "garp.count",
        "garp.spacing_ms",
        "garp.refresh_ms",
        "preempt_delay_ms",
        "conn_sync.interface",
    ] {
        assert!(errs.contains(field), "{field} missing in {errs}");
    }
}

/// DR rewrites only the MAC: a DR real server outside every subnet the cluster's VIPs name cannot be reached.
/// TUN and NAT can route; a spec of host-only VIPs names no subnet, so nothing is refused on that ground.
#[test]
fn a_dr_real_server_must_be_on_the_balancers_segment() {
    let mut s = spec();
    s.vips = vec![
        "198.18.0.10/24".into(),
        VipSpec {
            address: "198.18.2.254/24".into(),
            interface: Some("eth1".into()),
        },
    ];
    s.services[0].forward = ForwardMethod::Dr;
    s.services[0].real_servers[0].port = 80;
    s.services[0].real_servers[0].address = "198.18.0.51".into();
    assert!(cluster_spec(&s).is_ok());
    s.services[0].real_servers[0].address = "198.18.2.51".into();
    assert!(cluster_spec(&s).is_ok(), "the internal VIP's subnet counts");
    s.services[0].real_servers[0].address = "198.18.5.1".into();
    let err = cluster_spec(&s).expect_err("another subnet");
    assert_eq!(err.0[0].field, "services[0].real_servers[0].address");
    assert!(
        err.0[0].message.contains("198.18.0.0/24") || err.0[0].message.contains("198.18.0.10/24"),
        "{}",
        err.0[0].message
    );
    s.services[0].forward = ForwardMethod::Tun;
    assert!(cluster_spec(&s).is_ok(), "tun routes to any subnet");
    s.services[0].forward = ForwardMethod::Dr;
    s.vips = vec!["198.18.0.10/32".into()];
    assert!(cluster_spec(&s).is_ok(), "no subnet known: not refused");
    assert!(in_subnet(
        "198.18.0.77".parse().unwrap(),
        "198.18.0.10".parse().unwrap(),
        24
    ));
    assert!(!in_subnet(
        "198.18.1.77".parse().unwrap(),
        "198.18.0.10".parse().unwrap(),
        24
    ));
    assert!(in_subnet(
        "2001:2::9".parse().unwrap(),
        "2001:2::1".parse().unwrap(),
        64
    ));
    assert!(!in_subnet(
        "198.18.0.1".parse().unwrap(),
        "2001:2::1".parse().unwrap(),
        0
    ));
}
