//! The operator dashboard: server-rendered askama pages (templates in `web/templates`), HTML forms that call the
//! same `Fleet` methods as the REST API, and a Server-Sent Events stream that tells open pages to refresh.
//!
//! People authenticate with the same session cookie as the API; every form carries the session's CSRF token
//! and every response carries a CSP that allows no inline script.

use std::collections::BTreeMap;

use askama::Template;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use lbfleet_proto::UserRole;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::api::auth::{cookie, SESSION_COOKIE};
use crate::api::{ApiError, AppState};
use crate::fleet::{Actor, FleetError};
use crate::{secrets, store};

mod actions;
mod audit;
mod health;
mod live;
mod pages;
mod users;

/// No inline script, no inline style, nothing from elsewhere; forms only post back here.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const FLASH_COOKIE: &str = "lbfleet_flash";
const LOGIN_CSRF_COOKIE: &str = "lbfleet_login_csrf";

/// Every dashboard route. Merged into the server's router in `api::router`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(pages::overview))
        .route("/login", get(pages::login_form).post(actions::login))
        .route("/logout", post(actions::logout))
        .route("/nodes", get(pages::nodes))
        .route("/nodes/{id}", get(pages::node))
        .route("/nodes/{id}/approve", post(actions::approve))
        .route("/nodes/{id}/reject", post(actions::reject))
        .route("/nodes/{id}/assign", post(actions::assign))
        .route("/nodes/{id}/unassign", post(actions::unassign))
        .route("/nodes/{id}/retire", post(actions::retire))
        .route("/discovered", get(pages::discovered))
        .route(
            "/clusters",
            get(pages::clusters).post(actions::create_cluster),
        )
        .route("/clusters/{name}", get(pages::cluster))
        .route("/clusters/{name}/settings", post(actions::cluster_settings))
        .route("/clusters/{name}/delete", post(actions::delete_cluster))
        .route(
            "/clusters/{name}/switchover",
            get(pages::switchover_confirm).post(actions::switchover),
        )
        .route("/clusters/{name}/services", post(actions::add_service))
        .route(
            "/clusters/{name}/services/edit",
            post(actions::edit_service),
        )
        .route(
            "/clusters/{name}/services/remove",
            post(actions::remove_service),
        )
        .route(
            "/clusters/{name}/real-servers",
            post(actions::add_real_server),
        )
        .route(
            "/clusters/{name}/real-servers/{op}",
            post(actions::real_server_op),
        )
        .route("/audit", get(audit::page))
        .route("/audit/export.csv", get(audit::export_csv))
        .route("/audit/export.json", get(audit::export_json))
        .route("/events", get(pages::events))
        .route("/users", get(users::page).post(users::create_user))
        .route("/users/{name}/delete", post(users::delete_user))
        .route("/users/{name}/password", post(users::reset_password))
        .route("/tokens", post(users::create_token))
        .route("/tokens/{id}/revoke", post(users::revoke_token))
        .route("/live", get(live::stream))
        .route("/static/{file}", get(static_file))
        .layer(axum::middleware::from_fn(clear_flash))
        .layer(SetResponseHeaderLayer::overriding(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::HeaderName::from_static("cross-origin-opener-policy"),
            HeaderValue::from_static("same-origin"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::HeaderName::from_static("permissions-policy"),
            HeaderValue::from_static("camera=(), microphone=(), geolocation=()"),
        ))
}

