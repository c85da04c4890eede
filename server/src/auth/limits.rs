//! Per-request bounds applied in front of every route: the largest body each endpoint accepts (413 past it)
//! and how long a request may take (408 past it), so slow or oversized requests cannot tie up memory or
//! connections. Long-polls, the live stream, exports and image downloads are exempt from the time bound: they
//! are long by design and bounded elsewhere (long_poll_timeout, session end, file size).

use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Default body bound: logins, forms, actions.
pub const DEFAULT_BODY_BYTES: usize = 64 * 1024;
/// Agent reports and report deltas: a full report of `MAX_REAL_SERVERS` real servers (the bound's reasoning:
/// `lbfleet_proto::bounds::MAX_REPORT_BYTES`).
pub const REPORT_BODY_BYTES: usize = lbfleet_proto::bounds::MAX_REPORT_BYTES;
/// A whole cluster spec (thousands of real servers), through the API or the dashboard's service forms; and a
/// keepalived.conf import (a site's files, API or dashboard).
pub const CLUSTER_BODY_BYTES: usize = 16 * 1024 * 1024;
/// How long an ordinary request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The body bound of a request.
pub fn body_limit(method: &Method, path: &str) -> usize {
    if *method == Method::PUT && path.starts_with("/api/v1/clusters/") {
        return CLUSTER_BODY_BYTES;
    }
    if *method == Method::POST && path.starts_with("/clusters/") {
        return CLUSTER_BODY_BYTES;
    }
    if *method == Method::POST && (path == "/api/v1/import/keepalived" || path == "/import") {
        return CLUSTER_BODY_BYTES;
    }
    if path == "/api/v1/agent/report" || path == "/api/v1/agent/report/delta" {
        return REPORT_BODY_BYTES;
    }
    DEFAULT_BODY_BYTES
}

/// Requests that may run longer than `REQUEST_TIMEOUT`.
fn long_running(method: &Method, path: &str) -> bool {
    *method == Method::GET
        && (path == "/api/v1/agent/role"
            || path == "/live"
            || path.starts_with("/audit/export")
            || path == "/api/v1/audit"
            || path.starts_with("/images/"))
}

fn too_large(limit: usize) -> Response {
    (
        StatusCode::PAYLOAD_TOO_LARGE,
        axum::Json(serde_json::json!({"error": {"code": "payload_too_large",
            "message": format!("request body over {limit} bytes")}})),
    )
        .into_response()
}

/// Middleware: the body bound (by `Content-Length` at once, else while the body is read) and the time bound.
pub async fn bound_request(req: Request, next: Next) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let limit = body_limit(&method, &path);
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return too_large(limit);
    }
    // A body without (or lying about) its length stops at the bound; axum's extractors answer 413.
    let req = req.map(|b| Body::new(http_body_util::Limited::new(b, limit)));
    if long_running(&method, &path) {
        return next.run(req).await;
    }
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => {
            tracing::warn!(%method, path, "request timed out");
            (
                StatusCode::REQUEST_TIMEOUT,
                axum::Json(serde_json::json!({"error": {"code": "timeout",
                    "message": format!("request took longer than {} s", REQUEST_TIMEOUT.as_secs())}})),
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_puts_and_reports_get_larger_bounds() {
        assert_eq!(
            body_limit(&Method::PUT, "/api/v1/clusters/ext"),
            CLUSTER_BODY_BYTES
        );
        assert_eq!(
            body_limit(&Method::POST, "/api/v1/agent/report"),
            REPORT_BODY_BYTES
        );
        assert_eq!(
            body_limit(&Method::POST, "/api/v1/agent/report/delta"),
            REPORT_BODY_BYTES
        );
        assert_eq!(
            body_limit(&Method::POST, "/api/v1/login"),
            DEFAULT_BODY_BYTES
        );
        assert!(long_running(&Method::GET, "/live"));
        assert!(!long_running(&Method::POST, "/api/v1/login"));
    }
}
