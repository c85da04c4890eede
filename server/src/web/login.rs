//! The login form (with its own CSRF cookie, since there is no session yet) and logout.

use std::net::SocketAddr;

use askama::Template;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;

use super::error::WebError;
use super::flash::safe_back;
use super::form::*;
use super::page::render;
use super::session::Posted;
use crate::auth::{self, cookie};
use crate::error::ApiError;
use crate::secrets;
use crate::state::AppState;

pub(super) const LOGIN_CSRF_COOKIE: &str = "lbfleet_login_csrf";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
}

// ----- login --------------------------------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "login.html")]
pub struct LoginPage {
    pub csrf: String,
    pub next: String,
    pub username: String,
    pub error: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct LoginQuery {
    #[serde(default)]
    next: String,
}

/// The login form. It carries its own CSRF token (a cookie plus the same value in the form), so a login
/// cannot be forced from another site either.
pub async fn login_form(Query(q): Query<LoginQuery>) -> Result<Response, WebError> {
    login_page(&q.next, "", None, axum::http::StatusCode::OK)
}

pub fn login_page(
    next: &str,
    username: &str,
    error: Option<String>,
    status: axum::http::StatusCode,
) -> Result<Response, WebError> {
    let csrf = secrets::new_secret("");
    let mut resp = render(&LoginPage {
        csrf: csrf.clone(),
        next: safe_back(next).to_owned(),
        username: username.to_owned(),
        error,
    })?;
    *resp.status_mut() = status;
    let cookie =
        format!("{LOGIN_CSRF_COOKIE}={csrf}; Path=/login; HttpOnly; SameSite=Strict; Max-Age=3600");
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(resp.into_response())
}

// ----- login / logout -----------------------------------------------------------------------------------------

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    next: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
}

pub async fn login(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    axum::Form(f): axum::Form<LoginForm>,
) -> Result<Response, WebError> {
    let expected = cookie(&headers, LOGIN_CSRF_COOKIE).unwrap_or("");
    if f.csrf.is_empty() || !secrets::constant_time_eq(&f.csrf, expected) {
        return Err(WebError::Forbidden(
            "the login form's security token is missing or out of date; reload the page".into(),
        ));
    }
    let user = match auth::check_password(&s, peer.ip(), &f.username, f.password).await {
        Ok(u) => u,
        Err(ApiError::TooManyRequests { retry_after_s }) => {
            return login_page(
                &f.next,
                &f.username,
                Some(format!(
                    "Too many failed logins; try again in {retry_after_s} s."
                )),
                StatusCode::TOO_MANY_REQUESTS,
            );
        }
        Err(ApiError::Unauthorized(_)) => {
            return login_page(
                &f.next,
                &f.username,
                Some("Wrong user name or password.".into()),
                StatusCode::UNAUTHORIZED,
            );
        }
        Err(e) => return Err(e.into()),
    };
    let session = auth::start_session(&s, user.id).await?;
    tracing::info!(user = user.name, client = %peer.ip(), "dashboard login");
    let mut resp =
        Redirect::to(safe_back(if f.next.is_empty() { "/" } else { &f.next })).into_response();
    if let Ok(v) = HeaderValue::from_str(&session.set_cookie) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp.headers_mut().append(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "lbfleet_login_csrf=; Path=/login; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    Ok(resp)
}

pub async fn logout(
    State(s): State<AppState>,
    posted: Posted<Empty>,
) -> Result<Response, WebError> {
    auth::end_session(&s, posted.user.session()).await?;
    tracing::info!(user = posted.user.name, "dashboard logout");
    let mut resp = Redirect::to("/login").into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(auth::CLEAR_SESSION_COOKIE),
    );
    Ok(resp)
}
