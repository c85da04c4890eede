//! Validation of health checks (a service's check, its kind's parameters, overrides, the down action's
//! companions). Part of `rules`: pure functions, no database. (The health parts of an agent report are checked
//! with the rest of the report, in `report`.)

use std::net::IpAddr;

use lbfleet_proto::{valid_script_name, CheckKind, DownAction, HealthCheck, ServiceSpec};

use super::*;

/// Validates a service's check: timings, the parameters of its kind (and only those), the down action's
/// companions (sorry server, quorum) and per-real-server overrides.
pub(super) fn health_check(
    field: &str,
    c: &HealthCheck,
    svc: &ServiceSpec,
    vip: Option<IpAddr>,
    errs: &mut FieldErrors,
) {
    probe(field, c, errs);
    if let Some(sorry) = &c.sorry_server {
        let f = format!("{field}.sorry_server");
        match sorry.address.parse::<IpAddr>() {
            Ok(addr) => {
                if let Err(m) = unicast(addr) {
                    errs.push(format!("{f}.address"), m);
                } else if vip.is_some_and(|v| v.is_ipv4() != addr.is_ipv4()) {
                    errs.push(
                        format!("{f}.address"),
                        "must be the same address family as the VIP",
                    );
                } else if svc.real_servers.iter().any(|rs| {
                    rs.port == sorry.port && rs.address.parse::<IpAddr>().ok() == Some(addr)
                }) {
                    errs.push(
                        format!("{f}.address"),
                        "is also a real server of this service",
                    );
                }
            }
            Err(_) => errs.push(
                format!("{f}.address"),
                format!("{:?} is not an IP address", sorry.address),
            ),
        }
        if sorry.port == 0 {
            errs.push(format!("{f}.port"), "must be 1 to 65535");
        } else if svc.forward != ForwardMethod::Nat && sorry.port != svc.port {
            errs.push(
                format!("{f}.port"),
                format!(
                    "{} forwarding cannot change the port: must equal the service port {}",
                    svc.forward, svc.port
                ),
            );
        }
    }
    if let Some(q) = &c.quorum {
        let n = svc.real_servers.len();
        if q.min_healthy == 0 || q.min_healthy as usize > n {
            errs.push(
                format!("{field}.quorum.min_healthy"),
                format!(
                    "must be 1 to the number of real servers ({n}), got {}",
                    q.min_healthy
                ),
            );
        }
        if !(1..=254).contains(&q.priority_drop) {
            errs.push(
                format!("{field}.quorum.priority_drop"),
                format!("must be 1 to 254, got {}", q.priority_drop),
            );
        }
    }
    let mut seen = HashSet::new();
    for (i, o) in c.overrides.iter().enumerate() {
        let f = format!("{field}.overrides[{i}]");
        let addr = o.address.parse::<IpAddr>().ok();
        let known = addr.is_some_and(|a| {
            svc.real_servers
                .iter()
                .any(|rs| rs.port == o.port && rs.address.parse::<IpAddr>().ok() == Some(a))
        });
        if !known {
            errs.push(
                format!("{f}.address"),
                format!(
                    "{}:{} is not a real server of this service",
                    o.address, o.port
                ),
            );
        } else if !seen.insert((addr, o.port)) {
            errs.push(
                format!("{f}.address"),
                format!("{}:{} has two overrides", o.address, o.port),
            );
        }
        let inner = &o.check;
        if inner.on_down != DownAction::Drain
            || inner.sorry_server.is_some()
            || inner.quorum.is_some()
            || !inner.overrides.is_empty()
        {
            errs.push(
                format!("{f}.check"),
                "on_down, sorry_server, quorum and overrides belong to the service's check, not to an override",
            );
        }
        probe(&format!("{f}.check"), inner, errs);
    }
}

/// The probe part of a check: timings and the parameters of its kind.
fn probe(field: &str, c: &HealthCheck, errs: &mut FieldErrors) {
    timings(field, c, errs);
    parameters_of_other_kinds(field, c, errs);
    match c.kind {
        CheckKind::Http | CheckKind::Https => {
            http_parameters(field, c, errs);
            if c.kind == CheckKind::Https {
                https_parameters(field, c, errs);
            }
        }
        CheckKind::Dns => dns_parameters(field, c, errs),
        CheckKind::Script => script_parameter(field, c, errs),
        CheckKind::None | CheckKind::Tcp => {}
    }
}

/// Interval, timeout, rise/fall, warm-up, jitter and port: every kind has them.
fn timings(field: &str, c: &HealthCheck, errs: &mut FieldErrors) {
    if !(100..=3_600_000).contains(&c.interval_ms) {
        errs.push(
            format!("{field}.interval_ms"),
            format!("must be 100 to 3600000 ms, got {}", c.interval_ms),
        );
    }
    if c.timeout_ms < 10 || c.timeout_ms > c.interval_ms {
        errs.push(
            format!("{field}.timeout_ms"),
            format!(
                "must be at least 10 ms and at most interval_ms ({}), got {}",
                c.interval_ms, c.timeout_ms
            ),
        );
    }
    for (name, v) in [("rise", c.rise), ("fall", c.fall)] {
        if !(1..=100).contains(&v) {
            errs.push(
                format!("{field}.{name}"),
                format!("must be 1 to 100, got {v}"),
            );
        }
    }
    if c.warmup_ms > 3_600_000 {
        errs.push(
            format!("{field}.warmup_ms"),
            format!("must be at most 3600000 ms, got {}", c.warmup_ms),
        );
    }
    if let Some(j) = c.jitter_ms {
        if j > c.interval_ms {
            errs.push(
                format!("{field}.jitter_ms"),
                format!("must be at most interval_ms ({}), got {j}", c.interval_ms),
            );
        }
    }
    if c.port == Some(0) {
        errs.push(format!("{field}.port"), "must be 1 to 65535");
    }
}

