//! Rollouts: one image over clusters or nodes, node by node, each gated. This file holds what an operator
//! asks for and sees (the request, its validation and plan, list/get/pause/resume/abort); the engine that
//! moves a rollout on is `rollouts_engine`. A rollout's state lives in the database (`store::rollouts`), so
//! a restarted server, or another server on the same PostgreSQL, carries it on.
//!
//! The plan: per cluster, backups first and the active last (the engine switches the cluster over to an
//! upgraded backup before the old active goes); the canary (a named node, else the plan's first) goes first
//! of all. Every operator action is audited with who asked and written to the events.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;

use lbfleet_proto::{wire_enum, NodeState, Role};

use super::{rules::FieldErrors, Actor, FieldError, Fleet, FleetError, Result};
use crate::audit::AuditAction;
use crate::store::events::EventKind;
use crate::store::{self, rollouts::RolloutRow, StoreError};

wire_enum!(
    /// Where a rollout is.
    RolloutState {
        Running => "running", Paused => "paused", Succeeded => "succeeded", Failed => "failed",
        Aborted => "aborted",
    }
);

impl RolloutState {
    /// Running or paused: the engine still owns it.
    pub fn unfinished(self) -> bool {
        matches!(self, RolloutState::Running | RolloutState::Paused)
    }
}

/// Shortest and longest gate timeout accepted.
pub const GATE_TIMEOUT_MIN: Duration = Duration::from_secs(1);
pub const GATE_TIMEOUT_MAX: Duration = Duration::from_secs(24 * 3600);
/// Gate timeout when the request names none.
pub const GATE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(600);
/// Most nodes in one rollout.
pub const MAX_ROLLOUT_NODES: usize = 1000;

/// A duration given as seconds (a number) or in words (`"90s"`, `"10m"`); shown in words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateTimeout(pub Duration);

impl Default for GateTimeout {
    fn default() -> Self {
        GateTimeout(GATE_TIMEOUT_DEFAULT)
    }
}

impl Serialize for GateTimeout {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

impl<'de> Deserialize<'de> for GateTimeout {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Text {
            Seconds(u64),
            Words(String),
        }
        match Text::deserialize(d)? {
            Text::Seconds(s) => Ok(GateTimeout(Duration::from_secs(s))),
            Text::Words(w) => humantime::parse_duration(&w)
                .map(GateTimeout)
                .map_err(|e| serde::de::Error::custom(format!("timeout {w:?}: {e}"))),
        }
    }
}

/// What a node must show, after its reboot, before the rollout moves on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gate {
    /// How long the node has, from the reboot request, to pass.
    #[serde(default)]
    pub timeout: GateTimeout,
    /// Every real server the node reports must be healthy.
    #[serde(default = "yes")]
    pub checks_up: bool,
    /// The node must have applied its newest role generation.
    #[serde(default = "yes")]
    pub in_sync: bool,
}

fn yes() -> bool {
    true
}

impl Default for Gate {
    fn default() -> Self {
        Gate {
            timeout: GateTimeout::default(),
            checks_up: true,
            in_sync: true,
        }
    }
}

fn one() -> u32 {
    1
}

/// `POST /api/v1/rollouts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutRequest {
    pub image: String,
    /// Every member of these clusters.
    #[serde(default)]
    pub clusters: Vec<String>,
    /// These nodes (by name, MAC or id), besides the clusters' members.
    #[serde(default)]
    pub nodes: Vec<String>,
    /// The node upgraded first, on its own (default: the plan's first, a backup).
    #[serde(default)]
    pub canary: Option<String>,
    /// Pause once the canary passed its gate (resume to go on).
    #[serde(default)]
    pub pause_after_canary: bool,
    /// Nodes of one cluster down at once; only 1 is supported.
    #[serde(default = "one")]
    pub max_unavailable: u32,
    #[serde(default)]
    pub gate: Gate,
}

wire_enum!(
    /// Where one node of a rollout is.
    StepPhase {
        Pending => "pending", Upgrading => "upgrading", Done => "done", Skipped => "skipped",
        RolledBack => "rolled_back",
    }
);

/// One node of a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub node_id: i64,
    pub node: String,
    pub cluster: Option<String>,
    #[serde(default)]
    pub canary: bool,
    pub phase: StepPhase,
    /// The image the node ran before (what a failed gate puts back).
    #[serde(default)]
    pub previous_image: Option<String>,
    /// The reboot generation the upgrade asked for (a restarted engine asks again if it was never written).
    #[serde(default)]
    pub reboot_generation: i64,
    /// When the upgrade (or the wait before it) started, ms since the epoch.
    #[serde(default)]
    pub since: Option<i64>,
    #[serde(default)]
    pub finished_at: Option<i64>,
    /// What the engine is waiting for or what happened, in words.
    #[serde(default)]
    pub note: Option<String>,
}

