//! Users and API tokens (admin only). New passwords and tokens are shown once, on the page that made them.

use std::time::Duration;

use askama::Template;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use lbfleet_proto::UserRole;
use serde::Deserialize;

use axum::routing::{get, post};
use axum::Router;

use super::error::{fleet_error_text, WebError};
use super::flash::redirect_with;
use super::format::{ago_text, time_text};
use super::page::{render, Chrome};
use super::session::{Posted, WebUser};
use crate::fleet::FleetError;
use crate::state::AppState;

#[derive(Debug, Clone)]
pub struct UserView {
    pub name: String,
    pub role: String,
    pub created: String,
    pub disabled: bool,
    pub me: bool,
}

#[derive(Debug, Clone)]
pub struct TokenView {
    pub id: i64,
    pub user: String,
    pub name: String,
    pub created: String,
    pub expires: String,
    pub last_used: String,
}

/// A secret shown exactly once after it was made.
#[derive(Debug, Clone)]
pub struct Revealed {
    pub what: String,
    pub secret: String,
}

#[derive(Template)]
#[template(path = "users.html")]
struct UsersPage {
    p: Chrome,
    users: Vec<UserView>,
    tokens: Vec<TokenView>,
    roles: Vec<String>,
    revealed: Option<Revealed>,
}

async fn users_page(
    s: &AppState,
    user: &WebUser,
    headers: &HeaderMap,
    revealed: Option<Revealed>,
) -> Result<Response, WebError> {
    user.require(UserRole::Admin)?;
    let users = s
        .fleet
        .users()
        .await?
        .into_iter()
        .map(|u| UserView {
            me: u.name == user.name,
            name: u.name,
            role: u.role,
            created: time_text(u.created_at),
            disabled: u.disabled,
        })
        .collect();
    let tokens = s
        .fleet
        .tokens()
        .await?
        .into_iter()
        .map(|t| TokenView {
            id: t.id,
            user: t.user,
            name: t.name,
            created: time_text(t.created_at),
            expires: t
                .expires_at
                .map(time_text)
                .unwrap_or_else(|| "never".into()),
            last_used: ago_text(t.last_used_at),
        })
        .collect();
    render(&UsersPage {
        p: Chrome::new(user, headers, "users", "Users and API tokens".into()),
        users,
        tokens,
        roles: UserRole::ALL.iter().map(|r| r.to_string()).collect(),
        revealed,
    })
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/users", get(page).post(create_user))
        .route("/users/{name}/delete", post(delete_user))
        .route("/users/{name}/password", post(reset_password))
        .route("/tokens", post(create_token))
        .route("/tokens/{id}/revoke", post(revoke_token))
}

pub async fn page(
    State(s): State<AppState>,
    user: WebUser,
    headers: HeaderMap,
) -> Result<Response, WebError> {
    users_page(&s, &user, &headers, None).await
}

fn refused(e: FleetError) -> Result<Response, WebError> {
    match e {
        FleetError::Store(e) if !e.is_constraint() => Err(FleetError::Store(e).into()),
        e => Ok(redirect_with("/users", false, &fleet_error_text(&e).1)),
    }
}

#[derive(Deserialize)]
pub struct CreateUserForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    password: String,
}

pub async fn create_user(
    State(s): State<AppState>,
    headers: HeaderMap,
    Posted { user, form }: Posted<CreateUserForm>,
) -> Result<Response, WebError> {
    user.require(UserRole::Admin)?;
    let Ok(role) = form.role.parse::<UserRole>() else {
        return Ok(redirect_with(
            "/users",
            false,
            "role: pick viewer, operator or admin",
        ));
    };
    let name = form.name.trim().to_owned();
    let given = (!form.password.is_empty()).then(|| form.password.clone());
    let generated = given.is_none();
    match s.fleet.create_user(&user.actor(), &name, role, given).await {
        Ok(password) if generated => {
            users_page(
                &s,
                &user,
                &headers,
                Some(Revealed {
                    what: format!("Password of the new user {name} ({role})"),
                    secret: password,
                }),
            )
            .await
        }
        Ok(_) => Ok(redirect_with(
            "/users",
            true,
            &format!("created user {name} ({role})"),
        )),
        Err(e) => refused(e),
    }
}

#[derive(Deserialize)]
pub struct Empty {}

pub async fn delete_user(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Posted { user, .. }: Posted<Empty>,
) -> Result<Response, WebError> {
    user.require(UserRole::Admin)?;
    if name == user.name {
        return Ok(redirect_with("/users", false, "you cannot delete yourself"));
    }
    match s.fleet.delete_user(&user.actor(), &name).await {
        Ok(()) => Ok(redirect_with(
            "/users",
            true,
            &format!("deleted user {name}"),
        )),
        Err(e) => refused(e),
    }
}

pub async fn reset_password(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Posted { user, .. }: Posted<Empty>,
) -> Result<Response, WebError> {
    user.require(UserRole::Admin)?;
    match s.fleet.set_password(&user.actor(), &name, None).await {
        Ok(password) => {
            users_page(
                &s,
                &user,
                &headers,
                Some(Revealed {
                    what: format!("New password of {name} (their sessions were ended)"),
                    secret: password,
                }),
            )
            .await
        }
        Err(e) => refused(e),
    }
}

#[derive(Deserialize)]
pub struct CreateTokenForm {
    #[serde(default)]
    user: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    expires_in: String,
}

pub async fn create_token(
    State(s): State<AppState>,
    headers: HeaderMap,
    Posted { user, form }: Posted<CreateTokenForm>,
) -> Result<Response, WebError> {
    user.require(UserRole::Admin)?;
    let ttl: Option<Duration> = match form.expires_in.trim() {
        "" => None,
        t => match humantime::parse_duration(t) {
            Ok(d) => Some(d),
            Err(e) => {
                return Ok(redirect_with(
                    "/users",
                    false,
                    &format!("expires in: {t:?} is not a duration like 90d or 12h ({e})"),
                ))
            }
        },
    };
    match s
        .fleet
        .create_token(&user.actor(), form.user.trim(), form.name.trim(), ttl)
        .await
    {
        Ok((id, token)) => {
            users_page(
                &s,
                &user,
                &headers,
                Some(Revealed {
                    what: format!(
                        "API token #{id} {:?} for {} (send as Authorization: Bearer …)",
                        form.name.trim(),
                        form.user.trim()
                    ),
                    secret: token,
                }),
            )
            .await
        }
        Err(e) => refused(e),
    }
}

pub async fn revoke_token(
    State(s): State<AppState>,
    Path(id): Path<i64>,
    Posted { user, .. }: Posted<Empty>,
) -> Result<Response, WebError> {
    user.require(UserRole::Admin)?;
    match s.fleet.revoke_token(&user.actor(), id).await {
        Ok(()) => Ok(redirect_with(
            "/users",
            true,
            &format!("revoked API token #{id}"),
        )),
        Err(e) => refused(e),
    }
}
