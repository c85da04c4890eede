//! Nodes: the list (filter, sort), one node's page (assignment, IPVS as reported, events), discovered hardware,
//! and the lifecycle forms (approve, reject, assign, unassign, retire).

use std::collections::HashMap;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use lbfleet_proto::{NodeState, Role, UserRole};
use serde::Deserialize;

use super::error::WebError;
use super::events::{event_view, EventView};
use super::flash::redirect_with;
use super::form::*;
use super::format::{ago_text, time_text};
use super::health::HealthView;
use super::page::{render, Chrome};
use super::picture::*;
use super::session::{Posted, WebUser};
use crate::fleet::{node_key, socket_text, NodeAction, NodeView};
use crate::state::AppState;
use crate::store::events::EventFilter;
use crate::store::nodes::NodeFilter;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/nodes", get(nodes))
        .route("/nodes/{id}", get(node))
        .route("/nodes/{id}/approve", post(approve))
        .route(
            "/nodes/{id}/reject",
            simple_action_route(NodeAction::Reject),
        )
        .route("/nodes/{id}/assign", post(assign))
        .route(
            "/nodes/{id}/unassign",
            simple_action_route(NodeAction::Unassign),
        )
        .route(
            "/nodes/{id}/retire",
            simple_action_route(NodeAction::Retire),
        )
        .route("/discovered", get(discovered))
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
    /// Assigned and not heard from within `node_silent_after`.
    pub unreachable: bool,
    pub in_sync: bool,
    pub vrrp: String,
    /// The image the agent reports running ("-" when unknown).
    pub running: String,
    /// Runs another image (or agent version) than it should (`fleet::drift`).
    pub drifted: bool,
}

/// Marks the rows whose node drifted.
async fn mark_drift(s: &AppState, rows: &mut [NodeRowView]) -> Result<(), WebError> {
    let drift = s.fleet.drift().await?;
    for r in rows {
        r.drifted = drift
            .nodes
            .iter()
            .any(|d| d.node_id == r.id && d.state == crate::fleet::drift::DriftState::Drifted);
    }
    Ok(())
}

