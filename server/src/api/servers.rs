//! The control plane's registry (issue 21): `GET /api/v1/servers` lists every lbfleet-server on this
//! database, `DELETE /api/v1/servers/{id}` removes the entry of one that will not come back.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};

use crate::auth::{Admin, Viewer};
use crate::error::ApiError;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/servers", get(list))
        .route("/servers/{id}", delete(remove))
}

/// `GET /api/v1/servers` (viewer): every registered server with its state (`up`, `down`, `stopped`), versions,
/// addresses, certificate pin, DHCP networks and last heartbeat; `this` is the id of the server answering.
async fn list(State(s): State<AppState>, _: Viewer) -> Result<Response, ApiError> {
    let servers = s.fleet.servers(s.liveness()).await?;
    Ok(Json(serde_json::json!({"this": s.config.server_id, "servers": servers})).into_response())
}

/// `DELETE /api/v1/servers/{id}` (admin): removes a server's entry (and closes its alert); audited as
/// `server.remove`. 409 while the server is up (it would register again), 404 for an unknown id.
async fn remove(
    State(s): State<AppState>,
    Admin(p): Admin,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    s.fleet.remove_server(&p.actor(), &id, s.liveness()).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
