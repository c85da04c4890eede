//! Node lifecycle: discovery by the boot services, registration (allowlist), approval, rejection, assignment to
//! a cluster, unassignment and retirement. Every transition is checked, audited and announced in one place.

use lbfleet_proto::{wire_enum, NodeState, Role};
use serde_json::json;

use super::{rules, to_value, Actor, FieldError, Fleet, FleetError, NodeView, Result};
use crate::audit::AuditAction;
use crate::store::events::EventKind;
use crate::store::{
    self,
    nodes::{Member, NodeKey, NodeRow},
};

wire_enum!(
    /// An operator's lifecycle action on a node (see ARCHITECTURE.md, "Node lifecycle").
    NodeAction {
        Approve => "approve", Reject => "reject", Assign => "assign", Unassign => "unassign", Retire => "retire",
    }
);

impl NodeAction {
    /// The node transition table: the states each action starts from. The fleet enforces it; the dashboard
    /// offers an action only where it applies.
    pub fn from_states(self) -> &'static [NodeState] {
        use NodeState::*;
        match self {
            NodeAction::Approve => &[Discovered, Rejected],
            NodeAction::Reject => &[Discovered],
            NodeAction::Assign => &[Ready, Assigned, Serving],
            NodeAction::Unassign => &[Assigned, Serving],
            NodeAction::Retire => &[Discovered, Rejected, Ready, Assigned, Serving],
        }
    }

    /// Whether this action applies to a node in state `from`.
    pub fn allowed_from(self, from: NodeState) -> bool {
        self.from_states().contains(&from)
    }

    /// The audit row this action writes.
    pub fn audit_action(self) -> AuditAction {
        match self {
            NodeAction::Approve => AuditAction::NodeApprove,
            NodeAction::Reject => AuditAction::NodeReject,
            NodeAction::Assign => AuditAction::NodeAssign,
            NodeAction::Unassign => AuditAction::NodeUnassign,
            NodeAction::Retire => AuditAction::NodeRetire,
        }
    }
}

/// What the boot services should hand a MAC.
#[derive(Debug, Clone)]
pub struct BootTarget {
    pub node_id: i64,
    pub name: String,
    pub state: NodeState,
    /// The node's image, else the default image; `None` if neither exists.
    pub image: Option<store::images::ImageRow>,
}

impl Fleet {
    /// Decides what a booting MAC gets: records unknown MACs as discovered, refuses retired and rejected
    /// nodes, and picks the node's image or the default one.
    pub async fn boot_target(&self, mac: &str) -> Result<BootTarget> {
        let mac = rules::mac(mac)?;
        let node_id = self.discover(&mac).await?;
        let mut conn = self.store.read().await?;
        let row = Self::node_in(&mut conn, &NodeKey::Id(node_id)).await?;
        let state = row.state;
        if matches!(state, NodeState::Retired | NodeState::Rejected) {
            return Err(FleetError::Forbidden(format!(
                "node {} is {state}; it gets no boot image",
                row.name()
            )));
        }
        let image = match &row.image {
            Some(name) => store::images::get(&mut conn, name).await?,
            None => store::images::default_image(&mut conn).await?,
        };
        Ok(BootTarget {
            node_id,
            name: row.name().to_owned(),
            state,
            image,
        })
    }

    pub async fn list_nodes(&self, filter: &store::nodes::NodeFilter) -> Result<Vec<NodeView>> {
        let mut conn = self.store.read().await?;
        let now = store::now_ms();
        Ok(store::nodes::list(&mut conn, filter)
            .await?
            .into_iter()
            .map(|r| NodeView::new(r, false).map(|v| self.with_liveness(v, now)))
            .collect::<Result<_, _>>()?)
    }

    pub async fn get_node(&self, key: &NodeKey) -> Result<NodeView> {
        let mut conn = self.store.read().await?;
        let view = NodeView::new(Self::node_in(&mut conn, key).await?, true)?;
        Ok(self.with_liveness(view, store::now_ms()))
    }

