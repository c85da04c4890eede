//! The event feed: VRRP changes, health flips, enrollments and agent errors, filtered and paged.

use askama::Template;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use serde::Deserialize;

use super::error::WebError;
use super::format::time_text;
use super::page::{render, Chrome};
use super::session::WebUser;
use crate::fleet::node_key;
use crate::state::AppState;
use crate::store::events::{EventFilter, EventKind, EventRow};

pub fn router() -> Router<AppState> {
    Router::new().route("/events", get(events))
}

#[derive(Debug, Clone)]
pub struct EventView {
    pub at: String,
    pub kind: String,
    pub node: String,
    pub node_id: Option<i64>,
    pub cluster: String,
    pub message: String,
}

pub(super) fn event_view(e: &EventRow) -> EventView {
    EventView {
        at: time_text(e.at),
        kind: e.kind.to_string(),
        node: e.node.clone().unwrap_or_default(),
        node_id: e.node_id,
        cluster: e.cluster.clone().unwrap_or_default(),
        message: e.message.clone(),
    }
}

// ----- events -------------------------------------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
pub struct EventsQuery {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    node: String,
    #[serde(default)]
    cluster: String,
    before: Option<i64>,
}

#[derive(Template)]
#[template(path = "events.html")]
pub(super) struct EventsPage {
    p: Chrome,
    rows: Vec<EventView>,
    kind: String,
    node: String,
    cluster: String,
    kinds: Vec<String>,
    older: Option<String>,
}

pub async fn events(
    State(s): State<AppState>,
    user: WebUser,
    headers: HeaderMap,
    Query(q): Query<EventsQuery>,
) -> Result<Response, WebError> {
    let node_id = if q.node.trim().is_empty() {
        None
    } else {
        match s.fleet.get_node(&node_key(q.node.trim())).await {
            Ok(n) => Some(n.id),
            Err(_) => Some(-1),
        }
    };
    let limit = 200;
    let rows = s
        .fleet
        .events(&EventFilter {
            kind: q.kind.parse().ok(),
            node_id,
            cluster: (!q.cluster.trim().is_empty()).then(|| q.cluster.trim().to_owned()),
            before_id: q.before,
            limit,
            ..EventFilter::default()
        })
        .await?;
    let older = (rows.len() as i64 == limit).then(|| {
        let last = rows.last().map(|r| r.id).unwrap_or(0);
        format!(
            "/events?{}",
            serde_urlencoded::to_string([
                ("kind", q.kind.as_str()),
                ("node", q.node.as_str()),
                ("cluster", q.cluster.as_str()),
                ("before", last.to_string().as_str()),
            ])
            .unwrap_or_default()
        )
    });
    render(&EventsPage {
        p: Chrome::new(&user, &headers, "events", "Events".into()),
        rows: rows.iter().map(event_view).collect(),
        kind: q.kind.clone(),
        node: q.node.clone(),
        cluster: q.cluster.clone(),
        kinds: EventKind::ALL
            .iter()
            .map(|k| k.as_str().to_string())
            .collect(),
        older,
    })
}
