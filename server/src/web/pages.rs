//! The read-only pages: overview, nodes, node detail, discovered hardware, clusters, cluster detail, events,
//! the switchover confirmation and the login form. Every value reaches the page through askama's escaping.

use std::collections::HashMap;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use lbfleet_proto::{AgentReport, ClusterSpec, NodeState, UserRole};
use serde::Deserialize;

use super::health::{health_views, HealthView};
use super::{ago_text, render, time_text, Chrome, WebError, WebUser, LOGIN_CSRF_COOKIE};
use crate::api::AppState;
use crate::fleet::{node_key, socket_text, ClusterView, NodeView};
use crate::store::events::{EventFilter, EventRow};
use crate::store::nodes::NodeFilter;
use crate::{secrets, store};

/// A node counts as not reporting when its agent has been silent this long.
pub const STALE_AFTER_MS: i64 = 60_000;

// ----- shared view pieces -------------------------------------------------------------------------------------

/// A node's VRRP state for people: the reported state, or "no report".
fn vrrp_text(n: &NodeView) -> String {
    n.vrrp_state.clone().unwrap_or_else(|| "no report".into())
}

fn report_of(n: &NodeView) -> Option<AgentReport> {
    n.last_report
        .clone()
        .and_then(|v| serde_json::from_value(v).ok())
}

/// Health of real servers as one node's agent reported it: (proto, vip, port, address, rs_port) -> healthy.
type HealthKey = (String, String, u16, String, u16);

