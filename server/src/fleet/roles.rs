//! Role documents: what a node must apply, built from its assignment and its cluster (cached per cluster content
//! generation, so a herd of woken agents shares one load), and the long-poll that hands them out.

use std::sync::Arc;
use std::time::Duration;

use lbfleet_proto::{RealServer, Role, RoleDocument, VirtualService, VrrpConfig};

use super::{no_cluster, Fleet, Result};
use crate::store::{
    self,
    clusters::StoredCluster,
    nodes::{NodeKey, NodeRow},
    StoreError,
};

impl Fleet {
    /// The role document a node must apply now.
    pub async fn role_document(&self, node_id: i64) -> Result<RoleDocument> {
        let mut conn = self.store.read().await?;
        let row = Self::node_in(&mut conn, &NodeKey::Id(node_id)).await?;
        self.role_document_for(&mut conn, &row).await
    }

    /// Builds a node's role document; the cluster part comes from the cache while its content is unchanged.
    pub(super) async fn role_document_for(
        &self,
        conn: &mut store::Conn,
        row: &NodeRow,
    ) -> Result<RoleDocument> {
        let (mut doc, cluster) = self.role_head_for(conn, row).await?;
        if let Some((_, _, c)) = cluster {
            doc.services = services_of(&c)?;
        }
        Ok(doc)
    }

    /// A node's role document without its services, and the cluster (id, content generation, spec) they come
    /// from when the node is assigned.
    pub(super) async fn role_head_for(
        &self,
        conn: &mut store::Conn,
        row: &NodeRow,
    ) -> Result<(RoleDocument, Option<ClusterAt>)> {
        let cluster = match (&row.cluster, row.cluster_id) {
            (Some(name), Some(id)) => {
                let (g, c) = self.cached_cluster(conn, id, name).await?;
                Some((id, g, c))
            }
            _ => None,
        };
        role_head_with(row, cluster)
    }

    pub(super) async fn cached_cluster(
        &self,
        conn: &mut store::Conn,
        cluster_id: i64,
        name: &str,
    ) -> Result<(i64, Arc<StoredCluster>)> {
        let current = store::clusters::content_generation(conn, cluster_id)
            .await?
            .ok_or_else(|| no_cluster(name))?;
        {
            let cache = self.cluster_cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((g, c)) = cache.get(&cluster_id) {
                if *g == current {
                    return Ok((current, c.clone()));
                }
            }
        }
        // Read the generation before the content: a change committed in between makes the cached copy newer
        // than its key, which the next lookup corrects; never older.
        let c = Arc::new(Self::cluster_in(conn, name).await?);
        let mut cache = self.cluster_cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.insert(cluster_id, (current, c.clone()));
        Ok((current, c))
    }

    /// Clusters (all, or the one named) as stored, from the cluster cache while their content generation is
    /// unchanged: a page of a 30,000-real-server cluster reads two small rows instead of the whole spec.
    pub(super) async fn cached_clusters(
        &self,
        conn: &mut store::Conn,
        name: Option<&str>,
    ) -> Result<Vec<StoredCluster>> {
        let mut out = Vec::new();
        for (id, name, generation) in store::clusters::generations(conn, name).await? {
            let cached = {
                let cache = self.cluster_cache.lock().unwrap_or_else(|p| p.into_inner());
                cache
                    .get(&id)
                    .filter(|(g, _)| *g == generation)
                    .map(|(_, c)| c.clone())
            };
            let c = match cached {
                Some(c) => c,
                None => {
                    // Generation first, then content (as `cached_cluster`): never cached older than its key.
                    let Some(c) = store::clusters::load_one(conn, &name).await? else {
                        continue; // deleted in between
                    };
                    let c = Arc::new(c);
                    let mut cache = self.cluster_cache.lock().unwrap_or_else(|p| p.into_inner());
                    cache.insert(id, (generation, c.clone()));
                    c
                }
            };
            out.push((*c).clone());
        }
        Ok(out)
    }

