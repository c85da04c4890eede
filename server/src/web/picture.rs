//! What the overview and the cluster pages derive from the fleet: cluster cards (members, VRRP, real-server
//! health as the active node reports it) and the fleet's alerts, linked to the page they are about.

use std::collections::HashMap;

use lbfleet_proto::{AgentReport, Role, VrrpState};

use super::error::WebError;
use super::format::{ago_text, vip_list};
use crate::fleet::{node_key, AlertKind, NodeView};
use crate::state::AppState;
use crate::store::clusters::RealServerKey;
use crate::store::nodes::NodeFilter;

// ----- shared view pieces -------------------------------------------------------------------------------------

/// A node's VRRP state for people: the reported state, or "no report".
pub(super) fn vrrp_text(n: &NodeView) -> String {
    n.vrrp_state
        .map_or_else(|| "no report".into(), |v| v.to_string())
}

pub(super) fn report_of(n: &NodeView) -> Option<AgentReport> {
    n.last_report
        .clone()
        .and_then(|v| serde_json::from_value(v).ok())
}

/// Results of the health checks one node's agent reported (real servers no check has a result for are absent).
pub(super) fn health_map(report: Option<&AgentReport>) -> HashMap<RealServerKey, bool> {
    let mut out = HashMap::new();
    if let Some(r) = report {
        for s in &r.services {
            for rs in &s.real_servers {
                if let Some(up) = super::health::checked_up(rs) {
                    out.insert(RealServerKey::of_report(s, rs), up);
                }
            }
        }
    }
    out
}

#[derive(Debug, Clone)]
pub struct MemberRow {
    pub id: i64,
    pub name: String,
    pub role: String,
    pub priority: i64,
    pub state: String,
    pub vrrp: String,
    pub in_sync: bool,
    pub generation: String,
    pub last_seen: String,
    /// Heard from within `node_silent_after`; false: unreachable (its VRRP state is its last word).
    pub reachable: bool,
}

#[derive(Debug, Clone)]
pub struct Alert {
    /// `crit`, `warn` or `info`; the text always says what is wrong, the colour only repeats it.
    pub level: &'static str,
    pub label: &'static str,
    pub text: String,
    pub link: String,
}

#[derive(Debug, Clone)]
pub struct ClusterCard {
    pub name: String,
    pub vips: String,
    pub members: Vec<MemberRow>,
    pub services_up: usize,
    pub services_total: usize,
    pub rs_healthy: usize,
    pub rs_total: usize,
    pub drained: usize,
    pub health_known: bool,
    pub masters: usize,
}

/// Everything the overview and the cluster pages derive from the fleet: cards and alerts.
pub(super) struct FleetPicture {
    pub cards: Vec<ClusterCard>,
    pub alerts: Vec<Alert>,
}

pub(super) async fn fleet_picture(s: &AppState) -> Result<(FleetPicture, Vec<NodeView>), WebError> {
    let clusters = s.fleet.list_clusters().await?;
    let nodes = s.fleet.list_nodes(&NodeFilter::default()).await?;
    let by_name: HashMap<&str, &NodeView> = nodes.iter().map(|n| (n.name.as_str(), n)).collect();
    let mut cards = Vec::new();
    for c in &clusters {
        let mut members = Vec::new();
        let mut masters = 0;
        let mut active_report = None;
        for m in &c.members {
            let Some(n) = by_name.get(m.node.as_str()) else {
                continue;
            };
            // A silent node's last word is no master (the alerts say what happened instead).
            if n.vrrp_state == Some(VrrpState::Master) && n.reporting {
                masters += 1;
            }
            if m.role == Role::Active {
                active_report = report_of(&s.fleet.get_node(&node_key(&n.id.to_string())).await?);
            }
            members.push(member_row(n, m.role, m.priority));
        }
        let health = health_map(active_report.as_ref());
        let (mut up, mut rs_total, mut rs_healthy, mut drained) = (0, 0, 0, 0);
        for svc in &c.spec.services {
            let mut any_up = false;
            for r in &svc.real_servers {
                rs_total += 1;
                let enabled = r.enabled.unwrap_or(true);
                if !enabled {
                    drained += 1;
                }
                if health.get(&RealServerKey::of_spec(svc, r)) == Some(&true) {
                    rs_healthy += 1;
                    any_up |= enabled;
                }
            }
            if any_up {
                up += 1;
            }
        }
        cards.push(ClusterCard {
            name: c.name.clone(),
            vips: vip_list(&c.spec.vips, ", "),
            members,
            services_up: up,
            services_total: c.spec.services.len(),
            rs_healthy,
            rs_total,
            drained,
            health_known: !health.is_empty(),
            masters,
        });
    }
    let alerts = s.fleet.alerts().await?.iter().map(alert_view).collect();
    Ok((FleetPicture { cards, alerts }, nodes))
}

/// An alert from the fleet as the overview lists it, linked to what it is about.
pub(super) fn alert_view(a: &crate::fleet::Alert) -> Alert {
    let link = match (a.kind, a.node_id, &a.cluster) {
        (AlertKind::HardwareWaiting, _, _) => "/discovered".to_owned(),
        (AlertKind::ServerDown, _, _) => "/servers".to_owned(),
        (_, Some(id), _) => format!("/nodes/{id}"),
        (AlertKind::Reenrolled, None, _) => "/events".to_owned(),
        (_, None, Some(c)) => format!("/clusters/{c}"),
        (_, None, None) => "/".to_owned(),
    };
    Alert {
        level: a.level.as_str(),
        label: a.kind.label(),
        text: a.message.clone(),
        link,
    }
}

pub(super) fn member_row(n: &NodeView, role: Role, priority: i64) -> MemberRow {
    MemberRow {
        id: n.id,
        name: n.name.clone(),
        role: role.to_string(),
        priority,
        state: n.state.to_string(),
        vrrp: vrrp_text(n),
        in_sync: n.in_sync,
        generation: format!("{}/{}", n.applied_generation, n.role_generation),
        last_seen: ago_text(n.last_seen_at),
        reachable: n.reporting,
    }
}
