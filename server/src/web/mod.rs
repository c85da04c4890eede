//! The operator dashboard: server-rendered askama pages (templates in `web/templates`), HTML forms that call the
//! same `Fleet` methods as the REST API, and a Server-Sent Events stream that tells open pages to refresh.
//!
//! People authenticate with the same session cookie as the API; every form carries the session's CSRF token
//! and every response carries a CSP that allows no inline script.

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::state::AppState;

mod audit;
mod clusters;
mod error;
mod events;
mod flash;
mod form;
mod format;
mod health;
mod images;
mod import;
mod live;
mod login;
mod nodes;
mod overview;
mod page;
mod picture;
mod rollouts;
mod rs_pager;
mod servers;
mod services;
mod session;
mod traffic;
mod users;

pub use error::{fleet_error_text, WebError};
pub use format::time_text;
pub use session::{Posted, WebUser};

/// No inline script, no inline style, nothing from elsewhere; forms only post back here.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Every dashboard route, one router per resource. Merged into the server's router in `lib.rs`.
pub fn router() -> Router<AppState> {
    Router::new()
        .merge(overview::router())
        .merge(login::router())
        .merge(nodes::router())
        .merge(images::router())
        .merge(import::router())
        .merge(clusters::router())
        .merge(services::router())
        .merge(events::router())
        .merge(audit::router())
        .merge(users::router())
        .merge(servers::router())
        .merge(rollouts::router())
        .route("/live", get(live::stream))
        .route("/static/{file}", get(static_file))
        .layer(axum::middleware::from_fn(flash::clear_flash))
        .layer(SetResponseHeaderLayer::overriding(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::HeaderName::from_static("cross-origin-opener-policy"),
            HeaderValue::from_static("same-origin"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::HeaderName::from_static("permissions-policy"),
            HeaderValue::from_static("camera=(), microphone=(), geolocation=()"),
        ))
}

async fn static_file(Path(file): Path<String>) -> Response {
    match lbfleet_web::asset(&file) {
        Some(a) => (
            [
                (header::CONTENT_TYPE, a.content_type),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            a.body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such file").into_response(),
    }
}

/// Every image's name, for the pages' image pickers.
async fn image_names(s: &AppState) -> Result<Vec<String>, WebError> {
    Ok(s.fleet
        .list_images()
        .await?
        .into_iter()
        .map(|i| i.name)
        .collect())
}

/// Every cluster's name, for the pages' cluster pickers.
async fn cluster_names(s: &AppState) -> Result<Vec<String>, WebError> {
    Ok(s.fleet
        .list_clusters()
        .await?
        .into_iter()
        .map(|c| c.name)
        .collect())
}
