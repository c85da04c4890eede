//! Enrollment and reports: one-time enrollment tokens (or a boot credential, `boot_cache`) traded for node
//! credentials, credential checks, and agent reports (state `serving` once the newest role is applied; VRRP,
//! health and error events).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

use lbfleet_proto::{
    AgentReport, DeltaError, EnrollRequest, EnrollResponse, HealthState, NodeState, ReportDelta,
    VrrpState,
};
use serde::Serialize;
use serde_json::json;

use super::traffic::SeriesKey;
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

    /// Stores an agent's full report and returns its sequence number (the base of the agent's next delta);
    /// moves an assigned node to `serving` once it has applied its newest role. A report that breaks a bound
    /// (`rules::report`) is refused whole, before anything is written.
    pub async fn report(&self, node_id: i64, report: &AgentReport) -> Result<u64> {
        if let Err(errs) = rules::report(report) {
            tracing::debug!(node_id, problems = %errs, "agent report refused");
            return Err(FleetError::Invalid(errs));
        }
        let mut tx = self.store.begin().await?;
        let row = Self::reporting_node(&mut tx, node_id).await?;
        let previous = row
            .last_report
            .as_deref()
            .and_then(|p| serde_json::from_str::<AgentReport>(p).ok());
        let seq = self
            .store_report(tx, &row, previous.as_ref(), report, None, None)
            .await?;
        self.report_counts.full.fetch_add(1, Ordering::Relaxed);
        // Without a base the update always writes.
        seq.map(|n| u64::try_from(n).unwrap_or(0))
            .ok_or_else(|| FleetError::Store(StoreError::Corrupt("report not stored".into())))
    }

    /// Merges an agent's report delta into the report the node holds, all or nothing: applied (the merged
    /// report is stored exactly as a full report would be, and numbered) only when the node's report is the
    /// delta's base; otherwise nothing is written and the agent is told to send a full report. A delta that
    /// contradicts itself, or whose merged report breaks a bound, is refused whole (`Invalid`).
    pub async fn report_delta(&self, node_id: i64, delta: &ReportDelta) -> Result<DeltaOutcome> {
        let started = std::time::Instant::now();
        let mut tx = self.store.begin().await?;
        let row = Self::reporting_node(&mut tx, node_id).await?;
        let held = store::nodes::report_seq(&mut tx, node_id).await?;
        let held_u = u64::try_from(held).unwrap_or(0);
        let base_unknown = |why: &str| {
            self.report_counts
                .delta_refused
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                node = row.name(),
                base = delta.base,
                held,
                why,
                "report delta refused: send a full report"
            );
            Ok(DeltaOutcome::BaseUnknown { held: held_u })
        };
        if held == 0 || delta.base != held_u {
            return base_unknown("another base");
        }
        let Some(previous) = row
            .last_report
            .as_deref()
            .and_then(|p| serde_json::from_str::<AgentReport>(p).ok())
        else {
            return base_unknown("no readable stored report");
        };
        let merged = match delta.apply(&previous) {
            Ok(m) => m,
            Err(
                e @ (DeltaError::HeadHasServices
                | DeltaError::DuplicateService(_)
                | DeltaError::DuplicateRealServer(..)),
            ) => {
                return Err(FieldError::new("services", e.to_string()).into());
            }
            Err(e) => return base_unknown(&e.to_string()),
        };
        if let Err(errs) = rules::report(&merged) {
            tracing::debug!(node_id, problems = %errs, "agent report delta refused");
            return Err(FleetError::Invalid(errs));
        }
        let touched = delta_series(delta);
        let Some(seq) = self
            .store_report(
                tx,
                &row,
                Some(&previous),
                &merged,
                Some(held),
                Some(&touched),
            )
            .await?
        else {
            // The row moved under us (cannot happen inside the write lock, but never merge on a stale base).
            return Ok(DeltaOutcome::BaseUnknown { held: held_u });
        };
        self.report_counts.delta.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            node = row.name(),
            seq,
            services = delta.services.len(),
            merge_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            "report delta merged"
        );
        Ok(DeltaOutcome::Applied {
            seq: u64::try_from(seq).unwrap_or(0),
        })
    }

    /// Reports taken by this server since it started, by kind.
    pub fn report_counts(&self) -> &super::ReportCounts {
        &self.report_counts
    }

    /// The reporting node, refused when retired or rejected.
    async fn reporting_node(conn: &mut store::Conn, node_id: i64) -> Result<store::nodes::NodeRow> {
        let row = Self::node_in(conn, &NodeKey::Id(node_id)).await?;
        let state = row.state;
        if matches!(state, NodeState::Retired | NodeState::Rejected) {
            return Err(FleetError::Forbidden(format!(
                "node {:?} is {state}",
                row.name()
            )));
        }
        Ok(row)
    }

    /// Stores a (full or merged) report in `tx` and commits: the node's columns, the traffic samples (of the
    /// series in `only` when given: a delta's, so series it did not carry keep their baseline), the VRRP,
    /// health and error events, `serving`. Returns the report's new sequence number; `None` (nothing
    /// written) when `base` is given and no longer the node's.
    async fn store_report(
        &self,
        mut tx: store::WriteTx,
        row: &store::nodes::NodeRow,
        previous: Option<&AgentReport>,
        report: &AgentReport,
        base: Option<i64>,
        only: Option<&HashSet<SeriesKey>>,
    ) -> Result<Option<i64>> {
        let node_id = row.id;
        let state = row.state;
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
        let transitions = new_vrrp_transitions(previous, report);
        let Some(seq) = store::nodes::record_report(
            &mut tx,
            node_id,
            &store::nodes::ReportUpdate {
                applied_generation: applied,
                vrrp_state: vrrp,
                agent_version: report.agent_version.as_deref(),
                image_version: report.image_version.as_deref(),
                address: report.address.as_deref(),
                report_json: &report_json,
                new_takeover: transitions.iter().any(|t| t.to == VrrpState::Master),
            },
            base,
        )
        .await?
        else {
            return Ok(None);
        };
        let name = row.name().to_owned();
        let cluster = row.cluster.as_deref();
        self.record_traffic(&mut tx, cluster, node_id, report, only)
            .await?;
        let mut events: Vec<(EventKind, String)> = Vec::new();
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
        for msg in health_messages(previous, report) {
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
        Ok(Some(seq))
    }
}

