//! The audit log page (filters, before/after diff of each change, chain verification) and its CSV / JSON export.

use askama::Template;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;

use axum::routing::get;
use axum::Router;

use super::error::WebError;
use super::format::{json_diff, time_text, DiffLine};
use super::page::{render, Chrome};
use super::session::WebUser;
use crate::audit::Verification;
use crate::audit_export::{self, ExportFormat};
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::audit::AuditFilter;

#[derive(Debug, Default, Deserialize)]
pub struct AuditQuery {
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
    #[serde(default)]
    actor: String,
    #[serde(default)]
    target: String,
    #[serde(default)]
    action: String,
    before: Option<i64>,
}

/// A time from the filter form: `datetime-local` (`2026-11-26T10:00`, read as UTC), RFC 3339, or epoch ms.
fn parse_time(field: &str, text: &str) -> Result<Option<i64>, String> {
    let t = text.trim();
    if t.is_empty() {
        return Ok(None);
    }
    if let Ok(ms) = t.parse::<i64>() {
        return Ok(Some(ms));
    }
    let with_zone = if t.len() == 16 {
        format!("{t}:00Z")
    } else if t.ends_with('Z') || t.contains('+') {
        t.to_owned()
    } else {
        format!("{t}Z")
    };
    humantime::parse_rfc3339_weak(&with_zone)
        .map_err(|_| format!("{field}: {t:?} is not a time like 2026-11-26T10:00 (UTC)"))
        .map(|st| {
            st.duration_since(std::time::UNIX_EPOCH)
                .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                .unwrap_or(0)
        })
        .map(Some)
}

fn non_empty(s: &str) -> Option<String> {
    let t = s.trim();
    (!t.is_empty()).then(|| t.to_owned())
}

fn filter(q: &AuditQuery, limit: i64) -> Result<AuditFilter, String> {
    Ok(AuditFilter {
        since: parse_time("from", &q.since)?,
        until: parse_time("until", &q.until)?,
        actor: non_empty(&q.actor),
        target: non_empty(&q.target),
        action: non_empty(&q.action),
        before_seq: q.before,
        limit,
    })
}

fn parse(j: Option<&str>) -> Value {
    j.and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or(Value::Null)
}

#[derive(Debug, Clone)]
pub struct AuditView {
    pub seq: i64,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub diff: Vec<DiffLine>,
    pub hash: String,
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    p: Chrome,
    rows: Vec<AuditView>,
    since: String,
    until: String,
    actor: String,
    target: String,
    action: String,
    actors: Vec<String>,
    actions: Vec<String>,
    chain_ok: bool,
    chain_rows: u64,
    chain_head: String,
    chain_problem: String,
    filter_error: Option<String>,
    query: String,
    older: Option<String>,
}

/// The last full verification, by the head hash it ended on. A live refresh (the page updating itself after a
/// change) reuses it while the head has not moved, so open audit pages do not re-hash the whole log on every
/// fleet change; a page load always verifies the whole chain.
static LAST_VERIFIED: std::sync::Mutex<Option<Verification>> = std::sync::Mutex::new(None);

async fn verification(s: &AppState, live_refresh: bool) -> Result<Verification, WebError> {
    if live_refresh {
        let head_hash = s.fleet.audit_head_hash().await?;
        let cached = LAST_VERIFIED
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(v) = cached.filter(|v| v.ok && v.head_hash == head_hash) {
            return Ok(v);
        }
    }
    let v = s.fleet.verify_audit().await?;
    if !v.ok {
        tracing::error!(
            problem = v.problem.as_deref().unwrap_or(""),
            "audit chain verification failed"
        );
    }
    *LAST_VERIFIED.lock().unwrap_or_else(|p| p.into_inner()) = Some(v.clone());
    Ok(v)
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/audit", get(page))
        .route("/audit/export.csv", get(export_csv))
        .route("/audit/export.json", get(export_json))
}

