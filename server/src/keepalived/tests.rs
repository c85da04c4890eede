//! Parser tests, one per feature of keepalived's configuration language, and mapping tests against small
//! configurations written the way keepalived's own samples are.

use std::path::Path;

use super::parser::{parse, Config, Limits, ParseError, Statement};
use super::source::{expand_braces, matches, MemorySource};

fn read(src: &mut MemorySource, id: &str) -> Config {
    parse(
        src,
        Path::new("/etc/keepalived/keepalived.conf"),
        id,
        Limits::default(),
    )
    .expect("parses")
}

fn one(text: &str, id: &str) -> Config {
    read(
        &mut MemorySource::new().with("/etc/keepalived/keepalived.conf", text),
        id,
    )
}

/// Every statement as `file:line words...`, depth-first, blocks indented by two spaces per level.
fn flat(c: &Config) -> Vec<String> {
    fn walk(s: &[Statement], depth: usize, out: &mut Vec<String>) {
        for st in s {
            let file = st.loc.file.rsplit('/').next().unwrap_or("");
            out.push(format!(
                "{}{}:{} {}",
                "  ".repeat(depth),
                file,
                st.loc.line,
                st.words.join(" ")
            ));
            walk(st.children(), depth + 1, out);
        }
    }
    let mut out = Vec::new();
    walk(&c.statements, 0, &mut out);
    out
}

#[test]
fn blocks_comments_and_locations() {
    let c = one(
        "! Configuration File\nglobal_defs {\n   router_id LVS_DEVEL # here\n}\n\nvirtual_server 198.18.0.10 80\n{\n  delay_loop 6\n  real_server 198.18.2.1 80 { weight 1 }\n}\n",
        "lb1",
    );
    assert_eq!(
        flat(&c),
        [
            "keepalived.conf:2 global_defs",
            "  keepalived.conf:3 router_id LVS_DEVEL",
            "keepalived.conf:6 virtual_server 198.18.0.10 80",
            "  keepalived.conf:8 delay_loop 6",
            "  keepalived.conf:9 real_server 198.18.2.1 80",
            "    keepalived.conf:9 weight 1",
        ]
    );
    assert!(c.diagnostics.is_empty(), "{:?}", c.diagnostics);
}

#[test]
fn unbalanced_braces_are_reported_not_fatal() {
    let c = one("}\na {\n b\n", "x");
    assert_eq!(flat(&c), ["keepalived.conf:2 a", "  keepalived.conf:3 b"]);
    let msgs: Vec<String> = c.diagnostics.iter().map(|d| d.to_string()).collect();
    assert_eq!(
        msgs,
        [
            "/etc/keepalived/keepalived.conf:1: '}' without a block to close (ignored)",
            "/etc/keepalived/keepalived.conf:2: block 'a' is not closed",
        ]
    );
}

#[test]
fn includes_glob_relative_to_the_including_file() {
    let mut src = MemorySource::new()
        .with(
            "/etc/keepalived/keepalived.conf",
            "include conf.d/*.conf\ninclude /srv/{a,b}.conf\ninclude missing/*.conf\n",
        )
        .with(
            "/etc/keepalived/conf.d/20-b.conf",
            "b 1\ninclude ../inc/x.conf\n",
        )
        .with("/etc/keepalived/conf.d/10-a.conf", "a 1\n")
        .with("/etc/keepalived/conf.d/skip.txt", "no 1\n")
        .with("/etc/keepalived/inc/x.conf", "x 1\n")
        .with("/srv/a.conf", "sa 1\n")
        .with("/srv/b.conf", "sb 1\n");
    let c = read(&mut src, "lb1");
    assert_eq!(
        flat(&c),
        [
            "10-a.conf:1 a 1",
            "20-b.conf:1 b 1",
            "x.conf:1 x 1",
            "a.conf:1 sa 1",
            "b.conf:1 sb 1",
        ]
    );
    assert_eq!(c.diagnostics.len(), 1);
    assert!(c.diagnostics[0].message.contains("matched no file"));
    assert_eq!(c.diagnostics[0].loc.line, 3);
}

#[test]
fn a_block_may_span_an_include() {
    let mut src = MemorySource::new()
        .with(
            "/etc/keepalived/keepalived.conf",
            "virtual_server 198.18.0.10 80 {\ninclude rs.conf\n}\n",
        )
        .with(
            "/etc/keepalived/rs.conf",
            "real_server 198.18.2.1 80 {\n}\n",
        );
    assert_eq!(
        flat(&read(&mut src, "x")),
        [
            "keepalived.conf:1 virtual_server 198.18.0.10 80",
            "  rs.conf:1 real_server 198.18.2.1 80"
        ]
    );
}

