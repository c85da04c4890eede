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

/// Who answers DHCP on one boot network (`dhcp_leaders`).
#[derive(Debug, Clone)]
pub struct DhcpNetworkView {
    pub network: String,
    /// The answering server's name, or its boot address when no registered server has it; "nobody" after a
    /// graceful release.
    pub answered_by: String,
    pub address: String,
    pub renewed: String,
    pub renewed_at: String,
    /// Renewed within its TTL (as this server's clock says; for people, not decisions).
    pub current: bool,
    pub epoch: i64,
}

#[derive(Template)]
#[template(path = "servers.html")]
struct ServersPage {
    p: Chrome,
    servers: Vec<ServerRowView>,
    dhcp: Vec<DhcpNetworkView>,
    up: usize,
    misses: u32,
}

pub async fn page(
    State(s): State<AppState>,
    user: WebUser,
    headers: HeaderMap,
) -> Result<Response, WebError> {
    let me = s.config.server_id.clone();
    let registered = s.fleet.servers(s.liveness()).await?;
    let now = crate::store::now_ms();
    let dhcp = s
        .fleet
        .dhcp_leaders()
        .await
        .map_err(crate::fleet::FleetError::from)?
        .into_iter()
        .map(|l| {
            let holder = (!l.holder.is_empty()).then_some(l.holder_address.as_str());
            let name = holder.and_then(|a| {
                registered
                    .iter()
                    .find(|v| boot_host(v.boot_url.as_deref()) == Some(a))
                    .map(|v| v.name.clone())
            });
            DhcpNetworkView {
                answered_by: match (holder, name) {
                    (None, _) => "nobody (released)".into(),
                    (Some(_), Some(n)) => n,
                    (Some(a), None) => a.to_owned(),
                },
                address: l.holder_address.clone(),
                renewed: ago_text(Some(l.renewed_at)),
                renewed_at: time_text(l.renewed_at),
                current: holder.is_some() && now.saturating_sub(l.renewed_at) <= l.ttl_ms,
                epoch: l.epoch,
                network: l.network,
            }
        })
        .collect();
    let servers: Vec<ServerRowView> = registered
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
        dhcp,
    })
}

/// The host of a boot URL (`http://198.18.0.1:8080` -> `198.18.0.1`).
fn boot_host(url: Option<&str>) -> Option<&str> {
    let rest = url?.split_once("://")?.1;
    let host = rest.split(['/', ':']).next()?;
    (!host.is_empty()).then_some(host)
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
