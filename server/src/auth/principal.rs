//! Who is calling: `Principal` (a person or automation account, by session cookie or API token) and the role
//! extractors (`Viewer`, `Operator`, `Admin`, `AgentNode`), so a handler cannot forget a check.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method};
use lbfleet_proto::UserRole;

use super::session::{CSRF_HEADER, SESSION_COOKIE};
use crate::error::ApiError;
use crate::fleet::Actor;
use crate::secrets;
use crate::state::AppState;
use crate::store;

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

pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
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
        if let Some(token) = bearer(&parts.headers) {
            if token.starts_with(secrets::NODE_CREDENTIAL_PREFIX)
                || token.starts_with(lbfleet_proto::boot::BOOT_CREDENTIAL_PREFIX)
            {
                return Err(ApiError::Forbidden(
                    "node credentials may only call /api/v1/agent/*".into(),
                ));
            }
            let hash = secrets::hash_secret(token);
            let p = state.fleet.token_principal(&hash).await?.ok_or_else(|| {
                ApiError::Unauthorized("API token is invalid, expired or revoked".into())
            })?;
            super::token_use::record(&state.fleet, &hash).await;
            return principal(p, Via::Token);
        }
        if let Some(session) = cookie(&parts.headers, SESSION_COOKIE) {
            let p = state
                .fleet
                .session_principal(&secrets::hash_secret(session))
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

pub fn principal(p: store::auth::Principal, via: Via) -> Result<Principal, ApiError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

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