#[test]
fn include_loops_are_cut_and_reported() {
    let mut src = MemorySource::new()
        .with(
            "/etc/keepalived/keepalived.conf",
            "a 1\ninclude keepalived.conf\ninclude b.conf\n",
        )
        .with("/etc/keepalived/b.conf", "b 1\ninclude keepalived.conf\n");
    let c = read(&mut src, "x");
    assert_eq!(flat(&c), ["keepalived.conf:1 a 1", "b.conf:1 b 1"]);
    assert_eq!(c.diagnostics.len(), 2, "{:?}", c.diagnostics);
    assert!(c
        .diagnostics
        .iter()
        .all(|d| d.message.contains("include loop")));
}

#[test]
fn conditional_lines_follow_the_config_id() {
    let text = "global_defs {\n @main router_id main_router\n @backup router_id backup_router\n}\nunicast_peer {\n @^main 1.2.3.4\n @^backup 1.2.3.5\n @^backup2 1.2.3.6\n}\n";
    let words = |id: &str| -> Vec<String> {
        flat(&one(text, id))
            .into_iter()
            .map(|l| {
                l.trim_start()
                    .split_once(' ')
                    .map(|x| x.1.to_owned())
                    .unwrap_or_default()
            })
            .collect()
    };
    // The man page's example: main gets router_id main_router and peers .5 and .6.
    assert_eq!(
        words("main"),
        [
            "global_defs",
            "router_id main_router",
            "unicast_peer",
            "1.2.3.5",
            "1.2.3.6"
        ]
    );
    assert_eq!(
        words("backup"),
        [
            "global_defs",
            "router_id backup_router",
            "unicast_peer",
            "1.2.3.4",
            "1.2.3.6"
        ]
    );
    assert_eq!(
        words("other"),
        [
            "global_defs",
            "unicast_peer",
            "1.2.3.4",
            "1.2.3.5",
            "1.2.3.6"
        ]
    );
}

#[test]
fn parameters_substitute_recursively_at_use_time() {
    let c = one(
        "$ADDRESS_BASE=10.2.${ADDRESS_BASE_SUB}\n$ADDRESS_BASE_SUB=0\nvip ${ADDRESS_BASE}.100/32\n$ADDRESS_BASE_SUB=10\nvip ${ADDRESS_BASE}.100/32\nkeep ${UNDEFINED} $UNDEFINED2 cost$5\n@main $PRIORITY=240\n@backup $PRIORITY=200\npriority $PRIORITY\n$IF_MAIN=@main\n$IF_MAIN weight 3\nx ${_HASH}${_BANG} ${_INSTANCE} ${_PWD}\n",
        "main",
    );
    assert_eq!(
        flat(&c),
        [
            "keepalived.conf:3 vip 10.2.0.100/32",
            "keepalived.conf:5 vip 10.2.10.100/32",
            "keepalived.conf:6 keep ${UNDEFINED} $UNDEFINED2 cost$5",
            "keepalived.conf:9 priority 240",
            "keepalived.conf:11 weight 3",
            "keepalived.conf:12 x #! main /etc/keepalived",
        ]
    );
    let backup = one(
        "@main $P=240\n@backup $P=200\npriority $P\n$IF=@main\n$IF weight 3\n",
        "backup",
    );
    assert_eq!(flat(&backup), ["keepalived.conf:3 priority 200"]);
}

#[test]
fn multi_line_parameters_expand_to_lines_and_nest() {
    let c = one(
        "$RS= \\\n  real_server 198.18.${VS}.${RS_NUM} 80 { \\\n    weight ${RS_NUM} \\\n  }\n$VS_BLOCK= \\\nvirtual_server 198.18.0.${VS} 80 { \\\n  $RS_NUM=1 \\\n  $RS \\\n  $RS_NUM=2 \\\n  $RS \\\n}\n$VS=1\n$VS_BLOCK\n$VS=2\n$VS_BLOCK\n",
        "x",
    );
    assert_eq!(
        flat(&c),
        [
            "keepalived.conf:6 virtual_server 198.18.0.1 80",
            "  keepalived.conf:2 real_server 198.18.1.1 80",
            "    keepalived.conf:3 weight 1",
            "  keepalived.conf:2 real_server 198.18.1.2 80",
            "    keepalived.conf:3 weight 2",
            "keepalived.conf:6 virtual_server 198.18.0.2 80",
            "  keepalived.conf:2 real_server 198.18.2.1 80",
            "    keepalived.conf:3 weight 1",
            "  keepalived.conf:2 real_server 198.18.2.2 80",
            "    keepalived.conf:3 weight 2",
        ]
    );
}

