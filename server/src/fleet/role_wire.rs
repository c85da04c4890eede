//! Role documents on the wire: serialised once and shared. A change to a cluster wakes every member's long-poll
//! at the same generation; the first woken poller reads all nodes at that generation in one query and builds
//! their documents, the others take theirs from the batch (no database round trip per waiter). The services
//! part, which is the bulk of a large role (300 services x 100 real servers is about 2 MB of JSON), is
//! serialised once per cluster content generation and shared by every document that carries it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Bytes;
use lbfleet_proto::{NodeState, RoleDocument};

use super::roles::ClusterAt;
use super::{Fleet, FleetError, Result};
use crate::store::{self, nodes::NodeRow, StoreError};

/// How many generations' batches are kept (a herd is served from the newest; older ones serve stragglers).
const BATCHES_KEPT: usize = 8;

/// How young an announcement must be for a poll at that generation to wait without reading the database.
const RECENT: Duration = Duration::from_secs(5);

/// A role document as JSON, in three chunks: the node's own part up to the services, the services (shared by
/// every member of the cluster at that content generation), and the closing brace.
#[derive(Debug, Clone)]
pub struct RoleWire {
    pub generation: u64,
    head: Bytes,
    services: Bytes,
    tail: Bytes,
}

impl RoleWire {
    /// The JSON text's chunks, in order.
    pub fn chunks(&self) -> [Bytes; 3] {
        [self.head.clone(), self.services.clone(), self.tail.clone()]
    }

    /// Length of the whole JSON text in bytes.
    pub fn len(&self) -> usize {
        self.head.len() + self.services.len() + self.tail.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole JSON text in one buffer (tests, and callers that need it contiguous).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.len());
        for c in self.chunks() {
            v.extend_from_slice(&c);
        }
        v
    }

    /// `doc` without its services, followed by `services` (already the JSON of the service list). Every other
    /// field is written by serde as it is, so fields added to the document later are carried too.
    fn splice(doc: &RoleDocument, services: Bytes) -> Result<RoleWire> {
        let corrupt = |e: serde_json::Error| StoreError::Corrupt(format!("role document: {e}"));
        let serde_json::Value::Object(fields) = serde_json::to_value(doc).map_err(corrupt)? else {
            return Err(StoreError::Corrupt("role document is not an object".into()).into());
        };
        let mut head = Vec::with_capacity(512);
        head.push(b'{');
        let mut rest = Vec::new();
        for (key, value) in fields.iter().filter(|(k, _)| k.as_str() != "services") {
            if !rest.is_empty() {
                rest.push(b',');
            }
            serde_json::to_writer(&mut rest, key).map_err(corrupt)?;
            rest.push(b':');
            serde_json::to_writer(&mut rest, value).map_err(corrupt)?;
        }
        head.extend_from_slice(&rest);
        if !rest.is_empty() {
            head.push(b',');
        }
        head.extend_from_slice(b"\"services\":");
        Ok(RoleWire {
            generation: doc.generation,
            head: Bytes::from(head),
            services,
            tail: Bytes::from_static(b"}"),
        })
    }
}

/// The caches behind `RoleWire`s: service lists by cluster, documents by generation.
#[derive(Debug, Default)]
pub(super) struct RoleWireCache {
    /// Cluster id -> (content generation, the JSON of its service list).
    services: Mutex<HashMap<i64, (i64, Bytes)>>,
    /// The newest batches: generation -> the documents of every node at that generation, by node id.
    batches: Mutex<VecDeque<(u64, BatchCell)>>,
}

type Batch = HashMap<i64, RoleWire>;
/// One generation's batch, built by the first poller that needs it, awaited by the others.
type BatchCell = Arc<tokio::sync::OnceCell<Arc<Batch>>>;

impl RoleWireCache {
    fn batch_cell(&self, generation: u64) -> BatchCell {
        let mut batches = self.batches.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, cell)) = batches.iter().find(|(g, _)| *g == generation) {
            return cell.clone();
        }
        let cell = Arc::new(tokio::sync::OnceCell::new());
        batches.push_back((generation, cell.clone()));
        while batches.len() > BATCHES_KEPT {
            batches.pop_front();
        }
        cell
    }
}

