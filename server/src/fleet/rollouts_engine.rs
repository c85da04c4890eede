//! The rollout engine: a loop every server runs (`run`) that moves each unfinished rollout one step per tick.
//! Before touching a rollout a server claims its lease (`store::rollouts::claim`: a compare-and-set on the
//! row, renewed each tick), so on several servers sharing one PostgreSQL only one drives it; another takes
//! over once the lease expired, and a restarted server (same server id) carries on at once. Every step
//! reads the node's stored state afresh, so the engine holds nothing a restart would lose.
//!
//! One node at a time, in the plan's order. A pending node: skipped if it already runs the image; if it is
//! its cluster's active, the cluster is first switched over (`Fleet::switchover`) to a serving backup,
//! preferably one already upgraded; it waits while another member of its cluster is not serving (never more
//! than `max_unavailable` down, never the last serving one). Then it is marked upgrading (saved first), its
//! image set and its reboot requested. An upgrading node passes its gate once it reports, after the reboot,
//! the new image, state serving, its role in sync and every check up; if the gate's timeout passes first,
//! it is put back on its previous image, rebooted again, and the rollout fails saying why. Every step is
//! audited (`rollout.step`, actor `rollout:ID`, besides the node's own `node.image`/`node.reboot` rows) and
//! written to the events.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;

use lbfleet_proto::{AgentReport, NodeState, Role};

use super::alerts::reporting;
use super::rollouts::{Gate, Progress, RolloutRequest, RolloutState, Step, StepPhase};
use super::{Actor, Fleet, FleetError, Result};
use crate::audit::AuditAction;
use crate::store::events::EventKind;
use crate::store::nodes::{NodeFilter, NodeKey, NodeRow};
use crate::store::{self, now_ms, StoreError};

/// How often the engine looks at unfinished rollouts.
pub const TICK: Duration = Duration::from_millis(500);
/// How long a claim on a rollout lasts without renewal (another server takes over after it).
pub const LEASE: Duration = Duration::from_secs(10);

/// Runs the engine until `stop`: every `TICK`, each unfinished rollout whose lease this server holds or can
/// take moves on one step.
pub async fn run(
    fleet: Arc<Fleet>,
    owner: String,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    // A database outage fails every tick: one warning per `WARN_EVERY`, not two a second.
    const WARN_EVERY: Duration = Duration::from_secs(30);
    let mut warned: Option<tokio::time::Instant> = None;
    loop {
        if let Err(e) = fleet.drive_rollouts(&owner).await {
            if warned.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                tracing::warn!(error = %e, "rollout engine tick failed");
                warned = Some(tokio::time::Instant::now());
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = stop.wait_for(|s| *s) => return Ok(()),
        }
    }
}

/// What a step decided about the rollout.
#[derive(Debug, Default)]
struct Decision {
    /// The rollout's next state and reason (`None`: unchanged).
    state: Option<(RolloutState, Option<String>)>,
    /// An audited step: its name and details (also the event's message).
    step: Option<(&'static str, String, serde_json::Value)>,
}

impl Decision {
    fn wait() -> Decision {
        Decision::default()
    }

    fn step(name: &'static str, message: String, detail: serde_json::Value) -> Decision {
        Decision {
            state: None,
            step: Some((name, message, detail)),
        }
    }

