//! The HTTP API: admin REST under `/api/v1`, the agent API under `/api/v1/agent`, `/healthz` and `/metrics`.
//! Each capability module exposes `router()`; `router()` here nests them. Only `lib.rs` imports this module.

use axum::Router;

use crate::state::AppState;

pub mod admin;
pub mod agent;
pub mod alerts;
pub mod audit;
pub mod clusters;
pub mod import;
pub mod nodes;
pub mod rollouts;
pub mod servers;
pub mod session;
pub mod system;
pub mod traffic;

/// Every API route: `/api/v1/...` plus `/healthz` and `/metrics`.
pub fn router() -> Router<AppState> {
    let v1 = Router::new()
        .merge(session::router())
        .merge(clusters::router())
        .merge(import::router())
        .merge(nodes::router())
        .merge(audit::router())
        .merge(admin::router())
        .merge(alerts::router())
        .merge(servers::router())
        .merge(traffic::router())
        .merge(rollouts::router())
        .nest("/agent", agent::router());
    Router::new().nest("/api/v1", v1).merge(system::router())
}
