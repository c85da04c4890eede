//! Clusters: the declarative spec an operator PUTs (validated by `rules`, fleet-wide uniqueness of VRIDs, VIPs
//! and services checked against what is stored), optimistic concurrency (`Precondition`), and deletion.

use std::collections::HashMap;

use lbfleet_proto::ClusterSpec;

use super::{
    no_cluster, rules, to_value, Actor, ClusterView, FieldError, FieldErrors, Fleet, FleetError,
    PutOutcome, Result,
};
use crate::audit::AuditAction;
use crate::store::clusters::RealServerKey;
use crate::store::{self, nodes::Member};

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

impl Fleet {
    pub async fn list_clusters(&self) -> Result<Vec<ClusterView>> {
        let mut conn = self.store.read().await?;
        let clusters = self.cached_clusters(&mut conn, None).await?;
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
        let c = self
            .cached_clusters(&mut conn, Some(name))
            .await?
            .pop()
            .ok_or_else(|| no_cluster(name))?;
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
        let mut tx = self.store.begin().await?;
        let Some((outcome, changes)) =
            Self::put_cluster_in(&mut tx, actor, name, spec, precondition).await?
        else {
            drop(tx);
            return Ok((PutOutcome::Unchanged, self.get_cluster(name).await?));
        };
        store::commit(tx).await?;
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

    /// Creates or replaces several clusters in one transaction, all or none, each with its audit row
    /// (`cluster.create` / `cluster.update`) and every rule of `put_cluster` (the later clusters are checked
    /// against the earlier ones). `dry_run` runs everything and rolls back. Returns each cluster's outcome.
    pub async fn put_clusters(
        &self,
        actor: &Actor,
        clusters: &[(String, ClusterSpec)],
        dry_run: bool,
    ) -> Result<Vec<(String, PutOutcome)>> {
        let mut tx = self.store.begin().await?;
        let mut outcomes = Vec::new();
        let mut changes = Vec::new();
        for (i, (name, spec)) in clusters.iter().enumerate() {
            if clusters[..i].iter().any(|(n, _)| n == name) {
                return Err(FleetError::Conflict(format!(
                    "cluster {name:?} is named twice in one change"
                )));
            }
            match Self::put_cluster_in(&mut tx, actor, name, spec, Precondition::Any).await? {
                Some((outcome, c)) => {
                    outcomes.push((name.clone(), outcome));
                    changes.extend(c);
                }
                None => outcomes.push((name.clone(), PutOutcome::Unchanged)),
            }
        }
        if dry_run {
            drop(tx);
            return Ok(outcomes);
        }
        store::commit(tx).await?;
        self.notifier.announce(&changes);
        tracing::info!(
            actor = actor.0,
            clusters = clusters.len(),
            nodes = changes.len(),
            "cluster specs written in one change"
        );
        Ok(outcomes)
    }

    /// The write of `put_cluster_if` inside `tx`: `None` when the stored spec is already this one, else the
    /// outcome and the generations to announce after commit.
    async fn put_cluster_in(
        tx: &mut store::WriteTx,
        actor: &Actor,
        name: &str,
        spec: &ClusterSpec,
        precondition: Precondition,
    ) -> Result<Option<(PutOutcome, Vec<(i64, u64)>)>> {
        rules::cluster_name(name)?;
        let rules::ValidCluster(mut spec) =
            rules::cluster_spec(spec).map_err(FleetError::Invalid)?;

        let before = store::clusters::load_one(&mut *tx, name).await?;
        precondition.check(name, before.as_ref().map(|b| b.revision))?;

        // Omitted `enabled`: keep what is stored (a drained server stays drained), new servers start enabled.
        let mut stored_enabled: HashMap<RealServerKey, bool> = HashMap::new();
        if let Some(b) = &before {
            for s in &b.spec.services {
                for r in &s.real_servers {
                    stored_enabled.insert(RealServerKey::of_spec(s, r), r.enabled.unwrap_or(true));
                }
            }
        }
        for s in &mut spec.services {
            for r in &mut s.real_servers {
                if r.enabled.is_none() {
                    let key = RealServerKey::new(s.protocol, &s.vip, s.port, &r.address, r.port);
                    r.enabled = Some(stored_enabled.get(&key).copied().unwrap_or(true));
                }
            }
        }
        if before.as_ref().is_some_and(|b| b.spec == spec) {
            return Ok(None);
        }

        // Fleet-wide uniqueness, reported with the owner's name.
        let others = store::clusters::other_keys(&mut *tx, before.as_ref().map(|b| b.id)).await?;
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

        let id = store::clusters::upsert(&mut *tx, name, &spec).await?;
        store::clusters::replace_contents(&mut *tx, id, &spec).await?;
        let changes = Self::bump_cluster(&mut *tx, id).await?;
        let (outcome, action) = if before.is_some() {
            (PutOutcome::Updated, AuditAction::ClusterUpdate)
        } else {
            (PutOutcome::Created, AuditAction::ClusterCreate)
        };
        store::audit::append(
            &mut *tx,
            &actor.0,
            action,
            &format!("cluster:{name}"),
            before.as_ref().map(|b| to_value(&b.spec)).as_ref(),
            Some(&to_value(&spec)),
        )
        .await?;
        Ok(Some((outcome, changes)))
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
            AuditAction::ClusterDelete,
            &format!("cluster:{name}"),
            Some(&to_value(&c.spec)),
            None,
        )
        .await?;
        store::commit(tx).await?;
        self.notifier.fleet_changed();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use lbfleet_proto::Role;

    use super::super::testing::{admin, fleet, member, spec};
    use super::*;

    /// Real servers are stored many rows a statement: order, fields and the unchanged check hold across the
    /// statements' boundaries.
    #[tokio::test]
    async fn a_service_of_250_real_servers_is_stored_in_order() {
        let (f, _dir) = fleet().await;
        let mut sp = spec(51, "198.18.0.10");
        let rs = &mut sp.services[0].real_servers;
        let template = rs[0].clone();
        rs.clear();
        for i in 0..250u16 {
            let mut r = template.clone();
            r.address = format!("198.18.{}.{}", 2 + i / 200, 1 + i % 200);
            r.port = 1000 + i;
            r.weight = u32::from(i % 7);
            r.enabled = Some(i % 3 != 0);
            rs.push(r);
        }
        let (outcome, view) = f.put_cluster(&admin(), "big", &sp).await.expect("create");
        assert_eq!(outcome, PutOutcome::Created);
        assert_eq!(view.spec.services[0].real_servers.len(), 250);
        let stored = f.get_cluster("big").await.expect("get");
        for (i, (got, want)) in stored.spec.services[0]
            .real_servers
            .iter()
            .zip(&sp.services[0].real_servers)
            .enumerate()
        {
            assert_eq!(
                (
                    &got.address,
                    got.port,
                    got.weight,
                    got.enabled.unwrap_or(true)
                ),
                (
                    &want.address,
                    want.port,
                    want.weight,
                    want.enabled.unwrap_or(true)
                ),
                "real server {i}"
            );
        }
        let (outcome, _) = f.put_cluster(&admin(), "big", &sp).await.expect("again");
        assert_eq!(outcome, PutOutcome::Unchanged);
    }

    #[tokio::test]
    async fn put_is_idempotent_checks_uniqueness_and_revisions() {
        let (f, _dir) = fleet().await;
        let (outcome, ext) = f
            .put_cluster(&admin(), "ext", &spec(51, "198.18.0.10"))
            .await
            .expect("create");
        assert_eq!(outcome, PutOutcome::Created);
        let (outcome, same) = f
            .put_cluster(&admin(), "ext", &spec(51, "198.18.0.10"))
            .await
            .expect("again");
        assert_eq!(
            (outcome, same.revision),
            (PutOutcome::Unchanged, ext.revision)
        );

        // Another cluster may not reuse the VRID on the same interface, nor the VIP.
        let err = f
            .put_cluster(&admin(), "int", &spec(51, "198.18.0.11"))
            .await
            .expect_err("vrid");
        assert!(
            matches!(&err, FleetError::Conflict(m) if m.contains("VRID 51") && m.contains("\"ext\"")),
            "{err}"
        );
        let err = f
            .put_cluster(&admin(), "int", &spec(52, "198.18.0.10"))
            .await
            .expect_err("vip");
        assert!(
            matches!(&err, FleetError::Conflict(m) if m.contains("VIP 198.18.0.10")),
            "{err}"
        );
        assert!(matches!(
            f.put_cluster(&admin(), "bad name!", &spec(53, "198.18.0.12"))
                .await,
            Err(FleetError::Invalid(_))
        ));

        // Optimistic concurrency: a stale revision, `Absent` on an existing cluster, `Exists` on a missing one.
        let mut changed = spec(51, "198.18.0.10");
        changed.advert_interval_ms = 2000;
        for p in [
            Precondition::Revision(ext.revision + 1),
            Precondition::Absent,
        ] {
            assert!(matches!(
                f.put_cluster_if(&admin(), "ext", &changed, p).await,
                Err(FleetError::PreconditionFailed(_))
            ));
        }
        assert!(matches!(
            f.put_cluster_if(&admin(), "nope", &changed, Precondition::Exists)
                .await,
            Err(FleetError::PreconditionFailed(_))
        ));
        let (outcome, v) = f
            .put_cluster_if(
                &admin(),
                "ext",
                &changed,
                Precondition::Revision(ext.revision),
            )
            .await
            .expect("update");
        assert_eq!(outcome, PutOutcome::Updated);
        assert_ne!(v.revision, ext.revision);
        assert_eq!(f.list_clusters().await.expect("list").len(), 1);
    }

    #[tokio::test]
    async fn a_cluster_with_members_cannot_be_deleted() {
        let (f, _dir) = fleet().await;
        f.put_cluster(&admin(), "ext", &spec(51, "198.18.0.10"))
            .await
            .expect("create");
        let key = member(&f, 1, "ext", Role::Active).await;
        let err = f
            .delete_cluster(&admin(), "ext")
            .await
            .expect_err("members");
        assert!(
            matches!(&err, FleetError::Conflict(m) if m.contains("lb-01")),
            "{err}"
        );
        f.unassign(&admin(), &key).await.expect("unassign");
        f.delete_cluster(&admin(), "ext").await.expect("delete");
        assert!(matches!(
            f.get_cluster("ext").await,
            Err(FleetError::NotFound(_))
        ));
        assert!(matches!(
            f.delete_cluster(&admin(), "ext").await,
            Err(FleetError::NotFound(_))
        ));
    }
}
