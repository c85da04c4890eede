//! Form posts. Each checks the CSRF token (`Posted`), the role, then calls the same `Fleet` method as the REST
//! API, so rules, audit rows and notifications stay in one place. Success and refusals come back as a 303 to the
//! page with a one-time message; the cluster forms re-render with the message next to the field.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use lbfleet_proto::{
    CheckKind, ClusterSpec, HealthCheck, RealServerSpec, Role, ServiceSpec, UserRole,
};
use serde::Deserialize;

use super::pages::{cluster_page, clusters_page, login_page, ClusterForm, ServiceForm};
use super::{fleet_error_text, redirect_with, Posted, WebError, LOGIN_CSRF_COOKIE};
use crate::api::auth::{self, cookie};
use crate::api::{ApiError, AppState};
use crate::fleet::{
    node_key, Actor, FleetError, Precondition, PutOutcome, RealServerChange, RealServerRef,
    ServiceRef,
};
use crate::secrets;

/// The outcome of a form: back to `back` with a message; refusals by the fleet's rules are messages too.
fn done(back: &str, result: Result<String, FleetError>) -> Result<Response, WebError> {
    match result {
        Ok(msg) => Ok(redirect_with(back, true, &msg)),
        Err(FleetError::Store(e)) if !e.is_constraint() => Err(FleetError::Store(e).into()),
        Err(e) => Ok(redirect_with(back, false, &fleet_error_text(&e).1)),
    }
}

/// Read-modify-write of a cluster's spec that never overwrites a concurrent change: the write carries the
/// revision the edit was computed from, and when someone changed the cluster in between, `edit` is applied again
/// to the fresh spec (at most 3 more times). `edit` refuses with a message for the operator (`Ok(Err(..))`).
async fn edit_spec<T>(
    s: &AppState,
    actor: &Actor,
    name: &str,
    mut edit: impl FnMut(&mut ClusterSpec) -> Result<T, String>,
) -> Result<Result<(T, PutOutcome), String>, FleetError> {
    let mut retries = 0;
    loop {
        let current = s.fleet.get_cluster(name).await?;
        let mut spec = current.spec;
        let out = match edit(&mut spec) {
            Ok(v) => v,
            Err(m) => return Ok(Err(m)),
        };
        match s
            .fleet
            .put_cluster_if(actor, name, &spec, Precondition::Revision(current.revision))
            .await
        {
            Ok((outcome, _)) => return Ok(Ok((out, outcome))),
            Err(FleetError::PreconditionFailed(m)) if retries < 3 => {
                retries += 1;
                tracing::debug!(
                    cluster = name,
                    retries,
                    reason = m,
                    "cluster changed meanwhile; edit re-applied"
                );
            }
            Err(e) => return Err(e),
        }
    }
}

fn default_back() -> String {
    "/".into()
}

// ----- login / logout -----------------------------------------------------------------------------------------

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    next: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
}

pub async fn login(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    axum::Form(f): axum::Form<LoginForm>,
) -> Result<Response, WebError> {
    let expected = cookie(&headers, LOGIN_CSRF_COOKIE).unwrap_or("");
    if f.csrf.is_empty() || !secrets::constant_time_eq(&f.csrf, expected) {
        return Err(WebError::Forbidden(
            "the login form's security token is missing or out of date; reload the page".into(),
        ));
    }
    let user = match auth::check_password(&s, peer.ip(), &f.username, f.password).await {
        Ok(u) => u,
        Err(ApiError::TooManyRequests { retry_after_s }) => {
            return login_page(
                &f.next,
                &f.username,
                Some(format!(
                    "Too many failed logins; try again in {retry_after_s} s."
                )),
                StatusCode::TOO_MANY_REQUESTS,
            );
        }
        Err(ApiError::Unauthorized(_)) => {
            return login_page(
                &f.next,
                &f.username,
                Some("Wrong user name or password.".into()),
                StatusCode::UNAUTHORIZED,
            );
        }
        Err(e) => return Err(e.into()),
    };
    let session = auth::start_session(&s, user.id).await?;
    tracing::info!(user = user.name, client = %peer.ip(), "dashboard login");
    let mut resp = Redirect::to(super::safe_back(if f.next.is_empty() {
        "/"
    } else {
        &f.next
    }))
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&session.set_cookie) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp.headers_mut().append(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "lbfleet_login_csrf=; Path=/login; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    Ok(resp)
}

