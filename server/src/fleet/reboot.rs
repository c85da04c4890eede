//! Remote reboot: the server asks a node's agent to reboot by raising the node's reboot generation, which
//! rides in its role document (a new role generation wakes its long-poll, and a reconnecting agent reads it
//! too). The agent hands over first (as VRRP master: a priority-0 advert) and then reboots the machine; PXE
//! brings it up with its current image. Audited with who asked.

use serde::Serialize;
use serde_json::json;

use lbfleet_proto::NodeState;

use super::{Actor, Fleet, FleetError, Result};
use crate::audit::AuditAction;
use crate::store::events::EventKind;
use crate::store::{self, nodes::NodeKey};

/// What a reboot request did.
#[derive(Debug, Clone, Serialize)]
pub struct RebootRequest {
    pub node: String,
    pub node_id: i64,
    /// The node's reboot generation now (the agent reboots on seeing it above the one it booted with).
    pub reboot_generation: i64,
    /// The role generation that carries it.
    pub role_generation: u64,
}

impl Fleet {
    /// Asks a node to reboot (after handing over). Refused for nodes that run no agent the server talks to
    /// (discovered, rejected, retired). `why` goes into the audit row and the event ("rollout 3", ...).
    pub async fn reboot_node(
        &self,
        actor: &Actor,
        key: &NodeKey,
        why: Option<&str>,
    ) -> Result<RebootRequest> {
        let mut tx = self.store.begin().await?;
        let row = Self::node_in(&mut tx, key).await?;
        if matches!(
            row.state,
            NodeState::Discovered | NodeState::Rejected | NodeState::Retired
        ) {
            return Err(FleetError::Conflict(format!(
                "node {} is {}: no agent to ask for a reboot",
                row.name(),
                row.state
            )));
        }
        let reboot = store::nodes::request_reboot(&mut tx, row.id).await?;
        let bumped = Self::bump(&mut tx, &[row.id]).await?;
        let role_generation = bumped.first().map_or(0, |b| b.1);
        let name = row.name().to_owned();
        store::audit::append(
            &mut tx,
            &actor.0,
            AuditAction::NodeReboot,
            &format!("node:{name}"),
            Some(&json!({"reboot_generation": row.reboot_generation})),
            Some(&json!({"reboot_generation": reboot, "why": why})),
        )
        .await?;
        let msg = match why {
            Some(w) => format!("reboot of {name} requested by {} ({w})", actor.0),
            None => format!("reboot of {name} requested by {}", actor.0),
        };
        store::events::insert(
            &mut tx,
            EventKind::Reboot,
            Some(row.id),
            row.cluster.as_deref(),
            &msg,
        )
        .await?;
        store::commit(tx).await?;
        self.notifier.announce(&bumped);
        tracing::info!(
            node = name,
            actor = actor.0,
            reboot_generation = reboot,
            "reboot requested"
        );
        Ok(RebootRequest {
            node: name,
            node_id: row.id,
            reboot_generation: reboot,
            role_generation,
        })
    }
}

#[cfg(test)]
mod tests {
    use lbfleet_proto::Role;

    use super::super::testing::{admin, fleet, member, spec};
    use super::*;

    #[tokio::test]
    async fn the_reenrollment_after_a_requested_reboot_raises_no_alert_but_a_second_one_does() {
        use super::super::testing::ready_node;
        use super::super::AlertKind;
        let (f, _dir) = fleet().await;
        let key = ready_node(&f, 7).await;
        let enroll = |token: String| -> lbfleet_proto::EnrollRequest {
            serde_json::from_value(serde_json::json!({"token": token, "mac": "52:54:00:00:00:07"}))
                .expect("enroll request")
        };
        async fn reenrolled(f: &Fleet) -> usize {
            f.alerts()
                .await
                .expect("alerts")
                .into_iter()
                .filter(|a| a.kind == AlertKind::Reenrolled)
                .count()
        }
        let t = f
            .issue_enrollment_token(&admin(), &key)
            .await
            .expect("token");
        f.enroll(&enroll(t.token)).await.expect("enroll");
        let node_id = f.get_node(&key).await.expect("node").id;
        f.report(node_id, &lbfleet_proto::AgentReport::default())
            .await
            .expect("report");
        // The server asked for the reboot: the node coming back with a fresh token is expected.
        f.reboot_node(&admin(), &key, None).await.expect("reboot");
        let t = f
            .issue_enrollment_token(&admin(), &key)
            .await
            .expect("token");
        f.enroll(&enroll(t.token))
            .await
            .expect("enroll after the reboot");
        assert_eq!(reenrolled(&f).await, 0, "a requested reboot is no takeover");
        // Once only: another re-enrollment while the agent is alive still alerts.
        f.report(node_id, &lbfleet_proto::AgentReport::default())
            .await
            .expect("report");
        let t = f
            .issue_enrollment_token(&admin(), &key)
            .await
            .expect("token");
        f.enroll(&enroll(t.token)).await.expect("enroll again");
        assert_eq!(reenrolled(&f).await, 1);
    }

    #[tokio::test]
    async fn a_reboot_request_raises_both_generations_and_reaches_the_role_document() {
        let (f, _dir) = fleet().await;
        f.put_cluster(&admin(), "ext", &spec(51, "198.18.0.10"))
            .await
            .expect("cluster");
        let a = member(&f, 1, "ext", Role::Active).await;
        let before = f.get_node(&a).await.expect("node");
        let doc = f.role_document(before.id).await.expect("role");
        assert_eq!(doc.reboot_generation, 0);
        let r = f
            .reboot_node(&admin(), &a, Some("test"))
            .await
            .expect("reboot");
        assert_eq!(r.reboot_generation, 1);
        assert!(r.role_generation as i64 > before.role_generation);
        let doc = f.role_document(before.id).await.expect("role");
        assert_eq!(
            (doc.reboot_generation, doc.generation),
            (1, r.role_generation)
        );
        let r2 = f.reboot_node(&admin(), &a, None).await.expect("again");
        assert_eq!(r2.reboot_generation, 2);
        let audit = f
            .audit_page(&crate::store::audit::AuditFilter {
                action: Some("node.reboot".into()),
                limit: 100,
                ..Default::default()
            })
            .await
            .expect("audit")
            .into_iter()
            .filter(|r| r.action == "node.reboot")
            .count();
        assert_eq!(audit, 2);
        f.retire(&admin(), &a).await.expect("retire");
        assert!(matches!(
            f.reboot_node(&admin(), &a, None).await,
            Err(FleetError::Conflict(_))
        ));
    }
}
