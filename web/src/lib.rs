//! Dashboard assets for lbfleet-server: the askama templates live in `templates/` (the server derives them,
//! see `server/askama.toml`), the static files in `static/` are embedded here so the binary is self-contained.

/// One embedded static file.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    pub path: &'static str,
    pub content_type: &'static str,
    pub body: &'static str,
}

/// Every file served under `/static/`.
pub const ASSETS: &[Asset] = &[
    Asset {
        path: "app.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../static/app.css"),
    },
    Asset {
        path: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../static/app.js"),
    },
];

/// The asset at `path` (relative to `/static/`), if there is one.
pub fn asset(path: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.path == path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_are_found_by_path_and_have_no_inline_handlers() {
        assert!(asset("app.css").is_some());
        assert!(asset("../Cargo.toml").is_none());
        let js = asset("app.js").map(|a| a.body).unwrap_or_default();
        assert!(
            js.contains("EventSource"),
            "the live-update script uses SSE"
        );
    }
}
