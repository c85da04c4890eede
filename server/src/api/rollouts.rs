//! Fleet operations: rollouts (`/api/v1/rollouts`), drift (`GET /api/v1/drift`) and remote reboot
//! (`POST /api/v1/nodes/{node}/reboot`).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::auth::{Operator, Viewer};
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::fleet::node_key;
use crate::fleet::rollouts::RolloutRequest;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/rollouts", get(list).post(create))
        .route("/rollouts/{id}", get(show))
        .route("/rollouts/{id}/pause", post(pause))
        .route("/rollouts/{id}/resume", post(resume))
        .route("/rollouts/{id}/abort", post(abort))
        .route("/drift", get(drift))
        .route("/nodes/{node}/reboot", post(reboot))
}

/// `POST /api/v1/rollouts` (operator): 201 with the rollout and its plan.
async fn create(
    State(s): State<AppState>,
    Operator(p): Operator,
    ApiJson(req): ApiJson<RolloutRequest>,
) -> Result<Response, ApiError> {
    let view = s.fleet.create_rollout(&p.actor(), req).await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

async fn list(State(s): State<AppState>, _: Viewer) -> Result<Response, ApiError> {
    Ok(Json(serde_json::json!({"rollouts": s.fleet.list_rollouts().await?})).into_response())
}

async fn show(
    State(s): State<AppState>,
    _: Viewer,
    Path(id): Path<i64>,
) -> Result<Response, ApiError> {
    Ok(Json(s.fleet.get_rollout(id).await?).into_response())
}

async fn pause(
    State(s): State<AppState>,
    Operator(p): Operator,
    Path(id): Path<i64>,
) -> Result<Response, ApiError> {
    Ok(Json(s.fleet.pause_rollout(&p.actor(), id).await?).into_response())
}

async fn resume(
    State(s): State<AppState>,
    Operator(p): Operator,
    Path(id): Path<i64>,
) -> Result<Response, ApiError> {
    Ok(Json(s.fleet.resume_rollout(&p.actor(), id).await?).into_response())
}

async fn abort(
    State(s): State<AppState>,
    Operator(p): Operator,
    Path(id): Path<i64>,
) -> Result<Response, ApiError> {
    Ok(Json(s.fleet.abort_rollout(&p.actor(), id).await?).into_response())
}

/// `GET /api/v1/drift` (viewer): every booting node's desired and running image, with counts.
async fn drift(State(s): State<AppState>, _: Viewer) -> Result<Response, ApiError> {
    Ok(Json(s.fleet.drift().await?).into_response())
}

/// `POST /api/v1/nodes/{node}/reboot` (operator): 202; the agent hands over and reboots. Audited with who
/// asked.
async fn reboot(
    State(s): State<AppState>,
    Operator(p): Operator,
    Path(node): Path<String>,
) -> Result<Response, ApiError> {
    let r = s
        .fleet
        .reboot_node(&p.actor(), &node_key(&node), None)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(r)).into_response())
}
