//! Report deltas (`POST /api/v1/agent/report/delta`): what changed in an agent report since the last one the
//! server acknowledged, and the one function that merges a delta into the report it applies to. Both ends use
//! [`ReportDelta::apply`]: the server to update the report it stores, the agent to keep its copy of what the
//! server holds, so the two never drift apart. What goes into a delta is the agent's choice
//! (`lbfleet-agent`'s `daemon::delta`); the server only checks that the delta fits its base.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::{AgentReport, Protocol, RealServerReport, ServiceReport};

/// The answer to an accepted report (a full report sent with `?deltas=1`, or a delta): the sequence number of
/// the report the server now holds, the base of the agent's next delta.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportAck {
    pub seq: u64,
}

/// The machine code of the 409 that answers a delta whose base the server does not hold: send a full report.
pub const REPORT_BASE_UNKNOWN: &str = "report_base_unknown";

/// A virtual service's identity in a report.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceRef {
    pub vip: String,
    pub port: u16,
    pub protocol: Protocol,
}

/// A real server's identity within its service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RealServerRef {
    pub address: String,
    pub port: u16,
}

/// One service in a delta: its counters as they are now, the real servers that are new or changed (whole rows,
/// replacing the base's), and those gone. A service new since the base comes with all its real servers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceDelta {
    pub vip: String,
    pub port: u16,
    pub protocol: Protocol,
    #[serde(default)]
    pub connections: u64,
    #[serde(default)]
    pub packets_in: u64,
    #[serde(default)]
    pub packets_out: u64,
    #[serde(default)]
    pub bytes_in: u64,
    #[serde(default)]
    pub bytes_out: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub real_servers: Vec<RealServerReport>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<RealServerRef>,
}

impl ServiceDelta {
    pub fn service_ref(&self) -> ServiceRef {
        ServiceRef {
            vip: self.vip.clone(),
            port: self.port,
            protocol: self.protocol,
        }
    }
}

/// What changed since the report numbered `base`. `head` is the report without its services (every field of a
/// full report but `services`, which must be empty: errors, transitions and versions are small and travel
/// whole in every delta); `services` and `removed_services` say how the base's services change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportDelta {
    pub base: u64,
    pub head: AgentReport,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceDelta>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed_services: Vec<ServiceRef>,
}

/// Why a delta cannot be merged into a report: the delta contradicts itself or does not fit the base (which
/// means the two ends disagree about the base: the agent must send a full report).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    #[error("the delta's head carries services; services travel in `services`")]
    HeadHasServices,
    #[error("service {0} appears twice in the delta")]
    DuplicateService(String),
    #[error("real server {1} of service {0} appears twice in the delta")]
    DuplicateRealServer(String, String),
    #[error("the delta removes service {0}, which its base does not hold")]
    NoSuchService(String),
    #[error("the delta removes real server {1} of service {0}, which its base does not hold")]
    NoSuchRealServer(String, String),
}

fn service_text(vip: &str, port: u16, protocol: Protocol) -> String {
    format!("{protocol}/{vip}:{port}")
}

impl ReportDelta {
    /// The report `base` becomes with this delta: the head's fields replace the base's, the services change as
    /// the delta says (a changed service keeps its place, a new one goes last; a changed real server keeps its
    /// place in its service, a new one goes last). All or nothing: on an error `base` is untouched.
    pub fn apply(&self, base: &AgentReport) -> Result<AgentReport, DeltaError> {
        if !self.head.services.is_empty() {
            return Err(DeltaError::HeadHasServices);
        }
        let mut services = base.services.clone();
        let mut index: HashMap<(String, u16, Protocol), usize> = services
            .iter()
            .enumerate()
            .map(|(i, s)| ((s.vip.clone(), s.port, s.protocol), i))
            .collect();
        let mut seen = HashSet::new();
        for d in &self.services {
            let key = (d.vip.clone(), d.port, d.protocol);
            if !seen.insert(key.clone()) {
                return Err(DeltaError::DuplicateService(service_text(
                    &d.vip, d.port, d.protocol,
                )));
            }
            let i = match index.get(&key) {
                Some(i) => *i,
                None => {
                    services.push(ServiceReport {
                        vip: d.vip.clone(),
                        port: d.port,
                        protocol: d.protocol,
                        connections: 0,
                        packets_in: 0,
                        packets_out: 0,
                        bytes_in: 0,
                        bytes_out: 0,
                        real_servers: Vec::new(),
                    });
                    index.insert(key, services.len() - 1);
                    services.len() - 1
                }
            };
            merge_service(&mut services[i], d)?;
        }
        let mut gone = HashSet::new();
        for r in &self.removed_services {
            let key = (r.vip.clone(), r.port, r.protocol);
            if !index.contains_key(&key) || seen.contains(&key) || !gone.insert(key) {
                return Err(DeltaError::NoSuchService(service_text(
                    &r.vip, r.port, r.protocol,
                )));
            }
        }
        if !gone.is_empty() {
            services.retain(|s| !gone.contains(&(s.vip.clone(), s.port, s.protocol)));
        }
        let mut out = self.head.clone();
        out.services = services;
        Ok(out)
    }
}

