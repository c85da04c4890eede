//! The overview page: node counts by state, one card per cluster, and what needs attention.

use askama::Template;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use lbfleet_proto::NodeState;

use super::error::WebError;
use super::page::{render, Chrome};
use super::picture::*;
use super::session::WebUser;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/", get(overview))
}

// ----- overview -----------------------------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "overview.html")]
pub(super) struct OverviewPage {
    p: Chrome,
    counts: Vec<(String, i64)>,
    total: i64,
    cards: Vec<ClusterCard>,
    alerts: Vec<Alert>,
    /// Desired against running image, fleet-wide (`fleet::drift`).
    drift: crate::fleet::drift::DriftReport,
}

pub async fn overview(
    State(s): State<AppState>,
    user: WebUser,
    headers: HeaderMap,
) -> Result<Response, WebError> {
    let (picture, nodes) = fleet_picture(&s).await?;
    let counts: Vec<(String, i64)> = NodeState::ALL
        .iter()
        .map(|st| {
            let n = nodes.iter().filter(|n| n.state == *st).count();
            (st.to_string(), i64::try_from(n).unwrap_or(i64::MAX))
        })
        .collect();
    render(&OverviewPage {
        p: Chrome::new(&user, &headers, "overview", "Overview".into()),
        total: i64::try_from(nodes.len()).unwrap_or(i64::MAX),
        counts,
        cards: picture.cards,
        alerts: picture.alerts,
        drift: s.fleet.drift().await?,
    })
}
