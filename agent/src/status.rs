//! Views of the kernel's IPVS table: the `ipvsadm -Ln`-like text of `lbfleet-agent status`, its JSON form,
//! and the per-service statistics the agent reports to the server; and the VRRP part of `status`.

use std::fmt::Write as _;

use lbfleet_proto::{
    AgentReport, Protocol, RealServerReport, ServiceReport, VrrpState, VrrpTransition,
};
use serde::Serialize;

use crate::ipvs::{IpProto, IpvsTable, ServiceKey, Stats};
use crate::reconcile::HealthResults;

/// One destination in `status --json`.
#[derive(Debug, Clone, Serialize)]
pub struct DestStatus {
    pub address: String,
    pub port: u16,
    pub forward: &'static str,
    pub weight: u32,
    pub active_conns: u32,
    pub inactive_conns: u32,
    pub stats: Stats,
}

/// One service in `status --json`.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceStatus {
    /// `TCP 198.18.0.10:80` or `FWM 42`.
    pub service: String,
    pub scheduler: String,
    pub persistent_s: Option<u32>,
    pub netmask_prefix: u8,
    pub stats: Stats,
    pub destinations: Vec<DestStatus>,
}

/// `status --json`.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// Generation of the role saved in the state directory, if any.
    pub role_generation: Option<u64>,
    pub services: Vec<ServiceStatus>,
}

