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
    /// against the earlier ones). `dry_run` checks every rule against what is stored and writes nothing.
    /// Returns each cluster's outcome.
    pub async fn put_clusters(
        &self,
        actor: &Actor,
        clusters: &[(String, ClusterSpec)],
        dry_run: bool,
    ) -> Result<Vec<(String, PutOutcome)>> {
        for (i, (name, _)) in clusters.iter().enumerate() {
            if clusters[..i].iter().any(|(n, _)| n == name) {
                return Err(FleetError::Conflict(format!(
                    "cluster {name:?} is named twice in one change"
                )));
            }
        }
        if dry_run {
            return self.check_clusters(clusters).await;
        }
        let mut tx = self.store.begin().await?;
        let mut outcomes = Vec::new();
        let mut changes = Vec::new();
        for (name, spec) in clusters {
            match Self::put_cluster_in(&mut tx, actor, name, spec, Precondition::Any).await? {
                Some((outcome, c)) => {
                    outcomes.push((name.clone(), outcome));
                    changes.extend(c);
                }
                None => outcomes.push((name.clone(), PutOutcome::Unchanged)),
            }
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

    /// The dry run of `put_clusters`: the same rules and outcomes, from one read of what is stored, without a
    /// write transaction (a large import is planned without writing and rolling back thousands of rows, and
    /// without holding the fleet's write lock). The keys of the clusters checked so far stand in for their
    /// writes, so a later cluster is checked against them exactly as in the applied change.
    async fn check_clusters(
        &self,
        clusters: &[(String, ClusterSpec)],
    ) -> Result<Vec<(String, PutOutcome)>> {
        let mut conn = self.store.read().await?;
        let mut keys = store::clusters::other_keys(&mut conn, None).await?;
        let mut outcomes = Vec::new();
        for (name, spec) in clusters {
            let before = store::clusters::load_one(&mut conn, name).await?;
            let Some(spec) = Self::checked_spec(name, spec, before.as_ref())? else {
                outcomes.push((name.clone(), PutOutcome::Unchanged));
                continue;
            };
            uniqueness(&keys, name, &spec)?;
            keys.vrids.retain(|_, owner| owner != name);
            keys.vips.retain(|_, owner| owner != name);
            keys.services.retain(|_, owner| owner != name);
            keys.add(name, &spec);
            let outcome = if before.is_some() {
                PutOutcome::Updated
            } else {
                PutOutcome::Created
            };
            outcomes.push((name.clone(), outcome));
        }
        Ok(outcomes)
    }

    /// `spec` validated, with each omitted `enabled` filled in from `before` (a drained server stays drained,
    /// new servers start enabled); `None` when that is exactly what is stored.
    fn checked_spec(
        name: &str,
        spec: &ClusterSpec,
        before: Option<&store::clusters::StoredCluster>,
    ) -> Result<Option<ClusterSpec>> {
        rules::cluster_name(name)?;
        let rules::ValidCluster(mut spec) =
            rules::cluster_spec(spec).map_err(FleetError::Invalid)?;
        let mut stored_enabled: HashMap<RealServerKey, bool> = HashMap::new();
        if let Some(b) = before {
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
        if before.is_some_and(|b| b.spec == spec) {
            return Ok(None);
        }
        Ok(Some(spec))
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
        let before = store::clusters::load_one(&mut *tx, name).await?;
        precondition.check(name, before.as_ref().map(|b| b.revision))?;
        let Some(spec) = Self::checked_spec(name, spec, before.as_ref())? else {
            return Ok(None);
        };

        // Fleet-wide uniqueness, reported with the owner's name.
        let others = store::clusters::other_keys(&mut *tx, before.as_ref().map(|b| b.id)).await?;
        uniqueness(&others, name, &spec)?;

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

/// Fleet-wide uniqueness of `spec`'s VRID, VIPs and services against `others` (keys owned by clusters other
/// than `name` count), each conflict reported with its owner's name.
fn uniqueness(others: &store::clusters::OtherKeys, name: &str, spec: &ClusterSpec) -> Result<()> {
    let foreign = |owner: Option<&String>| owner.filter(|o| o.as_str() != name).cloned();
    let mut errs = Vec::new();
    if let Some(owner) = foreign(others.vrids.get(&(spec.interface.clone(), spec.vrid))) {
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
        if let Some(owner) = foreign(others.vips.get(addr)) {
            errs.push(FieldError::new(
                format!("vips[{i}]"),
                format!("VIP {addr} already belongs to cluster {owner:?}"),
            ));
        }
    }
    for (i, s) in spec.services.iter().enumerate() {
        let key = (s.vip.clone(), s.port, s.protocol.to_string());
        if let Some(owner) = foreign(others.services.get(&key)) {
            errs.push(FieldError::new(
                format!("services[{i}]"),
                format!(
                    "service {}:{}:{} already exists in cluster {owner:?}",
                    s.protocol, s.vip, s.port
                ),
            ));
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(FleetError::Conflict(FieldErrors(errs).to_string()))
    }
}

#[cfg(test)]
mod tests {
    use lbfleet_proto::Role;

    use super::super::testing::{admin, fleet, member, spec};
    use super::*;

    /// The dry run of several clusters writes nothing and gives what the applied change gives: outcomes,
    /// and conflicts with what is stored and with the clusters earlier in the same change (a VIP one cluster
    /// gives up may go to a later one, not to an earlier one).
    #[tokio::test]
    async fn a_dry_run_plans_what_the_change_does_and_writes_nothing() {
        let (f, _dir) = fleet().await;
        f.put_cluster(&admin(), "x", &spec(1, "198.18.0.10"))
            .await
            .unwrap();
        f.put_cluster(&admin(), "same", &spec(2, "198.18.0.20"))
            .await
            .unwrap();
        let head = f.audit_head_hash().await.unwrap();

        // x gives 198.18.0.10 up, y (after it) takes it; `same` is unchanged.
        let moved = vec![
            ("x".to_owned(), spec(1, "198.18.0.11")),
            ("y".to_owned(), spec(3, "198.18.0.10")),
            ("same".to_owned(), spec(2, "198.18.0.20")),
        ];
        let want = vec![
            ("x".to_owned(), PutOutcome::Updated),
            ("y".to_owned(), PutOutcome::Created),
            ("same".to_owned(), PutOutcome::Unchanged),
        ];
        assert_eq!(f.put_clusters(&admin(), &moved, true).await.unwrap(), want);
        assert_eq!(
            f.list_clusters().await.unwrap().len(),
            2,
            "a dry run creates nothing"
        );
        assert_eq!(
            f.get_cluster("x").await.unwrap().spec.vips[0].address,
            "198.18.0.10/32"
        );
        assert_eq!(
            f.audit_head_hash().await.unwrap(),
            head,
            "a dry run audits nothing"
        );

        // Taken before it is given up: a conflict naming x, in the dry run and in the change alike.
        let early = vec![moved[1].clone(), moved[0].clone()];
        for dry_run in [true, false] {
            match f.put_clusters(&admin(), &early, dry_run).await {
                Err(FleetError::Conflict(m)) => {
                    assert!(
                        m.contains("198.18.0.10 already belongs to cluster \"x\""),
                        "{m}"
                    )
                }
                other => panic!("dry run {dry_run}: {other:?}"),
            }
        }
        // Two new clusters of one change that collide: the second names the first.
        let twins = vec![
            ("p".to_owned(), spec(4, "198.18.0.30")),
            ("q".to_owned(), spec(5, "198.18.0.30")),
        ];
        for dry_run in [true, false] {
            match f.put_clusters(&admin(), &twins, dry_run).await {
                Err(FleetError::Conflict(m)) => assert!(m.contains("cluster \"p\""), "{m}"),
                other => panic!("dry run {dry_run}: {other:?}"),
            }
        }

        assert_eq!(f.put_clusters(&admin(), &moved, false).await.unwrap(), want);
        assert_eq!(
            f.get_cluster("y").await.unwrap().spec.vips[0].address,
            "198.18.0.10/32"
        );
        // Applied, the same change is unchanged throughout.
        let again = f.put_clusters(&admin(), &moved, true).await.unwrap();
        assert!(
            again.iter().all(|(_, o)| *o == PutOutcome::Unchanged),
            "{again:?}"
        );
    }

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