    fn fail(name: &'static str, reason: String, detail: serde_json::Value) -> Decision {
        Decision {
            state: Some((RolloutState::Failed, Some(reason.clone()))),
            step: Some((name, reason, detail)),
        }
    }
}

/// Whether a node counts as up for its cluster: serving, reporting, its newest role applied.
fn available(now: i64, n: &NodeRow) -> bool {
    n.state == NodeState::Serving && reporting(now, n) && n.applied_generation >= n.role_generation
}

/// What keeps a node from passing its gate (empty: it passes). `since` is when its reboot was requested.
pub(super) fn gate_missing(
    row: &NodeRow,
    report: Option<&AgentReport>,
    image: &str,
    since: i64,
    gate: &Gate,
    now: i64,
) -> Vec<String> {
    let mut missing = Vec::new();
    if row.last_seen_at.is_none_or(|t| t <= since) {
        missing.push("no report since the reboot request".to_owned());
        return missing;
    }
    if row.image_version.as_deref() != Some(image) {
        missing.push(format!(
            "runs image {}",
            row.image_version.as_deref().unwrap_or("unknown")
        ));
    }
    if let Some(r) = report {
        let up_ms = i64::try_from(r.uptime_s.saturating_mul(1000)).unwrap_or(i64::MAX);
        if up_ms > now - since {
            missing.push(format!("has not rebooted (agent up {} s)", r.uptime_s));
        }
    }
    if row.cluster.is_some() && row.state != NodeState::Serving {
        missing.push(format!("state {}", row.state));
    }
    if gate.in_sync && row.applied_generation < row.role_generation {
        missing.push(format!(
            "role not in sync (applied generation {} of {})",
            row.applied_generation, row.role_generation
        ));
    }
    if gate.checks_up {
        let down: Vec<String> = report
            .map(|r| {
                r.services
                    .iter()
                    .flat_map(|s| s.real_servers.iter())
                    .filter(|rs| !rs.healthy)
                    .map(|rs| super::socket_text(&rs.address, rs.port))
                    .collect()
            })
            .unwrap_or_default();
        if !down.is_empty() {
            let shown: Vec<&str> = down.iter().take(5).map(String::as_str).collect();
            missing.push(format!("checks down: {}", shown.join(", ")));
        }
    }
    missing
}

/// The node's last report, if it parses.
fn last_report(row: &NodeRow) -> Option<AgentReport> {
    row.last_report
        .as_deref()
        .and_then(|r| serde_json::from_str(r).ok())
}

impl Fleet {
    /// One engine tick: every unfinished rollout this server can lease moves on one step. Returns how many it
    /// drove.
    pub async fn drive_rollouts(&self, owner: &str) -> Result<usize> {
        let unfinished = {
            let mut conn = self.store.read().await?;
            store::rollouts::unfinished(&mut conn).await?
        };
        let mut driven = 0;
        for r in unfinished {
            let now = now_ms();
            let until = now + i64::try_from(LEASE.as_millis()).unwrap_or(10_000);
            let claimed = {
                let mut tx = self.store.begin().await?;
                let ok = store::rollouts::claim(&mut tx, r.id, owner, now, until).await?;
                store::commit(tx).await?;
                ok
            };
            if !claimed {
                continue;
            }
            driven += 1;
            if let Err(e) = self.drive_one(owner, r.id).await {
                tracing::warn!(rollout = r.id, error = %e, "rollout step failed; retried next tick");
            }
        }
        Ok(driven)
    }

