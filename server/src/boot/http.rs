//! HTTP boot: the per-MAC iPXE script and the image files it loads.
//!
//! `GET /boot/{mac}.ipxe` answers every MAC: an approved node gets its image, an unknown or unapproved one the
//! default (discovery) image, so its agent can enroll and show up as `discovered`; retired and rejected nodes
//! get nothing. A script carries a fresh one-time enrollment token (never logged) only when `boot::trust` says
//! the request comes from the MAC's own lease.
//! `GET /images/{version}/{file}` streams files from `<boot_dir>/images/<version>/` with Range support.

use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::extract::{ConnectInfo, Path as UrlPath, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use lbfleet_proto::boot::{BadMac, KernelArgs};
use tower::ServiceExt;
use tower_http::services::ServeFile;

use crate::error::ApiError;
use crate::fleet::{rules, Actor, FleetError};
use crate::state::AppState;
use crate::store::nodes::NodeKey;

use super::trust;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/boot/{script}", get(script))
        .route("/images/{version}/{file}", get(image_file))
}

fn boot_disabled() -> ApiError {
    ApiError::Request {
        status: StatusCode::NOT_FOUND,
        message: "boot services are not configured ([boot])".into(),
    }
}

/// The server's URLs as nodes should use them: (plain HTTP for what iPXE fetches, the agent API's). Without TLS
/// both are the same; with TLS the agent's is `https://` on the same port (the port speaks both).
fn server_urls(state: &AppState, headers: &HeaderMap) -> Result<(String, String), ApiError> {
    let base = server_url(state, headers)?;
    if state.config.tls_pin.is_none() {
        return Ok((base.clone(), base));
    }
    let rest = base
        .strip_prefix("https://")
        .or_else(|| base.strip_prefix("http://"))
        .unwrap_or(&base);
    Ok((format!("http://{rest}"), format!("https://{rest}")))
}

/// The server's URL as nodes should use it: `public_url` if set, else the Host the client asked for.
fn server_url(state: &AppState, headers: &HeaderMap) -> Result<String, ApiError> {
    if let Some(u) = &state.config.public_url {
        return Ok(u.trim_end_matches('/').to_owned());
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".:-[]".contains(&b))
        })
        .ok_or_else(|| ApiError::bad_request("no usable Host header; set public_url"))?;
    Ok(format!("http://{host}"))
}