#[derive(Deserialize)]
pub struct Empty {}

pub async fn logout(
    State(s): State<AppState>,
    posted: Posted<Empty>,
) -> Result<Response, WebError> {
    auth::end_session(&s, posted.user.session()).await?;
    tracing::info!(user = posted.user.name, "dashboard logout");
    let mut resp = Redirect::to("/login").into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(auth::CLEAR_SESSION_COOKIE),
    );
    Ok(resp)
}

// ----- nodes --------------------------------------------------------------------------------------------------

#[derive(Deserialize)]
pub struct ApproveForm {
    #[serde(default)]
    hostname: String,
    #[serde(default)]
    image: String,
    /// A fixed address for the node (a DHCP reservation); empty for one from the pool.
    #[serde(default)]
    address: String,
    #[serde(default = "default_back")]
    back: String,
}

fn non_empty(s: &str) -> Option<String> {
    let t = s.trim();
    (!t.is_empty()).then(|| t.to_owned())
}

pub async fn approve(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Posted { user, form }: Posted<ApproveForm>,
) -> Result<Response, WebError> {
    user.require(UserRole::Operator)?;
    let r = s
        .fleet
        .approve(
            &user.actor(),
            &node_key(&id),
            non_empty(&form.hostname),
            non_empty(&form.image),
            non_empty(&form.address),
        )
        .await
        .map(|n| format!("approved {} ({}); it is ready", n.name, n.mac));
    done(&form.back, r)
}

#[derive(Deserialize)]
pub struct BackForm {
    #[serde(default = "default_back")]
    back: String,
}

pub async fn reject(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Posted { user, form }: Posted<BackForm>,
) -> Result<Response, WebError> {
    user.require(UserRole::Operator)?;
    let r = s
        .fleet
        .reject(&user.actor(), &node_key(&id))
        .await
        .map(|n| format!("rejected {}", n.mac));
    done(&form.back, r)
}

pub async fn unassign(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Posted { user, form }: Posted<BackForm>,
) -> Result<Response, WebError> {
    user.require(UserRole::Operator)?;
    let r = s
        .fleet
        .unassign(&user.actor(), &node_key(&id))
        .await
        .map(|n| format!("{} left its cluster and is ready", n.name));
    done(&form.back, r)
}

pub async fn retire(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Posted { user, form }: Posted<BackForm>,
) -> Result<Response, WebError> {
    user.require(UserRole::Operator)?;
    let r = s
        .fleet
        .retire(&user.actor(), &node_key(&id))
        .await
        .map(|n| format!("{} is retired", n.name));
    done(&form.back, r)
}

#[derive(Deserialize)]
pub struct AssignForm {
    #[serde(default)]
    node: String,
    #[serde(default)]
    cluster: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    priority: String,
    #[serde(default = "default_back")]
    back: String,
}

/// `POST /nodes/{id}/assign`; `{id}` may be `-` when the node comes from the form's `node` field.
pub async fn assign(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Posted { user, form }: Posted<AssignForm>,
) -> Result<Response, WebError> {
    user.require(UserRole::Operator)?;
    let node = if id == "-" { form.node.clone() } else { id };
    if node.trim().is_empty() {
        return Ok(redirect_with(&form.back, false, "pick a node to assign"));
    }
    let role: Role = match form.role.parse() {
        Ok(r) => r,
        Err(_) => {
            return Ok(redirect_with(
                &form.back,
                false,
                "role: pick active or backup",
            ))
        }
    };
    let priority = match form.priority.trim() {
        "" => None,
        p => match p.parse::<u32>() {
            Ok(p) => Some(p),
            Err(_) => {
                return Ok(redirect_with(
                    &form.back,
                    false,
                    &format!("priority: {p:?} is not a number from 1 to 254"),
                ))
            }
        },
    };
    let r = s
        .fleet
        .assign(
            &user.actor(),
            &node_key(&node),
            &form.cluster,
            role,
            priority,
        )
        .await
        .map(|n| {
            format!(
                "{} is now {} in cluster {} (priority {})",
                n.name,
                role,
                form.cluster,
                n.priority.unwrap_or(0)
            )
        });
    done(&form.back, r)
}

