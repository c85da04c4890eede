//! Dashboard and API sessions: password checks behind the login gate, session cookies (only their hash is
//! stored) with the CSRF token that goes with each.

use std::net::IpAddr;

use axum::http::StatusCode;

use super::login_gate::{loggable_name, LoginRefused, MAX_USERNAME_BYTES};
use crate::error::ApiError;
use crate::secrets;
use crate::state::AppState;
use crate::store::{self, now_ms};

pub const SESSION_COOKIE: &str = "lbfleet_session";
pub const CSRF_HEADER: &str = "x-csrf-token";

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
    let user = state.fleet.user_for_login(username).await?;
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
    state
        .fleet
        .start_session(
            &secrets::hash_secret(&session),
            &csrf_token,
            user_id,
            expires_at,
        )
        .await?;
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
    state
        .fleet
        .end_session(&secrets::hash_secret(session))
        .await?;
    Ok(())
}
