//! Enrollment and reports: one-time enrollment tokens (or a boot credential, `boot_cache`) traded for node
//! credentials, credential checks, and agent reports (state `serving` once the newest role is applied; VRRP,
//! health and error events).

use std::collections::HashMap;

use lbfleet_proto::{AgentReport, EnrollRequest, EnrollResponse, HealthState, NodeState};
use serde::Serialize;
use serde_json::json;

use super::{reenrollment, rules, socket_text, Actor, FieldError, Fleet, FleetError, Result};
use crate::audit::AuditAction;
use crate::secrets;
use crate::store::clusters::RealServerKey;
use crate::store::events::EventKind;
use crate::store::{self, nodes::NodeKey, now_ms, StoreError};

/// A freshly issued one-time enrollment token; the plain token exists only here.
#[derive(Clone, Serialize)]
pub struct EnrollmentToken {
    pub node: String,
    pub token: String,
    pub expires_at: i64,
}

impl std::fmt::Debug for EnrollmentToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollmentToken")
            .field("node", &self.node)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl Fleet {
    /// Issues a one-time enrollment token for a node (boot scripts embed it in the kernel command line).
    pub async fn issue_enrollment_token(
        &self,
        actor: &Actor,
        key: &NodeKey,
    ) -> Result<EnrollmentToken> {
        let mut tx = self.store.begin().await?;
        let row = Self::node_in(&mut tx, key).await?;
        let state = row.state;
        if matches!(state, NodeState::Retired | NodeState::Rejected) {
            return Err(FleetError::Conflict(format!(
                "node {:?} is {state} and cannot enroll",
                row.name()
            )));
        }
        let token = secrets::new_secret(secrets::ENROLLMENT_TOKEN_PREFIX);
        let ttl_ms = i64::try_from(self.enrollment_token_ttl.as_millis()).unwrap_or(i64::MAX);
        let expires_at = now_ms().saturating_add(ttl_ms);
        store::auth::insert_enrollment_token(
            &mut tx,
            &secrets::hash_secret(&token),
            row.id,
            expires_at,
        )
        .await?;
        let mut event = None;
        if *actor == Actor::system() {
            // A boot script: an event, not an audit row (anyone on the boot network can ask for scripts, and
            // the audit chain is for changes people make).
            let msg = format!(
                "boot script with an enrollment token for node {}",
                row.name()
            );
            store::events::insert(
                &mut tx,
                EventKind::BootScript,
                Some(row.id),
                row.cluster.as_deref(),
                &msg,
            )
            .await?;
            event = Some(msg);
        } else {
            store::audit::append(
                &mut tx,
                &actor.0,
                AuditAction::NodeEnrollmentToken,
                &format!("node:{}", row.name()),
                None,
                Some(&json!({"expires_at": expires_at})),
            )
            .await?;
        }
        store::commit(tx).await?;
        self.event_writes.add(event.as_deref());
        Ok(EnrollmentToken {
            node: row.name().to_owned(),
            token,
            expires_at,
        })
    }

    /// Trades a one-time enrollment token for a node credential (replacing any earlier one).
    pub async fn enroll(&self, req: &EnrollRequest) -> Result<EnrollResponse> {
        let refused = || {
            FleetError::Unauthorized("enrollment token is invalid, expired or already used".into())
        };
        let mac = rules::mac(&req.mac)?;
        rules::report_fields(
            None,
            req.agent_version.as_deref(),
            req.image_version.as_deref(),
        )
        .map_err(FleetError::Invalid)?;
        let mut tx = self.store.begin().await?;
        // A boot credential (handed out while the database was down) is exchanged like a token, once.
        let redeemed = if req
            .token
            .starts_with(super::boot_cache::BOOT_CREDENTIAL_PREFIX)
        {
            self.redeem_boot_credential(&mut tx, &req.token, &mac)
                .await?
        } else {
            store::auth::redeem_enrollment_token(&mut tx, &secrets::hash_secret(&req.token)).await?
        };
        let Some(node_id) = redeemed else {
            // A refused boot credential may still have pruned expired rows: keep nothing half-done.
            drop(tx);
            return Err(refused());
        };
        let row = Self::node_in(&mut tx, &NodeKey::Id(node_id)).await?;
        if row.mac != mac {
            // The token stays used: a token presented from the wrong machine is treated as leaked.
            store::commit(tx).await?;
            tracing::warn!(
                node = row.name(),
                claimed_mac = mac,
                "enrollment refused: MAC does not match the token's node"
            );
            return Err(refused());
        }
        let state = row.state;
        if matches!(state, NodeState::Retired | NodeState::Rejected) {
            store::commit(tx).await?;
            return Err(FleetError::Forbidden(format!(
                "node {:?} is {state}",
                row.name()
            )));
        }
        reenrollment::note_if_alive(&mut tx, &row).await?;
        let credential = secrets::new_secret(secrets::NODE_CREDENTIAL_PREFIX);
        store::auth::set_node_credential(&mut tx, node_id, &secrets::hash_secret(&credential))
            .await?;
        store::nodes::set_versions(
            &mut tx,
            node_id,
            req.agent_version.as_deref(),
            req.image_version.as_deref(),
        )
        .await?;
        store::audit::append(
            &mut tx,
            &Actor::node(row.name()).0,
            AuditAction::NodeEnroll,
            &format!("node:{}", row.name()),
            None,
            Some(&json!({"agent_version": req.agent_version, "image_version": req.image_version})),
        )
        .await?;
        store::events::insert(
            &mut tx,
            EventKind::Enrolled,
            Some(node_id),
            row.cluster.as_deref(),
            &format!("node {} enrolled", row.name()),
        )
        .await?;
        store::commit(tx).await?;
        // The node's previous credential, if any, was replaced.
        self.credentials_revoked(&[node_id]);
        self.notifier.fleet_changed();
        tracing::info!(node = row.name(), mac, "node enrolled");
        Ok(EnrollResponse {
            node_id,
            node: row.name().to_owned(),
            credential,
        })
    }

    /// Resolves a node credential to its node id; `None` for unknown or revoked credentials. The database is
    /// asked at most once per `credentials::CREDENTIAL_CACHE_MS` per credential; a revocation forgets it
    /// (`credentials`).
    pub async fn authenticate_node(&self, credential: &str) -> Result<Option<i64>> {
        let hash = secrets::hash_secret(credential);
        let now = store::now_ms();
        if let Some(node) = self.credentials.cached(&hash, now) {
            return Ok(Some(node));
        }
        // Taken before the read: a revocation committed meanwhile keeps this answer out of the cache.
        let epoch = self.credentials.epoch();
        let mut conn = self.store.read().await?;
        let node = store::auth::node_by_credential(&mut conn, &hash).await?;
        drop(conn);
        if let Some(node) = node {
            self.credentials.confirm(hash, node, now, epoch);
        }
        Ok(node)
    }

    /// The node credentials this server confirmed (agent calls) and the revocations it heard of.
    pub fn node_credentials(&self) -> &super::credentials::NodeCredentials {
        &self.credentials
    }

    /// After the commit that revoked or replaced the credentials of `nodes`: forgotten here at once, and by
    /// the other servers on the same database when the notice arrives.
    pub(super) fn credentials_revoked(&self, nodes: &[i64]) {
        self.credentials.revoke(nodes, store::now_ms());
        self.notifier.credentials_revoked(nodes);
    }

    /// Stores an agent report; moves an assigned node to `serving` once it has applied its newest role.
    /// A report that breaks a bound (`rules::report`) is refused whole, before anything is written.
    pub async fn report(&self, node_id: i64, report: &AgentReport) -> Result<()> {
        if let Err(errs) = rules::report(report) {
            tracing::debug!(node_id, problems = %errs, "agent report refused");
            return Err(FleetError::Invalid(errs));
        }
        let mut tx = self.store.begin().await?;
        let row = Self::node_in(&mut tx, &NodeKey::Id(node_id)).await?;
        let state = row.state;
        if matches!(state, NodeState::Retired | NodeState::Rejected) {
            return Err(FleetError::Forbidden(format!(
                "node {:?} is {state}",
                row.name()
            )));
        }
        let applied = i64::try_from(report.applied_generation).unwrap_or(i64::MAX);
        if applied > row.role_generation {
            return Err(FieldError::new(
                "applied_generation",
                format!(
                    "{applied} is newer than the newest role issued to this node ({})",
                    row.role_generation
                ),
            )
            .into());
        }
        let report_json =
            serde_json::to_string(report).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let vrrp = report.vrrp_state.map(|s| s.as_str());
        store::nodes::record_report(
            &mut tx,
            node_id,
            &store::nodes::ReportUpdate {
                applied_generation: applied,
                vrrp_state: vrrp,
                agent_version: report.agent_version.as_deref(),
                image_version: report.image_version.as_deref(),
                address: report.address.as_deref(),
                report_json: &report_json,
            },
        )
        .await?;
        let name = row.name().to_owned();
        let cluster = row.cluster.as_deref();
        self.record_traffic(&mut tx, cluster, node_id, report)
            .await?;
        let mut events: Vec<(EventKind, String)> = Vec::new();
        let transitions = new_vrrp_transitions(row.last_report.as_deref(), report);
        for t in &transitions {
            // The agent's own account: what changed and why (its clock, ms since the epoch, in `at_ms`).
            let msg = format!("VRRP {} -> {}: {}", t.from, t.to, t.reason);
            events.push((EventKind::Vrrp, msg));
        }
        if transitions.is_empty() && row.vrrp_state.as_deref() != vrrp {
            let msg = format!(
                "VRRP {} -> {}",
                row.vrrp_state.as_deref().unwrap_or("unknown"),
                vrrp.unwrap_or("unknown")
            );
            events.push((EventKind::Vrrp, msg));
        }
        for msg in health_messages(row.last_report.as_deref(), report) {
            events.push((EventKind::Health, msg));
        }
        for e in &report.errors {
            events.push((EventKind::AgentError, e.clone()));
        }
        for (kind, msg) in &events {
            store::events::insert(&mut tx, *kind, Some(node_id), cluster, msg).await?;
        }
        if state == NodeState::Assigned && row.cluster.is_some() && applied >= row.role_generation {
            store::nodes::set_state(&mut tx, node_id, NodeState::Serving).await?;
            store::audit::append(
                &mut tx,
                &Actor::node(&name).0,
                AuditAction::NodeServing,
                &format!("node:{name}"),
                Some(&json!({"state": "assigned"})),
                Some(&json!({"state": "serving", "applied_generation": applied})),
            )
            .await?;
            store::events::insert(
                &mut tx,
                EventKind::Serving,
                Some(node_id),
                cluster,
                &format!("node {name} serves generation {applied}"),
            )
            .await?;
        }
        store::commit(tx).await?;
        self.event_writes
            .add(events.iter().map(|(_, m)| m.as_str()));
        self.notifier.fleet_changed();
        Ok(())
    }
}

