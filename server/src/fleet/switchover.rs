//! Switchover: the active node and a backup swap roles and priorities in one transaction.

use serde::Serialize;
use serde_json::json;

use lbfleet_proto::{NodeState, Role};

use super::{to_value, Actor, Fleet, FleetError, Result};
use crate::audit::AuditAction;
use crate::store::events::EventKind;
use crate::store::{self, nodes::NodeKey};

/// Result of a switchover, in the order the roles were changed.
#[derive(Debug, Clone, Serialize)]
pub struct Switchover {
    pub cluster: String,
    pub new_active: String,
    pub new_active_generation: u64,
    pub new_active_priority: u8,
    pub old_active: String,
    pub old_active_generation: u64,
    pub old_active_priority: u8,
}

impl Fleet {
    /// Swaps the active node and a backup (the highest-priority one unless `to` names one).
    ///
    /// The new active is raised first: its role document gets the lower of the two new generations and its
    /// poller is woken first; the old active's lowered document follows. Priorities are swapped, so the pair
    /// keeps the same two values and never passes through a moment with no node intended as master.
    pub async fn switchover(
        &self,
        actor: &Actor,
        cluster: &str,
        to: Option<&NodeKey>,
    ) -> Result<Switchover> {
        let mut tx = self.store.begin().await?;
        let c = Self::cluster_in(&mut tx, cluster).await?;
        let members = store::nodes::members(&mut tx, c.id).await?;
        let active = members
            .iter()
            .find(|m| m.role == Role::Active)
            .ok_or_else(|| {
                FleetError::Conflict(format!(
                    "cluster {cluster:?} has no active node to switch over from"
                ))
            })?
            .clone();
        let target = match to {
            Some(key) => {
                let node = Self::node_in(&mut tx, key).await?;
                members
                    .iter()
                    .find(|m| m.node_id == node.id && m.role == Role::Backup)
                    .cloned()
                    .ok_or_else(|| {
                        FleetError::Conflict(format!(
                            "node {:?} is not a backup in cluster {cluster:?}",
                            node.name()
                        ))
                    })?
            }
            None => members
                .iter()
                .filter(|m| m.role == Role::Backup)
                .max_by_key(|m| (m.priority, -m.node_id))
                .cloned()
                .ok_or_else(|| {
                    FleetError::Conflict(format!(
                        "cluster {cluster:?} has no backup node to switch over to"
                    ))
                })?,
        };
        let (hi, lo) = (active.priority as u8, target.priority as u8);
        // Order matters for the one-active index: demote, then promote, inside one transaction.
        store::nodes::upsert_assignment(&mut tx, active.node_id, c.id, Role::Backup, lo).await?;
        store::nodes::upsert_assignment(&mut tx, target.node_id, c.id, Role::Active, hi).await?;
        let raised = Self::bump(&mut tx, &[target.node_id]).await?;
        let lowered = Self::bump(&mut tx, &[active.node_id]).await?;
        for id in [active.node_id, target.node_id] {
            store::nodes::set_state(&mut tx, id, NodeState::Assigned).await?;
        }
        let result = Switchover {
            cluster: cluster.to_owned(),
            new_active: target.name.clone(),
            new_active_generation: raised[0].1,
            new_active_priority: hi,
            old_active: active.name.clone(),
            old_active_generation: lowered[0].1,
            old_active_priority: lo,
        };
        store::audit::append(
            &mut tx,
            &actor.0,
            AuditAction::ClusterSwitchover,
            &format!("cluster:{cluster}"),
            Some(&json!({"active": active.name, "backup": target.name})),
            Some(&to_value(&result)),
        )
        .await?;
        store::events::insert(
            &mut tx,
            EventKind::Switchover,
            Some(target.node_id),
            Some(cluster),
            &format!(
                "switchover: {} becomes active (priority {hi}), {} becomes backup (priority {lo})",
                target.name, active.name
            ),
        )
        .await?;
        store::commit(tx).await?;
        self.notifier.announce(&raised);
        self.notifier.announce(&lowered);
        tracing::info!(
            cluster,
            actor = actor.0,
            new_active = target.name,
            old_active = active.name,
            "switchover"
        );
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use lbfleet_proto::Role;

    use super::super::testing::{admin, fleet, member, spec};
    use super::*;

    #[tokio::test]
    async fn switchover_swaps_roles_and_priorities_new_active_first() {
        let (f, _dir) = fleet().await;
        f.put_cluster(&admin(), "ext", &spec(51, "198.18.0.10"))
            .await
            .expect("create");
        assert!(matches!(
            f.switchover(&admin(), "ext", None).await,
            Err(FleetError::Conflict(_))
        ));
        let a = member(&f, 1, "ext", Role::Active).await;
        assert!(matches!(
            f.switchover(&admin(), "ext", None).await,
            Err(FleetError::Conflict(_))
        ));
        let b = member(&f, 2, "ext", Role::Backup).await;
        assert!(matches!(
            f.switchover(&admin(), "ext", Some(&a)).await,
            Err(FleetError::Conflict(m)) if m.contains("not a backup")
        ));
        let s = f
            .switchover(&admin(), "ext", Some(&b))
            .await
            .expect("switchover");
        assert_eq!(
            (s.new_active.as_str(), s.old_active.as_str()),
            ("lb-02", "lb-01")
        );
        assert!(s.new_active_generation < s.old_active_generation);
        assert!(s.new_active_priority > s.old_active_priority);
        let (na, nb) = (
            f.get_node(&a).await.expect("a"),
            f.get_node(&b).await.expect("b"),
        );
        assert_eq!(na.role, Some(Role::Backup));
        assert_eq!(nb.role, Some(Role::Active));
        assert_eq!(nb.priority, Some(i64::from(s.new_active_priority)));
        assert_eq!(nb.role_generation, s.new_active_generation as i64);
        assert!(matches!(
            f.switchover(&admin(), "nope", None).await,
            Err(FleetError::NotFound(_))
        ));
    }
}
