//! Views of the kernel's IPVS table: the `ipvsadm -Ln`-like text of `lbfleet-agent status` (with each real
//! server's health from the running daemon's last report), its JSON form, and the per-service statistics and
//! health the agent reports to the server; and the VRRP part of `status`.

use std::collections::HashMap;
use std::fmt::Write as _;

use lbfleet_proto::{
    AgentReport, HealthState, Protocol, RealServerHealth, RealServerReport, ServiceReport,
    VrrpState, VrrpTransition,
};
use serde::Serialize;

use crate::health::HealthSnapshot;
use crate::ipvs::{DestKey, IpProto, IpvsTable, ServiceKey, Stats};

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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<RealServerHealth>,
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

/// Health by (service, destination) text, as `status` looks it up: (`TCP 198.18.0.10:80`, `198.18.2.1:8080`).
pub type HealthByDest = HashMap<(String, String), RealServerHealth>;

/// The per-server health of a report (the status file the running daemon writes), keyed as the table prints
/// services and destinations. Entries whose addresses do not parse are left out.
pub fn health_by_dest(report: &AgentReport) -> HealthByDest {
    let mut out = HealthByDest::new();
    for s in &report.services {
        let Ok(vip) = s.vip.parse() else { continue };
        let service = ServiceKey::Addr {
            protocol: s.protocol.into(),
            addr: vip,
            port: s.port,
        };
        for r in &s.real_servers {
            let (Some(h), Ok(addr)) = (&r.health, r.address.parse()) else {
                continue;
            };
            let dest = DestKey { addr, port: r.port };
            out.insert((service.to_string(), dest.to_string()), h.clone());
        }
    }
    out
}

/// `up 1.2 ms`, `down since 12:00:03: HTTP 500 from /healthz`, for the status table.
pub fn health_text(h: &RealServerHealth, now_unix: u64) -> String {
    let ago = |since: Option<u64>| {
        since
            .map(|s| {
                format!(
                    " for {}",
                    humantime::format_duration(std::time::Duration::from_secs(
                        now_unix.saturating_sub(s)
                    ))
                )
            })
            .unwrap_or_default()
    };
    let flaps = if h.flaps > 0 {
        format!(", {} flap(s)", h.flaps)
    } else {
        String::new()
    };
    match h.state {
        HealthState::Up => format!(
            "up{}{}{flaps}",
            ago(h.since),
            h.latency_us
                .map(|us| format!(", {:.1} ms", us as f64 / 1000.0))
                .unwrap_or_default()
        ),
        HealthState::Down => format!(
            "DOWN{}{flaps}: {}",
            ago(h.since),
            h.last_error.as_deref().unwrap_or("?")
        ),
        HealthState::NotChecked => "not checked".into(),
        HealthState::AdminDrained => "drained (admin)".into(),
    }
}

pub fn status(table: &IpvsTable, role_generation: Option<u64>, health: &HealthByDest) -> Status {
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
                        health: health
                            .get(&(s.service.key.to_string(), d.dest.key.to_string()))
                            .cloned(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// The table as `ipvsadm -Ln` lays it out, with a Health column when `health` knows the destinations.
pub fn render_table(table: &IpvsTable, health: &HealthByDest) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut out = String::new();
    out.push_str("Prot LocalAddress:Port Scheduler Flags\n");
    out.push_str("  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn");
    out.push_str(if health.is_empty() { "\n" } else { " Health\n" });
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
            let _ = write!(
                out,
                "  -> {:<28} {:<7} {:<6} {:<10} {}",
                d.dest.key.to_string(),
                d.dest.forward.as_str(),
                d.dest.weight,
                d.active_conns,
                d.inactive_conns
            );
            if let Some(h) = health.get(&(svc.key.to_string(), d.dest.key.to_string())) {
                let _ = write!(out, "{:<9} {}", "", health_text(h, now));
            }
            out.push('\n');
        }
    }
    out
}

/// Per-service counters for the agent report. Only address services map to the proto's (VIP, port,
/// protocol); firewall-mark and SCTP services are not part of role documents and are left out.
pub fn service_reports(table: &IpvsTable, health: &HealthSnapshot) -> Vec<ServiceReport> {
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
                        healthy: !health.results.is_failed(&key, &d.dest.key),
                        weight: d.dest.weight,
                        active_conns: u64::from(d.active_conns),
                        inactive_conns: u64::from(d.inactive_conns),
                        connections: d.stats.conns,
                        packets_in: d.stats.inpkts,
                        packets_out: d.stats.outpkts,
                        bytes_in: d.stats.inbytes,
                        bytes_out: d.stats.outbytes,
                        health: health.health_of(&key, &d.dest.key).cloned(),
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
        let text = render_table(&table(), &HealthByDest::new());
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
        let mut health = HealthSnapshot::default();
        let t = table();
        let key = t.services[0].0.service.key;
        let dest = t.services[0].1[0].dest.key;
        health.results.mark_failed(key, dest);
        let down = RealServerHealth {
            state: HealthState::Down,
            since: Some(1_000),
            last_error: Some("HTTP 500 from /healthz".into()),
            latency_us: None,
            flaps: 2,
            check: Some("HTTP GET /healthz expects 2xx".into()),
        };
        health.servers.insert((key, dest), down.clone());
        let r = service_reports(&t, &health);
        assert_eq!(r[0].real_servers[0].health.as_ref(), Some(&down));
        // What `status` reads back from the status file, and the column it prints.
        let report = AgentReport {
            services: r.clone(),
            ..Default::default()
        };
        let by_dest = health_by_dest(&report);
        assert_eq!(by_dest.len(), 1);
        let text = render_table(&t, &by_dest);
        assert!(text.contains("InActConn Health\n"), "{text}");
        assert!(text.contains(" DOWN for "), "{text}");
        assert!(
            text.ends_with(", 2 flap(s): HTTP 500 from /healthz\n"),
            "{text}"
        );
        assert_eq!(
            health_text(&down, 1_090),
            "DOWN for 1m 30s, 2 flap(s): HTTP 500 from /healthz"
        );
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
        let json = serde_json::to_value(status(&t, Some(7), &by_dest)).unwrap();
        assert_eq!(
            json["services"][0]["destinations"][0]["health"]["state"],
            "down"
        );
        assert_eq!(json["role_generation"], 7);
        assert_eq!(json["services"][0]["destinations"][0]["forward"], "Masq");
    }
}
