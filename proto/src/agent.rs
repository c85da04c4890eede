//! Agent API messages: enrollment and reports (`/api/v1/agent/*`).

use serde::{Deserialize, Serialize};

use crate::{HealthTransition, RealServerHealth, VrrpState};

/// `POST /api/v1/agent/enroll`: trade a one-time enrollment token for a node credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    pub token: String,
    /// MAC of the interface the node booted from; must match the node the token was issued for.
    pub mac: String,
    #[serde(default)]
    pub agent_version: Option<String>,
    #[serde(default)]
    pub image_version: Option<String>,
}

/// The answer to an enrollment: the credential is shown exactly once.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollResponse {
    pub node_id: i64,
    pub node: String,
    /// Bearer credential for every later agent call. Stored only hashed on the server.
    pub credential: String,
}

impl std::fmt::Debug for EnrollResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollResponse")
            .field("node_id", &self.node_id)
            .field("node", &self.node)
            .field("credential", &"<redacted>")
            .finish()
    }
}

/// Health of one real server as the agent's checker sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RealServerReport {
    pub address: String,
    pub port: u16,
    pub healthy: bool,
    /// Weight currently in the kernel.
    #[serde(default)]
    pub weight: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub active_conns: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub inactive_conns: u64,
    /// Kernel counters of this destination since it was added (IPVS folds them every 2 s).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub connections: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub packets_in: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub packets_out: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bytes_in: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bytes_out: u64,
    /// What the health check found (absent from agents that predate health checks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<RealServerHealth>,
}

/// One virtual service as the agent observed it in the kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceReport {
    pub vip: String,
    pub port: u16,
    pub protocol: crate::Protocol,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub connections: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub packets_in: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub packets_out: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bytes_in: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bytes_out: u64,
    #[serde(default)]
    pub real_servers: Vec<RealServerReport>,
}

/// One change of a node's VRRP state, with why it happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VrrpTransition {
    pub from: VrrpState,
    pub to: VrrpState,
    /// Why, in words ("master down timer expired", "higher priority advert from 198.18.0.3", "shutdown").
    pub reason: String,
    /// When, in milliseconds since the Unix epoch (the node's clock).
    pub at_ms: u64,
}

/// `POST /api/v1/agent/report`: what the node has applied and how it is doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AgentReport {
    /// Generation of the role document the kernel state now matches.
    pub applied_generation: u64,
    #[serde(default)]
    pub vrrp_state: Option<VrrpState>,
    /// Address of the VRRP master as this node sees it (itself when MASTER, the source of the adverts it
    /// follows when BACKUP); `None` when no VRRP runs or no master is known.
    #[serde(default)]
    pub vrrp_master: Option<String>,
    /// The node's most recent VRRP transitions, oldest first (the agent keeps a bounded number); the server
    /// records those newer than the last one it saw.
    #[serde(default)]
    pub vrrp_transitions: Vec<VrrpTransition>,
    /// VRRP adverts dropped since the agent started, by reason (`ttl`, `checksum`, `vrid_mismatch`, ...).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub vrrp_dropped: std::collections::BTreeMap<String, u64>,
    #[serde(default)]
    pub services: Vec<ServiceReport>,
    /// Errors since the last report (failed netlink operations, bad role fields); empty when healthy.
    #[serde(default)]
    pub errors: Vec<String>,
    #[serde(default)]
    pub agent_version: Option<String>,
    #[serde(default)]
    pub image_version: Option<String>,
    #[serde(default)]
    pub uptime_s: u64,
    /// Address the node uses to reach the server (for the dashboard).
    #[serde(default)]
    pub address: Option<String>,
    /// Real-server health changes since the last report, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub health_events: Vec<HealthTransition>,
}

/// The answer to `POST /api/v1/agent/heartbeat` (a request with no body: the call itself says "alive"): how
/// often the server wants the next ones. The server marks a node unreachable once it has been silent for a few
/// of these intervals (`node_silent_after`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatAnswer {
    pub interval_ms: u64,
}

/// Zero counters are left out of a report (an idle real server's row is a third of the size); every reader
/// takes a missing counter as 0 (`#[serde(default)]`), servers that predate this too.
fn is_zero(n: &u64) -> bool {
    *n == 0
}
