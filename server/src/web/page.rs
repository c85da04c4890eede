//! The frame every page shares (`Chrome`: user, role, CSRF token, flash message, live-update counter) and
//! rendering a template as a page.

use askama::Template;
use axum::http::HeaderMap;
use axum::response::{Html, IntoResponse, Response};

use super::error::WebError;
use super::flash::read_flash;
use super::session::WebUser;

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
