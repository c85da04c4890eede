//! The fleet's domain: every rule about nodes, clusters, assignments and roles, enforced in one place.
//!
//! Each mutation validates its input (`rules`), opens one write transaction, checks the fleet-wide rules
//! against stored state, writes the change and its audit row, takes a new generation for every node whose role
//! document changed, commits, and only then wakes those nodes' pollers. A rejected request changes nothing.

use std::collections::HashMap;
use std::time::Duration;

use lbfleet_proto::{
    AgentReport, ClusterSpec, EnrollRequest, EnrollResponse, NodeState, RealServer, RealServerSpec,
    Role, RoleDocument, UserRole, VirtualService, VrrpConfig,
};
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::SqliteConnection;

use crate::notify::Notifier;
use crate::secrets;
use crate::store::clusters::{RealServerKey, StoredCluster};
use crate::store::nodes::{Member, NodeKey, NodeRow};
use crate::store::{self, now_ms, Store, StoreError};

mod node_image;
pub mod reenrollment;
pub mod rules;

pub use rules::{FieldError, FieldErrors};

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

/// A condition on the stored cluster for a write to proceed (optimistic concurrency for read-modify-write
/// callers: the dashboard, scripts using `If-Match`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precondition {
    /// Write whatever is stored (last writer wins).
    #[default]
    Any,
    /// Only if the cluster exists (`If-Match: *`).
    Exists,
    /// Only if the cluster does not exist yet (`If-None-Match: *`).
    Absent,
    /// Only if the cluster's spec is still at this revision (`If-Match: "N"`).
    Revision(u64),
}

impl Precondition {
    /// Checks `stored` (the current revision, `None` when the cluster does not exist).
    fn check(self, name: &str, stored: Option<u64>) -> Result<()> {
        let failed = |m: String| Err(FleetError::PreconditionFailed(m));
        match (self, stored) {
            (Precondition::Any, _)
            | (Precondition::Exists, Some(_))
            | (Precondition::Absent, None) => Ok(()),
            (Precondition::Revision(want), Some(have)) if want == have => Ok(()),
            (Precondition::Exists | Precondition::Revision(_), None) => {
                failed(format!("cluster {name:?} does not exist (any more)"))
            }
            (Precondition::Absent, Some(have)) => failed(format!(
                "cluster {name:?} already exists (revision {have})"
            )),
            (Precondition::Revision(want), Some(have)) => failed(format!(
                "cluster {name:?} changed since revision {want}: it is at revision {have} now; read it again and \
                 re-apply your change"
            )),
        }
    }
}

impl From<FieldError> for FleetError {
    fn from(e: FieldError) -> Self {
        FleetError::Invalid(e.into())
    }
}

