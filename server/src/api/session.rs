//! Login, logout and `whoami` for the API: a password starts a session (cookie + CSRF token).

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use lbfleet_proto::UserRole;
use serde::{Deserialize, Serialize};

use crate::auth::{
    check_password, cookie, end_session, start_session, Via, Viewer, CLEAR_SESSION_COOKIE,
    SESSION_COOKIE,
};
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::state::AppState;
use crate::store;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/login", post(login))
        .route("/logout", post(logout))
        .route("/whoami", get(whoami))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for LoginRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginRequest")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

#[derive(Serialize)]
pub struct LoginResponse {
    pub user: String,
    pub role: UserRole,
    /// Send back as `X-CSRF-Token` on every state-changing request made with the session cookie.
    pub csrf_token: String,
    pub expires_at: i64,
}

impl std::fmt::Debug for LoginResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginResponse")
            .field("user", &self.user)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// `POST /api/v1/login`: checks a password and starts a session (cookie + CSRF token).
pub async fn login(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ApiJson(req): ApiJson<LoginRequest>,
) -> Result<Response, ApiError> {
    let ip = peer.ip();
    let user = check_password(&state, ip, &req.username, req.password).await?;
    let session = start_session(&state, user.id).await?;
    tracing::info!(user = user.name, client = %ip, "login");
    let role: UserRole = user
        .role
        .parse()
        .map_err(|e| store::StoreError::Corrupt(format!("user {}: {e}", user.name)))?;
    let mut resp = Json(LoginResponse {
        user: user.name,
        role,
        csrf_token: session.csrf_token,
        expires_at: session.expires_at,
    })
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&session.set_cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(resp)
}

/// `POST /api/v1/logout`: ends the session of the cookie sent.
pub async fn logout(
    State(state): State<AppState>,
    Viewer(p): Viewer,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let (Via::Session { .. }, Some(session)) = (&p.via, cookie(&headers, SESSION_COOKIE)) {
        end_session(&state, session).await?;
    }
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(CLEAR_SESSION_COOKIE),
    );
    Ok(resp)
}

/// `GET /api/v1/whoami`.
pub async fn whoami(Viewer(p): Viewer) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "user": p.name,
        "role": p.role,
        "via": match p.via { Via::Session { .. } => "session", Via::Token => "token" },
    }))
}
