//! Alerts: what needs an operator's attention. Most are derived from current state on each call: a cluster
//! with no VRRP master or with several (split brain), an assigned node that stopped reporting or lags behind
//! its newest role, drained real servers, hardware waiting for approval. Alerts about something that happened
//! (a node that re-enrolled while its agent was alive, `reenrollment`) live in rows of their own
//! (`store::alerts`), which event retention never touches, until acknowledged (`acknowledge_alert`, audited)
//! or expired. Served at `GET /api/v1/alerts`, counted in `/metrics`, listed on the dashboard's overview.

use std::collections::HashMap;

use lbfleet_proto::{wire_enum, NodeState, VrrpState};
use serde::Serialize;

use super::{socket_text, Actor, Fleet, FleetError, Result};
use crate::audit::AuditAction;
use crate::store::{self, now_ms};

/// A node counts as not reporting when its agent has been silent this long.
pub const STALE_AFTER_MS: i64 = 60_000;

wire_enum!(
    /// How urgent an alert is; the text always says what is wrong, the level only orders and colours it.
    AlertLevel { Crit => "crit", Warn => "warn", Info => "info" }
);

wire_enum!(
    /// What an alert is about.
    AlertKind {
        NoMaster => "no_master", SplitBrain => "split_brain", NotReporting => "not_reporting",
        GenerationLag => "generation_lag", Reenrolled => "reenrolled", Drained => "drained",
        HardwareWaiting => "hardware_waiting", ServerDown => "server_down",
        ImageDrift => "image_drift",
    }
);

impl AlertKind {
    /// How urgent this kind is.
    pub fn level(self) -> AlertLevel {
        match self {
            AlertKind::NoMaster
            | AlertKind::SplitBrain
            | AlertKind::Reenrolled
            | AlertKind::ServerDown => AlertLevel::Crit,
            AlertKind::NotReporting | AlertKind::GenerationLag | AlertKind::ImageDrift => {
                AlertLevel::Warn
            }
            AlertKind::Drained | AlertKind::HardwareWaiting => AlertLevel::Info,
        }
    }

    /// A short label for people.
    pub fn label(self) -> &'static str {
        match self {
            AlertKind::NoMaster => "No master",
            AlertKind::SplitBrain => "Split brain",
            AlertKind::NotReporting => "Not reporting",
            AlertKind::GenerationLag => "Lagging",
            AlertKind::Reenrolled => "Re-enrolled",
            AlertKind::Drained => "Drained",
            AlertKind::HardwareWaiting => "New hardware",
            AlertKind::ServerDown => "Server down",
            AlertKind::ImageDrift => "Image drift",
        }
    }
}

/// One thing that needs attention.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Alert {
    pub level: AlertLevel,
    pub kind: AlertKind,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<i64>,
    /// The stored alert's id, for `POST /api/v1/alerts/{id}/acknowledge`; `None` for alerts derived from
    /// current state (they end when the state does).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<i64>,
    /// When a stored alert was first raised (ms since the epoch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<i64>,
    /// How often a stored alert was raised while open.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<i64>,
}

impl Alert {
    fn cluster(kind: AlertKind, cluster: &str, message: String) -> Self {
        Alert {
            level: kind.level(),
            kind,
            message,
            cluster: Some(cluster.to_owned()),
            node: None,
            node_id: None,
            id: None,
            since: None,
            count: None,
        }
    }

    fn node(kind: AlertKind, row: &store::nodes::NodeRow, message: String) -> Self {
        Alert {
            level: kind.level(),
            kind,
            message,
            cluster: row.cluster.clone(),
            node: Some(row.name().to_owned()),
            node_id: Some(row.id),
            id: None,
            since: None,
            count: None,
        }
    }
}

/// Whether the node's agent was heard within `STALE_AFTER_MS` of `now`.
pub(super) fn reporting(now: i64, n: &store::nodes::NodeRow) -> bool {
    n.last_seen_at.is_some_and(|t| now - t <= STALE_AFTER_MS)
}

