//! One-time messages after a form (a short-lived cookie read by the next page), and where a form may send the
//! browser back to (local paths only).

use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::response::{IntoResponse, Redirect, Response};

use crate::auth::cookie;

const FLASH_COOKIE: &str = "lbfleet_flash";

/// A flash message is shown once: any full page that read it also clears it.
pub(super) async fn clear_flash(req: Request, next: axum::middleware::Next) -> Response {
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
pub(super) fn is_live_refresh(headers: &HeaderMap) -> bool {
    headers
        .get("x-lbfleet-live")
        .is_some_and(|v| v.as_bytes() == b"1")
}

pub(super) fn read_flash(headers: &HeaderMap) -> (Option<String>, Option<String>) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
