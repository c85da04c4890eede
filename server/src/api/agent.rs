//! The agent API: enrollment, role long-poll and reports. Authenticated by per-node credentials, or, for a node
//! booted while the database was unreachable, by its boot credential (`fleet::boot_cache`), which reads the
//! node's last role from the boot cache and long-polls it, and changes nothing.

use std::time::Duration;

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use lbfleet_proto::delta::REPORT_BASE_UNKNOWN;
use lbfleet_proto::{AgentReport, EnrollRequest, HeartbeatAnswer, ReportAck, ReportDelta};
use serde::Deserialize;

use crate::auth::AgentNode;
use crate::error::{ApiError, DATABASE_UNREACHABLE};
use crate::extract::{ApiJson, ApiQuery};
use crate::fleet::boot_cache::{self, BootClaim, BOOT_CREDENTIAL_PREFIX};
use crate::fleet::DeltaOutcome;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/enroll", post(enroll))
        .route("/role", get(role))
        .route("/report", post(report))
        .route("/report/delta", post(report_delta))
        .route("/heartbeat", post(heartbeat))
}

/// `POST /api/v1/agent/heartbeat` (no body): "alive". Kept in memory and written with the others once per
/// interval (`fleet::liveness`), the node credential checked against the database at most every 10 s; the
/// answer says how often to beat. A boot credential's beat is answered and not recorded: it changes nothing,
/// like its reports.
async fn heartbeat(State(s): State<AppState>, mut parts: Parts) -> Result<Response, ApiError> {
    match crate::auth::principal::bearer(&parts.headers) {
        Some(token) if !token.starts_with(BOOT_CREDENTIAL_PREFIX) => {
            if s.fleet.heartbeat_with(token).await?.is_none() {
                return Err(ApiError::Unauthorized(
                    "node credential is invalid or revoked; enroll again".into(),
                ));
            }
        }
        // A boot credential, or none: the usual checks and refusals.
        _ => {
            AgentCaller::from_request_parts(&mut parts, &s).await?;
        }
    }
    let interval_ms = u64::try_from(s.fleet.liveness().interval().as_millis()).unwrap_or(u64::MAX);
    Ok(Json(HeartbeatAnswer { interval_ms }).into_response())
}

async fn enroll(
    State(s): State<AppState>,
    ApiJson(req): ApiJson<EnrollRequest>,
) -> Result<Response, ApiError> {
    Ok(Json(s.fleet.enroll(&req).await?).into_response())
}

/// Who calls: an enrolled node (its credential checked in the database), or a node holding a boot credential
/// (checked against the fleet's boot key in the boot cache, no database involved).
#[derive(Debug)]
enum AgentCaller {
    /// `epoch`: the credential revocation epoch taken before the check (`fleet::credentials`): a waiting role
    /// poll checks its credential again when its node's credentials are revoked after it.
    Node {
        id: i64,
        epoch: u64,
    },
    Boot {
        node_id: i64,
        claim: BootClaim,
    },
}

impl FromRequestParts<AppState> for AgentCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(token) = crate::auth::principal::bearer(&parts.headers)
            .filter(|t| t.starts_with(BOOT_CREDENTIAL_PREFIX))
        else {
            let epoch = state.fleet.node_credentials().epoch();
            return Ok(AgentCaller::Node {
                id: AgentNode::from_request_parts(parts, state).await?.0,
                epoch,
            });
        };
        let refused = |why: String| ApiError::Unauthorized(why);
        let cache = state.boot_cache.as_ref().ok_or_else(|| {
            refused("this server keeps no boot cache; boot credentials are not accepted".into())
        })?;
        let key = cache.boot_key().ok_or_else(|| {
            refused("the boot cache is empty; boot credentials are not accepted".into())
        })?;
        let claim = boot_cache::verify(&key, token, crate::store::now_ms())
            .map_err(|e| refused(format!("{e}; reboot the node or enroll it again")))?;
        // Bound to the address its script was fetched from: a copy used from elsewhere reads nothing.
        let peer = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| match c.0.ip() {
                std::net::IpAddr::V6(a) => a
                    .to_ipv4_mapped()
                    .map_or(std::net::IpAddr::V6(a), std::net::IpAddr::V4),
                v4 => v4,
            });
        if peer.is_some_and(|p| p != std::net::IpAddr::V4(claim.address)) {
            tracing::warn!(mac = claim.mac, client = ?peer, "boot credential presented from another address");
            return Err(refused(
                "this boot credential belongs to another address".into(),
            ));
        }
        let node = cache.node(&claim.mac).ok_or_else(|| {
            refused(format!(
                "{} is not a known node in the boot cache",
                claim.mac
            ))
        })?;
        Ok(AgentCaller::Boot {
            node_id: node.node_id,
            claim,
        })
    }
}

