//! Authentication: session cookies and API tokens for people and automation, node credentials for agents.
//! Role checks are extractors (`Viewer`, `Operator`, `Admin`, `AgentNode`), so a handler cannot forget one.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use lbfleet_proto::UserRole;
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::{ApiJson, AppState};
use crate::fleet::Actor;
use crate::login_gate::{loggable_name, LoginRefused, MAX_USERNAME_BYTES};
use crate::secrets;
use crate::store::{self, now_ms};

pub const SESSION_COOKIE: &str = "lbfleet_session";
pub const CSRF_HEADER: &str = "x-csrf-token";

/// How a request proved who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    Session { csrf_token: String },
    Token,
}

/// An authenticated person or automation account.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user_id: i64,
    pub name: String,
    pub role: UserRole,
    pub via: Via,
}

impl Principal {
    pub fn actor(&self) -> Actor {
        Actor(self.name.clone())
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The value of one cookie from the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let mut conn = state.fleet.store().read().await?;
        if let Some(token) = bearer(&parts.headers) {
            if token.starts_with(secrets::NODE_CREDENTIAL_PREFIX) {
                return Err(ApiError::Forbidden(
                    "node credentials may only call /api/v1/agent/*".into(),
                ));
            }
            let hash = secrets::hash_secret(token);
            let p = store::auth::token_principal(&mut conn, &hash)
                .await?
                .ok_or_else(|| {
                    ApiError::Unauthorized("API token is invalid, expired or revoked".into())
                })?;
            drop(conn);
            crate::token_use::record(state.fleet.store(), &hash).await;
            return principal(p, Via::Token);
        }
        if let Some(session) = cookie(&parts.headers, SESSION_COOKIE) {
            let p = store::auth::session(&mut conn, &secrets::hash_secret(session))
                .await?
                .ok_or_else(|| ApiError::Unauthorized("session expired; log in again".into()))?;
            let csrf = p.csrf_token.clone().unwrap_or_default();
            // Cookies ride along on cross-site requests; a state change must also prove it read our page.
            if !matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS) {
                let sent = parts
                    .headers
                    .get(CSRF_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                if !secrets::constant_time_eq(sent, &csrf) {
                    return Err(ApiError::Forbidden(
                        "missing or wrong CSRF token (X-CSRF-Token header)".into(),
                    ));
                }
            }
            return principal(p, Via::Session { csrf_token: csrf });
        }
        Err(ApiError::Unauthorized(
            "authentication required: log in or send an API token (Authorization: Bearer ...)"
                .into(),
        ))
    }
}

pub(crate) fn principal(p: store::auth::Principal, via: Via) -> Result<Principal, ApiError> {
    let role = p
        .role
        .parse()
        .map_err(|e| store::StoreError::Corrupt(format!("user {}: {e}", p.name)))?;
    Ok(Principal {
        user_id: p.user_id,
        name: p.name,
        role,
        via,
    })
}

macro_rules! role_extractor {
    ($(#[$m:meta])* $name:ident, $role:expr) => {
        $(#[$m])*
        #[derive(Debug, Clone)]
        pub struct $name(pub Principal);

        impl FromRequestParts<AppState> for $name {
            type Rejection = ApiError;

            async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
                let p = Principal::from_request_parts(parts, state).await?;
                if p.role < $role {
                    return Err(ApiError::Forbidden(format!(
                        "this needs the {} role; user {:?} is {}", $role, p.name, p.role
                    )));
                }
                Ok($name(p))
            }
        }
    };
}

role_extractor!(
    /// Any logged-in user: read-only access.
    Viewer, UserRole::Viewer
);
role_extractor!(
    /// May change the fleet: clusters, nodes, real servers.
    Operator, UserRole::Operator
);
role_extractor!(
    /// May also manage users and API tokens.
    Admin, UserRole::Admin
);

/// An enrolled node, authenticated by its credential.
#[derive(Debug, Clone, Copy)]
pub struct AgentNode(pub i64);

impl FromRequestParts<AppState> for AgentNode {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(&parts.headers).ok_or_else(|| {
            ApiError::Unauthorized(
                "agent calls need the node credential (Authorization: Bearer ...)".into(),
            )
        })?;
        let node = state.fleet.authenticate_node(token).await?.ok_or_else(|| {
            ApiError::Unauthorized("node credential is invalid or revoked; enroll again".into())
        })?;
        Ok(AgentNode(node))
    }
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

/// Argon2 hash of a random password: verifying against it costs what a real check costs, so a missing user
/// answers as slowly as a wrong password.
fn dummy_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| secrets::hash_password(&secrets::new_password()).unwrap_or_default())
}