    async fn drive_one(&self, owner: &str, id: i64) -> Result<()> {
        let row = {
            let mut conn = self.store.read().await?;
            store::rollouts::get(&mut conn, id).await?
        };
        let Some(row) = row else {
            return Ok(());
        };
        let state: RolloutState = row
            .state
            .parse()
            .map_err(|e: lbfleet_proto::UnknownValue| StoreError::Corrupt(e.to_string()))?;
        if !state.unfinished() {
            return Ok(());
        }
        let req: RolloutRequest =
            serde_json::from_str(&row.spec).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut progress: Progress =
            serde_json::from_str(&row.progress).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let actor = Actor(format!("rollout:{id}"));
        let Some(i) = progress
            .steps
            .iter()
            .position(|s| !matches!(s.phase, StepPhase::Done | StepPhase::Skipped))
        else {
            let names: Vec<&str> = progress.steps.iter().map(|s| s.node.as_str()).collect();
            let msg = format!(
                "rollout {id} of image {} succeeded: {}",
                req.image,
                names.join(", ")
            );
            let d = Decision {
                state: Some((RolloutState::Succeeded, None)),
                step: Some(("finished", msg, json!({}))),
            };
            self.save_decision(owner, id, state, &progress, None, d)
                .await?;
            let mut tx = self.store.begin().await?;
            store::rollouts::release(&mut tx, id, owner).await?;
            store::commit(tx).await?;
            return Ok(());
        };
        let before = progress.steps[i].clone();
        let decision = match before.phase {
            StepPhase::Pending if state == RolloutState::Paused => return Ok(()),
            StepPhase::Pending => {
                self.start_node(&actor, &req, &mut progress.steps[i])
                    .await?
            }
            StepPhase::Upgrading => {
                let d = self
                    .gate_node(&actor, id, &req, &mut progress.steps[i])
                    .await?;
                let s = &progress.steps[i];
                if s.phase == StepPhase::Done
                    && s.canary
                    && req.pause_after_canary
                    && !progress.canary_paused
                    && state == RolloutState::Running
                {
                    progress.canary_paused = true;
                    Decision {
                        state: Some((
                            RolloutState::Paused,
                            Some(format!(
                                "canary {} passed its gate; resume to go on",
                                s.node
                            )),
                        )),
                        ..d
                    }
                } else {
                    d
                }
            }
            // Not reached while unfinished (a rollback fails the rollout); stop rather than loop.
            StepPhase::RolledBack | StepPhase::Done | StepPhase::Skipped => Decision::fail(
                "stopped",
                format!("rollout {id}: node {} was rolled back", before.node),
                json!({}),
            ),
        };
        if decision.state.is_none() && decision.step.is_none() && progress.steps[i] == before {
            return Ok(());
        }
        let node_id = progress.steps[i].node_id;
        let cluster = progress.steps[i].cluster.clone();
        self.save_decision(
            owner,
            id,
            state,
            &progress,
            Some((node_id, cluster)),
            decision,
        )
        .await
    }

    /// Writes the progress, the new state and the step's audit row and event in one transaction, only while
    /// this server holds the lease and the state is still `state`.
    async fn save_decision(
        &self,
        owner: &str,
        id: i64,
        state: RolloutState,
        progress: &Progress,
        node: Option<(i64, Option<String>)>,
        d: Decision,
    ) -> Result<()> {
        let progress_json =
            serde_json::to_string(progress).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let (to, reason) = match &d.state {
            Some((s, r)) => (*s, r.clone()),
            None => (state, None),
        };
        let mut tx = self.store.begin().await?;
        let keep_reason = d.state.is_none();
        let reason = if keep_reason {
            store::rollouts::get(&mut tx, id)
                .await?
                .and_then(|r| r.reason)
        } else {
            reason
        };
        let saved = store::rollouts::save(
            &mut tx,
            id,
            store::rollouts::Save {
                owner: Some(owner),
                expected_state: Some(state.as_str()),
                state: to.as_str(),
                reason: reason.as_deref(),
                progress: &progress_json,
            },
        )
        .await?;
        if !saved {
            // Lease lost or an operator paused/aborted meanwhile: their word stands.
            return Ok(());
        }
        let (node_id, cluster) = node.unwrap_or((0, None));
        let node_id = (node_id != 0).then_some(node_id);
        if let Some((name, message, detail)) = &d.step {
            store::audit::append(
                &mut tx,
                &format!("rollout:{id}"),
                AuditAction::RolloutStep,
                &format!("rollout:{id}"),
                Some(&json!({"state": state})),
                Some(&json!({"step": name, "state": to, "message": message, "detail": detail})),
            )
            .await?;
            store::events::insert(
                &mut tx,
                EventKind::Rollout,
                node_id,
                cluster.as_deref(),
                &format!("rollout {id}: {message}"),
            )
            .await?;
        }
        store::commit(tx).await?;
        if let Some((name, message, _)) = &d.step {
            tracing::info!(rollout = id, step = name, state = %to, message, "rollout step");
        }
        self.notifier.fleet_changed();
        Ok(())
    }