/// The engine's state of one rollout (stored as JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub steps: Vec<Step>,
    /// The canary passed and the rollout paused once for it (it does not pause again).
    #[serde(default)]
    pub canary_paused: bool,
}

/// A rollout as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RolloutView {
    pub id: i64,
    pub image: String,
    pub state: RolloutState,
    /// Why it stopped (failed, aborted) or paused.
    pub reason: Option<String>,
    pub created_by: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub request: RolloutRequest,
    pub steps: Vec<Step>,
    /// The node being upgraded or next (None once finished).
    pub current: Option<String>,
    /// The server driving it now (lease holder).
    pub driven_by: Option<String>,
}

impl RolloutView {
    pub(super) fn from_row(row: RolloutRow) -> Result<RolloutView> {
        let corrupt = |what: &str, e: String| {
            FleetError::Store(StoreError::Corrupt(format!(
                "rollout {} {what}: {e}",
                row.id
            )))
        };
        let state: RolloutState = row
            .state
            .parse()
            .map_err(|e: lbfleet_proto::UnknownValue| corrupt("state", e.to_string()))?;
        let request: RolloutRequest =
            serde_json::from_str(&row.spec).map_err(|e| corrupt("spec", e.to_string()))?;
        let progress: Progress =
            serde_json::from_str(&row.progress).map_err(|e| corrupt("progress", e.to_string()))?;
        let current = if state.unfinished() {
            progress
                .steps
                .iter()
                .find(|s| matches!(s.phase, StepPhase::Pending | StepPhase::Upgrading))
                .map(|s| s.node.clone())
        } else {
            None
        };
        Ok(RolloutView {
            id: row.id,
            image: row.image,
            state,
            reason: row.reason,
            created_by: row.created_by,
            created_at: row.created_at,
            updated_at: row.updated_at,
            request,
            steps: progress.steps,
            current,
            driven_by: row.lease_owner,
        })
    }
}

/// Checks a request's fields (not the fleet: names are resolved by `create_rollout`).
fn validate(req: &RolloutRequest) -> std::result::Result<(), FieldErrors> {
    let mut errs = Vec::new();
    if req.image.trim().is_empty() {
        errs.push(FieldError::new("image", "required"));
    }
    if req.clusters.is_empty() && req.nodes.is_empty() {
        errs.push(FieldError::new(
            "clusters",
            "name at least one cluster or node",
        ));
    }
    if req.max_unavailable != 1 {
        errs.push(FieldError::new(
            "max_unavailable",
            "only 1 is supported (one node of a cluster down at a time)",
        ));
    }
    let t = req.gate.timeout.0;
    if !(GATE_TIMEOUT_MIN..=GATE_TIMEOUT_MAX).contains(&t) {
        errs.push(FieldError::new(
            "gate.timeout",
            format!(
                "must be between {} and {}",
                humantime::format_duration(GATE_TIMEOUT_MIN),
                humantime::format_duration(GATE_TIMEOUT_MAX)
            ),
        ));
    }
    if req.clusters.len() + req.nodes.len() > MAX_ROLLOUT_NODES {
        errs.push(FieldError::new("nodes", "too many"));
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(FieldErrors(errs))
    }
}

/// Orders one cluster's members: backups first (highest priority first), the active last.
fn cluster_order(members: &mut [store::nodes::Member]) {
    members.sort_by_key(|m| (m.role == Role::Active, -m.priority, m.node_id));
}

/// Most rollouts listed.
const LIST_LIMIT: i64 = 100;