impl Fleet {
    /// A node's role document as JSON, built from `row` (services from the cache while the cluster's content
    /// is unchanged).
    async fn role_wire_for(&self, conn: &mut store::Conn, row: &NodeRow) -> Result<RoleWire> {
        let (head, cluster) = self.role_head_for(conn, row).await?;
        self.role_wire_of(head, cluster)
    }

    /// `head` (a document without services) with the services of `cluster`, as JSON.
    fn role_wire_of(&self, head: RoleDocument, cluster: Option<ClusterAt>) -> Result<RoleWire> {
        let services = match cluster {
            Some((cluster_id, content_generation, c)) => {
                self.services_json(cluster_id, content_generation, &c)?
            }
            None => Bytes::from_static(b"[]"),
        };
        RoleWire::splice(&head, services)
    }

    /// The JSON of a cluster's service list at a content generation, serialised once.
    fn services_json(
        &self,
        cluster_id: i64,
        content_generation: i64,
        c: &store::clusters::StoredCluster,
    ) -> Result<Bytes> {
        {
            let cache = self
                .role_wire
                .services
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some((g, bytes)) = cache.get(&cluster_id) {
                if *g == content_generation {
                    return Ok(bytes.clone());
                }
            }
        }
        let services = super::roles::services_of(c)?;
        let bytes = Bytes::from(
            serde_json::to_vec(&services)
                .map_err(|e| StoreError::Corrupt(format!("services of {}: {e}", c.name)))?,
        );
        let mut cache = self
            .role_wire
            .services
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // Keep the newest of two racing builders.
        match cache.get(&cluster_id) {
            Some((g, _)) if *g > content_generation => {}
            _ => {
                cache.insert(cluster_id, (content_generation, bytes.clone()));
            }
        }
        Ok(bytes)
    }

    /// The documents of every node whose role generation is `generation` now, built once for all the pollers
    /// that generation woke (one query for the nodes, one cluster load per cluster).
    async fn role_batch(&self, generation: u64) -> Result<Arc<Batch>> {
        let cell = self.role_wire.batch_cell(generation);
        let batch = cell
            .get_or_try_init(|| async {
                let mut conn = self.store.read().await?;
                let g = i64::try_from(generation)
                    .map_err(|_| StoreError::Corrupt("generation overflow".into()))?;
                let rows = store::nodes::at_generation(&mut conn, g).await?;
                let mut batch = Batch::with_capacity(rows.len());
                // One cluster load (a content-generation check while cached) per cluster, not per node.
                let mut clusters: HashMap<i64, ClusterAt> = HashMap::new();
                for row in rows
                    .iter()
                    .filter(|r| !matches!(r.state, NodeState::Retired | NodeState::Rejected))
                {
                    let cluster = match (&row.cluster, row.cluster_id) {
                        (Some(name), Some(id)) => match clusters.get(&id) {
                            Some(c) => Some(c.clone()),
                            None => {
                                let (g, c) = self.cached_cluster(&mut conn, id, name).await?;
                                clusters.insert(id, (id, g, c.clone()));
                                Some((id, g, c))
                            }
                        },
                        _ => None,
                    };
                    let (head, cluster) = super::roles::role_head_with(row, cluster)?;
                    batch.insert(row.id, self.role_wire_of(head, cluster)?);
                }
                Ok::<_, FleetError>(Arc::new(batch))
            })
            .await?;
        Ok(batch.clone())
    }