/// The transitions of `now` that are newer than the newest one of the previous report (a report carries the
/// agent's recent transitions, so the same ones arrive again until they age out).
fn new_vrrp_transitions<'a>(
    previous: Option<&str>,
    now: &'a AgentReport,
) -> Vec<&'a lbfleet_proto::VrrpTransition> {
    let seen = previous
        .and_then(|p| serde_json::from_str::<AgentReport>(p).ok())
        .and_then(|r| r.vrrp_transitions.iter().map(|t| t.at_ms).max())
        .unwrap_or(0);
    now.vrrp_transitions
        .iter()
        .filter(|t| t.at_ms > seen)
        .collect()
}

/// The health events of a report: its transitions (with the reason) from an agent that runs health checks,
/// else the `healthy` flags that changed since the previous report.
fn health_messages(previous: Option<&str>, now: &AgentReport) -> Vec<String> {
    let checks = !now.health_events.is_empty()
        || now
            .services
            .iter()
            .any(|s| s.real_servers.iter().any(|r| r.health.is_some()));
    if !checks {
        return health_flips(previous, now)
            .into_iter()
            .map(|(addr, healthy)| {
                format!(
                    "real server {addr} is {}",
                    if healthy { "healthy" } else { "failing" }
                )
            })
            .collect();
    }
    now.health_events
        .iter()
        // A first success is no news: the server had its weight already.
        .filter(|e| !(e.from == HealthState::NotChecked && e.to == HealthState::Up))
        .map(|e| {
            let state = match e.to {
                HealthState::Up => "up",
                HealthState::Down => "down",
                HealthState::NotChecked => "not checked",
                HealthState::AdminDrained => "drained",
            };
            let reason = e
                .reason
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default();
            format!(
                "real server {} of {} is {state}{reason}",
                socket_text(&e.address, e.port),
                e.service
            )
        })
        .collect()
}

