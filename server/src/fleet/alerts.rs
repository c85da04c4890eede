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

wire_enum!(
    /// How urgent an alert is; the text always says what is wrong, the level only orders and colours it.
    AlertLevel { Crit => "crit", Warn => "warn", Info => "info" }
);

wire_enum!(
    /// What an alert is about.
    AlertKind {
        NoMaster => "no_master", SplitBrain => "split_brain", Takeover => "takeover",
        NotReporting => "not_reporting",
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
            AlertKind::Takeover
            | AlertKind::NotReporting
            | AlertKind::GenerationLag
            | AlertKind::ImageDrift => AlertLevel::Warn,
            AlertKind::Drained | AlertKind::HardwareWaiting => AlertLevel::Info,
        }
    }

    /// A short label for people.
    pub fn label(self) -> &'static str {
        match self {
            AlertKind::NoMaster => "No master",
            AlertKind::SplitBrain => "Split brain",
            AlertKind::Takeover => "Took over",
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

/// One cluster member as the VRRP rules see it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MemberLive<'a> {
    id: i64,
    name: &'a str,
    /// Its last report (or, when silent, its last word) says MASTER.
    claims_master: bool,
    last_seen: Option<i64>,
    /// Heard within `node_silent_after`.
    reporting: bool,
    /// Its most recent transition to MASTER as it reported it: when (its clock) and why.
    took_over: Option<(i64, String)>,
}

impl<'a> MemberLive<'a> {
    fn of(
        n: &'a store::nodes::NodeRow,
        last_seen: Option<i64>,
        now: i64,
        liveness: &super::liveness::Liveness,
    ) -> Self {
        let claims_master = n.vrrp_state.as_deref() == Some(VrrpState::Master.as_str());
        // When: by the server's clock, the first report that carried the takeover (`master_since_at`); the
        // agent's own `at_ms` is by its clock, which may be off by more than a failover takes. Why: the reason
        // the master gave for its newest transition to MASTER.
        let took_over = claims_master
            .then_some(n.master_since_at)
            .flatten()
            .map(|since| {
                let reason = n
                    .last_report
                    .as_deref()
                    .and_then(|r| serde_json::from_str::<lbfleet_proto::AgentReport>(r).ok())
                    .and_then(|r| {
                        r.vrrp_transitions
                            .iter()
                            .rev()
                            .find(|t| t.to == VrrpState::Master)
                            .map(|t| t.reason.clone())
                    })
                    .unwrap_or_default();
                (since, reason)
            });
        MemberLive {
            id: n.id,
            name: n.name(),
            claims_master,
            last_seen,
            reporting: liveness.reporting(now, last_seen),
            took_over,
        }
    }
}

/// What a cluster's masters come to.
#[derive(Debug, PartialEq, Eq)]
enum Verdict<'m, 'a> {
    /// One reporting master, no other node claiming it.
    Fine,
    /// No reporting master; `silent`: unreachable nodes whose last word was MASTER (they may still serve).
    NoMaster { silent: Vec<&'m MemberLive<'a>> },
    /// Several masters, each heard after the newest of them took over: both sides are alive (VRRP between them
    /// is broken), so both hold the VIPs.
    SplitBrain(Vec<&'m MemberLive<'a>>),
    /// `by` is master and the other claimants went silent before it took over (or are unreachable): a failover,
    /// not a split brain.
    Takeover {
        by: &'m MemberLive<'a>,
        silent: Vec<&'m MemberLive<'a>>,
    },
}