    /// Long-poll, as `wait_role`, answering with the document as JSON: a poller woken by an announced
    /// generation takes its document from that generation's batch; only a node the batch does not hold (its
    /// generation moved on meanwhile) reads the database for itself.
    pub async fn wait_role_wire(
        &self,
        node_id: i64,
        after: u64,
        timeout: Duration,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<Option<RoleWire>> {
        let deadline = tokio::time::Instant::now() + timeout;
        // Subscribe before reading, so a commit between the read and the wait still wakes us.
        let mut rx = self.notifier.subscribe(node_id);
        // The herd's next poll, right after the generation it holds was announced: nothing to read.
        let mut check_db =
            after == 0 || self.notifier.recently_announced(node_id, RECENT) != Some(after);
        loop {
            if check_db {
                let mut conn = self.store.read().await?;
                let (state, generation) = store::nodes::role_state(&mut conn, node_id)
                    .await?
                    .ok_or_else(|| FleetError::NotFound(format!("no node with id {node_id}")))?;
                if matches!(state, NodeState::Retired | NodeState::Rejected) {
                    return Err(FleetError::Forbidden(format!("node is {state}")));
                }
                if u64::try_from(generation).unwrap_or(0) > after {
                    let row = store::nodes::get_for_role(&mut conn, node_id)
                        .await?
                        .ok_or_else(|| {
                            FleetError::NotFound(format!("no node with id {node_id}"))
                        })?;
                    return Ok(Some(self.role_wire_for(&mut conn, &row).await?));
                }
            }
            let changed = tokio::select! {
                changed = rx.changed() => changed.is_ok(),
                _ = tokio::time::sleep_until(deadline) => return Ok(None),
                _ = shutdown.wait_for(|s| *s) => return Ok(None),
            };
            if !changed {
                // The channel was dropped (cannot happen while we hold a receiver); re-check.
                rx = self.notifier.subscribe(node_id);
                check_db = true;
                continue;
            }
            let announced = *rx.borrow_and_update();
            if announced <= after {
                check_db = false;
                continue;
            }
            if let Some(doc) = self.role_batch(announced).await?.get(&node_id) {
                return Ok(Some(doc.clone()));
            }
            check_db = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use lbfleet_proto::Role;

    use super::super::testing::{admin, fleet, member, spec};
    use super::super::{RealServerChange, RealServerRef, ServiceRef};
    use super::*;

    #[tokio::test]
    async fn the_wire_document_is_the_document() {
        let (f, _dir) = fleet().await;
        let (_stop_tx, stop) = tokio::sync::watch::channel(false);
        f.put_cluster(&admin(), "ext", &spec(51, "198.18.0.10"))
            .await
            .expect("cluster");
        let a = member(&f, 1, "ext", Role::Active).await;
        let b = member(&f, 2, "ext", Role::Backup).await;
        let a = f.get_node(&a).await.expect("node").id;
        let b = f.get_node(&b).await.expect("node").id;
        for id in [a, b] {
            let wire = f
                .wait_role_wire(id, 0, Duration::from_millis(50), stop.clone())
                .await
                .expect("wait")
                .expect("a document");
            let parsed: RoleDocument = serde_json::from_slice(&wire.to_vec()).expect("JSON");
            assert_eq!(parsed, f.role_document(id).await.expect("doc"));
            assert_eq!(wire.generation, parsed.generation);
        }

        // Both pollers woken by one change get their own document (own priority and role) from one batch.
        let before = f.role_document(a).await.expect("doc").generation;
        let before_b = f.role_document(b).await.expect("doc").generation;
        let wait_a = f.wait_role_wire(a, before, Duration::from_secs(30), stop.clone());
        let wait_b = f.wait_role_wire(b, before_b, Duration::from_secs(30), stop.clone());
        let change = async {
            let svc: ServiceRef = "tcp:198.18.0.10:80".parse().expect("service");
            let rs: RealServerRef = "198.18.2.1:80".parse().expect("rs");
            f.change_real_server(&admin(), "ext", &svc, &rs, RealServerChange::Enabled(false))
                .await
                .expect("drain");
        };
        let (wa, wb, ()) = tokio::join!(wait_a, wait_b, change);
        for (id, wire) in [(a, wa), (b, wb)] {
            let wire = wire.expect("wait").expect("a newer document");
            let parsed: RoleDocument = serde_json::from_slice(&wire.to_vec()).expect("JSON");
            assert!(parsed.generation > before.max(before_b), "{id}: {parsed:?}");
            assert!(
                !parsed.services[0].real_servers[0].enabled,
                "{id}: {parsed:?}"
            );
            assert_eq!(parsed, f.role_document(id).await.expect("doc"));
        }
        let batch = f
            .role_batch(f.role_document(a).await.expect("doc").generation)
            .await
            .expect("batch");
        assert_eq!(batch.len(), 2, "one batch holds both members");
    }

    #[test]
    fn a_node_without_a_cluster_splices_to_its_document() {
        let doc = RoleDocument {
            reboot_generation: 0,
            generation: 3,
            node: "lb-\"1\"".into(),
            cluster: None,
            role: None,
            vrrp: None,
            services: vec![],
        };
        let wire = RoleWire::splice(&doc, Bytes::from_static(b"[]")).expect("splice");
        let parsed: RoleDocument = serde_json::from_slice(&wire.to_vec()).expect("JSON");
        assert_eq!(parsed, doc);
    }
}