fn health_map(report: Option<&AgentReport>) -> HashMap<HealthKey, bool> {
    let mut out = HashMap::new();
    if let Some(r) = report {
        for s in &r.services {
            for rs in &s.real_servers {
                out.insert(
                    (
                        s.protocol.to_string(),
                        s.vip.clone(),
                        s.port,
                        rs.address.clone(),
                        rs.port,
                    ),
                    rs.healthy,
                );
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
struct FleetPicture {
    cards: Vec<ClusterCard>,
    alerts: Vec<Alert>,
}

async fn fleet_picture(s: &AppState) -> Result<(FleetPicture, Vec<NodeView>), WebError> {
    let clusters = s.fleet.list_clusters().await?;
    let nodes = s.fleet.list_nodes(&NodeFilter::default()).await?;
    let by_name: HashMap<&str, &NodeView> = nodes.iter().map(|n| (n.name.as_str(), n)).collect();
    let now = store::now_ms();
    let mut alerts = Vec::new();
    let mut cards = Vec::new();
    for c in &clusters {
        let mut members = Vec::new();
        let mut masters = Vec::new();
        let mut active_report = None;
        for m in &c.members {
            let Some(n) = by_name.get(m.node.as_str()) else {
                continue;
            };
            if n.vrrp_state.as_deref() == Some("master") {
                masters.push(n.name.clone());
            }
            if m.role == "active" {
                active_report = report_of(&s.fleet.get_node(&node_key(&n.id.to_string())).await?);
            }
            members.push(member_row(n, &m.role, m.priority));
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
                    alerts.push(Alert {
                        level: "info",
                        label: "Drained",
                        text: format!(
                            "real server {} of {}:{} in cluster {} is drained",
                            socket_text(&r.address, r.port),
                            svc.protocol,
                            socket_text(&svc.vip, svc.port),
                            c.name
                        ),
                        link: format!("/clusters/{}", c.name),
                    });
                }
                let key = (
                    svc.protocol.to_string(),
                    svc.vip.clone(),
                    svc.port,
                    r.address.clone(),
                    r.port,
                );
                if health.get(&key) == Some(&true) {
                    rs_healthy += 1;
                    any_up |= enabled;
                }
            }
            if any_up {
                up += 1;
            }
        }
        if !c.members.is_empty() {
            if masters.is_empty() {
                alerts.push(Alert {
                    level: "crit",
                    label: "No master",
                    text: format!("cluster {} has no VRRP master", c.name),
                    link: format!("/clusters/{}", c.name),
                });
            } else if masters.len() > 1 {
                alerts.push(Alert {
                    level: "crit",
                    label: "Split brain",
                    text: format!(
                        "cluster {} has {} masters: {}",
                        c.name,
                        masters.len(),
                        masters.join(", ")
                    ),
                    link: format!("/clusters/{}", c.name),
                });
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
            health_known: active_report.is_some(),
            masters: masters.len(),
        });
    }
    for n in &nodes {
        if n.cluster.is_none() {
            continue;
        }
        if n.last_seen_at.is_none_or(|t| now - t > STALE_AFTER_MS) {
            alerts.push(Alert {
                level: "warn",
                label: "Not reporting",
                text: format!(
                    "node {} is not reporting (last seen {})",
                    n.name,
                    ago_text(n.last_seen_at)
                ),
                link: format!("/nodes/{}", n.id),
            });
        }
        if !n.in_sync {
            alerts.push(Alert {
                level: "warn",
                label: "Lagging",
                text: format!(
                    "node {} applied generation {}, newest is {}",
                    n.name, n.applied_generation, n.role_generation
                ),
                link: format!("/nodes/{}", n.id),
            });
        }
    }
    for e in s.fleet.recent_takeover_alerts().await? {
        alerts.push(Alert {
            level: "crit",
            label: "Re-enrolled",
            text: e.message,
            link: e
                .node_id
                .map_or_else(|| "/events".into(), |id| format!("/nodes/{id}")),
        });
    }
    let waiting = nodes.iter().filter(|n| n.state == "discovered").count();
    if waiting > 0 {
        alerts.push(Alert {
            level: "info",
            label: "New hardware",
            text: format!("{waiting} new machine(s) waiting for approval"),
            link: "/discovered".into(),
        });
    }
    alerts.sort_by_key(|a| match a.level {
        "crit" => 0,
        "warn" => 1,
        _ => 2,
    });
    Ok((FleetPicture { cards, alerts }, nodes))
}

fn member_row(n: &NodeView, role: &str, priority: i64) -> MemberRow {
    MemberRow {
        id: n.id,
        name: n.name.clone(),
        role: role.to_owned(),
        priority,
        state: n.state.clone(),
        vrrp: vrrp_text(n),
        in_sync: n.in_sync,
        generation: format!("{}/{}", n.applied_generation, n.role_generation),
        last_seen: ago_text(n.last_seen_at),
    }
}

// ----- overview -----------------------------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "overview.html")]
struct OverviewPage {
    p: Chrome,
    counts: Vec<(String, i64)>,
    total: i64,
    cards: Vec<ClusterCard>,
    alerts: Vec<Alert>,
}

pub async fn overview(
    State(s): State<AppState>,
    user: WebUser,
    headers: HeaderMap,
) -> Result<Response, WebError> {
    let (picture, nodes) = fleet_picture(&s).await?;
    let counts: Vec<(String, i64)> = NodeState::ALL
        .iter()
        .map(|st| {
            let n = nodes.iter().filter(|n| n.state == st.as_str()).count();
            (st.to_string(), i64::try_from(n).unwrap_or(i64::MAX))
        })
        .collect();
    render(&OverviewPage {
        p: Chrome::new(&user, &headers, "overview", "Overview".into()),
        total: i64::try_from(nodes.len()).unwrap_or(i64::MAX),
        counts,
        cards: picture.cards,
        alerts: picture.alerts,
    })
}

// ----- nodes --------------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct NodeRowView {
    pub id: i64,
    pub name: String,
    pub mac: String,
    pub hostname: String,
    pub address: String,
    pub state: String,
    pub placement: String,
    pub image: String,
    pub agent: String,
    pub last_seen: String,
    pub in_sync: bool,
    pub vrrp: String,
}

fn node_row(n: &NodeView) -> NodeRowView {
    NodeRowView {
        id: n.id,
        name: n.name.clone(),
        mac: n.mac.clone(),
        hostname: n.hostname.clone().unwrap_or_default(),
        address: n.address.clone().unwrap_or_else(|| "-".into()),
        state: n.state.clone(),
        placement: match (&n.cluster, &n.role) {
            (Some(c), Some(r)) => format!("{c} / {r}"),
            _ => "-".into(),
        },
        image: n.image.clone().unwrap_or_else(|| "default".into()),
        agent: n.agent_version.clone().unwrap_or_else(|| "-".into()),
        last_seen: ago_text(n.last_seen_at),
        in_sync: n.in_sync,
        vrrp: vrrp_text(n),
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct NodesQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    cluster: String,
    #[serde(default)]
    sort: String,
    #[serde(default)]
    dir: String,
}

/// A sortable column header: its link and `aria-sort`.
#[derive(Debug, Clone)]
pub struct SortColumn {
    pub key: &'static str,
    pub label: &'static str,
    pub href: String,
    pub aria: &'static str,
    pub arrow: &'static str,
}

#[derive(Template)]
#[template(path = "nodes.html")]
struct NodesPage {
    p: Chrome,
    rows: Vec<NodeRowView>,
    columns: Vec<SortColumn>,
    q: String,
    state: String,
    cluster: String,
    states: Vec<String>,
    clusters: Vec<String>,
    total: usize,
}

pub async fn nodes(
    State(s): State<AppState>,
    user: WebUser,
    headers: HeaderMap,
    Query(q): Query<NodesQuery>,
) -> Result<Response, WebError> {
    let state = NodeState::ALL
        .iter()
        .find(|st| st.as_str() == q.state)
        .map(|st| st.to_string());
    let all = s.fleet.list_nodes(&NodeFilter::default()).await?;
    let total = all.len();
    let needle = q.q.trim().to_ascii_lowercase();
    let mut rows: Vec<NodeRowView> = all
        .iter()
        .filter(|n| state.as_deref().is_none_or(|st| n.state == st))
        .filter(|n| q.cluster.is_empty() || n.cluster.as_deref() == Some(q.cluster.as_str()))
        .filter(|n| {
            needle.is_empty()
                || n.name.to_ascii_lowercase().contains(&needle)
                || n.mac.to_ascii_lowercase().contains(&needle)
                || n.address.as_deref().unwrap_or("").contains(&needle)
                || n.image.as_deref().unwrap_or("").contains(&needle)
        })
        .map(node_row)
        .collect();
    let desc = q.dir == "desc";
    let sort = match q.sort.as_str() {
        "mac" | "address" | "state" | "placement" | "image" | "agent" | "seen" => q.sort.as_str(),
        _ => "name",
    };
    let seen: HashMap<i64, i64> = all
        .iter()
        .map(|n| (n.id, n.last_seen_at.unwrap_or(0)))
        .collect();
    rows.sort_by(|a, b| {
        let o = match sort {
            "mac" => a.mac.cmp(&b.mac),
            "address" => a.address.cmp(&b.address),
            "state" => a.state.cmp(&b.state),
            "placement" => a.placement.cmp(&b.placement),
            "image" => a.image.cmp(&b.image),
            "agent" => a.agent.cmp(&b.agent),
            "seen" => seen.get(&b.id).cmp(&seen.get(&a.id)),
            _ => a.name.cmp(&b.name),
        };
        if desc {
            o.reverse()
        } else {
            o
        }
    });
    let base = |sort_key: &str, dir: &str| {
        serde_urlencoded::to_string([
            ("q", q.q.as_str()),
            ("state", q.state.as_str()),
            ("cluster", q.cluster.as_str()),
            ("sort", sort_key),
            ("dir", dir),
        ])
        .unwrap_or_default()
    };
    let columns = [
        ("name", "Name"),
        ("mac", "MAC"),
        ("address", "IP"),
        ("state", "State"),
        ("placement", "Cluster / role"),
        ("image", "Image"),
        ("agent", "Agent"),
        ("seen", "Last seen"),
    ]
    .into_iter()
    .map(|(key, label)| {
        let active = key == sort;
        let next_dir = if active && !desc { "desc" } else { "asc" };
        SortColumn {
            key,
            label,
            href: format!("/nodes?{}", base(key, next_dir)),
            aria: match (active, desc) {
                (false, _) => "none",
                (true, false) => "ascending",
                (true, true) => "descending",
            },
            arrow: match (active, desc) {
                (false, _) => "",
                (true, false) => "▲",
                (true, true) => "▼",
            },
        }
    })
    .collect();
    let clusters = s
        .fleet
        .list_clusters()
        .await?
        .into_iter()
        .map(|c| c.name)
        .collect();
    render(&NodesPage {
        p: Chrome::new(&user, &headers, "nodes", "Nodes".into()),
        rows,
        columns,
        q: q.q.clone(),
        state: state.unwrap_or_default(),
        cluster: q.cluster.clone(),
        states: NodeState::ALL.iter().map(|s| s.to_string()).collect(),
        clusters,
        total,
    })
}

// ----- node detail --------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct IpvsRow {
    pub service: String,
    pub connections: u64,
    pub packets: String,
    pub bytes: String,
    pub servers: Vec<IpvsServer>,
}

#[derive(Debug, Clone)]
pub struct IpvsServer {
    pub address: String,
    pub weight: u32,
    pub active: u64,
    pub inactive: u64,
    pub connections: u64,
    pub bytes: String,
    pub health: HealthView,
}

#[derive(Debug, Clone)]
pub struct EventView {
    pub at: String,
    pub kind: String,
    pub node: String,
    pub node_id: Option<i64>,
    pub cluster: String,
    pub message: String,
}

fn event_view(e: &EventRow) -> EventView {
    EventView {
        at: time_text(e.at),
        kind: e.kind.clone(),
        node: e.node.clone().unwrap_or_default(),
        node_id: e.node_id,
        cluster: e.cluster.clone().unwrap_or_default(),
        message: e.message.clone(),
    }
}

#[derive(Template)]
#[template(path = "node.html")]
struct NodePage {
    p: Chrome,
    n: NodeRowView,
    role_generation: i64,
    applied_generation: i64,
    priority: String,
    created: String,
    role_json: String,
    ipvs: Vec<IpvsRow>,
    has_report: bool,
    /// The VRRP master this node reported following (itself when master), or "".
    vrrp_master: String,
    report_errors: Vec<String>,
    events: Vec<EventView>,
    images: Vec<String>,
    clusters: Vec<String>,
    can_approve: bool,
    can_reject: bool,
    can_assign: bool,
    can_unassign: bool,
    can_retire: bool,
    back: String,
}

pub async fn node(
    State(s): State<AppState>,
    user: WebUser,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, WebError> {
    let n = s.fleet.get_node(&node_key(&id)).await?;
    let role = s.fleet.role_document(n.id).await?;
    let report = report_of(&n);
    let ipvs = report
        .as_ref()
        .map(|r| {
            r.services
                .iter()
                .map(|sv| IpvsRow {
                    service: format!("{}:{}", sv.protocol, socket_text(&sv.vip, sv.port)),
                    connections: sv.connections,
                    packets: format!("{} in / {} out", sv.packets_in, sv.packets_out),
                    bytes: format!("{} in / {} out", sv.bytes_in, sv.bytes_out),
                    servers: sv
                        .real_servers
                        .iter()
                        .map(|rs| IpvsServer {
                            address: socket_text(&rs.address, rs.port),
                            weight: rs.weight,
                            active: rs.active_conns,
                            inactive: rs.inactive_conns,
                            connections: rs.connections,
                            bytes: format!("{} in / {} out", rs.bytes_in, rs.bytes_out),
                            health: HealthView::of(rs),
                        })
                        .collect(),
                })
                .collect()
        })
        .unwrap_or_default();
    let events = {
        let mut conn = s.fleet.store().read().await?;
        store::events::list(
            &mut conn,
            &EventFilter {
                node_id: Some(n.id),
                limit: 20,
                ..EventFilter::default()
            },
        )
        .await?
    };
    let images = s
        .fleet
        .list_images()
        .await?
        .into_iter()
        .map(|i| i.name)
        .collect();
    let clusters = s
        .fleet
        .list_clusters()
        .await?
        .into_iter()
        .map(|c| c.name)
        .collect();
    let st = n.state.as_str();
    let op = user.can_operate();
    render(&NodePage {
        p: Chrome::new(&user, &headers, "nodes", format!("Node {}", n.name)),
        role_generation: n.role_generation,
        applied_generation: n.applied_generation,
        priority: n
            .priority
            .map(|p| p.to_string())
            .unwrap_or_else(|| "-".into()),
        created: time_text(n.created_at),
        role_json: serde_json::to_string_pretty(&role).unwrap_or_default(),
        has_report: report.is_some(),
        vrrp_master: report
            .as_ref()
            .and_then(|r| r.vrrp_master.clone())
            .unwrap_or_default(),
        report_errors: report.map(|r| r.errors).unwrap_or_default(),
        ipvs,
        events: events.iter().map(event_view).collect(),
        images,
        clusters,
        can_approve: op && matches!(st, "discovered" | "rejected"),
        can_reject: op && st == "discovered",
        can_assign: op && matches!(st, "ready" | "assigned" | "serving"),
        can_unassign: op && matches!(st, "assigned" | "serving"),
        can_retire: op && st != "retired",
        back: format!("/nodes/{}", n.id),
        n: node_row(&n),
    })
}

// ----- discovered ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct WaitingRow {
    pub id: i64,
    pub mac: String,
    pub seen: String,
    pub first_seen: String,
    pub suggested: String,
}

#[derive(Template)]
#[template(path = "discovered.html")]
struct DiscoveredPage {
    p: Chrome,
    waiting: Vec<WaitingRow>,
    rejected: Vec<WaitingRow>,
    images: Vec<String>,
}

pub async fn discovered(
    State(s): State<AppState>,
    user: WebUser,
    headers: HeaderMap,
) -> Result<Response, WebError> {
    let rows = |state: &str| {
        let s = s.clone();
        let state = state.to_owned();
        async move {
            let nodes = s
                .fleet
                .list_nodes(&NodeFilter {
                    state: Some(state),
                    cluster: None,
                })
                .await?;
            Ok::<_, WebError>(
                nodes
                    .iter()
                    .map(|n| WaitingRow {
                        id: n.id,
                        mac: n.mac.clone(),
                        seen: ago_text(n.last_seen_at.or(Some(n.created_at))),
                        first_seen: time_text(n.created_at),
                        suggested: format!("lb-{}", n.mac.replace(':', "").get(6..).unwrap_or("")),
                    })
                    .collect::<Vec<_>>(),
            )
        }
    };
    let waiting = rows("discovered").await?;
    let rejected = rows("rejected").await?;
    let images = s
        .fleet
        .list_images()
        .await?
        .into_iter()
        .map(|i| i.name)
        .collect();
    render(&DiscoveredPage {
        p: Chrome::new(&user, &headers, "discovered", "Discovered hardware".into()),
        waiting,
        rejected,
        images,
    })
}

// ----- clusters -----------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct ClusterRowView {
    pub name: String,
    pub vrrp: String,
    pub vips: String,
    pub active: String,
    pub backups: String,
    pub services: usize,
    pub real_servers: usize,
}

