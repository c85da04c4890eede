//! VM tier, the keepalived import's real proof (issue 22): keepalived itself, run on a keepalived.conf, and
//! lbfleet-agent, run on the role lbfleet imports from the same file, program the same IPVS table.
//!
//! Two configurations, NAT and DR/TUN, each with TCP checks on real servers that answer (198.18.2.1 and .2
//! on the guest's loopback, `guest-tcp` echo servers) and on one that does not (198.18.2.3): keepalived
//! removes it from a service without `inhibit_on_failure` and sets its weight to 0 in one with it, and so must
//! lbfleet (`on_down: remove` / `drain`). In one QEMU guest with IPVS: keepalived runs on the file until the
//! failed server is out, `ipvsadm -Ln` is recorded, keepalived stops and the table is cleared; then
//! `lbfleet-agent apply --watch` runs the imported role until the same, and `ipvsadm -Ln` is recorded again.
//! The two tables, normalized (`lbfleet_tests::ipvsadm::normalize_ipvsadm`: services, schedulers, persistence,
//! forwarding methods, weights), must be equal, and hold what the files ask for.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use lbfleet_proto::{ClusterSpec, RealServer, RoleDocument, VirtualService};
use lbfleet_server::keepalived::{plan, read_machines, Limits, MemorySource};
use lbfleet_tests::guest::{self, Initramfs, Section, SharedGuest};
use lbfleet_tests::ipvsadm::normalize_ipvsadm;

const NAT: &str = r#"
global_defs {
  router_id lb1
}
vrrp_instance NAT {
  state MASTER
  interface lbk0
  virtual_router_id 71
  priority 150
  advert_int 1
  virtual_ipaddress {
    198.18.0.10/32
  }
}
virtual_server 198.18.0.10 80 {
  delay_loop 1
  lb_algo wrr
  lb_kind NAT
  protocol TCP
  persistence_timeout 300
  persistence_granularity 255.255.255.0
  real_server 198.18.2.1 8080 {
    weight 3
    TCP_CHECK {
      connect_timeout 1
    }
  }
  real_server 198.18.2.2 8080 {
    weight 2
    TCP_CHECK {
      connect_timeout 1
    }
  }
  real_server 198.18.2.3 8080 {
    weight 1
    TCP_CHECK {
      connect_timeout 1
    }
  }
}
virtual_server 198.18.0.10 443 {
  delay_loop 1
  lb_algo lc
  lb_kind NAT
  protocol TCP
  inhibit_on_failure
  real_server 198.18.2.1 8443 {
    weight 4
    TCP_CHECK {
      connect_timeout 1
    }
  }
  real_server 198.18.2.3 8443 {
    weight 2
    TCP_CHECK {
      connect_timeout 1
    }
  }
}
virtual_server 198.18.0.10 53 {
  delay_loop 1
  lb_algo sh
  lb_kind NAT
  protocol UDP
  real_server 198.18.2.1 53 {
    weight 1
  }
  real_server 198.18.2.2 53 {
    weight 5
  }
}
"#;

const DR: &str = r#"
global_defs {
  router_id lb1
}
vrrp_instance DR {
  state MASTER
  interface lbk0
  virtual_router_id 72
  priority 150
  advert_int 1
  virtual_ipaddress {
    198.18.0.20/32
  }
}
virtual_server 198.18.0.20 80 {
  delay_loop 1
  lb_algo rr
  lb_kind DR
  protocol TCP
  persistence_timeout 60
  real_server 198.18.2.1 80 {
    weight 1
    TCP_CHECK {
      connect_port 8080
      connect_timeout 1
    }
  }
  real_server 198.18.2.2 80 {
    weight 2
    TCP_CHECK {
      connect_port 8080
      connect_timeout 1
    }
  }
  real_server 198.18.2.3 80 {
    weight 3
    TCP_CHECK {
      connect_port 8080
      connect_timeout 1
    }
  }
}
virtual_server 198.18.0.20 443 {
  delay_loop 1
  lb_algo wlc
  lb_kind DR
  protocol TCP
  inhibit_on_failure
  real_server 198.18.2.1 443 {
    weight 5
    TCP_CHECK {
      connect_port 8080
      connect_timeout 1
    }
  }
  real_server 198.18.2.3 443 {
    weight 6
    TCP_CHECK {
      connect_port 8080
      connect_timeout 1
    }
  }
}
virtual_server 198.18.0.20 25 {
  delay_loop 1
  lb_algo sh
  lb_kind TUN
  protocol TCP
  real_server 198.18.2.2 25 {
    weight 7
  }
}
"#;