/// What became of a report delta.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeltaOutcome {
    /// Merged and stored; `seq` numbers the merged report (the base of the next delta).
    Applied { seq: u64 },
    /// The node's report is not the delta's base (another number: a lost answer, a database restored, a
    /// report from an older agent in between; or none): nothing was written, the agent must send a full
    /// report. `held` is the number the server holds (0: none).
    BaseUnknown { held: u64 },
}

/// The traffic series a delta carries: its services, and the real servers it sends whole.
fn delta_series(delta: &ReportDelta) -> HashSet<SeriesKey> {
    let mut out = HashSet::new();
    for s in &delta.services {
        let service = super::traffic::service_key(s.protocol.as_str(), &s.vip, s.port);
        for r in &s.real_servers {
            out.insert((service.clone(), super::traffic::socket(&r.address, r.port)));
        }
        out.insert((service, String::new()));
    }
    out
}

/// The transitions of `now` that are newer than the newest one of the previous report (a report carries the
/// agent's recent transitions, so the same ones arrive again until they age out).
fn new_vrrp_transitions<'a>(
    previous: Option<&AgentReport>,
    now: &'a AgentReport,
) -> Vec<&'a lbfleet_proto::VrrpTransition> {
    let seen = previous
        .and_then(|r| r.vrrp_transitions.iter().map(|t| t.at_ms).max())
        .unwrap_or(0);
    now.vrrp_transitions
        .iter()
        .filter(|t| t.at_ms > seen)
        .collect()
}

