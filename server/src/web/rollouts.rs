//! Fleet operations on the dashboard: the rollouts page (start one, watch its nodes, pause, resume, abort),
//! one rollout's page, and the node page's reboot button. The forms call the same `Fleet` methods as the API
//! (`/api/v1/rollouts`, `/api/v1/nodes/{node}/reboot`), so the same rules and audit rows apply.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use lbfleet_proto::UserRole;
use serde::Deserialize;

use super::error::{fleet_error_text, WebError};
use super::flash::redirect_with;
use super::format::time_text;
use super::page::{render, Chrome};
use super::session::{Posted, WebUser};
use crate::fleet::rollouts::{Gate, GateTimeout, RolloutRequest, RolloutView};
use crate::fleet::{node_key, FleetError};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/rollouts", get(list).post(start))
        .route("/rollouts/{id}", get(show))
        .route("/rollouts/{id}/{action}", post(act))
        .route("/nodes/{id}/reboot", post(reboot))
}

/// One rollout, as a row or a page.
#[derive(Debug, Clone)]
pub struct RolloutRow {
    pub id: i64,
    pub image: String,
    pub state: String,
    pub reason: String,
    pub current: String,
    pub by: String,
    pub started: String,
    pub progress: String,
    pub can_pause: bool,
    pub can_resume: bool,
    pub can_abort: bool,
    pub steps: Vec<StepRow>,
}

#[derive(Debug, Clone)]
pub struct StepRow {
    pub node: String,
    pub node_id: i64,
    pub cluster: String,
    pub canary: bool,
    pub phase: String,
    pub previous: String,
    pub note: String,
}

fn row(v: RolloutView) -> RolloutRow {
    let done = v
        .steps
        .iter()
        .filter(|s| matches!(s.phase.as_str(), "done" | "skipped"))
        .count();
    RolloutRow {
        id: v.id,
        image: v.image,
        state: v.state.to_string(),
        reason: v.reason.unwrap_or_default(),
        current: v.current.unwrap_or_else(|| "-".into()),
        by: v.created_by,
        started: time_text(v.created_at),
        progress: format!("{done} of {}", v.steps.len()),
        can_pause: v.state.as_str() == "running",
        can_resume: v.state.as_str() == "paused",
        can_abort: v.state.unfinished(),
        steps: v
            .steps
            .into_iter()
            .map(|s| StepRow {
                node: s.node,
                node_id: s.node_id,
                cluster: s.cluster.unwrap_or_else(|| "-".into()),
                canary: s.canary,
                phase: s.phase.to_string(),
                previous: s.previous_image.unwrap_or_else(|| "-".into()),
                note: s.note.unwrap_or_default(),
            })
            .collect(),
    }
}

#[derive(Template)]
#[template(path = "rollouts.html")]
struct RolloutsPage {
    p: Chrome,
    rollouts: Vec<RolloutRow>,
    images: Vec<String>,
    clusters: Vec<String>,
}

async fn list(
    State(s): State<AppState>,
    user: WebUser,
    headers: HeaderMap,
) -> Result<Response, WebError> {
    let rollouts = s
        .fleet
        .list_rollouts()
        .await?
        .into_iter()
        .map(row)
        .collect();
    let images = super::image_names(&s).await?;
    let clusters = super::cluster_names(&s).await?;
    render(&RolloutsPage {
        p: Chrome::new(&user, &headers, "rollouts", "Rollouts".into()),
        rollouts,
        images,
        clusters,
    })
}

#[derive(Template)]
#[template(path = "rollout.html")]
struct RolloutPage {
    p: Chrome,
    r: RolloutRow,
}

