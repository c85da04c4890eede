//! Validation of an agent report, every field under one rule: each list bounded in count, each free text at
//! most `bounds::MAX_TEXT` bytes without control characters, names as names and addresses as addresses (the
//! numbers are `lbfleet_proto::bounds`, which the agent fits its reports into). A report that breaks any of it
//! is refused whole, every bad field named, before anything is stored. Part of `rules`: no database.

use std::net::IpAddr;

use lbfleet_proto::bounds::{
    text_ok, MAX_DROP_COUNTERS, MAX_ERRORS, MAX_HEALTH_EVENTS, MAX_NAME, MAX_REAL_SERVERS,
    MAX_SERVICES, MAX_TEXT, MAX_VRRP_TRANSITIONS,
};
use lbfleet_proto::AgentReport;

use super::*;

/// Checks a whole report; every problem found, by JSON path.
pub fn report(r: &AgentReport) -> Result<(), FieldErrors> {
    let mut errs = match report_fields(
        r.address.as_deref(),
        r.agent_version.as_deref(),
        r.image_version.as_deref(),
    ) {
        Ok(()) => FieldErrors::default(),
        Err(e) => e,
    };
    if let Some(m) = &r.vrrp_master {
        if !(m.parse::<IpAddr>().is_ok() || (m.len() <= MAX_NAME && dns_label(m).is_ok())) {
            errs.push(
                "vrrp_master",
                "must be an IP address or a node name (lowercase letters, digits, '-')",
            );
        }
    }
    let counts = [
        (
            "vrrp_transitions",
            r.vrrp_transitions.len(),
            MAX_VRRP_TRANSITIONS,
        ),
        ("health_events", r.health_events.len(), MAX_HEALTH_EVENTS),
        ("errors", r.errors.len(), MAX_ERRORS),
        ("vrrp_dropped", r.vrrp_dropped.len(), MAX_DROP_COUNTERS),
        ("services", r.services.len(), MAX_SERVICES),
        (
            "services[].real_servers",
            r.services.iter().map(|s| s.real_servers.len()).sum(),
            MAX_REAL_SERVERS,
        ),
    ];
    let mut too_many = false;
    for (field, n, max) in counts {
        if n > max {
            errs.push(field, format!("at most {max} per report, got {n}"));
            too_many = true;
        }
    }
    if too_many {
        // Looking into the items of an oversized list would only make a longer answer.
        return errs.into_result(());
    }
    let mut text = |field: String, t: &str| {
        if !text_ok(t, MAX_TEXT) {
            errs.push(
                field,
                format!("must be at most {MAX_TEXT} bytes without control characters"),
            );
        }
    };
    for (i, t) in r.vrrp_transitions.iter().enumerate() {
        text(format!("vrrp_transitions[{i}].reason"), &t.reason);
    }
    for (i, e) in r.errors.iter().enumerate() {
        text(format!("errors[{i}]"), e);
    }
    for (i, e) in r.health_events.iter().enumerate() {
        text(format!("health_events[{i}].service"), &e.service);
        if let Some(reason) = &e.reason {
            text(format!("health_events[{i}].reason"), reason);
        }
    }
    for (i, s) in r.services.iter().enumerate() {
        for (j, rs) in s.real_servers.iter().enumerate() {
            let Some(h) = &rs.health else { continue };
            for (name, t) in [("last_error", &h.last_error), ("check", &h.check)] {
                if let Some(t) = t {
                    text(format!("services[{i}].real_servers[{j}].health.{name}"), t);
                }
            }
        }
    }
    for key in r.vrrp_dropped.keys() {
        let ok = !key.is_empty()
            && key.len() <= 32
            && key
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !ok {
            errs.push(
                format!("vrrp_dropped[{:?}]", fit_text(key, 40)),
                "a drop reason is 1 to 32 of [a-z0-9_]",
            );
        }
    }
    let mut address = |field: String, a: &str| {
        if a.parse::<IpAddr>().is_err() {
            errs.push(field, format!("{:?} is not an IP address", fit_text(a, 60)));
        }
    };
    for (i, s) in r.services.iter().enumerate() {
        address(format!("services[{i}].vip"), &s.vip);
        for (j, rs) in s.real_servers.iter().enumerate() {
            address(
                format!("services[{i}].real_servers[{j}].address"),
                &rs.address,
            );
        }
    }
    for (i, e) in r.health_events.iter().enumerate() {
        address(format!("health_events[{i}].address"), &e.address);
    }
    if errs.0.len() > MAX_LISTED {
        let more = errs.0.len() - MAX_LISTED;
        errs.0.truncate(MAX_LISTED);
        errs.push("...", format!("and {more} more bad fields"));
    }
    errs.into_result(())
}

/// Most bad fields named in one refusal (the answer stays short).
const MAX_LISTED: usize = 20;

/// Bad input quoted back in an error message, shortened and printable.
fn fit_text(t: &str, max: usize) -> String {
    lbfleet_proto::bounds::fit_text(t, max)
}