/// What lbfleet imports from `text`: the one cluster's spec (the import must be lossless).
fn imported(name: &str, text: &str) -> ClusterSpec {
    let path = PathBuf::from(format!("/upload/{name}.conf"));
    let mut src = MemorySource::new().with(&path, text.to_owned());
    let machines = read_machines(&mut src, &[path], &["lb1".into()], "", Limits::default())
        .expect("the file reads");
    let p = plan(&machines);
    assert!(
        p.not_imported.is_empty(),
        "{name}: not imported: {:?}",
        p.not_imported
    );
    assert_eq!(p.clusters.len(), 1, "{name}");
    p.clusters.into_iter().next().unwrap().spec
}

/// The role document the server would hand the active node (`Fleet::role_document`), without VRRP: this test
/// compares the IPVS table, which keepalived's checkers program whatever the VRRP state.
fn role(name: &str, spec: &ClusterSpec) -> RoleDocument {
    RoleDocument {
        reboot_generation: 0,
        generation: 1,
        node: "lb1".into(),
        cluster: Some(name.into()),
        role: None,
        vrrp: None,
        services: spec
            .services
            .iter()
            .map(|s| VirtualService {
                vip: s.vip.parse().unwrap(),
                port: s.port,
                protocol: s.protocol,
                scheduler: s.scheduler,
                forward: s.forward,
                persistence_s: s.persistence_s,
                persistence_prefix: s.persistence_prefix,
                check: s.check.clone(),
                real_servers: s
                    .real_servers
                    .iter()
                    .map(|r| RealServer {
                        address: r.address.parse().unwrap(),
                        port: r.port,
                        weight: r.weight,
                        enabled: r.enabled.unwrap_or(true),
                    })
                    .collect(),
            })
            .collect(),
    }
}

const SCRIPT: &str = r#"
ip() { /usr/local/sbin/ip "$@"; }
. /lib/guest-lib.sh
export RUST_LOG=info
mount -t tmpfs tmpfs /run
ip link set lo up
for a in 1 2 3; do ip addr add 198.18.2.$a/32 dev lo; done
# keepalived's VRRP needs an interface with an address (its state does not matter here: the checkers program
# IPVS on MASTER and BACKUP alike).
ip link add lbk0 type veth peer name lbk0p
ip addr add 198.18.1.1/24 dev lbk0
ip link set lbk0 up
ip link set lbk0p up
guest-tcp echo-server 198.18.2.1:8080 > /tmp/e1.log 2>&1 &
guest-tcp echo-server 198.18.2.2:8080 > /tmp/e2.log 2>&1 &
guest-tcp echo-server 198.18.2.1:8443 > /tmp/e3.log 2>&1 &
waitfor /tmp/e1.log listening
waitfor /tmp/e2.log listening
waitfor /tmp/e3.log listening
# Waits (at most 60 s) until `ipvsadm -Ln` matches the extended regular expression $1 and not $2.
settled() {
  i=0
  while t=$(ipvsadm -Ln); ! echo "$t" | grep -Eq "$1" || echo "$t" | grep -Eq "$2"; do
    i=$((i+1))
    if [ $i -gt 600 ]; then echo "TIMEOUT waiting for /$1/ without /$2/"; echo "$t"; return 1; fi
    sleep 0.1
  done
  echo "settled after $i polls"
}
# $1 name, $2 what a settled table shows (the inhibited server at weight 0), $3 what it must not (the removed one).
differential() {
  keepalived -n -l -D -f /$1.conf -p /run/k.pid -r /run/kv.pid -c /run/kc.pid > /tmp/k-$1.log 2>&1 &
  KPID=$!
  run k_settle_$1 settled "$2" "$3"
  run keepalived_$1 ipvsadm -Ln
  kill $KPID
  wait $KPID
  ipvsadm -C
  run empty_$1 ipvsadm -Ln
  lbfleet-agent apply --role /$1.json --watch --resync 1s --state-dir /tmp/s-$1 > /tmp/a-$1.log 2>&1 &
  APID=$!
  run a_settle_$1 settled "$2" "$3"
  run lbfleet_$1 ipvsadm -Ln
  kill $APID
  wait $APID
  ipvsadm -C
  run logs_$1 sh -c "cat /tmp/k-$1.log; echo ---; cat /tmp/a-$1.log"
}
differential nat "198.18.2.3:8443 +Masq +0 " "198.18.2.3:8080"
differential dr "198.18.2.3:443 +Route +0 " "198.18.2.3:80 "
"#;

