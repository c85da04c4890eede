//! HTTP boot: the per-MAC iPXE script and the image files it loads.
//!
//! `GET /boot/{mac}.ipxe` answers every MAC: an approved node gets its image, an unknown or unapproved one the
//! default (discovery) image, so its agent can enroll and show up as `discovered`; retired and rejected nodes
//! get nothing. A script carries a fresh one-time enrollment token (never logged) only when `boot::trust` says
//! the request comes from the MAC's own lease.
//! `GET /images/{version}/{file}` streams files from `<boot_dir>/images/<version>/` with Range support.
//!
//! While the database is unreachable both answer from the boot cache (`boot::cache`): a known MAC gets its
//! image with a boot credential instead of a token, anyone else nothing, and image files are served only when
//! they match the cached manifest's SHA-256.

use std::net::IpAddr;
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

use crate::config::BootConfig;
use crate::error::ApiError;
use crate::fleet::{boot_cache, rules, Actor, BootTarget, FleetError};
use crate::state::AppState;
use crate::store::images::ImageRow;
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
    let mut from_cache_now = state.boot_cache.as_ref().is_some_and(|c| !c.db_reachable());
    let (target, decision, token) = if from_cache_now {
        from_cache(&state, boot, &mac, peer.ip())?
    } else {
        match from_database(&state, boot, &mac, peer.ip()).await {
            Err(ApiError::Fleet(FleetError::Store(e)))
                if e.is_unreachable() && state.boot_cache.is_some() =>
            {
                if let Some(c) = &state.boot_cache {
                    c.set_db_reachable(false);
                }
                from_cache_now = true;
                from_cache(&state, boot, &mac, peer.ip())?
            }
            other => other?,
        }
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
    // From the cache the database is down: the registry cannot be read either, so this server alone.
    let (server, server_cert) = if from_cache_now {
        (agent_base.clone(), state.config.tls_pin.clone())
    } else {
        every_server(&state, &agent_base).await
    };
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

/// What a boot script is made of: the node, why it carries a credential or not, and the credential.
type ScriptParts = (BootTarget, trust::TokenDecision, Option<String>);

/// The boot script's contents from the database: the node (recorded as discovered if new), and a one-time
/// enrollment token when `boot::trust` allows it.
async fn from_database(
    state: &AppState,
    boot: &BootConfig,
    mac: &str,
    peer: IpAddr,
) -> Result<ScriptParts, ApiError> {
    let target = match state.fleet.boot_target(mac).await {
        Ok(t) => t,
        Err(FleetError::Forbidden(m)) => {
            tracing::warn!(mac, reason = m, "boot script refused");
            return Err(ApiError::Forbidden(m));
        }
        Err(e) => return Err(e.into()),
    };
    if target.image.is_none() {
        return Ok((target, trust::TokenDecision::NoLease, None));
    }
    let policy = trust::TrustPolicy {
        allow_without_lease: boot.allow_token_without_lease,
        check_link_address: boot.check_link_address,
    };
    let decision =
        trust::token_decision(&state.fleet, policy, &trust::KernelNeighbours, mac, peer).await?;
    let decision = if decision.carries_token()
        && boot.require_armed_enrollment
        && !state
            .fleet
            .boot_expected(target.node_id, &peer.to_string())
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
    Ok((target, decision, token))
}

/// The boot script's contents while the database is unreachable, from the boot cache: only a known node gets
/// one, and it carries a boot credential (read-only until exchanged, `fleet::boot_cache`) only when the request
/// comes from an address lbfleet's DHCP gave that MAC and the neighbour entry names the MAC (`boot::trust`).
/// Nothing is recorded.
fn from_cache(
    state: &AppState,
    boot: &BootConfig,
    mac: &str,
    peer: IpAddr,
) -> Result<ScriptParts, ApiError> {
    let unavailable = |message: String| ApiError::Request {
        status: StatusCode::SERVICE_UNAVAILABLE,
        message,
    };
    let cache = state.boot_cache.as_ref().ok_or_else(|| {
        unavailable("database unreachable and no boot cache configured (boot.cache_dir)".into())
    })?;
    let (Some(node), Some(key)) = (cache.node(mac), cache.boot_key()) else {
        tracing::warn!(mac, client = %peer, "database unreachable: boot script refused, MAC not in the boot cache");
        return Err(unavailable(format!(
            "database unreachable and {mac} is not a known node in the boot cache; retry later"
        )));
    };
    let v4 = match peer {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(a) => a.to_ipv4_mapped(),
    };
    let policy = trust::TrustPolicy {
        allow_without_lease: boot.allow_token_without_lease,
        check_link_address: boot.check_link_address,
    };
    let decision = match v4 {
        _ if boot.require_armed_enrollment => trust::TokenDecision::NotExpected,
        Some(_) if policy.allow_without_lease => trust::TokenDecision::CheckDisabled,
        Some(a) if node.holds(a) => trust::link_decision(policy, &trust::KernelNeighbours, mac, a),
        _ => trust::TokenDecision::NoLease,
    };
    let token = match (decision.carries_token(), v4) {
        (true, Some(a)) => {
            let ttl = i64::try_from(cache.credential_ttl.as_millis()).unwrap_or(i64::MAX);
            boot_cache::mint(&key, mac, a, crate::store::now_ms().saturating_add(ttl))
        }
        _ => None,
    };
    tracing::warn!(mac, node = node.name, client = %peer, credential = token.is_some(),
        reason = decision.as_str(), "database unreachable: boot script from the boot cache");
    let target = BootTarget {
        node_id: node.node_id,
        name: node.name.clone(),
        state: node.state,
        image: node.image.as_ref().map(|i| ImageRow {
            name: i.name.clone(),
            kernel: i.kernel.clone(),
            initrd: i.initrd.clone(),
            cmdline: i.cmdline.clone(),
            is_default: false,
            created_at: 0,
            kernel_version: None,
            agent_version: None,
            kernel_sha256: Some(i.kernel_sha256.clone()),
            initrd_sha256: Some(i.initrd_sha256.clone()),
        }),
    };
    Ok((target, decision, token))
}

/// `lbfleet.server=` and `lbfleet.server_cert=` for a boot script: this server first (as the node reached it),
/// then every other live server in the registry, each with its pin (`none` without TLS); no pins at all when
/// no server has one. With one live server this is the single form older images read. A registry that cannot
/// be read leaves this server alone in the list (the node can still boot and enroll here).
async fn every_server(state: &AppState, agent_base: &str) -> (String, Option<String>) {
    let mut urls = vec![agent_base.to_owned()];
    let mut pins = vec![state.config.tls_pin.clone()];
    match state.fleet.live_servers(state.liveness()).await {
        Ok(live) => {
            for sv in live {
                let Some(url) = sv.boot_url else { continue };
                if state.config.server_id.as_deref() == Some(sv.id.as_str()) || urls.contains(&url)
                {
                    continue;
                }
                urls.push(url);
                pins.push(sv.tls_pin);
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "boot script: cannot read the server registry; naming this server only")
        }
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
    if let Some(cache) = state.boot_cache.as_ref().filter(|c| !c.db_reachable()) {
        // Booting from the cache: serve only files the cached manifest vouches for.
        let expected = cache
            .image(&version)
            .and_then(|i| i.sha256_of(&file).map(str::to_owned));
        let verified = match expected {
            Some(sha) => cache.verify_file(&path, &sha).await,
            None => Err(format!("{version}/{file} is not in the boot cache")),
        };
        if let Err(reason) = verified {
            tracing::error!(
                image = version,
                file,
                reason,
                "database unreachable: image file refused"
            );
            return Err(ApiError::Request {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: format!(
                    "database unreachable and {version}/{file} cannot be verified against the boot cache"
                ),
            });
        }
    }
    match ServeFile::new(path).oneshot(req).await {
        Ok(resp) => Ok(resp.map(Body::new)),
        Err(never) => match never {},
    }
}
