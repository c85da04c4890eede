//! The import page: paste a keepalived.conf or upload the files of a site (a directory with its `include`d
//! files), preview what lbfleet would create and what it would not import (a dry run), then apply it as one
//! audited change (the same code as `POST /api/v1/import/keepalived` and `lbfleet-server import keepalived`).

use askama::Template;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use lbfleet_proto::UserRole;
use serde::{Deserialize, Serialize};

use super::error::{fleet_error_text, WebError};
use super::page::{render, Chrome};
use super::session::{Posted, WebUser};
use crate::api::import::{upload_tree, UploadedFile};
use crate::keepalived::{self, ImportError, ImportReport, Limits};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/import", get(page).post(submit))
}

/// The name of the text box's file when the form does not name it.
const DEFAULT_MAIN: &str = "keepalived.conf";

/// One file uploaded beside the text box (an `include`d file), carried in the form as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ExtraFile {
    name: String,
    text: String,
}

#[derive(Template)]
#[template(path = "import.html")]
struct ImportPage {
    p: Chrome,
    text: String,
    main_name: String,
    config_ids: String,
    /// The uploaded included files, as the hidden field carries them (JSON), and their names to list.
    extra_json: String,
    extra_names: Vec<String>,
    /// The digest of what a preview read (carried to Apply, which refuses other input).
    previewed: String,
    report: Option<ImportReport>,
    plan_text: String,
    failure: Option<String>,
}

impl ImportPage {
    fn empty(p: Chrome) -> Self {
        ImportPage {
            p,
            text: String::new(),
            main_name: DEFAULT_MAIN.into(),
            config_ids: String::new(),
            extra_json: "[]".into(),
            extra_names: Vec::new(),
            previewed: String::new(),
            report: None,
            plan_text: String::new(),
            failure: None,
        }
    }
}

/// Viewers see the page without its form (the link is only in operators' menus).
pub async fn page(user: WebUser, headers: HeaderMap) -> Result<Response, WebError> {
    render(&ImportPage::empty(Chrome::new(
        &user,
        &headers,
        "import",
        "Import keepalived.conf".into(),
    )))
}

#[derive(Deserialize)]
pub struct ImportForm {
    #[serde(default)]
    text: String,
    /// The text box's file name (includes resolve relative to it); default `keepalived.conf`.
    #[serde(default)]
    main_name: String,
    /// Config ids separated by spaces or commas.
    #[serde(default)]
    config_ids: String,
    /// The other uploaded files as JSON `[{"name", "text"}]` (filled by the page's script).
    #[serde(default)]
    extra_files: String,
    /// `preview` (a dry run) or `apply`.
    #[serde(default)]
    action: String,
    /// The digest of the input the preview showed; Apply applies only that input.
    #[serde(default)]
    previewed: String,
}

/// What a preview read, as one digest: Apply must be given the same files, names and config ids.
fn input_digest(main_name: &str, text: &str, config_ids: &[String], extra: &[ExtraFile]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut field = |b: &[u8]| {
        h.update((b.len() as u64).to_be_bytes());
        h.update(b);
    };
    field(main_name.as_bytes());
    field(text.as_bytes());
    for id in config_ids {
        field(id.as_bytes());
    }
    for f in extra {
        field(f.name.as_bytes());
        field(f.text.as_bytes());
    }
    hex::encode(h.finalize())
}

pub async fn submit(
    State(s): State<AppState>,
    headers: HeaderMap,
    Posted { user, form }: Posted<ImportForm>,
) -> Result<Response, WebError> {
    user.require(UserRole::Operator)?;
    let dry_run = form.action != "apply";
    let main_name = match form.main_name.trim() {
        "" => DEFAULT_MAIN.to_owned(),
        n => n.to_owned(),
    };
    let ids: Vec<String> = form
        .config_ids
        .split([' ', ','])
        .filter(|i| !i.is_empty())
        .map(str::to_owned)
        .collect();
    let mut page = ImportPage::empty(Chrome::new(
        &user,
        &headers,
        "import",
        "Import keepalived.conf".into(),
    ));
    page.config_ids = form.config_ids.clone();
    page.main_name = main_name.clone();
    page.text = form.text.clone();
    let extra: Vec<ExtraFile> = match form.extra_files.trim() {
        "" => Vec::new(),
        json => match serde_json::from_str(json) {
            Ok(files) => files,
            Err(e) => {
                page.failure = Some(format!("the uploaded files could not be read: {e}"));
                return render(&page);
            }
        },
    };
    page.extra_names = extra.iter().map(|f| f.name.clone()).collect();
    page.extra_json = serde_json::to_string(&extra).unwrap_or_else(|_| "[]".into());
    if form.text.trim().is_empty() {
        page.failure = Some("paste a keepalived.conf or load one".into());
        return render(&page);
    }
    let digest = input_digest(&main_name, &form.text, &ids, &extra);
    if !dry_run && form.previewed != digest {
        page.failure = Some(
            "the files or config ids changed since the preview (or there was none): preview again, then apply"
                .into(),
        );
        return render(&page);
    }

    let mut files = vec![UploadedFile {
        name: main_name.clone(),
        text: form.text,
    }];
    files.extend(
        extra
            .into_iter()
            .filter(|f| f.name.trim().trim_start_matches('/') != main_name.trim_start_matches('/'))
            .map(|f| UploadedFile {
                name: f.name,
                text: f.text,
            }),
    );
    let (mut src, mains) = match upload_tree(files, &[]) {
        Ok(t) => t,
        Err(e) => {
            page.failure = Some(e.to_string());
            return render(&page);
        }
    };
    // Parsing and planning are CPU work: off the async workers, as for the API.
    let planned = tokio::task::spawn_blocking(move || {
        keepalived::read_machines(&mut src, &mains, &ids, "", Limits::default())
            .map(|m| keepalived::plan(&m))
    })
    .await
    .map_err(|e| WebError::BadRequest(format!("the import stopped: {e}")))?;
    let result = match planned {
        Ok(plan) => keepalived::apply(&s.fleet, &user.actor(), plan, dry_run).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(r) => {
            if !dry_run {
                tracing::info!(
                    user = user.name,
                    clusters = r.clusters.len(),
                    lossless = r.lossless,
                    "keepalived.conf imported from the dashboard"
                );
            }
            page.plan_text = r.to_text();
            if r.dry_run {
                page.previewed = digest;
            }
            page.report = Some(r);
        }
        Err(ImportError::Fleet(crate::fleet::FleetError::Store(e))) if !e.is_constraint() => {
            return Err(crate::fleet::FleetError::Store(e).into())
        }
        Err(ImportError::Fleet(e)) => page.failure = Some(fleet_error_text(&e).1),
        Err(e) => page.failure = Some(e.to_string()),
    }
    render(&page)
}
