//! The fleet's domain: every rule about nodes, clusters, assignments and roles, enforced in one place.
//!
//! Each mutation validates its input (`rules`), opens one write transaction, checks the fleet-wide rules
//! against stored state, writes the change and its audit row, takes a new generation for every node whose role
//! document changed, commits, and only then wakes those nodes' pollers. A rejected request changes nothing.

use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::notify::Notifier;
use crate::store::clusters::StoredCluster;
use crate::store::nodes::{NodeKey, NodeRow};
use crate::store::{self, Store, StoreError};

mod alerts;
pub mod boot_cache;
mod boot_window;
mod clusters;
pub mod credentials;
pub mod drift;
mod enrollment;
mod history;
mod images;
mod leases;
mod lifecycle;
pub mod liveness;
mod node_image;
pub mod real_server_setup;
mod real_servers;
mod reboot;
pub mod reenrollment;
mod role_wire;
mod roles;
pub mod rollouts;
pub mod rollouts_engine;
pub mod rules;
pub mod servers;
mod switchover;
pub mod traffic;
mod users;
mod views;

#[cfg(test)]
mod testing;

pub use alerts::{Alert, AlertKind, AlertLevel};
pub use clusters::Precondition;
pub use enrollment::{DeltaOutcome, EnrollmentToken};
pub use history::{EventPage, FleetCounts, MAX_EVENTS_BYTES};
pub use leases::{DhcpReservations, LeaderClaim, LeaseFence, LeaseWrite};
pub use lifecycle::{BootTarget, NodeAction};
pub use real_servers::{RealServerChange, RealServerRef, ServiceRef};
pub use role_wire::RoleWire;
pub use rules::{FieldError, FieldErrors};
pub use switchover::Switchover;
pub use views::{ClusterView, MemberView, NodeView};

/// Why a fleet operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("invalid request: {0}")]
    Invalid(FieldErrors),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    /// The caller's `If-Match` / `If-None-Match` condition does not hold: someone changed the object since the
    /// caller read it. Nothing was written.
    #[error("{0}")]
    PreconditionFailed(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<FieldError> for FleetError {
    fn from(e: FieldError) -> Self {
        FleetError::Invalid(e.into())
    }
}

type Result<T, E = FleetError> = std::result::Result<T, E>;

fn no_cluster(name: &str) -> FleetError {
    FleetError::NotFound(format!("no cluster named {name:?}"))
}

/// Who is making a change, as written in the audit log: a user name, `node:NAME` or `system`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor(pub String);

impl Actor {
    pub fn system() -> Self {
        Actor("system".into())
    }
    pub fn node(name: &str) -> Self {
        Actor(format!("node:{name}"))
    }
}

/// Whether a PUT created, changed or left a resource alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PutOutcome {
    Created,
    Updated,
    Unchanged,
}

/// The fleet service: domain rules over the store, with change notification.
#[derive(Debug)]
pub struct Fleet {
    store: Store,
    notifier: Notifier,
    enrollment_token_ttl: Duration,
    /// Clusters as last loaded for role documents, by id, with the content generation they were loaded at:
    /// a herd of agents woken by one change shares one load instead of each reading the whole cluster.
    cluster_cache: std::sync::Mutex<HashMap<i64, (i64, std::sync::Arc<StoredCluster>)>>,
    /// Role documents serialised once and shared: services by cluster, documents by generation.
    role_wire: role_wire::RoleWireCache,
    /// Most nodes allowed in state `discovered` at once: a flood of random MACs cannot grow the database
    /// without bound.
    max_discovered: i64,
    /// Events written since the last prune (retention runs early under a flood).
    event_writes: history::EventWrites,
    /// Each node's last reported counters, for the traffic history's deltas.
    traffic: traffic::Baselines,
    /// Agents' heartbeats and when a node counts as unreachable (`liveness`).
    liveness: liveness::Liveness,
    /// Node credentials checked once and remembered, forgotten on revocation (`credentials`).
    credentials: credentials::NodeCredentials,
    /// Reports taken by this server since it started, by kind (`/metrics`).
    report_counts: ReportCounts,
}

/// Agent reports this server took since it started: full reports, merged deltas, and deltas answered "send a
/// full report" (`lbfleet_agent_reports_total` in `/metrics`).
#[derive(Debug, Default)]
pub struct ReportCounts {
    pub full: std::sync::atomic::AtomicU64,
    pub delta: std::sync::atomic::AtomicU64,
    pub delta_refused: std::sync::atomic::AtomicU64,
}

/// Default cap on waiting discovered nodes.
pub const DEFAULT_MAX_DISCOVERED: i64 = 1024;

