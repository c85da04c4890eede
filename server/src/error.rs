//! `ApiError`: every failure of the HTTP API as a status and a JSON body
//! `{"error": {"code", "message", "fields"?}}`, and `fleet_status`, the one mapping from a refused fleet
//! operation to an HTTP status that the API and the dashboard share. Clients get a clear message; internals go
//! to the log only.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::fleet::{FieldError, FleetError};
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Fleet(#[from] FleetError),
    #[error("{message}")]
    Request { status: StatusCode, message: String },
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("too many login attempts; try again in {retry_after_s} s")]
    TooManyRequests { retry_after_s: u64 },
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::Request {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::Fleet(FleetError::Store(e))
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        ApiError::Fleet(e.into())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        ApiError::Request {
            status: r.status(),
            message: r.body_text(),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::Request {
            status: StatusCode::BAD_REQUEST,
            message: r.body_text(),
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::Request {
            status: StatusCode::BAD_REQUEST,
            message: r.body_text(),
        }
    }
}

/// The machine code of a 503 while the database is unreachable (agents keep their last role on it).
pub const DATABASE_UNREACHABLE: &str = "database_unreachable";

/// How the HTTP layer answers a refused fleet operation: status, machine code and a message for people.
/// The API and the dashboard both use this one mapping; internals go to the log only.
pub fn fleet_status(e: &FleetError) -> (StatusCode, &'static str, String) {
    match e {
        FleetError::Invalid(errs) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            errs.0.first().map(ToString::to_string).unwrap_or_default(),
        ),
        FleetError::NotFound(m) => (StatusCode::NOT_FOUND, "not_found", m.clone()),
        FleetError::Conflict(m) => (StatusCode::CONFLICT, "conflict", m.clone()),
        FleetError::PreconditionFailed(m) => (
            StatusCode::PRECONDITION_FAILED,
            "precondition_failed",
            m.clone(),
        ),
        FleetError::Unauthorized(m) => (StatusCode::UNAUTHORIZED, "unauthorized", m.clone()),
        FleetError::Forbidden(m) => (StatusCode::FORBIDDEN, "forbidden", m.clone()),
        FleetError::Store(e) if e.is_constraint() => {
            // The fleet module checks rules first; a constraint firing here means a race or a rule we do
            // not check up front. Still a conflict, not a server fault.
            tracing::warn!(error = %e, "constraint violation");
            (
                StatusCode::CONFLICT,
                "conflict",
                format!("the change conflicts with existing data ({e})"),
            )
        }
        FleetError::Store(e) if e.is_unreachable() => {
            tracing::warn!(error = %e, "request refused: database unreachable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                DATABASE_UNREACHABLE,
                "database unreachable: nothing can be changed until it is back (known nodes still boot \
                 and serve their last role)"
                    .to_owned(),
            )
        }
        FleetError::Store(e) => {
            tracing::error!(error = %e, "request failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error; see the server log".to_owned(),
            )
        }
    }
}

impl ApiError {
    /// Status, machine code and message of this error (the dashboard shows the message on its error page).
    pub fn status(&self) -> (StatusCode, &'static str, String) {
        match self {
            ApiError::Fleet(e) => fleet_status(e),
            ApiError::Request { status, message } => (*status, "bad_request", message.clone()),
            ApiError::Unauthorized(m) => (StatusCode::UNAUTHORIZED, "unauthorized", m.clone()),
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, "forbidden", m.clone()),
            ApiError::TooManyRequests { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                self.to_string(),
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message) = self.status();
        let mut body = json!({"error": {"code": code, "message": message}});
        if let ApiError::Fleet(FleetError::Invalid(errs)) = &self {
            body["error"]["fields"] = json!(errs.0);
        }
        let mut resp = (status, axum::Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let ApiError::TooManyRequests { retry_after_s } = self {
            if let Ok(v) = HeaderValue::from_str(&retry_after_s.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}
