//! Audit log and event endpoints.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::auth::Viewer;
use crate::error::ApiError;
use crate::extract::ApiQuery;
use crate::fleet::node_key;
use crate::state::AppState;
use crate::store::{audit::AuditFilter, events::EventFilter};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/audit", get(list))
        .route("/audit/verify", get(verify))
        .route("/events", get(events))
}

/// A time in a query: milliseconds since the epoch, or RFC 3339 (`2026-11-26T10:00:00Z`).
fn parse_time(field: &str, text: Option<&str>) -> Result<Option<i64>, ApiError> {
    let Some(text) = text else { return Ok(None) };
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(Some(ms));
    }
    let t = humantime::parse_rfc3339_weak(text).map_err(|_| {
        ApiError::bad_request(format!(
            "{field}: {text:?} is neither milliseconds since the epoch nor an RFC 3339 time"
        ))
    })?;
    let ms = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    Ok(Some(i64::try_from(ms).unwrap_or(i64::MAX)))
}

fn limit(l: Option<i64>) -> Result<i64, ApiError> {
    match l {
        None => Ok(100),
        Some(l @ 1..=1000) => Ok(l),
        Some(l) => Err(ApiError::bad_request(format!(
            "limit must be 1 to 1000, got {l}"
        ))),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    since: Option<String>,
    until: Option<String>,
    actor: Option<String>,
    /// Prefix of the target: `node:lb-01`, `cluster:ext`, `cluster:` ...
    target: Option<String>,
    action: Option<String>,
    /// Page backwards: entries with a sequence number below this.
    before: Option<i64>,
    limit: Option<i64>,
}

#[derive(Debug, Serialize)]
struct AuditEntry {
    seq: i64,
    at: i64,
    actor: String,
    action: String,
    target: String,
    before: Value,
    after: Value,
    prev_hash: String,
    hash: String,
}

async fn list(
    State(s): State<AppState>,
    _: Viewer,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Response, ApiError> {
    let f = AuditFilter {
        since: parse_time("since", q.since.as_deref())?,
        until: parse_time("until", q.until.as_deref())?,
        actor: q.actor,
        target: q.target,
        action: q.action,
        before_seq: q.before,
        limit: limit(q.limit)?,
    };
    let rows = s.fleet.audit_page(&f).await?;
    let parse = |j: Option<String>| {
        j.and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null)
    };
    let next_before = if rows.len() as i64 == f.limit {
        rows.last().map(|r| r.seq)
    } else {
        None
    };
    let entries: Vec<AuditEntry> = rows
        .into_iter()
        .map(|r| AuditEntry {
            seq: r.seq,
            at: r.at,
            actor: r.actor,
            action: r.action,
            target: r.target,
            before: parse(r.before_json),
            after: parse(r.after_json),
            prev_hash: r.prev_hash,
            hash: r.hash,
        })
        .collect();
    Ok(Json(serde_json::json!({"entries": entries, "next_before": next_before})).into_response())
}

/// Recomputes the whole hash chain; `ok: false` names the first bad row.
async fn verify(State(s): State<AppState>, _: Viewer) -> Result<Response, ApiError> {
    let v = s.fleet.verify_audit().await?;
    if !v.ok {
        tracing::error!(
            problem = v.problem.as_deref().unwrap_or(""),
            "audit chain verification failed"
        );
    }
    Ok(Json(v).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventQuery {
    since: Option<String>,
    kind: Option<String>,
    node: Option<String>,
    cluster: Option<String>,
    before: Option<i64>,
    limit: Option<i64>,
}

async fn events(
    State(s): State<AppState>,
    _: Viewer,
    ApiQuery(q): ApiQuery<EventQuery>,
) -> Result<Response, ApiError> {
    let node_id = match q.node.as_deref() {
        Some(n) => Some(s.fleet.get_node(&node_key(n)).await?.id),
        None => None,
    };
    let f = EventFilter {
        since: parse_time("since", q.since.as_deref())?,
        kind: q
            .kind
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(|e| ApiError::bad_request(format!("kind: {e}")))?,
        node_id,
        cluster: q.cluster,
        before_id: q.before,
        limit: limit(q.limit)?,
    };
    // Bounded in bytes: long messages cut (`message_cut`), rows past the budget left out (`truncated`).
    Ok(Json(s.fleet.events_page(&f).await?).into_response())
}