fn merge_service(s: &mut ServiceReport, d: &ServiceDelta) -> Result<(), DeltaError> {
    s.connections = d.connections;
    s.packets_in = d.packets_in;
    s.packets_out = d.packets_out;
    s.bytes_in = d.bytes_in;
    s.bytes_out = d.bytes_out;
    if d.real_servers.is_empty() && d.removed.is_empty() {
        return Ok(());
    }
    let name = || service_text(&d.vip, d.port, d.protocol);
    let mut index: HashMap<(String, u16), usize> = s
        .real_servers
        .iter()
        .enumerate()
        .map(|(i, r)| ((r.address.clone(), r.port), i))
        .collect();
    let mut seen = HashSet::new();
    for r in &d.real_servers {
        let key = (r.address.clone(), r.port);
        if !seen.insert(key.clone()) {
            return Err(DeltaError::DuplicateRealServer(
                name(),
                format!("{}:{}", r.address, r.port),
            ));
        }
        match index.get(&key) {
            Some(i) => s.real_servers[*i] = r.clone(),
            None => {
                s.real_servers.push(r.clone());
                index.insert(key, s.real_servers.len() - 1);
            }
        }
    }
    let mut gone = HashSet::new();
    for r in &d.removed {
        let key = (r.address.clone(), r.port);
        if !index.contains_key(&key) || seen.contains(&key) || !gone.insert(key) {
            return Err(DeltaError::NoSuchRealServer(
                name(),
                format!("{}:{}", r.address, r.port),
            ));
        }
    }
    if !gone.is_empty() {
        s.real_servers
            .retain(|r| !gone.contains(&(r.address.clone(), r.port)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rs(address: &str, weight: u32, connections: u64) -> RealServerReport {
        RealServerReport {
            address: address.into(),
            port: 80,
            healthy: true,
            weight,
            active_conns: 0,
            inactive_conns: 0,
            connections,
            packets_in: 0,
            packets_out: 0,
            bytes_in: 0,
            bytes_out: 0,
            health: None,
        }
    }

    fn service(vip: &str, rows: Vec<RealServerReport>) -> ServiceReport {
        ServiceReport {
            vip: vip.into(),
            port: 80,
            protocol: Protocol::Tcp,
            connections: 0,
            packets_in: 0,
            packets_out: 0,
            bytes_in: 0,
            bytes_out: 0,
            real_servers: rows,
        }
    }

    fn delta_of(vip: &str, rows: Vec<RealServerReport>, removed: &[&str]) -> ServiceDelta {
        ServiceDelta {
            vip: vip.into(),
            port: 80,
            protocol: Protocol::Tcp,
            connections: 7,
            packets_in: 0,
            packets_out: 0,
            bytes_in: 0,
            bytes_out: 0,
            real_servers: rows,
            removed: removed
                .iter()
                .map(|a| RealServerRef {
                    address: (*a).into(),
                    port: 80,
                })
                .collect(),
        }
    }

    fn base() -> AgentReport {
        AgentReport {
            applied_generation: 3,
            uptime_s: 10,
            errors: vec!["old error".into()],
            services: vec![
                service(
                    "198.18.0.10",
                    vec![
                        rs("198.18.2.1", 1, 0),
                        rs("198.18.2.2", 1, 0),
                        rs("198.18.2.3", 1, 0),
                    ],
                ),
                service("198.18.0.11", vec![rs("198.18.2.9", 1, 0)]),
            ],
            ..AgentReport::default()
        }
    }

    #[test]
    fn a_delta_changes_what_it_names_and_keeps_the_rest_in_place() {
        let d = ReportDelta {
            base: 4,
            head: AgentReport {
                applied_generation: 4,
                uptime_s: 20,
                ..AgentReport::default()
            },
            services: vec![
                delta_of(
                    "198.18.0.10",
                    vec![rs("198.18.2.2", 0, 5), rs("198.18.2.4", 1, 0)],
                    &["198.18.2.1"],
                ),
                delta_of("198.18.0.12", vec![rs("198.18.2.20", 1, 0)], &[]),
            ],
            removed_services: vec![],
        };
        let merged = d.apply(&base()).expect("fits");
        assert_eq!(merged.applied_generation, 4);
        assert_eq!(merged.uptime_s, 20);
        assert!(
            merged.errors.is_empty(),
            "the head replaces the base's errors"
        );
        let s = &merged.services[0];
        assert_eq!(s.connections, 7);
        let rows: Vec<(&str, u32, u64)> = s
            .real_servers
            .iter()
            .map(|r| (r.address.as_str(), r.weight, r.connections))
            .collect();
        assert_eq!(
            rows,
            [
                ("198.18.2.2", 0, 5),
                ("198.18.2.3", 1, 0),
                ("198.18.2.4", 1, 0)
            ]
        );
        assert_eq!(
            merged.services[1],
            base().services[1],
            "untouched service unchanged"
        );
        assert_eq!(merged.services[2].vip, "198.18.0.12");
        assert_eq!(merged.services[2].real_servers.len(), 1);

        let gone = ReportDelta {
            base: 5,
            head: AgentReport::default(),
            services: vec![],
            removed_services: vec![ServiceRef {
                vip: "198.18.0.11".into(),
                port: 80,
                protocol: Protocol::Tcp,
            }],
        };
        let merged = gone.apply(&merged).expect("fits");
        assert_eq!(merged.services.len(), 2);
        assert!(merged.services.iter().all(|s| s.vip != "198.18.0.11"));
    }

    #[test]
    fn a_delta_that_does_not_fit_its_base_changes_nothing() {
        let before = base();
        let bad = [
            (
                vec![delta_of("198.18.0.10", vec![], &["198.18.2.99"])],
                vec![],
            ),
            (
                vec![delta_of(
                    "198.18.0.10",
                    vec![rs("198.18.2.1", 1, 0), rs("198.18.2.1", 2, 0)],
                    &[],
                )],
                vec![],
            ),
            (
                vec![delta_of("198.18.0.10", vec![], &[]), {
                    delta_of("198.18.0.10", vec![], &[])
                }],
                vec![],
            ),
            (
                vec![],
                vec![ServiceRef {
                    vip: "198.18.0.99".into(),
                    port: 80,
                    protocol: Protocol::Tcp,
                }],
            ),
        ];
        for (services, removed_services) in bad {
            let d = ReportDelta {
                base: 1,
                head: AgentReport::default(),
                services,
                removed_services,
            };
            assert!(d.apply(&before).is_err(), "{d:?}");
        }
        assert_eq!(before, base());
        let head_with_services = ReportDelta {
            base: 1,
            head: base(),
            services: vec![],
            removed_services: vec![],
        };
        assert_eq!(
            head_with_services.apply(&before),
            Err(DeltaError::HeadHasServices)
        );
    }

    #[test]
    fn golden_delta_json() {
        let d = ReportDelta {
            base: 41,
            head: AgentReport {
                applied_generation: 7,
                ..AgentReport::default()
            },
            services: vec![delta_of("198.18.0.10", vec![], &["198.18.2.1"])],
            removed_services: vec![],
        };
        let text = serde_json::to_string(&d).expect("serializes");
        assert_eq!(
            text,
            r#"{"base":41,"head":{"applied_generation":7,"vrrp_state":null,"vrrp_master":null,"vrrp_transitions":[],"services":[],"errors":[],"agent_version":null,"image_version":null,"uptime_s":0,"address":null},"services":[{"vip":"198.18.0.10","port":80,"protocol":"tcp","connections":7,"packets_in":0,"packets_out":0,"bytes_in":0,"bytes_out":0,"removed":[{"address":"198.18.2.1","port":80}]}]}"#
        );
        assert_eq!(serde_json::from_str::<ReportDelta>(&text).ok(), Some(d));
    }
}