    /// A pending node: skip it, switch its cluster over, wait, or mark it upgrading.
    async fn start_node(
        &self,
        actor: &Actor,
        req: &RolloutRequest,
        step: &mut Step,
    ) -> Result<Decision> {
        let now = now_ms();
        let (row, members) = {
            let mut conn = self.store.read().await?;
            let Some(row) = store::nodes::get(&mut conn, &NodeKey::Id(step.node_id)).await? else {
                return Ok(Decision::fail(
                    "missing",
                    format!("node {} no longer exists", step.node),
                    json!({}),
                ));
            };
            let members = match &row.cluster {
                Some(c) => {
                    store::nodes::list(
                        &mut conn,
                        &NodeFilter {
                            state: None,
                            cluster: Some(c.clone()),
                        },
                    )
                    .await?
                }
                None => vec![],
            };
            (row, members)
        };
        let since = *step.since.get_or_insert(now);
        if row.image_version.as_deref() == Some(req.image.as_str()) && available(now, &row) {
            if row.image.as_deref() != Some(req.image.as_str()) {
                self.set_node_image(actor, &NodeKey::Id(row.id), Some(req.image.clone()))
                    .await?;
            }
            step.phase = StepPhase::Skipped;
            step.finished_at = Some(now);
            step.note = Some(format!("already runs {}", req.image));
            return Ok(Decision::step(
                "skipped",
                format!("{} already runs image {}", step.node, req.image),
                json!({"node": step.node}),
            ));
        }
        let waited_too_long = |why: &str| {
            Decision::fail(
                "wait_timeout",
                format!(
                    "{} waited more than {} to start: {why}",
                    step.node,
                    humantime::format_duration(req.gate.timeout.0)
                ),
                json!({"node": step.node}),
            )
        };
        let timeout_ms = i64::try_from(req.gate.timeout.0.as_millis()).unwrap_or(i64::MAX);
        if let Some(cluster) = &row.cluster {
            let others: Vec<&NodeRow> = members.iter().filter(|m| m.id != row.id).collect();
            if others.is_empty() {
                return Ok(Decision::fail(
                    "refused",
                    format!(
                        "{} is the only member of cluster {cluster}: upgrading it would leave nothing serving",
                        step.node
                    ),
                    json!({"node": step.node}),
                ));
            }
            if row.role.as_deref() == Some(Role::Active.as_str()) {
                let mut backups: Vec<&&NodeRow> = others
                    .iter()
                    .filter(|m| m.role.as_deref() == Some(Role::Backup.as_str()))
                    .filter(|m| available(now, m))
                    .collect();
                backups.sort_by_key(|m| {
                    (
                        m.image_version.as_deref() != Some(req.image.as_str()),
                        -m.priority.unwrap_or(0),
                        m.id,
                    )
                });
                let Some(to) = backups.first() else {
                    let why = format!("no serving backup to switch cluster {cluster} over to");
                    if now - since > timeout_ms {
                        return Ok(waited_too_long(&why));
                    }
                    step.note = Some(format!("waiting: {why}"));
                    return Ok(Decision::wait());
                };
                let s = self
                    .switchover(actor, cluster, Some(&NodeKey::Id(to.id)))
                    .await?;
                step.note = Some(format!(
                    "switched cluster {cluster} over to {}",
                    s.new_active
                ));
                return Ok(Decision::step(
                    "switchover",
                    format!(
                        "cluster {cluster} switched over: {} active, {} backup before its upgrade",
                        s.new_active, s.old_active
                    ),
                    json!({"cluster": cluster, "new_active": s.new_active, "old_active": s.old_active}),
                ));
            }
            let down: Vec<&str> = others
                .iter()
                .filter(|m| !available(now, m))
                .map(|m| m.name())
                .collect();
            let up = others.len() - down.len();
            if up == 0 || down.len() + 1 > req.max_unavailable as usize {
                let why = format!(
                    "{} of cluster {cluster} not serving (max_unavailable {})",
                    down.join(", "),
                    req.max_unavailable
                );
                if now - since > timeout_ms {
                    return Ok(waited_too_long(&why));
                }
                step.note = Some(format!("waiting: {why}"));
                return Ok(Decision::wait());
            }
        }
        step.previous_image = row.image_version.clone().or_else(|| row.image.clone());
        step.reboot_generation = row.reboot_generation + 1;
        step.phase = StepPhase::Upgrading;
        step.since = Some(now);
        step.note = Some(format!("image {} set, reboot requested", req.image));
        Ok(Decision::step(
            "upgrade",
            format!(
                "{} goes from image {} to {}: reboot requested",
                step.node,
                step.previous_image.as_deref().unwrap_or("unknown"),
                req.image
            ),
            json!({"node": step.node, "from": step.previous_image, "to": req.image}),
        ))
    }