/// Each parameter with the kinds that take it: anything else set is a mistake worth reporting.
fn parameters_of_other_kinds(field: &str, c: &HealthCheck, errs: &mut FieldErrors) {
    let http = matches!(c.kind, CheckKind::Http | CheckKind::Https);
    let https = c.kind == CheckKind::Https;
    let dns = c.kind == CheckKind::Dns;
    let given: [(&str, bool, bool, &str); 13] = [
        ("path", c.path.is_some(), http, "an http or https"),
        (
            "expect_status",
            c.expect_status.is_some(),
            http,
            "an http or https",
        ),
        (
            "expect_codes",
            !c.expect_codes.is_empty(),
            http,
            "an http or https",
        ),
        ("host", c.host.is_some(), http, "an http or https"),
        (
            "body_contains",
            c.body_contains.is_some(),
            http,
            "an http or https",
        ),
        ("sni", c.sni.is_some(), https, "an https"),
        ("tls_verify", c.tls_verify, https, "an https"),
        ("tls_ca", c.tls_ca.is_some(), https, "an https"),
        ("dns_name", c.dns_name.is_some(), dns, "a dns"),
        ("dns_type", c.dns_type.is_some(), dns, "a dns"),
        ("dns_expect", c.dns_expect.is_some(), dns, "a dns"),
        (
            "script",
            c.script.is_some(),
            c.kind == CheckKind::Script,
            "a script",
        ),
        (
            "port",
            c.port.is_some() && c.kind == CheckKind::None,
            false,
            "a probing",
        ),
    ];
    for (name, set, allowed, which) in given {
        if set && !allowed {
            errs.push(
                format!("{field}.{name}"),
                format!("only {which} check takes {name}, this one is {}", c.kind),
            );
        }
    }
}

/// `http` and `https`: path, expected statuses, host header, body match.
fn http_parameters(field: &str, c: &HealthCheck, errs: &mut FieldErrors) {
    match c.path.as_deref() {
        None => errs.push(
            format!("{field}.path"),
            format!("an {} check needs a path", c.kind),
        ),
        Some(p) => {
            if !p.starts_with('/') || p.len() > 1024 || p.bytes().any(|b| b <= b' ' || b == 0x7f) {
                errs.push(
                    format!("{field}.path"),
                    "must start with '/', be at most 1024 characters and contain no spaces or control characters",
                );
            }
        }
    }
    for s in c.expect_status.iter().chain(&c.expect_codes) {
        if !(100..=599).contains(s) {
            let name = if c.expect_status == Some(*s) {
                "expect_status"
            } else {
                "expect_codes"
            };
            errs.push(
                format!("{field}.{name}"),
                format!("must be 100 to 599, got {s}"),
            );
        }
    }
    if let Some(h) = &c.host {
        if h.is_empty() || h.len() > 255 || h.bytes().any(|b| b <= b' ' || b >= 0x7f) {
            errs.push(
                format!("{field}.host"),
                "must be 1 to 255 printable characters without spaces",
            );
        }
    }
    if let Some(b) = &c.body_contains {
        if b.is_empty() || b.len() > 1024 {
            errs.push(format!("{field}.body_contains"), "must be 1 to 1024 bytes");
        }
    }
}

/// `https`: SNI and CA certificates.
fn https_parameters(field: &str, c: &HealthCheck, errs: &mut FieldErrors) {
    if let Some(sni) = &c.sni {
        if let Err(m) = dns_name(sni) {
            errs.push(format!("{field}.sni"), m);
        }
    }
    if let Some(ca) = &c.tls_ca {
        if ca.len() > 65_536 || !ca.contains("-----BEGIN CERTIFICATE-----") {
            errs.push(
                format!("{field}.tls_ca"),
                "must be PEM certificates, at most 64 KiB",
            );
        }
    }
}

/// `dns`: the name to query and the expected answer.
fn dns_parameters(field: &str, c: &HealthCheck, errs: &mut FieldErrors) {
    match c.dns_name.as_deref() {
        None => errs.push(
            format!("{field}.dns_name"),
            "a dns check needs a name to query",
        ),
        Some(n) => {
            if let Err(m) = dns_name(n) {
                errs.push(format!("{field}.dns_name"), m);
            }
        }
    }
    if let Some(e) = &c.dns_expect {
        if e.is_empty() || e.len() > 255 {
            errs.push(format!("{field}.dns_expect"), "must be 1 to 255 bytes");
        }
    }
}

/// `script`: the name of an executable shipped in the image, never a path or a command.
fn script_parameter(field: &str, c: &HealthCheck, errs: &mut FieldErrors) {
    match c.script.as_deref() {
        None => errs.push(format!("{field}.script"), "a script check needs the name of a script in /etc/lbfleet/checks/"),
        Some(name) if !valid_script_name(name) => errs.push(
            format!("{field}.script"),
            format!(
                "{name:?} is not a script name: a file name in /etc/lbfleet/checks/ (letters, digits, '.', '_', '-'; no '/' or '..'), never a path or a command"
            ),
        ),
        Some(_) => {}
    }
}

/// A DNS name (for a query or SNI): at most 253 bytes, dot-separated labels of 1 to 63 letters, digits, '-'
/// or '_', an optional final dot.
fn dns_name(name: &str) -> Result<(), String> {
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    let ok = !trimmed.is_empty()
        && trimmed.len() <= 253
        && trimmed.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(format!("{name:?} is not a DNS name"))
    }
}