pub(super) fn node_row(n: &NodeView) -> NodeRowView {
    NodeRowView {
        id: n.id,
        name: n.name.clone(),
        mac: n.mac.clone(),
        hostname: n.hostname.clone().unwrap_or_default(),
        address: n.address.clone().unwrap_or_else(|| "-".into()),
        state: n.state.to_string(),
        placement: match (&n.cluster, &n.role) {
            (Some(c), Some(r)) => format!("{c} / {r}"),
            _ => "-".into(),
        },
        image: n.image.clone().unwrap_or_else(|| "default".into()),
        agent: n.agent_version.clone().unwrap_or_else(|| "-".into()),
        last_seen: ago_text(n.last_seen_at),
        unreachable: n.cluster.is_some() && !n.reporting,
        in_sync: n.in_sync,
        vrrp: vrrp_text(n),
        running: n.image_version.clone().unwrap_or_else(|| "-".into()),
        drifted: false,
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
pub(super) struct NodesPage {
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
        .filter(|n| state.as_deref().is_none_or(|st| n.state.as_str() == st))
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
    mark_drift(&s, &mut rows).await?;
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
    let clusters = super::cluster_names(&s).await?;
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

#[derive(Template)]
#[template(path = "node.html")]
pub(super) struct NodePage {
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
    /// The node's own image, "" when it boots the default.
    current_image: String,
    clusters: Vec<String>,
    can_approve: bool,
    can_set_image: bool,
    can_reject: bool,
    can_assign: bool,
    can_unassign: bool,
    can_retire: bool,
    back: String,
    /// The traffic graphs (`traffic.html`).
    traffic: super::traffic::TrafficPanel,
}

pub async fn node(
    State(s): State<AppState>,
    user: WebUser,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<super::traffic::TrafficQuery>,
) -> Result<Response, WebError> {
    let n = s.fleet.get_node(&node_key(&id)).await?;
    let traffic = super::traffic::panel(
        "node",
        &format!("real servers of {}", n.name),
        &s.fleet
            .node_traffic(
                &crate::store::nodes::NodeKey::Id(n.id),
                super::traffic::range_of(q.range.as_deref()),
            )
            .await?,
    );
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
    let events = s
        .fleet
        .events(&EventFilter {
            node_id: Some(n.id),
            limit: 20,
            ..EventFilter::default()
        })
        .await?;
    let images = super::image_names(&s).await?;
    let clusters = super::cluster_names(&s).await?;
    let st = n.state;
    let op = user.can_operate();
    render(&NodePage {
        traffic,
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
        current_image: n.image.clone().unwrap_or_default(),
        clusters,
        can_approve: op && NodeAction::Approve.allowed_from(st),
        // Before approval the image is chosen in the approve form.
        can_set_image: op
            && !matches!(
                st,
                NodeState::Discovered | NodeState::Rejected | NodeState::Retired
            ),
        can_reject: op && NodeAction::Reject.allowed_from(st),
        can_assign: op && NodeAction::Assign.allowed_from(st),
        can_unassign: op && NodeAction::Unassign.allowed_from(st),
        can_retire: op && NodeAction::Retire.allowed_from(st),
        back: format!("/nodes/{}", n.id),
        n: {
            let mut row = [node_row(&n)];
            mark_drift(&s, &mut row).await?;
            let [row] = row;
            row
        },
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
pub(super) struct DiscoveredPage {
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
    let rows = |state: NodeState| {
        let s = s.clone();
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
    let waiting = rows(NodeState::Discovered).await?;
    let rejected = rows(NodeState::Rejected).await?;
    let images = super::image_names(&s).await?;
    render(&DiscoveredPage {
        p: Chrome::new(&user, &headers, "discovered", "Discovered hardware".into()),
        waiting,
        rejected,
        images,
    })
}

// ----- nodes --------------------------------------------------------------------------------------------------

#[derive(Deserialize)]
pub struct ApproveForm {
    #[serde(default)]
    hostname: String,
    #[serde(default)]
    image: String,
    /// A fixed address for the node (a DHCP reservation); empty for one from the pool.
    #[serde(default)]
    address: String,
    #[serde(default = "default_back")]
    back: String,
}

pub async fn approve(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Posted { user, form }: Posted<ApproveForm>,
) -> Result<Response, WebError> {
    user.require(UserRole::Operator)?;
    let r = s
        .fleet
        .approve(
            &user.actor(),
            &node_key(&id),
            non_empty(&form.hostname),
            non_empty(&form.image),
            non_empty(&form.address),
        )
        .await
        .map(|n| format!("approved {} ({}); it is ready", n.name, n.mac));
    done(&form.back, r)
}

#[derive(Deserialize)]
pub struct BackForm {
    #[serde(default = "default_back")]
    back: String,
}

/// The node actions that need nothing but the node (reject, unassign, retire): one handler, one route each.
async fn simple_action(
    action: NodeAction,
    s: AppState,
    id: String,
    Posted { user, form }: Posted<BackForm>,
) -> Result<Response, WebError> {
    user.require(UserRole::Operator)?;
    let (actor, key) = (user.actor(), node_key(&id));
    let r = match action {
        NodeAction::Reject => s
            .fleet
            .reject(&actor, &key)
            .await
            .map(|n| format!("rejected {}", n.mac)),
        NodeAction::Unassign => s
            .fleet
            .unassign(&actor, &key)
            .await
            .map(|n| format!("{} left its cluster and is ready", n.name)),
        NodeAction::Retire => s
            .fleet
            .retire(&actor, &key)
            .await
            .map(|n| format!("{} is retired", n.name)),
        other => {
            return Err(WebError::BadRequest(format!(
                "{other:?} is not a simple node action"
            )))
        }
    };
    done(&form.back, r)
}

/// `POST /nodes/{id}/reject`, `/unassign`, `/retire`.
fn simple_action_route(action: NodeAction) -> axum::routing::MethodRouter<AppState> {
    post(
        move |State(s): State<AppState>, Path(id): Path<String>, posted: Posted<BackForm>| {
            simple_action(action, s, id, posted)
        },
    )
}

#[derive(Deserialize)]
pub struct AssignForm {
    #[serde(default)]
    node: String,
    #[serde(default)]
    cluster: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    priority: String,
    #[serde(default = "default_back")]
    back: String,
}

/// `POST /nodes/{id}/assign`; `{id}` may be `-` when the node comes from the form's `node` field.
pub async fn assign(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Posted { user, form }: Posted<AssignForm>,
) -> Result<Response, WebError> {
    user.require(UserRole::Operator)?;
    let node = if id == "-" { form.node.clone() } else { id };
    if node.trim().is_empty() {
        return Ok(redirect_with(&form.back, false, "pick a node to assign"));
    }
    let role: Role = match form.role.parse() {
        Ok(r) => r,
        Err(_) => {
            return Ok(redirect_with(
                &form.back,
                false,
                "role: pick active or backup",
            ))
        }
    };
    let priority = match form.priority.trim() {
        "" => None,
        p => match p.parse::<u32>() {
            Ok(p) => Some(p),
            Err(_) => {
                return Ok(redirect_with(
                    &form.back,
                    false,
                    &format!("priority: {p:?} is not a number from 1 to 254"),
                ))
            }
        },
    };
    let r = s
        .fleet
        .assign(
            &user.actor(),
            &node_key(&node),
            &form.cluster,
            role,
            priority,
        )
        .await
        .map(|n| {
            format!(
                "{} is now {} in cluster {} (priority {})",
                n.name,
                role,
                form.cluster,
                n.priority.unwrap_or(0)
            )
        });
    done(&form.back, r)
}
