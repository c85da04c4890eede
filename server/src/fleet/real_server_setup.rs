//! What the real servers of a cluster need for direct routing (DR) and IP-in-IP tunnelling (TUN), which lbfleet
//! does not run itself: the VIPs on the loopback interface, which the host then does not answer ARP for
//! (`arp_ignore=1`, `arp_announce=2`), for DR (`lo` rather than a `dummy` link: every kernel has it), the `ipip` tunnel with loose reverse-path filtering for TUN.
//! An IPv6 VIP on `lo` needs no sysctl: Linux answers a neighbour solicitation only for an address of the
//! interface it arrived on, so the real server never claims the VIP on the segment.
//! A pure function of the cluster spec ([`plan`]); `lbfleet-server realserver` prints it as a shell script
//! ([`RealServerPlan::script`]) or JSON, and the cluster page shows it. NAT real servers need only a route
//! back through the balancer (the internal VIP), which is no command of ours.

use std::collections::BTreeMap;
use std::net::IpAddr;

use lbfleet_proto::{ClusterSpec, ForwardMethod};
use serde::Serialize;

/// The interface DR VIPs go on.
pub const DR_INTERFACE: &str = "lo";
/// The ipip fallback device the kernel creates with the `ipip` module: IPVS's TUN packets arrive on it.
pub const TUN_INTERFACE: &str = "tunl0";

/// One real server's setup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RealServerSetup {
    /// The real server's own address (how the script recognises the host it runs on).
    pub address: String,
    /// Services that reach it by DR, and by TUN (`tcp 198.18.0.10:80`).
    pub services: Vec<String>,
    /// VIPs to hold on [`DR_INTERFACE`] (host routes: the subnet stays the real server's own).
    pub dr_vips: Vec<String>,
    /// VIPs to hold on [`TUN_INTERFACE`].
    pub tun_vips: Vec<String>,
    /// Commands that set it up; running them again changes nothing.
    pub apply: Vec<String>,
    /// Commands that remove what `apply` added (sysctls back to the kernel's defaults).
    pub undo: Vec<String>,
}

/// Every DR/TUN real server of a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RealServerPlan {
    pub cluster: String,
    pub real_servers: Vec<RealServerSetup>,
}

fn host_prefix(vip: &str) -> String {
    match vip.parse::<IpAddr>() {
        Ok(IpAddr::V6(_)) => format!("{vip}/128"),
        _ => format!("{vip}/32"),
    }
}

/// The setup of every real server of `spec` that a DR or TUN service reaches, in address order. A real
/// server only NAT services reach is not listed.
pub fn plan(cluster: &str, spec: &ClusterSpec) -> RealServerPlan {
    #[derive(Default)]
    struct Acc {
        services: Vec<String>,
        dr: Vec<String>,
        tun: Vec<String>,
    }
    let mut by_address: BTreeMap<(IpAddr, String), Acc> = BTreeMap::new();
    for svc in &spec.services {
        let list = match svc.forward {
            ForwardMethod::Nat => continue,
            ForwardMethod::Dr | ForwardMethod::Tun => svc.forward,
        };
        for rs in &svc.real_servers {
            let Ok(addr) = rs.address.parse::<IpAddr>() else {
                continue;
            };
            let acc = by_address.entry((addr, rs.address.clone())).or_default();
            acc.services.push(format!(
                "{} {} {}",
                svc.forward,
                svc.protocol,
                crate::fleet::socket_text(&svc.vip, svc.port)
            ));
            let vips = if list == ForwardMethod::Dr {
                &mut acc.dr
            } else {
                &mut acc.tun
            };
            let vip = host_prefix(&svc.vip);
            if !vips.contains(&vip) {
                vips.push(vip);
            }
        }
    }
    let real_servers = by_address
        .into_iter()
        .map(|((_, address), acc)| {
            let (apply, undo) = commands(&acc.dr, &acc.tun);
            RealServerSetup {
                address,
                services: acc.services,
                dr_vips: acc.dr,
                tun_vips: acc.tun,
                apply,
                undo,
            }
        })
        .collect();
    RealServerPlan {
        cluster: cluster.to_owned(),
        real_servers,
    }
}

