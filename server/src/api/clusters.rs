//! Cluster endpoints: the declarative spec (PUT replaces it whole), switchover, and real-server operations
//! that touch exactly one real server.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use lbfleet_proto::{ClusterSpec, RealServerSpec};
use serde::Deserialize;

use crate::auth::{Operator, Viewer};
use crate::error::ApiError;
use crate::extract::{ApiJson, OptionalJson};
use crate::fleet::{
    node_key, Precondition, PutOutcome, RealServerChange, RealServerRef, ServiceRef,
};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/clusters", get(list))
        .route("/clusters/{name}", get(show).put(replace).delete(remove))
        .route("/clusters/{name}/switchover", post(switchover))
        .route(
            "/clusters/{name}/services/{service}/real-servers",
            post(add_real_server),
        )
        .route(
            "/clusters/{name}/services/{service}/real-servers/{rs}",
            axum::routing::delete(remove_real_server),
        )
        .route(
            "/clusters/{name}/services/{service}/real-servers/{rs}/weight",
            put(set_weight),
        )
        .route(
            "/clusters/{name}/services/{service}/real-servers/{rs}/drain",
            post(drain),
        )
        .route(
            "/clusters/{name}/services/{service}/real-servers/{rs}/enable",
            post(enable),
        )
}

async fn list(State(s): State<AppState>, _: Viewer) -> Result<Response, ApiError> {
    Ok(Json(serde_json::json!({"clusters": s.fleet.list_clusters().await?})).into_response())
}

/// `"N"` for revision N: a strong validator (the revision changes with every spec change).
fn etag(revision: u64) -> HeaderValue {
    // Digits and quotes only: always a valid header value.
    HeaderValue::from_str(&format!("\"{revision}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}

/// The write condition from `If-Match` (`*` or one `"N"` from an earlier `ETag`) and `If-None-Match` (`*`).
fn precondition(headers: &HeaderMap) -> Result<Precondition, ApiError> {
    let text = |name: header::HeaderName| -> Result<Option<String>, ApiError> {
        headers
            .get(&name)
            .map(|v| {
                v.to_str()
                    .map(|t| t.trim().to_owned())
                    .map_err(|_| ApiError::bad_request(format!("{name} is not ASCII")))
            })
            .transpose()
    };
    match (text(header::IF_MATCH)?, text(header::IF_NONE_MATCH)?) {
        (Some(_), Some(_)) => Err(ApiError::bad_request(
            "send If-Match or If-None-Match, not both",
        )),
        (Some(m), None) if m == "*" => Ok(Precondition::Exists),
        (Some(m), None) => m
            .strip_prefix('"')
            .and_then(|r| r.strip_suffix('"'))
            .and_then(|n| n.parse().ok())
            .map(Precondition::Revision)
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "If-Match must be * or one ETag of this cluster (\"N\"), got {m:?}"
                ))
            }),
        (None, Some(m)) if m == "*" => Ok(Precondition::Absent),
        (None, Some(m)) => Err(ApiError::bad_request(format!(
            "If-None-Match supports only * (create, never replace), got {m:?}"
        ))),
        (None, None) => Ok(Precondition::Any),
    }
}

async fn show(
    State(s): State<AppState>,
    _: Viewer,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let view = s.fleet.get_cluster(&name).await?;
    Ok(([(header::ETAG, etag(view.revision))], Json(view)).into_response())
}

async fn replace(
    State(s): State<AppState>,
    Operator(p): Operator,
    Path(name): Path<String>,
    headers: HeaderMap,
    ApiJson(spec): ApiJson<ClusterSpec>,
) -> Result<Response, ApiError> {
    let pre = precondition(&headers)?;
    let (outcome, view) = s
        .fleet
        .put_cluster_if(&p.actor(), &name, &spec, pre)
        .await?;
    let status = if outcome == PutOutcome::Created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        [(header::ETAG, etag(view.revision))],
        Json(serde_json::json!({"outcome": outcome, "cluster": view})),
    )
        .into_response())
}

async fn remove(
    State(s): State<AppState>,
    Operator(p): Operator,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let pre = precondition(&headers)?;
    if pre == Precondition::Absent {
        return Err(ApiError::bad_request(
            "If-None-Match: * makes no sense on DELETE",
        ));
    }
    s.fleet.delete_cluster_if(&p.actor(), &name, pre).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SwitchoverRequest {
    /// The backup to promote; default: the backup with the highest priority.
    to: Option<String>,
}

async fn switchover(
    State(s): State<AppState>,
    Operator(p): Operator,
    Path(name): Path<String>,
    OptionalJson(req): OptionalJson<SwitchoverRequest>,
) -> Result<Response, ApiError> {
    let to = req.to.as_deref().map(node_key);
    Ok(Json(s.fleet.switchover(&p.actor(), &name, to.as_ref()).await?).into_response())
}

fn service_ref(text: &str) -> Result<ServiceRef, ApiError> {
    Ok(text.parse::<ServiceRef>()?)
}

fn rs_ref(text: &str) -> Result<RealServerRef, ApiError> {
    Ok(text.parse::<RealServerRef>()?)
}

async fn add_real_server(
    State(s): State<AppState>,
    Operator(p): Operator,
    Path((name, service)): Path<(String, String)>,
    ApiJson(rs): ApiJson<RealServerSpec>,
) -> Result<Response, ApiError> {
    let added = s
        .fleet
        .add_real_server(&p.actor(), &name, &service_ref(&service)?, &rs)
        .await?;
    Ok((StatusCode::CREATED, Json(added)).into_response())
}

async fn remove_real_server(
    State(s): State<AppState>,
    Operator(p): Operator,
    Path((name, service, rs)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    s.fleet
        .remove_real_server(&p.actor(), &name, &service_ref(&service)?, &rs_ref(&rs)?)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WeightRequest {
    weight: u32,
}

async fn set_weight(
    State(s): State<AppState>,
    Operator(p): Operator,
    Path((name, service, rs)): Path<(String, String, String)>,
    ApiJson(req): ApiJson<WeightRequest>,
) -> Result<Response, ApiError> {
    change(
        &s,
        &p,
        &name,
        &service,
        &rs,
        RealServerChange::Weight(req.weight),
    )
    .await
}

async fn drain(
    State(s): State<AppState>,
    Operator(p): Operator,
    Path((name, service, rs)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    change(
        &s,
        &p,
        &name,
        &service,
        &rs,
        RealServerChange::Enabled(false),
    )
    .await
}

async fn enable(
    State(s): State<AppState>,
    Operator(p): Operator,
    Path((name, service, rs)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    change(
        &s,
        &p,
        &name,
        &service,
        &rs,
        RealServerChange::Enabled(true),
    )
    .await
}

async fn change(
    s: &AppState,
    p: &crate::auth::Principal,
    name: &str,
    service: &str,
    rs: &str,
    change: RealServerChange,
) -> Result<Response, ApiError> {
    let after = s
        .fleet
        .change_real_server(
            &p.actor(),
            name,
            &service_ref(service)?,
            &rs_ref(rs)?,
            change,
        )
        .await?;
    Ok(Json(after).into_response())
}
