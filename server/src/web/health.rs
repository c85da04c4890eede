//! A real server's health for people, as the node and cluster pages show it: the state its node's agent
//! reported (up, down, not checked, administratively drained), since when, the last error, the last latency
//! and the flap count. Agents without health checks report only a `healthy` flag, shown as before.

use std::collections::HashMap;

use lbfleet_proto::{AgentReport, HealthState, RealServerHealth, RealServerReport};

use super::time_text;

/// One real server's health on a page. Every text is escaped by askama.
#[derive(Debug, Clone, Default)]
pub struct HealthView {
    /// CSS class suffix (`h-…`): `healthy`, `failing`, `unknown` or `drained`.
    pub class: &'static str,
    /// `✔ up`, `✖ down`, `not checked`, `drained (admin)`; `✔ healthy` / `✖ failing` from an agent without
    /// health checks; `unknown` without a report.
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
            return if rs.healthy {
                HealthView {
                    class: "healthy",
                    label: "✔ healthy".into(),
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

/// Real servers of one node's report by (protocol, VIP, port, address, real-server port).
pub type HealthKey = (String, String, u16, String, u16);

pub fn health_views(report: Option<&AgentReport>) -> HashMap<HealthKey, HealthView> {
    let mut out = HashMap::new();
    for s in report.map(|r| r.services.as_slice()).unwrap_or_default() {
        for rs in &s.real_servers {
            out.insert(
                (
                    s.protocol.to_string(),
                    s.vip.clone(),
                    s.port,
                    rs.address.clone(),
                    rs.port,
                ),
                HealthView::of(rs),
            );
        }
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
    }
}
