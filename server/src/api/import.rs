//! `POST /api/v1/import/keepalived`: keepalived.conf files in the body (an upload: includes resolve among
//! them), the plan and what was not imported in the answer; applied as one audited change unless `dry_run`.
//! `GET /api/v1/clusters/{name}/keepalived?node=NAME`: the keepalived.conf of a member's role (the export).

use std::path::PathBuf;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use crate::auth::{Operator, Viewer};
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::keepalived::{self, ImportError, MemorySource};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/import/keepalived", post(import_keepalived))
        .route("/clusters/{name}/keepalived", get(export_keepalived))
}

/// Most files one upload may carry.
pub const MAX_FILES: usize = 1000;

/// One uploaded file: its name (relative, as the including files name it) and its text.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadedFile {
    pub name: String,
    pub text: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportRequest {
    pub files: Vec<UploadedFile>,
    /// The files to read as machines' keepalived.conf (the others are only included); default: the first.
    #[serde(default)]
    pub main: Vec<String>,
    /// Config ids deciding `@id` lines, as for the CLI; none: no `@id` line matches.
    #[serde(default)]
    pub config_ids: Vec<String>,
    #[serde(default)]
    pub dry_run: bool,
}

/// Where uploads live in the in-memory file tree (so absolute includes never meet them by accident).
pub const UPLOAD_ROOT: &str = "/upload";

/// Builds the in-memory tree and the main files' paths, or says what is wrong with the request.
pub fn upload_tree(
    files: Vec<UploadedFile>,
    main: &[String],
) -> Result<(MemorySource, Vec<PathBuf>), ApiError> {
    if files.is_empty() {
        return Err(ApiError::bad_request("no file uploaded"));
    }
    if files.len() > MAX_FILES {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_FILES} files per import"
        )));
    }
    let path_of = |name: &str| -> Result<PathBuf, ApiError> {
        let clean = name.trim().trim_start_matches('/');
        if clean.is_empty() || clean.split('/').any(|c| c == "..") {
            return Err(ApiError::bad_request(format!(
                "file name {name:?} must be a relative path without '..'"
            )));
        }
        Ok(PathBuf::from(UPLOAD_ROOT).join(clean))
    };
    let mains = if main.is_empty() {
        vec![path_of(&files[0].name)?]
    } else {
        main.iter().map(|m| path_of(m)).collect::<Result<_, _>>()?
    };
    let mut src = MemorySource::new();
    for f in files {
        src.insert(path_of(&f.name)?, f.text);
    }
    Ok((src, mains))
}

/// An import failure as an API error.
pub fn import_error(e: ImportError) -> ApiError {
    match e {
        ImportError::Usage(m) => ApiError::bad_request(m),
        ImportError::Parse(p) => ApiError::Request {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message: p.to_string(),
        },
        ImportError::Fleet(f) => ApiError::Fleet(f),
    }
}

async fn import_keepalived(
    State(s): State<AppState>,
    Operator(p): Operator,
    ApiJson(req): ApiJson<ImportRequest>,
) -> Result<Response, ApiError> {
    let (mut src, mains) = upload_tree(req.files, &req.main)?;
    let ids = req.config_ids;
    // Parsing and planning are CPU work (a big configuration takes a while): off the async workers.
    let plan = tokio::task::spawn_blocking(move || {
        keepalived::read_machines(&mut src, &mains, &ids, "", keepalived::Limits::default())
            .map(|m| keepalived::plan(&m))
    })
    .await
    .map_err(|e| ApiError::Request {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        message: format!("the import stopped: {e}"),
    })?
    .map_err(import_error)?;
    let report = keepalived::apply(&s.fleet, &p.actor(), plan, req.dry_run)
        .await
        .map_err(import_error)?;
    Ok(Json(report).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportQuery {
    node: String,
}

/// The keepalived.conf of `node`'s part in the cluster, as text; `X-Lbfleet-Not-Exported` counts the settings
/// keepalived has no counterpart for (named in comments at the top of the text).
async fn export_keepalived(
    State(s): State<AppState>,
    _: Viewer,
    Path(name): Path<String>,
    Query(q): Query<ExportQuery>,
) -> Result<Response, ApiError> {
    let view = s.fleet.get_cluster(&name).await?;
    let export = keepalived::export_member(&view, &q.node).map_err(|e| ApiError::Request {
        status: match e {
            keepalived::ExportError::NotMember { .. } => StatusCode::NOT_FOUND,
            keepalived::ExportError::Priority { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        },
        message: e.to_string(),
    })?;
    let lost = HeaderValue::from(export.not_exported.len());
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            ),
            (
                header::HeaderName::from_static("x-lbfleet-not-exported"),
                lost,
            ),
        ],
        export.text,
    )
        .into_response())
}
