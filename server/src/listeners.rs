//! Which listener serves what. By default one listener serves everything. With `boot_listen` set, the boot
//! network gets a listener of its own that serves only what nodes need: HTTP boot (`/boot/`, `/images/`), the
//! agent API (`/api/v1/agent/`) and `/healthz`; the main listener (the management network) then serves the admin
//! API, the dashboard and `/metrics`, and none of the boot network's paths. Nothing on the boot network reaches a
//! login form or the admin API, and the enrollment endpoints are not exposed to the management network.
//!
//! The split is a filter in front of the one router, decided on the request path exactly as the router sees it
//! (no normalisation happens in between), so a path the filter refuses can never be routed elsewhere.

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// What one listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// The single listener of the default setup.
    Everything,
    /// The boot network's listener: HTTP boot and the agent API.
    Boot,
    /// The management network's listener when the boot network has its own: admin API and dashboard.
    Management,
}

/// Path prefixes of what nodes fetch: boot scripts and image files (iPXE), and the agent API.
const BOOT_PREFIXES: &[&str] = &["/boot/", "/images/", "/api/v1/agent/"];
/// Served on every listener (load-balancer and monitoring probes).
const EVERYWHERE: &[&str] = &["/healthz"];

/// True for the paths that belong to the boot network.
pub fn is_boot_path(path: &str) -> bool {
    BOOT_PREFIXES.iter().any(|p| path.starts_with(p))
}

impl Surface {
    pub fn serves(self, path: &str) -> bool {
        match self {
            Surface::Everything => true,
            _ if EVERYWHERE.contains(&path) => true,
            Surface::Boot => is_boot_path(path),
            Surface::Management => !is_boot_path(path),
        }
    }
}

/// Middleware: answers 404 for a path this listener does not serve, as if the route did not exist here.
pub async fn restrict(surface: Surface, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if surface.serves(path) {
        return next.run(req).await;
    }
    tracing::debug!(?surface, path, "path not served on this listener");
    (
        StatusCode::NOT_FOUND,
        axum::Json(serde_json::json!({"error": {"code": "not_found",
            "message": "not served on this listener"}})),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_and_management_listeners_split_the_paths() {
        let boot = [
            "/boot/52:54:00:12:34:56.ipxe",
            "/images/2026.11.1/vmlinuz",
            "/api/v1/agent/enroll",
            "/api/v1/agent/role",
            "/api/v1/agent/report",
        ];
        let management = [
            "/",
            "/login",
            "/images",
            "/nodes/lb-01",
            "/api/v1/login",
            "/api/v1/nodes",
            "/api/v1/agent",
            "/api/v1/agentx/enroll",
            "/metrics",
            "/live",
            "/static/app.js",
            "//boot/x.ipxe",
        ];
        for p in boot {
            assert!(Surface::Boot.serves(p), "{p} on the boot listener");
            assert!(
                !Surface::Management.serves(p),
                "{p} not on the management listener"
            );
            assert!(Surface::Everything.serves(p));
        }
        for p in management {
            assert!(Surface::Management.serves(p), "{p} on management");
            assert!(!Surface::Boot.serves(p), "{p} not on the boot listener");
            assert!(Surface::Everything.serves(p));
        }
        assert!(Surface::Boot.serves("/healthz") && Surface::Management.serves("/healthz"));
    }
}