/// The cluster settings form: submitted values and the message next to each field.
#[derive(Debug, Clone, Default)]
pub struct ClusterForm {
    pub name: String,
    pub vrid: String,
    pub interface: String,
    pub vrrp_version: String,
    pub advert_interval_ms: String,
    pub preempt: bool,
    pub vips: String,
    pub unicast_peers: String,
    pub errors: HashMap<String, String>,
    pub general: Option<String>,
}

impl ClusterForm {
    pub fn from_spec(name: &str, spec: &ClusterSpec) -> Self {
        ClusterForm {
            name: name.to_owned(),
            vrid: spec.vrid.to_string(),
            interface: spec.interface.clone(),
            vrrp_version: spec.vrrp_version.to_string(),
            advert_interval_ms: spec.advert_interval_ms.to_string(),
            preempt: spec.preempt,
            vips: vip_list(&spec.vips, "\n"),
            unicast_peers: spec.unicast_peers.join("\n"),
            errors: HashMap::new(),
            general: None,
        }
    }

    pub fn blank() -> Self {
        ClusterForm {
            interface: "eth0".into(),
            vrrp_version: "3".into(),
            advert_interval_ms: "100".into(),
            preempt: true,
            ..ClusterForm::default()
        }
    }

    /// The message for a field, or "" (templates show it next to the input).
    pub fn err(&self, field: &str) -> &str {
        self.errors.get(field).map(String::as_str).unwrap_or("")
    }