/// Checks a user name and password under the login rate limit; the user on success.
/// Shared by the API login and the dashboard's login form.
pub async fn check_password(
    state: &AppState,
    ip: IpAddr,
    username: &str,
    password: String,
) -> Result<store::auth::UserRow, ApiError> {
    let slot = match state.login_gate.admit(username, ip).await {
        Ok(slot) => slot,
        Err(LoginRefused::NameTooLong) => {
            tracing::warn!(user = %loggable_name(username), client = %ip, "login refused: user name too long");
            return Err(ApiError::Request {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                message: format!("user names are at most {MAX_USERNAME_BYTES} bytes"),
            });
        }
        Err(LoginRefused::TooManyFailures { retry_after_s }) => {
            return Err(ApiError::TooManyRequests { retry_after_s })
        }
        Err(LoginRefused::Busy) => {
            tracing::warn!(client = %ip, "login refused: password checks busy");
            return Err(ApiError::TooManyRequests { retry_after_s: 1 });
        }
    };
    let user = {
        let mut conn = state.fleet.store().read().await?;
        store::auth::user_by_name(&mut conn, username).await?
    };
    let stored = user
        .as_ref()
        .filter(|u| !u.disabled)
        .map(|u| u.password_hash.clone());
    let ok = state
        .login_gate
        .run(&slot, move || {
            let hash = stored.as_deref().unwrap_or_else(|| dummy_hash());
            secrets::verify_password(&password, hash) && stored.is_some()
        })
        .await
        .unwrap_or(false);
    drop(slot);
    match (ok, user) {
        (true, Some(u)) => {
            state.login_gate.succeeded(username, ip);
            Ok(u)
        }
        _ => {
            state.login_gate.failed(username, ip);
            tracing::warn!(user = username, client = %ip, "login failed");
            Err(ApiError::Unauthorized("wrong user name or password".into()))
        }
    }
}

/// A session just started: the cookie to set and the CSRF token that goes with it.
#[derive(Clone)]
pub struct NewSession {
    pub set_cookie: String,
    pub csrf_token: String,
    pub expires_at: i64,
}

impl std::fmt::Debug for NewSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewSession")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Stores a new session for `user_id` (only its hash is kept) and builds the `HttpOnly; SameSite=Strict` cookie.
pub async fn start_session(state: &AppState, user_id: i64) -> Result<NewSession, ApiError> {
    let session = secrets::new_secret("");
    let csrf_token = secrets::new_secret("");
    let ttl = state.config.session_ttl;
    let expires_at = now_ms().saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
    let mut tx = state.fleet.store().begin().await?;
    store::auth::insert_session(
        &mut tx,
        &secrets::hash_secret(&session),
        &csrf_token,
        user_id,
        expires_at,
    )
    .await?;
    tx.commit().await.map_err(store::StoreError::from)?;
    let set_cookie = format!(
        "{SESSION_COOKIE}={session}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        ttl.as_secs(),
        if state.config.secure_cookies() {
            "; Secure"
        } else {
            ""
        }
    );
    Ok(NewSession {
        set_cookie,
        csrf_token,
        expires_at,
    })
}

/// The `Set-Cookie` value that ends the session cookie in the browser.
pub const CLEAR_SESSION_COOKIE: &str =
    "lbfleet_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0";

/// Deletes the session whose plain token is `session` (logout).
pub async fn end_session(state: &AppState, session: &str) -> Result<(), ApiError> {
    let mut tx = state.fleet.store().begin().await?;
    store::auth::delete_session(&mut tx, &secrets::hash_secret(session)).await?;
    tx.commit().await.map_err(store::StoreError::from)?;
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_and_bearer_are_parsed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; lbfleet_session=abc; b=2"),
        );
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer lbf_tok_x"),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&h, "c"), None);
        assert_eq!(bearer(&h), Some("lbf_tok_x"));
    }
}
