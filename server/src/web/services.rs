//! A cluster's virtual services and their real servers, edited from the cluster page: add, edit and remove a
//! service; add a real server, change its weight, drain, enable or remove it.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use lbfleet_proto::{CheckKind, HealthCheck, RealServerSpec, ServiceSpec, UserRole};
use serde::Deserialize;

use super::clusters::{apply_errors, cluster_page, ServiceForm};
use super::error::WebError;
use super::flash::redirect_with;
use super::form::*;
use super::session::Posted;
use crate::fleet::{FleetError, RealServerChange, RealServerRef, ServiceRef};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/clusters/{name}/services", post(add_service))
        .route("/clusters/{name}/services/edit", post(edit_service))
        .route("/clusters/{name}/services/remove", post(remove_service))
        .route("/clusters/{name}/real-servers", post(add_real_server))
        .route("/clusters/{name}/real-servers/{op}", post(real_server_op))
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