/// Whole seconds since `at` in words, for alert messages.
fn silent_for(now: i64, at: Option<i64>) -> String {
    match at {
        None => "never seen".into(),
        Some(t) => format!("last seen {} s ago", (now.saturating_sub(t) / 1000).max(0)),
    }
}

impl Fleet {
    /// Every current alert, most urgent first (crit, warn, info), each level in cluster then node order.
    pub async fn alerts(&self) -> Result<Vec<Alert>> {
        let mut conn = self.store.read().await?;
        let clusters = store::clusters::load(&mut conn, None).await?;
        let nodes = store::nodes::list(&mut conn, &store::nodes::NodeFilter::default()).await?;
        let stored = store::alerts::open(&mut conn, now_ms(), MAX_STORED_ALERTS).await?;
        let images = store::images::list(&mut conn).await?;
        drop(conn);
        let now = now_ms();
        let mut by_cluster: HashMap<i64, Vec<&store::nodes::NodeRow>> = HashMap::new();
        for n in &nodes {
            if let Some(c) = n.cluster_id {
                by_cluster.entry(c).or_default().push(n);
            }
        }
        let mut alerts = Vec::new();
        for c in &clusters {
            let members = by_cluster.get(&c.id).map(Vec::as_slice).unwrap_or_default();
            if !members.is_empty() {
                // A silent node's last word does not count: a balancer cut off from the server (and from its
                // peer) still "says" master; the not-reporting alert names it instead.
                let masters: Vec<&str> = members
                    .iter()
                    .filter(|n| n.vrrp_state.as_deref() == Some(VrrpState::Master.as_str()))
                    .filter(|n| reporting(now, n))
                    .map(|n| n.name())
                    .collect();
                if masters.is_empty() {
                    alerts.push(Alert::cluster(
                        AlertKind::NoMaster,
                        &c.name,
                        format!("cluster {} has no VRRP master", c.name),
                    ));
                } else if masters.len() > 1 {
                    alerts.push(Alert::cluster(
                        AlertKind::SplitBrain,
                        &c.name,
                        format!(
                            "cluster {} has {} masters: {}",
                            c.name,
                            masters.len(),
                            masters.join(", ")
                        ),
                    ));
                }
            }
            for svc in &c.spec.services {
                for r in svc.real_servers.iter().filter(|r| r.enabled == Some(false)) {
                    alerts.push(Alert::cluster(
                        AlertKind::Drained,
                        &c.name,
                        format!(
                            "real server {} of {}:{} in cluster {} is drained",
                            socket_text(&r.address, r.port),
                            svc.protocol,
                            socket_text(&svc.vip, svc.port),
                            c.name
                        ),
                    ));
                }
            }
        }
        for n in nodes.iter().filter(|n| n.cluster.is_some()) {
            if !reporting(now, n) {
                alerts.push(Alert::node(
                    AlertKind::NotReporting,
                    n,
                    format!(
                        "node {} is not reporting ({})",
                        n.name(),
                        silent_for(now, n.last_seen_at)
                    ),
                ));
            }
            if n.applied_generation < n.role_generation {
                alerts.push(Alert::node(
                    AlertKind::GenerationLag,
                    n,
                    format!(
                        "node {} applied generation {}, newest is {}",
                        n.name(),
                        n.applied_generation,
                        n.role_generation
                    ),
                ));
            }
        }
        for d in nodes
            .iter()
            .filter_map(|n| super::drift::node_drift(n, &images, now))
            .filter(|d| d.state == super::drift::DriftState::Drifted)
        {
            alerts.push(Alert {
                level: AlertKind::ImageDrift.level(),
                kind: AlertKind::ImageDrift,
                message: d.message(),
                cluster: d.cluster.clone(),
                node: Some(d.node.clone()),
                node_id: Some(d.node_id),
                id: None,
                since: None,
                count: None,
            });
        }
        for a in stored {
            let Ok(kind) = a.kind.parse::<AlertKind>() else {
                tracing::warn!(id = a.id, kind = a.kind, "stored alert of an unknown kind");
                continue;
            };
            alerts.push(Alert {
                level: kind.level(),
                kind,
                message: a.message,
                cluster: a.cluster,
                node: a.node,
                node_id: a.node_id,
                id: Some(a.id),
                since: Some(a.first_at),
                count: Some(a.count),
            });
        }
        let waiting = nodes
            .iter()
            .filter(|n| n.state == NodeState::Discovered)
            .count();
        if waiting > 0 {
            alerts.push(Alert {
                level: AlertKind::HardwareWaiting.level(),
                kind: AlertKind::HardwareWaiting,
                message: format!("{waiting} new machine(s) waiting for approval"),
                cluster: None,
                node: None,
                node_id: None,
                id: None,
                since: None,
                count: None,
            });
        }
        // Stable: within a level, the order above (clusters, nodes, re-enrollments, hardware) stays.
        alerts.sort_by_key(|a| a.level);
        Ok(alerts)
    }