    /// `aria-invalid` for a field.
    pub fn invalid(&self, field: &str) -> &'static str {
        if self.errors.contains_key(field) {
            "true"
        } else {
            "false"
        }
    }
}

/// The add-service form, with its field messages.
#[derive(Debug, Clone, Default)]
pub struct ServiceForm {
    pub vip: String,
    pub port: String,
    pub protocol: String,
    pub scheduler: String,
    pub forward: String,
    pub persistence_s: String,
    pub check_kind: String,
    pub check_path: String,
    pub check_status: String,
    pub errors: HashMap<String, String>,
    pub general: Option<String>,
}

impl ServiceForm {
    pub fn blank() -> Self {
        ServiceForm {
            protocol: "tcp".into(),
            scheduler: "wrr".into(),
            forward: "nat".into(),
            persistence_s: "0".into(),
            check_kind: "tcp".into(),
            check_status: "200".into(),
            ..ServiceForm::default()
        }
    }
    pub fn err(&self, field: &str) -> &str {
        self.errors.get(field).map(String::as_str).unwrap_or("")
    }
    pub fn invalid(&self, field: &str) -> &'static str {
        if self.errors.contains_key(field) {
            "true"
        } else {
            "false"
        }
    }
}

#[derive(Template)]
#[template(path = "clusters.html")]
struct ClustersPage {
    p: Chrome,
    rows: Vec<ClusterRowView>,
    form: ClusterForm,
}