/// Real servers whose health changed between two reports: (address:port, healthy now).
fn health_flips(previous: Option<&str>, now: &AgentReport) -> Vec<(String, bool)> {
    let Some(prev) = previous.and_then(|p| serde_json::from_str::<AgentReport>(p).ok()) else {
        return vec![];
    };
    let mut before = HashMap::new();
    for s in &prev.services {
        for r in &s.real_servers {
            before.insert(RealServerKey::of_report(s, r), r.healthy);
        }
    }
    let mut flips = Vec::new();
    for s in &now.services {
        for r in &s.real_servers {
            if let Some(was) = before.get(&RealServerKey::of_report(s, r)) {
                if *was != r.healthy {
                    flips.push((socket_text(&r.address, r.port), r.healthy));
                }
            }
        }
    }
    flips
}

#[cfg(test)]
mod tests {
    use lbfleet_proto::Role;

    use super::super::testing::{admin, fleet, member, spec};
    use super::*;

    fn request(token: &str, mac: &str) -> EnrollRequest {
        EnrollRequest {
            token: token.into(),
            mac: mac.into(),
            agent_version: Some("0.1.0".into()),
            image_version: None,
        }
    }

    #[tokio::test]
    async fn a_token_enrolls_once_and_reports_make_a_node_serving() {
        let (f, _dir) = fleet().await;
        f.put_cluster(&admin(), "ext", &spec(51, "198.18.0.10"))
            .await
            .expect("cluster");
        let key = member(&f, 1, "ext", Role::Active).await;
        let mac = "52:54:00:00:00:01";
        let t = f
            .issue_enrollment_token(&admin(), &key)
            .await
            .expect("token");
        // The wrong MAC burns the token.
        assert!(matches!(
            f.enroll(&request(&t.token, "52:54:00:00:00:02")).await,
            Err(FleetError::Unauthorized(_))
        ));
        assert!(matches!(
            f.enroll(&request(&t.token, mac)).await,
            Err(FleetError::Unauthorized(_))
        ));
        let t = f
            .issue_enrollment_token(&admin(), &key)
            .await
            .expect("token");
        let r = f.enroll(&request(&t.token, mac)).await.expect("enroll");
        assert!(matches!(
            f.enroll(&request(&t.token, mac)).await,
            Err(FleetError::Unauthorized(_))
        ));
        assert_eq!(
            f.authenticate_node(&r.credential).await.expect("auth"),
            Some(r.node_id)
        );
        assert_eq!(
            f.authenticate_node("lbf_node_wrong").await.expect("auth"),
            None
        );

        let newest = f.get_node(&key).await.expect("node").role_generation as u64;
        let too_new = AgentReport {
            applied_generation: newest + 1,
            ..AgentReport::default()
        };
        assert!(matches!(
            f.report(r.node_id, &too_new).await,
            Err(FleetError::Invalid(_))
        ));
        let behind = AgentReport {
            applied_generation: newest - 1,
            ..AgentReport::default()
        };
        f.report(r.node_id, &behind).await.expect("report");
        assert_eq!(
            f.get_node(&key).await.expect("node").state,
            NodeState::Assigned
        );
        let applied = AgentReport {
            applied_generation: newest,
            errors: vec!["ipvs: no such service".into()],
            ..AgentReport::default()
        };
        f.report(r.node_id, &applied).await.expect("report");
        let n = f.get_node(&key).await.expect("node");
        assert_eq!((n.state, n.in_sync), (NodeState::Serving, true));
        let kinds: Vec<String> = f
            .events(&store::events::EventFilter {
                node_id: Some(r.node_id),
                limit: 10,
                ..Default::default()
            })
            .await
            .expect("events")
            .into_iter()
            .map(|e| e.kind.to_string())
            .collect();
        assert_eq!(kinds, ["serving", "agent_error", "enrolled"]);

        f.retire(&admin(), &key).await.expect("retire");
        assert_eq!(
            f.authenticate_node(&r.credential).await.expect("auth"),
            None
        );
        assert!(matches!(
            f.issue_enrollment_token(&admin(), &key).await,
            Err(FleetError::Conflict(_))
        ));
    }
}
