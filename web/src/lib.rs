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

    /// Inline code the CSP (`script-src 'self'; style-src 'self'`) would block: event-handler attributes
    /// (`onclick=`...), `<script>` without `src`, `style=` attributes, `javascript:` URLs.
    fn inline_code(html: &str) -> Vec<String> {
        let lower = html.to_ascii_lowercase();
        let bytes = lower.as_bytes();
        let mut found = Vec::new();
        for (i, _) in lower.match_indices(" on") {
            let name: String = lower[i + 1..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            let after = i + 1 + name.len();
            if name.len() > 2 && bytes.get(after) == Some(&b'=') {
                found.push(format!("handler attribute {name}="));
            }
        }
        for (i, _) in lower.match_indices("<script") {
            let tag_end = lower[i..].find('>').map_or(lower.len(), |e| i + e);
            if !lower[i..tag_end].contains(" src=") {
                found.push("<script> without src".into());
            }
        }
        for needle in [" style=", "javascript:"] {
            if lower.contains(needle) {
                found.push(needle.trim().into());
            }
        }
        found
    }

    #[test]
    fn the_inline_code_check_finds_what_it_looks_for() {
        assert!(inline_code(
            r#"<a href="/x" class="b">x</a><script src="/static/app.js"></script>"#
        )
        .is_empty());
        for bad in [
            r#"<button onclick="go()">x</button>"#,
            r#"<body ONLOAD='x()'>"#,
            "<script>alert(1)</script>",
            r#"<p style="color: red">"#,
            r#"<a href="javascript:go()">"#,
        ] {
            assert!(!inline_code(bad).is_empty(), "{bad}");
        }
    }

    #[test]
    fn assets_are_found_by_path_and_have_no_inline_handlers() {
        assert!(asset("app.css").is_some());
        assert!(asset("../Cargo.toml").is_none());
        let js = asset("app.js").map(|a| a.body).unwrap_or_default();
        assert!(
            js.contains("EventSource"),
            "the live-update script uses SSE"
        );
        // Every template, as written (the pages the server renders are checked again in server/tests/web.rs).
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).expect("templates directory") {
            let path = entry.expect("directory entry").path();
            let text = std::fs::read_to_string(&path).expect("template text");
            assert_eq!(
                inline_code(&text),
                Vec::<String>::new(),
                "{}",
                path.display()
            );
            seen += 1;
        }
        assert!(
            seen >= 10,
            "only {seen} templates found in {}",
            dir.display()
        );
        // The script adds no handler attributes or inline styles to the page either.
        for needle in ["setattribute('on", "setattribute(\"on", "style.csstext"] {
            assert!(
                !js.to_ascii_lowercase()
                    .contains(&needle.to_ascii_lowercase()),
                "app.js uses {needle}"
            );
        }
    }
}