impl AgentCaller {
    fn node_id(&self) -> i64 {
        match self {
            AgentCaller::Node { id, .. } | AgentCaller::Boot { node_id: id, .. } => *id,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleQuery {
    /// The generation the agent already has; 0 (default) returns the current document at once.
    #[serde(default)]
    after: u64,
    /// Longest wait in seconds (capped by the server's long-poll timeout).
    wait: Option<u64>,
}

/// `GET /api/v1/agent/role?after=GEN`: 200 with a newer role document as soon as one exists,
/// 204 when none appeared within the wait.
async fn role(
    State(s): State<AppState>,
    headers: axum::http::HeaderMap,
    caller: AgentCaller,
    ApiQuery(q): ApiQuery<RoleQuery>,
) -> Result<Response, ApiError> {
    let node = caller.node_id();
    // A few waiting polls per credential at most, so one credential cannot hold many connections.
    let Some(_slot) = s.streams.role_polls.try_take(node) else {
        tracing::info!(
            node,
            "role long-poll refused: too many waiting for this node"
        );
        return Err(ApiError::Request {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: "too many role long-polls for this node".into(),
        });
    };
    let max = s.config.long_poll_timeout;
    let wait = q.wait.map(Duration::from_secs).map_or(max, |w| w.min(max));
    let epoch = match &caller {
        AgentCaller::Boot { claim, .. } => {
            return role_from_cache(&s, &claim.mac, q.after, wait).await
        }
        AgentCaller::Node { epoch, .. } => *epoch,
    };
    match wait_while_credential_holds(&s, &headers, node, epoch, q.after, wait).await? {
        Some(doc) => Ok(role_response(&doc)),
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

/// The role long-poll of a node credential, ended with 401 when the credential is revoked while it waits: a
/// revocation of this node's credentials (here at once, from a peer when its notice arrives) wakes the poll,
/// which checks its credential again (`fleet::credentials`). `epoch` was taken before the credential was first
/// checked, so a revocation between that check and this wait is not missed.
async fn wait_while_credential_holds(
    s: &AppState,
    headers: &axum::http::HeaderMap,
    node: i64,
    mut epoch: u64,
    after: u64,
    wait: Duration,
) -> Result<Option<crate::fleet::RoleWire>, ApiError> {
    let credentials = s.fleet.node_credentials();
    let mut revocations = credentials.subscribe();
    let doc = s
        .fleet
        .wait_role_wire(node, after, wait, s.shutdown.clone());
    tokio::pin!(doc);
    loop {
        if credentials.revoked_since(node, epoch) {
            epoch = credentials.epoch();
            let still = match crate::auth::principal::bearer(headers) {
                Some(token) => s.fleet.authenticate_node(token).await? == Some(node),
                None => false,
            };
            if !still {
                tracing::info!(
                    node,
                    "role long-poll ended: its node credential was revoked"
                );
                return Err(ApiError::Unauthorized(
                    "node credential is invalid or revoked; enroll again".into(),
                ));
            }
        }
        tokio::select! {
            doc = &mut doc => return Ok(doc?),
            changed = revocations.changed() => {
                if changed.is_err() {
                    // The fleet is gone (cannot happen while `s` holds it): wait for the document alone.
                    return Ok(doc.await?);
                }
            }
        }
    }
}

/// A role document already serialised (shared with every poller of its generation), sent as it is.
fn role_response(doc: &crate::fleet::RoleWire) -> Response {
    let len = doc.len();
    let chunks = doc.chunks().map(Ok::<_, std::convert::Infallible>);
    (
        [
            (
                axum::http::header::CONTENT_TYPE,
                axum::http::HeaderValue::from_static("application/json"),
            ),
            (
                axum::http::header::CONTENT_LENGTH,
                axum::http::HeaderValue::from(len),
            ),
        ],
        axum::body::Body::from_stream(futures::stream::iter(chunks)),
    )
        .into_response()
}

/// The role long-poll of a boot credential: the node's role document as the boot cache holds it (the last one
/// the database gave), waking when the cache changes (the database is back and the role changed).
async fn role_from_cache(
    s: &AppState,
    mac: &str,
    after: u64,
    wait: Duration,
) -> Result<Response, ApiError> {
    let Some(cache) = &s.boot_cache else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    let deadline = tokio::time::Instant::now() + wait;
    let mut changed = cache.subscribe();
    let mut shutdown = s.shutdown.clone();
    loop {
        let node = cache.node(mac).ok_or_else(|| {
            ApiError::Forbidden(format!("{mac} is no longer a known node in the boot cache"))
        })?;
        if let Some(doc) = node.role.filter(|d| d.generation > after) {
            tracing::info!(
                node = node.name,
                generation = doc.generation,
                "role served from the boot cache"
            );
            return Ok(Json(doc).into_response());
        }
        tokio::select! {
            c = changed.changed() => if c.is_err() { return Ok(StatusCode::NO_CONTENT.into_response()) },
            _ = tokio::time::sleep_until(deadline) => return Ok(StatusCode::NO_CONTENT.into_response()),
            _ = shutdown.wait_for(|s| *s) => return Ok(StatusCode::NO_CONTENT.into_response()),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportQuery {
    /// `1` from an agent that sends deltas: the answer is 200 with the report's sequence number (`ReportAck`)
    /// instead of 204 (what older agents get, and ignore).
    #[serde(default)]
    deltas: u8,
}

/// `POST /api/v1/agent/report[?deltas=1]`: a full report.
async fn report(
    State(s): State<AppState>,
    caller: AgentCaller,
    ApiQuery(q): ApiQuery<ReportQuery>,
    ApiJson(r): ApiJson<AgentReport>,
) -> Result<Response, ApiError> {
    let node = match caller {
        AgentCaller::Node { id, .. } => id,
        AgentCaller::Boot { .. } => return Ok(boot_report_refused(&s)),
    };
    // Refused whole (422, naming each bad field) when a field breaks the report bounds; nothing is stored.
    let seq = s.fleet.report(node, &r).await?;
    if q.deltas == 0 {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    Ok(Json(ReportAck { seq }).into_response())
}

/// `POST /api/v1/agent/report/delta`: what changed since the report numbered `base`. 200 with the merged
/// report's number; 409 `report_base_unknown` (nothing merged) when this server's database holds another
/// report: the agent sends a full one.
async fn report_delta(
    State(s): State<AppState>,
    caller: AgentCaller,
    ApiJson(d): ApiJson<ReportDelta>,
) -> Result<Response, ApiError> {
    let node = match caller {
        AgentCaller::Node { id, .. } => id,
        AgentCaller::Boot { .. } => return Ok(boot_report_refused(&s)),
    };
    match s.fleet.report_delta(node, &d).await? {
        DeltaOutcome::Applied { seq } => Ok(Json(ReportAck { seq }).into_response()),
        DeltaOutcome::BaseUnknown { held } => Ok((
            StatusCode::CONFLICT,
            Json(serde_json::json!({"error": {"code": REPORT_BASE_UNKNOWN,
                "message": format!("this server holds report {held}, not {}: send a full report", d.base)}})),
        )
            .into_response()),
    }
}

/// A boot credential changes nothing: its reports are dropped. 503 while the database is down (the agent
/// keeps its role and retries with the latest report), 403 once it is back (enroll first).
fn boot_report_refused(s: &AppState) -> Response {
    let down = s.boot_cache.as_ref().is_some_and(|c| !c.db_reachable());
    let (status, message) = if down {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "database unreachable: the report was dropped; keep serving your role",
        )
    } else {
        (
            StatusCode::FORBIDDEN,
            "a boot credential cannot report; exchange it for a node credential (POST /api/v1/agent/enroll)",
        )
    };
    (
        status,
        Json(serde_json::json!({"error": {"code": if down { DATABASE_UNREACHABLE } else { "forbidden" }, "message": message}})),
    )
        .into_response()
}
