//! The import page: paste a keepalived.conf (or load one from disk into the text box), preview what lbfleet
//! would create and what it would not import, then apply it as one audited change (the same code as
//! `POST /api/v1/import/keepalived` and `lbfleet-server import keepalived`).

use askama::Template;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use lbfleet_proto::UserRole;
use serde::Deserialize;

use super::error::{fleet_error_text, WebError};
use super::page::{render, Chrome};
use super::session::{Posted, WebUser};
use crate::keepalived::{self, ImportError, ImportReport, MemorySource};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/import", get(page).post(submit))
}

/// Where the pasted file lives in the in-memory tree (named in the report's locations).
const PASTED: &str = "/upload/keepalived.conf";

#[derive(Template)]
#[template(path = "import.html")]
struct ImportPage {
    p: Chrome,
    text: String,
    config_ids: String,
    report: Option<ImportReport>,
    plan_text: String,
    failure: Option<String>,
}

pub async fn page(user: WebUser, headers: HeaderMap) -> Result<Response, WebError> {
    render(&ImportPage {
        p: Chrome::new(&user, &headers, "import", "Import keepalived.conf".into()),
        text: String::new(),
        config_ids: String::new(),
        report: None,
        plan_text: String::new(),
        failure: None,
    })
}

#[derive(Deserialize)]
pub struct ImportForm {
    #[serde(default)]
    text: String,
    /// Config ids separated by spaces or commas.
    #[serde(default)]
    config_ids: String,
    /// `preview` (a dry run) or `apply`.
    #[serde(default)]
    action: String,
}

pub async fn submit(
    State(s): State<AppState>,
    headers: HeaderMap,
    Posted { user, form }: Posted<ImportForm>,
) -> Result<Response, WebError> {
    user.require(UserRole::Operator)?;
    let dry_run = form.action != "apply";
    let ids: Vec<String> = form
        .config_ids
        .split([' ', ','])
        .filter(|i| !i.is_empty())
        .map(str::to_owned)
        .collect();
    let mut src = MemorySource::new().with(PASTED, form.text.clone());
    let result = keepalived::import(
        &s.fleet,
        &user.actor(),
        &mut src,
        &[PASTED.into()],
        &ids,
        "",
        dry_run,
    )
    .await;
    let (report, failure) = match result {
        Ok(r) => {
            if !dry_run {
                tracing::info!(
                    user = user.name,
                    clusters = r.clusters.len(),
                    lossless = r.lossless,
                    "keepalived.conf imported from the dashboard"
                );
            }
            (Some(r), None)
        }
        Err(ImportError::Fleet(crate::fleet::FleetError::Store(e))) if !e.is_constraint() => {
            return Err(crate::fleet::FleetError::Store(e).into())
        }
        Err(ImportError::Fleet(e)) => (None, Some(fleet_error_text(&e).1)),
        Err(e) => (None, Some(e.to_string())),
    };
    let plan_text = report.as_ref().map(|r| r.to_text()).unwrap_or_default();
    render(&ImportPage {
        p: Chrome::new(&user, &headers, "import", "Import keepalived.conf".into()),
        text: form.text,
        config_ids: form.config_ids,
        report,
        plan_text,
        failure,
    })
}
