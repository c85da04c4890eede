//! `GET /api/v1/clusters/{name}/traffic` and `GET /api/v1/nodes/{node}/traffic`: the traffic history the
//! dashboard draws (`fleet::traffic`), as JSON: rates per second per bucket, with the counts behind them, and
//! the VRRP and health events of the window.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

use crate::auth::Viewer;
use crate::error::ApiError;
use crate::extract::ApiQuery;
use crate::fleet::node_key;
use crate::fleet::traffic::TrafficRange;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/clusters/{name}/traffic", get(cluster))
        .route("/nodes/{node}/traffic", get(node))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RangeQuery {
    range: Option<String>,
}

fn range(q: &RangeQuery) -> Result<TrafficRange, ApiError> {
    match q.range.as_deref() {
        None => Ok(TrafficRange::Hour),
        Some(text) => TrafficRange::parse(text)
            .ok_or_else(|| ApiError::bad_request(format!("range {text:?}: use 1h, 24h or 7d"))),
    }
}

async fn cluster(
    State(s): State<AppState>,
    _: Viewer,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<RangeQuery>,
) -> Result<Response, ApiError> {
    let t = s.fleet.cluster_traffic(&name, range(&q)?, None).await?;
    Ok(Json(t).into_response())
}

async fn node(
    State(s): State<AppState>,
    _: Viewer,
    Path(node): Path<String>,
    ApiQuery(q): ApiQuery<RangeQuery>,
) -> Result<Response, ApiError> {
    let t = s.fleet.node_traffic(&node_key(&node), range(&q)?).await?;
    Ok(Json(t).into_response())
}