/// The split-brain rule (and the takeover wording). A node that claims MASTER but is not reporting is no evidence of a split brain: a
/// balancer cut off from the server (and from its peer) still "says" master. Neither is a master not heard from
/// since another took over (it has been silent since before the takeover, which is why the takeover happened;
/// within `node_silent_after` it will be unreachable). Two masters both heard after the newer one took over
/// are a split brain, raised as soon as the older one's next heartbeat arrives (one heartbeat interval). A
/// master that reported no transition to MASTER gives no takeover time: two of those reporting is a split brain.
fn masters_verdict<'m, 'a>(members: &'m [MemberLive<'a>]) -> Verdict<'m, 'a> {
    let (reporting, silent): (Vec<&MemberLive>, Vec<&MemberLive>) = members
        .iter()
        .filter(|m| m.claims_master)
        .partition(|m| m.reporting);
    // Members that went silent before `by` took over, whatever they said last (a master that saw its link go
    // down says "fault" if it can still report): the takeover is why `by` is master.
    let lost_before = |by: &MemberLive<'_>| -> Vec<&'m MemberLive<'a>> {
        let Some((since, _)) = &by.took_over else {
            return Vec::new();
        };
        members
            .iter()
            .filter(|m| !m.claims_master && !m.reporting)
            .filter(|m| m.last_seen.is_some_and(|t| t <= *since))
            .collect()
    };
    match reporting.as_slice() {
        [] => Verdict::NoMaster { silent },
        [one] => {
            let mut silent = silent;
            silent.extend(lost_before(one));
            if silent.is_empty() {
                Verdict::Fine
            } else {
                Verdict::Takeover { by: one, silent }
            }
        }
        several => {
            let newest = several
                .iter()
                .filter_map(|m| m.took_over.as_ref().map(|(at, _)| (*at, *m)))
                .max_by_key(|(at, _)| *at);
            let Some((since, by)) = newest else {
                return Verdict::SplitBrain(several.to_vec());
            };
            let (heard, not_heard): (Vec<&MemberLive>, Vec<&MemberLive>) = several
                .iter()
                .filter(|m| m.id != by.id)
                .partition(|m| m.last_seen.is_some_and(|t| t >= since));
            if heard.is_empty() {
                let mut all = not_heard;
                all.extend(silent);
                all.extend(lost_before(by));
                Verdict::Takeover { by, silent: all }
            } else {
                let mut masters = vec![by];
                masters.extend(heard);
                masters.sort_by_key(|m| m.name);
                Verdict::SplitBrain(masters)
            }
        }
    }
}