pub async fn page(
    State(s): State<AppState>,
    user: WebUser,
    headers: HeaderMap,
    Query(q): Query<AuditQuery>,
) -> Result<Response, WebError> {
    let limit = 100;
    let (f, filter_error) = match filter(&q, limit) {
        Ok(f) => (f, None),
        Err(e) => (
            AuditFilter {
                limit,
                ..AuditFilter::default()
            },
            Some(e),
        ),
    };
    let rows = s.fleet.audit_page(&f).await?;
    let verification = verification(&s, super::flash::is_live_refresh(&headers)).await?;
    let (actors, actions) = s.fleet.audit_facets().await?;
    let query = serde_urlencoded::to_string([
        ("since", q.since.as_str()),
        ("until", q.until.as_str()),
        ("actor", q.actor.as_str()),
        ("target", q.target.as_str()),
        ("action", q.action.as_str()),
    ])
    .unwrap_or_default();
    let older = (rows.len() as i64 == limit)
        .then(|| {
            rows.last()
                .map(|r| format!("/audit?{query}&before={}", r.seq))
        })
        .flatten();
    render(&AuditPage {
        p: Chrome::new(&user, &headers, "audit", "Audit log".into()),
        rows: rows
            .iter()
            .map(|r| AuditView {
                seq: r.seq,
                at: time_text(r.at),
                actor: r.actor.clone(),
                action: r.action.clone(),
                target: r.target.clone(),
                diff: json_diff(
                    &parse(r.before_json.as_deref()),
                    &parse(r.after_json.as_deref()),
                ),
                hash: r.hash.chars().take(12).collect(),
            })
            .collect(),
        since: q.since.clone(),
        until: q.until.clone(),
        actor: q.actor.clone(),
        target: q.target.clone(),
        action: q.action.clone(),
        actors,
        actions,
        chain_ok: verification.ok,
        chain_rows: verification.rows,
        chain_head: verification.head_hash.chars().take(16).collect(),
        chain_problem: verification.problem.unwrap_or_default(),
        filter_error,
        query,
        older,
    })
}

/// The CSV and JSON exports: every row matching the filter, newest first, streamed (`audit_export`).
async fn export(
    s: &AppState,
    user: &WebUser,
    q: &AuditQuery,
    format: ExportFormat,
) -> Result<Response, WebError> {
    let f = filter(q, 0).map_err(WebError::BadRequest)?;
    // One export per user and two in all at once, each on a connection of its own (not a reader).
    let Some(slot) = s.streams.exports.try_take(user.name.clone()) else {
        tracing::info!(user = user.name, "audit export refused: another is running");
        return Err(WebError::Api(ApiError::Request {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: "an audit export is already running; retry when it is done".into(),
        }));
    };
    let conn = s.fleet.audit_export_reader().await?;
    let (content_type, disposition) = match format {
        ExportFormat::Csv => (
            "text/csv; charset=utf-8",
            "attachment; filename=\"lbfleet-audit.csv\"",
        ),
        ExportFormat::Json => (
            "application/json",
            "attachment; filename=\"lbfleet-audit.json\"",
        ),
    };
    Ok((
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        audit_export::body(conn, f, format, slot),
    )
        .into_response())
}

pub async fn export_csv(
    State(s): State<AppState>,
    user: WebUser,
    Query(q): Query<AuditQuery>,
) -> Result<Response, WebError> {
    export(&s, &user, &q, ExportFormat::Csv).await
}

pub async fn export_json(
    State(s): State<AppState>,
    user: WebUser,
    Query(q): Query<AuditQuery>,
) -> Result<Response, WebError> {
    export(&s, &user, &q, ExportFormat::Json).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_times_accept_the_form_and_rfc3339() {
        assert_eq!(parse_time("from", "1970-01-01T00:01"), Ok(Some(60_000)));
        assert_eq!(parse_time("from", "1970-01-01T00:00:01Z"), Ok(Some(1000)));
        assert_eq!(parse_time("from", "1234"), Ok(Some(1234)));
        assert_eq!(parse_time("from", ""), Ok(None));
        assert!(parse_time("from", "yesterday").is_err());
    }
}