    pub(super) async fn check_image(conn: &mut store::Conn, image: Option<&str>) -> Result<()> {
        if let Some(name) = image {
            if store::images::get(conn, name).await?.is_none() {
                return Err(FieldError::new("image", format!("no image named {name:?}")).into());
            }
        }
        Ok(())
    }

    async fn check_hostname(
        conn: &mut store::Conn,
        hostname: Option<&str>,
        except: i64,
    ) -> Result<()> {
        if let Some(h) = hostname {
            rules::hostname(h)?;
            if store::nodes::hostname_taken(conn, h, except).await? {
                return Err(FleetError::Conflict(format!(
                    "hostname {h:?} is already used by another node"
                )));
            }
        }
        Ok(())
    }

    /// Validates a fixed DHCP address and checks no other node holds it; returns its canonical text.
    async fn check_reserved_address(
        conn: &mut store::Conn,
        address: Option<&str>,
        except: &str,
    ) -> Result<Option<String>> {
        let Some(text) = address else { return Ok(None) };
        let addr: std::net::Ipv4Addr = text
            .parse()
            .map_err(|_| FieldError::new("address", format!("{text:?} is not an IPv4 address")))?;
        if addr.is_unspecified() || addr.is_multicast() || addr.is_broadcast() || addr.is_loopback()
        {
            return Err(
                FieldError::new("address", format!("{addr} is not a usable host address")).into(),
            );
        }
        let canonical = addr.to_string();
        if let Some(holder) = store::nodes::address_reserved_by(conn, &canonical).await? {
            if holder != except {
                return Err(FleetError::Conflict(format!(
                    "address {canonical} is already reserved for node {holder:?}"
                )));
            }
        }
        Ok(Some(canonical))
    }

    /// Pre-registers a MAC as an approved (`ready`) node: the allowlist path.
    pub async fn register_node(
        &self,
        actor: &Actor,
        mac: &str,
        hostname: Option<&str>,
        image: Option<&str>,
        address: Option<&str>,
    ) -> Result<NodeView> {
        let mac = rules::mac(mac)?;
        let mut tx = self.store.begin().await?;
        if let Some(existing) = store::nodes::get(&mut tx, &NodeKey::Mac(mac.clone())).await? {
            return Err(FleetError::Conflict(format!(
                "MAC {mac} is already known as node {:?} (state {}){}",
                existing.name(),
                existing.state,
                if existing.state == NodeState::Discovered {
                    "; approve it instead"
                } else {
                    ""
                }
            )));
        }
        Self::check_hostname(&mut tx, hostname, -1).await?;
        Self::check_image(&mut tx, image).await?;
        let reserved = Self::check_reserved_address(&mut tx, address, &mac).await?;
        let id = store::nodes::insert(&mut tx, &mac, hostname, NodeState::Ready, image).await?;
        if reserved.is_some() {
            store::nodes::set_reserved_address(&mut tx, id, reserved.as_deref()).await?;
        }
        // Every node starts with a generation, so its agent's first poll (`after=0`) gets the empty role at once.
        Self::bump(&mut tx, &[id]).await?;
        let row = Self::node_in(&mut tx, &NodeKey::Id(id)).await?;
        let view = NodeView::new(row, false)?;
        store::audit::append(
            &mut tx,
            &actor.0,
            AuditAction::NodeRegister,
            &format!("node:{}", view.name),
            None,
            Some(&to_value(&view)),
        )
        .await?;
        store::commit(tx).await?;
        self.notifier.fleet_changed();
        Ok(view)
    }