async fn show(
    State(s): State<AppState>,
    user: WebUser,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Result<Response, WebError> {
    let r = row(s.fleet.get_rollout(id).await?);
    render(&RolloutPage {
        p: Chrome::new(&user, &headers, "rollouts", format!("Rollout {id}")),
        r,
    })
}

/// The start form: names are comma- or space-separated.
#[derive(Debug, Deserialize)]
struct StartForm {
    image: String,
    #[serde(default)]
    clusters: String,
    #[serde(default)]
    nodes: String,
    #[serde(default)]
    canary: String,
    #[serde(default)]
    pause_after_canary: Option<String>,
    #[serde(default)]
    timeout: String,
    #[serde(default)]
    checks_up: Option<String>,
    #[serde(default)]
    in_sync: Option<String>,
}

fn names(text: &str) -> Vec<String> {
    text.split([',', ' '])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

async fn start(
    State(s): State<AppState>,
    Posted { user, form }: Posted<StartForm>,
) -> Result<Response, WebError> {
    user.require(UserRole::Operator)?;
    let timeout = if form.timeout.trim().is_empty() {
        GateTimeout::default()
    } else {
        match humantime::parse_duration(form.timeout.trim()) {
            Ok(d) => GateTimeout(d),
            Err(e) => {
                return Ok(redirect_with(
                    "/rollouts",
                    false,
                    &format!("gate timeout {:?}: {e}", form.timeout),
                ))
            }
        }
    };
    let req = RolloutRequest {
        image: form.image.trim().to_owned(),
        clusters: names(&form.clusters),
        nodes: names(&form.nodes),
        canary: Some(form.canary.trim().to_owned()).filter(|c| !c.is_empty()),
        pause_after_canary: form.pause_after_canary.is_some(),
        max_unavailable: 1,
        gate: Gate {
            timeout,
            checks_up: form.checks_up.is_some(),
            in_sync: form.in_sync.is_some(),
        },
    };
    match s.fleet.create_rollout(&user.actor(), req).await {
        Ok(v) => Ok(redirect_with(
            &format!("/rollouts/{}", v.id),
            true,
            &format!("rollout {} of image {} started", v.id, v.image),
        )),
        Err(FleetError::Store(e)) if !e.is_constraint() => Err(FleetError::Store(e).into()),
        Err(e) => Ok(redirect_with("/rollouts", false, &fleet_error_text(&e).1)),
    }
}

#[derive(Debug, Deserialize)]
struct Empty {}

/// `POST /rollouts/{id}/{pause|resume|abort}`.
async fn act(
    State(s): State<AppState>,
    Path((id, action)): Path<(i64, String)>,
    Posted {
        user,
        form: Empty {},
    }: Posted<Empty>,
) -> Result<Response, WebError> {
    user.require(UserRole::Operator)?;
    let actor = user.actor();
    let r = match action.as_str() {
        "pause" => s.fleet.pause_rollout(&actor, id).await,
        "resume" => s.fleet.resume_rollout(&actor, id).await,
        "abort" => s.fleet.abort_rollout(&actor, id).await,
        _ => Err(FleetError::NotFound(format!(
            "no rollout action {action:?}"
        ))),
    };
    let back = format!("/rollouts/{id}");
    match r {
        Ok(v) => Ok(redirect_with(
            &back,
            true,
            &format!("rollout {id} is {}", v.state),
        )),
        Err(FleetError::Store(e)) if !e.is_constraint() => Err(FleetError::Store(e).into()),
        Err(e) => Ok(redirect_with(&back, false, &fleet_error_text(&e).1)),
    }
}

/// `POST /nodes/{id}/reboot`: the node hands over and reboots (audited with who asked).
async fn reboot(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Posted {
        user,
        form: Empty {},
    }: Posted<Empty>,
) -> Result<Response, WebError> {
    user.require(UserRole::Operator)?;
    let back = format!("/nodes/{id}");
    match s
        .fleet
        .reboot_node(&user.actor(), &node_key(&id), None)
        .await
    {
        Ok(r) => Ok(redirect_with(
            &back,
            true,
            &format!("{} hands over and reboots", r.node),
        )),
        Err(FleetError::Store(e)) if !e.is_constraint() => Err(FleetError::Store(e).into()),
        Err(e) => Ok(redirect_with(&back, false, &fleet_error_text(&e).1)),
    }
}