fn to_value<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// Parses a node reference from a URL: a numeric id, a MAC, or a hostname.
pub fn node_key(text: &str) -> NodeKey {
    if let Ok(id) = text.parse::<i64>() {
        NodeKey::Id(id)
    } else if let Ok(mac) = rules::mac(text) {
        NodeKey::Mac(mac)
    } else {
        NodeKey::Hostname(text.to_owned())
    }
}
impl Fleet {
    pub fn new(store: Store, enrollment_token_ttl: Duration) -> Self {
        Fleet {
            store,
            notifier: Notifier::default(),
            enrollment_token_ttl,
            max_discovered: DEFAULT_MAX_DISCOVERED,
            cluster_cache: std::sync::Mutex::new(HashMap::new()),
            role_wire: role_wire::RoleWireCache::default(),
            event_writes: history::EventWrites::default(),
            traffic: traffic::Baselines::default(),
            report_counts: ReportCounts::default(),
            liveness: liveness::Liveness::default(),
            credentials: credentials::NodeCredentials::default(),
        }
    }

    /// Sets how often agents heartbeat and how long a silent node stays reporting.
    pub fn with_heartbeats(mut self, interval: Duration, silent_after: Duration) -> Self {
        self.liveness = liveness::Liveness::new(interval, silent_after);
        self
    }

    /// The database engine behind the fleet.
    pub fn backend(&self) -> crate::store::Backend {
        self.store.backend()
    }

    /// The fleet generation: the newest role generation any node got.
    pub async fn fleet_generation(&self) -> Result<u64, StoreError> {
        let mut conn = self.store.read().await?;
        crate::store::fleet_generation(&mut conn).await
    }

    /// The nodes whose role generation is newer than `after`, with it (wake-ups across servers).
    pub async fn generations_after(&self, after: u64) -> Result<Vec<(i64, u64)>, StoreError> {
        let mut conn = self.store.read().await?;
        crate::store::nodes::generations_after(&mut conn, after).await
    }

    /// Sends `payload` to every server listening on `channel` (PostgreSQL only).
    pub async fn notify_peers(&self, channel: &str, payload: &str) -> Result<(), StoreError> {
        let mut conn = self.store.read().await?;
        crate::store::notify(&mut conn, channel, payload).await
    }

    /// Runs pending migrations (a server that started while the database was unreachable, once it answers).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        self.store.migrate().await
    }

    /// Closes the database, waiting for connections in use to be returned (server shutdown).
    pub async fn close(&self) {
        self.store.close().await;
    }

    pub fn notifier(&self) -> &Notifier {
        &self.notifier
    }

    /// Sets the cap on nodes waiting in `discovered`.
    pub fn with_discovery_cap(mut self, max_discovered: i64) -> Self {
        self.max_discovered = max_discovered;
        self
    }

    async fn node_in(conn: &mut store::Conn, key: &NodeKey) -> Result<NodeRow> {
        store::nodes::get(conn, key).await?.ok_or_else(|| {
            FleetError::NotFound(match key {
                NodeKey::Id(id) => format!("no node with id {id}"),
                NodeKey::Mac(mac) => format!("no node with MAC {mac}"),
                NodeKey::Hostname(h) => format!("no node named {h:?}"),
            })
        })
    }

    async fn cluster_in(conn: &mut store::Conn, name: &str) -> Result<StoredCluster> {
        store::clusters::load_one(conn, name)
            .await?
            .ok_or_else(|| no_cluster(name))
    }

    /// Takes one new generation for `ids` (in this transaction) and returns what to announce after commit.
    async fn bump(conn: &mut store::Conn, ids: &[i64]) -> Result<Vec<(i64, u64)>> {
        if ids.is_empty() {
            return Ok(vec![]);
        }
        let g = store::next_generation(conn).await?;
        store::nodes::set_generation(conn, ids, g).await?;
        Ok(ids.iter().map(|id| (*id, g)).collect())
    }

    /// A cluster's content changed: one new generation for the cluster and all its members.
    async fn bump_cluster(conn: &mut store::Conn, cluster_id: i64) -> Result<Vec<(i64, u64)>> {
        let g = store::next_generation(conn).await?;
        store::clusters::touch(conn, cluster_id, g).await?;
        let ids = store::nodes::set_cluster_generation(conn, cluster_id, g).await?;
        Ok(ids.iter().map(|id| (*id, g)).collect())
    }
}

/// `addr:port`, with brackets around IPv6 addresses.
pub fn socket_text(addr: &str, port: u16) -> String {
    if addr.contains(':') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    }
}