fn names(members: &[&MemberLive<'_>]) -> String {
    members
        .iter()
        .map(|m| m.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// "lb-02 took over: master down timer expired; lb-01 unreachable (last seen 4 s ago)".
fn takeover_text(now: i64, by: &MemberLive<'_>, silent: &[&MemberLive<'_>]) -> String {
    let head = match &by.took_over {
        Some((_, reason)) if !reason.is_empty() => format!("{} took over: {reason}", by.name),
        _ => format!("{} is master", by.name),
    };
    let tail: Vec<String> = silent
        .iter()
        .map(|m| {
            let state = if m.reporting {
                "not heard from since"
            } else {
                "unreachable"
            };
            format!("{} {state} ({})", m.name, silent_for(now, m.last_seen))
        })
        .collect();
    format!("{head}; {}", tail.join("; "))
}

/// How recently a node must have been heard for drift and rollout gates to trust its report (its database
/// `last_seen_at`, which the liveness flush moves on once per heartbeat interval).
const HEARD_WITHIN_MS: i64 = 10_000;

/// Whether the node's agent was heard within `HEARD_WITHIN_MS` of `now` (drift and rollout gates).
pub(super) fn reporting(now: i64, n: &store::nodes::NodeRow) -> bool {
    n.last_seen_at.is_some_and(|t| now - t <= HEARD_WITHIN_MS)
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
        // Silent nodes a takeover alert already names (no separate not-reporting alert for them).
        let mut covered: Vec<i64> = Vec::new();
        for c in &clusters {
            let members = by_cluster.get(&c.id).map(Vec::as_slice).unwrap_or_default();
            if !members.is_empty() {
                let live: Vec<MemberLive<'_>> = members
                    .iter()
                    .map(|n| {
                        MemberLive::of(
                            n,
                            self.liveness.last_seen(n.id, n.last_seen_at),
                            now,
                            &self.liveness,
                        )
                    })
                    .collect();
                match masters_verdict(&live) {
                    Verdict::Fine => {}
                    Verdict::NoMaster { silent } => {
                        let message = if silent.is_empty() {
                            format!("cluster {} has no VRRP master", c.name)
                        } else {
                            format!(
                                "cluster {} has no reporting VRRP master; {} last said master and {} unreachable",
                                c.name,
                                names(&silent),
                                if silent.len() > 1 { "are" } else { "is" }
                            )
                        };
                        alerts.push(Alert::cluster(AlertKind::NoMaster, &c.name, message));
                    }
                    Verdict::SplitBrain(masters) => {
                        alerts.push(Alert::cluster(
                            AlertKind::SplitBrain,
                            &c.name,
                            format!(
                                "cluster {} has {} masters: {}",
                                c.name,
                                masters.len(),
                                names(&masters)
                            ),
                        ));
                    }
                    Verdict::Takeover { by, silent } => {
                        covered.extend(silent.iter().map(|m| m.id));
                        alerts.push(Alert::cluster(
                            AlertKind::Takeover,
                            &c.name,
                            takeover_text(now, by, &silent),
                        ));
                    }
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
            let last_seen = self.liveness.last_seen(n.id, n.last_seen_at);
            if !self.liveness.reporting(now, last_seen) && !covered.contains(&n.id) {
                alerts.push(Alert::node(
                    AlertKind::NotReporting,
                    n,
                    format!(
                        "node {} is not reporting ({})",
                        n.name(),
                        silent_for(now, last_seen)
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

    /// Sets when the node was last heard (as if its reports had stopped then).
    async fn last_heard(f: &Fleet, id: i64, at: i64) {
        let mut tx = f.store.begin().await.expect("begin");
        sqlx::query("UPDATE nodes SET last_seen_at = $1 WHERE id = $2")
            .bind(at)
            .bind(id)
            .execute(&mut *tx)
            .await
            .expect("set last_seen_at");
        store::commit(tx).await.expect("commit");
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
        // lb-01 not heard since lb-02's mastership began: a takeover so far; its next report makes it two.
        f.report(ida, &report(ga, Some(VrrpState::Master)))
            .await
            .expect("report a again");
        let got = f.alerts().await.expect("alerts");
        assert_eq!(
            kinds(&got),
            vec![
                (AlertKind::SplitBrain, None),
                (AlertKind::HardwareWaiting, None)
            ]
        );
        assert_eq!(got[0].message, "cluster ext has 2 masters: lb-01, lb-02");

        // lb-01 goes silent (cut off from the server and its peer, its last report still says master): its
        // stale word makes no split brain; lb-02 is master and lb-01 unreachable.
        last_heard(&f, ida, now_ms() - f.liveness().silent_after_ms() - 1_000).await;
        let got = f.alerts().await.expect("alerts");
        assert_eq!(
            kinds(&got),
            vec![
                (AlertKind::Takeover, None),
                (AlertKind::HardwareWaiting, None)
            ]
        );
        assert_eq!(
            got[0].message,
            "lb-02 is master; lb-01 unreachable (last seen 4 s ago)"
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

    /// The node's clock plays no part in telling a takeover from a split brain: a master whose clock is two
    /// seconds behind the server's (a diskless node without NTP; a QEMU guest reads a whole-second RTC at boot)
    /// reports a takeover "before" the old master's last heartbeat. Before `master_since_at` the rule compared
    /// that agent-clock time with the server-clock `last_seen` and raised a split brain for a plain failover.
    #[tokio::test]
    async fn a_takeover_by_a_node_with_a_slow_clock_is_no_split_brain() {
        let (f, _dir) = fleet().await;
        f.put_cluster(&admin(), "ext", &spec(51, "198.18.0.10"))
            .await
            .expect("put");
        let a = member(&f, 1, "ext", Role::Active).await;
        let b = member(&f, 2, "ext", Role::Backup).await;
        let (ra, rb) = (
            f.get_node(&a).await.expect("a"),
            f.get_node(&b).await.expect("b"),
        );
        let (ga, gb) = (ra.role_generation as u64, rb.role_generation as u64);
        f.report(ra.id, &report(ga, Some(VrrpState::Master)))
            .await
            .expect("report a");
        f.report(rb.id, &report(gb, Some(VrrpState::Backup)))
            .await
            .expect("report b");
        // lb-01 was last heard 500 ms ago (then its links went), still within node_silent_after.
        last_heard(&f, ra.id, now_ms() - 500).await;
        // lb-02 takes over now; its clock says 2 s ago.
        let skewed = u64::try_from(now_ms() - 2_000).expect("time");
        let takeover = AgentReport {
            vrrp_transitions: vec![lbfleet_proto::VrrpTransition {
                from: VrrpState::Backup,
                to: VrrpState::Master,
                reason: "master down timer expired".into(),
                at_ms: skewed,
            }],
            ..report(gb, Some(VrrpState::Master))
        };
        f.report(rb.id, &takeover).await.expect("takeover");
        let got = f.alerts().await.expect("alerts");
        assert_eq!(kinds(&got), vec![(AlertKind::Takeover, None)], "{got:?}");
        assert!(
            got[0].message.starts_with(
                "lb-02 took over: master down timer expired; lb-01 not heard from since"
            ),
            "{}",
            got[0].message
        );
        // lb-01 heard again after the takeover while still master: now two live masters.
        f.report(ra.id, &report(ga, Some(VrrpState::Master)))
            .await
            .expect("report a again");
        let got = f.alerts().await.expect("alerts");
        assert_eq!(kinds(&got), vec![(AlertKind::SplitBrain, None)], "{got:?}");
    }

    fn live(
        id: i64,
        name: &'static str,
        master: bool,
        last_seen: i64,
        took_over: Option<i64>,
    ) -> MemberLive<'static> {
        MemberLive {
            id,
            name,
            claims_master: master,
            last_seen: Some(last_seen),
            // The rule's input: whether `last_seen` is within node_silent_after of now (now = 10_000, 3 s).
            reporting: 10_000 - last_seen <= 3_000,
            took_over: took_over.map(|at| (at, "master down timer expired".to_owned())),
        }
    }

    fn verdict_names(members: &[MemberLive<'static>]) -> (String, Vec<&'static str>) {
        match masters_verdict(members) {
            Verdict::Fine => ("fine".into(), vec![]),
            Verdict::NoMaster { silent } => {
                ("no_master".into(), silent.iter().map(|m| m.name).collect())
            }
            Verdict::SplitBrain(m) => ("split".into(), m.iter().map(|m| m.name).collect()),
            Verdict::Takeover { by, silent } => (
                format!("takeover by {}", by.name),
                silent.iter().map(|m| m.name).collect(),
            ),
        }
    }

    #[test]
    fn the_split_brain_rule_tells_a_takeover_from_two_live_masters() {
        // Steady pair.
        let steady = [
            live(1, "lb-01", true, 9_500, Some(1_000)),
            live(2, "lb-02", false, 9_600, None),
        ];
        assert_eq!(verdict_names(&steady), ("fine".into(), vec![]));
        // lb-01 silent since 8_000, lb-02 took over at 8_400: within the 3 s lb-01 still counts as reporting, but
        // has not been heard since the takeover: no split brain.
        let cut = [
            live(1, "lb-01", true, 8_000, Some(1_000)),
            live(2, "lb-02", true, 9_900, Some(8_400)),
        ];
        assert_eq!(
            verdict_names(&cut),
            ("takeover by lb-02".into(), vec!["lb-01"])
        );
        // Later, lb-01 unreachable: the same takeover.
        let later = [
            live(1, "lb-01", true, 6_000, Some(1_000)),
            live(2, "lb-02", true, 9_900, Some(6_400)),
        ];
        assert_eq!(
            verdict_names(&later),
            ("takeover by lb-02".into(), vec!["lb-01"])
        );
        // lb-01 said "fault" last (it saw its link go) before it went silent: still the takeover's cause.
        let fault = [
            live(1, "lb-01", false, 6_000, Some(1_000)),
            live(2, "lb-02", true, 9_900, Some(6_400)),
        ];
        assert_eq!(
            verdict_names(&fault),
            ("takeover by lb-02".into(), vec!["lb-01"])
        );
        // A backup that went silent long after the master took over is no takeover: its own alert says it.
        let backup_gone = [
            live(1, "lb-01", true, 9_900, Some(1_000)),
            live(2, "lb-02", false, 6_000, None),
        ];
        assert_eq!(verdict_names(&backup_gone), ("fine".into(), vec![]));
        // Both heard after lb-02 took over: a split brain.
        let split = [
            live(1, "lb-01", true, 9_800, Some(1_000)),
            live(2, "lb-02", true, 9_900, Some(9_000)),
        ];
        assert_eq!(
            verdict_names(&split),
            ("split".into(), vec!["lb-01", "lb-02"])
        );
        // Two masters that never said when they took over, both reporting: a split brain.
        let unknown = [
            live(1, "lb-01", true, 9_800, None),
            live(2, "lb-02", true, 9_900, None),
        ];
        assert_eq!(
            verdict_names(&unknown),
            ("split".into(), vec!["lb-01", "lb-02"])
        );
        // Only a silent master: no reporting master, and which node last said so.
        let alone = [
            live(1, "lb-01", true, 6_000, Some(1_000)),
            live(2, "lb-02", false, 9_900, None),
        ];
        assert_eq!(verdict_names(&alone), ("no_master".into(), vec!["lb-01"]));
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
