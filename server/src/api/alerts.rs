//! Acknowledging stored alerts (`GET /api/v1/alerts` itself is served with `/metrics` in `system`).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;

use crate::auth::Operator;
use crate::error::ApiError;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/alerts/{id}/acknowledge", post(acknowledge))
}

/// `POST /api/v1/alerts/{id}/acknowledge` (operator): a stored alert (one with an `id`, such as a re-enrollment
/// while the agent was alive) leaves the list; audited as `alert.acknowledge`. 404 when no open alert has
/// that id.
async fn acknowledge(
    State(s): State<AppState>,
    Operator(p): Operator,
    Path(id): Path<i64>,
) -> Result<Response, ApiError> {
    s.fleet.acknowledge_alert(&p.actor(), id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