async fn static_file(Path(file): Path<String>) -> Response {
    match lbfleet_web::asset(&file) {
        Some(a) => (
            [
                (header::CONTENT_TYPE, a.content_type),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            a.body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such file").into_response(),
    }
}

/// A flash message is shown once: any full page that read it also clears it.
async fn clear_flash(req: Request, next: axum::middleware::Next) -> Response {
    let had_flash = cookie(req.headers(), FLASH_COOKIE).is_some_and(|v| !v.is_empty());
    let is_page = req.method() == Method::GET && !is_live_refresh(req.headers());
    let mut resp = next.run(req).await;
    let html = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"));
    if had_flash && is_page && html && !resp.headers().contains_key(header::SET_COOKIE) {
        resp.headers_mut().append(
            header::SET_COOKIE,
            HeaderValue::from_static(
                "lbfleet_flash=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0",
            ),
        );
    }
    resp
}

/// The page's own script re-fetches pages to refresh their live parts; those fetches must not eat a flash.
fn is_live_refresh(headers: &HeaderMap) -> bool {
    headers
        .get("x-lbfleet-live")
        .is_some_and(|v| v.as_bytes() == b"1")
}

/// A person logged in to the dashboard with a session cookie.
#[derive(Debug, Clone)]
pub struct WebUser {
    pub name: String,
    pub role: UserRole,
    pub csrf: String,
    /// The plain session token from the cookie (to end it on logout).
    session: String,
    /// The fleet change counter when the request arrived, before the page read any data. The page carries it;
    /// its live stream compares it with the counter when it connects, so a change that lands between the page
    /// and the stream still refreshes the page.
    fleet_seq: u64,
}

impl WebUser {
    pub fn actor(&self) -> Actor {
        Actor(self.name.clone())
    }

    /// The plain session token (to end the session on logout).
    pub fn session(&self) -> &str {
        &self.session
    }

    pub fn can_operate(&self) -> bool {
        self.role >= UserRole::Operator
    }

    pub fn is_admin(&self) -> bool {
        self.role >= UserRole::Admin
    }

    /// 403 unless the user has at least `role`.
    pub fn require(&self, role: UserRole) -> Result<(), WebError> {
        if self.role < role {
            return Err(WebError::Forbidden(format!(
                "this needs the {role} role; you ({}) are {}",
                self.name, self.role
            )));
        }
        Ok(())
    }
}

impl FromRequestParts<AppState> for WebUser {
    type Rejection = WebError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, WebError> {
        let login = || {
            if parts.method == Method::GET {
                let next = parts
                    .uri
                    .path_and_query()
                    .map(|p| p.as_str().to_owned())
                    .unwrap_or_else(|| "/".into());
                WebError::LoginRequired { next: Some(next) }
            } else {
                WebError::LoginRequired { next: None }
            }
        };
        let fleet_seq = *state.fleet.notifier().subscribe_fleet().borrow();
        let Some(session) = cookie(&parts.headers, SESSION_COOKIE) else {
            return Err(login());
        };
        let mut conn = state.fleet.store().read().await.map_err(ApiError::from)?;
        let Some(p) = store::auth::session(&mut conn, &secrets::hash_secret(session))
            .await
            .map_err(ApiError::from)?
        else {
            return Err(login());
        };
        let csrf = p.csrf_token.clone().unwrap_or_default();
        let p = crate::api::auth::principal(p, crate::api::auth::Via::Token)?;
        Ok(WebUser {
            name: p.name,
            role: p.role,
            csrf,
            session: session.to_owned(),
            fleet_seq,
        })
    }
}

#[derive(Deserialize)]
struct CsrfField {
    #[serde(default)]
    csrf: String,
}

/// A posted HTML form from a logged-in user, accepted only with the session's CSRF token in field `csrf`.
#[derive(Debug)]
pub struct Posted<T> {
    pub user: WebUser,
    pub form: T,
}

impl<T: DeserializeOwned> FromRequest<AppState> for Posted<T> {
    type Rejection = WebError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, WebError> {
        let (mut parts, body) = req.into_parts();
        let user = WebUser::from_request_parts(&mut parts, state).await?;
        let req = Request::from_parts(parts, body);
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| WebError::BadRequest(format!("could not read the form: {e}")))?;
        let sent: CsrfField = serde_urlencoded::from_bytes(&bytes).unwrap_or(CsrfField {
            csrf: String::new(),
        });
        if sent.csrf.is_empty() || !secrets::constant_time_eq(&sent.csrf, &user.csrf) {
            tracing::warn!(
                user = user.name,
                "dashboard form refused: missing or wrong CSRF token"
            );
            return Err(WebError::Forbidden(
                "the form's security token is missing or out of date; reload the page and try again"
                    .into(),
            ));
        }
        let form = serde_urlencoded::from_bytes(&bytes)
            .map_err(|e| WebError::BadRequest(format!("unexpected form contents: {e}")))?;
        Ok(Posted { user, form })
    }
}

/// Why a dashboard request failed, shown as a page with the right status.
#[derive(Debug)]
pub enum WebError {
    /// No valid session: GET pages redirect to the login form, anything else gets 401.
    LoginRequired {
        next: Option<String>,
    },
    Forbidden(String),
    NotFound(String),
    BadRequest(String),
    Api(ApiError),
    Render(askama::Error),
}

impl From<ApiError> for WebError {
    fn from(e: ApiError) -> Self {
        WebError::Api(e)
    }
}

impl From<FleetError> for WebError {
    fn from(e: FleetError) -> Self {
        WebError::Api(e.into())
    }
}

impl From<store::StoreError> for WebError {
    fn from(e: store::StoreError) -> Self {
        WebError::Api(e.into())
    }
}

impl From<askama::Error> for WebError {
    fn from(e: askama::Error) -> Self {
        WebError::Render(e)
    }
}

/// Status and a message for people; internals go to the log only.
pub fn fleet_error_text(e: &FleetError) -> (StatusCode, String) {
    match e {
        FleetError::Invalid(errs) => (StatusCode::UNPROCESSABLE_ENTITY, errs.to_string()),
        FleetError::NotFound(m) => (StatusCode::NOT_FOUND, m.clone()),
        FleetError::Conflict(m) => (StatusCode::CONFLICT, m.clone()),
        FleetError::PreconditionFailed(m) => (StatusCode::PRECONDITION_FAILED, m.clone()),
        FleetError::Unauthorized(m) => (StatusCode::UNAUTHORIZED, m.clone()),
        FleetError::Forbidden(m) => (StatusCode::FORBIDDEN, m.clone()),
        FleetError::Store(e) if e.is_constraint() => (
            StatusCode::CONFLICT,
            format!("the change conflicts with existing data ({e})"),
        ),
        FleetError::Store(e) => {
            tracing::error!(error = %e, "dashboard request failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error; see the server log".into(),
            )
        }
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    status: u16,
    reason: String,
    message: String,
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            WebError::LoginRequired { next: Some(next) } => {
                let target = format!(
                    "/login?{}",
                    serde_urlencoded::to_string([("next", next.as_str())]).unwrap_or_default()
                );
                return Redirect::to(&target).into_response();
            }
            WebError::LoginRequired { next: None } => (
                StatusCode::UNAUTHORIZED,
                "your session has ended; log in again".to_owned(),
            ),
            WebError::Forbidden(m) => (StatusCode::FORBIDDEN, m),
            WebError::NotFound(m) => (StatusCode::NOT_FOUND, m),
            WebError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            WebError::Api(ApiError::Fleet(e)) => fleet_error_text(&e),
            WebError::Api(ApiError::TooManyRequests { retry_after_s }) => (
                StatusCode::TOO_MANY_REQUESTS,
                format!("too many failed logins; try again in {retry_after_s} s"),
            ),
            WebError::Api(ApiError::Unauthorized(m)) => (StatusCode::UNAUTHORIZED, m),
            WebError::Api(ApiError::Forbidden(m)) => (StatusCode::FORBIDDEN, m),
            WebError::Api(ApiError::Request { status, message }) => (status, message),
            WebError::Render(e) => {
                tracing::error!(error = %e, "template rendering failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error; see the server log".to_owned(),
                )
            }
        };
        let page = ErrorPage {
            status: status.as_u16(),
            reason: status.canonical_reason().unwrap_or("Error").to_owned(),
            message,
        };
        match page.render() {
            Ok(body) => (status, Html(body)).into_response(),
            Err(_) => (status, page.message).into_response(),
        }
    }
}

