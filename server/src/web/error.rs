//! `WebError`: why a dashboard request failed, shown as an HTML page with the status from the shared mapping
//! (`crate::error::fleet_status`). Internals go to the log only.

use askama::Template;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};

use crate::error::{fleet_status, ApiError};
use crate::fleet::FleetError;
use crate::store;

/// Why a dashboard request failed, shown as a page with the right status.
#[derive(Debug)]
pub enum WebError {
    /// No valid session: GET pages redirect to the login form, anything else gets 401.
    LoginRequired {
        next: Option<String>,
    },
    Forbidden(String),
    NotFound(String),
    BadRequest(String),
    Api(ApiError),
    Render(askama::Error),
}

impl From<ApiError> for WebError {
    fn from(e: ApiError) -> Self {
        WebError::Api(e)
    }
}

impl From<FleetError> for WebError {
    fn from(e: FleetError) -> Self {
        WebError::Api(e.into())
    }
}

impl From<store::StoreError> for WebError {
    fn from(e: store::StoreError) -> Self {
        WebError::Api(e.into())
    }
}

impl From<askama::Error> for WebError {
    fn from(e: askama::Error) -> Self {
        WebError::Render(e)
    }
}

/// Status and a message for people (the shared `fleet_status` mapping; a form shows every invalid field at
/// once, not only the first).
pub fn fleet_error_text(e: &FleetError) -> (StatusCode, String) {
    match e {
        FleetError::Invalid(errs) => (StatusCode::UNPROCESSABLE_ENTITY, errs.to_string()),
        other => {
            let (status, _, message) = fleet_status(other);
            (status, message)
        }
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    status: u16,
    reason: String,
    message: String,
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            WebError::LoginRequired { next: Some(next) } => {
                let target = format!(
                    "/login?{}",
                    serde_urlencoded::to_string([("next", next.as_str())]).unwrap_or_default()
                );
                return Redirect::to(&target).into_response();
            }
            WebError::LoginRequired { next: None } => (
                StatusCode::UNAUTHORIZED,
                "your session has ended; log in again".to_owned(),
            ),
            WebError::Forbidden(m) => (StatusCode::FORBIDDEN, m),
            WebError::NotFound(m) => (StatusCode::NOT_FOUND, m),
            WebError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            WebError::Api(ApiError::Fleet(e)) => fleet_error_text(&e),
            WebError::Api(e) => {
                let (status, _, message) = e.status();
                (status, message)
            }
            WebError::Render(e) => {
                tracing::error!(error = %e, "template rendering failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error; see the server log".to_owned(),
                )
            }
        };
        let page = ErrorPage {
            status: status.as_u16(),
            reason: status.canonical_reason().unwrap_or("Error").to_owned(),
            message,
        };
        match page.render() {
            Ok(body) => (status, Html(body)).into_response(),
            Err(_) => (status, page.message).into_response(),
        }
    }
}
