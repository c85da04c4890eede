//! Dashboard templates and static assets for lbfleet-server. The full dashboard (askama pages, SSE) is being
//! built; until then the server shows this landing page, which points operators at the REST API.

/// The page served at `/` until the dashboard lands.
pub const LANDING_PAGE: &str = include_str!("../static/index.html");