static GUEST: SharedGuest = SharedGuest::new();

fn section(name: &str) -> Option<Section> {
    let out = GUEST.output(
        |prereqs| {
            let agent = guest::workspace_binary("lbfleet-agent", "lbfleet-agent")?;
            let tcp = PathBuf::from(env!("CARGO_BIN_EXE_guest-tcp"));
            let keepalived = PathBuf::from("/usr/sbin/keepalived");
            if !keepalived.is_file() {
                return Err(guest::HarnessError::Missing(vec![
                    "keepalived (package keepalived)".into(),
                ]));
            }
            let mut img = Initramfs::with_modules(prereqs, &["veth"])?;
            img.iproute2()?;
            img.binary(&agent, "/usr/bin/lbfleet-agent")?;
            img.binary(&tcp, "/usr/bin/guest-tcp")?;
            img.binary(&keepalived, "/usr/sbin/keepalived")?;
            for (name, text) in [("nat", NAT), ("dr", DR)] {
                img.file(&format!("/{name}.conf"), text.as_bytes());
                let spec = imported(name, text);
                img.file(
                    &format!("/{name}.json"),
                    &serde_json::to_vec(&role(name, &spec)).unwrap(),
                );
            }
            img.script(SCRIPT);
            Ok(img)
        },
        "lbfleet-guest-keepalived-console.log",
    )?;
    Some(out.require_section(name))
}

/// Both programs settled, and their tables, normalized, are the same and hold `want` (so an empty or
/// half-programmed pair of tables cannot pass).
fn same_table(name: &str, want: &[&str]) {
    let Some(k) = section(&format!("keepalived_{name}")) else {
        return;
    };
    let logs = section(&format!("logs_{name}")).unwrap().text;
    for phase in ["k_settle", "a_settle"] {
        let s = section(&format!("{phase}_{name}")).unwrap();
        assert!(
            s.text.contains("settled after"),
            "{phase} {name}: {}\n{logs}",
            s.text
        );
    }
    let empty = section(&format!("empty_{name}")).unwrap().text;
    assert!(
        normalize_ipvsadm(&empty).is_empty(),
        "keepalived left IPVS entries behind: {empty}"
    );
    let l = section(&format!("lbfleet_{name}")).unwrap();
    let kt = normalize_ipvsadm(&k.text);
    let lt = normalize_ipvsadm(&l.text);
    assert_eq!(
        kt, lt,
        "{name}: keepalived and lbfleet programmed different IPVS tables\nkeepalived:\n{}\nlbfleet:\n{}\n{logs}",
        k.text, l.text
    );
    for w in want {
        assert!(
            kt.iter().any(|line| line == w),
            "{name}: {w:?} not in {kt:#?}"
        );
    }
    eprintln!("{name}: the same {} lines:\n{}", kt.len(), kt.join("\n"));
}

#[test]
fn nat_keepalived_and_lbfleet_program_the_same_ipvs_table() {
    same_table(
        "nat",
        &[
            "S TCP 198.18.0.10:80 wrr persistent 300 mask 255.255.255.0",
            "D TCP 198.18.0.10:80 wrr persistent 300 mask 255.255.255.0 -> 198.18.2.1:8080 Masq 3",
            "D TCP 198.18.0.10:80 wrr persistent 300 mask 255.255.255.0 -> 198.18.2.2:8080 Masq 2",
            "D TCP 198.18.0.10:443 lc -> 198.18.2.3:8443 Masq 0",
            "D TCP 198.18.0.10:443 lc -> 198.18.2.1:8443 Masq 4",
            "D UDP 198.18.0.10:53 sh -> 198.18.2.2:53 Masq 5",
        ],
    );
}

#[test]
fn dr_and_tun_keepalived_and_lbfleet_program_the_same_ipvs_table() {
    same_table(
        "dr",
        &[
            "S TCP 198.18.0.20:80 rr persistent 60",
            "D TCP 198.18.0.20:80 rr persistent 60 -> 198.18.2.2:80 Route 2",
            "D TCP 198.18.0.20:443 wlc -> 198.18.2.3:443 Route 0",
            "D TCP 198.18.0.20:25 sh -> 198.18.2.2:25 Tunnel 7",
        ],
    );
}
