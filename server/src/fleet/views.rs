//! How the admin API (and the dashboard) sees nodes and clusters.

use lbfleet_proto::{ClusterSpec, NodeState, Role, VrrpState};
use serde::Serialize;
use serde_json::Value;

use crate::store::clusters::StoredCluster;
use crate::store::nodes::{Member, NodeRow};
use crate::store::StoreError;

/// A node as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    pub id: i64,
    pub name: String,
    pub mac: String,
    pub hostname: Option<String>,
    pub state: NodeState,
    pub image: Option<String>,
    pub address: Option<String>,
    /// Fixed DHCP address of the node, if it has one.
    pub reserved_address: Option<String>,
    pub cluster: Option<String>,
    pub role: Option<Role>,
    pub priority: Option<i64>,
    pub role_generation: i64,
    pub applied_generation: i64,
    /// True when the agent reported the newest role generation as applied.
    pub in_sync: bool,
    pub vrrp_state: Option<VrrpState>,
    pub agent_version: Option<String>,
    pub image_version: Option<String>,
    pub last_seen_at: Option<i64>,
    /// Heard from within `node_silent_after` (a heartbeat or a report); false: unreachable or never seen.
    pub reporting: bool,
    pub created_at: i64,
    pub updated_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_report: Option<Value>,
}

impl NodeView {
    pub(super) fn new(row: NodeRow, with_report: bool) -> Result<Self, StoreError> {
        let corrupt = |what: &str, e: lbfleet_proto::UnknownValue| {
            StoreError::Corrupt(format!("node {} {what}: {e}", row.id))
        };
        let role = row
            .role
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(|e| corrupt("role", e))?;
        let vrrp_state = row
            .vrrp_state
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(|e| corrupt("VRRP state", e))?;
        let last_report = if with_report {
            row.last_report
                .as_deref()
                .and_then(|r| serde_json::from_str(r).ok())
        } else {
            None
        };
        Ok(NodeView {
            name: row.name().to_owned(),
            in_sync: row.applied_generation >= row.role_generation,
            id: row.id,
            mac: row.mac,
            hostname: row.hostname,
            state: row.state,
            image: row.image,
            address: row.address,
            reserved_address: row.reserved_address,
            cluster: row.cluster,
            role,
            priority: row.priority,
            role_generation: row.role_generation,
            applied_generation: row.applied_generation,
            vrrp_state,
            agent_version: row.agent_version,
            image_version: row.image_version,
            last_seen_at: row.last_seen_at,
            // Set by the fleet, which knows the heartbeats (`Fleet::with_liveness`).
            reporting: false,
            created_at: row.created_at,
            updated_at: row.updated_at,
            last_report,
        })
    }
}

/// A cluster member as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct MemberView {
    pub node: String,
    pub role: Role,
    pub priority: i64,
}

/// A cluster as the admin API shows it: the spec an operator PUT, plus who serves it.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterView {
    pub name: String,
    pub spec: ClusterSpec,
    pub members: Vec<MemberView>,
    pub created_at: i64,
    pub updated_at: i64,
    /// Changes whenever the spec changes (also sent as the `ETag`); give it back in `If-Match`.
    pub revision: u64,
}

impl ClusterView {
    pub(super) fn new(c: StoredCluster, members: Vec<Member>) -> Self {
        ClusterView {
            name: c.name,
            spec: c.spec,
            members: members
                .into_iter()
                .map(|m| MemberView {
                    node: m.name,
                    role: m.role,
                    priority: m.priority,
                })
                .collect(),
            created_at: c.created_at,
            updated_at: c.updated_at,
            revision: c.revision,
        }
    }
}