    /// Records a MAC seen by the boot services as a `discovered` node (idempotent); returns the node id.
    pub async fn discover(&self, mac: &str) -> Result<i64> {
        let mac = rules::mac(mac)?;
        let mut tx = self.store.begin().await?;
        if let Some(existing) = store::nodes::get(&mut tx, &NodeKey::Mac(mac.clone())).await? {
            return Ok(existing.id);
        }
        if store::nodes::count_in_state(&mut tx, NodeState::Discovered).await?
            >= self.max_discovered
        {
            tracing::warn!(
                mac,
                cap = self.max_discovered,
                "discovery cap reached: new MAC not recorded"
            );
            return Err(FleetError::Conflict(format!(
                "{} discovered nodes are waiting for approval (the cap); approve or reject some first",
                self.max_discovered
            )));
        }
        let id = store::nodes::insert(&mut tx, &mac, None, NodeState::Discovered, None).await?;
        Self::bump(&mut tx, &[id]).await?;
        store::audit::append(
            &mut tx,
            "system",
            AuditAction::NodeDiscover,
            &format!("node:{mac}"),
            None,
            Some(&json!({"mac": mac})),
        )
        .await?;
        store::events::insert(
            &mut tx,
            EventKind::Discovered,
            Some(id),
            None,
            &format!("new hardware {mac} discovered"),
        )
        .await?;
        store::commit(tx).await?;
        self.notifier.fleet_changed();
        Ok(id)
    }