#[test]
fn seq_and_lst_repeat_the_rest_of_the_line() {
    let c = one(
        "~SEQ(SUBNET, 0, 3) ip_address 10.0.${SUBNET}.1\n~SEQx(S, 0x90, 0x10, 0xc0) a fe80::${S}:1\n~SEQ(N, 3) n ${N}\n~SEQ(D, 2, 1) d ${D}\n~LST({IP, IP1}, {10,1},{20,4}) 192.168.${IP}.${IP1}\n~LST(A, 1, 2) ~LST(B, 5,6) p ${A}.${B}\n",
        "x",
    );
    let words: Vec<String> = flat(&c)
        .into_iter()
        .map(|l| {
            l.trim_start()
                .split_once(' ')
                .map(|x| x.1.to_owned())
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(
        words,
        [
            "ip_address 10.0.0.1",
            "ip_address 10.0.1.1",
            "ip_address 10.0.2.1",
            "ip_address 10.0.3.1",
            "a fe80::90:1",
            "a fe80::a0:1",
            "a fe80::b0:1",
            "a fe80::c0:1",
            "n 1",
            "n 2",
            "n 3",
            "d 2",
            "d 1",
            "192.168.10.1",
            "192.168.20.4",
            "p 1.5",
            "p 1.6",
            "p 2.5",
            "p 2.6",
        ]
    );
    for bad in ["~SEQ(X, 1, 0, 5) a", "~LST({A, B}, {1}) a", "~SEQ(X, 1 a"] {
        let r = parse(
            &mut MemorySource::new().with("/k.conf", bad),
            Path::new("/k.conf"),
            "x",
            Limits::default(),
        );
        assert!(matches!(r, Err(ParseError::Limit { .. })), "{bad}: {r:?}");
    }
}

#[test]
fn runaway_expansion_is_an_error_not_a_hang() {
    let small = Limits {
        lines: 1000,
        ..Limits::default()
    };
    for text in [
        "$A=x${A}\nv ${A}\n",
        "$A= \\\n$A\n$A\n",
        "~SEQ(I, 1, 100000) ~SEQ(J, 1, 100000) ~SEQ(K, 1, 100000) @never x\n",
        "~SEQ(I, 1, 100000) v $I\n",
    ] {
        let r = parse(
            &mut MemorySource::new().with("/k.conf", text),
            Path::new("/k.conf"),
            "x",
            small,
        );
        assert!(
            matches!(r, Err(ParseError::Limit { .. })),
            "{text:?}: {r:?}"
        );
    }
    let r = parse(
        &mut MemorySource::new().with("/k.conf", "a 1\n"),
        Path::new("/nope.conf"),
        "x",
        small,
    );
    assert!(matches!(r, Err(ParseError::Read(_))), "{r:?}");
}

#[test]
fn globs_and_braces() {
    assert!(matches("*.conf", "a.conf"));
    assert!(!matches("*.conf", "a.conf.bak"));
    assert!(matches("[0-9][!x]?.c*", "12z.conf"));
    assert!(!matches("[0-9]*", "a1"));
    assert!(matches("a\\*", "a*"));
    assert_eq!(
        expand_braces("{foo/{,cat,dog},bar}", 100).expect("expands"),
        ["foo/", "foo/cat", "foo/dog", "bar"]
    );
    assert!(expand_braces("{a,b}{a,b}{a,b}{a,b}", 8).is_err());
}

mod mapping {
    use lbfleet_proto::{CheckKind, DownAction, ForwardMethod, Protocol, Role, Scheduler};

    use super::super::mapping::{node_name, plan, ImportPlan, Machine};
    use super::*;

    fn machine(text: &str, id: &str) -> Machine {
        let config = one(text, id);
        Machine {
            node: node_name(&config, id),
            config,
        }
    }

    fn reasons(p: &ImportPlan) -> Vec<String> {
        p.not_imported
            .iter()
            .map(|n| format!("{}:{} {}", n.loc.line, n.directive, n.reason))
            .collect()
    }

    const PAIR: &str = r#"
global_defs {
  @lb1 router_id lb1
  @lb2 router_id lb2
}
vrrp_instance VI_1 {
  @lb1 state MASTER
  @lb2 state BACKUP
  interface eth0
  virtual_router_id 51
  @lb1 priority 150
  @lb2 priority 100
  advert_int 1
  virtual_ipaddress {
    198.18.0.10/32
    198.18.2.254/24 dev eth1
  }
}
virtual_server 198.18.0.10 80 {
  delay_loop 6
  lb_algo wrr
  lb_kind NAT
  persistence_timeout 300
  persistence_granularity 255.255.255.0
  protocol TCP
  inhibit_on_failure
  sorry_server 198.18.2.9 8080
  real_server 198.18.2.1 8080 {
    weight 2
    HTTP_GET {
      url {
        path /healthz
        status_code 200
      }
      connect_timeout 3
      retry 2
    }
  }
  real_server 198.18.2.2 8080 {
    weight 1
    HTTP_GET {
      url {
        path /healthz
        status_code 200
      }
      connect_timeout 3
      retry 2
    }
  }
  real_server 198.18.2.3 8080 {
    TCP_CHECK {
      connect_timeout 2
    }
  }
}
"#;

    #[test]
    fn one_file_with_conditionals_is_one_cluster_with_active_and_backup() {
        let p = plan(&[machine(PAIR, "lb1"), machine(PAIR, "lb2")]);
        assert!(p.lossless(), "{:?}", reasons(&p));
        assert_eq!(p.clusters.len(), 1);
        let c = &p.clusters[0];
        assert_eq!(c.name, "vi-1");
        assert_eq!(
            c.members
                .iter()
                .map(|m| (m.node.as_str(), m.role, m.priority))
                .collect::<Vec<_>>(),
            [("lb1", Role::Active, 150), ("lb2", Role::Backup, 100)]
        );
        let s = &c.spec;
        assert_eq!(
            (
                s.vrid,
                s.interface.as_str(),
                s.vrrp_version,
                s.advert_interval_ms
            ),
            (51, "eth0", 2, 1000)
        );
        assert_eq!(s.vips[1].to_string(), "198.18.2.254/24 dev eth1");
        assert_eq!(s.services.len(), 1);
        let svc = &s.services[0];
        assert_eq!(
            (
                svc.port,
                svc.protocol,
                svc.scheduler,
                svc.forward,
                svc.persistence_s,
                svc.persistence_prefix
            ),
            (
                80,
                Protocol::Tcp,
                Scheduler::Wrr,
                ForwardMethod::Nat,
                300,
                Some(24)
            )
        );
        let weights: Vec<(String, u16, u32)> = svc
            .real_servers
            .iter()
            .map(|r| (r.address.clone(), r.port, r.weight))
            .collect();
        assert_eq!(
            weights,
            [
                ("198.18.2.1".into(), 8080, 2),
                ("198.18.2.2".into(), 8080, 1),
                ("198.18.2.3".into(), 8080, 1)
            ]
        );
        let chk = &svc.check;
        assert_eq!(chk.kind, CheckKind::Http);
        assert_eq!(
            (chk.path.as_deref(), chk.expect_status),
            (Some("/healthz"), Some(200))
        );
        assert_eq!(
            (chk.interval_ms, chk.timeout_ms, chk.rise, chk.fall),
            (6000, 3000, 1, 3)
        );
        assert_eq!(chk.on_down, DownAction::Drain);
        assert_eq!(chk.sorry_server.as_ref().map(|s| s.port), Some(8080));
        assert_eq!(chk.overrides.len(), 1);
        assert_eq!(chk.overrides[0].address, "198.18.2.3");
        assert_eq!(chk.overrides[0].check.kind, CheckKind::Tcp);
        assert_eq!(chk.overrides[0].check.timeout_ms, 2000);
    }

    #[test]
    fn two_files_pair_by_vrid_and_vips_and_report_differences() {
        let a = "vrrp_instance A { state MASTER\n interface eth0\n virtual_router_id 7\n priority 200\n virtual_ipaddress {\n 198.18.0.20\n }\n}\n";
        let b = "vrrp_instance B { state BACKUP\n interface ens3\n virtual_router_id 7\n priority 90\n virtual_ipaddress {\n 198.18.0.20\n }\n notify_master /bin/x\n}\n";
        let p = plan(&[machine(a, "one"), machine(b, "two")]);
        assert_eq!(p.clusters.len(), 1);
        assert_eq!(p.clusters[0].spec.interface, "eth0");
        assert_eq!(p.clusters[0].members[1].role, Role::Backup);
        assert!(!p.lossless());
        let r = reasons(&p);
        assert!(
            r.iter()
                .any(|l| l.starts_with("8:notify_master /bin/x lbfleet runs no notify")),
            "{r:?}"
        );
        assert!(
            r.iter()
                .any(|l| l.contains("interface ens3") && l.contains("differs from eth0")),
            "{r:?}"
        );

        // The same VRID with other VIPs is not a pair.
        let c = "vrrp_instance C { interface eth0\n virtual_router_id 7\n virtual_ipaddress {\n 198.18.0.21\n }\n}\n";
        let p = plan(&[machine(a, "one"), machine(c, "two")]);
        assert_eq!(p.clusters.len(), 1);
        assert!(
            reasons(&p)
                .iter()
                .any(|l| l.contains("VRID 7 is also used")),
            "{:?}",
            reasons(&p)
        );
    }

    #[test]
    fn sync_group_is_one_cluster_whose_vips_move_together() {
        let text = "vrrp_sync_group G1 {\n group {\n VI_EXT\n VI_INT\n }\n}\nvrrp_instance VI_EXT {\n state MASTER\n interface eth0\n virtual_router_id 51\n priority 150\n virtual_ipaddress {\n 198.18.0.10\n }\n}\nvrrp_instance VI_INT {\n state MASTER\n interface eth1\n virtual_router_id 52\n priority 150\n virtual_ipaddress {\n 198.18.2.254/24\n }\n}\n";
        let p = plan(&[machine(text, "lb1")]);
        assert!(p.lossless(), "{:?}", reasons(&p));
        assert_eq!(p.clusters.len(), 1);
        let c = &p.clusters[0];
        assert_eq!((c.name.as_str(), c.spec.vrid), ("g1", 51));
        assert_eq!(
            c.spec
                .vips
                .iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>(),
            ["198.18.0.10/32", "198.18.2.254/24 dev eth1"]
        );
        assert_eq!(c.members[0].role, Role::Active);
    }

    #[test]
    fn groups_fwmarks_and_unsupported_directives_are_named_with_their_lines() {
        let text = "vrrp_instance V {\n interface eth0\n virtual_router_id 9\n virtual_ipaddress {\n 198.18.0.30\n 198.18.0.31\n 198.18.0.32\n }\n}\nvirtual_server_group G {\n 198.18.0.30-31 80\n fwmark 1\n}\nvirtual_server group G {\n lb_kind DR\n real_server 198.18.2.1 8080 {\n MISC_CHECK {\n misc_path \"/usr/bin/check --fast\"\n misc_dynamic\n }\n }\n}\nvirtual_server fwmark 3 {\n}\nvirtual_server 198.18.0.99 53 {\n protocol UDP\n}\nvirtual_server 198.18.0.32 443 {\n alpha\n quorum 2\n real_server 198.18.2.1 443 {\n weight 3\n SSL_GET {\n url {\n path /\n digest abc\n }\n }\n }\n real_server 198.18.2.2 443 {\n }\n}\n";
        let p = plan(&[machine(text, "lb1")]);
        let svcs: Vec<String> = p.clusters[0]
            .spec
            .services
            .iter()
            .map(|s| {
                format!(
                    "{}:{} {} rs:{}",
                    s.vip, s.port, s.forward, s.real_servers[0].port
                )
            })
            .collect();
        // DR real servers take the service's port, as keepalived does.
        assert_eq!(
            svcs,
            [
                "198.18.0.30:80 dr rs:80",
                "198.18.0.31:80 dr rs:80",
                "198.18.0.32:443 nat rs:443"
            ]
        );
        let s30 = &p.clusters[0].spec.services[0];
        assert_eq!(
            (s30.check.kind, s30.check.script.as_deref()),
            (CheckKind::Script, Some("check"))
        );
        assert_eq!(s30.check.on_down, DownAction::Remove);
        let r = reasons(&p);
        for want in [
            "12:fwmark 1 firewall-mark services are not supported",
            "18:misc_path /usr/bin/check --fast script arguments are not passed",
            "19:misc_dynamic a script cannot set the weight",
            "23:virtual_server fwmark 3 firewall-mark services",
            "25:virtual_server 198.18.0.99 53 198.18.0.99 is not a VIP",
            "29:alpha lbfleet starts",
            "28:quorum 2 keepalived's quorum is a sum of weights",
            "36:digest abc lbfleet does not compare",
        ] {
            assert!(r.iter().any(|l| l.starts_with(want)), "{want}: {r:?}");
        }
        assert_eq!(r.len(), 8, "{r:?}");
    }

    #[test]
    fn a_cluster_the_fleet_would_refuse_is_reported_whole() {
        let text = "vrrp_instance V6 {\n interface eth0\n virtual_router_id 9\n virtual_ipaddress {\n 2001:2::10/64\n }\n}\n";
        let p = plan(&[machine(text, "lb1")]);
        assert!(p.clusters.is_empty());
        let r = reasons(&p);
        assert!(
            r.iter().any(
                |l| l.starts_with("1:cluster v6 the cluster is not imported: vips[0]")
                    && l.contains("IPv6")
            ),
            "{r:?}"
        );
    }
}
