//! Who is using the dashboard: `WebUser` (a session cookie, else a redirect to the login form) and `Posted`
//! (a form accepted only with the session's CSRF token).

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::Method;
use lbfleet_proto::UserRole;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::error::WebError;
use crate::auth::{cookie, SESSION_COOKIE};
use crate::fleet::Actor;
use crate::secrets;
use crate::state::AppState;

/// A person logged in to the dashboard with a session cookie.
#[derive(Debug, Clone)]
pub struct WebUser {
    pub name: String,
    pub role: UserRole,
    pub csrf: String,
    /// The plain session token from the cookie (to end it on logout).
    session: String,
    /// The fleet change counter when the request arrived, before the page read any data. The page carries it;
    /// its live stream compares it with the counter when it connects, so a change that lands between the page
    /// and the stream still refreshes the page.
    pub(super) fleet_seq: u64,
}

impl WebUser {
    pub fn actor(&self) -> Actor {
        Actor(self.name.clone())
    }

    /// The plain session token (to end the session on logout).
    pub fn session(&self) -> &str {
        &self.session
    }

    pub fn can_operate(&self) -> bool {
        self.role >= UserRole::Operator
    }

    pub fn is_admin(&self) -> bool {
        self.role >= UserRole::Admin
    }

    /// 403 unless the user has at least `role`.
    pub fn require(&self, role: UserRole) -> Result<(), WebError> {
        if self.role < role {
            return Err(WebError::Forbidden(format!(
                "this needs the {role} role; you ({}) are {}",
                self.name, self.role
            )));
        }
        Ok(())
    }
}

impl FromRequestParts<AppState> for WebUser {
    type Rejection = WebError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, WebError> {
        let login = || {
            if parts.method == Method::GET {
                let next = parts
                    .uri
                    .path_and_query()
                    .map(|p| p.as_str().to_owned())
                    .unwrap_or_else(|| "/".into());
                WebError::LoginRequired { next: Some(next) }
            } else {
                WebError::LoginRequired { next: None }
            }
        };
        let fleet_seq = *state.fleet.notifier().subscribe_fleet().borrow();
        let Some(session) = cookie(&parts.headers, SESSION_COOKIE) else {
            return Err(login());
        };
        let Some(p) = state
            .fleet
            .session_principal(&secrets::hash_secret(session))
            .await?
        else {
            return Err(login());
        };
        let csrf = p.csrf_token.clone().unwrap_or_default();
        let p = crate::auth::principal(p, crate::auth::Via::Token)?;
        Ok(WebUser {
            name: p.name,
            role: p.role,
            csrf,
            session: session.to_owned(),
            fleet_seq,
        })
    }
}

#[derive(Deserialize)]
struct CsrfField {
    #[serde(default)]
    csrf: String,
}

/// A posted HTML form from a logged-in user, accepted only with the session's CSRF token in field `csrf`.
#[derive(Debug)]
pub struct Posted<T> {
    pub user: WebUser,
    pub form: T,
}

impl<T: DeserializeOwned> FromRequest<AppState> for Posted<T> {
    type Rejection = WebError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, WebError> {
        let (mut parts, body) = req.into_parts();
        let user = WebUser::from_request_parts(&mut parts, state).await?;
        let req = Request::from_parts(parts, body);
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| WebError::BadRequest(format!("could not read the form: {e}")))?;
        let sent: CsrfField = serde_urlencoded::from_bytes(&bytes).unwrap_or(CsrfField {
            csrf: String::new(),
        });
        if sent.csrf.is_empty() || !secrets::constant_time_eq(&sent.csrf, &user.csrf) {
            tracing::warn!(
                user = user.name,
                "dashboard form refused: missing or wrong CSRF token"
            );
            return Err(WebError::Forbidden(
                "the form's security token is missing or out of date; reload the page and try again"
                    .into(),
            ));
        }
        let form = serde_urlencoded::from_bytes(&bytes)
            .map_err(|e| WebError::BadRequest(format!("unexpected form contents: {e}")))?;
        Ok(Posted { user, form })
    }
}