    /// Acknowledges a stored alert (an operator has looked): it leaves the list, and the audit log says who.
    pub async fn acknowledge_alert(&self, actor: &Actor, id: i64) -> Result<()> {
        let mut tx = self.store.begin().await?;
        let Some(row) = store::alerts::acknowledge(&mut tx, id, &actor.0, now_ms()).await? else {
            return Err(FleetError::NotFound(format!("no open alert with id {id}")));
        };
        store::audit::append(
            &mut tx,
            &actor.0,
            AuditAction::AlertAcknowledge,
            &format!("alert:{id}"),
            Some(
                &serde_json::json!({"kind": row.kind, "node": row.node, "message": row.message,
                "first_at": row.first_at, "count": row.count}),
            ),
            Some(&serde_json::json!({"acknowledged": true})),
        )
        .await?;
        store::commit(tx).await?;
        self.notifier.fleet_changed();
        Ok(())
    }
}

/// Most stored alerts listed at once (one open row per kind and node bounds them anyway).
const MAX_STORED_ALERTS: i64 = 1000;

#[cfg(test)]
mod tests {
    use lbfleet_proto::{AgentReport, Role};

    use super::super::testing::{admin, fleet, member, ready_node, spec};
    use super::super::{RealServerChange, RealServerRef, ServiceRef};
    use super::*;

    fn report(applied: u64, vrrp: Option<VrrpState>) -> AgentReport {
        AgentReport {
            applied_generation: applied,
            vrrp_state: vrrp,
            ..AgentReport::default()
        }
    }

    fn kinds(alerts: &[Alert]) -> Vec<(AlertKind, Option<&str>)> {
        alerts.iter().map(|a| (a.kind, a.node.as_deref())).collect()
    }