/// The commands for VIPs held by DR (`dr`) and by TUN (`tun`). Every command is idempotent: a module is
/// loaded only when its link is missing, addresses are `replace`d, sysctls written.
fn commands(dr: &[String], tun: &[String]) -> (Vec<String>, Vec<String>) {
    let mut apply = Vec::new();
    let mut undo = Vec::new();
    // Both modes: the host must not answer ARP for (nor announce from) a VIP it holds on a non-ARP link, or it
    // steals the VIP from the balancer on the shared segment.
    apply.push("sysctl -qw net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2".into());
    for vip in dr {
        apply.push(format!("ip addr replace {vip} dev {DR_INTERFACE}"));
        undo.push(format!(
            "ip addr del {vip} dev {DR_INTERFACE} 2>/dev/null || true"
        ));
    }
    if !tun.is_empty() {
        // The module creates tunl0 (in every network namespace); the balancer's packets arrive there, from
        // the client's address, which strict reverse-path filtering would drop: loose mode on tunl0 and all.
        apply.push(format!(
            "ip link show {TUN_INTERFACE} >/dev/null 2>&1 || modprobe ipip"
        ));
        apply.push(format!("ip link set {TUN_INTERFACE} up"));
        for vip in tun {
            apply.push(format!("ip addr replace {vip} dev {TUN_INTERFACE}"));
        }
        apply.push(format!(
            "sysctl -qw net.ipv4.conf.{TUN_INTERFACE}.rp_filter=2 net.ipv4.conf.all.rp_filter=2"
        ));
        for vip in tun {
            undo.push(format!(
                "ip addr del {vip} dev {TUN_INTERFACE} 2>/dev/null || true"
            ));
        }
        undo.push(format!(
            "ip link set {TUN_INTERFACE} down 2>/dev/null || true"
        ));
        undo.push(format!(
            "sysctl -qw net.ipv4.conf.{TUN_INTERFACE}.rp_filter=0 2>/dev/null || true"
        ));
    }
    undo.push("sysctl -qw net.ipv4.conf.all.arp_ignore=0 net.ipv4.conf.all.arp_announce=0".into());
    (apply, undo)
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

impl RealServerPlan {
    /// A POSIX shell script for every real server at once: run as root on a real server (`sh FILE` or
    /// `sh FILE up`; `sh FILE down` undoes), it finds which of the listed addresses is local and applies
    /// that server's setup; on a host that is none of them it changes nothing and exits 1.
    pub fn script(&self) -> String {
        let mut s = String::new();
        s.push_str("#!/bin/sh\n");
        s.push_str(&format!(
            "# lbfleet real-server setup for cluster {} (DR and TUN; NAT real servers need none).\n",
            self.cluster
        ));
        s.push_str("# Usage, as root on a real server: sh THIS_FILE [up|down]. Idempotent; `down` undoes `up`.\n");
        s.push_str("set -eu\n");
        s.push_str("action=${1:-up}\n");
        s.push_str(
            "case \"$action\" in up|down) ;; *) echo \"usage: $0 [up|down]\" >&2; exit 2 ;; esac\n",
        );
        s.push_str(
            "is_local() { ip -o addr show | awk '{ split($4, a, \"/\"); print a[1] }' | grep -qxF \"$1\"; }\n",
        );
        s.push_str("matched=0\n");
        for rs in &self.real_servers {
            s.push_str(&format!("\n# {}: {}\n", rs.address, rs.services.join(", ")));
            s.push_str(&format!("if is_local {}; then\n", shell_quote(&rs.address)));
            s.push_str("  matched=1\n");
            s.push_str("  if [ \"$action\" = up ]; then\n");
            for c in &rs.apply {
                s.push_str(&format!("    {c}\n"));
            }
            s.push_str("  else\n");
            for c in &rs.undo {
                s.push_str(&format!("    {c}\n"));
            }
            s.push_str("  fi\n");
            s.push_str("fi\n");
        }
        s.push_str(&format!(
            "\nif [ \"$matched\" = 0 ]; then\n  echo {} >&2\n  exit 1\nfi\n",
            shell_quote(&format!(
                "lbfleet: this host has none of the DR/TUN real-server addresses of cluster {}",
                self.cluster
            ))
        ));
        s
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use lbfleet_proto::{HealthCheck, Protocol, RealServerSpec, Scheduler, ServiceSpec, VipSpec};

    fn svc(vip: &str, port: u16, forward: ForwardMethod, servers: &[&str]) -> ServiceSpec {
        ServiceSpec {
            vip: vip.into(),
            port,
            protocol: Protocol::Tcp,
            scheduler: Scheduler::Wrr,
            forward,
            persistence_s: 0,
            persistence_prefix: None,
            check: HealthCheck::tcp(),
            real_servers: servers
                .iter()
                .map(|a| RealServerSpec {
                    address: (*a).into(),
                    port,
                    weight: 1,
                    enabled: None,
                })
                .collect(),
        }
    }

    fn spec(services: Vec<ServiceSpec>) -> ClusterSpec {
        let mut s = crate::fleet::testing::spec(51, "198.18.0.10");
        s.vips = vec![
            VipSpec::new("198.18.0.10/24"),
            VipSpec::new("198.18.0.11/32"),
        ];
        s.services = services;
        s
    }

    #[test]
    fn dr_and_tun_servers_get_their_vips_and_nat_servers_nothing() {
        let p = plan(
            "ext",
            &spec(vec![
                svc(
                    "198.18.0.10",
                    80,
                    ForwardMethod::Dr,
                    &["198.18.0.52", "198.18.0.51"],
                ),
                svc("198.18.0.10", 443, ForwardMethod::Dr, &["198.18.0.51"]),
                svc(
                    "198.18.0.11",
                    80,
                    ForwardMethod::Tun,
                    &["198.18.3.7", "198.18.0.51"],
                ),
                svc("198.18.0.11", 8080, ForwardMethod::Nat, &["198.18.2.1"]),
            ]),
        );
        let addrs: Vec<&str> = p.real_servers.iter().map(|r| r.address.as_str()).collect();
        assert_eq!(addrs, ["198.18.0.51", "198.18.0.52", "198.18.3.7"]);
        let both = &p.real_servers[0];
        assert_eq!(both.dr_vips, ["198.18.0.10/32"]);
        assert_eq!(both.tun_vips, ["198.18.0.11/32"]);
        assert_eq!(both.services.len(), 3);
        assert!(both
            .apply
            .contains(&"ip addr replace 198.18.0.10/32 dev lo".to_owned()));
        assert!(both
            .apply
            .contains(&"ip addr replace 198.18.0.11/32 dev tunl0".to_owned()));
        assert!(both.apply[0].contains("arp_ignore=1") && both.apply[0].contains("arp_announce=2"));
        let tun = &p.real_servers[2];
        assert!(tun.dr_vips.is_empty());
        assert!(tun.apply.iter().any(|c| c.contains("rp_filter=2")));
        assert!(!tun.apply.iter().any(|c| c.contains("dev lo")));
        assert!(tun
            .undo
            .iter()
            .any(|c| c.contains("ip addr del 198.18.0.11/32 dev tunl0")));
        // A NAT-only cluster needs nothing on its real servers.
        let nat = plan(
            "int",
            &spec(vec![svc(
                "198.18.0.10",
                80,
                ForwardMethod::Nat,
                &["198.18.2.1"],
            )]),
        );
        assert!(nat.real_servers.is_empty());
    }

    #[test]
    fn ipv6_dr_vips_go_on_lo_as_host_routes() {
        let mut s = spec(vec![svc(
            "2001:2::10",
            80,
            ForwardMethod::Dr,
            &["2001:2::51"],
        )]);
        s.vips.push(VipSpec::new("2001:2::10/64"));
        let p = plan("ext6", &s);
        assert_eq!(p.real_servers[0].address, "2001:2::51");
        assert_eq!(p.real_servers[0].dr_vips, ["2001:2::10/128"]);
        assert!(p.real_servers[0]
            .apply
            .contains(&"ip addr replace 2001:2::10/128 dev lo".to_owned()));
        assert!(p.script().contains("if is_local '2001:2::51'; then"));
    }

    #[test]
    fn the_script_picks_the_local_server_and_has_an_undo() {
        let p = plan(
            "ext",
            &spec(vec![svc(
                "198.18.0.10",
                80,
                ForwardMethod::Dr,
                &["198.18.0.51"],
            )]),
        );
        let s = p.script();
        assert!(s.starts_with("#!/bin/sh\n"));
        assert!(s.contains("if is_local '198.18.0.51'; then"));
        assert!(s.contains("ip addr replace 198.18.0.10/32 dev lo"));
        assert!(s.contains("ip addr del 198.18.0.10/32 dev lo"));
        assert!(s.contains("exit 1"));
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["real_servers"][0]["dr_vips"][0], "198.18.0.10/32");
        assert_eq!(json["cluster"], "ext");
    }
}