/// The health events of a report: its transitions (with the reason) from an agent that runs health checks,
/// else the `healthy` flags that changed since the previous report.
fn health_messages(previous: Option<&AgentReport>, now: &AgentReport) -> Vec<String> {
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
fn health_flips(previous: Option<&AgentReport>, now: &AgentReport) -> Vec<(String, bool)> {
    let Some(prev) = previous else {
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

    fn row(address: &str, healthy: bool, connections: u64) -> lbfleet_proto::RealServerReport {
        lbfleet_proto::RealServerReport {
            address: address.into(),
            port: 80,
            healthy,
            weight: u32::from(healthy),
            active_conns: 0,
            inactive_conns: 0,
            connections,
            packets_in: 0,
            packets_out: 0,
            bytes_in: 0,
            bytes_out: 0,
            health: None,
        }
    }

    async fn stored(f: &Fleet, key: &NodeKey) -> (AgentReport, i64) {
        let mut conn = f.store.read().await.expect("read");
        let row = store::nodes::get(&mut conn, key)
            .await
            .expect("node")
            .expect("exists");
        let report = serde_json::from_str(row.last_report.as_deref().expect("a report"))
            .expect("stored report");
        (
            report,
            store::nodes::report_seq(&mut conn, row.id)
                .await
                .expect("seq"),
        )
    }

    #[tokio::test]
    async fn a_delta_is_merged_on_its_base_only_and_all_or_nothing() {
        use lbfleet_proto::{Protocol, RealServerRef, ServiceDelta, ServiceReport};
        let (f, _dir) = fleet().await;
        f.put_cluster(&admin(), "ext", &spec(51, "198.18.0.10"))
            .await
            .expect("cluster");
        let key = member(&f, 1, "ext", Role::Active).await;
        let node = f.get_node(&key).await.expect("node");
        let full = AgentReport {
            applied_generation: node.role_generation as u64,
            services: vec![ServiceReport {
                vip: "198.18.0.10".into(),
                port: 80,
                protocol: Protocol::Tcp,
                connections: 10,
                packets_in: 0,
                packets_out: 0,
                bytes_in: 0,
                bytes_out: 0,
                real_servers: vec![row("198.18.2.1", true, 4), row("198.18.2.2", true, 6)],
            }],
            ..AgentReport::default()
        };
        let seq = f.report(node.id, &full).await.expect("full report");
        assert_eq!(stored(&f, &key).await, (full.clone(), seq as i64));

        let change = |base: u64, removed: &str| ReportDelta {
            base,
            head: AgentReport {
                applied_generation: full.applied_generation,
                uptime_s: 20,
                ..AgentReport::default()
            },
            services: vec![ServiceDelta {
                vip: "198.18.0.10".into(),
                port: 80,
                protocol: Protocol::Tcp,
                connections: 12,
                packets_in: 0,
                packets_out: 0,
                bytes_in: 0,
                bytes_out: 0,
                real_servers: vec![row("198.18.2.1", false, 4)],
                removed: vec![RealServerRef {
                    address: removed.into(),
                    port: 80,
                }],
            }],
            removed_services: vec![],
        };
        // Another base, a base of 0 and a delta that does not fit the base: nothing written.
        for bad in [
            change(seq + 1, "198.18.2.2"),
            change(0, "198.18.2.2"),
            change(seq, "198.18.2.99"),
        ] {
            assert_eq!(
                f.report_delta(node.id, &bad).await.expect("answered"),
                DeltaOutcome::BaseUnknown { held: seq }
            );
            assert_eq!(stored(&f, &key).await, (full.clone(), seq as i64));
        }
        // A delta that contradicts itself is refused whole.
        let mut twice = change(seq, "198.18.2.2");
        twice.services[0]
            .real_servers
            .push(row("198.18.2.1", true, 1));
        assert!(matches!(
            f.report_delta(node.id, &twice).await,
            Err(FleetError::Invalid(_))
        ));
        assert_eq!(stored(&f, &key).await, (full.clone(), seq as i64));

        let good = change(seq, "198.18.2.2");
        let DeltaOutcome::Applied { seq: next } =
            f.report_delta(node.id, &good).await.expect("merged")
        else {
            panic!("the delta was not merged");
        };
        assert_eq!(next, seq + 1);
        let (merged, held) = stored(&f, &key).await;
        assert_eq!(held, next as i64);
        assert_eq!(merged, good.apply(&full).expect("fits"));
        assert_eq!(merged.uptime_s, 20);
        assert_eq!(merged.services[0].connections, 12);
        assert_eq!(
            merged.services[0].real_servers,
            [row("198.18.2.1", false, 4)]
        );
        // The merged report goes through the same path as a full one: the health flip is an event.
        let events = f
            .events(&store::events::EventFilter {
                node_id: Some(node.id),
                limit: 10,
                ..Default::default()
            })
            .await
            .expect("events");
        assert!(
            events
                .iter()
                .any(|e| e.message == "real server 198.18.2.1:80 is failing"),
            "{events:?}"
        );
        // The same delta again is on an old base now.
        assert_eq!(
            f.report_delta(node.id, &good).await.expect("answered"),
            DeltaOutcome::BaseUnknown { held: next }
        );
        // A full report (an older agent's, say) always lands, and moves the number on.
        assert_eq!(f.report(node.id, &full).await.expect("full"), next + 1);
    }
}