fn ipxe(lines: &[String]) -> Response {
    let mut body = String::from("#!ipxe\n");
    for l in lines {
        body.push_str(l);
        body.push('\n');
    }
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

async fn script(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    UrlPath(script): UrlPath<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let boot = state.config.boot.as_ref().ok_or_else(boot_disabled)?;
    let mac_text = script
        .strip_suffix(".ipxe")
        .ok_or_else(|| ApiError::bad_request("expected /boot/MAC.ipxe"))?;
    let mac = rules::mac(mac_text)?;
    if !state.boot_limiter.allow(&mac) {
        tracing::warn!(mac, "boot script refused: too many requests");
        return Err(ApiError::Request {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: "too many boot requests for this MAC; retry in a minute".into(),
        });
    }
    let target = match state.fleet.boot_target(&mac).await {
        Ok(t) => t,
        Err(FleetError::Forbidden(m)) => {
            tracing::warn!(mac, reason = m, "boot script refused");
            return Err(ApiError::Forbidden(m));
        }
        Err(e) => return Err(e.into()),
    };
    let (base, agent_base) = server_urls(&state, &headers)?;
    let Some(image) = target.image else {
        // Nothing to boot yet: say so on the console and try again in a minute, instead of falling through to
        // the next boot device.
        tracing::warn!(
            mac,
            node = target.name,
            "no image for node and no default image"
        );
        return Ok(ipxe(&[
            format!(
                "echo lbfleet: no boot image for {} ({}); retrying in 60 s",
                target.name, target.state
            ),
            "sleep 60".into(),
            format!("chain --autofree {base}/boot/{mac}.ipxe"),
        ]));
    };
    let policy = trust::TrustPolicy {
        allow_without_lease: boot.allow_token_without_lease,
        check_link_address: boot.check_link_address,
    };
    let decision = trust::token_decision(
        &state.fleet,
        policy,
        &trust::KernelNeighbours,
        &mac,
        peer.ip(),
    )
    .await?;
    let decision = if decision.carries_token()
        && boot.require_armed_enrollment
        && !state
            .fleet
            .boot_expected(target.node_id, &peer.ip().to_string())
            .await?
    {
        trust::TokenDecision::NotExpected
    } else {
        decision
    };
    let token = if decision.carries_token() {
        let token = state
            .fleet
            .issue_enrollment_token(&Actor::system(), &NodeKey::Id(target.node_id))
            .await?;
        Some(token.token)
    } else {
        None
    };
    let (server, server_cert) = every_server(&state, &agent_base).await;
    tracing::info!(mac, node = target.name, state = %target.state, image = image.name, client = %peer.ip(),
        token = decision.carries_token(), reason = decision.as_str(), "boot script served");
    let files = format!("{base}/images/{}", image.name);
    let extra = if image.cmdline.is_empty() {
        String::new()
    } else {
        format!(" {}", image.cmdline)
    };
    let args = KernelArgs {
        // The MAC the script was asked for is the one whose DHCP lease chained here: the NIC that booted.
        bootif: Some(
            mac.parse()
                .map_err(|e: BadMac| ApiError::bad_request(e.to_string()))?,
        ),
        server: Some(server),
        server_cert,
        token,
        image: Some(image.name.clone()),
        console_shell: false,
    };
    let cmdline = args.to_cmdline().map_err(|e| {
        tracing::error!(mac, error = %e, "boot script: kernel arguments refused (check public_url)");
        ApiError::Request {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: format!("cannot write the kernel command line: {e}"),
        }
    })?;
    Ok(ipxe(&[
        format!(
            "# lbfleet: {} ({}), image {}",
            target.name, target.state, image.name
        ),
        // `initrd=NAME` is for the kernel's EFI stub under iPXE on UEFI; the kernel ignores it otherwise.
        format!(
            "kernel {files}/{} initrd={} {cmdline}{extra}",
            image.kernel, image.initrd
        ),
        format!("initrd {files}/{}", image.initrd),
        "boot".into(),
    ]))
}

/// `lbfleet.server=` and `lbfleet.server_cert=` for a boot script: this server first (as the node reached it),
/// then every other live server in the registry, each with its pin (`none` without TLS); no pins at all when
/// no server has one. With one live server this is the single form older images read. A registry that cannot
/// be read leaves this server alone in the list (the node can still boot and enroll here).
async fn every_server(state: &AppState, agent_base: &str) -> (String, Option<String>) {
    let mut urls = vec![agent_base.to_owned()];
    let mut pins = vec![state.config.tls_pin.clone()];
    match state
        .fleet
        .live_servers(state.liveness())
        .await
    {
        Ok(live) => {
            for sv in live {
                let Some(url) = sv.boot_url else { continue };
                if state.config.server_id.as_deref() == Some(sv.id.as_str()) || urls.contains(&url) {
                    continue;
                }
                urls.push(url);
                pins.push(sv.tls_pin);
            }
        }
        Err(e) => tracing::warn!(error = %e, "boot script: cannot read the server registry; naming this server only"),
    }
    let pins = pins.iter().any(Option::is_some).then(|| {
        pins.iter()
            .map(|p| p.as_deref().unwrap_or(lbfleet_proto::boot::NO_PIN))
            .collect::<Vec<_>>()
            .join(",")
    });
    (urls.join(","), pins)
}

/// Resolves `<boot_dir>/images/<version>/<file>`, refusing anything that leaves that directory.
fn image_path(boot_dir: &Path, version: &str, file: &str) -> Result<PathBuf, ApiError> {
    rules::image_name(version).map_err(|_| ApiError::Forbidden("bad image name".into()))?;
    rules::image_file("file", file).map_err(|_| ApiError::Forbidden("bad file name".into()))?;
    let not_found = || {
        ApiError::Fleet(FleetError::NotFound(format!(
            "no file {file} in image {version}"
        )))
    };
    let dir = boot_dir
        .join("images")
        .join(version)
        .canonicalize()
        .map_err(|_| not_found())?;
    let root = boot_dir.canonicalize().map_err(|_| not_found())?;
    let full = dir.join(file).canonicalize().map_err(|_| not_found())?;
    if !full.starts_with(&root) || !full.is_file() {
        return Err(ApiError::Forbidden(
            "file is outside the image directory".into(),
        ));
    }
    Ok(full)
}

async fn image_file(
    State(state): State<AppState>,
    UrlPath((version, file)): UrlPath<(String, String)>,
    req: Request,
) -> Result<Response, ApiError> {
    let boot = state.config.boot.as_ref().ok_or_else(boot_disabled)?;
    let path = image_path(&boot.boot_dir, &version, &file)?;
    match ServeFile::new(path).oneshot(req).await {
        Ok(resp) => Ok(resp.map(Body::new)),
        Err(never) => match never {},
    }
}
