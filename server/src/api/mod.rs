//! The HTTP API: admin REST under `/api/v1`, the agent API under `/api/v1/agent`, health and metrics.
//! One `AppState` is shared by every handler; each capability module exposes `router()`, merged here.

use std::ops::Deref;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, FromRequest, Request};
use axum::http::{header, HeaderValue};
use axum::routing::{get, post};
use axum::Router;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;

use crate::config::ServerConfig;
use crate::fleet::Fleet;

pub mod admin;
pub mod agent;
pub mod audit;
pub mod auth;
pub mod clusters;
pub mod error;
pub mod nodes;
pub mod system;

pub use error::ApiError;

/// Largest request body accepted (a cluster spec with thousands of real servers fits easily).
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug)]
pub struct Inner {
    pub fleet: Arc<Fleet>,
    pub config: ServerConfig,
    /// Bounds password checks (argon2 is memory- and CPU-hungry and the login needs no credentials).
    pub login_gate: crate::login_gate::LoginGate,
    /// Counters of the running boot services, for `/metrics`.
    pub boot_stats: crate::boot::BootStats,
    /// Bounds boot-script requests: each one mints an enrollment token and an audit row.
    pub boot_limiter: crate::boot::http::BootScriptLimiter,
    /// Turns true when the server shuts down, so long-polls return at once.
    pub shutdown: watch::Receiver<bool>,
    pub started: Instant,
}

/// Shared state of every handler; cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState(Arc<Inner>);

impl AppState {
    pub fn new(
        fleet: Arc<Fleet>,
        config: ServerConfig,
        boot_stats: crate::boot::BootStats,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        AppState(Arc::new(Inner {
            fleet,
            config,
            boot_stats,
            login_gate: crate::login_gate::LoginGate::default(),
            boot_limiter: crate::boot::http::BootScriptLimiter::default(),
            shutdown,
            started: Instant::now(),
        }))
    }
}

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// JSON body extractor whose rejections are `ApiError`s (JSON bodies, not plain text).
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let axum::Json(v) = axum::Json::<T>::from_request(req, state).await?;
        Ok(ApiJson(v))
    }
}

/// Like `ApiJson`, but an empty body means `T::default()` (for action endpoints with optional fields).
#[derive(Debug, Clone, Copy, Default)]
pub struct OptionalJson<T>(pub T);

impl<T: DeserializeOwned + Default, S: Send + Sync> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::bad_request(format!("could not read the request body: {e}")))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(T::default()));
        }
        serde_json::from_slice(&bytes)
            .map(OptionalJson)
            .map_err(|e| ApiError::Request {
                status: axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                message: format!("invalid JSON body: {e}"),
            })
    }
}

/// Query-string extractor whose rejections are `ApiError`s.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> axum::extract::FromRequestParts<S>
    for ApiQuery<T>
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        let axum::extract::Query(v) =
            axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(ApiQuery(v))
    }
}

/// Every route of the server.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/login", post(auth::login))
        .route("/logout", post(auth::logout))
        .route("/whoami", get(auth::whoami))
        .merge(clusters::router())
        .merge(nodes::router())
        .merge(audit::router())
        .merge(admin::router())
        .nest("/agent", agent::router());
    Router::new()
        .nest("/api/v1", api)
        .merge(system::router())
        .merge(crate::boot::http::router())
        .merge(crate::web::router())
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}
