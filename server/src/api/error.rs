//! `ApiError`: every failure of the HTTP API as a status and a JSON body
//! `{"error": {"code", "message", "fields"?}}`. Clients get a clear message; internals go to the log only.

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

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message, fields) = match self {
            ApiError::Fleet(FleetError::Invalid(errs)) => {
                let first = errs.0.first().map(ToString::to_string).unwrap_or_default();
                (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid",
                    first,
                    Some(errs.0),
                )
            }
            ApiError::Fleet(FleetError::NotFound(m)) => {
                (StatusCode::NOT_FOUND, "not_found", m, None)
            }
            ApiError::Fleet(FleetError::Conflict(m)) => (StatusCode::CONFLICT, "conflict", m, None),
            ApiError::Fleet(FleetError::PreconditionFailed(m)) => (
                StatusCode::PRECONDITION_FAILED,
                "precondition_failed",
                m,
                None,
            ),
            ApiError::Fleet(FleetError::Unauthorized(m)) | ApiError::Unauthorized(m) => {
                (StatusCode::UNAUTHORIZED, "unauthorized", m, None)
            }
            ApiError::Fleet(FleetError::Forbidden(m)) | ApiError::Forbidden(m) => {
                (StatusCode::FORBIDDEN, "forbidden", m, None)
            }
            ApiError::Fleet(FleetError::Store(e)) if e.is_constraint() => {
                // The fleet module checks rules first; a constraint firing here means a race or a rule we do
                // not check up front. Still a conflict, not a server fault.
                tracing::warn!(error = %e, "constraint violation");
                (
                    StatusCode::CONFLICT,
                    "conflict",
                    format!("the change conflicts with existing data ({e})"),
                    None,
                )
            }
            ApiError::Fleet(FleetError::Store(e)) => {
                tracing::error!(error = %e, "request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error; see the server log".to_owned(),
                    None,
                )
            }
            ApiError::Request { status, message } => (status, "bad_request", message, None),
            ApiError::TooManyRequests { retry_after_s } => {
                let mut resp = (
                    StatusCode::TOO_MANY_REQUESTS,
                    axum::Json(json!({"error": {"code": "rate_limited",
                        "message": format!("too many login attempts; try again in {retry_after_s} s")}})),
                )
                    .into_response();
                if let Ok(v) = HeaderValue::from_str(&retry_after_s.to_string()) {
                    resp.headers_mut().insert(header::RETRY_AFTER, v);
                }
                return resp;
            }
        };
        let mut body = json!({"error": {"code": code, "message": message}});
        if let Some(fields) = fields {
            body["error"]["fields"] = json!(fields);
        }
        let mut resp = (status, axum::Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}
