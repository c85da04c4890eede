//! A real server's health for people, as the node and cluster pages show it: the state its node's agent
//! reported (up, down, not checked, administratively drained), since when, the last error, the last latency
//! and the flap count. A report without a health result says only `healthy` (true by default): failing is shown
//! as failing, anything else as "not checked", never as healthy.

use std::collections::HashMap;

use lbfleet_proto::{AgentReport, HealthState, RealServerHealth, RealServerReport};

use super::format::time_text;
use crate::store::clusters::RealServerKey;

/// One real server's health on a page. Every text is escaped by askama.
#[derive(Debug, Clone, Default)]
pub struct HealthView {
    /// CSS class suffix (`h-…`): `healthy`, `failing`, `unknown` or `drained`.
    pub class: &'static str,
    /// `✔ up`, `✖ down`, `not checked`, `drained (admin)`; `✖ failing` from a report without a health result
    /// (`not checked` when it says healthy); `unknown` without a report.
    pub label: String,
    /// When the state last changed (`2026-11-30 23:59:01`), or "".
    pub since: String,
    /// Why the last probe failed (`HTTP 500 from /healthz`), or "".
    pub error: String,
    /// Duration of the last successful probe (`1.2 ms`), or "".
    pub latency: String,
    /// Times the server went from up to down.
    pub flaps: u32,
    /// What was probed (`HTTP GET /healthz expects 200`), or "".
    pub check: String,
}

impl HealthView {
    /// No report from the node.
    pub fn unknown() -> HealthView {
        HealthView {
            class: "unknown",
            label: "unknown".into(),
            ..HealthView::default()
        }
    }

    /// A real server as the agent reported it.
    pub fn of(rs: &RealServerReport) -> HealthView {
        let Some(h) = &rs.health else {
            // Without a health result, `healthy` defaults to true: nothing says a check looked at the server.
            return if rs.healthy {
                HealthView {
                    class: "unknown",
                    label: "not checked".into(),
                    ..HealthView::default()
                }
            } else {
                HealthView {
                    class: "failing",
                    label: "✖ failing".into(),
                    ..HealthView::default()
                }
            };
        };
        HealthView::from_health(h)
    }

    fn from_health(h: &RealServerHealth) -> HealthView {
        let (class, label) = match h.state {
            HealthState::Up => ("healthy", "✔ up"),
            HealthState::Down => ("failing", "✖ down"),
            HealthState::NotChecked => ("unknown", "not checked"),
            HealthState::AdminDrained => ("drained", "drained (admin)"),
        };
        HealthView {
            class,
            label: label.into(),
            since: h
                .since
                .and_then(|s| i64::try_from(s.saturating_mul(1000)).ok())
                .map(time_text)
                .unwrap_or_default(),
            // A down server always says why; an up one keeps its last error out of the way.
            error: if h.state == HealthState::Down {
                h.last_error.clone().unwrap_or_default()
            } else {
                String::new()
            },
            latency: h
                .latency_us
                .map(|us| format!("{:.1} ms", us as f64 / 1000.0))
                .unwrap_or_default(),
            flaps: h.flaps,
            check: h.check.clone().unwrap_or_default(),
        }
    }
}

/// The real servers of one node's report, for the pages.
pub fn health_views(report: Option<&AgentReport>) -> HashMap<RealServerKey, HealthView> {
    let mut out = HashMap::new();
    for s in report.map(|r| r.services.as_slice()).unwrap_or_default() {
        for rs in &s.real_servers {
            out.insert(RealServerKey::of_report(s, rs), HealthView::of(rs));
        }
    }
    out
}

/// Whether a check found the real server up (`Some(true)`) or down (`Some(false)`); `None` when no check has a
/// result for it (cluster cards count only checked servers).
pub fn checked_up(rs: &RealServerReport) -> Option<bool> {
    match rs.health.as_ref().map(|h| h.state) {
        Some(HealthState::Up) => Some(true),
        Some(HealthState::Down) => Some(false),
        Some(HealthState::NotChecked | HealthState::AdminDrained) => None,
        None => (!rs.healthy).then_some(false),
    }
}

/// The parts of a check its one-line description leaves out, for the cluster page.
pub fn check_extras(c: &lbfleet_proto::HealthCheck) -> Vec<String> {
    if c.kind == lbfleet_proto::CheckKind::None {
        return Vec::new();
    }
    let mut out = vec![format!(
        "every {} ms, timeout {} ms, rise {}, fall {}",
        c.interval_ms, c.timeout_ms, c.rise, c.fall
    )];
    out.push(format!("on down: {}", c.on_down));
    if let Some(h) = &c.host {
        out.push(format!("Host {h}"));
    }
    if let Some(b) = &c.body_contains {
        out.push(format!("body contains {b:?}"));
    }
    if c.kind == lbfleet_proto::CheckKind::Https {
        out.push(if c.tls_verify {
            "TLS verified".into()
        } else {
            "TLS not verified".into()
        });
    }
    if let Some(q) = &c.quorum {
        out.push(format!(
            "quorum {} (priority -{})",
            q.min_healthy, q.priority_drop
        ));
    }
    if let Some(s) = &c.sorry_server {
        out.push(format!(
            "sorry server {}",
            crate::fleet::socket_text(&s.address, s.port)
        ));
    }
    if !c.overrides.is_empty() {
        out.push(format!("{} per-server override(s)", c.overrides.len()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn down_says_why_and_since_when() {
        let rs: RealServerReport = serde_json::from_value(serde_json::json!({
            "address": "198.18.2.1", "port": 8080, "healthy": false, "weight": 0,
            "health": {"state": "down", "since": 1_764_547_200u64, "last_error": "connect: refused",
                       "latency_us": 1234, "flaps": 2, "check": "TCP connect"}
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let v = HealthView::of(&rs);
        assert_eq!((v.class, v.label.as_str()), ("failing", "✖ down"));
        assert_eq!(v.error, "connect: refused");
        assert_eq!(v.since, "2025-12-01 00:00:00Z");
        assert_eq!((v.latency.as_str(), v.flaps), ("1.2 ms", 2));
        let legacy: RealServerReport = serde_json::from_value(serde_json::json!({
            "address": "198.18.2.1", "port": 8080, "healthy": false, "weight": 0
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(HealthView::of(&legacy).label, "✖ failing");
        let unchecked: RealServerReport = serde_json::from_value(serde_json::json!({
            "address": "198.18.2.1", "port": 8080, "healthy": true, "weight": 1
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(HealthView::of(&unchecked).label, "not checked");
        assert_eq!(checked_up(&unchecked), None);
        assert_eq!(checked_up(&legacy), Some(false));
        assert_eq!(checked_up(&rs), Some(false));
    }
}
