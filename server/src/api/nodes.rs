//! Node endpoints: list, pre-register, and the lifecycle actions (approve, reject, assign, unassign, retire).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use lbfleet_proto::Role;
use serde::Deserialize;

use crate::auth::{Operator, Viewer};
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiQuery, OptionalJson};
use crate::fleet::{node_key, rules, FleetError};
use crate::state::AppState;
use crate::store::nodes::NodeFilter;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/nodes", get(list).post(register))
        .route("/nodes/{node}", get(show))
        .route("/nodes/{node}/role", get(role))
        .route("/nodes/{node}/approve", post(approve))
        .route("/nodes/{node}/reject", post(reject))
        .route("/nodes/{node}/assign", post(assign))
        .route("/nodes/{node}/unassign", post(unassign))
        .route("/nodes/{node}/retire", post(retire))
        .route("/nodes/{node}/enrollment-token", post(enrollment_token))
        .route("/nodes/{node}/image", axum::routing::put(set_image))
        .route("/nodes/{node}/expect-boot", post(expect_boot))
        .route("/nodes/{node}/circuit-id", axum::routing::put(pin_circuit))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    state: Option<String>,
    cluster: Option<String>,
}

async fn list(
    State(s): State<AppState>,
    _: Viewer,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Response, ApiError> {
    let nodes = s
        .fleet
        .list_nodes(&NodeFilter {
            state: q
                .state
                .as_deref()
                .map(rules::node_state)
                .transpose()
                .map_err(FleetError::from)?,
            cluster: q.cluster,
        })
        .await?;
    Ok(Json(serde_json::json!({"nodes": nodes})).into_response())
}

async fn show(
    State(s): State<AppState>,
    _: Viewer,
    Path(node): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(s.fleet.get_node(&node_key(&node)).await?).into_response())
}

/// The role document the node would receive now (what the agent pulls).
async fn role(
    State(s): State<AppState>,
    _: Viewer,
    Path(node): Path<String>,
) -> Result<Response, ApiError> {
    let view = s.fleet.get_node(&node_key(&node)).await?;
    Ok(Json(s.fleet.role_document(view.id).await?).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterRequest {
    mac: String,
    hostname: Option<String>,
    image: Option<String>,
    /// Fixed DHCP address (reservation).
    address: Option<String>,
}

async fn register(
    State(s): State<AppState>,
    Operator(p): Operator,
    ApiJson(req): ApiJson<RegisterRequest>,
) -> Result<Response, ApiError> {
    let view = s
        .fleet
        .register_node(
            &p.actor(),
            &req.mac,
            req.hostname.as_deref(),
            req.image.as_deref(),
            req.address.as_deref(),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApproveRequest {
    hostname: Option<String>,
    image: Option<String>,
    /// Fixed DHCP address (reservation).
    address: Option<String>,
}

async fn approve(
    State(s): State<AppState>,
    Operator(p): Operator,
    Path(node): Path<String>,
    OptionalJson(req): OptionalJson<ApproveRequest>,
) -> Result<Response, ApiError> {
    Ok(Json(
        s.fleet
            .approve(
                &p.actor(),
                &node_key(&node),
                req.hostname,
                req.image,
                req.address,
            )
            .await?,
    )
    .into_response())
}

async fn reject(
    State(s): State<AppState>,
    Operator(p): Operator,
    Path(node): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(s.fleet.reject(&p.actor(), &node_key(&node)).await?).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AssignRequest {
    cluster: String,
    role: Role,
    priority: Option<u32>,
}

async fn assign(
    State(s): State<AppState>,
    Operator(p): Operator,
    Path(node): Path<String>,
    ApiJson(req): ApiJson<AssignRequest>,
) -> Result<Response, ApiError> {
    Ok(Json(
        s.fleet
            .assign(
                &p.actor(),
                &node_key(&node),
                &req.cluster,
                req.role,
                req.priority,
            )
            .await?,
    )
    .into_response())
}

async fn unassign(
    State(s): State<AppState>,
    Operator(p): Operator,
    Path(node): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(s.fleet.unassign(&p.actor(), &node_key(&node)).await?).into_response())
}

async fn retire(
    State(s): State<AppState>,
    Operator(p): Operator,
    Path(node): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(s.fleet.retire(&p.actor(), &node_key(&node)).await?).into_response())
}

/// Issues a one-time enrollment token (for a node booted by other means than lbfleet's HTTP boot).
async fn enrollment_token(
    State(s): State<AppState>,
    Operator(p): Operator,
    Path(node): Path<String>,
) -> Result<Response, ApiError> {
    let t = s
        .fleet
        .issue_enrollment_token(&p.actor(), &node_key(&node))
        .await?;
    Ok((StatusCode::CREATED, Json(t)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImageRequest {
    /// An image name, or null: the node boots the default image.
    image: Option<String>,
}

/// `PUT /nodes/{node}/image`: the image the node boots from its next boot on.
async fn set_image(
    State(s): State<AppState>,
    Operator(p): Operator,
    Path(node): Path<String>,
    ApiJson(req): ApiJson<ImageRequest>,
) -> Result<Response, ApiError> {
    Ok(Json(
        s.fleet
            .set_node_image(&p.actor(), &node_key(&node), req.image)
            .await?,
    )
    .into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectBootRequest {
    /// How long the window stays open, e.g. "30m" (at most 24h; "0s" closes it) [default: 30m].
    #[serde(rename = "for")]
    duration: Option<String>,
}

/// `POST /nodes/{node}/expect-boot`: opens the node's enrollment window (`boot.require_armed_enrollment`).
async fn expect_boot(
    State(s): State<AppState>,
    Operator(p): Operator,
    Path(node): Path<String>,
    ApiJson(req): ApiJson<ExpectBootRequest>,
) -> Result<Response, ApiError> {
    let text = req.duration.as_deref().unwrap_or("30m");
    let for_ms = humantime::parse_duration(text)
        .ok()
        .and_then(|d| i64::try_from(d.as_millis()).ok())
        .ok_or_else(|| {
            ApiError::bad_request(format!("\"for\": {text:?} is not a duration like 30m"))
        })?;
    let until = s
        .fleet
        .expect_boot(&p.actor(), &node_key(&node), for_ms)
        .await?;
    Ok(Json(serde_json::json!({"node": node, "expect_boot_until_ms": until})).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CircuitPinRequest {
    /// The relay circuit-id as text (e.g. "sw1/0/7"), or
    circuit_id: Option<String>,
    /// as hex bytes; neither (or null) unpins.
    circuit_id_hex: Option<String>,
}

/// `PUT /nodes/{node}/circuit-id`: the node's DHCP requests must come through this relay circuit (option 82).
async fn pin_circuit(
    State(s): State<AppState>,
    Operator(p): Operator,
    Path(node): Path<String>,
    ApiJson(req): ApiJson<CircuitPinRequest>,
) -> Result<Response, ApiError> {
    let circuit = match (req.circuit_id, req.circuit_id_hex) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "give circuit_id or circuit_id_hex, not both",
            ))
        }
        (Some(text), None) => Some(text.into_bytes()),
        (None, Some(h)) => Some(
            hex::decode(&h).map_err(|_| ApiError::bad_request("circuit_id_hex: not hex bytes"))?,
        ),
        (None, None) => None,
    };
    let pinned = circuit.as_ref().map(hex::encode);
    s.fleet
        .pin_circuit_id(&p.actor(), &node_key(&node), circuit)
        .await?;
    Ok(Json(serde_json::json!({"node": node, "circuit_id_hex": pinned})).into_response())
}