/// Renders a template as a 200 HTML page.
pub fn render<T: Template>(t: &T) -> Result<Response, WebError> {
    Ok(Html(t.render()?).into_response())
}

/// What every page's frame needs: who is logged in, what they may do, the form token and a flash message.
#[derive(Debug, Clone)]
pub struct Chrome {
    pub title: String,
    pub nav: &'static str,
    pub user: String,
    pub role: String,
    pub csrf: String,
    pub can_operate: bool,
    pub is_admin: bool,
    pub notice: Option<String>,
    pub error: Option<String>,
    pub version: &'static str,
    pub fleet_seq: u64,
}

impl Chrome {
    pub fn new(user: &WebUser, headers: &HeaderMap, nav: &'static str, title: String) -> Self {
        let (notice, error) = read_flash(headers);
        Chrome {
            title,
            nav,
            user: user.name.clone(),
            role: user.role.to_string(),
            csrf: user.csrf.clone(),
            can_operate: user.can_operate(),
            is_admin: user.is_admin(),
            notice,
            error,
            version: env!("CARGO_PKG_VERSION"),
            fleet_seq: user.fleet_seq,
        }
    }

    /// `aria-current` for the navigation entry of this page.
    pub fn current(&self, nav: &str) -> &'static str {
        if self.nav == nav {
            "page"
        } else {
            "false"
        }
    }
}

fn read_flash(headers: &HeaderMap) -> (Option<String>, Option<String>) {
    let Some(raw) = cookie(headers, FLASH_COOKIE) else {
        return (None, None);
    };
    let Some(text) = hex::decode(raw)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
    else {
        return (None, None);
    };
    match text.split_once(':') {
        Some(("ok", m)) => (Some(m.to_owned()), None),
        Some(("err", m)) => (None, Some(m.to_owned())),
        _ => (None, None),
    }
}