pub fn status(table: &IpvsTable, role_generation: Option<u64>) -> Status {
    Status {
        role_generation,
        services: table
            .services
            .iter()
            .map(|(s, dests)| ServiceStatus {
                service: s.service.key.to_string(),
                scheduler: s.service.scheduler.clone(),
                persistent_s: s.service.persistent().then_some(s.service.timeout_s),
                netmask_prefix: s.service.netmask_prefix,
                stats: s.stats,
                destinations: dests
                    .iter()
                    .map(|d| DestStatus {
                        address: d.dest.key.addr.to_string(),
                        port: d.dest.key.port,
                        forward: d.dest.forward.as_str(),
                        weight: d.dest.weight,
                        active_conns: d.active_conns,
                        inactive_conns: d.inactive_conns,
                        stats: d.stats,
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// The table as `ipvsadm -Ln` lays it out.
pub fn render_table(table: &IpvsTable) -> String {
    let mut out = String::new();
    out.push_str("Prot LocalAddress:Port Scheduler Flags\n");
    out.push_str("  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n");
    for (s, dests) in &table.services {
        let svc = &s.service;
        let _ = write!(out, "{} {}", svc.key, svc.scheduler);
        if svc.persistent() {
            let _ = write!(out, " persistent {}", svc.timeout_s);
            if svc.netmask_prefix != svc.key.family().max_prefix() {
                let _ = write!(out, " mask /{}", svc.netmask_prefix);
            }
        }
        out.push('\n');
        for d in dests {
            let _ = writeln!(
                out,
                "  -> {:<28} {:<7} {:<6} {:<10} {}",
                d.dest.key.to_string(),
                d.dest.forward.as_str(),
                d.dest.weight,
                d.active_conns,
                d.inactive_conns
            );
        }
    }
    out
}

/// Per-service counters for the agent report. Only address services map to the proto's (VIP, port,
/// protocol); firewall-mark and SCTP services are not part of role documents and are left out.
pub fn service_reports(table: &IpvsTable, health: &HealthResults) -> Vec<ServiceReport> {
    table
        .services
        .iter()
        .filter_map(|(s, dests)| {
            let key = s.service.key;
            let ServiceKey::Addr {
                protocol,
                addr,
                port,
            } = key
            else {
                return None;
            };
            let protocol = match protocol {
                IpProto::Tcp => Protocol::Tcp,
                IpProto::Udp => Protocol::Udp,
                IpProto::Sctp => return None,
            };
            Some(ServiceReport {
                vip: addr.to_string(),
                port,
                protocol,
                connections: s.stats.conns,
                packets_in: s.stats.inpkts,
                packets_out: s.stats.outpkts,
                bytes_in: s.stats.inbytes,
                bytes_out: s.stats.outbytes,
                real_servers: dests
                    .iter()
                    .map(|d| RealServerReport {
                        address: d.dest.key.addr.to_string(),
                        port: d.dest.key.port,
                        healthy: !health.is_failed(&key, &d.dest.key),
                        weight: d.dest.weight,
                        active_conns: u64::from(d.active_conns),
                        inactive_conns: u64::from(d.inactive_conns),
                        connections: d.stats.conns,
                        packets_in: d.stats.inpkts,
                        packets_out: d.stats.outpkts,
                        bytes_in: d.stats.inbytes,
                        bytes_out: d.stats.outbytes,
                    })
                    .collect(),
            })
        })
        .collect()
}

/// The VRRP part of `status` (from the running daemon's status file).
#[derive(Debug, Clone, Serialize)]
pub struct VrrpStatusView {
    pub state: Option<VrrpState>,
    pub master: Option<String>,
    pub transitions: Vec<VrrpTransition>,
    pub dropped: std::collections::BTreeMap<String, u64>,
}

pub fn vrrp_status(report: &AgentReport) -> VrrpStatusView {
    VrrpStatusView {
        state: report.vrrp_state,
        master: report.vrrp_master.clone(),
        transitions: report.vrrp_transitions.clone(),
        dropped: report.vrrp_dropped.clone(),
    }
}

/// `VRRP master (master 198.18.0.2)`, the transitions (time in ms since the epoch), the drop counters.
pub fn render_vrrp(v: &VrrpStatusView) -> String {
    let mut out = String::new();
    let Some(state) = v.state else {
        out.push_str("VRRP not running\n");
        return out;
    };
    let _ = writeln!(
        out,
        "VRRP {state} (master {})",
        v.master.as_deref().unwrap_or("unknown")
    );
    for t in &v.transitions {
        let _ = writeln!(out, "  {} {} -> {}: {}", t.at_ms, t.from, t.to, t.reason);
    }
    if !v.dropped.is_empty() {
        let list: Vec<String> = v.dropped.iter().map(|(k, n)| format!("{k}={n}")).collect();
        let _ = writeln!(out, "  adverts dropped: {}", list.join(" "));
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::ipvs::{DestEntry, Destination, Forward, Service, ServiceEntry, SVC_F_PERSISTENT};

    fn table() -> IpvsTable {
        let key = ServiceKey::Addr {
            protocol: IpProto::Tcp,
            addr: "198.18.0.10".parse().unwrap(),
            port: 80,
        };
        let mut svc = Service::new(key, "wrr");
        svc.flags = SVC_F_PERSISTENT;
        svc.timeout_s = 300;
        svc.netmask_prefix = 24;
        IpvsTable {
            services: vec![(
                ServiceEntry {
                    service: svc,
                    stats: Stats {
                        conns: 4,
                        ..Default::default()
                    },
                },
                vec![DestEntry {
                    dest: Destination::new("198.18.2.1".parse().unwrap(), 8080, Forward::Masq, 3),
                    active_conns: 2,
                    inactive_conns: 1,
                    persist_conns: 0,
                    stats: Stats {
                        conns: 3,
                        inpkts: 40,
                        outpkts: 30,
                        inbytes: 4000,
                        outbytes: 9000,
                        ..Default::default()
                    },
                }],
            )],
        }
    }

    #[test]
    fn renders_like_ipvsadm() {
        let text = render_table(&table());
        assert!(
            text.contains("TCP 198.18.0.10:80 wrr persistent 300 mask /24\n"),
            "{text}"
        );
        assert!(
            text.contains("  -> 198.18.2.1:8080              Masq    3      2          1\n"),
            "{text}"
        );
    }

    #[test]
    fn reports_carry_counters_and_health() {
        let mut health = HealthResults::default();
        let t = table();
        let key = t.services[0].0.service.key;
        health.mark_failed(key, t.services[0].1[0].dest.key);
        let r = service_reports(&t, &health);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].connections, 4);
        assert_eq!(r[0].real_servers[0].weight, 3);
        assert!(!r[0].real_servers[0].healthy);
        let d = &r[0].real_servers[0];
        assert_eq!(
            (
                d.connections,
                d.packets_in,
                d.packets_out,
                d.bytes_in,
                d.bytes_out
            ),
            (3, 40, 30, 4000, 9000)
        );
        let json = serde_json::to_value(status(&t, Some(7))).unwrap();
        assert_eq!(json["role_generation"], 7);
        assert_eq!(json["services"][0]["destinations"][0]["forward"], "Masq");
    }
}
