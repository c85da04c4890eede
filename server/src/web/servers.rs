//! The control-plane page (`/servers`): every lbfleet-server on this database, its version and addresses, its
//! last heartbeat (its last successful write: whether it reaches the database), the networks its DHCP answers,
//! and, for an admin, removing the entry of a server that will not come back (`Fleet::remove_server`, the same
//! rule and audit row as `DELETE /api/v1/servers/{id}`).

use askama::Template;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use lbfleet_proto::UserRole;
use serde::Deserialize;

use super::error::{fleet_error_text, WebError};
use super::flash::redirect_with;
use super::format::{ago_text, time_text};
use super::page::{render, Chrome};
use super::session::{Posted, WebUser};
use crate::fleet::servers::ServerState;
use crate::fleet::FleetError;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/servers", get(page))
        .route("/servers/{id}/remove", post(remove))
}

#[derive(Debug, Clone)]
pub struct ServerRowView {
    pub id: String,
    pub name: String,
    pub this: bool,
    pub version: String,
    pub state: &'static str,
    pub badge: &'static str,
    pub management_url: String,
    pub boot_url: String,
    pub tls_pin: String,
    pub dhcp_networks: String,
    pub started: String,
    pub heartbeat: String,
    pub heartbeat_at: String,
    pub removable: bool,
}

#[derive(Template)]
#[template(path = "servers.html")]
struct ServersPage {
    p: Chrome,
    servers: Vec<ServerRowView>,
    up: usize,
    misses: u32,
}

pub async fn page(
    State(s): State<AppState>,
    user: WebUser,
    headers: HeaderMap,
) -> Result<Response, WebError> {
    let me = s.config.server_id.clone();
    let servers: Vec<ServerRowView> = s
        .fleet
        .servers(s.liveness())
        .await?
        .into_iter()
        .map(|v| ServerRowView {
            this: me.as_deref() == Some(v.id.as_str()),
            state: v.state.as_str(),
            badge: match v.state {
                ServerState::Up => "ok",
                ServerState::Down => "crit",
                ServerState::Stopped => "info",
            },
            removable: v.state != ServerState::Up,
            management_url: v.management_url,
            boot_url: v.boot_url.unwrap_or_else(|| "-".into()),
            tls_pin: v.tls_pin.unwrap_or_else(|| "none (plain HTTP)".into()),
            dhcp_networks: if v.dhcp_networks.is_empty() {
                "-".into()
            } else {
                v.dhcp_networks.join(", ")
            },
            started: time_text(v.started_at),
            heartbeat: ago_text(Some(v.heartbeat_at)),
            heartbeat_at: time_text(v.heartbeat_at),
            id: v.id,
            name: v.name,
            version: v.version,
        })
        .collect();
    render(&ServersPage {
        p: Chrome::new(&user, &headers, "servers", "Control plane".into()),
        up: servers.iter().filter(|r| r.state == "up").count(),
        misses: s.config.heartbeat_misses,
        servers,
    })
}

#[derive(Deserialize)]
pub struct Empty {}

/// `POST /servers/{id}/remove` (admin): removes the entry of a server that is down or stopped.
pub async fn remove(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Posted { user, .. }: Posted<Empty>,
) -> Result<Response, WebError> {
    user.require(UserRole::Admin)?;
    match s
        .fleet
        .remove_server(&user.actor(), &id, s.liveness())
        .await
    {
        Ok(()) => {
            tracing::info!(
                server = id,
                user = user.name,
                "server entry removed from the dashboard"
            );
            Ok(redirect_with("/servers", true, "server entry removed"))
        }
        Err(FleetError::Store(e)) if !e.is_constraint() => Err(FleetError::Store(e).into()),
        Err(e) => Ok(redirect_with("/servers", false, &fleet_error_text(&e).1)),
    }
}
