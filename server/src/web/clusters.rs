//! Clusters: the list with its create form, one cluster's page with its settings form, deletion, and the
//! switchover confirmation and action. Settings edits are read-modify-write against the cluster's revision.

use std::collections::HashMap;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use lbfleet_proto::{ClusterSpec, Role, UserRole};
use serde::Deserialize;

use super::error::{fleet_error_text, WebError};
use super::flash::redirect_with;
use super::form::*;
use super::format::{time_text, vip_list};
use super::health::{check_extras, health_views, HealthView};
use super::page::{render, Chrome};
use super::picture::*;
use super::rs_pager::{self, RsQuery};
use super::session::{Posted, WebUser};
use crate::fleet::{node_key, socket_text, ClusterView, FleetError, NodeAction, Precondition};
use crate::state::AppState;
use crate::store::clusters::RealServerKey;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/clusters", get(clusters).post(create_cluster))
        .route("/clusters/{name}", get(cluster))
        .route("/clusters/{name}/settings", post(cluster_settings))
        .route("/clusters/{name}/delete", post(delete_cluster))
        .route(
            "/clusters/{name}/switchover",
            get(switchover_confirm).post(switchover),
        )
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
pub(super) struct ClustersPage {
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
                .filter(|m| m.role == Role::Active)
                .map(|m| m.node.clone())
                .collect::<Vec<_>>()
                .join(", "),
            backups: c
                .members
                .iter()
                .filter(|m| m.role == Role::Backup)
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
    /// As the active node reported it (unknown without a report, `not checked` until a check looked at it).
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
pub(super) struct ClusterPage {
    p: Chrome,
    name: String,
    card: ClusterCard,
    /// The services with real servers on this page of the real-server tables (all of a small cluster).
    services: Vec<ServiceView>,
    /// Where that page is: search, page number, rows shown.
    rs_page: rs_pager::RsPage,
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
    /// What the DR and TUN real servers need (`lbfleet-server realserver`'s content).
    real_server_setup: Vec<crate::fleet::real_server_setup::RealServerSetup>,
    /// The traffic graphs (`traffic.html`).
    traffic: super::traffic::TrafficPanel,
}

pub async fn cluster(
    State(s): State<AppState>,
    user: WebUser,
    headers: HeaderMap,
    Path(name): Path<String>,
    axum::extract::Query(q): axum::extract::Query<super::traffic::TrafficQuery>,
    Query(view): Query<RsQuery>,
) -> Result<Response, WebError> {
    let range = super::traffic::range_of(q.range.as_deref());
    cluster_page_at(
        &s,
        &user,
        &headers,
        &name,
        None,
        ServiceForm::blank(),
        range,
        &view,
    )
    .await
}

pub async fn cluster_page(
    s: &AppState,
    user: &WebUser,
    headers: &HeaderMap,
    name: &str,
    form: Option<ClusterForm>,
    svc_form: ServiceForm,
) -> Result<Response, WebError> {
    let range = crate::fleet::traffic::TrafficRange::Hour;
    cluster_page_at(
        s,
        user,
        headers,
        name,
        form,
        svc_form,
        range,
        &RsQuery::default(),
    )
    .await
}

/// The cluster page with its traffic graphs over `range` and its real-server tables at one page of one search
/// (`rs_pager`).
#[allow(clippy::too_many_arguments)]
async fn cluster_page_at(
    s: &AppState,
    user: &WebUser,
    headers: &HeaderMap,
    name: &str,
    form: Option<ClusterForm>,
    svc_form: ServiceForm,
    range: crate::fleet::traffic::TrafficRange,
    view: &RsQuery,
) -> Result<Response, WebError> {
    let c: ClusterView = s.fleet.get_cluster(name).await?;
    let traffic = super::traffic::panel(
        "cluster",
        &format!("services of {}", c.name),
        &s.fleet
            .cluster_traffic(&c.name, range, Some(super::traffic::MAX_LINES))
            .await?,
    );
    let (picture, nodes) = fleet_picture(s).await?;
    let card = picture
        .cards
        .into_iter()
        .find(|k| k.name == c.name)
        .ok_or_else(|| WebError::NotFound(format!("no cluster named {name:?}")))?;
    let active = c.members.iter().find(|m| m.role == Role::Active);
    let report = match active {
        Some(m) => report_of(&s.fleet.get_node(&node_key(&m.node)).await?),
        None => None,
    };
    let health = health_views(report.as_ref());
    let rs_page = rs_pager::page(&c.spec, view, rs_pager::PER_PAGE);
    let services = rs_page
        .services
        .iter()
        .filter_map(|(index, shown)| c.spec.services.get(*index).map(|sv| (*index, sv, shown)))
        .map(|(index, sv, shown)| ServiceView {
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
            servers: shown
                .iter()
                .filter_map(|ri| sv.real_servers.get(*ri))
                .map(|r| RsView {
                    address: socket_text(&r.address, r.port),
                    weight: r.weight,
                    enabled: r.enabled.unwrap_or(true),
                    health: health
                        .get(&RealServerKey::of_spec(sv, r))
                        .cloned()
                        .unwrap_or_else(HealthView::unknown),
                })
                .collect(),
        })
        .collect();
    let candidates = nodes
        .iter()
        .filter(|n| {
            NodeAction::Assign.allowed_from(n.state)
                && n.cluster.as_deref() != Some(c.name.as_str())
        })
        .map(|n| Candidate {
            id: n.id,
            name: n.name.clone(),
            state: match &n.cluster {
                Some(other) => format!("in {other}"),
                None => n.state.to_string(),
            },
        })
        .collect();
    let has_errors = form
        .as_ref()
        .is_some_and(|f| !f.errors.is_empty() || f.general.is_some())
        || !svc_form.errors.is_empty()
        || svc_form.general.is_some();
    let real_server_setup = crate::fleet::real_server_setup::plan(&c.name, &c.spec).real_servers;
    let mut resp = render(&ClusterPage {
        traffic,
        p: Chrome::new(user, headers, "clusters", format!("Cluster {}", c.name)),
        real_server_setup,
        has_active: c.members.iter().any(|m| m.role == Role::Active),
        has_backup: c.members.iter().any(|m| m.role == Role::Backup),
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
        rs_page,
        candidates,
    })?;
    if has_errors {
        *resp.status_mut() = axum::http::StatusCode::UNPROCESSABLE_ENTITY;
    }
    Ok(resp)
}

#[derive(Template)]
#[template(path = "switchover.html")]
pub(super) struct SwitchoverPage {
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
        .find(|m| m.role == Role::Active)
        .ok_or_else(|| WebError::BadRequest(format!("cluster {name} has no active node")))?;
    let backups: Vec<(String, i64)> = c
        .members
        .iter()
        .filter(|m| m.role == Role::Backup)
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

// ----- clusters -----------------------------------------------------------------------------------------------

#[derive(Deserialize)]
pub struct ClusterSettingsForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    vrid: String,
    #[serde(default)]
    interface: String,
    #[serde(default)]
    vrrp_version: String,
    #[serde(default)]
    advert_interval_ms: String,
    #[serde(default)]
    preempt: Option<String>,
    #[serde(default)]
    vips: String,
    #[serde(default)]
    unicast_peers: String,
    /// The spec revision the form was rendered from (empty from older pages: no check).
    #[serde(default)]
    revision: String,
}

pub(super) fn lines(text: &str) -> Vec<String> {
    text.split(['\n', ',', ' '])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

impl ClusterSettingsForm {
    fn to_form(&self) -> ClusterForm {
        ClusterForm {
            name: self.name.trim().to_owned(),
            vrid: self.vrid.clone(),
            interface: self.interface.clone(),
            vrrp_version: self.vrrp_version.clone(),
            advert_interval_ms: self.advert_interval_ms.clone(),
            preempt: self.preempt.is_some(),
            vips: self.vips.clone(),
            unicast_peers: self.unicast_peers.clone(),
            errors: Default::default(),
            general: None,
        }
    }

    /// The spec the form describes (keeping `services`), or the form with a message next to each bad number.
    /// `current` keeps what the form does not show (services, GARP, connection sync, preempt delay).
    fn to_spec(&self, current: Option<&ClusterSpec>) -> Result<ClusterSpec, Box<ClusterForm>> {
        let mut form = self.to_form();
        let mut num = |field: &str, text: &str| -> u32 {
            match text.trim().parse::<u32>() {
                Ok(v) => v,
                Err(_) => {
                    form.errors.insert(
                        field.to_owned(),
                        format!("{:?} is not a whole number", text.trim()),
                    );
                    0
                }
            }
        };
        let vrid = num("vrid", &self.vrid);
        let version = num("vrrp_version", &self.vrrp_version);
        let advert = num("advert_interval_ms", &self.advert_interval_ms);
        let vrrp_version = u8::try_from(version).unwrap_or(0);
        // One VIP per line (or comma-separated): `ADDRESS/PREFIX [dev INTERFACE]`.
        let mut vips = Vec::new();
        for line in self
            .vips
            .split(['\n', ','])
            .map(str::trim)
            .filter(|l| !l.is_empty())
        {
            match line.parse::<lbfleet_proto::VipSpec>() {
                Ok(v) => vips.push(v),
                Err(m) => {
                    form.errors.insert("vips".into(), m);
                }
            }
        }
        if !form.errors.is_empty() {
            return Err(Box::new(form));
        }
        Ok(ClusterSpec {
            vrid,
            interface: self.interface.trim().to_owned(),
            vrrp_version,
            advert_interval_ms: advert,
            preempt: self.preempt.is_some(),
            preempt_delay_ms: current.map_or(0, |c| c.preempt_delay_ms),
            vips,
            unicast_peers: lines(&self.unicast_peers),
            garp: current.map(|c| c.garp).unwrap_or_default(),
            conn_sync: current.and_then(|c| c.conn_sync.clone()),
            services: current.map(|c| c.services.clone()).unwrap_or_default(),
        })
    }
}

/// Spreads a fleet refusal over the form: field errors next to their inputs (`vips[1]` goes to `vips`), anything
/// else on top. Returns `Err` for faults that are not the user's.
pub(super) fn apply_errors(
    e: FleetError,
    errors: &mut std::collections::HashMap<String, String>,
    general: &mut Option<String>,
    strip_prefix: Option<&str>,
) -> Result<(), WebError> {
    match e {
        FleetError::Invalid(errs) => {
            for fe in errs.0 {
                let mut field = fe.field.clone();
                if let Some(p) = strip_prefix {
                    if let Some(rest) = field.strip_prefix(p) {
                        field = rest.to_owned();
                    }
                }
                let base = field.split(['[', '.']).next().unwrap_or(&field).to_owned();
                let base = if field.starts_with("check.") {
                    field.replace('.', "_")
                } else {
                    base
                };
                errors
                    .entry(base)
                    .and_modify(|m| {
                        m.push_str("; ");
                        m.push_str(&fe.message)
                    })
                    .or_insert(fe.message);
            }
            Ok(())
        }
        FleetError::Store(e) if !e.is_constraint() => Err(FleetError::Store(e).into()),
        other => {
            *general = Some(fleet_error_text(&other).1);
            Ok(())
        }
    }
}

pub async fn create_cluster(
    State(s): State<AppState>,
    headers: HeaderMap,
    Posted { user, form }: Posted<ClusterSettingsForm>,
) -> Result<Response, WebError> {
    user.require(UserRole::Operator)?;
    let name = form.name.trim().to_owned();
    if s.fleet.get_cluster(&name).await.is_ok() {
        let mut f = form.to_form();
        f.errors.insert(
            "name".into(),
            format!("a cluster named {name:?} already exists"),
        );
        return clusters_page(&s, &user, &headers, f).await;
    }
    let spec = match form.to_spec(None) {
        Ok(spec) => spec,
        Err(f) => return clusters_page(&s, &user, &headers, *f).await,
    };
    match s
        .fleet
        .put_cluster_if(&user.actor(), &name, &spec, Precondition::Absent)
        .await
    {
        Ok(_) => Ok(redirect_with(
            &format!("/clusters/{name}"),
            true,
            &format!("created cluster {name}"),
        )),
        Err(e) => {
            let mut f = form.to_form();
            apply_errors(e, &mut f.errors, &mut f.general, None)?;
            if f.errors.contains_key("cluster") || f.errors.contains_key("name") {
                let m = f.errors.remove("cluster").unwrap_or_default();
                f.errors.entry("name".into()).or_insert(m);
            }
            clusters_page(&s, &user, &headers, f).await
        }
    }
}

pub async fn cluster_settings(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Posted { user, form }: Posted<ClusterSettingsForm>,
) -> Result<Response, WebError> {
    user.require(UserRole::Operator)?;
    let current = s.fleet.get_cluster(&name).await?;
    let mut form = form;
    form.name = name.clone();
    // The settings were typed over the page's revision; if the cluster changed since, say so instead of
    // overwriting (the page shown again carries the new revision, so saving again is a deliberate choice).
    let shown: Option<u64> = form.revision.trim().parse().ok();
    if let Some(shown) = shown.filter(|r| *r != current.revision) {
        let mut f = form.to_form();
        f.general = Some(format!(
            "cluster {name} was changed by someone else since this page was loaded (revision {shown}, now {}); \
             nothing was saved. Check the settings below and save again.",
            current.revision
        ));
        return cluster_page(&s, &user, &headers, &name, Some(f), ServiceForm::blank()).await;
    }
    let spec = match form.to_spec(Some(&current.spec)) {
        Ok(spec) => spec,
        Err(f) => {
            return cluster_page(&s, &user, &headers, &name, Some(*f), ServiceForm::blank()).await
        }
    };
    match s
        .fleet
        .put_cluster_if(
            &user.actor(),
            &name,
            &spec,
            Precondition::Revision(current.revision),
        )
        .await
    {
        Ok((outcome, _)) => Ok(redirect_with(
            &format!("/clusters/{name}"),
            true,
            &format!("cluster {name}: settings {outcome:?}").to_lowercase(),
        )),
        Err(e) => {
            let mut f = form.to_form();
            apply_errors(e, &mut f.errors, &mut f.general, None)?;
            cluster_page(&s, &user, &headers, &name, Some(f), ServiceForm::blank()).await
        }
    }
}

pub async fn delete_cluster(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Posted { user, .. }: Posted<Empty>,
) -> Result<Response, WebError> {
    user.require(UserRole::Operator)?;
    match s.fleet.delete_cluster(&user.actor(), &name).await {
        Ok(()) => Ok(redirect_with(
            "/clusters",
            true,
            &format!("deleted cluster {name}"),
        )),
        Err(e) => done(&format!("/clusters/{name}"), Err(e)),
    }
}

#[derive(Deserialize)]
pub struct SwitchoverForm {
    #[serde(default)]
    to: String,
}

pub async fn switchover(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Posted { user, form }: Posted<SwitchoverForm>,
) -> Result<Response, WebError> {
    user.require(UserRole::Operator)?;
    let to = non_empty(&form.to).map(|t| node_key(&t));
    let r = s
        .fleet
        .switchover(&user.actor(), &name, to.as_ref())
        .await
        .map(|sw| {
            format!(
                "switchover done: {} is active (priority {}), {} is backup (priority {})",
                sw.new_active, sw.new_active_priority, sw.old_active, sw.old_active_priority
            )
        });
    done(&format!("/clusters/{name}"), r)
}
