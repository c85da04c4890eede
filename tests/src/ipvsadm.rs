//! Compares IPVS tables in one normalized form: the text `ipvsadm -Ln` prints, a table the agent dumped over
//! netlink, and the state a role document asks for all become the same sorted list of lines
//! (`S <service line>` and `D <service line> -> <address:port> <Forward> <weight>`), so spacing and order
//! never matter and counters are left out.

use std::net::{IpAddr, Ipv4Addr};

use lbfleet_agent::ipvs::{Family, IpvsTable, ServiceKey};
use lbfleet_agent::reconcile::IpvsState;

/// Parses `ipvsadm -Ln` output.
pub fn normalize_ipvsadm(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut service: Option<String> = None;
    for line in text.lines() {
        let tokens: Vec<&str> = line.split_whitespace().collect();
        match tokens.first() {
            Some(&("TCP" | "UDP" | "SCTP" | "FWM")) => {
                let s = tokens.join(" ");
                out.push(format!("S {s}"));
                service = Some(s);
            }
            Some(&"->") if tokens.get(1) != Some(&"RemoteAddress:Port") && tokens.len() >= 4 => {
                if let Some(s) = &service {
                    out.push(format!(
                        "D {s} -> {} {} {}",
                        tokens[1], tokens[2], tokens[3]
                    ));
                }
            }
            _ => {}
        }
    }
    out.sort();
    out
}

fn service_line(state: &lbfleet_agent::reconcile::ServiceState) -> String {
    let svc = state.service();
    let mut s = match svc.key {
        ServiceKey::Addr { .. } => format!("{} {}", svc.key, svc.scheduler),
        ServiceKey::Fwmark {
            family: Family::V4,
            mark,
        } => format!("FWM {mark} {}", svc.scheduler),
        ServiceKey::Fwmark {
            family: Family::V6,
            mark,
        } => format!("FWM {mark} IPv6 {}", svc.scheduler),
    };
    if svc.persistent() {
        s.push_str(&format!(" persistent {}", svc.timeout_s));
        let family = svc.key.family();
        if svc.netmask_prefix != family.max_prefix() {
            match family {
                Family::V4 => {
                    let p = u32::from(svc.netmask_prefix);
                    let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
                    s.push_str(&format!(" mask {}", Ipv4Addr::from(mask)));
                }
                Family::V6 => s.push_str(&format!(" mask {}", svc.netmask_prefix)),
            }
        }
    }
    s
}

/// Normalizes a diffable IPVS state (what a role asks for, or a dump converted with `IpvsState::from`).
pub fn normalize_state(state: &IpvsState) -> Vec<String> {
    let mut out = Vec::new();
    for s in state.services.values() {
        let line = service_line(s);
        out.push(format!("S {line}"));
        for d in s.dests() {
            let addr = match d.key.addr {
                IpAddr::V4(a) => format!("{a}:{}", d.key.port),
                IpAddr::V6(a) => format!("[{a}]:{}", d.key.port),
            };
            out.push(format!(
                "D {line} -> {addr} {} {}",
                d.forward.as_str(),
                d.weight
            ));
        }
    }
    out.sort();
    out
}

pub fn normalize_table(table: &IpvsTable) -> Vec<String> {
    normalize_state(&IpvsState::from(table))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use lbfleet_agent::ipvs::{Destination, Forward, IpProto, Service, SVC_F_PERSISTENT};
    use lbfleet_agent::reconcile::ServiceState;

    #[test]
    fn ipvsadm_text_and_state_normalize_alike() {
        let text = "IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn
TCP  198.18.0.11:443 mh persistent 300 mask 255.255.255.0
  -> 198.18.2.5:443               Route   1      0          0
FWM  7 IPv6 rr
";
        let key = ServiceKey::Addr {
            protocol: IpProto::Tcp,
            addr: "198.18.0.11".parse().unwrap(),
            port: 443,
        };
        let mut svc = Service::new(key, "mh");
        svc.flags = SVC_F_PERSISTENT;
        svc.timeout_s = 300;
        svc.netmask_prefix = 24;
        let d = Destination::new("198.18.2.5".parse().unwrap(), 443, Forward::Route, 1);
        let fwm = ServiceKey::Fwmark {
            family: Family::V6,
            mark: 7,
        };
        let mut state = IpvsState::default();
        state.services.insert(key, ServiceState::new(svc, vec![d]));
        state
            .services
            .insert(fwm, ServiceState::new(Service::new(fwm, "rr"), Vec::new()));
        assert_eq!(normalize_ipvsadm(text), normalize_state(&state));
    }
}