pub async fn clusters(
    State(s): State<AppState>,
    user: WebUser,
    headers: HeaderMap,
) -> Result<Response, WebError> {
    clusters_page(&s, &user, &headers, ClusterForm::blank()).await
}

pub async fn clusters_page(
    s: &AppState,
    user: &WebUser,
    headers: &HeaderMap,
    form: ClusterForm,
) -> Result<Response, WebError> {
    let rows = s
        .fleet
        .list_clusters()
        .await?
        .iter()
        .map(|c| ClusterRowView {
            name: c.name.clone(),
            vrrp: format!(
                "VRID {} on {} (v{}, {} ms)",
                c.spec.vrid, c.spec.interface, c.spec.vrrp_version, c.spec.advert_interval_ms
            ),
            vips: vip_list(&c.spec.vips, ", "),
            active: c
                .members
                .iter()
                .filter(|m| m.role == "active")
                .map(|m| m.node.clone())
                .collect::<Vec<_>>()
                .join(", "),
            backups: c
                .members
                .iter()
                .filter(|m| m.role == "backup")
                .map(|m| m.node.clone())
                .collect::<Vec<_>>()
                .join(", "),
            services: c.spec.services.len(),
            real_servers: c.spec.services.iter().map(|s| s.real_servers.len()).sum(),
        })
        .collect();
    let has_errors = !form.errors.is_empty() || form.general.is_some();
    let mut resp = render(&ClustersPage {
        p: Chrome::new(user, headers, "clusters", "Clusters".into()),
        rows,
        form,
    })?;
    if has_errors {
        *resp.status_mut() = axum::http::StatusCode::UNPROCESSABLE_ENTITY;
    }
    Ok(resp)
}

