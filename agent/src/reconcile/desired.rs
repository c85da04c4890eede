//! The kernel state a role document asks for, given the health results.

use std::net::IpAddr;

use lbfleet_proto::{DownAction, RoleDocument};

use super::state::{HealthResults, IpvsState, ServiceState};
use crate::ipvs::{DestKey, Destination, Forward, Service, ServiceKey, SVC_F_PERSISTENT};

/// The kernel state a role asks for. A drained (`enabled = false`) real server gets weight 0, so its existing
/// connections finish; so does one its check marked down, unless the service's `on_down` is `remove` (then it
/// is left out). While no real server has a weight above 0, the service's sorry server (if any) is added
/// with weight 1. Addresses are typed in the role document (a document with a bad one does not parse); a sorry
/// server's address is text (it is part of the health check) and one that does not parse is skipped and named
/// in the returned errors.
pub fn desired_state(role: &RoleDocument, health: &HealthResults) -> (IpvsState, Vec<String>) {
    desired_state_reusing(role, health, None)
}

/// `desired_state` for a new role generation, reusing the entries of `previous` (an earlier role and the state
/// built from it, with the same health results) for every service the role did not change: a role change
/// usually touches one service, and rebuilding the others (parsing every address again) was most of the
/// daemon's work for a one-destination change. A reused service is exactly what a rebuild would give: same
/// position in the role, equal `VirtualService`, built from that one service, and it had no skipped entries
/// (those are rebuilt, so their errors are reported again).
pub fn desired_state_reusing(
    role: &RoleDocument,
    health: &HealthResults,
    previous: Option<(&RoleDocument, &IpvsState)>,
) -> (IpvsState, Vec<String>) {
    // Collected into vectors and turned into the map at once (sorted, then built bottom-up), which is cheaper
    // than inserting one entry at a time; on a duplicate key the later entry wins, as with inserts.
    let mut services = Vec::with_capacity(role.services.len());
    let mut errors = Vec::new();
    let any_failed = !health.failed.is_empty();
    // Only from a previous state with one entry per service of its role: with a bad VIP or a duplicate key
    // there, an entry could not be traced back to the one service it was built from.
    let reusable = previous.filter(|(r, st)| st.services.len() == r.services.len());
    for (index, vs) in role.services.iter().enumerate() {
        let addr = vs.vip;
        let key = ServiceKey::Addr {
            protocol: vs.protocol.into(),
            addr,
            port: vs.port,
        };
        if let Some((prev_role, prev_state)) = reusable {
            if prev_role.services.get(index) == Some(vs) {
                if let Some(kept) = prev_state.services.get(&key) {
                    if kept.dests().len() == vs.real_servers.len() {
                        services.push((key, kept.clone()));
                        continue;
                    }
                }
            }
        }
        let mut service = Service::new(key, vs.scheduler.as_str());
        if vs.persistence_s > 0 {
            service.flags |= SVC_F_PERSISTENT;
            service.timeout_s = vs.persistence_s;
            if let Some(p) = vs.persistence_prefix {
                service.netmask_prefix = p.min(key.family().max_prefix());
            }
        }
        let forward = Forward::from(vs.forward);
        let mut dests = Vec::with_capacity(vs.real_servers.len());
        let mut in_service = false;
        for rs in &vs.real_servers {
            let raddr = rs.address;
            let dk = DestKey {
                addr: raddr,
                port: rs.port,
            };
            let failed = any_failed && health.is_failed(&key, &dk);
            if failed && vs.check.on_down == DownAction::Remove {
                continue;
            }
            let weight = if rs.enabled && !failed { rs.weight } else { 0 };
            in_service |= weight > 0;
            dests.push(Destination::new(raddr, rs.port, forward, weight));
        }
        // The sorry server takes the traffic while no real server can.
        if let (false, Some(sorry)) = (in_service, &vs.check.sorry_server) {
            match sorry.address.parse::<IpAddr>().ok() {
                Some(addr) => dests.push(Destination::new(addr, sorry.port, forward, 1)),
                None => errors.push(format!(
                    "service {key}: bad sorry server address {:?}",
                    sorry.address
                )),
            }
        }
        services.push((key, ServiceState::new(service, dests)));
    }
    let services = services.into_iter().collect();
    (IpvsState { services }, errors)
}