    /// An upgrading node: make sure its image is set and its reboot requested, then check its gate; roll it
    /// back once the gate's timeout passed.
    async fn gate_node(
        &self,
        actor: &Actor,
        id: i64,
        req: &RolloutRequest,
        step: &mut Step,
    ) -> Result<Decision> {
        let key = NodeKey::Id(step.node_id);
        let row = {
            let mut conn = self.store.read().await?;
            store::nodes::get(&mut conn, &key).await?
        };
        let Some(row) = row else {
            return Ok(Decision::fail(
                "missing",
                format!("node {} no longer exists", step.node),
                json!({}),
            ));
        };
        if row.image.as_deref() != Some(req.image.as_str()) {
            self.set_node_image(actor, &key, Some(req.image.clone()))
                .await?;
        }
        if row.reboot_generation < step.reboot_generation {
            let r = self
                .reboot_node(
                    actor,
                    &key,
                    Some(&format!("rollout {id}: upgrade to {}", req.image)),
                )
                .await?;
            step.reboot_generation = r.reboot_generation;
            step.since = Some(now_ms());
            return Ok(Decision::wait());
        }
        let now = now_ms();
        let since = step.since.unwrap_or(now);
        let report = last_report(&row);
        let missing = gate_missing(&row, report.as_ref(), &req.image, since, &req.gate, now);
        if missing.is_empty() {
            step.phase = StepPhase::Done;
            step.finished_at = Some(now);
            let took = Duration::from_millis(u64::try_from(now - since).unwrap_or(0));
            step.note = Some(format!(
                "serves {} (gate passed after {})",
                req.image,
                humantime::format_duration(Duration::from_secs(took.as_secs()))
            ));
            return Ok(Decision::step(
                "passed",
                format!(
                    "{} passed its gate on image {} after {} ms",
                    step.node,
                    req.image,
                    now - since
                ),
                json!({"node": step.node, "ms": now - since}),
            ));
        }
        let timeout_ms = i64::try_from(req.gate.timeout.0.as_millis()).unwrap_or(i64::MAX);
        if now - since <= timeout_ms {
            step.note = Some(format!("waiting: {}", missing.join("; ")));
            return Ok(Decision::wait());
        }
        // Failed: back to the previous image, rebooted again; the rollout stops saying why.
        let last_error = report
            .as_ref()
            .and_then(|r| r.errors.last().cloned())
            .map(|e| format!("; last error: {e}"))
            .unwrap_or_default();
        let back = step.previous_image.clone();
        let back_set = match self.set_node_image(actor, &key, back.clone()).await {
            Ok(_) => back.clone(),
            Err(FleetError::Invalid(_) | FleetError::NotFound(_)) => {
                // The image it ran is no longer registered: it boots the default.
                self.set_node_image(actor, &key, None).await?;
                None
            }
            Err(e) => return Err(e),
        };
        self.reboot_node(
            actor,
            &key,
            Some(&format!(
                "rollout {id}: back to {}",
                back_set.as_deref().unwrap_or("the default image")
            )),
        )
        .await?;
        step.phase = StepPhase::RolledBack;
        step.finished_at = Some(now);
        let reason = format!(
            "{} failed its gate within {} ({}{last_error}); put back on image {} and rebooted",
            step.node,
            humantime::format_duration(req.gate.timeout.0),
            missing.join("; "),
            back_set.as_deref().unwrap_or("(default)")
        );
        step.note = Some(reason.clone());
        Ok(Decision::fail(
            "rolled_back",
            reason,
            json!({"node": step.node, "missing": missing, "back_to": back_set}),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lbfleet_proto::{RealServerReport, ServiceReport};

    fn row(seen: Option<i64>, image: Option<&str>, state: NodeState, applied: i64) -> NodeRow {
        NodeRow {
            id: 1,
            mac: "52:54:00:00:00:01".into(),
            hostname: Some("lb-01".into()),
            state,
            image: Some("v2".into()),
            address: None,
            reserved_address: None,
            role_generation: 10,
            applied_generation: applied,
            agent_version: None,
            image_version: image.map(Into::into),
            vrrp_state: None,
            last_report: None,
            last_seen_at: seen,
            created_at: 0,
            updated_at: 0,
            cluster_id: Some(1),
            cluster: Some("ext".into()),
            role: Some("backup".into()),
            priority: Some(100),
            reboot_generation: 1,
            reboot_requested_at: None,
            master_since_at: None,
        }
    }

    fn report(uptime_s: u64, healthy: &[bool]) -> AgentReport {
        AgentReport {
            uptime_s,
            services: vec![ServiceReport {
                vip: "198.18.0.10".into(),
                port: 80,
                protocol: lbfleet_proto::Protocol::Tcp,
                connections: 0,
                packets_in: 0,
                packets_out: 0,
                bytes_in: 0,
                bytes_out: 0,
                real_servers: healthy
                    .iter()
                    .enumerate()
                    .map(|(i, h)| RealServerReport {
                        address: format!("198.18.2.{}", i + 1),
                        port: 80,
                        healthy: *h,
                        weight: 1,
                        active_conns: 0,
                        inactive_conns: 0,
                        connections: 0,
                        packets_in: 0,
                        packets_out: 0,
                        bytes_in: 0,
                        bytes_out: 0,
                        health: None,
                    })
                    .collect(),
            }],
            ..AgentReport::default()
        }
    }

    #[test]
    fn the_gate_names_everything_missing_and_passes_only_when_nothing_is() {
        let gate = Gate::default();
        let (since, now) = (100_000, 130_000);
        let silent = row(Some(90_000), Some("v1"), NodeState::Serving, 10);
        assert_eq!(
            gate_missing(&silent, None, "v2", since, &gate, now),
            ["no report since the reboot request"]
        );
        let old = row(Some(120_000), Some("v1"), NodeState::Assigned, 9);
        let m = gate_missing(
            &old,
            Some(&report(3600, &[true, false])),
            "v2",
            since,
            &gate,
            now,
        );
        assert_eq!(m.len(), 5, "{m:?}");
        assert!(m[0].contains("runs image v1"));
        assert!(m[1].contains("has not rebooted"));
        assert!(m[2].contains("state assigned"));
        assert!(m[3].contains("applied generation 9 of 10"));
        assert!(m[4].contains("checks down: 198.18.2.2:80"));
        let good = row(Some(120_000), Some("v2"), NodeState::Serving, 10);
        assert!(gate_missing(
            &good,
            Some(&report(5, &[true, true])),
            "v2",
            since,
            &gate,
            now
        )
        .is_empty());
        // Checks and sync are the gate's to require.
        let lax = Gate {
            checks_up: false,
            in_sync: false,
            ..Gate::default()
        };
        let behind = row(Some(120_000), Some("v2"), NodeState::Serving, 9);
        assert!(
            gate_missing(&behind, Some(&report(5, &[false])), "v2", since, &lax, now).is_empty()
        );
        assert_eq!(
            gate_missing(&behind, Some(&report(5, &[false])), "v2", since, &gate, now).len(),
            2
        );
    }
}
