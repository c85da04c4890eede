//! The agent API: enrollment, role long-poll and reports. Authenticated by per-node credentials.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use lbfleet_proto::{AgentReport, EnrollRequest};
use serde::Deserialize;

use crate::auth::AgentNode;
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiQuery};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/enroll", post(enroll))
        .route("/role", get(role))
        .route("/report", post(report))
}

async fn enroll(
    State(s): State<AppState>,
    ApiJson(req): ApiJson<EnrollRequest>,
) -> Result<Response, ApiError> {
    Ok(Json(s.fleet.enroll(&req).await?).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleQuery {
    /// The generation the agent already has; 0 (default) returns the current document at once.
    #[serde(default)]
    after: u64,
    /// Longest wait in seconds (capped by the server's long-poll timeout).
    wait: Option<u64>,
}

/// `GET /api/v1/agent/role?after=GEN`: 200 with a newer role document as soon as one exists,
/// 204 when none appeared within the wait.
async fn role(
    State(s): State<AppState>,
    AgentNode(node): AgentNode,
    ApiQuery(q): ApiQuery<RoleQuery>,
) -> Result<Response, ApiError> {
    // A few waiting polls per credential at most, so one credential cannot hold many connections.
    let Some(_slot) = s.streams.role_polls.try_take(node) else {
        tracing::info!(
            node,
            "role long-poll refused: too many waiting for this node"
        );
        return Err(ApiError::Request {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: "too many role long-polls for this node".into(),
        });
    };
    let max = s.config.long_poll_timeout;
    let wait = q.wait.map(Duration::from_secs).map_or(max, |w| w.min(max));
    match s
        .fleet
        .wait_role(node, q.after, wait, s.shutdown.clone())
        .await?
    {
        Some(doc) => Ok(Json(doc).into_response()),
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

async fn report(
    State(s): State<AppState>,
    AgentNode(node): AgentNode,
    ApiJson(r): ApiJson<AgentReport>,
) -> Result<Response, ApiError> {
    // Refused whole (422, naming each bad field) when a field breaks the report bounds; nothing is stored.
    s.fleet.report(node, &r).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