#[derive(Debug, Clone)]
pub struct RsView {
    pub address: String,
    pub weight: u32,
    pub enabled: bool,
    /// As the active node reported it (unknown without a report).
    pub health: HealthView,
}

#[derive(Debug, Clone)]
pub struct ServiceView {
    pub key: String,
    pub label: String,
    pub scheduler: String,
    pub forward: String,
    pub check: String,
    pub persistence: String,
    pub persistence_s: u32,
    pub check_kind: String,
    pub check_path: String,
    pub check_status: String,
    /// The check as it is, for the edit form (which keeps whatever it does not show).
    pub check_spec: lbfleet_proto::HealthCheck,
    /// What the check does beyond its one-line description (`on down: remove`, `quorum 2 (-60)`, ...).
    pub check_extras: Vec<String>,
    /// Position in the spec (ids of the edit form's fields).
    pub index: usize,
    pub servers: Vec<RsView>,
}

#[derive(Debug, Clone)]
pub struct Candidate {
    pub id: i64,
    pub name: String,
    pub state: String,
}

#[derive(Template)]
#[template(path = "cluster.html")]
struct ClusterPage {
    p: Chrome,
    name: String,
    card: ClusterCard,
    services: Vec<ServiceView>,
    vips: Vec<String>,
    candidates: Vec<Candidate>,
    has_active: bool,
    has_backup: bool,
    form: ClusterForm,
    svc_form: ServiceForm,
    schedulers: Vec<String>,
    updated: String,
    /// The spec revision this page shows; the settings form sends it back so a save never overwrites a change
    /// made in between.
    revision: u64,
    back: String,
}

/// The parts of a check its one-line description leaves out, for the cluster page.
fn check_extras(c: &lbfleet_proto::HealthCheck) -> Vec<String> {
    if c.kind == lbfleet_proto::CheckKind::None {
        return Vec::new();
    }
    let mut out = vec![format!(
        "every {} ms, timeout {} ms, rise {}, fall {}",
        c.interval_ms, c.timeout_ms, c.rise, c.fall
    )];
    out.push(format!("on down: {}", c.on_down));
    if let Some(h) = &c.host {
        out.push(format!("Host {h}"));
    }
    if let Some(b) = &c.body_contains {
        out.push(format!("body contains {b:?}"));
    }
    if c.kind == lbfleet_proto::CheckKind::Https {
        out.push(if c.tls_verify {
            "TLS verified".into()
        } else {
            "TLS not verified".into()
        });
    }
    if let Some(q) = &c.quorum {
        out.push(format!(
            "quorum {} (priority -{})",
            q.min_healthy, q.priority_drop
        ));
    }
    if let Some(s) = &c.sorry_server {
        out.push(format!("sorry server {}", socket_text(&s.address, s.port)));
    }
    if !c.overrides.is_empty() {
        out.push(format!("{} per-server override(s)", c.overrides.len()));
    }
    out
}