    /// Long-poll: returns the node's role document as soon as its generation exceeds `after`, or `None` when
    /// `timeout` passes (or `shutdown` fires) first. The typed face of `wait_role_wire`.
    pub async fn wait_role(
        &self,
        node_id: i64,
        after: u64,
        timeout: Duration,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<Option<RoleDocument>> {
        let Some(wire) = self
            .wait_role_wire(node_id, after, timeout, shutdown)
            .await?
        else {
            return Ok(None);
        };
        Ok(Some(serde_json::from_slice(&wire.to_vec()).map_err(
            |e| StoreError::Corrupt(format!("role document of node {node_id}: {e}")),
        )?))
    }
}

/// A cluster as loaded for role documents: id, content generation, spec.
pub(super) type ClusterAt = (i64, i64, Arc<StoredCluster>);

/// A node's role document without its services, given its cluster as loaded (`None` when unassigned).
pub(super) fn role_head_with(
    row: &NodeRow,
    loaded: Option<ClusterAt>,
) -> Result<(RoleDocument, Option<ClusterAt>)> {
    let generation = u64::try_from(row.role_generation).unwrap_or(0);
    let mut doc = RoleDocument {
        reboot_generation: u64::try_from(row.reboot_generation).unwrap_or(0),
        generation,
        node: row.name().to_owned(),
        cluster: None,
        role: None,
        vrrp: None,
        services: vec![],
    };
    let (Some(_), Some(role), Some(priority)) = (&row.cluster, &row.role, row.priority) else {
        return Ok((doc, None));
    };
    let Some((cluster_id, content_generation, c)) = loaded else {
        return Err(StoreError::Corrupt(format!("node {} has a cluster but no id", row.id)).into());
    };
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
        unicast_peers: c
            .spec
            .unicast_peers
            .iter()
            .map(|p| stored_address(&c.name, p))
            .collect::<Result<_>>()?,
        garp: c.spec.garp,
        conn_sync: c.spec.conn_sync.clone(),
    });
    Ok((doc, Some((cluster_id, content_generation, c))))
}

/// The services of a stored cluster, typed for the role document.
pub(super) fn services_of(c: &StoredCluster) -> Result<Vec<VirtualService>> {
    c.spec
        .services
        .iter()
        .map(|s| {
            Ok(VirtualService {
                vip: stored_address(&c.name, &s.vip)?,
                port: s.port,
                protocol: s.protocol,
                scheduler: s.scheduler,
                forward: s.forward,
                persistence_s: s.persistence_s,
                persistence_prefix: s.persistence_prefix,
                check: s.check.clone(),
                real_servers: s
                    .real_servers
                    .iter()
                    .map(|r| {
                        Ok(RealServer {
                            address: stored_address(&c.name, &r.address)?,
                            port: r.port,
                            weight: r.weight,
                            enabled: r.enabled.unwrap_or(true),
                        })
                    })
                    .collect::<Result<_>>()?,
            })
        })
        .collect()
}

/// An address of a stored cluster spec, typed for the role document. The spec was validated before it was
/// stored, so a failure means the database was changed behind lbfleet's back.
fn stored_address(cluster: &str, text: &str) -> Result<std::net::IpAddr> {
    text.parse().map_err(|_| {
        StoreError::Corrupt(format!("cluster {cluster}: {text:?} is not an IP address")).into()
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::testing::{admin, fleet, member, ready_node, spec};
    use super::super::FleetError;
    use super::super::{RealServerChange, RealServerRef, ServiceRef};
    use super::*;

    #[tokio::test]
    async fn role_documents_follow_assignments_and_cluster_changes() {
        let (f, _dir) = fleet().await;
        let (_stop_tx, stop) = tokio::sync::watch::channel(false);
        let lone = ready_node(&f, 9).await;
        let lone_id = f.get_node(&lone).await.expect("node").id;
        let doc = f.role_document(lone_id).await.expect("doc");
        assert!(doc.generation > 0 && doc.cluster.is_none() && doc.services.is_empty());

        f.put_cluster(&admin(), "ext", &spec(51, "198.18.0.10"))
            .await
            .expect("cluster");
        let key = member(&f, 1, "ext", Role::Active).await;
        let id = f.get_node(&key).await.expect("node").id;
        let doc = f.role_document(id).await.expect("doc");
        assert_eq!(doc.role, Some(Role::Active));
        let vrrp = doc.vrrp.as_ref().expect("vrrp");
        assert_eq!(
            (
                vrrp.vrid,
                vrrp.vips[0].to_string().as_str(),
                vrrp.vips.len()
            ),
            (51, "198.18.0.10/32", 1)
        );
        assert_eq!(doc.services[0].real_servers.len(), 2);

        // Nothing newer: the long-poll times out.
        let none = f
            .wait_role(id, doc.generation, Duration::from_millis(50), stop.clone())
            .await;
        assert_eq!(none.expect("wait"), None);
        // A drain elsewhere wakes the waiting poll with the new document (cache refreshed, not stale).
        let waiting = f.wait_role(id, doc.generation, Duration::from_secs(30), stop.clone());
        let change = async {
            let svc: ServiceRef = "tcp:198.18.0.10:80".parse().expect("service");
            let rs: RealServerRef = "198.18.2.1:80".parse().expect("rs");
            f.change_real_server(&admin(), "ext", &svc, &rs, RealServerChange::Enabled(false))
                .await
                .expect("drain");
        };
        let (new, ()) = tokio::join!(waiting, change);
        let new = new.expect("wait").expect("a newer document");
        assert!(new.generation > doc.generation);
        assert!(!new.services[0].real_servers[0].enabled);
        f.retire(&admin(), &key).await.expect("retire");
        assert!(matches!(
            f.wait_role(id, 0, Duration::from_millis(50), stop).await,
            Err(FleetError::Forbidden(_))
        ));
    }
}