// ----- clusters -----------------------------------------------------------------------------------------------

#[derive(Deserialize)]
pub struct ClusterSettingsForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    vrid: String,
    #[serde(default)]
    interface: String,
    #[serde(default)]
    vrrp_version: String,
    #[serde(default)]
    advert_interval_ms: String,
    #[serde(default)]
    preempt: Option<String>,
    #[serde(default)]
    vips: String,
    #[serde(default)]
    unicast_peers: String,
    /// The spec revision the form was rendered from (empty from older pages: no check).
    #[serde(default)]
    revision: String,
}

fn lines(text: &str) -> Vec<String> {
    text.split(['\n', ',', ' '])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

impl ClusterSettingsForm {
    fn to_form(&self) -> ClusterForm {
        ClusterForm {
            name: self.name.trim().to_owned(),
            vrid: self.vrid.clone(),
            interface: self.interface.clone(),
            vrrp_version: self.vrrp_version.clone(),
            advert_interval_ms: self.advert_interval_ms.clone(),
            preempt: self.preempt.is_some(),
            vips: self.vips.clone(),
            unicast_peers: self.unicast_peers.clone(),
            errors: Default::default(),
            general: None,
        }
    }

    /// The spec the form describes (keeping `services`), or the form with a message next to each bad number.
    /// `current` keeps what the form does not show (services, GARP, connection sync, preempt delay).
    fn to_spec(&self, current: Option<&ClusterSpec>) -> Result<ClusterSpec, Box<ClusterForm>> {
        let mut form = self.to_form();
        let mut num = |field: &str, text: &str| -> u32 {
            match text.trim().parse::<u32>() {
                Ok(v) => v,
                Err(_) => {
                    form.errors.insert(
                        field.to_owned(),
                        format!("{:?} is not a whole number", text.trim()),
                    );
                    0
                }
            }
        };
        let vrid = num("vrid", &self.vrid);
        let version = num("vrrp_version", &self.vrrp_version);
        let advert = num("advert_interval_ms", &self.advert_interval_ms);
        let vrrp_version = u8::try_from(version).unwrap_or(0);
        // One VIP per line (or comma-separated): `ADDRESS/PREFIX [dev INTERFACE]`.
        let mut vips = Vec::new();
        for line in self
            .vips
            .split(['\n', ','])
            .map(str::trim)
            .filter(|l| !l.is_empty())
        {
            match line.parse::<lbfleet_proto::VipSpec>() {
                Ok(v) => vips.push(v),
                Err(m) => {
                    form.errors.insert("vips".into(), m);
                }
            }
        }
        if !form.errors.is_empty() {
            return Err(Box::new(form));
        }
        Ok(ClusterSpec {
            vrid,
            interface: self.interface.trim().to_owned(),
            vrrp_version,
            advert_interval_ms: advert,
            preempt: self.preempt.is_some(),
            preempt_delay_ms: current.map_or(0, |c| c.preempt_delay_ms),
            vips,
            unicast_peers: lines(&self.unicast_peers),
            garp: current.map(|c| c.garp).unwrap_or_default(),
            conn_sync: current.and_then(|c| c.conn_sync.clone()),
            services: current.map(|c| c.services.clone()).unwrap_or_default(),
        })
    }
}

/// Spreads a fleet refusal over the form: field errors next to their inputs (`vips[1]` goes to `vips`), anything
/// else on top. Returns `Err` for faults that are not the user's.
fn apply_errors(
    e: FleetError,
    errors: &mut std::collections::HashMap<String, String>,
    general: &mut Option<String>,
    strip_prefix: Option<&str>,
) -> Result<(), WebError> {
    match e {
        FleetError::Invalid(errs) => {
            for fe in errs.0 {
                let mut field = fe.field.clone();
                if let Some(p) = strip_prefix {
                    if let Some(rest) = field.strip_prefix(p) {
                        field = rest.to_owned();
                    }
                }
                let base = field.split(['[', '.']).next().unwrap_or(&field).to_owned();
                let base = if field.starts_with("check.") {
                    field.replace('.', "_")
                } else {
                    base
                };
                errors
                    .entry(base)
                    .and_modify(|m| {
                        m.push_str("; ");
                        m.push_str(&fe.message)
                    })
                    .or_insert(fe.message);
            }
            Ok(())
        }
        FleetError::Store(e) if !e.is_constraint() => Err(FleetError::Store(e).into()),
        other => {
            *general = Some(fleet_error_text(&other).1);
            Ok(())
        }
    }
}

pub async fn create_cluster(
    State(s): State<AppState>,
    headers: HeaderMap,
    Posted { user, form }: Posted<ClusterSettingsForm>,
) -> Result<Response, WebError> {
    user.require(UserRole::Operator)?;
    let name = form.name.trim().to_owned();
    if s.fleet.get_cluster(&name).await.is_ok() {
        let mut f = form.to_form();
        f.errors.insert(
            "name".into(),
            format!("a cluster named {name:?} already exists"),
        );
        return clusters_page(&s, &user, &headers, f).await;
    }
    let spec = match form.to_spec(None) {
        Ok(spec) => spec,
        Err(f) => return clusters_page(&s, &user, &headers, *f).await,
    };
    match s
        .fleet
        .put_cluster_if(&user.actor(), &name, &spec, Precondition::Absent)
        .await
    {
        Ok(_) => Ok(redirect_with(
            &format!("/clusters/{name}"),
            true,
            &format!("created cluster {name}"),
        )),
        Err(e) => {
            let mut f = form.to_form();
            apply_errors(e, &mut f.errors, &mut f.general, None)?;
            if f.errors.contains_key("cluster") || f.errors.contains_key("name") {
                let m = f.errors.remove("cluster").unwrap_or_default();
                f.errors.entry("name".into()).or_insert(m);
            }
            clusters_page(&s, &user, &headers, f).await
        }
    }
}

pub async fn cluster_settings(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Posted { user, form }: Posted<ClusterSettingsForm>,
) -> Result<Response, WebError> {
    user.require(UserRole::Operator)?;
    let current = s.fleet.get_cluster(&name).await?;
    let mut form = form;
    form.name = name.clone();
    // The settings were typed over the page's revision; if the cluster changed since, say so instead of
    // overwriting (the page shown again carries the new revision, so saving again is a deliberate choice).
    let shown: Option<u64> = form.revision.trim().parse().ok();
    if let Some(shown) = shown.filter(|r| *r != current.revision) {
        let mut f = form.to_form();
        f.general = Some(format!(
            "cluster {name} was changed by someone else since this page was loaded (revision {shown}, now {}); \
             nothing was saved. Check the settings below and save again.",
            current.revision
        ));
        return cluster_page(&s, &user, &headers, &name, Some(f), ServiceForm::blank()).await;
    }
    let spec = match form.to_spec(Some(&current.spec)) {
        Ok(spec) => spec,
        Err(f) => {
            return cluster_page(&s, &user, &headers, &name, Some(*f), ServiceForm::blank()).await
        }
    };
    match s
        .fleet
        .put_cluster_if(
            &user.actor(),
            &name,
            &spec,
            Precondition::Revision(current.revision),
        )
        .await
    {
        Ok((outcome, _)) => Ok(redirect_with(
            &format!("/clusters/{name}"),
            true,
            &format!("cluster {name}: settings {outcome:?}").to_lowercase(),
        )),
        Err(e) => {
            let mut f = form.to_form();
            apply_errors(e, &mut f.errors, &mut f.general, None)?;
            cluster_page(&s, &user, &headers, &name, Some(f), ServiceForm::blank()).await
        }
    }
}

pub async fn delete_cluster(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Posted { user, .. }: Posted<Empty>,
) -> Result<Response, WebError> {
    user.require(UserRole::Operator)?;
    match s.fleet.delete_cluster(&user.actor(), &name).await {
        Ok(()) => Ok(redirect_with(
            "/clusters",
            true,
            &format!("deleted cluster {name}"),
        )),
        Err(e) => done(&format!("/clusters/{name}"), Err(e)),
    }
}

#[derive(Deserialize)]
pub struct SwitchoverForm {
    #[serde(default)]
    to: String,
}

pub async fn switchover(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Posted { user, form }: Posted<SwitchoverForm>,
) -> Result<Response, WebError> {
    user.require(UserRole::Operator)?;
    let to = non_empty(&form.to).map(|t| node_key(&t));
    let r = s
        .fleet
        .switchover(&user.actor(), &name, to.as_ref())
        .await
        .map(|sw| {
            format!(
                "switchover done: {} is active (priority {}), {} is backup (priority {})",
                sw.new_active, sw.new_active_priority, sw.old_active, sw.old_active_priority
            )
        });
    done(&format!("/clusters/{name}"), r)
}

#[derive(Deserialize)]
pub struct ServiceFormIn {
    #[serde(default)]
    vip: String,
    #[serde(default)]
    port: String,
    #[serde(default)]
    protocol: String,
    #[serde(default)]
    scheduler: String,
    #[serde(default)]
    forward: String,
    #[serde(default)]
    persistence_s: String,
    #[serde(default)]
    check_kind: String,
    #[serde(default)]
    check_path: String,
    #[serde(default)]
    check_status: String,
    // The edit form's further check fields. Blank keeps what the service has; a check field no form shows
    // (headers, TLS, sorry server, quorum, overrides, ...) is always kept.
    #[serde(default)]
    check_interval_ms: String,
    #[serde(default)]
    check_timeout_ms: String,
    #[serde(default)]
    check_rise: String,
    #[serde(default)]
    check_fall: String,
    #[serde(default)]
    check_on_down: String,
    #[serde(default)]
    check_dns_name: String,
    #[serde(default)]
    check_script: String,
}

impl ServiceFormIn {
    /// The form's check applied onto `base` (the service's current check, or the default for a new service):
    /// the fields the form has replace base's, every other field is kept. A new kind starts from that kind's
    /// defaults but keeps what belongs to the service (timings, action, sorry server, quorum, overrides).
    fn check_onto(
        &self,
        base: &HealthCheck,
        kind: CheckKind,
        status: Option<u16>,
        bad: &mut dyn FnMut(&str, String),
    ) -> HealthCheck {
        let mut check = if kind == base.kind {
            base.clone()
        } else {
            HealthCheck {
                interval_ms: base.interval_ms,
                timeout_ms: base.timeout_ms,
                rise: base.rise,
                fall: base.fall,
                warmup_ms: base.warmup_ms,
                jitter_ms: base.jitter_ms,
                on_down: base.on_down,
                sorry_server: base.sorry_server.clone(),
                quorum: base.quorum.clone(),
                overrides: base.overrides.clone(),
                ..HealthCheck::of_kind(kind)
            }
        };
        if matches!(kind, CheckKind::Http | CheckKind::Https) {
            check.path = non_empty(&self.check_path)
                .or(check.path)
                .or(Some("/".into()));
            if status.is_some() || check.expect_codes.is_empty() {
                check.expect_status = status.or(check.expect_status).or(Some(200));
            }
        }
        if kind == CheckKind::Dns {
            check.dns_name = non_empty(&self.check_dns_name).or(check.dns_name);
        }
        if kind == CheckKind::Script {
            check.script = non_empty(&self.check_script).or(check.script);
        }
        let mut number = |field: &str, text: &str, what: &str, into: &mut u32| match text.trim() {
            "" => {}
            t => match t.parse::<u32>() {
                Ok(v) => *into = v,
                Err(_) => bad(field, format!("{t:?} is not {what}")),
            },
        };
        number(
            "check_interval_ms",
            &self.check_interval_ms,
            "a number of milliseconds",
            &mut check.interval_ms,
        );
        number(
            "check_timeout_ms",
            &self.check_timeout_ms,
            "a number of milliseconds",
            &mut check.timeout_ms,
        );
        number("check_rise", &self.check_rise, "a count", &mut check.rise);
        number("check_fall", &self.check_fall, "a count", &mut check.fall);
        match self.check_on_down.trim() {
            "" => {}
            t => match t.parse() {
                Ok(a) => check.on_down = a,
                Err(e) => bad("check_on_down", format!("{e}")),
            },
        }
        check
    }

    fn to_form(&self) -> ServiceForm {
        ServiceForm {
            vip: self.vip.clone(),
            port: self.port.clone(),
            protocol: self.protocol.clone(),
            scheduler: self.scheduler.clone(),
            forward: self.forward.clone(),
            persistence_s: self.persistence_s.clone(),
            check_kind: self.check_kind.clone(),
            check_path: self.check_path.clone(),
            check_status: self.check_status.clone(),
            errors: Default::default(),
            general: None,
        }
    }

    fn to_spec(&self) -> Result<ServiceSpec, Box<ServiceForm>> {
        let mut f = self.to_form();
        let mut bad = |field: &str, msg: String| {
            f.errors.insert(field.to_owned(), msg);
        };
        let port = self.port.trim().parse::<u16>().unwrap_or_else(|_| {
            bad(
                "port",
                format!("{:?} is not a port (1 to 65535)", self.port.trim()),
            );
            0
        });
        let persistence_s = match self.persistence_s.trim() {
            "" => 0,
            p => p.parse::<u32>().unwrap_or_else(|_| {
                bad("persistence_s", format!("{p:?} is not a number of seconds"));
                0
            }),
        };
        let protocol = self
            .protocol
            .parse()
            .map_err(|e: lbfleet_proto::UnknownValue| e.to_string());
        let scheduler = self
            .scheduler
            .parse()
            .map_err(|e: lbfleet_proto::UnknownValue| e.to_string());
        let forward = self
            .forward
            .parse()
            .map_err(|e: lbfleet_proto::UnknownValue| e.to_string());
        let kind: Result<CheckKind, String> = self
            .check_kind
            .parse()
            .map_err(|e: lbfleet_proto::UnknownValue| e.to_string());
        let status = match self.check_status.trim() {
            "" => None,
            t => match t.parse::<u16>() {
                Ok(v) => Some(v),
                Err(_) => {
                    bad("check_status", format!("{t:?} is not an HTTP status"));
                    None
                }
            },
        };
        let (protocol, scheduler, forward, kind) = match (protocol, scheduler, forward, kind) {
            (Ok(p), Ok(s), Ok(fw), Ok(k)) => (p, s, fw, k),
            (p, s, fw, k) => {
                for (field, r) in [
                    ("protocol", p.err()),
                    ("scheduler", s.err()),
                    ("forward", fw.err()),
                    ("check_kind", k.err()),
                ] {
                    if let Some(m) = r {
                        bad(field, m);
                    }
                }
                return Err(Box::new(f));
            }
        };
        let check = self.check_onto(&HealthCheck::tcp(), kind, status, &mut bad);
        if !f.errors.is_empty() {
            return Err(Box::new(f));
        }
        Ok(ServiceSpec {
            vip: self.vip.trim().to_owned(),
            port,
            protocol,
            scheduler,
            forward,
            persistence_s,
            persistence_prefix: None,
            check,
            real_servers: vec![],
        })
    }
}

pub async fn add_service(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Posted { user, form }: Posted<ServiceFormIn>,
) -> Result<Response, WebError> {
    user.require(UserRole::Operator)?;
    let svc = match form.to_spec() {
        Ok(svc) => svc,
        Err(f) => return cluster_page(&s, &user, &headers, &name, None, *f).await,
    };
    let label = format!(
        "{}:{}",
        svc.protocol,
        crate::fleet::socket_text(&svc.vip, svc.port)
    );
    let mut index = 0;
    let r = edit_spec(&s, &user.actor(), &name, |spec| {
        index = spec.services.len();
        spec.services.push(svc.clone());
        Ok(())
    })
    .await;
    match r {
        Ok(Ok(_)) => Ok(redirect_with(
            &format!("/clusters/{name}"),
            true,
            &format!("added service {label}"),
        )),
        Ok(Err(m)) => Ok(redirect_with(&format!("/clusters/{name}"), false, &m)),
        Err(e @ FleetError::NotFound(_)) => Err(e.into()),
        Err(e) => {
            let mut f = form.to_form();
            let prefix = format!("services[{index}].");
            if let FleetError::Conflict(m) = &e {
                f.general = Some(m.clone());
            } else {
                apply_errors(e, &mut f.errors, &mut f.general, Some(&prefix))?;
            }
            cluster_page(&s, &user, &headers, &name, None, f).await
        }
    }
}

#[derive(Deserialize)]
pub struct EditServiceForm {
    #[serde(default)]
    service: String,
    #[serde(flatten)]
    settings: ServiceFormIn,
}

/// Changes a service's scheduler, forwarding, persistence and health check; its address and real servers stay.
pub async fn edit_service(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Posted { user, form }: Posted<EditServiceForm>,
) -> Result<Response, WebError> {
    user.require(UserRole::Operator)?;
    let back = format!("/clusters/{name}");
    let service: ServiceRef = match form.service.parse() {
        Ok(s) => s,
        Err(e) => return Ok(redirect_with(&back, false, &e.to_string())),
    };
    let mut settings = form.settings;
    settings.vip = service.vip.clone();
    settings.port = service.port.to_string();
    settings.protocol = service.protocol.to_string();
    let new = match settings.to_spec() {
        Ok(new) => new,
        Err(f) => {
            let msg: Vec<String> = f.errors.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            return Ok(redirect_with(&back, false, &msg.join("; ")));
        }
    };
    let r = edit_spec(&s, &user.actor(), &name, |spec| {
        let target = spec
            .services
            .iter_mut()
            .find(|sv| {
                sv.protocol == service.protocol && sv.vip == service.vip && sv.port == service.port
            })
            .ok_or_else(|| format!("no service {service} in {name}"))?;
        target.scheduler = new.scheduler;
        target.forward = new.forward;
        target.persistence_s = new.persistence_s;
        // Onto the service's own check, so fields the form does not show survive (the parse errors were
        // reported by `to_spec` above, so none can occur here).
        target.check = settings.check_onto(
            &target.check,
            new.check.kind,
            settings.check_status.trim().parse().ok(),
            &mut |_, _| {},
        );
        Ok(())
    })
    .await;
    match r {
        Ok(Ok(((), outcome))) => done(
            &back,
            Ok(format!("service {service}: settings {outcome:?}").to_lowercase()),
        ),
        Ok(Err(m)) => Ok(redirect_with(&back, false, &m)),
        Err(e) => done(&back, Err(e)),
    }
}

#[derive(Deserialize)]
pub struct ServiceRefForm {
    #[serde(default)]
    service: String,
}

pub async fn remove_service(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Posted { user, form }: Posted<ServiceRefForm>,
) -> Result<Response, WebError> {
    user.require(UserRole::Operator)?;
    let back = format!("/clusters/{name}");
    let service: ServiceRef = match form.service.parse() {
        Ok(s) => s,
        Err(e) => return Ok(redirect_with(&back, false, &e.to_string())),
    };
    let r = edit_spec(&s, &user.actor(), &name, |spec| {
        let before = spec.services.len();
        spec.services.retain(|sv| {
            !(sv.protocol == service.protocol && sv.vip == service.vip && sv.port == service.port)
        });
        if spec.services.len() == before {
            return Err(format!("no service {service} in {name}"));
        }
        Ok(())
    })
    .await;
    match r {
        Ok(Ok(_)) => done(&back, Ok(format!("removed service {service}"))),
        Ok(Err(m)) => Ok(redirect_with(&back, false, &m)),
        Err(e) => done(&back, Err(e)),
    }
}

#[derive(Deserialize)]
pub struct RealServerForm {
    #[serde(default)]
    service: String,
    #[serde(default)]
    address: String,
    #[serde(default)]
    port: String,
    #[serde(default)]
    weight: String,
}

pub async fn add_real_server(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Posted { user, form }: Posted<RealServerForm>,
) -> Result<Response, WebError> {
    user.require(UserRole::Operator)?;
    let back = format!("/clusters/{name}");
    let service: ServiceRef = match form.service.parse() {
        Ok(s) => s,
        Err(e) => return Ok(redirect_with(&back, false, &e.to_string())),
    };
    let Ok(port) = form.port.trim().parse::<u16>() else {
        return Ok(redirect_with(
            &back,
            false,
            &format!("real server port: {:?} is not a port", form.port.trim()),
        ));
    };
    let weight = match form.weight.trim() {
        "" => 1,
        w => match w.parse::<u32>() {
            Ok(w) => w,
            Err(_) => {
                return Ok(redirect_with(
                    &back,
                    false,
                    &format!("weight: {w:?} is not a number from 0 to 65535"),
                ))
            }
        },
    };
    let rs = RealServerSpec {
        address: form.address.trim().to_owned(),
        port,
        weight,
        enabled: Some(true),
    };
    let r = s
        .fleet
        .add_real_server(&user.actor(), &name, &service, &rs)
        .await
        .map(|rs| {
            format!(
                "added real server {} to {service}",
                crate::fleet::socket_text(&rs.address, rs.port)
            )
        });
    done(&back, r)
}

#[derive(Deserialize)]
pub struct RealServerOpForm {
    #[serde(default)]
    service: String,
    #[serde(default)]
    rs: String,
    #[serde(default)]
    weight: String,
}

/// `drain`, `enable`, `weight` or `remove` one real server.
pub async fn real_server_op(
    State(s): State<AppState>,
    Path((name, op)): Path<(String, String)>,
    Posted { user, form }: Posted<RealServerOpForm>,
) -> Result<Response, WebError> {
    user.require(UserRole::Operator)?;
    let back = format!("/clusters/{name}");
    let service: ServiceRef = match form.service.parse() {
        Ok(s) => s,
        Err(e) => return Ok(redirect_with(&back, false, &e.to_string())),
    };
    let rs: RealServerRef = match form.rs.parse() {
        Ok(r) => r,
        Err(e) => return Ok(redirect_with(&back, false, &e.to_string())),
    };
    let actor = user.actor();
    let label = form.rs.clone();
    let r = match op.as_str() {
        "drain" => s
            .fleet
            .change_real_server(
                &actor,
                &name,
                &service,
                &rs,
                RealServerChange::Enabled(false),
            )
            .await
            .map(|_| {
                format!("drained {label}: weight 0 in the kernel, existing connections finish")
            }),
        "enable" => s
            .fleet
            .change_real_server(
                &actor,
                &name,
                &service,
                &rs,
                RealServerChange::Enabled(true),
            )
            .await
            .map(|_| format!("enabled {label}")),
        "weight" => match form.weight.trim().parse::<u32>() {
            Ok(w) => s
                .fleet
                .change_real_server(&actor, &name, &service, &rs, RealServerChange::Weight(w))
                .await
                .map(|_| format!("{label} has weight {w}")),
            Err(_) => {
                return Ok(redirect_with(
                    &back,
                    false,
                    &format!(
                        "weight: {:?} is not a number from 0 to 65535",
                        form.weight.trim()
                    ),
                ))
            }
        },
        "remove" => s
            .fleet
            .remove_real_server(&actor, &name, &service, &rs)
            .await
            .map(|_| format!("removed {label} from {service}")),
        other => {
            return Err(WebError::NotFound(format!(
                "no real-server action {other:?}"
            )))
        }
    };
    done(&back, r)
}