impl Fleet {
    /// Starts a rollout: validates, plans (backups first, the active last, the canary first of all), refuses
    /// a node that an unfinished rollout already holds, stores it and audits who asked. The engine picks it
    /// up on its next tick.
    pub async fn create_rollout(&self, actor: &Actor, req: RolloutRequest) -> Result<RolloutView> {
        validate(&req).map_err(FleetError::Invalid)?;
        let mut tx = self.store.begin().await?;
        if store::images::get(&mut tx, &req.image).await?.is_none() {
            return Err(FieldError::new("image", format!("no image named {:?}", req.image)).into());
        }
        let mut steps: Vec<Step> = Vec::new();
        let push = |steps: &mut Vec<Step>, id: i64, name: &str, cluster: Option<&str>| {
            if !steps.iter().any(|s| s.node_id == id) {
                steps.push(Step {
                    node_id: id,
                    node: name.to_owned(),
                    cluster: cluster.map(str::to_owned),
                    canary: false,
                    phase: StepPhase::Pending,
                    previous_image: None,
                    reboot_generation: 0,
                    since: None,
                    finished_at: None,
                    note: None,
                });
            }
        };
        for name in &req.clusters {
            let c = Self::cluster_in(&mut tx, name).await?;
            let mut members = store::nodes::members(&mut tx, c.id).await?;
            cluster_order(&mut members);
            for m in &members {
                push(&mut steps, m.node_id, &m.name, Some(&c.name));
            }
        }
        // Named nodes: grouped by cluster in the order their clusters first appear, each group in cluster order.
        let mut named: Vec<(Option<String>, store::nodes::NodeRow)> = Vec::new();
        for key in &req.nodes {
            let row = Self::node_in(&mut tx, &super::node_key(key)).await?;
            if !matches!(
                row.state,
                NodeState::Assigned | NodeState::Serving | NodeState::Ready
            ) {
                return Err(FleetError::Conflict(format!(
                    "node {} is {}: only ready, assigned or serving nodes can be upgraded",
                    row.name(),
                    row.state
                )));
            }
            named.push((row.cluster.clone(), row));
        }
        let mut groups: Vec<Option<String>> = Vec::new();
        for (c, _) in &named {
            if !groups.contains(c) {
                groups.push(c.clone());
            }
        }
        for g in &groups {
            let mut rows: Vec<&store::nodes::NodeRow> = named
                .iter()
                .filter(|(c, _)| c == g)
                .map(|(_, r)| r)
                .collect();
            rows.sort_by_key(|r| {
                (
                    r.role.as_deref() == Some(Role::Active.as_str()),
                    -r.priority.unwrap_or(0),
                    r.id,
                )
            });
            for r in rows {
                push(&mut steps, r.id, r.name(), r.cluster.as_deref());
            }
        }
        if steps.is_empty() {
            return Err(FieldError::new("clusters", "the clusters named have no members").into());
        }
        let canary_at = match &req.canary {
            Some(key) => {
                let row = Self::node_in(&mut tx, &super::node_key(key)).await?;
                steps
                    .iter()
                    .position(|s| s.node_id == row.id)
                    .ok_or_else(|| {
                        FieldError::new(
                            "canary",
                            format!("node {} is not in this rollout", row.name()),
                        )
                    })?
            }
            None => 0,
        };
        let mut canary = steps.remove(canary_at);
        canary.canary = true;
        steps.insert(0, canary);
        for r in store::rollouts::unfinished(&mut tx).await? {
            let Ok(p) = serde_json::from_str::<Progress>(&r.progress) else {
                continue;
            };
            if let Some(s) = p
                .steps
                .iter()
                .find(|s| steps.iter().any(|n| n.node_id == s.node_id))
            {
                return Err(FleetError::Conflict(format!(
                    "node {} is in rollout {}, which is {}; finish or abort it first",
                    s.node, r.id, r.state
                )));
            }
        }
        let progress = Progress {
            steps,
            canary_paused: false,
        };
        let spec = serde_json::to_string(&req).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let progress_json =
            serde_json::to_string(&progress).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let id =
            store::rollouts::insert(&mut tx, &req.image, &spec, &progress_json, &actor.0).await?;
        let order: Vec<&str> = progress.steps.iter().map(|s| s.node.as_str()).collect();
        store::audit::append(
            &mut tx,
            &actor.0,
            AuditAction::RolloutCreate,
            &format!("rollout:{id}"),
            None,
            Some(&json!({"request": req, "order": order})),
        )
        .await?;
        store::events::insert(
            &mut tx,
            EventKind::Rollout,
            None,
            None,
            &format!(
                "rollout {id} of image {} started by {}: {}",
                req.image,
                actor.0,
                order.join(", ")
            ),
        )
        .await?;
        store::commit(tx).await?;
        tracing::info!(rollout = id, image = req.image, actor = actor.0, nodes = ?order, "rollout started");
        self.notifier.fleet_changed();
        self.get_rollout(id).await
    }

    pub async fn get_rollout(&self, id: i64) -> Result<RolloutView> {
        let mut conn = self.store.read().await?;
        let row = store::rollouts::get(&mut conn, id)
            .await?
            .ok_or_else(|| FleetError::NotFound(format!("no rollout with id {id}")))?;
        RolloutView::from_row(row)
    }

    /// The newest rollouts, newest first.
    pub async fn list_rollouts(&self) -> Result<Vec<RolloutView>> {
        let mut conn = self.store.read().await?;
        store::rollouts::list(&mut conn, LIST_LIMIT)
            .await?
            .into_iter()
            .map(RolloutView::from_row)
            .collect()
    }

