//! Users, API tokens (admin only) and boot images (operators).

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use lbfleet_proto::UserRole;
use serde::Deserialize;

use super::auth::{Admin, Operator, Viewer};
use super::{ApiError, ApiJson, AppState, OptionalJson};
use crate::fleet::PutOutcome;
use crate::store::{self, images::ImageRow};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/users", get(users).post(create_user))
        .route("/users/{name}", axum::routing::delete(delete_user))
        .route("/users/{name}/password", post(set_password))
        .route("/tokens", get(tokens).post(create_token))
        .route("/tokens/{id}", axum::routing::delete(revoke_token))
        .route("/images", get(images))
        .route("/images/{name}", put(put_image).delete(delete_image))
}

async fn users(State(s): State<AppState>, _: Admin) -> Result<Response, ApiError> {
    let mut conn = s.fleet.store().read().await?;
    let users: Vec<serde_json::Value> = store::auth::users(&mut conn)
        .await?
        .into_iter()
        .map(|u| serde_json::json!({"name": u.name, "role": u.role, "disabled": u.disabled, "created_at": u.created_at}))
        .collect();
    Ok(Json(serde_json::json!({"users": users})).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateUser {
    name: String,
    role: UserRole,
    /// Omit to have one generated (returned once).
    password: Option<String>,
}

async fn create_user(
    State(s): State<AppState>,
    Admin(p): Admin,
    ApiJson(req): ApiJson<CreateUser>,
) -> Result<Response, ApiError> {
    let generated = req.password.is_none();
    let password = s
        .fleet
        .create_user(&p.actor(), &req.name, req.role, req.password)
        .await?;
    let body = if generated {
        serde_json::json!({"name": req.name, "role": req.role, "password": password})
    } else {
        serde_json::json!({"name": req.name, "role": req.role})
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

async fn delete_user(
    State(s): State<AppState>,
    Admin(p): Admin,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    s.fleet.delete_user(&p.actor(), &name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetPassword {
    password: Option<String>,
}

async fn set_password(
    State(s): State<AppState>,
    Admin(p): Admin,
    Path(name): Path<String>,
    OptionalJson(req): OptionalJson<SetPassword>,
) -> Result<Response, ApiError> {
    let generated = req.password.is_none();
    let password = s
        .fleet
        .set_password(&p.actor(), &name, req.password)
        .await?;
    let body = if generated {
        serde_json::json!({"password": password})
    } else {
        serde_json::json!({})
    };
    Ok(Json(body).into_response())
}

async fn tokens(State(s): State<AppState>, _: Admin) -> Result<Response, ApiError> {
    let mut conn = s.fleet.store().read().await?;
    Ok(Json(serde_json::json!({"tokens": store::auth::tokens(&mut conn).await?})).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateToken {
    user: String,
    name: String,
    /// Lifetime such as `90d` or `12h`; omit for no expiry.
    expires_in: Option<String>,
}

async fn create_token(
    State(s): State<AppState>,
    Admin(p): Admin,
    ApiJson(req): ApiJson<CreateToken>,
) -> Result<Response, ApiError> {
    let ttl: Option<Duration> = match req.expires_in.as_deref() {
        Some(t) => Some(
            humantime::parse_duration(t)
                .map_err(|e| ApiError::bad_request(format!("expires_in: {e}")))?,
        ),
        None => None,
    };
    let (id, token) = s
        .fleet
        .create_token(&p.actor(), &req.user, &req.name, ttl)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({"id": id, "user": req.user, "name": req.name, "token": token})),
    )
        .into_response())
}

async fn revoke_token(
    State(s): State<AppState>,
    Admin(p): Admin,
    Path(id): Path<i64>,
) -> Result<Response, ApiError> {
    s.fleet.revoke_token(&p.actor(), id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn images(State(s): State<AppState>, _: Viewer) -> Result<Response, ApiError> {
    Ok(Json(serde_json::json!({"images": s.fleet.list_images().await?})).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImageSpec {
    kernel: String,
    initrd: String,
    #[serde(default)]
    cmdline: String,
    #[serde(default)]
    default: bool,
}

async fn put_image(
    State(s): State<AppState>,
    Operator(p): Operator,
    Path(name): Path<String>,
    ApiJson(spec): ApiJson<ImageSpec>,
) -> Result<Response, ApiError> {
    let row = ImageRow {
        name,
        kernel: spec.kernel,
        initrd: spec.initrd,
        cmdline: spec.cmdline,
        is_default: spec.default,
        created_at: 0,
        // Files placed by hand: nothing verified them.
        kernel_version: None,
        agent_version: None,
        kernel_sha256: None,
        initrd_sha256: None,
    };
    let outcome = s.fleet.put_image(&p.actor(), row).await?;
    let status = if outcome == PutOutcome::Created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(serde_json::json!({"outcome": outcome}))).into_response())
}

async fn delete_image(
    State(s): State<AppState>,
    Operator(p): Operator,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    s.fleet.delete_image(&p.actor(), &name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