pub async fn cluster(
    State(s): State<AppState>,
    user: WebUser,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, WebError> {
    cluster_page(&s, &user, &headers, &name, None, ServiceForm::blank()).await
}

pub async fn cluster_page(
    s: &AppState,
    user: &WebUser,
    headers: &HeaderMap,
    name: &str,
    form: Option<ClusterForm>,
    svc_form: ServiceForm,
) -> Result<Response, WebError> {
    let c: ClusterView = s.fleet.get_cluster(name).await?;
    let (picture, nodes) = fleet_picture(s).await?;
    let card = picture
        .cards
        .into_iter()
        .find(|k| k.name == c.name)
        .ok_or_else(|| WebError::NotFound(format!("no cluster named {name:?}")))?;
    let active = c.members.iter().find(|m| m.role == "active");
    let report = match active {
        Some(m) => report_of(&s.fleet.get_node(&node_key(&m.node)).await?),
        None => None,
    };
    let health = health_views(report.as_ref());
    let services = c
        .spec
        .services
        .iter()
        .enumerate()
        .map(|(index, sv)| ServiceView {
            index,
            check_spec: sv.check.clone(),
            check_extras: check_extras(&sv.check),
            persistence_s: sv.persistence_s,
            check_kind: sv.check.kind.to_string(),
            check_path: sv.check.path.clone().unwrap_or_default(),
            check_status: sv
                .check
                .expect_status
                .map(|s| s.to_string())
                .unwrap_or_default(),
            key: format!("{}:{}", sv.protocol, socket_text(&sv.vip, sv.port)),
            label: format!("{} {}", sv.protocol, socket_text(&sv.vip, sv.port)),
            scheduler: sv.scheduler.to_string(),
            forward: sv.forward.to_string(),
            check: sv.check.describe(),
            persistence: if sv.persistence_s == 0 {
                "off".into()
            } else {
                format!("{} s", sv.persistence_s)
            },
            servers: sv
                .real_servers
                .iter()
                .map(|r| RsView {
                    address: socket_text(&r.address, r.port),
                    weight: r.weight,
                    enabled: r.enabled.unwrap_or(true),
                    health: health
                        .get(&(
                            sv.protocol.to_string(),
                            sv.vip.clone(),
                            sv.port,
                            r.address.clone(),
                            r.port,
                        ))
                        .cloned()
                        .unwrap_or_else(HealthView::unknown),
                })
                .collect(),
        })
        .collect();
    let candidates = nodes
        .iter()
        .filter(|n| {
            matches!(n.state.as_str(), "ready" | "assigned" | "serving")
                && n.cluster.as_deref() != Some(c.name.as_str())
        })
        .map(|n| Candidate {
            id: n.id,
            name: n.name.clone(),
            state: match &n.cluster {
                Some(other) => format!("in {other}"),
                None => n.state.clone(),
            },
        })
        .collect();
    let has_errors = form
        .as_ref()
        .is_some_and(|f| !f.errors.is_empty() || f.general.is_some())
        || !svc_form.errors.is_empty()
        || svc_form.general.is_some();
    let mut resp = render(&ClusterPage {
        p: Chrome::new(user, headers, "clusters", format!("Cluster {}", c.name)),
        has_active: c.members.iter().any(|m| m.role == "active"),
        has_backup: c.members.iter().any(|m| m.role == "backup"),
        vips: c.spec.vips.iter().map(|v| v.addr().to_owned()).collect(),
        form: form.unwrap_or_else(|| ClusterForm::from_spec(&c.name, &c.spec)),
        svc_form,
        schedulers: lbfleet_proto::Scheduler::ALL
            .iter()
            .map(|s| s.to_string())
            .collect(),
        updated: time_text(c.updated_at),
        revision: c.revision,
        back: format!("/clusters/{}", c.name),
        name: c.name,
        card,
        services,
        candidates,
    })?;
    if has_errors {
        *resp.status_mut() = axum::http::StatusCode::UNPROCESSABLE_ENTITY;
    }
    Ok(resp)
}

#[derive(Template)]
#[template(path = "switchover.html")]
struct SwitchoverPage {
    p: Chrome,
    name: String,
    active: String,
    active_priority: i64,
    backups: Vec<(String, i64)>,
    target: String,
    target_priority: i64,
}

/// The confirmation that says what a switchover will do before it is done.
pub async fn switchover_confirm(
    State(s): State<AppState>,
    user: WebUser,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, WebError> {
    user.require(UserRole::Operator)?;
    let c = s.fleet.get_cluster(&name).await?;
    let active = c
        .members
        .iter()
        .find(|m| m.role == "active")
        .ok_or_else(|| WebError::BadRequest(format!("cluster {name} has no active node")))?;
    let backups: Vec<(String, i64)> = c
        .members
        .iter()
        .filter(|m| m.role == "backup")
        .map(|m| (m.node.clone(), m.priority))
        .collect();
    let target = backups
        .iter()
        .max_by_key(|(_, p)| *p)
        .cloned()
        .ok_or_else(|| WebError::BadRequest(format!("cluster {name} has no backup node")))?;
    render(&SwitchoverPage {
        p: Chrome::new(&user, &headers, "clusters", format!("Switch over {name}")),
        active: active.node.clone(),
        active_priority: active.priority,
        backups,
        target: target.0,
        target_priority: target.1,
        name: c.name,
    })
}

// ----- events -------------------------------------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
pub struct EventsQuery {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    node: String,
    #[serde(default)]
    cluster: String,
    before: Option<i64>,
}

#[derive(Template)]
#[template(path = "events.html")]
struct EventsPage {
    p: Chrome,
    rows: Vec<EventView>,
    kind: String,
    node: String,
    cluster: String,
    kinds: Vec<String>,
    older: Option<String>,
}

pub async fn events(
    State(s): State<AppState>,
    user: WebUser,
    headers: HeaderMap,
    Query(q): Query<EventsQuery>,
) -> Result<Response, WebError> {
    let node_id = if q.node.trim().is_empty() {
        None
    } else {
        match s.fleet.get_node(&node_key(q.node.trim())).await {
            Ok(n) => Some(n.id),
            Err(_) => Some(-1),
        }
    };
    let limit = 200;
    let rows = {
        let mut conn = s.fleet.store().read().await?;
        store::events::list(
            &mut conn,
            &EventFilter {
                kind: (!q.kind.is_empty()).then(|| q.kind.clone()),
                node_id,
                cluster: (!q.cluster.trim().is_empty()).then(|| q.cluster.trim().to_owned()),
                before_id: q.before,
                limit,
                ..EventFilter::default()
            },
        )
        .await?
    };
    let older = (rows.len() as i64 == limit).then(|| {
        let last = rows.last().map(|r| r.id).unwrap_or(0);
        format!(
            "/events?{}",
            serde_urlencoded::to_string([
                ("kind", q.kind.as_str()),
                ("node", q.node.as_str()),
                ("cluster", q.cluster.as_str()),
                ("before", last.to_string().as_str()),
            ])
            .unwrap_or_default()
        )
    });
    render(&EventsPage {
        p: Chrome::new(&user, &headers, "events", "Events".into()),
        rows: rows.iter().map(event_view).collect(),
        kind: q.kind.clone(),
        node: q.node.clone(),
        cluster: q.cluster.clone(),
        kinds: [
            "discovered",
            "enrolled",
            "serving",
            "vrrp",
            "health",
            "agent_error",
            "switchover",
        ]
        .iter()
        .map(|k| k.to_string())
        .collect(),
        older,
    })
}

// ----- login --------------------------------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "login.html")]
pub struct LoginPage {
    pub csrf: String,
    pub next: String,
    pub username: String,
    pub error: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct LoginQuery {
    #[serde(default)]
    next: String,
}

/// The login form. It carries its own CSRF token (a cookie plus the same value in the form), so a login
/// cannot be forced from another site either.
pub async fn login_form(Query(q): Query<LoginQuery>) -> Result<Response, WebError> {
    login_page(&q.next, "", None, axum::http::StatusCode::OK)
}

pub fn login_page(
    next: &str,
    username: &str,
    error: Option<String>,
    status: axum::http::StatusCode,
) -> Result<Response, WebError> {
    let csrf = secrets::new_secret("");
    let mut resp = render(&LoginPage {
        csrf: csrf.clone(),
        next: super::safe_back(next).to_owned(),
        username: username.to_owned(),
        error,
    })?;
    *resp.status_mut() = status;
    let cookie =
        format!("{LOGIN_CSRF_COOKIE}={csrf}; Path=/login; HttpOnly; SameSite=Strict; Max-Age=3600");
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(resp.into_response())
}

/// VIPs as text: `198.18.0.10/32`, `198.18.2.254/24 dev eth1`.
fn vip_list(vips: &[lbfleet_proto::VipSpec], sep: &str) -> String {
    vips.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(sep)
}