    #[tokio::test]
    async fn alerts_follow_vrrp_reports_generations_and_drains() {
        let (f, _dir) = fleet().await;
        assert!(f.alerts().await.expect("alerts").is_empty());
        f.put_cluster(&admin(), "ext", &spec(51, "198.18.0.10"))
            .await
            .expect("put");
        f.discover("52:54:00:00:00:99").await.expect("discover");
        let a = member(&f, 1, "ext", Role::Active).await;
        let b = member(&f, 2, "ext", Role::Backup).await;
        let (ida, idb) = (
            f.get_node(&a).await.expect("a").id,
            f.get_node(&b).await.expect("b").id,
        );
        // Nobody reported yet: no master, both silent and behind, one machine waiting.
        let got = f.alerts().await.expect("alerts");
        assert_eq!(
            kinds(&got),
            vec![
                (AlertKind::NoMaster, None),
                (AlertKind::NotReporting, Some("lb-01")),
                (AlertKind::GenerationLag, Some("lb-01")),
                (AlertKind::NotReporting, Some("lb-02")),
                (AlertKind::GenerationLag, Some("lb-02")),
                (AlertKind::HardwareWaiting, None),
            ]
        );
        assert_eq!(got[0].level, AlertLevel::Crit);
        assert_eq!(got[1].message, "node lb-01 is not reporting (never seen)");

        // Both report the newest generation, both as master: split brain and nothing else about them.
        let ga = f.get_node(&a).await.expect("a").role_generation as u64;
        let gb = f.get_node(&b).await.expect("b").role_generation as u64;
        f.report(ida, &report(ga, Some(VrrpState::Master)))
            .await
            .expect("report a");
        f.report(idb, &report(gb, Some(VrrpState::Master)))
            .await
            .expect("report b");
        let got = f.alerts().await.expect("alerts");
        assert_eq!(
            kinds(&got),
            vec![
                (AlertKind::SplitBrain, None),
                (AlertKind::HardwareWaiting, None)
            ]
        );
        assert_eq!(got[0].message, "cluster ext has 2 masters: lb-01, lb-02");

        // lb-01 goes silent (cut off from the server and its peer, its last report still says master): it is
        // not reporting, and its stale word makes no split brain.
        let mut tx = f.store.begin().await.expect("begin");
        sqlx::query("UPDATE nodes SET last_seen_at = $1 WHERE id = $2")
            .bind(now_ms() - STALE_AFTER_MS - 1_000)
            .bind(ida)
            .execute(&mut *tx)
            .await
            .expect("age lb-01");
        store::commit(tx).await.expect("commit");
        let got = f.alerts().await.expect("alerts");
        assert_eq!(
            kinds(&got),
            vec![
                (AlertKind::NotReporting, Some("lb-01")),
                (AlertKind::HardwareWaiting, None)
            ]
        );
        f.report(ida, &report(ga, Some(VrrpState::Master)))
            .await
            .expect("report a again");

        // The backup settles; draining a real server raises an info alert (and a new generation to apply).
        f.report(idb, &report(gb, Some(VrrpState::Backup)))
            .await
            .expect("report b");
        let service: ServiceRef = "tcp:198.18.0.10:80".parse().expect("service");
        let rs: RealServerRef = "198.18.2.2:80".parse().expect("rs");
        f.change_real_server(
            &admin(),
            "ext",
            &service,
            &rs,
            RealServerChange::Enabled(false),
        )
        .await
        .expect("drain");
        let got = f.alerts().await.expect("alerts");
        assert_eq!(
            kinds(&got),
            vec![
                (AlertKind::GenerationLag, Some("lb-01")),
                (AlertKind::GenerationLag, Some("lb-02")),
                (AlertKind::Drained, None),
                (AlertKind::HardwareWaiting, None),
            ]
        );
        assert_eq!(
            got[2].message,
            "real server 198.18.2.2:80 of tcp:198.18.0.10:80 in cluster ext is drained"
        );
    }

    #[tokio::test]
    async fn a_reenrollment_while_the_agent_is_alive_is_a_crit_alert() {
        let (f, _dir) = fleet().await;
        let key = ready_node(&f, 7).await;
        let enroll = |token: String| -> lbfleet_proto::EnrollRequest {
            serde_json::from_value(serde_json::json!({"token": token, "mac": "52:54:00:00:00:07"}))
                .expect("enroll request")
        };
        let reenrolled = |alerts: &[Alert]| -> Vec<Alert> {
            alerts
                .iter()
                .filter(|a| a.kind == AlertKind::Reenrolled)
                .cloned()
                .collect()
        };
        // A first enrollment is what every node does.
        let t = f
            .issue_enrollment_token(&admin(), &key)
            .await
            .expect("token");
        f.enroll(&enroll(t.token)).await.expect("enroll");
        assert!(reenrolled(&f.alerts().await.expect("alerts")).is_empty());
        // The agent reports (its credential is in use), then someone redeems a fresh token for the node.
        let node_id = f.get_node(&key).await.expect("node").id;
        f.report(node_id, &report(0, None)).await.expect("report");
        let t = f
            .issue_enrollment_token(&admin(), &key)
            .await
            .expect("token");
        f.enroll(&enroll(t.token)).await.expect("enroll");
        let got = reenrolled(&f.alerts().await.expect("alerts"));
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].level, AlertLevel::Crit);
        assert_eq!(
            (got[0].node.as_deref(), got[0].node_id),
            (Some("lb-07"), Some(node_id))
        );
        assert!(
            got[0]
                .message
                .starts_with("node lb-07 re-enrolled while its agent was alive"),
            "{}",
            got[0].message
        );
    }
}