impl From<sqlx::Error> for FleetError {
    fn from(e: sqlx::Error) -> Self {
        FleetError::Store(e.into())
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

/// A node as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    pub id: i64,
    pub name: String,
    pub mac: String,
    pub hostname: Option<String>,
    pub state: String,
    pub image: Option<String>,
    pub address: Option<String>,
    /// Fixed DHCP address of the node, if it has one.
    pub reserved_address: Option<String>,
    pub cluster: Option<String>,
    pub role: Option<String>,
    pub priority: Option<i64>,
    pub role_generation: i64,
    pub applied_generation: i64,
    /// True when the agent reported the newest role generation as applied.
    pub in_sync: bool,
    pub vrrp_state: Option<String>,
    pub agent_version: Option<String>,
    pub image_version: Option<String>,
    pub last_seen_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_report: Option<Value>,
}

impl NodeView {
    fn new(row: NodeRow, with_report: bool) -> Self {
        let last_report = if with_report {
            row.last_report
                .as_deref()
                .and_then(|r| serde_json::from_str(r).ok())
        } else {
            None
        };
        NodeView {
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
            role: row.role,
            priority: row.priority,
            role_generation: row.role_generation,
            applied_generation: row.applied_generation,
            vrrp_state: row.vrrp_state,
            agent_version: row.agent_version,
            image_version: row.image_version,
            last_seen_at: row.last_seen_at,
            created_at: row.created_at,
            updated_at: row.updated_at,
            last_report,
        }
    }
}

/// A cluster member as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct MemberView {
    pub node: String,
    pub role: String,
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
    fn new(c: StoredCluster, members: Vec<Member>) -> Self {
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

/// A change to one real server through the fine-grained endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RealServerChange {
    Weight(u32),
    Enabled(bool),
}

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

/// The fleet service: domain rules over the store, with change notification.
#[derive(Debug)]
pub struct Fleet {
    store: Store,
    notifier: Notifier,
    enrollment_token_ttl: Duration,
    /// Clusters as last loaded for role documents, by id, with the content generation they were loaded at:
    /// a herd of agents woken by one change shares one load instead of each reading the whole cluster.
    cluster_cache: std::sync::Mutex<HashMap<i64, (i64, std::sync::Arc<StoredCluster>)>>,
    /// Most nodes allowed in state `discovered` at once: a flood of random MACs cannot grow the database
    /// without bound.
    max_discovered: i64,
}

/// Default cap on waiting discovered nodes.
pub const DEFAULT_MAX_DISCOVERED: i64 = 1024;

/// What the boot services should hand a MAC.
#[derive(Debug, Clone)]
pub struct BootTarget {
    pub node_id: i64,
    pub name: String,
    pub state: NodeState,
    /// The node's image, else the default image; `None` if neither exists.
    pub image: Option<store::images::ImageRow>,
}

fn to_value<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

fn parse_state(row: &NodeRow) -> Result<NodeState> {
    row.state
        .parse()
        .map_err(|e| FleetError::Store(StoreError::Corrupt(format!("node {}: {e}", row.id))))
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
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn notifier(&self) -> &Notifier {
        &self.notifier
    }

    /// Sets the cap on nodes waiting in `discovered`.
    pub fn with_discovery_cap(mut self, max_discovered: i64) -> Self {
        self.max_discovered = max_discovered;
        self
    }

    /// Decides what a booting MAC gets: records unknown MACs as discovered, refuses retired and rejected
    /// nodes, and picks the node's image or the default one.
    pub async fn boot_target(&self, mac: &str) -> Result<BootTarget> {
        let mac = rules::mac(mac)?;
        let node_id = self.discover(&mac).await?;
        let mut conn = self.store.read().await?;
        let row = Self::node_in(&mut conn, &NodeKey::Id(node_id)).await?;
        let state = parse_state(&row)?;
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

    async fn node_in(conn: &mut SqliteConnection, key: &NodeKey) -> Result<NodeRow> {
        store::nodes::get(conn, key).await?.ok_or_else(|| {
            FleetError::NotFound(match key {
                NodeKey::Id(id) => format!("no node with id {id}"),
                NodeKey::Mac(mac) => format!("no node with MAC {mac}"),
                NodeKey::Hostname(h) => format!("no node named {h:?}"),
            })
        })
    }

    async fn cluster_in(conn: &mut SqliteConnection, name: &str) -> Result<StoredCluster> {
        store::clusters::load_one(conn, name)
            .await?
            .ok_or_else(|| no_cluster(name))
    }

    /// Takes one new generation for `ids` (in this transaction) and returns what to announce after commit.
    async fn bump(conn: &mut SqliteConnection, ids: &[i64]) -> Result<Vec<(i64, u64)>> {
        if ids.is_empty() {
            return Ok(vec![]);
        }
        let g = store::next_generation(conn).await?;
        store::nodes::set_generation(conn, ids, g).await?;
        Ok(ids.iter().map(|id| (*id, g)).collect())
    }

    /// A cluster's content changed: one new generation for the cluster and all its members.
    async fn bump_cluster(conn: &mut SqliteConnection, cluster_id: i64) -> Result<Vec<(i64, u64)>> {
        let g = store::next_generation(conn).await?;
        store::clusters::touch(conn, cluster_id, g).await?;
        let ids: Vec<i64> = store::nodes::members(conn, cluster_id)
            .await?
            .iter()
            .map(|m| m.node_id)
            .collect();
        store::nodes::set_generation(conn, &ids, g).await?;
        Ok(ids.iter().map(|id| (*id, g)).collect())
    }

    // ----- clusters -------------------------------------------------------------------------------------------

    pub async fn list_clusters(&self) -> Result<Vec<ClusterView>> {
        let mut conn = self.store.read().await?;
        let clusters = store::clusters::load(&mut conn, None).await?;
        let mut members: HashMap<i64, Vec<Member>> = HashMap::new();
        for (cid, m) in store::nodes::all_members(&mut conn).await? {
            members.entry(cid).or_default().push(m);
        }
        Ok(clusters
            .into_iter()
            .map(|c| {
                let m = members.remove(&c.id).unwrap_or_default();
                ClusterView::new(c, m)
            })
            .collect())
    }

    pub async fn get_cluster(&self, name: &str) -> Result<ClusterView> {
        let mut conn = self.store.read().await?;
        let c = Self::cluster_in(&mut conn, name).await?;
        let members = store::nodes::members(&mut conn, c.id).await?;
        Ok(ClusterView::new(c, members))
    }

    /// Creates or replaces a cluster's whole spec. Real servers whose `enabled` is omitted keep their state.
    pub async fn put_cluster(
        &self,
        actor: &Actor,
        name: &str,
        spec: &ClusterSpec,
    ) -> Result<(PutOutcome, ClusterView)> {
        self.put_cluster_if(actor, name, spec, Precondition::Any)
            .await
    }

    /// `put_cluster` that writes only if `precondition` holds on what is stored, checked inside the write
    /// transaction (so a concurrent change between the caller's read and this write is never overwritten).
    pub async fn put_cluster_if(
        &self,
        actor: &Actor,
        name: &str,
        spec: &ClusterSpec,
        precondition: Precondition,
    ) -> Result<(PutOutcome, ClusterView)> {
        rules::cluster_name(name)?;
        let rules::ValidCluster(mut spec) =
            rules::cluster_spec(spec).map_err(FleetError::Invalid)?;

        let mut tx = self.store.begin().await?;
        let before = store::clusters::load_one(&mut tx, name).await?;
        precondition.check(name, before.as_ref().map(|b| b.revision))?;

        // Omitted `enabled`: keep what is stored (a drained server stays drained), new servers start enabled.
        let mut stored_enabled: HashMap<(String, u16, String, String, u16), bool> = HashMap::new();
        if let Some(b) = &before {
            for s in &b.spec.services {
                for r in &s.real_servers {
                    let key = (
                        s.vip.clone(),
                        s.port,
                        s.protocol.to_string(),
                        r.address.clone(),
                        r.port,
                    );
                    stored_enabled.insert(key, r.enabled.unwrap_or(true));
                }
            }
        }
        for s in &mut spec.services {
            for r in &mut s.real_servers {
                if r.enabled.is_none() {
                    let key = (
                        s.vip.clone(),
                        s.port,
                        s.protocol.to_string(),
                        r.address.clone(),
                        r.port,
                    );
                    r.enabled = Some(stored_enabled.get(&key).copied().unwrap_or(true));
                }
            }
        }
        if before.as_ref().is_some_and(|b| b.spec == spec) {
            drop(tx);
            return Ok((PutOutcome::Unchanged, self.get_cluster(name).await?));
        }

        // Fleet-wide uniqueness, reported with the owner's name.
        let others = store::clusters::other_keys(&mut tx, before.as_ref().map(|b| b.id)).await?;
        let mut errs = Vec::new();
        if let Some(owner) = others.vrids.get(&(spec.interface.clone(), spec.vrid)) {
            errs.push(FieldError::new(
                "vrid",
                format!(
                    "VRID {} on interface {} is already used by cluster {owner:?}",
                    spec.vrid, spec.interface
                ),
            ));
        }
        for (i, vip) in spec.vips.iter().enumerate() {
            let addr = vip.addr();
            if let Some(owner) = others.vips.get(addr) {
                errs.push(FieldError::new(
                    format!("vips[{i}]"),
                    format!("VIP {addr} already belongs to cluster {owner:?}"),
                ));
            }
        }
        for (i, s) in spec.services.iter().enumerate() {
            if let Some(owner) =
                others
                    .services
                    .get(&(s.vip.clone(), s.port, s.protocol.to_string()))
            {
                errs.push(FieldError::new(
                    format!("services[{i}]"),
                    format!(
                        "service {}:{}:{} already exists in cluster {owner:?}",
                        s.protocol, s.vip, s.port
                    ),
                ));
            }
        }
        if !errs.is_empty() {
            return Err(FleetError::Conflict(FieldErrors(errs).to_string()));
        }

        let id = store::clusters::upsert(&mut tx, name, &spec).await?;
        store::clusters::replace_contents(&mut tx, id, &spec).await?;
        let changes = Self::bump_cluster(&mut tx, id).await?;
        let (outcome, action) = if before.is_some() {
            (PutOutcome::Updated, "cluster.update")
        } else {
            (PutOutcome::Created, "cluster.create")
        };
        store::audit::append(
            &mut tx,
            &actor.0,
            action,
            &format!("cluster:{name}"),
            before.as_ref().map(|b| to_value(&b.spec)).as_ref(),
            Some(&to_value(&spec)),
        )
        .await?;
        tx.commit().await?;
        self.notifier.announce(&changes);
        tracing::info!(
            cluster = name,
            actor = actor.0,
            ?outcome,
            nodes = changes.len(),
            "cluster spec written"
        );
        Ok((outcome, self.get_cluster(name).await?))
    }

    /// Deletes a cluster that has no nodes assigned.
    pub async fn delete_cluster(&self, actor: &Actor, name: &str) -> Result<()> {
        self.delete_cluster_if(actor, name, Precondition::Any).await
    }

    /// `delete_cluster` only if `precondition` holds (checked in the write transaction).
    pub async fn delete_cluster_if(
        &self,
        actor: &Actor,
        name: &str,
        precondition: Precondition,
    ) -> Result<()> {
        let mut tx = self.store.begin().await?;
        let stored = store::clusters::load_one(&mut tx, name).await?;
        precondition.check(name, stored.as_ref().map(|c| c.revision))?;
        let c = stored.ok_or_else(|| no_cluster(name))?;
        let members = store::nodes::members(&mut tx, c.id).await?;
        if !members.is_empty() {
            let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
            return Err(FleetError::Conflict(format!(
                "cluster {name:?} still has nodes assigned ({}); unassign them first",
                names.join(", ")
            )));
        }
        store::clusters::delete(&mut tx, c.id).await?;
        store::audit::append(
            &mut tx,
            &actor.0,
            "cluster.delete",
            &format!("cluster:{name}"),
            Some(&to_value(&c.spec)),
            None,
        )
        .await?;
        tx.commit().await?;
        self.notifier.fleet_changed();
        Ok(())
    }

    /// Adds one real server to one service; nothing else changes.
    pub async fn add_real_server(
        &self,
        actor: &Actor,
        cluster: &str,
        service: &ServiceRef,
        rs: &RealServerSpec,
    ) -> Result<RealServerSpec> {
        let mut tx = self.store.begin().await?;
        let c = Self::cluster_in(&mut tx, cluster).await?;
        let svc = service.find(&c)?;
        let mut errs = FieldErrors::default();
        let vip = svc.vip.parse().ok();
        let Some(mut rs) = rules::real_server("real_server", rs, vip, svc, &mut errs) else {
            return Err(FleetError::Invalid(errs));
        };
        rs.enabled = Some(rs.enabled.unwrap_or(true));
        if svc
            .real_servers
            .iter()
            .any(|r| r.address == rs.address && r.port == rs.port)
        {
            return Err(FleetError::Conflict(format!(
                "real server {}:{} already exists in service {service}",
                rs.address, rs.port
            )));
        }
        let key = service.key(&rs.address, rs.port);
        store::clusters::add_real_server(&mut tx, c.id, &key, &rs).await?;
        self.finish_real_server_change(tx, actor, &c, "real_server.add", &key, None, Some(&rs))
            .await?;
        Ok(rs)
    }

    /// Removes one real server.
    pub async fn remove_real_server(
        &self,
        actor: &Actor,
        cluster: &str,
        service: &ServiceRef,
        rs: &RealServerRef,
    ) -> Result<()> {
        let mut tx = self.store.begin().await?;
        let c = Self::cluster_in(&mut tx, cluster).await?;
        let svc = service.find(&c)?;
        let current = rs.find(svc, service)?.clone();
        let key = service.key(&current.address, current.port);
        store::clusters::delete_real_server(&mut tx, c.id, &key).await?;
        self.finish_real_server_change(
            tx,
            actor,
            &c,
            "real_server.remove",
            &key,
            Some(&current),
            None,
        )
        .await
    }

    /// Sets one real server's weight, or drains / enables it.
    pub async fn change_real_server(
        &self,
        actor: &Actor,
        cluster: &str,
        service: &ServiceRef,
        rs: &RealServerRef,
        change: RealServerChange,
    ) -> Result<RealServerSpec> {
        if let RealServerChange::Weight(w) = change {
            rules::weight(w)?;
        }
        let mut tx = self.store.begin().await?;
        let c = Self::cluster_in(&mut tx, cluster).await?;
        let svc = service.find(&c)?;
        let current = rs.find(svc, service)?.clone();
        let mut after = current.clone();
        let action = match change {
            RealServerChange::Weight(w) => {
                after.weight = w;
                "real_server.weight"
            }
            RealServerChange::Enabled(true) => {
                after.enabled = Some(true);
                "real_server.enable"
            }
            RealServerChange::Enabled(false) => {
                after.enabled = Some(false);
                "real_server.drain"
            }
        };
        if after == current {
            return Ok(after);
        }
        let key = service.key(&current.address, current.port);
        store::clusters::update_real_server(
            &mut tx,
            c.id,
            &key,
            after.weight,
            after.enabled.unwrap_or(true),
        )
        .await?;
        self.finish_real_server_change(tx, actor, &c, action, &key, Some(&current), Some(&after))
            .await?;
        Ok(after)
    }

    #[allow(clippy::too_many_arguments)]
    async fn finish_real_server_change(
        &self,
        mut tx: store::WriteTx,
        actor: &Actor,
        c: &StoredCluster,
        action: &str,
        key: &RealServerKey,
        before: Option<&RealServerSpec>,
        after: Option<&RealServerSpec>,
    ) -> Result<()> {
        let changes = Self::bump_cluster(&mut tx, c.id).await?;
        let target = format!(
            "cluster:{}/service:{}:{}:{}/real_server:{}",
            c.name,
            key.protocol,
            key.vip,
            key.port,
            socket_text(&key.address, key.rs_port)
        );
        store::audit::append(
            &mut tx,
            &actor.0,
            action,
            &target,
            before.map(to_value).as_ref(),
            after.map(to_value).as_ref(),
        )
        .await?;
        tx.commit().await?;
        self.notifier.announce(&changes);
        tracing::info!(
            cluster = c.name,
            actor = actor.0,
            action,
            target,
            "real server changed"
        );
        Ok(())
    }

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
            .find(|m| m.role == "active")
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
                    .find(|m| m.node_id == node.id && m.role == "backup")
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
                .filter(|m| m.role == "backup")
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
        store::nodes::upsert_assignment(&mut tx, active.node_id, c.id, "backup", lo).await?;
        store::nodes::upsert_assignment(&mut tx, target.node_id, c.id, "active", hi).await?;
        let raised = Self::bump(&mut tx, &[target.node_id]).await?;
        let lowered = Self::bump(&mut tx, &[active.node_id]).await?;
        for id in [active.node_id, target.node_id] {
            store::nodes::set_state(&mut tx, id, NodeState::Assigned.as_str()).await?;
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
            "cluster.switchover",
            &format!("cluster:{cluster}"),
            Some(&json!({"active": active.name, "backup": target.name})),
            Some(&to_value(&result)),
        )
        .await?;
        store::events::insert(
            &mut tx,
            "switchover",
            Some(target.node_id),
            Some(cluster),
            &format!(
                "switchover: {} becomes active (priority {hi}), {} becomes backup (priority {lo})",
                target.name, active.name
            ),
        )
        .await?;
        tx.commit().await?;
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

    // ----- nodes ----------------------------------------------------------------------------------------------

    pub async fn list_nodes(&self, filter: &store::nodes::NodeFilter) -> Result<Vec<NodeView>> {
        if let Some(s) = &filter.state {
            s.parse::<NodeState>()
                .map_err(|e| FieldError::new("state", e.to_string()))?;
        }
        let mut conn = self.store.read().await?;
        Ok(store::nodes::list(&mut conn, filter)
            .await?
            .into_iter()
            .map(|r| NodeView::new(r, false))
            .collect())
    }

    pub async fn get_node(&self, key: &NodeKey) -> Result<NodeView> {
        let mut conn = self.store.read().await?;
        Ok(NodeView::new(Self::node_in(&mut conn, key).await?, true))
    }

    async fn check_image(conn: &mut SqliteConnection, image: Option<&str>) -> Result<()> {
        if let Some(name) = image {
            if store::images::get(conn, name).await?.is_none() {
                return Err(FieldError::new("image", format!("no image named {name:?}")).into());
            }
        }
        Ok(())
    }

    async fn check_hostname(
        conn: &mut SqliteConnection,
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
        conn: &mut SqliteConnection,
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
                if existing.state == "discovered" {
                    "; approve it instead"
                } else {
                    ""
                }
            )));
        }
        Self::check_hostname(&mut tx, hostname, -1).await?;
        Self::check_image(&mut tx, image).await?;
        let reserved = Self::check_reserved_address(&mut tx, address, &mac).await?;
        let id =
            store::nodes::insert(&mut tx, &mac, hostname, NodeState::Ready.as_str(), image).await?;
        if reserved.is_some() {
            store::nodes::set_reserved_address(&mut tx, id, reserved.as_deref()).await?;
        }
        // Every node starts with a generation, so its agent's first poll (`after=0`) gets the empty role at once.
        Self::bump(&mut tx, &[id]).await?;
        let row = Self::node_in(&mut tx, &NodeKey::Id(id)).await?;
        let view = NodeView::new(row, false);
        store::audit::append(
            &mut tx,
            &actor.0,
            "node.register",
            &format!("node:{}", view.name),
            None,
            Some(&to_value(&view)),
        )
        .await?;
        tx.commit().await?;
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
        if store::nodes::count_in_state(&mut tx, NodeState::Discovered.as_str()).await?
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
        let id =
            store::nodes::insert(&mut tx, &mac, None, NodeState::Discovered.as_str(), None).await?;
        Self::bump(&mut tx, &[id]).await?;
        store::audit::append(
            &mut tx,
            "system",
            "node.discover",
            &format!("node:{mac}"),
            None,
            Some(&json!({"mac": mac})),
        )
        .await?;
        store::events::insert(
            &mut tx,
            "discovered",
            Some(id),
            None,
            &format!("new hardware {mac} discovered"),
        )
        .await?;
        tx.commit().await?;
        self.notifier.fleet_changed();
        Ok(id)
    }

    /// Moves a node between lifecycle states with the common checks, audit and notification.
    async fn transition(
        &self,
        actor: &Actor,
        key: &NodeKey,
        action: &str,
        allowed_from: &[NodeState],
        apply: impl for<'c> FnOnce(
            &'c mut SqliteConnection,
            &'c NodeRow,
        ) -> futures::future::BoxFuture<'c, Result<NodeState>>,
    ) -> Result<NodeView> {
        let mut tx = self.store.begin().await?;
        let row = Self::node_in(&mut tx, key).await?;
        let from = parse_state(&row)?;
        if !allowed_from.contains(&from) {
            let allowed: Vec<&str> = allowed_from.iter().map(|s| s.as_str()).collect();
            return Err(FleetError::Conflict(format!(
                "node {:?} is {from}; {action} needs a node that is {}",
                row.name(),
                allowed.join(" or ")
            )));
        }
        let before = NodeView::new(row.clone(), false);
        let to = apply(&mut tx, &row).await?;
        store::nodes::set_state(&mut tx, row.id, to.as_str()).await?;
        let after_row = Self::node_in(&mut tx, &NodeKey::Id(row.id)).await?;
        let changes = if before.cluster != after_row.cluster
            || before.role != after_row.role
            || before.priority != after_row.priority
            || to == NodeState::Retired
        {
            Self::bump(&mut tx, &[row.id]).await?
        } else {
            vec![]
        };
        let after_row = Self::node_in(&mut tx, &NodeKey::Id(row.id)).await?;
        let after = NodeView::new(after_row, false);
        store::audit::append(
            &mut tx,
            &actor.0,
            &format!("node.{action}"),
            &format!("node:{}", after.name),
            Some(&to_value(&before)),
            Some(&to_value(&after)),
        )
        .await?;
        tx.commit().await?;
        self.notifier.announce(&changes);
        tracing::info!(node = after.name, actor = actor.0, action, from = %from, to = %to, "node transition");
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
        self.transition(
            actor,
            key,
            "approve",
            &[NodeState::Discovered, NodeState::Rejected],
            move |conn, row| {
                Box::pin(async move {
                    Self::check_hostname(conn, hostname.as_deref(), row.id).await?;
                    Self::check_image(conn, image.as_deref()).await?;
                    let reserved =
                        Self::check_reserved_address(conn, address.as_deref(), row.name()).await?;
                    if reserved.is_some() {
                        store::nodes::set_reserved_address(conn, row.id, reserved.as_deref())
                            .await?;
                    }
                    let hostname = hostname.or_else(|| row.hostname.clone());
                    let image = image.or_else(|| row.image.clone());
                    store::nodes::set_identity(conn, row.id, hostname.as_deref(), image.as_deref())
                        .await?;
                    Ok(NodeState::Ready)
                })
            },
        )
        .await
    }

    /// Rejects discovered hardware: it stays known (so it is not rediscovered) but never gets a role.
    pub async fn reject(&self, actor: &Actor, key: &NodeKey) -> Result<NodeView> {
        self.transition(
            actor,
            key,
            "reject",
            &[NodeState::Discovered],
            |conn, row| {
                Box::pin(async move {
                    store::auth::revoke_node(conn, row.id).await?;
                    Ok(NodeState::Rejected)
                })
            },
        )
        .await
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
        self.transition(actor, key, "assign", &[NodeState::Ready, NodeState::Assigned, NodeState::Serving], move |conn, row| {
            Box::pin(async move {
                let c = Self::cluster_in(conn, &cluster).await?;
                let others: Vec<Member> =
                    store::nodes::members(conn, c.id).await?.into_iter().filter(|m| m.node_id != row.id).collect();
                match role {
                    Role::Active => {
                        if let Some(a) = others.iter().find(|m| m.role == "active") {
                            return Err(FleetError::Conflict(format!(
                                "cluster {cluster:?} already has an active node ({}); assign this one as backup or use switchover",
                                a.name
                            )));
                        }
                        if let Some(b) = others.iter().find(|m| m.role == "backup" && m.priority >= i64::from(priority)) {
                            return Err(FleetError::Conflict(format!(
                                "the active node needs a higher priority than every backup: backup {} has {}, asked for {priority}",
                                b.name, b.priority
                            )));
                        }
                    }
                    Role::Backup => {
                        if let Some(a) = others.iter().find(|m| m.role == "active" && m.priority <= i64::from(priority)) {
                            return Err(FleetError::Conflict(format!(
                                "a backup needs a lower priority than the active node: active {} has {}, asked for {priority}",
                                a.name, a.priority
                            )));
                        }
                    }
                }
                store::nodes::upsert_assignment(conn, row.id, c.id, role.as_str(), priority).await?;
                let unchanged = row.cluster.as_deref() == Some(cluster.as_str())
                    && row.role.as_deref() == Some(role.as_str())
                    && row.priority == Some(i64::from(priority));
                Ok(if unchanged && row.state == "serving" { NodeState::Serving } else { NodeState::Assigned })
            })
        })
        .await
    }

    /// Takes a node out of its cluster; it becomes `ready` and must drop its VIPs and services.
    pub async fn unassign(&self, actor: &Actor, key: &NodeKey) -> Result<NodeView> {
        self.transition(
            actor,
            key,
            "unassign",
            &[NodeState::Assigned, NodeState::Serving],
            |conn, row| {
                Box::pin(async move {
                    store::nodes::delete_assignment(conn, row.id).await?;
                    Ok(NodeState::Ready)
                })
            },
        )
        .await
    }

    /// Retires a node for good: no assignment, no credentials; its history stays.
    pub async fn retire(&self, actor: &Actor, key: &NodeKey) -> Result<NodeView> {
        use NodeState::*;
        self.transition(
            actor,
            key,
            "retire",
            &[Discovered, Rejected, Ready, Assigned, Serving],
            |conn, row| {
                Box::pin(async move {
                    store::nodes::delete_assignment(conn, row.id).await?;
                    store::auth::revoke_node(conn, row.id).await?;
                    Ok(Retired)
                })
            },
        )
        .await
    }

    /// Issues a one-time enrollment token for a node (boot scripts embed it in the kernel command line).
    pub async fn issue_enrollment_token(
        &self,
        actor: &Actor,
        key: &NodeKey,
    ) -> Result<EnrollmentToken> {
        let mut tx = self.store.begin().await?;
        let row = Self::node_in(&mut tx, key).await?;
        let state = parse_state(&row)?;
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
        if *actor == Actor::system() {
            // A boot script: an event, not an audit row (anyone on the boot network can ask for scripts, and
            // the audit chain is for changes people make).
            store::events::insert(
                &mut tx,
                "boot_script",
                Some(row.id),
                row.cluster.as_deref(),
                &format!(
                    "boot script with an enrollment token for node {}",
                    row.name()
                ),
            )
            .await?;
        } else {
            store::audit::append(
                &mut tx,
                &actor.0,
                "node.enrollment_token",
                &format!("node:{}", row.name()),
                None,
                Some(&json!({"expires_at": expires_at})),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(EnrollmentToken {
            node: row.name().to_owned(),
            token,
            expires_at,
        })
    }

    // ----- agent API ------------------------------------------------------------------------------------------

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
        let Some(node_id) =
            store::auth::redeem_enrollment_token(&mut tx, &secrets::hash_secret(&req.token))
                .await?
        else {
            return Err(refused());
        };
        let row = Self::node_in(&mut tx, &NodeKey::Id(node_id)).await?;
        if row.mac != mac {
            // The token stays used: a token presented from the wrong machine is treated as leaked.
            tx.commit().await?;
            tracing::warn!(
                node = row.name(),
                claimed_mac = mac,
                "enrollment refused: MAC does not match the token's node"
            );
            return Err(refused());
        }
        let state = parse_state(&row)?;
        if matches!(state, NodeState::Retired | NodeState::Rejected) {
            tx.commit().await?;
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
            "node.enroll",
            &format!("node:{}", row.name()),
            None,
            Some(&json!({"agent_version": req.agent_version, "image_version": req.image_version})),
        )
        .await?;
        store::events::insert(
            &mut tx,
            "enrolled",
            Some(node_id),
            row.cluster.as_deref(),
            &format!("node {} enrolled", row.name()),
        )
        .await?;
        tx.commit().await?;
        self.notifier.fleet_changed();
        tracing::info!(node = row.name(), mac, "node enrolled");
        Ok(EnrollResponse {
            node_id,
            node: row.name().to_owned(),
            credential,
        })
    }

    /// Resolves a node credential to its node id; `None` for unknown or revoked credentials.
    pub async fn authenticate_node(&self, credential: &str) -> Result<Option<i64>> {
        let mut conn = self.store.read().await?;
        Ok(store::auth::node_by_credential(&mut conn, &secrets::hash_secret(credential)).await?)
    }

    /// The role document a node must apply now.
    pub async fn role_document(&self, node_id: i64) -> Result<RoleDocument> {
        let mut conn = self.store.read().await?;
        let row = Self::node_in(&mut conn, &NodeKey::Id(node_id)).await?;
        self.role_document_for(&mut conn, &row).await
    }

    /// Builds a node's role document; the cluster part comes from the cache while its content is unchanged.
    async fn role_document_for(
        &self,
        conn: &mut SqliteConnection,
        row: &NodeRow,
    ) -> Result<RoleDocument> {
        let generation = u64::try_from(row.role_generation).unwrap_or(0);
        let mut doc = RoleDocument {
            generation,
            node: row.name().to_owned(),
            cluster: None,
            role: None,
            vrrp: None,
            services: vec![],
        };
        let (Some(cluster), Some(role), Some(priority)) = (&row.cluster, &row.role, row.priority)
        else {
            return Ok(doc);
        };
        let cluster_id = row.cluster_id.ok_or_else(|| {
            StoreError::Corrupt(format!("node {} has a cluster but no id", row.id))
        })?;
        let c = self.cached_cluster(conn, cluster_id, cluster).await?;
        let role: Role = role
            .parse()
            .map_err(|e| StoreError::Corrupt(format!("assignment of node {}: {e}", row.id)))?;
        doc.cluster = Some(c.name.clone());
        doc.role = Some(role);
        doc.vrrp = Some(VrrpConfig {
            version: c.spec.vrrp_version,
            vrid: u8::try_from(c.spec.vrid)
                .map_err(|_| StoreError::Corrupt(format!("cluster {} vrid", c.name)))?,
            interface: c.spec.interface.clone(),
            priority: u8::try_from(priority)
                .map_err(|_| StoreError::Corrupt(format!("node {} priority", row.id)))?,
            advert_interval_ms: c.spec.advert_interval_ms,
            preempt: c.spec.preempt,
            preempt_delay_ms: c.spec.preempt_delay_ms,
            vips: c.spec.vips.clone(),
            unicast_peers: c.spec.unicast_peers.clone(),
            garp: c.spec.garp,
            conn_sync: c.spec.conn_sync.clone(),
        });
        doc.services = c
            .spec
            .services
            .iter()
            .cloned()
            .map(|s| VirtualService {
                vip: s.vip,
                port: s.port,
                protocol: s.protocol,
                scheduler: s.scheduler,
                forward: s.forward,
                persistence_s: s.persistence_s,
                persistence_prefix: s.persistence_prefix,
                check: s.check,
                real_servers: s
                    .real_servers
                    .into_iter()
                    .map(|r| RealServer {
                        address: r.address,
                        port: r.port,
                        weight: r.weight,
                        enabled: r.enabled.unwrap_or(true),
                    })
                    .collect(),
            })
            .collect();
        Ok(doc)
    }

    async fn cached_cluster(
        &self,
        conn: &mut SqliteConnection,
        cluster_id: i64,
        name: &str,
    ) -> Result<std::sync::Arc<StoredCluster>> {
        let current = store::clusters::content_generation(conn, cluster_id)
            .await?
            .ok_or_else(|| no_cluster(name))?;
        {
            let cache = self.cluster_cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((g, c)) = cache.get(&cluster_id) {
                if *g == current {
                    return Ok(c.clone());
                }
            }
        }
        // Read the generation before the content: a change committed in between makes the cached copy newer
        // than its key, which the next lookup corrects; never older.
        let c = std::sync::Arc::new(Self::cluster_in(conn, name).await?);
        let mut cache = self.cluster_cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.insert(cluster_id, (current, c.clone()));
        Ok(c)
    }

    /// Long-poll: returns the node's role document as soon as its generation exceeds `after`, or `None` when
    /// `timeout` passes (or `shutdown` fires) first.
    pub async fn wait_role(
        &self,
        node_id: i64,
        after: u64,
        timeout: Duration,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<Option<RoleDocument>> {
        let deadline = tokio::time::Instant::now() + timeout;
        // Subscribe before reading, so a commit between the read and the wait still wakes us.
        let mut rx = self.notifier.subscribe(node_id);
        let mut check_db = true;
        loop {
            if check_db {
                let mut conn = self.store.read().await?;
                let row = Self::node_in(&mut conn, &NodeKey::Id(node_id)).await?;
                if row.state == NodeState::Retired.as_str()
                    || row.state == NodeState::Rejected.as_str()
                {
                    return Err(FleetError::Forbidden(format!("node is {}", row.state)));
                }
                if u64::try_from(row.role_generation).unwrap_or(0) > after {
                    return Ok(Some(self.role_document_for(&mut conn, &row).await?));
                }
            }
            tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() {
                        // The channel was dropped (cannot happen while we hold a receiver); re-check.
                        rx = self.notifier.subscribe(node_id);
                    }
                    check_db = *rx.borrow_and_update() > after;
                }
                _ = tokio::time::sleep_until(deadline) => return Ok(None),
                _ = shutdown.wait_for(|s| *s) => return Ok(None),
            }
        }
    }

    /// Stores an agent report; moves an assigned node to `serving` once it has applied its newest role.
    pub async fn report(&self, node_id: i64, report: &AgentReport) -> Result<()> {
        let mut tx = self.store.begin().await?;
        let row = Self::node_in(&mut tx, &NodeKey::Id(node_id)).await?;
        let state = parse_state(&row)?;
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
        rules::report_fields(
            report.address.as_deref(),
            report.agent_version.as_deref(),
            report.image_version.as_deref(),
        )
        .map_err(FleetError::Invalid)?;
        rules::report_health(report).map_err(FleetError::Invalid)?;
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
        let transitions = new_vrrp_transitions(row.last_report.as_deref(), report);
        for t in &transitions {
            // The agent's own account: what changed and why (its clock, ms since the epoch, in `at_ms`).
            let msg = format!("VRRP {} -> {}: {}", t.from, t.to, t.reason);
            store::events::insert(&mut tx, "vrrp", Some(node_id), cluster, &msg).await?;
        }
        if transitions.is_empty() && row.vrrp_state.as_deref() != vrrp {
            let msg = format!(
                "VRRP {} -> {}",
                row.vrrp_state.as_deref().unwrap_or("unknown"),
                vrrp.unwrap_or("unknown")
            );
            store::events::insert(&mut tx, "vrrp", Some(node_id), cluster, &msg).await?;
        }
        for msg in health_messages(row.last_report.as_deref(), report) {
            store::events::insert(&mut tx, "health", Some(node_id), cluster, &msg).await?;
        }
        for e in &report.errors {
            store::events::insert(&mut tx, "agent_error", Some(node_id), cluster, e).await?;
        }
        if state == NodeState::Assigned && row.cluster.is_some() && applied >= row.role_generation {
            store::nodes::set_state(&mut tx, node_id, NodeState::Serving.as_str()).await?;
            store::audit::append(
                &mut tx,
                &Actor::node(&name).0,
                "node.serving",
                &format!("node:{name}"),
                Some(&json!({"state": "assigned"})),
                Some(&json!({"state": "serving", "applied_generation": applied})),
            )
            .await?;
            store::events::insert(
                &mut tx,
                "serving",
                Some(node_id),
                cluster,
                &format!("node {name} serves generation {applied}"),
            )
            .await?;
        }
        tx.commit().await?;
        self.notifier.fleet_changed();
        Ok(())
    }

    // ----- images ---------------------------------------------------------------------------------------------

    pub async fn put_image(
        &self,
        actor: &Actor,
        img: store::images::ImageRow,
    ) -> Result<PutOutcome> {
        rules::image_name(&img.name)?;
        rules::image_file("kernel", &img.kernel)?;
        rules::image_file("initrd", &img.initrd)?;
        rules::image_cmdline(&img.cmdline)?;
        let mut tx = self.store.begin().await?;
        let before = store::images::get(&mut tx, &img.name).await?;
        if before.as_ref().is_some_and(|b| {
            store::images::ImageRow {
                created_at: 0,
                ..b.clone()
            } == store::images::ImageRow {
                created_at: 0,
                ..img.clone()
            }
        }) {
            return Ok(PutOutcome::Unchanged);
        }
        store::images::upsert(&mut tx, &img).await?;
        store::audit::append(
            &mut tx,
            &actor.0,
            if before.is_some() {
                "image.update"
            } else {
                "image.create"
            },
            &format!("image:{}", img.name),
            before.as_ref().map(to_value).as_ref(),
            Some(&to_value(&img)),
        )
        .await?;
        tx.commit().await?;
        Ok(if before.is_some() {
            PutOutcome::Updated
        } else {
            PutOutcome::Created
        })
    }

    pub async fn delete_image(&self, actor: &Actor, name: &str) -> Result<()> {
        let mut tx = self.store.begin().await?;
        let before = store::images::get(&mut tx, name)
            .await?
            .ok_or_else(|| FleetError::NotFound(format!("no image named {name:?}")))?;
        // A node that names no image boots the default one, so it uses the default too.
        let users = store::images::users_with_default(&mut tx, name).await?;
        if users > 0 {
            return Err(FleetError::Conflict(format!(
                "image {name:?} is used by {users} node(s){}; move them to another image first",
                if before.is_default {
                    " (it is the default image)"
                } else {
                    ""
                }
            )));
        }
        store::images::delete(&mut tx, name).await?;
        store::audit::append(
            &mut tx,
            &actor.0,
            "image.delete",
            &format!("image:{name}"),
            Some(&to_value(&before)),
            None,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn list_images(&self) -> Result<Vec<store::images::ImageRow>> {
        let mut conn = self.store.read().await?;
        Ok(store::images::list(&mut conn).await?)
    }

    // ----- users and tokens -----------------------------------------------------------------------------------

    /// Creates a user; returns the password (generated when `password` is `None`).
    pub async fn create_user(
        &self,
        actor: &Actor,
        name: &str,
        role: UserRole,
        password: Option<String>,
    ) -> Result<String> {
        rules::hostname(name).map_err(|e| FieldError::new("name", e.message))?;
        let password = password.unwrap_or_else(secrets::new_password);
        if password.len() < 12 {
            return Err(FieldError::new("password", "must be at least 12 characters").into());
        }
        let hash = hash_password(password.clone()).await?;
        let mut tx = self.store.begin().await?;
        if store::auth::user_by_name(&mut tx, name).await?.is_some() {
            return Err(FleetError::Conflict(format!(
                "user {name:?} already exists"
            )));
        }
        store::auth::insert_user(&mut tx, name, role.as_str(), &hash).await?;
        store::audit::append(
            &mut tx,
            &actor.0,
            "user.create",
            &format!("user:{name}"),
            None,
            Some(&json!({"role": role})),
        )
        .await?;
        tx.commit().await?;
        Ok(password)
    }

    pub async fn set_password(
        &self,
        actor: &Actor,
        name: &str,
        password: Option<String>,
    ) -> Result<String> {
        let password = password.unwrap_or_else(secrets::new_password);
        if password.len() < 12 {
            return Err(FieldError::new("password", "must be at least 12 characters").into());
        }
        let hash = hash_password(password.clone()).await?;
        let mut tx = self.store.begin().await?;
        let user = store::auth::user_by_name(&mut tx, name)
            .await?
            .ok_or_else(|| FleetError::NotFound(format!("no user {name:?}")))?;
        store::auth::set_password(&mut tx, user.id, &hash).await?;
        store::audit::append(
            &mut tx,
            &actor.0,
            "user.password",
            &format!("user:{name}"),
            None,
            None,
        )
        .await?;
        tx.commit().await?;
        Ok(password)
    }

    pub async fn delete_user(&self, actor: &Actor, name: &str) -> Result<()> {
        let mut tx = self.store.begin().await?;
        let user = store::auth::user_by_name(&mut tx, name)
            .await?
            .ok_or_else(|| FleetError::NotFound(format!("no user {name:?}")))?;
        if user.role == "admin" {
            let admins = store::auth::users(&mut tx)
                .await?
                .iter()
                .filter(|u| u.role == "admin" && !u.disabled)
                .count();
            if admins <= 1 {
                return Err(FleetError::Conflict("cannot delete the last admin".into()));
            }
        }
        store::auth::delete_user(&mut tx, user.id).await?;
        store::audit::append(
            &mut tx,
            &actor.0,
            "user.delete",
            &format!("user:{name}"),
            Some(&json!({"role": user.role})),
            None,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Creates an API token for a user; the plain token is returned once.
    pub async fn create_token(
        &self,
        actor: &Actor,
        user: &str,
        label: &str,
        ttl: Option<Duration>,
    ) -> Result<(i64, String)> {
        if label.is_empty() || label.len() > 64 || label.chars().any(|c| c.is_control()) {
            return Err(FieldError::new(
                "name",
                "must be 1 to 64 characters without control characters",
            )
            .into());
        }
        let mut tx = self.store.begin().await?;
        let u = store::auth::user_by_name(&mut tx, user)
            .await?
            .ok_or_else(|| FleetError::NotFound(format!("no user {user:?}")))?;
        let token = secrets::new_secret(secrets::API_TOKEN_PREFIX);
        let expires_at =
            ttl.map(|t| now_ms().saturating_add(i64::try_from(t.as_millis()).unwrap_or(i64::MAX)));
        let id = store::auth::insert_token(
            &mut tx,
            u.id,
            label,
            &secrets::hash_secret(&token),
            expires_at,
        )
        .await?;
        store::audit::append(
            &mut tx,
            &actor.0,
            "token.create",
            &format!("user:{user}"),
            None,
            Some(&json!({"token_id": id, "name": label, "expires_at": expires_at})),
        )
        .await?;
        tx.commit().await?;
        Ok((id, token))
    }

    pub async fn revoke_token(&self, actor: &Actor, id: i64) -> Result<()> {
        let mut tx = self.store.begin().await?;
        if store::auth::delete_token(&mut tx, id).await? == 0 {
            return Err(FleetError::NotFound(format!("no API token with id {id}")));
        }
        store::audit::append(
            &mut tx,
            &actor.0,
            "token.revoke",
            &format!("token:{id}"),
            None,
            None,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Creates the first admin if there are no users at all; returns its generated password.
    pub async fn bootstrap_admin(&self) -> Result<Option<String>> {
        let mut conn = self.store.read().await?;
        if store::auth::user_count(&mut conn).await? > 0 {
            return Ok(None);
        }
        drop(conn);
        Ok(Some(
            self.create_user(&Actor::system(), "admin", UserRole::Admin, None)
                .await?,
        ))
    }
}

async fn hash_password(password: String) -> Result<String> {
    tokio::task::spawn_blocking(move || secrets::hash_password(&password))
        .await
        .map_err(|e| StoreError::Corrupt(format!("password hashing task failed: {e}")))?
        .map_err(|e| FleetError::Store(StoreError::Corrupt(e.to_string())))
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
        .filter(|e| {
            !(e.from == lbfleet_proto::HealthState::NotChecked
                && e.to == lbfleet_proto::HealthState::Up)
        })
        .map(|e| {
            let state = match e.to {
                lbfleet_proto::HealthState::Up => "up",
                lbfleet_proto::HealthState::Down => "down",
                lbfleet_proto::HealthState::NotChecked => "not checked",
                lbfleet_proto::HealthState::AdminDrained => "drained",
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

/// Real servers whose health changed between two reports: (address:port, healthy now).
fn health_flips(previous: Option<&str>, now: &AgentReport) -> Vec<(String, bool)> {
    let Some(prev) = previous.and_then(|p| serde_json::from_str::<AgentReport>(p).ok()) else {
        return vec![];
    };
    let mut before = HashMap::new();
    for s in &prev.services {
        for r in &s.real_servers {
            before.insert(
                (s.vip.clone(), s.port, s.protocol, r.address.clone(), r.port),
                r.healthy,
            );
        }
    }
    let mut flips = Vec::new();
    for s in &now.services {
        for r in &s.real_servers {
            if let Some(was) =
                before.get(&(s.vip.clone(), s.port, s.protocol, r.address.clone(), r.port))
            {
                if *was != r.healthy {
                    flips.push((socket_text(&r.address, r.port), r.healthy));
                }
            }
        }
    }
    flips
}

/// `addr:port`, with brackets around IPv6 addresses.
pub fn socket_text(addr: &str, port: u16) -> String {
    if addr.contains(':') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    }
}

/// A service named in a URL: `tcp:198.18.0.10:80` or `udp:[2001:db8::10]:53`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRef {
    pub protocol: lbfleet_proto::Protocol,
    pub vip: String,
    pub port: u16,
}

impl std::fmt::Display for ServiceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.protocol, socket_text(&self.vip, self.port))
    }
}

impl std::str::FromStr for ServiceRef {
    type Err = FieldError;
    fn from_str(s: &str) -> Result<Self, FieldError> {
        let bad = || {
            FieldError::new(
                "service",
                format!("{s:?} is not PROTOCOL:VIP:PORT (e.g. tcp:198.18.0.10:80)"),
            )
        };
        let (proto, rest) = s.split_once(':').ok_or_else(bad)?;
        let protocol = proto.parse().map_err(|_| bad())?;
        let addr: std::net::SocketAddr = rest.parse().map_err(|_| bad())?;
        Ok(ServiceRef {
            protocol,
            vip: addr.ip().to_string(),
            port: addr.port(),
        })
    }
}

impl ServiceRef {
    fn find<'a>(&self, c: &'a StoredCluster) -> Result<&'a lbfleet_proto::ServiceSpec> {
        c.spec
            .services
            .iter()
            .find(|s| s.vip == self.vip && s.port == self.port && s.protocol == self.protocol)
            .ok_or_else(|| {
                FleetError::NotFound(format!("cluster {:?} has no service {self}", c.name))
            })
    }

    fn key(&self, address: &str, rs_port: u16) -> RealServerKey {
        RealServerKey {
            vip: self.vip.clone(),
            port: self.port,
            protocol: self.protocol.to_string(),
            address: address.to_owned(),
            rs_port,
        }
    }
}

/// A real server named in a URL: `198.18.2.1:80` or `[2001:db8::2:1]:80`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RealServerRef {
    pub address: String,
    pub port: u16,
}

impl std::str::FromStr for RealServerRef {
    type Err = FieldError;
    fn from_str(s: &str) -> Result<Self, FieldError> {
        let addr: std::net::SocketAddr = s.parse().map_err(|_| {
            FieldError::new(
                "real_server",
                format!("{s:?} is not ADDRESS:PORT (e.g. 198.18.2.1:80)"),
            )
        })?;
        Ok(RealServerRef {
            address: addr.ip().to_string(),
            port: addr.port(),
        })
    }
}

impl RealServerRef {
    fn find<'a>(
        &self,
        svc: &'a lbfleet_proto::ServiceSpec,
        service: &ServiceRef,
    ) -> Result<&'a RealServerSpec> {
        svc.real_servers
            .iter()
            .find(|r| r.address == self.address && r.port == self.port)
            .ok_or_else(|| {
                FleetError::NotFound(format!(
                    "service {service} has no real server {}",
                    socket_text(&self.address, self.port)
                ))
            })
    }
}