    /// Pauses a running rollout: no further node is started (one being upgraded finishes its gate).
    pub async fn pause_rollout(&self, actor: &Actor, id: i64) -> Result<RolloutView> {
        self.operator_change(actor, id, AuditAction::RolloutPause, |s| {
            (s == RolloutState::Running).then_some(RolloutState::Paused)
        })
        .await
    }

    /// Resumes a paused rollout.
    pub async fn resume_rollout(&self, actor: &Actor, id: i64) -> Result<RolloutView> {
        self.operator_change(actor, id, AuditAction::RolloutResume, |s| {
            (s == RolloutState::Paused).then_some(RolloutState::Running)
        })
        .await
    }

    /// Aborts an unfinished rollout: nothing more is done (a node being upgraded keeps its new image).
    pub async fn abort_rollout(&self, actor: &Actor, id: i64) -> Result<RolloutView> {
        self.operator_change(actor, id, AuditAction::RolloutAbort, |s| {
            s.unfinished().then_some(RolloutState::Aborted)
        })
        .await
    }

    async fn operator_change(
        &self,
        actor: &Actor,
        id: i64,
        action: AuditAction,
        next: impl Fn(RolloutState) -> Option<RolloutState>,
    ) -> Result<RolloutView> {
        let mut tx = self.store.begin().await?;
        let row = store::rollouts::get(&mut tx, id)
            .await?
            .ok_or_else(|| FleetError::NotFound(format!("no rollout with id {id}")))?;
        let view = RolloutView::from_row(row.clone())?;
        let Some(to) = next(view.state) else {
            return Err(FleetError::Conflict(format!(
                "rollout {id} is {}: cannot {}",
                view.state,
                action.as_str().trim_start_matches("rollout.")
            )));
        };
        let reason = match to {
            RolloutState::Paused => Some(format!("paused by {}", actor.0)),
            RolloutState::Aborted => Some(format!("aborted by {}", actor.0)),
            _ => None,
        };
        store::rollouts::save(
            &mut tx,
            id,
            store::rollouts::Save {
                owner: None,
                expected_state: None,
                state: to.as_str(),
                reason: reason.as_deref(),
                progress: &row.progress,
            },
        )
        .await?;
        store::audit::append(
            &mut tx,
            &actor.0,
            action,
            &format!("rollout:{id}"),
            Some(&json!({"state": view.state})),
            Some(&json!({"state": to})),
        )
        .await?;
        store::events::insert(
            &mut tx,
            EventKind::Rollout,
            None,
            None,
            &format!("rollout {id}: {} -> {to} by {}", view.state, actor.0),
        )
        .await?;
        store::commit(tx).await?;
        tracing::info!(rollout = id, actor = actor.0, from = %view.state, to = %to, "rollout changed");
        self.notifier.fleet_changed();
        self.get_rollout(id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_takes_its_defaults_and_a_timeout_in_seconds_or_words() {
        let r: RolloutRequest =
            serde_json::from_value(json!({"image": "v2", "clusters": ["ext"]})).expect("parse");
        assert_eq!(r.max_unavailable, 1);
        assert_eq!(r.gate, Gate::default());
        let r: RolloutRequest = serde_json::from_value(
            json!({"image": "v2", "nodes": ["lb-01"], "gate": {"timeout": "90s", "checks_up": false}}),
        )
        .expect("parse");
        assert_eq!(r.gate.timeout.0, Duration::from_secs(90));
        assert!(!r.gate.checks_up && r.gate.in_sync);
        let r: RolloutRequest =
            serde_json::from_value(json!({"image": "v2", "nodes": ["x"], "gate": {"timeout": 5}}))
                .expect("parse");
        assert_eq!(r.gate.timeout.0, Duration::from_secs(5));
        assert_eq!(
            serde_json::to_value(r.gate.timeout).expect("ser"),
            json!("5s")
        );
        assert!(serde_json::from_value::<RolloutRequest>(
            json!({"image": "v2", "nodes": ["x"], "gate": {"timeout": "soon"}})
        )
        .is_err());
    }

    #[test]
    fn validation_names_each_bad_field() {
        let mut r: RolloutRequest =
            serde_json::from_value(json!({"image": "", "max_unavailable": 2})).expect("parse");
        r.gate.timeout = GateTimeout(Duration::from_millis(10));
        let fields: Vec<String> = validate(&r)
            .expect_err("invalid")
            .0
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(
            fields,
            ["image", "clusters", "max_unavailable", "gate.timeout"]
        );
    }
}