    /// Moves a node between lifecycle states with the common checks, audit and notification.
    async fn transition(
        &self,
        actor: &Actor,
        key: &NodeKey,
        action: NodeAction,
        apply: impl for<'c> FnOnce(
            &'c mut store::Conn,
            &'c NodeRow,
        ) -> futures::future::BoxFuture<'c, Result<NodeState>>,
    ) -> Result<NodeView> {
        let mut tx = self.store.begin().await?;
        let row = Self::node_in(&mut tx, key).await?;
        let from = row.state;
        if !action.allowed_from(from) {
            let allowed: Vec<&str> = action.from_states().iter().map(|s| s.as_str()).collect();
            return Err(FleetError::Conflict(format!(
                "node {:?} is {from}; {action} needs a node that is {}",
                row.name(),
                allowed.join(" or ")
            )));
        }
        let before = NodeView::new(row.clone(), false)?;
        let to = apply(&mut tx, &row).await?;
        store::nodes::set_state(&mut tx, row.id, to).await?;
        let after_row = Self::node_in(&mut tx, &NodeKey::Id(row.id)).await?;
        let changes = if before.cluster != after_row.cluster
            || before.role.map(Role::as_str) != after_row.role.as_deref()
            || before.priority != after_row.priority
            || to == NodeState::Retired
        {
            Self::bump(&mut tx, &[row.id]).await?
        } else {
            vec![]
        };
        let after_row = Self::node_in(&mut tx, &NodeKey::Id(row.id)).await?;
        let after = NodeView::new(after_row, false)?;
        store::audit::append(
            &mut tx,
            &actor.0,
            action.audit_action(),
            &format!("node:{}", after.name),
            Some(&to_value(&before)),
            Some(&to_value(&after)),
        )
        .await?;
        store::commit(tx).await?;
        self.notifier.announce(&changes);
        tracing::info!(node = after.name, actor = actor.0, action = action.as_str(), from = %from, to = %to, "node transition");
        Ok(after)
    }

    /// Approves discovered (or previously rejected) hardware, optionally naming it and picking its image.
    pub async fn approve(
        &self,
        actor: &Actor,
        key: &NodeKey,
        hostname: Option<String>,
        image: Option<String>,
        address: Option<String>,
    ) -> Result<NodeView> {
        self.transition(actor, key, NodeAction::Approve, move |conn, row| {
            Box::pin(async move {
                Self::check_hostname(conn, hostname.as_deref(), row.id).await?;
                Self::check_image(conn, image.as_deref()).await?;
                let reserved =
                    Self::check_reserved_address(conn, address.as_deref(), row.name()).await?;
                if reserved.is_some() {
                    store::nodes::set_reserved_address(conn, row.id, reserved.as_deref()).await?;
                }
                let hostname = hostname.or_else(|| row.hostname.clone());
                let image = image.or_else(|| row.image.clone());
                store::nodes::set_identity(conn, row.id, hostname.as_deref(), image.as_deref())
                    .await?;
                Ok(NodeState::Ready)
            })
        })
        .await
    }

    /// Rejects discovered hardware: it stays known (so it is not rediscovered) but never gets a role.
    pub async fn reject(&self, actor: &Actor, key: &NodeKey) -> Result<NodeView> {
        let view = self
            .transition(actor, key, NodeAction::Reject, |conn, row| {
                Box::pin(async move {
                    store::auth::revoke_node(conn, row.id).await?;
                    Ok(NodeState::Rejected)
                })
            })
            .await?;
        self.credentials_revoked(&[view.id]);
        Ok(view)
    }

    /// Assigns a node to a cluster as active or backup (moving it from another cluster if needed).
    pub async fn assign(
        &self,
        actor: &Actor,
        key: &NodeKey,
        cluster: &str,
        role: Role,
        priority: Option<u32>,
    ) -> Result<NodeView> {
        let priority = match priority {
            Some(p) => rules::priority(p)?,
            None => match role {
                Role::Active => rules::ACTIVE_PRIORITY,
                Role::Backup => rules::BACKUP_PRIORITY,
            },
        };
        let cluster = cluster.to_owned();
        self.transition(actor, key, NodeAction::Assign, move |conn, row| {
            Box::pin(async move {
                let c = Self::cluster_in(conn, &cluster).await?;
                let others: Vec<Member> =
                    store::nodes::members(conn, c.id).await?.into_iter().filter(|m| m.node_id != row.id).collect();
                match role {
                    Role::Active => {
                        if let Some(a) = others.iter().find(|m| m.role == Role::Active) {
                            return Err(FleetError::Conflict(format!(
                                "cluster {cluster:?} already has an active node ({}); assign this one as backup or use switchover",
                                a.name
                            )));
                        }
                        if let Some(b) = others.iter().find(|m| m.role == Role::Backup && m.priority >= i64::from(priority)) {
                            return Err(FleetError::Conflict(format!(
                                "the active node needs a higher priority than every backup: backup {} has {}, asked for {priority}",
                                b.name, b.priority
                            )));
                        }
                    }
                    Role::Backup => {
                        if let Some(a) = others.iter().find(|m| m.role == Role::Active && m.priority <= i64::from(priority)) {
                            return Err(FleetError::Conflict(format!(
                                "a backup needs a lower priority than the active node: active {} has {}, asked for {priority}",
                                a.name, a.priority
                            )));
                        }
                    }
                }
                store::nodes::upsert_assignment(conn, row.id, c.id, role, priority).await?;
                let unchanged = row.cluster.as_deref() == Some(cluster.as_str())
                    && row.role.as_deref() == Some(role.as_str())
                    && row.priority == Some(i64::from(priority));
                Ok(if unchanged && row.state == NodeState::Serving { NodeState::Serving } else { NodeState::Assigned })
            })
        })
        .await
    }

    /// Takes a node out of its cluster; it becomes `ready` and must drop its VIPs and services.
    pub async fn unassign(&self, actor: &Actor, key: &NodeKey) -> Result<NodeView> {
        self.transition(actor, key, NodeAction::Unassign, |conn, row| {
            Box::pin(async move {
                store::nodes::delete_assignment(conn, row.id).await?;
                Ok(NodeState::Ready)
            })
        })
        .await
    }

    /// Retires a node for good: no assignment, no credentials; its history stays.
    pub async fn retire(&self, actor: &Actor, key: &NodeKey) -> Result<NodeView> {
        let view = self
            .transition(actor, key, NodeAction::Retire, |conn, row| {
                Box::pin(async move {
                    store::nodes::delete_assignment(conn, row.id).await?;
                    store::auth::revoke_node(conn, row.id).await?;
                    Ok(NodeState::Retired)
                })
            })
            .await?;
        self.credentials_revoked(&[view.id]);
        Ok(view)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{admin, fleet, ready_node, spec};
    use super::*;

    #[tokio::test]
    async fn discovered_hardware_is_approved_assigned_and_retired() {
        let (f, _dir) = fleet().await;
        let mac = "52:54:00:00:00:07";
        let id = f.discover(mac).await.expect("discover");
        assert_eq!(f.discover("52-54-00-00-00-07").await.expect("again"), id);
        let key = NodeKey::Id(id);
        assert_eq!(
            f.get_node(&key).await.expect("node").state,
            NodeState::Discovered
        );
        // A discovered node cannot be assigned before approval.
        f.put_cluster(&admin(), "ext", &spec(51, "198.18.0.10"))
            .await
            .expect("cluster");
        assert!(matches!(
            f.assign(&admin(), &key, "ext", Role::Active, None).await,
            Err(FleetError::Conflict(_))
        ));
        let n = f
            .approve(
                &admin(),
                &key,
                Some("lb-07".into()),
                None,
                Some("198.18.1.70".into()),
            )
            .await
            .expect("approve");
        assert_eq!((n.state, n.name.as_str()), (NodeState::Ready, "lb-07"));
        assert_eq!(n.reserved_address.as_deref(), Some("198.18.1.70"));
        let n = f
            .assign(&admin(), &key, "ext", Role::Active, None)
            .await
            .expect("assign");
        assert_eq!(
            (n.state.as_str(), n.role.map(Role::as_str)),
            ("assigned", Some("active"))
        );
        // A second active, or a backup above the active's priority, is refused.
        let other = ready_node(&f, 8).await;
        assert!(matches!(
            f.assign(&admin(), &other, "ext", Role::Active, None).await,
            Err(FleetError::Conflict(m)) if m.contains("already has an active")
        ));
        assert!(matches!(
            f.assign(&admin(), &other, "ext", Role::Backup, Some(250))
                .await,
            Err(FleetError::Conflict(_))
        ));
        let n = f.unassign(&admin(), &key).await.expect("unassign");
        assert_eq!((n.state, n.cluster.as_deref()), (NodeState::Ready, None));
        let n = f.retire(&admin(), &key).await.expect("retire");
        assert_eq!(n.state, NodeState::Retired);
        assert!(matches!(
            f.retire(&admin(), &key).await,
            Err(FleetError::Conflict(_))
        ));
        assert!(matches!(
            f.boot_target(mac).await,
            Err(FleetError::Forbidden(_))
        ));
    }

    #[tokio::test]
    async fn registration_checks_names_addresses_and_the_discovery_cap() {
        let (f, _dir) = fleet().await;
        let f = f.with_discovery_cap(1);
        ready_node(&f, 1).await;
        assert!(matches!(
            f.register_node(&admin(), "52:54:00:00:00:01", None, None, None)
                .await,
            Err(FleetError::Conflict(_))
        ));
        assert!(matches!(
            f.register_node(&admin(), "52:54:00:00:00:02", Some("lb-01"), None, None).await,
            Err(FleetError::Conflict(m)) if m.contains("hostname")
        ));
        assert!(matches!(
            f.register_node(&admin(), "52:54:00:00:00:02", None, Some("nope"), None)
                .await,
            Err(FleetError::Invalid(_))
        ));
        assert!(matches!(
            f.register_node(&admin(), "52:54:00:00:00:02", None, None, Some("224.0.0.1"))
                .await,
            Err(FleetError::Invalid(_))
        ));
        assert!(matches!(
            f.discover("not a mac").await,
            Err(FleetError::Invalid(_))
        ));
        let t = f
            .boot_target("52:54:00:00:00:03")
            .await
            .expect("boot target");
        assert_eq!((t.state, t.image.is_none()), (NodeState::Discovered, true));
        assert!(matches!(
            f.discover("52:54:00:00:00:04").await,
            Err(FleetError::Conflict(m)) if m.contains("cap")
        ));
        f.reject(&admin(), &NodeKey::Id(t.node_id))
            .await
            .expect("reject");
        assert!(f.discover("52:54:00:00:00:04").await.is_ok());
        let waiting = f
            .list_nodes(&store::nodes::NodeFilter {
                state: Some(NodeState::Discovered),
                cluster: None,
            })
            .await
            .expect("list");
        assert_eq!(waiting.len(), 1);
        assert!(crate::fleet::rules::node_state("asleep").is_err());
    }
}