/// A 303 redirect to `back` carrying a one-time message for the next page.
pub fn redirect_with(back: &str, ok: bool, message: &str) -> Response {
    let mut text = format!("{}:{message}", if ok { "ok" } else { "err" });
    if text.len() > 1500 {
        let mut cut = 1500;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    let mut resp = Redirect::to(safe_back(back)).into_response();
    let cookie = format!(
        "{FLASH_COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age=60",
        hex::encode(text)
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

/// Only local paths are followed after a form (no open redirects).
pub fn safe_back(back: &str) -> &str {
    // Browsers drop tabs and newlines from URLs and read `\` as `/`, so `/\t/evil.example`, `/\evil` and
    // `//evil` all leave the site. A local path here is `/` followed by printable characters, none of them a
    // backslash, and not a second `/` right away.
    let local = back.starts_with('/')
        && !back.starts_with("//")
        && back.bytes().all(|b| b.is_ascii_graphic() && b != b'\\');
    if local {
        back
    } else {
        "/"
    }
}

/// Milliseconds since the epoch as `2026-11-26 10:00:00Z`.
pub fn time_text(ms: i64) -> String {
    let Ok(ms) = u64::try_from(ms) else {
        return "-".into();
    };
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .replacen('T', " ", 1)
}

/// How long ago, in words (`12 s ago`, `3 min ago`), or `never`.
pub fn ago_text(ms: Option<i64>) -> String {
    let Some(ms) = ms else { return "never".into() };
    let secs = (store::now_ms().saturating_sub(ms) / 1000).max(0);
    match secs {
        0..=89 => format!("{secs} s ago"),
        90..=5399 => format!("{} min ago", secs / 60),
        5400..=172_799 => format!("{} h ago", secs / 3600),
        _ => format!("{} d ago", secs / 86_400),
    }
}

/// Flattens JSON into `path -> scalar text` for before/after diffs (`spec.vips[0]`, `weight`).
pub fn flatten_json(v: &serde_json::Value) -> BTreeMap<String, String> {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, String>) {
        match v {
            serde_json::Value::Object(m) if !m.is_empty() => {
                for (k, v) in m {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&p, v, out);
                }
            }
            serde_json::Value::Array(a) if !a.is_empty() => {
                for (i, v) in a.iter().enumerate() {
                    walk(&format!("{prefix}[{i}]"), v, out);
                }
            }
            serde_json::Value::Null => {}
            serde_json::Value::String(s) => {
                out.insert(prefix.to_owned(), s.clone());
            }
            other => {
                out.insert(prefix.to_owned(), other.to_string());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk("", v, &mut out);
    out
}

/// One changed field between two JSON documents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiffLine {
    pub path: String,
    pub before: Option<String>,
    pub after: Option<String>,
}

/// Fields added, removed or changed from `before` to `after`.
pub fn json_diff(before: &serde_json::Value, after: &serde_json::Value) -> Vec<DiffLine> {
    let b = flatten_json(before);
    let a = flatten_json(after);
    let mut keys: Vec<&String> = b.keys().chain(a.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter_map(|k| {
            let (x, y) = (b.get(k), a.get(k));
            (x != y).then(|| DiffLine {
                path: if k.is_empty() {
                    "(value)".into()
                } else {
                    k.clone()
                },
                before: x.cloned(),
                after: y.cloned(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn diff_names_changed_added_and_removed_fields() {
        let d = json_diff(
            &json!({"state": "discovered", "hostname": null, "x": [1, 2]}),
            &json!({"state": "ready", "hostname": "lb-01", "x": [1]}),
        );
        assert_eq!(
            d,
            vec![
                DiffLine {
                    path: "hostname".into(),
                    before: None,
                    after: Some("lb-01".into())
                },
                DiffLine {
                    path: "state".into(),
                    before: Some("discovered".into()),
                    after: Some("ready".into())
                },
                DiffLine {
                    path: "x[1]".into(),
                    before: Some("2".into()),
                    after: None
                },
            ]
        );
        assert!(json_diff(&json!(null), &json!(null)).is_empty());
    }

    #[test]
    fn only_local_paths_are_followed() {
        assert_eq!(safe_back("/nodes/3"), "/nodes/3");
        assert_eq!(safe_back("//evil.example/"), "/");
        assert_eq!(safe_back("https://evil.example/"), "/");
        assert_eq!(safe_back("/\\evil"), "/");
    }

    #[test]
    fn flash_round_trips_through_the_cookie() {
        let resp = redirect_with("/x", false, "no such node <b>");
        let set = resp
            .headers()
            .get(header::SET_COOKIE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .split(';')
            .next()
            .unwrap_or_default()
            .to_owned();
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&set).unwrap_or(HeaderValue::from_static("")),
        );
        assert_eq!(read_flash(&h), (None, Some("no such node <b>".into())));
        assert_eq!(time_text(0), "1970-01-01 00:00:00Z");
    }
}
